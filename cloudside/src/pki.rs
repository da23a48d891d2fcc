//! The hub's CA and serving certificate on disk (`tether-hub init`, issue 7).
//!
//! [`init`] makes a self-signed CA (ECDSA P-256, 10 years) and the hub's
//! serving certificate signed by it (5 years, SANs given by the operator:
//! nothing such as `localhost` is added behind their back), and writes them
//! into the hub's state directory (mode 0700): keys mode 0600 from the
//! moment they exist, certificates 0644. [`ca_hash`] is the CA's pin in
//! kubeadm's discovery format, `sha256:<hex of SHA-256 over the CA's
//! SubjectPublicKeyInfo DER>`, which `tether-edge join --ca-hash` will check.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// The hub's state directory without `--dir`.
pub const DEFAULT_DIR: &str = "/var/lib/tether-hub";
/// File name of the CA certificate in the state directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA's private key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the hub's serving certificate.
pub const HUB_CERT: &str = "hub.pem";
/// File name of the serving certificate's private key.
pub const HUB_KEY: &str = "hub-key.pem";
/// Subject CN of the hub's CA.
pub const CA_CN: &str = "tether-hub-ca";
/// Subject CN of the hub's serving certificate (names are in its SANs).
pub const HUB_CN: &str = "tether-hub";
/// Years the CA is valid: a board offline for a long time must still trust it.
pub const CA_YEARS: i32 = 10;
/// Years the serving certificate is valid; shorter than the CA, so the CA
/// always outlives what it signed.
pub const HUB_YEARS: i32 = 5;

/// What `tether-hub init` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The state directory, created with mode 0700 if missing.
    pub dir: PathBuf,
    /// The serving certificate's names: DNS names or IP addresses. At least one.
    pub sans: Vec<String>,
    /// Replace an existing CA and certificate.
    pub force: bool,
}

/// What [`init`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The state directory, absolute.
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The CA's private key (PKCS#8 PEM, mode 0600).
    pub ca_key: PathBuf,
    /// The hub's serving certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// The serving certificate's names, as `DNS:x` or `IP:x`.
    pub sans: Vec<String>,
    /// The CA's pin, `sha256:<hex>` (see [`ca_hash`]).
    pub ca_hash: String,
    /// Last day of the CA's validity, `YYYY-MM-DD`.
    pub ca_not_after: String,
    /// Last day of the serving certificate's validity, `YYYY-MM-DD`.
    pub cert_not_after: String,
}

/// Creates the state directory, the CA and the serving certificate. Refuses,
/// naming the file, when one of the four files exists and `force` is not set:
/// a new CA would orphan every node that trusts the old one.
pub fn init(opts: &InitOptions) -> Result<Written, String> {
    if opts.sans.is_empty() {
        return Err("at least one --san is needed: the names (DNS or IP) edges reach the hub by, e.g. --san hub.example.com --san 203.0.113.7".into());
    }
    let sans = opts
        .sans
        .iter()
        .map(|s| san(s))
        .collect::<Result<Vec<_>, _>>()?;
    let paths = [CA_CERT, CA_KEY, HUB_CERT, HUB_KEY].map(|f| opts.dir.join(f));
    if !opts.force {
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            return Err(format!(
                "{} exists: the hub already has a CA, and a new one would make every edge that trusts it refuse the hub; pass --force to replace it",
                p.display()
            ));
        }
    }
    make_private_dir(&opts.dir)?;
    let today = days_since_epoch();
    // Back-dated a day: a board whose clock lags (no RTC) must accept it.
    let not_before = ymd(today - 1);
    let (ca_until, hub_until) = (years_later(today, CA_YEARS), years_later(today, HUB_YEARS));

    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, CA_CN);
    ca.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
    ca.not_after = date_time_ymd(ca_until.0, ca_until.1, ca_until.2);
    // It signs only end-entity certificates (the hub's, the nodes').
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate().map_err(|e| format!("cannot generate the CA key: {e}"))?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    let hash = ca_hash(&ca_key.subject_public_key_info());
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut hub = CertificateParams::default();
    hub.distinguished_name = rcgen::DistinguishedName::new();
    hub.distinguished_name.push(DnType::CommonName, HUB_CN);
    hub.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
    hub.not_after = date_time_ymd(hub_until.0, hub_until.1, hub_until.2);
    hub.subject_alt_names = sans.iter().map(|(s, _)| s.clone()).collect();
    hub.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    hub.use_authority_key_identifier_extension = true;
    let hub_key = KeyPair::generate().map_err(|e| format!("cannot generate the hub key: {e}"))?;
    let hub_cert = hub
        .signed_by(&hub_key, &issuer)
        .map_err(|e| format!("cannot sign the hub certificate: {e}"))?;

    let [ca_cert_path, ca_key_path, cert_path, key_path] = paths;
    // The chain, not the leaf alone: `tether-edge join` finds the CA it pins
    // (by its key's hash) among the certificates the hub presents.
    let chain = format!("{}{}", hub_cert.pem(), ca_cert.pem());
    // All four are written whole beside their targets first, and renamed
    // over them only then: a failure (or --force over an old CA) never
    // leaves a file half written, and the old set stays until the new one
    // is complete. Keys first: a certificate without its key would look
    // complete.
    let files = [
        (&ca_key_path, ca_key_pem.into_bytes(), 0o600),
        (&key_path, hub_key.serialize_pem().into_bytes(), 0o600),
        (&ca_cert_path, ca_cert.pem().into_bytes(), 0o644),
        (&cert_path, chain.into_bytes(), 0o644),
    ];
    let mut staged = Vec::with_capacity(files.len());
    for (path, data, mode) in &files {
        match write_new(&staging(path), data, *mode) {
            Ok(()) => staged.push(staging(path)),
            Err(e) => {
                for t in &staged {
                    let _ = fs::remove_file(t);
                }
                return Err(e);
            }
        }
    }
    for (path, _, _) in &files {
        fs::rename(staging(path), path)
            .map_err(|e| format!("{}: cannot move into place: {e}", path.display()))?;
    }
    if let Ok(d) = fs::File::open(&opts.dir) {
        let _ = d.sync_all();
    }
    let dir = fs::canonicalize(&opts.dir)
        .map_err(|e| format!("{}: cannot resolve: {e}", opts.dir.display()))?;
    Ok(Written {
        ca_cert: dir.join(CA_CERT),
        ca_key: dir.join(CA_KEY),
        cert: dir.join(HUB_CERT),
        key: dir.join(HUB_KEY),
        dir,
        sans: sans.into_iter().map(|(_, shown)| shown).collect(),
        ca_hash: hash,
        ca_not_after: format!("{:04}-{:02}-{:02}", ca_until.0, ca_until.1, ca_until.2),
        cert_not_after: format!("{:04}-{:02}-{:02}", hub_until.0, hub_until.1, hub_until.2),
    })
}

/// What `tether-hub init` prints: the files, the CA hash and the `[tls]`
/// lines for the hub's config. No key material.
pub fn summary(w: &Written) -> String {
    format!(
        "Wrote into {dir} (mode 0700):\n  \
         {ca}  the hub's CA certificate, valid until {ca_until}: edges trust it\n  \
         {cak}  its private key (mode 0600): keep it secret and backed up\n  \
         {cert}  the hub's serving certificate for {sans}, valid until {until}\n  \
         {key}  its private key (mode 0600)\n\n\
         CA hash (what tether-edge join --ca-hash pins):\n  {hash}\n\n\
         Put into the hub's config (e.g. /etc/tether/hub.toml):\n\
         [tls]\n\
         cert = \"{cert}\"\n\
         key = \"{key}\"\n\
         client_ca = \"{ca}\"\n",
        dir = w.dir.display(),
        ca = w.ca_cert.display(),
        cak = w.ca_key.display(),
        cert = w.cert.display(),
        key = w.key.display(),
        sans = w.sans.join(", "),
        ca_until = w.ca_not_after,
        until = w.cert_not_after,
        hash = w.ca_hash,
    )
}

/// The pin of a CA in kubeadm's discovery format: `sha256:` and the hex of
/// SHA-256 over its SubjectPublicKeyInfo DER (`spki_der`). It pins the key,
/// not the certificate, so a re-issued CA certificate with the same key
/// keeps the pin.
pub fn ca_hash(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The SubjectPublicKeyInfo DER inside an X.509 certificate's DER, or `None`
/// if it is not shaped like one (the link's certificate walk, which also
/// reads node names).
pub fn spki_of_certificate(cert_der: &[u8]) -> Option<&[u8]> {
    tether_link::tls::subject_public_key_info(cert_der)
}

/// The first subjectAltName of an X.509 certificate's DER (a DNS name, or
/// an IP address as text), or `None` if it has none or is not shaped like
/// a certificate: the name `tether-hub token create --print-join-command`
/// puts into the join command when no `--hub` is given.
pub fn first_san(cert_der: &[u8]) -> Option<String> {
    let (tag, cert, _) = tether_link::der::read_any(cert_der)?;
    let (tbs_tag, mut rest, _) = tether_link::der::read_any(cert)?;
    if tag != 0x30 || tbs_tag != 0x30 {
        return None;
    }
    // Walk the TBSCertificate's fields up to the [3] extensions.
    let extensions = loop {
        let (tag, content, next) = tether_link::der::read_any(rest)?;
        if tag == 0xa3 {
            break content;
        }
        rest = next;
    };
    let (tag, mut list, _) = tether_link::der::read_any(extensions)?;
    if tag != 0x30 {
        return None;
    }
    while !list.is_empty() {
        let (_, ext, next) = tether_link::der::read_any(list)?;
        list = next;
        let (tag, oid, mut fields) = tether_link::der::read_any(ext)?;
        // id-ce-subjectAltName, 2.5.29.17.
        if tag != 0x06 || oid != [0x55, 0x1d, 0x11] {
            continue;
        }
        let value = loop {
            let (tag, content, next) = tether_link::der::read_any(fields)?;
            if tag == 0x04 {
                break content;
            }
            fields = next; // the optional `critical` BOOLEAN
        };
        let (_, names, _) = tether_link::der::read_any(value)?;
        let (tag, name, _) = tether_link::der::read_any(names)?;
        return match (tag, name.len()) {
            (0x82, _) => std::str::from_utf8(name).ok().map(str::to_owned),
            (0x87, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(name).ok()?).to_string()),
            (0x87, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(name).ok()?).to_string()),
            _ => None,
        };
    }
    None
}

/// A `--san` value as rcgen's SAN and as shown (`DNS:x`, `IP:x`).
fn san(value: &str) -> Result<(SanType, String), String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok((SanType::IpAddress(ip), format!("IP:{ip}")));
    }
    let valid = !value.is_empty()
        && value.len() <= 253
        && value
            .strip_prefix("*.")
            .unwrap_or(value)
            .split('.')
            .all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
    if !valid {
        return Err(format!(
            "--san {value:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.', optionally starting with '*.')"
        ));
    }
    let name = value
        .to_ascii_lowercase()
        .try_into()
        .map_err(|e| format!("--san {value:?}: {e}"))?;
    Ok((
        SanType::DnsName(name),
        format!("DNS:{}", value.to_ascii_lowercase()),
    ))
}

/// Creates `dir` with mode 0700 (missing parents with the usual mode), or
/// tightens an existing one to 0700: it holds the CA key.
fn make_private_dir(dir: &Path) -> Result<(), String> {
    let cannot =
        |e: std::io::Error| format!("{}: cannot create the state directory: {e}", dir.display());
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(cannot)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(cannot(e)),
    }
    let mode = fs::metadata(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "{}: cannot restrict the state directory to mode 0700: {e}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Writes `data` to a new file `path` created with `mode` (an old file is
/// removed first, so a key never inherits a looser mode or sits readable
/// for a moment).
/// Where a file of the state directory is written before it is renamed
/// into place.
fn staging(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: cannot replace: {e}", path.display())),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    // The umask may have cleared bits of a certificate's 0644; set exactly.
    if mode != 0o600 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: cannot set mode {mode:o}: {e}", path.display()))?;
    }
    Ok(())
}

/// Days since 1970-01-01 (UTC), from the system clock.
fn days_since_epoch() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(0)
}

/// The civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's days_from_civil, inverted).
fn ymd(days: i64) -> (i32, u8, u8) {
    let (year, month, day) = tether_link::logger::civil(days);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        month as u8,
        day as u8,
    )
}

/// The date `years` after day `days`; 29 February becomes the 28th.
fn years_later(days: i64, years: i32) -> (i32, u8, u8) {
    let (y, m, d) = ymd(days);
    (y + years, m, if m == 2 && d == 29 { 28 } else { d })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    static N: AtomicU32 = AtomicU32::new(0);

    /// A fresh path under the temp directory (not created), removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let n = N.fetch_add(1, Ordering::SeqCst);
            TempDir(
                std::env::temp_dir()
                    .join(format!("tether-hub-pki-{}-{n}/state", std::process::id())),
            )
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Some(parent) = self.0.parent() {
                let _ = fs::remove_dir_all(parent);
            }
        }
    }

    fn opts(dir: &Path, sans: &[&str]) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            force: false,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    fn der(path: &Path) -> Vec<u8> {
        tether_link::tls::load_certs(path).expect("certs")[0].to_vec()
    }

    /// Completes a TLS 1.3 handshake in memory between the hub's server
    /// config from the written files and a client trusting only the CA.
    fn handshake(w: &Written, name: &str) -> Result<(), String> {
        let sc =
            tether_link::tls::server_config(&w.cert, &w.key, None).map_err(|e| e.to_string())?;
        let cc = tether_link::tls::client_config(&w.ca_cert, None).map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let mut client =
            rustls::ClientConnection::new(Arc::new(cc), name).map_err(|e| e.to_string())?;
        let mut server = rustls::ServerConnection::new(Arc::new(sc)).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).map_err(|e| e.to_string())?;
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
                server.process_new_packets().map_err(|e| e.to_string())?;
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).map_err(|e| e.to_string())?;
            if !buf.is_empty() {
                client.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
                client.process_new_packets().map_err(|e| e.to_string())?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn writes_files_with_modes_and_a_matching_hash() {
        let tmp = TempDir::new();
        let w = init(&opts(&tmp.0, &["hub.example.com", "10.1.2.3"])).expect("init");
        assert_eq!(mode(&w.dir), 0o700);
        assert_eq!(mode(&w.ca_key), 0o600);
        assert_eq!(mode(&w.key), 0o600);
        assert_eq!(mode(&w.ca_cert), 0o644);
        assert_eq!(mode(&w.cert), 0o644);
        let mut names: Vec<String> = fs::read_dir(&w.dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [CA_KEY, CA_CERT, HUB_KEY, HUB_CERT],
            "nothing staged is left"
        );
        let ca_der = der(&w.ca_cert);
        let spki = spki_of_certificate(&ca_der).expect("spki");
        assert_eq!(w.ca_hash, ca_hash(spki));
        assert!(w.ca_hash.starts_with("sha256:") && w.ca_hash.len() == 7 + 64);
        // The serving certificate has its own key, not the CA's.
        let hub_der = der(&w.cert);
        let hub_spki = spki_of_certificate(&hub_der).expect("spki");
        assert_ne!(ca_hash(hub_spki), w.ca_hash);
        assert_eq!(w.sans, ["DNS:hub.example.com", "IP:10.1.2.3"]);
        let text = summary(&w);
        assert!(text.contains(&w.ca_hash), "{text}");
        assert!(
            text.contains(&format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                w.cert.display(),
                w.key.display()
            )),
            "{text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for p in [&w.ca_key, &w.key] {
            let pem = fs::read_to_string(p).expect("read key");
            assert!(!text.contains(pem.lines().nth(1).expect("key body")));
        }
    }

    #[test]
    fn the_ca_signs_a_certificate_for_exactly_the_given_names() {
        let tmp = TempDir::new();
        let w = init(&opts(&tmp.0, &["hub.example.com", "10.1.2.3"])).expect("init");
        handshake(&w, "hub.example.com").expect("DNS SAN");
        handshake(&w, "10.1.2.3").expect("IP SAN");
        // Nothing added silently.
        let e = handshake(&w, "localhost").expect_err("localhost is not a SAN");
        assert!(
            e.contains("certificate") || e.contains("Certificate"),
            "{e}"
        );
        assert!(handshake(&w, "127.0.0.1").is_err());
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let tmp = TempDir::new();
        let first = init(&opts(&tmp.0, &["localhost"])).expect("init");
        let e = init(&opts(&tmp.0, &["localhost"])).expect_err("second init");
        assert!(
            e.contains(&first.ca_cert.display().to_string()) || e.contains("ca.pem"),
            "{e}"
        );
        assert!(e.contains("--force"), "{e}");
        let ca_before = fs::read(&first.ca_cert).expect("read");
        let again = init(&InitOptions {
            force: true,
            ..opts(&tmp.0, &["localhost"])
        })
        .expect("forced");
        assert_ne!(fs::read(&again.ca_cert).expect("read"), ca_before);
        assert_ne!(again.ca_hash, first.ca_hash);
        assert_eq!(mode(&again.ca_key), 0o600);
        handshake(&again, "localhost").expect("new pair fits");
    }

    #[test]
    fn bad_sans_and_none_are_refused_before_anything_is_written() {
        let tmp = TempDir::new();
        let e = init(&opts(&tmp.0, &[])).expect_err("no san");
        assert!(e.contains("--san"), "{e}");
        let e = init(&opts(&tmp.0, &["hub example"])).expect_err("bad san");
        assert!(e.contains("\"hub example\""), "{e}");
        assert!(!tmp.0.exists());
    }

    #[test]
    fn an_existing_loose_directory_is_tightened() {
        let tmp = TempDir::new();
        fs::create_dir_all(&tmp.0).expect("mkdir");
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).expect("chmod");
        let w = init(&opts(&tmp.0, &["localhost"])).expect("init");
        assert_eq!(mode(&w.dir), 0o700);
    }

    #[test]
    fn the_first_san_is_read_back() {
        let tmp = TempDir::new();
        let w = init(&opts(&tmp.0, &["hub.example.com", "10.1.2.3"])).expect("init");
        assert_eq!(first_san(&der(&w.cert)).as_deref(), Some("hub.example.com"));
        let tmp = TempDir::new();
        let w = init(&opts(&tmp.0, &["::1", "localhost"])).expect("init");
        assert_eq!(first_san(&der(&w.cert)).as_deref(), Some("::1"));
        // The CA has no SAN; garbage has none.
        assert_eq!(first_san(&der(&w.ca_cert)), None);
        assert_eq!(first_san(&[0x30, 0x03, 0x30, 0x01]), None);
        assert_eq!(first_san(&[]), None);
    }

    #[test]
    fn dates() {
        assert_eq!(ymd(0), (1970, 1, 1));
        assert_eq!(ymd(19_782), (2024, 2, 29));
        assert_eq!(years_later(19_782, 10), (2034, 2, 28));
        assert_eq!(ymd(20_794), (2026, 12, 7));
    }

    #[test]
    fn spki_parser_rejects_garbage() {
        assert_eq!(spki_of_certificate(&[]), None);
        assert_eq!(spki_of_certificate(&[0x30, 0x05, 0x30]), None);
        assert_eq!(
            spki_of_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}

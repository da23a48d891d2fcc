//! Throw-away test certificates: a CA, a hub serving certificate, node client certificates.
//!
//! A [`Pki`] owns a fresh temporary directory holding PEM files that system tests hand to
//! `tether-hub` and `tether-edge`: the CA certificate both sides trust, the hub's serving
//! certificate and key (valid for `localhost`, `tether-hub` and `127.0.0.1`), client
//! certificates with any subject CN ([`Pki::node_cert`]), a hub certificate from a CA
//! nobody trusts ([`Pki::untrusted_hub`]), and any other file a test needs (configs, token
//! files: [`Pki::write`]). Keys are ECDSA P-256 in PKCS#8 PEM, written with mode `0600`.
//! The directory and everything in it is removed when the [`Pki`] is dropped.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Subject CN of the test CA that signs the hub and node certificates.
pub const CA_CN: &str = "tether-test-ca";

/// DNS names the hub serving certificates are valid for (plus IP `127.0.0.1`).
pub const HUB_DNS_NAMES: [&str; 2] = ["localhost", "tether-hub"];

/// Numbers the temporary directories of one process, so two [`Pki`]s never collide.
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Numbers the files [`Pki::node_cert`] writes, so two calls with the same CN never collide.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A test CA and hub certificate in a temporary directory that is removed on drop.
///
/// Tests point the hub at [`Pki::hub_cert`] / [`Pki::hub_key`] and both binaries at
/// [`Pki::ca`]; further certificates come from [`Pki::node_cert`] and
/// [`Pki::untrusted_hub`]. Creating one costs a few milliseconds (P-256 keys).
pub struct Pki {
    /// The temporary directory holding every file of this PKI; removed on drop.
    pub dir: PathBuf,
    /// PEM certificate of the test CA (CN `tether-test-ca`), the trust anchor of both sides.
    pub ca: PathBuf,
    /// PEM serving certificate of the hub, signed by the CA, valid for `localhost`,
    /// `tether-hub` and `127.0.0.1`.
    pub hub_cert: PathBuf,
    /// PEM (PKCS#8) private key of [`Pki::hub_cert`], mode `0600`.
    pub hub_key: PathBuf,
    /// Signs node certificates; kept in memory only, never written out.
    issuer: Arc<Issuer<'static, KeyPair>>,
}

/// Signs client certificates for public keys made elsewhere (the stand-in
/// kube-apiserver's CSR signer) with the CA of the [`Pki`] it came from.
#[derive(Clone)]
pub struct ClientSigner {
    issuer: Arc<Issuer<'static, KeyPair>>,
}

/// An ECDSA P-256 public key given as its uncompressed point.
struct P256Point<'a>(&'a [u8]);

impl rcgen::PublicKeyData for P256Point<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl ClientSigner {
    /// A client certificate (`clientAuth`, digital signature) with subject `O=org,
    /// CN=cn` for the P-256 public key `point` (65 bytes, uncompressed), as PEM.
    ///
    /// # Errors
    ///
    /// rcgen cannot build it (a bad point).
    pub fn sign(&self, cn: &str, org: &str, point: &[u8]) -> Result<String, String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params
            .signed_by(&P256Point(point), &*self.issuer)
            .map(|c| c.pem())
            .map_err(|e| e.to_string())
    }
}

impl Pki {
    /// Creates a fresh temporary directory with a CA, a hub certificate and its key.
    ///
    /// # Panics
    ///
    /// Panics if the directory or a file cannot be created, or a certificate cannot be
    /// generated: a test cannot go on without them.
    pub fn new() -> Pki {
        let dir = make_temp_dir();
        let (ca_pem, issuer) = new_ca(CA_CN);
        let ca = dir.join("ca.pem");
        write_file(&ca, ca_pem.as_bytes(), 0o644);
        let (cert_pem, key_pem) = new_hub_cert(&issuer);
        let hub_cert = dir.join("hub.pem");
        let hub_key = dir.join("hub-key.pem");
        write_file(&hub_cert, cert_pem.as_bytes(), 0o644);
        write_file(&hub_key, key_pem.as_bytes(), 0o600);
        Pki {
            dir,
            ca,
            hub_cert,
            hub_key,
            issuer: Arc::new(issuer),
        }
    }

    /// Issues a client certificate with subject CN exactly `cn`, signed by the test CA.
    ///
    /// The certificate has extended key usage `clientAuth` only, so it is what an edge
    /// presents to the hub; tests pass the expected node name (`system:node:edge-1`) or a
    /// wrong one. Returns `(certificate, key)` paths; every call writes new files.
    ///
    /// # Panics
    ///
    /// Panics if the certificate cannot be generated or written.
    pub fn node_cert(&self, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("pki: generate node key");
        let cert = params
            .signed_by(&key, &*self.issuer)
            .expect("pki: sign node certificate");
        let n = FILE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let stem = format!("node-{}-{n}", file_safe(cn));
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        write_file(&cert_path, cert.pem().as_bytes(), 0o644);
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600);
        (cert_path, key_path)
    }

    /// Issues a serving certificate for DNS name `name` (CN and SAN), signed by the test
    /// CA: what a kubelet on a node presents. Returns `(certificate, key)` paths.
    ///
    /// # Panics
    ///
    /// Panics if the certificate cannot be generated or written.
    pub fn server_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        params.subject_alt_names = vec![SanType::DnsName(
            name.try_into().expect("pki: a valid DNS name"),
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("pki: generate server key");
        let cert = params
            .signed_by(&key, &*self.issuer)
            .expect("pki: sign server certificate");
        let n = FILE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let stem = format!("server-{}-{n}", file_safe(name));
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        write_file(&cert_path, cert.pem().as_bytes(), 0o644);
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600);
        (cert_path, key_path)
    }

    /// Issues a hub serving certificate from a different, freshly made CA nobody trusts.
    ///
    /// Same names as [`Pki::hub_cert`], so only the chain is wrong: an edge trusting
    /// [`Pki::ca`] must refuse it. Returns `(certificate, key)` paths; every call makes a
    /// new CA and writes new files.
    ///
    /// # Panics
    ///
    /// Panics if the certificates cannot be generated or written.
    pub fn untrusted_hub(&self) -> (PathBuf, PathBuf) {
        let (_, other) = new_ca("tether-untrusted-ca");
        let (cert_pem, key_pem) = new_hub_cert(&other);
        let n = FILE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let cert_path = self.dir.join(format!("untrusted-hub-{n}.pem"));
        let key_path = self.dir.join(format!("untrusted-hub-{n}-key.pem"));
        write_file(&cert_path, cert_pem.as_bytes(), 0o644);
        write_file(&key_path, key_pem.as_bytes(), 0o600);
        (cert_path, key_path)
    }

    /// A signer of client certificates with this PKI's CA, for servers that issue
    /// them (the stand-in kube-apiserver's CSR API).
    pub fn client_signer(&self) -> ClientSigner {
        ClientSigner {
            issuer: Arc::clone(&self.issuer),
        }
    }

    /// Writes `contents` to `name` inside [`Pki::dir`] with mode `0600` and returns its path.
    ///
    /// For configuration and token files the binaries read; an existing file is replaced.
    ///
    /// # Panics
    ///
    /// Panics if `name` is not a plain file name (no `/`, not `.` or `..`) or the file
    /// cannot be written.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        assert!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "pki: {name:?} is not a plain file name"
        );
        let path = self.dir.join(name);
        write_file(&path, contents.as_bytes(), 0o600);
        path
    }
}

impl Default for Pki {
    /// Same as [`Pki::new`].
    fn default() -> Self {
        Pki::new()
    }
}

impl Drop for Pki {
    /// Removes the temporary directory and every file in it; errors are only reported.
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("pki: removing {}: {e}", self.dir.display());
        }
    }
}

/// Makes a new CA: returns its PEM certificate and the issuer that signs with its key.
fn new_ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 1, 1);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("pki: generate CA key");
    let cert = params.self_signed(&key).expect("pki: self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

/// Makes a hub serving certificate signed by `issuer`: returns `(certificate, key)` PEM.
fn new_hub_cert(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "tether-hub");
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 1, 1);
    let mut sans = Vec::new();
    for name in HUB_DNS_NAMES {
        sans.push(SanType::DnsName(
            name.try_into().expect("pki: DNS name is valid"),
        ));
    }
    sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("pki: generate hub key");
    let cert = params
        .signed_by(&key, issuer)
        .expect("pki: sign hub certificate");
    (cert.pem(), key.serialize_pem())
}

/// Creates a new, empty, private (`0700`) directory under the system temp directory.
fn make_temp_dir() -> PathBuf {
    let base = std::env::temp_dir();
    loop {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("tether-pki-{}-{n}-{nanos}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("pki: creating {}: {e}", dir.display()),
        }
    }
}

/// Writes `bytes` to `path` (replacing it) and gives it `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.write_all(bytes)?;
        // `mode` only applies to a newly created file; an existing one gets it here.
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
    })();
    if let Err(e) = result {
        panic!("pki: writing {}: {e}", path.display());
    }
}

/// Turns a CN into something safe in a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn file_safe(cn: &str) -> String {
    let s: String = cn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "empty".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// Asserts the file holds exactly the given PEM block kinds, in order.
    fn assert_pem(path: &Path, kinds: &[&str]) {
        let text = fs::read_to_string(path).expect("read pem");
        let found: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("-----BEGIN "))
            .filter_map(|l| l.strip_suffix("-----"))
            .collect();
        assert_eq!(found, kinds, "{}: {text}", path.display());
        for kind in kinds {
            assert!(text.contains(&format!("-----END {kind}-----")));
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    /// Runs `openssl` with `args`; `None` when openssl is not installed.
    fn openssl(args: &[&str]) -> Option<(bool, String)> {
        let out = Command::new("openssl").args(args).output().ok()?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Some((out.status.success(), text))
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }

    #[test]
    fn files_are_pem_with_private_keys() {
        let pki = Pki::new();
        assert!(pki.dir.starts_with(std::env::temp_dir()));
        assert_eq!(mode(&pki.dir), 0o700);
        assert_pem(&pki.ca, &["CERTIFICATE"]);
        assert_pem(&pki.hub_cert, &["CERTIFICATE"]);
        assert_pem(&pki.hub_key, &["PRIVATE KEY"]);
        assert_eq!(mode(&pki.hub_key), 0o600);
        let (cert, key) = pki.node_cert("system:node:edge-1");
        assert_pem(&cert, &["CERTIFICATE"]);
        assert_pem(&key, &["PRIVATE KEY"]);
        assert_eq!(mode(&key), 0o600);
        let (ucert, ukey) = pki.untrusted_hub();
        assert_pem(&ucert, &["CERTIFICATE"]);
        assert_pem(&ukey, &["PRIVATE KEY"]);
        assert_eq!(mode(&ukey), 0o600);
        let (cert2, _) = pki.node_cert("system:node:edge-1");
        assert_ne!(cert, cert2, "each call writes new files");
    }

    #[test]
    fn write_and_drop() {
        let pki = Pki::new();
        let other = Pki::new();
        assert_ne!(pki.dir, other.dir);
        let path = pki.write("edge.toml", "a = 1\n");
        assert_eq!(fs::read_to_string(&path).expect("read"), "a = 1\n");
        assert_eq!(mode(&path), 0o600);
        pki.write("edge.toml", "b = 2\n");
        assert_eq!(fs::read_to_string(&path).expect("read"), "b = 2\n");
        let dir = pki.dir.clone();
        drop(pki);
        assert!(!dir.exists());
    }

    #[test]
    fn certificates_chain_and_names() {
        let pki = Pki::new();
        let (cert, _) = pki.node_cert("system:node:edge-1");
        let Some((ok, subject)) = openssl(&["x509", "-noout", "-subject", "-in", s(&cert)]) else {
            eprintln!("openssl not installed: skipping certificate content checks");
            return;
        };
        assert!(ok, "{subject}");
        assert!(
            subject.trim_end().ends_with("CN=system:node:edge-1")
                || subject.trim_end().ends_with("CN = system:node:edge-1"),
            "{subject}"
        );
        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", s(&cert)]).expect("openssl");
        assert!(
            ok && text.contains("TLS Web Client Authentication"),
            "{text}"
        );
        assert!(!text.contains("TLS Web Server Authentication"), "{text}");

        let (ok, text) =
            openssl(&["x509", "-noout", "-text", "-in", s(&pki.hub_cert)]).expect("openssl");
        assert!(ok, "{text}");
        for want in [
            "DNS:localhost",
            "DNS:tether-hub",
            "IP Address:127.0.0.1",
            "TLS Web Server Authentication",
        ] {
            assert!(text.contains(want), "missing {want}: {text}");
        }
        let (ok, text) = openssl(&["x509", "-noout", "-subject", "-in", s(&pki.ca)]).expect("ssl");
        assert!(ok && text.contains("tether-test-ca"), "{text}");

        let ca = s(&pki.ca);
        let (ok, text) = openssl(&["verify", "-CAfile", ca, s(&pki.hub_cert)]).expect("openssl");
        assert!(ok, "hub cert must chain to the CA: {text}");
        let (ok, text) = openssl(&["verify", "-CAfile", ca, s(&cert)]).expect("openssl");
        assert!(ok, "node cert must chain to the CA: {text}");
        let (ucert, _) = pki.untrusted_hub();
        let (ok, text) = openssl(&["verify", "-CAfile", ca, s(&ucert)]).expect("openssl");
        assert!(!ok, "untrusted hub cert must not chain to the CA: {text}");
    }
}

//! `tether-edge join` and `tether-edge reset`: putting a board into the
//! fleet with one command, and taking it out again.
//!
//! Join checks everything it can before it asks the hub for anything (the
//! command line, existing files, the config it will write), makes the
//! node's key on the board, gets the certificate over a TLS connection
//! that trusts only the pinned CA, and checks the certificate against the
//! key, the node and the pin. Only then does it write, all files or none
//! ([`super::files`]), and finally it proves the new identity by bringing
//! a link up with it. Each step is reported as it completes.

use super::exchange::{exchange, host_of, ExchangeError};
use super::files::{self, Planned};
use super::key::NodeKey;
use super::kubelet::{self, KubeError, KubeOptions};
use super::pin::{CaHash, PinnedCa};
use crate::config;
use crate::fleet::Fleet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_link::join::{Answer, Refusal, Request};
use tether_link::topic::NodeName;

/// Where join writes the identity without `--dir`: beside the config, as
/// the board files expect (`/etc/tether/node.pem`).
pub const DEFAULT_DIR: &str = "/etc/tether";
/// The node's certificate and key, one file (mode 0600): a renewal replaces
/// both with one rename, so they can never disagree.
pub const IDENTITY_FILE: &str = "node.pem";
/// The hub's CA certificate.
pub const CA_FILE: &str = "hub-ca.pem";
/// The kubelet kubeconfig without `--kubeconfig`.
pub const DEFAULT_KUBECONFIG: &str = "/etc/tether/kubelet.kubeconfig";
/// Where board files are looked up by model without `--boards`.
pub const DEFAULT_BOARDS: &str = "/usr/share/tether/boards";
/// The first line of every file join writes as text, so `reset` and a
/// person can tell them from hand-written ones.
const MARK: &str = "# Written by `tether-edge join`; `tether-edge reset` removes it.";

/// What `join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The hub, `host:port`.
    pub hub: String,
    /// The bootstrap token, `ID.SECRET`.
    pub token: String,
    /// The pinned CA.
    pub ca_hash: CaHash,
    /// The node's name.
    pub node: NodeName,
    /// A board model (looked up in `boards`) or a board file.
    pub board: Option<String>,
    /// Where board models are looked up.
    pub boards: PathBuf,
    /// The edge config to write.
    pub config: PathBuf,
    /// Where the identity files go.
    pub dir: PathBuf,
    /// The kubelet kubeconfig to write.
    pub kubeconfig: PathBuf,
    /// Replace an existing identity.
    pub force: bool,
    /// Per exchange with the hub.
    pub timeout: Duration,
    /// kubelet's TLS bootstrap (`--kube-token`); `None`: kubelet's
    /// credentials come from elsewhere.
    pub kube: Option<KubeOptions>,
}

impl JoinOptions {
    /// The identity file (certificate and key).
    pub fn identity(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// The CA file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }
}

/// Why a join did not complete. Nothing was written unless it says so.
#[derive(Debug)]
pub enum JoinError {
    /// A file of an identity exists and `--force` was not given.
    Exists(PathBuf),
    /// The config join would write does not check out.
    Config(String),
    /// The hub could not be reached or verified.
    Hub(ExchangeError),
    /// The hub refused, with its reason.
    Refused(Refusal, String),
    /// The hub's certificate does not fit the request.
    BadAnswer(String),
    /// Writing failed (nothing was left half written).
    Write(String),
    /// Everything was written, but a link with the new identity failed.
    Check(String),
    /// The hub identity and config are written, but kubelet's TLS
    /// bootstrap failed (none of kubelet's files were written).
    Kube(KubeError),
}

impl JoinError {
    /// The exit status: 1 for problems here, 3 when the hub refused, 4
    /// when the hub could not be reached or verified, 5 when the files were
    /// written but the link check failed, 6 when they were written and
    /// the link works but kubelet's TLS bootstrap failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            JoinError::Refused(..) => 3,
            JoinError::Hub(_) => 4,
            JoinError::Check(_) => 5,
            JoinError::Kube(_) => 6,
            _ => 1,
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Exists(p) => write!(
                f,
                "{} exists: this board already has an identity; run `tether-edge reset` first, or pass --force to replace it",
                p.display()
            ),
            JoinError::Config(e) => write!(f, "the config join would write is not valid: {e}"),
            JoinError::Hub(e) => write!(f, "{e}"),
            JoinError::Refused(reason, message) => {
                write!(f, "the hub refused ({reason}): {message}")
            }
            JoinError::BadAnswer(e) => write!(f, "the hub's certificate is not usable: {e}"),
            JoinError::Write(e) => write!(f, "{e} (nothing was changed)"),
            JoinError::Check(e) => write!(
                f,
                "the files are written, but a link with the new identity failed: {e}"
            ),
            JoinError::Kube(e) => write!(
                f,
                "the hub identity and the config are written and the link works, but kubelet's TLS bootstrap failed: {e}. Fix that and join again with --force and a new hub token"
            ),
        }
    }
}

/// Runs a join, reporting each step to `out`.
pub fn join(opts: &JoinOptions, out: &mut dyn Write) -> Result<(), JoinError> {
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let steps = if opts.kube.is_some() { 6 } else { 5 };
    say(format!(
        "[1/{steps}] joining node {} to the hub at {} (CA {})",
        opts.node, opts.hub, opts.ca_hash
    ));
    if !opts.force {
        let kubelet = opts.kube.as_ref().map(KubeOptions::current);
        let ours = [&opts.identity(), &opts.ca(), &opts.config, &opts.kubeconfig];
        for p in ours.into_iter().chain(kubelet.as_ref()) {
            if p.exists() {
                return Err(JoinError::Exists(p.clone()));
            }
        }
    }
    let config_text = render_config(opts)?;
    let cfg = config::checked(&config_text, opts.config.parent().unwrap_or(Path::new("/")))
        .map_err(|e| JoinError::Config(e.to_string()))?;

    let key = NodeKey::generate().map_err(JoinError::BadAnswer)?;
    let csr = key.csr(&opts.node).map_err(JoinError::BadAnswer)?;
    say(format!(
        "[2/{steps}] made the node's key (ECDSA P-256) on this board; it never leaves it"
    ));

    let tls = PinnedCa::client_config(opts.ca_hash).map_err(JoinError::Config)?;
    let request = Request::Join {
        token: opts.token.clone(),
        csr,
    };
    let answer = smol::block_on(exchange(
        &opts.hub,
        host_of(&opts.hub),
        Arc::new(tls),
        &opts.node,
        &request,
        opts.timeout,
    ))
    .map_err(JoinError::Hub)?;
    let (cert, ca) = match answer {
        Answer::Issued {
            certificate, ca, ..
        } => (certificate, ca),
        Answer::Refused { reason, message } => return Err(JoinError::Refused(reason, message)),
    };
    let until = check_issued(&cert, &ca, &key, &opts.node, &opts.ca_hash)?;
    say(format!(
        "[3/{steps}] the hub (verified by the pinned CA) issued CN system:node:{}, valid until {}",
        opts.node,
        tether_link::logger::rfc3339(until)
    ));

    let identity = format!(
        "{}{}",
        tether_link::der::pem("CERTIFICATE", &cert),
        key.pem()
    );
    let plan = [
        Planned {
            path: opts.identity(),
            data: identity.into_bytes(),
            mode: 0o600,
        },
        Planned {
            path: opts.ca(),
            data: tether_link::der::pem("CERTIFICATE", &ca).into_bytes(),
            mode: 0o644,
        },
        Planned {
            path: opts.config.clone(),
            data: config_text.into_bytes(),
            mode: 0o600,
        },
        Planned {
            path: opts.kubeconfig.clone(),
            data: kubeconfig(cfg.proxy.listen, opts.kube.as_ref()).into_bytes(),
            mode: 0o600,
        },
    ];
    files::write_all(&plan).map_err(JoinError::Write)?;
    say(format!(
        "[4/{steps}] wrote {} (certificate and key, 0600), {}, {} and {}",
        opts.identity().display(),
        opts.ca().display(),
        opts.config.display(),
        opts.kubeconfig.display()
    ));

    let tls =
        tether_link::tls::client_config(&opts.ca(), Some((&opts.identity(), &opts.identity())))
            .map_err(|e| JoinError::Check(e.to_string()))?;
    smol::block_on(super::renew::check_link(
        &opts.hub,
        host_of(&opts.hub),
        Arc::new(tls),
        &opts.node,
        opts.timeout,
    ))
    .map_err(JoinError::Check)?;
    let start = format!(
        "start the edge: systemctl restart tether-edge (or tether-edge run --config {})",
        opts.config.display()
    );
    let Some(kube) = &opts.kube else {
        say(format!(
            "[5/5] a link with the new identity comes up; {start}. kubelet's client certificate must come from elsewhere (kubeadm join, or join again with --kube-token)"
        ));
        return Ok(());
    };
    say("[5/6] a link with the new identity comes up".into());
    let file = kubelet::bootstrap(&cfg, kube, opts.timeout, &mut say).map_err(JoinError::Kube)?;
    say(format!(
        "[6/6] kube-apiserver issued kubelet's client certificate, CN system:node:{}: wrote {} (certificate and key, 0600) and {} pointing at it; kubelet's rotation keeps it current; {start}",
        opts.node,
        file.display(),
        kube.current().display()
    ));
    Ok(())
}

/// Checks an issued certificate against what was asked: this key, this
/// node, a CA with the pinned key that signed it. Returns its end of
/// validity.
fn check_issued(
    cert: &[u8],
    ca: &[u8],
    key: &NodeKey,
    node: &NodeName,
    pin: &CaHash,
) -> Result<SystemTime, JoinError> {
    let bad = |m: String| Err(JoinError::BadAnswer(m));
    if !pin.matches(ca) {
        return bad(format!("its CA is not the one pinned by {pin}"));
    }
    if !key.matches(cert) {
        return bad("it does not certify the key this board made".into());
    }
    if tether_link::tls::node_of_certificate(cert).as_deref() != Some(node.as_str()) {
        return bad(format!("it is not for node {node}"));
    }
    let Some((_, until)) = tether_link::tls::validity_of_certificate(cert) else {
        return bad("its validity does not parse".into());
    };
    Ok(UNIX_EPOCH + Duration::from_secs(until.max(0) as u64))
}

/// The edge config join writes: the board file's (when `--board`), with
/// the node, the hub and the identity files set.
fn render_config(opts: &JoinOptions) -> Result<String, JoinError> {
    let q = |p: &Path| quote(&p.display().to_string());
    let hub = format!(
        "[hub]\naddress = {}\nca = {}\ncert = {}\nkey = {}\n",
        quote(&opts.hub),
        q(&opts.ca()),
        q(&opts.identity()),
        q(&opts.identity())
    );
    let apiserver = |ca: Option<&Path>| match &opts.kube {
        None => String::new(),
        Some(k) => format!(
            "\n[apiserver]\n{}cert = {}\nkey = {}\n",
            ca.map_or(String::new(), |c| format!("ca = {}\n", q(c))),
            q(&k.current()),
            q(&k.current())
        ),
    };
    let default_ca = Path::new(kubelet::DEFAULT_CA);
    let body = match &opts.board {
        None => format!(
            "node = {}\n\n{hub}{}",
            quote(opts.node.as_str()),
            apiserver(Some(
                opts.kube
                    .as_ref()
                    .and_then(|k| k.ca.as_deref())
                    .unwrap_or(default_ca)
            ))
        ),
        Some(board) => {
            let (boards, model) = if board.contains('/') || board.ends_with(".toml") {
                let p = Path::new(board);
                let model = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_owned();
                (p.parent().unwrap_or(Path::new(".")).to_path_buf(), model)
            } else {
                (opts.boards.clone(), board.clone())
            };
            let render = |site: String| {
                let fleet = format!(
                    "site = \"joined\"\n\n{hub}{site}\n[[node]]\nname = {}\nboard = {}\n",
                    quote(opts.node.as_str()),
                    quote(&model)
                );
                Fleet::parse(&fleet, Path::new("(join)"), &boards)
                    .and_then(|f| f.render(opts.node.as_str()))
                    .map_err(JoinError::Config)
            };
            // The cluster CA: --kube-ca, else the board file's, else
            // kubeadm's.
            let ca = match opts.kube.as_ref().map(|k| k.ca.as_deref()) {
                Some(Some(ca)) => Some(ca),
                Some(None) => {
                    let base = opts.config.parent().unwrap_or(Path::new("/"));
                    let board_has_one = config::checked(&render(String::new())?, base)
                        .is_ok_and(|c| c.apiserver.is_some());
                    (!board_has_one).then_some(default_ca)
                }
                None => None,
            };
            render(apiserver(ca))?
        }
    };
    Ok(format!("{MARK}\n{body}"))
}

/// A kubeconfig for kubelet that points at the edge's proxy; the proxy
/// adds the node's credentials upstream. With `kube`, it names kubelet's
/// certificate symlink as kubelet's own kubeconfig does on a kubeadm
/// node, so kubelet's certificate manager finds it and rotates it.
fn kubeconfig(proxy: std::net::SocketAddr, kube: Option<&KubeOptions>) -> String {
    let user = match kube {
        None => " {}\n".to_string(),
        Some(k) => {
            let current = k.current().display().to_string();
            format!("\n    client-certificate: {current}\n    client-key: {current}\n")
        }
    };
    format!(
        "{MARK}\napiVersion: v1\nkind: Config\nclusters:\n- name: tether\n  cluster:\n    server: http://{proxy}\ncontexts:\n- name: tether\n  context:\n    cluster: tether\n    user: kubelet\ncurrent-context: tether\nusers:\n- name: kubelet\n  user:{user}"
    )
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What `reset` was asked to remove.
#[derive(Debug, Clone)]
pub struct ResetOptions {
    /// The edge config.
    pub config: PathBuf,
    /// The identity directory.
    pub dir: PathBuf,
    /// The kubelet kubeconfig.
    pub kubeconfig: PathBuf,
}

/// Undoes a join: removes the identity (certificate and key), the CA, the
/// kubeconfig, the cache the config names, and the config, reporting each.
/// A config or kubeconfig join did not write (no mark) is left alone and
/// named. Files already gone are not an error: reset may be run twice.
pub fn reset(opts: &ResetOptions, out: &mut dyn Write) -> Result<(), String> {
    let mut removed = 0;
    let mut kept = Vec::new();
    let mut remove = |p: &Path, out: &mut dyn Write| -> Result<(), String> {
        match std::fs::remove_file(p) {
            Ok(()) => {
                removed += 1;
                let _ = writeln!(out, "removed {}", p.display());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: cannot remove: {e}", p.display())),
        }
    };
    let written_by_join = |p: &Path| std::fs::read_to_string(p).is_ok_and(|t| t.starts_with(MARK));
    let mut cache = None;
    if opts.config.exists() {
        if written_by_join(&opts.config) {
            if let Ok(text) = std::fs::read_to_string(&opts.config) {
                let base = opts.config.parent().unwrap_or(Path::new("/"));
                cache = config::checked(&text, base)
                    .ok()
                    .and_then(|c| c.proxy.cache);
            }
        } else {
            kept.push(opts.config.clone());
        }
    }
    remove(&opts.dir.join(IDENTITY_FILE), out)?;
    remove(&opts.dir.join(CA_FILE), out)?;
    if opts.kubeconfig.exists() && !written_by_join(&opts.kubeconfig) {
        kept.push(opts.kubeconfig.clone());
    } else {
        remove(&opts.kubeconfig, out)?;
    }
    if let Some(db) = cache {
        // The cluster's objects, kept for outages: they belong to the
        // cluster this node leaves.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            remove(Path::new(&p), out)?;
        }
    }
    if !kept.contains(&opts.config) {
        remove(&opts.config, out)?;
    }
    for p in &kept {
        let _ = writeln!(
            out,
            "left {} alone: tether-edge join did not write it",
            p.display()
        );
    }
    if removed == 0 {
        let _ = writeln!(
            out,
            "nothing to remove: this board has no identity from a join"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_kubeconfig_points_at_the_proxy() {
        let k = kubeconfig("127.0.0.1:10261".parse().expect("addr"), None);
        assert!(k.starts_with(MARK));
        assert!(k.contains("server: http://127.0.0.1:10261\n"));
        assert!(k.ends_with("  user: {}\n"));
    }

    #[test]
    fn with_kube_token_the_config_and_kubeconfig_name_kubelets_symlink() {
        let kube = KubeOptions {
            token: "abcdef.0123456789abcdef".into(),
            ca: None,
            pki: PathBuf::from(kubelet::DEFAULT_PKI),
            timeout: kubelet::DEFAULT_TIMEOUT,
        };
        let k = kubeconfig("127.0.0.1:10261".parse().expect("addr"), Some(&kube));
        assert!(k.ends_with("  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n"), "{k}");
        let opts = JoinOptions {
            hub: "hub.example:7443".into(),
            token: "aaaaaa.bbbbbbbbbbbbbbbb".into(),
            ca_hash: CaHash::parse(&format!("sha256:{}", "0".repeat(64))).expect("hash"),
            node: NodeName::new("edge-1").expect("name"),
            board: None,
            boards: PathBuf::from(DEFAULT_BOARDS),
            config: PathBuf::from("/etc/tether/edge.toml"),
            dir: PathBuf::from(DEFAULT_DIR),
            kubeconfig: PathBuf::from(DEFAULT_KUBECONFIG),
            force: false,
            timeout: Duration::from_secs(10),
            kube: Some(kube),
        };
        let text = render_config(&opts).expect("renders");
        let cfg = config::checked(&text, Path::new("/etc/tether")).expect("valid");
        let api = cfg.apiserver.expect("[apiserver]");
        assert_eq!(api.ca, PathBuf::from(kubelet::DEFAULT_CA));
        assert_eq!(
            api.cert,
            PathBuf::from("/var/lib/kubelet/pki/kubelet-client-current.pem")
        );
        assert_eq!(api.key, api.cert);
        assert_eq!(api.upstream.as_deref(), Some("kube-apiserver"));
    }
}

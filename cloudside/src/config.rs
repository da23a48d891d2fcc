//! The hub's configuration file: where it listens, how it authenticates
//! nodes, which upstreams edges may reach, and its limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_conf::{Document, Errors, Table};
use tether_link::session;
use tether_link::topic::NodeName;

/// TLS settings of the link listener.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The hub's serving certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA for node client certificates; without it only tokens work.
    pub client_ca: Option<PathBuf>,
}

/// An upstream edges may open streams to, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` the hub dials.
    pub address: String,
    /// Limit for that dial.
    pub connect_timeout: Duration,
}

/// A cloud-side port that reaches a port on one edge board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    /// Where the hub listens.
    pub listen: SocketAddr,
    /// The node whose port is reached.
    pub node: NodeName,
    /// For an HTTP service: the path prefix it is published under (`/edge-1/ui`);
    /// exposes sharing `listen` with a path form one HTTP listener. `None`: the
    /// port is relayed as TCP (which also carries HTTPS end to end).
    pub path: Option<String>,
    /// The port on the board (the edge's allow_ports must list it).
    pub port: u16,
}

/// The MQTT broker a replica meets edges at, instead of (or besides)
/// accepting direct links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// `host:port` of the broker (plain TCP on a trusted network or loopback).
    pub address: String,
    /// The replica's user at the broker.
    pub username: Option<String>,
    /// Its password, read from `password_file`.
    pub password: Option<String>,
    /// CA of the broker's certificate: with it the connection uses TLS 1.3.
    pub ca: Option<PathBuf>,
    /// The name the broker's certificate must carry [default: its host].
    pub server_name: String,
}

/// Limits that protect the hub from hostile or broken peers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TLS handshake plus CONNECT must finish within this (slowloris).
    pub handshake_timeout: Duration,
    /// Connections still in handshake at once; more are closed at once.
    pub max_handshakes: usize,
    /// Links up at once.
    pub max_links: usize,
    /// How long a node's session is kept after its link dropped.
    pub session_expiry: Duration,
}

/// kube-apiserver's egress (`[egress]`): where it sends HTTP CONNECT for
/// kubelets and other node ports, and for what else it reaches in the
/// cluster (webhooks and aggregated APIs by ClusterIP or pod address).
#[derive(Debug, Clone)]
pub struct Egress {
    /// TLS listener, if any.
    pub listen: Option<SocketAddr>,
    /// Its serving certificate chain and key, and the CA of the client
    /// certificates it requires (kube-apiserver's).
    pub tls: Option<Tls>,
    /// Unix socket listener, if any (no TLS; the socket file's mode guards it).
    pub uds: Option<PathBuf>,
    /// How long the edge may take to reach the port (or the hub to
    /// resolve and dial a host that is no node's) before the CONNECT fails.
    pub connect_timeout: Duration,
    /// What becomes of a CONNECT to a host that is no node's (`direct`).
    pub direct: Direct,
    /// What such a CONNECT may reach (`direct_allow`).
    pub direct_policy: crate::egress::policy::Policy,
}

/// `[egress] direct`: what the hub does with a CONNECT whose host is
/// neither a node's name nor an address a node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direct {
    /// `"cluster"` (the default): the hub dials it itself, as
    /// konnectivity's server does. kube-apiserver's `cluster` egress also
    /// carries its calls to admission webhooks and aggregated APIs (by
    /// ClusterIP or pod address); with the hub in the cluster this egress is
    /// its only way to reach them, so refusing them breaks those calls.
    #[default]
    Cluster,
    /// `"none"`: refuse it with 404 (the hub outside the cluster network,
    /// where such addresses mean nothing or something else).
    Off,
}

/// How the hub authenticates to kube-apiserver for `[autonomy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiIdentity {
    /// A client certificate chain and its key (the hub's own identity).
    Certificate {
        /// The certificate chain file.
        cert: PathBuf,
        /// Its private key file.
        key: PathBuf,
    },
    /// A bearer token read from this file before every request (a
    /// ServiceAccount token, which kubelet rotates in place when the hub
    /// runs in the cluster).
    Token(PathBuf),
}

/// `[autonomy]` (issue 6): the hub renews the Lease of a node that is cut
/// off from it while its unit votes it alive (or its Node carries
/// `tether.io/autonomy: "true"`), so Kubernetes does not evict its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autonomy {
    /// kube-apiserver's host (name or IP, no brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The name its serving certificate must carry [default: `host`].
    pub server_name: String,
    /// CA of kube-apiserver's serving certificate.
    pub ca: PathBuf,
    /// How the hub proves who it is.
    pub identity: ApiIdentity,
    /// How often a protected node's Lease is renewed (and cut-off nodes
    /// are looked at).
    pub renew_every: Duration,
    /// A linked node whose link received nothing for this long is checked
    /// (a stream the edge always refuses): a black hole is otherwise seen
    /// only after 1.5 × the edge's keepalive, later than Kubernetes' node
    /// grace. `None`: `"0s"`, no checks.
    pub link_check_after: Option<Duration>,
    /// How long a check waits for the edge's answer before the link is
    /// dropped as dead.
    pub link_check_timeout: Duration,
    /// The pod webhook (`webhook_listen`, `webhook_cert`, `webhook_key`),
    /// if configured.
    pub webhook: Option<Webhook>,
}

/// The mutating admission webhook of `[autonomy]`: kube-apiserver calls it
/// over HTTPS for pods labelled `tether.io/offline: autonomy`, and it gives
/// them tolerations without a time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where it listens (HTTPS).
    pub listen: SocketAddr,
    /// Its serving certificate chain (PEM): kube-apiserver checks it
    /// against the `caBundle` of the MutatingWebhookConfiguration.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// The longest `renew_every`: kube-controller-manager marks a node
/// Unknown after `--node-monitor-grace-period` (40 s by default) without a
/// renewal, so the hub must renew well within it, as kubelet does every
/// 10 s.
pub const MAX_RENEW_EVERY: Duration = Duration::from_secs(20);

/// The default `link_check_after`: kubelet renews its Lease every 10 s
/// through the link, so a node with a kubelet is never this quiet.
pub const LINK_CHECK_AFTER: Duration = Duration::from_secs(15);

/// The default `link_check_timeout`: ample for an answer over a slow
/// uplink, and 15 s + 5 s of silence leaves the first renewal well within
/// the 40 s node grace.
pub const LINK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the hub reads from its config file.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// Where edges link in directly; `None` with only a broker.
    pub listen_link: Option<SocketAddr>,
    /// The broker, for scale-out with several replicas.
    pub broker: Option<Broker>,
    /// Where /healthz, /metrics and /nodes are served.
    pub listen_admin: Option<SocketAddr>,
    /// `None`: plaintext links (tests only).
    pub tls: Option<Tls>,
    /// Token file: lines `<node> <token>`.
    pub token_file: Option<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// Session settings (keepalive used when an edge announces none).
    pub session: session::Config,
    /// Named upstreams.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Exposed edge ports.
    pub exposes: Vec<Expose>,
    /// kube-apiserver's egress endpoint, if configured.
    pub egress: Option<Egress>,
    /// The autonomy controller, if configured (issue 6).
    pub autonomy: Option<Autonomy>,
    /// Joins and renewals of node certificates, if configured (issue 7).
    pub join: Option<Join>,
}

/// `[join]` (issue 7): the hub signs node certificates with the CA that
/// `tether-hub init` made, for edges that bring a bootstrap token (join)
/// or their current certificate (renewal).
#[derive(Debug, Clone)]
pub struct Join {
    /// The state directory: tokens and node records, and by default the CA
    /// (`dir`, default `/var/lib/tether-hub`).
    pub dir: PathBuf,
    /// The CA certificate (`ca`, default `<dir>/ca.pem`); in a pod, a
    /// read-only Secret while `dir` is a volume.
    pub ca: PathBuf,
    /// The CA key (`ca_key`, default `<dir>/ca-key.pem`).
    pub ca_key: PathBuf,
    /// How long a node certificate is valid (`certificate_lifetime`,
    /// default 90 days).
    pub lifetime: Duration,
    /// How long after its expiry a certificate may still be renewed on its
    /// key (`renew_grace`, default 30 days); past it the node needs a token.
    pub grace: Duration,
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> Result<HubConfig, String> {
    tether_conf::cli::load(path, parse)
}

fn addr(t: &mut Table<'_>, key: &str, errors: &mut Errors) -> Option<SocketAddr> {
    let text = errors.opt(t.str(key))?;
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(t.error(
                key,
                format!("{text:?} is not an address like \"0.0.0.0:7443\""),
            ));
            None
        }
    }
}

/// Parses config text; relative paths are taken from `base`.
pub fn parse(text: &str, base: &Path) -> Result<HubConfig, Errors> {
    let doc = Document::parse(text)?;
    let mut errors = Errors::new();
    let mut root = doc.root();
    let log_level = errors
        .opt(root.str("log_level"))
        .unwrap_or("info")
        .to_owned();
    if log_level.parse::<log::LevelFilter>().is_err() {
        errors.push(root.error("log_level", "must be error, warn, info, debug or trace"));
    }
    let (listen_link, listen_admin) = match errors.opt(root.table("listen")) {
        Some(mut t) => {
            let link = addr(&mut t, "link", &mut errors);
            (link, addr(&mut t, "admin", &mut errors))
        }
        // Missing link addresses are reported below, knowing about [broker].
        None => (None, None),
    };
    let tls = match errors.opt(root.table("tls")) {
        Some(mut t) => {
            let plaintext = errors.opt(t.bool("plaintext")).unwrap_or(false);
            let mut path = |key: &str| errors.opt(t.str(key)).map(|p| base.join(p));
            let cert = path("cert");
            let key = path("key");
            let client_ca = path("client_ca");
            match (plaintext, cert, key) {
                (true, None, None) => None,
                (false, Some(cert), Some(key)) => Some(Tls {
                    cert,
                    key,
                    client_ca,
                }),
                (true, _, _) => {
                    errors.push(t.error("plaintext", "plaintext = true cannot go with cert/key"));
                    None
                }
                (false, _, _) => {
                    errors.push(t.error(
                        "cert",
                        "cert and key are both required (or plaintext = true for tests)",
                    ));
                    None
                }
            }
        }
        None => {
            if listen_link.is_some() {
                errors.push(root.error("tls", "missing [tls] table with cert and key"));
            }
            None
        }
    };
    let broker = match errors.opt(root.table("broker")) {
        Some(mut t) => {
            let address = errors.opt(t.str("address"));
            if address.is_none() {
                errors.push(t.error("address", "missing: the broker as \"host:port\""));
            }
            let username = errors.opt(t.str("username")).map(str::to_owned);
            let password = match errors.opt(t.str("password_file")) {
                Some(f) => match std::fs::read_to_string(base.join(f)) {
                    Ok(p) => Some(p.trim().to_owned()),
                    Err(e) => {
                        errors.push(t.error("password_file", format!("cannot read {f}: {e}")));
                        None
                    }
                },
                None => None,
            };
            let ca = errors.opt(t.str("ca")).map(|p| base.join(p));
            let server_name = errors.opt(t.str("server_name")).map(str::to_owned);
            address.map(|a| Broker {
                address: a.to_owned(),
                username,
                password,
                ca,
                server_name: server_name.unwrap_or_else(|| {
                    a.rsplit_once(':')
                        .map_or(a, |(h, _)| h)
                        .trim_matches(['[', ']'])
                        .to_owned()
                }),
            })
        }
        None => None,
    };
    let token_file = match errors.opt(root.table("auth")) {
        Some(mut t) => errors.opt(t.str("token_file")).map(|p| base.join(p)),
        None => None,
    };
    let limits = {
        let mut t = errors.opt(root.table("limits"));
        let mut dur = |key: &str, d: Duration| match t.as_mut() {
            Some(t) => match errors.opt(t.duration(key)) {
                Some(v) if v.is_zero() => {
                    errors.push(t.error(key, "must be more than 0s"));
                    d
                }
                Some(v) => v,
                None => d,
            },
            None => d,
        };
        let handshake_timeout = dur("handshake_timeout", Duration::from_secs(10));
        let session_expiry = dur("session_expiry", Duration::from_secs(600));
        let mut count = |key: &str, d: usize| match t.as_mut() {
            Some(t) => match errors.opt(t.u64(key)) {
                Some(0) => {
                    errors.push(t.error(key, "must be at least 1"));
                    d
                }
                Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
                None => d,
            },
            None => d,
        };
        Limits {
            handshake_timeout,
            max_handshakes: count("max_handshakes", 1024),
            max_links: count("max_links", 50_000),
            session_expiry,
        }
    };
    let session = match errors.opt(root.table("link")) {
        Some(mut t) => session::Config::read(&mut t, &mut errors),
        None => session::Config::default(),
    };
    let mut upstreams = BTreeMap::new();
    for (name, mut t) in errors.take(root.sub_tables("upstream")).unwrap_or_default() {
        let address = errors.opt(t.str("address"));
        if address.is_none() {
            errors.push(t.error(
                "address",
                "missing: host:port the hub dials for this upstream",
            ));
        }
        let connect_timeout = errors
            .opt(t.duration("connect_timeout"))
            .unwrap_or(Duration::from_secs(5));
        if let Some(address) = address {
            if !address.contains(':') {
                errors.push(t.error("address", format!("{address:?} has no port")));
            }
            upstreams.insert(
                name.to_owned(),
                Upstream {
                    address: address.to_owned(),
                    connect_timeout,
                },
            );
        }
    }
    let mut exposes = Vec::new();
    for mut t in errors.take(root.tables("expose")).unwrap_or_default() {
        let listen = addr(&mut t, "listen", &mut errors);
        let node = errors
            .opt(t.str("node"))
            .and_then(|n| match NodeName::new(n) {
                Ok(n) => Some(n),
                Err(e) => {
                    errors.push(t.error("node", e.to_string()));
                    None
                }
            });
        let port = errors
            .opt(t.u64("port"))
            .and_then(|p| match u16::try_from(p) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    errors.push(t.error("port", format!("{p} is not a TCP port")));
                    None
                }
            });
        let path = errors.opt(t.str("path")).map(str::to_owned);
        if let Some(p) = &path {
            if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') || p.contains(['?', ' ', '#'])
            {
                errors.push(t.error(
                    "path",
                    format!("{p:?} is not a path prefix like \"/edge-1/ui\""),
                ));
            }
        }
        match (listen, node, port) {
            (Some(listen), Some(node), Some(port)) => {
                let clash = exposes.iter().any(|e: &Expose| {
                    e.listen == listen && (e.path.is_none() || path.is_none() || e.path == path)
                });
                if clash {
                    errors.push(t.error(
                        "listen",
                        format!("{listen} is already taken by another [[expose]] (several may share it only with different paths)"),
                    ));
                }
                exposes.push(Expose {
                    listen,
                    node,
                    port,
                    path,
                })
            }
            _ => errors.push(t.error("", "an [[expose]] needs listen, node and port")),
        }
    }
    let egress = errors.opt(root.table("egress")).map(|mut t| {
        let listen = addr(&mut t, "listen", &mut errors);
        let mut path = |key: &str| errors.opt(t.str(key)).map(|p| base.join(p));
        let (cert, key, client_ca, uds) = (path("cert"), path("key"), path("client_ca"), path("uds"));
        let connect_timeout = errors
            .opt(t.duration("connect_timeout"))
            .unwrap_or(Duration::from_secs(5));
        let tls = match (listen.is_some(), cert, key, client_ca) {
            (false, None, None, None) => None,
            (true, Some(cert), Some(key), Some(client_ca)) => Some(Tls {
                cert,
                key,
                client_ca: Some(client_ca),
            }),
            _ => {
                errors.push(t.error(
                    "listen",
                    "a TLS egress needs listen, cert, key and client_ca (kube-apiserver's client CA)",
                ));
                None
            }
        };
        if listen.is_none() && uds.is_none() {
            errors.push(t.error("", "[egress] needs listen (TLS) or uds (unix socket), or both"));
        }
        let direct = match errors.opt(t.str("direct")) {
            None | Some("cluster") => Direct::Cluster,
            Some("none") => Direct::Off,
            Some(other) => {
                errors.push(t.error(
                    "direct",
                    format!("{other:?}: write \"cluster\" (the hub dials hosts that are no node's) or \"none\" (it refuses them)"),
                ));
                Direct::Cluster
            }
        };
        let allow = errors.opt(t.str_array("direct_allow")).map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| match b.parse::<crate::egress::policy::Cidr>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(t.error("direct_allow", e));
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        match (&allow, direct) {
            (Some(_), Direct::Off) => errors.push(t.error(
                "direct_allow",
                "direct_allow goes with direct = \"cluster\": with \"none\" the hub dials nothing itself",
            )),
            (Some(a), _) if a.is_empty() => errors.push(t.error(
                "direct_allow",
                "an empty direct_allow allows nothing: leave it out (any address but loopback, link-local, unspecified, multicast) or write direct = \"none\"",
            )),
            _ => {}
        }
        Egress {
            listen,
            tls,
            uds,
            connect_timeout,
            direct,
            direct_policy: crate::egress::policy::Policy { allow },
        }
    });
    let autonomy = match errors.opt(root.table("autonomy")) {
        Some(mut t) => parse_autonomy(&mut t, base, &upstreams, &mut errors),
        None => None,
    };
    let join = errors.opt(root.table("join")).map(|mut t| {
        let dir = errors
            .opt(t.str("dir"))
            .map_or_else(|| PathBuf::from(crate::pki::DEFAULT_DIR), |d| base.join(d));
        let ca = errors
            .opt(t.str("ca"))
            .map_or_else(|| dir.join(crate::pki::CA_CERT), |p| base.join(p));
        let ca_key = errors
            .opt(t.str("ca_key"))
            .map_or_else(|| dir.join(crate::pki::CA_KEY), |p| base.join(p));
        let day = Duration::from_secs(86_400);
        let lifetime = errors
            .opt(t.duration("certificate_lifetime"))
            .unwrap_or(90 * day);
        // Under a minute only makes sense in tests of expiry and renewal.
        if lifetime < Duration::from_secs(10) || lifetime > 3650 * day {
            errors.push(t.error(
                "certificate_lifetime",
                "out of range: 10s to 3650d (edges renew at two thirds of it)",
            ));
        }
        let grace = errors.opt(t.duration("renew_grace")).unwrap_or(30 * day);
        if grace > 3650 * day {
            errors.push(t.error("renew_grace", "out of range: 0s to 3650d"));
        }
        Join {
            dir,
            ca,
            ca_key,
            lifetime,
            grace,
        }
    });
    errors.take(root.finish());
    errors.into_result()?;
    if listen_link.is_none() && broker.is_none() {
        return Err(Errors(vec![tether_conf::Error::new(
            None,
            Some("listen.link".into()),
            "missing: where edges link in (or a [broker] to meet them at)",
        )]));
    }
    Ok(HubConfig {
        log_level,
        listen_link,
        listen_admin,
        broker,
        tls,
        token_file,
        limits,
        session,
        upstreams,
        exposes,
        egress,
        autonomy,
        join,
    })
}

/// Splits `https://host[:port]` into host and port (443 by default).
pub fn parse_https_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        format!("{url:?} is not an https:// address like \"https://10.0.0.1:6443\" (kube-apiserver serves only TLS)")
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{url:?}: give only scheme, host and port, like \"https://10.0.0.1:6443\""
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in an IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{url:?}: {p:?} is not a TCP port")),
        },
        None => 443,
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

/// Reads `[autonomy]`. Without `apiserver`, the address of
/// `[upstream.kube-apiserver]` is used: edges reach kube-apiserver through
/// it, so it is where the hub reaches it too.
fn parse_autonomy(
    t: &mut Table<'_>,
    base: &Path,
    upstreams: &BTreeMap<String, Upstream>,
    errors: &mut Errors,
) -> Option<Autonomy> {
    let url = match errors.opt(t.str("apiserver")) {
        Some(u) => Some(u.to_owned()),
        None => upstreams
            .get("kube-apiserver")
            .map(|u| format!("https://{}", u.address)),
    };
    let endpoint = match url {
        Some(u) => match parse_https_url(&u) {
            Ok(hp) => Some(hp),
            Err(e) => {
                errors.push(t.error("apiserver", e));
                None
            }
        },
        None => {
            errors.push(t.error(
                "apiserver",
                "missing: kube-apiserver as \"https://host:port\" (or an [upstream.kube-apiserver] whose address the hub can use)",
            ));
            None
        }
    };
    let server_name = errors.opt(t.str("server_name")).map(str::to_owned);
    let mut path = |key: &str| errors.opt(t.str(key)).map(|p| base.join(p));
    let (ca, cert, key, token_file) = (path("ca"), path("cert"), path("key"), path("token_file"));
    if ca.is_none() {
        errors.push(t.error(
            "ca",
            "missing: the CA of kube-apiserver's serving certificate (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)",
        ));
    }
    let identity = match (cert, key, token_file) {
        (Some(cert), Some(key), None) => Some(ApiIdentity::Certificate { cert, key }),
        (None, None, Some(token)) => Some(ApiIdentity::Token(token)),
        (None, None, None) => {
            errors.push(t.error(
                "token_file",
                "missing: the hub's identity at kube-apiserver, cert and key or token_file (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/token)",
            ));
            None
        }
        (_, _, Some(_)) => {
            errors.push(t.error("token_file", "give cert and key, or token_file, not both"));
            None
        }
        _ => {
            errors.push(t.error("cert", "cert and key go together"));
            None
        }
    };
    let renew_every = match errors.opt(t.duration("renew_every")) {
        Some(d) if d < Duration::from_secs(1) || d > MAX_RENEW_EVERY => {
            errors.push(t.error(
                "renew_every",
                format!(
                    "must be from 1s to {}s: kube-controller-manager marks a node Unknown 40s (--node-monitor-grace-period) after its last renewal",
                    MAX_RENEW_EVERY.as_secs()
                ),
            ));
            Duration::from_secs(10)
        }
        Some(d) => d,
        None => Duration::from_secs(10),
    };
    let link_check_after = match errors.opt(t.duration("link_check_after")) {
        Some(d) if d.is_zero() => None,
        Some(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => {
            errors.push(t.error(
                "link_check_after",
                "must be \"0s\" (no checks) or from 1s to 1h: a linked node silent this long is checked",
            ));
            Some(LINK_CHECK_AFTER)
        }
        Some(d) => Some(d),
        None => Some(LINK_CHECK_AFTER),
    };
    let link_check_timeout = match errors.opt(t.duration("link_check_timeout")) {
        Some(d) if d < Duration::from_millis(100) || d > Duration::from_secs(60) => {
            errors.push(t.error(
                "link_check_timeout",
                "must be from 100ms to 60s: how long a check waits for the edge's answer before the link is dropped",
            ));
            LINK_CHECK_TIMEOUT
        }
        Some(d) => d,
        None => LINK_CHECK_TIMEOUT,
    };
    let webhook = parse_webhook(t, base, errors);
    let ((host, port), ca, identity) = (endpoint?, ca?, identity?);
    Some(Autonomy {
        server_name: server_name.unwrap_or_else(|| host.clone()),
        host,
        port,
        ca,
        identity,
        renew_every,
        link_check_after,
        link_check_timeout,
        webhook,
    })
}

/// Reads the webhook keys of `[autonomy]`: all three or none, since
/// kube-apiserver calls webhooks only over HTTPS.
fn parse_webhook(t: &mut Table<'_>, base: &Path, errors: &mut Errors) -> Option<Webhook> {
    let listen = addr(t, "webhook_listen", errors);
    let mut path = |key: &str| errors.opt(t.str(key)).map(|p| base.join(p));
    let (cert, key) = (path("webhook_cert"), path("webhook_key"));
    match (listen, cert, key) {
        (Some(listen), Some(cert), Some(key)) => Some(Webhook { listen, cert, key }),
        (None, None, None) => None,
        (Some(_), None, _) | (Some(_), _, None) => {
            errors.push(t.error(
                "webhook_cert",
                "the webhook needs webhook_cert and webhook_key (PEM): kube-apiserver calls webhooks only over HTTPS",
            ));
            None
        }
        _ => {
            // A listen that did not parse was reported already.
            if t.str("webhook_listen").ok().flatten().is_none() {
                errors.push(t.error(
                    "webhook_listen",
                    "missing: webhook_cert and webhook_key need webhook_listen, like \"0.0.0.0:8443\"",
                ));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let c = parse(
            "[listen]\nlink = \"127.0.0.1:7443\"\nadmin = \"127.0.0.1:7080\"\n[tls]\ncert = \"hub.pem\"\nkey = \"hub-key.pem\"\nclient_ca = \"ca.pem\"\n[auth]\ntoken_file = \"tokens\"\n[upstream.kube-apiserver]\naddress = \"127.0.0.1:6443\"\n[[expose]]\nlisten = \"127.0.0.1:2222\"\nnode = \"edge-1\"\nport = 22\n",
            Path::new("/etc/tether"),
        )
        .expect("valid");
        assert_eq!(
            c.tls.expect("tls").client_ca,
            Some(PathBuf::from("/etc/tether/ca.pem"))
        );
        assert_eq!(c.upstreams["kube-apiserver"].address, "127.0.0.1:6443");
        assert_eq!(c.exposes[0].port, 22);
    }

    #[test]
    fn errors_with_lines() {
        let e = parse(
            "[listen]\nlink = \"nowhere\"\n[tls]\nplaintext = true\n[limits]\nmax_links = 0\nspeed = 3\n[upstream.x]\nconnect_timeout = \"1s\"\n",
            Path::new("/"),
        )
        .expect_err("invalid")
        .to_string();
        for needle in [
            "line 2: listen.link:",
            "line 6: limits.max_links:",
            "line 7: limits.speed: unknown key",
            "upstream.x.address: missing",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
    }

    #[test]
    fn egress_and_published_paths() {
        let base = "[listen]\nlink = \"127.0.0.1:7443\"\n[tls]\nplaintext = true\n[auth]\ntoken_file = \"t\"\n";
        let c = parse(
            &format!("{base}[egress]\nlisten = \"0.0.0.0:8131\"\ncert = \"e.pem\"\nkey = \"e-key.pem\"\nclient_ca = \"ca.pem\"\nuds = \"/run/e.sock\"\n[[expose]]\nlisten = \"127.0.0.1:8080\"\nnode = \"edge-1\"\nport = 80\npath = \"/edge-1/ui\"\n[[expose]]\nlisten = \"127.0.0.1:8080\"\nnode = \"edge-2\"\nport = 80\npath = \"/edge-2/ui\"\n"),
            Path::new("/etc/tether"),
        )
        .expect("valid");
        let egress = c.egress.expect("egress");
        assert_eq!(egress.uds, Some(PathBuf::from("/run/e.sock")));
        assert_eq!(
            egress.tls.and_then(|t| t.client_ca),
            Some(PathBuf::from("/etc/tether/ca.pem"))
        );
        assert_eq!(c.exposes[1].path.as_deref(), Some("/edge-2/ui"));
        // Hosts that are no node's are dialled by default, anywhere but
        // the never-dialled blocks.
        assert_eq!(egress.direct, Direct::Cluster);
        assert_eq!(egress.direct_policy.allow, None);
        let with = |keys: &str| {
            parse(
                &format!("{base}[egress]\nuds = \"/run/e.sock\"\n{keys}"),
                Path::new("/"),
            )
        };
        let e = with("direct = \"none\"\n")
            .expect("valid")
            .egress
            .expect("egress");
        assert_eq!(e.direct, Direct::Off);
        let e = with("direct = \"cluster\"\ndirect_allow = [\"10.96.0.0/12\", \"fd00::/8\"]\n")
            .expect("valid")
            .egress
            .expect("egress");
        let allow: Vec<String> = e
            .direct_policy
            .allow
            .iter()
            .flatten()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(allow, ["10.96.0.0/12", "fd00::/8"]);
        for (keys, needle) in [
            ("direct = \"yes\"\n", "egress.direct: \"yes\": write \"cluster\""),
            ("direct = \"none\"\ndirect_allow = [\"10.0.0.0/8\"]\n", "direct_allow goes with direct = \"cluster\""),
            ("direct_allow = []\n", "an empty direct_allow allows nothing"),
            ("direct_allow = [\"10.96.0.1/12\"]\n", "egress.direct_allow: \"10.96.0.1/12\" has bits set past its prefix: did you mean \"10.96.0.0/12\"?"),
            ("direct_allow = [\"10.0.0.0/8\", \"pods\"]\n", "\"pods\" is not an address block"),
            ("direct_allow = \"10.0.0.0/8\"\n", "egress.direct_allow"),
        ] {
            let e = with(keys).expect_err("invalid").to_string();
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
        for (text, needle) in [
            // A TLS egress without kube-apiserver's client CA.
            ("[egress]\nlisten = \"0.0.0.0:8131\"\ncert = \"e.pem\"\nkey = \"k.pem\"\n", "egress.listen: a TLS egress needs"),
            ("[egress]\nconnect_timeout = \"5s\"\n", "[egress] needs listen"),
            ("[[expose]]\nlisten = \"127.0.0.1:1\"\nnode = \"edge-1\"\nport = 80\npath = \"ui/\"\n", "is not a path prefix"),
            ("[[expose]]\nlisten = \"127.0.0.1:1\"\nnode = \"edge-1\"\nport = 80\n[[expose]]\nlisten = \"127.0.0.1:1\"\nnode = \"edge-1\"\nport = 81\npath = \"/x\"\n", "is already taken"),
        ] {
            let e = parse(&format!("{base}{text}"), Path::new("/"))
                .expect_err("invalid")
                .to_string();
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
    }

    #[test]
    fn join() {
        let base = "[listen]\nlink = \"127.0.0.1:7443\"\n[tls]\nplaintext = true\n[auth]\ntoken_file = \"t\"\n";
        let c = parse(&format!("{base}[join]\n"), Path::new("/etc/tether")).expect("valid");
        let j = c.join.expect("join");
        assert_eq!(j.dir, PathBuf::from(crate::pki::DEFAULT_DIR));
        assert_eq!(j.ca, PathBuf::from("/var/lib/tether-hub/ca.pem"));
        assert_eq!(j.ca_key, PathBuf::from("/var/lib/tether-hub/ca-key.pem"));
        assert_eq!(j.lifetime, Duration::from_secs(90 * 86_400));
        assert_eq!(j.grace, Duration::from_secs(30 * 86_400));
        let c = parse(
            &format!("{base}[join]\ndir = \"state\"\nca = \"/pki/ca.pem\"\ncertificate_lifetime = \"10s\"\nrenew_grace = \"0s\"\n"),
            Path::new("/etc/tether"),
        )
        .expect("valid");
        let j = c.join.expect("join");
        assert_eq!(j.dir, PathBuf::from("/etc/tether/state"));
        assert_eq!(j.ca, PathBuf::from("/pki/ca.pem"));
        assert_eq!(j.ca_key, PathBuf::from("/etc/tether/state/ca-key.pem"));
        for (bad, key) in [
            ("certificate_lifetime = \"9s\"", "join.certificate_lifetime"),
            (
                "certificate_lifetime = \"3651d\"",
                "join.certificate_lifetime",
            ),
            (
                "certificate_lifetime = \"soon\"",
                "join.certificate_lifetime",
            ),
            ("renew_grace = \"3651d\"", "join.renew_grace"),
            ("lifetime = \"1d\"", "join.lifetime"),
        ] {
            let e = parse(&format!("{base}[join]\n{bad}\n"), Path::new("/"))
                .map(|_| ())
                .expect_err(bad)
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn autonomy() {
        let base = "[listen]\nlink = \"127.0.0.1:7443\"\n[tls]\nplaintext = true\n[auth]\ntoken_file = \"t\"\n";
        let c = parse(
            &format!("{base}[autonomy]\napiserver = \"https://[::1]:6443\"\nca = \"ca.pem\"\ncert = \"hub.pem\"\nkey = \"hub-key.pem\"\nrenew_every = \"5s\"\nlink_check_after = \"0s\"\nlink_check_timeout = \"1500ms\"\n"),
            Path::new("/etc/tether"),
        )
        .expect("valid");
        let a = c.autonomy.expect("autonomy");
        assert_eq!(
            (a.host.as_str(), a.port, a.server_name.as_str()),
            ("::1", 6443, "::1")
        );
        assert_eq!(a.renew_every, Duration::from_secs(5));
        assert_eq!(a.link_check_after, None, "\"0s\" turns the check off");
        assert_eq!(a.link_check_timeout, Duration::from_millis(1500));
        assert_eq!(
            a.identity,
            ApiIdentity::Certificate {
                cert: PathBuf::from("/etc/tether/hub.pem"),
                key: PathBuf::from("/etc/tether/hub-key.pem")
            }
        );
        // Without apiserver, the kube-apiserver upstream's address.
        let c = parse(
            &format!("{base}[upstream.kube-apiserver]\naddress = \"10.0.0.1:6443\"\n[autonomy]\nca = \"ca.pem\"\ntoken_file = \"/var/run/token\"\n"),
            Path::new("/etc/tether"),
        )
        .expect("valid");
        let a = c.autonomy.expect("autonomy");
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.1", 6443));
        assert_eq!(
            a.identity,
            ApiIdentity::Token(PathBuf::from("/var/run/token"))
        );
        assert_eq!(a.renew_every, Duration::from_secs(10));
        assert_eq!(a.link_check_after, Some(Duration::from_secs(15)));
        assert_eq!(a.link_check_timeout, Duration::from_secs(5));
        assert_eq!(a.webhook, None);
        let c = parse(
            &format!("{base}[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nwebhook_listen = \"0.0.0.0:8443\"\nwebhook_cert = \"w.pem\"\nwebhook_key = \"w-key.pem\"\n"),
            Path::new("/etc/tether"),
        )
        .expect("valid");
        assert_eq!(
            c.autonomy.and_then(|a| a.webhook),
            Some(Webhook {
                listen: "0.0.0.0:8443".parse().expect("address"),
                cert: PathBuf::from("/etc/tether/w.pem"),
                key: PathBuf::from("/etc/tether/w-key.pem"),
            })
        );
        for (text, needle) in [
            ("[autonomy]\nca = \"ca.pem\"\ntoken_file = \"t\"\n", "autonomy.apiserver: missing"),
            ("[autonomy]\napiserver = \"http://x:1\"\nca = \"c\"\ntoken_file = \"t\"\n", "is not an https:// address"),
            ("[autonomy]\napiserver = \"https://x:0\"\nca = \"c\"\ntoken_file = \"t\"\n", "is not a TCP port"),
            ("[autonomy]\napiserver = \"https://x\"\ntoken_file = \"t\"\n", "autonomy.ca: missing"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\n", "autonomy.token_file: missing"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ncert = \"c\"\n", "cert and key go together"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nrenew_every = \"40s\"\n", "autonomy.renew_every: must be from 1s to 20s"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nlink_check_after = \"500ms\"\n", "autonomy.link_check_after: must be \"0s\" (no checks) or from 1s to 1h"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nlink_check_timeout = \"2m\"\n", "autonomy.link_check_timeout: must be from 100ms to 60s"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nwebhook_listen = \"0.0.0.0:8443\"\n", "autonomy.webhook_cert: the webhook needs webhook_cert and webhook_key"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nwebhook_cert = \"w.pem\"\nwebhook_key = \"w-key.pem\"\n", "autonomy.webhook_listen: missing"),
            ("[autonomy]\napiserver = \"https://x\"\nca = \"c\"\ntoken_file = \"t\"\nwebhook_listen = \"8443\"\nwebhook_cert = \"w.pem\"\nwebhook_key = \"k.pem\"\n", "autonomy.webhook_listen: \"8443\" is not an address"),
        ] {
            let e = parse(&format!("{base}{text}"), Path::new("/"))
                .expect_err("invalid")
                .to_string();
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
    }
}

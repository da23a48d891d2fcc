//! The edge's configuration file: what it links to, how, and what it lets
//! through. Every key is documented in `tether-edge --help` and in the
//! example under board-configs/.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_conf::{Document, Errors, Table};
use tether_link::session;
use tether_link::topic::NodeName;

/// How the edge proves who it is to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A client certificate (subject CN `system:node:<node>`) and its key.
    Certificate { cert: PathBuf, key: PathBuf },
    /// A token from the hub's token file, sent in CONNECT.
    Token(String),
}

/// How the link reaches the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    /// `host:port` of tether-hub, resolved at every connect.
    pub address: String,
    /// The name the hub's certificate must carry.
    pub server_name: String,
    /// CA that signed the hub's certificate; `None` only with `plaintext`.
    pub ca: Option<PathBuf>,
    /// Plain TCP without TLS: for tests on loopback only.
    pub plaintext: bool,
    /// The node's proof of identity.
    pub credentials: Option<Credentials>,
    /// `address` is an MQTT broker shared with several hub replicas, not a
    /// hub: streams are routed to the replica that accepted them.
    pub broker: bool,
    /// Local address the link connects from (multi-homed boards); `None`
    /// lets the kernel choose.
    pub source_address: Option<std::net::IpAddr>,
}

/// Reconnect and timing settings of the link.
#[derive(Debug, Clone)]
pub struct Link {
    /// Session limits and keepalive (shared with the hub).
    pub session: session::Config,
    /// Limit for name lookup, TCP connect and TLS handshake together (the
    /// CONNACK wait is bounded by 1.5 × keepalive, like any silence).
    pub connect_timeout: Duration,
    /// First reconnect delay ceiling.
    pub backoff_initial: Duration,
    /// Largest reconnect delay ceiling.
    pub backoff_max: Duration,
}

/// One local port that forwards to a hub upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Where the edge listens (normally on loopback).
    pub listen: SocketAddr,
    /// Name of the upstream in the hub's config.
    pub upstream: String,
}

/// How the edge reaches kube-apiserver: end-to-end HTTPS with the node's
/// own credentials, through the link (the default) or directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apiserver {
    /// Through the link: the hub upstream's name. `None` with `direct`.
    pub upstream: Option<String>,
    /// Direct mode: `host:port` of kube-apiserver, no hub.
    pub direct: Option<String>,
    /// The name on the apiserver's certificate.
    pub server_name: String,
    /// CA that signed the apiserver's certificate.
    pub ca: PathBuf,
    /// The node's client certificate (kubelet's, re-read when it rotates).
    pub cert: PathBuf,
    /// Its key (may be the same file as `cert`, as kubelet writes it).
    pub key: PathBuf,
}

/// The API proxy on the node (issue 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where kubelet and friends connect (`server: http://127.0.0.1:10261`).
    pub listen: SocketAddr,
    /// The SQLite cache file; `None` relays without caching.
    pub cache: Option<PathBuf>,
    /// Object bytes the cache keeps before evicting whole views.
    pub cache_quota: u64,
    /// SQLite page cache.
    pub page_cache: u64,
    /// Bytes of an answer held in memory while it is recorded; a larger
    /// list is written to the cache in pieces as it streams.
    pub record_buffer: u64,
    /// RSS the edge sheds load above (0: no budget); see [`crate::memory`].
    pub memory_budget: u64,
    /// Bytes of offline answers kept encoded in memory while kube-apiserver
    /// is away.
    pub answer_cache: u64,
}

/// Everything the edge reads from its config file.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This node's Kubernetes name: the link's client id.
    pub node: NodeName,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// The hub.
    pub hub: Hub,
    /// Link timings and limits.
    pub link: Link,
    /// Local ports the hub may open streams to.
    pub allow_ports: Vec<u16>,
    /// Local forwarding ports.
    pub forwards: Vec<Forward>,
    /// kube-apiserver, for the API proxy (issue 3); `None` without `[apiserver]`.
    pub apiserver: Option<Apiserver>,
    /// The API proxy; runs when `[apiserver]` is configured.
    pub proxy: ProxyConfig,
    /// Where `/healthz` and `/metrics` are served; `None`: nowhere.
    pub status: Option<SocketAddr>,
}

/// Reads and checks the config file at `path`. The error lists every
/// problem with its line and key.
pub fn load(path: &Path) -> Result<EdgeConfig, String> {
    tether_conf::cli::load(path, parse)
}

/// Parses config text; relative paths are taken from `base`.
pub fn parse(text: &str, base: &Path) -> Result<EdgeConfig, Errors> {
    let doc = Document::parse(text)?;
    let mut errors = Errors::new();
    let mut root = doc.root();
    let node = match errors.opt(root.str("node")) {
        Some(n) => match NodeName::new(n) {
            Ok(n) => Some(n),
            Err(e) => {
                errors.push(root.error("node", e.to_string()));
                None
            }
        },
        None => {
            errors.push(root.error(
                "node",
                "missing: the node's Kubernetes name, e.g. node = \"edge-1\"",
            ));
            None
        }
    };
    let log_level = errors
        .opt(root.str("log_level"))
        .unwrap_or("info")
        .to_owned();
    if log_level.parse::<log::LevelFilter>().is_err() {
        errors.push(root.error("log_level", "must be error, warn, info, debug or trace"));
    }
    let hub = match errors.opt(root.table("hub")) {
        Some(mut t) => read_hub(&mut t, base, &mut errors),
        None => {
            errors.push(root.error(
                "hub",
                "missing [hub] table with at least address = \"host:port\"",
            ));
            None
        }
    };
    let link = {
        let mut t = errors.opt(root.table("link"));
        read_link(t.as_mut(), &mut errors)
    };
    let mut allow_ports = vec![10250];
    if let Some(mut t) = errors.opt(root.table("services")) {
        if let Some(ports) = errors.opt(t.u64_array("allow_ports")) {
            allow_ports.clear();
            for p in ports {
                match u16::try_from(p) {
                    Ok(p) if p > 0 => allow_ports.push(p),
                    _ => errors
                        .push(t.error("allow_ports", format!("{p} is not a TCP port (1-65535)"))),
                }
            }
        }
    }
    let apiserver = match errors.opt(root.table("apiserver")) {
        Some(mut t) => read_apiserver(&mut t, base, &mut errors),
        None => None,
    };
    let proxy = match errors.opt(root.table("proxy")) {
        Some(mut t) => read_proxy(&mut t, base, &mut errors),
        None => ProxyConfig::default(),
    };
    let status = match errors.opt(root.table("status")) {
        Some(mut t) => match errors.opt(t.str("listen")) {
            Some(l) => match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(t.error(
                        "listen",
                        format!("{l:?} is not an address like \"127.0.0.1:10262\""),
                    ));
                    None
                }
            },
            None => None,
        },
        None => None,
    };
    let mut forwards = Vec::new();
    for mut t in errors.take(root.tables("forward")).unwrap_or_default() {
        let listen = match errors.opt(t.str("listen")) {
            Some(l) => match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(t.error(
                        "listen",
                        format!("{l:?} is not an address like \"127.0.0.1:6443\""),
                    ));
                    None
                }
            },
            None => {
                errors.push(t.error(
                    "listen",
                    "missing: address to listen on, e.g. \"127.0.0.1:16443\"",
                ));
                None
            }
        };
        let upstream = errors.opt(t.str("upstream"));
        if upstream.is_none() {
            errors.push(t.error(
                "upstream",
                "missing: name of an upstream in the hub's config",
            ));
        }
        if let (Some(listen), Some(upstream)) = (listen, upstream) {
            forwards.push(Forward {
                listen,
                upstream: upstream.to_owned(),
            });
        }
    }
    errors.take(root.finish());
    errors.into_result()?;
    match (node, hub) {
        (Some(node), Some(hub)) => Ok(EdgeConfig {
            node,
            log_level,
            hub,
            link,
            allow_ports,
            forwards,
            apiserver,
            proxy,
            status,
        }),
        // Both are reported above whenever missing.
        _ => Err(Errors(vec![tether_conf::Error::new(
            None,
            None,
            "incomplete config",
        )])),
    }
}

fn read_hub(t: &mut Table<'_>, base: &Path, errors: &mut Errors) -> Option<Hub> {
    let address = errors.opt(t.str("address"));
    if address.is_none() {
        errors.push(t.error("address", "missing: the hub as \"host:port\""));
    }
    let address = address?.to_owned();
    let Some((host, port)) = address.rsplit_once(':') else {
        errors.push(t.error(
            "address",
            format!("{address:?} has no port; write \"host:port\""),
        ));
        return None;
    };
    if port.parse::<u16>().is_err() || host.is_empty() {
        errors.push(t.error("address", format!("{address:?} is not \"host:port\"")));
    }
    let server_name = errors
        .opt(t.str("server_name"))
        .unwrap_or(host.trim_start_matches('[').trim_end_matches(']'))
        .to_owned();
    let plaintext = errors.opt(t.bool("plaintext")).unwrap_or(false);
    let broker = errors.opt(t.bool("broker")).unwrap_or(false);
    let source_address = errors
        .opt(t.str("source_address"))
        .and_then(|a| match a.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(t.error("source_address", format!("{a:?} is not an IP address")));
                None
            }
        });
    let mut path = |key: &str| errors.opt(t.str(key)).map(|p| base.join(p));
    let ca = path("ca");
    let cert = path("cert");
    let key = path("key");
    let token_file = path("token_file");
    if ca.is_none() && !plaintext {
        errors.push(t.error("ca", "missing: the CA file that signed the hub's certificate (or plaintext = true for tests)"));
    }
    let credentials = match (cert, key, token_file) {
        (Some(cert), Some(key), None) => Some(Credentials::Certificate { cert, key }),
        (None, None, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(token) if !token.trim().is_empty() => {
                Some(Credentials::Token(token.trim().to_owned()))
            }
            Ok(_) => {
                errors.push(t.error("token_file", format!("{} is empty", file.display())));
                None
            }
            Err(e) => {
                errors.push(t.error("token_file", format!("cannot read {}: {e}", file.display())));
                None
            }
        },
        (None, None, None) => None,
        (Some(_), None, _) | (None, Some(_), _) => {
            errors.push(t.error("cert", "cert and key go together"));
            None
        }
        (Some(_), Some(_), Some(_)) => {
            errors.push(t.error("token_file", "use either cert/key or token_file, not both"));
            None
        }
    };
    if credentials.is_none() && !plaintext {
        errors.push(t.error("", "no credentials: set cert and key, or token_file"));
    }
    Some(Hub {
        address,
        server_name,
        ca,
        plaintext,
        credentials,
        broker,
        source_address,
    })
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 10261)),
            cache: None,
            cache_quota: 256 << 20,
            page_cache: 2 << 20,
            record_buffer: 1 << 20,
            memory_budget: 20 << 20,
            answer_cache: 4 << 20,
        }
    }
}

fn read_proxy(t: &mut Table<'_>, base: &Path, errors: &mut Errors) -> ProxyConfig {
    let d = ProxyConfig::default();
    let listen = match errors.opt(t.str("listen")) {
        Some(l) => l.parse().unwrap_or_else(|_| {
            errors.push(t.error(
                "listen",
                format!("{l:?} is not an address like \"127.0.0.1:10261\""),
            ));
            d.listen
        }),
        None => d.listen,
    };
    ProxyConfig {
        listen,
        cache: errors.opt(t.str("cache")).map(|p| base.join(p)),
        cache_quota: errors.opt(t.bytes("cache_quota")).unwrap_or(d.cache_quota),
        page_cache: errors.opt(t.bytes("page_cache")).unwrap_or(d.page_cache),
        record_buffer: errors
            .opt(t.bytes("record_buffer"))
            .unwrap_or(d.record_buffer),
        memory_budget: errors
            .opt(t.bytes("memory_budget"))
            .unwrap_or(d.memory_budget),
        answer_cache: errors
            .opt(t.bytes("answer_cache"))
            .unwrap_or(d.answer_cache),
    }
}

fn read_apiserver(t: &mut Table<'_>, base: &Path, errors: &mut Errors) -> Option<Apiserver> {
    let upstream = errors.opt(t.str("upstream")).map(str::to_owned);
    let direct = errors.opt(t.str("direct")).map(str::to_owned);
    let server_name = errors
        .opt(t.str("server_name"))
        .unwrap_or("kubernetes")
        .to_owned();
    let mut path = |key: &str| {
        let p = errors.opt(t.str(key)).map(|p| base.join(p));
        if p.is_none() {
            errors.push(t.error(key, format!("missing: apiserver.{key} is a PEM file path")));
        }
        p
    };
    let (ca, cert, key) = (path("ca"), path("cert"), path("key"));
    let (upstream, direct) = match (upstream, direct) {
        (Some(_), Some(_)) => {
            errors.push(t.error(
                "direct",
                "use either upstream (through the hub) or direct, not both",
            ));
            return None;
        }
        (None, None) => (Some("kube-apiserver".to_owned()), None),
        other => other,
    };
    if let Some(d) = &direct {
        if !d
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            errors.push(t.error("direct", format!("{d:?} is not \"host:port\"")));
        }
    }
    Some(Apiserver {
        upstream,
        direct,
        server_name,
        ca: ca?,
        cert: cert?,
        key: key?,
    })
}

fn read_link(t: Option<&mut Table<'_>>, errors: &mut Errors) -> Link {
    let defaults = Link {
        session: session::Config::default(),
        connect_timeout: Duration::from_secs(20),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    };
    let Some(t) = t else {
        return defaults;
    };
    let session = session::Config::read(t, errors);
    let mut dur = |key: &str, default: Duration| match errors.opt(t.duration(key)) {
        Some(d) if d.is_zero() => {
            errors.push(t.error(key, "must be more than 0s"));
            default
        }
        Some(d) => d,
        None => default,
    };
    let connect_timeout = dur("connect_timeout", defaults.connect_timeout);
    let backoff_initial = dur("backoff_initial", defaults.backoff_initial);
    let backoff_max = dur("backoff_max", defaults.backoff_max);
    if backoff_max < backoff_initial {
        errors.push(t.error("backoff_max", "must not be less than backoff_initial"));
    }
    Link {
        session,
        connect_timeout,
        backoff_initial,
        backoff_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        parse(text, Path::new("/"))
            .map(|_| ())
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn minimal_plaintext() {
        let c = parse(
            "node = \"edge-1\"\n[hub]\naddress = \"127.0.0.1:7443\"\nplaintext = true\n",
            Path::new("/"),
        )
        .expect("valid");
        assert_eq!(c.node.as_str(), "edge-1");
        assert_eq!(c.allow_ports, vec![10250]);
        assert_eq!(c.hub.server_name, "127.0.0.1");
        assert_eq!(c.link.session.keepalive, Duration::from_secs(60));
    }

    #[test]
    fn apiserver_table() {
        let base = "node = \"edge-1\"\n[hub]\naddress = \"127.0.0.1:7443\"\nplaintext = true\n[apiserver]\n";
        let c = parse(
            &format!("{base}ca = \"ca.pem\"\ncert = \"k.pem\"\nkey = \"k.pem\"\n"),
            Path::new("/etc/t"),
        )
        .expect("valid");
        let api = c.apiserver.expect("apiserver");
        assert_eq!(api.upstream.as_deref(), Some("kube-apiserver"));
        assert_eq!(api.ca, Path::new("/etc/t/ca.pem"));
        let e = errors(&format!("{base}direct = \"x\"\nupstream = \"y\"\n"));
        assert!(e.contains("apiserver.direct: use either"), "{e}");
        assert!(e.contains("apiserver.ca: missing"), "{e}");
    }

    #[test]
    fn every_error_named_with_line() {
        let e = errors(
            "node = \"Edge_1\"\n[hub]\naddress = \"nohost\"\n[link]\nkeepalive = \"0s\"\nmax_inflight = 0\ncolour = 1\n[[forward]]\nlisten = \"x\"\n",
        );
        for needle in [
            "line 1: node:",
            "line 3: hub.address:",
            "line 5: link.keepalive:",
            "line 6: link.max_inflight:",
            "line 7: link.colour: unknown key",
            "line 9: forward[0].listen:",
            "forward[0].upstream: missing",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
    }
}

//! The edge's configuration file: what it links to, how, and what it lets
//! through. Every key is documented in `tether-edge --help` and in the
//! example under board-configs/.

use crate::health;
use std::collections::BTreeMap;
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
    /// Renew the client certificate once this percentage of its life has
    /// passed (`renew_at_percent`, default 67: two thirds); 0 turns
    /// renewal off (certificates made by hand, not by `tether-hub`).
    pub renew_at_percent: u8,
}

/// The default of `[hub] renew_at_percent`: at two thirds of the life.
pub const DEFAULT_RENEW_AT_PERCENT: u8 = 67;

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

/// The Rust targets a board can name in `[board] target`, with the CPU
/// architecture each runs (as `std::env::consts::ARCH` names it): the
/// targets cross/ builds and ECOSYSTEM.md found working on the boards.
pub const TARGETS: &[(&str, &str)] = &[
    ("arm-unknown-linux-musleabihf", "arm"),
    ("armv7-unknown-linux-gnueabihf", "arm"),
    ("armv7-unknown-linux-musleabihf", "arm"),
    ("thumbv7neon-unknown-linux-gnueabihf", "arm"),
    ("aarch64-unknown-linux-gnu", "aarch64"),
    ("aarch64-unknown-linux-musl", "aarch64"),
    ("x86_64-unknown-linux-gnu", "x86_64"),
    ("x86_64-unknown-linux-musl", "x86_64"),
];

/// The board a config is written for (`[board]`). The image build reads
/// `model` and `memory_max` from the file as text, so both keep one spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// The board model, like `rpi-zero-w`: the name of its file under
    /// board-configs/boards/.
    pub model: String,
    /// The Rust target the board's binary is built for, one of [`TARGETS`].
    pub target: String,
    /// The hard memory cap in bytes the systemd unit sets (`MemoryMax=`);
    /// always larger than `[proxy] memory_budget`.
    pub memory_max: u64,
}

impl Board {
    /// The CPU architecture of `target`, as `std::env::consts::ARCH` names it.
    pub fn arch(&self) -> &'static str {
        TARGETS
            .iter()
            .find(|(t, _)| *t == self.target)
            .map_or("unknown", |(_, arch)| arch)
    }

    /// What to warn about when the running binary was built for another
    /// architecture than the board's (`running`, normally
    /// `std::env::consts::ARCH`): the wrong binary was flashed. Arm versions
    /// are not told apart: an ARMv7 build on an ARMv6 board stops at its
    /// first ARMv7 instruction (SIGILL) before it gets this far.
    pub fn arch_mismatch(&self, running: &str) -> Option<String> {
        let arch = self.arch();
        (arch != running).then(|| {
            format!(
                "board {} is {arch} ({}) but this tether-edge was built for {running}: \
                 the wrong binary was installed; build it for {}",
                self.model, self.target, self.target
            )
        })
    }
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
    /// The board the file is written for; `None` without `[board]`.
    pub board: Option<Board>,
    /// The health unit this edge belongs to (`unit`), whose members watch
    /// each other (issue 6); `None` when the edge is in none.
    pub unit: Option<String>,
    /// The node's labels (`[labels]`), Kubernetes label keys and values.
    pub labels: BTreeMap<String, String>,
    /// Health peers (`[health]`, issue 6); `None` without the section, and
    /// also when only checked ([`validate`] reads no key file).
    pub health: Option<health::Config>,
}

/// Reads and checks the config file at `path`. The error lists every
/// problem with its line and key.
pub fn load(path: &Path) -> Result<EdgeConfig, String> {
    tether_conf::cli::load(path, parse)
}

/// Checks the config file at `path` as `check-config` does: every key and
/// value, but none of the files it names (the token, like the certificates,
/// may exist only on the board the file is for). The error lists every
/// problem with its line and key.
pub fn check(path: &Path) -> Result<(), String> {
    tether_conf::cli::load(path, validate)
}

/// Parses config text; relative paths are taken from `base`.
pub fn parse(text: &str, base: &Path) -> Result<EdgeConfig, Errors> {
    parse_with(text, base, Files::Read)
}

/// Checks config text like [`parse`] but reads none of the files it names:
/// a node's token lives on the board, not where its config is rendered.
pub fn validate(text: &str, base: &Path) -> Result<(), Errors> {
    checked(text, base).map(|_| ())
}

/// [`validate`], returning what it read (a token it did not read is
/// empty): `join` writes a config and needs its proxy address.
pub fn checked(text: &str, base: &Path) -> Result<EdgeConfig, Errors> {
    parse_with(text, base, Files::Skip)
}

/// Whether parsing reads the files a config names (the hub token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Files {
    Read,
    Skip,
}

fn parse_with(text: &str, base: &Path, files: Files) -> Result<EdgeConfig, Errors> {
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
    let unit = errors.opt(root.str("unit")).map(str::to_owned);
    if let Some(u) = &unit {
        if !is_dns_label(u) {
            errors.push(root.error(
                "unit",
                format!(
                    "{u:?} is not a unit name: 1-63 lowercase letters, digits and '-', \
                     starting and ending with a letter or digit"
                ),
            ));
        }
    }
    let labels = match errors.opt(root.table("labels")) {
        Some(mut t) => read_labels(&mut t, &mut errors),
        None => BTreeMap::new(),
    };
    let hub = match errors.opt(root.table("hub")) {
        Some(mut t) => read_hub(&mut t, base, files, &mut errors),
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
    let board = match errors.opt(root.table("board")) {
        Some(mut t) => read_board(&mut t, &proxy, &mut errors),
        None => None,
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
    let health = match errors.opt(root.table("health")) {
        Some(mut t) => read_health(
            &mut t,
            Around {
                node: node.as_ref(),
                unit: unit.as_deref(),
                apiserver: apiserver.is_some(),
                cache: proxy.cache.as_deref(),
            },
            base,
            files,
            &mut errors,
        ),
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
            board,
            unit,
            labels,
            health,
        }),
        // Both are reported above whenever missing.
        _ => Err(Errors(vec![tether_conf::Error::new(
            None,
            None,
            "incomplete config",
        )])),
    }
}

fn read_hub(t: &mut Table<'_>, base: &Path, files: Files, errors: &mut Errors) -> Option<Hub> {
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
        // Checked without its files: the config is only validated and
        // thrown away, so the token it would carry is never used.
        (None, None, Some(_)) if files == Files::Skip => Some(Credentials::Token(String::new())),
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
    let renew_at_percent = match errors.opt(t.u64("renew_at_percent")) {
        None => DEFAULT_RENEW_AT_PERCENT,
        Some(p @ (0 | 10..=95)) => p as u8,
        Some(p) => {
            errors.push(t.error(
                "renew_at_percent",
                format!("{p} is out of range: 10 to 95 (percent of the certificate's life), or 0 for no renewal"),
            ));
            DEFAULT_RENEW_AT_PERCENT
        }
    };
    Some(Hub {
        renew_at_percent,
        address,
        server_name,
        ca,
        plaintext,
        credentials,
        broker,
        source_address,
    })
}

/// What `[health]` depends on outside its table.
#[derive(Clone, Copy)]
struct Around<'a> {
    node: Option<&'a NodeName>,
    /// The top-level `unit`.
    unit: Option<&'a str>,
    /// Whether `[apiserver]` is configured (a unit from a node label is read
    /// from it).
    apiserver: bool,
    /// `[proxy] cache`: the saved membership goes next to it.
    cache: Option<&'a Path>,
}

/// The file the membership read from a node label is saved in, in the
/// cache's folder.
pub const HEALTH_UNIT_FILE: &str = "health-unit";

/// Reads `[health]`. The unit comes from the top-level `unit` with `peers`,
/// or from a node label (`unit_label`), exactly one of the two; the key from
/// `key_file`, which has no default (see [`read_unit_key`]). With
/// [`Files::Skip`] every key is checked but no config is built, since the
/// key file is not read.
fn read_health(
    t: &mut Table<'_>,
    around: Around<'_>,
    base: &Path,
    files: Files,
    errors: &mut Errors,
) -> Option<health::Config> {
    const EITHER: &str = "give either the top-level unit = \"...\" with [health] peers (the \
                          unit from this file), or [health] unit_label = \"...\" (the unit \
                          from a node label)";
    let unit_label = errors.opt(t.str("unit_label"));
    let has_peers = t.keys().contains(&"peers");
    match (unit_label, around.unit) {
        (None, None) => errors.push(t.error(
            "",
            format!(
                "[health] needs its unit: every health message names its unit, and only \
                 members of the same unit vote on each other; {EITHER}"
            ),
        )),
        (Some(_), Some(_)) => errors.push(t.error(
            "unit_label",
            format!("the top-level unit is given too; {EITHER}, not both"),
        )),
        _ => {}
    }
    if unit_label.is_some() && has_peers {
        errors.push(t.error(
            "peers",
            format!("unit_label is given too; {EITHER}, not both"),
        ));
    }
    let listen = match errors.opt(t.str("listen")) {
        Some(l) => match l.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(t.error(
                    "listen",
                    format!("{l:?} is not an address like \"0.0.0.0:10263\""),
                ));
                None
            }
        },
        None => Some(health::DEFAULT_LISTEN),
    };
    let mut duration = |key: &str, default: Duration, min: Duration, max: Duration| match errors
        .opt(t.duration(key))
    {
        Some(d) if d < min || d > max => {
            errors.push(t.error(
                key,
                format!("must be from {} s to {} s", min.as_secs(), max.as_secs()),
            ));
            None
        }
        Some(d) => Some(d),
        None => Some(default),
    };
    // At least 2 s: a probe's answer window is half an interval.
    let interval = duration(
        "interval",
        health::DEFAULT_INTERVAL,
        Duration::from_secs(2),
        Duration::from_secs(3600),
    );
    let max_skew = duration(
        "max_skew",
        health::DEFAULT_MAX_SKEW,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let mut count = |key: &str, default: u32| match errors.opt(t.u64(key)) {
        Some(n) if (1..=100).contains(&n) => u32::try_from(n).ok(),
        Some(_) => {
            errors.push(t.error(key, "must be from 1 to 100"));
            None
        }
        None => Some(default),
    };
    let dead_after = count("dead_after", health::DEFAULT_DEAD_AFTER);
    let alive_after = count("alive_after", health::DEFAULT_ALIVE_AFTER);
    let label = read_unit_label(t, unit_label, around, listen, errors);
    let peers = if unit_label.is_some() {
        // Refused above; read so that it is not also an unknown key.
        let _ = t.str_array("peers");
        Some(Vec::new())
    } else {
        read_health_peers(t, around.node, errors)
    };
    let key_file = errors.opt(t.str("key_file")).map(|p| base.join(p));
    let key = match (&key_file, files) {
        (None, _) => {
            errors.push(t.error(
                "key_file",
                "missing: the file holding the unit's shared key (at least 32 bytes, e.g. \
                 `openssl rand -hex 32`, mode 0600, the same on every member). There is no \
                 default key: a key everyone knows would let anyone forge verdicts",
            ));
            None
        }
        (Some(_), Files::Skip) => None,
        (Some(file), Files::Read) => match read_unit_key(file) {
            Ok(key) => Some(key),
            Err(e) => {
                errors.push(t.error("key_file", e));
                None
            }
        },
    };
    Some(health::Config {
        listen: listen?,
        interval: interval?,
        key: key?,
        peers: peers?,
        label: label?,
        dead_after: dead_after?,
        alive_after: alive_after?,
        max_skew: max_skew?,
    })
}

/// `[health] unit_label` with `peer_port` and `refresh`: `Some(None)`
/// without a label (the two others are then refused), `None` after an error.
fn read_unit_label(
    t: &mut Table<'_>,
    unit_label: Option<&str>,
    around: Around<'_>,
    listen: Option<SocketAddr>,
    errors: &mut Errors,
) -> Option<Option<health::members::UnitLabel>> {
    let peer_port = errors.opt(t.u64("peer_port"));
    let refresh = errors.opt(t.duration("refresh"));
    let Some(key) = unit_label else {
        for (given, k) in [
            (peer_port.is_some(), "peer_port"),
            (refresh.is_some(), "refresh"),
        ] {
            if given {
                errors.push(t.error(
                    k,
                    "only with unit_label: with [health] peers each peer names its port",
                ));
            }
        }
        return Some(None);
    };
    let mut ok = true;
    if let Err(why) = check_qualified_label_key(key) {
        errors.push(t.error(
            "unit_label",
            format!("{key:?} is not a Kubernetes label key: {why}"),
        ));
        ok = false;
    }
    if !around.apiserver {
        errors.push(t.error(
            "unit_label",
            "needs [apiserver]: the edge reads its Node and the unit's Nodes from \
             kube-apiserver with the node's credentials",
        ));
        ok = false;
    }
    let peer_port = match peer_port {
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                errors.push(t.error("peer_port", format!("{p} is not a UDP port (1-65535)")));
                None
            }
        },
        None => listen.map(|l| l.port()),
    };
    let refresh = match refresh {
        Some(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => {
            errors.push(t.error("refresh", "must be from 1 s to 3600 s"));
            None
        }
        Some(d) => Some(d),
        None => Some(health::members::DEFAULT_REFRESH),
    };
    let label = health::members::UnitLabel {
        key: key.to_owned(),
        peer_port: peer_port?,
        refresh: refresh?,
        state_file: around.cache.map(|c| c.with_file_name(HEALTH_UNIT_FILE)),
    };
    ok.then_some(Some(label))
}

/// A Kubernetes label key with an optional prefix, `prefix/name`: the prefix
/// a DNS subdomain (at most 253 characters of lowercase letters, digits,
/// '-' and '.'), the name as [`check_label_key`] checks it.
fn check_qualified_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Err(format!(
                "its prefix {p:?} is not a DNS subdomain (lowercase letters, digits, '-' and \
                 '.', like example.com)"
            ));
        }
    }
    check_label_key(name)
}

/// `[health] peers`: the unit's other members as `"name=host:port"`, each
/// once, never this node, at most [`MAX_UNIT_MEMBERS`](tether_link::health::MAX_UNIT_MEMBERS) − 1.
fn read_health_peers(
    t: &mut Table<'_>,
    node: Option<&NodeName>,
    errors: &mut Errors,
) -> Option<Vec<health::PeerAddr>> {
    const FORMAT: &str = "write \"name=host:port\", like \"gh-bench-02=192.168.1.12:10263\"";
    let Some(list) = errors.opt(t.str_array("peers")) else {
        errors.push(t.error(
            "peers",
            format!(
                "missing: the unit's other members and their health ports; {FORMAT} \
                 (an empty list is a unit of one, which never votes)"
            ),
        ));
        return None;
    };
    let max = tether_link::health::MAX_UNIT_MEMBERS - 1;
    if list.len() > max {
        errors.push(t.error(
            "peers",
            format!(
                "{} peers; a unit has at most {} members, this node included",
                list.len(),
                max + 1
            ),
        ));
        return None;
    }
    let mut peers: Vec<health::PeerAddr> = Vec::with_capacity(list.len());
    let mut ok = true;
    for entry in list {
        let mut bad = |why: String| {
            errors.push(t.error("peers", format!("{entry:?}: {why}")));
            ok = false;
        };
        let Some((name, addr)) = entry.split_once('=') else {
            bad(format!("no '='; {FORMAT}"));
            continue;
        };
        let name = match NodeName::new(name.trim()) {
            Ok(name) => name,
            Err(e) => {
                bad(e.to_string());
                continue;
            }
        };
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            bad(format!("{addr:?} is not host:port; {FORMAT}"));
        } else if node == Some(&name) {
            bad("is this node itself; peers lists the unit's other members".to_owned());
        } else if peers.iter().any(|p| p.name == name) {
            bad(format!("{name} is listed twice"));
        } else {
            peers.push(health::PeerAddr {
                name,
                addr: addr.to_owned(),
            });
        }
    }
    ok.then_some(peers)
}

/// Reads the unit key from `path`: a regular file no one but its owner can
/// access (anyone who can read it can forge verdicts), at most 4 KiB, at
/// least 32 bytes after trailing whitespace (a text editor's newline) is cut.
fn read_unit_key(path: &Path) -> Result<health::wire::UnitKey, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    // Checked on the open file, so the file checked is the file read.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} has mode {mode:04o}: group or others can access it, and anyone who \
             can read the unit key can forge verdicts; run chmod 600 {shown}"
        ));
    }
    let mut bytes = Vec::new();
    file.take(4097)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() > 4096 {
        return Err(format!(
            "{shown} is larger than 4 KiB; a key file holds one key"
        ));
    }
    let len = bytes.trim_ascii_end().len();
    health::wire::UnitKey::new(&bytes[..len]).map_err(|e| format!("{shown}: {e}"))
}

/// Reads `[board]`; `memory_max` is checked against the proxy's budget.
fn read_board(t: &mut Table<'_>, proxy: &ProxyConfig, errors: &mut Errors) -> Option<Board> {
    let model = errors.opt(t.str("model"));
    match model {
        None => errors.push(t.error(
            "model",
            "missing: the board model, the name of its file under board-configs/boards/, \
             e.g. model = \"rpi-zero-w\"",
        )),
        Some(m) if !is_dns_label(m) => errors.push(t.error(
            "model",
            format!("{m:?} is not a board model: lowercase letters, digits and '-', like \"rpi-zero-w\""),
        )),
        Some(_) => {}
    }
    let known = || {
        TARGETS
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = errors.opt(t.str("target"));
    match target {
        None => errors.push(t.error(
            "target",
            format!(
                "missing: the Rust target of the board's binary, one of {}",
                known()
            ),
        )),
        Some(target) if !TARGETS.iter().any(|(t, _)| *t == target) => errors.push(t.error(
            "target",
            format!(
                "{target:?} is not a supported Rust target; use one of {}",
                known()
            ),
        )),
        Some(_) => {}
    }
    let memory_max = read_memory_max(t, proxy, errors);
    let (model, target, memory_max) = (model?, target?, memory_max?);
    (is_dns_label(model) && TARGETS.iter().any(|(t, _)| *t == target)).then(|| Board {
        model: model.to_owned(),
        target: target.to_owned(),
        memory_max,
    })
}

/// `memory_max` is copied as text into the systemd unit (`MemoryMax=`) by
/// the image build, so it must be a quoted whole number of KiB, MiB or GiB
/// (systemd's K, M and G), and it must leave the proxy's budget room below
/// it: the budget sheds load, the cap kills.
fn read_memory_max(t: &mut Table<'_>, proxy: &ProxyConfig, errors: &mut Errors) -> Option<u64> {
    const FORMAT: &str = "a quoted whole number of KiB, MiB or GiB like \"64MiB\" \
        (the image build copies it into the systemd unit's MemoryMax=)";
    let text = match t.str("memory_max") {
        Ok(Some(text)) => text,
        Ok(None) => {
            errors.push(t.error(
                "memory_max",
                format!("missing: the board's hard memory cap, {FORMAT}"),
            ));
            return None;
        }
        Err(_) => {
            errors.push(t.error("memory_max", format!("write {FORMAT}")));
            return None;
        }
    };
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = text.strip_prefix(digits).unwrap_or("");
    let well_formed = matches!(unit, "KiB" | "MiB" | "GiB")
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit());
    let bytes = match tether_conf::parse_bytes(text) {
        Ok(bytes) if well_formed => bytes,
        _ => {
            errors.push(t.error("memory_max", format!("{text:?}: write {FORMAT}")));
            return None;
        }
    };
    if bytes <= proxy.memory_budget {
        errors.push(t.error(
            "memory_max",
            format!(
                "{text} must be larger than proxy.memory_budget ({}): the budget is where the \
                 edge sheds load, so the hard cap above it must leave room; raise \
                 board.memory_max or lower proxy.memory_budget",
                show_bytes(proxy.memory_budget)
            ),
        ));
        return None;
    }
    Some(bytes)
}

/// A byte count as a person would write it in the config.
fn show_bytes(n: u64) -> String {
    match n {
        0 => "0".to_owned(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Reads `[labels]`: every key a Kubernetes label key, every value a string
/// that is a Kubernetes label value.
fn read_labels(t: &mut Table<'_>, errors: &mut Errors) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for key in t.keys() {
        let value = match t.str(key) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(_) => {
                errors.push(t.error(key, "a label's value is a string in quotes"));
                continue;
            }
        };
        if let Err(why) = check_label_key(key) {
            errors.push(t.error(key, format!("not a Kubernetes label key: {why}")));
        }
        if let Err(why) = check_label_value(value) {
            errors.push(t.error(
                key,
                format!("{value:?} is not a Kubernetes label value: {why}"),
            ));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    labels
}

/// A Kubernetes label key's name part: 1-63 characters, letters, digits,
/// '-', '_' and '.', starting and ending with a letter or digit. A prefix
/// (`example.com/`) cannot be written: the config format has no quoted
/// keys, and bare keys hold neither '.' nor '/'.
fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 63 {
        return Err(format!("it has {} characters; write 1 to 63", key.len()));
    }
    check_label_chars(key)
}

/// A Kubernetes label value: empty, or like a key's name part.
fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!(
            "it has {} characters; write at most 63",
            value.len()
        ));
    }
    if value.is_empty() {
        return Ok(());
    }
    check_label_chars(value)
}

/// The characters Kubernetes allows in a label name or value.
fn check_label_chars(s: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed; use letters, digits, '-', '_' and '.'"
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Err("it must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// A DNS-1123 label, as Kubernetes names many things: 1-63 lowercase
/// letters, digits and '-', starting and ending with a letter or digit.
/// Units, board models and sites are named so; the latter two are also
/// file names, which this keeps free of '/' and "..".
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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

    const MINIMAL: &str =
        "node = \"edge-1\"\n[hub]\naddress = \"127.0.0.1:7443\"\nplaintext = true\n";

    #[test]
    fn renew_at_percent() {
        let c = parse(MINIMAL, Path::new("/")).expect("valid");
        assert_eq!(c.hub.renew_at_percent, DEFAULT_RENEW_AT_PERCENT);
        for ok in [0u8, 10, 50, 95] {
            let c = parse(
                &format!("{MINIMAL}renew_at_percent = {ok}\n"),
                Path::new("/"),
            )
            .expect("valid");
            assert_eq!(c.hub.renew_at_percent, ok);
        }
        for bad in ["5", "96", "1000", "\"67%\""] {
            let e = errors(&format!("{MINIMAL}renew_at_percent = {bad}\n"));
            assert!(e.contains("line 5: hub.renew_at_percent"), "{bad}: {e}");
        }
    }

    #[test]
    fn queue_delay_is_read_and_checked() {
        let c = parse(
            &format!("{MINIMAL}[link]\nqueue_delay = \"0s\"\n"),
            Path::new("/"),
        )
        .expect("valid");
        assert_eq!(c.link.session.queue_delay, Duration::ZERO);
        let c = parse(MINIMAL, Path::new("/")).expect("valid");
        assert_eq!(c.link.session.queue_delay, Duration::from_millis(10));
        let e = errors(&format!("{MINIMAL}[link]\nqueue_delay = \"11s\"\n"));
        assert!(
            e.contains("line 6: link.queue_delay: must be at most 10s"),
            "{e}"
        );
        let e = errors(&format!("{MINIMAL}[link]\nqueue_delay = \"soon\"\n"));
        assert!(e.contains("line 6: link.queue_delay:"), "{e}");
    }

    #[test]
    fn board_unit_and_labels() {
        let c = parse(
            &format!(
                "unit = \"bench-a\"\n{MINIMAL}[board]\nmodel = \"rpi-zero-w\"\n\
                 target = \"arm-unknown-linux-musleabihf\"\nmemory_max = \"48MiB\"\n\
                 [labels]\nzone = \"north\"\nrow_3 = \"\"\n"
            ),
            Path::new("/"),
        )
        .expect("valid");
        let board = c.board.expect("board");
        assert_eq!(board.model, "rpi-zero-w");
        assert_eq!(board.memory_max, 48 << 20);
        assert_eq!(board.arch(), "arm");
        assert_eq!(c.unit.as_deref(), Some("bench-a"));
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("north"));
        assert_eq!(c.labels.get("row_3").map(String::as_str), Some(""));
        // Without the tables, nothing is required.
        let c = parse(MINIMAL, Path::new("/")).expect("valid");
        assert!(c.board.is_none() && c.unit.is_none() && c.labels.is_empty());
    }

    #[test]
    fn arch_mismatch_names_both() {
        let board = Board {
            model: "rpi-4".into(),
            target: "aarch64-unknown-linux-musl".into(),
            memory_max: 96 << 20,
        };
        assert_eq!(board.arch_mismatch("aarch64"), None);
        let warning = board.arch_mismatch("x86_64").expect("mismatch");
        assert!(
            warning.contains("aarch64") && warning.contains("x86_64"),
            "{warning}"
        );
    }

    #[test]
    fn memory_max_must_exceed_the_budget() {
        let board = |max: &str| {
            format!(
                "{MINIMAL}[proxy]\nmemory_budget = \"20MiB\"\n[board]\nmodel = \"rpi-3\"\n\
                 target = \"aarch64-unknown-linux-musl\"\nmemory_max = {max}\n"
            )
        };
        let e = errors(&board("\"16MiB\""));
        assert!(
            e.contains(
                "line 10: board.memory_max: 16MiB must be larger than proxy.memory_budget (20MiB)"
            ),
            "{e}"
        );
        let e = errors(&board("\"20MiB\""));
        assert!(e.contains("board.memory_max: 20MiB must be larger"), "{e}");
        for bad in [
            "67108864",
            "\"64MB\"",
            "\"64 MiB\"",
            "\"1.5GiB\"",
            "\"MiB\"",
        ] {
            let e = errors(&board(bad));
            assert!(
                e.contains("line 10: board.memory_max:") && e.contains("MemoryMax="),
                "{bad}: {e}"
            );
        }
        parse(&board("\"21MiB\""), Path::new("/")).expect("valid");
    }

    #[test]
    fn board_errors_named() {
        let e = errors(&format!(
            "{MINIMAL}[board]\nmodel = \"Pi Zero\"\ntarget = \"armv6-linux\"\nmemory_max = \"64MiB\"\ncolour = \"red\"\n"
        ));
        for needle in [
            "line 6: board.model: \"Pi Zero\" is not a board model",
            "line 7: board.target: \"armv6-linux\" is not a supported Rust target; use one of arm-unknown-linux-musleabihf",
            "line 9: board.colour: unknown key",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
        let e = errors(&format!("{MINIMAL}[board]\n"));
        for key in ["model", "target", "memory_max"] {
            assert!(e.contains(&format!("board.{key}: missing")), "{key}: {e}");
        }
    }

    #[test]
    fn unit_and_label_syntax() {
        let e = errors(&format!(
            "unit = \"Bench A\"\n{MINIMAL}[labels]\nzone- = \"a\"\n_x = \"b\"\nrow = \"-3\"\nok = 3\n\
             {long} = \"v\"\nshelf = \"{long}\"\ncolour = \"a/b\"\n",
            long = "a".repeat(64)
        ));
        for needle in [
            "line 1: unit: \"Bench A\" is not a unit name",
            "line 7: labels.zone-: not a Kubernetes label key: it must start and end",
            "line 8: labels._x: not a Kubernetes label key",
            "line 9: labels.row: \"-3\" is not a Kubernetes label value",
            "line 10: labels.ok: a label's value is a string",
            "line 11: labels.aaaa",
            "it has 64 characters; write 1 to 63",
            "line 12: labels.shelf:",
            "line 13: labels.colour: \"a/b\" is not a Kubernetes label value: '/' is not allowed",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
    }

    /// A temporary folder holding a key file `unit.key` with `bytes` and
    /// `mode`; remove it after.
    fn key_dir(tag: &str, bytes: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tether-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let file = dir.join("unit.key");
        std::fs::write(&file, bytes).expect("key file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        dir
    }

    const HEALTH: &str = "[health]\nkey_file = \"unit.key\"\npeers = [\"edge-2=192.168.1.12:10263\", \"edge-3 = pi3.local:10263\"]\n";

    #[test]
    fn health_section() {
        let dir = key_dir(
            "health-ok",
            b"0123456789abcdef0123456789abcdef0123456789abcdef\n",
            0o600,
        );
        let c = parse(&format!("unit = \"bench-a\"\n{MINIMAL}{HEALTH}"), &dir).expect("valid");
        let h = c.health.expect("health");
        assert_eq!(h.listen, health::DEFAULT_LISTEN);
        assert_eq!(h.interval, health::DEFAULT_INTERVAL);
        assert_eq!((h.dead_after, h.alive_after), (3, 2));
        assert_eq!(h.max_skew, Duration::from_secs(30));
        let peers: Vec<(&str, &str)> = h
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.addr.as_str()))
            .collect();
        assert_eq!(
            peers,
            [
                ("edge-2", "192.168.1.12:10263"),
                ("edge-3", "pi3.local:10263")
            ]
        );
        let c = parse(
            &format!(
                "unit = \"bench-a\"\n{MINIMAL}{HEALTH}listen = \"10.0.0.5:9000\"\n\
                 interval = \"10s\"\ndead_after = 4\nalive_after = 1\nmax_skew = \"5s\"\n"
            ),
            &dir,
        )
        .expect("valid");
        let h = c.health.expect("health");
        assert_eq!(h.listen.port(), 9000);
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!((h.dead_after, h.alive_after), (4, 1));
        assert_eq!(h.max_skew, Duration::from_secs(5));
        // Checking reads no key file and builds no health config.
        validate(
            &format!("unit = \"bench-a\"\n{MINIMAL}{HEALTH}"),
            Path::new("/nonexistent"),
        )
        .expect("valid without the key file");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn health_has_no_default_key() {
        let e = errors(&format!(
            "unit = \"bench-a\"\n{MINIMAL}[health]\npeers = []\n"
        ));
        assert!(
            e.contains("line 6: health.key_file: missing") && e.contains("There is no default key"),
            "{e}"
        );
        // The same when only checked.
        let e = validate(
            &format!("unit = \"bench-a\"\n{MINIMAL}[health]\npeers = []\n"),
            Path::new("/"),
        )
        .expect_err("no key_file")
        .to_string();
        assert!(e.contains("health.key_file: missing"), "{e}");
    }

    #[test]
    fn health_key_file_checked() {
        let text = format!("unit = \"bench-a\"\n{MINIMAL}{HEALTH}");
        let dir = key_dir("health-short", b"too short\n", 0o600);
        let e = parse(&text, &dir)
            .map(|_| ())
            .expect_err("short")
            .to_string();
        assert!(
            e.contains("line 7: health.key_file:")
                && e.contains("the unit key has 9 bytes; it needs at least 32"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
        let dir = key_dir("health-mode", &[7; 32], 0o640);
        let e = parse(&text, &dir)
            .map(|_| ())
            .expect_err("mode")
            .to_string();
        assert!(
            e.contains("has mode 0640: group or others can access it") && e.contains("chmod 600"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
        let e = parse(&text, Path::new("/nonexistent"))
            .map(|_| ())
            .expect_err("none")
            .to_string();
        assert!(
            e.contains("health.key_file: cannot read /nonexistent/unit.key"),
            "{e}"
        );
        // The key never appears in a message or in Debug.
        let dir = key_dir("health-debug", b"SECRET-SECRET-SECRET-SECRET-SECRET", 0o600);
        let c = parse(&text, &dir).expect("valid");
        assert!(!format!("{c:?}").contains("SECRET"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn health_errors_named() {
        let e = errors(&format!(
            "{MINIMAL}[health]\nkey_file = \"k\"\nlisten = \"nowhere\"\ninterval = \"1s\"\n\
             dead_after = 0\nalive_after = 101\nmax_skew = \"2h\"\ncolour = 1\n\
             peers = [\"edge-2\", \"Edge_3=a:1\", \"edge-4=nohost\", \"edge-1=a:1\", \"edge-5=a:1\", \"edge-5=b:2\"]\n"
        ));
        for needle in [
            "line 5: health: [health] needs its unit",
            "line 7: health.listen: \"nowhere\" is not an address",
            "line 8: health.interval: must be from 2 s to 3600 s",
            "line 9: health.dead_after: must be from 1 to 100",
            "line 10: health.alive_after: must be from 1 to 100",
            "line 11: health.max_skew: must be from 1 s to 3600 s",
            "line 12: health.colour: unknown key",
            "line 13: health.peers: \"edge-2\": no '='",
            "health.peers: \"Edge_3=a:1\": \"Edge_3\" is not a valid node name",
            "health.peers: \"edge-4=nohost\": \"nohost\" is not host:port",
            "health.peers: \"edge-1=a:1\": is this node itself",
            "health.peers: \"edge-5=b:2\": edge-5 is listed twice",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
        let too_many: Vec<String> = (0..64).map(|i| format!("\"p{i}=h:1\"")).collect();
        let e = errors(&format!(
            "unit = \"u\"\n{MINIMAL}[health]\nkey_file = \"k\"\npeers = [{}]\n",
            too_many.join(", ")
        ));
        assert!(e.contains("64 peers; a unit has at most 64 members"), "{e}");
        let e = errors(&format!(
            "unit = \"u\"\n{MINIMAL}[health]\nkey_file = \"k\"\n"
        ));
        assert!(e.contains("health.peers: missing"), "{e}");
    }

    const APISERVER: &str = "[apiserver]\nca = \"ca.pem\"\ncert = \"k.pem\"\nkey = \"k.pem\"\n";

    #[test]
    fn health_unit_from_a_node_label() {
        let dir = key_dir("health-label", &[7; 32], 0o600);
        let text = format!(
            "{MINIMAL}{APISERVER}[proxy]\ncache = \"/var/lib/tether/cache.db\"\n[health]\n\
             key_file = \"unit.key\"\nlisten = \"127.0.0.2:9000\"\nunit_label = \"tether.io/unit\"\n"
        );
        let c = parse(&text, &dir).expect("valid");
        assert_eq!(c.unit, None);
        let h = c.health.expect("health");
        assert!(h.peers.is_empty());
        assert_eq!(
            h.label,
            Some(health::members::UnitLabel {
                key: "tether.io/unit".into(),
                // The own health port by default.
                peer_port: 9000,
                refresh: Duration::from_secs(60),
                state_file: Some(PathBuf::from("/var/lib/tether/health-unit")),
            })
        );
        let c = parse(
            &format!("{text}peer_port = 10263\nrefresh = \"5s\"\n"),
            &dir,
        )
        .expect("valid");
        let label = c.health.and_then(|h| h.label).expect("label");
        assert_eq!(
            (label.peer_port, label.refresh),
            (10263, Duration::from_secs(5))
        );
        // A bare key, and no cache: nothing saved.
        let c = parse(
            &format!(
                "{MINIMAL}{APISERVER}[health]\nkey_file = \"unit.key\"\nunit_label = \"unit\"\n"
            ),
            &dir,
        )
        .expect("valid");
        let label = c.health.and_then(|h| h.label).expect("label");
        assert_eq!((label.key.as_str(), label.state_file), ("unit", None));
        // The file form has no label.
        let c = parse(&format!("unit = \"bench-a\"\n{MINIMAL}{HEALTH}"), &dir).expect("valid");
        assert_eq!(c.health.expect("health").label, None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn health_unit_forms_exclusive() {
        // Both forms.
        let e = errors(&format!(
            "unit = \"bench-a\"\n{MINIMAL}{APISERVER}{HEALTH}unit_label = \"tether.io/unit\"\n"
        ));
        assert!(
            e.contains("health.unit_label: the top-level unit is given too; give either")
                && e.contains("health.peers: unit_label is given too"),
            "{e}"
        );
        // Neither.
        let e = errors(&format!("{MINIMAL}{APISERVER}[health]\nkey_file = \"k\"\n"));
        assert!(
            e.contains("health: [health] needs its unit")
                && e.contains("[health] unit_label = \"...\" (the unit from a node label)"),
            "{e}"
        );
        // The label's own keys only go with it.
        let e = errors(&format!(
            "unit = \"bench-a\"\n{MINIMAL}{HEALTH}peer_port = 1\nrefresh = \"5s\"\n"
        ));
        assert!(
            e.contains("health.peer_port: only with unit_label")
                && e.contains("health.refresh: only with unit_label"),
            "{e}"
        );
    }

    #[test]
    fn health_unit_label_checked() {
        let label = |value: &str, extra: &str| {
            errors(&format!(
                "{MINIMAL}{APISERVER}[health]\nkey_file = \"k\"\nunit_label = {value}\n{extra}"
            ))
        };
        for (bad, why) in [
            (
                "\"Tether.io/unit\"",
                "its prefix \"Tether.io\" is not a DNS subdomain",
            ),
            ("\"/unit\"", "its prefix \"\" is not a DNS subdomain"),
            ("\"tether.io/\"", "it has 0 characters"),
            ("\"tether.io/a/b\"", "'/' is not allowed"),
            ("\"tether.io/unit=site-a\"", "'=' is not allowed"),
            ("\"-unit\"", "must start and end with a letter or digit"),
            ("\"\"", "it has 0 characters"),
        ] {
            let e = label(bad, "");
            assert!(
                e.contains("line 11: health.unit_label:")
                    && e.contains("is not a Kubernetes label key")
                    && e.contains(why),
                "{bad}: {e}"
            );
        }
        let long = format!("\"tether.io/{}\"", "a".repeat(64));
        assert!(label(&long, "").contains("it has 64 characters"));
        let e = label("\"u\"", "peer_port = 0\nrefresh = \"2h\"\n");
        assert!(
            e.contains("health.peer_port: 0 is not a UDP port")
                && e.contains("health.refresh: must be from 1 s to 3600 s"),
            "{e}"
        );
        // Without [apiserver] there is nowhere to read the label from.
        let e = errors(&format!(
            "{MINIMAL}[health]\nkey_file = \"k\"\nunit_label = \"tether.io/unit\"\n"
        ));
        assert!(e.contains("health.unit_label: needs [apiserver]"), "{e}");
    }

    #[test]
    fn validate_does_not_read_the_token() {
        let text = "node = \"edge-1\"\n[hub]\naddress = \"hub.example:7443\"\nca = \"ca.pem\"\ntoken_file = \"/nonexistent/token\"\n";
        validate(text, Path::new("/")).expect("valid without reading the token");
        let e = errors(text);
        assert!(
            e.contains("hub.token_file: cannot read /nonexistent/token"),
            "{e}"
        );
    }
}

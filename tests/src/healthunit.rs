//! A health unit on loopback for system tests and the soak benchmark: a
//! hub, edges each with a `[health]` port, a status port and optionally a
//! fault proxy on its link, the unit key files (mode 0600), and readers
//! of the hub's votes in `/nodes`.

use crate::cluster::{self, start_hub, token_of, Hub, Transport};
use crate::faultproxy::FaultProxy;
use crate::pki::Pki;
use crate::procs::{bin, free_port, http_get, Proc};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a unit is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The unit's name.
    pub unit: String,
    /// Its members' node names.
    pub names: Vec<String>,
    /// `[health] interval`, e.g. `"2s"`.
    pub interval: String,
    /// `[health] dead_after`.
    pub dead_after: u32,
    /// Put each edge's link behind a [`FaultProxy`].
    pub proxied: bool,
    /// Members (by index) given a key of their own instead of the unit's.
    pub wrong_key: Vec<usize>,
    /// Each edge's log level.
    pub log_level: String,
}

impl Options {
    /// A unit of `size` members named `e1`..., probing every `interval`,
    /// `dead_after = 3`, links not proxied, one key.
    pub fn new(unit: &str, size: usize, interval: &str) -> Options {
        Options {
            unit: unit.to_owned(),
            names: (1..=size).map(|i| format!("e{i}")).collect(),
            interval: interval.to_owned(),
            dead_after: 3,
            proxied: false,
            wrong_key: Vec::new(),
            log_level: "info".to_owned(),
        }
    }
}

/// One member of a running unit.
pub struct Member {
    /// Its node name.
    pub name: String,
    /// Its health port (UDP).
    pub health: SocketAddr,
    /// Its status port (`/metrics`).
    pub status: SocketAddr,
    /// The proxy on its link, with [`Options::proxied`].
    pub proxy: Option<FaultProxy>,
    /// The running edge (`None` once a test took it).
    pub proc: Option<Proc>,
    /// Its config file, to start it again.
    pub config: PathBuf,
}

/// A running unit and its hub.
pub struct Unit {
    /// The scratch folder (configs, keys, tokens); removed on drop.
    pub pki: Pki,
    /// The hub.
    pub hub: Hub,
    /// The members, in [`Options::names`] order.
    pub members: Vec<Member>,
    /// The unit key file every member not in [`Options::wrong_key`] reads.
    pub key_file: PathBuf,
    /// The key's bytes, for tests that sign messages themselves.
    pub key: Vec<u8>,
}

/// A free UDP port on 127.0.0.1 (released before returning, like
/// [`free_port`]).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("healthunit: bind a UDP port on 127.0.0.1")
}

/// Writes a unit key file `name` of 64 hex characters (the text of 32
/// random-ish bytes, as `openssl rand -hex 32` makes) with mode 0600;
/// returns its path and bytes.
pub fn write_key(pki: &Pki, name: &str, seed: u64) -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let text: String = (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:02x}", x as u8)
        })
        .collect();
    let path = pki.write(name, &format!("{text}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("healthunit: chmod 600 the key file");
    (path, text.into_bytes())
}

/// An edge config for `name` in `unit`: plaintext link to `link` with its
/// test token (relinking within a second once the link is back), status
/// port, `[health]` with `health_extra` appended (the
/// caller's `key_file`, `peers`, `interval`...).
pub fn edge_config(
    pki: &Pki,
    name: &str,
    unit: &str,
    link: SocketAddr,
    status: SocketAddr,
    log_level: &str,
    health_extra: &str,
) -> PathBuf {
    let token = pki.write(&format!("token-{name}"), &token_of(name));
    let text = format!(
        "node = \"{name}\"\nunit = \"{unit}\"\nlog_level = \"{log_level}\"\n[hub]\n\
         address = \"{link}\"\nplaintext = true\ntoken_file = \"{}\"\n[link]\n\
         backoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n[status]\n\
         listen = \"{status}\"\n[health]\n{health_extra}",
        token.display()
    );
    pki.write(&format!("edge-{name}-{}.toml", free_port()), &text)
}

/// `[health]` keys for a member listening on `listen` with `peers` as
/// (name, address).
pub fn health_keys(
    listen: SocketAddr,
    key_file: &std::path::Path,
    peers: &[(String, SocketAddr)],
    interval: &str,
    dead_after: u32,
) -> String {
    let peers: Vec<String> = peers.iter().map(|(n, a)| format!("\"{n}={a}\"")).collect();
    format!(
        "listen = \"{listen}\"\nkey_file = \"{}\"\npeers = [{}]\ninterval = \"{interval}\"\n\
         dead_after = {dead_after}\n",
        key_file.display(),
        peers.join(", ")
    )
}

/// Starts tether-edge with `config`.
pub fn start_edge(name: &str, config: &std::path::Path) -> Proc {
    let config = config.to_string_lossy().into_owned();
    Proc::start(name, &bin("tether-edge"), &["--config", &config])
}

impl Unit {
    /// Starts a hub and the unit's edges, and waits until every edge is
    /// linked. `peer_addr(i)` is where the others send member `i`'s health
    /// datagrams (its own port unless a test puts something in between).
    pub fn start(opts: &Options, peer_addr: &dyn Fn(usize, SocketAddr) -> SocketAddr) -> Unit {
        Unit::start_with(opts, peer_addr, Pki::new(), "", &|_, _| String::new())
    }

    /// [`Unit::start`] in `pki` (a stand-in kube-apiserver may share its
    /// CA), with `hub_extra` appended to the hub's config (an
    /// `[upstream.kube-apiserver]`) and `member_extra(pki, i)` to member
    /// `i`'s (its `[apiserver]` and `[proxy]`, after `[health]`).
    pub fn start_with(
        opts: &Options,
        peer_addr: &dyn Fn(usize, SocketAddr) -> SocketAddr,
        pki: Pki,
        hub_extra: &str,
        member_extra: &dyn Fn(&Pki, usize) -> String,
    ) -> Unit {
        let names: Vec<&str> = opts.names.iter().map(String::as_str).collect();
        let hub = start_hub(&pki, Transport::Plain, &names, hub_extra);
        let (key_file, key) = write_key(&pki, "unit.key", 1);
        let (other_key, _) = write_key(&pki, "other.key", 2);
        let ports: Vec<SocketAddr> = names
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
            .collect();
        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let proxy = opts
                .proxied
                .then(|| FaultProxy::start(hub.link).expect("healthunit: fault proxy"));
            let link = proxy.as_ref().map_or(hub.link, FaultProxy::addr);
            let status = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let peers: Vec<(String, SocketAddr)> = names
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, n)| (n.to_string(), peer_addr(j, ports[j])))
                .collect();
            let key = if opts.wrong_key.contains(&i) {
                &other_key
            } else {
                &key_file
            };
            let keys = health_keys(ports[i], key, &peers, &opts.interval, opts.dead_after)
                + &member_extra(&pki, i);
            let config = edge_config(&pki, name, &opts.unit, link, status, &opts.log_level, &keys);
            members.push(Member {
                name: name.to_string(),
                health: ports[i],
                status,
                proxy,
                proc: Some(start_edge(name, &config)),
                config,
            });
        }
        for m in &members {
            assert!(
                cluster::wait_linked(hub.admin, &m.name, Duration::from_secs(30)),
                "{} did not link:\n{}",
                m.name,
                m.proc.as_ref().map(Proc::logs).unwrap_or_default()
            );
        }
        Unit {
            pki,
            hub,
            members,
            key_file,
            key,
        }
    }

    /// The member named `name`.
    pub fn member(&mut self, name: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .expect("healthunit: no such member")
    }

    /// Every member's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- hub\n{}", self.hub.proc.logs());
        for m in &self.members {
            if let Some(p) = &m.proc {
                out.push_str(&format!("--- {}\n{}", m.name, p.logs()));
            }
        }
        out
    }
}

/// The unit's vote on a node as `/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownVote {
    /// `alive`, `dead`, `undecided`, or `null` (no unit votes on it).
    pub vote: String,
    /// Opinions saying alive.
    pub alive: u32,
    /// Opinions saying dead.
    pub dead: u32,
    /// Why undecided (`no_quorum`, `tie`, ...), or `null`.
    pub reason: String,
    /// The node's link is up.
    pub linked: bool,
    /// Its own newest report still counts.
    pub report_fresh: bool,
}

/// `node`'s vote in the hub's `/nodes`, if listed.
pub fn shown_vote(admin: SocketAddr, node: &str) -> Option<ShownVote> {
    let list = http_get(admin, "/nodes").ok()?.1;
    let line = list
        .lines()
        .find(|l| l.contains(&format!("\"node\": \"{node}\"")))?;
    let field = |f: &str| -> Option<String> {
        let start = line.find(&format!("\"{f}\": "))? + f.len() + 4;
        let rest = &line[start..];
        let end = rest.find([',', '}'])?;
        Some(rest[..end].trim().trim_matches('"').to_string())
    };
    Some(ShownVote {
        vote: field("vote")?,
        alive: field("vote_alive")?.parse().ok()?,
        dead: field("vote_dead")?.parse().ok()?,
        reason: field("vote_reason")?,
        linked: field("linked")? == "true",
        report_fresh: field("report_fresh")? == "true",
    })
}

/// `node`'s own verdicts on its peers in `/nodes` (from its newest report),
/// as (peer, verdict) in name order.
pub fn shown_verdicts(admin: SocketAddr, node: &str) -> Vec<(String, String)> {
    let Ok((_, list)) = http_get(admin, "/nodes") else {
        return Vec::new();
    };
    let Some(line) = list
        .lines()
        .find(|l| l.contains(&format!("\"node\": \"{node}\"")))
    else {
        return Vec::new();
    };
    let Some(start) = line.find("\"verdicts\": {") else {
        return Vec::new();
    };
    let rest = &line[start + "\"verdicts\": {".len()..];
    let body = &rest[..rest.find('}').unwrap_or(0)];
    body.split(", ")
        .filter_map(|pair| {
            let (k, v) = pair.split_once(": ")?;
            Some((
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            ))
        })
        .collect()
}

/// Polls until `cond` holds for the votes (every 100 ms); returns how long
/// it took, or `None` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Whether `node` is shown with `vote` (and, if given, the counts).
pub fn voted(admin: SocketAddr, node: &str, vote: &str, counts: Option<(u32, u32)>) -> bool {
    shown_vote(admin, node)
        .is_some_and(|v| v.vote == vote && counts.is_none_or(|(a, d)| v.alive == a && v.dead == d))
}

//! Starting a real tether-hub and tether-edges for system tests, with
//! configs written into the test's PKI folder.

use crate::pki::Pki;
use crate::procs::{bin, free_port, http_get, wait_http_ok, Proc};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The token every test node gets in the hub's token file (per node name,
/// see [`token_of`]).
pub fn token_of(node: &str) -> String {
    format!("test-token-of-{node}-0123456789")
}

/// How the hub listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS 1.3 with client certificates verified against the test CA.
    Tls,
    /// Plain TCP (for raw hostile clients).
    Plain,
}

/// A running hub.
pub struct Hub {
    /// The process.
    pub proc: Proc,
    /// Where edges link in.
    pub link: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
}

/// Starts a hub that knows tokens for `nodes`. `extra` is appended TOML
/// (`[limits]`, `[link]`, `[upstream.x]`, `[[expose]]`).
pub fn start_hub(pki: &Pki, transport: Transport, nodes: &[&str], extra: &str) -> Hub {
    start_hub_on(pki, transport, nodes, extra, free_port())
}

/// [`start_hub`] on a given link port (to restart a hub where it was).
pub fn start_hub_on(
    pki: &Pki,
    transport: Transport,
    nodes: &[&str],
    extra: &str,
    port: u16,
) -> Hub {
    let link: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let tokens: String = nodes
        .iter()
        .map(|n| format!("{n} {}\n", token_of(n)))
        .collect();
    let token_file = pki.write("hub-tokens", &tokens);
    let tls = match transport {
        Transport::Tls => format!(
            "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            pki.hub_cert.display(),
            pki.hub_key.display(),
            pki.ca.display()
        ),
        Transport::Plain => "plaintext = true\n".to_string(),
    };
    let text = format!(
        "log_level = \"debug\"\n[listen]\nlink = \"{link}\"\nadmin = \"{admin}\"\n[tls]\n{tls}[auth]\ntoken_file = \"{}\"\n{extra}\n",
        token_file.display()
    );
    let config = pki.write(&format!("hub-{port}.toml"), &text);
    let config = config.to_string_lossy().into_owned();
    let proc = Proc::start("hub", &bin("tether-hub"), &["--config", &config]);
    assert!(
        wait_http_ok(admin, "/healthz", Duration::from_secs(20)),
        "hub did not come up:\n{}",
        proc.logs()
    );
    Hub { proc, link, admin }
}

/// How a test edge authenticates.
#[derive(Debug, Clone)]
pub enum EdgeAuth {
    /// Its token from the hub's token file.
    Token,
    /// A given token.
    TokenValue(String),
    /// A client certificate with this subject CN.
    Certificate(String),
}

/// Starts an edge for `node` linking to `hub` (TLS unless `plain`).
/// `extra` is appended TOML (`[link]`, `[services]`, `[[forward]]`).
pub fn start_edge(
    pki: &Pki,
    node: &str,
    hub: SocketAddr,
    transport: Transport,
    auth: EdgeAuth,
    extra: &str,
) -> Proc {
    let creds = match auth {
        EdgeAuth::Token => format!(
            "token_file = \"{}\"\n",
            pki.write(&format!("token-{node}"), &token_of(node))
                .display()
        ),
        EdgeAuth::TokenValue(t) => format!(
            "token_file = \"{}\"\n",
            pki.write(&format!("token-{node}-given"), &t).display()
        ),
        EdgeAuth::Certificate(cn) => {
            let (cert, key) = pki.node_cert(&cn);
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            )
        }
    };
    let tls = match transport {
        Transport::Tls => format!(
            "server_name = \"localhost\"\nca = \"{}\"\n",
            pki.ca.display()
        ),
        Transport::Plain => "plaintext = true\n".to_string(),
    };
    let text = format!(
        "node = \"{node}\"\nlog_level = \"debug\"\n[hub]\naddress = \"{hub}\"\n{tls}{creds}{extra}\n"
    );
    let config = pki.write(&format!("edge-{node}-{}.toml", free_port()), &text);
    let config = config.to_string_lossy().into_owned();
    Proc::start(node, &bin("tether-edge"), &["--config", &config])
}

/// The hub's node list.
pub fn nodes(admin: SocketAddr) -> String {
    http_get(admin, "/nodes")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The hub's metrics.
pub fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// One metric's value (first sample line starting with `name`).
pub fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    metrics(admin)
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether the hub lists `node` as linked.
pub fn is_linked(admin: SocketAddr, node: &str) -> bool {
    let needle = format!("\"node\": \"{node}\", \"linked\": true");
    nodes(admin).contains(&needle)
}

/// Waits until `node` is linked.
pub fn wait_linked(admin: SocketAddr, node: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if is_linked(admin, node) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A field of `node`'s entry in the node list, as raw JSON text.
pub fn node_field(admin: SocketAddr, node: &str, field: &str) -> Option<String> {
    let list = nodes(admin);
    let line = list
        .lines()
        .find(|l| l.contains(&format!("\"node\": \"{node}\"")))?;
    let start = line.find(&format!("\"{field}\": "))? + field.len() + 4;
    let rest = &line[start..];
    let end = rest.find([',', '}'])?;
    Some(rest[..end].trim().to_string())
}

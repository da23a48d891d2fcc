//! The admin port: `/healthz`, `/metrics` (Prometheus text format) and
//! `/nodes` (JSON), over a deliberately tiny HTTP/1.1 that answers one GET
//! per connection.

use crate::links::Hub;
use crate::registry::Registry;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use log::warn;
use smol::net::{TcpListener, TcpStream};
use std::fmt::Write;
use std::rc::Rc;
use std::time::{Duration, SystemTime};
use tether_link::logger::timestamp;

/// A request head larger than this is refused.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves the admin port forever.
pub async fn serve(hub: Rc<Hub>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                hub.ex.spawn(answer(hub.clone(), tcp)).detach();
            }
            Err(e) => {
                warn!("admin listener: accept failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(hub: Rc<Hub>, mut tcp: TcpStream) {
    let head = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() + n > MAX_REQUEST {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(buf)
    }
    .or(async {
        async_io::Timer::after(Duration::from_secs(5)).await;
        None
    })
    .await;
    let Some(head) = head else { return };
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else {
        let reg = hub.registry.borrow();
        match path.split('?').next().unwrap_or("") {
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(&reg)),
            "/nodes" => ("200 OK", "application/json", nodes(&reg)),
            _ => (
                "404 Not Found",
                "text/plain",
                "try /healthz, /metrics or /nodes\n".to_string(),
            ),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.flush().await;
}

/// The Prometheus exposition of the hub's state.
pub fn metrics(reg: &Registry) -> String {
    let mut m = String::new();
    let c = &reg.counters;
    let gauge = |m: &mut String, name: &str, help: &str, v: u64| {
        let _ = write!(m, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    };
    gauge(
        &mut m,
        "tether_hub_links",
        "Links up now.",
        reg.links_up() as u64,
    );
    gauge(
        &mut m,
        "tether_hub_sessions",
        "Node sessions held (linked or waiting to resume).",
        reg.nodes.len() as u64,
    );
    gauge(
        &mut m,
        "tether_hub_handshakes",
        "Connections in TLS handshake or before CONNECT.",
        c.handshakes as u64,
    );
    let _ = write!(
        m,
        "# HELP tether_hub_connections_total TCP connections accepted on the link port.\n# TYPE tether_hub_connections_total counter\ntether_hub_connections_total {}\n",
        c.connections
    );
    let _ = writeln!(m, "# HELP tether_hub_refused_total Links refused at CONNECT, by reason.\n# TYPE tether_hub_refused_total counter");
    for (label, n) in &c.refused {
        let _ = writeln!(m, "tether_hub_refused_total{{reason=\"{label}\"}} {n}");
    }
    let _ = writeln!(m, "# HELP tether_hub_dropped_total Connections dropped before a link formed, by reason.\n# TYPE tether_hub_dropped_total counter");
    for (label, n) in &c.dropped {
        let _ = writeln!(m, "tether_hub_dropped_total{{reason=\"{label}\"}} {n}");
    }
    let _ = writeln!(m, "# HELP tether_hub_egress_total kube-apiserver's CONNECTs through the egress, by outcome.\n# TYPE tether_hub_egress_total counter");
    for (label, n) in &c.egress {
        let _ = writeln!(m, "tether_hub_egress_total{{result=\"{label}\"}} {n}");
    }
    let mut nodes: Vec<_> = reg.nodes.iter().collect();
    nodes.sort_by(|a, b| a.0.cmp(b.0));
    let series: [(&str, &str, &str); 5] = [
        (
            "tether_hub_node_linked",
            "gauge",
            "1 while the node's link is up.",
        ),
        (
            "tether_hub_node_received_bytes_total",
            "counter",
            "Bytes received from the node (MQTT level).",
        ),
        (
            "tether_hub_node_sent_bytes_total",
            "counter",
            "Bytes sent to the node (MQTT level).",
        ),
        (
            "tether_hub_node_reconnects_total",
            "counter",
            "Links after the node's first.",
        ),
        (
            "tether_hub_node_streams",
            "gauge",
            "Streams open on the node's link.",
        ),
    ];
    for (i, (name, kind, help)) in series.iter().enumerate() {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (node, n) in &nodes {
            let s = n.link.stats();
            let v = match i {
                0 => u64::from(n.linked),
                1 => s.bytes_in,
                2 => s.bytes_out,
                3 => n.links.saturating_sub(1),
                _ => n.link.open_streams() as u64,
            };
            let _ = writeln!(m, "{name}{{node=\"{node}\"}} {v}");
        }
    }
    m
}

/// The node list as JSON, sorted by name.
pub fn nodes(reg: &Registry) -> String {
    let mut names: Vec<_> = reg.nodes.keys().collect();
    names.sort();
    let mut out = String::from("[");
    for (i, name) in names.iter().enumerate() {
        let n = &reg.nodes[*name];
        let s = n.link.stats();
        let time = |t: Option<SystemTime>| {
            t.map_or("null".to_string(), |t| format!("\"{}\"", timestamp(t)))
        };
        if i > 0 {
            out.push(',');
        }
        // Node names are DNS-1123 and addresses are printed by std: no
        // character in them needs JSON escaping.
        let _ = write!(
            out,
            "\n  {{\"node\": \"{name}\", \"linked\": {}, \"linked_since\": {}, \"down_since\": {}, \"last_seen\": {}, \"remote\": {}, \"auth\": \"{}\", \"links\": {}, \"reconnects\": {}, \"bytes_in\": {}, \"bytes_out\": {}, \"streams\": {}, \"streams_opened\": {}}}",
            n.linked,
            time(n.linked_since),
            time(n.down_since.map(|d| d.1)),
            time(s.last_input),
            n.remote.map_or("null".to_string(), |r| format!("\"{r}\"")),
            n.auth,
            n.links,
            n.links.saturating_sub(1),
            s.bytes_in,
            s.bytes_out,
            n.link.open_streams(),
            s.streams_opened,
        );
    }
    out.push_str(if names.is_empty() { "]\n" } else { "\n]\n" });
    out
}

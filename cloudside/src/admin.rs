//! The admin port: `/healthz`, `/metrics` (Prometheus text format) and
//! `/nodes` (JSON), over a deliberately tiny HTTP/1.1 that answers one GET
//! per connection.

use crate::health;
use crate::links::Hub;
use crate::registry::Registry;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use log::warn;
use smol::net::{TcpListener, TcpStream};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::rc::Rc;
use std::time::Instant;
use std::time::{Duration, SystemTime};
use tether_link::logger::timestamp;
use tether_link::topic::NodeName;

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
    let _ = writeln!(m, "# HELP tether_hub_dropped_total Connections dropped before a link formed, by reason; silent: a link that received nothing for [autonomy] link_check_after and left a check unanswered.\n# TYPE tether_hub_dropped_total counter");
    for (label, n) in &c.dropped {
        let _ = writeln!(m, "tether_hub_dropped_total{{reason=\"{label}\"}} {n}");
    }
    let _ = writeln!(m, "# HELP tether_hub_egress_total kube-apiserver's CONNECTs through the egress, by outcome.\n# TYPE tether_hub_egress_total counter");
    for (label, n) in &c.egress {
        let _ = writeln!(m, "tether_hub_egress_total{{result=\"{label}\"}} {n}");
    }
    let _ = writeln!(m, "# HELP tether_hub_joins_total Joins and certificate renewals, by outcome (joined, renewed, or why refused).\n# TYPE tether_hub_joins_total counter");
    for (label, n) in &c.joins {
        let _ = writeln!(m, "tether_hub_joins_total{{result=\"{label}\"}} {n}");
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
    health_metrics(&mut m, reg);
    autonomy_metrics(&mut m, reg);
    webhook_metrics(&mut m, reg);
    m
}

/// What the pod webhook does (only with `[autonomy] webhook_listen`).
fn webhook_metrics(m: &mut String, reg: &Registry) {
    let w = &reg.autonomy.webhook;
    if !w.enabled {
        return;
    }
    for (name, help, v) in [
        (
            "tether_hub_webhook_requests_total",
            "Requests to the pod webhook, any outcome.",
            w.requests,
        ),
        (
            "tether_hub_webhook_patched_total",
            "Pods labelled tether.io/offline=autonomy given tolerations without a time limit.",
            w.patched,
        ),
        (
            "tether_hub_webhook_refused_total",
            "Requests to the pod webhook answered with an error (malformed review, wrong path or \
             method, too large); kube-apiserver then admits the pod unchanged (failurePolicy Ignore).",
            w.refused,
        ),
    ] {
        let _ = write!(
            m,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    }
}

/// What the autonomy controller does (only with `[autonomy]`).
fn autonomy_metrics(m: &mut String, reg: &Registry) {
    if !reg.autonomy.enabled {
        return;
    }
    let name = "tether_hub_autonomy_active";
    let _ = writeln!(
        m,
        "# HELP {name} 1 while the hub renews the node's Lease on its behalf (cut off, voted \
         alive or annotated tether.io/autonomy).\n# TYPE {name} gauge"
    );
    for (node, a) in &reg.autonomy.nodes {
        let _ = writeln!(m, "{name}{{node=\"{node}\"}} {}", u8::from(a.active));
    }
    let _ = write!(
        m,
        "# HELP tether_hub_lease_renewals_total Node Leases the hub renewed on the nodes' behalf.\n\
         # TYPE tether_hub_lease_renewals_total counter\ntether_hub_lease_renewals_total {}\n",
        reg.autonomy.renewals
    );
}

/// The units' votes and the report counters.
fn health_metrics(m: &mut String, reg: &Registry) {
    let name = "tether_hub_health_vote";
    let _ = writeln!(
        m,
        "# HELP {name} The unit's vote on each node it votes on: 1 for the current vote \
         (alive, dead or undecided), 0 for the others.\n# TYPE {name} gauge"
    );
    for (unit, node, vote) in reg.health.all_votes() {
        let now = health::decision(&vote);
        for v in ["alive", "dead", "undecided"] {
            let _ = writeln!(
                m,
                "{name}{{node=\"{node}\",unit=\"{unit}\",vote=\"{v}\"}} {}",
                u8::from(v == now)
            );
        }
    }
    let _ = write!(
        m,
        "# HELP tether_hub_health_reports_total Health verdict reports taken from edges.\n\
         # TYPE tether_hub_health_reports_total counter\ntether_hub_health_reports_total {}\n\
         # HELP tether_hub_health_reports_refused_total Health verdict reports refused (bad, \
         or not the sending node's own).\n# TYPE tether_hub_health_reports_refused_total \
         counter\ntether_hub_health_reports_refused_total {}\n",
        reg.health.received, reg.health.refused
    );
}

/// The node list as JSON, sorted by name: every node with a session, and
/// every node a unit votes on (one the hub has no session for shows
/// `linked` false and empty link fields).
pub fn nodes(reg: &Registry) -> String {
    let voted = reg.health.all_votes();
    let mut names: BTreeSet<&NodeName> = reg.nodes.keys().collect();
    names.extend(voted.iter().map(|(_, node, _)| *node));
    names.extend(reg.autonomy.nodes.keys());
    let time =
        |t: Option<SystemTime>| t.map_or("null".to_string(), |t| format!("\"{}\"", timestamp(t)));
    let now = Instant::now();
    let mut out = String::from("[");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Node names and units are DNS-1123 and addresses are printed by
        // std: no character in them needs JSON escaping.
        match reg.nodes.get(*name) {
            Some(n) => {
                let s = n.link.stats();
                let _ = write!(
                    out,
                    "\n  {{\"node\": \"{name}\", \"linked\": {}, \"linked_since\": {}, \"down_since\": {}, \"last_seen\": {}, \"remote\": {}, \"auth\": \"{}\", \"links\": {}, \"reconnects\": {}, \"bytes_in\": {}, \"bytes_out\": {}, \"streams\": {}, \"streams_opened\": {}",
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
            None => {
                let _ = write!(
                    out,
                    "\n  {{\"node\": \"{name}\", \"linked\": false, \"linked_since\": null, \"down_since\": null, \"last_seen\": null, \"remote\": null, \"auth\": null, \"links\": 0, \"reconnects\": 0, \"bytes_in\": 0, \"bytes_out\": 0, \"streams\": 0, \"streams_opened\": 0"
                );
            }
        }
        node_autonomy(&mut out, reg, name, &time);
        node_health(&mut out, reg, name, now, &time);
        out.push('}');
    }
    out.push_str(if names.is_empty() { "]\n" } else { "\n]\n" });
    out
}

/// A node's `autonomy` object in `/nodes`: whether the hub renews its
/// Lease, since when, why, how many times so far, and the last error from
/// kube-apiserver; `null` without `[autonomy]` or before the controller
/// first looked at the node.
fn node_autonomy(
    out: &mut String,
    reg: &Registry,
    node: &NodeName,
    time: &dyn Fn(Option<SystemTime>) -> String,
) {
    match reg.autonomy.nodes.get(node) {
        Some(a) if reg.autonomy.enabled => {
            let error = a.error.as_ref().map_or("null".to_string(), |e| {
                serde_json::to_string(e).unwrap_or_else(|_| "null".to_string())
            });
            let _ = write!(
                out,
                ", \"autonomy\": {{\"active\": {}, \"since\": {}, \"reason\": \"{}\", \"renewals\": {}, \"error\": {error}}}",
                a.active,
                time(a.since),
                a.reason,
                a.renewals
            );
        }
        _ => out.push_str(", \"autonomy\": null"),
    }
}

/// A node's health fields in `/nodes`: its unit, the unit's vote on it
/// (flat fields, so each reads alone), and its own newest report's
/// verdicts on its peers (an object, last).
fn node_health(
    out: &mut String,
    reg: &Registry,
    node: &NodeName,
    now: Instant,
    time: &dyn Fn(Option<SystemTime>) -> String,
) {
    let unit = reg.health.unit_of(node);
    let _ = write!(
        out,
        ", \"unit\": {}",
        unit.map_or("null".to_string(), |u| format!("\"{u}\""))
    );
    match reg.health.vote(node) {
        Some((unit, vote)) => {
            let (alive, dead) = health::counts(&vote);
            let (reporting, members) = reg.health.size(unit).unwrap_or_default();
            let _ = write!(
                out,
                ", \"vote\": \"{}\", \"vote_alive\": {alive}, \"vote_dead\": {dead}, \"vote_reason\": {}, \"unit_reporting\": {reporting}, \"unit_members\": {members}",
                health::decision(&vote),
                health::reason(&vote).map_or("null".to_string(), |r| format!("\"{r}\"")),
            );
        }
        None => out.push_str(", \"vote\": null, \"vote_alive\": 0, \"vote_dead\": 0, \"vote_reason\": null, \"unit_reporting\": 0, \"unit_members\": 0"),
    }
    match reg.health.report_of(node) {
        Some(held) => {
            let _ = write!(
                out,
                ", \"report_at\": {}, \"report_fresh\": {}, \"verdicts\": {{",
                time(Some(health::arrived(held, now))),
                held.fresh(now)
            );
            for (i, (peer, verdict)) in health::verdicts(held).enumerate() {
                let sep = if i > 0 { ", " } else { "" };
                let _ = write!(out, "{sep}\"{peer}\": \"{verdict}\"");
            }
            out.push('}');
        }
        None => out.push_str(", \"report_at\": null, \"report_fresh\": false, \"verdicts\": null"),
    }
}

//! The edge's own status port: `/healthz` and `/metrics` (Prometheus text)
//! with the link's, the API proxy's and the health peer's state, one GET
//! per connection.

use crate::http::{self, Limits};
use crate::proxy::{Miss, Outage, Proxy};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use smol::net::{TcpListener, TcpStream};
use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;
use tether_link::io::Link;

/// What the status port reports on.
pub struct Sources {
    /// The link to the hub.
    pub link: Link,
    /// The API proxy, when it runs.
    pub proxy: Option<Rc<Proxy>>,
    /// The health peer, when `[health]` is configured.
    pub health: Option<crate::health::io::View>,
}

/// Serves the status port forever.
pub async fn serve(
    ex: Rc<smol::LocalExecutor<'static>>,
    sources: Rc<Sources>,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                ex.spawn(answer(sources.clone(), tcp)).detach();
            }
            Err(e) => {
                log::warn!("status port: accept failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(sources: Rc<Sources>, mut tcp: TcpStream) {
    let head = async {
        let mut buf = Vec::new();
        loop {
            match http::parse_request_head(&buf, &Limits::default()) {
                Ok(Some((head, _))) => return Some(head),
                Ok(None) => {}
                Err(_) => return None,
            }
            let mut chunk = [0u8; 1024];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    .or(async {
        async_io::Timer::after(Duration::from_secs(5)).await;
        None
    })
    .await;
    let Some(head) = head else { return };
    let path = head.target.split('?').next().unwrap_or("");
    let (status, body) = match (head.method.as_str(), path) {
        ("GET", "/healthz") => (200, "ok\n".to_string()),
        ("GET", "/metrics") => (200, metrics(&sources)),
        ("GET", _) => (404, "try /healthz or /metrics\n".to_string()),
        _ => (405, "only GET\n".to_string()),
    };
    let headers = [
        ("Content-Type", "text/plain; version=0.0.4".to_string()),
        ("Content-Length", body.len().to_string()),
        ("Connection", "close".to_string()),
    ];
    let mut out = Vec::new();
    if http::write_response_head(status, http::reason_phrase(status), &headers, &mut out).is_ok() {
        out.extend_from_slice(body.as_bytes());
        let _ = tcp.write_all(&out).await;
    }
}

/// The Prometheus exposition of the edge's state.
pub fn metrics(sources: &Sources) -> String {
    let mut m = String::new();
    let stats = sources.link.stats();
    let up = sources.link.with_session(|s| s.is_up());
    metric(
        &mut m,
        "tether_edge_link_up",
        "gauge",
        "1 while the link to the hub is up.",
        u64::from(up),
    );
    metric(
        &mut m,
        "tether_edge_link_received_bytes_total",
        "counter",
        "Bytes received on the link (MQTT level).",
        stats.bytes_in,
    );
    metric(
        &mut m,
        "tether_edge_link_sent_bytes_total",
        "counter",
        "Bytes sent on the link (MQTT level).",
        stats.bytes_out,
    );
    metric(
        &mut m,
        "tether_edge_link_streams",
        "gauge",
        "Streams open on the link.",
        sources.link.open_streams() as u64,
    );
    let (window, inflight) = sources.link.window();
    metric(
        &mut m,
        "tether_edge_link_window_bytes",
        "gauge",
        "Unacknowledged bytes the link may have out now: the path's rate times (its least round trip + queue_delay).",
        window as u64,
    );
    metric(
        &mut m,
        "tether_edge_link_inflight_bytes",
        "gauge",
        "Bytes sent on the link and not yet acknowledged.",
        inflight as u64,
    );
    if let Some(proxy) = &sources.proxy {
        let c = proxy.counters();
        metric(
            &mut m,
            "tether_edge_apiserver_reachable",
            "gauge",
            "1 while kube-apiserver answered the last request.",
            u64::from(proxy.online()),
        );
        metric(
            &mut m,
            "tether_edge_proxy_relayed_total",
            "counter",
            "Requests relayed to kube-apiserver.",
            c.relayed,
        );
        metric(
            &mut m,
            "tether_edge_proxy_served_offline_total",
            "counter",
            "GET/LIST answered from the cache while offline.",
            c.hits.iter().sum(),
        );
        metric(
            &mut m,
            "tether_edge_proxy_offline_misses_total",
            "counter",
            "GET/LIST offline that the cache could not answer.",
            c.misses.iter().sum(),
        );
        labelled(
            &mut m,
            "tether_edge_cache_hits_total",
            "Offline GET/LIST answered from the cache, by why kube-apiserver was out of reach.",
            Outage::ALL.iter().map(|o| (o.label(), c.hits[*o as usize])),
        );
        labelled(
            &mut m,
            "tether_edge_cache_misses_total",
            "Offline GET/LIST the cache could not answer, by why.",
            Miss::ALL.iter().map(|r| (r.label(), c.misses[*r as usize])),
        );
        metric(
            &mut m,
            "tether_edge_proxy_writes_refused_total",
            "counter",
            "Writes refused while offline.",
            c.writes_refused,
        );
        metric(
            &mut m,
            "tether_edge_cache_recorded_total",
            "counter",
            "Answers recorded in the cache.",
            c.recorded,
        );
        let budget = proxy.budget();
        metric(
            &mut m,
            "tether_edge_memory_rss_bytes",
            "gauge",
            "Resident set size of the edge.",
            budget.rss(),
        );
        metric(
            &mut m,
            "tether_edge_memory_budget_bytes",
            "gauge",
            "The memory budget (0: none).",
            budget.limit(),
        );
        metric(
            &mut m,
            "tether_edge_memory_refused_total",
            "counter",
            "Client connections turned away while over the memory budget.",
            budget.refused(),
        );
        metric(
            &mut m,
            "tether_edge_offline_answers_bytes",
            "gauge",
            "Offline answers kept encoded in memory.",
            proxy.answers_bytes() as u64,
        );
        if let Some(s) = proxy.cache_stats() {
            metric(
                &mut m,
                "tether_edge_cache_views",
                "gauge",
                "Cached views.",
                s.views,
            );
            metric(
                &mut m,
                "tether_edge_cache_objects",
                "gauge",
                "Cached objects.",
                s.objects,
            );
            metric(
                &mut m,
                "tether_edge_cache_bytes",
                "gauge",
                "Bytes of cached objects.",
                s.bytes,
            );
            metric(
                &mut m,
                "tether_edge_cache_evictions_total",
                "counter",
                "Views evicted under the quota since start.",
                s.evictions,
            );
        }
    }
    if let Some(health) = &sources.health {
        let name = "tether_edge_health_peer_alive";
        let _ = write!(
            m,
            "# HELP {name} This edge's verdict on each peer of its unit: 1 alive, 0 dead; \
             absent while not yet judged.\n# TYPE {name} gauge\n"
        );
        for (peer, verdict) in health.verdicts() {
            let alive = u8::from(verdict == tether_link::health::Verdict::Alive);
            // Node names are DNS-1123: nothing in them needs escaping.
            let _ = writeln!(m, "{name}{{peer=\"{peer}\"}} {alive}");
        }
        labelled(
            &mut m,
            "tether_edge_health_rejected_total",
            "Datagrams on the health port dropped unread, by the check that failed.",
            health.rejected().into_iter(),
        );
        metric(
            &mut m,
            "tether_edge_health_reports_sent_total",
            "counter",
            "Verdict reports sent to the hub.",
            health.reports_sent(),
        );
    }
    m
}

/// Appends a counter with one `reason` label per value.
fn labelled<'a>(
    m: &mut String,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) {
    let _ = write!(m, "# HELP {name} {help}\n# TYPE {name} counter\n");
    for (reason, value) in values {
        let _ = writeln!(m, "{name}{{reason=\"{reason}\"}} {value}");
    }
}

/// Appends one unlabelled metric.
fn metric(m: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = write!(
        m,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}

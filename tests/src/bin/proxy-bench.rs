//! proxy-bench: the API proxy's figures (issue 3), printed.
//!
//! Runs the release tether-hub and tether-edge against the stand-in
//! kube-apiserver (TLS 1.3 with the node's certificate) holding 1,000 pods
//! bound to the node, and measures:
//! - an online GET through the proxy (through the link and the hub) against
//!   the same GET sent to the stand-in directly over TLS: p50 and p99;
//! - an offline LIST of the 1,000 pods from the cache: p50 and p99;
//! - a restart of the edge with no network: process start to the first
//!   cached answer.
//!
//! Usage: cargo run --release -p tether-tests --bin proxy-bench [-- --requests N]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::bench::arg;
use tether_tests::client::{self, KUBELET, PROTOBUF};
use tether_tests::cluster::{start_edge, EdgeAuth, Transport};
use tether_tests::fleet;
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";

/// Sends one GET as kubelet on `conn` (keep-alive) and reads the whole
/// answer: (status, body bytes).
fn exchange<S: Read + Write>(conn: &mut S, target: &str) -> (u16, usize) {
    let answer = client::exchange(conn, KUBELET, target, PROTOBUF);
    (answer.status, answer.body.len())
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The recorded pod the online GETs ask for; [`StandIn::generate`] clones the
/// same one, so the 1,000 seeded pods are bound to edge-1 too.
const POD: &str = "/api/v1/namespaces/edge-apps/pods/api-m5ghvwrtzm-dcwg6";

fn main() {
    let requests = arg("--requests", 2000) as usize;
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    standin
        // Names as the earlier seeding made them (bench-pod-0000000000 ...), so the
        // list sizes in BENCHMARKS.md stay comparable.
        .generate(Kind::Pod, "edge-apps", 1000, "bench-pod-0000000")
        .expect("seed 1,000 pods");
    let mut f = fleet::through_link(pki, standin, "");
    let (proxy, standin) = (f.proxy, &f.standin);
    println!(
        "machine: {} cores; stand-in with {} pods on edge-1",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        1000 + 19
    );

    // Online: through the proxy (link + hub) and directly over TLS.
    let mut via_proxy = TcpStream::connect(proxy).expect("proxy");
    let _ = via_proxy.set_nodelay(true);
    let (status, _) = exchange(&mut via_proxy, PODS);
    assert_eq!(status, 200, "{}", f.edge.logs());
    let mut proxied = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let (status, _) = exchange(&mut via_proxy, POD);
        proxied.push(t.elapsed());
        assert_eq!(status, 200);
    }
    let (cert, key) = f.pki.node_cert("system:node:edge-1");
    let client = tether_link::tls::client_config(&f.pki.ca, Some((&cert, &key))).expect("tls");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(client), name).expect("tls conn");
    let tcp = TcpStream::connect(standin.addr()).expect("stand-in");
    let _ = tcp.set_nodelay(true);
    let mut direct_conn = rustls::StreamOwned::new(conn, tcp);
    let mut direct = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let (status, _) = exchange(&mut direct_conn, POD);
        direct.push(t.elapsed());
        assert_eq!(status, 200);
    }
    let (pp50, pp99) = percentiles(proxied);
    let (dp50, dp99) = percentiles(direct);
    println!(
        "online GET pod, {requests} requests: through the proxy, link and hub p50 {} p99 {}; direct to the stand-in p50 {} p99 {}; added p99 {}",
        ms(pp50),
        ms(pp99),
        ms(dp50),
        ms(dp99),
        ms(pp99.saturating_sub(dp99))
    );

    // Offline LIST of the 1,000+ pods from the cache.
    standin.set_down(true);
    let mut offline_conn = TcpStream::connect(proxy).expect("proxy");
    let (status, size) = exchange(&mut offline_conn, PODS);
    assert_eq!(status, 200, "{}", f.edge.logs());
    let mut offline = Vec::with_capacity(requests / 4);
    for _ in 0..(requests / 4).max(50) {
        let t = Instant::now();
        let (status, _) = exchange(&mut offline_conn, PODS);
        offline.push(t.elapsed());
        assert_eq!(status, 200);
    }
    let (op50, op99) = percentiles(offline);
    println!(
        "offline LIST of 1,019 pods ({size} bytes, protobuf) from the cache: p50 {} p99 {}",
        ms(op50),
        ms(op99)
    );

    // Restart with no network: process start to the first cached answer.
    f.edge.kill();
    f.hub.proc.kill();
    let started = Instant::now();
    let edge = start_edge(
        &f.pki,
        "edge-1",
        ([127, 0, 0, 1], free_port()).into(),
        Transport::Tls,
        EdgeAuth::Token,
        &f.config,
    );
    let first = loop {
        if let Ok(mut c) = TcpStream::connect(proxy) {
            let (status, _) = exchange(&mut c, PODS);
            if status == 200 {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no cached answer:\n{}",
            edge.logs()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    println!(
        "restart with no network, process start to the first cached answer: {}",
        ms(first)
    );
}

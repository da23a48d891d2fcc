//! memory-bench: the edge's resident memory under the issue-3 load, printed.
//!
//! Runs the release tether-hub and tether-edge against the stand-in
//! kube-apiserver and measures the edge's RSS (x86_64, natively):
//! - with 5,000 objects cached (1,000 pods, 2,000 endpointslices and 2,000
//!   configmaps, each listed through the proxy by its own client) and 100
//!   watches open (kubelet-style, one configmap each);
//! - at its peak while a 50 MB LIST streams through the proxy and into the
//!   cache, under the default 20 MiB memory budget.
//!
//! Usage: cargo run --release -p tether-tests --bin memory-bench [-- --list-mib 50]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_edge::kube::{self, Encoding};
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::bench::{arg, status_kib};
use tether_tests::client::{call, watch, KUBELET, PROTOBUF};
use tether_tests::fleet;
use tether_tests::pki::Pki;
use tether_tests::procs::http_get;

/// One unlabelled value of the edge's `/metrics` (0 if absent).
fn metric(status: SocketAddr, name: &str) -> u64 {
    let (_, metrics) = http_get(status, "/metrics").expect("metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() {
    let list_mib = arg("--list-mib", 50) as usize;
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let started = Instant::now();
    standin
        .generate(Kind::Pod, "edge-apps", 1000, "bench-pod-")
        .expect("pods");
    standin
        .generate(Kind::EndpointSlice, "edge-apps", 2000, "bench-es-")
        .expect("endpointslices");
    let configmaps = standin
        .generate(Kind::ConfigMap, "edge-apps", 2000, "bench-cm-")
        .expect("configmaps");
    eprintln!("seeded in {:?}", started.elapsed());
    let f = fleet::through_link(pki, standin, "");
    let pid = f.edge.pid();
    let idle = status_kib(pid, "VmRSS:");

    // Each client lists what it watches; the cache keeps one view each.
    let lists = [
        (
            "kubelet/v1.24.0",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0",
        ),
        (
            "kube-proxy/v1.24.0",
            "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&limit=500&resourceVersion=0",
        ),
        (
            "coredns/1.8.6",
            "/api/v1/namespaces/edge-apps/configmaps?limit=500&resourceVersion=0",
        ),
    ];
    let mut rv = String::new();
    for (agent, target) in lists {
        let answer = call(f.proxy, agent, "GET", target, PROTOBUF, b"");
        assert_eq!(answer.status, 200, "{target}\n{}", f.edge.logs());
        let list = kube::parse_list(Encoding::Protobuf, &answer.body).expect("a list");
        eprintln!(
            "{agent}: {} objects, {} bytes",
            list.items.len(),
            answer.body.len()
        );
        rv = list.meta.resource_version;
    }
    std::thread::sleep(Duration::from_millis(500));
    let listed = status_kib(pid, "VmRSS:");
    let mut watches = Vec::new();
    for name in configmaps.iter().take(100) {
        watches.push(watch(
            f.proxy,
            KUBELET,
            &format!("/api/v1/namespaces/edge-apps/configmaps?allowWatchBookmarks=true&fieldSelector=metadata.name%3D{name}&resourceVersion={rv}&timeoutSeconds=3600&watch=true"),
        ));
    }
    std::thread::sleep(Duration::from_secs(3));
    let value = |name: &str| metric(f.status, name);
    println!(
        "machine: {} cores; edge idle with the proxy: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mib(idle)
    );
    println!(
        "{} objects cached in {} views ({:.1} MB), {} watches open: edge RSS {} (peak so far {}; {} before the watches)",
        value("tether_edge_cache_objects"),
        value("tether_edge_cache_views"),
        value("tether_edge_cache_bytes") as f64 / 1e6,
        value("tether_edge_link_streams"),
        mib(status_kib(pid, "VmRSS:")),
        mib(status_kib(pid, "VmHWM:")),
        mib(listed)
    );

    // A 50 MB LIST through the proxy, recorded as it streams.
    let count = list_mib * 10;
    f.standin
        .generate_sized(Kind::ConfigMap, "big", count, "big-cm-", 100_000)
        .expect("big configmaps");
    // Peak RSS from here on (clear_refs 5 resets VmHWM).
    let hub = f.hub.proc.pid();
    for p in [pid, hub] {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
    let hub_before = status_kib(hub, "VmRSS:");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let t = Instant::now();
    let answer = call(
        f.proxy,
        "tether-bench/1",
        "GET",
        "/api/v1/namespaces/big/configmaps?limit=500",
        PROTOBUF,
        b"",
    );
    let (status, size) = (answer.status, answer.body.len());
    drop(answer);
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    assert_eq!(status, 200, "{}", f.edge.logs());
    std::thread::sleep(Duration::from_millis(500));
    let value = |name: &str| metric(f.status, name);
    println!(
        "LIST of {count} configmaps, {:.1} MB (protobuf), through the proxy in {:.2} s and into the cache: edge RSS peak {} (sampled), VmHWM {}; budget {}; turned away {}; cache now {} objects, {:.1} MB",
        size as f64 / 1e6,
        took.as_secs_f64(),
        mib(peak.load(Ordering::Relaxed)),
        mib(status_kib(pid, "VmHWM:")),
        mib(value("tether_edge_memory_budget_bytes") / 1024),
        value("tether_edge_memory_refused_total"),
        value("tether_edge_cache_objects"),
        value("tether_edge_cache_bytes") as f64 / 1e6,
    );
    println!(
        "the hub relaying it: RSS {} before, peak {} (VmHWM)",
        mib(hub_before),
        mib(status_kib(hub, "VmHWM:"))
    );

    // Offline: the three clients list again, twice, from the cache (the
    // answers are kept encoded in memory up to the answer cache's bound).
    f.standin.set_down(true);
    for _ in 0..2 {
        for (agent, target) in lists {
            let answer = call(f.proxy, agent, "GET", target, PROTOBUF, b"");
            assert_eq!(answer.status, 200, "offline {target}\n{}", f.edge.logs());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "offline, the three lists answered from the cache twice: edge RSS {} (answers kept in memory: {:.1} MB)",
        mib(status_kib(pid, "VmRSS:")),
        metric(f.status, "tether_edge_offline_answers_bytes") as f64 / 1e6
    );
}

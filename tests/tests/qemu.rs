//! The boards' own builds of tether-edge, run for real under qemu-user
//! (issue 5): each cross-built edge links over TLS to the native x86_64
//! tether-hub and answers a kubelet's GET through its API proxy, first
//! online (the answer recorded in its SQLite cache), then with the cloud
//! gone (kube-apiserver away, then the link cut) from that cache: what a
//! board does on a weak network.
//!
//! The binaries come from `cross/build`, run by the first test that needs
//! them (see `tether_tests::qemu`); a missing toolchain or qemu fails the
//! tests with what to install, it never skips them. Each CPU is the oldest
//! its boards have, so an instruction they lack stops the edge with SIGILL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_edge::kube::Encoding;
use tether_tests::apiserver::StandIn;
use tether_tests::client::{call, items, Answer, KUBELET, PROTOBUF};
use tether_tests::fleet::{self, Route};
use tether_tests::pki::Pki;
use tether_tests::procs::http_get;
use tether_tests::qemu::{Emulated, AARCH64, AARCH64_MUSL, ARMV6, ARMV7, ARMV7_MUSL};

/// Emulation is slow (TLS handshakes in particular): the setup and each
/// wait get more time than the native tests give.
const WAIT: Duration = Duration::from_secs(60);

/// What kubelet lists first: the node's pods.
const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";

/// The edge's `[proxy]` additions: qemu's own memory counts in the edge's
/// RSS (12–20 MB more than on a board), which would trip the default 20 MiB
/// budget at once and make the proxy relay without recording.
const PROXY_EXTRA: &str = "memory_budget = \"256MiB\"\n";

/// A GET as kubelet over a fresh connection.
fn get(proxy: SocketAddr, target: &str) -> Answer {
    call(proxy, KUBELET, "GET", target, PROTOBUF, b"")
}

/// The value of the edge's metric `line_prefix` (name and labels).
fn metric(status: SocketAddr, line_prefix: &str) -> u64 {
    let (code, metrics) = http_get(status, "/metrics").expect("the edge's /metrics");
    assert_eq!(code, 200, "{metrics}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_prefix:?} in\n{metrics}"))
}

/// The scenario of a board on a weak network, with `board`'s edge under qemu.
fn cached_get_on(board: Emulated) {
    let command = board.edge_command();
    eprintln!(
        "{} ({}): {} {}",
        board.target,
        board.boards,
        command.program.display(),
        command.args.join(" ")
    );
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let mut f = fleet::start_with(pki, standin, Route::Link, PROXY_EXTRA, &command);

    // Online: kube-apiserver's own answer comes through the link, as the node.
    let deadline = Instant::now() + WAIT;
    let online = loop {
        let answer = get(f.proxy, PODS);
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(online.status, 200, "{}", f.edge.logs());
    let online_items = items(Encoding::Protobuf, &online.body);
    assert!(!online_items.is_empty(), "the stand-in listed no pods");
    assert!(
        f.standin
            .requests()
            .iter()
            .any(|r| r.identity == "system:node:edge-1"),
        "the node's certificate was not used"
    );

    // kube-apiserver goes away: the same GET comes from the cache.
    f.standin.set_down(true);
    // A pooled connection may still finish one exchange as it goes down.
    let _ = get(f.proxy, PODS);
    let offline = get(f.proxy, PODS);
    assert_eq!(offline.status, 200, "{}", f.edge.logs());
    assert_eq!(items(Encoding::Protobuf, &offline.body), online_items);

    // The link is cut (the hub dies): still from the cache.
    f.hub.proc.kill();
    assert!(
        f.edge.wait_for_log("cannot link to", WAIT),
        "{}",
        f.edge.logs()
    );
    let cut = get(f.proxy, PODS);
    assert_eq!(cut.status, 200, "{}", f.edge.logs());
    assert_eq!(items(Encoding::Protobuf, &cut.body), online_items);
    // Both offline answers were counted as served from the cache (under
    // the first outage's reason: the edge stays offline in between).
    assert!(metric(f.status, "tether_edge_proxy_served_offline_total ") >= 2);
    assert!(
        f.edge.is_running(),
        "the edge exited under qemu:\n{}",
        f.edge.logs()
    );
}

#[test]
fn aarch64_edge_under_qemu_cortex_a53_answers_a_cached_get() {
    cached_get_on(AARCH64);
}

#[test]
fn armv7_edge_under_qemu_cortex_a9_answers_a_cached_get() {
    cached_get_on(ARMV7);
}

#[test]
fn armv6_edge_under_qemu_arm1176_answers_a_cached_get() {
    cached_get_on(ARMV6);
}

// The static musl builds the board files name for 64-bit and ARMv7 boards:
// the same code as the glibc builds above, another libc. Their builds take
// about 11 minutes more on 2 cores, so CI leaves them out; after
// `cross/build aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf`:
//   cargo test -p tether-tests --test qemu -- --ignored

#[test]
#[ignore = "needs cross/build of the musl targets first (minutes); run with --ignored"]
fn aarch64_musl_edge_under_qemu_cortex_a53_answers_a_cached_get() {
    cached_get_on(AARCH64_MUSL);
}

#[test]
#[ignore = "needs cross/build of the musl targets first (minutes); run with --ignored"]
fn armv7_musl_edge_under_qemu_cortex_a9_answers_a_cached_get() {
    cached_get_on(ARMV7_MUSL);
}

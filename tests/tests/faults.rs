//! The link across a weak network: a fault-injecting proxy between edge and
//! hub cuts, black-holes, delays and throttles the link while streams run,
//! and nothing promised may be lost, duplicated or reordered.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tether_tests::cluster::{
    node_field, start_edge, start_hub, start_hub_on, wait_linked, EdgeAuth, Hub, Transport,
};
use tether_tests::echo::{roundtrip, EchoServer};
use tether_tests::faultproxy::FaultProxy;
use tether_tests::pki::Pki;
use tether_tests::procs::{free_port, Proc};

const WAIT: Duration = Duration::from_secs(30);
const KEEPALIVE_SECS: u64 = 2;

struct Setup {
    pki: Pki,
    echo: EchoServer,
    hub: Hub,
    proxy: FaultProxy,
    edge: Proc,
    fwd: SocketAddr,
}

fn hub_extra(echo: &EchoServer) -> String {
    format!("[upstream.echo]\naddress = \"{}\"\n", echo.addr())
}

fn setup() -> Setup {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let hub = start_hub(&pki, Transport::Tls, &["edge-1"], &hub_extra(&echo));
    let proxy = FaultProxy::start(hub.link).expect("proxy");
    let fwd: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let edge = start_edge(
        &pki,
        "edge-1",
        proxy.addr(),
        Transport::Tls,
        EdgeAuth::Token,
        &format!(
            "[link]\nkeepalive = \"{KEEPALIVE_SECS}s\"\nconnect_timeout = \"3s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n[[forward]]\nlisten = \"{fwd}\"\nupstream = \"echo\"\n"
        ),
    );
    assert!(
        wait_linked(hub.admin, "edge-1", WAIT),
        "{}\n{}",
        hub.proc.logs(),
        edge.logs()
    );
    Setup {
        pki,
        echo,
        hub,
        proxy,
        edge,
        fwd,
    }
}

/// Bytes whose every 8-byte word is its own offset: any loss, duplicate or
/// reordering shows up at a known place.
fn numbered(len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| (i as u64).to_be_bytes())
        .collect()
}

fn check_same(got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "stream differs at byte {first}: got {} bytes, want {}",
        got.len(),
        want.len()
    );
}

fn reconnects(hub: &Hub) -> u64 {
    node_field(hub.admin, "edge-1", "reconnects")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs a round trip through the edge's forward in a thread.
fn transfer(fwd: SocketAddr, data: Vec<u8>) -> thread::JoinHandle<std::io::Result<Vec<u8>>> {
    thread::spawn(move || roundtrip(fwd, &data, Duration::from_secs(120)))
}

#[test]
fn cut_mid_stream_loses_nothing() {
    let s = setup();
    // Throttled so the transfer spans several cuts.
    s.proxy.throttle(Some(2_000_000));
    let data = numbered(3 << 20);
    let run = transfer(s.fwd, data.clone());
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(400));
        s.proxy.cut();
    }
    let got = run
        .join()
        .expect("thread")
        .expect("the stream survives the cuts");
    check_same(&got, &data);
    assert!(reconnects(&s.hub) >= 1, "{}", s.edge.logs());
    assert!(
        s.edge.logs().contains("session resumed"),
        "{}",
        s.edge.logs()
    );
}

#[test]
fn ten_cuts_in_a_row() {
    let s = setup();
    s.proxy.throttle(Some(4_000_000));
    let data = numbered(6 << 20);
    let run = transfer(s.fwd, data.clone());
    for n in 1..=10 {
        let deadline = Instant::now() + WAIT;
        while reconnects(&s.hub) < n - 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(150));
        s.proxy.cut();
    }
    let got = run
        .join()
        .expect("thread")
        .expect("the stream survives ten cuts");
    check_same(&got, &data);
    assert!(wait_linked(s.hub.admin, "edge-1", WAIT));
    assert!(
        reconnects(&s.hub) >= 10,
        "reconnects: {}",
        reconnects(&s.hub)
    );
}

#[test]
fn black_hole_is_detected_within_one_and_a_half_keepalives() {
    let s = setup();
    s.proxy.throttle(Some(2_000_000));
    let data = numbered(2 << 20);
    let run = transfer(s.fwd, data.clone());
    thread::sleep(Duration::from_millis(300));
    let before = s.edge.count_log("path is dead");
    let start = SystemTime::now();
    s.proxy.black_hole(true);
    let limit = Duration::from_secs(KEEPALIVE_SECS) * 3 / 2;
    let deadline = Instant::now() + limit * 3;
    while s.edge.count_log("path is dead") == before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    // When the edge decided, by its own log timestamp (same clock), so a
    // slow log pipe on a busy machine does not count against the protocol.
    let line = s
        .edge
        .logs()
        .lines()
        .filter(|l| l.contains("path is dead"))
        .nth(before)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "black hole not detected within {:?}\n{}",
                limit * 3,
                s.edge.logs()
            )
        });
    let detected = log_time(&line).duration_since(start).unwrap_or_default();
    eprintln!("black hole detected after {detected:?} (limit {limit:?})");
    // Slack for timer wake-up only, not for the protocol.
    assert!(
        detected <= limit + Duration::from_millis(100),
        "detected after {detected:?}\n{}",
        s.edge.logs()
    );
    s.proxy.black_hole(false);
    let got = run
        .join()
        .expect("thread")
        .expect("the stream survives the black hole");
    check_same(&got, &data);
}

#[test]
fn hub_restart_resets_streams_cleanly_and_relinks() {
    let mut s = setup();
    s.proxy.throttle(Some(1_000_000));
    let data = numbered(4 << 20);
    let run = transfer(s.fwd, data.clone());
    thread::sleep(Duration::from_millis(500));
    let port = s.hub.link.port();
    s.hub.proc.kill();
    let hub = start_hub_on(
        &s.pki,
        Transport::Tls,
        &["edge-1"],
        &hub_extra(&s.echo),
        port,
    );
    s.proxy.throttle(None);
    // The open stream ends (its far end died with the hub), without
    // corruption: what arrived is a prefix of what was sent.
    match run.join().expect("thread") {
        Ok(got) => {
            assert!(
                got.len() < data.len(),
                "a stream cannot finish across a hub restart"
            );
            check_same(&got, &data[..got.len()]);
        }
        Err(e) => eprintln!("stream ended with {e}"),
    }
    assert!(wait_linked(hub.admin, "edge-1", WAIT), "{}", s.edge.logs());
    assert!(
        s.edge.wait_for_log("lost this node's session", WAIT),
        "{}",
        s.edge.logs()
    );
    let small = numbered(64 * 1024);
    let got = roundtrip(s.fwd, &small, WAIT).expect("new streams work");
    check_same(&got, &small);
}

#[test]
fn slow_and_far_links_still_work() {
    let s = setup();
    // 64 kbit/s and 300 ms each way, like a poor cellular uplink.
    s.proxy.throttle(Some(8_000));
    s.proxy.delay(Duration::from_millis(300));
    let data = numbered(16 * 1024);
    let got = roundtrip(s.fwd, &data, Duration::from_secs(60)).expect("round trip");
    check_same(&got, &data);
    thread::sleep(Duration::from_secs(KEEPALIVE_SECS * 2));
    assert!(wait_linked(s.hub.admin, "edge-1", WAIT));
    assert_eq!(reconnects(&s.hub), 0, "{}", s.edge.logs());
}

/// The time of a log line (`YYYY-MM-DDTHH:MM:SS.mmmZ ...`, UTC).
fn log_time(line: &str) -> SystemTime {
    let field = |range: std::ops::Range<usize>| -> i64 {
        line.get(range)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in {line:?}"))
    };
    let (y, m, d) = (field(0..4), field(5..7), field(8..10));
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 24 + field(11..13)) * 60 + field(14..16)) * 60_000
        + field(17..19) * 1000
        + field(20..23);
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

//! Health peers (issue 6) with real binaries on loopback: a unit of five
//! edges and the hub's votes in `/nodes` and `/metrics`; an edge cut off
//! from the cloud stays alive by vote, a killed one is voted dead within
//! three intervals, a unit split 3/2 (by giving two members another key)
//! decides only on the side of three, forged and replayed datagrams are
//! rejected and logged, and an edge without a unit key refuses to start.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tether_edge::health::wire::{Body, Receiver, Sender, UnitKey};
use tether_link::topic::NodeName;
use tether_tests::cluster;
use tether_tests::healthunit::{
    edge_config, free_udp_port, health_keys, shown_verdicts, shown_vote, start_edge, voted,
    wait_until, write_key, Options, Unit,
};
use tether_tests::pki::Pki;
use tether_tests::procs::{free_port, http_get};

/// The probe interval of these tests: the shortest the config allows, so
/// three intervals are 6 s.
const INTERVAL: Duration = Duration::from_secs(2);

fn no_relay(_: usize, own: SocketAddr) -> SocketAddr {
    own
}

/// Cuts a member's cloud link only: its health port stays up.
fn cut(unit: &mut Unit, name: &str) {
    let proxy = unit.member(name).proxy.as_ref().expect("proxied");
    proxy.refuse(true);
    proxy.cut();
}

fn restore(unit: &mut Unit, name: &str) {
    unit.member(name).proxy.as_ref().expect("proxied").pass();
}

#[test]
fn unit_of_five_cut_off_stays_alive_killed_is_voted_dead() {
    let mut opts = Options::new("greenhouse-a", 5, "2s");
    opts.proxied = true;
    let mut unit = Unit::start(&opts, &no_relay);
    let admin = unit.hub.admin;
    let names: Vec<String> = unit.members.iter().map(|m| m.name.clone()).collect();

    // Everyone alive, 4 to 0, by a unit of five reporters.
    let all_alive = || names.iter().all(|n| voted(admin, n, "alive", Some((4, 0))));
    let took = wait_until(Duration::from_secs(30), all_alive);
    assert!(took.is_some(), "not all voted alive:\n{}", unit.logs());
    eprintln!(
        "health: all five voted alive {:?} after linking",
        took.unwrap_or_default()
    );
    assert_eq!(
        shown_verdicts(admin, "e1"),
        [
            ("e2", "alive"),
            ("e3", "alive"),
            ("e4", "alive"),
            ("e5", "alive")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(
        cluster::node_field(admin, "e3", "unit").as_deref(),
        Some("\"greenhouse-a\"")
    );

    // e5 loses its cloud link only: its neighbours still vote it alive,
    // after its own last report went stale too (3 intervals).
    cut(&mut unit, "e5");
    assert!(wait_until(Duration::from_secs(20), || !cluster::is_linked(admin, "e5")).is_some());
    std::thread::sleep(INTERVAL * 4);
    let v = shown_vote(admin, "e5").expect("e5 listed");
    assert!(
        !v.linked && !v.report_fresh && v.vote == "alive" && v.alive == 4 && v.dead == 0,
        "{v:?}\n{}",
        unit.logs()
    );
    eprintln!("health: e5 cut off from the hub, voted {v:?}");

    // e4 dies: voted dead within three intervals.
    let killed = Instant::now();
    unit.member("e4").proc.as_mut().expect("running").kill();
    let took = wait_until(INTERVAL * 6, || voted(admin, "e4", "dead", None));
    let took = took.unwrap_or_else(|| panic!("e4 not voted dead:\n{}", unit.logs()));
    eprintln!(
        "health: killed e4 voted dead by the hub after {:.2} s ({:.2} intervals of {} s)",
        took.as_secs_f64(),
        took.as_secs_f64() / INTERVAL.as_secs_f64(),
        INTERVAL.as_secs()
    );
    assert!(took <= INTERVAL * 3, "voted dead after {took:?}");
    assert!(killed.elapsed() < INTERVAL * 6);
    assert!(
        unit.hub
            .proc
            .wait_for_log("unit greenhouse-a: node e4 voted dead", INTERVAL),
        "{}",
        unit.hub.proc.logs()
    );
    // Logged once, not on every report.
    std::thread::sleep(INTERVAL * 2);
    assert_eq!(
        unit.hub
            .proc
            .count_log("unit greenhouse-a: node e4 voted dead"),
        1,
        "{}",
        unit.hub.proc.logs()
    );
    // Each survivor logged its verdict change once, saying why.
    let e1 = unit.member("e1").proc.as_ref().expect("running");
    assert_eq!(
        e1.count_log("health peer e4: alive -> dead (3 probes in a row unanswered)"),
        1,
        "{}",
        e1.logs()
    );
    // e5, still cut off, is still alive by the three that report.
    let v = shown_vote(admin, "e5").expect("e5 listed");
    assert!(v.vote == "alive" && !v.linked, "{v:?}");
    // Metrics of the hub and of a survivor.
    let m = cluster::metrics(admin);
    assert!(
        m.contains("tether_hub_health_vote{node=\"e4\",unit=\"greenhouse-a\",vote=\"dead\"} 1")
            && m.contains(
                "tether_hub_health_vote{node=\"e5\",unit=\"greenhouse-a\",vote=\"alive\"} 1"
            ),
        "{m}"
    );
    assert!(cluster::metric(admin, "tether_hub_health_reports_total").unwrap_or(0.0) > 10.0);
    let status = unit.member("e1").status;
    let (_, edge) = http_get(status, "/metrics").expect("edge metrics");
    assert!(
        edge.contains("tether_edge_health_peer_alive{peer=\"e4\"} 0")
            && edge.contains("tether_edge_health_peer_alive{peer=\"e2\"} 1")
            && edge.contains("tether_edge_health_rejected_total{reason=\"forged\"} 0"),
        "{edge}"
    );

    // e5's link comes back: it reports again, and is voted alive.
    restore(&mut unit, "e5");
    assert!(cluster::wait_linked(admin, "e5", Duration::from_secs(30)));
    assert!(
        wait_until(INTERVAL * 3, || shown_vote(admin, "e5")
            .is_some_and(|v| v.linked && v.report_fresh && v.vote == "alive"))
        .is_some(),
        "{}",
        unit.logs()
    );
}

#[test]
fn split_three_two_only_the_majority_side_decides() {
    // e4 and e5 have another key: they hear each other, the other three
    // hear each other, and each side's messages are forgeries to the other.
    let mut opts = Options::new("bench-a", 5, "2s");
    opts.proxied = true;
    opts.wrong_key = vec![3, 4];
    let mut unit = Unit::start(&opts, &no_relay);
    let admin = unit.hub.admin;
    let (three, two) = (["e1", "e2", "e3"], ["e4", "e5"]);

    // All five report. The side of two is voted dead 3 to 1 (each of the
    // two says the other is alive); each of the three gets 2 alive from
    // its side and 2 dead from the other: a tie, undecided. Both sides
    // are linked, so nothing depends on these votes.
    let settled = || {
        two.iter().all(|n| voted(admin, n, "dead", Some((1, 3))))
            && three
                .iter()
                .all(|n| voted(admin, n, "undecided", Some((2, 2))))
    };
    assert!(
        wait_until(Duration::from_secs(30), settled).is_some(),
        "{}",
        unit.logs()
    );
    // Each side logged the other's signatures as bad, rate-limited: one
    // line per sender in the first minute.
    let e1 = unit.member("e1").proc.as_ref().expect("running");
    assert!(
        e1.wait_for_log("has a bad signature", INTERVAL),
        "{}",
        e1.logs()
    );
    let lines = e1.count_log("has a bad signature");
    assert!(lines <= 2, "{lines} lines:\n{}", e1.logs());

    // The side of two loses its uplink (the usual shape of a split site):
    // only the three report, and they decide both ways.
    for n in two {
        cut(&mut unit, n);
    }
    let majority = || {
        three.iter().all(|n| voted(admin, n, "alive", Some((2, 0))))
            && two.iter().all(|n| voted(admin, n, "dead", Some((0, 3))))
    };
    let took = wait_until(INTERVAL * 8, majority);
    assert!(took.is_some(), "{}", unit.logs());

    // The other way round: only the side of two reports. Two of five is
    // no quorum, so nothing is decided on anyone.
    for n in two {
        restore(&mut unit, n);
    }
    for n in three {
        cut(&mut unit, n);
    }
    for n in two {
        assert!(cluster::wait_linked(admin, n, Duration::from_secs(30)));
    }
    let minority = || {
        three.iter().chain(two.iter()).all(|n| {
            shown_vote(admin, n).is_some_and(|v| v.vote == "undecided" && v.reason == "no_quorum")
        })
    };
    assert!(
        wait_until(INTERVAL * 8, minority).is_some(),
        "{}",
        unit.logs()
    );
}

#[test]
fn forged_and_replayed_datagrams_are_rejected_and_logged() {
    // One edge whose only peer, "ghost", is this test's UDP socket.
    let pki = Pki::new();
    let hub = cluster::start_hub(&pki, cluster::Transport::Plain, &["e1"], "");
    let (key_file, key) = write_key(&pki, "unit.key", 7);
    let ghost = UdpSocket::bind("127.0.0.1:0").expect("bind");
    ghost
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let ghost_addr = ghost.local_addr().expect("addr");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let status = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let keys = health_keys(
        listen,
        &key_file,
        &[("ghost".to_string(), ghost_addr)],
        "2s",
        3,
    );
    let config = edge_config(&pki, "e1", "bench-a", hub.link, status, "info", &keys);
    let edge = start_edge("e1", &config);
    assert!(
        edge.wait_for_log("health peer: listening", Duration::from_secs(20)),
        "{}",
        edge.logs()
    );

    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let ghost_name = NodeName::new("ghost").expect("name");
    // Signed with another key, from a socket of its own (rejections are
    // logged once a minute per sender address): forged, five times.
    let forger_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut forger = Sender::new(
        "bench-a",
        ghost_name.clone(),
        UnitKey::new(&[0x55; 32]).expect("key"),
        start_ms,
    );
    for _ in 0..5 {
        let forged = forger.seal(start_ms, Body::Probe { nonce: 1 });
        forger_socket.send_to(&forged, listen).expect("send");
    }
    // Signed with the unit key: answered once, refused as a replay after.
    let key = UnitKey::new(&key).expect("key");
    let mut sender = Sender::new("bench-a", ghost_name.clone(), key.clone(), start_ms);
    let e1 = NodeName::new("e1").expect("name");
    let mut receiver = Receiver::new("bench-a", ghost_name, &[e1], key, Duration::from_secs(30));
    let probe = sender.seal(start_ms, Body::Probe { nonce: 4242 });
    ghost.send_to(&probe, listen).expect("send");
    // The edge's own probes to the ghost arrive too; wait for the answer.
    let answered = (0..20).any(|_| {
        let mut buf = [0u8; 2048];
        let Ok((len, _)) = ghost.recv_from(&mut buf) else {
            return false;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        matches!(
            receiver.open(now_ms, &buf[..len]).map(|m| m.body),
            Ok(Body::Answer { nonce: 4242, .. })
        )
    });
    assert!(answered, "no answer to the genuine probe:\n{}", edge.logs());
    ghost.send_to(&probe, listen).expect("send");

    assert!(
        edge.wait_for_log("dropped as a replay", Duration::from_secs(5)),
        "replay not logged:\n{}",
        edge.logs()
    );
    assert_eq!(edge.count_log("has a bad signature"), 1, "{}", edge.logs());
    assert_eq!(edge.count_log("dropped as a replay"), 1, "{}", edge.logs());
    assert_eq!(
        metric_of(
            status,
            "tether_edge_health_rejected_total{reason=\"forged\"}"
        ),
        5
    );
    assert_eq!(
        metric_of(
            status,
            "tether_edge_health_rejected_total{reason=\"replayed\"}"
        ),
        1
    );
    let _ = hub;
}

/// A sample's value in the edge's metrics (0 when absent).
fn metric_of(status: SocketAddr, sample: &str) -> u64 {
    let (_, text) = http_get(status, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn no_unit_key_no_start() {
    let pki = Pki::new();
    let status = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let hub: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // No key_file at all: a config error, exit 78, saying why.
    let keys = "listen = \"127.0.0.1:0\"\npeers = [\"e2=127.0.0.1:9\"]\n";
    let config = edge_config(&pki, "e1", "bench-a", hub, status, "info", keys);
    let mut edge = start_edge("e1", &config);
    let exit = edge.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(exit.code(), Some(78), "{}", edge.logs());
    assert!(
        edge.logs().contains("health.key_file: missing")
            && edge.logs().contains("There is no default key"),
        "{}",
        edge.logs()
    );
    // A key file others can read: refused, saying how to fix it.
    let (key_file, _) = write_key(&pki, "open.key", 3);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let keys = health_keys(
        "127.0.0.1:0".parse().expect("addr"),
        &key_file,
        &[("e2".to_string(), "127.0.0.1:9".parse().expect("addr"))],
        "2s",
        3,
    );
    let config = edge_config(&pki, "e1", "bench-a", hub, status, "info", &keys);
    let mut edge = start_edge("e1", &config);
    let exit = edge.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!exit.success(), "{}", edge.logs());
    assert!(edge.logs().contains("chmod 600"), "{}", edge.logs());
}

//! Autonomy (issue 6) with real binaries on loopback: a unit of three edges,
//! a hub with `[autonomy]` pointed at the stand-in kube-apiserver over TLS,
//! and what the stand-in sees. A node cut off from the hub while its unit
//! votes it alive has its Lease renewed by the hub (same holder,
//! `renewTime` advancing) with an Event `TetherAutonomyStarted`, and no
//! longer once its link is back (`TetherAutonomyStopped`); a killed node,
//! once voted dead, is not renewed; a node whose unit cannot vote is renewed
//! only while annotated `tether.io/autonomy: "true"`; a 403 is logged once,
//! naming the missing RBAC rule.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::cluster::{self, start_hub, Transport};
use tether_tests::faultproxy::FaultProxy;
use tether_tests::healthunit::{
    edge_config, free_udp_port, health_keys, start_edge, voted, wait_until, write_key, Member, Unit,
};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

/// The nodes of the unit: the stand-in has a Lease for each (and a Node
/// for edge-1).
const NAMES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
/// The hub's renewal period in these tests.
const RENEW: Duration = Duration::from_secs(1);
/// The bearer token of the hub in the token test.
const HUB_TOKEN: &str = "hub-sa-token-5b0c1d2e3f";

/// How the hub authenticates to the stand-in.
enum Identity {
    /// A client certificate with CN `tether-hub`.
    Certificate,
    /// A bearer token ([`HUB_TOKEN`]).
    Token,
}

/// The stand-in's name for the hub.
fn identity_of(identity: &Identity) -> String {
    match identity {
        Identity::Certificate => "tether-hub".to_owned(),
        Identity::Token => format!("bearer:{HUB_TOKEN}"),
    }
}

/// What a test changes in [`start_with`].
struct Setup {
    /// The hub's `renew_every`.
    renew: Duration,
    /// More `[autonomy]` keys of the hub.
    autonomy_extra: &'static str,
    /// The edges' `[link] keepalive`, if not their default.
    edge_keepalive: Option<&'static str>,
}

/// The stand-in (TLS) and a unit of three with probe interval 2 s, each
/// edge's link behind a fault proxy, and a hub with `[autonomy]` renewing
/// every [`RENEW`].
fn start(identity: &Identity) -> (Unit, StandIn) {
    start_with(
        identity,
        &Setup {
            renew: RENEW,
            autonomy_extra: "",
            edge_keepalive: None,
        },
    )
}

/// [`start`] as `setup` says.
fn start_with(identity: &Identity, setup: &Setup) -> (Unit, StandIn) {
    let pki = Pki::new();
    let api = StandIn::start_tls(&pki);
    let auth = match identity {
        Identity::Certificate => {
            let (cert, key) = pki.node_cert("tether-hub");
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            )
        }
        Identity::Token => {
            let token = pki.write("hub-sa-token", &format!("{HUB_TOKEN}\n"));
            format!("token_file = \"{}\"\n", token.display())
        }
    };
    let extra = format!(
        "[autonomy]\napiserver = \"{}\"\nca = \"{}\"\n{auth}renew_every = \"{}s\"\n{}",
        api.url(),
        pki.ca.display(),
        setup.renew.as_secs(),
        setup.autonomy_extra
    );
    let hub = start_hub(&pki, Transport::Plain, &NAMES, &extra);
    let (key_file, key) = write_key(&pki, "unit.key", 7);
    let ports: Vec<SocketAddr> = NAMES
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
        .collect();
    let mut members = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let proxy = FaultProxy::start(hub.link).expect("fault proxy");
        let status = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let peers: Vec<(String, SocketAddr)> = NAMES
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, n)| (n.to_string(), ports[j]))
            .collect();
        let keys = health_keys(ports[i], &key_file, &peers, "2s", 3);
        let config = edge_config(&pki, name, "site-a", proxy.addr(), status, "info", &keys);
        if let Some(keepalive) = setup.edge_keepalive {
            let text = std::fs::read_to_string(&config).expect("edge config");
            assert!(text.contains("[link]\n"), "{text}");
            let text = text.replacen(
                "[link]\n",
                &format!("[link]\nkeepalive = \"{keepalive}\"\n"),
                1,
            );
            std::fs::write(&config, text).expect("edge config");
        }
        members.push(Member {
            name: name.to_string(),
            health: ports[i],
            status,
            proxy: Some(proxy),
            proc: Some(start_edge(name, &config)),
            config,
        });
    }
    let unit = Unit {
        pki,
        hub,
        members,
        key_file,
        key,
    };
    for name in NAMES {
        assert!(
            cluster::wait_linked(unit.hub.admin, name, Duration::from_secs(30)),
            "{name} did not link:\n{}",
            unit.logs()
        );
    }
    let admin = unit.hub.admin;
    let all_alive = || NAMES.iter().all(|n| voted(admin, n, "alive", Some((2, 0))));
    assert!(
        wait_until(Duration::from_secs(30), all_alive).is_some(),
        "not all voted alive:\n{}",
        unit.logs()
    );
    (unit, api)
}

/// Cuts a member's cloud link only (its health port stays up) and waits
/// until the hub sees it down.
fn cut(unit: &mut Unit, name: &str) {
    let proxy = unit.member(name).proxy.as_ref().expect("proxied");
    proxy.refuse(true);
    proxy.cut();
    let admin = unit.hub.admin;
    assert!(
        wait_until(Duration::from_secs(20), || !cluster::is_linked(admin, name)).is_some(),
        "{name} still linked"
    );
}

/// The string value of the first `"key":"..."` in a JSON text.
fn str_field(body: &str, key: &str) -> Option<String> {
    let start = body.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &body[start..];
    let mut end = 0;
    let bytes = rest.as_bytes();
    while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
        end += 1;
    }
    Some(rest[..end].to_owned())
}

/// One lease PUT the stand-in received.
#[derive(Debug)]
struct Renewal {
    identity: String,
    holder: String,
    renew_time: String,
}

/// Lease PUTs for `node` by anyone, in order.
fn renewals(api: &StandIn, node: &str) -> Vec<Renewal> {
    let target = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}");
    api.requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target == target)
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body).into_owned();
            Renewal {
                identity: r.identity,
                holder: str_field(&body, "holderIdentity").unwrap_or_default(),
                renew_time: str_field(&body, "renewTime").unwrap_or_default(),
            }
        })
        .collect()
}

/// Events POSTed about Node `node`: (reason, message, identity).
fn events(api: &StandIn, node: &str) -> Vec<(String, String, String)> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.target == "/api/v1/namespaces/default/events")
        .filter_map(|r| {
            let body = String::from_utf8_lossy(&r.body).into_owned();
            (body.contains(&format!("\"uid\":\"{node}\""))
                && body.contains("\"kind\":\"Node\"")
                && body.contains("\"component\":\"tether-hub\""))
            .then(|| {
                (
                    str_field(&body, "reason").unwrap_or_default(),
                    str_field(&body, "message").unwrap_or_default(),
                    r.identity,
                )
            })
        })
        .collect()
}

/// The `autonomy` object of `node` in the hub's `/nodes`.
fn shown(admin: SocketAddr, node: &str) -> String {
    let list = cluster::nodes(admin);
    let line = list
        .lines()
        .find(|l| l.contains(&format!("\"node\": \"{node}\"")))
        .unwrap_or_default();
    let start = line.find("\"autonomy\": ").map_or(line.len(), |i| i + 12);
    let rest = &line[start..];
    rest[..rest.find('}').map_or(rest.len(), |e| e + 1)].to_owned()
}

#[test]
fn cut_off_node_voted_alive_is_renewed_until_back_and_a_killed_one_is_not() {
    let identity = Identity::Certificate;
    let (mut unit, api) = start(&identity);
    let admin = unit.hub.admin;
    let hub_id = identity_of(&identity);
    assert!(
        NAMES.iter().all(|n| renewals(&api, n).is_empty()),
        "renewed while every node is linked"
    );
    assert!(shown(admin, "edge-3")
        .contains("\"active\": false, \"since\": null, \"reason\": \"linked\""));

    // edge-3 loses its cloud link only: its neighbours vote it alive, and
    // the hub renews its Lease.
    let cut_at = Instant::now();
    cut(&mut unit, "edge-3");
    let first = wait_until(Duration::from_secs(15), || {
        !renewals(&api, "edge-3").is_empty()
    });
    assert!(first.is_some(), "no renewal of edge-3:\n{}", unit.logs());
    eprintln!(
        "autonomy: first renewal of edge-3 {:.2} s after its link was cut",
        cut_at.elapsed().as_secs_f64()
    );
    assert!(
        wait_until(Duration::from_secs(15), || renewals(&api, "edge-3").len()
            >= 4)
        .is_some()
    );
    let r = renewals(&api, "edge-3");
    assert!(
        r.iter()
            .all(|r| r.identity == hub_id && r.holder == "edge-3"),
        "{r:?}"
    );
    assert!(
        r.windows(2).all(|w| w[0].renew_time < w[1].renew_time),
        "renewTime does not advance: {r:?}"
    );
    // kubelet's MicroTime: 2026-11-22T02:14:46.945213Z.
    assert_eq!(r[0].renew_time.len(), 27, "{r:?}");
    assert!(renewals(&api, "edge-1").is_empty() && renewals(&api, "edge-2").is_empty());
    let ev = events(&api, "edge-3");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "TetherAutonomyStarted");
    assert!(
        ev[0]
            .1
            .contains("unit site-a votes it alive (2 alive, 0 dead)"),
        "{ev:?}"
    );
    assert_eq!(ev[0].2, hub_id);
    let s = shown(admin, "edge-3");
    assert!(
        s.contains("\"active\": true") && s.contains("\"reason\": \"vote_alive\""),
        "{s}"
    );
    assert_eq!(
        cluster::metric(admin, "tether_hub_autonomy_active{node=\"edge-3\"}"),
        Some(1.0)
    );
    assert!(cluster::metric(admin, "tether_hub_lease_renewals_total").unwrap_or(0.0) >= 4.0);
    assert_eq!(
        unit.hub
            .proc
            .count_log("node edge-3: renewing its Lease on its behalf"),
        1
    );

    // The link comes back: renewals stop, one Event says so.
    unit.member("edge-3")
        .proxy
        .as_ref()
        .expect("proxied")
        .pass();
    assert!(cluster::wait_linked(
        admin,
        "edge-3",
        Duration::from_secs(30)
    ));
    let stopped = || {
        events(&api, "edge-3")
            .iter()
            .any(|e| e.0 == "TetherAutonomyStopped" && e.1.contains("link to the hub is up"))
    };
    assert!(
        wait_until(Duration::from_secs(10), stopped).is_some(),
        "{:?}",
        events(&api, "edge-3")
    );
    let after = renewals(&api, "edge-3").len();
    std::thread::sleep(RENEW * 4);
    assert_eq!(
        renewals(&api, "edge-3").len(),
        after,
        "renewed after the link came back"
    );
    assert_eq!(events(&api, "edge-3").len(), 2);
    assert_eq!(
        cluster::metric(admin, "tether_hub_autonomy_active{node=\"edge-3\"}"),
        Some(0.0)
    );

    // edge-2's process dies: its link drops at once, and its unit votes it
    // dead within 2.5 probe intervals. Until then its last verdicts say
    // alive and the hub renews; once voted dead, never again.
    let killed = Instant::now();
    unit.member("edge-2").proc.as_mut().expect("running").kill();
    assert!(
        wait_until(Duration::from_secs(20), || voted(
            admin,
            "edge-2",
            "dead",
            Some((0, 2))
        ))
        .is_some(),
        "edge-2 not voted dead:\n{}",
        unit.logs()
    );
    let dead_after = killed.elapsed();
    // The controller acts on the vote at its next look.
    std::thread::sleep(RENEW * 2);
    let window = renewals(&api, "edge-2").len();
    std::thread::sleep(RENEW * 5);
    assert_eq!(
        renewals(&api, "edge-2").len(),
        window,
        "edge-2 renewed after it was voted dead:\n{}",
        unit.hub.proc.logs()
    );
    eprintln!(
        "autonomy: killed edge-2 voted dead after {:.2} s; renewed {window} times before that",
        dead_after.as_secs_f64()
    );
    let s = shown(admin, "edge-2");
    assert!(
        s.contains("\"active\": false") && s.contains("\"reason\": \"voted_dead\""),
        "{s}"
    );
    // If it was renewed at all, the Events say it started and stopped, and why.
    let ev = events(&api, "edge-2");
    if window > 0 {
        assert_eq!(ev.len(), 2, "{ev:?}");
        // Stopped at the first vote that was not alive (a tie on the way to
        // dead stops it too).
        assert!(
            ev[1].0 == "TetherAutonomyStopped" && ev[1].1.contains("left to Kubernetes"),
            "{ev:?}"
        );
    } else {
        assert!(ev.is_empty(), "{ev:?}");
    }
}

#[test]
fn annotated_node_is_renewed_when_its_unit_cannot_vote() {
    let identity = Identity::Token;
    let (mut unit, api) = start(&identity);
    let admin = unit.hub.admin;
    // Two of three die: edge-1 alone is no quorum, nothing is decided.
    for name in ["edge-2", "edge-3"] {
        unit.member(name).proc.as_mut().expect("running").kill();
    }
    assert!(
        wait_until(Duration::from_secs(30), || voted(
            admin,
            "edge-1",
            "undecided",
            None
        ))
        .is_some(),
        "edge-1 not undecided:\n{}",
        unit.logs()
    );
    // Until their deaths were voted on, the two were renewed (their last
    // verdicts said alive); no longer.
    let dead_renewed = || renewals(&api, "edge-2").len() + renewals(&api, "edge-3").len();
    std::thread::sleep(RENEW * 2);
    let before = dead_renewed();
    // Cut off and undecided, not annotated: left to Kubernetes.
    cut(&mut unit, "edge-1");
    std::thread::sleep(RENEW * 4);
    assert!(
        renewals(&api, "edge-1").is_empty(),
        "{:?}",
        renewals(&api, "edge-1")
    );
    let s = shown(admin, "edge-1");
    assert!(
        s.contains("\"active\": false") && s.contains("\"reason\": \"undecided\""),
        "{s}"
    );
    // kubectl annotate node edge-1 tether.io/autonomy=true
    api.set_annotation(Kind::Node, "", "edge-1", "tether.io/autonomy", "true")
        .expect("annotate");
    assert!(
        wait_until(Duration::from_secs(10), || renewals(&api, "edge-1").len()
            >= 3)
        .is_some(),
        "annotated edge-1 not renewed:\n{}",
        unit.hub.proc.logs()
    );
    let r = renewals(&api, "edge-1");
    assert!(
        r.iter()
            .all(|r| r.identity == identity_of(&identity) && r.holder == "edge-1"),
        "{r:?}"
    );
    let ev = events(&api, "edge-1");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].0 == "TetherAutonomyStarted"
            && ev[0]
                .1
                .contains("annotated tether.io/autonomy=\\\"true\\\""),
        "{ev:?}"
    );
    let s = shown(admin, "edge-1");
    assert!(
        s.contains("\"active\": true") && s.contains("\"reason\": \"annotation\""),
        "{s}"
    );
    // The dead ones have no annotation (and no Node): not renewed.
    assert_eq!(dead_renewed(), before);
}

#[test]
fn a_forbidden_lease_update_is_logged_once_with_the_missing_permission() {
    let identity = Identity::Certificate;
    let (mut unit, api) = start(&identity);
    api.forbid(&identity_of(&identity), "update", "leases");
    cut(&mut unit, "edge-3");
    let needle = "lacks RBAC verb \"update\" on resource \"leases\" in API group coordination.k8s.io in namespace kube-node-lease";
    assert!(
        unit.hub.proc.wait_for_log(needle, Duration::from_secs(15)),
        "{}",
        unit.hub.proc.logs()
    );
    // Tried every period, logged once.
    let tries = || renewals(&api, "edge-3").len();
    let before = tries();
    std::thread::sleep(RENEW * 4);
    assert!(
        tries() >= before + 2,
        "not retried: {before} -> {}",
        tries()
    );
    assert_eq!(
        unit.hub.proc.count_log(needle),
        1,
        "{}",
        unit.hub.proc.logs()
    );
    // The Event was still posted, and /nodes shows the error.
    assert_eq!(events(&api, "edge-3").len(), 1);
    let s = shown(unit.hub.admin, "edge-3");
    assert!(s.contains("lacks RBAC verb"), "{s}");
}

#[test]
fn a_black_holed_link_is_dropped_after_an_unanswered_check_and_the_node_renewed_at_once() {
    // Edges with a board's long keepalive: alone, the hub would see a black
    // hole only after 1.5 × 60 s. A long renewal period too, so a renewal
    // soon after the drop shows the controller was woken by it.
    let identity = Identity::Certificate;
    let (mut unit, api) = start_with(
        &identity,
        &Setup {
            renew: Duration::from_secs(20),
            autonomy_extra: "link_check_after = \"3s\"\nlink_check_timeout = \"1s\"\n",
            edge_keepalive: Some("60s"),
        },
    );
    let admin = unit.hub.admin;
    let silent = "tether_hub_dropped_total{reason=\"silent\"}";
    // The edges report their verdicts every 2 s over their links: never
    // silent for 3 s while healthy, so never dropped.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        cluster::metric(admin, silent),
        None,
        "{}",
        unit.hub.proc.logs()
    );
    assert!(NAMES.iter().all(|n| cluster::is_linked(admin, n)));

    let holed_at = Instant::now();
    unit.member("edge-3")
        .proxy
        .as_ref()
        .expect("proxied")
        .black_hole(true);
    let dropped = wait_until(Duration::from_secs(15), || {
        !cluster::is_linked(admin, "edge-3")
    });
    assert!(dropped.is_some(), "edge-3 still linked:\n{}", unit.logs());
    let dropped_after = holed_at.elapsed();
    let first = wait_until(Duration::from_secs(15), || {
        !renewals(&api, "edge-3").is_empty()
    });
    assert!(first.is_some(), "no renewal of edge-3:\n{}", unit.logs());
    let renewed_after = holed_at.elapsed();
    eprintln!(
        "autonomy: black-holed edge-3 dropped {:.2} s and first renewed {:.2} s after the black hole began (edge keepalive 60 s)",
        dropped_after.as_secs_f64(),
        renewed_after.as_secs_f64()
    );
    // Well before 1.5 × keepalive (90 s), and within the node grace.
    assert!(renewed_after < Duration::from_secs(15), "{renewed_after:?}");
    // Woken by the drop, not at its next period (20 s).
    assert!(
        renewed_after - dropped_after < Duration::from_secs(5),
        "renewed {:?} after the drop",
        renewed_after - dropped_after
    );
    let needle = "link to edge-3 from";
    assert!(
        unit.hub.proc.wait_for_log(needle, Duration::from_secs(5)),
        "{}",
        unit.hub.proc.logs()
    );
    assert_eq!(
        unit.hub.proc.count_log(needle),
        1,
        "{}",
        unit.hub.proc.logs()
    );
    assert_eq!(
        unit.hub
            .proc
            .count_log("silent for 3 s and a check unanswered in 1 s: dropped as dead"),
        1,
        "{}",
        unit.hub.proc.logs()
    );
    assert_eq!(cluster::metric(admin, silent), Some(1.0));
    assert!(
        wait_until(Duration::from_secs(5), || !events(&api, "edge-3")
            .is_empty())
        .is_some(),
        "no Event:\n{}",
        unit.hub.proc.logs()
    );
    let ev = events(&api, "edge-3");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "TetherAutonomyStarted");
    assert!(
        ev[0]
            .1
            .contains("unit site-a votes it alive (2 alive, 0 dead)"),
        "{ev:?}"
    );
    // The others' links stay up, unchecked.
    assert!(cluster::is_linked(admin, "edge-1") && cluster::is_linked(admin, "edge-2"));
    assert!(renewals(&api, "edge-1").is_empty() && renewals(&api, "edge-2").is_empty());
}

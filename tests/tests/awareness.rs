//! Node awareness while offline (issue 6), with real binaries on loopback:
//! a unit of three edges named after the nodes of the recorded
//! endpointslices (`edge-1`..`edge-3`), probing every 2 s; `edge-1` also
//! runs the API proxy to a stand-in kube-apiserver through its link.
//! kube-proxy's view is a LIST and one WATCH of endpointslices through
//! `edge-1`'s proxy. Cut off from the cloud, `edge-1` serves them from its
//! cache; when `edge-2` is killed the open watch gets a MODIFIED event for
//! each slice without `edge-2`'s endpoints within three intervals, and
//! when it is back, another with them, on the same stream (no re-list).
//! When `edge-1`'s link comes back they are back too, whatever the vote:
//! online nothing is filtered.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tether_edge::kube::{self, pb, Encoding};
use tether_tests::apiserver::StandIn;
use tether_tests::client::{call, watch_with, KUBE_PROXY, PROTOBUF};
use tether_tests::healthunit::{start_edge, voted, wait_until, Options, Unit};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

/// The probe interval: the shortest the config allows.
const INTERVAL: Duration = Duration::from_secs(2);
/// kube-proxy's LIST of endpointslices, as recorded.
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&limit=500&resourceVersion=0";
/// The watch kube-proxy opens after it, from the list's resourceVersion.
fn watch_target(rv: &str) -> String {
    format!(
        "/apis/discovery.k8s.io/v1/endpointslices?allowWatchBookmarks=true&labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&resourceVersion={rv}&timeoutSeconds=600&watch=true"
    )
}

/// One watch event: type, slice name, resourceVersion, and the nodeName of
/// each of its endpoints.
#[derive(Debug, Clone)]
struct Event {
    event: String,
    name: String,
    resource_version: String,
    nodes: Vec<String>,
}

/// The nodeName of each endpoint of an EndpointSlice message (no
/// envelope): `EndpointSlice{endpoints=2}`, `Endpoint{nodeName=6}`.
fn endpoint_nodes(slice: &[u8]) -> Vec<String> {
    let mut nodes = Vec::new();
    let mut r = pb::Reader::new(slice);
    while let Some((f, v)) = r.next_field().expect("a slice") {
        if f != 2 {
            continue;
        }
        let mut e = pb::Reader::new(v.bytes("endpoint").expect("an endpoint"));
        let mut node = String::new();
        while let Some((f, v)) = e.next_field().expect("an endpoint") {
            if f == 6 {
                node = v.str("nodeName").expect("a name").to_owned();
            }
        }
        nodes.push(node);
    }
    nodes
}

/// Opens a protobuf watch through the proxy as kube-proxy and reads it
/// in a thread; the receiver is disconnected when the stream ends.
fn watch(proxy: SocketAddr, target: &str) -> Receiver<Event> {
    watch_with(proxy, KUBE_PROXY, target, |ev| Event {
        event: ev.event_type.as_str().to_string(),
        name: ev.meta.name.clone(),
        resource_version: ev.meta.resource_version.clone(),
        nodes: pb::parse_envelope(ev.object)
            .map(|e| endpoint_nodes(e.raw))
            .unwrap_or_default(),
    })
}

/// MODIFIED events until `done` holds for what they showed (by slice name,
/// the last event of each), or `within` passes; how long it took, or
/// `None`. Panics if the stream ends.
fn modified_until(
    events: &Receiver<Event>,
    within: Duration,
    seen: &mut BTreeMap<String, Event>,
    done: impl Fn(&BTreeMap<String, Event>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done(seen) {
            return Some(start.elapsed());
        }
        let left = within.saturating_sub(start.elapsed());
        match events.recv_timeout(left) {
            Ok(ev) if ev.event == "MODIFIED" => {
                seen.insert(ev.name.clone(), ev);
            }
            Ok(ev) => assert!(
                ev.event == "BOOKMARK",
                "only MODIFIED events are owed: {ev:?}"
            ),
            Err(RecvTimeoutError::Timeout) => return None,
            Err(RecvTimeoutError::Disconnected) => panic!("the watch ended"),
        }
    }
}

#[test]
fn offline_endpointslices_leave_out_the_nodes_the_unit_votes_dead() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut opts = Options::new("greenhouse-a", 3, "2s");
    opts.names = ["edge-1", "edge-2", "edge-3"].map(String::from).to_vec();
    opts.proxied = true;
    let hub_extra = format!(
        "[upstream.kube-apiserver]\naddress = \"{}\"\n",
        standin.addr()
    );
    // edge-1 runs the API proxy, through its link, with the node's
    // certificate.
    let proxy_config = move |pki: &Pki, i: usize| {
        if i != 0 {
            return String::new();
        }
        let (cert, key) = pki.node_cert("system:node:edge-1");
        format!(
            "[apiserver]\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n",
            pki.ca.display(),
            cert.display(),
            key.display(),
            pki.dir.join("cache-edge-1.db").display()
        )
    };
    let mut unit = Unit::start_with(&opts, &|_, own| own, pki, &hub_extra, &proxy_config);
    let admin = unit.hub.admin;
    let all_alive = || {
        ["edge-1", "edge-2", "edge-3"]
            .iter()
            .all(|n| voted(admin, n, "alive", Some((2, 0))))
    };
    assert!(
        wait_until(Duration::from_secs(30), all_alive).is_some(),
        "not all voted alive:\n{}",
        unit.logs()
    );

    // kube-proxy lists online (every endpoint), then watches.
    let list = call(proxy, KUBE_PROXY, "GET", SLICES, PROTOBUF, b"");
    assert_eq!(list.status, 200, "{}", list.text());
    let listed = kube::parse_list(Encoding::Protobuf, &list.body).expect("a list");
    let on_edge_2: BTreeMap<String, (String, Vec<String>)> = listed
        .items
        .iter()
        .map(|i| {
            (
                i.meta.name.clone(),
                (i.meta.resource_version.clone(), endpoint_nodes(i.bytes)),
            )
        })
        .filter(|(_, (_, nodes))| nodes.iter().any(|n| n == "edge-2"))
        .collect();
    assert!(
        !on_edge_2.is_empty(),
        "the recorded slices have endpoints on edge-2"
    );
    let events = watch(proxy, &watch_target(&listed.meta.resource_version));

    // edge-1 is cut off from the cloud: its proxy serves from the cache.
    let link = unit.member("edge-1").proxy.as_ref().expect("proxied");
    link.refuse(true);
    link.cut();
    let offline = wait_until(Duration::from_secs(20), || {
        let answer = call(proxy, KUBE_PROXY, "GET", SLICES, PROTOBUF, b"");
        answer.status == 200
            && unit.members[0]
                .proc
                .as_ref()
                .is_some_and(|p| p.logs().contains("kube-apiserver out of reach"))
    });
    assert!(
        offline.is_some(),
        "edge-1 did not go offline:\n{}",
        unit.logs()
    );

    // edge-2 dies: its endpoints leave the open watch within 3 intervals.
    drop(unit.member("edge-2").proc.take());
    let killed = Instant::now();
    let mut seen = BTreeMap::new();
    let without = |seen: &BTreeMap<String, Event>| {
        on_edge_2.keys().all(|name| {
            seen.get(name)
                .is_some_and(|e| !e.nodes.is_empty() && e.nodes.iter().all(|n| n != "edge-2"))
        })
    };
    let took = modified_until(&events, INTERVAL * 6, &mut seen, without);
    let took = took.map(|_| killed.elapsed());
    eprintln!("awareness: edge-2's endpoints left the watch {took:?} after the kill");
    assert!(
        took.is_some_and(|t| t <= INTERVAL * 3),
        "edge-2's endpoints not gone within 3 intervals ({took:?}): {seen:?}\n{}",
        unit.logs()
    );
    for (name, (rv, nodes)) in &on_edge_2 {
        let e = &seen[name];
        assert_eq!(
            &e.resource_version, rv,
            "{name}: the cached resourceVersion"
        );
        let want: Vec<&String> = nodes.iter().filter(|n| *n != "edge-2").collect();
        assert_eq!(e.nodes.iter().collect::<Vec<_>>(), want, "{name}");
    }
    // An offline LIST now leaves them out too.
    let answer = call(proxy, KUBE_PROXY, "GET", SLICES, PROTOBUF, b"");
    assert_eq!(answer.status, 200);
    let offline_list = kube::parse_list(Encoding::Protobuf, &answer.body).expect("a list");
    assert_eq!(offline_list.items.len(), listed.items.len());
    assert!(offline_list
        .items
        .iter()
        .all(|i| endpoint_nodes(i.bytes).iter().all(|n| n != "edge-2")));

    // edge-2 is back (same config): its endpoints come back on the same
    // stream.
    let config = unit.member("edge-2").config.clone();
    unit.member("edge-2").proc = Some(start_edge("edge-2", &config));
    let started = Instant::now();
    let mut seen = BTreeMap::new();
    let with = |seen: &BTreeMap<String, Event>| {
        on_edge_2
            .iter()
            .all(|(name, (_, nodes))| seen.get(name).is_some_and(|e| &e.nodes == nodes))
    };
    let took = modified_until(&events, Duration::from_secs(40), &mut seen, with);
    eprintln!(
        "awareness: edge-2's endpoints back on the watch {:?} after the restart",
        took.map(|_| started.elapsed())
    );
    assert!(
        took.is_some(),
        "edge-2's endpoints did not come back: {seen:?}\n{}",
        unit.logs()
    );
    let answer = call(proxy, KUBE_PROXY, "GET", SLICES, PROTOBUF, b"");
    assert_eq!(answer.status, 200);
    let back = kube::parse_list(Encoding::Protobuf, &answer.body).expect("a list");
    let nodes: BTreeSet<String> = back
        .items
        .iter()
        .flat_map(|i| endpoint_nodes(i.bytes))
        .collect();
    assert!(nodes.contains("edge-2"), "{nodes:?}");

    // edge-2 dies again, then edge-1's link comes back: online nothing is
    // filtered, so the endpoints come back as the apiserver has them while
    // edge-2 is still voted dead.
    drop(unit.member("edge-2").proc.take());
    let mut seen = BTreeMap::new();
    let took = modified_until(&events, INTERVAL * 6, &mut seen, without);
    assert!(
        took.is_some(),
        "edge-2's endpoints not gone again: {seen:?}\n{}",
        unit.logs()
    );
    unit.member("edge-1")
        .proxy
        .as_ref()
        .expect("proxied")
        .pass();
    let mut seen = BTreeMap::new();
    let took = modified_until(&events, Duration::from_secs(30), &mut seen, with);
    assert!(
        took.is_some(),
        "online, edge-2's endpoints did not come back: {seen:?}\n{}",
        unit.logs()
    );
    let answer = call(proxy, KUBE_PROXY, "GET", SLICES, PROTOBUF, b"");
    assert_eq!(answer.status, 200);
    let online = kube::parse_list(Encoding::Protobuf, &answer.body).expect("a list");
    assert!(online
        .items
        .iter()
        .any(|i| endpoint_nodes(i.bytes).iter().any(|n| n == "edge-2")));
    assert!(
        unit.members[0]
            .proc
            .as_ref()
            .is_some_and(|p| p.logs().contains("kube-apiserver reachable again")),
        "edge-1 is online again"
    );

    // The watch never ended: still the same stream.
    assert!(
        !matches!(events.try_recv(), Err(mpsc::TryRecvError::Disconnected)),
        "the watch ended"
    );
}

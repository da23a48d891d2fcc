//! The edge's API proxy end to end (issue 3, first stage): a kubelet-like
//! client talks plain HTTP to the edge, which reaches the stand-in
//! kube-apiserver over HTTPS with the node's certificate, through the link
//! and the hub (and directly, in direct mode). When the apiserver is gone,
//! GET and LIST are answered from the cache and writes are refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use tether_edge::kube::{self, Encoding};
use tether_tests::apiserver::StandIn;
use tether_tests::client::{
    call, call_with, items, next_change, watch, Answer, Seen, JSON, KUBELET, PROTOBUF,
};
use tether_tests::cluster::{start_edge, EdgeAuth, Transport};
use tether_tests::fleet::{self, Fleet, Route};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

const WAIT: Duration = Duration::from_secs(30);
const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";
/// A config map a pod reads with its own token.
const CONFIG_MAP: &str = "/api/v1/namespaces/edge-apps/configmaps/web-config";

/// A GET as kubelet over a fresh connection.
fn get(proxy: SocketAddr, target: &str, accept: &str) -> Answer {
    call(proxy, KUBELET, "GET", target, accept, b"")
}

fn online_then_offline(f: &Fleet) {
    let (standin, proxy, edge) = (&f.standin, f.proxy, &f.edge);
    // Online: the apiserver's own answers come through.
    let deadline = Instant::now() + WAIT;
    let online = loop {
        let answer = get(proxy, PODS, PROTOBUF);
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(online.status, 200, "{}", edge.logs());
    let online_json = get(proxy, PODS, JSON);
    assert_eq!(online_json.status, 200);
    let pod = "/api/v1/namespaces/edge-apps/pods/api-m5ghvwrtzm-dcwg6";
    let online_pod = get(proxy, pod, PROTOBUF);
    assert_eq!(online_pod.status, 200);
    assert!(
        standin
            .requests()
            .iter()
            .any(|r| r.identity == "system:node:edge-1"),
        "the node's certificate was not used"
    );
    // A pod's client brings its own token: it is judged as itself, never
    // as the node.
    let own = |token: &str| {
        call_with(
            proxy,
            KUBELET,
            "GET",
            CONFIG_MAP,
            JSON,
            &format!("Authorization: Bearer {token}\r\n"),
            b"",
        )
    };
    assert_eq!(own("pod-token-123").status, 200);
    let last = standin.requests().into_iter().last().expect("a request");
    assert_eq!(
        last.identity, "bearer:pod-token-123",
        "the pod's request went out as {:?}",
        last.identity
    );

    // The apiserver goes away.
    standin.set_down(true);
    // A connection the proxy pooled may still finish one exchange with the
    // stand-in as it goes down; from the next request on it is gone.
    let _ = get(proxy, pod, PROTOBUF);
    let offline = get(proxy, PODS, PROTOBUF);
    assert_eq!(offline.status, 200, "{}", edge.logs());
    assert_eq!(
        items(Encoding::Protobuf, &offline.body),
        items(Encoding::Protobuf, &online.body)
    );
    assert_eq!(
        kube::parse_list(Encoding::Protobuf, &offline.body)
            .expect("list")
            .meta,
        kube::parse_list(Encoding::Protobuf, &online.body)
            .expect("list")
            .meta
    );
    let offline_json = get(proxy, PODS, JSON);
    assert_eq!(offline_json.status, 200);
    assert_eq!(
        items(Encoding::Json, &offline_json.body),
        items(Encoding::Json, &online_json.body)
    );
    let offline_pod = get(proxy, pod, PROTOBUF);
    assert_eq!(offline_pod.status, 200);
    assert!(
        offline_pod.body == online_pod.body,
        "the cached pod differs"
    );
    // What a pod fetched with its own token comes back only for that token.
    assert_eq!(own("pod-token-123").status, 200, "{}", edge.logs());
    assert_eq!(own("pod-token-456").status, 503);
    assert_eq!(
        get(proxy, CONFIG_MAP, JSON).status,
        503,
        "the node was served what a pod fetched"
    );
    // Never asked while online: a clear 503 the client retries on.
    let never = get(proxy, "/api/v1/namespaces/edge-apps/configmaps", PROTOBUF);
    assert_eq!(never.status, 503);
    assert!(never.text().contains("never answered before"));
    // A write is refused at once, never answered as if applied.
    let started = Instant::now();
    let write = call(
        proxy,
        KUBELET,
        "PATCH",
        "/api/v1/nodes/edge-1/status",
        JSON,
        b"{\"status\":{}}",
    );
    assert_eq!(write.status, 503);
    assert!(write.text().contains("not applied"));
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "the write did not fail fast"
    );
    assert!(
        edge.wait_for_log("answering GET and LIST from the cache", WAIT),
        "{}",
        edge.logs()
    );
    // The edge's own metrics tell what happened.
    let (code, metrics) = tether_tests::procs::http_get(f.status, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(value("tether_edge_apiserver_reachable"), 0);
    assert!(
        value("tether_edge_proxy_served_offline_total") >= 3,
        "{metrics}"
    );
    assert!(value("tether_edge_proxy_writes_refused_total") >= 1);
    assert!(value("tether_edge_proxy_offline_misses_total") >= 1);
    assert!(value("tether_edge_cache_objects") > 0);
    // Hits and misses by reason: the stand-in went away (not the link, in
    // link mode), and the misses were views never cached.
    let labelled = |name: &str, reason: &str| -> u64 {
        let prefix = format!("{name}{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"))
    };
    assert!(labelled("tether_edge_cache_hits_total", "unreachable") >= 3);
    assert_eq!(labelled("tether_edge_cache_hits_total", "link_down"), 0);
    assert!(labelled("tether_edge_cache_misses_total", "not_cached") >= 1);
    assert_eq!(
        tether_tests::procs::http_get(f.status, "/healthz")
            .expect("healthz")
            .0,
        200
    );
}

/// The fleet through the link, the stand-in holding its recorded objects.
fn through_link() -> Fleet {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    fleet::through_link(pki, standin, "")
}

#[test]
fn through_the_link_online_and_offline() {
    let f = through_link();
    online_then_offline(&f);
    // Garbage gets a clear 400 and the proxy goes on serving.
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(f.proxy).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.write_all(garbage).expect("write");
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw);
        assert!(
            raw.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let bad = get(f.proxy, "/api/v1/pods?limit=x", JSON);
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("limit"));
    assert_eq!(
        get(f.proxy, PODS, "application/vnd.kubernetes.protobuf").status,
        200
    );
}

#[test]
fn direct_mode_online_and_offline() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    online_then_offline(&fleet::start(pki, standin, Route::Direct, ""));
}

/// A pod watch from `rv` on, as kubelet opens it after its list.
fn pod_watch(proxy: SocketAddr, rv: &str) -> Receiver<Seen> {
    watch(
        proxy,
        KUBELET,
        &format!("/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion={rv}&timeoutSeconds=120&watch=true"),
    )
}

#[test]
fn a_watch_survives_an_outage_without_a_relist() {
    use tether_tests::apiserver::Kind;
    let f = through_link();
    let (proxy, standin) = (f.proxy, &f.standin);
    let list = get(proxy, PODS, PROTOBUF);
    assert_eq!(list.status, 200, "{}", f.edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list.body).expect("list");
    let pod = list.items[0].meta.clone();
    let rv = list.meta.resource_version.clone();
    let lists_before = standin
        .requests()
        .iter()
        .filter(|r| !r.target.contains("watch"))
        .count();

    let events = pod_watch(proxy, &rv);
    standin
        .modify_label(Kind::Pod, &pod.namespace, &pod.name, "tether-test", "one")
        .expect("modify");
    let first = next_change(&events, WAIT);
    assert_eq!(
        (first.event.as_str(), first.name.as_str()),
        ("MODIFIED", pod.name.as_str())
    );

    // The cloud goes away; meanwhile the object changes there.
    standin.set_down(true);
    std::thread::sleep(Duration::from_millis(1500));
    standin
        .modify_label(Kind::Pod, &pod.namespace, &pod.name, "tether-test", "two")
        .expect("modify while cut");
    std::thread::sleep(Duration::from_millis(500));
    // While cut, the cache already holds the first change.
    let offline = get(proxy, PODS, PROTOBUF);
    assert_eq!(offline.status, 200);
    let offline = kube::parse_list(Encoding::Protobuf, &offline.body).expect("list");
    let cached = offline
        .items
        .iter()
        .find(|i| i.meta.name == pod.name)
        .expect("pod cached");
    assert!(
        cached
            .meta
            .labels
            .contains(&("tether-test".into(), "one".into())),
        "{:?}",
        cached.meta.labels
    );

    // The cloud returns: the same watch stream delivers the change made
    // while it was away, and nobody re-listed.
    standin.set_down(false);
    let second = next_change(&events, WAIT);
    assert_eq!(
        (second.event.as_str(), second.name.as_str()),
        ("MODIFIED", pod.name.as_str())
    );
    assert!(
        second
            .labels
            .contains(&("tether-test".into(), "two".into())),
        "{:?}",
        second.labels
    );
    assert!(
        second.resource_version.parse::<u64>().expect("rv")
            > first.resource_version.parse::<u64>().expect("rv")
    );
    let lists_after = standin
        .requests()
        .iter()
        .filter(|r| !r.target.contains("watch"))
        .count();
    assert_eq!(lists_after, lists_before, "something re-listed");
    assert!(
        standin.requests().iter().any(|r| r
            .target
            .contains(&format!("resourceVersion={}", first.resource_version))),
        "the watch was not resumed from the last resourceVersion seen"
    );
}

#[test]
fn after_compaction_the_edge_relists_and_sends_the_difference() {
    use tether_tests::apiserver::Kind;
    let f = through_link();
    let (proxy, standin) = (f.proxy, &f.standin);
    let list = get(proxy, PODS, PROTOBUF);
    assert_eq!(list.status, 200, "{}", f.edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list.body).expect("list");
    let (changed, gone) = (list.items[0].meta.clone(), list.items[1].meta.clone());
    let rv = list.meta.resource_version.clone();
    let events = pod_watch(proxy, &rv);
    // Let the watch reach the stand-in before it goes away.
    let deadline = Instant::now() + WAIT;
    while !standin
        .requests()
        .iter()
        .any(|r| r.target.contains("watch=true"))
    {
        assert!(
            Instant::now() < deadline,
            "the watch never reached the apiserver"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lists = || {
        standin
            .requests()
            .iter()
            .filter(|r| !r.target.contains("watch"))
            .count()
    };
    let lists_before = lists();

    // While the node is cut off, one pod changes, one is deleted, and the
    // apiserver's history is compacted past what the edge has seen.
    standin.set_down(true);
    std::thread::sleep(Duration::from_millis(1500));
    standin
        .modify_label(
            Kind::Pod,
            &changed.namespace,
            &changed.name,
            "tether-test",
            "changed",
        )
        .expect("modify");
    standin
        .delete(Kind::Pod, &gone.namespace, &gone.name)
        .expect("delete");
    standin.compact();
    standin.set_down(false);

    // The open watch gets exactly the difference, as ordinary events.
    let mut got = [next_change(&events, WAIT), next_change(&events, WAIT)];
    got.sort();
    assert_eq!(got[0].event, "DELETED");
    assert_eq!(got[0].name, gone.name);
    assert_eq!(got[1].event, "MODIFIED");
    assert_eq!(got[1].name, changed.name);
    assert!(got[1]
        .labels
        .contains(&("tether-test".into(), "changed".into())));
    // The edge re-listed once; the client did not.
    assert_eq!(lists(), lists_before + 1, "{:?}", standin.requests());
    assert!(f
        .edge
        .wait_for_log("history was compacted while away", WAIT));
    // And the stream goes on from the new list.
    standin
        .modify_label(
            Kind::Pod,
            &changed.namespace,
            &changed.name,
            "tether-test",
            "after",
        )
        .expect("modify");
    let next = next_change(&events, WAIT);
    assert_eq!(
        (next.event.as_str(), next.name.as_str()),
        ("MODIFIED", changed.name.as_str())
    );
    // The cache followed: offline, the deleted pod is gone.
    standin.set_down(true);
    let _ = get(proxy, PODS, PROTOBUF);
    let offline = get(proxy, PODS, PROTOBUF);
    assert_eq!(offline.status, 200);
    let offline = kube::parse_list(Encoding::Protobuf, &offline.body).expect("list");
    assert!(offline.items.iter().all(|i| i.meta.name != gone.name));
    assert_eq!(offline.items.len(), list.items.len() - 1);
}

#[test]
fn a_restart_with_no_network_serves_the_cache_at_once() {
    let mut f = through_link();
    let online = get(f.proxy, PODS, PROTOBUF);
    assert_eq!(online.status, 200, "{}", f.edge.logs());
    // Power cut: the edge dies with the cache as it is on disk; the network
    // is gone when it comes back.
    f.edge.kill();
    f.standin.set_down(true);
    f.hub.proc.kill();
    // The same config, its hub's address a port nobody listens on.
    let edge = start_edge(
        &f.pki,
        "edge-1",
        ([127, 0, 0, 1], free_port()).into(),
        Transport::Tls,
        EdgeAuth::Token,
        &f.config,
    );
    assert!(edge.wait_for_log("API proxy on", WAIT), "{}", edge.logs());
    let started = Instant::now();
    let offline = get(f.proxy, PODS, PROTOBUF);
    let took = started.elapsed();
    assert_eq!(offline.status, 200, "{}", edge.logs());
    assert_eq!(
        items(Encoding::Protobuf, &offline.body),
        items(Encoding::Protobuf, &online.body)
    );
    eprintln!("first cached answer {took:?} after the proxy was up");
    // Not a benchmark (that figure is for a bench program), only a guard
    // against waiting on a link that is not there.
    assert!(
        took < Duration::from_secs(5),
        "the cached answer waited {took:?}"
    );
}

#[test]
fn offline_watches_get_the_initial_state_from_the_cache() {
    use tether_tests::apiserver::Kind;
    let f = through_link();
    let (proxy, standin) = (f.proxy, &f.standin);
    let list = get(proxy, PODS, PROTOBUF);
    assert_eq!(list.status, 200, "{}", f.edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list.body).expect("list");
    let rv = list.meta.resource_version.clone();
    let mut names: Vec<String> = list.items.iter().map(|i| i.meta.name.clone()).collect();
    names.sort();
    assert!(!names.is_empty());

    standin.set_down(true);
    let recv =
        |events: &Receiver<Seen>| -> Seen { events.recv_timeout(WAIT).expect("an event in time") };
    // A newer client's streaming list: the cached state as ADDED events,
    // then the BOOKMARK that ends them, at the list's resourceVersion.
    let streaming = watch(
        proxy,
        KUBELET,
        "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeoutSeconds=120&watch=true",
    );
    let mut added: Vec<String> = (0..names.len())
        .map(|_| {
            let ev = recv(&streaming);
            assert_eq!(ev.event, "ADDED", "{ev:?}");
            ev.name
        })
        .collect();
    added.sort();
    assert_eq!(added, names);
    let end = recv(&streaming);
    assert_eq!(
        (
            end.event.as_str(),
            end.resource_version.as_str(),
            end.initial_events_end
        ),
        ("BOOKMARK", rv.as_str(), true),
        "{end:?}"
    );
    // resourceVersion=0: the cached state as ADDED, no end bookmark.
    let from_zero = watch(
        proxy,
        KUBELET,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=0&timeoutSeconds=120&watch=true",
    );
    let mut added: Vec<String> = (0..names.len())
        .map(|_| {
            let ev = recv(&from_zero);
            assert_eq!(ev.event, "ADDED", "{ev:?}");
            ev.name
        })
        .collect();
    added.sort();
    assert_eq!(added, names);

    // The cloud returns: both watches go on from the cached state with
    // the next change only, not the initial state again.
    standin.set_down(false);
    let pod = &list.items[0].meta;
    standin
        .modify_label(Kind::Pod, &pod.namespace, &pod.name, "tether-test", "back")
        .expect("modify");
    for events in [&streaming, &from_zero] {
        let next = next_change(events, WAIT);
        assert_eq!(
            (next.event.as_str(), next.name.as_str()),
            ("MODIFIED", pod.name.as_str()),
            "{}",
            f.edge.logs()
        );
    }
    let resumed: Vec<String> = standin
        .requests()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| t.contains("watch=true") && t.contains(&format!("resourceVersion={rv}")))
        .collect();
    assert!(!resumed.is_empty(), "no watch resumed from {rv}");
    assert!(
        resumed.iter().all(|t| !t.contains("sendInitialEvents")),
        "a resumed watch asked for the initial state again: {resumed:?}"
    );
}

#[test]
fn a_streaming_list_seen_online_is_served_offline() {
    let f = through_link();
    let (proxy, standin) = (f.proxy, &f.standin);
    let target = "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeoutSeconds=120&watch=true";
    // Collects a streaming list's initial events: (names, bookmark rv).
    let initial = |events: &Receiver<Seen>| -> (Vec<String>, String) {
        let mut names = Vec::new();
        loop {
            let ev = events.recv_timeout(WAIT).expect("an event in time");
            match ev.event.as_str() {
                "ADDED" => names.push(ev.name),
                "BOOKMARK" if ev.initial_events_end => {
                    names.sort();
                    return (names, ev.resource_version);
                }
                "BOOKMARK" => {}
                other => panic!("{other} among the initial events"),
            }
        }
    };
    let online = watch(proxy, KUBELET, target);
    let (names, rv) = initial(&online);
    assert!(!names.is_empty(), "{}", f.edge.logs());
    drop(online);

    // The client never listed; offline its view is there all the same.
    standin.set_down(true);
    let list = get(
        proxy,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
        PROTOBUF,
    );
    assert_eq!(list.status, 200, "{}", f.edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list.body).expect("list");
    assert_eq!(list.meta.resource_version, rv);
    let mut listed: Vec<String> = list.items.iter().map(|i| i.meta.name.clone()).collect();
    listed.sort();
    assert_eq!(listed, names);
    let offline = watch(proxy, KUBELET, target);
    assert_eq!(initial(&offline), (names, rv));
}

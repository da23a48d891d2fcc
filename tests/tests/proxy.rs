//! The edge's API proxy end to end (issue 3, first stage): a kubelet-like
//! client talks plain HTTP to the edge, which reaches the stand-in
//! kube-apiserver over HTTPS with the node's certificate, through the link
//! and the hub (and directly, in direct mode). When the apiserver is gone,
//! GET and LIST are answered from the cache and writes are refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tether_edge::http::{self, BodyDecoder, Limits};
use tether_edge::kube::{self, Encoding};
use tether_tests::apiserver::StandIn;
use tether_tests::cluster::{start_edge, start_hub, wait_linked, EdgeAuth, Transport};
use tether_tests::pki::Pki;
use tether_tests::procs::{free_port, Proc};

const WAIT: Duration = Duration::from_secs(30);
const KUBELET: &str = "kubelet/v1.24.0+0 (linux/amd64) kubernetes/2cc6ddc";
const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";

/// One request over a fresh connection: (status, body de-chunked).
fn request(
    proxy: SocketAddr,
    method: &str,
    target: &str,
    accept: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    request_with(proxy, method, target, accept, body, "")
}

/// [`request`] with extra header lines (each ending in CRLF).
fn request_with(
    proxy: SocketAddr,
    method: &str,
    target: &str,
    accept: &str,
    body: &[u8],
    extra: &str,
) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(proxy).expect("connect to the proxy");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {KUBELET}\r\nAccept: {accept}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).expect("write");
    tcp.write_all(body).expect("write body");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    let (resp, used) = http::parse_response_head(&raw, &Limits::default())
        .expect("response head")
        .expect("whole head");
    let kind = resp.body_kind(method).expect("framing");
    let mut decoder = BodyDecoder::new(kind);
    let mut out = Vec::new();
    decoder.decode(&raw[used..], &mut out).expect("body");
    (resp.status, out)
}

fn items(enc: Encoding, body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let list = kube::parse_list(enc, body).expect("a list");
    let mut v: Vec<_> = list
        .items
        .iter()
        .map(|i| {
            (
                i.meta.namespace.clone(),
                i.meta.name.clone(),
                i.bytes.to_vec(),
            )
        })
        .collect();
    v.sort();
    v
}

fn edge_config(pki: &Pki, proxy: SocketAddr, direct: Option<SocketAddr>) -> String {
    let (cert, key) = pki.node_cert("system:node:edge-1");
    let direct = direct.map_or(String::new(), |d| format!("direct = \"{d}\"\n"));
    format!(
        "[link]\nkeepalive = \"2s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n[apiserver]\n{direct}server_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n[status]\nlisten = \"127.0.0.1:{}\"\n",
        pki.ca.display(),
        cert.display(),
        key.display(),
        pki.dir.join(format!("cache-{}.db", proxy.port())).display(),
        proxy.port() + 1
    )
}

fn online_then_offline(standin: &StandIn, proxy: SocketAddr, edge: &Proc) {
    let pb = "application/vnd.kubernetes.protobuf,application/json";
    assert!(edge.wait_for_log("API proxy on", WAIT), "{}", edge.logs());
    // Online: the apiserver's own answers come through.
    let deadline = Instant::now() + WAIT;
    let (status, online) = loop {
        let (status, body) = request(proxy, "GET", PODS, pb, b"");
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{}", edge.logs());
    let (status, online_json) = request(proxy, "GET", PODS, "application/json", b"");
    assert_eq!(status, 200);
    let pod = "/api/v1/namespaces/edge-apps/pods/api-m5ghvwrtzm-dcwg6";
    let (status, online_pod) = request(proxy, "GET", pod, pb, b"");
    assert_eq!(status, 200);
    assert!(
        standin
            .requests()
            .iter()
            .any(|r| r.identity == "system:node:edge-1"),
        "the node's certificate was not used"
    );
    // A pod's client brings its own token: it is judged as itself, never
    // as the node.
    let (status, _) = request_with(
        proxy,
        "GET",
        "/api/v1/namespaces/edge-apps/configmaps/web-config",
        "application/json",
        b"",
        "Authorization: Bearer pod-token-123\r\n",
    );
    assert_eq!(status, 200);
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
    let _ = request(proxy, "GET", pod, pb, b"");
    let (status, offline) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200, "{}", edge.logs());
    assert_eq!(
        items(Encoding::Protobuf, &offline),
        items(Encoding::Protobuf, &online)
    );
    assert_eq!(
        kube::parse_list(Encoding::Protobuf, &offline)
            .expect("list")
            .meta,
        kube::parse_list(Encoding::Protobuf, &online)
            .expect("list")
            .meta
    );
    let (status, offline_json) = request(proxy, "GET", PODS, "application/json", b"");
    assert_eq!(status, 200);
    assert_eq!(
        items(Encoding::Json, &offline_json),
        items(Encoding::Json, &online_json)
    );
    let (status, offline_pod) = request(proxy, "GET", pod, pb, b"");
    assert_eq!(status, 200);
    assert!(offline_pod == online_pod, "the cached pod differs");
    // What a pod fetched with its own token comes back only for that token.
    let own = |token: &str| {
        request_with(
            proxy,
            "GET",
            "/api/v1/namespaces/edge-apps/configmaps/web-config",
            "application/json",
            b"",
            &format!("Authorization: Bearer {token}\r\n"),
        )
    };
    assert_eq!(own("pod-token-123").0, 200, "{}", edge.logs());
    assert_eq!(own("pod-token-456").0, 503);
    let (status, _) = request(
        proxy,
        "GET",
        "/api/v1/namespaces/edge-apps/configmaps/web-config",
        "application/json",
        b"",
    );
    assert_eq!(status, 503, "the node was served what a pod fetched");
    // Never asked while online: a clear 503 the client retries on.
    let (status, body) = request(
        proxy,
        "GET",
        "/api/v1/namespaces/edge-apps/configmaps",
        pb,
        b"",
    );
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("never answered before"));
    // A write is refused at once, never answered as if applied.
    let started = Instant::now();
    let (status, body) = request(
        proxy,
        "PATCH",
        "/api/v1/nodes/edge-1/status",
        "application/json",
        b"{\"status\":{}}",
    );
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("not applied"));
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
    let status: SocketAddr = ([127, 0, 0, 1], proxy.port() + 1).into();
    let (code, metrics) = tether_tests::procs::http_get(status, "/metrics").expect("metrics");
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
        tether_tests::procs::http_get(status, "/healthz")
            .expect("healthz")
            .0,
        200
    );
}

/// An edge whose API proxy reaches the stand-in through the link and the
/// hub, linked and serving. Fields drop in order: processes before the PKI
/// folder they read.
struct Fleet {
    edge: Proc,
    hub: tether_tests::cluster::Hub,
    standin: StandIn,
    proxy: SocketAddr,
    config: String,
    pki: Pki,
}

fn through_link() -> Fleet {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[upstream.kube-apiserver]\naddress = \"{}\"\n",
            standin.addr()
        ),
    );
    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = edge_config(&pki, proxy, None);
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &config,
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT), "{}", edge.logs());
    assert!(edge.wait_for_log("API proxy on", WAIT), "{}", edge.logs());
    Fleet {
        edge,
        hub,
        standin,
        proxy,
        config,
        pki,
    }
}

#[test]
fn through_the_link_online_and_offline() {
    let f = through_link();
    online_then_offline(&f.standin, f.proxy, &f.edge);
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
    let (status, body) = request(
        f.proxy,
        "GET",
        "/api/v1/pods?limit=x",
        "application/json",
        b"",
    );
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("limit"));
    let (status, _) = request(
        f.proxy,
        "GET",
        PODS,
        "application/vnd.kubernetes.protobuf",
        b"",
    );
    assert_eq!(status, 200);
}

#[test]
fn direct_mode_online_and_offline() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let hub = start_hub(&pki, Transport::Tls, &["edge-1"], "");
    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &edge_config(&pki, proxy, Some(standin.addr())),
    );
    online_then_offline(&standin, proxy, &edge);
}

/// Events a watch client saw: (type, name, resourceVersion, labels, whether
/// the object carries the `k8s.io/initial-events-end` annotation).
type Seen = (String, String, String, Vec<(String, String)>, bool);

/// Opens a watch through the proxy and collects its events in a thread.
/// The receiver ends when the stream ends.
fn watch(proxy: SocketAddr, target: &str) -> std::sync::mpsc::Receiver<Seen> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut tcp = TcpStream::connect(proxy).expect("connect");
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {KUBELET}\r\nAccept: application/vnd.kubernetes.protobuf,application/json\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).expect("write");
    std::thread::spawn(move || {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        let (resp, used) = loop {
            if let Ok(Some(h)) = http::parse_response_head(&raw, &Limits::default()) {
                break h;
            }
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        };
        assert_eq!(resp.status, 200);
        raw.drain(..used);
        let mut body = BodyDecoder::new(resp.body_kind("GET").expect("framing"));
        let mut events = kube::WatchDecoder::new(Encoding::Protobuf, 1 << 24);
        loop {
            let mut data = Vec::new();
            let Ok((n, done)) = body.decode(&raw, &mut data) else {
                return;
            };
            raw.drain(..n);
            events.push(&data);
            while let Ok(Some(ev)) = events.next_event() {
                let seen = (
                    ev.event_type.as_str().to_string(),
                    ev.meta.name.clone(),
                    ev.meta.resource_version.clone(),
                    ev.meta.labels.clone(),
                    ev.object
                        .windows(25)
                        .any(|w| w == b"k8s.io/initial-events-end"),
                );
                if tx.send(seen).is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    });
    rx
}

/// The next non-bookmark event, within `WAIT`.
fn next_change(events: &std::sync::mpsc::Receiver<Seen>) -> Seen {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = events.recv_timeout(left).expect("an event in time");
        if ev.0 != "BOOKMARK" {
            return ev;
        }
    }
}

#[test]
fn a_watch_survives_an_outage_without_a_relist() {
    use tether_tests::apiserver::Kind;
    let Fleet {
        edge,
        standin,
        proxy,
        ..
    } = &through_link();
    let (proxy, standin) = (*proxy, standin);
    let pb = "application/vnd.kubernetes.protobuf,application/json";
    let (status, list) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200, "{}", edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list).expect("list");
    let pod = list.items[0].meta.clone();
    let rv = list.meta.resource_version.clone();
    let lists_before = standin
        .requests()
        .iter()
        .filter(|r| !r.target.contains("watch"))
        .count();

    let events = watch(
        proxy,
        &format!("/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion={rv}&timeoutSeconds=120&watch=true"),
    );
    standin
        .modify_label(Kind::Pod, &pod.namespace, &pod.name, "tether-test", "one")
        .expect("modify");
    let first = next_change(&events);
    assert_eq!(
        (first.0.as_str(), first.1.as_str()),
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
    let (status, offline) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200);
    let offline = kube::parse_list(Encoding::Protobuf, &offline).expect("list");
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
    let second = next_change(&events);
    assert_eq!(
        (second.0.as_str(), second.1.as_str()),
        ("MODIFIED", pod.name.as_str())
    );
    assert!(
        second.3.contains(&("tether-test".into(), "two".into())),
        "{:?}",
        second.3
    );
    assert!(second.2.parse::<u64>().expect("rv") > first.2.parse::<u64>().expect("rv"));
    let lists_after = standin
        .requests()
        .iter()
        .filter(|r| !r.target.contains("watch"))
        .count();
    assert_eq!(lists_after, lists_before, "something re-listed");
    assert!(
        standin
            .requests()
            .iter()
            .any(|r| r.target.contains(&format!("resourceVersion={}", first.2))),
        "the watch was not resumed from the last resourceVersion seen"
    );
}

#[test]
fn after_compaction_the_edge_relists_and_sends_the_difference() {
    use tether_tests::apiserver::Kind;
    let Fleet {
        edge,
        standin,
        proxy,
        ..
    } = &through_link();
    let (proxy, standin) = (*proxy, standin);
    let pb = "application/vnd.kubernetes.protobuf,application/json";
    let (status, list) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200, "{}", edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list).expect("list");
    let (changed, gone) = (list.items[0].meta.clone(), list.items[1].meta.clone());
    let rv = list.meta.resource_version.clone();
    let events = watch(
        proxy,
        &format!("/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion={rv}&timeoutSeconds=120&watch=true"),
    );
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
    let mut got = [next_change(&events), next_change(&events)];
    got.sort();
    assert_eq!(got[0].0, "DELETED");
    assert_eq!(got[0].1, gone.name);
    assert_eq!(got[1].0, "MODIFIED");
    assert_eq!(got[1].1, changed.name);
    assert!(got[1].3.contains(&("tether-test".into(), "changed".into())));
    // The edge re-listed once; the client did not.
    assert_eq!(lists(), lists_before + 1, "{:?}", standin.requests());
    assert!(edge.wait_for_log("history was compacted while away", WAIT));
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
    let next = next_change(&events);
    assert_eq!(
        (next.0.as_str(), next.1.as_str()),
        ("MODIFIED", changed.name.as_str())
    );
    // The cache followed: offline, the deleted pod is gone.
    standin.set_down(true);
    let _ = request(proxy, "GET", PODS, pb, b"");
    let (status, offline) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200);
    let offline = kube::parse_list(Encoding::Protobuf, &offline).expect("list");
    assert!(offline.items.iter().all(|i| i.meta.name != gone.name));
    assert_eq!(offline.items.len(), list.items.len() - 1);
}

#[test]
fn a_restart_with_no_network_serves_the_cache_at_once() {
    let Fleet {
        mut edge,
        hub,
        standin,
        proxy,
        config,
        pki,
    } = through_link();
    let pb = "application/vnd.kubernetes.protobuf,application/json";
    let (status, online) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200, "{}", edge.logs());
    // Power cut: the edge dies with the cache as it is on disk; the network
    // is gone when it comes back.
    edge.kill();
    standin.set_down(true);
    drop(hub);
    let edge = start_edge(
        &pki,
        "edge-1",
        ([127, 0, 0, 1], free_port()).into(),
        Transport::Tls,
        EdgeAuth::Token,
        &config,
    );
    assert!(edge.wait_for_log("API proxy on", WAIT), "{}", edge.logs());
    let started = Instant::now();
    let (status, offline) = request(proxy, "GET", PODS, pb, b"");
    let took = started.elapsed();
    assert_eq!(status, 200, "{}", edge.logs());
    assert_eq!(
        items(Encoding::Protobuf, &offline),
        items(Encoding::Protobuf, &online)
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
    let Fleet {
        edge,
        standin,
        proxy,
        ..
    } = &through_link();
    let (proxy, standin) = (*proxy, standin);
    let pb = "application/vnd.kubernetes.protobuf,application/json";
    let (status, list) = request(proxy, "GET", PODS, pb, b"");
    assert_eq!(status, 200, "{}", edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &list).expect("list");
    let rv = list.meta.resource_version.clone();
    let mut names: Vec<String> = list.items.iter().map(|i| i.meta.name.clone()).collect();
    names.sort();
    assert!(!names.is_empty());

    standin.set_down(true);
    let recv = |events: &std::sync::mpsc::Receiver<Seen>| -> Seen {
        events.recv_timeout(WAIT).expect("an event in time")
    };
    // A newer client's streaming list: the cached state as ADDED events,
    // then the BOOKMARK that ends them, at the list's resourceVersion.
    let streaming = watch(
        proxy,
        "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeoutSeconds=120&watch=true",
    );
    let mut added: Vec<String> = (0..names.len())
        .map(|_| {
            let ev = recv(&streaming);
            assert_eq!(ev.0, "ADDED", "{ev:?}");
            ev.1
        })
        .collect();
    added.sort();
    assert_eq!(added, names);
    let end = recv(&streaming);
    assert_eq!(
        (end.0.as_str(), end.2.as_str(), end.4),
        ("BOOKMARK", rv.as_str(), true),
        "{end:?}"
    );
    // resourceVersion=0: the cached state as ADDED, no end bookmark.
    let from_zero = watch(
        proxy,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=0&timeoutSeconds=120&watch=true",
    );
    let mut added: Vec<String> = (0..names.len())
        .map(|_| {
            let ev = recv(&from_zero);
            assert_eq!(ev.0, "ADDED", "{ev:?}");
            ev.1
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
        let next = next_change(events);
        assert_eq!(
            (next.0.as_str(), next.1.as_str()),
            ("MODIFIED", pod.name.as_str()),
            "{}",
            edge.logs()
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
    let Fleet {
        edge,
        standin,
        proxy,
        ..
    } = &through_link();
    let (proxy, standin) = (*proxy, standin);
    let target = "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&timeoutSeconds=120&watch=true";
    // Collects a streaming list's initial events: (names, bookmark rv).
    let initial = |events: &std::sync::mpsc::Receiver<Seen>| -> (Vec<String>, String) {
        let mut names = Vec::new();
        loop {
            let ev = events.recv_timeout(WAIT).expect("an event in time");
            match ev.0.as_str() {
                "ADDED" => names.push(ev.1),
                "BOOKMARK" if ev.4 => {
                    names.sort();
                    return (names, ev.2);
                }
                "BOOKMARK" => {}
                other => panic!("{other} among the initial events"),
            }
        }
    };
    let online = watch(proxy, target);
    let (names, rv) = initial(&online);
    assert!(!names.is_empty(), "{}", edge.logs());
    drop(online);

    // The client never listed; offline its view is there all the same.
    standin.set_down(true);
    let pb = "application/vnd.kubernetes.protobuf,application/json";
    let (status, body) = request(
        proxy,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
        pb,
        b"",
    );
    assert_eq!(status, 200, "{}", edge.logs());
    let list = kube::parse_list(Encoding::Protobuf, &body).expect("list");
    assert_eq!(list.meta.resource_version, rv);
    let mut listed: Vec<String> = list.items.iter().map(|i| i.meta.name.clone()).collect();
    listed.sort();
    assert_eq!(listed, names);
    let offline = watch(proxy, target);
    assert_eq!(initial(&offline), (names, rv));
}

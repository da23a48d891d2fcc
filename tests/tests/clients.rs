//! A kubelet-like and a kube-proxy-like client through the edge's API
//! proxy, as issue 3 asks: online, through an outage during which the
//! cloud changes and compacts, and back. Through the link and the hub (the
//! link is cut by stopping the hub), and in direct mode (kube-apiserver
//! goes away).
//!
//! kubelet lists and watches its pods by `spec.nodeName`, gets its node,
//! renews its lease, posts an event, patches its node status and asks for
//! a pod's service-account token; kube-proxy lists and watches services and
//! endpointslices. Offline, every GET and LIST answer equals the last
//! online one, every write fails at once with 503 (and is not applied),
//! and the token comes back from the cache. After the outage the open
//! watches carry exactly what changed, and none of them ended.

use std::time::Duration;
use tether_edge::kube::{self, Encoding};
use tether_tests::apiserver::{fixture, Kind, StandIn};
use tether_tests::client::{
    call, changes, items, watch, Answer, Seen, JSON, KUBELET, KUBE_PROXY, PROTOBUF,
};
use tether_tests::cluster::{start_hub_on, wait_linked, Transport};
use tether_tests::fleet::{self, Fleet, Route};
use tether_tests::pki::Pki;

const WAIT: Duration = Duration::from_secs(30);
const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";
const NODE: &str = "/api/v1/nodes/edge-1";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1";
const SERVICES: &str = "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&limit=500&resourceVersion=0";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&limit=500&resourceVersion=0";
const TOKEN: &str = "/api/v1/namespaces/edge-apps/serviceaccounts/web/token";

fn fixture_bytes(name: &str) -> Vec<u8> {
    fixture(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `list` turned into the watch kubelet or kube-proxy opens after it.
fn watch_target(list: &str, rv: &str) -> String {
    let (path, query) = list.split_once('?').unwrap_or((list, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.starts_with("labelSelector=") || p.starts_with("fieldSelector="))
        .collect();
    format!(
        "{path}?allowWatchBookmarks=true&{}&resourceVersion={rv}&timeoutSeconds=600&watch=true",
        kept.join("&")
    )
}

/// What the clients saw online, to compare the offline answers with.
struct Online {
    pods: Answer,
    node: Answer,
    services: Answer,
    slices: Answer,
    token: Answer,
}

fn get(f: &Fleet, agent: &str, target: &str, accept: &str) -> Answer {
    let a = call(f.proxy, agent, "GET", target, accept, b"");
    assert_eq!(
        a.status,
        200,
        "GET {target}: {}\n{}",
        a.text(),
        f.edge.logs()
    );
    a
}

/// The writes kubelet makes; returns their statuses.
fn writes(f: &Fleet, lease: &[u8]) -> [u16; 3] {
    let renew = call(f.proxy, KUBELET, "PUT", LEASE, JSON, lease);
    let event = call(
        f.proxy,
        KUBELET,
        "POST",
        "/api/v1/namespaces/default/events",
        JSON,
        &fixture_bytes("write-node-post-event-json.request.body.json"),
    );
    let status = call(
        f.proxy,
        KUBELET,
        "PATCH",
        "/api/v1/nodes/edge-1/status",
        JSON,
        &fixture_bytes("write-node-patch-node-status-json.request.body.json"),
    );
    [renew.status, event.status, status.status]
}

fn online(f: &Fleet) -> Online {
    let token_request = fixture_bytes("write-node-token-request-json.request.body.json");
    let lease = get(f, KUBELET, LEASE, JSON);
    assert_eq!(writes(f, &lease.body), [200, 201, 200], "{}", f.edge.logs());
    let token = call(f.proxy, KUBELET, "POST", TOKEN, JSON, &token_request);
    assert_eq!(token.status, 201, "{}", token.text());
    Online {
        pods: get(f, KUBELET, PODS, PROTOBUF),
        node: get(f, KUBELET, NODE, PROTOBUF),
        services: get(f, KUBE_PROXY, SERVICES, PROTOBUF),
        slices: get(f, KUBE_PROXY, SLICES, PROTOBUF),
        token,
    }
}

fn offline(f: &Fleet, before: &Online) {
    let pods = get(f, KUBELET, PODS, PROTOBUF);
    assert_eq!(
        items(Encoding::Protobuf, &pods.body),
        items(Encoding::Protobuf, &before.pods.body)
    );
    assert_eq!(
        kube::parse_list(Encoding::Protobuf, &pods.body)
            .expect("list")
            .meta,
        kube::parse_list(Encoding::Protobuf, &before.pods.body)
            .expect("list")
            .meta
    );
    assert!(
        get(f, KUBELET, NODE, PROTOBUF).body == before.node.body,
        "the node differs"
    );
    for (target, before) in [(SERVICES, &before.services), (SLICES, &before.slices)] {
        let now = get(f, KUBE_PROXY, target, PROTOBUF);
        assert_eq!(
            items(Encoding::Protobuf, &now.body),
            items(Encoding::Protobuf, &before.body),
            "{target}"
        );
    }
    // kube-proxy never asked for pods: it gets nothing of kubelet's.
    assert_eq!(
        call(f.proxy, KUBE_PROXY, "GET", PODS, PROTOBUF, b"").status,
        503
    );
    // Writes fail at once and say so.
    let lease = get(f, KUBELET, LEASE, JSON);
    let started = std::time::Instant::now();
    assert_eq!(writes(f, &lease.body), [503, 503, 503]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "writes did not fail fast"
    );
    // The pod's token comes back from the cache, still valid; another
    // pod's was never fetched, and the edge never mints one.
    let token_request = fixture_bytes("write-node-token-request-json.request.body.json");
    let token = call(f.proxy, KUBELET, "POST", TOKEN, JSON, &token_request);
    assert_eq!((token.status, &token.body), (201, &before.token.body));
    let other = String::from_utf8_lossy(&token_request).replace("22r6j", "x9x9x");
    let refused = call(f.proxy, KUBELET, "POST", TOKEN, JSON, other.as_bytes());
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("never mints"), "{}", refused.text());
}

/// The whole story, with `cut` and `restore` for the outage.
fn story(route: Route, cut: impl FnOnce(&mut Fleet), restore: impl FnOnce(&mut Fleet)) {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let mut f = fleet::start(pki, standin, route, "");
    // Let the edge's first requests find the apiserver.
    std::thread::sleep(Duration::from_millis(300));
    let before = online(&f);
    let rv = |a: &Answer| {
        kube::parse_list(Encoding::Protobuf, &a.body)
            .expect("list")
            .meta
            .resource_version
    };
    let pod_watch = watch(f.proxy, KUBELET, &watch_target(PODS, &rv(&before.pods)));
    let slice_watch = watch(
        f.proxy,
        KUBE_PROXY,
        &watch_target(SLICES, &rv(&before.slices)),
    );
    let service_watch = watch(
        f.proxy,
        KUBE_PROXY,
        &watch_target(SERVICES, &rv(&before.services)),
    );
    std::thread::sleep(Duration::from_millis(500));

    cut(&mut f);
    offline(&f, &before);

    // Meanwhile in the cloud: a pod changes, an endpointslice goes, and
    // the history is compacted, so resuming from where the clients were
    // is no longer possible.
    let pods = kube::parse_list(Encoding::Protobuf, &before.pods.body).expect("list");
    let (pod_ns, pod) = (
        pods.items[0].meta.namespace.clone(),
        pods.items[0].meta.name.clone(),
    );
    let slices = kube::parse_list(Encoding::Protobuf, &before.slices.body).expect("list");
    let slice = (
        slices.items[0].meta.namespace.clone(),
        slices.items[0].meta.name.clone(),
    );
    f.standin
        .modify_label(Kind::Pod, &pod_ns, &pod, "tether-test", "while-away")
        .expect("modify the pod");
    f.standin
        .delete(Kind::EndpointSlice, &slice.0, &slice.1)
        .expect("delete the slice");
    f.standin.compact();
    let requests_before = f.standin.requests().len();

    restore(&mut f);

    // Exactly the difference reaches the open watches.
    let pod_changes = changes(&pod_watch, 1, WAIT);
    assert_eq!(
        pod_changes
            .iter()
            .map(|s| (s.event.as_str(), s.name.as_str()))
            .collect::<Vec<_>>(),
        [("MODIFIED", pod.as_str())],
        "{pod_changes:?}\n{}",
        f.edge.logs()
    );
    assert!(pod_changes[0]
        .labels
        .contains(&("tether-test".into(), "while-away".into())));
    let slice_changes = changes(&slice_watch, 1, WAIT);
    assert_eq!(
        slice_changes
            .iter()
            .map(|s| (s.event.as_str(), s.name.as_str()))
            .collect::<Vec<_>>(),
        [("DELETED", slice.1.as_str())],
        "{slice_changes:?}"
    );
    let service_changes: Vec<Seen> = changes(&service_watch, 0, Duration::ZERO);
    assert!(service_changes.is_empty(), "{service_changes:?}");
    // None of the watches ended: each still delivers.
    f.standin
        .modify_label(Kind::Pod, &pod_ns, &pod, "tether-test", "after")
        .expect("modify again");
    let after = changes(&pod_watch, 1, WAIT);
    assert_eq!(after.len(), 1, "{after:?}");
    // Only the edge re-listed (after 410); writes go through again.
    let relists: Vec<_> = f.standin.requests()[requests_before..]
        .iter()
        .filter(|r| r.method == "GET" && !r.target.contains("watch=true"))
        .map(|r| r.target.clone())
        .collect();
    assert!(relists.len() <= 3, "{relists:?}");
    let lease = get(&f, KUBELET, LEASE, JSON);
    let renew = call(f.proxy, KUBELET, "PUT", LEASE, JSON, &lease.body);
    assert_eq!(renew.status, 200, "{}", renew.text());
}

#[test]
fn kubelet_and_kube_proxy_through_the_link() {
    story(
        Route::Link,
        |f| {
            // Cut the link: the hub goes away.
            f.hub.proc.kill();
        },
        |f| {
            let port = f.hub.link.port();
            f.hub = start_hub_on(
                &f.pki,
                Transport::Tls,
                &["edge-1"],
                &format!(
                    "[upstream.kube-apiserver]\naddress = \"{}\"\n",
                    f.standin.addr()
                ),
                port,
            );
            assert!(
                wait_linked(f.hub.admin, "edge-1", WAIT),
                "{}",
                f.edge.logs()
            );
        },
    );
}

#[test]
fn kubelet_and_kube_proxy_in_direct_mode() {
    story(
        Route::Direct,
        |f| f.standin.set_down(true),
        |f| f.standin.set_down(false),
    );
}

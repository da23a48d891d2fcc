//! watch-bench: bytes on the link per watch event (issue 3), printed.
//!
//! A kubelet-like client watches one object through the edge's proxy, in
//! protobuf, while the stand-in kube-apiserver changes it again and again;
//! each change is awaited before the next, so every event crosses the link
//! on its own (the worst case: nothing shares a record or a packet). The
//! hub's count of MQTT-level bytes for the node, both directions, is set
//! against the apiserver's own protobuf bytes for the same events (the
//! length-prefixed watch frames the client receives). Everything on the
//! link is included: MQTT and link framing, acknowledgements and credit,
//! the inner TLS records and the HTTP chunk framing.
//!
//! Usage: cargo run --release -p tether-tests --bin watch-bench [-- --events N]

use std::time::Duration;
use tether_edge::kube::{self, Encoding};
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::bench::arg;
use tether_tests::client::{call, watch, KUBELET, PROTOBUF};
use tether_tests::cluster::node_field;
use tether_tests::fleet::{self, Fleet};
use tether_tests::pki::Pki;

const WAIT: Duration = Duration::from_secs(30);

/// The hub's MQTT-level byte count for edge-1, both directions.
fn link_bytes(f: &Fleet) -> u64 {
    let field = |name: &str| -> u64 {
        node_field(f.hub.admin, "edge-1", name)
            .and_then(|v| v.parse().ok())
            .expect("the hub's byte count for edge-1")
    };
    field("bytes_in") + field("bytes_out")
}

/// Changes `name` of `kind` `events` times, one change at a time, and
/// returns (link bytes, protobuf event bytes) per event.
fn measure(f: &Fleet, kind: Kind, name: &str, events: usize) -> (f64, f64) {
    let path = match kind {
        Kind::Pod => "pods",
        _ => "configmaps",
    };
    let list = format!(
        "/api/v1/namespaces/edge-apps/{path}?fieldSelector=metadata.name%3D{name}&limit=500&resourceVersion=0"
    );
    let answer = call(f.proxy, KUBELET, "GET", &list, PROTOBUF, b"");
    assert_eq!(answer.status, 200, "{}", f.edge.logs());
    let rv = kube::parse_list(Encoding::Protobuf, &answer.body)
        .expect("list")
        .meta
        .resource_version;
    let seen = watch(
        f.proxy,
        KUBELET,
        &format!(
            "/api/v1/namespaces/edge-apps/{path}?allowWatchBookmarks=true&fieldSelector=metadata.name%3D{name}&resourceVersion={rv}&timeoutSeconds=3600&watch=true"
        ),
    );
    // Let the watch settle (its stream opened, credit granted) first.
    std::thread::sleep(Duration::from_millis(500));
    let before = link_bytes(f);
    let mut frames = 0usize;
    for i in 0..events {
        f.standin
            .modify_label(kind, "edge-apps", name, "tether-bench", &format!("v{i:08}"))
            .expect("modify");
        loop {
            let ev = seen.recv_timeout(WAIT).expect("the event in time");
            frames += ev.frame_bytes;
            if ev.event == "MODIFIED" {
                break;
            }
        }
    }
    // Acknowledgements and credit for the last events.
    std::thread::sleep(Duration::from_millis(300));
    let link = link_bytes(f) - before;
    (link as f64 / events as f64, frames as f64 / events as f64)
}

fn main() {
    let events = arg("--events", 500) as usize;
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let f = fleet::through_link(pki, standin, "");
    println!(
        "watch events one at a time through the proxy, the link and the hub, protobuf, {events} each:"
    );
    for (kind, name, what) in [
        (Kind::ConfigMap, "sensor-map", "configmap"),
        (Kind::ConfigMap, "kube-root-ca.crt", "configmap"),
        (Kind::Pod, "api-m5ghvwrtzm-dcwg6", "pod"),
    ] {
        let (link, frame) = measure(&f, kind, name, events);
        // What kube-apiserver itself puts on the wire for the event: the
        // frame in one HTTP chunk in one TLS 1.3 record (5-byte header,
        // content type, 16-byte tag).
        let chunk = format!("{:x}", frame as u64).len() + 4;
        let wire = frame + chunk as f64 + 22.0;
        println!(
            "{what} {name}: protobuf event {frame:.0} B; on the link {link:.0} B: {:+.1}% over the event, {:+.1}% over the apiserver's own wire bytes for it ({wire:.0} B)",
            (link / frame - 1.0) * 100.0,
            (link / wire - 1.0) * 100.0
        );
    }
}

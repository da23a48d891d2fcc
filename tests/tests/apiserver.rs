//! Checks the stand-in kube-apiserver against the recorded kube-apiserver 1.24 exchanges.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use tether_edge::kube::{
    json, parse_list, parse_object, parse_status, pb, Encoding, EventType, WatchDecoder,
};
use tether_tests::apiserver::{self, Kind, StandIn};
use tether_tests::pki::Pki;

const JSON: &str = "application/json, */*";
const PB: &str = "application/vnd.kubernetes.protobuf, application/json";
const KUBELET: &str = "kubelet/v1.24.0 (linux/arm64) kubernetes/2cc6ddc";

fn fixture(name: &str) -> Vec<u8> {
    apiserver::fixture(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Header names of a recorded `*.response.headers.txt`, in order.
fn fixture_header_names(name: &str) -> Vec<String> {
    let text = String::from_utf8(fixture(name)).unwrap();
    text.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_owned()))
        .collect()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// A minimal blocking HTTP/1.1 client over any stream: keep-alive, Content-Length and
/// chunked bodies.
struct Client<S: Read + Write> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Client<S> {
    fn new(stream: S) -> Self {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed mid-response");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn take_until(&mut self, delim: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                let out = self.buf[..i].to_vec();
                self.buf.drain(..i + delim.len());
                return out;
            }
            self.fill();
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill();
        }
        self.buf.drain(..n).collect()
    }

    fn get(&mut self, target: &str, accept: &str) -> Resp {
        self.request("GET", target, accept, "", b"")
    }

    /// Sends a request with a Content-Length body (none when `content_type` is empty
    /// and `body` is too) and reads the answer.
    fn request(
        &mut self,
        method: &str,
        target: &str,
        accept: &str,
        content_type: &str,
        body: &[u8],
    ) -> Resp {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {KUBELET}\r\nAccept: {accept}\r\n"
        );
        if !content_type.is_empty() {
            req.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if !body.is_empty() || !content_type.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// Writes `bytes` as they are and reads one answer.
    fn send_raw(&mut self, bytes: &[u8]) -> Resp {
        self.stream.write_all(bytes).expect("write");
        self.stream.flush().expect("flush");
        self.read_response()
    }

    fn read_response(&mut self) -> Resp {
        let head = String::from_utf8(self.take_until(b"\r\n\r\n")).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = resp.header("Content-Length") {
            let len = len.parse().unwrap();
            resp.body = self.take(len);
        } else if resp.header("Transfer-Encoding") == Some("chunked") {
            loop {
                let size = String::from_utf8(self.take_until(b"\r\n")).unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let data = self.take(size);
                assert_eq!(self.take(2), b"\r\n");
                if size == 0 {
                    break;
                }
                resp.body.extend_from_slice(&data);
            }
        } else {
            // Go's own refusals: the body runs until the connection closes.
            let mut chunk = [0u8; 4096];
            resp.body = std::mem::take(&mut self.buf);
            while let Ok(n) = self.stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..n]);
            }
        }
        resp
    }

    /// Whether the server has closed the connection (EOF or error on the next read).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

fn plain(standin: &StandIn) -> Client<TcpStream> {
    let s = TcpStream::connect(standin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    Client::new(s)
}

fn tls(
    standin: &StandIn,
    pki: &Pki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Client<StreamOwned<ClientConnection, TcpStream>> {
    let config = tether_link::tls::client_config(&pki.ca, identity).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let s = TcpStream::connect(standin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    Client::new(StreamOwned::new(conn, s))
}

fn events(encoding: Encoding, body: &[u8]) -> Vec<(EventType, Vec<u8>, String)> {
    let mut d = WatchDecoder::new(encoding, 1 << 20);
    d.push(body);
    let mut out = Vec::new();
    while let Some(e) = d.next_event().unwrap() {
        out.push((
            e.event_type,
            e.object.to_vec(),
            e.meta.resource_version.clone(),
        ));
    }
    d.finish().unwrap();
    out
}

const POD: &str = "/api/v1/namespaces/edge-apps/pods/web-tlj24hjbj7-22r6j";
const PODS_ON_EDGE_1: &str =
    "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";

#[test]
fn get_pod_and_404_match_the_recordings() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    for (accept, stem, ext) in [(JSON, "get-pod-json", "json"), (PB, "get-pod-pb", "bin")] {
        let r = c.get(POD, accept);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            fixture(&format!("{stem}.response.body.{ext}")),
            "{stem}"
        );
        let names = fixture_header_names(&format!("{stem}.response.headers.txt"));
        assert_eq!(r.header_names(), names, "{stem}");
    }
    for (accept, stem, ext) in [
        (JSON, "err-404-pod-json", "json"),
        (PB, "err-404-pod-pb", "bin"),
    ] {
        let r = c.get("/api/v1/namespaces/edge-apps/pods/does-not-exist", accept);
        assert_eq!(r.status, 404);
        assert_eq!(
            r.body,
            fixture(&format!("{stem}.response.body.{ext}")),
            "{stem}"
        );
        let names = fixture_header_names(&format!("{stem}.response.headers.txt"));
        assert_eq!(r.header_names(), names, "{stem}");
    }
    let r = c.get("/api/v1/foos", JSON);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
}

#[test]
fn lists_match_the_recordings() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    let nodes = "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1&limit=500&resourceVersion=0";
    for (target, stem) in [
        (nodes, "list-nodes-edge-1-rv0"),
        (PODS_ON_EDGE_1, "list-pods-node-edge-1-rv0"),
        (
            "/api/v1/namespaces/edge-apps/configmaps",
            "list-configmaps-edge-apps",
        ),
    ] {
        for (accept, enc, ext) in [(JSON, "json", "json"), (PB, "pb", "bin")] {
            let r = c.get(target, accept);
            assert_eq!(r.status, 200);
            let want = fixture(&format!("{stem}-{enc}.response.body.{ext}"));
            assert!(
                r.body == want,
                "{stem}-{enc}: body differs from the recording"
            );
            let names = fixture_header_names(&format!("{stem}-{enc}.response.headers.txt"));
            assert_eq!(r.header_names(), names, "{stem}-{enc}");
        }
    }
    // Selectors narrow the list as the apiserver would.
    let all = parse_list(
        Encoding::Json,
        &fixture("list-pods-node-edge-1-rv0-json.response.body.json"),
    )
    .unwrap()
    .items
    .len();
    let r = c.get("/api/v1/pods?labelSelector=app%3Dweb", JSON);
    let web = parse_list(Encoding::Json, &r.body).unwrap();
    assert!(!web.items.is_empty() && web.items.len() < all);
    assert!(web
        .items
        .iter()
        .all(|i| i.meta.labels.iter().any(|(k, v)| k == "app" && v == "web")));
    let r = c.get("/api/v1/pods?labelSelector=app%20notin%20(web)", JSON);
    assert_eq!(
        parse_list(Encoding::Json, &r.body).unwrap().items.len(),
        all - web.items.len()
    );
    let r = c.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-2", PB);
    assert!(parse_list(Encoding::Protobuf, &r.body)
        .unwrap()
        .items
        .is_empty());
    let r = c.get("/api/v1/pods?fieldSelector=spec.bogus%3Dx", JSON);
    assert_eq!(r.status, 400);
    let uas: Vec<String> = standin
        .requests()
        .into_iter()
        .map(|r| r.user_agent)
        .collect();
    assert!(uas.iter().all(|ua| ua == KUBELET));
}

#[test]
fn watch_after_a_modify_delivers_one_modified_event() {
    let standin = StandIn::start();
    let list_rv = standin.list_resource_version(Kind::Pod);
    assert_eq!(list_rv, 358);
    let rv = standin
        .modify_label(
            Kind::Pod,
            "edge-apps",
            "web-tlj24hjbj7-22r6j",
            "app",
            "web2",
        )
        .unwrap();
    assert_eq!(rv, 393);
    let target = format!(
        "/api/v1/pods?allowWatchBookmarks=false&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion={list_rv}&timeoutSeconds=1&watch=true"
    );
    let mut c = plain(&standin);
    for (accept, encoding) in [(JSON, Encoding::Json), (PB, Encoding::Protobuf)] {
        let r = c.get(&target, accept);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some(encoding.content_type(true)));
        let evs = events(encoding, &r.body);
        assert_eq!(evs.len(), 1, "{encoding:?}");
        let (t, object, ev_rv) = &evs[0];
        assert_eq!(*t, EventType::Modified);
        assert_eq!(ev_rv, "393");
        let obj = parse_object(encoding, object).unwrap();
        assert_eq!((obj.kind.as_str(), obj.api_version.as_str()), ("Pod", "v1"));
        assert!(obj.meta.labels.contains(&("app".into(), "web2".into())));
    }
    // The GET now shows the change in both encodings; the list RV moved on.
    let j = parse_object(Encoding::Json, &c.get(POD, JSON).body).unwrap();
    let p = parse_object(Encoding::Protobuf, &c.get(POD, PB).body).unwrap();
    assert_eq!(j.meta, p.meta);
    assert_eq!(j.meta.resource_version, "393");
    let listed = c.get(PODS_ON_EDGE_1, PB).body;
    let l = parse_list(Encoding::Protobuf, &listed).unwrap();
    assert_eq!(l.meta.resource_version, "393");
    // A live watch sees a delete.
    let handle = std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            standin.delete(Kind::Pod, "edge-apps", "web-tlj24hjbj7-22r6j")
        });
        let r = c.get(
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=393&timeoutSeconds=2&watch=true",
            JSON,
        );
        let evs = events(Encoding::Json, &r.body);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].0, EventType::Deleted);
        assert_eq!(evs[0].2, "394");
        h.join().unwrap()
    });
    assert_eq!(handle, Some(394));
}

#[test]
fn compaction_gives_410_as_recorded() {
    let standin = StandIn::start();
    standin
        .modify_label(
            Kind::Pod,
            "edge-apps",
            "web-tlj24hjbj7-22r6j",
            "app",
            "web2",
        )
        .unwrap();
    standin.compact();
    let mut c = plain(&standin);
    let target = "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=1&timeoutSeconds=10&watch=true";
    let r = c.get(target, JSON);
    assert_eq!(r.status, 200);
    let want = String::from_utf8(fixture("err-410-watch-rv1-json.response.body.json"))
        .unwrap()
        .replace("(418)", "(393)");
    assert_eq!(String::from_utf8(r.body).unwrap(), want);
    let r = c.get(target, PB);
    let evs = events(Encoding::Protobuf, &r.body);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, EventType::Error);
    let st = parse_status(Encoding::Protobuf, &evs[0].1).unwrap();
    assert_eq!((st.code, st.reason.as_str()), (410, "Expired"));
    let want_pb = fixture("err-410-watch-rv1-pb.response.body.bin");
    let recorded = events(Encoding::Protobuf, &want_pb);
    let recorded = parse_status(Encoding::Protobuf, &recorded[0].1).unwrap();
    assert_eq!(st.message, recorded.message.replace("(418)", "(393)"));

    let r = c.get(
        "/api/v1/pods?limit=10&resourceVersion=358&resourceVersionMatch=Exact",
        JSON,
    );
    assert_eq!(r.status, 410);
    assert_eq!(
        r.body,
        fixture("err-410-list-exact-rv-json.response.body.json")
    );
    // A LIST now reports the compaction RV, and a watch from it is accepted.
    let listed = c.get(PODS_ON_EDGE_1, JSON).body;
    let l = parse_list(Encoding::Json, &listed).unwrap();
    assert_eq!(l.meta.resource_version, "393");
    let r = c.get(
        "/api/v1/pods?resourceVersion=393&timeoutSeconds=1&watch=true",
        JSON,
    );
    assert!(events(Encoding::Json, &r.body).is_empty());
}

#[test]
fn bookmarks_and_initial_events() {
    let standin = StandIn::start();
    standin.set_bookmark_interval(Duration::from_millis(300));
    let mut c = plain(&standin);
    let r = c.get(
        "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=358&timeoutSeconds=1&watch=true",
        JSON,
    );
    let evs = events(Encoding::Json, &r.body);
    assert!(!evs.is_empty() && evs.iter().all(|e| e.0 == EventType::Bookmark));
    // Same shape as the recorded bookmark, at our RV.
    let recorded = String::from_utf8(fixture("watch-pods-edge-1-json.response.body.json")).unwrap();
    let line = recorded.lines().find(|l| l.contains("BOOKMARK")).unwrap();
    let body = String::from_utf8(r.body).unwrap();
    assert_eq!(
        body.lines().next().unwrap(),
        line.replace("\"405\"", "\"358\"")
    );
    // Protobuf bookmarks as recorded.
    let r = c.get(
        "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=358&timeoutSeconds=1&watch=true",
        PB,
    );
    let ours = events(Encoding::Protobuf, &r.body);
    let rec = events(
        Encoding::Protobuf,
        &fixture("watch-pods-edge-1-pb.response.body.bin"),
    );
    let rec = rec.iter().find(|e| e.0 == EventType::Bookmark).unwrap();
    assert_eq!(ours[0].1.len(), rec.1.len());
    assert_eq!(ours[0].2, "358");

    // Streaming list: ADDED for every object, then the annotated bookmark.
    let r = c.get(
        "/api/v1/pods?allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=&timeoutSeconds=1&watch=true",
        PB,
    );
    let evs = events(Encoding::Protobuf, &r.body);
    let added = evs.iter().take_while(|e| e.0 == EventType::Added).count();
    assert_eq!(added, 19);
    assert_eq!(evs[added].0, EventType::Bookmark);
    let env = tether_edge::kube::pb::parse_envelope(&evs[added].1).unwrap();
    assert!(env
        .raw
        .windows(25)
        .any(|w| w == b"k8s.io/initial-events-end"));
    let r = c.get(
        "/api/v1/pods?allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1&watch=true",
        JSON,
    );
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.lines().nth(19).unwrap().contains(
        r#""metadata":{"resourceVersion":"358","creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}}"#
    ));
}

#[test]
fn tls_needs_a_client_certificate() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    assert!(standin.url().starts_with("https://127.0.0.1:"));
    let (cert, key) = pki.node_cert("system:node:edge-1");
    let mut c = tls(&standin, &pki, Some((&cert, &key)));
    let r = c.get(POD, PB);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fixture("get-pod-pb.response.body.bin"));
    let r = c.get(POD, JSON);
    assert_eq!(r.body, fixture("get-pod-json.response.body.json"));

    let mut anon = tls(&standin, &pki, None);
    let r = anon.get("/api/v1/pods", JSON);
    assert_eq!(r.status, 403);
    let st = parse_status(Encoding::Json, &r.body).unwrap();
    assert_eq!(st.reason, "Forbidden");
    let ids: Vec<String> = standin.requests().into_iter().map(|r| r.identity).collect();
    assert_eq!(ids, ["system:node:edge-1", "system:node:edge-1", ""]);
}

#[test]
fn down_and_unavailable() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    assert_eq!(c.get(POD, JSON).status, 200);
    standin.set_unavailable(true);
    assert_eq!(c.get(POD, JSON).status, 503);
    standin.set_unavailable(false);
    standin.set_down(true);
    std::thread::sleep(Duration::from_millis(300));
    // The open connection is cut, and new ones are closed without an answer.
    let mut buf = [0u8; 1];
    assert!(matches!(c.stream.read(&mut buf), Ok(0) | Err(_)));
    let mut s = TcpStream::connect(standin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /api/v1/pods HTTP/1.1\r\n\r\n");
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    standin.set_down(false);
    let mut c = plain(&standin);
    assert_eq!(c.get(POD, JSON).status, 200);
}

// ------------------------------------------------------------------ new kinds

const KUBE_PROXY_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&limit=500&resourceVersion=0";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1";
const LEASE_CT_PB: &str = "application/vnd.kubernetes.protobuf";
const SMP: &str = "application/strategic-merge-patch+json";

/// Answers `target` in both encodings exactly as the recordings `{stem}-{json,pb}`.
fn assert_as_recorded(c: &mut Client<TcpStream>, target: &str, stem: &str, encodings: &[&str]) {
    for enc in encodings {
        let (accept, ext) = if *enc == "json" {
            (JSON, "json")
        } else {
            (PB, "bin")
        };
        let r = c.get(target, accept);
        assert_eq!(r.status, 200, "{stem}-{enc}");
        let want = fixture(&format!("{stem}-{enc}.response.body.{ext}"));
        assert!(
            r.body == want,
            "{stem}-{enc}: body differs from the recording:\n{}\n{}",
            String::from_utf8_lossy(&r.body),
            String::from_utf8_lossy(&want)
        );
        let names = fixture_header_names(&format!("{stem}-{enc}.response.headers.txt"));
        assert_eq!(r.header_names(), names, "{stem}-{enc}");
    }
}

#[test]
fn services_endpointslices_and_leases_as_recorded() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    let both = ["json", "pb"];
    assert_as_recorded(
        &mut c,
        "/api/v1/services?limit=500&resourceVersion=0",
        "list-services-rv0",
        &both,
    );
    assert_as_recorded(
        &mut c,
        KUBE_PROXY_SLICES,
        "list-endpointslices-kubeproxy",
        &both,
    );
    assert_as_recorded(&mut c, LEASE, "get-lease-edge-1", &both);
    assert_as_recorded(
        &mut c,
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        "list-leases-node-lease",
        &["json"],
    );
    assert_as_recorded(
        &mut c,
        "/api/v1/namespaces/edge-apps/services/web",
        "get-service-web",
        &["json"],
    );
    assert_as_recorded(
        &mut c,
        "/apis/discovery.k8s.io/v1/namespaces/edge-apps/endpointslices/web-nkgvt",
        "get-endpointslice-web",
        &["json"],
    );
    // Protobuf GETs of the new kinds carry their group version in the envelope.
    for (target, api, kind) in [
        (LEASE, "coordination.k8s.io/v1", "Lease"),
        (
            "/apis/discovery.k8s.io/v1/namespaces/edge-apps/endpointslices/web-nkgvt",
            "discovery.k8s.io/v1",
            "EndpointSlice",
        ),
        ("/api/v1/namespaces/edge-apps/services/web", "v1", "Service"),
    ] {
        let o = parse_object(Encoding::Protobuf, &c.get(target, PB).body).unwrap();
        assert_eq!((o.api_version.as_str(), o.kind.as_str()), (api, kind));
    }
    // A grouped resource's 404 names the group, as the apiserver does.
    let r = c.get(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-9",
        JSON,
    );
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains(
        r#""message":"leases.coordination.k8s.io \"edge-9\" not found","reason":"NotFound","details":{"name":"edge-9","group":"coordination.k8s.io","kind":"leases"},"code":404"#
    ));
}

#[test]
fn label_selectors_with_not_exists_leave_out_headless_slices() {
    let standin = StandIn::start();
    let names = standin
        .generate(Kind::EndpointSlice, "edge-apps", 2, "headless-")
        .unwrap();
    standin
        .modify_label(
            Kind::EndpointSlice,
            "edge-apps",
            &names[0],
            "service.kubernetes.io/headless",
            "",
        )
        .unwrap();
    standin
        .modify_label(
            Kind::EndpointSlice,
            "edge-apps",
            &names[1],
            "service.kubernetes.io/service-proxy-name",
            "other",
        )
        .unwrap();
    let mut c = plain(&standin);
    for (accept, encoding) in [(JSON, Encoding::Json), (PB, Encoding::Protobuf)] {
        let all = c.get("/apis/discovery.k8s.io/v1/endpointslices", accept);
        let all = parse_list(encoding, &all.body).unwrap();
        assert_eq!(all.items.len(), 6 + 2);
        assert_eq!(
            (all.api_version.as_str(), all.kind.as_str()),
            ("discovery.k8s.io/v1", "EndpointSliceList")
        );
        let proxied = c.get(KUBE_PROXY_SLICES, accept);
        let proxied = parse_list(encoding, &proxied.body).unwrap();
        let listed: Vec<&str> = proxied.items.iter().map(|i| i.meta.name.as_str()).collect();
        assert_eq!(listed.len(), 6, "{listed:?}");
        assert!(listed.iter().all(|n| !n.starts_with("headless-")));
        // `!key` alone, and with an equality.
        let one = c.get(
            "/apis/discovery.k8s.io/v1/namespaces/edge-apps/endpointslices?labelSelector=!service.kubernetes.io/headless,kubernetes.io/service-name%3Dweb",
            accept,
        );
        let one = parse_list(encoding, &one.body).unwrap();
        let listed: Vec<&str> = one.items.iter().map(|i| i.meta.name.as_str()).collect();
        assert_eq!(listed, ["web-nkgvt", "headless-1"]);
    }
    // A malformed requirement is a 400, as the apiserver's parser makes it.
    let r = c.get(
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21",
        JSON,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        parse_status(Encoding::Json, &r.body).unwrap().reason,
        "BadRequest"
    );
}

#[test]
fn watches_of_new_kinds_carry_their_group_version() {
    let standin = StandIn::start();
    standin.set_bookmark_interval(Duration::from_millis(200));
    let rv = standin
        .modify_label(Kind::EndpointSlice, "edge-apps", "web-nkgvt", "x", "y")
        .unwrap();
    assert_eq!(rv, 393);
    let mut c = plain(&standin);
    for (accept, encoding) in [(JSON, Encoding::Json), (PB, Encoding::Protobuf)] {
        let r = c.get(
            "/apis/discovery.k8s.io/v1/endpointslices?allowWatchBookmarks=true&resourceVersion=392&timeoutSeconds=1&watch=true",
            accept,
        );
        assert_eq!(r.header("Content-Type"), Some(encoding.content_type(true)));
        let evs = events(encoding, &r.body);
        assert_eq!(evs[0].0, EventType::Modified);
        assert_eq!(evs[0].2, "393");
        assert!(evs.len() > 1 && evs[1..].iter().all(|e| e.0 == EventType::Bookmark));
        for (_, object, _) in &evs {
            let o = parse_object(encoding, object).unwrap();
            assert_eq!(
                (o.api_version.as_str(), o.kind.as_str()),
                ("discovery.k8s.io/v1", "EndpointSlice")
            );
        }
        // A bookmark of each new kind parses as an empty object of its kind, at that
        // resource's watch-cache RV (services last changed at 387).
        for (target, api, kind, rv) in [
            ("/api/v1/services", "v1", "Service", "387"),
            (
                "/apis/coordination.k8s.io/v1/leases",
                "coordination.k8s.io/v1",
                "Lease",
                "392",
            ),
        ] {
            let r = c.get(
                &format!("{target}?allowWatchBookmarks=true&resourceVersion=393&timeoutSeconds=1&watch=true"),
                accept,
            );
            let evs = events(encoding, &r.body);
            assert!(!evs.is_empty() && evs.iter().all(|e| e.0 == EventType::Bookmark));
            let o = parse_object(encoding, &evs[0].1).unwrap();
            assert_eq!((o.api_version.as_str(), o.kind.as_str()), (api, kind));
            assert_eq!(o.meta.resource_version, rv);
        }
    }
    // Events have no watch cache: no bookmarks, and a too-old watch gets etcd's 410.
    let r = c.get(
        "/api/v1/namespaces/default/events?allowWatchBookmarks=true&resourceVersion=392&timeoutSeconds=1&watch=true",
        JSON,
    );
    assert!(r.body.is_empty(), "{}", String::from_utf8_lossy(&r.body));
    let target =
        "/api/v1/namespaces/default/events?resourceVersion=391&timeoutSeconds=5&watch=true";
    assert_as_recorded(
        &mut c,
        target,
        "err-410-watch-events-compacted",
        &["json", "pb"],
    );
}

// ------------------------------------------------------------------ writes

/// The JSON text of member `key` of the top-level object in `body`.
fn member(body: &[u8], key: &str) -> String {
    let mut found = None;
    let start = json::skip_ws(body, 0);
    json::for_each_member(body, start, &mut |k, r| {
        if k == key.as_bytes() {
            found = Some(String::from_utf8_lossy(&body[r]).into_owned());
        }
        Ok(())
    })
    .unwrap();
    found.unwrap_or_else(|| panic!("no {key} in {}", String::from_utf8_lossy(body)))
}

/// `body` from `"involvedObject"` on: everything of an event after its metadata.
fn after_metadata<'a>(body: &'a str, first: &str) -> &'a str {
    &body[body.find(first).unwrap()..]
}

#[test]
fn lease_renewal_as_recorded() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    // JSON PUT at the current resourceVersion (224, as recorded).
    let body = fixture("write-node-put-lease-json.request.body.json");
    let r = c.request("PUT", LEASE, JSON, "application/json", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header_names(),
        fixture_header_names("write-node-put-lease-json.response.headers.txt")
    );
    // The stored object is the body at the new RV (no managedFields bookkeeping); its
    // spec is what the apiserver stored.
    let mut want = String::from_utf8(body.clone())
        .unwrap()
        .replace("\"224\"", "\"393\"");
    want.push('\n');
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), want);
    let recorded = fixture("write-node-put-lease-json.response.body.json");
    assert_eq!(member(&r.body, "spec"), member(&recorded, "spec"));
    let json_spec = member(&r.body, "spec");

    // Protobuf PUT, as kubelet renews: the recorded body at our RV gives the recorded
    // answer at ours, byte for byte.
    let swap = |bytes: &[u8], from: &[u8], to: &[u8]| -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        let mut out = bytes.to_vec();
        out[at..at + from.len()].copy_from_slice(to);
        out
    };
    let pb_body = swap(
        &fixture("write-node-put-lease-pb.request.body.bin"),
        b"\x32\x03408",
        b"\x32\x03393",
    );
    let r = c.request("PUT", LEASE, PB, LEASE_CT_PB, &pb_body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.body,
        swap(
            &fixture("write-node-put-lease-pb.response.body.bin"),
            b"\x32\x03409",
            b"\x32\x03394"
        )
    );
    assert_eq!(
        r.header_names(),
        fixture_header_names("write-node-put-lease-pb.response.headers.txt")
    );
    // The JSON view follows the protobuf write.
    let got = c.get(LEASE, JSON).body;
    let meta = parse_object(Encoding::Json, &got).unwrap().meta;
    assert_eq!(meta.resource_version, "394");
    let spec = member(&got, "spec");
    assert_ne!(spec, json_spec);
    assert!(spec.contains(r#""renewTime":"2026-11-22T02:14:"#), "{spec}");

    // A stale resourceVersion (the recorded 224) is a 409 Conflict, as recorded.
    for (accept, stem, ext) in [
        (JSON, "err-409-lease-stale-rv-json", "json"),
        (PB, "err-409-lease-stale-rv-pb", "bin"),
    ] {
        let body = fixture(&format!("{stem}.request.body.json"));
        let r = c.request("PUT", LEASE, accept, "application/json", &body);
        assert_eq!(r.status, 409);
        assert_eq!(
            r.body,
            fixture(&format!("{stem}.response.body.{ext}")),
            "{stem}"
        );
        assert_eq!(
            r.header_names(),
            fixture_header_names(&format!("{stem}.response.headers.txt"))
        );
    }
    assert_eq!(standin.list_resource_version(Kind::Lease), 394);

    // Watchers saw the two renewals as MODIFIED.
    let r = c.get(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases?resourceVersion=392&timeoutSeconds=1&watch=true",
        PB,
    );
    let evs = events(Encoding::Protobuf, &r.body);
    let seen: Vec<(EventType, &str)> = evs.iter().map(|e| (e.0, e.2.as_str())).collect();
    assert_eq!(
        seen,
        [(EventType::Modified, "393"), (EventType::Modified, "394")]
    );

    // Without a resourceVersion: 422; a name that is not the URL's: 400; a lease that
    // does not exist yet is created (201).
    let no_rv = String::from_utf8(body)
        .unwrap()
        .replace(",\"resourceVersion\":\"224\"", "");
    let r = c.request("PUT", LEASE, JSON, "application/json", no_rv.as_bytes());
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let other = no_rv.replace("\"name\":\"edge-1\"", "\"name\":\"edge-7\"");
    let r = c.request("PUT", LEASE, JSON, "application/json", other.as_bytes());
    assert_eq!(r.status, 400);
    let r = c.request(
        "PUT",
        &LEASE.replace("edge-1", "edge-7"),
        PB,
        "application/json",
        other.as_bytes(),
    );
    assert_eq!(r.status, 201);
    let created = parse_object(Encoding::Protobuf, &r.body).unwrap();
    assert_eq!(created.meta.name, "edge-7");
    assert_eq!(created.meta.resource_version, "395");
}

#[test]
fn events_are_created_patched_and_deleted() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    let events_url = "/api/v1/namespaces/default/events";
    let body = fixture("write-node-post-event-json.request.body.json");
    let r = c.request("POST", events_url, JSON, "application/json", &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header_names(),
        fixture_header_names("write-node-post-event-json.response.headers.txt")
    );
    let recorded =
        String::from_utf8(fixture("write-node-post-event-json.response.body.json")).unwrap();
    let got = String::from_utf8(r.body.clone()).unwrap();
    assert!(got.starts_with(r#"{"kind":"Event","apiVersion":"v1","metadata":{"name":"edge-1.18ea3c49aa1d292a","namespace":"default","uid":""#), "{got}");
    assert_eq!(
        after_metadata(&got, "\"involvedObject\""),
        after_metadata(&recorded, "\"involvedObject\"")
    );
    let created = parse_object(Encoding::Json, &r.body).unwrap();
    assert_eq!(created.meta.resource_version, "393");
    assert!(!created.meta.uid.is_empty());
    assert!(member(
        &member(&r.body, "metadata").into_bytes(),
        "creationTimestamp"
    )
    .ends_with("Z\""));

    // The name is taken now.
    let r = c.request("POST", events_url, JSON, "application/json", &body);
    assert_eq!(r.status, 409);
    let st = parse_status(Encoding::Json, &r.body).unwrap();
    assert_eq!(st.reason, "AlreadyExists");
    assert_eq!(
        st.message,
        "events \"edge-1.18ea3c49aa1d292a\" already exists"
    );

    // The correlator's PATCH (count 2), answered as recorded after the metadata.
    let event_url = format!("{events_url}/edge-1.18ea3c49aa1d292a");
    let patch = fixture("write-node-patch-event-json.request.body.json");
    let r = c.request("PATCH", &event_url, JSON, SMP, &patch);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header_names(),
        fixture_header_names("write-node-patch-event-json.response.headers.txt")
    );
    let recorded =
        String::from_utf8(fixture("write-node-patch-event-json.response.body.json")).unwrap();
    let got = String::from_utf8(r.body).unwrap();
    assert_eq!(
        after_metadata(&got, "\"involvedObject\""),
        after_metadata(&recorded, "\"involvedObject\"")
    );
    // Both encodings agree, in GET and LIST; an event LIST reports etcd's RV.
    let pb_get = c.get(&event_url, PB).body;
    let o = parse_object(Encoding::Protobuf, &pb_get).unwrap();
    assert_eq!(
        (o.kind.as_str(), o.meta.resource_version.as_str()),
        ("Event", "394")
    );
    assert_eq!(
        o.meta,
        parse_object(Encoding::Json, got.as_bytes()).unwrap().meta
    );
    let listed = c.get(events_url, PB).body;
    let l = parse_list(Encoding::Protobuf, &listed).unwrap();
    assert_eq!((l.kind.as_str(), l.items.len()), ("EventList", 1));
    assert_eq!(l.meta.resource_version, "394");

    // A protobuf POST, as kubelet sends events: our own protobuf event, renamed, its
    // server-set metadata dropped.
    let env = tether_edge::kube::pb::parse_envelope(&pb_get).unwrap();
    let mut meta = Vec::new();
    pb::put_len_field(&mut meta, 1, b"edge-1.second");
    pb::put_len_field(&mut meta, 3, b"default");
    let mut raw = Vec::new();
    pb::put_len_field(&mut raw, 1, &meta);
    let mut r = pb::Reader::new(env.raw);
    let mut at = 0;
    while let Some((field, _)) = r.next_field().unwrap() {
        if field != 1 {
            raw.extend_from_slice(&env.raw[at..r.position()]);
        }
        at = r.position();
    }
    let pb_body = pb::encode_envelope("v1", "Event", &raw);
    let r = c.request("POST", events_url, PB, LEASE_CT_PB, &pb_body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let o = parse_object(Encoding::Protobuf, &r.body).unwrap();
    assert_eq!(
        (o.meta.name.as_str(), o.meta.resource_version.as_str()),
        ("edge-1.second", "395")
    );
    let j = c.get(&format!("{events_url}/edge-1.second"), JSON).body;
    assert_eq!(
        after_metadata(&String::from_utf8(j).unwrap(), "\"involvedObject\""),
        after_metadata(&recorded, "\"involvedObject\"")
    );
    // A resourceVersion on create is refused, as etcd refuses it.
    let r = c.request("POST", events_url, JSON, "application/json", &pb_get);
    assert_eq!(r.status, 400, "protobuf bytes sent as JSON");
    let r = c.request("POST", events_url, JSON, LEASE_CT_PB, &pb_get);
    assert_eq!(r.status, 500);

    // DELETE: an event answers with a Success Status naming it.
    let r = c.request("DELETE", &event_url, JSON, "", b"");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.starts_with(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":{"name":"edge-1.18ea3c49aa1d292a","kind":"events","uid":""#),
        "{text}"
    );
    assert_eq!(c.get(&event_url, JSON).status, 404);
}

#[test]
fn status_patches_renew_the_resource_version() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    let node_status = "/api/v1/nodes/edge-1/status";
    let before = c.get("/api/v1/nodes/edge-1", JSON).body;
    for (accept, stem, rv) in [
        (JSON, "write-node-patch-node-status-json", "393"),
        (PB, "write-node-patch-node-status-pb", "394"),
    ] {
        let patch = fixture(&format!("{stem}.request.body.json"));
        let r = c.request("PATCH", node_status, accept, SMP, &patch);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.header_names(),
            fixture_header_names(&format!("{stem}.response.headers.txt")),
            "{stem}"
        );
        let encoding = if accept == JSON {
            Encoding::Json
        } else {
            Encoding::Protobuf
        };
        let o = parse_object(encoding, &r.body).unwrap();
        assert_eq!(
            (o.kind.as_str(), o.meta.resource_version.as_str()),
            ("Node", rv)
        );
    }
    // The bytes are kept (the simplification), at the new RV.
    let after = c.get("/api/v1/nodes/edge-1", JSON).body;
    let was = parse_object(Encoding::Json, &before)
        .unwrap()
        .meta
        .resource_version;
    assert_eq!(
        String::from_utf8(after).unwrap(),
        String::from_utf8(before).unwrap().replace(
            &format!("\"resourceVersion\":\"{was}\""),
            "\"resourceVersion\":\"394\""
        )
    );
    let r = c.get(
        "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1&resourceVersion=392&timeoutSeconds=1&watch=true",
        PB,
    );
    let evs = events(Encoding::Protobuf, &r.body);
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e.0 == EventType::Modified));

    // Pod status: the recorded patch carries watch-demo-1's uid as a precondition.
    let pod_status = format!("{POD}/status");
    let patch = String::from_utf8(fixture(
        "write-node-patch-pod-status-json.request.body.json",
    ))
    .unwrap();
    let r = c.request("PATCH", &pod_status, JSON, SMP, patch.as_bytes());
    assert_eq!(r.status, 409);
    assert!(parse_status(Encoding::Json, &r.body)
        .unwrap()
        .message
        .contains(
            "Precondition failed: UID in precondition: cc371860-986b-419f-b77f-8650c2f3cd4b"
        ));
    let uid = parse_object(Encoding::Json, &c.get(POD, JSON).body)
        .unwrap()
        .meta
        .uid;
    let patch = patch.replace("cc371860-986b-419f-b77f-8650c2f3cd4b", &uid);
    let r = c.request("PATCH", &pod_status, JSON, SMP, patch.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header_names(),
        fixture_header_names("write-node-patch-pod-status-json.response.headers.txt")
    );
    assert_eq!(
        parse_object(Encoding::Json, &r.body)
            .unwrap()
            .meta
            .resource_version,
        "395"
    );
    // JSON patch takes an array, the merge patches an object; other types are 415.
    let ops = br#"[{"op":"replace","path":"/status/phase","value":"Running"}]"#;
    let r = c.request("PATCH", &pod_status, PB, "application/json-patch+json", ops);
    assert_eq!(r.status, 200);
    let r = c.request("PATCH", &pod_status, JSON, SMP, ops);
    assert_eq!(r.status, 400);
    let r = c.request(
        "PATCH",
        &pod_status,
        JSON,
        "application/apply-patch+yaml",
        b"a: b",
    );
    assert_eq!(r.status, 415);
    let r = c.request("PATCH", &pod_status, JSON, SMP, b"{\"status\":");
    assert_eq!(r.status, 400);
    let r = c.request("PATCH", "/api/v1/nodes/edge-9/status", JSON, SMP, b"{}");
    assert_eq!(r.status, 404);
}

#[test]
fn token_requests() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    let url = "/api/v1/namespaces/edge-apps/serviceaccounts/web/token";
    let body = fixture("write-node-token-request-json.request.body.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = c.request("POST", url, JSON, "application/json", &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header_names(),
        fixture_header_names("write-node-token-request-json.response.headers.txt")
    );
    let recorded = fixture("write-node-token-request-json.response.body.json");
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.starts_with(r#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"name":"web","namespace":"edge-apps","creationTimestamp":""#), "{text}");
    // The spec is echoed with the default audience filled in, as recorded.
    assert_eq!(member(&r.body, "spec"), member(&recorded, "spec"));
    let status = member(&r.body, "status").into_bytes();
    assert_eq!(member(&status, "token"), "\"standin-token-1\"");
    let expires = member(&status, "expirationTimestamp");
    let expires_at = |text: &str| -> u64 {
        // "2026-11-22T03:14:55Z": seconds since the epoch, by the civil calendar.
        let t = text.trim_matches('"');
        let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 719_469;
        (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
    };
    let left = expires_at(&expires) - now;
    assert!((3606..=3609).contains(&left), "{expires}: {left} s");

    // Tokens differ per call; the override makes them short-lived.
    standin.set_token_lifetime(Some(Duration::from_secs(2)));
    let r = c.request("POST", url, PB, "application/json", &body);
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/vnd.kubernetes.protobuf")
    );
    let env = tether_edge::kube::pb::parse_envelope(&r.body).unwrap();
    assert_eq!(
        (env.api_version, env.kind),
        ("authentication.k8s.io/v1", "TokenRequest")
    );
    assert!(env.raw.windows(15).any(|w| w == b"standin-token-2"));
    // The protobuf answer is a valid protobuf request too (kubelet sends protobuf).
    let pb_body = r.body.clone();
    standin.set_token_lifetime(None);
    let r = c.request("POST", url, JSON, LEASE_CT_PB, &pb_body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let spec = member(&r.body, "spec");
    assert!(spec.contains("\"expirationSeconds\":2,"), "{spec}");
    assert_eq!(
        member(&member(&r.body, "status").into_bytes(), "token"),
        "\"standin-token-3\""
    );
    standin.set_token_lifetime(Some(Duration::from_secs(2)));
    let r = c.request("POST", url, JSON, "application/json", &body);
    let status = member(&r.body, "status").into_bytes();
    let left = expires_at(&member(&status, "expirationTimestamp")) - now;
    assert!((1..=4).contains(&left), "{left}");
    assert!(member(&r.body, "spec").contains("\"expirationSeconds\":2,"));
    // Only POST is served there.
    assert_eq!(c.get(url, JSON).status, 405);
}

#[test]
fn writes_are_logged_and_honour_unavailable_and_down() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    let body = fixture("write-node-put-lease-json.request.body.json");
    standin.set_unavailable(true);
    let r = c.request("PUT", LEASE, JSON, "application/json", &body);
    assert_eq!(r.status, 503);
    assert_eq!(standin.resource_version(), 392, "nothing was written");
    standin.set_unavailable(false);
    let logged = standin.requests().pop().unwrap();
    assert_eq!(
        (
            logged.method.as_str(),
            logged.target.as_str(),
            logged.content_type.as_str()
        ),
        ("PUT", LEASE, "application/json")
    );
    assert_eq!((logged.body_len, &logged.body), (body.len(), &body));
    standin.set_down(true);
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.closed());
    let mut s = TcpStream::connect(standin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    standin.set_down(false);
    let mut c = plain(&standin);
    let r = c.request("PUT", LEASE, JSON, "application/json", &body);
    assert_eq!(r.status, 200);
}

#[test]
fn bad_bodies_get_clear_errors_and_the_server_goes_on() {
    let standin = StandIn::start();
    let event = "/api/v1/namespaces/default/events";
    // Over 3 MiB: 413 as a Status, then the connection closes (the body is not read).
    let mut c = plain(&standin);
    let r = c.send_raw(
        format!("POST {event} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n{{").as_bytes(),
    );
    assert_eq!(r.status, 413);
    let st = parse_status(Encoding::Json, &r.body).unwrap();
    assert_eq!(
        (st.reason.as_str(), st.code),
        ("RequestEntityTooLarge", 413)
    );
    assert!(c.closed());
    assert_eq!(standin.requests().last().unwrap().body_len, 4_194_304);
    // The same through chunks that add up to too much.
    let mut c = plain(&standin);
    let mut raw = format!("POST {event} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..4 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    assert_eq!(c.send_raw(&raw).status, 413);
    // A chunked body within bounds is read.
    let mut c = plain(&standin);
    let body = fixture("write-node-post-event-json.request.body.json");
    let (a, b) = body.split_at(100);
    let mut raw = format!("POST {event} HTTP/1.1\r\nHost: x\r\nAccept: {JSON}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for part in [a, b] {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(c.send_raw(&raw).status, 201);
    // Framing Go refuses: plain-text answers, connection closed.
    for (head, code) in [
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: -1\r\n", 400),
        ("Transfer-Encoding: gzip\r\n", 501),
        ("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", 400),
    ] {
        let mut c = plain(&standin);
        let r =
            c.send_raw(format!("POST {event} HTTP/1.1\r\nHost: x\r\n{head}\r\n{{}}").as_bytes());
        assert_eq!(r.status, code, "{head}");
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    }
    let mut c = plain(&standin);
    let r = c.send_raw(
        format!("POST {event} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 400);
    // Bodies that do not decode: 400 BadRequest Statuses; unknown media types: 415.
    let mut c = plain(&standin);
    let mut noise = 0x9e37_79b9_u64;
    let garbage: Vec<u8> = (0..512)
        .map(|_| {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            noise as u8
        })
        .collect();
    for (method, target, ct, body, code) in [
        ("PUT", LEASE, "application/json", &b"{\"metadata\":"[..], 400),
        ("PUT", LEASE, "application/json", &b"[]"[..], 400),
        ("PUT", LEASE, "application/json", &br#"{"kind":"Pod","metadata":{"name":"edge-1"}}"#[..], 400),
        ("PUT", LEASE, "application/json", &br#"{"metadata":{"name":"edge-1","resourceVersion":"224"},"spec":{"renewTime":"yesterday"}}"#[..], 400),
        ("PUT", LEASE, LEASE_CT_PB, &garbage[..], 400),
        ("PUT", LEASE, LEASE_CT_PB, &b"k8s\0\x0a"[..], 400),
        ("PUT", LEASE, "text/plain", &b"hello"[..], 415),
        ("POST", event, "", &b"{}"[..], 415),
        ("POST", event, "application/json", &garbage[..], 400),
        ("POST", event, "application/json", &b"{}"[..], 422),
        ("PATCH", &format!("{event}/none"), SMP, &b"{}"[..], 404),
    ] {
        let r = c.request(method, target, JSON, ct, body);
        assert_eq!(r.status, code, "{method} {target} {ct} {}", String::from_utf8_lossy(body));
        parse_status(Encoding::Json, &r.body).unwrap();
    }
    assert_eq!(
        standin.resource_version(),
        393,
        "only the chunked event was written"
    );
    assert_eq!(c.get(POD, PB).status, 200);
}

#[test]
fn methods_resources_and_deletes_as_the_apiserver_answers() {
    let standin = StandIn::start();
    let mut c = plain(&standin);
    for (method, target) in [
        ("POST", "/api/v1/namespaces/edge-apps/pods"),
        ("PUT", "/api/v1/namespaces/edge-apps/configmaps/web-config"),
        ("PATCH", "/api/v1/namespaces/edge-apps/configmaps"),
        ("POST", "/api/v1/events"),
        ("POST", POD),
        ("PUT", "/api/v1/nodes/edge-1/status"),
    ] {
        let r = c.request(method, target, JSON, "application/json", b"{}");
        assert_eq!(r.status, 405, "{method} {target}");
        assert_eq!(
            parse_status(Encoding::Json, &r.body).unwrap().reason,
            "MethodNotAllowed"
        );
    }
    for target in [
        "/apis/discovery.k8s.io/v1/namespaces/edge-apps/foos",
        "/api/v1/namespaces/edge-apps/pods/x/log",
        "/api/v1/pods/web-tlj24hjbj7-22r6j",
    ] {
        let r = c.get(target, JSON);
        assert_eq!(r.status, 404, "{target}");
        assert_eq!(r.body, fixture("err-404-unknown-path.response.body.json"));
    }
    let r = c.get("/apis/nope.example.io/v1/things", JSON);
    assert_eq!(r.status, 404);
    assert_eq!(r.body, fixture("err-404-unknown-group.response.body.txt"));
    assert_eq!(
        r.header_names(),
        fixture_header_names("err-404-unknown-group.response.headers.txt")
    );
    // DELETE: a pod answers with its last state (as write-node-delete-pod-final), a
    // configmap with a Success Status; a uid precondition is checked.
    let r = c.request(
        "DELETE",
        POD,
        JSON,
        "application/json",
        br#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"preconditions":{"uid":"nope"}}"#,
    );
    assert_eq!(r.status, 409);
    let uid = parse_object(Encoding::Json, &c.get(POD, JSON).body)
        .unwrap()
        .meta
        .uid;
    let options = format!(
        r#"{{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"preconditions":{{"uid":"{uid}"}}}}"#
    );
    let r = c.request("DELETE", POD, PB, "application/json", options.as_bytes());
    assert_eq!(r.status, 200);
    let o = parse_object(Encoding::Protobuf, &r.body).unwrap();
    assert_eq!(
        (o.kind.as_str(), o.meta.resource_version.as_str()),
        ("Pod", "393")
    );
    assert_eq!(c.get(POD, JSON).status, 404);
    let cm = "/api/v1/namespaces/edge-apps/configmaps/web-config";
    let r = c.request("DELETE", cm, PB, "", b"");
    assert_eq!(r.status, 200);
    let st = tether_edge::kube::pb::parse_envelope(&r.body).unwrap();
    assert_eq!(st.kind, "Status");
    assert!(st.raw.windows(7).any(|w| w == b"Success"));
    assert_eq!(c.request("DELETE", cm, JSON, "", b"").status, 404);
}

// ------------------------------------------------------------------ generators

#[test]
fn generated_objects_are_valid_in_both_encodings() {
    let standin = StandIn::start();
    let started = std::time::Instant::now();
    let names = standin
        .generate(Kind::Pod, "edge-apps", 5000, "gen-pod-")
        .unwrap();
    let took = started.elapsed();
    println!("5,000 pods generated in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        (names[0].as_str(), names[4999].as_str()),
        ("gen-pod-0000", "gen-pod-4999")
    );
    let mut c = plain(&standin);
    for (accept, encoding) in [(JSON, Encoding::Json), (PB, Encoding::Protobuf)] {
        let r = c.get(PODS_ON_EDGE_1, accept);
        let l = parse_list(encoding, &r.body).unwrap();
        assert_eq!(l.items.len(), 19 + 5000);
        let generated: Vec<_> = l
            .items
            .iter()
            .filter(|i| i.meta.name.starts_with("gen-pod-"))
            .collect();
        assert_eq!(generated.len(), 5000);
        let uids: std::collections::HashSet<&str> =
            generated.iter().map(|i| i.meta.uid.as_str()).collect();
        assert_eq!(uids.len(), 5000, "every clone has its own uid");
        // Each item stands on its own as an object of the kind.
        let last = generated[4999];
        assert_eq!(last.meta.name, "gen-pod-4999");
        assert_eq!(last.meta.resource_version, "5392");
    }
    let j = parse_object(
        Encoding::Json,
        &c.get("/api/v1/namespaces/edge-apps/pods/gen-pod-0042", JSON)
            .body,
    )
    .unwrap();
    let p = parse_object(
        Encoding::Protobuf,
        &c.get("/api/v1/namespaces/edge-apps/pods/gen-pod-0042", PB)
            .body,
    )
    .unwrap();
    assert_eq!(j.meta, p.meta);
    // Other namespaces and kinds; names are checked.
    let names = standin
        .generate(Kind::ConfigMap, "load-test-namespace", 3, "cm-")
        .unwrap();
    assert_eq!(names, ["cm-0", "cm-1", "cm-2"]);
    let listed = c
        .get("/api/v1/namespaces/load-test-namespace/configmaps", PB)
        .body;
    let l = parse_list(Encoding::Protobuf, &listed).unwrap();
    assert_eq!(l.items.len(), 3);
    assert!(l
        .items
        .iter()
        .all(|i| i.meta.namespace == "load-test-namespace"));
    standin
        .generate(Kind::EndpointSlice, "edge-apps", 10, "slice-")
        .unwrap();
    assert!(standin.generate(Kind::Node, "edge-apps", 1, "n-").is_err());
    assert!(standin.generate(Kind::Pod, "edge-apps", 1, "Bad_").is_err());
    assert!(standin.generate(Kind::Pod, "Bad", 1, "ok-").is_err());
}

#[test]
fn sized_configmaps_for_big_lists() {
    let standin = StandIn::start();
    let each = 100_000;
    let names = standin
        .generate_sized(Kind::ConfigMap, "big", 40, "big-", each)
        .unwrap();
    assert_eq!(names.len(), 40);
    let mut c = plain(&standin);
    let json_list = c.get("/api/v1/namespaces/big/configmaps", JSON).body;
    let pb_list = c.get("/api/v1/namespaces/big/configmaps", PB).body;
    let jl = parse_list(Encoding::Json, &json_list).unwrap();
    let pl = parse_list(Encoding::Protobuf, &pb_list).unwrap();
    assert_eq!((jl.items.len(), pl.items.len()), (40, 40));
    assert!(
        json_list.len() > 40 * each && json_list.len() < 40 * (each + 200),
        "{}",
        json_list.len()
    );
    for (j, p) in jl.items.iter().zip(&pl.items) {
        assert_eq!(j.meta, p.meta);
        assert!(
            (each..each + 100).contains(&j.bytes.len()),
            "{}",
            j.bytes.len()
        );
        // The same payload in both encodings: data (field 2) holds one entry.
        let data = member(&member(j.bytes, "data").into_bytes(), "payload");
        let payload = data.trim_matches('"').as_bytes();
        let mut r = pb::Reader::new(p.bytes);
        let mut entries = Vec::new();
        while let Some((field, v)) = r.next_field().unwrap() {
            if field == 2 {
                entries.push(v.bytes("data").unwrap());
            }
        }
        assert_eq!(entries.len(), 1);
        let mut e = pb::Reader::new(entries[0]);
        let (_, key) = e.next_field().unwrap().unwrap();
        let (_, value) = e.next_field().unwrap().unwrap();
        assert_eq!(key.bytes("key").unwrap(), b"payload");
        assert_eq!(value.bytes("value").unwrap(), payload);
    }
    // Payloads differ per object, so a gzip cannot shrink the list to nothing.
    assert_ne!(
        member(&member(jl.items[0].bytes, "data").into_bytes(), "payload"),
        member(&member(jl.items[1].bytes, "data").into_bytes(), "payload")
    );
    assert!(standin
        .generate_sized(Kind::Pod, "big", 1, "p-", 10)
        .is_err());
}

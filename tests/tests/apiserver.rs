//! Checks the stand-in kube-apiserver against the recorded kube-apiserver 1.24 exchanges.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use tether_edge::kube::{
    parse_list, parse_object, parse_status, Encoding, EventType, WatchDecoder,
};
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::pki::Pki;

const JSON: &str = "application/json, */*";
const PB: &str = "application/vnd.kubernetes.protobuf, application/json";
const KUBELET: &str = "kubelet/v1.24.0 (linux/arm64) kubernetes/2cc6ddc";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-apiserver-1.24")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {KUBELET}\r\nAccept: {accept}\r\n\r\n"
        );
        self.stream.write_all(req.as_bytes()).expect("write");
        self.stream.flush().expect("flush");
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
        } else {
            assert_eq!(resp.header("Transfer-Encoding"), Some("chunked"));
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
        }
        resp
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

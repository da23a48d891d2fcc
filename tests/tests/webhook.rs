//! The pod webhook of `[autonomy]` (issue 6) with the real hub binary: the
//! fixture AdmissionReview (a pod labelled `tether.io/offline: autonomy`
//! as kube-apiserver sends it, after DefaultTolerationSeconds added its
//! 300 s tolerations) POSTed over TLS gets a JSONPatch that, applied to
//! the pod, leaves exactly one toleration without a time limit for each of
//! `node.kubernetes.io/unreachable` and `not-ready` and the pod's own
//! toleration as it was; an unlabelled pod gets no patch; garbage gets a
//! 400, an oversized body a 413; `/metrics` counts them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tether_edge::kube::json;
use tether_tests::cluster::{self, start_hub, Transport};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

/// The fixture review.
const FIXTURE: &str = include_str!("../fixtures/admissionreview-pod.json");
/// The name the webhook's certificate carries (the Service that would
/// front the hub in a cluster).
const SERVER_NAME: &str = "tether-hub.tether-system.svc";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// A toleration (or any flat object): member name to raw JSON value text.
type Object = BTreeMap<String, String>;

/// The range of member `key` of the object at `r`.
fn member(b: &[u8], r: &Range<usize>, key: &str) -> Option<Range<usize>> {
    let mut found = None;
    json::for_each_member(b, r.start, &mut |k, v| {
        if k == key.as_bytes() {
            found = Some(v);
        }
        Ok(())
    })
    .ok()?;
    found
}

/// The range at a path of member names from the document's root.
fn at(b: &[u8], path: &[&str]) -> Option<Range<usize>> {
    let mut r = json::document(b).ok()?;
    for key in path {
        r = member(b, &r, key)?;
    }
    Some(r)
}

/// A flat object's members as raw value texts.
fn object(b: &[u8], r: Range<usize>) -> Object {
    let mut o = Object::new();
    json::for_each_member(b, r.start, &mut |k, v| {
        o.insert(
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(&b[v]).into_owned(),
        );
        Ok(())
    })
    .expect("an object");
    o
}

/// The elements of the array at `r`.
fn elements(b: &[u8], r: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    json::for_each_element(b, r.start, &mut |v| {
        out.push(v);
        Ok(())
    })
    .expect("an array");
    out
}

/// Standard base64 with padding, decoded.
fn decode64(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 4, 0, "base64 with padding: {s}");
    tether_link::der::unbase64(s).expect("base64")
}

/// Applies the JSONPatch `patch` to the pod's tolerations: the webhook
/// may only touch `/spec/tolerations`.
fn apply(tolerations: &mut Vec<Object>, patch: &[u8]) {
    // Wrapped in an object: the scanner's documents are objects.
    let wrapped = [b"{\"p\":", patch, b"}"].concat();
    let ops = at(&wrapped, &["p"]).expect("patch");
    for op in elements(&wrapped, ops) {
        let text = |k| {
            let r = member(&wrapped, &op, k).expect("member");
            json::string(&wrapped, r).expect("string")
        };
        let (kind, path) = (text("op"), text("path"));
        let value = member(&wrapped, &op, "value");
        match (kind.as_str(), path.as_str()) {
            ("add", "/spec/tolerations") => {
                *tolerations = elements(&wrapped, value.expect("value"))
                    .into_iter()
                    .map(|e| object(&wrapped, e))
                    .collect();
            }
            ("add", "/spec/tolerations/-") => {
                tolerations.push(object(&wrapped, value.expect("value")))
            }
            (k, p) if p.starts_with("/spec/tolerations/") => {
                let i: usize = p["/spec/tolerations/".len()..].parse().expect("index");
                assert!(i < tolerations.len(), "{p} out of range");
                match k {
                    "replace" => tolerations[i] = object(&wrapped, value.expect("value")),
                    "remove" => {
                        tolerations.remove(i);
                    }
                    other => panic!("unexpected op {other} at {p}"),
                }
            }
            (k, p) => panic!("the webhook touched more than the tolerations: {k} {p}"),
        }
    }
}

/// A toleration from literal members.
fn toleration(members: &[(&str, &str)]) -> Object {
    members
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A TLS client trusting the test CA, limited to `versions`.
fn connect(
    pki: &Pki,
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(addr).expect("connect to the webhook");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends one request on a kept-alive connection and reads the answer by
/// Content-Length: (status, body).
fn request(stream: &mut impl ReadWrite, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
    stream.flush().expect("flush");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read answer head");
        assert_eq!(n, 1, "connection closed mid-head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("length"))
        })
        .expect("Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read answer body");
    (status, body)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A review POST as kube-apiserver sends it (with its timeout query).
fn post(stream: &mut impl ReadWrite, body: &[u8]) -> (u16, Vec<u8>) {
    let head = format!(
        "POST /mutate-pods?timeout=10s HTTP/1.1\r\nHost: {SERVER_NAME}:8443\r\nContent-Type: application/json\r\nAccept: application/json, */*\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    request(stream, &head, body)
}

#[test]
fn webhook_gives_labelled_pods_unlimited_tolerations_over_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert(SERVER_NAME);
    let token = pki.write("hub-sa-token", "hub-sa-token-0123456789\n");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The controller needs an apiserver; with no node linked it never
    // sends it anything, so nothing has to listen there.
    let extra = format!(
        "[autonomy]\napiserver = \"https://127.0.0.1:9\"\nca = \"{}\"\ntoken_file = \"{}\"\nwebhook_listen = \"{listen}\"\nwebhook_cert = \"{}\"\nwebhook_key = \"{}\"\n",
        pki.ca.display(),
        token.display(),
        cert.display(),
        key.display()
    );
    let hub = start_hub(&pki, Transport::Plain, &["edge-1"], &extra);
    let admin = hub.admin;
    assert!(
        hub.proc
            .wait_for_log("autonomy webhook", Duration::from_secs(10)),
        "{}",
        hub.proc.logs()
    );

    // The labelled pod, on a kept-alive TLS 1.3 connection.
    let mut tls13 = connect(&pki, listen, &[&rustls::version::TLS13]);
    let (status, answer) = post(&mut tls13, FIXTURE.as_bytes());
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&answer),
        hub.proc.logs()
    );
    let text = |path: &[&str]| {
        let r = at(&answer, path).expect("field in the answer");
        String::from_utf8_lossy(&answer[r]).into_owned()
    };
    let fixture = FIXTURE.as_bytes();
    let uid = at(fixture, &["request", "uid"]).expect("uid");
    assert_eq!(text(&["response", "uid"]).as_bytes(), &fixture[uid]);
    assert_eq!(text(&["apiVersion"]), "\"admission.k8s.io/v1\"");
    assert_eq!(text(&["kind"]), "\"AdmissionReview\"");
    assert_eq!(text(&["response", "allowed"]), "true");
    assert_eq!(text(&["response", "patchType"]), "\"JSONPatch\"");
    let patch = decode64(text(&["response", "patch"]).trim_matches('"'));
    let before: Vec<Object> = elements(
        fixture,
        at(fixture, &["request", "object", "spec", "tolerations"]).expect("tolerations"),
    )
    .into_iter()
    .map(|r| object(fixture, r))
    .collect();
    let mut after = before.clone();
    apply(&mut after, &patch);
    let unlimited = |key: &str| {
        toleration(&[
            ("key", &format!("\"{key}\"")),
            ("operator", "\"Exists\""),
            ("effect", "\"NoExecute\""),
        ])
    };
    // The pod's own toleration stays as it was; each taint has exactly one
    // toleration, without tolerationSeconds.
    let own: Vec<&Object> = before
        .iter()
        .filter(|t| {
            t["key"] != format!("\"{UNREACHABLE}\"") && t["key"] != format!("\"{NOT_READY}\"")
        })
        .collect();
    assert_eq!(own.len(), 1, "the fixture has one toleration of its own");
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(&after[0], own[0]);
    for key in [UNREACHABLE, NOT_READY] {
        let of_key: Vec<&Object> = after
            .iter()
            .filter(|t| t["key"] == format!("\"{key}\""))
            .collect();
        assert_eq!(of_key, [&unlimited(key)], "{key}: {after:?}");
    }
    assert!(after.iter().all(|t| !t.contains_key("tolerationSeconds")));

    // An unlabelled pod on the same connection: allowed, no patch.
    let unlabelled = FIXTURE.replace(
        "\"tether.io/offline\": \"autonomy\"",
        "\"tether.io/offline\": \"no\"",
    );
    assert_ne!(unlabelled, FIXTURE);
    let (status, answer) = post(&mut tls13, unlabelled.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let r = at(&answer, &["response", "allowed"]).expect("allowed");
    assert_eq!(&answer[r], b"true");
    assert!(at(&answer, &["response", "patch"]).is_none());
    assert!(at(&answer, &["response", "patchType"]).is_none());

    // TLS 1.2 is served too; garbage gets a 400 with a reason.
    let mut tls12 = connect(&pki, listen, &[&rustls::version::TLS12]);
    let (status, answer) = post(&mut tls12, b"{\"this is\": not a review");
    assert_eq!(
        tls12.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(status, 400);
    let message = String::from_utf8_lossy(&answer);
    assert!(message.contains("not JSON"), "{message}");

    // A body over 3 MiB is refused before it is read.
    let mut big = connect(&pki, listen, &[&rustls::version::TLS13]);
    let head = format!(
        "POST /mutate-pods HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: {}\r\n\r\n",
        4 << 20
    );
    let (status, _) = request(&mut big, &head, b"");
    assert_eq!(status, 413);

    // Four requests, one pod patched (logged once), two refused.
    assert_eq!(
        cluster::metric(admin, "tether_hub_webhook_requests_total"),
        Some(4.0)
    );
    assert_eq!(
        cluster::metric(admin, "tether_hub_webhook_patched_total"),
        Some(1.0)
    );
    assert_eq!(
        cluster::metric(admin, "tether_hub_webhook_refused_total"),
        Some(2.0)
    );
    assert_eq!(
        hub.proc
            .count_log("autonomy webhook: pod site-a/sensor-reader-7c9d5f-*"),
        1,
        "{}",
        hub.proc.logs()
    );
}

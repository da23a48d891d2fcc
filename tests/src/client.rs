//! A blocking HTTP/1.1 client of the edge's API proxy, the way kubelet and
//! kube-proxy talk to it: one request per connection (or one after another
//! on a connection kept open), and watches read in a thread whose events
//! arrive on a channel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;
use tether_edge::http::{self, BodyDecoder, Limits};
use tether_edge::kube::{self, Encoding};

/// kubelet 1.24's User-Agent.
pub const KUBELET: &str = "kubelet/v1.24.0+0 (linux/amd64) kubernetes/2cc6ddc";
/// kube-proxy 1.24's User-Agent.
pub const KUBE_PROXY: &str = "kube-proxy/v1.24.0 (linux/amd64) kubernetes/2cc6ddc";
/// What kubelet and kube-proxy accept: protobuf first.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf,application/json";
/// JSON only.
pub const JSON: &str = "application/json";

/// How long a request may take.
const WAIT: Duration = Duration::from_secs(30);

/// One answer, body de-chunked.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to the proxy at `proxy` as client `agent` on a
/// fresh connection and reads the whole answer. A body is sent as
/// protobuf or JSON as it looks, a PATCH as a strategic merge patch.
///
/// # Panics
///
/// If the proxy cannot be reached or answers something that is not HTTP.
pub fn call(
    proxy: SocketAddr,
    agent: &str,
    method: &str,
    target: &str,
    accept: &str,
    body: &[u8],
) -> Answer {
    call_with(proxy, agent, method, target, accept, "", body)
}

/// [`call`] with extra header lines, each ending in CRLF (a pod's
/// `Authorization: Bearer ...`).
///
/// # Panics
///
/// As [`call`].
pub fn call_with(
    proxy: SocketAddr,
    agent: &str,
    method: &str,
    target: &str,
    accept: &str,
    extra_headers: &str,
    body: &[u8],
) -> Answer {
    let mut tcp = TcpStream::connect(proxy).expect("connect to the proxy");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let content_type = if body.is_empty() {
        String::new()
    } else if method == "PATCH" {
        // kubelet patches its node and pods' status strategically.
        "Content-Type: application/strategic-merge-patch+json\r\n".into()
    } else if body.starts_with(b"k8s\0") {
        "Content-Type: application/vnd.kubernetes.protobuf\r\n".into()
    } else {
        "Content-Type: application/json\r\n".into()
    };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\nAccept: {accept}\r\n{extra_headers}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).expect("write");
    tcp.write_all(body).expect("write body");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    let (resp, used) = http::parse_response_head(&raw, &Limits::default())
        .expect("an HTTP answer")
        .expect("a whole head");
    let mut decoder = BodyDecoder::new(resp.body_kind(method).expect("framing"));
    let mut out = Vec::new();
    decoder.decode(&raw[used..], &mut out).expect("body");
    Answer {
        status: resp.status,
        body: out,
    }
}

/// Sends one GET as `agent` on `conn`, a connection the caller keeps open
/// across requests (keep-alive, as kubelet does), and reads the whole
/// answer, leaving the connection ready for the next.
///
/// # Panics
///
/// If the connection fails or closes before the answer is complete, or
/// the answer is not HTTP.
pub fn exchange<S: Read + Write>(conn: &mut S, agent: &str, target: &str, accept: &str) -> Answer {
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\nAccept: {accept}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (resp, used) = loop {
        if let Some(h) = http::parse_response_head(&raw, &Limits::default()).expect("head") {
            break h;
        }
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed");
        raw.extend_from_slice(&chunk[..n]);
    };
    raw.drain(..used);
    let mut decoder = BodyDecoder::new(resp.body_kind("GET").expect("framing"));
    let mut body = Vec::new();
    loop {
        let (n, done) = decoder.decode(&raw, &mut body).expect("body");
        raw.drain(..n);
        if done {
            return Answer {
                status: resp.status,
                body,
            };
        }
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed mid-body");
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// One watch event as a client sees it; ordered by its fields in turn.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub event: String,
    /// The object's name.
    pub name: String,
    /// The object's resourceVersion.
    pub resource_version: String,
    /// The object's labels.
    pub labels: Vec<(String, String)>,
    /// Whether the object carries the `k8s.io/initial-events-end`
    /// annotation (`"true"`): the BOOKMARK that ends a streaming list's
    /// initial events.
    pub initial_events_end: bool,
    /// Bytes of the event's protobuf frame (the 4-byte length and the
    /// event), as the apiserver sends it.
    pub frame_bytes: usize,
}

/// Opens a watch through the proxy as `agent`, in protobuf, and reads it
/// in a thread; the receiver ends when the stream does.
///
/// # Panics
///
/// If the proxy cannot be reached, or (in the thread) refuses the watch.
pub fn watch(proxy: SocketAddr, agent: &str, target: &str) -> Receiver<Seen> {
    watch_with(proxy, agent, target, |ev| Seen {
        event: ev.event_type.as_str().to_string(),
        name: ev.meta.name.clone(),
        resource_version: ev.meta.resource_version.clone(),
        labels: ev.meta.labels.clone(),
        initial_events_end: ev.meta.initial_events_end,
        frame_bytes: kube::encode_watch_event(Encoding::Protobuf, ev.event_type, ev.object).len(),
    })
}

/// [`watch`], with each event turned into what the test looks at by `seen`.
///
/// # Panics
///
/// If the proxy cannot be reached, or (in the thread) refuses the watch.
pub fn watch_with<T: Send + 'static>(
    proxy: SocketAddr,
    agent: &str,
    target: &str,
    seen: impl Fn(&kube::WatchEvent<'_>) -> T + Send + 'static,
) -> Receiver<T> {
    let (tx, rx) = mpsc::channel();
    let mut tcp = TcpStream::connect(proxy).expect("connect to the proxy");
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\nAccept: {PROTOBUF}\r\n\r\n"
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
        assert_eq!(resp.status, 200, "the watch was refused");
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
                if tx.send(seen(&ev)).is_err() {
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

/// The next event other than BOOKMARK, within `within`.
///
/// # Panics
///
/// If none arrives in time or the watch ends first.
pub fn next_change(events: &Receiver<Seen>, within: Duration) -> Seen {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ev = events.recv_timeout(left).expect("an event in time");
        if ev.event != "BOOKMARK" {
            return ev;
        }
    }
}

/// Events other than BOOKMARK: collected until `want` have arrived or
/// `within` has passed, then for 300 ms more, so that one too many shows.
pub fn changes(events: &Receiver<Seen>, want: usize, within: Duration) -> Vec<Seen> {
    let mut deadline = std::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut settling = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(ev) if ev.event == "BOOKMARK" => {}
            Ok(ev) => out.push(ev),
            Err(_) => return out,
        }
        if out.len() >= want && !settling {
            settling = true;
            deadline = std::time::Instant::now() + Duration::from_millis(300);
        }
    }
}

/// (namespace, name, bytes) of every item of a list answer, sorted.
///
/// # Panics
///
/// If `body` is not a list in `encoding`.
pub fn items(encoding: Encoding, body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let list = kube::parse_list(encoding, body).expect("a list");
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

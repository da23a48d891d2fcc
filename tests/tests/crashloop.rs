//! Crash loop (issue 3): `kill -9` of tether-edge, many times, while its
//! cache is being written hard; every restart must open the cache and serve a
//! consistent view.
//!
//! Issue 3 asks that "a `kill -9` at any moment, or a power cut, leaves a
//! cache that opens and serves a consistent view; a corrupt or unreadable
//! cache file is moved aside with a log line and rebuilt, never a crash
//! loop". The cache's own unit test kills a process that calls the store
//! directly; this one kills the real binary, in direct mode (no hub), while
//! the proxy records LISTs and applies watch events the way it does for
//! kubelet:
//!
//! - the stand-in kube-apiserver holds some hundreds of pods on edge-1;
//! - two kubelet-like clients (protobuf and JSON) list the node's pods
//!   through the edge and keep a watch open from the list's
//!   resourceVersion. When the edge dies they resume the watch from the last
//!   resourceVersion they saw or list again (both are what client-go's
//!   reflector does), and now and then they "restart" (drop the watch and
//!   list again) while the edge lives;
//! - a writer keeps changing those pods upstream (label changes, deletions,
//!   re-creations), so the edge writes to its cache all the time, and logs
//!   every change with the resourceVersion the stand-in gave it;
//! - the edge is killed with SIGKILL after seeded random delays and started
//!   again, over and over. Every few kills it is started with the apiserver
//!   down (and the apiserver's history compacted meanwhile, so the watches
//!   that resume go through the edge's re-list path), and its offline LIST
//!   answers are checked. The kill before each of those comes the moment a
//!   client has a whole LIST answer, when the edge may still be recording
//!   it: a moment random delays hit only now and then.
//!
//! A view may be older than the newest state; it must never be a mix. An
//! offline LIST answer (the checker's, and any the clients get) must parse,
//! every item must parse, and its set of (name, resourceVersion, test label)
//! must equal the upstream state at the list's resourceVersion, rebuilt from
//! the writer's log. A view once served must not vanish or go back in time
//! (a `kill -9` loses no commit). The edge must come up every time, stay up
//! until it is killed, and never move the cache aside after a plain kill.
//!
//! The second test overwrites the cache file with garbage: the edge logs
//! that it moved it aside, starts with an empty cache, serves online and
//! then offline from the rebuilt cache.
//!
//! A failure names the view, its resourceVersion, the pods that differ with
//! their upstream history, and what the client and the edge did last.
//! `CRASHLOOP_EDGE_LOG=debug` runs the edge with debug logs.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tether_edge::http::{self, BodyDecoder, Limits};
use tether_edge::kube::{self, Encoding, EventType};
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, Proc};

const KUBELET: &str = "kubelet/v1.24.0+0 (linux/amd64) kubernetes/2cc6ddc";
const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";
/// The recorded pod the test's pods are cloned from, and its namespace.
const TEMPLATE: (&str, &str) = ("edge-apps", "api-m5ghvwrtzm-dcwg6");
/// Pods the test adds on edge-1 (the recording has 19 more).
const SEEDED: usize = 300;
/// The label the writer sets: `r<resourceVersion of that change>`.
const LABEL: &str = "tether-crash";
/// Kills the loop aims for, and the fewest that pass.
const KILLS: u32 = 40;
const MIN_KILLS: u32 = 25;
/// Every this many kills, the restart is with the apiserver down.
const OFFLINE_EVERY: u32 = 4;
/// Time the kill loop may take (the whole test stays under ~40 s).
const LOOP_BUDGET: Duration = Duration::from_secs(25);
/// How long a started edge may take to listen.
const UP: Duration = Duration::from_secs(15);
/// The Audit-Id of answers served from the cache (`proxy::answer_offline`).
const OFFLINE_AUDIT_ID: &str = "tether-edge-offline";
/// The cache's move-aside warning (`cache::store::Store::open`):
/// "cache: {path} is unusable ({reason}); moved it to {aside} and starting
/// with an empty cache".
const MOVED_ASIDE: &str = "is unusable (";
const EMPTY_CACHE: &str = "and starting with an empty cache";
/// Log lines saying the cache failed; none may appear after a plain kill.
const CACHE_FAILURES: [&str; 5] = [
    MOVED_ASIDE,
    "relaying without a cache",
    "cache read failed",
    "cannot apply a watch event",
    "cannot record the re-list",
];

/// A small seeded xorshift64* generator: the same choices every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept(enc: Encoding) -> &'static str {
    match enc {
        Encoding::Protobuf => "application/vnd.kubernetes.protobuf,application/json",
        Encoding::Json => "application/json",
    }
}

// ------------------------------------------------------------------ HTTP

/// A whole answer: status, whether the edge served it from its cache, body
/// (de-chunked).
struct Answer {
    status: u16,
    offline: bool,
    body: Vec<u8>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e.to_string())
}

/// One GET on `s` (`Connection: close`), read until its framing says the
/// body is complete. A body cut short (the edge was killed) is an error.
fn exchange<S: Read + Write>(s: &mut S, target: &str, enc: Encoding) -> io::Result<Answer> {
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {KUBELET}\r\nAccept: {}\r\nConnection: close\r\n\r\n",
        accept(enc)
    );
    s.write_all(head.as_bytes())?;
    s.flush()?;
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (resp, used) = loop {
        if let Some(h) = http::parse_response_head(&raw, &Limits::default()).map_err(invalid)? {
            break h;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    raw.drain(..used);
    let mut decoder = BodyDecoder::new(resp.body_kind("GET").map_err(invalid)?);
    let mut body = Vec::new();
    loop {
        let (n, done) = decoder.decode(&raw, &mut body).map_err(invalid)?;
        raw.drain(..n);
        if done {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            decoder.finish_eof().map_err(invalid)?;
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer {
        status: resp.status,
        offline: resp.header("Audit-Id") == Some(OFFLINE_AUDIT_ID),
        body,
    })
}

/// One GET through the proxy on a fresh connection.
fn get(proxy: SocketAddr, target: &str, enc: Encoding) -> io::Result<Answer> {
    let mut tcp = TcpStream::connect(proxy)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(&mut tcp, target, enc)
}

/// The node's pods straight from the stand-in (TLS, the node's certificate),
/// not through the edge: the state before the writer starts.
fn direct_list(pki: &Pki, standin: &StandIn) -> Vec<u8> {
    let (cert, key) = pki.node_cert("system:node:edge-1");
    let config = tether_link::tls::client_config(&pki.ca, Some((&cert, &key))).expect("tls");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("tls connection");
    let tcp = TcpStream::connect(standin.addr()).expect("connect to the stand-in");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let answer = exchange(&mut tls, PODS, Encoding::Json).expect("LIST from the stand-in");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.body
}

// ------------------------------------------------------------------ upstream history

/// One pod as the test tracks it: resourceVersion and the test label.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pod {
    rv: u64,
    label: Option<String>,
}

impl std::fmt::Display for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.label {
            Some(l) => write!(f, "rv {} label {l}", self.rv),
            None => write!(f, "rv {} no label", self.rv),
        }
    }
}

/// The upstream state of edge-1's pods over time: a base state taken
/// before any write, then every change with its resourceVersion, in order.
struct History {
    base_rv: u64,
    /// "namespace/name" → pod.
    base: BTreeMap<String, Pod>,
    /// (rv, "namespace/name", the pod after the change; `None`: deleted).
    changes: Vec<(u64, String, Option<Pod>)>,
}

impl History {
    fn last_rv(&self) -> u64 {
        self.changes.last().map_or(self.base_rv, |c| c.0)
    }

    /// The state at resourceVersion `rv`.
    fn at(&self, rv: u64) -> BTreeMap<String, Pod> {
        let mut state = self.base.clone();
        for (_, key, after) in self.changes.iter().take_while(|c| c.0 <= rv) {
            match after {
                Some(p) => state.insert(key.clone(), p.clone()),
                None => state.remove(key),
            };
        }
        state
    }

    /// The changes of `key` near `rv`, for failure messages.
    fn story(&self, key: &str, rv: u64) -> String {
        let mine: Vec<String> = self
            .changes
            .iter()
            .filter(|c| c.1 == key)
            .map(|(at, _, after)| match after {
                Some(p) => format!("{at}: {p}"),
                None => format!("{at}: deleted"),
            })
            .collect();
        let cut = self
            .changes
            .iter()
            .filter(|c| c.1 == key && c.0 <= rv)
            .count();
        let from = cut.saturating_sub(2);
        let to = (cut + 2).min(mine.len());
        format!("[{}]", mine[from..to].join(", "))
    }
}

/// Checks a LIST answer against the upstream history: it parses, every item
/// parses on its own, and it is exactly the state at its resourceVersion.
/// Returns (resourceVersion, items).
fn check_view(enc: Encoding, body: &[u8], history: &History) -> Result<(u64, usize), String> {
    let list = kube::parse_list(enc, body).map_err(|e| format!("does not parse: {e}"))?;
    if (list.api_version.as_str(), list.kind.as_str()) != ("v1", "PodList") {
        return Err(format!("is a {}/{}", list.api_version, list.kind));
    }
    if !list.meta.continue_token.is_empty() {
        return Err("has a continue token".into());
    }
    let rv: u64 = list
        .meta
        .resource_version
        .parse()
        .map_err(|_| format!("has resourceVersion {:?}", list.meta.resource_version))?;
    if rv < history.base_rv || rv > history.last_rv() {
        return Err(format!(
            "has resourceVersion {rv}, outside what the apiserver handed out during the test ({}..={})",
            history.base_rv,
            history.last_rv()
        ));
    }
    let mut got = BTreeMap::new();
    for (i, item) in list.items.iter().enumerate() {
        let key = format!("{}/{}", item.meta.namespace, item.meta.name);
        let whole = kube::item_to_watch_object(enc, "v1", "Pod", item.bytes);
        let object = kube::parse_object(enc, &whole)
            .map_err(|e| format!("item {i} ({key}) does not parse as a Pod: {e}"))?;
        if object.meta.name != item.meta.name
            || object.meta.resource_version != item.meta.resource_version
        {
            return Err(format!("item {i} ({key}) reads differently on its own"));
        }
        let pod = Pod {
            rv: item.meta.resource_version.parse().map_err(|_| {
                format!(
                    "item {key} has resourceVersion {:?}",
                    item.meta.resource_version
                )
            })?,
            label: item
                .meta
                .labels
                .iter()
                .find(|(k, _)| k == LABEL)
                .map(|(_, v)| v.clone()),
        };
        if got.insert(key.clone(), pod).is_some() {
            return Err(format!("holds {key} twice"));
        }
    }
    let want = history.at(rv);
    let mut diffs = Vec::new();
    for (key, w) in &want {
        match got.get(key) {
            None => diffs.push(format!(
                "{key} missing (at rv {rv} it exists: {w}; its changes {})",
                history.story(key, rv)
            )),
            Some(g) if g != w => diffs.push(format!(
                "{key} is {g}, at rv {rv} it is {w}{} (its changes {})",
                if g.rv > rv {
                    ": newer than the list's resourceVersion"
                } else {
                    ": an older state"
                },
                history.story(key, rv)
            )),
            Some(_) => {}
        }
    }
    for (key, g) in &got {
        if !want.contains_key(key) {
            diffs.push(format!(
                "{key} is there ({g}) but at rv {rv} it does not exist (its changes {})",
                history.story(key, rv)
            ));
        }
    }
    if !diffs.is_empty() {
        // The upstream changes (up to the list's resourceVersion) the view
        // does not reflect: the ones after what each differing item shows.
        let mut missed: Vec<u64> = Vec::new();
        for key in want.keys().chain(got.keys()) {
            if want.get(key) == got.get(key) {
                continue;
            }
            // What the view shows of the pod is its state at `shown`; a
            // pod it lacks, take its last change up to the list's rv.
            let shown = got.get(key).map_or_else(
                || {
                    history
                        .changes
                        .iter()
                        .rev()
                        .find(|c| &c.1 == key && c.0 <= rv)
                        .map_or(0, |c| c.0 - 1)
                },
                |g| g.rv,
            );
            missed.extend(
                history
                    .changes
                    .iter()
                    .filter(|c| &c.1 == key && c.0 > shown && c.0 <= rv)
                    .map(|c| c.0),
            );
        }
        missed.sort_unstable();
        missed.dedup();
        let span = match (missed.first(), missed.last()) {
            (Some(a), Some(b)) => format!(
                "; it misses {} upstream changes between rv {a} and rv {b}",
                missed.len()
            ),
            _ => String::new(),
        };
        let n = diffs.len();
        diffs.truncate(8);
        return Err(format!(
            "at resourceVersion {rv} has {} items, the apiserver had {} then{span}; {n} differences: {}",
            got.len(),
            want.len(),
            diffs.join("; ")
        ));
    }
    Ok((rv, got.len()))
}

// ------------------------------------------------------------------ shared state

/// What the test's threads share.
struct Shared {
    stop: AtomicBool,
    history: Mutex<History>,
    failures: Mutex<Vec<String>>,
    writes: AtomicU64,
    lists: AtomicU64,
    events: AtomicU64,
    offline_lists: AtomicU64,
    watch_resumes: AtomicU64,
    client_restarts: AtomicU64,
    /// Set by the kill loop: the next client to get a whole LIST answer
    /// online says so in `listed`, and the edge is killed at once.
    armed: AtomicBool,
    listed: AtomicBool,
    /// The edge's current run (1 = first start), for the clients' traces.
    run: AtomicU64,
    started: Instant,
    /// What each client did (index: 0 protobuf, 1 JSON), for failure messages.
    traces: Mutex<[Vec<String>; 2]>,
}

fn slot(enc: Encoding) -> usize {
    match enc {
        Encoding::Protobuf => 0,
        Encoding::Json => 1,
    }
}

impl Shared {
    fn fail(&self, what: String) {
        eprintln!("crashloop: FAILURE: {what}");
        lock(&self.failures).push(what);
    }

    /// Notes what client `enc` did.
    fn trace(&self, enc: Encoding, what: String) {
        let line = format!(
            "{:7.3}s edge#{} {enc:?} client: {what}",
            self.started.elapsed().as_secs_f64(),
            self.run.load(Ordering::SeqCst)
        );
        lock(&self.traces)[slot(enc)].push(line);
    }

    /// Notes a kill or restart in both clients' traces, so they show what
    /// happened between.
    fn trace_edge(&self, what: &str) {
        let line = format!(
            "{:7.3}s edge#{} {what}",
            self.started.elapsed().as_secs_f64(),
            self.run.load(Ordering::SeqCst)
        );
        for t in lock(&self.traces).iter_mut() {
            t.push(line.clone());
        }
    }

    /// The last lines of client `enc`'s trace.
    fn trace_tail(&self, enc: Encoding) -> String {
        let traces = lock(&self.traces);
        let t = &traces[slot(enc)];
        t[t.len().saturating_sub(50)..].join("\n")
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Sets `stop` when dropped, also while a failed assertion unwinds, so the
/// scoped threads end and the failure is reported instead of hanging.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------ upstream writer

fn seeded_name(i: usize) -> String {
    // As long as the template's name, so the protobuf lengths stay valid.
    let name = format!("crash-pod-{i:010}");
    assert_eq!(name.len(), TEMPLATE.1.len());
    name
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The recorded pod cloned under the name of seeded pod `i`, both encodings.
fn clone_pod(template: &(Vec<u8>, Vec<u8>), i: usize) -> (Vec<u8>, Vec<u8>) {
    let (from, to) = (TEMPLATE.1.as_bytes(), seeded_name(i));
    (
        replace(&template.0, from, to.as_bytes()),
        replace(&template.1, from, to.as_bytes()),
    )
}

/// Changes the seeded pods upstream until stopped: label changes, deletions
/// and re-creations, a few milliseconds apart with bursts. Holds the
/// history's lock across each change, so whoever reads the history sees
/// every change the stand-in has committed.
fn writer(standin: &StandIn, shared: &Shared, template: &(Vec<u8>, Vec<u8>), seed: u64) {
    let mut rng = Rng::new(seed);
    let mut present = vec![true; SEEDED];
    let ns = TEMPLATE.0;
    while !shared.stopped() {
        let i = rng.below(SEEDED as u64) as usize;
        let name = seeded_name(i);
        let roll = rng.below(100);
        let mut history = lock(&shared.history);
        let expect = standin.resource_version() + 1;
        let (rv, after) = if present[i] && roll < 60 {
            let label = format!("r{expect}");
            let rv = standin
                .modify_label(Kind::Pod, ns, &name, LABEL, &label)
                .expect("modify_label");
            (Some(rv), Some(label))
        } else if present[i] && roll < 80 {
            present[i] = false;
            (standin.delete(Kind::Pod, ns, &name), None)
        } else {
            present[i] = true;
            let (json, pb) = clone_pod(template, i);
            let rv = standin.put(Kind::Pod, ns, &name, &json, &pb).expect("put");
            (Some(rv), None)
        };
        if rv != Some(expect) {
            drop(history);
            shared.fail(format!(
                "writer: the stand-in gave {name} rv {rv:?}, expected {expect}: someone else writes"
            ));
            return;
        }
        history.changes.push((
            expect,
            format!("{ns}/{name}"),
            present[i].then_some(Pod {
                rv: expect,
                label: after,
            }),
        ));
        drop(history);
        shared.writes.fetch_add(1, Ordering::Relaxed);
        if rng.below(8) != 0 {
            thread::sleep(Duration::from_millis(2 + rng.below(8)));
        }
    }
}

// ------------------------------------------------------------------ kubelet-like client

/// How a watch ended.
#[derive(Debug)]
enum WatchEnd {
    /// No connection to the edge (it is down or not listening yet).
    NoConnection,
    /// The stream broke (the edge died).
    Broken,
    /// An ERROR event or a refusal: list again.
    Error,
    /// The client chose to restart (drop the watch, list again).
    Restart,
    /// The test is over.
    Stop,
}

/// What one watch delivered.
#[derive(Default)]
struct Delivered {
    /// Events other than bookmarks.
    events: u64,
    bookmarks: u64,
    /// Events whose resourceVersion is below the one before.
    backwards: u64,
}

/// Watches the node's pods through the edge from `rv`, updating `rv` from
/// every event (bookmarks too), until the stream ends or `restart_after`.
fn watch(
    proxy: SocketAddr,
    enc: Encoding,
    rv: &mut String,
    restart_after: Option<Duration>,
    shared: &Shared,
    got: &mut Delivered,
) -> WatchEnd {
    let Ok(mut tcp) = TcpStream::connect(proxy) else {
        return WatchEnd::NoConnection;
    };
    let target = format!(
        "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion={rv}&timeoutSeconds=300&watch=true"
    );
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {KUBELET}\r\nAccept: {}\r\n\r\n",
        accept(enc)
    );
    if tcp.write_all(head.as_bytes()).is_err()
        || tcp
            .set_read_timeout(Some(Duration::from_millis(100)))
            .is_err()
    {
        return WatchEnd::Broken;
    }
    let restart_at = restart_after.map(|d| Instant::now() + d);
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Set once the answer's head is in.
    let mut body: Option<BodyDecoder> = None;
    let mut events = kube::WatchDecoder::new(enc, 1 << 24);
    loop {
        if shared.stopped() {
            return WatchEnd::Stop;
        }
        if restart_at.is_some_and(|at| Instant::now() >= at) {
            return WatchEnd::Restart;
        }
        match tcp.read(&mut chunk) {
            Ok(0) => return WatchEnd::Broken,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return WatchEnd::Broken,
        }
        if body.is_none() {
            match http::parse_response_head(&raw, &Limits::default()) {
                Ok(Some((resp, used))) => {
                    raw.drain(..used);
                    if resp.status != 200 {
                        return WatchEnd::Error;
                    }
                    let Ok(kind) = resp.body_kind("GET") else {
                        return WatchEnd::Error;
                    };
                    body = Some(BodyDecoder::new(kind));
                }
                Ok(None) => continue,
                Err(_) => return WatchEnd::Error,
            }
        }
        let Some(decoder) = body.as_mut() else {
            continue;
        };
        let mut data = Vec::new();
        let Ok((n, done)) = decoder.decode(&raw, &mut data) else {
            return WatchEnd::Broken;
        };
        raw.drain(..n);
        events.push(&data);
        loop {
            match events.next_event() {
                Ok(Some(ev)) => {
                    if ev.event_type == EventType::Error {
                        return WatchEnd::Error;
                    }
                    if ev.event_type == EventType::Bookmark {
                        got.bookmarks += 1;
                    } else {
                        got.events += 1;
                        shared.events.fetch_add(1, Ordering::Relaxed);
                    }
                    if !ev.meta.resource_version.is_empty() {
                        let (old, new) =
                            (rv.parse::<u64>(), ev.meta.resource_version.parse::<u64>());
                        if let (Ok(old), Ok(new)) = (old, new) {
                            got.backwards += u64::from(new < old);
                        }
                        rv.clone_from(&ev.meta.resource_version);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.fail(format!("{enc:?} client: undecodable watch event: {e}"));
                    return WatchEnd::Error;
                }
            }
        }
        if done {
            return WatchEnd::Broken;
        }
    }
}

/// A kubelet-like client: lists the node's pods, then watches from the
/// list's resourceVersion. When the stream breaks it resumes from the last
/// resourceVersion it saw or lists again (seeded coin), and now and then
/// restarts while the edge lives. Every LIST answer the edge serves from its
/// cache is checked against the history.
fn kubelet(proxy: SocketAddr, enc: Encoding, shared: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut rv: Option<String> = None;
    while !shared.stopped() {
        let Some(from) = rv.as_mut() else {
            match get(proxy, PODS, enc) {
                Ok(a) if a.status == 200 => {
                    if !a.offline && shared.armed.swap(false, Ordering::SeqCst) {
                        shared.listed.store(true, Ordering::SeqCst);
                    }
                    if a.offline {
                        shared.offline_lists.fetch_add(1, Ordering::Relaxed);
                        let history = lock(&shared.history);
                        if let Err(e) = check_view(enc, &a.body, &history) {
                            drop(history);
                            shared.fail(format!(
                                "{enc:?} client: an offline LIST {e}\nwhat the client did last:\n{}",
                                shared.trace_tail(enc)
                            ));
                        }
                    }
                    match kube::parse_list(enc, &a.body) {
                        Ok(list) => {
                            shared.lists.fetch_add(1, Ordering::Relaxed);
                            shared.trace(
                                enc,
                                format!(
                                    "LIST at rv {} ({} items{})",
                                    list.meta.resource_version,
                                    list.items.len(),
                                    if a.offline { ", from the cache" } else { "" }
                                ),
                            );
                            rv = Some(list.meta.resource_version.clone());
                        }
                        Err(e) => shared.fail(format!(
                            "{enc:?} client: a whole 200 LIST does not parse ({e}); offline: {}",
                            a.offline
                        )),
                    }
                }
                // Not up yet, killed mid-answer, or offline with nothing
                // cached yet.
                _ => thread::sleep(Duration::from_millis(20)),
            }
            continue;
        };
        let restart = (rng.below(8) == 0).then(|| Duration::from_millis(50 + rng.below(1500)));
        let start = from.clone();
        let run = shared.run.load(Ordering::SeqCst);
        let mut got = Delivered::default();
        let end = watch(proxy, enc, from, restart, shared, &mut got);
        if !matches!(end, WatchEnd::NoConnection) {
            shared.trace(
                enc,
                format!(
                    "(opened on edge#{run}) watch from rv {start}: {} events ({} with a lower rv than the one before), {} bookmarks, last rv {from}; {end:?}",
                    got.events, got.backwards, got.bookmarks
                ),
            );
        }
        match end {
            WatchEnd::NoConnection => thread::sleep(Duration::from_millis(10)),
            WatchEnd::Broken => {
                if rng.below(2) == 0 {
                    rv = None;
                } else {
                    shared.watch_resumes.fetch_add(1, Ordering::Relaxed);
                }
            }
            WatchEnd::Error => rv = None,
            WatchEnd::Restart => {
                shared.client_restarts.fetch_add(1, Ordering::Relaxed);
                rv = None;
            }
            WatchEnd::Stop => return,
        }
    }
}

// ------------------------------------------------------------------ the edge

/// The edge's files and addresses; each run of the binary is a [`Proc`].
struct Edge {
    config: String,
    proxy: SocketAddr,
    cache_dir: PathBuf,
    runs: u32,
}

impl Edge {
    /// Direct mode (no hub: the hub address is a loopback port nobody
    /// listens on), cache in its own folder.
    fn new(pki: &Pki, standin: &StandIn, tag: &str) -> Edge {
        let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let no_hub: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let (cert, key) = pki.node_cert("system:node:edge-1");
        let cache_dir = pki.dir.join(format!("{tag}-cache"));
        let text = format!(
            "node = \"edge-1\"\nlog_level = \"{}\"\n[hub]\naddress = \"{no_hub}\"\nplaintext = true\n[link]\nbackoff_initial = \"1s\"\nbackoff_max = \"10s\"\n[apiserver]\ndirect = \"{}\"\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n",
            std::env::var("CRASHLOOP_EDGE_LOG").unwrap_or_else(|_| "info".into()),
            standin.addr(),
            pki.ca.display(),
            cert.display(),
            key.display(),
            cache_dir.join("cache.db").display()
        );
        let config = pki
            .write(&format!("{tag}-edge.toml"), &text)
            .to_string_lossy()
            .into_owned();
        Edge {
            config,
            proxy,
            cache_dir,
            runs: 0,
        }
    }

    fn cache(&self) -> PathBuf {
        self.cache_dir.join("cache.db")
    }

    /// Starts the edge and waits until its proxy listens.
    fn start(&mut self) -> Proc {
        self.runs += 1;
        let edge = Proc::start(
            &format!("edge#{}", self.runs),
            &bin("tether-edge"),
            &["--config", &self.config],
        );
        assert!(
            edge.wait_for_log("API proxy on", UP),
            "run {} of the edge did not come up within {UP:?}:\n{}",
            self.runs,
            edge.logs()
        );
        edge
    }

    /// Files the cache moved aside.
    fn moved_aside(&self) -> Vec<PathBuf> {
        corrupt_files(&self.cache_dir)
    }
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".corrupt-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The lines of `logs` holding any of `needles`.
fn lines_with<'a>(logs: &'a str, needles: &[&str]) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

/// Kills the edge (it must still be running: it never exits by itself) and
/// checks its log for cache failures.
fn kill(edge: &mut Proc, what: &str) {
    assert!(
        edge.is_running(),
        "{what}: the edge exited by itself before the kill:\n{}",
        edge.logs()
    );
    edge.kill();
    let logs = edge.logs();
    let bad = lines_with(&logs, &CACHE_FAILURES);
    assert!(
        bad.is_empty(),
        "{what}: the edge's cache failed:\n{}\nwhole log:\n{logs}",
        bad.join("\n")
    );
}

/// The last requests the edge sent the stand-in in encoding `enc`.
fn upstream_tail(standin: &StandIn, enc: Encoding) -> String {
    let mine: Vec<String> = standin
        .requests()
        .into_iter()
        .filter(|r| r.accept == accept(enc))
        .map(|r| r.target)
        .collect();
    mine[mine.len().saturating_sub(30)..].join("\n")
}

/// The newest view the checker saw per encoding: (resourceVersion, kill).
type Seen = [Option<(u64, u32)>; 2];

/// With the apiserver down: LISTs in both encodings must come from the
/// cache and be consistent; a view once seen must still be there, and not
/// older. Returns how many views were checked.
fn check_offline(
    edge: &Edge,
    standin: &StandIn,
    shared: &Shared,
    seen: &mut Seen,
    kill_no: u32,
    require: bool,
) -> usize {
    let mut checked = 0;
    for (slot, enc) in [Encoding::Protobuf, Encoding::Json].into_iter().enumerate() {
        let a = get(edge.proxy, PODS, enc)
            .unwrap_or_else(|e| panic!("after kill {kill_no}: offline {enc:?} LIST failed: {e}"));
        match a.status {
            200 => {
                assert!(
                    a.offline,
                    "after kill {kill_no}: the apiserver is down, yet the {enc:?} LIST was not served from the cache"
                );
                let history = lock(&shared.history);
                let (rv, items) = check_view(enc, &a.body, &history).unwrap_or_else(|e| {
                    panic!(
                        "after kill {kill_no}: the cached {enc:?} view {e}\nwhat the {enc:?} client did last:\n{}\nthe edge's last {enc:?} requests upstream:\n{}",
                        shared.trace_tail(enc),
                        upstream_tail(standin, enc)
                    )
                });
                drop(history);
                if let Some((prev, at)) = seen[slot] {
                    assert!(
                        rv >= prev,
                        "after kill {kill_no}: the cached {enc:?} view went back in time: rv {rv}, after kill {at} it was at rv {prev}"
                    );
                }
                eprintln!(
                    "crashloop: after kill {kill_no}: cached {enc:?} view at rv {rv}, {items} pods: consistent"
                );
                seen[slot] = Some((rv, kill_no));
                checked += 1;
            }
            503 => {
                assert!(
                    !require,
                    "after kill {kill_no}: no cached {enc:?} view at the end of the test"
                );
                if let Some((prev, at)) = seen[slot] {
                    panic!(
                        "after kill {kill_no}: the cached {enc:?} view is gone (after kill {at} it was there at rv {prev})"
                    );
                }
                eprintln!("crashloop: after kill {kill_no}: no cached {enc:?} view yet");
            }
            s => panic!(
                "after kill {kill_no}: offline {enc:?} LIST answered {s}: {}",
                String::from_utf8_lossy(&a.body)
            ),
        }
    }
    checked
}

#[test]
fn kill_9_in_a_loop_leaves_a_consistent_cache() {
    // Build (or find) the binary first, so a build is not counted in the
    // kill loop's time.
    bin("tether-edge");
    let started = Instant::now();
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let template = standin
        .object(Kind::Pod, TEMPLATE.0, TEMPLATE.1)
        .expect("the recorded pod");
    for i in 0..SEEDED {
        let (json, pb) = clone_pod(&template, i);
        standin
            .put(Kind::Pod, TEMPLATE.0, &seeded_name(i), &json, &pb)
            .expect("seed a pod");
    }
    let base_body = direct_list(&pki, &standin);
    let base_list = kube::parse_list(Encoding::Json, &base_body).expect("the stand-in's list");
    let base_rv: u64 = base_list.meta.resource_version.parse().expect("list rv");
    assert_eq!(base_rv, standin.resource_version());
    let base: BTreeMap<String, Pod> = base_list
        .items
        .iter()
        .map(|i| {
            let pod = Pod {
                rv: i.meta.resource_version.parse().expect("item rv"),
                label: None,
            };
            (format!("{}/{}", i.meta.namespace, i.meta.name), pod)
        })
        .collect();
    assert_eq!(base.len(), SEEDED + 19, "pods on edge-1 at the start");
    let shared = Shared {
        stop: AtomicBool::new(false),
        history: Mutex::new(History {
            base_rv,
            base,
            changes: Vec::new(),
        }),
        failures: Mutex::new(Vec::new()),
        writes: AtomicU64::new(0),
        lists: AtomicU64::new(0),
        events: AtomicU64::new(0),
        offline_lists: AtomicU64::new(0),
        watch_resumes: AtomicU64::new(0),
        client_restarts: AtomicU64::new(0),
        armed: AtomicBool::new(false),
        listed: AtomicBool::new(false),
        run: AtomicU64::new(0),
        started,
        traces: Mutex::new([Vec::new(), Vec::new()]),
    };
    let mut edge = Edge::new(&pki, &standin, "crashloop");
    let mut rng = Rng::new(0x7e7e_c4a5_1007);
    let mut seen: Seen = [None, None];
    let mut kills = 0u32;
    let mut kills_after_list = 0u32;
    let mut offline_restarts = 0u32;
    let mut views_checked = 0usize;
    let mut delays = Vec::new();

    thread::scope(|s| {
        let stop = StopOnDrop(&shared.stop);
        let (sh, st, tp) = (&shared, &standin, &template);
        s.spawn(move || writer(st, sh, tp, 0x5eed_0001));
        let proxy = edge.proxy;
        s.spawn(move || kubelet(proxy, Encoding::Protobuf, sh, 0x5eed_0002));
        s.spawn(move || kubelet(proxy, Encoding::Json, sh, 0x5eed_0003));

        let start = |edge: &mut Edge| {
            shared.run.store(u64::from(edge.runs + 1), Ordering::SeqCst);
            let proc = edge.start();
            shared.trace_edge("up");
            proc
        };
        let loop_start = Instant::now();
        let mut proc = start(&mut edge);
        while kills < KILLS && loop_start.elapsed() < LOOP_BUDGET {
            let up = Instant::now();
            // The kill before each restart with the apiserver down comes
            // the moment a client has a whole LIST answer (or after 2 s):
            // the edge may not have recorded it yet. Other kills come at a
            // random moment: while the clients list and the proxy records
            // right after the start, in the thick of the watch events, or
            // after a while.
            let armed = (kills + 1).is_multiple_of(OFFLINE_EVERY);
            if armed {
                shared.listed.store(false, Ordering::SeqCst);
                shared.armed.store(true, Ordering::SeqCst);
                while !shared.listed.load(Ordering::SeqCst) && up.elapsed() < Duration::from_secs(2)
                {
                    thread::sleep(Duration::from_millis(1));
                }
                shared.armed.store(false, Ordering::SeqCst);
            } else {
                let delay = Duration::from_millis(match rng.below(100) {
                    0..20 => rng.below(40),
                    20..70 => 40 + rng.below(360),
                    _ => 400 + rng.below(700),
                });
                thread::sleep(delay);
            }
            let delay = up.elapsed();
            delays.push(delay);
            let failures = lock(&shared.failures).clone();
            assert!(failures.is_empty(), "{}", failures.join("\n"));
            kills += 1;
            let when = if armed && shared.listed.load(Ordering::SeqCst) {
                kills_after_list += 1;
                "right after a client got a LIST answer"
            } else {
                "at a random moment"
            };
            kill(
                &mut proc,
                &format!("kill {kills} ({delay:?} after it was up)"),
            );
            shared.trace_edge(&format!(
                "killed (kill {kills}, {delay:?} after it was up, {when})"
            ));
            assert_eq!(edge.moved_aside(), Vec::<PathBuf>::new(), "kill {kills}");
            if kills.is_multiple_of(OFFLINE_EVERY) {
                // The apiserver is away when the edge comes back; its
                // history is compacted meanwhile, so the watches that
                // resume later go through the edge's re-list.
                standin.set_down(true);
                standin.compact();
                proc = start(&mut edge);
                views_checked += check_offline(&edge, &standin, &shared, &mut seen, kills, false);
                offline_restarts += 1;
                standin.set_down(false);
            } else {
                proc = start(&mut edge);
            }
        }
        // Stop the load, then one last restart with the apiserver down.
        drop(stop);
        kill(&mut proc, "the last kill");
        standin.set_down(true);
        let last = start(&mut edge);
        views_checked += check_offline(&edge, &standin, &shared, &mut seen, kills + 1, true);
        drop(last);
    });

    let failures = lock(&shared.failures).clone();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(edge.moved_aside(), Vec::<PathBuf>::new());
    let took = started.elapsed();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mean = delays.iter().sum::<Duration>() / u32::try_from(delays.len().max(1)).unwrap_or(1);
    eprintln!(
        "crashloop: {kills} kills ({kills_after_list} right after a client's LIST, mean delay {mean:?}), {} edge starts, {offline_restarts} restarts with the apiserver down, {views_checked} cached views checked, {} offline LISTs checked by the clients; {} upstream writes, {} client LISTs, {} watch events, {} watch resumes, {} client restarts; {took:?} in all",
        edge.runs,
        load(&shared.offline_lists),
        load(&shared.writes),
        load(&shared.lists),
        load(&shared.events),
        load(&shared.watch_resumes),
        load(&shared.client_restarts),
    );
    assert!(
        kills >= MIN_KILLS,
        "only {kills} kills in {LOOP_BUDGET:?} (want {MIN_KILLS})"
    );
    assert!(
        views_checked >= 4,
        "only {views_checked} cached views were checked"
    );
    assert!(load(&shared.writes) > 1000, "the writer hardly wrote");
    assert!(load(&shared.events) > 1000, "the clients saw few events");
}

#[test]
fn a_garbage_cache_file_is_moved_aside_and_rebuilt() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let mut edge = Edge::new(&pki, &standin, "garbage");
    std::fs::create_dir_all(&edge.cache_dir).expect("cache folder");
    let garbage: Vec<u8> = (0..16_384u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(edge.cache(), &garbage).expect("write garbage");

    let proc = edge.start();
    let logs = proc.logs();
    let warned = lines_with(&logs, &[MOVED_ASIDE]);
    assert!(
        warned.len() == 1 && warned[0].contains(EMPTY_CACHE),
        "the move-aside was not logged once:\n{logs}"
    );
    let aside = edge.moved_aside();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        std::fs::read(&aside[0]).expect("moved file") == garbage,
        "the moved-aside file is not the garbage written"
    );

    // Online as usual; the answer is recorded in the new cache.
    let online = get(edge.proxy, PODS, Encoding::Protobuf).expect("online LIST");
    assert_eq!(online.status, 200, "{}", proc.logs());
    assert!(!online.offline);
    let online = kube::parse_list(Encoding::Protobuf, &online.body).expect("list");
    assert_eq!(online.items.len(), 19);
    // Offline, the rebuilt cache answers. (A connection the proxy pooled
    // may still finish one exchange as the stand-in goes down.)
    standin.set_down(true);
    let mut offline = get(edge.proxy, PODS, Encoding::Protobuf).expect("offline LIST");
    if !offline.offline {
        offline = get(edge.proxy, PODS, Encoding::Protobuf).expect("offline LIST");
    }
    assert_eq!(offline.status, 200, "{}", proc.logs());
    assert!(offline.offline, "not served from the cache");
    let offline = kube::parse_list(Encoding::Protobuf, &offline.body).expect("list");
    let ids = |l: &kube::List<'_>| {
        let mut v: Vec<(String, String)> = l
            .items
            .iter()
            .map(|i| (i.meta.name.clone(), i.meta.resource_version.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&offline), ids(&online));
    assert_eq!(offline.meta.resource_version, online.meta.resource_version);
    let mut proc = proc;
    assert!(proc.is_running(), "{}", proc.logs());
    let logs = proc.logs();
    let bad = lines_with(&logs, &CACHE_FAILURES[1..]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

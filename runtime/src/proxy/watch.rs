//! Watches that outlive outages: the client's watch stream stays open while
//! kube-apiserver is out of reach, and the upstream watch is resumed from
//! the last resourceVersion the client saw, so events keep flowing without
//! the client re-listing. Every event also updates the client's cached view,
//! so offline answers stay as fresh as the last event.
//!
//! The proxy frames the client's stream itself (one chunk per event), since
//! one client stream may span several upstream responses.
//!
//! When the apiserver answers 410 Gone on resume (its history was
//! compacted while the node was away), the proxy re-lists upstream itself,
//! sends the client the difference to its cached view as ordinary
//! ADDED/MODIFIED/DELETED events, and watches on from the new list: no
//! client ever re-lists because of an outage. Only a watch without a view to
//! compare against (the client never listed through the proxy) gets the
//! ERROR event and ends, as from the apiserver itself.

use super::offline;
use super::Proxy;
use crate::apiclient::Identity;
use crate::cache::{Event, ObjectRow};
use crate::http::{self, BodyDecoder, ChunkedEncoder, RequestHead};
use crate::kube::request::ApiRequest;
use crate::kube::{self, Encoding, EventType, WatchDecoder};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use log::{debug, info};
use smol::net::TcpStream;
use std::collections::BTreeSet;
use std::io;
use std::time::{Duration, Instant};

/// A watch without `timeoutSeconds` ends after this, as the apiserver's do.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Bytes read from an upstream watch at a time.
const WATCH_READ: usize = 4 << 10;

/// Largest watch frame accepted from upstream.
const MAX_FRAME: usize = 16 << 20;

/// Pause between attempts to reach the apiserver while it is away.
const RETRY: Duration = Duration::from_secs(1);

/// How a watch attempt ended.
enum Attempt {
    /// The upstream ended the watch normally, or sent an ERROR event: the
    /// client's stream ends too.
    Finished,
    /// The apiserver could not be reached or the stream broke: resume.
    Lost(String),
    /// The client went away.
    ClientGone,
    /// The apiserver no longer has history from our resourceVersion (410);
    /// holds the ERROR frame to pass on if re-listing is not possible.
    Gone(Vec<u8>),
}

/// Serves one watch request until its timeout, across outages.
pub(super) async fn serve(
    proxy: &Proxy,
    head: &RequestHead,
    api: &ApiRequest,
    tcp: &mut TcpStream,
    identity: Identity,
) -> io::Result<bool> {
    let Some(resource) = &api.resource else {
        return Ok(false);
    };
    let timeout = resource
        .query
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let query = &resource.query;
    // Node awareness: a change of the nodes voted dead wakes the wait
    // between attempts while offline.
    let dead_changed = proxy.dead.subscribe();
    let mut state = Stream {
        encoding: api.encoding,
        resource_version: query.resource_version.clone(),
        resuming: false,
        bookmarks: query.allow_watch_bookmarks,
        started: false,
        key: offline::watch_view_key(api),
        sent_dead: BTreeSet::new(),
        // Unset or "0", the apiserver starts a watch with the current state
        // as ADDED events; sendInitialEvents asks for that explicitly.
        initial: if query.send_initial_events {
            Initial::Streaming
        } else if matches!(query.resource_version.as_deref(), None | Some("" | "0")) {
            Initial::Added
        } else {
            Initial::None
        },
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match attempt(proxy, head, identity, &mut state, tcp, remaining).await {
            Attempt::Finished => return finish(&mut state, tcp).await.map(|()| true),
            Attempt::ClientGone => return Ok(false),
            Attempt::Gone(frame) => match relist(proxy, head, identity, &mut state, tcp).await {
                Relist::Done => {}
                Relist::ClientGone => return Ok(false),
                Relist::Lost(why) => {
                    proxy.set_offline(proxy.outage_now(), &why);
                    let wait = RETRY.min(deadline.saturating_duration_since(Instant::now()));
                    async_io::Timer::after(wait).await;
                }
                Relist::NoView => {
                    if !send_event(tcp, &frame).await {
                        return Ok(false);
                    }
                    return finish(&mut state, tcp).await.map(|()| true);
                }
            },
            Attempt::Lost(why) => {
                proxy.set_offline(proxy.outage_now(), &why);
                if !state.started {
                    start(&mut state, tcp).await?;
                    if !initial_from_cache(proxy, &mut state, tcp).await {
                        return Ok(false);
                    }
                }
                if !send_dead_changes(proxy, &mut state, tcp, proxy.dead.get()).await {
                    return Ok(false);
                }
                debug!("watch {}: upstream lost ({why}); resuming", head.target);
                let wait = RETRY.min(deadline.saturating_duration_since(Instant::now()));
                let timer = async {
                    async_io::Timer::after(wait).await;
                };
                timer
                    .or(async {
                        if dead_changed.recv().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    })
                    .await;
            }
        }
    }
    finish(&mut state, tcp).await.map(|()| true)
}

/// What a watch sends before its first change, as the apiserver does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Initial {
    /// Nothing: the client watches from a resourceVersion it has.
    None,
    /// The current state as ADDED events (resourceVersion unset or "0").
    Added,
    /// `sendInitialEvents=true`: ADDED events, then a BOOKMARK annotated
    /// `k8s.io/initial-events-end: "true"`.
    Streaming,
}

/// The client's side of one watch.
struct Stream {
    encoding: Encoding,
    /// The last resourceVersion the client saw (or asked to start from).
    resource_version: Option<String>,
    /// `resource_version` is one the client has seen: a resumed watch asks
    /// only for what came after it, never for the initial state again.
    resuming: bool,
    /// What the client is owed before the first change.
    initial: Initial,
    /// The client takes BOOKMARK events (`allowWatchBookmarks=true`).
    bookmarks: bool,
    /// The response head went to the client.
    started: bool,
    /// The client's cached view this watch keeps fresh.
    key: Option<crate::cache::ViewKey>,
    /// The nodes voted dead whose endpoints the client's EndpointSlices or
    /// Endpoints were last sent without (empty: as the apiserver has them).
    sent_dead: BTreeSet<String>,
}

/// Sends the client the head of a watch stream the proxy frames itself.
async fn start(state: &mut Stream, tcp: &mut TcpStream) -> io::Result<()> {
    let headers = [
        ("Audit-Id", "tether-edge-watch".to_string()),
        ("Cache-Control", "no-cache, private".to_string()),
        (
            "Content-Type",
            state.encoding.content_type(true).to_string(),
        ),
        ("Transfer-Encoding", "chunked".to_string()),
    ];
    let mut out = Vec::new();
    http::write_response_head(200, "OK", &headers, &mut out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    tcp.write_all(&out).await?;
    state.started = true;
    Ok(())
}

async fn finish(state: &mut Stream, tcp: &mut TcpStream) -> io::Result<()> {
    if !state.started {
        start(state, tcp).await?;
    }
    let mut out = Vec::new();
    ChunkedEncoder::finish(&mut out);
    tcp.write_all(&out).await
}

/// One upstream watch, from the last resourceVersion, relayed event by
/// event until it ends or breaks.
async fn attempt(
    proxy: &Proxy,
    head: &RequestHead,
    identity: Identity,
    state: &mut Stream,
    tcp: &mut TcpStream,
    remaining: Duration,
) -> Attempt {
    let mut conn = match proxy.api.connect(identity).await {
        Ok(c) => c,
        Err(e) => return Attempt::Lost(e.to_string()),
    };
    let target = with_query(
        &head.target,
        state.resource_version.as_deref(),
        remaining.as_secs().max(1),
        state.resuming,
    );
    let upstream = super::upstream_head(head, target);
    let mut out = Vec::new();
    if let Err(e) = http::write_request_head(&upstream, &mut out) {
        return Attempt::Lost(e.to_string());
    }
    if let Err(e) = conn.write_all(&out).await {
        return Attempt::Lost(e.to_string());
    }
    let mut buf = Vec::new();
    let (resp, used) = match super::read_head(&mut conn, &mut buf).await {
        Ok(r) => r,
        Err(e) => return Attempt::Lost(e),
    };
    buf.drain(..used);
    let Ok(kind) = resp.body_kind(&head.method) else {
        return Attempt::Lost("bad framing from the apiserver".into());
    };
    if resp.status < 500 && state.started {
        // The apiserver is back: the client gets back the endpoints it was
        // sent without while offline, before anything newer.
        if !send_dead_changes(proxy, state, tcp, BTreeSet::new()).await {
            return Attempt::ClientGone;
        }
    }
    if resp.status != 200 {
        if resp.status >= 500 {
            return Attempt::Lost(format!("kube-apiserver answered {}", resp.status));
        }
        if !state.started {
            // Nothing of ours reached the client: pass the answer on as is.
            let mut out = Vec::new();
            let _ = http::write_response_head(resp.status, &resp.reason, &resp.headers, &mut out);
            if tcp.write_all(&out).await.is_err() {
                return Attempt::ClientGone;
            }
            return relay_rest(&mut conn, kind, buf, tcp).await;
        }
        // Mid-stream, a refusal (410 for a compacted resourceVersion):
        // tell the client with an ERROR event carrying the Status.
        let mut body = Vec::new();
        let mut decoder = BodyDecoder::new(kind);
        let _ = decoder.decode(&buf, &mut body);
        let event = kube::encode_watch_event(state.encoding, EventType::Error, &body);
        if resp.status == 410 {
            return Attempt::Gone(event);
        }
        return if send_event(tcp, &event).await {
            Attempt::Finished
        } else {
            Attempt::ClientGone
        };
    }
    proxy.set_online();
    if !state.started && start(state, tcp).await.is_err() {
        return Attempt::ClientGone;
    }
    let encoding = resp
        .header("Content-Type")
        .and_then(Encoding::from_content_type)
        .unwrap_or(state.encoding);
    // A streaming list that reaches the apiserver from its start builds
    // the client's view from its initial events, so that a client that
    // never lists can still be answered offline later.
    let mut building = match (&state.key, state.initial, state.resuming) {
        (Some(key), Initial::Streaming, false) => Some(Building::new(key.clone())),
        _ => None,
    };
    let upstream = Upstream {
        conn: &mut conn,
        kind,
        encoding,
        buf,
    };
    let outcome = relay_events(proxy, state, tcp, upstream, &mut building).await;
    if let Some(b) = building {
        b.abort(proxy);
    }
    outcome
}

/// An upstream watch answer being read.
struct Upstream<'a> {
    conn: &'a mut crate::apiclient::ApiConn,
    kind: http::BodyKind,
    encoding: Encoding,
    /// Body bytes read with the head.
    buf: Vec<u8>,
}

/// Relays an upstream watch's events to the client, one by one, keeping
/// the client's view fresh, until the watch ends or breaks.
async fn relay_events(
    proxy: &Proxy,
    state: &mut Stream,
    tcp: &mut TcpStream,
    upstream: Upstream<'_>,
    building: &mut Option<Building>,
) -> Attempt {
    let Upstream {
        conn,
        kind,
        encoding,
        mut buf,
    } = upstream;
    let mut body = BodyDecoder::new(kind);
    // One read buffer for the whole stream, not one per read. Small: a
    // node keeps about one watch per pod open, and most of them sit idle;
    // a larger event simply takes several reads.
    let mut chunk = vec![0u8; WATCH_READ];
    let mut events = WatchDecoder::new(encoding, MAX_FRAME);
    loop {
        if buf.is_empty() {
            match conn.read(&mut chunk).await {
                Ok(0) => return Attempt::Lost("the watch connection closed".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Attempt::Lost(e.to_string()),
            }
        }
        let mut data = Vec::new();
        let (used, done) = match body.decode(&buf, &mut data) {
            Ok(r) => r,
            Err(e) => return Attempt::Lost(e.to_string()),
        };
        buf.drain(..used);
        events.push(&data);
        loop {
            let event = match events.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => return Attempt::Lost(format!("undecodable watch event: {e}")),
            };
            let frame = kube::encode_watch_event(encoding, event.event_type, event.object);
            if event.event_type == EventType::Error
                && kube::parse_status(encoding, event.object).is_ok_and(|s| s.code == 410)
            {
                return Attempt::Gone(frame);
            }
            // The state this event continues: what the stream delivered last.
            let previous = state.resource_version.clone().unwrap_or_default();
            if !event.meta.resource_version.is_empty() {
                state.resource_version = Some(event.meta.resource_version.clone());
                state.resuming = true;
            }
            match building.as_mut() {
                Some(b) => {
                    if b.take(proxy, encoding, &event) {
                        if let Some(b) = building.take() {
                            b.commit(proxy, &event.meta.resource_version);
                        }
                        state.initial = Initial::None;
                    }
                }
                None => record(proxy, state, &previous, encoding, &event),
            }
            if !send_event(tcp, &frame).await {
                return Attempt::ClientGone;
            }
            if event.event_type == EventType::Error {
                return Attempt::Finished;
            }
        }
        if done {
            return Attempt::Finished;
        }
    }
}

/// A client's view being built from a streaming list's initial events:
/// written to a staged view in batches, swapped in whole at the BOOKMARK
/// that ends them, dropped if the stream breaks first.
struct Building {
    key: crate::cache::ViewKey,
    staged: Option<crate::cache::Staged>,
    rows: Vec<ObjectRow>,
    bytes: usize,
    failed: bool,
}

/// Bytes of objects written to a staged view per transaction.
const BATCH: usize = 256 << 10;

impl Building {
    fn new(key: crate::cache::ViewKey) -> Building {
        Building {
            key,
            staged: None,
            rows: Vec::new(),
            bytes: 0,
            failed: false,
        }
    }

    /// Takes one event of the initial state. Returns true at the BOOKMARK
    /// that ends it.
    fn take(&mut self, proxy: &Proxy, encoding: Encoding, event: &kube::WatchEvent<'_>) -> bool {
        match event.event_type {
            EventType::Bookmark => return event.meta.initial_events_end,
            EventType::Added if !self.failed => {}
            _ => return false,
        }
        let Ok(body) = kube::watch_object_to_item(encoding, event.object) else {
            self.failed = true;
            return false;
        };
        self.bytes += body.len();
        self.rows.push(ObjectRow {
            namespace: event.meta.namespace.clone(),
            name: event.meta.name.clone(),
            uid: event.meta.uid.clone(),
            resource_version: event.meta.resource_version.clone(),
            labels: event.meta.labels.iter().cloned().collect(),
            body,
        });
        if self.staged.is_none() {
            // The list's kind and apiVersion, from the first object and
            // the resource path (`v1/pods`, `apps/v1/deployments`).
            let api_version = self.key.resource.rsplit_once('/').map_or("", |(v, _)| v);
            let list = crate::cache::ListMeta {
                resource_version: String::new(),
                kind: format!("{}List", event.kind),
                api_version: api_version.to_owned(),
                complete: true,
            };
            let staged = proxy
                .store_mut()
                .as_mut()
                .map(|s| s.stage_view(&self.key, &list));
            match staged {
                Some(Ok(staged)) => self.staged = Some(staged),
                _ => self.failed = true,
            }
        }
        if self.bytes >= BATCH {
            self.flush(proxy);
        }
        false
    }

    fn flush(&mut self, proxy: &Proxy) {
        let rows = std::mem::take(&mut self.rows);
        self.bytes = 0;
        let (Some(staged), false) = (&self.staged, self.failed) else {
            return;
        };
        let mut store = proxy.store_mut();
        let Some(store) = store.as_mut() else { return };
        let kept = store.append_staged(
            staged,
            rows.into_iter().map(Ok::<_, crate::cache::StoreError>),
        );
        if !matches!(kept, Ok(true)) {
            self.failed = true;
        }
        let _ = store.evict_to_quota();
    }

    /// The initial events are complete at `resource_version`.
    fn commit(mut self, proxy: &Proxy, resource_version: &str) {
        self.flush(proxy);
        // No objects at all: nothing says the list's kind, so an empty
        // initial state is not kept (offline, the client is told the view
        // was never cached, and retries).
        let Some(staged) = self.staged.take() else {
            return;
        };
        let mut store = proxy.store_mut();
        let Some(store) = store.as_mut() else { return };
        if self.failed {
            let _ = store.abort_staged(staged);
            return;
        }
        match store.commit_staged(staged, Some(resource_version)) {
            Ok(true) => debug!("cache: built {} from a streaming list", self.key),
            Ok(false) => {}
            Err(e) => info!("cache: cannot keep a streaming list ({}): {e}", self.key),
        }
    }

    /// The stream broke before the initial events were complete.
    fn abort(mut self, proxy: &Proxy) {
        if let (Some(staged), Some(store)) = (self.staged.take(), proxy.store_mut().as_mut()) {
            let _ = store.abort_staged(staged);
        }
    }
}

/// How a re-list after 410 went.
enum Relist {
    /// The client has the difference; watch on from the new list.
    Done,
    /// The apiserver could not be reached: try again later.
    Lost(String),
    /// Nothing to compare against.
    NoView,
    /// The client went away.
    ClientGone,
}

/// Re-lists upstream with the watch's selectors and sends the client the
/// difference to its cached view as watch events.
async fn relist(
    proxy: &Proxy,
    head: &RequestHead,
    identity: Identity,
    state: &mut Stream,
    tcp: &mut TcpStream,
) -> Relist {
    let Some(key) = state.key.clone() else {
        return Relist::NoView;
    };
    if !view_exists(proxy, &key) {
        return Relist::NoView;
    }
    let objects = proxy.store.borrow().as_ref().map(|s| s.objects(&key));
    let Some(Ok(old)) = objects else {
        return Relist::NoView;
    };
    let body = match fetch_list(proxy, head, identity).await {
        Ok(b) => b,
        Err(e) => return Relist::Lost(e),
    };
    let encoding = state.encoding;
    let Ok(list) = kube::parse_list(encoding, &body) else {
        return Relist::Lost("the re-list did not parse".into());
    };
    let kind = list
        .kind
        .strip_suffix("List")
        .unwrap_or(&list.kind)
        .to_owned();
    let before: std::collections::HashMap<(&str, &str), &ObjectRow> = old
        .iter()
        .map(|o| ((o.namespace.as_str(), o.name.as_str()), o))
        .collect();
    let mut frames = Vec::new();
    let mut present = std::collections::HashSet::new();
    for item in &list.items {
        let id = (item.meta.namespace.as_str(), item.meta.name.as_str());
        present.insert(id);
        let event_type = match before.get(&id) {
            None => EventType::Added,
            Some(o) if o.resource_version != item.meta.resource_version => EventType::Modified,
            Some(_) => continue,
        };
        let object = kube::item_to_watch_object(encoding, &list.api_version, &kind, item.bytes);
        frames.push(kube::encode_watch_event(encoding, event_type, &object));
    }
    for o in &old {
        if !present.contains(&(o.namespace.as_str(), o.name.as_str())) {
            let object = kube::item_to_watch_object(encoding, &list.api_version, &kind, &o.body);
            frames.push(kube::encode_watch_event(
                encoding,
                EventType::Deleted,
                &object,
            ));
        }
    }
    info!(
        "watch {}: history was compacted while away; re-listed and sent the client {} changes",
        head.target.split('?').next().unwrap_or(""),
        frames.len()
    );
    // The view takes the new list before the client gets the difference,
    // so that a kill in between never leaves the client ahead of its view.
    let list_rv = list.meta.resource_version.clone();
    if let Some(store) = proxy.store_mut().as_mut() {
        if let Err(e) = offline::record(store, &key, encoding, &body) {
            info!("cache: cannot record the re-list ({key}): {e}");
        }
    }
    if state.bookmarks {
        // Tells the client where its state now is, so that a client that
        // re-watches by itself starts from the list, not from the last
        // object of the difference.
        let bookmark = kube::bookmark_object(encoding, &list.api_version, &kind, &list_rv, false);
        frames.push(kube::encode_watch_event(
            encoding,
            EventType::Bookmark,
            &bookmark,
        ));
    }
    for frame in &frames {
        if !send_event(tcp, frame).await {
            return Relist::ClientGone;
        }
    }
    // The client's state is the list's now: resume from there (the last
    // event's resourceVersion says nothing about the objects before it).
    state.resource_version = Some(list_rv);
    state.resuming = true;
    Relist::Done
}

fn view_exists(proxy: &Proxy, key: &crate::cache::ViewKey) -> bool {
    proxy
        .store
        .borrow()
        .as_ref()
        .is_some_and(|s| matches!(s.view(key), Ok(Some(_))))
}

/// GETs the watch's collection (its selectors, no resourceVersion: the
/// current state) and returns the de-chunked body of a 200 answer.
async fn fetch_list(
    proxy: &Proxy,
    head: &RequestHead,
    identity: Identity,
) -> Result<Vec<u8>, String> {
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let keep: Vec<&str> = query
        .split('&')
        .filter(|p| p.starts_with("labelSelector=") || p.starts_with("fieldSelector="))
        .collect();
    let target = if keep.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", keep.join("&"))
    };
    let request = super::upstream_head(head, target);
    let mut conn = proxy
        .api
        .connect(identity)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    http::write_request_head(&request, &mut out).map_err(|e| e.to_string())?;
    conn.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let (resp, used) = super::read_head(&mut conn, &mut buf).await?;
    if resp.status != 200 {
        return Err(format!("the re-list was answered {}", resp.status));
    }
    buf.drain(..used);
    let mut decoder = BodyDecoder::new(resp.body_kind("GET").map_err(|e| e.to_string())?);
    let mut body = Vec::new();
    // One read buffer for the whole body, not one per read.
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let (n, done) = decoder.decode(&buf, &mut body).map_err(|e| e.to_string())?;
        buf.drain(..n);
        if done {
            return Ok(body);
        }
        if body.len() > super::MAX_RELIST {
            return Err("the re-list is larger than the proxy keeps".into());
        }
        match conn.read(&mut chunk).await {
            Ok(0) => {
                decoder.finish_eof().map_err(|e| e.to_string())?;
                return Ok(body);
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// While kube-apiserver is out of reach at the start of a watch that is
/// owed the current state (resourceVersion unset or "0", or
/// `sendInitialEvents`), sends it from the client's cached view: ADDED
/// events, then for a streaming list the BOOKMARK that ends the initial
/// events. The watch then resumes upstream from the view's
/// resourceVersion. Without a cached view the client simply waits, and the
/// apiserver sends the initial state when it is back. False when the client
/// is gone.
async fn initial_from_cache(proxy: &Proxy, state: &mut Stream, tcp: &mut TcpStream) -> bool {
    if state.initial == Initial::None {
        return true;
    }
    let Some(key) = state.key.clone() else {
        return true;
    };
    let encoding = state.encoding;
    let mut frames = Vec::new();
    // Offline: EndpointSlices and Endpoints without the endpoints on the
    // nodes voted dead.
    let dead = proxy.dead.get();
    let view = proxy.store.borrow().as_ref().and_then(|store| {
        store
            .scan_bodies(
                &key,
                |view| Ok::<_, crate::cache::StoreError>(view.list.clone()),
                |list, body| {
                    let kind = list.kind.strip_suffix("List").unwrap_or(&list.kind);
                    let body = super::aware::served(encoding, &key.resource, body, &dead);
                    let object =
                        kube::item_to_watch_object(encoding, &list.api_version, kind, &body);
                    frames.push(kube::encode_watch_event(
                        encoding,
                        EventType::Added,
                        &object,
                    ));
                    Ok(())
                },
            )
            .ok()
            .flatten()
    });
    let Some(list) = view.filter(|l| l.complete) else {
        return true;
    };
    if state.initial == Initial::Streaming {
        let kind = list.kind.strip_suffix("List").unwrap_or(&list.kind);
        let bookmark = kube::bookmark_object(
            encoding,
            &list.api_version,
            kind,
            &list.resource_version,
            true,
        );
        frames.push(kube::encode_watch_event(
            encoding,
            EventType::Bookmark,
            &bookmark,
        ));
    }
    info!(
        "watch {}: kube-apiserver out of reach; sent the client its cached state ({} events) and resume from resourceVersion {}",
        key.resource,
        frames.len(),
        list.resource_version
    );
    state.initial = Initial::None;
    state.sent_dead = dead;
    state.resource_version = Some(list.resource_version);
    state.resuming = true;
    for frame in &frames {
        if !send_event(tcp, frame).await {
            return false;
        }
    }
    true
}

/// Node awareness: sends the client a MODIFIED event for each object of
/// its view whose served form differs between the nodes it was last sent
/// without (`state.sent_dead`) and `dead` (empty: back to the apiserver's
/// own), and notes `dead` as sent. Nothing for watches of other resources,
/// or before the client's stream started. False when the client is gone.
async fn send_dead_changes(
    proxy: &Proxy,
    state: &mut Stream,
    tcp: &mut TcpStream,
    dead: BTreeSet<String>,
) -> bool {
    if state.sent_dead == dead || !state.started {
        return true;
    }
    let Some(key) = state.key.clone() else {
        return true;
    };
    let frames = match proxy.store.borrow().as_ref() {
        Some(store) => super::aware::changes(store, &key, state.encoding, &state.sent_dead, &dead),
        None => Ok(Vec::new()),
    };
    let frames = match frames {
        Ok(f) => f,
        Err(e) => {
            // The view is unreadable: the client keeps what it has, and
            // the next change tries again.
            info!("node awareness: cannot read the view of a watch ({key}): {e}");
            return true;
        }
    };
    if !frames.is_empty() {
        let names = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        info!(
            "watch {}: endpoints left out for [{}] (before: [{}]): sent the client {} changed objects",
            key.resource,
            names(&dead),
            names(&state.sent_dead),
            frames.len()
        );
    }
    state.sent_dead = dead;
    for frame in &frames {
        if !send_event(tcp, frame).await {
            return false;
        }
    }
    true
}

/// Writes one event as one chunk; false when the client is gone.
async fn send_event(tcp: &mut TcpStream, frame: &[u8]) -> bool {
    let mut out = Vec::with_capacity(frame.len() + 16);
    ChunkedEncoder::chunk(frame, &mut out);
    tcp.write_all(&out).await.is_ok()
}

/// Relays the rest of an upstream answer as received.
async fn relay_rest(
    conn: &mut crate::apiclient::ApiConn,
    kind: http::BodyKind,
    mut buf: Vec<u8>,
    tcp: &mut TcpStream,
) -> Attempt {
    let mut decoder = BodyDecoder::new(kind);
    // One read buffer for the whole body, not one per read.
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if buf.is_empty() && !decoder.is_done() {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return Attempt::ClientGone,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let step = match decoder.step(&buf) {
            Ok(s) => s,
            Err(_) => return Attempt::ClientGone,
        };
        if tcp.write_all(&buf[..step.consumed]).await.is_err() {
            return Attempt::ClientGone;
        }
        buf.drain(..step.consumed);
        if step.done {
            // The answer is complete; the client's stream is over.
            return Attempt::ClientGone;
        }
    }
}

/// Applies a watch event to the client's cached view, if it has one.
/// The view only takes an event that continues its own state (see
/// [`crate::cache::Store::apply_event`]): `previous` is the resourceVersion
/// this stream delivered before the event.
fn record(
    proxy: &Proxy,
    state: &Stream,
    previous: &str,
    encoding: Encoding,
    event: &kube::WatchEvent<'_>,
) {
    let Some(key) = &state.key else { return };
    let rv = state.resource_version.clone().unwrap_or_default();
    let mut store = proxy.store_mut();
    let Some(store) = store.as_mut() else { return };
    let make = || -> Option<ObjectRow> {
        let item = kube::watch_object_to_item(encoding, event.object).ok()?;
        Some(ObjectRow {
            namespace: event.meta.namespace.clone(),
            name: event.meta.name.clone(),
            uid: event.meta.uid.clone(),
            resource_version: event.meta.resource_version.clone(),
            labels: event.meta.labels.iter().cloned().collect(),
            body: item,
        })
    };
    let applied = match event.event_type {
        EventType::Added => make().map(Event::Added),
        EventType::Modified => make().map(Event::Modified),
        EventType::Deleted => make().map(Event::Deleted),
        EventType::Bookmark => {
            if let Err(e) = store.advance(key, previous, &rv) {
                info!("cache: cannot apply a bookmark ({key}): {e}");
            }
            None
        }
        EventType::Error => None,
    };
    if let Some(ev) = applied {
        // Not applied when the view is not at `previous`: it stays a
        // consistent older state until the next LIST replaces it.
        if let Err(e) = store.apply_event(key, &ev, previous, &rv) {
            info!("cache: cannot apply a watch event ({key}): {e}");
        }
    }
}

/// `target` with `resourceVersion` set to `rv` (when known) and
/// `timeoutSeconds` to `timeout`, other parameters kept as they were. A
/// watch `resuming` from a resourceVersion the client has seen drops
/// `sendInitialEvents` and `resourceVersionMatch`: the client has the
/// initial state already and must not get it again.
pub fn with_query(target: &str, rv: Option<&str>, timeout: u64, resuming: bool) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split('=').next().unwrap_or("");
            let initial_only = matches!(key, "sendInitialEvents" | "resourceVersionMatch");
            key != "timeoutSeconds"
                && !(rv.is_some() && key == "resourceVersion")
                && !(resuming && initial_only)
        })
        .map(str::to_owned)
        .collect();
    if let Some(rv) = rv {
        // resourceVersions are decimal digits; anything else is dropped
        // rather than pasted into a URL.
        if !rv.is_empty() && rv.bytes().all(|b| b.is_ascii_digit()) {
            params.push(format!("resourceVersion={rv}"));
        }
    }
    params.push(format!("timeoutSeconds={timeout}"));
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::with_query;

    #[test]
    fn resume_targets() {
        let t = "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=426&timeoutSeconds=313&watch=true";
        assert_eq!(
            with_query(t, Some("500"), 200, true),
            "/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&watch=true&resourceVersion=500&timeoutSeconds=200"
        );
        assert_eq!(
            with_query("/api/v1/pods?watch=1&resourceVersion=7", None, 5, false),
            "/api/v1/pods?watch=1&resourceVersion=7&timeoutSeconds=5"
        );
        assert_eq!(
            with_query("/api/v1/pods?watch=1", Some("1&x=2"), 5, true),
            "/api/v1/pods?watch=1&timeoutSeconds=5"
        );
        // A streaming list asks for the initial state once, not on resume.
        let t = "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&watch=true";
        assert_eq!(
            with_query(t, Some(""), 60, false),
            "/api/v1/pods?allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&sendInitialEvents=true&watch=true&timeoutSeconds=60"
        );
        assert_eq!(
            with_query(t, Some("812"), 60, true),
            "/api/v1/pods?allowWatchBookmarks=true&watch=true&resourceVersion=812&timeoutSeconds=60"
        );
    }
}

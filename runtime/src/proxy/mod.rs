//! The node's apiserver: an HTTP/1.1 proxy on 127.0.0.1:10261 for kubelet,
//! kube-proxy and the pods' clients (issue 3, first stage).
//!
//! Online, every request goes to kube-apiserver over HTTPS with the node's
//! credentials ([`crate::apiclient`]) and the answer comes back as the
//! apiserver framed it; successful GET and LIST answers are recorded per
//! client in the cache ([`offline::record`]). When kube-apiserver is out of
//! reach (no connection, or a 5xx), GET and LIST are answered from the
//! cache, and writes fail at once with 503: a write is never answered as if
//! it had been applied.
//!
//! Watches are served by [`watch`]: they stay open across outages, resume
//! from the last resourceVersion, and keep the client's view fresh.
//!
//! A request that brings its own credentials (a pod's bearer token) goes
//! out on a connection without the node's certificate, never pooled, so it
//! is judged as itself; its answers are cached under its own name (the
//! User-Agent plus a digest of the credentials), so offline only the same
//! credentials get them back.
//!
//! Answers are recorded while they stream to the client ([`record`]): a
//! list larger than the record buffer is written to the cache in pieces
//! and swapped in whole, so neither memory nor a half-written view ever
//! holds it.

pub mod answers;
pub mod aware;
pub mod offline;
pub mod record;
pub mod token;
pub mod watch;

use crate::apiclient::{ApiClient, ApiConn, Identity};
use crate::cache::Store;
use crate::cache::ViewKey;
use crate::http::{self, BodyDecoder, BodyKind, Limits, RequestHead, ResponseHead};
use crate::kube::request::{classify, ApiRequest, Verb};
use crate::memory::Budget;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use log::{debug, info, warn};
use smol::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest re-list a watch holds to compare against the client's view
/// after 410 Gone.
pub const MAX_RELIST: usize = 8 << 20;

/// Largest request body accepted (node status, events, leases are small).
const MAX_REQUEST_BODY: usize = 4 << 20;

/// How long the apiserver may take to start answering before the request
/// is served from the cache instead.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Idle upstream connections kept for reuse.
const POOL: usize = 4;

/// While kube-apiserver is out of reach, a background probe tries it again
/// at most this often; every request is answered from the cache at once
/// instead of paying a failed connection first.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The proxy's shared state.
pub struct Proxy {
    api: ApiClient,
    store: RefCell<Option<Store>>,
    pool: RefCell<Vec<ApiConn>>,
    /// Whether the last upstream attempt reached kube-apiserver.
    online: Cell<bool>,
    /// Why it is out of reach, while it is.
    outage: Cell<Outage>,
    /// While offline: when the next request may try upstream again.
    retry_at: Cell<Option<Instant>>,
    counters: RefCell<Counters>,
    /// Bytes of an answer held before a list is streamed into the cache.
    record_buffer: usize,
    /// Over budget, nothing new is recorded and new clients are turned away.
    budget: Rc<Budget>,
    /// Offline answers kept encoded; emptied by every write to the store.
    answers: RefCell<answers::Answers>,
    /// Where the addresses of this node's Node status go.
    announcer: RefCell<Option<Announcer>>,
    /// The nodes this edge's unit votes dead: their endpoints are left out
    /// of the EndpointSlices and Endpoints served offline.
    dead: aware::DeadNodes,
}

/// Passes the addresses in this node's Node status on, when they change
/// and at least every [`ANNOUNCE_EVERY`] (a restarted hub forgets them).
struct Announcer {
    node: String,
    last: Vec<String>,
    sent: Option<Instant>,
    send: Box<dyn Fn(Vec<String>)>,
}

/// How often unchanged addresses are told again.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);

/// Why kube-apiserver is out of reach: the reason a cached answer was
/// served, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The link to the hub is down.
    #[default]
    LinkDown,
    /// No connection could be made, or no answer came in time.
    Unreachable,
    /// kube-apiserver answered with a 5xx.
    ServerError,
}

impl Outage {
    /// Every reason, in metric order.
    pub const ALL: [Outage; 3] = [Outage::LinkDown, Outage::Unreachable, Outage::ServerError];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outage::LinkDown => "link_down",
            Outage::Unreachable => "unreachable",
            Outage::ServerError => "server_error",
        }
    }
}

/// Why an offline GET or LIST could not be answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Nothing was cached for it (never asked online, or evicted).
    NotCached,
    /// A request the cache never keeps (paged, `as=Table`, non-resource).
    NotCacheable,
    /// The cache could not be read.
    CacheError,
}

impl Miss {
    /// Every reason, in metric order.
    pub const ALL: [Miss; 3] = [Miss::NotCached, Miss::NotCacheable, Miss::CacheError];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Miss::NotCached => "not_cached",
            Miss::NotCacheable => "not_cacheable",
            Miss::CacheError => "cache_error",
        }
    }
}

/// What the proxy did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Requests relayed to kube-apiserver.
    pub relayed: u64,
    /// GET/LIST answered from the cache while offline, by [`Outage`]
    /// (indexed as [`Outage::ALL`]).
    pub hits: [u64; 3],
    /// GET/LIST that could not be answered offline, by [`Miss`] (indexed
    /// as [`Miss::ALL`]).
    pub misses: [u64; 3],
    /// Writes refused while offline.
    pub writes_refused: u64,
    /// Answers recorded in the cache.
    pub recorded: u64,
}

impl Proxy {
    /// A proxy reaching kube-apiserver through `api`, caching in `store`
    /// (none: relay only).
    /// Lists larger than `record_buffer` bytes are recorded while they
    /// stream, never held whole.
    /// Over `budget`, it sheds load (see [`crate::memory`]).
    /// Up to `answer_cache` bytes of offline answers are kept encoded.
    pub fn new(
        api: ApiClient,
        store: Option<Store>,
        record_buffer: usize,
        answer_cache: usize,
        budget: Rc<Budget>,
    ) -> Proxy {
        Proxy {
            api,
            store: RefCell::new(store),
            pool: RefCell::new(Vec::new()),
            online: Cell::new(true),
            outage: Cell::new(Outage::default()),
            retry_at: Cell::new(None),
            counters: RefCell::new(Counters::default()),
            record_buffer,
            budget,
            answers: RefCell::new(answers::Answers::new(answer_cache)),
            announcer: RefCell::new(None),
            dead: aware::DeadNodes::new(),
        }
    }

    /// The nodes this edge's unit votes dead now (the health peer's own
    /// tally). Offline answers kept in memory are forgotten, and open
    /// watches are told, when they change.
    pub fn set_dead_nodes(&self, dead: std::collections::BTreeSet<String>) {
        let shown = dead.iter().cloned().collect::<Vec<_>>().join(", ");
        if self.dead.set(dead) {
            // A kept answer was filtered for the old set.
            self.answers.borrow_mut().clear();
            if shown.is_empty() {
                info!("node awareness: no node voted dead by the unit any more; offline answers carry every endpoint");
            } else {
                info!("node awareness: nodes voted dead by the unit: {shown}; offline, their endpoints are left out");
            }
        }
    }

    /// What the proxy did so far.
    pub fn counters(&self) -> Counters {
        *self.counters.borrow()
    }

    /// The store, to write to it: the offline answers kept in memory are
    /// forgotten first, since they may no longer be the views as stored.
    fn store_mut(&self) -> std::cell::RefMut<'_, Option<Store>> {
        self.answers.borrow_mut().clear();
        self.store.borrow_mut()
    }

    /// Hands `send` the addresses of node `node`'s status whenever an
    /// answer with its Node object shows them changed (and every minute).
    pub fn announce_addresses(&self, node: &str, send: impl Fn(Vec<String>) + 'static) {
        *self.announcer.borrow_mut() = Some(Announcer {
            node: node.to_owned(),
            last: Vec::new(),
            sent: None,
            send: Box::new(send),
        });
    }

    /// Whether `key` is this node's own Node object.
    fn is_own_node(&self, key: &ViewKey) -> bool {
        key.resource == "v1/nodes"
            && self
                .announcer
                .borrow()
                .as_ref()
                .is_some_and(|a| a.node == key.name)
    }

    /// This node's Node object came by: pass its addresses on if due.
    fn node_seen(&self, encoding: crate::kube::Encoding, body: &[u8]) {
        let Ok(addresses) = crate::kube::node::addresses(encoding, body) else {
            return;
        };
        let mut announcer = self.announcer.borrow_mut();
        let Some(a) = announcer.as_mut() else { return };
        let due = a.sent.is_none_or(|t| t.elapsed() >= ANNOUNCE_EVERY);
        if addresses.is_empty() || (addresses == a.last && !due) {
            return;
        }
        a.last = addresses.clone();
        a.sent = Some(Instant::now());
        (a.send)(addresses);
    }

    /// Bytes of offline answers kept in memory.
    pub fn answers_bytes(&self) -> usize {
        self.answers.borrow().bytes()
    }

    /// The memory budget it works under.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Whether kube-apiserver answered the last request.
    pub fn online(&self) -> bool {
        self.online.get()
    }

    /// The cache's totals, if there is a cache and it can be read.
    pub fn cache_stats(&self) -> Option<crate::cache::Stats> {
        self.store.borrow().as_ref().and_then(|s| s.stats().ok())
    }

    /// An upstream failure `e` (no connection, or no answer), told apart
    /// by whether the link is down.
    fn unreachable(&self, e: impl std::fmt::Display) -> Upstream {
        Upstream::Unavailable(self.outage_now(), e.to_string())
    }

    /// Why a watch lost kube-apiserver just now.
    fn outage_now(&self) -> Outage {
        if self.api.link_down() {
            Outage::LinkDown
        } else {
            Outage::Unreachable
        }
    }

    /// Notes that kube-apiserver answered.
    fn set_online(&self) {
        self.retry_at.set(None);
        if !self.online.replace(true) {
            info!("kube-apiserver reachable again: relaying");
        }
    }

    /// Notes that kube-apiserver is out of reach, and why.
    fn set_offline(&self, outage: Outage, why: &str) {
        self.outage.set(outage);
        self.retry_at.set(Some(Instant::now() + RETRY_INTERVAL));
        if self.online.replace(false) {
            warn!("kube-apiserver out of reach ({why}): answering GET and LIST from the cache, refusing writes");
        }
    }

    /// While kube-apiserver is known to be out of reach, whether a probe
    /// is due (at most one per [`RETRY_INTERVAL`]; asking pushes the next
    /// one back); `None` while it is reachable.
    fn probe_due(&self) -> Option<bool> {
        match self.retry_at.get() {
            // The link that was down is back: this request finds out at
            // once, instead of waiting for the next probe.
            Some(_) if self.outage.get() == Outage::LinkDown && self.api.link_up() => None,
            Some(at) if Instant::now() < at => Some(false),
            Some(_) => {
                self.retry_at.set(Some(Instant::now() + RETRY_INTERVAL));
                Some(true)
            }
            None => None,
        }
    }
}

/// Tries to reach kube-apiserver while it is known to be out of reach, in
/// the background, so that no client waits for the attempt. A connection
/// that comes up is kept for the next request.
async fn probe(proxy: Rc<Proxy>) {
    match proxy.api.connect(Identity::Node).await {
        Ok(conn) => {
            proxy.set_online();
            if proxy.pool.borrow().len() < POOL {
                proxy.pool.borrow_mut().push(conn);
            }
        }
        Err(e) => proxy.set_offline(proxy.outage_now(), &e.to_string()),
    }
}

/// Accepts clients forever.
pub async fn serve(ex: Rc<smol::LocalExecutor<'static>>, proxy: Rc<Proxy>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((mut tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                if proxy.budget.over() {
                    // Turned away at once: a client retries, and the
                    // connections already open keep being served.
                    proxy.budget.note_refused();
                    ex.spawn(async move {
                        let msg = "tether-edge is over its memory budget; retry shortly";
                        let _ = fail(&mut tcp, 503, "ServiceUnavailable", msg).await;
                    })
                    .detach();
                    continue;
                }
                ex.spawn(client(ex.clone(), proxy.clone(), tcp)).detach();
            }
            Err(e) => {
                warn!("proxy: accept failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one client connection: requests one after another (keep-alive).
async fn client(ex: Rc<smol::LocalExecutor<'static>>, proxy: Rc<Proxy>, mut tcp: TcpStream) {
    let limits = Limits::default();
    let mut buf = Vec::new();
    loop {
        let (head, used) = loop {
            match http::parse_request_head(&buf, &limits) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let _ = fail(&mut tcp, e.status(), "BadRequest", e.message()).await;
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..used);
        let body = match read_body(&mut tcp, &head, &mut buf).await {
            Ok(b) => b,
            Err(status) => {
                let _ = fail(&mut tcp, status, "BadRequest", "request body").await;
                return;
            }
        };
        let keep = head.keep_alive();
        match handle(&ex, &proxy, &head, &body, &mut tcp).await {
            Ok(true) if keep => continue,
            _ => return,
        }
    }
}

/// Reads a request body (bounded), using bytes already buffered first.
async fn read_body(
    tcp: &mut TcpStream,
    head: &RequestHead,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, u16> {
    let kind = head.body_kind().map_err(|e| e.status())?;
    if kind == BodyKind::None {
        return Ok(Vec::new());
    }
    let mut decoder = BodyDecoder::new(kind);
    let mut body = Vec::new();
    loop {
        let (used, done) = decoder.decode(buf, &mut body).map_err(|e| e.status())?;
        buf.drain(..used);
        if body.len() > MAX_REQUEST_BODY {
            return Err(413);
        }
        if done {
            return Ok(body);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(400),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Why the upstream could not answer.
enum Upstream {
    /// Nothing reached the client yet: the cache may answer instead.
    Unavailable(Outage, String),
    /// The exchange broke after the client got part of the answer.
    Broken,
}

/// Handles one request. Returns whether the connection may carry another.
async fn handle(
    ex: &smol::LocalExecutor<'static>,
    proxy: &Rc<Proxy>,
    head: &RequestHead,
    body: &[u8],
    tcp: &mut TcpStream,
) -> io::Result<bool> {
    let mut api = match classify(
        &head.method,
        &head.target,
        head.header("User-Agent"),
        head.header("Accept"),
    ) {
        Ok(a) => a,
        Err(e) => {
            fail(tcp, 400, "BadRequest", &e.to_string()).await?;
            return Ok(false);
        }
    };
    let identity = match head.header("Authorization") {
        Some(credentials) => {
            // A client with its own credentials gets views of its own: what
            // one token fetched is never served to another, even with the
            // same User-Agent.
            api.client = own_client(&api.client, credentials);
            Identity::Own
        }
        None => Identity::Node,
    };
    if api.verb == Verb::Watch {
        proxy.counters.borrow_mut().relayed += 1;
        return watch::serve(proxy, head, &api, tcp, identity).await;
    }
    // What the answer is cached as, if anything.
    let key = offline::view_key(&api).or_else(|| token::view_key(&api, body));
    match proxy.probe_due() {
        None => {}
        Some(due) => {
            // Known to be out of reach: answer at once, and let a probe in
            // the background find out when it is back.
            if due {
                ex.spawn(probe(proxy.clone())).detach();
            }
            return answer_offline(proxy, &api, key.as_ref(), tcp).await;
        }
    }
    let had_pooled = identity == Identity::Node && !proxy.pool.borrow().is_empty();
    let exchange = Exchange {
        head,
        body,
        api: &api,
        key: key.as_ref(),
        identity,
    };
    let mut result = relay(proxy, &exchange, tcp, true).await;
    if had_pooled && matches!(result, Err(Upstream::Unavailable(..))) {
        // A pooled connection the apiserver had closed: try a fresh one.
        proxy.pool.borrow_mut().clear();
        result = relay(proxy, &exchange, tcp, false).await;
    }
    match result {
        Ok(keep) => {
            proxy.counters.borrow_mut().relayed += 1;
            Ok(keep)
        }
        Err(Upstream::Broken) => Ok(false),
        Err(Upstream::Unavailable(outage, why)) => {
            proxy.set_offline(outage, &why);
            answer_offline(proxy, &api, key.as_ref(), tcp).await
        }
    }
}

async fn answer_offline(
    proxy: &Proxy,
    api: &ApiRequest,
    key: Option<&ViewKey>,
    tcp: &mut TcpStream,
) -> io::Result<bool> {
    if let Some(key) = key.filter(|_| api.verb == Verb::Create) {
        return answer_token(proxy, api, key, tcp).await;
    }
    if api.verb.is_write() {
        proxy.counters.borrow_mut().writes_refused += 1;
        let msg = "kube-apiserver is out of reach from this node: the request was not applied";
        fail(tcp, 503, "ServiceUnavailable", msg).await?;
        return Ok(true);
    }
    let kept = key.and_then(|key| proxy.answers.borrow_mut().get(key));
    // Node awareness: kube-proxy's objects leave out the dead nodes'
    // endpoints (a kept answer was built for the same set: a change empties
    // them).
    let dead = proxy.dead.get();
    let cached = match (kept, key, proxy.store.borrow_mut().as_mut()) {
        (Some(kept), _, _) => Ok(kept),
        (None, Some(key), Some(store)) => match offline::answer(store, key, api.encoding, &dead) {
            Ok(Some(found)) => {
                debug!("offline answer for {key} built from the cache");
                let found = Rc::new(found);
                if proxy.budget.over() {
                    proxy.answers.borrow_mut().clear();
                } else {
                    proxy.answers.borrow_mut().put(key, found.clone());
                }
                Ok(found)
            }
            Ok(None) => Err(Miss::NotCached),
            Err(e) => {
                warn!("cache read failed: {e}");
                Err(Miss::CacheError)
            }
        },
        (None, Some(_), None) => Err(Miss::NotCached),
        (None, None, _) => Err(Miss::NotCacheable),
    };
    match cached {
        Ok(body) => {
            let outage = proxy.outage.get();
            proxy.counters.borrow_mut().hits[outage as usize] += 1;
            send_cached(tcp, 200, api.encoding, body.as_slice()).await
        }
        Err(miss) => {
            proxy.counters.borrow_mut().misses[miss as usize] += 1;
            let msg = "kube-apiserver is out of reach from this node and this request was never answered before";
            fail(tcp, 503, "ServiceUnavailable", msg).await?;
            Ok(true)
        }
    }
}

/// Answers a TokenRequest offline with the cached token, if it is still
/// valid; otherwise fails clearly. Never mints one.
async fn answer_token(
    proxy: &Proxy,
    api: &ApiRequest,
    key: &ViewKey,
    tcp: &mut TcpStream,
) -> io::Result<bool> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let cached = match proxy.store.borrow_mut().as_mut() {
        Some(store) => token::answer(store, key, api.encoding, now).unwrap_or_else(|e| {
            warn!("cache read failed: {e}");
            Err(token::Refusal::NotCached)
        }),
        None => Err(token::Refusal::NotCached),
    };
    match cached {
        Ok(body) => {
            let outage = proxy.outage.get();
            proxy.counters.borrow_mut().hits[outage as usize] += 1;
            info!(
                "offline: handed kubelet the cached token of service account {}/{} (still valid)",
                key.namespace, key.name
            );
            send_cached(tcp, 201, api.encoding, &body).await
        }
        Err(refusal) => {
            proxy.counters.borrow_mut().writes_refused += 1;
            warn!(
                "offline: token for service account {}/{} refused: {refusal}",
                key.namespace, key.name
            );
            fail(tcp, 503, "ServiceUnavailable", &refusal.to_string()).await?;
            Ok(true)
        }
    }
}

/// Sends an answer from the cache, framed as the apiserver frames it.
async fn send_cached(
    tcp: &mut TcpStream,
    status: u16,
    encoding: crate::kube::Encoding,
    body: &[u8],
) -> io::Result<bool> {
    let headers = [
        ("Audit-Id", "tether-edge-offline".to_string()),
        ("Cache-Control", "no-cache, private".to_string()),
        ("Content-Type", encoding.content_type(false).to_string()),
        ("Content-Length", body.len().to_string()),
    ];
    let mut head = Vec::with_capacity(256);
    if http::write_response_head(status, http::reason_phrase(status), &headers, &mut head).is_err()
    {
        return Ok(false);
    }
    // Head and body go out as they are: the body is not copied again to
    // join them.
    tcp.write_all(&head).await?;
    tcp.write_all(body).await?;
    Ok(true)
}

/// One request on its way upstream: what the client sent, what it asks
/// for, what its answer is cached as, and whose identity carries it.
struct Exchange<'a> {
    head: &'a RequestHead,
    body: &'a [u8],
    api: &'a ApiRequest,
    key: Option<&'a ViewKey>,
    identity: Identity,
}

/// Sends the request upstream and relays the answer, recording it when it
/// is a cacheable success.
async fn relay(
    proxy: &Proxy,
    exchange: &Exchange<'_>,
    tcp: &mut TcpStream,
    reuse: bool,
) -> Result<bool, Upstream> {
    let Exchange {
        head,
        body,
        api,
        key,
        identity,
    } = *exchange;
    // Only node-identity connections are pooled: a client's own
    // credentials never serve another request.
    let pooled = if reuse && identity == Identity::Node {
        proxy.pool.borrow_mut().pop()
    } else {
        None
    };
    let mut conn = match pooled {
        Some(c) => c,
        None => proxy
            .api
            .connect(identity)
            .await
            .map_err(|e| proxy.unreachable(e))?,
    };
    let mut out = Vec::with_capacity(512 + body.len());
    http::write_request_head(&upstream_head(head, head.target.clone()), &mut out)
        .map_err(|e| proxy.unreachable(e))?;
    out.extend_from_slice(body);
    conn.write_all(&out)
        .await
        .map_err(|e| proxy.unreachable(e))?;
    conn.flush().await.map_err(|e| proxy.unreachable(e))?;

    // The answer's head, within the timeout.
    let mut buf = Vec::new();
    let watch = api.verb == Verb::Watch;
    let (resp, used) = read_head(&mut conn, &mut buf)
        .await
        .map_err(|e| proxy.unreachable(e))?;
    if resp.status >= 500 && (key.is_some() || api.verb.is_write()) {
        return Err(Upstream::Unavailable(
            Outage::ServerError,
            format!("kube-apiserver answered {}", resp.status),
        ));
    }
    proxy.set_online();
    let kind = resp.body_kind(&head.method).map_err(|_| Upstream::Broken)?;
    let mut decoder = BodyDecoder::new(kind);
    buf.drain(..used);
    let mut client_bytes = Vec::with_capacity(1024);
    let _ = http::write_response_head(resp.status, &resp.reason, &resp.headers, &mut client_bytes);
    tcp.write_all(&client_bytes)
        .await
        .map_err(|_| Upstream::Broken)?;
    // A TokenRequest succeeds with 201 Created, reads with 200.
    let success = if api.verb == Verb::Create { 201 } else { 200 };
    let recording =
        resp.status == success && !watch && !proxy.budget.over() && proxy.store.borrow().is_some();
    let mut recorder = key.filter(|_| recording).map(|key| {
        record::Recorder::new(
            key.clone(),
            api.encoding,
            api.verb == Verb::Create,
            proxy.record_buffer,
        )
    });
    let mut done = kind == BodyKind::None;
    // One read buffer for the whole body, not one per read.
    let mut chunk = vec![0u8; 64 * 1024];
    let relayed: Result<(), ()> = async {
        while !done {
            if buf.is_empty() {
                let n = conn.read(&mut chunk).await.map_err(|_| ())?;
                if n == 0 {
                    decoder.finish_eof().map_err(|_| ())?;
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let step = decoder.step(&buf).map_err(|_| ())?;
            if let Some(r) = recorder.as_mut() {
                if let Some(store) = proxy.store_mut().as_mut() {
                    r.feed(store, &buf[step.data.clone()]);
                }
            }
            // Relay the bytes as framed by the apiserver.
            tcp.write_all(&buf[..step.consumed]).await.map_err(|_| ())?;
            buf.drain(..step.consumed);
            done = step.done;
        }
        Ok(())
    }
    .await;
    // Only an answer being recorded touches the store (and so forgets the
    // offline answers kept in memory).
    let mut guard = recorder.is_some().then(|| proxy.store_mut());
    let (Some(recorder), Some(store)) = (recorder, guard.as_mut().and_then(|g| g.as_mut())) else {
        relayed.map_err(|()| Upstream::Broken)?;
        return Ok(keep_conn(proxy, conn, done, identity, &resp));
    };
    if relayed.is_err() {
        recorder.abort(store);
        return Err(Upstream::Broken);
    }
    // This node's own Node object tells where the node can be reached.
    let own_node = key
        .filter(|k| proxy.is_own_node(k))
        .and_then(|_| recorder.buffered().map(<[u8]>::to_vec));
    match recorder.finish(store) {
        Ok(true) => {
            proxy.counters.borrow_mut().recorded += 1;
            let _ = store.evict_to_quota();
        }
        Ok(false) => {}
        Err(e) => debug!(
            "not cached ({}): {e}",
            key.map_or(String::new(), |k| k.to_string())
        ),
    }
    drop(guard);
    if let Some(body) = own_node {
        proxy.node_seen(api.encoding, &body);
    }
    Ok(keep_conn(proxy, conn, done, identity, &resp))
}

/// Keeps a node-identity connection whose answer was read to its end for
/// the next request. Returns true: the client's connection may go on.
fn keep_conn(
    proxy: &Proxy,
    conn: ApiConn,
    done: bool,
    identity: Identity,
    resp: &ResponseHead,
) -> bool {
    if done && identity == Identity::Node && resp.keep_alive() && proxy.pool.borrow().len() < POOL {
        proxy.pool.borrow_mut().push(conn);
    }
    true
}

/// The cache's name for `client` bringing `credentials`: the User-Agent
/// name plus the start of the credentials' SHA-256 (never the credentials
/// themselves, which would then sit in the cache file).
fn own_client(client: &str, credentials: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, credentials.as_bytes());
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{client}@{hex}")
}

/// The client's request head as sent upstream to `target`: the same
/// method and headers, less the client's hop-by-hop connection headers
/// (the proxy manages its own upstream connections).
fn upstream_head(head: &RequestHead, target: String) -> RequestHead {
    RequestHead {
        target,
        headers: head
            .headers
            .iter()
            .filter(|(n, _)| {
                !n.eq_ignore_ascii_case("Connection") && !n.eq_ignore_ascii_case("Keep-Alive")
            })
            .cloned()
            .collect(),
        ..head.clone()
    }
}

/// Reads an answer's head into `buf` (which keeps any body bytes read
/// with it), within [`ANSWER_TIMEOUT`]. Returns the head and its length.
async fn read_head(conn: &mut ApiConn, buf: &mut Vec<u8>) -> Result<(ResponseHead, usize), String> {
    let read = async {
        loop {
            if let Some(h) =
                http::parse_response_head(buf, &Limits::default()).map_err(|e| e.to_string())?
            {
                return Ok(h);
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) => return Err("connection closed before an answer".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    read.or(async {
        async_io::Timer::after(ANSWER_TIMEOUT).await;
        Err(format!("no answer within {ANSWER_TIMEOUT:?}"))
    })
    .await
}

/// Answers with a `metav1.Status` failure of `status`.
async fn fail(tcp: &mut TcpStream, status: u16, reason: &str, message: &str) -> io::Result<()> {
    let body = offline::status_json(status, reason, message);
    let headers = [
        ("Cache-Control", "no-cache, private".to_string()),
        ("Content-Type", "application/json".to_string()),
        ("Content-Length", body.len().to_string()),
    ];
    let mut out = Vec::new();
    if http::write_response_head(status, http::reason_phrase(status), &headers, &mut out).is_ok() {
        out.extend_from_slice(&body);
        tcp.write_all(&out).await?;
    }
    Ok(())
}

//! The stand-in kube-apiserver of the tests: an in-memory cluster (pods, configmaps,
//! nodes) seeded from the recorded fixtures, served over HTTP/1.1 (plain or TLS 1.3) with
//! GET, LIST and WATCH in both encodings, resourceVersions, selectors, bookmarks,
//! compaction and 410 Gone as the recorded kube-apiserver 1.24 answers them.
//!
//! Objects are kept as the bytes the real server sent (the JSON list item text and the
//! protobuf item message); every answer is framed from them with `tether_edge::kube`
//! ([`encode_list`], [`encode_watch_event`], [`pb::encode_envelope`]), so a GET or LIST
//! of seeded objects is byte-identical to the recording.
//!
//! Simplified: `limit` and `continue` are ignored (every LIST is one page); a LIST at any
//! resourceVersion serves the current state (an `Exact` one older than the compaction
//! point is 410 Expired); only GET is served (other methods get 405); the list
//! resourceVersion is per resource, as the 1.24 watch cache reports it (the RV of the
//! last event of that resource; [`StandIn::compact`] brings all of them to the global RV).
//! Without TLS every request is allowed; with TLS a client needs a certificate signed by
//! the test CA or a bearer token, otherwise it gets 403 as `system:anonymous` does.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tether_edge::kube::{
    encode_list, encode_watch_event, json, parse_list, pb, Encoding, EventType, ListMeta,
};

use crate::pki::Pki;

/// How long the listener sleeps when no connection is waiting.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How often a blocked read wakes to check for shutdown and [`StandIn::set_down`].
const READ_POLL: Duration = Duration::from_millis(100);
/// Bodies up to this size get `Content-Length`; longer ones are chunked (Go's net/http).
const CHUNKING_THRESHOLD: usize = 2048;
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Watch duration when the client gives no `timeoutSeconds` (the apiserver picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// The flow-control headers every recorded node request carried.
const FLOWSCHEMA_UID: &str = "75c47252-fcea-4cbc-9403-9134bdbd8ca7";
const PRIORITYLEVEL_UID: &str = "d47ba9de-760d-46c1-8e52-abb6bc831e43";

/// The fixtures directory the cluster is seeded from.
fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube-apiserver-1.24")
}

/// A resource the stand-in serves (all in core `v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `pods` (namespaced).
    Pod,
    /// `configmaps` (namespaced).
    ConfigMap,
    /// `nodes` (cluster-scoped).
    Node,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    /// The URL resource name (`pods`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::ConfigMap => "configmaps",
            Kind::Node => "nodes",
        }
    }

    /// The object kind (`Pod`).
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Node => "Node",
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Kind::Pod => "PodList",
            Kind::ConfigMap => "ConfigMapList",
            Kind::Node => "NodeList",
        }
    }

    fn from_resource(resource: &str) -> Option<Kind> {
        match resource {
            "pods" => Some(Kind::Pod),
            "configmaps" => Some(Kind::ConfigMap),
            "nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    /// What the recorded BOOKMARK objects carry after `metadata` (JSON), the zero values
    /// Go's encoder writes for an empty object of this kind.
    fn bookmark_json_rest(self) -> &'static str {
        match self {
            Kind::Pod => r#","spec":{"containers":null},"status":{}"#,
            Kind::ConfigMap => "",
            Kind::Node => {
                r#","spec":{},"status":{"daemonEndpoints":{"kubeletEndpoint":{"Port":0}},"nodeInfo":{"machineID":"","systemUUID":"","bootID":"","kernelVersion":"","osImage":"","containerRuntimeVersion":"","kubeletVersion":"","kubeProxyVersion":"","operatingSystem":"","architecture":""}}"#
            }
        }
    }

    /// The same for protobuf: the message fields after `metadata`, as recorded.
    #[rustfmt::skip]
    fn bookmark_pb_rest(self) -> &'static [u8] {
        match self {
            Kind::Pod => &[
                0x12, 0x1c, 0x1a, 0x00, 0x32, 0x00, 0x42, 0x00, 0x4a, 0x00, 0x52, 0x00, 0x58, 0x00,
                0x60, 0x00, 0x68, 0x00, 0x82, 0x01, 0x00, 0x8a, 0x01, 0x00, 0x9a, 0x01, 0x00, 0xc2,
                0x01, 0x00, 0x1a, 0x0e, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00,
                0x4a, 0x00, 0x5a, 0x00,
            ],
            Kind::ConfigMap => &[],
            Kind::Node => &[
                0x12, 0x08, 0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00, 0x20, 0x00, 0x1a, 0x1e, 0x1a, 0x00,
                0x32, 0x04, 0x0a, 0x02, 0x08, 0x00, 0x3a, 0x14, 0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00,
                0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x3a, 0x00, 0x42, 0x00, 0x4a, 0x00, 0x52, 0x00,
            ],
        }
    }
}

/// One stored object: both encodings of the list item, and what selectors look at.
#[derive(Debug, Clone)]
struct Obj {
    namespace: String,
    name: String,
    /// The JSON list item text (no `kind`/`apiVersion`).
    json: Vec<u8>,
    /// The protobuf item message (no envelope).
    pb: Vec<u8>,
    labels: Vec<(String, String)>,
    /// `spec.nodeName` of a pod; empty otherwise.
    node_name: String,
    /// Position in LISTs: seeded objects keep the recorded order (the watch cache's
    /// rv=0 answers are not sorted by name), new ones come last.
    seq: u64,
    /// The same for protobuf LISTs (the recorded protobuf list has its own order).
    pb_seq: u64,
}

/// One entry of the watch history.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: Kind,
    event_type: EventType,
    object: Obj,
    /// The object before a MODIFIED, so selectors can turn it into ADDED or DELETED.
    old: Option<Obj>,
}

type Key = (Kind, String, String);

/// The cluster state behind the lock.
struct Cluster {
    /// The global resourceVersion (the last one handed out).
    rv: u64,
    /// Per resource: the list resourceVersion (last event of that resource).
    kind_rv: [u64; 3],
    /// Per resource: watches and exact LISTs from before this RV are 410 Gone.
    oldest: [u64; 3],
    objects: BTreeMap<Key, Obj>,
    history: Vec<Event>,
}

/// One request as received, for assertions about who asked what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method (`GET`).
    pub method: String,
    /// The request target, path and query as sent.
    pub target: String,
    /// The `User-Agent` header (empty if absent).
    pub user_agent: String,
    /// The `Accept` header (empty if absent).
    pub accept: String,
    /// Who asked: the client certificate's CN, `bearer:<token>`, or empty (anonymous).
    pub identity: String,
}

struct Shared {
    cluster: Mutex<Cluster>,
    changed: Condvar,
    stop: AtomicBool,
    down: AtomicBool,
    unavailable: AtomicBool,
    /// Bumped by [`StandIn::set_down`]: connections of an older epoch close.
    epoch: AtomicU64,
    bookmark_ms: AtomicU64,
    log: Mutex<Vec<Request>>,
    audit: AtomicU64,
    tls: Option<Arc<ServerConfig>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stand-in kube-apiserver on `127.0.0.1:0`; stops when dropped.
///
/// One thread per connection, HTTP/1.1 keep-alive. Seeded with the pods of
/// `list-pods-node-edge-1-rv0` (list RV 358), the nodes of `list-nodes-edge-1-rv0`
/// (RV 223) and the configmaps of `list-configmaps-edge-apps` (RV 392); the global
/// resourceVersion starts at the largest of these.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl StandIn {
    /// Starts a plain-HTTP stand-in.
    ///
    /// # Panics
    ///
    /// Panics if the fixtures cannot be read or the listener cannot be bound.
    pub fn start() -> StandIn {
        StandIn::start_with(None)
    }

    /// Starts an HTTPS stand-in (TLS 1.3) serving [`Pki::hub_cert`] (valid for
    /// `127.0.0.1`), verifying client certificates against [`Pki::ca`]. Requests without
    /// a client certificate or bearer token get 403 Forbidden.
    ///
    /// # Panics
    ///
    /// Panics as [`StandIn::start`] does, or if the TLS configuration cannot be built.
    pub fn start_tls(pki: &Pki) -> StandIn {
        let config = tether_link::tls::server_config(&pki.hub_cert, &pki.hub_key, Some(&pki.ca))
            .expect("apiserver stand-in: TLS server config");
        StandIn::start_with(Some(Arc::new(config)))
    }

    fn start_with(tls: Option<Arc<ServerConfig>>) -> StandIn {
        let cluster = seed().expect("apiserver stand-in: seed from fixtures");
        let listener = TcpListener::bind("127.0.0.1:0").expect("apiserver stand-in: bind");
        listener
            .set_nonblocking(true)
            .expect("apiserver stand-in: nonblocking listener");
        let addr = listener
            .local_addr()
            .expect("apiserver stand-in: local addr");
        let shared = Arc::new(Shared {
            cluster: Mutex::new(cluster),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            down: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            bookmark_ms: AtomicU64::new(1000),
            log: Mutex::new(Vec::new()),
            audit: AtomicU64::new(0),
            tls,
        });
        let s = Arc::clone(&shared);
        thread::Builder::new()
            .name("apiserver-accept".into())
            .spawn(move || accept_loop(listener, s))
            .expect("apiserver stand-in: spawn");
        StandIn { addr, shared }
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` or `https://127.0.0.1:port`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The global resourceVersion (the last one handed out).
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.cluster).rv
    }

    /// The list resourceVersion a LIST of `kind` reports now.
    pub fn list_resource_version(&self, kind: Kind) -> u64 {
        lock(&self.shared.cluster).kind_rv[kind.index()]
    }

    /// The stored `(JSON list item text, protobuf item message)` of an object.
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let c = lock(&self.shared.cluster);
        c.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .map(|o| (o.json.clone(), o.pb.clone()))
    }

    /// Creates or replaces an object from its two encodings (list item form: JSON
    /// without `kind`/`apiVersion`, protobuf without envelope). Its resourceVersion is
    /// set to a new global RV in both, which is returned; watchers get ADDED or MODIFIED.
    ///
    /// # Errors
    ///
    /// The JSON or protobuf item cannot be read.
    pub fn put(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        json_item: &[u8],
        pb_item: &[u8],
    ) -> Result<u64, String> {
        let labels = json_labels(json_item)?;
        let obj = Obj {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            json: json_item.to_vec(),
            pb: pb_item.to_vec(),
            labels,
            node_name: node_name_of(kind, json_item),
            seq: u64::MAX,
            pb_seq: u64::MAX,
        };
        self.commit(kind, obj, None)
    }

    /// Sets label `key` to `value` on an existing object in both encodings and gives it a
    /// new resourceVersion (returned); watchers get MODIFIED.
    ///
    /// # Errors
    ///
    /// No such object, or its bytes cannot be rewritten.
    pub fn modify_label(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<u64, String> {
        let mut obj = self
            .object_struct(kind, namespace, name)
            .ok_or_else(|| format!("{} {namespace}/{name} not found", kind.resource()))?;
        match obj.labels.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => obj.labels.push((key.to_owned(), value.to_owned())),
        }
        obj.labels.sort();
        let labels = obj.labels.clone();
        self.commit(kind, obj, Some(labels))
    }

    /// Deletes an object; watchers get DELETED carrying its last state at the new
    /// resourceVersion, which is returned (`None` if there was no such object).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let mut c = lock(&self.shared.cluster);
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut obj = c.objects.remove(&key)?;
        let rv = c.rv + 1;
        let rv_text = rv.to_string();
        obj.json = json_rewrite(&obj.json, &rv_text, None).ok()?;
        obj.pb = pb_rewrite(&obj.pb, &rv_text, None).ok()?;
        c.rv = rv;
        c.kind_rv[kind.index()] = rv;
        c.history.push(Event {
            rv,
            kind,
            event_type: EventType::Deleted,
            object: obj,
            old: None,
        });
        drop(c);
        self.shared.changed.notify_all();
        Some(rv)
    }

    /// Compacts the history: watches and `Exact` LISTs from any RV before the current
    /// one get 410 Gone; every resource's list RV becomes the current global RV.
    pub fn compact(&self) {
        let mut c = lock(&self.shared.cluster);
        c.history.clear();
        let rv = c.rv;
        c.oldest = [rv; 3];
        c.kind_rv = [rv; 3];
    }

    /// Takes the server down (`true`): open connections, watches included, are cut
    /// without a final chunk and new ones are closed at once after accept. `false`
    /// brings it back on the same address.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_all();
        }
    }

    /// While `true`, every request is answered 503 ServiceUnavailable (a Status).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared.bookmark_ms.store(ms, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    fn object_struct(&self, kind: Kind, namespace: &str, name: &str) -> Option<Obj> {
        let c = lock(&self.shared.cluster);
        c.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Stores `obj` at a new RV (rewriting RV, and labels if given, in both encodings).
    fn commit(
        &self,
        kind: Kind,
        mut obj: Obj,
        labels: Option<Vec<(String, String)>>,
    ) -> Result<u64, String> {
        let mut c = lock(&self.shared.cluster);
        let rv = c.rv + 1;
        let rv_text = rv.to_string();
        obj.json = json_rewrite(&obj.json, &rv_text, labels.as_deref())?;
        obj.pb = pb_rewrite(&obj.pb, &rv_text, labels.as_deref()).map_err(|e| e.to_string())?;
        let key = (kind, obj.namespace.clone(), obj.name.clone());
        (obj.seq, obj.pb_seq) = match c.objects.get(&key) {
            Some(old) => (old.seq, old.pb_seq),
            None => {
                let next = c
                    .objects
                    .values()
                    .map(|o| o.seq.max(o.pb_seq) + 1)
                    .max()
                    .unwrap_or(0);
                (next, next)
            }
        };
        let old = c.objects.insert(key, obj.clone());
        c.rv = rv;
        c.kind_rv[kind.index()] = rv;
        let event_type = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        c.history.push(Event {
            rv,
            kind,
            event_type,
            object: obj,
            old,
        });
        drop(c);
        self.shared.changed.notify_all();
        Ok(rv)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }
}

// ------------------------------------------------------------------ seeding

fn read_fixture(name: &str) -> io::Result<Vec<u8>> {
    fs::read(fixtures_dir().join(name))
}

fn seed() -> Result<Cluster, String> {
    let mut c = Cluster {
        rv: 0,
        kind_rv: [0; 3],
        oldest: [0; 3],
        objects: BTreeMap::new(),
        history: Vec::new(),
    };
    for (kind, stem) in [
        (Kind::Pod, "list-pods-node-edge-1-rv0"),
        (Kind::ConfigMap, "list-configmaps-edge-apps"),
        (Kind::Node, "list-nodes-edge-1-rv0"),
    ] {
        let json_body = read_fixture(&format!("{stem}-json.response.body.json"))
            .map_err(|e| format!("{stem}: {e}"))?;
        let pb_body = read_fixture(&format!("{stem}-pb.response.body.bin"))
            .map_err(|e| format!("{stem}: {e}"))?;
        let jl = parse_list(Encoding::Json, &json_body).map_err(|e| format!("{stem}: {e}"))?;
        let pl = parse_list(Encoding::Protobuf, &pb_body).map_err(|e| format!("{stem}: {e}"))?;
        let rv: u64 = jl
            .meta
            .resource_version
            .parse()
            .map_err(|_| format!("{stem}: list RV"))?;
        for item in &jl.items {
            let (pb_seq, pb_item) = pl
                .items
                .iter()
                .enumerate()
                .find(|(_, p)| {
                    p.meta.namespace == item.meta.namespace && p.meta.name == item.meta.name
                })
                .map(|(i, p)| (i as u64, p))
                .ok_or_else(|| format!("{stem}: {} not in the protobuf list", item.meta.name))?;
            let obj = Obj {
                namespace: item.meta.namespace.clone(),
                name: item.meta.name.clone(),
                json: item.bytes.to_vec(),
                pb: pb_item.bytes.to_vec(),
                labels: item.meta.labels.clone(),
                node_name: node_name_of(kind, item.bytes),
                seq: c.objects.len() as u64,
                pb_seq,
            };
            c.objects
                .insert((kind, obj.namespace.clone(), obj.name.clone()), obj);
        }
        c.kind_rv[kind.index()] = rv;
        c.oldest[kind.index()] = rv;
        c.rv = c.rv.max(rv);
    }
    Ok(c)
}

/// `spec.nodeName` of a pod's JSON item (the only `"nodeName"` key a pod has).
fn node_name_of(kind: Kind, json_item: &[u8]) -> String {
    if kind != Kind::Pod {
        return String::new();
    }
    let needle = b"\"nodeName\":\"";
    let Some(at) = json_item.windows(needle.len()).position(|w| w == needle) else {
        return String::new();
    };
    let start = at + needle.len();
    let end = json_item[start..]
        .iter()
        .position(|&b| b == b'"')
        .map_or(json_item.len(), |e| start + e);
    String::from_utf8_lossy(&json_item[start..end]).into_owned()
}

fn json_labels(item: &[u8]) -> Result<Vec<(String, String)>, String> {
    let meta = json_member(item, 0, b"metadata")?.ok_or("item has no metadata")?;
    let Some(labels) = json_member(item, meta.start, b"labels")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    json::for_each_member(item, labels.start, &mut |k, r| {
        out.push((json::unescape(k)?, json::string(item, r)?));
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The value range of member `key` of the object starting at `start`.
fn json_member(b: &[u8], start: usize, key: &[u8]) -> Result<Option<Range<usize>>, String> {
    let start = json::skip_ws(b, start);
    let mut found = None;
    json::for_each_member(b, start, &mut |k, r| {
        if k == key && found.is_none() {
            found = Some(r);
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(found)
}

/// ObjectMeta members that Go writes before `labels`.
const BEFORE_LABELS: [&[u8]; 10] = [
    b"name",
    b"generateName",
    b"namespace",
    b"selfLink",
    b"uid",
    b"resourceVersion",
    b"generation",
    b"creationTimestamp",
    b"deletionTimestamp",
    b"deletionGracePeriodSeconds",
];

fn json_labels_text(labels: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![b'{'];
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_string(&mut out, k);
        out.push(b':');
        json::write_string(&mut out, v);
    }
    out.push(b'}');
    out
}

/// The JSON item with `metadata.resourceVersion` set to `rv` and, if given, the labels
/// replaced (sorted, as Go writes maps).
fn json_rewrite(
    item: &[u8],
    rv: &str,
    labels: Option<&[(String, String)]>,
) -> Result<Vec<u8>, String> {
    let meta = json_member(item, 0, b"metadata")?.ok_or("item has no metadata")?;
    let mut rv_range = None;
    let mut labels_range = None;
    let mut insert_at = meta.start + 1;
    json::for_each_member(item, meta.start, &mut |k, r| {
        if k == b"resourceVersion" {
            rv_range = Some(r.clone());
        } else if k == b"labels" {
            labels_range = Some(r.clone());
        }
        if BEFORE_LABELS.contains(&k) {
            insert_at = r.end;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let rv_range = rv_range.ok_or("item has no metadata.resourceVersion")?;
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut rv_text = Vec::new();
    json::write_string(&mut rv_text, rv);
    edits.push((rv_range, rv_text));
    if let Some(labels) = labels {
        let text = json_labels_text(labels);
        match labels_range {
            Some(r) => edits.push((r, text)),
            None => {
                let mut ins = b",\"labels\":".to_vec();
                ins.extend_from_slice(&text);
                edits.push((insert_at..insert_at, ins));
            }
        }
    }
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = Vec::with_capacity(item.len() + 64);
    let mut at = 0;
    for (r, text) in edits {
        out.extend_from_slice(&item[at..r.start]);
        out.extend_from_slice(&text);
        at = r.end;
    }
    out.extend_from_slice(&item[at..]);
    Ok(out)
}

/// The protobuf item with `metadata.resourceVersion` (ObjectMeta field 6) set to `rv`
/// and, if given, the labels (map field 11, entries sorted by key) replaced.
fn pb_rewrite(
    item: &[u8],
    rv: &str,
    labels: Option<&[(String, String)]>,
) -> tether_edge::kube::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(item.len() + 64);
    let mut r = pb::Reader::new(item);
    loop {
        let start = r.position();
        let Some((field, value)) = r.next_field()? else {
            break;
        };
        if field == 1 {
            let meta = pb_rewrite_meta(value.bytes("ObjectMeta")?, rv, labels)?;
            pb::put_len_field(&mut out, 1, &meta);
        } else {
            out.extend_from_slice(&item[start..r.position()]);
        }
    }
    Ok(out)
}

fn pb_rewrite_meta(
    meta: &[u8],
    rv: &str,
    labels: Option<&[(String, String)]>,
) -> tether_edge::kube::Result<Vec<u8>> {
    let put_labels = |out: &mut Vec<u8>, labels: &[(String, String)]| {
        for (k, v) in labels {
            let mut entry = Vec::new();
            pb::put_len_field(&mut entry, 1, k.as_bytes());
            pb::put_len_field(&mut entry, 2, v.as_bytes());
            pb::put_len_field(out, 11, &entry);
        }
    };
    let mut out = Vec::with_capacity(meta.len() + 64);
    let mut pending = labels;
    let mut r = pb::Reader::new(meta);
    loop {
        let start = r.position();
        let Some((field, _)) = r.next_field()? else {
            break;
        };
        if field > 11 {
            if let Some(l) = pending.take() {
                put_labels(&mut out, l);
            }
        }
        match field {
            6 => pb::put_len_field(&mut out, 6, rv.as_bytes()),
            11 if labels.is_some() => {
                if let Some(l) = pending.take() {
                    put_labels(&mut out, l);
                }
            }
            _ => out.extend_from_slice(&meta[start..r.position()]),
        }
    }
    if let Some(l) = pending {
        put_labels(&mut out, l);
    }
    Ok(out)
}

// ------------------------------------------------------------------ encoding

/// A standalone object (GET body without its newline, watch event object): JSON gets
/// `kind` and `apiVersion` in front, protobuf the `k8s\0` envelope.
fn standalone(kind: Kind, obj: &Obj, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => pb::encode_envelope("v1", kind.kind(), &obj.pb),
        Encoding::Json => {
            let mut out = Vec::with_capacity(obj.json.len() + 32);
            out.extend_from_slice(b"{\"kind\":");
            json::write_string(&mut out, kind.kind());
            out.extend_from_slice(b",\"apiVersion\":\"v1\"");
            let rest = &obj.json[1..];
            if json::skip_ws(rest, 0) < rest.len() && rest[json::skip_ws(rest, 0)] != b'}' {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            out
        }
    }
}

/// A BOOKMARK object as the recorded ones: an empty object of `kind` with only
/// `metadata.resourceVersion` (and the initial-events-end annotation if asked).
fn bookmark(kind: Kind, rv: u64, initial_end: bool, encoding: Encoding) -> Vec<u8> {
    let rv = rv.to_string();
    match encoding {
        Encoding::Json => {
            let mut out = format!(
                r#"{{"kind":"{}","apiVersion":"v1","metadata":{{"resourceVersion":"{rv}","creationTimestamp":null"#,
                kind.kind()
            );
            if initial_end {
                out.push_str(r#","annotations":{"k8s.io/initial-events-end":"true"}"#);
            }
            out.push('}');
            out.push_str(kind.bookmark_json_rest());
            out.push('}');
            out.into_bytes()
        }
        Encoding::Protobuf => {
            let mut meta = vec![0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00];
            pb::put_len_field(&mut meta, 6, rv.as_bytes());
            meta.extend_from_slice(&[0x38, 0x00, 0x42, 0x00]);
            if initial_end {
                let mut entry = Vec::new();
                pb::put_len_field(&mut entry, 1, b"k8s.io/initial-events-end");
                pb::put_len_field(&mut entry, 2, b"true");
                pb::put_len_field(&mut meta, 12, &entry);
            }
            meta.extend_from_slice(&[0x7a, 0x00]);
            let mut raw = Vec::new();
            pb::put_len_field(&mut raw, 1, &meta);
            raw.extend_from_slice(kind.bookmark_pb_rest());
            pb::encode_envelope("v1", kind.kind(), &raw)
        }
    }
}

/// A `metav1.Status` failure as the apiserver encodes it (no trailing newline).
/// `details`: `Some((name, kind))`, empty strings left out of JSON.
fn status(
    encoding: Encoding,
    code: u16,
    reason: &str,
    message: &str,
    details: Option<(&str, &str)>,
) -> Vec<u8> {
    match encoding {
        Encoding::Json => {
            let mut out =
                br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"#
                    .to_vec();
            json::write_string(&mut out, message);
            out.extend_from_slice(b",\"reason\":");
            json::write_string(&mut out, reason);
            if let Some((name, kind)) = details {
                out.extend_from_slice(b",\"details\":{");
                let mut first = true;
                for (k, v) in [("name", name), ("kind", kind)] {
                    if v.is_empty() {
                        continue;
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    json::write_string(&mut out, k);
                    out.push(b':');
                    json::write_string(&mut out, v);
                }
                out.push(b'}');
            }
            out.extend_from_slice(format!(",\"code\":{code}}}").as_bytes());
            out
        }
        Encoding::Protobuf => {
            let mut raw = Vec::new();
            pb::put_len_field(&mut raw, 1, &[0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00]);
            pb::put_len_field(&mut raw, 2, b"Failure");
            pb::put_len_field(&mut raw, 3, message.as_bytes());
            pb::put_len_field(&mut raw, 4, reason.as_bytes());
            if let Some((name, kind)) = details {
                let mut d = Vec::new();
                pb::put_len_field(&mut d, 1, name.as_bytes());
                pb::put_len_field(&mut d, 2, b"");
                pb::put_len_field(&mut d, 3, kind.as_bytes());
                pb::put_varint_field(&mut d, 5, 0);
                pb::put_len_field(&mut d, 6, b"");
                pb::put_len_field(&mut raw, 5, &d);
            }
            pb::put_varint_field(&mut raw, 6, u64::from(code));
            pb::encode_envelope("v1", "Status", &raw)
        }
    }
}

// ------------------------------------------------------------------ selectors

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default)]
struct Selector {
    labels: Vec<LabelReq>,
    /// `(field, value, equal)`.
    fields: Vec<(String, String, bool)>,
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for part in split_top(s) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            LabelReq::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once(" notin ") {
            LabelReq::NotIn(k.trim().into(), parse_set(v).ok_or("bad set")?)
        } else if let Some((k, v)) = part.split_once(" in ") {
            LabelReq::In(k.trim().into(), parse_set(v).ok_or("bad set")?)
        } else if let Some(k) = part.strip_prefix('!') {
            LabelReq::NotExists(k.trim().into())
        } else {
            LabelReq::Exists(part.into())
        };
        out.push(req);
    }
    Ok(out)
}

fn parse_field_selector(s: &str) -> Result<Vec<(String, String, bool)>, String> {
    let mut out = Vec::new();
    for part in split_top(s) {
        let (k, v, eq) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = part.split_once('=') {
            (k, v, true)
        } else {
            return Err(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            ));
        };
        out.push((k.trim().to_owned(), v.trim().to_owned(), eq));
    }
    Ok(out)
}

impl Selector {
    fn check_fields(&self, kind: Kind) -> Result<(), String> {
        for (field, _, _) in &self.fields {
            let ok = matches!(field.as_str(), "metadata.name" | "metadata.namespace")
                || (kind == Kind::Pod && field == "spec.nodeName");
            if !ok {
                return Err(format!("field label not supported: {field}"));
            }
        }
        Ok(())
    }

    fn matches(&self, obj: &Obj) -> bool {
        let label = |k: &str| obj.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v),
            LabelReq::Ne(k, v) => label(k) != Some(v),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| !vs.contains(l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(f, v, eq)| {
                let actual = match f.as_str() {
                    "metadata.name" => &obj.name,
                    "metadata.namespace" => &obj.namespace,
                    _ => &obj.node_name,
                };
                (actual == v) == *eq
            })
    }
}

// ------------------------------------------------------------------ HTTP

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                if shared.down.load(Ordering::SeqCst) {
                    let _ = tcp.shutdown(Shutdown::Both);
                    continue;
                }
                let s = Arc::clone(&shared);
                let _ = thread::Builder::new()
                    .name("apiserver-conn".into())
                    .spawn(move || {
                        let _ = serve_connection(tcp, &s);
                    });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

struct Conn<'a> {
    stream: Stream,
    buf: Vec<u8>,
    shared: &'a Shared,
    epoch: u64,
    identity: String,
}

impl Conn<'_> {
    fn cut(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
            || self.shared.epoch.load(Ordering::SeqCst) != self.epoch
    }

    /// Reads more bytes into `buf`; `Ok(false)` at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.cut() {
                return Err(io::Error::new(
                    ErrorKind::ConnectionAborted,
                    "stand-in down",
                ));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

fn serve_connection(tcp: TcpStream, shared: &Shared) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_nodelay(true)?;
    let epoch = shared.epoch.load(Ordering::SeqCst);
    let mut identity = String::new();
    let stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(config) => {
            tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut conn = ServerConnection::new(Arc::clone(config))
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            let mut tcp = tcp;
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp)?;
            }
            if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
                identity = tether_link::tls::subject_common_name(cert).unwrap_or_default();
            }
            Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
    };
    stream.tcp().set_read_timeout(Some(READ_POLL))?;
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        shared,
        epoch,
        identity,
    };
    loop {
        let Some(head) = read_head(&mut conn)? else {
            return Ok(());
        };
        let close = head.header("Connection").eq_ignore_ascii_case("close");
        if !handle(&mut conn, &head)? || close {
            let _ = conn.stream.flush();
            return Ok(());
        }
    }
}

fn read_head(conn: &mut Conn<'_>) -> io::Result<Option<Head>> {
    let end = loop {
        if let Some(i) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        if !conn.fill()? {
            return Ok(None);
        }
    };
    let text = String::from_utf8_lossy(&conn.buf[..end]).into_owned();
    conn.buf.drain(..end + 4);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let head = Head {
        method,
        target,
        headers,
    };
    // Discard any request body.
    let len: usize = head.header("Content-Length").parse().unwrap_or(0);
    while conn.buf.len() < len {
        if !conn.fill()? {
            return Ok(None);
        }
    }
    conn.buf.drain(..len);
    Ok(Some(head))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn http_date() -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes the status line and headers in the recorded order; `length` `None` = chunked.
fn write_head(
    conn: &mut Conn<'_>,
    code: u16,
    content_type: &str,
    length: Option<usize>,
) -> io::Result<()> {
    let n = conn.shared.audit.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let framing = match length {
        Some(len) => format!("Content-Length: {len}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!(
        "HTTP/1.1 {code} {}\r\nAudit-Id: {nanos:08x}-{:04x}-4{:03x}-8{:03x}-{n:012x}\r\n\
         Cache-Control: no-cache, private\r\nContent-Type: {content_type}\r\n\
         X-Kubernetes-Pf-Flowschema-Uid: {FLOWSCHEMA_UID}\r\n\
         X-Kubernetes-Pf-Prioritylevel-Uid: {PRIORITYLEVEL_UID}\r\nDate: {}\r\n{framing}\r\n\r\n",
        reason_phrase(code),
        n & 0xffff,
        (n >> 16) & 0xfff,
        (n >> 28) & 0xfff,
        http_date(),
    );
    conn.stream.write_all(head.as_bytes())
}

fn write_chunk(conn: &mut Conn<'_>, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    conn.stream.write_all(&out)
}

/// A complete response: `Content-Length` up to 2048 bytes, chunked above.
fn respond(conn: &mut Conn<'_>, code: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    if body.len() <= CHUNKING_THRESHOLD {
        write_head(conn, code, content_type, Some(body.len()))?;
        conn.stream.write_all(body)?;
    } else {
        write_head(conn, code, content_type, None)?;
        for part in body.chunks(32 * 1024) {
            write_chunk(conn, part)?;
        }
        conn.stream.write_all(b"0\r\n\r\n")?;
    }
    conn.stream.flush()
}

fn respond_status(
    conn: &mut Conn<'_>,
    encoding: Encoding,
    code: u16,
    reason: &str,
    message: &str,
    details: Option<(&str, &str)>,
) -> io::Result<()> {
    let mut body = status(encoding, code, reason, message, details);
    if encoding == Encoding::Json {
        body.push(b'\n');
    }
    respond(conn, code, encoding.content_type(false), &body)
}

fn accept_encoding(accept: &str) -> Encoding {
    let first = accept.split(',').next().unwrap_or("");
    match Encoding::from_content_type(first) {
        Some(Encoding::Protobuf) => Encoding::Protobuf,
        _ => Encoding::Json,
    }
}

/// What a request asks for.
struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    fn parse(q: &str) -> Query {
        let params = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query { params }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }
}

/// Handles one request; `Ok(false)` closes the connection.
fn handle(conn: &mut Conn<'_>, head: &Head) -> io::Result<bool> {
    let mut identity = conn.identity.clone();
    let auth = head.header("Authorization");
    if identity.is_empty() {
        if let Some(token) = auth.strip_prefix("Bearer ") {
            identity = format!("bearer:{}", token.trim());
        }
    }
    lock(&conn.shared.log).push(Request {
        method: head.method.clone(),
        target: head.target.clone(),
        user_agent: head.header("User-Agent").to_owned(),
        accept: head.header("Accept").to_owned(),
        identity: identity.clone(),
    });
    let encoding = accept_encoding(head.header("Accept"));
    if conn.shared.unavailable.load(Ordering::SeqCst) {
        respond_status(
            conn,
            encoding,
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            None,
        )?;
        return Ok(true);
    }
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let query = Query::parse(query);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = match segs.as_slice() {
        ["api", "v1", res] => Kind::from_resource(res).map(|k| (k, None, None)),
        ["api", "v1", "nodes", name] => Some((Kind::Node, None, Some(*name))),
        ["api", "v1", "namespaces", ns, res] => Kind::from_resource(res)
            .filter(|k| *k != Kind::Node)
            .map(|k| (k, Some(*ns), None)),
        ["api", "v1", "namespaces", ns, res, name] => Kind::from_resource(res)
            .filter(|k| *k != Kind::Node)
            .map(|k| (k, Some(*ns), Some(*name))),
        _ => None,
    };
    let Some((kind, ns, name)) = route else {
        respond_status(
            conn,
            encoding,
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(("", "")),
        )?;
        return Ok(true);
    };
    if conn.shared.tls.is_some() && identity.is_empty() {
        let scope = match ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let verb = if name.is_some() { "get" } else { "list" };
        let msg = format!(
            "{res} is forbidden: User \"system:anonymous\" cannot {verb} resource \"{res}\" in API group \"\" {scope}",
            res = kind.resource()
        );
        respond_status(
            conn,
            encoding,
            403,
            "Forbidden",
            &msg,
            Some(("", kind.resource())),
        )?;
        return Ok(true);
    }
    if head.method != "GET" {
        respond_status(
            conn,
            encoding,
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        )?;
        return Ok(true);
    }
    if let Some(name) = name {
        let ns = ns.unwrap_or("");
        let obj = {
            let c = lock(&conn.shared.cluster);
            c.objects
                .get(&(kind, ns.to_owned(), name.to_owned()))
                .cloned()
        };
        match obj {
            Some(obj) => {
                let mut body = standalone(kind, &obj, encoding);
                if encoding == Encoding::Json {
                    body.push(b'\n');
                }
                respond(conn, 200, encoding.content_type(false), &body)?;
            }
            None => {
                let msg = format!("{} \"{name}\" not found", kind.resource());
                respond_status(
                    conn,
                    encoding,
                    404,
                    "NotFound",
                    &msg,
                    Some((name, kind.resource())),
                )?;
            }
        }
        return Ok(true);
    }
    let mut selector = Selector::default();
    let parsed = query
        .get("labelSelector")
        .map_or(Ok(Vec::new()), parse_label_selector)
        .and_then(|l| {
            selector.labels = l;
            query
                .get("fieldSelector")
                .map_or(Ok(Vec::new()), parse_field_selector)
        })
        .and_then(|f| {
            selector.fields = f;
            selector.check_fields(kind)
        });
    if let Err(msg) = parsed {
        respond_status(conn, encoding, 400, "BadRequest", &msg, None)?;
        return Ok(true);
    }
    let scope = Scope {
        kind,
        namespace: ns.map(str::to_owned),
        selector,
    };
    let rv: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok());
    if query.flag("watch") {
        return watch(conn, &scope, &query, rv, encoding);
    }
    // LIST.
    let (list_rv, items) = {
        let c = lock(&conn.shared.cluster);
        let exact = query.get("resourceVersionMatch") == Some("Exact");
        if exact && rv.is_some_and(|rv| rv < c.oldest[kind.index()]) {
            None
        } else {
            let items: Vec<Vec<u8>> = scope
                .current(&c, encoding)
                .map(|o| match encoding {
                    Encoding::Json => o.json.clone(),
                    Encoding::Protobuf => o.pb.clone(),
                })
                .collect();
            Some((c.kind_rv[kind.index()], items))
        }
    }
    .map_or((None, Vec::new()), |(rv, items)| (Some(rv), items));
    let Some(list_rv) = list_rv else {
        respond_status(
            conn,
            encoding,
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
            None,
        )?;
        return Ok(true);
    };
    let meta = ListMeta {
        resource_version: list_rv.to_string(),
        ..ListMeta::default()
    };
    let body = encode_list(encoding, "v1", kind.list_kind(), &meta, &items);
    respond(conn, 200, encoding.content_type(false), &body)?;
    Ok(true)
}

/// Which objects a LIST or WATCH covers.
struct Scope {
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
}

impl Scope {
    fn covers(&self, obj: &Obj) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == obj.namespace)
            && self.selector.matches(obj)
    }

    fn current<'c>(
        &self,
        c: &'c Cluster,
        encoding: Encoding,
    ) -> impl Iterator<Item = &'c Obj> + 'c {
        let mut objs: Vec<&Obj> = c
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == self.kind && self.covers(o))
            .map(|(_, o)| o)
            .collect();
        objs.sort_by_key(|o| match encoding {
            Encoding::Json => o.seq,
            Encoding::Protobuf => o.pb_seq,
        });
        objs.into_iter()
    }

    /// The event a watcher of this scope sees for `e`, if any.
    fn view(&self, e: &Event) -> Option<EventType> {
        if e.kind != self.kind {
            return None;
        }
        let now = self.covers(&e.object);
        match e.event_type {
            EventType::Modified => {
                let before = e.old.as_ref().is_some_and(|o| self.covers(o));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
            t => now.then_some(t),
        }
    }
}

fn watch(
    conn: &mut Conn<'_>,
    scope: &Scope,
    query: &Query,
    rv: Option<u64>,
    encoding: Encoding,
) -> io::Result<bool> {
    let kind = scope.kind;
    let shared = conn.shared;
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial = query.flag("sendInitialEvents");
    write_head(conn, 200, encoding.content_type(true), None)?;
    let mut frames = Vec::new();
    let mut last = {
        let c = lock(&shared.cluster);
        let oldest = c.oldest[kind.index()];
        match rv {
            Some(rv) if rv != 0 && rv < oldest && !initial => {
                let msg = format!("too old resource version: {rv} ({oldest})");
                let st = status(encoding, 410, "Expired", &msg, None);
                drop(c);
                write_chunk(conn, &encode_watch_event(encoding, EventType::Error, &st))?;
                conn.stream.write_all(b"0\r\n\r\n")?;
                conn.stream.flush()?;
                return Ok(true);
            }
            Some(rv) if rv != 0 && !initial => rv,
            _ => {
                for o in scope.current(&c, encoding) {
                    let obj = standalone(kind, o, encoding);
                    frames.push(encode_watch_event(encoding, EventType::Added, &obj));
                }
                if initial {
                    let b = bookmark(kind, c.kind_rv[kind.index()], true, encoding);
                    frames.push(encode_watch_event(encoding, EventType::Bookmark, &b));
                }
                c.rv
            }
        }
    };
    let deadline = Instant::now() + timeout;
    let interval = || Duration::from_millis(shared.bookmark_ms.load(Ordering::SeqCst));
    let mut next_bookmark = Instant::now() + interval();
    loop {
        for f in frames.drain(..) {
            write_chunk(conn, &f)?;
        }
        conn.stream.flush()?;
        if conn.cut() {
            return Ok(false);
        }
        let now = Instant::now();
        if now >= deadline {
            conn.stream.write_all(b"0\r\n\r\n")?;
            conn.stream.flush()?;
            return Ok(true);
        }
        let mut c = lock(&shared.cluster);
        if !c.history.iter().any(|e| e.rv > last) {
            let until = if bookmarks {
                deadline.min(next_bookmark)
            } else {
                deadline
            };
            let wait = until.saturating_duration_since(now).min(READ_POLL);
            c = shared
                .changed
                .wait_timeout(c, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        for e in c.history.iter().filter(|e| e.rv > last) {
            if let Some(t) = scope.view(e) {
                let obj = standalone(kind, &e.object, encoding);
                frames.push(encode_watch_event(encoding, t, &obj));
            }
        }
        last = last.max(c.rv);
        if bookmarks && Instant::now() >= next_bookmark {
            let b = bookmark(kind, c.kind_rv[kind.index()], false, encoding);
            frames.push(encode_watch_event(encoding, EventType::Bookmark, &b));
            next_bookmark = Instant::now() + interval();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let obj = Obj {
            namespace: "ns".into(),
            name: "a".into(),
            json: Vec::new(),
            pb: Vec::new(),
            labels: vec![("app".into(), "web".into()), ("tier".into(), "x".into())],
            node_name: "edge-1".into(),
            seq: 0,
            pb_seq: 0,
        };
        let sel = |l: &str, f: &str| Selector {
            labels: parse_label_selector(l).unwrap(),
            fields: parse_field_selector(f).unwrap(),
        };
        assert!(sel("app=web", "").matches(&obj));
        assert!(sel("app in (api,web),tier", "spec.nodeName=edge-1").matches(&obj));
        assert!(!sel("app notin (web)", "").matches(&obj));
        assert!(!sel("app!=web", "").matches(&obj));
        assert!(sel("!missing", "metadata.name=a,metadata.namespace=ns").matches(&obj));
        assert!(!sel("", "spec.nodeName!=edge-1").matches(&obj));
    }

    #[test]
    fn http_date_shape() {
        let d = http_date();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}

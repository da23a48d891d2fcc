//! The pod webhook (issue 6): a mutating admission webhook that gives pods
//! labelled `tether.io/offline: autonomy` tolerations for
//! `node.kubernetes.io/unreachable` and `node.kubernetes.io/not-ready`
//! (NoExecute, operator Exists) without `tolerationSeconds`, so they stay
//! on their node through an outage of any length (KubeEdge's
//! `app-offline.kubeedge.io=autonomy`; ARCHITECTURE.md, "Autonomy").
//!
//! kube-apiserver runs its built-in DefaultTolerationSeconds plugin before
//! MutatingAdmissionWebhook, so a pod the webhook sees usually carries that
//! plugin's two 300 s tolerations already. The taint manager evicts after
//! the smallest `tolerationSeconds` among the tolerations that match a
//! taint, so the patch *replaces* those entries (and drops any further
//! time-limited toleration of the same key) rather than appending.
//!
//! [`review`] turns an AdmissionReview into its answer (pure, tested
//! here); [`serve`] is the thin HTTPS server around it.

use crate::links::Hub;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use futures_rustls::TlsAcceptor;
use log::{debug, info, warn};
use serde_json::{json, Map, Value};
use smol::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The pod label that asks for tolerations without a time limit.
pub const LABEL: &str = "tether.io/offline";
/// Its value.
pub const LABEL_VALUE: &str = "autonomy";
/// The taints the node lifecycle controller puts on a node it cannot hear
/// from (`unreachable`) or that reports NotReady (`not-ready`).
pub const TAINTS: [&str; 2] = [
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/not-ready",
];
/// The path kube-apiserver POSTs reviews to (`clientConfig` of
/// `cloudside/webhook.yaml`).
pub const PATH: &str = "/mutate-pods";
/// The largest body taken: kube-apiserver's requests are at most 3 MiB
/// (its request size limit), so a review of one object fits.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// The largest request head taken.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are closed at accept. kube-apiserver
/// keeps a few connections alive per replica, so this is far above need.
const MAX_CONNECTIONS: usize = 256;
/// TLS handshake, and a request once its first byte arrived, must finish
/// within this (kube-apiserver's default webhook timeout is 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle kept-alive connection is closed after this. Longer than Go's
/// `http.Transport` idle timeout (90 s), so kube-apiserver closes first
/// and never sends a review on a connection the hub is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The webhook's counters, for `/metrics`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Whether the webhook is configured (else nothing is shown).
    pub enabled: bool,
    /// HTTP requests received on the webhook port, any outcome.
    pub requests: u64,
    /// Pods patched.
    pub patched: u64,
    /// Requests answered with an error status (4xx): malformed reviews,
    /// wrong path or method, too large.
    pub refused: u64,
}

/// The answer to one well-formed review.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The AdmissionReview response, JSON.
    pub body: Vec<u8>,
    /// The JSONPatch sent (before base64), if the pod was patched.
    pub patch: Option<Value>,
    /// The pod patched, as `namespace/name` (or `namespace/generateName*`),
    /// for the log line.
    pub pod: Option<String>,
    /// The request was a dry run (nothing is stored).
    pub dry_run: bool,
}

/// Answers one AdmissionReview (admission.k8s.io/v1): always allowed; for
/// a pod CREATE whose labels carry `tether.io/offline: autonomy`, with a
/// JSONPatch that leaves the pod exactly one toleration without a time
/// limit for each of [`TAINTS`]. Anything else gets no patch. `Err` is a
/// malformed review, for a 400.
pub fn review(body: &[u8]) -> Result<Answer, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let api_version = doc.get("apiVersion").and_then(Value::as_str);
    let kind = doc.get("kind").and_then(Value::as_str);
    if api_version != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
        return Err(format!(
            "expected an AdmissionReview of admission.k8s.io/v1 (set admissionReviewVersions: [v1] in the MutatingWebhookConfiguration), got kind {kind:?} of {api_version:?}"
        ));
    }
    let request = doc
        .get("request")
        .and_then(Value::as_object)
        .ok_or("the AdmissionReview has no request object")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or("request.uid is missing: kube-apiserver matches the answer by it")?;
    let dry_run = request.get("dryRun").and_then(Value::as_bool) == Some(true);
    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    response.insert("allowed".into(), json!(true));
    let mut answer = Answer {
        body: Vec::new(),
        patch: None,
        pod: None,
        dry_run,
    };
    if is_pod_create(request) {
        let pod = request
            .get("object")
            .and_then(Value::as_object)
            .ok_or("request.object is missing or not an object in a pod CREATE")?;
        let labels = match pod.get("metadata").and_then(|m| m.get("labels")) {
            None | Some(Value::Null) => None,
            Some(Value::Object(l)) => Some(l),
            Some(_) => return Err("request.object.metadata.labels is not an object".into()),
        };
        let labelled =
            labels.and_then(|l| l.get(LABEL)).and_then(Value::as_str) == Some(LABEL_VALUE);
        if labelled {
            let (ops, warnings) = patch(pod)?;
            if !ops.is_empty() {
                let patch = Value::Array(ops);
                let text = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
                response.insert("patchType".into(), json!("JSONPatch"));
                response.insert("patch".into(), json!(tether_link::der::base64(&text)));
                answer.patch = Some(patch);
                answer.pod = Some(pod_name(request, pod));
            }
            if !warnings.is_empty() {
                response.insert("warnings".into(), json!(warnings));
            }
        }
    }
    answer.body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// Whether the review is of a pod being created (not a subresource, not
/// another resource or operation: those pass untouched).
fn is_pod_create(request: &Map<String, Value>) -> bool {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let resource = request.get("resource");
    s(resource.and_then(|r| r.get("group"))).is_empty()
        && s(resource.and_then(|r| r.get("resource"))) == "pods"
        && s(request.get("subResource")).is_empty()
        && s(request.get("operation")) == "CREATE"
}

/// `namespace/name`, or `namespace/generateName*` for a pod whose name
/// kube-apiserver has not generated yet.
fn pod_name(request: &Map<String, Value>, pod: &Map<String, Value>) -> String {
    let meta = pod.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .or_else(|| field("namespace"))
        .unwrap_or("default");
    match (field("name"), field("generateName")) {
        (Some(n), _) => format!("{namespace}/{n}"),
        (None, Some(g)) => format!("{namespace}/{g}*"),
        (None, None) => format!("{namespace}/(no name)"),
    }
}

/// The toleration the webhook gives for `taint`: no `tolerationSeconds`,
/// so the taint manager never evicts for it.
pub fn unlimited(taint: &str) -> Value {
    json!({"key": taint, "operator": "Exists", "effect": "NoExecute"})
}

/// Whether `toleration` tolerates the NoExecute `taint` (which has no
/// value), as Kubernetes' `Toleration.ToleratesTaint` decides.
fn tolerates(toleration: &Value, taint: &str) -> bool {
    let s = |k: &str| toleration.get(k).and_then(Value::as_str).unwrap_or("");
    let effect = matches!(s("effect"), "" | "NoExecute");
    let key = match (s("key"), s("operator")) {
        ("", "Exists") => true,
        (k, "Exists") => k == taint,
        (k, "" | "Equal") => k == taint && s("value").is_empty(),
        _ => false,
    };
    effect && key
}

/// Whether `toleration` carries a time limit.
fn limited(toleration: &Value) -> bool {
    !matches!(
        toleration.get("tolerationSeconds"),
        None | Some(Value::Null)
    )
}

/// The JSONPatch operations (RFC 6902) for a labelled pod, and warnings
/// for the user. For each of [`TAINTS`]: if a toleration already tolerates
/// it without a time limit, only the time-limited tolerations of that key
/// go; otherwise the first time-limited toleration of that key (the 300 s
/// one of DefaultTolerationSeconds) is replaced by [`unlimited`], further
/// ones go, and with none to replace one is appended. Other tolerations
/// are not touched; an empty-key toleration with a time limit (it matches
/// every NoExecute taint) is kept and named in a warning, since it still
/// bounds the pod's stay.
pub fn patch(pod: &Map<String, Value>) -> Result<(Vec<Value>, Vec<String>), String> {
    let spec = match pod.get("spec") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => Some(s),
        Some(_) => return Err("request.object.spec is not an object".into()),
    };
    let tolerations: &[Value] = match spec.and_then(|s| s.get("tolerations")) {
        None | Some(Value::Null) => &[],
        Some(Value::Array(t)) => t,
        Some(_) => return Err("request.object.spec.tolerations is not a list".into()),
    };
    let key_of = |t: &Value| {
        t.get("key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (mut replaced, mut removed, mut appended) = (Vec::new(), Vec::new(), Vec::new());
    for taint in TAINTS {
        let mut placed = tolerations
            .iter()
            .any(|t| tolerates(t, taint) && !limited(t));
        for (i, t) in tolerations.iter().enumerate() {
            if key_of(t) != taint || !tolerates(t, taint) || !limited(t) {
                continue;
            }
            if placed {
                removed.push(i);
            } else {
                replaced.push(json!({"op": "replace", "path": format!("/spec/tolerations/{i}"), "value": unlimited(taint)}));
                placed = true;
            }
        }
        if !placed {
            appended.push(unlimited(taint));
        }
    }
    let mut warnings = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        if key_of(t).is_empty() && limited(t) && TAINTS.iter().any(|taint| tolerates(t, taint)) {
            warnings.push(format!(
                "{LABEL}={LABEL_VALUE}: toleration {i} (any key, tolerationSeconds {}) still limits how long the pod stays on an unreachable node",
                t.get("tolerationSeconds").unwrap_or(&Value::Null)
            ));
        }
    }
    // Replacements use the indices as sent; removals go from the highest
    // index down so each index still points at the entry meant; appends
    // come last.
    let mut ops = replaced;
    removed.sort_unstable_by(|a, b| b.cmp(a));
    ops.extend(
        removed
            .into_iter()
            .map(|i| json!({"op": "remove", "path": format!("/spec/tolerations/{i}")})),
    );
    if !appended.is_empty() {
        match spec {
            None => {
                ops.push(json!({"op": "add", "path": "/spec", "value": {"tolerations": appended}}))
            }
            Some(s) if matches!(s.get("tolerations"), None | Some(Value::Null)) => {
                // `add` on an existing member replaces it (RFC 6902 4.1),
                // so this also covers an explicit null.
                ops.push(json!({"op": "add", "path": "/spec/tolerations", "value": appended}))
            }
            Some(_) => ops.extend(
                appended
                    .into_iter()
                    .map(|t| json!({"op": "add", "path": "/spec/tolerations/-", "value": t})),
            ),
        }
    }
    Ok((ops, warnings))
}

/// The webhook's TLS server: `cert` and `key` (PEM), TLS 1.2 and 1.3 (ring,
/// as the links), HTTP/1.1. No client certificate is asked for: the
/// webhook only answers with a patch and changes nothing itself.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("autonomy webhook TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            tether_link::tls::load_certs(cert).map_err(|e| format!("autonomy.webhook_cert {e}"))?,
            tether_link::tls::load_key(key).map_err(|e| format!("autonomy.webhook_key {e}"))?,
        )
        .map_err(|e| {
            format!(
                "autonomy.webhook_key {}: key does not fit {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Closes the count of open connections when a connection ends, however
/// it ends.
struct Open(Rc<Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Serves the webhook forever on `listener`.
pub async fn serve(hub: Rc<Hub>, listener: TcpListener, acceptor: TlsAcceptor) {
    hub.registry.borrow_mut().autonomy.webhook.enabled = true;
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if open.get() >= MAX_CONNECTIONS {
                    debug!("autonomy webhook: {MAX_CONNECTIONS} connections open; closing the one from {peer}");
                    continue;
                }
                open.set(open.get() + 1);
                let guard = Open(open.clone());
                let (hub2, acceptor) = (hub.clone(), acceptor.clone());
                hub.ex
                    .spawn(async move {
                        let _guard = guard;
                        connection(hub2, tcp, acceptor).await;
                    })
                    .detach();
            }
            Err(e) => {
                warn!("autonomy webhook: accept failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs `f` unless `limit` passes first.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    f.or(async {
        async_io::Timer::after(limit).await;
        None
    })
    .await
}

/// One connection: TLS, then requests one after another (kept alive).
async fn connection(hub: Rc<Hub>, tcp: TcpStream, acceptor: TlsAcceptor) {
    let peer = tcp.peer_addr().ok();
    let Some(mut tls) = within(REQUEST_TIMEOUT, async { acceptor.accept(tcp).await.ok() }).await
    else {
        debug!("autonomy webhook: TLS handshake with {peer:?} failed or timed out");
        return;
    };
    let mut buf = Vec::new();
    loop {
        // Wait for the first byte of a request as long as an idle
        // connection may stay, then the whole request within the limit.
        if buf.is_empty() {
            let mut byte = [0u8; 1];
            match within(IDLE_TIMEOUT, async { tls.read(&mut byte).await.ok() }).await {
                Some(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        let request = within(REQUEST_TIMEOUT, read_request(&mut tls, &mut buf)).await;
        let Some(request) = request else { return };
        hub.registry.borrow_mut().autonomy.webhook.requests += 1;
        let (status, kind, body, close) = answer(&hub, request);
        if !status.starts_with("200") {
            hub.registry.borrow_mut().autonomy.webhook.refused += 1;
        }
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let written = async {
            tls.write_all(head.as_bytes()).await.ok()?;
            tls.write_all(&body).await.ok()?;
            tls.flush().await.ok()
        };
        if within(REQUEST_TIMEOUT, written).await.is_none() || close {
            let _ = tls.close().await;
            return;
        }
    }
}

/// A request as read: its head's fields, and the body unless refused.
enum Request {
    /// Method, path (without query), body, whether the client asked to close.
    Full(String, String, Vec<u8>, bool),
    /// Refused before the body was read: status and message (the
    /// connection closes, as the body was not consumed).
    Refused(&'static str, String),
}

/// Reads one request: head up to [`MAX_HEAD`], body by Content-Length up
/// to [`MAX_BODY`]. `None`: the connection ended or broke. Bytes after the
/// body stay in `buf` for the next request.
async fn read_request<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = vec![0u8; 16 * 1024];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Some(Request::Refused(
                "431 Request Header Fields Too Large",
                format!("request head over {MAX_HEAD} bytes\n"),
            ));
        }
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_owned();
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse::<usize>().ok()),
            "transfer-encoding" => chunked = !value.eq_ignore_ascii_case("identity"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let length = match (length, chunked) {
        (_, true) => {
            return Some(Request::Refused(
                "411 Length Required",
                "send the review with Content-Length (kube-apiserver does)\n".into(),
            ))
        }
        (None, false) => 0,
        (Some(None), false) => {
            return Some(Request::Refused(
                "400 Bad Request",
                "Content-Length is not a number\n".into(),
            ))
        }
        (Some(Some(n)), false) if n > MAX_BODY => {
            return Some(Request::Refused(
                "413 Payload Too Large",
                format!("a review is at most {MAX_BODY} bytes (kube-apiserver's request limit); this one has {n}\n"),
            ))
        }
        (Some(Some(n)), false) => n,
    };
    while buf.len() < length {
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..length).collect();
    Some(Request::Full(method, path, body, close))
}

/// The answer to one request: status, content type, body, whether to close.
fn answer(hub: &Hub, request: Request) -> (&'static str, &'static str, Vec<u8>, bool) {
    let text = |status, message: String, close| (status, "text/plain", message.into_bytes(), close);
    let (method, path, body, close) = match request {
        Request::Full(m, p, b, c) => (m, p, b, c),
        Request::Refused(status, message) => {
            debug!("autonomy webhook: refused: {}", message.trim_end());
            return text(status, message, true);
        }
    };
    if path != PATH {
        return text(
            "404 Not Found",
            format!("the webhook is at {PATH}\n"),
            close,
        );
    }
    if method != "POST" {
        return text(
            "405 Method Not Allowed",
            format!("POST an AdmissionReview to {PATH}\n"),
            close,
        );
    }
    match review(&body) {
        Ok(a) => {
            if let Some(pod) = &a.pod {
                hub.registry.borrow_mut().autonomy.webhook.patched += 1;
                info!(
                    "autonomy webhook: pod {pod}{}: tolerations for {} and {} without a time limit ({LABEL}={LABEL_VALUE})",
                    if a.dry_run { " (dry run)" } else { "" },
                    TAINTS[0],
                    TAINTS[1]
                );
            }
            ("200 OK", "application/json", a.body, close)
        }
        Err(e) => {
            warn!("autonomy webhook: malformed review: {e}");
            text("400 Bad Request", format!("{e}\n"), close)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture: a pod CREATE as kube-apiserver sends it, after
    /// DefaultTolerationSeconds added its two 300 s tolerations.
    const FIXTURE: &str = include_str!("../../../tests/fixtures/admissionreview-pod.json");

    fn decode64(s: &str) -> Vec<u8> {
        tether_link::der::unbase64(s).expect("base64")
    }

    /// Applies the JSONPatch ops this webhook writes to `doc`.
    fn apply(doc: &mut Value, ops: &Value) {
        for op in ops.as_array().expect("a list") {
            let path = op["path"].as_str().expect("path");
            let (parent, last) = path.rsplit_once('/').expect("a pointer");
            let target = doc.pointer_mut(parent).expect("parent exists");
            match (op["op"].as_str().expect("op"), target) {
                ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
                ("replace", Value::Array(a)) => {
                    a[last.parse::<usize>().expect("index")] = op["value"].clone()
                }
                ("remove", Value::Array(a)) => {
                    a.remove(last.parse::<usize>().expect("index"));
                }
                ("add", Value::Object(o)) => {
                    o.insert(last.to_owned(), op["value"].clone());
                }
                (other, t) => panic!("unexpected {other} on {t}"),
            }
        }
    }

    fn with_pod(labels: Value, tolerations: Option<Value>) -> Vec<u8> {
        let mut doc: Value = serde_json::from_str(FIXTURE).expect("fixture");
        doc["request"]["object"]["metadata"]["labels"] = labels;
        match tolerations {
            Some(t) => doc["request"]["object"]["spec"]["tolerations"] = t,
            None => {
                doc["request"]["object"]["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("tolerations");
            }
        }
        serde_json::to_vec(&doc).expect("json")
    }

    /// Reviews `body`, checks the response and returns the pod's
    /// tolerations with the patch applied.
    fn reviewed(body: &[u8]) -> (Value, Value, Answer) {
        let a = review(body).expect("well-formed");
        let resp: Value = serde_json::from_slice(&a.body).expect("json answer");
        let req: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(resp["kind"], "AdmissionReview");
        assert_eq!(resp["response"]["uid"], req["request"]["uid"]);
        assert_eq!(resp["response"]["allowed"], true);
        let mut pod = req["request"]["object"].clone();
        if let Some(p) = resp["response"]["patch"].as_str() {
            assert_eq!(resp["response"]["patchType"], "JSONPatch");
            let ops: Value = serde_json::from_slice(&decode64(p)).expect("patch json");
            assert_eq!(Some(&ops), a.patch.as_ref());
            apply(&mut pod, &ops);
        } else {
            assert!(resp["response"].get("patchType").is_none());
        }
        (pod["spec"]["tolerations"].clone(), resp, a)
    }

    fn defaults() -> Value {
        json!([
            {"key": TAINTS[1], "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": TAINTS[0], "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ])
    }

    #[test]
    fn fixture_replaces_the_default_tolerations_and_keeps_the_others() {
        let (tolerations, _, a) = reviewed(FIXTURE.as_bytes());
        assert_eq!(a.pod.as_deref(), Some("site-a/sensor-reader-7c9d5f-*"));
        let t = tolerations.as_array().expect("tolerations");
        assert_eq!(t.len(), 3, "{tolerations}");
        // The pod's own toleration, untouched and first.
        assert_eq!(
            t[0],
            json!({"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"})
        );
        for taint in TAINTS {
            let matching: Vec<_> = t.iter().filter(|x| x["key"] == taint).collect();
            assert_eq!(matching, [&unlimited(taint)], "{tolerations}");
        }
        // In place: no append when there was an entry to replace.
        let ops = a.patch.expect("patch");
        assert!(
            ops.as_array()
                .expect("ops")
                .iter()
                .all(|o| o["op"] == "replace"),
            "{ops}"
        );
    }

    #[test]
    fn a_pod_without_tolerations_gets_both() {
        let body = with_pod(json!({"app": "x", LABEL: LABEL_VALUE}), None);
        let (t, _, _) = reviewed(&body);
        assert_eq!(t, json!([unlimited(TAINTS[0]), unlimited(TAINTS[1])]));
        // An explicit null list too.
        let (t, _, _) = reviewed(&with_pod(json!({LABEL: LABEL_VALUE}), Some(Value::Null)));
        assert_eq!(t, json!([unlimited(TAINTS[0]), unlimited(TAINTS[1])]));
    }

    #[test]
    fn pods_without_the_label_get_no_patch() {
        for labels in [json!({"app": "x"}), json!({LABEL: "other"}), Value::Null] {
            let body = with_pod(labels, Some(defaults()));
            let (t, resp, a) = reviewed(&body);
            assert_eq!(t, defaults());
            assert!(a.patch.is_none() && a.pod.is_none());
            assert!(resp["response"].get("patch").is_none());
        }
    }

    #[test]
    fn own_tolerations_are_kept_and_only_limited_ones_of_the_keys_go() {
        let own = json!([
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": TAINTS[0], "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 6000},
            {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            {"key": TAINTS[0], "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            // Equal with a value never matches the taint (it has none).
            {"key": TAINTS[1], "operator": "Equal", "value": "x", "effect": "NoExecute", "tolerationSeconds": 5},
            {"key": TAINTS[1], "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]);
        let (t, _, _) = reviewed(&with_pod(json!({LABEL: LABEL_VALUE}), Some(own.clone())));
        assert_eq!(
            t,
            json!([
                own[0],
                unlimited(TAINTS[0]),
                own[2],
                own[4],
                unlimited(TAINTS[1])
            ])
        );
    }

    #[test]
    fn already_unlimited_pods_are_left_alone_or_only_cleaned() {
        let done = json!([unlimited(TAINTS[0]), unlimited(TAINTS[1])]);
        let (t, _, a) = reviewed(&with_pod(json!({LABEL: LABEL_VALUE}), Some(done.clone())));
        assert_eq!(t, done);
        assert!(a.patch.is_none() && a.pod.is_none());
        // An unlimited wildcard covers both; the limited defaults go.
        let mut all = defaults();
        all.as_array_mut()
            .expect("list")
            .insert(0, json!({"operator": "Exists"}));
        let (t, _, _) = reviewed(&with_pod(json!({LABEL: LABEL_VALUE}), Some(all)));
        assert_eq!(t, json!([{"operator": "Exists"}]));
        // A limited wildcard stays, with a warning.
        let mut all = defaults();
        all.as_array_mut()
            .expect("list")
            .push(json!({"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}));
        let (t, resp, _) = reviewed(&with_pod(json!({LABEL: LABEL_VALUE}), Some(all)));
        assert_eq!(t.as_array().expect("list").len(), 3);
        let w = resp["response"]["warnings"][0].as_str().expect("warning");
        assert!(w.contains("toleration 2") && w.contains("60"), "{w}");
    }

    #[test]
    fn other_requests_pass_untouched() {
        let mut doc: Value = serde_json::from_str(FIXTURE).expect("fixture");
        doc["request"]["operation"] = json!("UPDATE");
        let (_, resp, a) = reviewed(&serde_json::to_vec(&doc).expect("json"));
        assert!(a.patch.is_none() && resp["response"].get("patch").is_none());
        let mut doc: Value = serde_json::from_str(FIXTURE).expect("fixture");
        doc["request"]["subResource"] = json!("status");
        assert!(review(&serde_json::to_vec(&doc).expect("json"))
            .expect("ok")
            .patch
            .is_none());
        let mut doc: Value = serde_json::from_str(FIXTURE).expect("fixture");
        doc["request"]["resource"] =
            json!({"group": "apps", "version": "v1", "resource": "deployments"});
        doc["request"]["object"] = json!({"kind": "Deployment"});
        assert!(review(&serde_json::to_vec(&doc).expect("json"))
            .expect("ok")
            .patch
            .is_none());
    }

    #[test]
    fn malformed_reviews_are_errors() {
        let mut no_uid: Value = serde_json::from_str(FIXTURE).expect("fixture");
        no_uid["request"]
            .as_object_mut()
            .expect("request")
            .remove("uid");
        let mut v1beta1: Value = serde_json::from_str(FIXTURE).expect("fixture");
        v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let mut no_object: Value = serde_json::from_str(FIXTURE).expect("fixture");
        no_object["request"]["object"] = Value::Null;
        let mut bad_tolerations: Value = serde_json::from_str(FIXTURE).expect("fixture");
        bad_tolerations["request"]["object"]["spec"]["tolerations"] = json!("all");
        for (body, needle) in [
            (b"not json".to_vec(), "not JSON"),
            (b"{}".to_vec(), "expected an AdmissionReview"),
            (
                serde_json::to_vec(&v1beta1).expect("json"),
                "admissionReviewVersions",
            ),
            (serde_json::to_vec(&no_uid).expect("json"), "request.uid"),
            (
                serde_json::to_vec(&no_object).expect("json"),
                "request.object",
            ),
            (
                serde_json::to_vec(&bad_tolerations).expect("json"),
                "not a list",
            ),
        ] {
            let e = review(&body).expect_err("malformed");
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }
}

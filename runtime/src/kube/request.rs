//! What an apiserver request asks for: verb, resource, namespace, name,
//! selectors and watch options, read off the method, path and query the way
//! kube-apiserver's RequestInfo does, plus which client sent it and which
//! encoding it wants. The proxy decides from this what it may cache and
//! serve offline.

use super::Encoding;

/// The Kubernetes verb of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET with `watch=true` (or the legacy `/watch/` path).
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// Whether the verb changes state (and so must never be answered from
    /// the cache).
    pub fn is_write(self) -> bool {
        !matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// A request for a Kubernetes resource (`/api/...` or `/apis/...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceRequest {
    /// API group; empty for the core group (`/api`).
    pub group: String,
    /// API version (`v1`).
    pub version: String,
    /// Resource (`pods`).
    pub resource: String,
    /// Subresource (`status`, `token`, `log`), if any.
    pub subresource: String,
    /// Namespace; empty for cluster-scoped requests and all-namespace lists.
    pub namespace: String,
    /// Object name; empty for collections.
    pub name: String,
    /// Query parameters the apiserver gives meaning to, decoded.
    pub query: Query,
}

impl ResourceRequest {
    /// `group/version/resource` (`v1/pods`, `coordination.k8s.io/v1/leases`),
    /// with `/subresource` appended when there is one: the resource part of a
    /// cache view's key.
    pub fn resource_path(&self) -> String {
        let mut s = if self.group.is_empty() {
            format!("{}/{}", self.version, self.resource)
        } else {
            format!("{}/{}/{}", self.group, self.version, self.resource)
        };
        if !self.subresource.is_empty() {
            s.push('/');
            s.push_str(&self.subresource);
        }
        s
    }
}

/// The query parameters of list, get and watch requests, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// `labelSelector`.
    pub label_selector: String,
    /// `fieldSelector`.
    pub field_selector: String,
    /// `resourceVersion`, if given (`Some("")` when given empty).
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` (`NotOlderThan`, `Exact`).
    pub resource_version_match: String,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u64>,
    /// `allowWatchBookmarks=true`.
    pub allow_watch_bookmarks: bool,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `limit`.
    pub limit: Option<u64>,
    /// `continue`.
    pub continue_token: String,
    /// `watch=true` or `watch=1`.
    pub watch: bool,
}

/// One classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The verb.
    pub verb: Verb,
    /// The resource, or `None` for non-resource paths (`/healthz`,
    /// `/version`, discovery documents).
    pub resource: Option<ResourceRequest>,
    /// The client, from its User-Agent (`kubelet`, `kube-proxy`).
    pub client: String,
    /// The encoding the client prefers for the response.
    pub encoding: Encoding,
    /// An `as=` transformation in Accept (`Table`, `PartialObjectMetadata`):
    /// such answers differ in shape from plain ones and are kept apart.
    pub transform: String,
}

/// Why a request target could not be classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad request: {}", self.0)
    }
}

impl std::error::Error for BadRequest {}

/// Namespace subresources that do not make `namespaces/{ns}/...` a
/// namespaced path (as in kube-apiserver's RequestInfo).
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Classifies a request from its method, target (`path?query`) and the
/// `User-Agent` and `Accept` headers.
pub fn classify(
    method: &str,
    target: &str,
    user_agent: Option<&str>,
    accept: Option<&str>,
) -> Result<ApiRequest, BadRequest> {
    let (path, query_text) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(BadRequest(format!("target {target:?} is not a path")));
    }
    let query = parse_query(query_text)?;
    let (encoding, transform) = preferred_encoding(accept);
    let client = client_of(user_agent);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut resource = match parts.first() {
        Some(&"api") if parts.len() >= 3 => resource_parts("", parts[1], &parts[2..])?,
        Some(&"apis") if parts.len() >= 4 => resource_parts(parts[1], parts[2], &parts[3..])?,
        _ => None,
    };
    let legacy_watch = resource.as_ref().is_some_and(|r| r.0);
    let verb = match method {
        "GET" | "HEAD" => match &resource {
            Some(_) if legacy_watch || query.watch => Verb::Watch,
            Some((_, r)) if r.name.is_empty() => Verb::List,
            _ => Verb::Get,
        },
        "POST" => Verb::Create,
        "PUT" => Verb::Update,
        "PATCH" => Verb::Patch,
        "DELETE" => match &resource {
            Some((_, r)) if r.name.is_empty() => Verb::DeleteCollection,
            _ => Verb::Delete,
        },
        other => return Err(BadRequest(format!("method {other:?} is not served"))),
    };
    if let Some((_, r)) = resource.as_mut() {
        r.query = query;
    }
    Ok(ApiRequest {
        verb,
        resource: resource.map(|(_, r)| r),
        client,
        encoding,
        transform,
    })
}

/// Reads `[watch/][namespaces/{ns}/]{resource}[/{name}[/{subresource}]]`.
/// Returns whether the legacy `watch/` prefix was used.
fn resource_parts(
    group: &str,
    version: &str,
    parts: &[&str],
) -> Result<Option<(bool, ResourceRequest)>, BadRequest> {
    let mut parts = parts;
    let legacy_watch = parts.first() == Some(&"watch");
    if legacy_watch {
        parts = &parts[1..];
    }
    let mut namespace = String::new();
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = decode(parts[1])?;
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    let Some(resource) = parts.first() else {
        return Ok(None);
    };
    let name = parts
        .get(1)
        .map(|n| decode(n))
        .transpose()?
        .unwrap_or_default();
    let subresource = parts
        .get(2)
        .map(|s| decode(s))
        .transpose()?
        .unwrap_or_default();
    if parts.len() > 3 {
        return Err(BadRequest(format!(
            "path has {} parts after the version",
            parts.len()
        )));
    }
    // `namespaces/{ns}` itself names a (cluster-scoped) namespace object.
    if *resource == "namespaces" {
        namespace.clear();
    }
    Ok(Some((
        legacy_watch,
        ResourceRequest {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: decode(resource)?,
            subresource,
            namespace,
            name,
            query: Query::default(),
        },
    )))
}

fn parse_query(text: &str) -> Result<Query, BadRequest> {
    let mut q = Query::default();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode_query(value)?;
        let truthy = value == "true" || value == "1";
        match decode_query(key)?.as_str() {
            "labelSelector" => q.label_selector = value,
            "fieldSelector" => q.field_selector = value,
            "resourceVersion" => q.resource_version = Some(value),
            "resourceVersionMatch" => q.resource_version_match = value,
            "timeoutSeconds" => q.timeout_seconds = Some(number("timeoutSeconds", &value)?),
            "allowWatchBookmarks" => q.allow_watch_bookmarks = truthy,
            "sendInitialEvents" => q.send_initial_events = truthy,
            "limit" => q.limit = Some(number("limit", &value)?),
            "continue" => q.continue_token = value,
            "watch" => q.watch = truthy,
            // `timeout` (a request deadline), `pretty` and others do not
            // change what is answered.
            _ => {}
        }
    }
    Ok(q)
}

fn number(key: &str, value: &str) -> Result<u64, BadRequest> {
    value
        .parse()
        .map_err(|_| BadRequest(format!("{key}={value:?} is not a number")))
}

/// Percent-decoding of a path segment.
fn decode(text: &str) -> Result<String, BadRequest> {
    percent_decode(text, false)
}

/// Percent-decoding of a query key or value, where `+` is a space (as Go's
/// url.ParseQuery reads it).
fn decode_query(text: &str) -> Result<String, BadRequest> {
    percent_decode(text, true)
}

fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, BadRequest> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| BadRequest(format!("bad percent escape in {text:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| BadRequest(format!("{text:?} is not UTF-8 once decoded")))
}

/// The client name of a User-Agent: its first product token, lowercased
/// (`kubelet/v1.24.0+0 (linux/amd64) kubernetes/2cc6ddc` → `kubelet`).
pub fn client_of(user_agent: Option<&str>) -> String {
    let token = user_agent
        .and_then(|ua| ua.split([' ', '/']).next())
        .map(str::trim)
        .unwrap_or("");
    let clean: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

/// The first encoding the Accept header lists that the apiserver speaks,
/// with its `as=` transformation; JSON when none is listed.
fn preferred_encoding(accept: Option<&str>) -> (Encoding, String) {
    for entry in accept.unwrap_or("").split(',') {
        if let Some(encoding) = Encoding::from_content_type(entry) {
            let transform = entry
                .split(';')
                .skip(1)
                .filter_map(|p| p.trim().strip_prefix("as="))
                .next()
                .unwrap_or("")
                .to_owned();
            return (encoding, transform);
        }
    }
    (Encoding::Json, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "kubelet/v1.24.0+0 (linux/amd64) kubernetes/2cc6ddc";
    const ACCEPT: &str = "application/vnd.kubernetes.protobuf,application/json";

    fn get(target: &str) -> ApiRequest {
        classify("GET", target, Some(KUBELET), Some(ACCEPT)).expect("classify")
    }

    #[test]
    fn kubelet_first_minute() {
        let r =
            get("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0");
        assert_eq!(r.verb, Verb::List);
        assert_eq!(r.client, "kubelet");
        assert_eq!(r.encoding, Encoding::Protobuf);
        let res = r.resource.expect("resource");
        assert_eq!(res.resource_path(), "v1/pods");
        assert_eq!(res.namespace, "");
        assert_eq!(res.query.field_selector, "spec.nodeName=edge-1");
        assert_eq!(res.query.limit, Some(500));
        assert_eq!(res.query.resource_version.as_deref(), Some("0"));

        let r = get("/api/v1/pods?allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=426&timeoutSeconds=313&watch=true");
        assert_eq!(r.verb, Verb::Watch);
        let q = r.resource.expect("resource").query;
        assert!(q.allow_watch_bookmarks && q.watch);
        assert_eq!(q.timeout_seconds, Some(313));

        let r = get(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1?timeout=10s",
        );
        assert_eq!(r.verb, Verb::Get);
        let res = r.resource.expect("resource");
        assert_eq!(res.resource_path(), "coordination.k8s.io/v1/leases");
        assert_eq!(
            (res.namespace.as_str(), res.name.as_str()),
            ("kube-node-lease", "edge-1")
        );

        let r = classify(
            "PATCH",
            "/api/v1/nodes/edge-1/status?timeout=10s",
            Some(KUBELET),
            Some(ACCEPT),
        )
        .expect("classify");
        assert_eq!(r.verb, Verb::Patch);
        assert!(r.verb.is_write());
        let res = r.resource.expect("resource");
        assert_eq!(
            (res.name.as_str(), res.subresource.as_str()),
            ("edge-1", "status")
        );
        assert_eq!(res.resource_path(), "v1/nodes/status");

        let r = classify(
            "POST",
            "/api/v1/namespaces/edge-apps/serviceaccounts/default/token",
            Some(KUBELET),
            Some(ACCEPT),
        )
        .expect("classify");
        assert_eq!(r.verb, Verb::Create);
        let res = r.resource.expect("resource");
        assert_eq!(res.subresource, "token");
        assert_eq!(res.namespace, "edge-apps");

        let r = get("/api/v1/namespaces/edge-apps/configmaps?fieldSelector=metadata.name%3Dkube-root-ca.crt&limit=500&resourceVersion=0");
        let res = r.resource.expect("resource");
        assert_eq!(res.query.field_selector, "metadata.name=kube-root-ca.crt");
    }

    #[test]
    fn namespaces_and_legacy_watch_and_non_resources() {
        let res = get("/api/v1/namespaces/kube-system")
            .resource
            .expect("resource");
        assert_eq!(
            (
                res.resource.as_str(),
                res.name.as_str(),
                res.namespace.as_str()
            ),
            ("namespaces", "kube-system", "")
        );
        let res = get("/api/v1/namespaces/x/status")
            .resource
            .expect("resource");
        assert_eq!(
            (
                res.resource.as_str(),
                res.name.as_str(),
                res.subresource.as_str()
            ),
            ("namespaces", "x", "status")
        );
        assert_eq!(get("/api/v1/namespaces").verb, Verb::List);
        assert_eq!(get("/api/v1/watch/namespaces/a/pods").verb, Verb::Watch);
        for path in [
            "/healthz",
            "/version",
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps/v1",
        ] {
            let r = get(path);
            assert_eq!(r.resource, None, "{path}");
            assert_eq!(r.verb, Verb::Get);
        }
        let r = classify("DELETE", "/api/v1/namespaces/a/pods", None, None).expect("classify");
        assert_eq!(r.verb, Verb::DeleteCollection);
        assert_eq!(r.client, "unknown");
        assert_eq!(r.encoding, Encoding::Json);
    }

    #[test]
    fn accept_and_clients() {
        let r = classify(
            "GET",
            "/api/v1/pods",
            Some("kube-proxy/v1.24.0 (linux/arm64) kubernetes/abc"),
            Some("application/json;as=Table;v=v1;g=meta.k8s.io, application/json"),
        )
        .expect("classify");
        assert_eq!(r.client, "kube-proxy");
        assert_eq!(r.encoding, Encoding::Json);
        assert_eq!(r.transform, "Table");
        assert_eq!(client_of(Some("Mozilla/5.0 (X11)")), "mozilla");
        assert_eq!(client_of(Some("")), "unknown");
        assert_eq!(client_of(Some("a\u{1}b/1")), "ab");
    }

    #[test]
    fn bad_targets() {
        assert!(classify("GET", "api/v1/pods", None, None).is_err());
        assert!(classify("GET", "/api/v1/pods?limit=x", None, None).is_err());
        assert!(classify("GET", "/api/v1/pods?labelSelector=%zz", None, None).is_err());
        assert!(classify("GET", "/api/v1/namespaces/a/pods/b/c/d", None, None).is_err());
        assert!(classify("BREW", "/api/v1/pods", None, None).is_err());
        assert!(classify("GET", "/api/v1/pods?labelSelector=%ff", None, None).is_err());
        let mut x = 0x1234_5678u32;
        for _ in 0..3000 {
            let target: String = (0..(x % 60))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b"/apins?=&%+watchv1lbe"[(x % 21) as usize] as char
                })
                .collect();
            let _ = classify("GET", &target, Some(&target), Some(&target));
        }
    }
}

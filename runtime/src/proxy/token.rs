//! Service-account tokens kept for a restart without network. Kubelet asks
//! for a token per pod (`POST serviceaccounts/<sa>/token`) and cannot mount
//! the pod's projected volume without one. The apiserver's answer to each
//! such request is cached under the request itself; while kube-apiserver is
//! out of reach the same request gets the same answer back, as long as the
//! token in it is still valid. The edge never mints a token.

use super::offline::RecordError;
use crate::cache::{ListMeta, ObjectRow, Store, StoreError, ViewKey};
use crate::kube::request::{ApiRequest, Verb};
use crate::kube::{token, Encoding};

/// How far the node's clock may run behind the apiserver's and still be
/// trusted to say that a token is valid.
const CLOCK_SKEW: i64 = 5 * 60;

/// The cache view of a TokenRequest, or `None` if `api` is not one.
///
/// Kubelet's request body for one pod, service account, audience and
/// lifetime is the same every time, so the body's digest is the key: a
/// cached token is only ever handed to the same request, never to another
/// pod, account or audience.
pub fn view_key(api: &ApiRequest, body: &[u8]) -> Option<ViewKey> {
    let r = api.resource.as_ref()?;
    let is_token = api.verb == Verb::Create
        && r.group.is_empty()
        && r.resource == "serviceaccounts"
        && r.subresource == "token"
        && !r.name.is_empty();
    if !is_token || body.is_empty() {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Some(ViewKey {
        client: api.client.clone(),
        resource: r.resource_path(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        label_selector: String::new(),
        field_selector: format!("request-sha256={hex}"),
        encoding: match api.encoding {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
        .into(),
    })
}

/// Records the apiserver's 201 answer `body` to the TokenRequest of `key`.
/// An answer without a token and its lifetime is not kept.
pub fn record(
    store: &mut Store,
    key: &ViewKey,
    encoding: Encoding,
    body: &[u8],
) -> Result<(), RecordError> {
    let life = token::lifetime(encoding, body).map_err(RecordError::Parse)?;
    let meta = ListMeta {
        resource_version: String::new(),
        kind: "TokenRequest".into(),
        api_version: "authentication.k8s.io/v1".into(),
        complete: true,
    };
    let row = ObjectRow {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: String::new(),
        resource_version: life.expires.to_string(),
        labels: Default::default(),
        body: body.to_vec(),
    };
    store.replace_view(key, &meta, [Ok::<_, RecordError>(row)])
}

/// Why a cached token was not handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This request was never answered while online (or was evicted).
    NotCached,
    /// The cached token expired at this time (seconds since the epoch).
    Expired(i64),
    /// The node's clock reads before the token was issued, so whether it
    /// is still valid cannot be told (a board without a real-time clock
    /// boots in 1970).
    ClockBehind,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotCached => f.write_str(
                "kube-apiserver is out of reach and no token was cached for this pod, service account and audience; the edge never mints tokens",
            ),
            Refusal::Expired(at) => write!(
                f,
                "kube-apiserver is out of reach and the cached token for this pod expired (at {at} s since the epoch); the edge never mints tokens"
            ),
            Refusal::ClockBehind => f.write_str(
                "kube-apiserver is out of reach and the node's clock reads before the cached token was issued, so its validity cannot be told",
            ),
        }
    }
}

/// The cached answer for the TokenRequest of `key`, if its token is valid
/// at `now` (seconds since the epoch, the node's clock).
pub fn answer(
    store: &mut Store,
    key: &ViewKey,
    encoding: Encoding,
    now: i64,
) -> Result<Result<Vec<u8>, Refusal>, StoreError> {
    let Some(row) = store.get_object(key, &key.namespace, &key.name)? else {
        return Ok(Err(Refusal::NotCached));
    };
    // Read the lifetime from the answer itself rather than trusting a
    // column: it is what the client will see.
    let Ok(life) = token::lifetime(encoding, &row.body) else {
        return Ok(Err(Refusal::NotCached));
    };
    if now >= life.expires {
        return Ok(Err(Refusal::Expired(life.expires)));
    }
    if now + CLOCK_SKEW < life.issued {
        return Ok(Err(Refusal::ClockBehind));
    }
    store.touch(key)?;
    Ok(Ok(row.body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::request::classify;
    use crate::testing::{fixture, temp_store};

    const BODY: &[u8] = br#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","spec":{"audiences":null,"expirationSeconds":3607,"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"web-tlj24hjbj7-22r6j","uid":"0db015de-ef3d-4c80-a601-71b030de23d8"}},"status":{"token":"","expirationTimestamp":null}}"#;

    fn request(path: &str) -> ApiRequest {
        classify(
            "POST",
            path,
            Some("kubelet/v1.24.0"),
            Some("application/json, */*"),
        )
        .expect("classify")
    }

    #[test]
    fn only_token_requests_have_keys() {
        let token = request("/api/v1/namespaces/edge-apps/serviceaccounts/web/token");
        let key = view_key(&token, BODY).expect("a token request");
        assert_eq!(key.resource, "v1/serviceaccounts/token");
        assert_eq!(key.name, "web");
        // Another pod's request (another body) is another view.
        let other = String::from_utf8_lossy(BODY).replace("22r6j", "99x9x");
        assert_ne!(view_key(&token, other.as_bytes()), Some(key));
        for not in [
            "/api/v1/namespaces/edge-apps/serviceaccounts",
            "/api/v1/namespaces/edge-apps/pods/web/eviction",
            "/api/v1/namespaces/edge-apps/events",
        ] {
            assert_eq!(view_key(&request(not), BODY), None, "{not}");
        }
        let get = classify(
            "GET",
            "/api/v1/namespaces/edge-apps/serviceaccounts/web/token",
            None,
            None,
        )
        .expect("classify");
        assert_eq!(view_key(&get, BODY), None);
    }

    #[test]
    fn valid_tokens_only() {
        let (mut store, dir) = temp_store("token", 1 << 20);
        let key = view_key(
            &request("/api/v1/namespaces/edge-apps/serviceaccounts/web/token"),
            BODY,
        )
        .expect("key");
        let now = 1_795_313_688 + 60; // a minute after it was issued
        assert_eq!(
            answer(&mut store, &key, Encoding::Json, now).expect("read"),
            Err(Refusal::NotCached)
        );
        let answer_body = fixture("write-node-token-request-json.response.body.json");
        record(&mut store, &key, Encoding::Json, &answer_body).expect("record");
        assert_eq!(
            answer(&mut store, &key, Encoding::Json, now).expect("read"),
            Ok(answer_body.clone())
        );
        // Expired, and a clock that boots in 1970.
        assert_eq!(
            answer(&mut store, &key, Encoding::Json, 1_795_317_295).expect("read"),
            Err(Refusal::Expired(1_795_317_295))
        );
        assert_eq!(
            answer(&mut store, &key, Encoding::Json, 0).expect("read"),
            Err(Refusal::ClockBehind)
        );
        // An answer that carries no token is never kept.
        assert!(record(&mut store, &key, Encoding::Json, BODY).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! What the proxy keeps and answers by itself: recording successful GET and
//! LIST answers into the cache, serving them back while kube-apiserver is
//! out of reach, and the Status errors it writes for what it cannot answer.

use crate::cache::{ListMeta, ObjectRow, Store, StoreError, ViewKey};
use crate::kube::request::{ApiRequest, Verb};
use crate::kube::{self, Encoding};
use std::collections::{BTreeMap, BTreeSet};

/// The cache view a GET or LIST belongs to; `None` for what is never
/// cached (writes, watches, non-resource paths, transformed answers).
pub fn view_key(api: &ApiRequest) -> Option<ViewKey> {
    let r = api.resource.as_ref()?;
    if !matches!(api.verb, Verb::Get | Verb::List) || !api.transform.is_empty() {
        return None;
    }
    // Paged LISTs are a later refinement: only whole answers are views.
    if r.query
        .limit
        .is_some_and(|_| !r.query.continue_token.is_empty())
    {
        return None;
    }
    Some(key_of(api, r))
}

/// The cache view a watch keeps fresh: the view of the LIST with the same
/// selectors (kubelet lists, then watches from the list's resourceVersion).
pub fn watch_view_key(api: &ApiRequest) -> Option<ViewKey> {
    let r = api.resource.as_ref()?;
    if api.verb != Verb::Watch || !api.transform.is_empty() {
        return None;
    }
    Some(key_of(api, r))
}

/// The view key of a request on resource `r`: client, resource, namespace,
/// name, selectors and encoding.
fn key_of(api: &ApiRequest, r: &crate::kube::request::ResourceRequest) -> ViewKey {
    ViewKey {
        client: api.client.clone(),
        resource: r.resource_path(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        label_selector: r.query.label_selector.clone(),
        field_selector: r.query.field_selector.clone(),
        encoding: encoding_name(api.encoding).into(),
    }
}

fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Json => "json",
        Encoding::Protobuf => "protobuf",
    }
}

/// Why an answer was not recorded.
#[derive(Debug)]
pub enum RecordError {
    /// The body did not parse as the object or list it should be.
    Parse(kube::Error),
    /// A list that is only one page of several.
    Partial,
    /// The store failed.
    Store(StoreError),
    /// A list streamed into the cache could not be recorded.
    Stream(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Parse(e) => write!(f, "answer does not parse: {e}"),
            RecordError::Partial => f.write_str("answer is one page of a paged list"),
            RecordError::Store(e) => write!(f, "cache store: {e}"),
            RecordError::Stream(why) => f.write_str(why),
        }
    }
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> RecordError {
        RecordError::Store(e)
    }
}

/// Records a successful (200) answer `body` in `encoding` as view `key`.
/// Returns whether the cache changed: an answer at the resourceVersion the
/// view already has is the same state, so it only counts as a use (repeated
/// GETs then cost a read, not a write).
pub fn record(
    store: &mut Store,
    key: &ViewKey,
    encoding: Encoding,
    body: &[u8],
) -> Result<bool, RecordError> {
    let unchanged = |store: &mut Store, rv: &str| -> Result<bool, StoreError> {
        let same = !rv.is_empty()
            && store
                .view(key)?
                .is_some_and(|v| v.list.complete && v.list.resource_version == rv);
        if same {
            store.touch(key)?;
        }
        Ok(same)
    };
    if key.name.is_empty() {
        let list = kube::parse_list(encoding, body).map_err(RecordError::Parse)?;
        if !list.meta.continue_token.is_empty() {
            return Err(RecordError::Partial);
        }
        if unchanged(store, &list.meta.resource_version)? {
            return Ok(false);
        }
        let meta = ListMeta {
            resource_version: list.meta.resource_version.clone(),
            kind: list.kind.clone(),
            api_version: list.api_version.clone(),
            complete: true,
        };
        let rows = list.items.iter().map(|item| {
            Ok::<_, RecordError>(ObjectRow {
                namespace: item.meta.namespace.clone(),
                name: item.meta.name.clone(),
                uid: item.meta.uid.clone(),
                resource_version: item.meta.resource_version.clone(),
                labels: item.meta.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                body: item.bytes.to_vec(),
            })
        });
        store.replace_view(key, &meta, rows)?;
    } else {
        let object = kube::parse_object(encoding, body).map_err(RecordError::Parse)?;
        if unchanged(store, &object.meta.resource_version)? {
            return Ok(false);
        }
        let meta = ListMeta {
            resource_version: object.meta.resource_version.clone(),
            kind: object.kind.clone(),
            api_version: object.api_version.clone(),
            complete: true,
        };
        // A single object is kept as the whole answer body, so that it is
        // served back byte for byte.
        let row = ObjectRow {
            namespace: object.meta.namespace.clone(),
            name: object.meta.name.clone(),
            uid: object.meta.uid.clone(),
            resource_version: object.meta.resource_version.clone(),
            labels: object.meta.labels.iter().cloned().collect(),
            body: body.to_vec(),
        };
        store.replace_view(key, &meta, [Ok::<_, RecordError>(row)])?;
    }
    Ok(true)
}

/// The cached answer for `key` in `encoding`, framed as the apiserver
/// frames it; `None` if nothing is cached for it. EndpointSlices and
/// Endpoints leave out the endpoints on the nodes in `dead` (node
/// awareness, [`super::aware`]).
pub fn answer(
    store: &mut Store,
    key: &ViewKey,
    encoding: Encoding,
    dead: &BTreeSet<String>,
) -> Result<Option<kube::Encoded>, StoreError> {
    /// What a cached view turns into.
    enum Building {
        List(kube::ListEncoder),
        Object(Option<Vec<u8>>),
        Incomplete,
    }
    // Each body is copied once, straight from the store into the answer.
    let built = store.scan_bodies(
        key,
        |view| {
            if !view.list.complete {
                return Ok::<_, StoreError>(Building::Incomplete);
            }
            if !key.name.is_empty() {
                return Ok(Building::Object(None));
            }
            let meta = kube::ListMeta {
                resource_version: view.list.resource_version.clone(),
                continue_token: String::new(),
                remaining_item_count: None,
            };
            // Sized from the view's own total, capped in case the file lies.
            let hint = usize::try_from(view.bytes).unwrap_or(0).min(64 << 20);
            Ok(Building::List(kube::ListEncoder::new(
                encoding,
                &view.list.api_version,
                &view.list.kind,
                &meta,
                hint,
            )))
        },
        |building, body| {
            let body = &*super::aware::served(encoding, &key.resource, body, dead);
            match building {
                // The store hands objects in (namespace, name) order, the
                // order the apiserver's own lists have.
                Building::List(list) => list.push(body),
                // A single object is kept as the whole answer body.
                Building::Object(found @ None) => *found = Some(body.to_vec()),
                Building::Object(Some(_)) | Building::Incomplete => {}
            }
            Ok(())
        },
    )?;
    let answer = match built {
        Some(Building::List(list)) => list.finish(),
        Some(Building::Object(Some(object))) => kube::Encoded::from(object),
        _ => return Ok(None),
    };
    store.touch(key)?;
    Ok(Some(answer))
}

/// A `metav1.Status` failure in JSON (every client accepts JSON).
pub fn status_json(code: u16, reason: &str, message: &str) -> Vec<u8> {
    let mut out = String::from("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":");
    push_json_string(&mut out, message);
    out.push_str(",\"reason\":");
    push_json_string(&mut out, reason);
    out.push_str(&format!(",\"code\":{code}}}\n"));
    out.into_bytes()
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::request::classify;
    use crate::testing::{fixture, temp_store};

    #[test]
    fn lists_and_objects_come_back_byte_for_byte() {
        let (mut store, dir) = temp_store("offline-roundtrip", 64 << 20);
        for (enc, accept, list, object) in [
            (
                Encoding::Protobuf,
                "application/vnd.kubernetes.protobuf,application/json",
                "list-pods-node-edge-1-rv0-pb.response.body.bin",
                "get-pod-pb.response.body.bin",
            ),
            (
                Encoding::Json,
                "application/json",
                "list-pods-node-edge-1-rv0-json.response.body.json",
                "get-pod-json.response.body.json",
            ),
        ] {
            let req = classify(
                "GET",
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0",
                Some("kubelet/v1.24.0"),
                Some(accept),
            )
            .expect("classify");
            let key = view_key(&req).expect("cacheable");
            let body = fixture(list);
            record(&mut store, &key, enc, &body).expect("record list");
            let back = answer(&mut store, &key, enc, &BTreeSet::new())
                .expect("answer")
                .expect("cached")
                .into_vec();
            // The same list: kind, resourceVersion and every item's bytes.
            // Items come in (namespace, name) order, as an etcd-backed list
            // has them (the recording, served from the watch cache, is not).
            let (want, got) = (
                kube::parse_list(enc, &body).expect("recorded"),
                kube::parse_list(enc, &back).expect("served"),
            );
            assert_eq!(
                (&got.api_version, &got.kind, &got.meta),
                (&want.api_version, &want.kind, &want.meta)
            );
            let items = |l: &kube::List<'_>| {
                let mut v: Vec<(String, String, Vec<u8>)> = l
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
            };
            assert_eq!(items(&got), items(&want), "{enc:?} items differ");
            let order: Vec<_> = got
                .items
                .iter()
                .map(|i| (i.meta.namespace.clone(), i.meta.name.clone()))
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted);

            let req = classify(
                "GET",
                "/api/v1/namespaces/edge-apps/pods/x",
                Some("kubelet/v1.24.0"),
                Some(accept),
            )
            .expect("classify");
            let key = view_key(&req).expect("cacheable");
            let body = fixture(object);
            record(&mut store, &key, enc, &body).expect("record object");
            let back = answer(&mut store, &key, enc, &BTreeSet::new()).expect("answer");
            assert_eq!(back.map(kube::Encoded::into_vec), Some(body));
        }
        // Another client sees nothing of kubelet's views.
        let req = classify(
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
            Some("kube-proxy/1"),
            None,
        )
        .expect("classify");
        let key = view_key(&req).expect("cacheable");
        assert_eq!(
            answer(&mut store, &key, Encoding::Json, &BTreeSet::new())
                .expect("answer")
                .map(kube::Encoded::into_vec),
            None
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn writes_watches_and_garbage_are_not_views() {
        let r = classify("PATCH", "/api/v1/nodes/edge-1/status", None, None).expect("classify");
        assert!(view_key(&r).is_none());
        let r = classify("GET", "/api/v1/pods?watch=true", None, None).expect("classify");
        assert!(view_key(&r).is_none());
        let r = classify("GET", "/healthz", None, None).expect("classify");
        assert!(view_key(&r).is_none());
        let (mut store, dir) = temp_store("offline-garbage", 64 << 20);
        let r = classify("GET", "/api/v1/pods", None, None).expect("classify");
        let key = view_key(&r).expect("cacheable");
        assert!(record(&mut store, &key, Encoding::Json, b"{not json").is_err());
        assert_eq!(
            answer(&mut store, &key, Encoding::Json, &BTreeSet::new())
                .expect("answer")
                .map(kube::Encoded::into_vec),
            None
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn status_is_valid_json() {
        let s = status_json(503, "ServiceUnavailable", "no \"apiserver\"\n");
        let text = String::from_utf8(s).expect("utf8");
        assert!(text.contains("\"code\":503"));
        assert!(text.contains("no \\\"apiserver\\\"\\u000a"));
        assert!(kube::parse_status(Encoding::Json, text.as_bytes()).is_ok());
    }
}

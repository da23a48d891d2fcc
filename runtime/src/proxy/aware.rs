//! Node awareness in the proxy (issue 6): the nodes this edge's unit votes
//! dead, as the health peer publishes them, and kube-proxy's objects as
//! they are served from the cache while kube-apiserver is out of reach:
//! EndpointSlices and Endpoints without the endpoints on those nodes
//! ([`crate::kube::endpoints`]). Online nothing is filtered: the
//! apiserver's own answers pass untouched.
//!
//! Open watches learn of a change through [`DeadNodes::subscribe`], and get
//! a MODIFIED event for each object whose served form changed
//! ([`changes`]), so kube-proxy never needs to re-list.

use crate::cache::{Store, StoreError, ViewKey};
use crate::kube::endpoints::{without_nodes, Kind};
use crate::kube::{self, Encoding, EventType};
use log::debug;
use smol::channel::{Receiver, Sender};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

/// The nodes the unit votes dead, shared by the health peer (which sets
/// them) and the proxy's answers and watches (which read them).
#[derive(Default)]
pub struct DeadNodes {
    set: RefCell<BTreeSet<String>>,
    /// Changes so far: a reader that saw another count has a stale view.
    generation: Cell<u64>,
    /// One per open watch; a closed one (its watch ended) is dropped at
    /// the next change.
    watchers: RefCell<Vec<Sender<()>>>,
}

impl DeadNodes {
    /// No node voted dead yet.
    pub fn new() -> DeadNodes {
        DeadNodes::default()
    }

    /// The nodes voted dead now.
    pub fn get(&self) -> BTreeSet<String> {
        self.set.borrow().clone()
    }

    /// How many times the set changed.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Replaces the set; returns whether it changed. Every subscriber is
    /// told (one pending signal each is enough: a watch reads the set when
    /// it wakes).
    pub fn set(&self, dead: BTreeSet<String>) -> bool {
        if *self.set.borrow() == dead {
            return false;
        }
        *self.set.borrow_mut() = dead;
        self.generation.set(self.generation.get() + 1);
        self.watchers.borrow_mut().retain(|w| {
            let _ = w.try_send(());
            !w.is_closed()
        });
        true
    }

    /// A signal for each change from now on; dropping it unsubscribes.
    pub fn subscribe(&self) -> Receiver<()> {
        let (tx, rx) = smol::channel::bounded(1);
        self.watchers.borrow_mut().push(tx);
        rx
    }

    /// Open subscriptions (for tests and metrics).
    pub fn watchers(&self) -> usize {
        self.watchers.borrow().len()
    }
}

/// `body` as served offline of a view of `resource` while `dead` are voted
/// dead: without their endpoints for EndpointSlices and Endpoints, as it is
/// otherwise. A body that does not parse is served as it is.
pub fn served<'a>(
    encoding: Encoding,
    resource: &str,
    body: &'a [u8],
    dead: &BTreeSet<String>,
) -> Cow<'a, [u8]> {
    let Some(kind) = Kind::of_resource(resource) else {
        return Cow::Borrowed(body);
    };
    match without_nodes(encoding, kind, body, dead) {
        Ok(Some(filtered)) => Cow::Owned(filtered),
        Ok(None) => Cow::Borrowed(body),
        Err(e) => {
            debug!(
                "node awareness: a cached {resource} object does not parse ({e}); served as it is"
            );
            Cow::Borrowed(body)
        }
    }
}

/// The watch events that take a client holding the objects of view `key`
/// as served while `from` were dead to them as served while `to` are: a
/// MODIFIED event with the object's cached resourceVersion for each object
/// whose served form differs. Empty for views of other resources, single
/// objects, incomplete views and views not cached.
pub fn changes(
    store: &Store,
    key: &ViewKey,
    encoding: Encoding,
    from: &BTreeSet<String>,
    to: &BTreeSet<String>,
) -> Result<Vec<Vec<u8>>, StoreError> {
    if from == to || Kind::of_resource(&key.resource).is_none() || !key.name.is_empty() {
        return Ok(Vec::new());
    }
    let mut frames = Vec::new();
    let view = store.scan_bodies(
        key,
        |view| Ok::<_, StoreError>(view.list.clone()),
        |list, body| {
            if !list.complete {
                return Ok(());
            }
            let (before, after) = (
                served(encoding, &key.resource, body, from),
                served(encoding, &key.resource, body, to),
            );
            if before != after {
                let kind = list.kind.strip_suffix("List").unwrap_or(&list.kind);
                let object = kube::item_to_watch_object(encoding, &list.api_version, kind, &after);
                frames.push(kube::encode_watch_event(
                    encoding,
                    EventType::Modified,
                    &object,
                ));
            }
            Ok(())
        },
    )?;
    Ok(if view.is_some_and(|l| l.complete) {
        frames
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::request::classify;
    use crate::kube::WatchDecoder;
    use crate::proxy::offline;
    use crate::testing::{fixture, temp_store};

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subscribers_hear_of_changes_once_each() {
        let dead = DeadNodes::new();
        let a = dead.subscribe();
        let b = dead.subscribe();
        assert!(dead.set(set(&["edge-2"])));
        assert!(!dead.set(set(&["edge-2"])), "the same set is no change");
        assert!(dead.set(set(&[])));
        assert_eq!(dead.generation(), 2);
        assert!(a.try_recv().is_ok());
        assert!(a.try_recv().is_err(), "one pending signal is enough");
        assert!(b.try_recv().is_ok());
        drop(b);
        dead.set(set(&["edge-3"]));
        assert_eq!(dead.watchers(), 1, "an ended watch is forgotten");
    }

    #[test]
    fn offline_answers_and_watch_changes_follow_the_vote() {
        let (mut store, dir) = temp_store("aware", 64 << 20);
        for (enc, accept, body) in [
            (
                Encoding::Protobuf,
                "application/vnd.kubernetes.protobuf,application/json",
                "list-endpointslices-kubeproxy-pb.response.body.bin",
            ),
            (
                Encoding::Json,
                "application/json",
                "list-endpointslices-kubeproxy-json.response.body.json",
            ),
        ] {
            let req = classify(
                "GET",
                "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless&limit=500&resourceVersion=0",
                Some("kube-proxy/v1.24.0"),
                Some(accept),
            )
            .expect("classify");
            let key = offline::view_key(&req).expect("cacheable");
            let body = fixture(body);
            offline::record(&mut store, &key, enc, &body).expect("record");
            let (none, dead) = (set(&[]), set(&["edge-2"]));
            let whole = offline::answer(&mut store, &key, enc, &none)
                .expect("answer")
                .expect("cached")
                .into_vec();
            let filtered = offline::answer(&mut store, &key, enc, &dead)
                .expect("answer")
                .expect("cached")
                .into_vec();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            assert!(text(&whole).contains("edge-2"));
            assert!(!text(&filtered).contains("edge-2"), "{enc:?}");
            let (a, b) = (
                kube::parse_list(enc, &whole).expect("whole"),
                kube::parse_list(enc, &filtered).expect("filtered"),
            );
            assert_eq!((a.meta, a.items.len()), (b.meta, b.items.len()));

            // Going dead and back: one MODIFIED per slice with endpoints
            // there, each with the slice's own resourceVersion.
            let down = changes(&store, &key, enc, &none, &dead).expect("changes");
            let up = changes(&store, &key, enc, &dead, &none).expect("changes");
            let changed = a
                .items
                .iter()
                .filter(|i| text(i.bytes).contains("edge-2"))
                .count();
            assert!(changed > 0);
            assert_eq!((down.len(), up.len()), (changed, changed));
            for (frames, gone) in [(&down, true), (&up, false)] {
                let mut decoder = WatchDecoder::new(enc, 1 << 20);
                for f in frames.iter() {
                    decoder.push(f);
                }
                let mut n = 0;
                while let Some(ev) = decoder.next_event().expect("event") {
                    n += 1;
                    assert_eq!(ev.event_type, EventType::Modified);
                    let cached = a
                        .items
                        .iter()
                        .find(|i| i.meta.name == ev.meta.name)
                        .expect("a cached slice");
                    assert_eq!(ev.meta.resource_version, cached.meta.resource_version);
                    assert_eq!(text(ev.object).contains("edge-2"), !gone);
                }
                assert_eq!(n, changed);
            }
            assert!(changes(&store, &key, enc, &dead, &dead)
                .expect("changes")
                .is_empty());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_offline_get_of_one_slice_is_filtered_other_resources_never() {
        let (mut store, dir) = temp_store("aware-get", 64 << 20);
        let dead = set(&["edge-2"]);
        for (target, body, filtered) in [
            (
                "/apis/discovery.k8s.io/v1/namespaces/edge-apps/endpointslices/web-nkgvt",
                "get-endpointslice-web-json.response.body.json",
                true,
            ),
            (
                "/api/v1/namespaces/edge-apps/pods/x",
                "get-pod-json.response.body.json",
                false,
            ),
        ] {
            let req = classify(
                "GET",
                target,
                Some("kubectl/v1.24.0"),
                Some("application/json"),
            )
            .expect("classify");
            let key = offline::view_key(&req).expect("cacheable");
            let body = fixture(body);
            offline::record(&mut store, &key, Encoding::Json, &body).expect("record");
            let served = offline::answer(&mut store, &key, Encoding::Json, &dead)
                .expect("answer")
                .expect("cached")
                .into_vec();
            assert_eq!(served != body, filtered, "{target}");
            let text = String::from_utf8_lossy(&served).into_owned();
            if filtered {
                assert!(!text.contains("\"nodeName\":\"edge-2\""));
            }
            assert_eq!(
                kube::parse_object(Encoding::Json, &served).expect("an object"),
                kube::parse_object(Encoding::Json, &body).expect("an object")
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

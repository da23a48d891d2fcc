//! Autonomy (issue 6): keeps Kubernetes from evicting the pods of a node
//! that is cut off from the hub while its unit votes it alive, by renewing
//! the node's Lease on its behalf (ARCHITECTURE.md, "Autonomy").
//!
//! Every `renew_every` the controller looks at each node it knows (linked
//! to this hub since it started, or voted on by a unit). A node is
//! *protected* while its link to the hub is down and either its unit votes
//! it alive ([`Registry::vote`](crate::registry::Registry::vote)) or its
//! Node carries `tether.io/autonomy: "true"` (read with a GET of the Node
//! each period while the node is cut off). While protected, its Lease in
//! `kube-node-lease` is renewed (GET, `spec.renewTime` = now, PUT with the
//! resourceVersion read; one retry after a 409). Each change of protection
//! is logged once and posted as an Event on the Node
//! (`TetherAutonomyStarted`, `TetherAutonomyStopped`, with the reason);
//! errors from kube-apiserver are logged once per change of error and the
//! request is tried again next period.
//!
//! A link drop wakes the controller at once, so a node that becomes
//! protected is renewed without waiting up to `renew_every`; and a linked
//! node's link that fell silent is checked and dropped if dead
//! ([`check`]), so a black hole is seen within Kubernetes' node grace.
//!
//! - [`check`]: the link check (when to ask a quiet link, when to drop it).
//! - [`client`]: the HTTPS client to kube-apiserver.
//! - [`objects`]: Lease, Node annotation, Events, error texts (sans IO).
//! - [`webhook`]: the mutating admission webhook that gives pods labelled
//!   `tether.io/offline: autonomy` tolerations without a time limit.

pub mod check;
pub mod client;
pub mod objects;
pub mod webhook;

use crate::links::Hub;
use client::Client;
use futures_lite::FutureExt;
use log::{info, warn};
use objects::Action;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};
use tether_link::health::Vote;
use tether_link::topic::NodeName;

/// At most this many Events wait per node while kube-apiserver does not
/// take them (the oldest are dropped: the newest says how things stand).
const MAX_PENDING_EVENTS: usize = 8;

/// What `/nodes` and `/metrics` show of one node's autonomy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    /// The hub renews the node's Lease now.
    pub active: bool,
    /// Since when (while active).
    pub since: Option<SystemTime>,
    /// Why it is or is not active (`vote_alive`, `annotation`, `linked`,
    /// `voted_dead`, `undecided`, `no_unit`).
    pub reason: &'static str,
    /// Leases renewed for it since the hub started.
    pub renewals: u64,
    /// The last error from kube-apiserver about it, until a request
    /// succeeds.
    pub error: Option<String>,
}

/// The controller's state in the registry, for `/nodes` and `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    /// Every node the controller looks at.
    pub nodes: BTreeMap<NodeName, Shown>,
    /// Leases renewed since the hub started, all nodes.
    pub renewals: u64,
    /// Whether `[autonomy]` is configured (else nothing is shown).
    pub enabled: bool,
    /// The pod webhook's counters.
    pub webhook: webhook::Counters,
    /// Something changed that may protect a node (a link dropped): the
    /// controller looks again now.
    woken: bool,
    /// The controller, waiting for its next period.
    waker: Option<std::task::Waker>,
}

impl Status {
    /// Wakes the controller for a look at every node now (a link dropped:
    /// that node may need its Lease renewed before its next period).
    pub fn wake(&mut self) {
        self.woken = true;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Whether the hub protects a node, and why (or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Renew its Lease.
    pub protect: bool,
    /// A stable short reason for `/nodes`.
    pub reason: &'static str,
    /// The reason in words, for logs and Events.
    pub why: String,
}

/// Decides for one node: protected only while its link is down and its
/// unit votes it alive or it is annotated. A vote of dead or undecided
/// leaves an unannotated node to normal Kubernetes eviction.
pub fn decide(linked: bool, vote: Option<(&str, Vote)>, annotated: bool) -> Decision {
    let d = |protect, reason, why: String| Decision {
        protect,
        reason,
        why,
    };
    if linked {
        return d(false, "linked", "its link to the hub is up".into());
    }
    let vote_text = match vote {
        Some((unit, v)) => format!("unit {unit} votes it {v}"),
        None => "no unit votes on it".to_owned(),
    };
    match vote {
        Some((_, Vote::Alive { .. })) => d(
            true,
            "vote_alive",
            format!("its link to the hub is down and {vote_text}"),
        ),
        _ if annotated => d(
            true,
            "annotation",
            format!(
                "its link to the hub is down and its Node is annotated {}=\"true\" ({vote_text})",
                objects::ANNOTATION
            ),
        ),
        Some((_, Vote::Dead { .. })) => d(
            false,
            "voted_dead",
            format!("{vote_text}: left to Kubernetes"),
        ),
        Some((_, Vote::Undecided(_))) => d(
            false,
            "undecided",
            format!(
                "{vote_text}, and its Node is not annotated {}: left to Kubernetes",
                objects::ANNOTATION
            ),
        ),
        None => d(
            false,
            "no_unit",
            format!(
                "{vote_text}, and its Node is not annotated {}: left to Kubernetes",
                objects::ANNOTATION
            ),
        ),
    }
}

/// The controller's own memory of one node.
#[derive(Debug, Default)]
struct Tracked {
    active: bool,
    since: Option<SystemTime>,
    reason: &'static str,
    renewals: u64,
    /// The annotation as last read (kept while the Node cannot be read).
    annotated: bool,
    /// The Node was not found at the last GET.
    missing: bool,
    /// The last error logged, so each is logged once.
    error: Option<String>,
    /// Events not yet taken by kube-apiserver.
    pending: Vec<Vec<u8>>,
}

/// Runs the controller forever, looking at every node each `every`.
pub async fn run(hub: Rc<Hub>, mut client: Client, every: Duration) {
    info!(
        "autonomy: renewing the Leases of cut-off nodes voted alive (or annotated {}) every {} s at {}",
        objects::ANNOTATION,
        every.as_secs_f64(),
        client.address()
    );
    hub.registry.borrow_mut().autonomy.enabled = true;
    let mut nodes: BTreeMap<NodeName, Tracked> = BTreeMap::new();
    loop {
        let started = Instant::now();
        // A wake from now on is for something this look may miss.
        hub.registry.borrow_mut().autonomy.woken = false;
        tick(&hub, &mut client, &mut nodes).await;
        let woken = futures_lite::future::poll_fn(|cx| {
            let mut reg = hub.registry.borrow_mut();
            if std::mem::take(&mut reg.autonomy.woken) {
                std::task::Poll::Ready(())
            } else {
                reg.autonomy.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        });
        woken
            .or(async {
                async_io::Timer::at(started + every).await;
            })
            .await;
    }
}

/// One look at every node.
async fn tick(hub: &Rc<Hub>, client: &mut Client, nodes: &mut BTreeMap<NodeName, Tracked>) {
    // The nodes to look at: known before, with a session, or voted on.
    let names: BTreeSet<NodeName> = {
        let reg = hub.registry.borrow();
        let mut names: BTreeSet<NodeName> = nodes.keys().cloned().collect();
        names.extend(reg.nodes.keys().cloned());
        names.extend(
            reg.health
                .all_votes()
                .into_iter()
                .map(|(_, n, _)| n.clone()),
        );
        names
    };
    for name in names {
        let (linked, session, vote) = {
            let reg = hub.registry.borrow();
            let vote = reg.health.vote(&name).map(|(u, v)| (u.to_owned(), v));
            let node = reg.nodes.get(&name);
            (node.is_some_and(|n| n.linked), node.is_some(), vote)
        };
        let t = nodes.entry(name.clone()).or_default();
        let mut errors = Vec::new();
        if !linked {
            // The annotation matters only while the node is cut off.
            match client
                .request("GET", &Action::GetNode.path(&name), None)
                .await
            {
                Ok(a) if a.status == 200 => match objects::annotated(&a.body) {
                    Ok(v) => (t.annotated, t.missing) = (v, false),
                    Err(e) => errors.push(format!("reading Node {name}: {e}")),
                },
                Ok(a) if a.status == 404 => (t.annotated, t.missing) = (false, true),
                Ok(a) => errors.push(objects::explain(Action::GetNode, &name, a.status, &a.body)),
                Err(e) => errors.push(e),
            }
        }
        let d = decide(
            linked,
            vote.as_ref().map(|(u, v)| (u.as_str(), *v)),
            t.annotated,
        );
        change(&name, t, &d);
        if t.active {
            match renew(client, &name).await {
                Ok(()) => {
                    t.renewals += 1;
                    hub.registry.borrow_mut().autonomy.renewals += 1;
                }
                Err(e) => errors.push(e),
            }
        }
        while let Some(body) = t.pending.first() {
            match client
                .request("POST", &Action::CreateEvent.path(&name), Some(body))
                .await
            {
                // 409: a retry of one that was taken already.
                Ok(a) if a.status == 201 || a.status == 200 || a.status == 409 => {
                    t.pending.remove(0);
                }
                Ok(a) => {
                    errors.push(objects::explain(
                        Action::CreateEvent,
                        &name,
                        a.status,
                        &a.body,
                    ));
                    break;
                }
                Err(e) => {
                    errors.push(e);
                    break;
                }
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if error != t.error {
            match &error {
                Some(e) => warn!("autonomy: node {name}: {e} (trying again every period)"),
                None => info!("autonomy: node {name}: kube-apiserver requests succeed again"),
            }
            t.error = error;
        }
        // A node with no session, no vote and nothing that keeps it is
        // forgotten (bounded by the nodes that ever linked or were voted on).
        let forget = !session && vote.is_none() && !t.active && (t.missing || !t.annotated);
        let mut reg = hub.registry.borrow_mut();
        if forget {
            nodes.remove(&name);
            reg.autonomy.nodes.remove(&name);
        } else {
            reg.autonomy.nodes.insert(
                name.clone(),
                Shown {
                    active: t.active,
                    since: t.since,
                    reason: t.reason,
                    renewals: t.renewals,
                    error: t.error.clone(),
                },
            );
        }
    }
}

/// Applies a decision: on a change of protection, a log line and an Event
/// (queued); a new reason while protected is logged only.
fn change(name: &NodeName, t: &mut Tracked, d: &Decision) {
    let first = t.reason.is_empty();
    let reason_changed = t.reason != d.reason;
    t.reason = d.reason;
    if d.protect == t.active {
        if d.protect && reason_changed {
            info!("autonomy: node {name}: still renewing its Lease: {}", d.why);
        }
        return;
    }
    let now = SystemTime::now();
    t.active = d.protect;
    if d.protect {
        t.since = Some(now);
        warn!(
            "autonomy: node {name}: renewing its Lease on its behalf: {}",
            d.why
        );
        queue(t, objects::event(name.as_str(), "TetherAutonomyStarted", true,
            &format!("tether-hub renews the Lease of node {name} on its behalf, so its pods are not evicted: {}", d.why), now));
    } else {
        t.since = None;
        if first {
            return;
        }
        info!(
            "autonomy: node {name}: no longer renewing its Lease: {}",
            d.why
        );
        queue(
            t,
            objects::event(
                name.as_str(),
                "TetherAutonomyStopped",
                false,
                &format!(
                    "tether-hub stopped renewing the Lease of node {name}: {}",
                    d.why
                ),
                now,
            ),
        );
    }
}

fn queue(t: &mut Tracked, event: Vec<u8>) {
    if t.pending.len() >= MAX_PENDING_EVENTS {
        t.pending.remove(0);
    }
    t.pending.push(event);
}

/// Renews `node`'s Lease: GET, new `renewTime`, PUT with the
/// resourceVersion read; after a 409 (kubelet or another writer was
/// faster) once more from a new GET.
async fn renew(client: &mut Client, node: &NodeName) -> Result<(), String> {
    let path = Action::GetLease.path(node);
    for attempt in 0..2 {
        let got = client.request("GET", &path, None).await?;
        if got.status != 200 {
            return Err(objects::explain(
                Action::GetLease,
                node,
                got.status,
                &got.body,
            ));
        }
        let (body, _holder) = objects::renewed(&got.body, SystemTime::now())
            .map_err(|e| format!("Lease of node {node}: {e}"))?;
        let put = client.request("PUT", &path, Some(&body)).await?;
        match put.status {
            200 | 201 => return Ok(()),
            409 if attempt == 0 => continue,
            s => return Err(objects::explain(Action::UpdateLease, node, s, &put.body)),
        }
    }
    Err(format!(
        "Lease of node {node}: changed under the hub twice in a row (409 Conflict)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_link::health::Undecided;

    #[test]
    fn only_a_cut_off_node_voted_alive_or_annotated_is_protected() {
        let alive = Some(("u", Vote::Alive { alive: 2, dead: 0 }));
        let dead = Some(("u", Vote::Dead { alive: 0, dead: 2 }));
        let undecided = Some((
            "u",
            Vote::Undecided(Undecided::NoQuorum {
                reporting: 1,
                needed: 2,
            }),
        ));
        for (linked, vote, annotated, protect, reason) in [
            (true, alive, true, false, "linked"),
            (false, alive, false, true, "vote_alive"),
            (false, alive, true, true, "vote_alive"),
            (false, dead, false, false, "voted_dead"),
            (false, dead, true, true, "annotation"),
            (false, undecided, false, false, "undecided"),
            (false, undecided, true, true, "annotation"),
            (false, None, false, false, "no_unit"),
            (false, None, true, true, "annotation"),
        ] {
            let d = decide(linked, vote, annotated);
            assert_eq!((d.protect, d.reason), (protect, reason), "{d:?}");
        }
        assert!(decide(false, alive, false)
            .why
            .contains("unit u votes it alive (2 alive, 0 dead)"));
    }

    #[test]
    fn one_event_per_change() {
        let n = NodeName::new("edge-1").expect("name");
        let mut t = Tracked::default();
        // First look: linked. Nothing to say.
        change(&n, &mut t, &decide(true, None, false));
        assert!(t.pending.is_empty() && !t.active);
        let alive = Some(("u", Vote::Alive { alive: 2, dead: 0 }));
        change(&n, &mut t, &decide(false, alive, false));
        change(&n, &mut t, &decide(false, alive, false));
        assert_eq!(t.pending.len(), 1);
        assert!(t.active && t.since.is_some());
        // Still protected for another reason: no event.
        change(&n, &mut t, &decide(false, None, true));
        assert_eq!(t.pending.len(), 1);
        change(&n, &mut t, &decide(true, alive, true));
        assert_eq!(t.pending.len(), 2);
        assert!(!t.active && t.since.is_none());
        let e = String::from_utf8(t.pending[1].clone()).expect("text");
        assert!(
            e.contains("TetherAutonomyStopped") && e.contains("link to the hub is up"),
            "{e}"
        );
    }
}

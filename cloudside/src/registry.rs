//! Every node the hub knows: its session (which outlives connections), its
//! link state and counters, the units' health votes, what the autonomy
//! controller does for each node, and the hub-wide counters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};
use tether_link::io::Link;
use tether_link::topic::NodeName;

/// One node's session and link state.
pub struct Node {
    /// The session, shared with its driver and stream tasks.
    pub link: Link,
    /// A connection currently drives the session.
    pub linked: bool,
    /// When the current (or last) link came up.
    pub linked_since: Option<SystemTime>,
    /// When the last link went down.
    pub down_since: Option<(Instant, SystemTime)>,
    /// Links accepted for this session so far (reconnects = links - 1).
    pub links: u64,
    /// Where the current link comes from.
    pub remote: Option<SocketAddr>,
    /// How it authenticated.
    pub auth: &'static str,
    /// Serves the streams this node opens; dropped with the session.
    pub server: Option<smol::Task<()>>,
    /// The addresses of its Node status, as the edge last reported them.
    pub addresses: Vec<String>,
}

/// Hub-wide counters, for /metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// TCP connections accepted on the link port.
    pub connections: u64,
    /// Connections in TLS handshake or before CONNECT.
    pub handshakes: usize,
    /// Links refused by reason label.
    pub refused: BTreeMap<&'static str, u64>,
    /// Connections dropped before or at CONNECT by reason label, and
    /// `silent`: links dropped as dead by the link check of `[autonomy]`.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Joins and renewals by outcome label (`joined`, `renewed`, or the
    /// refusal's).
    pub joins: BTreeMap<&'static str, u64>,
    /// Egress CONNECTs by outcome label (`tunnelled`, or why not).
    pub egress: BTreeMap<&'static str, u64>,
}

/// All nodes and counters.
#[derive(Default)]
pub struct Registry {
    /// Nodes by name.
    pub nodes: HashMap<NodeName, Node>,
    /// Hub-wide counters.
    pub counters: Counters,
    /// The accept loop, waiting for a handshake slot.
    pub handshake_waiter: Option<std::task::Waker>,
    /// Health reports and each unit's vote (issue 6).
    pub health: crate::health::Units,
    /// What the autonomy controller does for each node (issue 6).
    pub autonomy: crate::autonomy::Status,
}

impl Registry {
    /// Links up now.
    pub fn links_up(&self) -> usize {
        self.nodes.values().filter(|n| n.linked).count()
    }

    /// Counts a refusal.
    pub fn refused(&mut self, label: &'static str) {
        *self.counters.refused.entry(label).or_default() += 1;
    }

    /// Counts an egress CONNECT's outcome.
    pub fn egress(&mut self, label: &'static str) {
        *self.counters.egress.entry(label).or_default() += 1;
    }

    /// The unit's vote on `node` and whether its link is up: what the
    /// autonomy controller acts on (it may keep the pods of a node that is
    /// not linked only while its unit votes it alive). `None` while no unit
    /// votes on the node. At most [`crate::health::RETALLY_EVERY`] old.
    pub fn vote(&self, node: &NodeName) -> Option<crate::health::NodeVote> {
        let (unit, vote) = self.health.vote(node)?;
        Some(crate::health::NodeVote {
            unit: unit.to_owned(),
            vote,
            linked: self.nodes.get(node).is_some_and(|n| n.linked),
        })
    }

    /// Counts a join or renewal by outcome.
    pub fn joined(&mut self, label: &'static str) {
        *self.counters.joins.entry(label).or_default() += 1;
    }

    /// Counts a connection dropped before a link formed (or, as `silent`,
    /// a link the link check found dead).
    pub fn dropped(&mut self, label: &'static str) {
        *self.counters.dropped.entry(label).or_default() += 1;
    }
}

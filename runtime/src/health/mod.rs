//! Health peers (issue 6): this edge's probing of the other members of its
//! unit, its verdicts on them, the verdicts they send it, and the unit's
//! vote. A sans-IO state machine: datagrams, instants and unix times in,
//! datagrams, events and verdicts out; no socket, thread or clock inside.
//!
//! - [`wire`]: the messages on the health port, signed with the unit key,
//!   and the checks on receipt (unit, membership, signature, clock, replay).
//! - [`peer`]: one peer's probe schedule and verdict with hysteresis.
//! - [`Health`] (here): ties them together for all peers of the unit.
//!
//! # Driving it
//!
//! The IO layer owns one UDP socket on `[health] listen` and:
//!
//! 1. sleeps until [`Health::poll_timeout`] (forever if `None`), then calls
//!    [`Health::handle_timeout`] and sends every [`Datagram`] it returns to
//!    its `addr`;
//! 2. passes each datagram received to [`Health::handle_datagram`], sends the
//!    answer it may return, and logs an error (rate-limited per sender: a
//!    forger can send many) without stopping;
//! 3. after every call, drains [`Health::poll_event`] to log verdict changes
//!    (each once) and, on a change, sends [`Health::report`] to the hub over
//!    the link; it also sends a report every interval while the link is up;
//! 4. re-reads `poll_timeout` after every call, since a received datagram
//!    can make something due at once (verdicts pushed to the peers).
//!
//! `now` is a monotonic instant and `unix_ms` the wall clock in
//! milliseconds since 1970; they are read by the IO layer at each call.
//!
//! # Default interval and traffic
//!
//! The figures to reach: a dead peer voted dead within 3 intervals, and at
//! most 200 bytes/s of health traffic per edge in a unit of 20. With
//! [`peer`]'s schedule a dead peer is judged dead within 2.5 intervals of
//! its death (`dead_after = 3` answer windows of half an interval, after
//! up to one interval to the next probe), and the verdict change is pushed
//! to every peer at once.
//!
//! Per interval, in steady state, an edge sends each of its n − 1 peers one
//! Probe and answers one Probe from each (the Answer carries its verdicts,
//! so there is no separate verdict round). With a 12-character unit name,
//! 16-character node names and the largest (5-byte) nonces, a Probe is 83
//! bytes (1 version + 13 unit + 17 name + 8 seq + 6 time + 6 body + 32 tag)
//! and an Answer 93 (10 more: the verdict bits of 20 members), plus 28 bytes
//! of UDP and IPv4 headers each:
//!
//! ```text
//! per peer and interval: (83 + 28) + (93 + 28)   = 232 bytes sent
//! unit of 20:            19 × 232                = 4408 bytes per interval
//! at 25 s:               4408 / 25               = 176 bytes/s sent per edge
//! ```
//!
//! (and as many received). At 20 s it would be 220 bytes/s, so the default
//! interval is **25 s**: under 200 bytes/s with room for longer names (each
//! extra character of a node name costs 19 × 2 bytes per interval, 1.5
//! bytes/s), a dead peer voted dead within about 63 s (2.5 intervals), and
//! a unit of 5 at about 37 bytes/s. The test `tests::traffic_of_a_unit_of_20`
//! measures this from real encoded messages on a simulated unit. A verdict
//! change adds one push of n − 1 messages of 88 bytes, once.

pub mod io;
pub mod members;
pub mod peer;
pub mod wire;

use peer::{Change, Probing, Timing};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_link::health::{tally, Verdict, VerdictReport, Vote, MAX_UNIT_MEMBERS};
use tether_link::topic::NodeName;
use wire::{Body, Members, Receiver, Sender, UnitKey};

/// Default time between probes of a peer (see the module docs for why 25 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(25);
/// Default consecutive failed probes before a peer is dead.
pub const DEFAULT_DEAD_AFTER: u32 = 3;
/// Default consecutive answered probes before a dead peer is alive again.
pub const DEFAULT_ALIVE_AFTER: u32 = 2;
/// Default largest difference between a sender's clock and ours.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(30);
/// Default health port: all addresses, so peers on the site network reach it.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 10263);
/// A peer's verdicts count in [`Health::votes`] for this many intervals after
/// they arrived (the hub keeps reports as long): two lost answers in a row
/// do not drop a voter.
pub use tether_link::health::FRESH_INTERVALS;
/// Events kept until the IO layer drains them (it drains after every call,
/// so this holds the worst single call with room to spare).
const MAX_EVENTS: usize = 4 * MAX_UNIT_MEMBERS;

/// One other member of the unit, as `[health] peers` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its node name.
    pub name: NodeName,
    /// Its health port as `host:port`, resolved by the IO layer.
    pub addr: String,
}

/// The `[health]` section of the edge's config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this edge's health port listens.
    pub listen: SocketAddr,
    /// Time between probes of a peer.
    pub interval: Duration,
    /// The unit's key, read from `key_file`.
    pub key: UnitKey,
    /// The unit's other members (at most [`MAX_UNIT_MEMBERS`] − 1); empty
    /// when they come from a node label (`label`).
    pub peers: Vec<PeerAddr>,
    /// The unit and its members from a Kubernetes node label instead of
    /// the top-level `unit` and `peers` (`[health] unit_label`).
    pub label: Option<members::UnitLabel>,
    /// Consecutive failed probes before a peer is dead.
    pub dead_after: u32,
    /// Consecutive answered probes before a dead peer is alive again.
    pub alive_after: u32,
    /// Largest difference between a sender's clock and ours.
    pub max_skew: Duration,
}

/// A message to send: its bytes, to the health port of `to` at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The peer it is for.
    pub to: NodeName,
    /// Its health port, as configured.
    pub addr: String,
    /// The signed message.
    pub bytes: Vec<u8>,
}

/// Something the IO layer should log, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This edge's verdict on `peer` changed; report it to the hub.
    Verdict {
        /// The peer.
        peer: NodeName,
        /// The verdict before and now.
        change: Change,
    },
    /// `peer`'s verdicts cannot be read because its member list differs
    /// from ours; its answers still count as answers. Logged when it starts.
    MembersDiffer {
        /// The peer.
        peer: NodeName,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Verdict { peer, change } => match change.from {
                Some(from) => write!(f, "health peer {peer}: {from} -> {}", change.to),
                None => write!(f, "health peer {peer}: {}", change.to),
            },
            Event::MembersDiffer { peer } => write!(
                f,
                "health peer {peer} counts other members in the unit than this node, so its \
                 verdicts are ignored: give every member of the unit the same members \
                 (each one's peers plus itself)"
            ),
        }
    }
}

/// The unit's members changed ([`Health::set_members`]): what to log, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersChanged {
    /// The unit now.
    pub unit: String,
    /// The unit before, when this node was in another one.
    pub old_unit: Option<String>,
    /// The members now, this node included, sorted by name.
    pub members: Vec<NodeName>,
    /// Members that joined.
    pub joined: Vec<NodeName>,
    /// Members that left.
    pub left: Vec<NodeName>,
}

impl std::fmt::Display for MembersChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "health unit {}: members now", self.unit)?;
        for m in &self.members {
            write!(f, " {m}")?;
        }
        let changes: Vec<String> = (self.joined.iter().map(|m| format!("+{m}")))
            .chain(self.left.iter().map(|m| format!("-{m}")))
            .collect();
        if !changes.is_empty() {
            write!(f, " ({})", changes.join(" "))?;
        }
        if let Some(old) = &self.old_unit {
            write!(f, "; this node was in unit {old} before")?;
        }
        Ok(())
    }
}

/// One peer: where it is, its probing, and what it last told us.
#[derive(Debug)]
struct Peer {
    name: NodeName,
    addr: String,
    probing: Probing,
    /// Its verdicts on the members, and when they arrived.
    heard: Option<(Instant, Vec<(NodeName, Verdict)>)>,
    members_differ: bool,
}

/// This edge's health peer: see the module docs.
#[derive(Debug)]
pub struct Health {
    own: NodeName,
    unit: String,
    timing: Timing,
    sender: Sender,
    receiver: Receiver,
    members: Members,
    peers: Vec<Peer>,
    next_nonce: u32,
    /// Our verdicts changed at this instant and have not been pushed yet.
    push_due: Option<Instant>,
    events: VecDeque<Event>,
}

impl Health {
    /// The health peer of `own` in `unit`, started at `now` (its first
    /// probes are due at once) and at `start_unix_ms` on the wall clock (the
    /// base of its sequence numbers, see [`wire`]).
    pub fn new(
        own: NodeName,
        unit: &str,
        config: &Config,
        start_unix_ms: u64,
        now: Instant,
    ) -> Health {
        let peers: Vec<Peer> = config
            .peers
            .iter()
            .filter(|p| p.name != own)
            .take(MAX_UNIT_MEMBERS - 1)
            .map(|p| Peer {
                name: p.name.clone(),
                addr: p.addr.clone(),
                probing: Probing::new(now),
                heard: None,
                members_differ: false,
            })
            .collect();
        let names: Vec<NodeName> = peers.iter().map(|p| p.name.clone()).collect();
        Health {
            timing: Timing {
                interval: config.interval,
                dead_after: config.dead_after.max(1),
                alive_after: config.alive_after.max(1),
            },
            sender: Sender::new(unit, own.clone(), config.key.clone(), start_unix_ms),
            receiver: Receiver::new(
                unit,
                own.clone(),
                &names,
                config.key.clone(),
                config.max_skew,
            ),
            members: Members::new(&own, &names),
            own,
            unit: unit.to_owned(),
            peers,
            next_nonce: 0,
            push_due: None,
            events: VecDeque::new(),
        }
    }

    /// The unit's members, this node included, sorted by name.
    pub fn members(&self) -> &[NodeName] {
        self.members.names()
    }

    /// The unit's name (empty while a unit from a node label is not known).
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Makes `peers` the unit's other members and `unit` its name from
    /// `now` on (the unit from a node label was read again). A member that
    /// stays keeps its probing, verdict, the verdicts it sent and its replay
    /// state (its address is updated); one that left is forgotten, with its
    /// verdicts in the others' reports; one that joined starts with no
    /// verdict and is probed at once. Returns what changed, `None` when the
    /// members and the unit are the same (addresses may still change).
    pub fn set_members(
        &mut self,
        unit: &str,
        peers: &[PeerAddr],
        now: Instant,
    ) -> Option<MembersChanged> {
        let mut new: BTreeMap<NodeName, String> = BTreeMap::new();
        for p in peers.iter().filter(|p| p.name != self.own) {
            if new.len() < MAX_UNIT_MEMBERS - 1 {
                new.entry(p.name.clone()).or_insert_with(|| p.addr.clone());
            }
        }
        let same_names =
            self.peers.len() == new.len() && self.peers.iter().all(|p| new.contains_key(&p.name));
        if same_names && unit == self.unit {
            for p in &mut self.peers {
                if let Some(addr) = new.get(&p.name) {
                    addr.clone_into(&mut p.addr);
                }
            }
            return None;
        }
        let mut old: BTreeMap<NodeName, Peer> =
            self.peers.drain(..).map(|p| (p.name.clone(), p)).collect();
        let mut joined = Vec::new();
        for (name, addr) in new {
            let peer = match old.remove(&name) {
                Some(mut kept) => {
                    kept.addr = addr;
                    kept
                }
                None => {
                    joined.push(name.clone());
                    Peer {
                        name,
                        addr,
                        probing: Probing::new(now),
                        heard: None,
                        members_differ: false,
                    }
                }
            };
            self.peers.push(peer);
        }
        let names: Vec<NodeName> = self.peers.iter().map(|p| p.name.clone()).collect();
        self.members = Members::new(&self.own, &names);
        self.receiver.set_members(unit, &names);
        self.sender.set_unit(unit);
        let members = self.members.names();
        for p in &mut self.peers {
            if let Some((_, verdicts)) = &mut p.heard {
                verdicts.retain(|(n, _)| members.binary_search(n).is_ok());
            }
            // Compared against the new list from the next message on.
            p.members_differ = false;
        }
        let old_unit =
            (!self.unit.is_empty() && self.unit != unit).then(|| std::mem::take(&mut self.unit));
        unit.clone_into(&mut self.unit);
        Some(MembersChanged {
            unit: self.unit.clone(),
            old_unit,
            members: members.to_vec(),
            joined,
            left: old.into_keys().collect(),
        })
    }

    /// When [`Health::handle_timeout`] is next due; `None` in a unit of one,
    /// which has nothing to probe (datagrams are still answered).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probes = self.peers.iter().map(|p| p.probing.poll_timeout());
        probes.chain(self.push_due).min()
    }

    /// Fails probes whose answer window passed and returns the probes now
    /// due, plus our verdicts for every peer if they changed.
    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64) -> Vec<Datagram> {
        let mut out = Vec::new();
        for i in 0..self.peers.len() {
            let (change, probe) = self.peers[i].probing.handle_timeout(now, &self.timing);
            if let Some(change) = change {
                self.changed(i, change, now);
            }
            if probe {
                let nonce = self.next_nonce;
                self.next_nonce = self.next_nonce.wrapping_add(1);
                let bytes = self.sender.seal(unix_ms, Body::Probe { nonce });
                let peer = &mut self.peers[i];
                peer.probing.sent(nonce, now, &self.timing);
                out.push(Datagram {
                    to: peer.name.clone(),
                    addr: peer.addr.clone(),
                    bytes,
                });
            }
        }
        if self.push_due.is_some_and(|due| now >= due) {
            self.push_due = None;
            let body = Body::Verdicts(self.own_bits());
            for p in &self.peers {
                out.push(Datagram {
                    to: p.name.clone(),
                    addr: p.addr.clone(),
                    bytes: self.sender.seal(unix_ms, body),
                });
            }
        }
        out
    }

    /// A datagram from the health port, received at `now` and `unix_ms`.
    /// Returns the answer to send back for a probe. An error means the
    /// datagram was dropped without changing anything; log it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        unix_ms: u64,
        bytes: &[u8],
    ) -> Result<Option<Datagram>, wire::Error> {
        let message = self.receiver.open(unix_ms, bytes)?;
        // The receiver accepts only configured peers.
        let Some(i) = self.peers.iter().position(|p| p.name == message.from) else {
            return Ok(None);
        };
        match message.body {
            Body::Probe { nonce } => {
                let verdicts = self.own_bits();
                let bytes = self.sender.seal(unix_ms, Body::Answer { nonce, verdicts });
                let peer = &self.peers[i];
                Ok(Some(Datagram {
                    to: peer.name.clone(),
                    addr: peer.addr.clone(),
                    bytes,
                }))
            }
            Body::Answer { nonce, verdicts } => {
                if let Some(change) = self.peers[i].probing.answered(nonce, &self.timing) {
                    self.changed(i, change, now);
                }
                self.heard(i, now, &verdicts);
                Ok(None)
            }
            Body::Verdicts(verdicts) => {
                self.heard(i, now, &verdicts);
                Ok(None)
            }
        }
    }

    /// The next thing to log, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// This edge's verdicts on its peers (peers without one are left out).
    pub fn verdicts(&self) -> Vec<(NodeName, Verdict)> {
        self.peers
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.probing.verdict()?)))
            .collect()
    }

    /// Our verdicts as a report for the hub, numbered above every earlier
    /// report and message of this node, with the unit's members and our
    /// interval (the hub has no unit config of its own).
    pub fn report(&mut self) -> VerdictReport {
        VerdictReport {
            from: self.own.clone(),
            unit: self.unit.clone(),
            seq: self.sender.next_seq(),
            interval_ms: u64::try_from(self.timing.interval.as_millis()).unwrap_or(u64::MAX),
            members: self.members.names().to_vec(),
            verdicts: self.verdicts(),
        }
    }

    /// The probe interval.
    pub fn interval(&self) -> Duration {
        self.timing.interval
    }

    /// Consecutive failures that make a peer dead, and answers that make a
    /// dead peer alive (for log lines that say why a verdict changed).
    pub fn hysteresis(&self) -> (u32, u32) {
        (self.timing.dead_after, self.timing.alive_after)
    }

    /// The unit's vote on each member as this edge sees it at `now`: our own
    /// verdicts and those of every peer heard within [`FRESH_INTERVALS`]
    /// intervals, tallied by [`tether_link::health::tally`]. This is what a
    /// cut-off edge acts on (node awareness).
    pub fn votes(&self, now: Instant) -> Vec<(NodeName, Vote)> {
        let fresh = self.timing.interval * FRESH_INTERVALS;
        let own = self.verdicts();
        let mut reports: Vec<(NodeName, &[(NodeName, Verdict)])> =
            vec![(self.own.clone(), own.as_slice())];
        for p in &self.peers {
            if let Some((at, verdicts)) = &p.heard {
                if now.saturating_duration_since(*at) <= fresh {
                    reports.push((p.name.clone(), verdicts.as_slice()));
                }
            }
        }
        tally(self.members.names(), &reports)
    }

    /// Our verdicts as bits for the wire.
    fn own_bits(&self) -> wire::Verdicts {
        let verdicts = self.verdicts();
        self.members.encode(verdicts.iter().map(|(n, v)| (n, *v)))
    }

    /// Peer `i`'s verdict changed: log it, and push our verdicts to the unit.
    fn changed(&mut self, i: usize, change: Change, now: Instant) {
        self.event(Event::Verdict {
            peer: self.peers[i].name.clone(),
            change,
        });
        self.push_due.get_or_insert(now);
    }

    /// Peer `i` sent its verdicts at `now`.
    fn heard(&mut self, i: usize, now: Instant, verdicts: &wire::Verdicts) {
        let decoded = self.members.decode(&self.peers[i].name, verdicts);
        let peer = &mut self.peers[i];
        match decoded {
            Some(list) => {
                peer.heard = Some((now, list));
                peer.members_differ = false;
            }
            None => {
                let first = !peer.members_differ;
                peer.members_differ = true;
                if first {
                    let peer = peer.name.clone();
                    self.event(Event::MembersDiffer { peer });
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const NOW_MS: u64 = 1_750_000_000_000;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("test name")
    }

    fn config(peers: &[NodeName], interval: Duration) -> Config {
        Config {
            listen: DEFAULT_LISTEN,
            interval,
            key: UnitKey::new(&[42; 32]).expect("key"),
            peers: peers
                .iter()
                .map(|p| PeerAddr {
                    name: p.clone(),
                    addr: format!("{p}:10263"),
                })
                .collect(),
            label: None,
            dead_after: DEFAULT_DEAD_AFTER,
            alive_after: DEFAULT_ALIVE_AFTER,
            max_skew: DEFAULT_MAX_SKEW,
        }
    }

    /// A unit of health peers on an in-memory network with a test clock.
    struct Unit {
        start: Instant,
        now: Instant,
        nodes: BTreeMap<NodeName, Health>,
        /// Nodes whose datagrams go nowhere and who receive nothing.
        down: Vec<NodeName>,
        /// Bytes each node sent, UDP and IPv4 headers included.
        sent: BTreeMap<NodeName, usize>,
        events: Vec<(Duration, NodeName, Event)>,
    }

    const UDP_IPV4: usize = 28;

    impl Unit {
        fn new(unit: &str, names: &[NodeName], interval: Duration) -> Unit {
            let start = Instant::now();
            let nodes = names
                .iter()
                .map(|own| {
                    let peers: Vec<NodeName> =
                        names.iter().filter(|p| *p != own).cloned().collect();
                    let h =
                        Health::new(own.clone(), unit, &config(&peers, interval), NOW_MS, start);
                    (own.clone(), h)
                })
                .collect();
            Unit {
                start,
                now: start,
                nodes,
                down: Vec::new(),
                sent: BTreeMap::new(),
                events: Vec::new(),
            }
        }

        fn unix_ms(&self) -> u64 {
            NOW_MS + (self.now - self.start).as_millis() as u64
        }

        /// Runs every timer due up to `until`; datagrams arrive at once.
        fn run_until(&mut self, until: Instant) {
            loop {
                let next = self
                    .nodes
                    .iter()
                    .filter(|(name, _)| !self.down.contains(name))
                    .filter_map(|(_, h)| h.poll_timeout())
                    .min()
                    .unwrap_or(until + Duration::from_secs(1));
                if next > until {
                    self.now = until;
                    return;
                }
                self.now = self.now.max(next);
                let due: Vec<NodeName> = self
                    .nodes
                    .iter()
                    .filter(|(name, h)| {
                        !self.down.contains(name) && h.poll_timeout().is_some_and(|t| t <= self.now)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in due {
                    let (now, ms) = (self.now, self.unix_ms());
                    let out = self
                        .nodes
                        .get_mut(&name)
                        .expect("node")
                        .handle_timeout(now, ms);
                    self.deliver(&name, out);
                }
            }
        }

        fn deliver(&mut self, from: &NodeName, out: Vec<Datagram>) {
            let (now, ms) = (self.now, self.unix_ms());
            let mut queue: VecDeque<(NodeName, Datagram)> =
                out.into_iter().map(|d| (from.clone(), d)).collect();
            while let Some((sender, d)) = queue.pop_front() {
                *self.sent.entry(sender.clone()).or_default() += d.bytes.len() + UDP_IPV4;
                if self.down.contains(&d.to) || self.down.contains(&sender) {
                    continue;
                }
                let h = self.nodes.get_mut(&d.to).expect("member");
                if let Some(reply) = h.handle_datagram(now, ms, &d.bytes).expect("valid") {
                    queue.push_back((d.to.clone(), reply));
                }
                self.drain(&d.to);
            }
            self.drain(from);
        }

        fn drain(&mut self, name: &NodeName) {
            let at = self.now - self.start;
            let h = self.nodes.get_mut(name).expect("node");
            while let Some(e) = h.poll_event() {
                self.events.push((at, name.clone(), e));
            }
        }
    }

    fn names(prefix: &str, count: usize) -> Vec<NodeName> {
        (1..=count).map(|i| n(&format!("{prefix}{i:02}"))).collect()
    }

    #[test]
    fn traffic_of_a_unit_of_20() {
        // 12-character unit, 16-character node names.
        let members = names("gh-bench-node-", 20);
        let mut unit = Unit::new("greenhouse-a", &members, DEFAULT_INTERVAL);
        for h in unit.nodes.values_mut() {
            // The largest nonces (5-byte varints), as after long uptimes.
            h.next_nonce = 1 << 28;
        }
        // Warm up until every verdict is in and pushed, then measure.
        unit.run_until(unit.start + DEFAULT_INTERVAL * 2 + Duration::from_millis(1));
        unit.sent.clear();
        let intervals = 20;
        let from = unit.now;
        unit.run_until(from + DEFAULT_INTERVAL * intervals);
        let seconds = (DEFAULT_INTERVAL * intervals).as_secs_f64();
        for (name, bytes) in &unit.sent {
            let rate = *bytes as f64 / seconds;
            assert!(rate <= 200.0, "{name} sends {rate:.0} bytes/s");
            // The module docs' figure.
            assert!(
                (rate - 176.3).abs() < 0.1,
                "{name} sends {rate:.1} bytes/s ({bytes} bytes in {seconds} s)"
            );
        }
        // And the message sizes the docs name.
        let h = unit.nodes.values_mut().next().expect("node");
        let probe = h.sender.seal(NOW_MS, Body::Probe { nonce: 1 << 28 });
        let verdicts = h.own_bits();
        let answer = h.sender.seal(
            NOW_MS,
            Body::Answer {
                nonce: 1 << 28,
                verdicts,
            },
        );
        assert_eq!((probe.len(), answer.len()), (83, 93));
        assert_eq!(h.sender.seal(NOW_MS, Body::Verdicts(verdicts)).len(), 88);
    }

    #[test]
    fn everyone_alive_and_agreed() {
        let members = names("e", 5);
        let mut unit = Unit::new("bench-a", &members, DEFAULT_INTERVAL);
        unit.run_until(unit.start + DEFAULT_INTERVAL);
        let now = unit.now;
        for h in unit.nodes.values() {
            assert_eq!(h.verdicts().len(), 4);
            for (_, vote) in h.votes(now) {
                assert_eq!(vote, Vote::Alive { alive: 4, dead: 0 });
            }
        }
        // Every verdict change was an event, once.
        assert_eq!(unit.events.len(), 5 * 4);
    }

    #[test]
    fn a_dead_peer_is_voted_dead_within_three_intervals() {
        let members = names("e", 5);
        let mut unit = Unit::new("bench-a", &members, DEFAULT_INTERVAL);
        unit.run_until(unit.start + DEFAULT_INTERVAL * 3 + Duration::from_millis(1));
        // Dies just after answering its probes: the worst case.
        let death = unit.now;
        unit.down.push(n("e05"));
        unit.events.clear();
        let mut voted_at = None;
        while voted_at.is_none() && unit.now < death + DEFAULT_INTERVAL * 4 {
            let step = unit.now + Duration::from_millis(500);
            unit.run_until(step);
            let voters: Vec<&Health> = members[..4].iter().map(|m| &unit.nodes[m]).collect();
            if voters.iter().all(|h| {
                h.votes(step)
                    .iter()
                    .any(|(m, v)| m.as_str() == "e05" && matches!(v, Vote::Dead { dead: 4, .. }))
            }) {
                voted_at = Some(step);
            }
        }
        let took = voted_at.expect("voted dead") - death;
        assert!(took <= DEFAULT_INTERVAL * 3, "{took:?}");
        assert!(
            took <= DEFAULT_INTERVAL * 5 / 2 + Duration::from_secs(1),
            "{took:?}"
        );
        // Each survivor logged the death once.
        let deaths = unit
            .events
            .iter()
            .filter(|(_, _, e)| matches!(e, Event::Verdict { change, .. } if change.to == Verdict::Dead))
            .count();
        assert_eq!(deaths, 4);
        // Back: alive again after alive_after answers.
        unit.down.clear();
        unit.run_until(unit.now + DEFAULT_INTERVAL * 3);
        for h in unit.nodes.values() {
            assert!(h.verdicts().iter().all(|(_, v)| *v == Verdict::Alive));
        }
    }

    #[test]
    fn report_for_the_hub() {
        let members = names("e", 3);
        let mut unit = Unit::new("bench-a", &members, DEFAULT_INTERVAL);
        unit.run_until(unit.start + DEFAULT_INTERVAL);
        let h = unit.nodes.get_mut(&n("e01")).expect("node");
        let first = h.report();
        let second = h.report();
        assert!(second.seq > first.seq && first.seq > NOW_MS * 1000);
        assert_eq!(first.unit, "bench-a");
        assert_eq!(first.interval_ms, 25_000);
        assert_eq!(first.members, members);
        assert_eq!(
            first.verdicts,
            vec![(n("e02"), Verdict::Alive), (n("e03"), Verdict::Alive)]
        );
        assert_eq!(VerdictReport::decode(&first.encode()), Ok(first));
    }

    #[test]
    fn members_differ_is_logged_once_and_answers_still_count() {
        let (a, b, c) = (n("a"), n("b"), n("c"));
        let start = Instant::now();
        // b thinks the unit is {a, b}; a thinks it is {a, b, c}.
        let mut ha = Health::new(
            a.clone(),
            "u",
            &config(&[b.clone(), c], DEFAULT_INTERVAL),
            NOW_MS,
            start,
        );
        let mut hb = Health::new(
            b.clone(),
            "u",
            &config(std::slice::from_ref(&a), DEFAULT_INTERVAL),
            NOW_MS,
            start,
        );
        for round in 0..3u32 {
            let now = start + DEFAULT_INTERVAL * round;
            let ms = NOW_MS + u64::from(round) * 25_000;
            for d in ha.handle_timeout(now, ms).into_iter().filter(|d| d.to == b) {
                // Verdicts pushed after a change get no answer.
                if let Some(answer) = hb.handle_datagram(now, ms, &d.bytes).expect("valid") {
                    ha.handle_datagram(now, ms, &answer.bytes).expect("valid");
                }
            }
        }
        let events: Vec<Event> = std::iter::from_fn(|| ha.poll_event()).collect();
        let differ = events
            .iter()
            .filter(|e| matches!(e, Event::MembersDiffer { .. }))
            .count();
        assert_eq!(differ, 1, "{events:?}");
        assert!(events[..]
            .iter()
            .any(|e| e.to_string().contains("give every member")));
        assert!(ha.verdicts().contains(&(b, Verdict::Alive)));
    }

    #[test]
    fn rejected_datagrams_change_nothing() {
        let (a, b) = (n("a"), n("b"));
        let start = Instant::now();
        let mut ha = Health::new(
            a.clone(),
            "u",
            &config(std::slice::from_ref(&b), DEFAULT_INTERVAL),
            NOW_MS,
            start,
        );
        let mut forger = config(std::slice::from_ref(&a), DEFAULT_INTERVAL);
        forger.key = UnitKey::new(&[1; 32]).expect("key");
        let mut hb = Health::new(b.clone(), "u", &forger, NOW_MS, start);
        let probe = ha.handle_timeout(start, NOW_MS).pop().expect("probe");
        let e = hb
            .handle_datagram(start, NOW_MS, &probe.bytes)
            .expect_err("forged");
        assert!(matches!(e, wire::Error::Forged { .. }), "{e}");
        assert_eq!(hb.poll_event(), None);
        // A replay of a genuine answer is refused and resolves nothing twice.
        let mut hb = Health::new(b, "u", &config(&[a], DEFAULT_INTERVAL), NOW_MS, start);
        let answer = hb
            .handle_datagram(start, NOW_MS, &probe.bytes)
            .expect("valid")
            .expect("answer");
        ha.handle_datagram(start, NOW_MS, &answer.bytes)
            .expect("valid");
        let e = ha
            .handle_datagram(start, NOW_MS, &answer.bytes)
            .expect_err("replay");
        assert!(matches!(e, wire::Error::Replayed { .. }), "{e}");
    }

    fn addrs(names: &[&str]) -> Vec<PeerAddr> {
        names
            .iter()
            .map(|p| PeerAddr {
                name: n(p),
                addr: format!("{p}:10263"),
            })
            .collect()
    }

    #[test]
    fn set_members_keeps_those_that_stay_and_drops_those_that_left() {
        let members = names("e", 4);
        let mut unit = Unit::new("bench-a", &members, DEFAULT_INTERVAL);
        unit.run_until(unit.start + DEFAULT_INTERVAL);
        let now = unit.now;
        // A message e02 sent e01, already accepted: a replay later.
        let e02 = unit.nodes.get_mut(&n("e02")).expect("node");
        let bits = e02.own_bits();
        let from_e02 = e02.sender.seal(NOW_MS + 2, Body::Verdicts(bits));
        let e04 = unit.nodes.get_mut(&n("e04")).expect("node");
        let from_e04 = e04.sender.seal(NOW_MS + 1, Body::Probe { nonce: 1 });
        let h = unit.nodes.get_mut(&n("e01")).expect("node");
        h.handle_datagram(now, NOW_MS + 2, &from_e02)
            .expect("valid");
        let change = h
            .set_members("bench-a", &addrs(&["e02", "e03", "e05", "e01"]), now)
            .expect("a change");
        assert_eq!(
            change.to_string(),
            "health unit bench-a: members now e01 e02 e03 e05 (+e05 -e04)"
        );
        assert_eq!(h.members(), &[n("e01"), n("e02"), n("e03"), n("e05")][..]);
        // Verdicts on those that stay are kept; e05 has none yet, and is due.
        assert_eq!(
            h.verdicts(),
            vec![(n("e02"), Verdict::Alive), (n("e03"), Verdict::Alive)]
        );
        assert!(h.poll_timeout().is_some_and(|t| t <= now));
        let probes: Vec<NodeName> = h
            .handle_timeout(now, NOW_MS)
            .into_iter()
            .map(|d| d.to)
            .collect();
        assert_eq!(probes, vec![n("e05")]);
        // Replay state of those that stay is kept; those that left are strangers.
        let e = h
            .handle_datagram(now, NOW_MS + 2, &from_e02)
            .expect_err("replay");
        assert!(matches!(e, wire::Error::Replayed { .. }), "{e}");
        let e = h
            .handle_datagram(now, NOW_MS + 1, &from_e04)
            .expect_err("left");
        assert!(matches!(e, wire::Error::NotMember { .. }), "{e}");
        // The vote is over the new members; e04's opinions are gone.
        let votes = h.votes(now);
        assert_eq!(votes.len(), 4);
        assert!(!votes.iter().any(|(m, _)| m.as_str() == "e04"));
        // The same members again (in another order, an address changed):
        // nothing to log.
        let mut again = addrs(&["e05", "e03", "e02"]);
        again[0].addr = "10.0.0.5:10263".into();
        assert_eq!(h.set_members("bench-a", &again, now), None);
        let to_e05 = h
            .handle_timeout(now + DEFAULT_INTERVAL, NOW_MS)
            .into_iter()
            .find(|d| d.to.as_str() == "e05")
            .expect("a probe");
        assert_eq!(to_e05.addr, "10.0.0.5:10263");
    }

    #[test]
    fn set_members_from_no_unit_and_to_another_unit() {
        let start = Instant::now();
        let (a, b) = (n("a"), n("b"));
        // Waiting for its unit: nothing to probe.
        let mut ha = Health::new(a.clone(), "", &config(&[], DEFAULT_INTERVAL), NOW_MS, start);
        assert_eq!(ha.poll_timeout(), None);
        let change = ha
            .set_members("site-a", &addrs(&["b"]), start)
            .expect("a change");
        assert_eq!(change.old_unit, None);
        assert_eq!(
            change.to_string(),
            "health unit site-a: members now a b (+b)"
        );
        assert_eq!(ha.unit(), "site-a");
        // It now talks to b in site-a.
        let mut hb = Health::new(
            b.clone(),
            "site-a",
            &config(std::slice::from_ref(&a), DEFAULT_INTERVAL),
            NOW_MS,
            start,
        );
        let probe = ha.handle_timeout(start, NOW_MS).pop().expect("probe");
        let answer = hb
            .handle_datagram(start, NOW_MS, &probe.bytes)
            .expect("valid")
            .expect("answer");
        ha.handle_datagram(start, NOW_MS, &answer.bytes)
            .expect("valid");
        assert_eq!(ha.verdicts(), vec![(b.clone(), Verdict::Alive)]);
        // Moved to site-b with the same peer: messages name site-b, which b
        // (still in site-a) refuses; a's verdict on b stays until probes say.
        let change = ha
            .set_members("site-b", &addrs(&["b"]), start)
            .expect("a change");
        assert_eq!(change.old_unit.as_deref(), Some("site-a"));
        assert!(change
            .to_string()
            .ends_with("this node was in unit site-a before"));
        assert_eq!(ha.verdicts(), vec![(b, Verdict::Alive)]);
        let later = start + DEFAULT_INTERVAL;
        let probe = ha
            .handle_timeout(later, NOW_MS + 25_000)
            .pop()
            .expect("probe");
        let e = hb
            .handle_datagram(later, NOW_MS + 25_000, &probe.bytes)
            .expect_err("other unit");
        assert!(matches!(e, wire::Error::WrongUnit { .. }), "{e}");
        assert_eq!(ha.report().unit, "site-b");
    }

    #[test]
    fn unit_of_one_probes_nothing_and_never_votes() {
        let start = Instant::now();
        let a = n("a");
        let mut h = Health::new(
            a.clone(),
            "u",
            &config(&[], DEFAULT_INTERVAL),
            NOW_MS,
            start,
        );
        assert_eq!(h.poll_timeout(), None);
        assert!(h.handle_timeout(start, NOW_MS).is_empty());
        assert_eq!(
            h.votes(start),
            vec![(
                a,
                Vote::Undecided(tether_link::health::Undecided::UnitOfOne)
            )]
        );
    }
}

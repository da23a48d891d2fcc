//! The units' votes on the hub (issue 6): the latest verdict report of each
//! reporting node, by unit, and each unit's vote on its members, tallied by
//! [`tether_link::health::tally_reports`] whenever a report arrives and
//! every second (reports go stale), each change of a vote logged once.
//!
//! # Reports
//!
//! An edge sends each report on a stream of its own to the reserved
//! upstream [`HEALTH_UPSTREAM`](tether_link::mux::HEALTH_UPSTREAM) ([`receive`]): the encoded report, at most
//! [`HEALTH_REPORT_MAX`] bytes, within [`READ_TIMEOUT`]. A report counts
//! only if its `from` is the link's own node (the link is authenticated;
//! the report itself is not signed). Per node the newest report is kept
//! (by `seq`, unless the kept one is stale: an edge restarted with its
//! clock behind must not be ignored).
//!
//! # Freshness
//!
//! A report is fresh for [`FRESH_INTERVALS`] of its reporter's probe
//! interval (`interval_ms`, which the report carries: the hub has no unit
//! config) after it arrived; only fresh reports are tallied. A stale
//! report is still shown in `/nodes` (the node's last verdicts) and is
//! forgotten [`FORGET_AFTER`] after it arrived, and with the last report
//! of a unit the unit.
//!
//! # What the hub knows of a unit
//!
//! Its members come from the reports: they must all list the same members,
//! else nothing is decided (see `tally_reports`). A node can only report
//! for itself, so a node that claims a unit it is not in makes that unit
//! undecided rather than outvoting it. A node that stopped reporting (cut
//! off from the cloud, or dead) is still voted on by the members that
//! report. Behind a broker (§8 of ARCHITECTURE.md) each report stream goes
//! to one replica, so each replica tallies only the reports it received.

use crate::links::Hub;
use futures_lite::io::AsyncReadExt;
use futures_lite::FutureExt;
use log::{debug, info, warn};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};
use tether_link::health::{
    quorum, tally_reports, Undecided, Verdict, VerdictReport, Vote, FRESH_INTERVALS,
    MAX_UNIT_MEMBERS,
};
use tether_link::io::LinkStream;
use tether_link::mux::HEALTH_REPORT_MAX;
use tether_link::topic::NodeName;

/// How long reading one report may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A report is forgotten this long after it arrived (the hub's default
/// `session_expiry`): long enough to show a dead node's last verdicts,
/// short enough that nodes that left do not pile up.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often the votes are tallied again to let reports go stale.
pub const RETALLY_EVERY: Duration = Duration::from_secs(1);

/// One report as the hub keeps it.
#[derive(Debug, Clone)]
pub struct Held {
    /// The report.
    pub report: VerdictReport,
    /// When it arrived.
    pub at: Instant,
}

impl Held {
    /// Whether it still counts in the vote at `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        let interval = Duration::from_millis(self.report.interval_ms);
        now.saturating_duration_since(self.at) <= interval * FRESH_INTERVALS
    }
}

/// One unit: its reporters' latest reports and its last tally.
#[derive(Debug, Default)]
struct Unit {
    /// By reporter, at most [`MAX_UNIT_MEMBERS`].
    reports: BTreeMap<NodeName, Held>,
    /// The members of the last tally (from the fresh reports, or kept from
    /// before when none is fresh).
    members: Vec<NodeName>,
    /// The vote on each member at the last tally.
    votes: BTreeMap<NodeName, Vote>,
    /// Fresh reports at the last tally.
    reporting: usize,
}

/// The unit's vote on one node, with what the autonomy controller also
/// needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVote {
    /// The node's unit.
    pub unit: String,
    /// The unit's vote on it.
    pub vote: Vote,
    /// Whether the node's own link to this hub is up now.
    pub linked: bool,
}

/// Every unit the hub has reports from.
#[derive(Debug, Default)]
pub struct Units {
    units: BTreeMap<String, Unit>,
    /// Reports accepted since start.
    pub received: u64,
    /// Reports refused since start (bad encoding, someone else's, too many
    /// reporters in the unit).
    pub refused: u64,
    /// The last refusal logged per node, so a node that keeps sending the
    /// same bad report is logged once (forgotten with its next good one).
    refusals: BTreeMap<NodeName, String>,
}

impl Units {
    /// Takes `report`, read from `node`'s link at `now`, and tallies its
    /// unit. An error says why it was refused.
    pub fn receive(
        &mut self,
        node: &NodeName,
        report: VerdictReport,
        now: Instant,
    ) -> Result<(), String> {
        if report.from != *node {
            return Err(format!(
                "it claims to come from {}; a node reports only for itself",
                report.from
            ));
        }
        // A node is in one unit: a report for another unit moves it.
        let moved: Vec<String> = self
            .units
            .iter()
            .filter(|(name, u)| **name != report.unit && u.reports.contains_key(node))
            .map(|(name, _)| name.clone())
            .collect();
        let unit = self.units.entry(report.unit.clone()).or_default();
        if let Some(held) = unit.reports.get(node) {
            if held.report.seq >= report.seq && held.fresh(now) {
                debug!(
                    "node {node}: health report {} older than the one kept ({}); ignored",
                    report.seq, held.report.seq
                );
                return Ok(());
            }
        } else if unit.reports.len() >= MAX_UNIT_MEMBERS {
            return Err(format!(
                "unit {} has reports from {MAX_UNIT_MEMBERS} nodes already, the most a unit \
                 can have members",
                report.unit
            ));
        }
        let name = report.unit.clone();
        unit.reports.insert(node.clone(), Held { report, at: now });
        for old in moved {
            if let Some(u) = self.units.get_mut(&old) {
                u.reports.remove(node);
                info!("node {node} now reports for unit {name}, no longer for unit {old}");
            }
            self.tally(&old, now);
        }
        self.received += 1;
        self.refusals.remove(node);
        self.tally(&name, now);
        Ok(())
    }

    /// Counts a refused report from `node`; true if `why` is new for it
    /// (to be logged).
    pub fn refused(&mut self, node: &NodeName, why: &str) -> bool {
        self.refused += 1;
        if self.refusals.get(node).is_some_and(|w| w == why) {
            return false;
        }
        // Bounded by the nodes the hub has sessions for, roughly; cut at a
        // fleet's worth so a churn of names cannot grow it.
        if self.refusals.len() >= 65_536 {
            self.refusals.clear();
        }
        self.refusals.insert(node.clone(), why.to_owned());
        true
    }

    /// Tallies every unit again at `now`, so reports that went stale stop
    /// counting, and forgets old reports and empty units.
    pub fn retally(&mut self, now: Instant) {
        let names: Vec<String> = self.units.keys().cloned().collect();
        for name in names {
            if let Some(u) = self.units.get_mut(&name) {
                u.reports
                    .retain(|_, h| now.saturating_duration_since(h.at) < FORGET_AFTER);
                if u.reports.is_empty() {
                    info!(
                        "unit {name}: no report for {} s; forgotten",
                        FORGET_AFTER.as_secs()
                    );
                    self.units.remove(&name);
                    continue;
                }
            }
            self.tally(&name, now);
        }
    }

    /// Tallies `name`'s fresh reports and logs every member whose decision
    /// changed.
    fn tally(&mut self, name: &str, now: Instant) {
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        let fresh: Vec<&VerdictReport> = unit
            .reports
            .values()
            .filter(|h| h.fresh(now))
            .map(|h| &h.report)
            .collect();
        let reporting = fresh.len();
        let (members, votes) = match tally_reports(&fresh) {
            Some(result) => result,
            None => {
                // No fresh report: the members stay as last known (or as
                // the newest stale report lists them), and nothing is
                // decided.
                let members = if unit.members.is_empty() {
                    newest(&unit.reports).map_or_else(Vec::new, |h| h.report.members.clone())
                } else {
                    unit.members.clone()
                };
                let vote = if members.len() == 1 {
                    Vote::Undecided(Undecided::UnitOfOne)
                } else {
                    Vote::Undecided(Undecided::NoQuorum {
                        reporting: 0,
                        needed: quorum(members.len()),
                    })
                };
                let votes = members.iter().map(|m| (m.clone(), vote)).collect();
                (members, votes)
            }
        };
        for (member, vote) in &votes {
            let before = unit.votes.get(member);
            if before.map(decision) != Some(decision(vote)) {
                log_vote(name, member, vote);
            }
        }
        for member in unit.votes.keys() {
            if !members.contains(member) {
                info!("unit {name}: node {member} is no longer listed as a member; no vote on it");
            }
        }
        unit.votes = votes.into_iter().collect();
        unit.members = members;
        unit.reporting = reporting;
    }

    /// The unit `node` is in: the unit of its own newest report, else the
    /// first unit (by name) whose members include it.
    pub fn unit_of(&self, node: &NodeName) -> Option<&str> {
        let own = self
            .units
            .iter()
            .filter_map(|(name, u)| Some((name, u.reports.get(node)?)))
            .max_by_key(|(_, h)| h.at)
            .map(|(name, _)| name.as_str());
        own.or_else(|| {
            self.units
                .iter()
                .find(|(_, u)| u.votes.contains_key(node))
                .map(|(name, _)| name.as_str())
        })
    }

    /// The unit's vote on `node` as of the last tally (at most
    /// [`RETALLY_EVERY`] old), or `None` if no unit votes on it.
    pub fn vote(&self, node: &NodeName) -> Option<(&str, Vote)> {
        let unit = self.unit_of(node)?;
        let vote = *self.units.get(unit)?.votes.get(node)?;
        Some((unit, vote))
    }

    /// `node`'s own newest report, if the hub holds one.
    pub fn report_of(&self, node: &NodeName) -> Option<&Held> {
        self.units
            .values()
            .filter_map(|u| u.reports.get(node))
            .max_by_key(|h| h.at)
    }

    /// Fresh reports and members of `unit` at the last tally.
    pub fn size(&self, unit: &str) -> Option<(usize, usize)> {
        self.units.get(unit).map(|u| (u.reporting, u.members.len()))
    }

    /// Every (unit, member, vote), by unit and member name: every node any
    /// unit votes on, whether the hub has a session for it or not.
    pub fn all_votes(&self) -> Vec<(&str, &NodeName, Vote)> {
        self.units
            .iter()
            .flat_map(|(name, u)| u.votes.iter().map(move |(m, v)| (name.as_str(), m, *v)))
            .collect()
    }
}

/// The newest held report.
fn newest(reports: &BTreeMap<NodeName, Held>) -> Option<&Held> {
    reports.values().max_by_key(|h| h.at)
}

/// What a vote decides, for logging changes: alive, dead or undecided (the
/// counts and the reason within a decision may move without a log line).
pub fn decision(vote: &Vote) -> &'static str {
    match vote {
        Vote::Alive { .. } => "alive",
        Vote::Dead { .. } => "dead",
        Vote::Undecided(_) => "undecided",
    }
}

/// A short, stable name of why a vote is undecided, for `/nodes`.
pub fn reason(vote: &Vote) -> Option<&'static str> {
    match vote {
        Vote::Undecided(Undecided::UnitOfOne) => Some("unit_of_one"),
        Vote::Undecided(Undecided::NoQuorum { .. }) => Some("no_quorum"),
        Vote::Undecided(Undecided::Tie { .. }) => Some("tie"),
        Vote::Undecided(Undecided::FewOpinions { .. }) => Some("few_opinions"),
        Vote::Undecided(Undecided::MembersDiffer) => Some("members_differ"),
        Vote::Alive { .. } | Vote::Dead { .. } => None,
    }
}

/// The (alive, dead) opinions behind a vote.
pub fn counts(vote: &Vote) -> (usize, usize) {
    match *vote {
        Vote::Alive { alive, dead }
        | Vote::Dead { alive, dead }
        | Vote::Undecided(Undecided::Tie { alive, dead })
        | Vote::Undecided(Undecided::FewOpinions { alive, dead, .. }) => (alive, dead),
        Vote::Undecided(_) => (0, 0),
    }
}

fn log_vote(unit: &str, member: &NodeName, vote: &Vote) {
    match vote {
        Vote::Alive { alive, dead } => {
            info!("unit {unit}: node {member} voted alive (alive {alive}, dead {dead})")
        }
        Vote::Dead { alive, dead } => {
            warn!("unit {unit}: node {member} voted dead (alive {alive}, dead {dead})")
        }
        Vote::Undecided(why) => info!("unit {unit}: node {member} undecided: {why}"),
    }
}

/// Reads one report from a [`HEALTH_UPSTREAM`](tether_link::mux::HEALTH_UPSTREAM) stream `node` opened, and
/// takes it into the registry.
pub async fn receive(hub: Rc<Hub>, node: NodeName, mut stream: LinkStream) {
    stream.accept();
    let mut bytes = Vec::new();
    let read = async {
        let mut chunk = [0u8; 2048];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) if bytes.len() + n <= HEALTH_REPORT_MAX => {
                    bytes.extend_from_slice(&chunk[..n])
                }
                Ok(_) => return Err(format!("longer than {HEALTH_REPORT_MAX} bytes")),
                Err(e) => return Err(format!("stream broke: {e}")),
            }
        }
    }
    .or(async {
        async_io::Timer::after(READ_TIMEOUT).await;
        Err(format!("not complete within {} s", READ_TIMEOUT.as_secs()))
    })
    .await;
    let result = read.and_then(|()| VerdictReport::decode(&bytes).map_err(|e| e.to_string()));
    let mut reg = hub.registry.borrow_mut();
    let result = result.and_then(|report| reg.health.receive(&node, report, Instant::now()));
    if let Err(why) = result {
        if reg.health.refused(&node, &why) {
            warn!("node {node}: health report refused: {why}");
        } else {
            debug!("node {node}: health report refused: {why}");
        }
    }
}

/// Tallies every unit again each [`RETALLY_EVERY`], forever.
pub async fn retally(hub: Rc<Hub>) {
    loop {
        async_io::Timer::after(RETALLY_EVERY).await;
        hub.registry.borrow_mut().health.retally(Instant::now());
    }
}

/// The verdicts of a held report, for `/nodes`: (peer, verdict) by name.
pub fn verdicts(held: &Held) -> impl Iterator<Item = (&NodeName, Verdict)> {
    held.report.verdicts.iter().map(|(n, v)| (n, *v))
}

/// How long ago a report arrived, for `/nodes`.
pub fn age(held: &Held, now: Instant) -> Duration {
    now.saturating_duration_since(held.at)
}

/// When a held report arrived on the wall clock, for `/nodes`.
pub fn arrived(held: &Held, now: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(age(held, now))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Alive, Dead};

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("test name")
    }

    fn members(count: usize) -> Vec<NodeName> {
        (1..=count).map(|i| n(&format!("e{i}"))).collect()
    }

    /// `from`'s report on the unit of `count`: `dead` are dead, the rest alive.
    fn report(from: &str, count: usize, seq: u64, dead: &[&str]) -> VerdictReport {
        let m = members(count);
        VerdictReport {
            from: n(from),
            unit: "u".into(),
            seq,
            interval_ms: 1000,
            verdicts: m
                .iter()
                .filter(|x| x.as_str() != from)
                .map(|x| {
                    (
                        x.clone(),
                        if dead.contains(&x.as_str()) {
                            Dead
                        } else {
                            Alive
                        },
                    )
                })
                .collect(),
            members: m,
        }
    }

    #[test]
    fn a_cut_off_node_is_voted_on_by_the_others() {
        let mut units = Units::default();
        let t0 = Instant::now();
        for i in 1..=5 {
            let from = format!("e{i}");
            units
                .receive(&n(&from), report(&from, 5, 1, &[]), t0)
                .expect("taken");
        }
        assert_eq!(
            units.vote(&n("e5")),
            Some(("u", Vote::Alive { alive: 4, dead: 0 }))
        );
        // e5's reports stop (cut off); the others keep reporting it alive.
        let t1 = t0 + Duration::from_secs(4);
        for i in 1..=4 {
            let from = format!("e{i}");
            units
                .receive(&n(&from), report(&from, 5, 2, &[]), t1)
                .expect("taken");
        }
        units.retally(t1);
        assert_eq!(
            units.vote(&n("e5")),
            Some(("u", Vote::Alive { alive: 4, dead: 0 }))
        );
        assert_eq!(units.size("u"), Some((4, 5)));
        // Its last report is still shown, and is stale.
        assert!(!units.report_of(&n("e5")).expect("held").fresh(t1));
    }

    #[test]
    fn only_fresh_reports_count_and_old_ones_are_forgotten() {
        let mut units = Units::default();
        let t0 = Instant::now();
        for i in 1..=3 {
            let from = format!("e{i}");
            units
                .receive(&n(&from), report(&from, 5, 1, &["e5"]), t0)
                .expect("taken");
        }
        assert_eq!(
            units.vote(&n("e5")),
            Some(("u", Vote::Dead { alive: 0, dead: 3 }))
        );
        // Three intervals later the reports are still fresh; then not.
        units.retally(t0 + Duration::from_secs(3));
        assert!(matches!(units.vote(&n("e5")), Some((_, Vote::Dead { .. }))));
        units.retally(t0 + Duration::from_millis(3001));
        assert_eq!(
            units.vote(&n("e5")),
            Some((
                "u",
                Vote::Undecided(Undecided::NoQuorum {
                    reporting: 0,
                    needed: 3
                })
            ))
        );
        units.retally(t0 + FORGET_AFTER);
        assert_eq!(units.vote(&n("e5")), None);
        assert!(units.all_votes().is_empty());
    }

    #[test]
    fn reports_are_checked() {
        let mut units = Units::default();
        let t0 = Instant::now();
        // Someone else's report.
        assert!(units
            .receive(&n("e1"), report("e2", 3, 1, &[]), t0)
            .is_err());
        // An older report than the one kept is ignored, while fresh.
        units
            .receive(&n("e1"), report("e1", 3, 5, &["e2"]), t0)
            .expect("taken");
        units
            .receive(&n("e1"), report("e1", 3, 4, &[]), t0)
            .expect("ignored");
        let held = units.report_of(&n("e1")).expect("held");
        assert_eq!(held.report.seq, 5);
        // Once it is stale, a lower seq (a restart with the clock behind) wins.
        let later = t0 + Duration::from_secs(4);
        units
            .receive(&n("e1"), report("e1", 3, 4, &[]), later)
            .expect("taken");
        assert_eq!(units.report_of(&n("e1")).expect("held").report.seq, 4);
        assert_eq!(units.received, 2);
        // A refusal is logged once per reason.
        assert!(units.refused(&n("e9"), "bad"));
        assert!(!units.refused(&n("e9"), "bad"));
        assert!(units.refused(&n("e9"), "worse"));
    }

    #[test]
    fn a_node_moving_to_another_unit_leaves_the_first() {
        let mut units = Units::default();
        let t0 = Instant::now();
        units
            .receive(&n("e1"), report("e1", 3, 1, &[]), t0)
            .expect("taken");
        let mut moved = report("e1", 3, 2, &[]);
        moved.unit = "v".into();
        units.receive(&n("e1"), moved, t0).expect("taken");
        assert_eq!(units.unit_of(&n("e1")), Some("v"));
        assert_eq!(units.units["u"].reports.len(), 0);
    }
}

//! Health verdicts and the unit's vote: what an edge reports about the other
//! members of its health unit, and how the reports of a unit become a vote.
//!
//! Edges and the hub both tally votes (an edge cut off from the cloud needs
//! its unit's vote for node awareness; the hub needs it to keep a cut-off
//! node's pods), so the rules live here once and the two cannot drift. Sans
//! IO: no sockets, no clocks.
//!
//! # The vote
//!
//! A *report* is one member's current [`Verdict`] on each other member it has
//! a verdict on (a member with no verdict yet abstains on that peer). The
//! caller passes [`tally`] only *fresh* reports: what counts as fresh (for
//! example "received within three probe intervals") is the caller's rule,
//! since only it knows when each report arrived.
//!
//! 1. **Reporters.** The members whose reports are present are the reporters.
//!    A report from a non-member is ignored, and so is a second report from
//!    the same member (the first counts).
//! 2. **Quorum.** Nothing is decided unless the reporters are more than half
//!    of the unit's members ([`quorum`]). In a 3/2 split of five members, the
//!    side of three can decide and the side of two cannot, so the two sides
//!    can never decide opposite things about the same member.
//! 3. **No vote on oneself.** A member's opinion about itself never counts
//!    (it is alive by definition when it can report). It still counts towards
//!    the quorum: a member cut off from the cloud is not the subject being
//!    outvoted, it is one of the unit.
//! 4. **Enough opinions.** A vote on a member X is decided only when more
//!    than half of the *other* reporters (the reporters except X itself)
//!    have an opinion on X; otherwise it is [`Vote::Undecided`] with
//!    [`Undecided::FewOpinions`]. Abstentions therefore count: right after a
//!    start, before most members have judged a peer, one member's first
//!    verdict cannot decide alone.
//! 5. **Majority of opinions.** Of the reporters' opinions on X, a strict
//!    majority decides: more `Alive` than `Dead` is [`Vote::Alive`], more
//!    `Dead` is [`Vote::Dead`], equal is [`Vote::Undecided`] with
//!    [`Undecided::Tie`].
//! 6. **Units of one and two.** A unit of one has no one to ask: always
//!    [`Undecided::UnitOfOne`]. A unit of two needs both members reporting
//!    for a quorum, and then each one's opinion on the other decides, so
//!    when one of the two is cut off or dead nothing can be decided
//!    ([`Undecided::NoQuorum`]) and the node is left to normal Kubernetes
//!    eviction. **A unit should have at least three members**; with three,
//!    any one can be cut off or dead and the other two still decide (both
//!    must have an opinion on it).
//!
//! Undecided is never read as alive: the hub protects a node only on
//! [`Vote::Alive`].

use crate::topic::{BadNodeName, NodeName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// The most members a unit may have. Bounds every per-member table on the
/// edge and the hub, and the verdicts in one report; a health unit is a site
/// or a shop floor, not a fleet.
pub const MAX_UNIT_MEMBERS: usize = 64;

/// The largest encoded [`VerdictReport`] accepted, checked before decoding:
/// the largest valid report (64 members and 63 verdicts on 253-character
/// names, a 63-character unit) encodes to about 32.6 KiB. A usual one (5
/// members with 16-character names) is about 200 bytes.
pub const MAX_REPORT_BYTES: usize = 33 * 1024;

/// The shortest and longest probe interval a report may state, in ms: the
/// edge's `[health] interval` is 2 s to 1 h, and the hub keeps a report for
/// [`FRESH_INTERVALS`] of them, so a hostile value cannot pin a report for
/// ever.
pub const REPORT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

/// A report (on the hub) or a peer's verdicts (on an edge) count in the vote
/// for this many of the reporter's probe intervals after they arrived: two
/// lost reports in a row do not drop a voter.
pub const FRESH_INTERVALS: u32 = 3;

/// One member's opinion of another, after hysteresis (see tether-edge's
/// `health::peer`): a member not yet judged has no verdict at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Its probes are answered.
    Alive,
    /// Its probes went unanswered, several in a row.
    Dead,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Alive => "alive",
            Verdict::Dead => "dead",
        })
    }
}

/// What an edge sends the hub over its link: its verdicts on the other
/// members of its unit. The link is already authenticated (the hub knows
/// which node sent it), so the report carries no signature; `seq` rises with
/// every report, also across restarts, so the hub keeps only the newest.
///
/// The hub has no unit configuration of its own: it learns a unit's size
/// from `members` (a quorum needs it) and how long a report stays fresh
/// from `interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictReport {
    /// The reporting node; the hub checks it is the link's own node.
    pub from: NodeName,
    /// The unit the reporter belongs to (a DNS label, see [`is_unit_name`]).
    pub unit: String,
    /// Rises with every report from `from`, across restarts.
    pub seq: u64,
    /// The reporter's probe interval in ms (within [`REPORT_INTERVAL_MS`]):
    /// the report is fresh for [`FRESH_INTERVALS`] of them.
    pub interval_ms: u64,
    /// The unit's members as the reporter is configured (its peers and
    /// itself), sorted by name, each once, at most [`MAX_UNIT_MEMBERS`].
    pub members: Vec<NodeName>,
    /// The reporter's verdicts, one per member at most, never on itself,
    /// only on `members`.
    pub verdicts: Vec<(NodeName, Verdict)>,
}

/// The report as postcard encodes it: names as strings, checked on decode.
#[derive(Serialize, Deserialize)]
struct WireReport {
    from: String,
    unit: String,
    seq: u64,
    interval_ms: u64,
    members: Vec<String>,
    verdicts: Vec<(String, Verdict)>,
}

/// Why bytes are not a valid [`VerdictReport`]. Each message says what was
/// wrong; a sender whose reports fail has a bug or is not a Tether edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportError {
    /// Larger than [`MAX_REPORT_BYTES`]; refused before decoding.
    TooLarge { len: usize },
    /// Not a postcard-encoded report.
    Malformed(String),
    /// `from` or a verdict's subject is not a node name.
    BadName(BadNodeName),
    /// `unit` is not a unit name.
    BadUnit(String),
    /// More verdicts than a unit can have members.
    TooManyVerdicts { count: usize },
    /// More members than a unit can have.
    TooManyMembers { count: usize },
    /// Two verdicts on the same member, or a member listed twice.
    Duplicate(NodeName),
    /// A verdict of the reporter on itself.
    OnItself(NodeName),
    /// A verdict on a node that is not in `members`, or a reporter that is
    /// not in its own `members`.
    NotAMember(NodeName),
    /// `interval_ms` outside [`REPORT_INTERVAL_MS`].
    BadInterval(u64),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::TooLarge { len } => write!(
                f,
                "verdict report of {len} bytes is larger than {MAX_REPORT_BYTES}; refused unread"
            ),
            ReportError::Malformed(e) => write!(f, "verdict report is not decodable: {e}"),
            ReportError::BadName(e) => write!(f, "verdict report names a bad node: {e}"),
            ReportError::BadUnit(u) => write!(
                f,
                "verdict report's unit {u:?} is not a unit name (1-63 lowercase letters, digits and '-')"
            ),
            ReportError::TooManyVerdicts { count } => write!(
                f,
                "verdict report holds {count} verdicts; a unit has at most {MAX_UNIT_MEMBERS} members"
            ),
            ReportError::TooManyMembers { count } => write!(
                f,
                "verdict report lists {count} members; a unit has at most {MAX_UNIT_MEMBERS}"
            ),
            ReportError::Duplicate(n) => {
                write!(f, "verdict report names {n} twice (in members or verdicts)")
            }
            ReportError::OnItself(n) => {
                write!(f, "verdict report from {n} holds a verdict on {n} itself")
            }
            ReportError::NotAMember(n) => write!(
                f,
                "verdict report names {n}, which is not in the report's own member list"
            ),
            ReportError::BadInterval(ms) => write!(
                f,
                "verdict report states a probe interval of {ms} ms; 1 s to 1 h expected"
            ),
        }
    }
}

impl std::error::Error for ReportError {}

impl VerdictReport {
    /// The postcard encoding [`VerdictReport::decode`] reads.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireReport {
            from: self.from.as_str().to_owned(),
            unit: self.unit.clone(),
            seq: self.seq,
            interval_ms: self.interval_ms,
            members: self.members.iter().map(|n| n.as_str().to_owned()).collect(),
            verdicts: self
                .verdicts
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), *v))
                .collect(),
        };
        // Serializing strings, integers and enums into a Vec cannot fail.
        postcard::to_allocvec(&wire).unwrap_or_default()
    }

    /// Decodes and checks a report: at most [`MAX_REPORT_BYTES`] (checked
    /// first, so a hostile length costs nothing), valid names and unit, an
    /// interval within [`REPORT_INTERVAL_MS`], at most [`MAX_UNIT_MEMBERS`]
    /// members (the reporter among them, none twice; returned sorted) and
    /// verdicts (only on members, none twice, none on the reporter itself).
    pub fn decode(bytes: &[u8]) -> Result<VerdictReport, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge { len: bytes.len() });
        }
        let wire: WireReport =
            postcard::from_bytes(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
        if wire.verdicts.len() > MAX_UNIT_MEMBERS {
            return Err(ReportError::TooManyVerdicts {
                count: wire.verdicts.len(),
            });
        }
        if wire.members.len() > MAX_UNIT_MEMBERS {
            return Err(ReportError::TooManyMembers {
                count: wire.members.len(),
            });
        }
        let from = NodeName::new(&wire.from).map_err(ReportError::BadName)?;
        if !is_unit_name(&wire.unit) {
            return Err(ReportError::BadUnit(wire.unit.chars().take(64).collect()));
        }
        if !REPORT_INTERVAL_MS.contains(&wire.interval_ms) {
            return Err(ReportError::BadInterval(wire.interval_ms));
        }
        let mut members = BTreeSet::new();
        for name in wire.members {
            let name = NodeName::new(&name).map_err(ReportError::BadName)?;
            if let Some(twice) = members.replace(name) {
                return Err(ReportError::Duplicate(twice));
            }
        }
        if !members.contains(&from) {
            return Err(ReportError::NotAMember(from));
        }
        let mut seen = BTreeSet::new();
        let mut verdicts = Vec::with_capacity(wire.verdicts.len());
        for (name, verdict) in wire.verdicts {
            let name = NodeName::new(&name).map_err(ReportError::BadName)?;
            if name == from {
                return Err(ReportError::OnItself(name));
            }
            if !members.contains(&name) {
                return Err(ReportError::NotAMember(name));
            }
            if !seen.insert(name.clone()) {
                return Err(ReportError::Duplicate(name));
            }
            verdicts.push((name, verdict));
        }
        Ok(VerdictReport {
            from,
            unit: wire.unit,
            seq: wire.seq,
            interval_ms: wire.interval_ms,
            members: members.into_iter().collect(),
            verdicts,
        })
    }
}

/// Whether `s` can name a unit: a DNS-1123 label (1-63 lowercase letters,
/// digits and '-', starting and ending with a letter or digit), as the edge's
/// `unit` key and Kubernetes label values allow.
pub fn is_unit_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// How many reporters a unit of `members` needs to decide anything: more
/// than half of its members.
pub fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// The unit's vote on one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// More reporters say alive than dead.
    Alive { alive: usize, dead: usize },
    /// More reporters say dead than alive.
    Dead { alive: usize, dead: usize },
    /// Nothing decided; the node is left to normal Kubernetes eviction.
    Undecided(Undecided),
}

impl Vote {
    /// The decided verdict, or `None` when undecided.
    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            Vote::Alive { .. } => Some(Verdict::Alive),
            Vote::Dead { .. } => Some(Verdict::Dead),
            Vote::Undecided(_) => None,
        }
    }
}

impl fmt::Display for Vote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vote::Alive { alive, dead } => write!(f, "alive ({alive} alive, {dead} dead)"),
            Vote::Dead { alive, dead } => write!(f, "dead ({dead} dead, {alive} alive)"),
            Vote::Undecided(why) => write!(f, "undecided: {why}"),
        }
    }
}

/// Why a vote decided nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// The unit has one member: no one else can vote.
    UnitOfOne,
    /// Too few members reported (`reporting` of the `needed` [`quorum`]).
    NoQuorum { reporting: usize, needed: usize },
    /// As many opinions say alive as dead.
    Tie { alive: usize, dead: usize },
    /// Too few of the other reporters have an opinion on the member: `alive`
    /// plus `dead` is below `needed`, more than half of the reporters other
    /// than the member itself (just after a start, most have not judged it
    /// yet).
    FewOpinions {
        alive: usize,
        dead: usize,
        needed: usize,
    },
    /// The reporting members are configured with different member lists
    /// ([`tally_reports`]): the unit's size, and so its quorum, is unknown.
    MembersDiffer,
}

impl fmt::Display for Undecided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undecided::UnitOfOne => f.write_str("unit of one: no other member can vote"),
            Undecided::NoQuorum { reporting, needed } => write!(
                f,
                "no quorum: {reporting} members reported, {needed} needed (more than half the unit)"
            ),
            Undecided::Tie { alive, dead } => write!(f, "tie: {alive} alive, {dead} dead"),
            Undecided::FewOpinions {
                alive: 0, dead: 0, ..
            } => f.write_str("no reporting member has a verdict on it yet"),
            Undecided::FewOpinions {
                alive,
                dead,
                needed,
            } => write!(
                f,
                "too few opinions: {alive} alive, {dead} dead, {needed} needed (more than half \
                 of the other reporting members)"
            ),
            Undecided::MembersDiffer => f.write_str(
                "members differ: the unit's reporters list different members; give every \
                 member the same peers (plus itself)",
            ),
        }
    }
}

/// The unit's vote on each of its `members` (in their order, each once),
/// from the fresh `reports`: (reporter, its verdicts). See the module docs for
/// the rules; within one report the first verdict on a member counts.
pub fn tally(
    members: &[NodeName],
    reports: &[(NodeName, &[(NodeName, Verdict)])],
) -> Vec<(NodeName, Vote)> {
    let mut unique = BTreeSet::new();
    let members: Vec<&NodeName> = members.iter().filter(|m| unique.insert(*m)).collect();
    let mut reported = BTreeSet::new();
    let reporters: Vec<&(NodeName, &[(NodeName, Verdict)])> = reports
        .iter()
        .filter(|(from, _)| unique.contains(from) && reported.insert(from))
        .collect();
    let needed = quorum(members.len());
    members
        .iter()
        .map(|&x| {
            let vote = if members.len() == 1 {
                Vote::Undecided(Undecided::UnitOfOne)
            } else if reporters.len() < needed {
                Vote::Undecided(Undecided::NoQuorum {
                    reporting: reporters.len(),
                    needed,
                })
            } else {
                let (mut alive, mut dead, mut others) = (0, 0, 0);
                for (from, verdicts) in reporters.iter().map(|r| (&r.0, r.1)) {
                    if from == x {
                        continue;
                    }
                    others += 1;
                    match verdicts.iter().find(|(about, _)| about == x) {
                        Some((_, Verdict::Alive)) => alive += 1,
                        Some((_, Verdict::Dead)) => dead += 1,
                        None => {}
                    }
                }
                let needed = others / 2 + 1;
                if alive + dead < needed {
                    Vote::Undecided(Undecided::FewOpinions {
                        alive,
                        dead,
                        needed,
                    })
                } else {
                    match alive.cmp(&dead) {
                        std::cmp::Ordering::Greater => Vote::Alive { alive, dead },
                        std::cmp::Ordering::Less => Vote::Dead { alive, dead },
                        std::cmp::Ordering::Equal => {
                            Vote::Undecided(Undecided::Tie { alive, dead })
                        }
                    }
                }
            };
            (x.clone(), vote)
        })
        .collect()
}

/// Each member's vote, in the members' order.
pub type Votes = Vec<(NodeName, Vote)>;

/// The vote of a unit from its members' fresh reports as the hub holds them
/// (each report names its unit's members): the unit's members and the vote
/// on each, in name order. `None` without reports.
///
/// The reports must agree on the member list: a reporter counts the unit's
/// size, and so the quorum, from its own list. If they do not (a member
/// configured with other peers, a member added on some nodes but not yet
/// on others, or a node claiming a unit it is not in), nothing is decided:
/// every node any of them lists gets [`Undecided::MembersDiffer`]. Deciding
/// on one of the lists would let a misconfigured or hostile member choose
/// the quorum.
pub fn tally_reports(reports: &[&VerdictReport]) -> Option<(Vec<NodeName>, Votes)> {
    let first = reports.first()?;
    if reports.iter().any(|r| r.members != first.members) {
        let all: BTreeSet<&NodeName> = reports.iter().flat_map(|r| &r.members).collect();
        let all: Vec<NodeName> = all.into_iter().cloned().collect();
        let votes = all
            .iter()
            .map(|m| (m.clone(), Vote::Undecided(Undecided::MembersDiffer)))
            .collect();
        return Some((all, votes));
    }
    let borrowed: Vec<(NodeName, &[(NodeName, Verdict)])> = reports
        .iter()
        .map(|r| (r.from.clone(), r.verdicts.as_slice()))
        .collect();
    let mut members = first.members.clone();
    members.sort();
    let votes = tally(&members, &borrowed);
    Some((members, votes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Alive, Dead};

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("test name")
    }

    fn unit(size: usize) -> Vec<NodeName> {
        (1..=size).map(|i| n(&format!("e{i}"))).collect()
    }

    /// Each reporter's verdicts on every other member of `members`, given
    /// by `opinion(reporter, subject)`; `None` abstains.
    fn reports(
        members: &[NodeName],
        reporters: &[&str],
        opinion: impl Fn(&str, &str) -> Option<Verdict>,
    ) -> Vec<(NodeName, Vec<(NodeName, Verdict)>)> {
        reporters
            .iter()
            .map(|r| {
                let verdicts = members
                    .iter()
                    .filter(|m| m.as_str() != *r)
                    .filter_map(|m| opinion(r, m.as_str()).map(|v| (m.clone(), v)))
                    .collect();
                (n(r), verdicts)
            })
            .collect()
    }

    fn run(
        members: &[NodeName],
        reports: &[(NodeName, Vec<(NodeName, Verdict)>)],
    ) -> Vec<(String, Vote)> {
        let borrowed: Vec<(NodeName, &[(NodeName, Verdict)])> = reports
            .iter()
            .map(|(f, v)| (f.clone(), v.as_slice()))
            .collect();
        tally(members, &borrowed)
            .into_iter()
            .map(|(m, v)| (m.as_str().to_owned(), v))
            .collect()
    }

    fn vote_of<'a>(votes: &'a [(String, Vote)], who: &str) -> &'a Vote {
        &votes.iter().find(|(m, _)| m == who).expect("member").1
    }

    #[test]
    fn five_all_alive() {
        let m = unit(5);
        let r = reports(&m, &["e1", "e2", "e3", "e4", "e5"], |_, _| Some(Alive));
        for (_, vote) in run(&m, &r) {
            assert_eq!(vote, Vote::Alive { alive: 4, dead: 0 });
        }
    }

    #[test]
    fn five_one_dead() {
        let m = unit(5);
        // e5 is dead: it does not report, and everyone says so.
        let r = reports(&m, &["e1", "e2", "e3", "e4"], |_, s| {
            Some(if s == "e5" { Dead } else { Alive })
        });
        let votes = run(&m, &r);
        assert_eq!(*vote_of(&votes, "e5"), Vote::Dead { alive: 0, dead: 4 });
        assert_eq!(*vote_of(&votes, "e1"), Vote::Alive { alive: 3, dead: 0 });
    }

    #[test]
    fn five_one_cut_off_from_the_cloud_stays_alive() {
        let m = unit(5);
        // e5 lost its link to the hub only: no report of its own reaches
        // the hub, but its neighbours still hear it.
        let r = reports(&m, &["e1", "e2", "e3", "e4"], |_, _| Some(Alive));
        let votes = run(&m, &r);
        assert_eq!(*vote_of(&votes, "e5"), Vote::Alive { alive: 4, dead: 0 });
    }

    #[test]
    fn split_three_two_only_the_majority_decides() {
        let m = unit(5);
        let side_a = ["e1", "e2", "e3"];
        let same_side = |r: &str, s: &str| side_a.contains(&r) == side_a.contains(&s);
        let opinion = |r: &str, s: &str| Some(if same_side(r, s) { Alive } else { Dead });
        // The majority side's reports alone decide both ways.
        let votes = run(&m, &reports(&m, &side_a, opinion));
        assert_eq!(*vote_of(&votes, "e1"), Vote::Alive { alive: 2, dead: 0 });
        assert_eq!(*vote_of(&votes, "e4"), Vote::Dead { alive: 0, dead: 3 });
        // The minority side's reports alone decide nothing.
        let votes = run(&m, &reports(&m, &["e4", "e5"], opinion));
        for (_, vote) in votes {
            assert_eq!(
                vote,
                Vote::Undecided(Undecided::NoQuorum {
                    reporting: 2,
                    needed: 3
                })
            );
        }
    }

    #[test]
    fn unit_of_one_never_votes() {
        let m = unit(1);
        let r = reports(&m, &["e1"], |_, _| Some(Alive));
        assert_eq!(
            run(&m, &r),
            vec![("e1".into(), Vote::Undecided(Undecided::UnitOfOne))]
        );
        assert_eq!(
            run(&m, &[]),
            vec![("e1".into(), Vote::Undecided(Undecided::UnitOfOne))]
        );
    }

    #[test]
    fn unit_of_two_decides_only_with_both() {
        let m = unit(2);
        let both = reports(&m, &["e1", "e2"], |_, _| Some(Alive));
        for (_, vote) in run(&m, &both) {
            assert_eq!(vote, Vote::Alive { alive: 1, dead: 0 });
        }
        // One is dead or cut off: the other alone is no quorum.
        let one = reports(&m, &["e1"], |_, _| Some(Dead));
        for (_, vote) in run(&m, &one) {
            assert_eq!(
                vote,
                Vote::Undecided(Undecided::NoQuorum {
                    reporting: 1,
                    needed: 2
                })
            );
        }
    }

    #[test]
    fn ties_and_abstentions() {
        let m = unit(5);
        // Of e1's four neighbours, two say alive and two dead.
        let r = reports(&m, &["e1", "e2", "e3", "e4", "e5"], |r, s| {
            Some(if s == "e1" && (r == "e4" || r == "e5") {
                Dead
            } else {
                Alive
            })
        });
        let votes = run(&m, &r);
        assert_eq!(
            *vote_of(&votes, "e1"),
            Vote::Undecided(Undecided::Tie { alive: 2, dead: 2 })
        );
        // No one has a verdict on e5 yet (just started): nothing to count.
        let r = reports(&m, &["e1", "e2", "e3"], |_, s| (s != "e5").then_some(Alive));
        let votes = run(&m, &r);
        let nothing = Vote::Undecided(Undecided::FewOpinions {
            alive: 0,
            dead: 0,
            needed: 2,
        });
        assert_eq!(*vote_of(&votes, "e5"), nothing);
        assert_eq!(
            nothing.to_string(),
            "undecided: no reporting member has a verdict on it yet"
        );
        // Abstentions count: one opinion of three does not decide, two do.
        let r = reports(&m, &["e1", "e2", "e3"], |r, s| {
            (s != "e5" || r == "e1").then_some(if s == "e5" { Dead } else { Alive })
        });
        assert_eq!(
            *vote_of(&run(&m, &r), "e5"),
            Vote::Undecided(Undecided::FewOpinions {
                alive: 0,
                dead: 1,
                needed: 2
            })
        );
        let r = reports(&m, &["e1", "e2", "e3"], |r, s| {
            (s != "e5" || r != "e3").then_some(if s == "e5" { Dead } else { Alive })
        });
        assert_eq!(
            *vote_of(&run(&m, &r), "e5"),
            Vote::Dead { alive: 0, dead: 2 }
        );
    }

    #[test]
    fn just_after_a_start_one_opinion_does_not_decide() {
        // A unit of five has just started: every member reports, but only
        // e1 has judged anyone yet (it says e4 is dead, e2 alive).
        let m = unit(5);
        let first = |r: &str, s: &str| match (r, s) {
            ("e1", "e4") => Some(Dead),
            ("e1", "e2") => Some(Alive),
            _ => None,
        };
        let votes = run(&m, &reports(&m, &["e1", "e2", "e3", "e4", "e5"], first));
        // Four others report on each; three opinions are needed.
        for who in ["e2", "e4"] {
            assert!(
                matches!(
                    vote_of(&votes, who),
                    Vote::Undecided(Undecided::FewOpinions { needed: 3, .. })
                ),
                "{who}: {:?}",
                vote_of(&votes, who)
            );
        }
        // As the others judge, it is decided once three of four have.
        let later = |r: &str, s: &str| match (r, s) {
            ("e1" | "e2", "e4") => Some(Dead),
            ("e3", "e4") => Some(Alive),
            _ => None,
        };
        let votes = run(&m, &reports(&m, &["e1", "e2", "e3", "e4", "e5"], later));
        assert_eq!(*vote_of(&votes, "e4"), Vote::Dead { alive: 1, dead: 2 });
        // Its own report does not count among the others: without e4's
        // report the same three opinions are three of three.
        let votes = run(&m, &reports(&m, &["e1", "e2", "e3", "e5"], later));
        assert_eq!(*vote_of(&votes, "e4"), Vote::Dead { alive: 1, dead: 2 });
    }

    #[test]
    fn unit_of_three_needs_both_others() {
        let m = unit(3);
        // All three report: the two others' opinions on e1 decide.
        let all = reports(&m, &["e1", "e2", "e3"], |_, _| Some(Alive));
        for (_, vote) in run(&m, &all) {
            assert_eq!(vote, Vote::Alive { alive: 2, dead: 0 });
        }
        // Only one of e1's two others has an opinion yet: undecided.
        let one = reports(&m, &["e1", "e2", "e3"], |r, s| {
            (s != "e1" || r == "e2").then_some(Alive)
        });
        assert_eq!(
            *vote_of(&run(&m, &one), "e1"),
            Vote::Undecided(Undecided::FewOpinions {
                alive: 1,
                dead: 0,
                needed: 2
            })
        );
        // e3 is cut off from the cloud: e1 and e2 decide on each other
        // (one other each) and on e3 (both have an opinion).
        let two = reports(&m, &["e1", "e2"], |_, _| Some(Alive));
        let votes = run(&m, &two);
        assert_eq!(*vote_of(&votes, "e1"), Vote::Alive { alive: 1, dead: 0 });
        assert_eq!(*vote_of(&votes, "e3"), Vote::Alive { alive: 2, dead: 0 });
    }

    #[test]
    fn self_votes_strangers_and_repeats_do_not_count() {
        let m = unit(3);
        let mut r = reports(&m, &["e1", "e2"], |_, _| Some(Alive));
        // e1 votes on itself, a stranger reports, e2 reports twice.
        r[0].1.push((n("e1"), Dead));
        r.push((n("stranger"), vec![(n("e3"), Dead)]));
        r.push((n("e2"), vec![(n("e3"), Dead), (n("e1"), Dead)]));
        let votes = run(&m, &r);
        assert_eq!(*vote_of(&votes, "e1"), Vote::Alive { alive: 1, dead: 0 });
        assert_eq!(*vote_of(&votes, "e3"), Vote::Alive { alive: 2, dead: 0 });
        // A stranger never makes a quorum either.
        let lone = reports(&m, &["e1"], |_, _| Some(Alive));
        let mut with_stranger = lone.clone();
        with_stranger.push((n("stranger"), vec![]));
        assert!(matches!(
            run(&m, &with_stranger)[0].1,
            Vote::Undecided(Undecided::NoQuorum { reporting: 1, .. })
        ));
    }

    fn sample_report() -> VerdictReport {
        VerdictReport {
            from: n("gh-bench-01"),
            unit: "greenhouse".into(),
            seq: 1_750_000_000_000_000,
            interval_ms: 25_000,
            members: vec![n("gh-bench-01"), n("gh-bench-02"), n("gh-bench-03")],
            verdicts: vec![(n("gh-bench-02"), Alive), (n("gh-bench-03"), Dead)],
        }
    }

    #[test]
    fn report_round_trip_and_checks() {
        let report = sample_report();
        let bytes = report.encode();
        assert_eq!(VerdictReport::decode(&bytes), Ok(report.clone()));

        let mut bad = report.clone();
        bad.verdicts.push((n("gh-bench-01"), Alive));
        assert!(matches!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::OnItself(_))
        ));
        let mut bad = report.clone();
        bad.verdicts.push((n("gh-bench-02"), Dead));
        assert!(matches!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::Duplicate(_))
        ));
        let mut bad = report.clone();
        bad.unit = "Green House".into();
        assert!(matches!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::BadUnit(_))
        ));
        let mut bad = report.clone();
        bad.verdicts = (0..=MAX_UNIT_MEMBERS)
            .map(|i| (n(&format!("x{i}")), Alive))
            .collect();
        assert_eq!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::TooManyVerdicts { count: 65 })
        );
        // A bad name inside an otherwise valid encoding.
        let wire = WireReport {
            from: "Not/A/Node".into(),
            unit: "u".into(),
            seq: 1,
            interval_ms: 25_000,
            members: vec![],
            verdicts: vec![],
        };
        let bytes = postcard::to_allocvec(&wire).expect("encodes");
        assert!(matches!(
            VerdictReport::decode(&bytes),
            Err(ReportError::BadName(_))
        ));
        assert!(matches!(
            VerdictReport::decode(&[0xff; 3]),
            Err(ReportError::Malformed(_))
        ));
        assert_eq!(
            VerdictReport::decode(&vec![0; MAX_REPORT_BYTES + 1]),
            Err(ReportError::TooLarge {
                len: MAX_REPORT_BYTES + 1
            })
        );
    }

    #[test]
    fn report_members_and_interval_checked() {
        let report = sample_report();
        // Members come back sorted, whatever order they were sent in.
        let mut shuffled = report.clone();
        shuffled.members.reverse();
        assert_eq!(
            VerdictReport::decode(&shuffled.encode()),
            Ok(report.clone())
        );

        let mut bad = report.clone();
        bad.members.push(n("gh-bench-02"));
        assert_eq!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::Duplicate(n("gh-bench-02")))
        );
        let mut bad = report.clone();
        bad.members.retain(|m| m.as_str() != "gh-bench-01");
        assert_eq!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::NotAMember(n("gh-bench-01")))
        );
        let mut bad = report.clone();
        bad.verdicts.push((n("stranger"), Dead));
        assert_eq!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::NotAMember(n("stranger")))
        );
        let mut bad = report.clone();
        bad.members = (0..=MAX_UNIT_MEMBERS)
            .map(|i| n(&format!("x{i}")))
            .collect();
        assert_eq!(
            VerdictReport::decode(&bad.encode()),
            Err(ReportError::TooManyMembers { count: 65 })
        );
        let wire = WireReport {
            from: report.from.as_str().into(),
            unit: report.unit.clone(),
            seq: 1,
            interval_ms: 25_000,
            members: vec!["gh-bench-01".into(), "Bad_Name".into()],
            verdicts: vec![],
        };
        let bytes = postcard::to_allocvec(&wire).expect("encodes");
        assert!(matches!(
            VerdictReport::decode(&bytes),
            Err(ReportError::BadName(_))
        ));
        for ms in [0, 999, 3_600_001, u64::MAX] {
            let mut bad = report.clone();
            bad.interval_ms = ms;
            assert_eq!(
                VerdictReport::decode(&bad.encode()),
                Err(ReportError::BadInterval(ms))
            );
        }
    }

    #[test]
    fn tally_of_reports_needs_agreeing_members() {
        let m = unit(3);
        let report = |from: &str, members: &[NodeName]| VerdictReport {
            from: n(from),
            unit: "u".into(),
            seq: 1,
            interval_ms: 1000,
            members: members.to_vec(),
            verdicts: members
                .iter()
                .filter(|x| x.as_str() != from)
                .map(|x| (x.clone(), Alive))
                .collect(),
        };
        assert_eq!(tally_reports(&[]), None);
        let (a, b) = (report("e1", &m), report("e2", &m));
        let (members, votes) = tally_reports(&[&a, &b]).expect("reports");
        assert_eq!(members, m);
        assert_eq!(votes[2], (n("e3"), Vote::Alive { alive: 2, dead: 0 }));
        // e2 counts a fourth member: the quorum is unknown, nothing decided.
        let mut four = m.clone();
        four.push(n("e4"));
        let b = report("e2", &four);
        let (members, votes) = tally_reports(&[&a, &b]).expect("reports");
        assert_eq!(members, four);
        assert!(votes
            .iter()
            .all(|(_, v)| *v == Vote::Undecided(Undecided::MembersDiffer)));
    }

    #[test]
    fn largest_valid_report_fits() {
        // 253 characters: a 61-character label and three of 63.
        let label = "a".repeat(63);
        let long = |i: usize| n(&format!("{i:02}{}.{label}.{label}.{label}", "a".repeat(59)));
        let mut members: Vec<NodeName> = (0..MAX_UNIT_MEMBERS - 1).map(long).collect();
        members.push(long(99));
        members.sort();
        let report = VerdictReport {
            from: long(99),
            unit: "u".repeat(63),
            seq: u64::MAX,
            interval_ms: *REPORT_INTERVAL_MS.end(),
            verdicts: (0..MAX_UNIT_MEMBERS - 1).map(|i| (long(i), Dead)).collect(),
            members,
        };
        let bytes = report.encode();
        assert!(bytes.len() <= MAX_REPORT_BYTES, "{}", bytes.len());
        assert!(bytes.len() > MAX_REPORT_BYTES - 1024, "{}", bytes.len());
        assert_eq!(VerdictReport::decode(&bytes), Ok(report));
        // A unit of 5 with 16-character names: what a report usually costs.
        let names: Vec<NodeName> = (1..=5)
            .map(|i| n(&format!("gh-bench-node-{i:02}")))
            .collect();
        let usual = VerdictReport {
            from: names[0].clone(),
            unit: "greenhouse-a".into(),
            seq: 1_750_000_000_000_000,
            interval_ms: 25_000,
            verdicts: names[1..].iter().map(|m| (m.clone(), Alive)).collect(),
            members: names,
        };
        assert_eq!(usual.encode().len(), 200);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap sweep of short inputs and truncations of a valid report.
        let report = VerdictReport {
            from: n("a"),
            unit: "u".into(),
            seq: 7,
            interval_ms: 1000,
            members: vec![n("a"), n("b")],
            verdicts: vec![(n("b"), Alive)],
        }
        .encode();
        for cut in 0..report.len() {
            let _ = VerdictReport::decode(&report[..cut]);
        }
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = VerdictReport::decode(&bytes);
        }
    }
}

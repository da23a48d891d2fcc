//! The certificates the hub issued to nodes, and their revocation
//! (`tether-hub node list|revoke`; recorded by join and renewal).
//!
//! Per node the hub keeps the serial and expiry of its current certificate,
//! the one before it (an edge may still present it for a moment while it
//! rotates), when and how the current one was issued (joined with which
//! token, or renewed), and when the node was revoked. A revoked node's
//! certificates are refused, and it cannot renew: only a new join with a
//! token brings it back ([`NodeStore::record_issue`] with
//! [`Issue::Joined`] clears the revocation). Certificates of nodes with no
//! record (made outside join) are [`CertStatus::Unknown`] and accepted as
//! before.
//!
//! The records live in `<state dir>/nodes` (see [`super::store`] for the
//! locking and atomic rewrite):
//!
//! ```text
//! # tether-hub nodes generation <n>
//! <node> <serial hex> <not-after> <issued> <join:TOKEN-ID|renew> <previous serial hex|-> <previous not-after|-> <revoked|->
//! ```
//!
//! with times in seconds since the Unix epoch. The generation goes up by
//! one with every rewrite, so a running hub can poll
//! [`NodeStore::changed_since`] each second at the cost of reading one line.

pub use super::store::StoreError;
use super::store::{from_secs, hex, rfc3339, to_secs, unhex, StateFile};
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;
use tether_link::topic::NodeName;

/// The file name in the state directory.
pub const NODES_FILE: &str = "nodes";
const HEADER: &str = "# tether-hub nodes generation ";
const COLUMNS: &str = "# node serial not-after issued how previous-serial previous-not-after revoked (times: seconds since 1970-01-01 UTC)\n";

/// How a node got its current certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issue {
    /// By joining with a bootstrap token.
    Joined {
        /// The token's id.
        token: String,
    },
    /// By renewing with its previous certificate.
    Renewed,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Issue::Joined { token } => write!(f, "join:{token}"),
            Issue::Renewed => f.write_str("renew"),
        }
    }
}

/// A certificate to record (see [`NodeStore::record_issues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRecord {
    /// The node.
    pub node: NodeName,
    /// Its serial's bytes.
    pub serial: Vec<u8>,
    /// Its `notAfter`.
    pub not_after: SystemTime,
    /// How it was issued.
    pub how: Issue,
}

/// Records one issued certificate into `nodes` (the rules of
/// [`NodeStore::record_issue`]).
fn apply_issue(
    nodes: &mut HashMap<NodeName, NodeRecord>,
    r: IssueRecord,
    now: SystemTime,
) -> Result<(), StoreError> {
    let IssueRecord {
        node,
        serial,
        not_after,
        how,
    } = r;
    let serial = trim(&serial).to_vec();
    if serial.is_empty() {
        return Err(StoreError::Invalid(format!(
            "a certificate for {node} has an empty or zero serial"
        )));
    }
    let previous = match (nodes.get(&node), &how) {
        (Some(r), Issue::Renewed) => match r.revoked_at {
            Some(at) => return Err(StoreError::Revoked { node, at }),
            None if r.current.serial == serial => r.previous.clone(),
            None => Some(r.current.clone()),
        },
        // A join is a new key, maybe a new board: the old one's
        // certificate is superseded at once.
        (_, Issue::Joined { .. }) | (None, Issue::Renewed) => None,
    };
    nodes.insert(
        node.clone(),
        NodeRecord {
            node,
            current: Cert {
                serial,
                not_after: from_secs(to_secs(not_after)),
            },
            previous,
            issued_at: from_secs(to_secs(now)),
            how,
            revoked_at: None,
        },
    );
    Ok(())
}

/// One certificate: its serial and last moment of validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// The serial number's bytes, without leading zero bytes.
    pub serial: Vec<u8>,
    /// Its `notAfter` (whole seconds).
    pub not_after: SystemTime,
}

/// What the hub knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node.
    pub node: NodeName,
    /// Its current certificate.
    pub current: Cert,
    /// The certificate before it, still accepted during rotation (none
    /// after a revocation).
    pub previous: Option<Cert>,
    /// When the current certificate was issued.
    pub issued_at: SystemTime,
    /// How.
    pub how: Issue,
    /// When the node was revoked, if it is.
    pub revoked_at: Option<SystemTime>,
}

/// What [`NodeStore::revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The node.
    pub node: NodeName,
    /// When it is revoked since (the earlier time if it already was).
    pub at: SystemTime,
    /// The serial of its current certificate.
    pub serial: Vec<u8>,
    /// It was revoked already; nothing changed.
    pub already: bool,
}

/// What the hub does with a node certificate presented by `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// The node's current certificate: accepted.
    Current,
    /// The one before it: accepted (the node is rotating).
    Previous,
    /// The node is revoked: refused.
    Revoked {
        /// Since when.
        at: SystemTime,
    },
    /// An older certificate of a known node: refused.
    Superseded,
    /// No record of the node: accepted as before join existed (its
    /// certificate was made outside join).
    Unknown,
}

/// Identifies one version of the nodes file, for [`NodeStore::changed_since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    generation: u64,
    inode: u64,
}

/// The nodes' records at one moment: the running hub's snapshot.
#[derive(Debug, Clone, Default)]
pub struct Nodes {
    by_name: HashMap<NodeName, NodeRecord>,
    stamp: Stamp,
}

impl Nodes {
    /// What the hub does with a certificate of serial `serial` (bytes of
    /// the DER INTEGER; leading zero bytes do not matter) presented by
    /// `node`.
    pub fn status(&self, node: &NodeName, serial: &[u8]) -> CertStatus {
        let Some(r) = self.by_name.get(node) else {
            return CertStatus::Unknown;
        };
        if let Some(at) = r.revoked_at {
            return CertStatus::Revoked { at };
        }
        let serial = trim(serial);
        if r.current.serial == serial {
            CertStatus::Current
        } else if r.previous.as_ref().is_some_and(|p| p.serial == serial) {
            CertStatus::Previous
        } else {
            CertStatus::Superseded
        }
    }

    /// Whether `node` holds a certificate that is neither revoked nor
    /// expired at `now` (then a join for it needs a `rejoin` token).
    pub fn has_live_cert(&self, node: &NodeName, now: SystemTime) -> bool {
        self.by_name
            .get(node)
            .is_some_and(|r| r.revoked_at.is_none() && r.current.not_after > now)
    }

    /// The revoked nodes and since when.
    pub fn revoked(&self) -> impl Iterator<Item = (&NodeName, SystemTime)> {
        self.by_name
            .values()
            .filter_map(|r| r.revoked_at.map(|at| (&r.node, at)))
    }

    /// The record of `node`.
    pub fn get(&self, node: &NodeName) -> Option<&NodeRecord> {
        self.by_name.get(node)
    }

    /// The version of the file this snapshot was read from.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    /// Number of nodes with a record.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no node has a record.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The node records of one hub, in `<state dir>/nodes`.
#[derive(Debug, Clone)]
pub struct NodeStore {
    file: StateFile,
}

impl NodeStore {
    /// The node store of the state directory `state_dir` (nothing is read
    /// or created until used).
    pub fn open(state_dir: &Path) -> NodeStore {
        NodeStore {
            file: StateFile::new(state_dir, NODES_FILE),
        }
    }

    /// The nodes file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Records a certificate issued to `node` (`serial` as bytes, its
    /// `not_after`) and how. On a renewal the current certificate becomes
    /// `previous` (the edge may still use it for a moment while it
    /// rotates); a join keeps no previous: it is a new key, maybe a new
    /// board, and the old board's certificate is superseded at once. A
    /// join clears a revocation; a renewal of a revoked node is refused
    /// ([`StoreError::Revoked`]): only a token brings a node back.
    pub fn record_issue(
        &self,
        node: &NodeName,
        serial: &[u8],
        not_after: SystemTime,
        how: Issue,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let one = IssueRecord {
            node: node.clone(),
            serial: serial.to_vec(),
            not_after,
            how,
        };
        self.record_issues(vec![one], now)?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Invalid("no result for a record".into())))
    }

    /// [`NodeStore::record_issue`] for several certificates in one rewrite of
    /// the file (the hub commits a burst of joins together): one result per
    /// record, in order; the outer error is the file's, when none could be
    /// recorded.
    pub fn record_issues(
        &self,
        batch: Vec<IssueRecord>,
        now: SystemTime,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.file.update(|text| {
            let (mut nodes, generation) = parse(&self.file, text)?;
            let mut results = Vec::with_capacity(batch.len());
            let mut changed = false;
            for r in batch {
                let result = apply_issue(&mut nodes, r, now);
                changed |= result.is_ok();
                results.push(result);
            }
            let text = changed.then(|| render(&nodes, generation + 1));
            Ok((text, results))
        })
    }

    /// Every node's record, by name.
    pub fn list(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut records: Vec<NodeRecord> = self.load()?.by_name.into_values().collect();
        records.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(records)
    }

    /// Revokes `node`: its certificates are refused from now on, and it
    /// can come back only by joining with a token. An error if the hub
    /// never issued it a certificate.
    pub fn revoke(&self, node: &NodeName, now: SystemTime) -> Result<Revoked, StoreError> {
        self.file.update(|text| {
            let (mut nodes, generation) = parse(&self.file, text)?;
            let r = nodes
                .get_mut(node)
                .ok_or_else(|| StoreError::NoSuchNode { node: node.clone() })?;
            if let Some(at) = r.revoked_at {
                let done = Revoked {
                    node: node.clone(),
                    at,
                    serial: r.current.serial.clone(),
                    already: true,
                };
                return Ok((None, done));
            }
            let at = from_secs(to_secs(now));
            r.revoked_at = Some(at);
            // Nothing of a revoked node stays accepted, nor comes back
            // as "previous" after a new join.
            r.previous = None;
            let done = Revoked {
                node: node.clone(),
                at,
                serial: r.current.serial.clone(),
                already: false,
            };
            Ok((Some(render(&nodes, generation + 1)), done))
        })
    }

    /// A snapshot of every record, for the running hub.
    pub fn load(&self) -> Result<Nodes, StoreError> {
        let Some(mut f) = self.file.open()? else {
            return Ok(Nodes::default());
        };
        let inode = f.metadata().map_err(|e| self.file.io("stat", e))?.ino();
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| self.file.io("read", e))?;
        let (by_name, generation) = parse(&self.file, &text)?;
        Ok(Nodes {
            by_name,
            stamp: Stamp { generation, inode },
        })
    }

    /// Whether the file changed since `stamp` (from [`Nodes::stamp`]). Reads
    /// the first line only; an unreadable file counts as changed, so the
    /// caller's [`NodeStore::load`] reports the error.
    pub fn changed_since(&self, stamp: &Stamp) -> bool {
        let f = match self.file.open() {
            Ok(Some(f)) => f,
            Ok(None) => return *stamp != Stamp::default(),
            Err(_) => return true,
        };
        let Ok(inode) = f.metadata().map(|m| m.ino()) else {
            return true;
        };
        let mut head = [0u8; 64];
        let mut len = 0;
        let mut f = f;
        while len < head.len() {
            match f.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(_) => return true,
            }
        }
        let generation = std::str::from_utf8(&head[..len])
            .ok()
            .and_then(|s| s.lines().next())
            .and_then(generation_of);
        generation != Some(stamp.generation) || inode != stamp.inode
    }
}

/// A serial without leading zero bytes (DER adds one to keep it positive).
fn trim(serial: &[u8]) -> &[u8] {
    let zeros = serial.iter().take_while(|b| **b == 0).count();
    &serial[zeros..]
}

/// The generation in the header line, if it is one.
fn generation_of(line: &str) -> Option<u64> {
    line.strip_prefix(HEADER)?.trim().parse().ok()
}

/// The file's text for `nodes`, sorted by name.
fn render(nodes: &HashMap<NodeName, NodeRecord>, generation: u64) -> String {
    let mut out = format!("{HEADER}{generation}\n{COLUMNS}");
    let mut records: Vec<&NodeRecord> = nodes.values().collect();
    records.sort_by(|a, b| a.node.cmp(&b.node));
    for r in records {
        let (prev_serial, prev_after) = match &r.previous {
            Some(p) => (hex(&p.serial), to_secs(p.not_after).to_string()),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{} {} {} {} {} {prev_serial} {prev_after} {}\n",
            r.node,
            hex(&r.current.serial),
            to_secs(r.current.not_after),
            to_secs(r.issued_at),
            r.how,
            r.revoked_at.map_or("-".into(), |t| to_secs(t).to_string()),
        ));
    }
    out
}

/// The records and generation in the file's text; errors name the line.
fn parse(file: &StateFile, text: &str) -> Result<(HashMap<NodeName, NodeRecord>, u64), StoreError> {
    let mut nodes = HashMap::new();
    let mut generation = 0;
    for (n, line) in text.lines().enumerate() {
        if n == 0 {
            if let Some(g) = generation_of(line) {
                generation = g;
                continue;
            }
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| file.corrupt(n + 1, why);
        let fields: Vec<&str> = line.split(' ').collect();
        let [node, serial, not_after, issued, how, prev_serial, prev_after, revoked] = fields[..]
        else {
            return Err(bad("expected 8 fields"));
        };
        let node = NodeName::new(node).map_err(|e| bad(&e.to_string()))?;
        let secs = |s: &str, what: &str| {
            s.parse::<u64>()
                .map(from_secs)
                .map_err(|_| bad(&format!("{what} is not a number of seconds")))
        };
        let serial_of = |s: &str| {
            unhex(s)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("a serial is not hex"))
        };
        let how = match how {
            "renew" => Issue::Renewed,
            h => match h.strip_prefix("join:") {
                Some(token) if !token.is_empty() => Issue::Joined {
                    token: token.into(),
                },
                _ => return Err(bad("how is neither join:<token id> nor renew")),
            },
        };
        let previous = match (prev_serial, prev_after) {
            ("-", "-") => None,
            (s, a) => Some(Cert {
                serial: serial_of(s)?,
                not_after: secs(a, "previous not-after")?,
            }),
        };
        let record = NodeRecord {
            node: node.clone(),
            current: Cert {
                serial: serial_of(serial)?,
                not_after: secs(not_after, "not-after")?,
            },
            previous,
            issued_at: secs(issued, "issued")?,
            how,
            revoked_at: match revoked {
                "-" => None,
                r => Some(secs(r, "revoked")?),
            },
        };
        if nodes.insert(node, record).is_some() {
            return Err(bad("a second record for this node"));
        }
    }
    Ok((nodes, generation))
}

/// A serial for listings: its first 8 bytes in hex, `…` if longer.
pub fn short_serial(serial: &[u8]) -> String {
    if serial.len() > 8 {
        format!("{}…", hex(&serial[..8]))
    } else {
        hex(serial)
    }
}

/// A time for listings and messages (RFC 3339, UTC, seconds).
pub fn show_time(t: SystemTime) -> String {
    rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::super::store::test_dir::TempDir;
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn node(n: &str) -> NodeName {
        NodeName::new(n).expect("node name")
    }

    fn now() -> SystemTime {
        from_secs(to_secs(SystemTime::now()))
    }

    fn join(token: &str) -> Issue {
        Issue::Joined {
            token: token.into(),
        }
    }

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    #[test]
    fn issue_then_renew_keeps_the_previous_certificate() {
        let tmp = TempDir::new("nodes");
        let store = NodeStore::open(tmp.path());
        let n = node("edge-1");
        assert!(store.load().expect("empty").is_empty());
        store
            .record_issue(&n, &[0x00, 0x81, 0x02], now() + YEAR, join("abcdef"), now())
            .expect("join");
        let nodes = store.load().expect("load");
        assert_eq!(nodes.status(&n, &[0x81, 0x02]), CertStatus::Current);
        assert_eq!(nodes.status(&n, &[0x00, 0x81, 0x02]), CertStatus::Current);
        assert_eq!(nodes.status(&node("other"), &[1]), CertStatus::Unknown);
        assert!(nodes.has_live_cert(&n, now()));
        assert!(!nodes.has_live_cert(&n, now() + YEAR + Duration::from_secs(1)));

        store
            .record_issue(&n, &[0x03], now() + YEAR, Issue::Renewed, now())
            .expect("renew");
        let nodes = store.load().expect("load");
        assert_eq!(nodes.status(&n, &[0x03]), CertStatus::Current);
        assert_eq!(nodes.status(&n, &[0x81, 0x02]), CertStatus::Previous);
        assert_eq!(nodes.status(&n, &[0x09]), CertStatus::Superseded);
        store
            .record_issue(&n, &[0x04], now() + YEAR, Issue::Renewed, now())
            .expect("renew again");
        let nodes = store.load().expect("load");
        assert_eq!(nodes.status(&n, &[0x81, 0x02]), CertStatus::Superseded);
        assert_eq!(nodes.status(&n, &[0x03]), CertStatus::Previous);
        let r = nodes.get(&n).expect("record");
        assert_eq!(r.how, Issue::Renewed);
        // A rejoin (a new board for the name) leaves the old board out.
        store
            .record_issue(&n, &[0x05], now() + YEAR, join("ghijkl"), now())
            .expect("rejoin");
        let nodes = store.load().expect("load");
        assert_eq!(nodes.status(&n, &[0x05]), CertStatus::Current);
        assert_eq!(nodes.status(&n, &[0x04]), CertStatus::Superseded);
        assert_eq!(
            std::fs::metadata(store.path())
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn revoked_nodes_are_refused_until_a_token_brings_them_back() {
        let tmp = TempDir::new("nodes");
        let store = NodeStore::open(tmp.path());
        let n = node("edge-1");
        store
            .record_issue(&n, &[1], now() + YEAR, join("abcdef"), now())
            .expect("join");
        store
            .record_issue(&n, &[2], now() + YEAR, Issue::Renewed, now())
            .expect("renew");
        let r = store.revoke(&n, now()).expect("revoke");
        assert!(!r.already);
        assert_eq!(r.serial, [2]);
        let nodes = store.load().expect("load");
        for serial in [[1u8], [2]] {
            assert_eq!(nodes.status(&n, &serial), CertStatus::Revoked { at: r.at });
        }
        assert!(!nodes.has_live_cert(&n, now()));
        assert_eq!(nodes.revoked().collect::<Vec<_>>(), [(&n, r.at)]);
        let again = store.revoke(&n, now() + YEAR).expect("again");
        assert!(again.already);
        assert_eq!(again.at, r.at);

        let e = store
            .record_issue(&n, &[3], now() + YEAR, Issue::Renewed, now())
            .expect_err("renewal of a revoked node");
        assert!(matches!(e, StoreError::Revoked { .. }), "{e:?}");
        assert!(e.to_string().contains("token create --node edge-1"), "{e}");

        store
            .record_issue(&n, &[4], now() + YEAR, join("ghijkl"), now())
            .expect("join again");
        let nodes = store.load().expect("load");
        assert_eq!(nodes.status(&n, &[4]), CertStatus::Current);
        assert_eq!(
            nodes.status(&n, &[2]),
            CertStatus::Superseded,
            "the revoked one stays out"
        );
        assert_eq!(nodes.revoked().count(), 0);
    }

    #[test]
    fn revoking_an_unknown_node_is_an_error() {
        let tmp = TempDir::new("nodes");
        let store = NodeStore::open(tmp.path());
        let e = store.revoke(&node("ghost"), now()).expect_err("unknown");
        assert!(
            matches!(&e, StoreError::NoSuchNode { node: n } if *n == node("ghost")),
            "{e:?}"
        );
        assert!(e.to_string().contains("tether-hub node list"), "{e}");
        assert!(!store.path().exists(), "nothing written");
    }

    #[test]
    fn changed_since_sees_every_rewrite() {
        let tmp = TempDir::new("nodes");
        let store = NodeStore::open(tmp.path());
        let empty = store.load().expect("load");
        assert!(!store.changed_since(empty.stamp()));
        store
            .record_issue(&node("a"), &[1], now() + YEAR, join("abcdef"), now())
            .expect("issue");
        assert!(store.changed_since(empty.stamp()));
        let mut last = store.load().expect("load");
        assert!(!store.changed_since(last.stamp()));
        for i in 2..20u8 {
            store
                .record_issue(&node("a"), &[i], now() + YEAR, Issue::Renewed, now())
                .expect("issue");
            assert!(store.changed_since(last.stamp()), "rewrite {i}");
            last = store.load().expect("load");
            assert!(!store.changed_since(last.stamp()));
        }
        // A revoke of an already revoked node rewrites nothing.
        store.revoke(&node("a"), now()).expect("revoke");
        let last = store.load().expect("load");
        store.revoke(&node("a"), now()).expect("revoke again");
        assert!(!store.changed_since(last.stamp()));
    }

    #[test]
    fn the_file_round_trips_and_lists_sorted() {
        let tmp = TempDir::new("nodes");
        let store = NodeStore::open(tmp.path());
        for name in ["b", "a", "c"] {
            store
                .record_issue(&node(name), &[7, 8], now() + YEAR, join("abcdef"), now())
                .expect("issue");
        }
        store
            .record_issue(&node("b"), &[9], now() + YEAR, Issue::Renewed, now())
            .expect("renew");
        store.revoke(&node("c"), now()).expect("revoke");
        let names: Vec<String> = store
            .list()
            .expect("list")
            .iter()
            .map(|r| r.node.to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let text = std::fs::read_to_string(store.path()).expect("read");
        let (nodes, generation) = parse(&store.file, &text).expect("parse");
        assert_eq!(generation, 5);
        assert_eq!(render(&nodes, generation), text);
        std::fs::write(store.path(), format!("{text}a 01 x 1 renew - - -\n")).expect("write");
        let e = store.load().expect_err("corrupt");
        assert!(e.to_string().contains("line 6"), "{e}");
        assert!(e.to_string().contains("not-after"), "{e}");
    }

    #[test]
    fn concurrent_issues_lose_no_node() {
        let tmp = TempDir::new("nodes");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = NodeStore::open(tmp.path());
                std::thread::spawn(move || {
                    for i in 0..10u8 {
                        store
                            .record_issue(
                                &node(&format!("edge-{t}-{i}")),
                                &[t, i, 1],
                                now() + YEAR,
                                join("abcdef"),
                                now(),
                            )
                            .expect("issue");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let nodes = NodeStore::open(tmp.path()).load().expect("load");
        assert_eq!(nodes.len(), 80);
        assert_eq!(nodes.stamp().generation, 80);
    }

    #[test]
    fn serials_show_short() {
        assert_eq!(short_serial(&[1, 2]), "0102");
        assert_eq!(short_serial(&[0xab; 20]), "abababababababab…");
    }
}

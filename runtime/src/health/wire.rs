//! The messages edges of one unit send each other on the health port: their
//! encoding, their signature with the unit key, and the checks on receipt
//! (unit, membership, signature, clock, replay). Sans IO.
//!
//! # Format
//!
//! One message is one datagram:
//!
//! ```text
//! [VERSION = 1] [postcard Envelope] [HMAC-SHA256 tag, 32 bytes]
//! Envelope { unit: str, from: str, seq: u64, sent_at_unix_ms: u64, body: Body }
//! Body     = Probe { nonce: u32 }
//!          | Answer { nonce: u32, verdicts: Verdicts }
//!          | Verdicts(Verdicts)
//! Verdicts { members: [u8; 4], known: u64, alive: u64 }
//! ```
//!
//! The tag covers every byte before it, version included, keyed with the
//! unit's key ([`UnitKey`]). A message is at most [`MAX_MESSAGE`] bytes,
//! checked before anything is decoded.
//!
//! **Verdicts as bits.** Every member of a unit knows the unit's members
//! (its own name and `[health] peers`), so verdicts travel as two bitmaps
//! over the members sorted by name: `known` (the sender has a verdict) and
//! `alive` (that verdict is alive). `members` is the first 4 bytes of
//! SHA-256 over the sorted names, so a peer configured with another member
//! list is noticed instead of misread ([`Members::decode`]). Twenty
//! members' verdicts cost 6 bytes instead of about 340 as (name, verdict)
//! pairs, which is what lets a unit of 20 stay under 200 bytes/s (see
//! `health`'s module docs for the sum). [`MAX_UNIT_MEMBERS`] is 64, one `u64`.
//!
//! # Replay protection
//!
//! A receiver accepts a message only if `sent_at_unix_ms` is within
//! `max_skew` of its own clock ([`Error::Stale`]) and its `seq` is greater
//! than the last one it accepted from that sender ([`Error::Replayed`]).
//! A sender's `seq` starts at its start time in unix milliseconds × 1000
//! and rises by one per message, so a restarted edge goes on above where it
//! stopped without storing anything, as long as it sent fewer than 1000
//! messages per millisecond (it sends a few per second) and its clock did
//! not go back across the restart.
//!
//! A board without a real-time clock can start with its clock behind the
//! last run (fake-hwclock restores the time of the last save). Its messages
//! are Stale until NTP sets the clock; after that their `seq` is still
//! below what its peers remember. So a message whose `sent_at_unix_ms` is
//! more than 2 × `max_skew` later than the last accepted one from its sender
//! starts that sender's sequence afresh. A replay cannot use this: the tag
//! covers both fields, and within one run `seq` and `sent_at` rise together,
//! so an old message carries an old time, which is Stale.

use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use tether_link::health::{Verdict, MAX_UNIT_MEMBERS};
use tether_link::topic::NodeName;

/// The first byte of every message; a later format changes it, so old and
/// new edges reject each other's messages as malformed instead of misreading.
pub const VERSION: u8 = 1;

/// Bytes of the HMAC-SHA256 tag at the end of every message.
pub const TAG_LEN: usize = 32;

/// The largest message accepted, checked before decoding. The largest valid
/// one (253-character node name, 63-character unit) is about 400 bytes.
pub const MAX_MESSAGE: usize = 1024;

/// The shared secret of one unit: every message is signed and checked with
/// it. Its bytes never leave this type (`Debug` prints no key material).
#[derive(Clone)]
pub struct UnitKey(hmac::Key);

/// A key shorter than [`UnitKey::MIN_LEN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTooShort {
    /// How many bytes were given.
    pub len: usize,
}

impl fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the unit key has {} bytes; it needs at least {} (256 bits), e.g. \
             `openssl rand -hex 32`",
            self.len,
            UnitKey::MIN_LEN
        )
    }
}

impl std::error::Error for KeyTooShort {}

impl UnitKey {
    /// The fewest key bytes accepted: HMAC-SHA256's full strength.
    pub const MIN_LEN: usize = 32;

    /// A key from its bytes, at least [`UnitKey::MIN_LEN`] of them.
    pub fn new(bytes: &[u8]) -> Result<UnitKey, KeyTooShort> {
        if bytes.len() < Self::MIN_LEN {
            return Err(KeyTooShort { len: bytes.len() });
        }
        Ok(UnitKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }
}

impl fmt::Debug for UnitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnitKey(..)")
    }
}

/// Verdicts as bitmaps over the unit's sorted members (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdicts {
    /// The first 4 bytes of SHA-256 over the sender's sorted member names.
    pub members: [u8; 4],
    /// Bit i: the sender has a verdict on member i.
    pub known: u64,
    /// Bit i: that verdict is alive (only meaningful where `known` is set).
    pub alive: u64,
}

/// What a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// "Answer me": the receiver answers with the same nonce.
    Probe {
        /// Ties the answer to this probe.
        nonce: u32,
    },
    /// The answer to a probe, carrying the answerer's verdicts so that every
    /// probe round also spreads verdicts at no extra datagram.
    Answer {
        /// The probe's nonce.
        nonce: u32,
        /// The answerer's current verdicts.
        verdicts: Verdicts,
    },
    /// The sender's verdicts, sent to every peer as soon as one changes, so
    /// the unit's vote does not wait for the next probe round.
    Verdicts(Verdicts),
}

/// A message that passed every check: from a member of our unit, signed with
/// the unit key, timely and new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender, a member of the unit.
    pub from: NodeName,
    /// The sender's sequence number.
    pub seq: u64,
    /// The sender's clock when it sent the message.
    pub sent_at_unix_ms: u64,
    /// What it says.
    pub body: Body,
}

/// The envelope as postcard encodes it; names are checked on receipt.
#[derive(Serialize, Deserialize)]
struct Envelope {
    unit: String,
    from: String,
    seq: u64,
    sent_at_unix_ms: u64,
    body: Body,
}

/// Why a received message was dropped. Each message names the sender it
/// claims (unverified unless the check that failed came after the
/// signature) and what to check; none shows key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Longer than [`MAX_MESSAGE`]; not even decoded.
    Oversized { len: usize },
    /// Not a health message of this version.
    Malformed { why: String },
    /// For another unit than ours.
    WrongUnit {
        from: String,
        unit: String,
        ours: String,
    },
    /// From a node that is not one of our configured peers.
    NotMember { from: String, unit: String },
    /// Claims to come from this very node.
    FromSelf { own: NodeName },
    /// The tag does not match: not made with our unit's key.
    Forged { from: NodeName },
    /// Sent further from our clock than `max_skew`.
    Stale {
        from: NodeName,
        sent_at_unix_ms: u64,
        now_unix_ms: u64,
        max_skew: Duration,
    },
    /// A sequence number not above the last accepted from that sender.
    Replayed { from: NodeName, seq: u64, last: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Oversized { len } => write!(
                f,
                "health message of {len} bytes is larger than {MAX_MESSAGE}; dropped unread \
                 (is something other than a Tether edge sending to the health port?)"
            ),
            Error::Malformed { why } => write!(
                f,
                "health message is not a Tether health message of version {VERSION} ({why}); \
                 dropped (another program, or an edge of another version, on the health port?)"
            ),
            Error::WrongUnit { from, unit, ours } => write!(
                f,
                "health message from {from:?} is for unit {unit:?}, but this node is in unit \
                 {ours:?}; dropped: fix unit in the config of {from:?}, or remove this node \
                 from its [health] peers"
            ),
            Error::NotMember { from, unit } => write!(
                f,
                "health message from {from:?}, which is not in this node's [health] peers of \
                 unit {unit:?}; dropped: add it to peers if it belongs to the unit"
            ),
            Error::FromSelf { own } => write!(
                f,
                "health message claims to come from this node ({own}); dropped: a peer is \
                 configured with this node's name, or our own message was sent back"
            ),
            Error::Forged { from } => write!(
                f,
                "health message claiming to come from {from} has a bad signature; dropped: \
                 its key_file holds another key than ours, or someone is forging verdicts"
            ),
            Error::Stale {
                from,
                sent_at_unix_ms,
                now_unix_ms,
                max_skew,
            } => {
                let (by, way) = if sent_at_unix_ms > now_unix_ms {
                    (sent_at_unix_ms - now_unix_ms, "ahead of")
                } else {
                    (now_unix_ms - sent_at_unix_ms, "behind")
                };
                write!(
                    f,
                    "health message from {from} is timed {:.1} s {way} this node's clock, more \
                     than max_skew ({} s); dropped: check that both nodes' clocks are set (NTP), \
                     or it is a replay of an old message",
                    by as f64 / 1000.0,
                    max_skew.as_secs()
                )
            }
            Error::Replayed { from, seq, last } => write!(
                f,
                "health message from {from} has sequence number {seq}, not above the last \
                 accepted ({last}); dropped as a replay (or a duplicate on the network)"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Every [`Error::label`], for counters that show zeros too.
    pub const LABELS: [&'static str; 8] = [
        "oversized",
        "malformed",
        "wrong_unit",
        "not_member",
        "from_self",
        "forged",
        "stale",
        "replayed",
    ];

    /// A short, stable name of the check that failed, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Oversized { .. } => "oversized",
            Error::Malformed { .. } => "malformed",
            Error::WrongUnit { .. } => "wrong_unit",
            Error::NotMember { .. } => "not_member",
            Error::FromSelf { .. } => "from_self",
            Error::Forged { .. } => "forged",
            Error::Stale { .. } => "stale",
            Error::Replayed { .. } => "replayed",
        }
    }
}

/// Signs outgoing messages of one node and numbers them.
#[derive(Debug)]
pub struct Sender {
    unit: String,
    own: NodeName,
    key: UnitKey,
    next_seq: u64,
}

impl Sender {
    /// A sender for `own` in `unit`, started at `start_unix_ms`: its first
    /// `seq` is `start_unix_ms × 1000` (see the module docs).
    pub fn new(unit: &str, own: NodeName, key: UnitKey, start_unix_ms: u64) -> Sender {
        Sender {
            unit: unit.to_owned(),
            own,
            key,
            next_seq: start_unix_ms.saturating_mul(1000),
        }
    }

    /// The next sequence number, also used for the reports to the hub so
    /// that they rise across restarts too.
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    /// Names `unit` in the messages from now on (the unit from a node label
    /// changed); the sequence goes on, so peers that knew us accept us.
    pub fn set_unit(&mut self, unit: &str) {
        unit.clone_into(&mut self.unit);
    }

    /// `body` as a signed message sent at `unix_ms`.
    pub fn seal(&mut self, unix_ms: u64, body: Body) -> Vec<u8> {
        let envelope = Envelope {
            unit: self.unit.clone(),
            from: self.own.as_str().to_owned(),
            seq: self.next_seq(),
            sent_at_unix_ms: unix_ms,
            body,
        };
        seal(&self.key, &envelope)
    }
}

/// Encodes and signs an envelope.
fn seal(key: &UnitKey, envelope: &Envelope) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serializing strings, integers and enums into a Vec cannot fail.
    out = postcard::to_extend(envelope, out).unwrap_or_else(|_| vec![VERSION]);
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// The last message accepted from one sender.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    sent_at_unix_ms: u64,
}

/// Checks incoming messages: one per node, remembering the last sequence
/// number of each peer (at most [`MAX_UNIT_MEMBERS`], the configured peers).
#[derive(Debug)]
pub struct Receiver {
    unit: String,
    own: NodeName,
    key: UnitKey,
    max_skew_ms: u64,
    last: BTreeMap<NodeName, Option<Last>>,
}

impl Receiver {
    /// A receiver for `own` in `unit`, accepting messages only from `peers`
    /// (beyond [`MAX_UNIT_MEMBERS`] - 1 they are ignored; the config refuses
    /// more).
    pub fn new(
        unit: &str,
        own: NodeName,
        peers: &[NodeName],
        key: UnitKey,
        max_skew: Duration,
    ) -> Receiver {
        let last = peers
            .iter()
            .filter(|p| **p != own)
            .take(MAX_UNIT_MEMBERS - 1)
            .map(|p| (p.clone(), None))
            .collect();
        Receiver {
            unit: unit.to_owned(),
            own,
            key,
            max_skew_ms: u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX),
            last,
        }
    }

    /// Accepts messages for `unit` from `peers` from now on (the unit's
    /// members changed): a peer that stays keeps its last sequence number,
    /// so an old message of it is still a replay; one that left is
    /// forgotten; one that joined starts with none.
    pub fn set_members(&mut self, unit: &str, peers: &[NodeName]) {
        unit.clone_into(&mut self.unit);
        let mut last: BTreeMap<NodeName, Option<Last>> = BTreeMap::new();
        for p in peers
            .iter()
            .filter(|p| **p != self.own)
            .take(MAX_UNIT_MEMBERS - 1)
        {
            let kept = self.last.get(p).copied().flatten();
            last.insert(p.clone(), kept);
        }
        self.last = last;
    }

    /// Checks `bytes` received at `now_unix_ms`, in this order: size,
    /// version and encoding, unit, membership, signature (constant time),
    /// clock, sequence. Only a message that passes all of them advances the
    /// sender's sequence.
    pub fn open(&mut self, now_unix_ms: u64, bytes: &[u8]) -> Result<Message, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Oversized { len: bytes.len() });
        }
        if bytes.len() < 1 + TAG_LEN {
            return Err(Error::Malformed {
                why: format!("{} bytes, too short to hold a signature", bytes.len()),
            });
        }
        let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if signed[0] != VERSION {
            return Err(Error::Malformed {
                why: format!("version byte {}", signed[0]),
            });
        }
        let envelope: Envelope = match postcard::take_from_bytes(&signed[1..]) {
            Ok((envelope, [])) => envelope,
            Ok((_, rest)) => {
                return Err(Error::Malformed {
                    why: format!("{} bytes after the envelope", rest.len()),
                })
            }
            Err(e) => return Err(Error::Malformed { why: e.to_string() }),
        };
        let claimed: String = envelope.from.chars().take(64).collect();
        if envelope.unit != self.unit {
            return Err(Error::WrongUnit {
                from: claimed,
                unit: envelope.unit.chars().take(64).collect(),
                ours: self.unit.clone(),
            });
        }
        let from = match NodeName::new(&envelope.from) {
            Ok(from) => from,
            Err(e) => return Err(Error::Malformed { why: e.to_string() }),
        };
        if from == self.own {
            return Err(Error::FromSelf {
                own: self.own.clone(),
            });
        }
        let Some(last) = self.last.get_mut(&from) else {
            return Err(Error::NotMember {
                from: claimed,
                unit: self.unit.clone(),
            });
        };
        if hmac::verify(&self.key.0, signed, tag).is_err() {
            return Err(Error::Forged { from });
        }
        if envelope.sent_at_unix_ms.abs_diff(now_unix_ms) > self.max_skew_ms {
            return Err(Error::Stale {
                from,
                sent_at_unix_ms: envelope.sent_at_unix_ms,
                now_unix_ms,
                max_skew: Duration::from_millis(self.max_skew_ms),
            });
        }
        if let Some(l) = *last {
            // A time well after the last accepted one starts the sender's
            // sequence afresh: see "Replay protection" in the module docs.
            let restarted = envelope.sent_at_unix_ms
                > l.sent_at_unix_ms
                    .saturating_add(self.max_skew_ms.saturating_mul(2));
            if envelope.seq <= l.seq && !restarted {
                return Err(Error::Replayed {
                    from,
                    seq: envelope.seq,
                    last: l.seq,
                });
            }
        }
        *last = Some(Last {
            seq: envelope.seq,
            sent_at_unix_ms: envelope.sent_at_unix_ms,
        });
        Ok(Message {
            from,
            seq: envelope.seq,
            sent_at_unix_ms: envelope.sent_at_unix_ms,
            body: envelope.body,
        })
    }
}

/// The unit's members sorted by name: the index of each member's bit in
/// [`Verdicts`], and the digest that tells whether a peer counts the same.
#[derive(Debug, Clone)]
pub struct Members {
    names: Vec<NodeName>,
    digest: [u8; 4],
}

impl Members {
    /// The members: `own` and `peers`, sorted, each once, at most
    /// [`MAX_UNIT_MEMBERS`] (the config refuses more; extra ones are cut).
    pub fn new(own: &NodeName, peers: &[NodeName]) -> Members {
        let mut names: Vec<NodeName> = peers.iter().chain([own]).cloned().collect();
        names.sort();
        names.dedup();
        names.truncate(MAX_UNIT_MEMBERS);
        let mut ctx = digest::Context::new(&digest::SHA256);
        for name in &names {
            ctx.update(name.as_str().as_bytes());
            ctx.update(b"\n");
        }
        let mut digest = [0; 4];
        digest.copy_from_slice(&ctx.finish().as_ref()[..4]);
        Members { names, digest }
    }

    /// The members, sorted by name.
    pub fn names(&self) -> &[NodeName] {
        &self.names
    }

    /// `verdicts` as bitmaps; verdicts on non-members are left out.
    pub fn encode<'a>(
        &self,
        verdicts: impl IntoIterator<Item = (&'a NodeName, Verdict)>,
    ) -> Verdicts {
        let (mut known, mut alive) = (0u64, 0u64);
        for (name, verdict) in verdicts {
            if let Ok(i) = self.names.binary_search(name) {
                known |= 1 << i;
                if verdict == Verdict::Alive {
                    alive |= 1 << i;
                }
            }
        }
        Verdicts {
            members: self.digest,
            known,
            alive,
        }
    }

    /// The verdicts `from` sent, by name, leaving out any on `from` itself;
    /// `None` when its member list differs from ours (so its bits cannot be
    /// read).
    pub fn decode(&self, from: &NodeName, v: &Verdicts) -> Option<Vec<(NodeName, Verdict)>> {
        if v.members != self.digest {
            return None;
        }
        Some(
            self.names
                .iter()
                .enumerate()
                .filter(|(i, name)| v.known & (1 << i) != 0 && *name != from)
                .map(|(i, name)| {
                    let verdict = if v.alive & (1 << i) != 0 {
                        Verdict::Alive
                    } else {
                        Verdict::Dead
                    };
                    (name.clone(), verdict)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "greenhouse";
    const NOW: u64 = 1_750_000_000_000;
    const SKEW: Duration = Duration::from_secs(30);

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("test name")
    }

    fn key(byte: u8) -> UnitKey {
        UnitKey::new(&[byte; 32]).expect("32 bytes")
    }

    fn pair() -> (Sender, Receiver) {
        let sender = Sender::new(UNIT, n("a"), key(7), NOW);
        let receiver = Receiver::new(UNIT, n("b"), &[n("a"), n("c")], key(7), SKEW);
        (sender, receiver)
    }

    const PROBE: Body = Body::Probe { nonce: 5 };

    #[test]
    fn round_trip() {
        let (mut s, mut r) = pair();
        let m = r.open(NOW, &s.seal(NOW, PROBE)).expect("valid");
        assert_eq!(m.from, n("a"));
        assert_eq!(m.seq, NOW * 1000);
        assert_eq!(m.body, PROBE);
        let v = Verdicts {
            members: [1, 2, 3, 4],
            known: 3,
            alive: 1,
        };
        let body = Body::Answer {
            nonce: 9,
            verdicts: v,
        };
        assert_eq!(r.open(NOW, &s.seal(NOW, body)).expect("valid").body, body);
    }

    #[test]
    fn forged_tag() {
        let (mut s, mut r) = pair();
        // Another key.
        let mut other = Sender::new(UNIT, n("a"), key(8), NOW);
        let e = r.open(NOW, &other.seal(NOW, PROBE)).expect_err("forged");
        assert_eq!(e, Error::Forged { from: n("a") });
        assert!(
            e.to_string()
                .contains("claiming to come from a has a bad signature"),
            "{e}"
        );
        // One flipped bit anywhere, in the body or the tag.
        let good = s.seal(NOW, PROBE);
        for i in [good.len() - 8, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert_eq!(r.open(NOW, &bad), Err(Error::Forged { from: n("a") }));
        }
        // The forged attempts did not consume the sequence number.
        r.open(NOW, &good)
            .expect("the genuine message still passes");
    }

    #[test]
    fn replayed_seq() {
        let (mut s, mut r) = pair();
        let first = s.seal(NOW, PROBE);
        let second = s.seal(NOW, PROBE);
        r.open(NOW, &second).expect("valid");
        let e = r.open(NOW, &second).expect_err("replay");
        assert_eq!(
            e,
            Error::Replayed {
                from: n("a"),
                seq: NOW * 1000 + 1,
                last: NOW * 1000 + 1
            }
        );
        assert!(e.to_string().contains("dropped as a replay"), "{e}");
        // An older message arriving late is refused too.
        assert!(matches!(r.open(NOW, &first), Err(Error::Replayed { .. })));
        // Still refused just within the restart window.
        assert!(matches!(
            r.open(NOW + 20_000, &first),
            Err(Error::Replayed { .. })
        ));
    }

    #[test]
    fn restarted_sender_goes_on() {
        let (mut s, mut r) = pair();
        r.open(NOW, &s.seal(NOW, PROBE)).expect("valid");
        // Restarted a minute later: its seq base is above the old one.
        let mut s2 = Sender::new(UNIT, n("a"), key(7), NOW + 60_000);
        r.open(NOW + 60_000, &s2.seal(NOW + 60_000, PROBE))
            .expect("restart keeps rising");
        // Restarted with its clock an hour behind (no RTC), then set by NTP:
        // a lower seq, but timed well after the last accepted message.
        let mut s3 = Sender::new(UNIT, n("a"), key(7), NOW - 3_600_000);
        let later = NOW + 60_000 + 2 * 30_000 + 1;
        r.open(later, &s3.seal(later, PROBE))
            .expect("a fresh time restarts the sequence");
    }

    #[test]
    fn stale_time() {
        let (mut s, mut r) = pair();
        for sent in [NOW - 30_001, NOW + 30_001] {
            let e = r.open(NOW, &s.seal(sent, PROBE)).expect_err("stale");
            assert!(matches!(e, Error::Stale { .. }), "{e}");
            assert!(e.to_string().contains("30.0 s"), "{e}");
            assert!(e.to_string().contains("NTP"), "{e}");
        }
        r.open(NOW, &s.seal(NOW - 30_000, PROBE))
            .expect("at the edge of the window");
    }

    #[test]
    fn wrong_unit_stranger_and_self() {
        let (_, mut r) = pair();
        let mut other_unit = Sender::new("bench-b", n("a"), key(7), NOW);
        let e = r.open(NOW, &other_unit.seal(NOW, PROBE)).expect_err("unit");
        assert!(matches!(e, Error::WrongUnit { .. }));
        assert!(e.to_string().contains("is for unit \"bench-b\""), "{e}");
        let mut stranger = Sender::new(UNIT, n("zed"), key(7), NOW);
        let e = r
            .open(NOW, &stranger.seal(NOW, PROBE))
            .expect_err("stranger");
        assert!(matches!(e, Error::NotMember { .. }), "{e}");
        assert!(e.to_string().contains("add it to peers"), "{e}");
        let mut me = Sender::new(UNIT, n("b"), key(7), NOW);
        let e = r.open(NOW, &me.seal(NOW, PROBE)).expect_err("self");
        assert_eq!(e, Error::FromSelf { own: n("b") });
    }

    #[test]
    fn malformed_and_oversized() {
        let (mut s, mut r) = pair();
        let good = s.seal(NOW, PROBE);
        for bad in [
            vec![],
            vec![VERSION; 10],
            {
                let mut b = good.clone();
                b[0] = 2;
                b
            },
            // Truncated envelope, valid-looking length.
            [&good[..3], &good[good.len() - TAG_LEN..]].concat(),
            vec![0xff; 200],
        ] {
            let e = r.open(NOW, &bad).expect_err("malformed");
            assert!(matches!(e, Error::Malformed { .. }), "{e}");
        }
        let e = r
            .open(NOW, &vec![VERSION; MAX_MESSAGE + 1])
            .expect_err("big");
        assert_eq!(
            e,
            Error::Oversized {
                len: MAX_MESSAGE + 1
            }
        );
        r.open(NOW, &good)
            .expect("nothing above consumed a sequence number");
    }

    #[test]
    fn largest_message_fits() {
        let label = "a".repeat(63);
        let long = n(&format!("{}.{label}.{label}.{label}", "b".repeat(61)));
        let unit = "u".repeat(63);
        let mut s = Sender::new(&unit, long, key(1), u64::MAX / 1000);
        let v = Verdicts {
            members: [0xff; 4],
            known: u64::MAX,
            alive: u64::MAX,
        };
        let len = s
            .seal(
                u64::MAX,
                Body::Answer {
                    nonce: u32::MAX,
                    verdicts: v,
                },
            )
            .len();
        assert!(len <= MAX_MESSAGE / 2, "{len}");
    }

    #[test]
    fn key_is_checked_and_never_shown() {
        assert_eq!(
            UnitKey::new(&[1; 31]).map(|_| ()),
            Err(KeyTooShort { len: 31 })
        );
        let k = UnitKey::new(b"0123456789abcdef0123456789abcdef").expect("32");
        assert_eq!(format!("{k:?}"), "UnitKey(..)");
    }

    #[test]
    fn members_bits() {
        let peers = [n("c"), n("a"), n("d")];
        let m = Members::new(&n("b"), &peers);
        assert_eq!(m.names(), &[n("a"), n("b"), n("c"), n("d")]);
        let v = m.encode([
            (&n("a"), Verdict::Alive),
            (&n("d"), Verdict::Dead),
            (&n("stranger"), Verdict::Alive),
        ]);
        assert_eq!((v.known, v.alive), (0b1001, 0b0001));
        assert_eq!(
            m.decode(&n("c"), &v),
            Some(vec![(n("a"), Verdict::Alive), (n("d"), Verdict::Dead)])
        );
        // A verdict of the sender on itself is left out.
        assert_eq!(m.decode(&n("a"), &v), Some(vec![(n("d"), Verdict::Dead)]));
        // Same members seen from another member: same digest.
        let from_c = Members::new(&n("c"), &[n("a"), n("b"), n("d")]);
        assert_eq!(from_c.encode([]).members, v.members);
        // Another member list cannot be read.
        let other = Members::new(&n("b"), &[n("a"), n("c")]);
        assert_eq!(other.decode(&n("c"), &v), None);
    }

    #[test]
    fn garbage_never_panics() {
        let (mut s, mut r) = pair();
        let good = s.seal(NOW, PROBE);
        for cut in 0..good.len() {
            let _ = r.open(NOW, &good[..cut]);
        }
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..300 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if let Some(b) = bytes.first_mut() {
                *b = VERSION;
            }
            let _ = r.open(NOW, &bytes);
        }
    }
}

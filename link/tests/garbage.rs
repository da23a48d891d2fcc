//! Every decoder of the link against garbage and against valid input with
//! random fields: nothing may panic, nothing may grow without bound, and
//! whatever is valid must survive a round trip.
//!
//! A panic in the hub drops every link at once, so these are properties over
//! arbitrary bytes, not examples. Large inputs come from a seeded xorshift
//! rather than from proptest byte vectors, which keeps the file fast in debug.

use proptest::prelude::*;
use std::time::{Duration, Instant};
use tether_link::accept::{read_connect, MAX_CONNECT};
use tether_link::frame::{read_batch, BatchHeader, BatchWriter, Frame, ResetCode, Target};
use tether_link::mqtt::{
    self, Connack, Connect, ConnectReturnCode, Packet, Pid, Protocol, Publish, QoS, QosPid, Suback,
    Subscribe, SubscribeReturnCodes, SubscribeTopic,
};
use tether_link::mux::{Mux, OwnedTarget, Side, INITIAL_WINDOW};
use tether_link::session::{Config, Session};
use tether_link::topic::NodeName;

const CASES: u32 = 256;

/// A cheap, seeded byte source for inputs too large for proptest vectors.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Whether `b` is a fixed header byte MQTT 3.1.1 allows (type and flags).
fn valid_header_byte(b: u8) -> bool {
    let flags = b & 0x0f;
    match b >> 4 {
        3 => (flags >> 1) & 0b11 != 3,
        6 | 8 | 10 => flags == 0b0010,
        1 | 2 | 4 | 5 | 7 | 9 | 11..=14 => flags == 0,
        _ => false,
    }
}

fn invalid_header_bytes() -> Vec<u8> {
    (0..=255u8).filter(|b| !valid_header_byte(*b)).collect()
}

fn pid_of(n: u16) -> Pid {
    Pid::try_from(n.max(1)).expect("pid")
}

fn node() -> NodeName {
    NodeName::new("edge-1").expect("node name")
}

// ---------------------------------------------------------------------------
// Owned descriptions of packets, from which borrowed `Packet`s are built.

#[derive(Debug, Clone)]
enum Spec {
    Connect {
        keep_alive: u16,
        client_id: String,
        clean_session: bool,
        will: Option<(String, String, u8, bool)>,
        username: Option<String>,
        password: Option<String>,
    },
    Connack {
        session_present: bool,
        code: u8,
    },
    Publish {
        dup: bool,
        qos: u8,
        pid: u16,
        retain: bool,
        topic: String,
        payload: Vec<u8>,
    },
    Puback(u16),
    Pubrec(u16),
    Pubrel(u16),
    Pubcomp(u16),
    Subscribe {
        pid: u16,
        topics: Vec<(String, u8)>,
    },
    Suback {
        pid: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        pid: u16,
        topics: Vec<String>,
    },
    Unsuback(u16),
    Pingreq,
    Pingresp,
    Disconnect,
}

fn qos(n: u8) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn code(n: u8) -> ConnectReturnCode {
    use ConnectReturnCode::*;
    [
        Accepted,
        RefusedProtocolVersion,
        RefusedIdentifierRejected,
        ServerUnavailable,
        BadUsernamePassword,
        NotAuthorized,
    ][usize::from(n % 6)]
}

impl Spec {
    fn packet(&self) -> Packet<'_> {
        match self {
            Spec::Connect {
                keep_alive,
                client_id,
                clean_session,
                will,
                username,
                password,
            } => Packet::Connect(Connect {
                protocol: Protocol::MQTT311,
                keep_alive: *keep_alive,
                client_id,
                clean_session: *clean_session,
                last_will: will
                    .as_ref()
                    .map(|(topic, message, q, retain)| mqttrs::LastWill {
                        topic,
                        message: message.as_bytes(),
                        qos: qos(*q),
                        retain: *retain,
                    }),
                username: username.as_deref(),
                password: password.as_deref().map(str::as_bytes),
            }),
            Spec::Connack {
                session_present,
                code: c,
            } => Packet::Connack(Connack {
                session_present: *session_present,
                code: code(*c),
            }),
            Spec::Publish {
                dup,
                qos: q,
                pid,
                retain,
                topic,
                payload,
            } => Packet::Publish(Publish {
                dup: *dup,
                qospid: match q % 3 {
                    0 => QosPid::AtMostOnce,
                    1 => QosPid::AtLeastOnce(pid_of(*pid)),
                    _ => QosPid::ExactlyOnce(pid_of(*pid)),
                },
                retain: *retain,
                topic_name: topic,
                payload,
            }),
            Spec::Puback(p) => Packet::Puback(pid_of(*p)),
            Spec::Pubrec(p) => Packet::Pubrec(pid_of(*p)),
            Spec::Pubrel(p) => Packet::Pubrel(pid_of(*p)),
            Spec::Pubcomp(p) => Packet::Pubcomp(pid_of(*p)),
            Spec::Subscribe { pid, topics } => Packet::Subscribe(Subscribe {
                pid: pid_of(*pid),
                topics: topics
                    .iter()
                    .map(|(t, q)| SubscribeTopic {
                        topic_path: t.clone(),
                        qos: qos(*q),
                    })
                    .collect(),
            }),
            Spec::Suback { pid, codes } => Packet::Suback(Suback {
                pid: pid_of(*pid),
                return_codes: codes
                    .iter()
                    .map(|c| match c % 4 {
                        3 => SubscribeReturnCodes::Failure,
                        q => SubscribeReturnCodes::Success(qos(q)),
                    })
                    .collect(),
            }),
            Spec::Unsubscribe { pid, topics } => Packet::Unsubscribe(mqttrs::Unsubscribe {
                pid: pid_of(*pid),
                topics: topics.clone(),
            }),
            Spec::Unsuback(p) => Packet::Unsuback(pid_of(*p)),
            Spec::Pingreq => Packet::Pingreq,
            Spec::Pingresp => Packet::Pingresp,
            Spec::Disconnect => Packet::Disconnect,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        mqtt::encode(&self.packet(), &mut out).expect("encode a valid packet");
        out
    }
}

/// Any string of up to `max` chars (MQTT strings are UTF-8 of any content).
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

fn spec() -> impl Strategy<Value = Spec> {
    let pid = any::<u16>();
    prop_oneof![
        (
            any::<u16>(),
            text(40),
            any::<bool>(),
            proptest::option::of((text(30), text(60), 0u8..3, any::<bool>())),
            proptest::option::of(text(30)),
            proptest::option::of(text(60)),
        )
            .prop_map(
                |(keep_alive, client_id, clean_session, will, username, password)| {
                    Spec::Connect {
                        keep_alive,
                        client_id,
                        clean_session,
                        will,
                        username,
                        password,
                    }
                }
            ),
        (any::<bool>(), any::<u8>()).prop_map(|(session_present, code)| Spec::Connack {
            session_present,
            code
        }),
        (
            any::<bool>(),
            any::<u8>(),
            pid,
            any::<bool>(),
            text(40),
            proptest::collection::vec(any::<u8>(), 0..2000),
        )
            .prop_map(|(dup, qos, pid, retain, topic, payload)| Spec::Publish {
                dup,
                qos,
                pid,
                retain,
                topic,
                payload,
            }),
        pid.prop_map(Spec::Puback),
        pid.prop_map(Spec::Pubrec),
        pid.prop_map(Spec::Pubrel),
        pid.prop_map(Spec::Pubcomp),
        (pid, proptest::collection::vec((text(40), 0u8..3), 1..6))
            .prop_map(|(pid, topics)| Spec::Subscribe { pid, topics }),
        (pid, proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(pid, codes)| Spec::Suback { pid, codes }),
        (pid, proptest::collection::vec(text(40), 1..6))
            .prop_map(|(pid, topics)| Spec::Unsubscribe { pid, topics }),
        pid.prop_map(Spec::Unsuback),
        Just(Spec::Pingreq),
        Just(Spec::Pingresp),
        Just(Spec::Disconnect),
    ]
}

// ---------------------------------------------------------------------------
// Owned descriptions of stream frames.

#[derive(Debug, Clone)]
enum FrameSpec {
    OpenUpstream(u32, String),
    OpenPort(u32, u16),
    Accept(u32),
    /// Data of this many bytes (taken from a shared buffer).
    Data(u32, usize),
    Credit(u32, u32),
    Fin(u32),
    Reset(u32, u8, String),
}

const RESET_CODES: [ResetCode; 8] = [
    ResetCode::Refused,
    ResetCode::UnknownTarget,
    ResetCode::ConnectFailed,
    ResetCode::Cancelled,
    ResetCode::ProtocolError,
    ResetCode::SessionLost,
    ResetCode::TooManyStreams,
    ResetCode::UnknownStream,
];

/// Data for `Data` frames: up to 300 KiB, more than one window.
static DATA: [u8; 300 * 1024] = [0x5a; 300 * 1024];

impl FrameSpec {
    fn frame(&self) -> Frame<'_> {
        match self {
            FrameSpec::OpenUpstream(id, name) => Frame::Open {
                id: *id,
                target: Target::Upstream(name),
            },
            FrameSpec::OpenPort(id, port) => Frame::Open {
                id: *id,
                target: Target::Port(*port),
            },
            FrameSpec::Accept(id) => Frame::Accept { id: *id },
            FrameSpec::Data(id, len) => Frame::Data {
                id: *id,
                bytes: &DATA[..*len],
            },
            FrameSpec::Credit(id, bytes) => Frame::Credit {
                id: *id,
                bytes: *bytes,
            },
            FrameSpec::Fin(id) => Frame::Fin { id: *id },
            FrameSpec::Reset(id, code, reason) => Frame::Reset {
                id: *id,
                code: RESET_CODES[usize::from(*code) % RESET_CODES.len()],
                reason,
            },
        }
    }
}

/// Frames for a few small stream ids, so they hit the same streams often.
fn frame_spec(max_data: usize) -> impl Strategy<Value = FrameSpec> {
    let id = 0u32..8;
    let len = prop_oneof![
        6 => 0usize..2048,
        2 => 0usize..=max_data,
        1 => Just(INITIAL_WINDOW as usize),
        1 => Just(INITIAL_WINDOW as usize + 1),
    ];
    let credit = prop_oneof![
        3 => 0u32..70_000,
        1 => any::<u32>(),
        1 => Just(INITIAL_WINDOW),
    ];
    prop_oneof![
        3 => (id.clone(), text(20)).prop_map(|(i, s)| FrameSpec::OpenUpstream(i, s)),
        3 => (id.clone(), any::<u16>()).prop_map(|(i, p)| FrameSpec::OpenPort(i, p)),
        2 => id.clone().prop_map(FrameSpec::Accept),
        4 => (id.clone(), len).prop_map(|(i, n)| FrameSpec::Data(i, n)),
        2 => (id.clone(), credit).prop_map(|(i, c)| FrameSpec::Credit(i, c)),
        2 => id.clone().prop_map(FrameSpec::Fin),
        1 => (id, any::<u8>(), text(250)).prop_map(|(i, c, r)| FrameSpec::Reset(i, c, r)),
        // An id far from the small ones, at the edge of the type.
        1 => Just(FrameSpec::Fin(u32::MAX)),
    ]
}

/// What happens to a mux: a frame from the peer, or the application or
/// session doing its part.
#[derive(Debug, Clone)]
enum MuxOp {
    Frame(FrameSpec),
    /// The session packs what the mux wants to send.
    Fill,
    /// The application reads stream `id` dry.
    Read(u32),
    Accept(u32),
    Write(u32, usize),
    Shutdown(u32),
    Release(u32),
    Open,
    /// The peer lost the session.
    ResetAll,
}

fn mux_op() -> impl Strategy<Value = MuxOp> {
    let id = 0u32..8;
    prop_oneof![
        12 => frame_spec(DATA.len()).prop_map(MuxOp::Frame),
        2 => Just(MuxOp::Fill),
        2 => id.clone().prop_map(MuxOp::Read),
        1 => id.clone().prop_map(MuxOp::Accept),
        1 => (id.clone(), 0usize..70_000).prop_map(|(i, n)| MuxOp::Write(i, n)),
        1 => id.clone().prop_map(MuxOp::Shutdown),
        1 => id.prop_map(MuxOp::Release),
        1 => Just(MuxOp::Open),
        1 => Just(MuxOp::ResetAll),
    ]
}

fn drain_fill(mux: &mut Mux) {
    // Each round sends something or stops, so this ends.
    for _ in 0..10_000 {
        if !mux.wants_to_send() {
            return;
        }
        let mut batch = BatchWriter::new(BatchHeader {
            sender: 1,
            lane: 0,
            seq: 1,
        });
        mux.fill(&mut batch, 64 * 1024, None);
        let bytes = batch.finish();
        let (_, frames) = read_batch(&bytes).expect("our own batch decodes");
        for f in frames {
            f.expect("our own frame decodes");
        }
    }
    panic!("fill never drained the mux");
}

fn run_mux(side: Side, max_streams: usize, ops: &[MuxOp]) {
    let mut mux = Mux::new(side, max_streams);
    let mut buf = vec![0u8; 64 * 1024];
    for op in ops {
        match op {
            MuxOp::Frame(f) => mux.handle(f.frame(), 1),
            MuxOp::Fill => drain_fill(&mut mux),
            MuxOp::Read(id) => {
                while let Ok(n) = mux.read(*id, &mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = mux.at_eof(*id);
            }
            MuxOp::Accept(id) => mux.accept(*id),
            MuxOp::Write(id, n) => {
                let _ = mux.write(*id, &DATA[..*n]);
            }
            MuxOp::Shutdown(id) => {
                let _ = mux.shutdown(*id);
            }
            MuxOp::Release(id) => mux.release(*id),
            MuxOp::Open => {
                let target = match side {
                    Side::Edge => OwnedTarget::Upstream("kube-apiserver".into()),
                    Side::Hub => OwnedTarget::Port(10250),
                };
                let _ = mux.open(target);
            }
            MuxOp::ResetAll => mux.reset_all(ResetCode::SessionLost, "test"),
        }
        assert!(
            mux.len() <= mux.max_streams(),
            "{} streams held, limit {}",
            mux.len(),
            mux.max_streams()
        );
        while mux.poll_event().is_some() {}
    }
    drain_fill(&mut mux);
}

// ---------------------------------------------------------------------------
// Sessions.

fn hub_session(cfg: Config, now: Instant) -> Session {
    let mut s = Session::new(Side::Hub, node(), cfg, 22);
    s.hub_accept(now, 60, false);
    let _ = s.transmit(now);
    s
}

fn small_config() -> Config {
    Config {
        max_packet: 4096,
        max_streams: 4,
        ..Config::default()
    }
}

/// Feeds `chunks` to a hub session; after an error the connection is
/// dropped and a new one attached, as the hub does. Never panics.
fn feed_hub(chunks: &[Vec<u8>]) {
    let mut now = Instant::now();
    let mut s = hub_session(small_config(), now);
    for chunk in chunks {
        now += Duration::from_millis(10);
        if s.handle_input(now, chunk).is_err() {
            s.disconnected();
            s.hub_accept(now, 30, true);
        }
        let _ = s.transmit(now);
        let _ = s.handle_timeout(now);
        while s.poll_event().is_some() {}
        while s.mux().poll_event().is_some() {}
        assert!(s.mux().len() <= s.mux().max_streams());
    }
}

/// A batch payload of `frames` from sender `sender`, number `seq`.
fn batch(sender: u32, seq: u64, frames: &[FrameSpec]) -> Vec<u8> {
    let mut w = BatchWriter::new(BatchHeader {
        sender,
        lane: 0,
        seq,
    });
    for f in frames {
        w.push(&f.frame());
    }
    w.finish()
}

fn publish_bytes(topic: &str, qos1: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    mqtt::encode(
        &Packet::Publish(Publish {
            dup: false,
            qospid: qos1.map_or(QosPid::AtMostOnce, |p| QosPid::AtLeastOnce(pid_of(p))),
            retain: false,
            topic_name: topic,
            payload,
        }),
        &mut out,
    )
    .expect("encode publish");
    out
}

/// Well-formed MQTT a hostile but authenticated edge might send.
#[derive(Debug, Clone)]
enum HubInput {
    /// A PUBLISH to the node's own topic with a batch of frames.
    Batch {
        sender: u32,
        seq: u64,
        qos1: Option<u16>,
        frames: Vec<FrameSpec>,
    },
    /// A PUBLISH to its own topic whose payload is noise.
    Noise {
        seed: u64,
        len: usize,
    },
    Pingreq,
    Puback(u16),
    Subscribe(bool),
    /// Time passes (keepalive).
    Wait(u64),
}

fn hub_input() -> impl Strategy<Value = HubInput> {
    prop_oneof![
        6 => (
            0u32..3,
            0u64..6,
            proptest::option::of(any::<u16>()),
            proptest::collection::vec(frame_spec(64 * 1024), 0..6),
        )
            .prop_map(|(sender, seq, qos1, frames)| HubInput::Batch {
                sender,
                seq,
                qos1,
                frames
            }),
        1 => (any::<u64>(), 0usize..600).prop_map(|(seed, len)| HubInput::Noise { seed, len }),
        1 => Just(HubInput::Pingreq),
        1 => any::<u16>().prop_map(HubInput::Puback),
        1 => any::<bool>().prop_map(HubInput::Subscribe),
        1 => (0u64..200_000).prop_map(HubInput::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    // -- mqtt ---------------------------------------------------------------

    #[test]
    fn decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096), limit in 0usize..8192) {
        let header = mqtt::peek_header(&bytes, limit);
        if let Ok(Some((_, used))) = mqtt::decode(&bytes, limit) {
            prop_assert!(used <= bytes.len());
            // A packet is exactly what its fixed header announced.
            let (head, rest) = header.expect("header of a packet").expect("whole header");
            prop_assert_eq!(used, head + rest);
            prop_assert!(rest <= limit);
        }
    }

    #[test]
    fn decode_arbitrary_bytes_behind_valid_headers(first in any::<u8>().prop_filter("valid", |b| valid_header_byte(*b)), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        // Random bodies are mostly rejected at the first byte otherwise; a
        // header that announces exactly the body gets them to the field checks.
        let mut bytes = vec![first];
        let mut len = body.len();
        loop {
            let b = (len % 128) as u8;
            len /= 128;
            if len == 0 {
                bytes.push(b);
                break;
            }
            bytes.push(b | 0x80);
        }
        bytes.extend_from_slice(&body);
        if let Ok(Some((_, used))) = mqtt::decode(&bytes, 1 << 20) {
            prop_assert_eq!(used, bytes.len());
        }
        let _ = mqtt::check(first, &body);
    }

    #[test]
    fn valid_packets_roundtrip(spec in spec(), other in spec()) {
        let bytes = spec.bytes();
        let (back, used) = mqtt::decode(&bytes, 1 << 20)
            .expect("decodes")
            .expect("whole");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, spec.packet());
        // Two packets back to back: the first is taken, the rest is left.
        let mut two = bytes.clone();
        two.extend_from_slice(&other.bytes());
        let (first, used) = mqtt::decode(&two, 1 << 20).expect("decodes").expect("whole");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(first, spec.packet());
        let (second, used2) = mqtt::decode(&two[used..], 1 << 20).expect("decodes").expect("whole");
        prop_assert_eq!(used + used2, two.len());
        prop_assert_eq!(second, other.packet());
        // A limit below the packet's size refuses it from the header alone.
        let (head, rest) = mqtt::peek_header(&bytes, 1 << 20).expect("header").expect("whole header");
        prop_assert_eq!(head + rest, bytes.len());
        if rest > 0 {
            prop_assert!(
                matches!(
                    mqtt::decode(&bytes[..head], rest - 1),
                    Err(mqtt::DecodeError::TooLarge { .. })
                ),
                "limit not applied"
            );
        }
    }

    #[test]
    fn strict_prefixes_wait(spec in spec()) {
        let bytes = spec.bytes();
        for cut in 0..bytes.len() {
            prop_assert_eq!(mqtt::decode(&bytes[..cut], 1 << 20), Ok(None), "prefix of {} bytes", cut);
        }
    }

    #[test]
    fn flipped_bytes_do_not_panic(spec in spec(), flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8)) {
        let mut bytes = spec.bytes();
        for (at, mask) in flips {
            let i = at % bytes.len();
            bytes[i] ^= mask;
        }
        if let Ok(Some((_, used))) = mqtt::decode(&bytes, 1 << 20) {
            prop_assert!(used <= bytes.len());
        }
        if let Ok(Some((_, used))) = read_connect(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        // And with a truncated tail, as a packet cut by the network.
        let half = &bytes[..bytes.len() / 2];
        let _ = mqtt::decode(half, 1 << 20);
        let _ = read_connect(half);
    }

    // -- frames -------------------------------------------------------------

    #[test]
    fn read_batch_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok((_, frames)) = read_batch(&bytes) {
            let mut n = 0usize;
            for f in frames {
                n += 1;
                // Every frame takes at least one byte: iteration ends.
                prop_assert!(n <= bytes.len(), "more frames than bytes");
                if let Ok(f) = f {
                    let _ = f.id();
                }
            }
        }
    }

    #[test]
    fn batches_roundtrip(sender in any::<u32>(), seq in any::<u64>(), frames in proptest::collection::vec(frame_spec(20_000), 0..12), flip in any::<(usize, u8)>()) {
        let bytes = batch(sender, seq, &frames);
        let (header, it) = read_batch(&bytes).expect("header");
        prop_assert_eq!(header, BatchHeader { sender, lane: 0, seq });
        let back: Vec<Frame<'_>> = it.collect::<Result<_, _>>().expect("frames");
        let want: Vec<Frame<'_>> = frames.iter().map(FrameSpec::frame).collect();
        prop_assert_eq!(back, want);
        // A damaged batch may decode to something else, but never panics.
        let mut bad = bytes.clone();
        let i = flip.0 % bad.len();
        bad[i] ^= flip.1 | 1;
        if let Ok((_, it)) = read_batch(&bad) {
            prop_assert!(it.take(bad.len() + 1).count() <= bad.len());
        }
        if let Ok((_, it)) = read_batch(&bytes[..bytes.len() / 2]) {
            prop_assert!(it.count() <= bytes.len());
        }
    }

    // -- accept -------------------------------------------------------------

    #[test]
    fn read_connect_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(Some((hello, used))) = read_connect(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert!(used <= MAX_CONNECT + 5);
            let _ = hello.node.up();
        }
        // Behind a genuine CONNECT header, so the body is what gets checked.
        let mut connect = vec![0x10, bytes.len().min(127) as u8];
        connect.extend_from_slice(&bytes[..bytes.len().min(127)]);
        if let Ok(Some((_, used))) = read_connect(&connect) {
            prop_assert_eq!(used, connect.len());
        }
    }

    #[test]
    fn read_connect_takes_valid_connects(name in "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?", token in "[!-~]{16,64}", clean in any::<bool>(), keep_alive in any::<u16>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = Vec::new();
        mqtt::encode(&Packet::Connect(Connect {
            protocol: Protocol::MQTT311,
            keep_alive,
            client_id: &name,
            clean_session: clean,
            last_will: None,
            username: Some(&name),
            password: Some(token.as_bytes()),
        }), &mut bytes).expect("encode");
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        let (hello, used) = read_connect(&bytes).expect("valid").expect("whole");
        prop_assert_eq!(used, len);
        prop_assert_eq!(hello.node.as_str(), name.as_str());
        prop_assert_eq!(hello.username.as_deref(), Some(name.as_str()));
        prop_assert_eq!(hello.password.as_deref(), Some(token.as_bytes()));
        prop_assert_eq!(hello.clean_session, clean);
        prop_assert_eq!(hello.keep_alive, keep_alive);
        for cut in 0..len {
            prop_assert_eq!(read_connect(&bytes[..cut]), Ok(None));
        }
    }

    // -- session ------------------------------------------------------------

    #[test]
    fn hub_session_takes_arbitrary_chunks(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..12)) {
        feed_hub(&chunks);
    }

    #[test]
    fn hub_session_errors_on_a_bad_header_within_one_packet(
        first in proptest::sample::select(invalid_header_bytes()),
        seed in any::<u64>(),
        cuts in proptest::collection::vec(1usize..1500, 1..40),
    ) {
        let cfg = small_config();
        let bound = cfg.max_packet + 5;
        let mut now = Instant::now();
        let mut s = hub_session(cfg, now);
        let mut garbage = vec![0u8; bound];
        XorShift::new(seed).fill(&mut garbage);
        garbage[0] = first;
        let mut fed = 0;
        let mut cuts = cuts.iter().cycle();
        let mut failed = false;
        while fed < garbage.len() {
            let n = (*cuts.next().expect("cycle")).min(garbage.len() - fed);
            now += Duration::from_millis(1);
            if s.handle_input(now, &garbage[fed..fed + n]).is_err() {
                failed = true;
                break;
            }
            fed += n;
        }
        prop_assert!(failed, "no error after {} bytes of garbage starting with {:#04x}", fed, first);
    }

    #[test]
    fn hub_session_refuses_a_megabyte_of_noise(seed in any::<u64>(), cuts in proptest::collection::vec(1usize..65536, 1..16)) {
        // Default limits: 128 KiB packets. A session that has not refused
        // 1 MiB of noise would be buffering far beyond one packet.
        let mut now = Instant::now();
        let mut s = hub_session(Config::default(), now);
        let mut rng = XorShift::new(seed);
        let mut chunk = vec![0u8; 65536];
        let mut fed = 0usize;
        let mut cuts = cuts.iter().cycle();
        let mut failed = false;
        while fed < 1 << 20 {
            let n = *cuts.next().expect("cycle");
            rng.fill(&mut chunk[..n]);
            now += Duration::from_millis(1);
            if s.handle_input(now, &chunk[..n]).is_err() {
                failed = true;
                break;
            }
            fed += n;
        }
        prop_assert!(failed, "1 MiB of noise accepted");
    }

    #[test]
    fn hub_session_survives_hostile_but_valid_mqtt(inputs in proptest::collection::vec(hub_input(), 0..24)) {
        let up = node().up();
        let mut now = Instant::now();
        // Packets large enough for a Data frame beyond one window.
        let cfg = Config { max_packet: 512 * 1024, ..small_config() };
        let mut s = hub_session(cfg, now);
        for input in &inputs {
            let bytes = match input {
                HubInput::Batch { sender, seq, qos1, frames } => {
                    publish_bytes(&up, *qos1, &batch(*sender, *seq, frames))
                }
                HubInput::Noise { seed, len } => {
                    let mut payload = vec![0u8; *len];
                    XorShift::new(*seed).fill(&mut payload);
                    publish_bytes(&up, None, &payload)
                }
                HubInput::Pingreq => vec![0xc0, 0],
                HubInput::Puback(p) => {
                    let mut out = Vec::new();
                    mqtt::encode(&Packet::Puback(pid_of(*p)), &mut out).expect("encode");
                    out
                }
                HubInput::Subscribe(own) => {
                    let topic = if *own { node().down() } else { "tether/other/down".into() };
                    let mut out = Vec::new();
                    mqtt::encode(&Packet::Subscribe(Subscribe {
                        pid: pid_of(1),
                        topics: vec![SubscribeTopic { topic_path: topic, qos: QoS::AtLeastOnce }],
                    }), &mut out).expect("encode");
                    out
                }
                HubInput::Wait(ms) => {
                    now += Duration::from_millis(*ms);
                    if s.handle_timeout(now).is_err() {
                        s.disconnected();
                        s.hub_accept(now, 60, true);
                    }
                    continue;
                }
            };
            // Sometimes split in two, as TCP may deliver it.
            let mid = bytes.len() / 3;
            let result = s
                .handle_input(now, &bytes[..mid])
                .and_then(|()| s.handle_input(now, &bytes[mid..]));
            if result.is_err() {
                s.disconnected();
                s.hub_accept(now, 60, true);
            }
            let _ = s.transmit(now);
            while s.poll_event().is_some() {}
            while s.mux().poll_event().is_some() {}
            prop_assert!(s.mux().len() <= s.mux().max_streams());
            prop_assert!(s.inflight() <= 16);
        }
    }

    #[test]
    fn edge_session_takes_arbitrary_chunks(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8), connack_first in any::<bool>()) {
        let mut now = Instant::now();
        let mut s = Session::new(Side::Edge, node(), small_config(), 11);
        s.edge_connect(now, Some("edge-1"), Some(b"token-token-token"));
        let _ = s.transmit(now);
        if connack_first {
            s.handle_input(now, &[0x20, 2, 0, 0]).expect("connack");
        }
        for chunk in &chunks {
            now += Duration::from_millis(10);
            if s.handle_input(now, chunk).is_err() {
                s.disconnected();
                s.edge_connect(now, None, None);
            }
            let _ = s.transmit(now);
            let _ = s.handle_timeout(now);
            while s.poll_event().is_some() {}
            prop_assert!(s.mux().len() <= s.mux().max_streams());
        }
    }

    // -- mux ----------------------------------------------------------------

    #[test]
    fn edge_mux_takes_arbitrary_frames(ops in proptest::collection::vec(mux_op(), 0..40), max_streams in 1usize..5) {
        run_mux(Side::Edge, max_streams, &ops);
    }

    #[test]
    fn hub_mux_takes_arbitrary_frames(ops in proptest::collection::vec(mux_op(), 0..40), max_streams in 1usize..5) {
        run_mux(Side::Hub, max_streams, &ops);
    }
}

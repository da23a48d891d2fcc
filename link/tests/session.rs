//! Every session path without sockets: an edge and a hub session joined by
//! an in-memory wire that can lose bytes, with a clock the test moves.

use std::time::{Duration, Instant};
use tether_link::accept::read_connect;
use tether_link::frame::ResetCode;
use tether_link::mqtt::{self, Packet, Pid, QosPid};
use tether_link::mux::{OwnedTarget, Side, StreamEvent};
use tether_link::session::{Config, Event, Session};
use tether_link::topic::NodeName;
use tether_link::LinkError;

struct Pair {
    edge: Session,
    hub: Session,
    now: Instant,
}

fn node() -> NodeName {
    NodeName::new("edge-1").expect("node name")
}

impl Pair {
    fn new(cfg: Config) -> Pair {
        Pair {
            edge: Session::new(Side::Edge, node(), cfg.clone(), 11),
            hub: Session::new(Side::Hub, node(), cfg, 22),
            now: Instant::now(),
        }
    }

    /// Connects (or reconnects) the edge; `resumed` is what the hub knows.
    fn connect(&mut self, resumed: bool) -> bool {
        self.edge.edge_connect(self.now, None, None);
        let bytes = self.edge.transmit(self.now);
        let (hello, used) = read_connect(&bytes).expect("connect").expect("whole");
        assert_eq!(hello.node, node());
        self.hub.hub_accept(self.now, hello.keep_alive, resumed);
        self.hub
            .handle_input(self.now, &bytes[used..])
            .expect("subscribe");
        self.pump();
        hello.clean_session
    }

    /// Moves bytes both ways until both sides are quiet.
    fn pump(&mut self) {
        loop {
            let a = self.edge.transmit(self.now);
            let b = self.hub.transmit(self.now);
            if a.is_empty() && b.is_empty() {
                return;
            }
            self.hub.handle_input(self.now, &a).expect("hub input");
            self.edge.handle_input(self.now, &b).expect("edge input");
        }
    }

    fn cut(&mut self) {
        self.edge.disconnected();
        self.hub.disconnected();
    }
}

fn drain_events(s: &mut Session) -> Vec<StreamEvent> {
    std::iter::from_fn(|| s.mux().poll_event()).collect()
}

fn read_all(s: &mut Session, id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.mux().read(id, &mut buf).expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn first_connect_is_clean_reconnects_resume() {
    let mut p = Pair::new(Config::default());
    assert!(p.connect(false), "a fresh edge has nothing to resume");
    assert!(p.edge.is_up() && p.hub.is_up());
    p.cut();
    assert!(!p.connect(true), "a reconnect asks to resume");
    assert!(matches!(
        p.edge.poll_event(),
        Some(Event::Up { resumed: false, .. })
    ));
    assert!(matches!(
        p.edge.poll_event(),
        Some(Event::Up { resumed: true, .. })
    ));
}

#[test]
fn stream_round_trip() {
    let mut p = Pair::new(Config::default());
    p.connect(false);
    let id = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("kube-apiserver".into()))
        .expect("open");
    p.edge.mux().write(id, b"GET /healthz").expect("write");
    p.edge.mux().shutdown(id).expect("fin");
    p.pump();
    assert_eq!(
        drain_events(&mut p.hub)[0],
        StreamEvent::Incoming {
            id,
            target: OwnedTarget::Upstream("kube-apiserver".into())
        }
    );
    assert_eq!(read_all(&mut p.hub, id), b"GET /healthz");
    assert!(p.hub.mux().at_eof(id));
    p.hub.mux().accept(id);
    p.hub.mux().write(id, b"ok").expect("write");
    p.hub.mux().shutdown(id).expect("fin");
    p.pump();
    assert_eq!(read_all(&mut p.edge, id), b"ok");
    assert!(p.edge.mux().at_eof(id));
}

/// Data written before a cut whose bytes never arrived is resent after the
/// reconnect, and arrives once, in order.
#[test]
fn lost_publishes_are_resent_once_in_order() {
    let mut p = Pair::new(Config::default());
    p.connect(false);
    let id = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("x".into()))
        .expect("open");
    let mut sent = Vec::new();
    for i in 0..50u32 {
        let chunk = format!("chunk {i};");
        p.edge.mux().write(id, chunk.as_bytes()).expect("write");
        sent.extend_from_slice(chunk.as_bytes());
        if i % 10 == 9 {
            // Some batches go out and vanish on the wire.
            let _lost = p.edge.transmit(p.now);
        }
    }
    assert!(p.edge.inflight() > 0);
    p.cut();
    p.connect(true);
    assert_eq!(read_all(&mut p.hub, id), sent);
    assert_eq!(p.edge.inflight(), 0);
}

/// Publishes that arrived but whose PUBACKs were lost come again with DUP;
/// the receiver drops them, so the application sees them once.
#[test]
fn lost_acks_do_not_duplicate() {
    let mut p = Pair::new(Config::default());
    p.connect(false);
    let id = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("x".into()))
        .expect("open");
    p.edge.mux().write(id, b"exactly once").expect("write");
    let bytes = p.edge.transmit(p.now);
    p.hub.handle_input(p.now, &bytes).expect("input");
    let _lost_acks = p.hub.transmit(p.now);
    assert_eq!(p.edge.inflight(), 1);
    p.cut();
    p.connect(true);
    assert_eq!(p.edge.resent_total(), 1);
    assert_eq!(read_all(&mut p.hub, id), b"exactly once");
    assert_eq!(p.edge.inflight(), 0);
}

#[test]
fn hub_restart_resets_streams() {
    let mut p = Pair::new(Config::default());
    p.connect(false);
    let id = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("x".into()))
        .expect("open");
    let epoch = p.edge.mux().epoch();
    p.pump();
    p.cut();
    p.hub = Session::new(Side::Hub, node(), Config::default(), 33);
    p.connect(false);
    let events: Vec<_> = std::iter::from_fn(|| p.edge.poll_event()).collect();
    assert!(events.contains(&Event::SessionLost), "{events:?}");
    assert!(matches!(
        p.edge.mux().lost(id, epoch),
        Some(tether_link::mux::StreamError::Reset {
            code: ResetCode::SessionLost,
            ..
        })
    ));
    // New streams work on the new session.
    let id2 = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("x".into()))
        .expect("open");
    p.edge.mux().write(id2, b"new").expect("write");
    p.pump();
    assert_eq!(read_all(&mut p.hub, id2), b"new");
}

#[test]
fn keepalive_pings_and_detects_black_hole() {
    let cfg = Config {
        keepalive: Duration::from_secs(10),
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    p.connect(false);
    let start = p.now;
    // Idle: a ping at 10 s, answered; nothing else.
    assert_eq!(p.edge.poll_timeout(), Some(start + Duration::from_secs(10)));
    p.now = start + Duration::from_secs(10);
    p.edge.handle_timeout(p.now).expect("timeout");
    let ping = p.edge.transmit(p.now);
    assert_eq!(ping, [0xc0, 0x00]);
    p.hub.handle_input(p.now, &ping).expect("ping");
    let pong = p.hub.transmit(p.now);
    assert_eq!(pong, [0xd0, 0x00]);
    p.edge.handle_input(p.now, &pong).expect("pong");
    // Black hole from 10 s on: the next ping at 20 s is never answered.
    p.now = start + Duration::from_secs(20);
    p.edge.handle_timeout(p.now).expect("ping");
    let _swallowed = p.edge.transmit(p.now);
    let deadline = p.edge.poll_timeout().expect("deadline");
    assert_eq!(deadline, start + Duration::from_secs(25));
    p.now = deadline;
    assert!(matches!(
        p.edge.handle_timeout(p.now),
        Err(LinkError::KeepaliveTimeout { .. })
    ));
    // The hub gives up after 1.5 x keepalive of silence too.
    assert_eq!(p.hub.poll_timeout(), Some(start + Duration::from_secs(25)));
    assert!(p.hub.handle_timeout(p.now).is_err());
}

#[test]
fn foreign_topic_and_subscription_are_refused() {
    let mut p = Pair::new(Config::default());
    p.connect(false);
    let mut bytes = Vec::new();
    mqtt::encode(
        &Packet::Subscribe(mqtt::Subscribe {
            pid: Pid::try_from(9).expect("pid"),
            topics: vec![mqtt::SubscribeTopic {
                topic_path: "tether/edge-2/down".into(),
                qos: mqtt::QoS::AtLeastOnce,
            }],
        }),
        &mut bytes,
    )
    .expect("encode");
    p.hub.handle_input(p.now, &bytes).expect("subscribe");
    let answer = p.hub.transmit(p.now);
    assert_eq!(answer, [0x90, 3, 0, 9, 0x80], "SUBACK with failure");
    assert_eq!(
        p.hub
            .poll_event()
            .into_iter()
            .chain(p.hub.poll_event())
            .last(),
        Some(Event::ForeignSubscribe {
            topic: "tether/edge-2/down".into()
        })
    );
    bytes.clear();
    mqtt::encode(
        &Packet::Publish(mqtt::Publish {
            dup: false,
            qospid: QosPid::AtLeastOnce(Pid::try_from(3).expect("pid")),
            retain: false,
            topic_name: "tether/edge-2/up",
            payload: b"",
        }),
        &mut bytes,
    )
    .expect("encode");
    assert!(matches!(
        p.hub.handle_input(p.now, &bytes),
        Err(LinkError::ForeignTopic { .. })
    ));
}

#[test]
fn inflight_limit_applies_back_pressure() {
    let cfg = Config {
        max_inflight: 2,
        max_batch: 1024,
        ..Config::default()
    };
    let mut p = Pair::new(cfg);
    p.connect(false);
    let id = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("x".into()))
        .expect("open");
    let data = vec![1u8; 100_000];
    let n = p.edge.mux().write(id, &data).expect("write");
    let _unacked = p.edge.transmit(p.now);
    assert_eq!(p.edge.inflight(), 2);
    assert!(!p.edge.wants_to_transmit());
    p.cut();
    p.connect(true);
    assert_eq!(read_all(&mut p.hub, id).len(), n);
}

#[test]
fn bytes_split_anywhere_decode_the_same() {
    let mut p = Pair::new(Config::default());
    p.connect(false);
    let id = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("x".into()))
        .expect("open");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut written = 0;
    let mut got = Vec::new();
    while got.len() < data.len() {
        written += p.edge.mux().write(id, &data[written..]).expect("write");
        let bytes = p.edge.transmit(p.now);
        // Feed in odd-sized pieces, as TCP may.
        for piece in bytes.chunks(7_777) {
            p.hub.handle_input(p.now, piece).expect("input");
        }
        got.extend(read_all(&mut p.hub, id));
        let back = p.hub.transmit(p.now);
        p.edge.handle_input(p.now, &back).expect("acks");
    }
    assert_eq!(got, data);
}

/// A bulk stream fills a 1 MB/s path with a 1 ms base delay each way;
/// from three seconds in, other streams send a small request every 137 ms
/// (so they meet the bulk transfer in every phase). Returns the longest a
/// request took to reach the hub, and the bulk rate the hub received.
fn requests_behind_bulk(cfg: Config) -> (Duration, f64) {
    const RATE: f64 = 1e6;
    const REQUEST: &[u8] = b"GET /api/v1/namespaces/default/pods/web";
    let base = Duration::from_millis(1);
    let mut p = Pair::new(cfg);
    p.connect(false);
    let bulk = p
        .edge
        .mux()
        .open(OwnedTarget::Upstream("bulk".into()))
        .expect("open");
    let start = p.now;
    let mut asks: std::collections::VecDeque<Instant> = (0..40)
        .map(|k| start + Duration::from_secs(3) + Duration::from_millis(137) * k)
        .collect();
    let end = start + Duration::from_secs(10);
    // (stream, asked at, known to the hub, bytes the hub read)
    let mut waiting: Vec<(u32, Instant, bool, Vec<u8>)> = Vec::new();
    let mut longest = Duration::ZERO;
    let mut up: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut down: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut link_free = start;
    let mut bulk_bytes = 0;
    let mut bulk_known = false;
    let chunk = vec![7u8; 64 * 1024];
    while p.now < end {
        while p.edge.mux().writable(bulk) && p.edge.mux().write(bulk, &chunk).expect("write") > 0 {}
        if asks.front().is_some_and(|at| *at <= p.now) {
            asks.pop_front();
            let id = p
                .edge
                .mux()
                .open(OwnedTarget::Upstream("api".into()))
                .expect("open");
            assert_eq!(
                p.edge.mux().write(id, REQUEST).expect("write"),
                REQUEST.len()
            );
            waiting.push((id, p.now, false, Vec::new()));
        }
        let out = p.edge.transmit(p.now);
        // Bytes arrive as the path carries them, a kilobyte at a time, as
        // TCP would deliver them: not whole writes at once.
        for piece in out.chunks(1024) {
            let begin = link_free.max(p.now);
            link_free = begin + Duration::from_secs_f64(piece.len() as f64 / RATE);
            up.push_back((link_free + base, piece.to_vec()));
        }
        let acks = p.hub.transmit(p.now);
        if !acks.is_empty() {
            down.push_back((p.now + base, acks));
        }
        let next_up = up.front().map(|(at, _)| *at);
        let next_down = down.front().map(|(at, _)| *at);
        let next_ask = asks.front().copied();
        let Some(next) = [next_up, next_down, next_ask].into_iter().flatten().min() else {
            panic!("the simulated link went quiet");
        };
        p.now = next;
        if next_up == Some(next) {
            let (_, bytes) = up.pop_front().expect("up");
            p.hub.handle_input(p.now, &bytes).expect("hub input");
            for ev in drain_events(&mut p.hub) {
                if let StreamEvent::Incoming { id, .. } = ev {
                    p.hub.mux().accept(id);
                    bulk_known |= id == bulk;
                    if let Some(w) = waiting.iter_mut().find(|w| w.0 == id) {
                        w.2 = true;
                    }
                }
            }
            for (id, asked, _, got) in waiting.iter_mut().filter(|w| w.2) {
                got.extend(read_all(&mut p.hub, *id));
                if got.len() == REQUEST.len() {
                    assert_eq!(got, REQUEST);
                    longest = longest.max(p.now - *asked);
                }
            }
            waiting.retain(|w| w.3.len() < REQUEST.len());
            if bulk_known {
                bulk_bytes += read_all(&mut p.hub, bulk).len();
            }
        } else if next_down == Some(next) {
            let (_, bytes) = down.pop_front().expect("down");
            p.edge.handle_input(p.now, &bytes).expect("edge input");
        }
    }
    assert!(
        waiting.is_empty() && asks.is_empty(),
        "requests left behind: {:?}",
        waiting
            .iter()
            .map(|w| (w.0, w.1 - start, w.2, w.3.len()))
            .collect::<Vec<_>>()
    );
    (longest, bulk_bytes as f64 / (p.now - start).as_secs_f64())
}

/// The pacer keeps the queue a bulk stream builds short, so requests on
/// other streams wait tens of milliseconds, not the quarter second a full
/// stream window (256 KiB at 1 MB/s) holds them; the bulk keeps the rate.
/// The same run without pacing shows the test can tell the difference.
#[test]
fn bulk_on_a_slow_path_leaves_room_for_requests() {
    let (paced, rate) = requests_behind_bulk(Config::default());
    let unpaced = Config {
        queue_delay: Duration::ZERO,
        ..Config::default()
    };
    let (fixed, fixed_rate) = requests_behind_bulk(unpaced);
    eprintln!("longest request wait {paced:?} paced, {fixed:?} unpaced; bulk {rate:.0} B/s paced, {fixed_rate:.0} B/s unpaced");
    assert!(paced < Duration::from_millis(45), "paced: {paced:?}");
    assert!(rate > 0.95e6, "paced bulk rate {rate}");
    assert!(fixed > Duration::from_millis(150), "unpaced: {fixed:?}");
}

//! The link session: one node's MQTT session with its peer, sans IO.
//!
//! It owns what must survive a dropped TCP connection (the QoS 1 publishes
//! not yet acknowledged, the sequence numbers that make delivery exactly once,
//! the streams) and, while a connection is up, that connection's state (the
//! partial packet being received, keepalive timers).
//!
//! Methods only change state and append bytes to send; they never touch a
//! socket or a clock. The IO loop feeds received bytes to
//! [`Session::handle_input`], calls [`Session::handle_timeout`] when
//! [`Session::poll_timeout`] says, and writes out [`Session::transmit`].
//!
//! Delivery promise: every frame handed to the mux reaches the peer's mux
//! exactly once and in order, across any number of reconnects, for as long as
//! the peer keeps the session. If the peer lost it (it restarted), every
//! stream is reset with [`ResetCode::SessionLost`]: nothing is silently
//! dropped or replayed into a new session.

use crate::frame::{read_batch, BatchHeader, BatchWriter, ResetCode};
use crate::mqtt::{self, Connack, Connect, ConnectReturnCode, Packet, Pid, Protocol, QoS, QosPid};
use crate::mux::{Mux, Route, Side};
use crate::pace::{Pacer, Stamp, FLOOR};
use crate::topic::NodeName;
use crate::LinkError;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits and timings of a session. Every queue and buffer is bounded by one
/// of these.
#[derive(Debug, Clone)]
pub struct Config {
    /// Edge: a PINGREQ goes out after this long without receiving or sending;
    /// the link is declared dead after 1.5 times this without receiving.
    /// Hub: a link silent for 1.5 times the keepalive the edge announced is
    /// dropped.
    pub keepalive: Duration,
    /// Largest packet accepted from the peer (remaining length, bytes).
    pub max_packet: usize,
    /// Largest batch payload this side puts into one PUBLISH.
    pub max_batch: usize,
    /// Most QoS 1 publishes sent and not yet acknowledged. When reached, the
    /// mux keeps its frames and writers wait for credit: back-pressure.
    pub max_inflight: usize,
    /// Most streams open at once on this link.
    pub max_streams: usize,
    /// Queue delay the in-flight byte window aims at on a slow path, so one
    /// bulk stream cannot hold every other stream's frames back for long
    /// (see [`crate::pace`]); zero: no pacing, only `max_inflight`.
    pub queue_delay: Duration,
    /// Edge behind a broker: route each stream to the hub replica that
    /// accepted it (see [`Mux::new_routed`]). Set by the program, not read
    /// from `[link]`.
    pub routed: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            keepalive: Duration::from_secs(60),
            max_packet: 256 * 1024,
            max_batch: 128 * 1024,
            max_inflight: 16,
            max_streams: 4096,
            queue_delay: Duration::from_millis(10),
            routed: false,
        }
    }
}

impl Config {
    /// Reads the session keys of a `[link]` table over the defaults,
    /// recording bad values in `errors`. Shared by edge and hub so both
    /// read the same keys the same way.
    pub fn read(table: &mut tether_conf::Table<'_>, errors: &mut tether_conf::Errors) -> Config {
        let d = Config::default();
        let mut size =
            |key: &str, default: usize, min: u64, max: u64| match errors.opt(table.bytes(key)) {
                Some(v) if v < min || v > max => {
                    errors.push(table.error(key, format!("must be between {min} and {max} bytes")));
                    default
                }
                Some(v) => v as usize,
                None => default,
            };
        let max_packet = size("max_packet", d.max_packet, 4096, 16 << 20);
        let max_batch = size("max_batch", d.max_batch, 1024, 16 << 20);
        // Both ends normally share these settings: a batch must fit the
        // packet limit with its MQTT header, topic and frame headers.
        if max_batch + crate::mux::BATCH_SLACK + 512 > max_packet {
            errors.push(table.error(
                "max_batch",
                "must be at least 576 bytes below max_packet (MQTT and frame headers)",
            ));
        }
        let mut count = |key: &str, default: usize, max: u64| match errors.opt(table.u64(key)) {
            Some(v) if v == 0 || v > max => {
                errors.push(table.error(key, format!("must be between 1 and {max}")));
                default
            }
            Some(v) => v as usize,
            None => default,
        };
        let max_inflight = count("max_inflight", d.max_inflight, 1024);
        let max_streams = count("max_streams", d.max_streams, 1 << 20);
        let keepalive = match errors.opt(table.duration("keepalive")) {
            Some(k)
                if k < Duration::from_secs(2)
                    || k > Duration::from_secs(65535)
                    || k.subsec_nanos() != 0 =>
            {
                errors.push(table.error(
                    "keepalive",
                    "must be whole seconds between 2s and 65535s (MQTT keepalive is in seconds)",
                ));
                d.keepalive
            }
            Some(k) => k,
            None => d.keepalive,
        };
        let queue_delay = match errors.opt(table.duration("queue_delay")) {
            Some(v) if v > Duration::from_secs(10) => {
                errors.push(table.error("queue_delay", "must be at most 10s (\"0s\": no pacing)"));
                d.queue_delay
            }
            Some(v) => v,
            None => d.queue_delay,
        };
        Config {
            keepalive,
            max_packet,
            max_batch,
            max_inflight,
            max_streams,
            queue_delay,
            routed: false,
        }
    }
}

/// Something the program should know about the session itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The link is up and carries frames. `resumed` says the peer still had
    /// our session: unacknowledged publishes were resent.
    Up { resumed: bool, resent: usize },
    /// The peer no longer had our session (it restarted): every stream was
    /// reset and queued frames were dropped.
    SessionLost,
    /// The edge subscribed to a topic that is not its own; the subscription
    /// was refused (hub side).
    ForeignSubscribe { topic: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Edge: CONNECT sent, waiting for CONNACK.
    AwaitConnack,
    /// Frames flow.
    Up,
}

/// State of the current TCP connection; gone when it drops.
#[derive(Debug)]
struct Conn {
    phase: Phase,
    rx: Vec<u8>,
    last_rx: Instant,
    last_tx: Instant,
    /// A PINGREQ is unanswered (edge).
    ping_pending: bool,
    /// Silence after which the hub drops the link; `None` for a session
    /// relayed through a broker, whose liveness is the broker's business.
    idle_limit: Option<Duration>,
}

#[derive(Debug)]
struct InFlight {
    pid: u16,
    packet: Vec<u8>,
    /// None once resent: its ack could be the first sending's or the
    /// second's, so it says nothing about the path.
    stamp: Option<Stamp>,
}

/// A publish never takes less room than this unless nothing else is in
/// flight: below it, waiting for an ack beats sending a sliver.
const MIN_BATCH: usize = FLOOR / 4;

/// Senders whose sequence numbers a receiver remembers (a hub and its
/// restarted self, or several hub replicas behind a broker).
const MAX_LANES: usize = 32;

/// One node's session, on the edge or on the hub.
#[derive(Debug)]
pub struct Session {
    side: Side,
    node: NodeName,
    up_topic: String,
    down_topic: String,
    cfg: Config,
    sender: u32,
    /// Next sequence number per lane (see [`BatchHeader::lane`]).
    next_seq: Vec<(u32, u64)>,
    /// Highest sequence number seen per (sender, lane), most recent last.
    seen: Vec<((u32, u32), u64)>,
    inflight: VecDeque<InFlight>,
    /// Bytes of the packets in `inflight`.
    inflight_bytes: usize,
    pacer: Pacer,
    next_pid: u16,
    mux: Mux,
    conn: Option<Conn>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// Edge: a CONNACK was received before, so there is a session to resume.
    established: bool,
    /// Hub: the session is relayed through a broker (see [`Session::hub_relayed`]).
    relayed: bool,
    /// Hub, relayed: the sender id of the edge process seen last.
    edge_sender: Option<u32>,
    resent_total: u64,
}

impl Session {
    /// A new session for `node`. `sender` must be random per process start
    /// (see [`BatchHeader::sender`]).
    pub fn new(side: Side, node: NodeName, cfg: Config, sender: u32) -> Session {
        Session {
            side,
            up_topic: node.up(),
            down_topic: node.down(),
            node,
            mux: {
                let mut mux = if cfg.routed {
                    Mux::new_routed(side, cfg.max_streams)
                } else {
                    Mux::new(side, cfg.max_streams)
                };
                if side == Side::Hub {
                    // Replicas behind one broker all open streams to the
                    // same edge: random starting points keep their ids apart.
                    mux.first_id(2 + 2 * (sender % (1 << 30)));
                }
                mux
            },
            pacer: Pacer::new(cfg.queue_delay, cfg.max_inflight * cfg.max_batch),
            cfg,
            sender,
            next_seq: Vec::new(),
            seen: Vec::new(),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            next_pid: 1,
            conn: None,
            out: Vec::new(),
            events: VecDeque::new(),
            established: false,
            relayed: false,
            edge_sender: None,
            resent_total: 0,
        }
    }

    /// The node this session belongs to.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The streams of this link.
    pub fn mux(&mut self) -> &mut Mux {
        &mut self.mux
    }

    /// Whether a connection is attached and frames flow.
    pub fn is_up(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.phase == Phase::Up)
    }

    /// Publishes sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Publishes resent after reconnects, over the session's life.
    pub fn resent_total(&self) -> u64 {
        self.resent_total
    }

    /// The next session event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Edge: a new TCP (or TLS) connection to the hub is ready. Queues
    /// CONNECT and SUBSCRIBE. The first connect of a process announces a clean
    /// session, since a fresh process has nothing to resume; every reconnect
    /// asks to resume (`clean_session = false`).
    pub fn edge_connect(&mut self, now: Instant, username: Option<&str>, password: Option<&[u8]>) {
        self.attach(now, Phase::AwaitConnack, None);
        let keep_alive = u16::try_from(self.cfg.keepalive.as_secs().max(1)).unwrap_or(u16::MAX);
        let connect = Packet::Connect(Connect {
            protocol: Protocol::MQTT311,
            keep_alive,
            client_id: self.node.as_str(),
            clean_session: !self.established,
            last_will: None,
            username,
            password,
        });
        encode(&mut self.out, &connect);
        let subscribe = Packet::Subscribe(mqtt::Subscribe {
            pid: pid(self.take_pid()),
            topics: vec![mqtt::SubscribeTopic {
                topic_path: self.down_topic.clone(),
                qos: QoS::AtLeastOnce,
            }],
        });
        encode(&mut self.out, &subscribe);
    }

    /// Hub: a CONNECT for this node was authenticated. Queues CONNACK and
    /// resends what the edge has not acknowledged. `resumed` says whether
    /// this session existed before (the caller keeps sessions by node).
    pub fn hub_accept(&mut self, now: Instant, keep_alive: u16, resumed: bool) {
        let idle_limit = if keep_alive == 0 {
            self.cfg.keepalive.mul_f32(1.5)
        } else {
            Duration::from_secs(u64::from(keep_alive)).mul_f32(1.5)
        };
        self.attach(now, Phase::Up, Some(idle_limit));
        self.accepted(resumed);
    }

    /// Hub behind a broker: the node's session is relayed by the replica's
    /// broker connection ([`crate::relay`]) instead of a link of its own.
    /// There is no CONNECT from the edge and no hub-side idle limit; a new
    /// edge process shows itself by a new batch sender and voids the
    /// streams of the old one.
    pub fn hub_relayed(&mut self, now: Instant, resumed: bool) {
        self.relayed = true;
        self.attach(now, Phase::Up, None);
        self.accepted(resumed);
    }

    fn accepted(&mut self, resumed: bool) {
        encode(
            &mut self.out,
            &Packet::Connack(Connack {
                session_present: resumed,
                code: ConnectReturnCode::Accepted,
            }),
        );
        let resent = self.resend();
        self.events.push_back(Event::Up { resumed, resent });
    }

    fn attach(&mut self, now: Instant, phase: Phase, idle_limit: Option<Duration>) {
        self.out.clear();
        self.conn = Some(Conn {
            phase,
            rx: Vec::new(),
            last_rx: now,
            last_tx: now,
            ping_pending: false,
            idle_limit,
        });
    }

    /// The connection dropped. The session stays, to be resumed.
    pub fn disconnected(&mut self) {
        self.conn = None;
        self.out.clear();
        self.pacer.reset();
    }

    /// Queues a DISCONNECT (edge shutting down cleanly).
    pub fn disconnect(&mut self) {
        if self.conn.is_some() {
            encode(&mut self.out, &Packet::Disconnect);
        }
    }

    /// Takes bytes received on the connection.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), LinkError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.last_rx = now;
        conn.ping_pending = false;
        // Decode straight from `bytes` when nothing is pending, so the common
        // case copies nothing into the receive buffer.
        let mut rx = std::mem::take(&mut conn.rx);
        let result = if rx.is_empty() {
            let used = self.handle_packets(now, bytes)?;
            rx.extend_from_slice(&bytes[used..]);
            Ok(())
        } else {
            rx.extend_from_slice(bytes);
            let used = self.handle_packets(now, &rx)?;
            rx.drain(..used);
            Ok(())
        };
        if let Some(conn) = self.conn.as_mut() {
            conn.rx = rx;
        }
        result
    }

    fn handle_packets(&mut self, now: Instant, buf: &[u8]) -> Result<usize, LinkError> {
        let mut used = 0;
        while let Some((packet, n)) = mqtt::decode(&buf[used..], self.cfg.max_packet)? {
            used += n;
            self.handle_packet(now, packet)?;
        }
        Ok(used)
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet<'_>) -> Result<(), LinkError> {
        let phase = self.conn.as_ref().map(|c| c.phase);
        match (self.side, phase, packet) {
            (Side::Edge, Some(Phase::AwaitConnack), Packet::Connack(ack)) => {
                if ack.code != ConnectReturnCode::Accepted {
                    return Err(LinkError::Refused(ack.code));
                }
                if let Some(c) = self.conn.as_mut() {
                    c.phase = Phase::Up;
                }
                if self.established && !ack.session_present {
                    self.lose_session();
                }
                self.established = true;
                let resent = self.resend();
                self.events.push_back(Event::Up {
                    resumed: ack.session_present,
                    resent,
                });
                Ok(())
            }
            (_, Some(Phase::Up), Packet::Publish(p)) => {
                let own = match self.side {
                    Side::Edge => &self.down_topic,
                    Side::Hub => &self.up_topic,
                };
                if p.topic_name != own.as_str() {
                    return Err(LinkError::ForeignTopic {
                        topic: p.topic_name.chars().take(200).collect(),
                        expected: own.clone(),
                    });
                }
                match p.qospid {
                    QosPid::AtMostOnce => {}
                    QosPid::AtLeastOnce(id) => encode(&mut self.out, &Packet::Puback(id)),
                    QosPid::ExactlyOnce(_) => {
                        return Err(LinkError::Protocol("QoS 2 is not used on the link".into()))
                    }
                }
                self.deliver(p.payload)
            }
            (_, Some(Phase::Up), Packet::Puback(id)) => {
                let Some(pos) = self.inflight.iter().position(|f| f.pid == id.get()) else {
                    return Err(LinkError::Protocol(format!(
                        "PUBACK for packet id {} that is not in flight",
                        id.get()
                    )));
                };
                if let Some(f) = self.inflight.remove(pos) {
                    self.inflight_bytes -= f.packet.len();
                    if let Some(stamp) = f.stamp {
                        self.pacer.acked(now, stamp, f.packet.len());
                    }
                }
                Ok(())
            }
            (Side::Hub, Some(Phase::Up), Packet::Subscribe(s)) => {
                let codes = s
                    .topics
                    .iter()
                    .map(|t| {
                        if t.topic_path == self.down_topic {
                            mqtt::SubscribeReturnCodes::Success(QoS::AtLeastOnce)
                        } else {
                            self.events.push_back(Event::ForeignSubscribe {
                                topic: t.topic_path.chars().take(200).collect(),
                            });
                            mqtt::SubscribeReturnCodes::Failure
                        }
                    })
                    .collect();
                encode(
                    &mut self.out,
                    &Packet::Suback(mqtt::Suback {
                        pid: s.pid,
                        return_codes: codes,
                    }),
                );
                Ok(())
            }
            (Side::Edge, Some(Phase::Up), Packet::Suback(s)) => {
                if s.return_codes
                    .contains(&mqtt::SubscribeReturnCodes::Failure)
                {
                    return Err(LinkError::Protocol(format!(
                        "subscription to {} refused",
                        self.down_topic
                    )));
                }
                Ok(())
            }
            (Side::Hub, Some(Phase::Up), Packet::Pingreq) => {
                encode(&mut self.out, &Packet::Pingresp);
                Ok(())
            }
            (Side::Edge, Some(Phase::Up), Packet::Pingresp) => Ok(()),
            (Side::Hub, Some(_), Packet::Disconnect) => Err(LinkError::Closed),
            (_, _, other) => {
                let _ = now;
                Err(LinkError::Protocol(format!(
                    "unexpected {:?} packet",
                    other.get_type()
                )))
            }
        }
    }

    /// Hands a received batch to the mux unless it is a resend already seen.
    fn deliver(&mut self, payload: &[u8]) -> Result<(), LinkError> {
        let (header, frames) = read_batch(payload)?;
        // Decode the whole batch before marking it seen: a batch that fails
        // half way must not count as delivered when it is resent.
        let frames: Vec<_> = frames.collect::<Result<_, _>>()?;
        if self.relayed && self.edge_sender.is_some_and(|s| s != header.sender) {
            // Behind a broker the hub sees no CONNECT: a new sender is a
            // restarted edge, whose old streams are void.
            self.peer_restarted("the edge restarted");
        }
        if self.relayed {
            self.edge_sender = Some(header.sender);
        }
        let key = (header.sender, header.lane);
        if let Some(pos) = self.seen.iter().position(|(k, _)| *k == key) {
            let (_, last) = self.seen.remove(pos);
            self.seen.push((key, last.max(header.seq)));
            if header.seq <= last {
                return Ok(());
            }
        } else {
            if self.seen.len() == MAX_LANES {
                self.seen.remove(0);
            }
            self.seen.push((key, header.seq));
        }
        for frame in frames {
            self.mux.handle(frame, header.sender);
        }
        if self.mux.overloaded() {
            return Err(LinkError::Protocol(
                "the peer keeps sending frames that need answers it never acknowledges".into(),
            ));
        }
        Ok(())
    }

    /// The peer lost our session: nothing queued for it can be delivered.
    fn lose_session(&mut self) {
        self.peer_restarted(
            "the hub no longer had this node's session (hub restart, or the session expired)",
        );
        self.events.push_back(Event::SessionLost);
    }

    /// The peer's side of the session is gone (hub: the edge restarted with
    /// a clean session, or the session expired; edge: the hub lost it): what
    /// is in flight is dropped and every stream is reset for `reason`.
    pub fn peer_restarted(&mut self, reason: &str) {
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.seen.clear();
        self.mux.reset_all(ResetCode::SessionLost, reason);
    }

    fn resend(&mut self) -> usize {
        for f in &mut self.inflight {
            f.packet[0] |= 0x08; // DUP
            f.stamp = None;
            self.out.extend_from_slice(&f.packet);
        }
        self.resent_total += self.inflight.len() as u64;
        self.inflight.len()
    }

    /// Timers: keepalive pings (edge) and dead-link detection (both).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        let keepalive = self.cfg.keepalive;
        let side = self.side;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let silent = now.saturating_duration_since(conn.last_rx);
        let limit = match side {
            Side::Edge => Some(keepalive.mul_f32(1.5)),
            Side::Hub => conn.idle_limit,
        };
        if limit.is_some_and(|l| silent >= l) {
            return Err(LinkError::KeepaliveTimeout { silent });
        }
        if side == Side::Edge && conn.phase == Phase::Up && !conn.ping_pending {
            let idle_tx = now.saturating_duration_since(conn.last_tx);
            if silent >= keepalive || idle_tx >= keepalive {
                conn.ping_pending = true;
                encode(&mut self.out, &Packet::Pingreq);
            }
        }
        Ok(())
    }

    /// When [`Session::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self.conn.as_ref()?;
        let k = self.cfg.keepalive;
        match self.side {
            Side::Hub => conn.idle_limit.map(|l| conn.last_rx + l),
            Side::Edge => {
                let dead = conn.last_rx + k.mul_f32(1.5);
                if conn.ping_pending || conn.phase != Phase::Up {
                    Some(dead)
                } else {
                    Some(dead.min(conn.last_rx + k).min(conn.last_tx + k))
                }
            }
        }
    }

    /// Bytes to write to the connection now, after moving whatever the mux
    /// has into publishes (as far as the in-flight limit allows).
    pub fn transmit(&mut self, now: Instant) -> Vec<u8> {
        if self.is_up() {
            while let Some(limit) = self.batch_room() {
                let Some(route) = self.mux.next_route() else {
                    break;
                };
                let lane = route.unwrap_or(0);
                let seq = self.take_seq(lane);
                let mut batch = BatchWriter::new(BatchHeader {
                    sender: self.sender,
                    lane,
                    seq,
                });
                self.mux.fill(&mut batch, limit, route);
                if batch.is_empty() {
                    self.untake_seq(lane);
                    break;
                }
                let drained = !self.mux.wants_to_send();
                self.publish(now, &batch.finish(), route, drained);
            }
        }
        let out = std::mem::take(&mut self.out);
        if !out.is_empty() {
            if let Some(c) = self.conn.as_mut() {
                c.last_tx = now;
            }
        }
        out
    }

    /// Whether [`Session::transmit`] would return anything.
    pub fn wants_to_transmit(&self) -> bool {
        !self.out.is_empty()
            || (self.is_up() && self.batch_room().is_some() && self.mux.wants_to_send())
    }

    /// The stream bytes the next publish may carry, if one may go out now:
    /// within `max_inflight` publishes and the pacer's byte window.
    fn batch_room(&self) -> Option<usize> {
        if self.inflight.len() >= self.cfg.max_inflight {
            return None;
        }
        let window = self.pacer.window();
        let room = window.saturating_sub(self.inflight_bytes);
        if room < MIN_BATCH && !self.inflight.is_empty() {
            return None;
        }
        // Four publishes or more per window: the path never waits for an
        // ack to have something to carry, and a frame of another stream
        // waits for a quarter window of room, not half of it.
        Some(room.min(window / 4).clamp(MIN_BATCH, self.cfg.max_batch))
    }

    /// Unacknowledged bytes this side may have out now (see [`crate::pace`]).
    pub fn window(&self) -> usize {
        self.pacer.window()
    }

    /// Bytes of the publishes sent and not yet acknowledged.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }

    /// Sends `payload` as a QoS 1 PUBLISH; `drained`: the mux had nothing
    /// more to send (see [`Pacer::stamp`]).
    fn publish(&mut self, now: Instant, payload: &[u8], route: Route, drained: bool) {
        let id = self.take_pid();
        let routed;
        let topic = match (self.side, route) {
            (Side::Edge, None) => self.up_topic.as_str(),
            (Side::Edge, Some(hub)) => {
                routed = crate::topic::replica_topic(&self.up_topic, hub);
                routed.as_str()
            }
            (Side::Hub, _) => self.down_topic.as_str(),
        };
        let mut packet = Vec::with_capacity(payload.len() + topic.len() + 9);
        let publish = Packet::Publish(mqtt::Publish {
            dup: false,
            qospid: QosPid::AtLeastOnce(pid(id)),
            retain: false,
            topic_name: topic,
            payload,
        });
        if let Err(e) = mqtt::encode(&publish, &mut packet) {
            // Only a batch beyond MQTT's 256 MB limit fails, which max_batch rules out.
            log::error!("dropping link batch: {e}");
            return;
        }
        self.out.extend_from_slice(&packet);
        let stamp = self.pacer.stamp(now, self.inflight.is_empty(), drained);
        self.inflight_bytes += packet.len();
        self.inflight.push_back(InFlight {
            pid: id,
            packet,
            stamp: Some(stamp),
        });
    }

    /// The next sequence number of `lane`. Lanes are the routes the mux
    /// uses: one per hub replica an edge talks to, so they stay few; the
    /// oldest is forgotten beyond [`MAX_LANES`].
    fn take_seq(&mut self, lane: u32) -> u64 {
        if let Some(pos) = self.next_seq.iter().position(|(l, _)| *l == lane) {
            // Most recently used last: what falls out is a replica long gone.
            let (_, seq) = self.next_seq.remove(pos);
            self.next_seq.push((lane, seq + 1));
            return seq + 1;
        }
        if self.next_seq.len() == MAX_LANES {
            self.next_seq.remove(0);
        }
        self.next_seq.push((lane, 1));
        1
    }

    fn untake_seq(&mut self, lane: u32) {
        if let Some(entry) = self.next_seq.iter_mut().find(|(l, _)| *l == lane) {
            entry.1 -= 1;
        }
    }

    fn take_pid(&mut self) -> u16 {
        loop {
            let id = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|f| f.pid == id) {
                return id;
            }
        }
    }
}

/// Appends a packet this side built; only a packet beyond MQTT's size limit
/// fails, which the session's limits rule out.
fn encode(out: &mut Vec<u8>, packet: &Packet<'_>) {
    if let Err(e) = mqtt::encode(packet, out) {
        log::error!("cannot encode {:?}: {e}", packet.get_type());
    }
}

fn pid(id: u16) -> Pid {
    // take_pid never yields 0, the one value Pid refuses.
    Pid::try_from(id).unwrap_or_default()
}

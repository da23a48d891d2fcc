//! A hub replica's one connection to an MQTT broker, relaying the MQTT of
//! many node sessions. Sans IO.
//!
//! With a broker between edges and hubs, each edge keeps its link to the
//! broker and each hub replica keeps one client connection to it. Replicas
//! share the edges' `tether/<node>/up` topics through the shared
//! subscription [`SHARED_UP`], so each stream open lands on one replica;
//! that replica owns the stream, and the edge sends the stream's later
//! frames to the replica's own sub-topic `tether/<node>/up/<replica>`
//! (see [`crate::mux::Mux::new_routed`]).
//!
//! Behind the relay every node still has an ordinary hub-side
//! [`crate::session::Session`] (attached with `hub_relayed`). The relay
//! passes packets between the broker and those sessions, renumbering packet
//! ids, which are per connection in MQTT: a node session's PUBLISH gets a
//! broker packet id, and the broker's PUBACK for it goes back to the node
//! session under the node's own id. The broker's PUBLISHes go to the node
//! session as they are (their topic normalised to `tether/<node>/up`) and
//! are acknowledged to the broker at once: the node session lives in this
//! same process, so a message the relay holds reaches it unless the process
//! dies, and then the streams it belonged to die with the replica anyway.
//! Acking at once also means a failing node session can never hold the
//! broker's in-flight window for the whole replica. The node session's own
//! PUBACKs are dropped.

use crate::mqtt::{self, Connect, ConnectReturnCode, Packet, Pid, Protocol, QoS, QosPid};
use crate::topic::NodeName;
use crate::LinkError;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The shared subscription all replicas use for the edges' default topic.
pub const SHARED_UP: &str = "$share/tether-hubs/tether/+/up";

/// What the relay asks of the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The broker accepted the connection and the subscriptions were sent.
    Up,
    /// Bytes (whole MQTT packets) for the session of `node`. A node seen
    /// for the first time needs a session first.
    ToNode { node: NodeName, bytes: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnack,
    Up,
}

/// The relay's state; one per replica, across broker reconnects.
#[derive(Debug)]
pub struct Relay {
    replica: u32,
    keepalive: Duration,
    max_packet: usize,
    phase: Option<Phase>,
    rx: Vec<u8>,
    out: Vec<u8>,
    last_rx: Instant,
    last_tx: Instant,
    ping_pending: bool,
    next_pid: u16,
    /// Broker packet id of each relayed PUBLISH → its node and node id.
    pids: HashMap<u16, (NodeName, u16)>,
    /// Node PUBLISHes waiting for a free broker packet id (bounded by the
    /// node sessions' own in-flight limits).
    waiting: VecDeque<(NodeName, Vec<u8>)>,
    events: VecDeque<RelayEvent>,
}

/// Most broker packet ids in use at once (MQTT has 65,535).
const MAX_PIDS: usize = 65_000;

impl Relay {
    /// A relay for replica `replica` (its batch sender id).
    pub fn new(replica: u32, keepalive: Duration, max_packet: usize) -> Relay {
        let now = Instant::now();
        Relay {
            replica,
            keepalive,
            max_packet,
            phase: None,
            rx: Vec::new(),
            out: Vec::new(),
            last_rx: now,
            last_tx: now,
            ping_pending: false,
            next_pid: 1,
            pids: HashMap::new(),
            waiting: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The replica's own sub-topic filter: `tether/+/up/<replica>`.
    pub fn own_filter(&self) -> String {
        format!("tether/+/up/{:08x}", self.replica)
    }

    /// The client id the replica uses at the broker.
    pub fn client_id(&self) -> String {
        format!("tether-hub-{:08x}", self.replica)
    }

    /// Whether the broker connection is up.
    pub fn is_up(&self) -> bool {
        self.phase == Some(Phase::Up)
    }

    /// A new connection to the broker: queues CONNECT (clean session: a
    /// replica's state lives in its node sessions, not at the broker) and
    /// the two subscriptions.
    pub fn connect(&mut self, now: Instant, username: Option<&str>, password: Option<&[u8]>) {
        self.disconnected();
        self.phase = Some(Phase::AwaitConnack);
        self.last_rx = now;
        self.last_tx = now;
        let client_id = self.client_id();
        let keep_alive = u16::try_from(self.keepalive.as_secs().max(1)).unwrap_or(u16::MAX);
        encode(
            &mut self.out,
            &Packet::Connect(Connect {
                protocol: Protocol::MQTT311,
                keep_alive,
                client_id: &client_id,
                clean_session: true,
                last_will: None,
                username,
                password,
            }),
        );
        let topics = [SHARED_UP.to_string(), self.own_filter()]
            .into_iter()
            .map(|t| mqtt::SubscribeTopic {
                topic_path: t,
                qos: QoS::AtLeastOnce,
            })
            .collect();
        let pid = self.take_pid();
        encode(
            &mut self.out,
            &Packet::Subscribe(mqtt::Subscribe {
                pid: pid_of(pid),
                topics,
            }),
        );
    }

    /// The broker connection dropped. Packet ids die with it; the node
    /// sessions keep their unacknowledged publishes and resend them when
    /// they are attached again.
    pub fn disconnected(&mut self) {
        self.phase = None;
        self.rx.clear();
        self.out.clear();
        self.pids.clear();
        self.waiting.clear();
        self.ping_pending = false;
    }

    /// The next thing the program must do.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// Takes bytes from the broker.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), LinkError> {
        if self.phase.is_none() {
            return Ok(());
        }
        self.last_rx = now;
        self.ping_pending = false;
        self.rx.extend_from_slice(bytes);
        let rx = std::mem::take(&mut self.rx);
        let mut used = 0;
        let result = loop {
            match mqtt::decode(&rx[used..], self.max_packet) {
                Ok(Some((packet, n))) => {
                    used += n;
                    if let Err(e) = self.handle_packet(packet) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.rx = rx;
        self.rx.drain(..used);
        result
    }

    fn handle_packet(&mut self, packet: Packet<'_>) -> Result<(), LinkError> {
        match (self.phase, packet) {
            (Some(Phase::AwaitConnack), Packet::Connack(ack)) => {
                if ack.code != ConnectReturnCode::Accepted {
                    return Err(LinkError::Refused(ack.code));
                }
                self.phase = Some(Phase::Up);
                self.events.push_back(RelayEvent::Up);
                Ok(())
            }
            (Some(Phase::Up), Packet::Suback(s)) => {
                if s.return_codes
                    .contains(&mqtt::SubscribeReturnCodes::Failure)
                {
                    return Err(LinkError::Protocol(format!(
                        "the broker refused the subscriptions {SHARED_UP} and {} (check its ACL for the hub's user)",
                        self.own_filter()
                    )));
                }
                Ok(())
            }
            (Some(Phase::Up), Packet::Publish(p)) => self.deliver_to_node(p),
            (Some(Phase::Up), Packet::Puback(id)) => {
                let Some((node, node_pid)) = self.pids.remove(&id.get()) else {
                    return Err(LinkError::Protocol(format!(
                        "PUBACK for packet id {} that is not in flight",
                        id.get()
                    )));
                };
                let mut bytes = Vec::new();
                encode(&mut bytes, &Packet::Puback(pid_of(node_pid)));
                self.events.push_back(RelayEvent::ToNode { node, bytes });
                self.admit_waiting();
                Ok(())
            }
            (Some(Phase::Up), Packet::Pingresp) => Ok(()),
            (_, other) => Err(LinkError::Protocol(format!(
                "unexpected {:?} packet from the broker",
                other.get_type()
            ))),
        }
    }

    /// A PUBLISH from an edge, via the broker: to its node session.
    fn deliver_to_node(&mut self, p: mqtt::Publish<'_>) -> Result<(), LinkError> {
        let Some(node) = self.up_topic_node(p.topic_name) else {
            // Not ours to relay (the broker's ACL should have kept it away):
            // acknowledge it so the broker stops resending, and drop it.
            log::warn!(
                "relay: dropping a publish on unexpected topic {:?}",
                p.topic_name
            );
            if let QosPid::AtLeastOnce(id) = p.qospid {
                encode(&mut self.out, &Packet::Puback(id));
            }
            return Ok(());
        };
        if let QosPid::AtLeastOnce(id) = p.qospid {
            encode(&mut self.out, &Packet::Puback(id));
        }
        let topic = node.up();
        let mut bytes = Vec::with_capacity(p.payload.len() + topic.len() + 8);
        encode(
            &mut bytes,
            &Packet::Publish(mqtt::Publish {
                dup: p.dup,
                qospid: p.qospid,
                retain: false,
                topic_name: &topic,
                payload: p.payload,
            }),
        );
        self.events.push_back(RelayEvent::ToNode { node, bytes });
        Ok(())
    }

    /// The node of `tether/<node>/up` or `tether/<node>/up/<this replica>`.
    fn up_topic_node(&self, topic: &str) -> Option<NodeName> {
        let rest = topic.strip_prefix("tether/")?;
        let (node, tail) = rest.split_once('/')?;
        let mine = format!("up/{:08x}", self.replica);
        if tail != "up" && tail != mine {
            return None;
        }
        NodeName::new(node).ok()
    }

    /// Takes packets a node session wrote: its PUBLISHes go to the broker
    /// under broker packet ids; its PUBACKs were given to the broker already.
    pub fn from_node(&mut self, node: &NodeName, bytes: &[u8]) -> Result<(), LinkError> {
        if !self.is_up() {
            return Ok(()); // the node session resends when attached again
        }
        let mut used = 0;
        while let Some((packet, n)) = mqtt::decode(&bytes[used..], usize::MAX >> 4)? {
            // Only PUBLISHes go on. PUBACKs (the broker had its own at
            // once) and the CONNACK of attaching stay here.
            if let Packet::Publish(_) = packet {
                self.waiting
                    .push_back((node.clone(), bytes[used..used + n].to_vec()));
            }
            used += n;
        }
        if used != bytes.len() {
            return Err(LinkError::Protocol(format!(
                "node session {node} wrote a partial packet"
            )));
        }
        self.admit_waiting();
        Ok(())
    }

    /// Moves waiting node PUBLISHes to the broker while packet ids are free.
    fn admit_waiting(&mut self) {
        while self.pids.len() < MAX_PIDS {
            let Some((node, packet)) = self.waiting.pop_front() else {
                return;
            };
            let Ok(Some((Packet::Publish(p), _))) = mqtt::decode(&packet, usize::MAX >> 4) else {
                continue; // checked in from_node
            };
            let id = self.take_pid();
            if let QosPid::AtLeastOnce(node_pid) = p.qospid {
                self.pids.insert(id, (node.clone(), node_pid.get()));
            }
            let qospid = match p.qospid {
                QosPid::AtMostOnce => QosPid::AtMostOnce,
                _ => QosPid::AtLeastOnce(pid_of(id)),
            };
            encode(
                &mut self.out,
                &Packet::Publish(mqtt::Publish {
                    dup: p.dup,
                    qospid,
                    retain: false,
                    topic_name: p.topic_name,
                    payload: p.payload,
                }),
            );
        }
    }

    /// Keepalive: PINGREQ after silence; dead after 1.5 × keepalive.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        if self.phase.is_none() {
            return Ok(());
        }
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.keepalive.mul_f32(1.5) {
            return Err(LinkError::KeepaliveTimeout { silent });
        }
        let idle_tx = now.saturating_duration_since(self.last_tx);
        if self.is_up()
            && !self.ping_pending
            && (silent >= self.keepalive || idle_tx >= self.keepalive)
        {
            self.ping_pending = true;
            encode(&mut self.out, &Packet::Pingreq);
        }
        Ok(())
    }

    /// When [`Relay::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.phase?;
        let k = self.keepalive;
        let dead = self.last_rx + k.mul_f32(1.5);
        if self.ping_pending || !self.is_up() {
            Some(dead)
        } else {
            Some(dead.min(self.last_rx + k).min(self.last_tx + k))
        }
    }

    /// Bytes to write to the broker now.
    pub fn transmit(&mut self, now: Instant) -> Vec<u8> {
        let out = std::mem::take(&mut self.out);
        if !out.is_empty() {
            self.last_tx = now;
        }
        out
    }

    fn take_pid(&mut self) -> u16 {
        loop {
            let id = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.pids.contains_key(&id) {
                return id;
            }
        }
    }
}

fn pid_of(id: u16) -> Pid {
    // Ids here are never 0: take_pid skips it and node ids come decoded.
    Pid::try_from(id).unwrap_or_default()
}

fn encode(out: &mut Vec<u8>, packet: &Packet<'_>) {
    if let Err(e) = mqtt::encode(packet, out) {
        log::error!("relay: cannot encode {:?}: {e}", packet.get_type());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(relay: &mut Relay, now: Instant) {
        relay.connect(now, Some("hub"), Some(b"pw"));
        let hello = relay.transmit(now);
        let (first, n) = mqtt::decode(&hello, 1 << 20).expect("ok").expect("connect");
        assert!(matches!(first, Packet::Connect(c) if c.client_id == "tether-hub-0000abcd"));
        let (sub, _) = mqtt::decode(&hello[n..], 1 << 20)
            .expect("ok")
            .expect("subscribe");
        let Packet::Subscribe(s) = sub else {
            panic!("{sub:?}")
        };
        assert_eq!(s.topics[0].topic_path, SHARED_UP);
        assert_eq!(s.topics[1].topic_path, "tether/+/up/0000abcd");
        relay.handle_input(now, &[0x20, 2, 0, 0]).expect("connack");
        assert_eq!(relay.poll_event(), Some(RelayEvent::Up));
        relay
            .handle_input(now, &[0x90, 4, 0, 1, 1, 1])
            .expect("suback");
    }

    #[test]
    fn renumbers_and_routes_acks() {
        let now = Instant::now();
        let mut relay = Relay::new(0xabcd, Duration::from_secs(60), 1 << 20);
        up(&mut relay, now);
        let node = NodeName::new("edge-1").expect("name");
        // The broker delivers an edge publish on the replica's sub-topic.
        let mut bytes = Vec::new();
        mqtt::encode(
            &Packet::Publish(mqtt::Publish {
                dup: false,
                qospid: QosPid::AtLeastOnce(pid_of(77)),
                retain: false,
                topic_name: "tether/edge-1/up/0000abcd",
                payload: b"batch",
            }),
            &mut bytes,
        )
        .expect("encode");
        relay.handle_input(now, &bytes).expect("publish");
        let Some(RelayEvent::ToNode {
            node: n,
            bytes: to_node,
        }) = relay.poll_event()
        else {
            panic!("no delivery")
        };
        assert_eq!(n, node);
        let (p, _) = mqtt::decode(&to_node, 1 << 20)
            .expect("ok")
            .expect("packet");
        assert!(
            matches!(p, Packet::Publish(p) if p.topic_name == "tether/edge-1/up" && p.payload == b"batch")
        );
        // The broker got its PUBACK at once; the node session's is dropped.
        let mut ack = Vec::new();
        mqtt::encode(&Packet::Puback(pid_of(77)), &mut ack).expect("encode");
        assert_eq!(relay.transmit(now), ack);
        relay.from_node(&node, &ack).expect("ack");
        assert_eq!(relay.transmit(now), Vec::<u8>::new());
        // The node session publishes with its id 5: the broker sees another.
        let mut publish = Vec::new();
        mqtt::encode(
            &Packet::Publish(mqtt::Publish {
                dup: false,
                qospid: QosPid::AtLeastOnce(pid_of(5)),
                retain: false,
                topic_name: "tether/edge-1/down",
                payload: b"reply",
            }),
            &mut publish,
        )
        .expect("encode");
        relay.from_node(&node, &publish).expect("publish");
        let sent = relay.transmit(now);
        let (p, _) = mqtt::decode(&sent, 1 << 20).expect("ok").expect("packet");
        let Packet::Publish(p) = p else { panic!() };
        let QosPid::AtLeastOnce(broker_pid) = p.qospid else {
            panic!()
        };
        // The broker's PUBACK goes back to the node under id 5.
        let mut back = Vec::new();
        mqtt::encode(&Packet::Puback(broker_pid), &mut back).expect("encode");
        relay.handle_input(now, &back).expect("puback");
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::ToNode {
                node,
                bytes: vec![0x40, 2, 0, 5]
            })
        );
    }

    #[test]
    fn foreign_topics_and_stray_acks() {
        let now = Instant::now();
        let mut relay = Relay::new(0xabcd, Duration::from_secs(60), 1 << 20);
        up(&mut relay, now);
        let mut bytes = Vec::new();
        mqtt::encode(
            &Packet::Publish(mqtt::Publish {
                dup: false,
                qospid: QosPid::AtLeastOnce(pid_of(9)),
                retain: false,
                topic_name: "tether/edge-1/up/ffffffff",
                payload: b"",
            }),
            &mut bytes,
        )
        .expect("encode");
        relay.handle_input(now, &bytes).expect("dropped, acked");
        assert_eq!(relay.poll_event(), None);
        assert_eq!(relay.transmit(now), vec![0x40, 2, 0, 9]);
        assert!(relay.handle_input(now, &[0x40, 2, 0, 42]).is_err());
    }
}

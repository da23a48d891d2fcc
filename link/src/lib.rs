//! The link between tether-edge and tether-hub.
//!
//! One TLS connection per node carries MQTT 3.1.1 packets; their PUBLISH
//! payloads carry batches of stream frames that multiplex many byte streams
//! (an HTTP exchange, a watch, a kubelet session) over that one connection.
//! Edge and hub both build on this crate, so the two cannot drift.
//!
//! Layers, bottom up, each a module with one job:
//! - [`mqtt`]: MQTT packets on the wire (checked decoding around `mqttrs`).
//! - [`topic`]: node names and the topics a node may use.
//! - [`frame`]: the postcard-encoded stream frames inside a PUBLISH.
//! - [`mux`]: streams, their buffers and per-stream credit.
//! - [`pace`]: the in-flight byte window that keeps the queue one bulk
//!   stream builds on a slow path short, so other streams are not starved.
//! - [`session`]: one node's MQTT session: QoS 1 in flight, exactly-once
//!   delivery across reconnects, keepalive. Sans IO.
//! - [`accept`]: the hub reading a link's CONNECT before a session exists.
//! - [`relay`]: a hub replica's one broker connection, relaying many node
//!   sessions (scale-out through an MQTT broker).
//! - [`backoff`]: reconnect delays with full jitter.
//! - [`health`]: health verdicts, the report an edge sends the hub, and the
//!   unit's majority vote (issue 6), shared so edge and hub tally alike.
//! - [`tls`]: rustls configurations for both ends (ring provider).
//! - [`io`]: the thin async layer both programs drive a session with:
//!   streams as `AsyncRead + AsyncWrite`, and the connection loop.
//! - [`logger`]: the line logger both programs install.
//!
//! Everything below [`tls`] is sans IO: bytes and instants in, bytes and events
//! out, so every protocol path is tested without sockets.

pub mod accept;
pub mod backoff;
pub mod csr;
pub mod der;
pub mod frame;
pub mod health;
pub mod io;
pub mod join;
pub mod logger;
pub mod mqtt;
pub mod mux;
pub mod pace;
pub mod relay;
pub mod session;
pub mod tls;
pub mod topic;

use std::fmt;
use std::time::Duration;

/// Why a link connection ended. Each message says what happened in words an
/// operator can act on; the session itself survives all of them.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkError {
    /// Bytes that are not acceptable MQTT.
    Decode(mqtt::DecodeError),
    /// A PUBLISH payload that is not a valid batch.
    Frame(frame::FrameError),
    /// A valid packet at the wrong time, or one the link never uses.
    Protocol(String),
    /// The client id is not a node name.
    BadClientId(topic::BadNodeName),
    /// The hub refused the CONNECT.
    Refused(mqtt::ConnectReturnCode),
    /// A PUBLISH arrived on a topic that is not the link's own.
    ForeignTopic { topic: String, expected: String },
    /// Nothing was received for too long: the path is dead (or a black hole).
    KeepaliveTimeout { silent: Duration },
    /// The peer said DISCONNECT.
    Closed,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Decode(e) => write!(f, "MQTT decode error: {e}"),
            LinkError::Frame(e) => e.fmt(f),
            LinkError::Protocol(e) => write!(f, "protocol violation: {e}"),
            LinkError::BadClientId(e) => write!(f, "bad client id: {e}"),
            LinkError::Refused(code) => write!(f, "hub refused the link: {}", refusal_text(*code)),
            LinkError::ForeignTopic { topic, expected } => write!(
                f,
                "publish to {topic:?}, which is not its own topic {expected:?}"
            ),
            LinkError::KeepaliveTimeout { silent } => write!(
                f,
                "nothing received for {:.1} s: the path is dead",
                silent.as_secs_f32()
            ),
            LinkError::Closed => f.write_str("peer disconnected"),
        }
    }
}

/// What a CONNACK refusal means for the operator.
pub fn refusal_text(code: mqtt::ConnectReturnCode) -> &'static str {
    use mqtt::ConnectReturnCode::*;
    match code {
        Accepted => "accepted",
        RefusedProtocolVersion => "protocol version not supported (MQTT 3.1.1 expected)",
        RefusedIdentifierRejected => {
            "client id rejected (not a valid node name, or not this node's)"
        }
        ServerUnavailable => "hub unavailable",
        BadUsernamePassword => "bad credentials (unknown token, or token of another node)",
        NotAuthorized => {
            "not authorized (no credentials, or a certificate that is not this node's)"
        }
    }
}

impl std::error::Error for LinkError {}

impl From<mqtt::DecodeError> for LinkError {
    fn from(e: mqtt::DecodeError) -> LinkError {
        LinkError::Decode(e)
    }
}

impl From<frame::FrameError> for LinkError {
    fn from(e: frame::FrameError) -> LinkError {
        LinkError::Frame(e)
    }
}

//! The join exchange: how a board gets, and later renews, its node
//! certificate from the hub, on the link's own port and framing.
//!
//! One short connection per request, over TLS: the edge sends a CONNECT
//! whose client id is the node's name, whose username is [`USERNAME`] and
//! whose password carries the [`Request`]; the hub answers with an accepting
//! CONNACK and one PUBLISH on [`ANSWER_TOPIC`] carrying the [`Answer`], then
//! closes. No session is made. Keeping it on the link's port means a hub
//! behind one load-balanced address needs nothing more, and the hub's accept
//! path (limits, deadline, logs) covers it.
//!
//! A join proves itself with a bootstrap token; a renewal with the node's
//! current (or recently expired) certificate and a signature by its key.
//! Both carry a fresh certificate request ([`crate::csr`]): the new key is
//! made on the board and never leaves it.

use crate::mqtt::{
    self, Connack, Connect, ConnectReturnCode, Packet, Protocol, Publish, QoS, QosPid,
};
use crate::topic::NodeName;
use crate::LinkError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The CONNECT username that marks a join or renewal, with its version.
pub const USERNAME: &str = "tether-join/1";
/// The topic of the hub's answer.
pub const ANSWER_TOPIC: &str = "tether/join";
/// Largest encoded request: a certificate, a request and a signature, with
/// room to spare. [`crate::accept::MAX_CONNECT`] admits it.
pub const MAX_REQUEST: usize = 3072;
/// Largest answer packet the edge reads: a certificate, the CA's, a message.
pub const MAX_ANSWER: usize = 8192;
/// What a renewal's proof signs before the request, so a signature made for
/// anything else cannot be replayed as one.
const PROOF_CONTEXT: &[u8] = b"tether-renew-v1\0";

/// What the edge asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A first certificate (or a new one for a new board), on a bootstrap
    /// token `ID.SECRET` from `tether-hub token create`.
    Join {
        /// The bootstrap token.
        token: String,
        /// A certificate request for the node ([`crate::csr`]), DER.
        csr: Vec<u8>,
    },
    /// A fresh certificate for a node that holds one, current or expired
    /// within the hub's grace period.
    Renew {
        /// The node's current certificate, DER.
        certificate: Vec<u8>,
        /// A certificate request for the new key, DER.
        csr: Vec<u8>,
        /// When the proof was signed (unix ms): the hub refuses old proofs.
        signed_at_ms: u64,
        /// ECDSA P-256 SHA-256 (ASN.1 DER) by the current certificate's key
        /// over [`proof_message`].
        proof: Vec<u8>,
    },
}

/// What the bytes of a renewal's proof are: the context, the node, the
/// SHA-256 of the new request and the signing time.
pub fn proof_message(node: &NodeName, csr: &[u8], signed_at_ms: u64) -> Vec<u8> {
    let mut m = PROOF_CONTEXT.to_vec();
    m.extend_from_slice(node.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, csr).as_ref());
    m.extend_from_slice(&signed_at_ms.to_be_bytes());
    m
}

/// What the hub answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The node's new certificate.
    Issued {
        /// The certificate, DER, signed by the hub's CA.
        certificate: Vec<u8>,
        /// The hub's CA certificate, DER: what the edge trusts from now on.
        ca: Vec<u8>,
        /// How long after expiry the hub still renews on the old key.
        grace_s: u64,
    },
    /// No certificate, and why.
    Refused {
        /// What kind of refusal, for the edge's exit status and the hub's metrics.
        reason: Refusal,
        /// For the person running the command: what is wrong and what to do.
        message: String,
    },
}

/// Kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The request could not be read, or its CSR is malformed or unsigned.
    BadRequest,
    /// The bootstrap token is unknown, wrong, expired, used, or not for this node.
    Token,
    /// The CSR names another node than the CONNECT.
    NameMismatch,
    /// The node is revoked.
    Revoked,
    /// A renewal whose certificate expired longer ago than the grace.
    PastGrace,
    /// A renewal whose certificate or proof does not check out.
    NotProven,
    /// The hub cannot issue now (no CA configured, state not writable).
    Unavailable,
}

impl Refusal {
    /// Short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::Token => "token",
            Refusal::NameMismatch => "name_mismatch",
            Refusal::Revoked => "revoked",
            Refusal::PastGrace => "past_grace",
            Refusal::NotProven => "not_proven",
            Refusal::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CONNECT that carries `request` for `node`.
pub fn encode_request(node: &NodeName, request: &Request) -> Result<Vec<u8>, LinkError> {
    let payload = postcard::to_allocvec(request)
        .map_err(|e| LinkError::Protocol(format!("cannot encode join request: {e}")))?;
    if payload.len() > MAX_REQUEST {
        return Err(LinkError::Protocol(format!(
            "join request of {} bytes is over {MAX_REQUEST}",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(payload.len() + 64);
    mqtt::encode(
        &Packet::Connect(Connect {
            protocol: Protocol::MQTT311,
            keep_alive: 0,
            client_id: node.as_str(),
            clean_session: true,
            last_will: None,
            username: Some(USERNAME),
            password: Some(&payload),
        }),
        &mut out,
    )
    .map_err(|e| LinkError::Protocol(e.to_string()))?;
    Ok(out)
}

/// The request a join CONNECT's password carries (the hub calls this when
/// the username is [`USERNAME`]).
pub fn decode_request(password: &[u8]) -> Result<Request, LinkError> {
    if password.len() > MAX_REQUEST {
        return Err(LinkError::Protocol(format!(
            "join request of {} bytes is over {MAX_REQUEST}",
            password.len()
        )));
    }
    postcard::from_bytes(password)
        .map_err(|e| LinkError::Protocol(format!("malformed join request: {e}")))
}

/// The hub's whole reply: an accepting CONNACK and the answer.
pub fn encode_answer(answer: &Answer) -> Vec<u8> {
    let payload = postcard::to_allocvec(answer).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 32);
    // Both packets are far under MQTT's size limit; encoding cannot fail.
    let _ = mqtt::encode(
        &Packet::Connack(Connack {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }),
        &mut out,
    );
    let _ = mqtt::encode(
        &Packet::Publish(Publish {
            dup: false,
            qospid: QosPid::AtMostOnce,
            retain: false,
            topic_name: ANSWER_TOPIC,
            payload: &payload,
        }),
        &mut out,
    );
    out
}

/// Reads the hub's reply from the start of `buf`: `Ok(None)` while
/// incomplete. A refusing CONNACK (a hub that does not know joins, or
/// limits) is an error naming its code.
pub fn decode_answer(buf: &[u8]) -> Result<Option<Answer>, LinkError> {
    let Some((packet, used)) = mqtt::decode(buf, MAX_ANSWER)? else {
        return Ok(None);
    };
    match packet {
        Packet::Connack(c) if c.code == ConnectReturnCode::Accepted => {}
        Packet::Connack(c) => {
            return Err(LinkError::Protocol(format!(
                "the hub refused the connection ({:?})",
                c.code
            )))
        }
        other => {
            return Err(LinkError::Protocol(format!(
                "expected CONNACK, got {:?}",
                other.get_type()
            )))
        }
    }
    let Some((packet, _)) = mqtt::decode(&buf[used..], MAX_ANSWER)? else {
        return Ok(None);
    };
    match packet {
        Packet::Publish(p) if p.topic_name == ANSWER_TOPIC && p.qospid.qos() == QoS::AtMostOnce => {
            postcard::from_bytes(p.payload)
                .map(Some)
                .map_err(|e| LinkError::Protocol(format!("malformed join answer: {e}")))
        }
        other => Err(LinkError::Protocol(format!(
            "expected the join answer, got {:?}",
            other.get_type()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::{read_connect, MAX_CONNECT};

    fn node() -> NodeName {
        NodeName::new("edge-1").expect("name")
    }

    #[test]
    fn a_renewal_of_the_largest_size_passes_the_accept_limit() {
        let req = Request::Renew {
            certificate: vec![0x30; 700],
            csr: vec![0x30; 400],
            signed_at_ms: u64::MAX,
            proof: vec![0x30; 72],
        };
        let bytes = encode_request(&node(), &req).expect("encode");
        assert!(bytes.len() < MAX_CONNECT);
        let (hello, used) = read_connect(&bytes).expect("read").expect("whole");
        assert_eq!(used, bytes.len());
        assert_eq!(hello.node, node());
        assert_eq!(hello.username.as_deref(), Some(USERNAME));
        let password = hello.password.expect("password");
        assert_eq!(decode_request(&password).expect("decode"), req);
    }

    #[test]
    fn answers_round_trip_and_arrive_in_pieces() {
        for answer in [
            Answer::Issued {
                certificate: vec![1; 600],
                ca: vec![2; 500],
                grace_s: 86_400,
            },
            Answer::Refused {
                reason: Refusal::Token,
                message: "token abcdef expired".into(),
            },
        ] {
            let bytes = encode_answer(&answer);
            for cut in 0..bytes.len() {
                assert_eq!(decode_answer(&bytes[..cut]).expect("partial"), None);
            }
            assert_eq!(decode_answer(&bytes).expect("whole"), Some(answer));
        }
    }

    #[test]
    fn a_refusing_connack_or_garbage_is_an_error() {
        let refused = crate::accept::refusal(ConnectReturnCode::NotAuthorized);
        assert!(decode_answer(&refused).is_err());
        assert!(decode_request(&[0xff; 8]).is_err());
        assert!(decode_request(&vec![0; MAX_REQUEST + 1]).is_err());
    }

    #[test]
    fn the_proof_binds_node_request_and_time() {
        let a = proof_message(&node(), b"csr", 1);
        assert_ne!(a, proof_message(&node(), b"csr", 2));
        assert_ne!(a, proof_message(&node(), b"other", 1));
        assert_ne!(
            a,
            proof_message(&NodeName::new("edge-2").expect("n"), b"csr", 1)
        );
    }
}

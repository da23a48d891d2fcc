//! The hub's side of a link's first packet: reading and answering CONNECT.
//!
//! Before a session exists the hub must learn who is connecting. This reads
//! exactly one CONNECT off a new connection, bounded in size, and builds the
//! CONNACK that refuses a link. Accepting hands over to
//! [`crate::session::Session::hub_accept`].

use crate::mqtt::{self, Connack, ConnectReturnCode, Packet};
use crate::topic::NodeName;
use crate::LinkError;

/// Largest CONNECT accepted: a node name, a token and some slack. A peer that
/// announces more is hostile or confused.
pub const MAX_CONNECT: usize = 4096;

/// What a CONNECT said, owned so the connection buffer can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The client id, validated as a node name.
    pub node: NodeName,
    /// The username field, if any.
    pub username: Option<String>,
    /// The password field (a token), if any.
    pub password: Option<Vec<u8>>,
    /// `false` asks to resume a session.
    pub clean_session: bool,
    /// Seconds of silence after which the edge considers the link dead.
    pub keep_alive: u16,
}

/// Reads one CONNECT from the start of `buf`.
///
/// `Ok(None)`: not all of it has arrived yet. On success also returns how
/// many bytes it used; bytes after it belong to the session.
pub fn read_connect(buf: &[u8]) -> Result<Option<(Hello, usize)>, LinkError> {
    // The first byte tells a CONNECT from anything else (an HTTP request, a
    // TLS ClientHello, noise): refuse at once rather than wait for the rest of
    // a "packet" whose length the stranger made up.
    if let Some(&first) = buf.first() {
        if first != 0x10 {
            return Err(LinkError::Protocol(format!(
                "first packet is not CONNECT (fixed header byte {first:#04x})"
            )));
        }
    }
    let Some((packet, used)) = mqtt::decode(buf, MAX_CONNECT)? else {
        return Ok(None);
    };
    let Packet::Connect(c) = packet else {
        return Err(LinkError::Protocol(format!(
            "first packet is {:?}, not CONNECT",
            packet.get_type()
        )));
    };
    if c.last_will.is_some() {
        return Err(LinkError::Protocol(
            "a will message is not used on the link".into(),
        ));
    }
    let node = NodeName::new(c.client_id).map_err(LinkError::BadClientId)?;
    Ok(Some((
        Hello {
            node,
            username: c.username.map(str::to_owned),
            password: c.password.map(<[u8]>::to_vec),
            clean_session: c.clean_session,
            keep_alive: c.keep_alive,
        },
        used,
    )))
}

/// The CONNACK that refuses a link with `code`.
pub fn refusal(code: ConnectReturnCode) -> Vec<u8> {
    let mut out = Vec::new();
    let packet = Packet::Connack(Connack {
        session_present: false,
        code,
    });
    // A CONNACK is four fixed bytes; encoding cannot fail.
    let _ = mqtt::encode(&packet, &mut out);
    out
}

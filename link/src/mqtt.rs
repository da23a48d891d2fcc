//! MQTT 3.1.1 packets on the wire: the one module that knows `mqttrs`.
//!
//! `mqttrs` encodes and decodes, but its decoder indexes past the end of a
//! packet that lies about its own lengths (a CONNECT cut short, a PUBLISH
//! whose topic is longer than the packet), and a panic in the hub would drop
//! every link at once. So every packet passes [`check`] first: a bounds-checked
//! walk over the layout of the packet types the link uses. Only a packet that
//! is whole and self-consistent reaches `mqttrs`, and only as a slice that ends
//! where the packet ends.

use std::fmt;

pub use mqttrs::{
    Connack, Connect, ConnectReturnCode, Packet, Pid, Protocol, Publish, QoS, QosPid, Suback,
    Subscribe, SubscribeReturnCodes, SubscribeTopic,
};

/// Largest fixed header: one type byte and up to four length bytes.
const MAX_HEADER: usize = 5;

/// Why bytes from a peer are not an acceptable MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining-length field runs past four bytes (MQTT caps it there).
    BadLength,
    /// The packet announces more bytes than this side accepts.
    TooLarge { announced: usize, limit: usize },
    /// The type nibble or its flags are not valid MQTT 3.1.1.
    BadHeader(u8),
    /// The packet's fields do not fit its announced length.
    Malformed(&'static str),
    /// A CONNECT for a protocol other than MQTT 3.1.1.
    BadProtocol,
    /// `mqttrs` refused the packet after it passed our checks.
    Codec(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadLength => f.write_str("remaining length longer than 4 bytes"),
            DecodeError::TooLarge { announced, limit } => write!(
                f,
                "packet of {announced} bytes announced, more than the limit of {limit}"
            ),
            DecodeError::BadHeader(b) => write!(f, "invalid fixed header byte {b:#04x}"),
            DecodeError::Malformed(what) => write!(f, "malformed packet: {what}"),
            DecodeError::BadProtocol => {
                f.write_str("CONNECT is not MQTT 3.1.1 (protocol name \"MQTT\", level 4)")
            }
            DecodeError::Codec(e) => write!(f, "undecodable packet: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads the fixed header at the start of `buf`.
///
/// Returns `Ok(None)` until enough bytes are there to know the packet's size,
/// then `(header length, remaining length)`. A size above `limit` is refused
/// here, before anything is buffered for it.
pub fn peek_header(buf: &[u8], limit: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 == 0 || first >> 4 == 15 {
        return Err(DecodeError::BadHeader(first));
    }
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if len > limit {
                return Err(DecodeError::TooLarge {
                    announced: len,
                    limit,
                });
            }
            return Ok(Some((2 + i, len)));
        }
    }
    Err(DecodeError::BadLength)
}

/// Takes one whole packet off the front of `buf`.
///
/// Returns the packet and the number of bytes it used, or `Ok(None)` if
/// `buf` holds only part of one. `limit` bounds the remaining length.
pub fn decode(buf: &[u8], limit: usize) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some((head, rest)) = peek_header(buf, limit)? else {
        return Ok(None);
    };
    let total = head + rest;
    let Some(packet) = buf.get(..total) else {
        return Ok(None);
    };
    check(packet[0], &packet[head..])?;
    match mqttrs::decode_slice(packet) {
        Ok(Some(p)) => Ok(Some((p, total))),
        Ok(None) => Err(DecodeError::Malformed("incomplete after check")),
        Err(e) => Err(DecodeError::Codec(format!("{e:?}"))),
    }
}

/// Checks that the variable header and payload of one packet fit its length.
///
/// `first` is the fixed header byte, `body` exactly the remaining bytes.
pub fn check(first: u8, body: &[u8]) -> Result<(), DecodeError> {
    let flags = first & 0x0f;
    let mut r = Reader { buf: body, pos: 0 };
    let flags_ok = match first >> 4 {
        1 => {
            let name = r.string()?;
            let level = r.u8()?;
            if name != b"MQTT" || level != 4 {
                return Err(DecodeError::BadProtocol);
            }
            let connect_flags = r.u8()?;
            if connect_flags & 1 != 0 {
                return Err(DecodeError::Malformed("CONNECT reserved flag set"));
            }
            r.take(2)?; // keepalive
            r.string()?; // client id
            if connect_flags & 0b100 != 0 {
                if (connect_flags >> 3) & 0b11 == 3 {
                    return Err(DecodeError::Malformed("will QoS 3"));
                }
                r.string()?;
                r.string()?;
            }
            if connect_flags & 0x80 != 0 {
                r.string()?;
            }
            if connect_flags & 0x40 != 0 {
                r.bytes()?; // the password is binary data
            }
            r.end()?;
            flags == 0
        }
        2 => {
            r.take(1)?;
            if r.u8()? > 5 {
                return Err(DecodeError::Malformed("CONNACK return code above 5"));
            }
            r.end()?;
            flags == 0
        }
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
            r.string()?;
            if qos > 0 {
                r.pid()?;
            }
            true
        }
        4 | 5 | 7 | 11 => {
            r.pid()?;
            r.end()?;
            flags == 0
        }
        6 => {
            r.pid()?;
            r.end()?;
            flags == 0b0010
        }
        8 => {
            r.pid()?;
            let mut topics = 0;
            while !r.done() {
                r.string()?;
                if r.u8()? > 2 {
                    return Err(DecodeError::Malformed("SUBSCRIBE with QoS above 2"));
                }
                topics += 1;
            }
            if topics == 0 {
                return Err(DecodeError::Malformed("SUBSCRIBE without topics"));
            }
            flags == 0b0010
        }
        9 => {
            r.pid()?;
            while !r.done() {
                let code = r.u8()?;
                if code > 2 && code != 0x80 {
                    return Err(DecodeError::Malformed("SUBACK return code"));
                }
            }
            flags == 0
        }
        10 => {
            r.pid()?;
            while !r.done() {
                r.string()?;
            }
            flags == 0b0010
        }
        12..=14 => {
            r.end()?;
            flags == 0
        }
        _ => false,
    };
    if flags_ok {
        Ok(())
    } else {
        Err(DecodeError::BadHeader(first))
    }
}

/// A bounds-checked cursor over one packet body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Malformed("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Malformed("field runs past the packet"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn pid(&mut self) -> Result<(), DecodeError> {
        if self.u16()? == 0 {
            return Err(DecodeError::Malformed("packet id 0"));
        }
        Ok(())
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn string(&mut self) -> Result<&'a [u8], DecodeError> {
        let s = self.bytes()?;
        if std::str::from_utf8(s).is_err() {
            return Err(DecodeError::Malformed("string is not UTF-8"));
        }
        Ok(s)
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.done() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("bytes after the last field"))
        }
    }
}

/// Appends the encoding of `packet` to `out`.
///
/// Encoding our own packets cannot fail except for a size beyond what MQTT
/// can express, which the session's limits rule out; that case is reported.
pub fn encode(packet: &Packet<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.resize(start + encoded_len(packet), 0);
    match mqttrs::encode_slice(packet, &mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(EncodeError(format!("{e:?}")))
        }
    }
}

/// A packet this side built could not be encoded (too large for MQTT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode MQTT packet: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

/// An upper bound of the encoded size of `packet`, for sizing the buffer.
fn encoded_len(packet: &Packet<'_>) -> usize {
    let body = match packet {
        Packet::Connect(c) => {
            12 + c.client_id.len()
                + c.username.map_or(0, |u| 2 + u.len())
                + c.password.map_or(0, |p| 2 + p.len())
                + c.last_will
                    .as_ref()
                    .map_or(0, |w| 4 + w.topic.len() + w.message.len())
        }
        Packet::Publish(p) => 4 + p.topic_name.len() + p.payload.len(),
        Packet::Subscribe(s) => {
            2 + s
                .topics
                .iter()
                .map(|t| 3 + t.topic_path.len())
                .sum::<usize>()
        }
        Packet::Suback(s) => 2 + s.return_codes.len(),
        Packet::Unsubscribe(u) => 2 + u.topics.iter().map(|t| 2 + t.len()).sum::<usize>(),
        _ => 4,
    };
    MAX_HEADER + body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Packet<'_>) {
        let mut out = Vec::new();
        encode(&p, &mut out).expect("encode");
        let (back, used) = decode(&out, 1 << 20).expect("decode").expect("whole");
        assert_eq!(used, out.len());
        assert_eq!(back, p);
    }

    #[test]
    fn packets_roundtrip() {
        roundtrip(Packet::Connect(Connect {
            protocol: Protocol::MQTT311,
            keep_alive: 60,
            client_id: "edge-1",
            clean_session: false,
            last_will: None,
            username: Some("edge-1"),
            password: Some(b"secret"),
        }));
        roundtrip(Packet::Connack(Connack {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        }));
        roundtrip(Packet::Publish(mqttrs::Publish {
            dup: true,
            qospid: QosPid::AtLeastOnce(Pid::try_from(7).expect("pid")),
            retain: false,
            topic_name: "tether/edge-1/up",
            payload: b"hello",
        }));
        roundtrip(Packet::Puback(Pid::try_from(9).expect("pid")));
        roundtrip(Packet::Pingreq);
        roundtrip(Packet::Pingresp);
        roundtrip(Packet::Disconnect);
        roundtrip(Packet::Subscribe(Subscribe {
            pid: Pid::try_from(1).expect("pid"),
            topics: vec![SubscribeTopic {
                topic_path: "tether/edge-1/down".into(),
                qos: QoS::AtLeastOnce,
            }],
        }));
    }

    #[test]
    fn partial_packets_wait() {
        let mut out = Vec::new();
        encode(&Packet::Puback(Pid::try_from(3).expect("pid")), &mut out).expect("encode");
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut], 100).expect("no error"), None);
        }
    }

    #[test]
    fn oversized_length_refused_before_buffering() {
        // PUBLISH announcing 200 MB with only the header present.
        let bytes = [0x30, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            decode(&bytes, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 20),
            Err(DecodeError::BadLength)
        );
    }

    #[test]
    fn lying_lengths_do_not_panic() {
        // PUBLISH whose topic length (0x00ff) runs past its 3-byte body.
        assert!(decode(&[0x32, 3, 0, 0xff, b'a'], 100).is_err());
        // CONNECT cut right after the protocol name.
        assert!(decode(&[0x10, 6, 0, 4, b'M', b'Q', b'T', b'T'], 100).is_err());
        // CONNECT for MQTT 5.
        let v5 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0];
        assert_eq!(decode(&v5, 100), Err(DecodeError::BadProtocol));
    }
}

//! Minimal protobuf wire reader and writer, and the `k8s\0` envelope
//! (`runtime.Unknown`) that wraps every Kubernetes protobuf body.

use super::{Error, Result};

/// The four bytes that start every non-streaming Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Largest field number protobuf allows.
const MAX_FIELD: u64 = (1 << 29) - 1;

/// One field value as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 2: strings, bytes, embedded messages, packed repeated fields.
    Len(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
    /// Wire type 1.
    Fixed64(u64),
}

impl<'a> WireValue<'a> {
    /// The bytes of a length-delimited value, or an error naming `what`.
    pub fn bytes(self, what: &'static str) -> Result<&'a [u8]> {
        match self {
            WireValue::Len(b) => Ok(b),
            _ => Err(Error::Invalid(what)),
        }
    }

    /// A length-delimited value as UTF-8 text, or an error naming `what`.
    pub fn str(self, what: &'static str) -> Result<&'a str> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| Error::Invalid(what))
    }

    /// A varint value, or an error naming `what`.
    pub fn varint(self, what: &'static str) -> Result<u64> {
        match self {
            WireValue::Varint(v) => Ok(v),
            _ => Err(Error::Invalid(what)),
        }
    }
}

/// Reads the fields of one protobuf message, in order, without copying.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over the bytes of one message.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Reads a base-128 varint (at most 10 bytes).
    pub fn read_varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(Error::Truncated)?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(Error::Invalid("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Invalid("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        if n > rest as u64 {
            return Err(Error::Truncated);
        }
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next field as `(number, value)`, or `None` at the end of the
    /// message. Groups (wire types 3 and 4) and wire types 6 and 7 are errors.
    pub fn next_field(&mut self) -> Result<Option<(u32, WireValue<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.read_varint()?;
        let number = key >> 3;
        if number == 0 || number > MAX_FIELD {
            return Err(Error::Invalid("protobuf field number"));
        }
        let value = match key & 7 {
            0 => WireValue::Varint(self.read_varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                WireValue::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let len = self.read_varint()?;
                WireValue::Len(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                WireValue::Fixed32(u32::from_le_bytes(a))
            }
            3 | 4 => return Err(Error::Invalid("protobuf groups are not supported")),
            _ => return Err(Error::Invalid("protobuf wire type")),
        };
        Ok(Some((number as u32, value)))
    }
}

/// Appends `value` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-delimited field (wire type 2).
pub fn put_len_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a varint field (wire type 0).
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, value);
}

/// A `k8s\0` envelope (`runtime.Unknown`), borrowed from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `typeMeta.apiVersion` (empty for discovery documents).
    pub api_version: &'a str,
    /// `typeMeta.kind`.
    pub kind: &'a str,
    /// The object message itself, exactly as received.
    pub raw: &'a [u8],
    /// `contentEncoding` (empty in every observed body).
    pub content_encoding: &'a str,
    /// `contentType` (empty in every observed body).
    pub content_type: &'a str,
}

/// Reads a `k8s\0` envelope: magic, then `Unknown{typeMeta=1, raw=2,
/// contentEncoding=3, contentType=4}` with `TypeMeta{apiVersion=1, kind=2}`.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope<'_>> {
    let rest = match body.strip_prefix(MAGIC) {
        Some(rest) => rest,
        None if MAGIC.starts_with(body) => return Err(Error::Truncated),
        None => return Err(Error::Missing("the k8s\\0 protobuf magic")),
    };
    let mut env = Envelope {
        api_version: "",
        kind: "",
        raw: &[],
        content_encoding: "",
        content_type: "",
    };
    let mut saw_raw = false;
    let mut r = Reader::new(rest);
    while let Some((field, value)) = r.next_field()? {
        match field {
            1 => {
                let mut tm = Reader::new(value.bytes("Unknown.typeMeta")?);
                while let Some((f, v)) = tm.next_field()? {
                    match f {
                        1 => env.api_version = v.str("TypeMeta.apiVersion")?,
                        2 => env.kind = v.str("TypeMeta.kind")?,
                        _ => {}
                    }
                }
            }
            2 => {
                env.raw = value.bytes("Unknown.raw")?;
                saw_raw = true;
            }
            3 => env.content_encoding = value.str("Unknown.contentEncoding")?,
            4 => env.content_type = value.str("Unknown.contentType")?,
            _ => {}
        }
    }
    if !saw_raw {
        return Err(Error::Missing("Unknown.raw"));
    }
    Ok(env)
}

/// Wraps an object message in a `k8s\0` envelope the way the apiserver does
/// (empty `contentEncoding` and `contentType` written out).
pub fn encode_envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = encode_envelope_head(api_version, kind, raw.len());
    out.reserve(raw.len() + 4);
    out.extend_from_slice(raw);
    encode_envelope_tail(&mut out);
    out
}

/// The envelope up to and including the length of `raw`: a caller that
/// knows `raw_len` appends `raw` itself, then [`encode_envelope_tail`].
pub fn encode_envelope_head(api_version: &str, kind: &str, raw_len: usize) -> Vec<u8> {
    let mut type_meta = Vec::with_capacity(api_version.len() + kind.len() + 4);
    put_len_field(&mut type_meta, 1, api_version.as_bytes());
    put_len_field(&mut type_meta, 2, kind.as_bytes());
    let mut out = Vec::with_capacity(type_meta.len() + 32);
    out.extend_from_slice(MAGIC);
    put_len_field(&mut out, 1, &type_meta);
    put_varint(&mut out, 2 << 3 | 2);
    put_varint(&mut out, raw_len as u64);
    out
}

/// The envelope's empty `contentEncoding` and `contentType` fields.
pub fn encode_envelope_tail(out: &mut Vec<u8>) {
    put_len_field(out, 3, b"");
    put_len_field(out, 4, b"");
}

/// The bytes of the first occurrence of length-delimited `field` in a
/// message, after checking the whole message's top-level framing.
pub fn find_len_field(msg: &[u8], field: u32) -> Result<Option<&[u8]>> {
    let mut found = None;
    let mut r = Reader::new(msg);
    while let Some((f, v)) = r.next_field()? {
        if f == field && found.is_none() {
            found = Some(v.bytes("embedded message")?);
        }
    }
    Ok(found)
}

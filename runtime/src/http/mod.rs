//! HTTP/1.1 message codec, sans-IO: the error type, the limits, body kinds
//! and the field-section parsing shared by requests and responses.
//!
//! The edge is both an HTTP/1.1 server (kubelet and friends talk to
//! 127.0.0.1:10261) and an HTTP/1.1 client (towards kube-apiserver), so this
//! module holds both directions: [`request`] and [`response`] parse heads,
//! [`body`] decodes body framing, [`write`](mod@write) serializes heads and chunks.
//! Nothing here does IO: callers feed bytes and get heads, payload and
//! consumed counts back.
//!
//! # Leniency (RFC 9112)
//!
//! * Heads: a bare LF ends a line (RFC 9112 §2.2 MAY). Go's client and
//!   server always send CRLF, and heads are re-serialized with CRLF before
//!   they go anywhere, so accepting LF cannot make two parsers disagree. A
//!   bare CR (not followed by LF) is refused.
//! * Empty lines before the start line are skipped (§2.2 SHOULD), counted
//!   against the head limit.
//! * Chunked framing is strict: every framing line ends in CRLF. Lenient
//!   chunk parsing is a known smuggling vector, and Go never sends bare LF.
//! * Refused with 400: obs-fold (§5.2), whitespace before the colon (§5.1),
//!   whitespace before the first field, CTLs (NUL, CR, LF, DEL, ...) other
//!   than HTAB in a value, non-token names, non-UTF-8 values, differing
//!   Content-Length values, Content-Length together with Transfer-Encoding,
//!   Transfer-Encoding in HTTP/1.0, and an HTTP/1.1 request without exactly
//!   one Host. Repeated identical Content-Length values are accepted (RFC
//!   9110 §8.6), as Go does.
//! * Transfer codings other than a single `chunked` get 501.
//! * A head over [`Limits::max_head`] bytes or with more than
//!   [`Limits::max_headers`] fields gets 431 (RFC 6585): 413 is about
//!   content (the body), not the head.
//! * Versions other than HTTP/1.x get 505.

use std::fmt;

pub mod body;
pub mod request;
pub mod response;
pub mod write;

#[cfg(test)]
mod tests;

pub use body::{BodyDecoder, Step};
pub use request::{parse_request_head, RequestHead};
pub use response::{parse_response_head, ResponseHead};
pub use write::{reason_phrase, write_request_head, write_response_head, ChunkedEncoder};

/// Why a message was refused, with the status a server should answer.
///
/// On the upstream side (parsing kube-apiserver's answers) every error
/// means a bad gateway; [`HttpError::status`] is meant for the server side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Syntax error in a start line, field line or chunk framing.
    Malformed(&'static str),
    /// Ambiguous body framing (the request-smuggling cases).
    Framing(&'static str),
    /// The head (or trailer section) is larger than the limit.
    HeadTooLarge,
    /// The head (or trailer section) has more fields than the limit.
    TooManyHeaders,
    /// A transfer coding other than `chunked`.
    UnsupportedTransferCoding,
    /// A protocol version other than HTTP/1.x.
    UnsupportedVersion,
    /// The connection ended before the body did.
    Truncated,
    /// Something handed to a writer would not be valid on the wire
    /// (header injection guard); a bug on our side, hence 500.
    InvalidOutput(&'static str),
}

impl HttpError {
    /// The status a server should answer with (then close the connection).
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::Framing(_) | HttpError::Truncated => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UnsupportedTransferCoding => 501,
            HttpError::UnsupportedVersion => 505,
            HttpError::InvalidOutput(_) => 500,
        }
    }

    /// A short human-readable reason, suitable for logs and error bodies.
    pub fn message(&self) -> &'static str {
        match self {
            HttpError::Malformed(m) | HttpError::Framing(m) | HttpError::InvalidOutput(m) => m,
            HttpError::HeadTooLarge => "header section too large",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::UnsupportedTransferCoding => "unsupported transfer coding",
            HttpError::UnsupportedVersion => "unsupported HTTP version",
            HttpError::Truncated => "connection closed before end of body",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for HttpError {}

/// Bounds on what a peer may make us buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (start line + fields + empty line, and leading empty
    /// lines), also the largest trailer section. Default 16 KiB.
    pub max_head: usize,
    /// Most fields in a head or trailer section. Default 100.
    pub max_headers: usize,
    /// Longest chunk-size line (size + extensions, without CRLF). Default 4 KiB.
    pub max_chunk_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_headers: 100,
            max_chunk_line: 4096,
        }
    }
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes (Content-Length).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Fields as received: names keep their case, values are trimmed of OWS.
pub(crate) type Fields = Vec<(String, String)>;

/// First value of `name` (case-insensitive).
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// All values of `name` (case-insensitive), in order.
pub(crate) fn fields_named<'a>(
    fields: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether the comma-separated lists of `name` contain `token`.
pub(crate) fn has_token(fields: &[(String, String)], name: &str, token: &str) -> bool {
    fields_named(fields, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Framing from Content-Length and Transfer-Encoding, refusing every
/// ambiguous combination rather than guessing (RFC 9112 §6.1, §6.3).
/// `Ok(None)` means neither field is present.
pub(crate) fn framing(
    fields: &[(String, String)],
    version_minor: u8,
) -> Result<Option<BodyKind>, HttpError> {
    let mut te_seen = false;
    let mut chunked = false;
    for value in fields_named(fields, "transfer-encoding") {
        te_seen = true;
        for coding in value.split(',') {
            let coding = coding.trim();
            if coding.is_empty() {
                continue;
            }
            // Only a single `chunked` is understood; `chunked, chunked` or
            // anything layered with it would need codings we do not do.
            if coding.eq_ignore_ascii_case("chunked") && !chunked {
                chunked = true;
            } else {
                return Err(HttpError::UnsupportedTransferCoding);
            }
        }
    }
    if te_seen && !chunked {
        return Err(HttpError::Malformed("empty Transfer-Encoding"));
    }

    let mut length: Option<u64> = None;
    for value in fields_named(fields, "content-length") {
        for part in value.split(',') {
            let n = parse_content_length(part.trim())?;
            match length {
                Some(l) if l != n => return Err(HttpError::Framing("conflicting Content-Length")),
                _ => length = Some(n),
            }
        }
    }

    match (chunked, length) {
        (true, Some(_)) => Err(HttpError::Framing(
            "both Content-Length and Transfer-Encoding",
        )),
        // HTTP/1.0 has no chunked coding: a sender claiming it is either
        // broken or smuggling (RFC 9112 §6.1).
        (true, None) if version_minor == 0 => {
            Err(HttpError::Framing("Transfer-Encoding in HTTP/1.0"))
        }
        (true, None) => Ok(Some(BodyKind::Chunked)),
        (false, Some(n)) => Ok(Some(BodyKind::Length(n))),
        (false, None) => Ok(None),
    }
}

/// 1*DIGIT, no sign, no whitespace, fits in u64.
fn parse_content_length(s: &str) -> Result<u64, HttpError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Framing("invalid Content-Length"));
    }
    s.parse::<u64>()
        .map_err(|_| HttpError::Framing("Content-Length too large"))
}

/// tchar (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Non-empty token.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// field-content bytes: VCHAR, obs-text, SP, HTAB; no other CTL.
pub(crate) fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Where the head ends: bytes up to and including the empty line, or
/// `Ok(None)` if it has not arrived yet. Leading empty lines are part of
/// the returned length. Only the first `max_head` bytes are looked at.
pub(crate) fn head_end(buf: &[u8], max_head: usize) -> Result<Option<usize>, HttpError> {
    let window = &buf[..buf.len().min(max_head)];
    let mut line_start = 0;
    let mut seen_content = false;
    while let Some(off) = window[line_start..].iter().position(|&b| b == b'\n') {
        let lf = line_start + off;
        let line = &window[line_start..lf];
        let empty = line.is_empty() || line == b"\r";
        line_start = lf + 1;
        if empty && seen_content {
            return Ok(Some(line_start));
        }
        if !empty {
            seen_content = true;
        }
    }
    if buf.len() >= max_head {
        Err(HttpError::HeadTooLarge)
    } else {
        Ok(None)
    }
}

/// Splits a complete head (as found by [`head_end`]) into its start line
/// and field lines, skipping leading empty lines and the final empty line.
/// Strips CR before LF; refuses any other CR.
pub(crate) fn head_lines(head: &[u8]) -> Result<(&[u8], Vec<&[u8]>), HttpError> {
    let mut lines = Vec::new();
    for raw in head.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.contains(&b'\r') {
            return Err(HttpError::Malformed("bare CR in head"));
        }
        lines.push(line);
    }
    let mut it = lines.into_iter().skip_while(|l| l.is_empty());
    let start = it.next().ok_or(HttpError::Malformed("empty head"))?;
    // What is left: the fields, then the empty line and the empty piece
    // after the last LF.
    let fields: Vec<&[u8]> = it.take_while(|l| !l.is_empty()).collect();
    Ok((start, fields))
}

/// Parses field lines (RFC 9112 §5) into name/value pairs.
pub(crate) fn parse_fields(lines: &[&[u8]], limits: &Limits) -> Result<Fields, HttpError> {
    if lines.len() > limits.max_headers {
        return Err(HttpError::TooManyHeaders);
    }
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        out.push(parse_field_line(line)?);
    }
    Ok(out)
}

/// One `name: value` line.
pub(crate) fn parse_field_line(line: &[u8]) -> Result<(String, String), HttpError> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        // A continuation line (obs-fold) or whitespace before the first
        // field: both let parsers disagree on field boundaries.
        return Err(HttpError::Malformed(
            "obs-fold or leading whitespace in field line",
        ));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed("field line without colon"))?;
    let name = &line[..colon];
    if !is_token(name) {
        // Also catches `Name : value`, which §5.1 says MUST be refused.
        return Err(HttpError::Malformed("invalid field name"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if !value.iter().all(|&b| is_field_value_byte(b)) {
        return Err(HttpError::Malformed("control character in field value"));
    }
    let value =
        std::str::from_utf8(value).map_err(|_| HttpError::Malformed("field value is not UTF-8"))?;
    // Names are tchar only, hence ASCII.
    let name = String::from_utf8_lossy(name).into_owned();
    Ok((name, value.to_owned()))
}

/// Strips leading and trailing SP/HTAB.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `HTTP/1.d` → d; other `HTTP/x.y` → 505; anything else → 400.
pub(crate) fn parse_version(v: &[u8]) -> Result<u8, HttpError> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => Ok(d - b'0'),
        [b'H', b'T', b'T', b'P', b'/', rest @ ..]
            if !rest.is_empty() && rest.iter().all(|&b| b.is_ascii_digit() || b == b'.') =>
        {
            Err(HttpError::UnsupportedVersion)
        }
        _ => Err(HttpError::Malformed("invalid HTTP version")),
    }
}

/// Whether a connection stays open after this message (RFC 9112 §9.3).
pub(crate) fn keep_alive(fields: &[(String, String)], version_minor: u8) -> bool {
    if version_minor == 0 {
        has_token(fields, "connection", "keep-alive")
    } else {
        !has_token(fields, "connection", "close")
    }
}

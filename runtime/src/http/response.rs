//! Response heads: parsing the status line and fields kube-apiserver sent
//! (the edge's upstream side), and deciding how the body is framed.

use super::{
    field, fields_named, framing, head_end, head_lines, keep_alive, parse_fields, parse_version,
    BodyKind, HttpError, Limits,
};

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code, 100..=599.
    pub status: u16,
    /// Reason phrase as received (may be empty; carries no meaning).
    pub reason: String,
    /// The `d` of `HTTP/1.d`.
    pub version_minor: u8,
    /// Fields in order; names as received, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        fields_named(&self.headers, name)
    }

    /// How the body is framed, given the request's method (RFC 9112 §6.3):
    /// none for HEAD, 1xx, 204, 304 and a 2xx to CONNECT (their
    /// Content-Length and Transfer-Encoding are ignored, as the RFC says);
    /// otherwise chunked, a length, or until the connection closes.
    ///
    /// After a 1xx the real response follows: parse another head. After a
    /// 101 the connection is no longer HTTP.
    pub fn body_kind(&self, request_method: &str) -> Result<BodyKind, HttpError> {
        if request_method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
            || (request_method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&self.status))
        {
            return Ok(BodyKind::None);
        }
        Ok(framing(&self.headers, self.version_minor)?.unwrap_or(BodyKind::UntilClose))
    }

    /// Whether the connection may carry another request afterwards. A body
    /// read until close ends the connection regardless.
    pub fn keep_alive(&self) -> bool {
        keep_alive(&self.headers, self.version_minor)
    }
}

/// Parses a response head from the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((head, consumed)))`: the body (if
/// any) starts at `buf[consumed..]`. Framing errors surface from
/// [`ResponseHead::body_kind`], which needs the request method.
pub fn parse_response_head(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    early_check(buf)?;
    let Some(end) = head_end(buf, limits.max_head)? else {
        return Ok(None);
    };
    let (start, lines) = head_lines(&buf[..end])?;
    let (version_minor, status, reason) = parse_status_line(start)?;
    let headers = parse_fields(&lines, limits)?;
    Ok(Some((
        ResponseHead {
            status,
            reason,
            version_minor,
            headers,
        },
        end,
    )))
}

/// Refuses bytes that cannot start a status line, before the head is
/// complete (an upstream answering in another protocol).
fn early_check(buf: &[u8]) -> Result<(), HttpError> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let n = line.len().min(5);
    if line[..n] != b"HTTP/"[..n] {
        return Err(HttpError::Malformed("not an HTTP response"));
    }
    Ok(())
}

/// `HTTP/1.d SP 3DIGIT SP reason` (RFC 9112 §4). A missing reason and its
/// SP are tolerated: the reason means nothing.
fn parse_status_line(line: &[u8]) -> Result<(u8, u16, String), HttpError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let version_minor = parse_version(version)?;
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default();
    let status = match code {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(HttpError::Malformed("invalid status code")),
    };
    if !(100..=599).contains(&status) {
        return Err(HttpError::Malformed("status code out of range"));
    }
    if !reason.iter().all(|&b| super::is_field_value_byte(b)) {
        return Err(HttpError::Malformed("control character in reason phrase"));
    }
    let reason = std::str::from_utf8(reason)
        .map_err(|_| HttpError::Malformed("reason phrase is not UTF-8"))?;
    Ok((version_minor, status, reason.to_owned()))
}

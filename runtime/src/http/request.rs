//! Request heads: parsing the request line and fields a client sent, and
//! deciding how its body is framed.

use super::{
    field, fields_named, framing, head_end, head_lines, is_token, keep_alive, parse_fields,
    parse_version, BodyKind, HttpError, Limits,
};

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token, case kept (methods are case-sensitive).
    pub method: String,
    /// Origin-form target: `/path?query`, as received (not decoded).
    pub target: String,
    /// The `d` of `HTTP/1.d`.
    pub version_minor: u8,
    /// Fields in order; names as received, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        fields_named(&self.headers, name)
    }

    /// How the body is framed (RFC 9112 §6.3): chunked, a length, or none.
    /// A request never reads until close. Already checked by
    /// [`parse_request_head`], so it fails only on heads built by hand.
    pub fn body_kind(&self) -> Result<BodyKind, HttpError> {
        Ok(framing(&self.headers, self.version_minor)?.unwrap_or(BodyKind::None))
    }

    /// Whether the client wants the connection kept open afterwards.
    pub fn keep_alive(&self) -> bool {
        keep_alive(&self.headers, self.version_minor)
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((head, consumed)))`: the body (if
/// any) starts at `buf[consumed..]`. An error is final: answer
/// [`HttpError::status`] and close. Each call rescans `buf`, so call it when
/// new bytes arrived; the work is bounded by `limits.max_head`.
pub fn parse_request_head(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    // Refuse a garbage request line early, before its head is complete, so
    // a peer speaking something else does not get to fill the buffer.
    early_check(buf)?;
    let Some(end) = head_end(buf, limits.max_head)? else {
        return Ok(None);
    };
    let (start, lines) = head_lines(&buf[..end])?;
    let (method, target, version_minor) = parse_request_line(start)?;
    let headers = parse_fields(&lines, limits)?;
    let head = RequestHead {
        method,
        target,
        version_minor,
        headers,
    };

    // Validate framing now so a caller cannot forget to.
    framing(&head.headers, version_minor)?;
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
    if version_minor >= 1 && head.headers_named("host").count() != 1 {
        return Err(HttpError::Malformed(
            "HTTP/1.1 request needs exactly one Host",
        ));
    }
    Ok(Some((head, end)))
}

/// Checks the method of a still-incomplete first line.
fn early_check(buf: &[u8]) -> Result<(), HttpError> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let method_len = line
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    if !line[..method_len].iter().all(|&b| super::is_tchar(b)) {
        return Err(HttpError::Malformed("invalid method"));
    }
    Ok(())
}

/// `method SP origin-form SP HTTP/1.d`, single spaces (RFC 9112 §3).
fn parse_request_line(line: &[u8]) -> Result<(String, String, u8), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("invalid request line"));
    };
    // Version first: an HTTP/2 preface (`PRI * HTTP/2.0`) should get 505.
    let version_minor = parse_version(version)?;
    if !is_token(method) {
        return Err(HttpError::Malformed("invalid method"));
    }
    // Only origin-form: kube clients talk to us as to an origin server.
    // Absolute-form (forward proxying), authority-form (CONNECT) and
    // asterisk-form are not for us.
    if target.first() != Some(&b'/') || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(HttpError::Malformed("invalid request target"));
    }
    // Both are ASCII by the checks above.
    let method = String::from_utf8_lossy(method).into_owned();
    let target = String::from_utf8_lossy(target).into_owned();
    Ok((method, target, version_minor))
}

//! Serializing: request and response heads, and the chunked encoder.
//!
//! Writers check what they emit, so a header value carrying CRLF (from a
//! client, a config file or a bug) cannot inject fields or messages.

use super::{is_field_value_byte, is_token, HttpError, RequestHead};

/// Appends a request head (request line, fields, empty line) to `out`,
/// always as HTTP/1.1 with CRLF line ends. Nothing is appended on error.
pub fn write_request_head(head: &RequestHead, out: &mut Vec<u8>) -> Result<(), HttpError> {
    if !is_token(head.method.as_bytes()) {
        return Err(HttpError::InvalidOutput("invalid method"));
    }
    if !head.target.starts_with('/') || !head.target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(HttpError::InvalidOutput("invalid request target"));
    }
    check_fields(&head.headers)?;
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_fields(&head.headers, out);
    Ok(())
}

/// Appends a response head to `out`, as HTTP/1.1 with CRLF line ends. An
/// empty `reason` is replaced by [`reason_phrase`]. Nothing is appended on
/// error.
pub fn write_response_head<N: AsRef<str>, V: AsRef<str>>(
    status: u16,
    reason: &str,
    headers: &[(N, V)],
    out: &mut Vec<u8>,
) -> Result<(), HttpError> {
    if !(100..=599).contains(&status) {
        return Err(HttpError::InvalidOutput("status code out of range"));
    }
    if !reason.bytes().all(is_field_value_byte) {
        return Err(HttpError::InvalidOutput("invalid reason phrase"));
    }
    check_fields(headers)?;
    let reason = if reason.is_empty() {
        reason_phrase(status)
    } else {
        reason
    };
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    put_fields(headers, out);
    Ok(())
}

/// The usual reason phrase of a status the edge answers with ("" if none
/// is known: the phrase is optional).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Refuses names that are not tokens and values with control characters.
fn check_fields<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)]) -> Result<(), HttpError> {
    for (name, value) in headers {
        if !is_token(name.as_ref().as_bytes()) {
            return Err(HttpError::InvalidOutput("invalid header name"));
        }
        if !value.as_ref().bytes().all(is_field_value_byte) {
            return Err(HttpError::InvalidOutput("invalid header value"));
        }
    }
    Ok(())
}

/// `name: value` lines and the empty line.
fn put_fields<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)], out: &mut Vec<u8>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_ref().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Chunked transfer coding, the writing side (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkedEncoder;

impl ChunkedEncoder {
    /// Appends `data` as one chunk. Empty data appends nothing: an empty
    /// chunk would end the body.
    pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    /// Appends the last chunk and an empty trailer section.
    pub fn finish(out: &mut Vec<u8>) {
        out.extend_from_slice(b"0\r\n\r\n");
    }

    /// Appends the last chunk with trailer fields. Nothing is appended on
    /// error.
    pub fn finish_with_trailers<N: AsRef<str>, V: AsRef<str>>(
        trailers: &[(N, V)],
        out: &mut Vec<u8>,
    ) -> Result<(), HttpError> {
        check_fields(trailers)?;
        out.extend_from_slice(b"0\r\n");
        put_fields(trailers, out);
        Ok(())
    }
}

//! Minimal JSON scanner: validates structure and hands out byte ranges of
//! values without building a tree; unescapes and writes the few strings
//! (metadata) that are read or re-encoded.

use std::ops::Range;

use super::{Error, Result};

/// Deepest nesting accepted; deeper input is an error, not a stack overflow.
pub const MAX_DEPTH: usize = 128;

/// The index of the first non-whitespace byte at or after `i`.
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The range of the single JSON object that makes up `b`, surrounding
/// whitespace excluded. Anything else, or trailing bytes, is an error.
pub fn document(b: &[u8]) -> Result<Range<usize>> {
    let start = skip_ws(b, 0);
    match b.get(start) {
        None => return Err(Error::Truncated),
        Some(b'{') => {}
        Some(_) => return Err(Error::Invalid("JSON body is not an object")),
    }
    let end = value_end(b, start)?;
    if skip_ws(b, end) != b.len() {
        return Err(Error::Invalid("bytes after the JSON object"));
    }
    Ok(start..end)
}

/// The end (exclusive) of the JSON value starting exactly at `i`, checking
/// its syntax on the way.
pub fn value_end(b: &[u8], i: usize) -> Result<usize> {
    skip_value(b, i, 0)
}

fn skip_value(b: &[u8], i: usize, depth: usize) -> Result<usize> {
    match b.get(i) {
        None => Err(Error::Truncated),
        Some(b'{') => for_each_member_at(b, i, depth, &mut |_, _| Ok(())),
        Some(b'[') => for_each_element_at(b, i, depth, &mut |_| Ok(())),
        Some(b'"') => string_end(b, i),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => number_end(b, i),
        Some(_) => Err(Error::Invalid("JSON value")),
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize> {
    let have = &b[i..b.len().min(i + word.len())];
    if have == word {
        Ok(i + word.len())
    } else if word.starts_with(have) {
        Err(Error::Truncated)
    } else {
        Err(Error::Invalid("JSON literal"))
    }
}

fn digits(b: &[u8], mut i: usize) -> Result<usize> {
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == start {
        return Err(if i == b.len() {
            Error::Truncated
        } else {
            Error::Invalid("JSON number")
        });
    }
    Ok(i)
}

fn number_end(b: &[u8], mut i: usize) -> Result<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        None => return Err(Error::Truncated),
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i)?,
        Some(_) => return Err(Error::Invalid("JSON number")),
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Ok(i)
}

/// The end (exclusive) of the JSON string whose opening quote is at `i`.
pub fn string_end(b: &[u8], i: usize) -> Result<usize> {
    if b.get(i) != Some(&b'"') {
        return Err(if i >= b.len() {
            Error::Truncated
        } else {
            Error::Invalid("expected a JSON string")
        });
    }
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err(Error::Truncated),
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => match b.get(j + 1) {
                None => return Err(Error::Truncated),
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                Some(b'u') => {
                    for k in 0..4 {
                        match b.get(j + 2 + k) {
                            None => return Err(Error::Truncated),
                            Some(c) if c.is_ascii_hexdigit() => {}
                            Some(_) => return Err(Error::Invalid("JSON \\u escape")),
                        }
                    }
                    j += 6;
                }
                Some(_) => return Err(Error::Invalid("JSON escape")),
            },
            Some(c) if *c < 0x20 => return Err(Error::Invalid("control byte in JSON string")),
            Some(_) => j += 1,
        }
    }
}

/// Calls `f(raw_key, value_range)` for each member of the object whose `{`
/// is at `start`, and returns the end of the object. `raw_key` is the key's
/// text between the quotes, escapes not undone (Kubernetes never escapes
/// the keys this module looks for).
pub fn for_each_member<'a>(
    b: &'a [u8],
    start: usize,
    f: &mut dyn FnMut(&'a [u8], Range<usize>) -> Result<()>,
) -> Result<usize> {
    for_each_member_at(b, start, 0, f)
}

fn for_each_member_at<'a>(
    b: &'a [u8],
    start: usize,
    depth: usize,
    f: &mut dyn FnMut(&'a [u8], Range<usize>) -> Result<()>,
) -> Result<usize> {
    if depth >= MAX_DEPTH {
        return Err(Error::Invalid("JSON nested too deeply"));
    }
    match b.get(start) {
        Some(b'{') => {}
        None => return Err(Error::Truncated),
        Some(_) => return Err(Error::Invalid("expected a JSON object")),
    }
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        let key_end = string_end(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        match b.get(i) {
            Some(b':') => {}
            None => return Err(Error::Truncated),
            Some(_) => return Err(Error::Invalid("expected ':' in JSON object")),
        }
        let v = skip_ws(b, i + 1);
        let v_end = skip_value(b, v, depth + 1)?;
        f(key, v..v_end)?;
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            None => return Err(Error::Truncated),
            Some(_) => return Err(Error::Invalid("expected ',' or '}' in JSON object")),
        }
    }
}

/// Calls `f(value_range)` for each element of the array whose `[` is at
/// `start`, and returns the end of the array.
pub fn for_each_element(
    b: &[u8],
    start: usize,
    f: &mut dyn FnMut(Range<usize>) -> Result<()>,
) -> Result<usize> {
    for_each_element_at(b, start, 0, f)
}

fn for_each_element_at(
    b: &[u8],
    start: usize,
    depth: usize,
    f: &mut dyn FnMut(Range<usize>) -> Result<()>,
) -> Result<usize> {
    if depth >= MAX_DEPTH {
        return Err(Error::Invalid("JSON nested too deeply"));
    }
    match b.get(start) {
        Some(b'[') => {}
        None => return Err(Error::Truncated),
        Some(_) => return Err(Error::Invalid("expected a JSON array")),
    }
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&b']') {
        return Ok(i + 1);
    }
    loop {
        let v_end = skip_value(b, i, depth + 1)?;
        f(i..v_end)?;
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok(i + 1),
            None => return Err(Error::Truncated),
            Some(_) => return Err(Error::Invalid("expected ',' or ']' in JSON array")),
        }
    }
}

/// Whether the value in `r` is the literal `null`.
pub fn is_null(b: &[u8], r: &Range<usize>) -> bool {
    b.get(r.clone()) == Some(b"null".as_slice())
}

fn hex4(b: &[u8]) -> Result<u32> {
    let s = std::str::from_utf8(b).map_err(|_| Error::Invalid("JSON \\u escape"))?;
    u32::from_str_radix(s, 16).map_err(|_| Error::Invalid("JSON \\u escape"))
}

/// The text of the JSON string value in `r` (quotes included in `r`), with
/// escapes undone. A lone surrogate becomes U+FFFD, as Go does.
pub fn string(b: &[u8], r: Range<usize>) -> Result<String> {
    let s = b.get(r).ok_or(Error::Invalid("JSON string range"))?;
    if s.len() < 2 || s[0] != b'"' || s[s.len() - 1] != b'"' {
        return Err(Error::Invalid("expected a JSON string"));
    }
    unescape(&s[1..s.len() - 1])
}

/// The text of a JSON string's contents (between the quotes, as a key from
/// [`for_each_member`]), with escapes undone.
pub fn unescape(s: &[u8]) -> Result<String> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *s.get(i + 1).ok_or(Error::Invalid("JSON escape"))?;
        i += 2;
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(Error::Invalid("JSON escape")),
        };
        if let Some(c) = simple {
            out.push(c);
            continue;
        }
        let hi = hex4(s.get(i..i + 4).ok_or(Error::Invalid("JSON \\u escape"))?)?;
        i += 4;
        let mut cp = hi;
        if (0xD800..0xDC00).contains(&hi) && s.get(i..i + 2) == Some(b"\\u") && s.len() >= i + 6 {
            let lo = hex4(&s[i + 2..i + 6])?;
            if (0xDC00..0xE000).contains(&lo) {
                cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
        }
        let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).map_err(|_| Error::Invalid("JSON string is not UTF-8"))
}

/// The integer value in `r` (a JSON number without fraction or exponent).
pub fn int(b: &[u8], r: Range<usize>) -> Result<i64> {
    let s = b.get(r).ok_or(Error::Invalid("JSON number range"))?;
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(Error::Invalid("expected a JSON integer"))
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it:
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes, and control bytes other
/// than `\n`, `\r`, `\t` as `\u00XX`.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for ch in s.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
                let v = c as u32;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(v >> 4) as usize & 15]);
                out.push(HEX[v as usize & 15]);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

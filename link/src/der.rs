//! DER, the few pieces of it the link reads and writes: one element at a
//! time, definite lengths only, nothing trusted but the lengths.

/// One DER element: tag, definite length, contents.
pub fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 4);
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// Reads one DER element with tag `tag`: (contents, rest). `None` when the
/// tag differs or the length runs past the buffer.
pub fn read(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match read_any(buf)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// Reads one DER element of any tag: (tag, contents, rest).
pub fn read_any(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*buf.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, buf.get(head..end)?, buf.get(end..)?))
}

/// The base64 alphabet of RFC 4648 §4.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), one line: PEM's body, and
/// the `[]byte` fields of Kubernetes' JSON (Go's `encoding/json`).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}

/// Decodes standard base64; the padding may be left out. `None` for any
/// character outside the alphabet (whitespace included) or a length no
/// encoding has.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// PEM text of one DER object under `label` (`CERTIFICATE`, `PRIVATE
/// KEY`, `CERTIFICATE REQUEST`): base64 in lines of 64, as RFC 7468 asks.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn base64_matches_rfc4648_and_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
            assert_eq!(unbase64(coded).as_deref(), Some(plain.as_bytes()));
        }
        for n in 0..70 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(unbase64(&base64(&data)).as_deref(), Some(data.as_slice()));
        }
        assert_eq!(unbase64("Zg"), Some(b"f".to_vec()));
        assert_eq!(unbase64("Z"), None);
        assert_eq!(unbase64("Zm9v\n"), None);
        assert_eq!(unbase64("Zm=v"), None);
    }

    #[test]
    fn pem_is_base64_in_lines_of_64() {
        assert_eq!(pem("X", b""), "-----BEGIN X-----\n-----END X-----\n");
        assert_eq!(pem("X", b"f"), "-----BEGIN X-----\nZg==\n-----END X-----\n");
        assert_eq!(
            pem("X", b"fo"),
            "-----BEGIN X-----\nZm8=\n-----END X-----\n"
        );
        assert_eq!(
            pem("X", b"foobar"),
            "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n"
        );
        let long = pem("CERTIFICATE", &[0xfb; 100]);
        let lines: Vec<&str> = long.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1].len(), 64);
        assert!(lines[1].starts_with("+/v7"));
        let back: Vec<u8> = rustls::pki_types::CertificateDer::pem_slice_iter(long.as_bytes())
            .next()
            .expect("one")
            .expect("parses")
            .to_vec();
        assert_eq!(back, vec![0xfb; 100]);
    }

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for n in [0usize, 3, 127, 128, 200, 300, 70_000] {
            let contents = vec![7u8; n];
            let enc = tlv(0x04, &contents);
            assert_eq!(read(&enc, 0x04), Some((&contents[..], &[][..])), "{n}");
        }
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(read(&[0x04, 0x05, 1], 0x04), None);
        assert_eq!(read(&[0x04, 0x80], 0x04), None);
        assert_eq!(read(&[0x02, 0x00], 0x04), None);
    }
}

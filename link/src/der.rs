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

/// PEM text of one DER object under `label` (`CERTIFICATE`, `PRIVATE
/// KEY`, `CERTIFICATE REQUEST`): base64 in lines of 64, as RFC 7468 asks.
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
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

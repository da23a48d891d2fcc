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
    if *buf.first()? != tag {
        return None;
    }
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
    Some((buf.get(head..end)?, buf.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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

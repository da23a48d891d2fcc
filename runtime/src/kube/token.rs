//! The apiserver's answer to a TokenRequest (`serviceaccounts/<sa>/token`):
//! when the token it carries was issued and when it expires, read from
//! either encoding. The proxy needs no more than that to know whether a
//! cached token may still be handed out; the token itself stays opaque.

use super::{json, pb, Encoding, Error, Result};

/// When a token was issued and when it expires, in seconds since the Unix
/// epoch (the apiserver's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// `metadata.creationTimestamp` of the answer.
    pub issued: i64,
    /// `status.expirationTimestamp`.
    pub expires: i64,
}

/// Reads the lifetime of the token in a TokenRequest answer. Fails unless
/// the answer is a TokenRequest carrying a non-empty token and both times.
pub fn lifetime(encoding: Encoding, body: &[u8]) -> Result<Lifetime> {
    match encoding {
        Encoding::Json => json_lifetime(body),
        Encoding::Protobuf => pb_lifetime(body),
    }
}

fn json_lifetime(body: &[u8]) -> Result<Lifetime> {
    let doc = json::document(body)?;
    let (mut kind, mut issued, mut expires, mut token) = (None, None, None, false);
    json::for_each_member(body, doc.start, &mut |key, value| {
        match key {
            b"kind" => kind = Some(json::string(body, value)?),
            b"metadata" => {
                json::for_each_member(body, value.start, &mut |key, value| {
                    if key == b"creationTimestamp" && !json::is_null(body, &value) {
                        issued = Some(rfc3339(&json::string(body, value)?)?);
                    }
                    Ok(())
                })?;
            }
            b"status" => {
                json::for_each_member(body, value.start, &mut |key, value| {
                    match key {
                        b"token" => token = !json::string(body, value)?.is_empty(),
                        b"expirationTimestamp" if !json::is_null(body, &value) => {
                            expires = Some(rfc3339(&json::string(body, value)?)?);
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })?;
    finish(kind.as_deref(), issued, expires, token)
}

/// TokenRequest{metadata=1, spec=2, status=3}; ObjectMeta.creationTimestamp
/// is field 8; TokenRequestStatus{token=1, expirationTimestamp=2}; Time is
/// {seconds=1, nanos=2}.
fn pb_lifetime(body: &[u8]) -> Result<Lifetime> {
    let env = pb::parse_envelope(body)?;
    let (mut issued, mut expires, mut token) = (None, None, false);
    let mut r = pb::Reader::new(env.raw);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => {
                let meta = v.bytes("TokenRequest.metadata")?;
                if let Some(time) = pb::find_len_field(meta, 8)? {
                    issued = Some(pb_seconds(time)?);
                }
            }
            3 => {
                let mut s = pb::Reader::new(v.bytes("TokenRequest.status")?);
                while let Some((field, v)) = s.next_field()? {
                    match field {
                        1 => token = !v.bytes("TokenRequestStatus.token")?.is_empty(),
                        2 => expires = Some(pb_seconds(v.bytes("expirationTimestamp")?)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    finish(Some(env.kind), issued, expires, token)
}

fn pb_seconds(time: &[u8]) -> Result<i64> {
    let mut r = pb::Reader::new(time);
    let mut seconds = 0;
    while let Some((field, v)) = r.next_field()? {
        if field == 1 {
            // int64 on the wire: two's complement in 64 bits.
            seconds = v.varint("Time.seconds")? as i64;
        }
    }
    Ok(seconds)
}

fn finish(
    kind: Option<&str>,
    issued: Option<i64>,
    expires: Option<i64>,
    token: bool,
) -> Result<Lifetime> {
    if kind != Some("TokenRequest") {
        return Err(Error::Invalid("not a TokenRequest"));
    }
    if !token {
        return Err(Error::Missing("status.token"));
    }
    Ok(Lifetime {
        issued: issued.ok_or(Error::Missing("metadata.creationTimestamp"))?,
        expires: expires.ok_or(Error::Missing("status.expirationTimestamp"))?,
    })
}

/// Seconds since the Unix epoch of an RFC 3339 time as the apiserver
/// writes them (`2026-11-22T03:14:55Z`, optionally with fractional seconds
/// or a numeric offset).
pub fn rfc3339(s: &str) -> Result<i64> {
    const BAD: Error = Error::Invalid("time is not RFC 3339");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return Err(BAD);
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(BAD);
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        let part = s.get(r).ok_or(BAD)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(BAD);
        }
        part.parse().map_err(|_| BAD)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(BAD);
    }
    if second > 60 {
        return Err(BAD);
    }
    // Fractional seconds, then the zone.
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return Err(BAD),
    };
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture;

    #[test]
    fn times() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(rfc3339("2026-11-22T03:14:55Z"), Ok(1_795_317_295));
        assert_eq!(rfc3339("2026-11-22T03:14:55.123456Z"), Ok(1_795_317_295));
        assert_eq!(rfc3339("2026-11-22T04:14:55+01:00"), Ok(1_795_317_295));
        assert_eq!(rfc3339("2000-02-29T00:00:00Z"), Ok(951_782_400));
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T03:14:55",
            "x026-11-22T03:14:55Z",
            "2026-11-22T03:14:55Zjunk",
        ] {
            assert!(rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recorded_answer() {
        let body = fixture("write-node-token-request-json.response.body.json");
        let life = lifetime(Encoding::Json, &body).expect("a token");
        // creationTimestamp 2026-11-22T02:14:48Z, expires 03:14:55Z: the
        // 3607 s that were asked for.
        assert_eq!(life.expires - life.issued, 3607);
        assert_eq!(life.expires, 1_795_317_295);
    }

    #[test]
    fn protobuf_answer() {
        // TokenRequest{metadata{creationTimestamp=100}, status{token, exp=3700}}
        let time = |s: u64| {
            let mut t = Vec::new();
            pb::put_varint_field(&mut t, 1, s);
            t
        };
        let mut meta = Vec::new();
        pb::put_len_field(&mut meta, 1, b"web");
        pb::put_len_field(&mut meta, 8, &time(100));
        let mut status = Vec::new();
        pb::put_len_field(&mut status, 1, b"eyJ...");
        pb::put_len_field(&mut status, 2, &time(3700));
        let mut raw = Vec::new();
        pb::put_len_field(&mut raw, 1, &meta);
        pb::put_len_field(&mut raw, 3, &status);
        let body = pb::encode_envelope("authentication.k8s.io/v1", "TokenRequest", &raw);
        assert_eq!(
            lifetime(Encoding::Protobuf, &body),
            Ok(Lifetime {
                issued: 100,
                expires: 3700
            })
        );
        // No token: not something to hand out again.
        let mut raw = Vec::new();
        pb::put_len_field(&mut raw, 1, &meta);
        let body = pb::encode_envelope("authentication.k8s.io/v1", "TokenRequest", &raw);
        assert!(lifetime(Encoding::Protobuf, &body).is_err());
        // A Status is not a token.
        let status = fixture("err-404-pod-pb.response.body.bin");
        assert!(lifetime(Encoding::Protobuf, &status).is_err());
        assert!(lifetime(Encoding::Json, b"{\"kind\":\"Status\"}").is_err());
    }
}

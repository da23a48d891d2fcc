//! Tests of the HTTP/1.1 codec against recorded kube-apiserver 1.24
//! exchanges, the request-smuggling cases, limits, and garbage.

use super::*;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/kube-apiserver-1.24/"
);

/// (file name, contents) of every fixture whose name ends with `suffix`.
fn fixtures(suffix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(suffix) {
            out.push((name, std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// A request fixture without its `#` comment lines, LF line ends as in
/// the file, and the empty line curl sent but the file leaves out.
fn request_lf(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in file
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
    {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The same with CRLF line ends, as curl sent it.
fn request_crlf(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in &request_lf(file) {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn req(s: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
    parse_request_head(s.as_bytes(), &Limits::default())
}

fn req_err(s: &str) -> u16 {
    match req(s) {
        Err(e) => e.status(),
        Ok(r) => panic!("accepted {s:?}: {r:?}"),
    }
}

fn resp(s: &str) -> ResponseHead {
    parse_response_head(s.as_bytes(), &Limits::default())
        .unwrap()
        .unwrap()
        .0
}

/// Decodes `wire` fed in pieces of `piece` bytes (0 = whole).
fn decode_pieces(
    kind: BodyKind,
    wire: &[u8],
    piece: usize,
) -> Result<(Vec<u8>, usize, bool), HttpError> {
    let mut dec = BodyDecoder::new(kind);
    let mut out = Vec::new();
    let mut pos = 0;
    let piece = if piece == 0 { wire.len().max(1) } else { piece };
    while pos < wire.len() {
        let end = (pos + piece).min(wire.len());
        let (n, done) = dec.decode(&wire[pos..end], &mut out)?;
        pos += n;
        if done {
            return Ok((out, pos, true));
        }
        assert_eq!(pos, end, "a decoder that is not done consumes everything");
    }
    Ok((out, pos, dec.is_done()))
}

#[test]
fn request_fixtures_parse() {
    let files = fixtures(".request.txt");
    assert!(files.len() >= 100, "{} request fixtures", files.len());
    for (name, file) in &files {
        let lf = request_lf(file);
        if name.contains("-h2-") {
            // Recorded over HTTP/2; curl wrote it down as `HTTP/2`.
            assert_eq!(
                parse_request_head(&lf, &Limits::default()),
                Err(HttpError::UnsupportedVersion)
            );
            continue;
        }
        let first = lf.split(|&b| b == b'\n').next().unwrap();
        let parts: Vec<&[u8]> = first.split(|&b| b == b' ').collect();
        let field_count = lf.iter().filter(|&&b| b == b'\n').count() - 2;
        for wire in [lf.clone(), request_crlf(file)] {
            let (head, n) = parse_request_head(&wire, &Limits::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: incomplete"));
            assert_eq!(n, wire.len(), "{name}");
            assert_eq!(head.method.as_bytes(), parts[0], "{name}");
            assert_eq!(head.target.as_bytes(), parts[1], "{name}");
            assert_eq!(head.version_minor, 1, "{name}");
            assert_eq!(head.headers.len(), field_count, "{name}");
            assert!(head.header("host").is_some(), "{name}");
            assert!(head.keep_alive(), "{name}");
            let kind = head.body_kind().unwrap();
            match head.header("Content-Length") {
                Some(cl) => assert_eq!(kind, BodyKind::Length(cl.parse().unwrap()), "{name}"),
                None => assert_eq!(kind, BodyKind::None, "{name}"),
            }
            // Every prefix is "need more", never an error.
            for cut in 0..wire.len() {
                assert_eq!(
                    parse_request_head(&wire[..cut], &Limits::default()),
                    Ok(None),
                    "{name} at {cut}"
                );
            }
            // Written out and parsed again: the same head.
            let mut out = Vec::new();
            write_request_head(&head, &mut out).unwrap();
            let (again, _) = parse_request_head(&out, &Limits::default())
                .unwrap()
                .unwrap();
            assert_eq!(again, head, "{name}");
        }
    }
}

#[test]
fn request_with_body_and_pipelining() {
    let wire = b"POST /api/v1/namespaces/x/pods HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (head, n) = parse_request_head(wire, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(head.body_kind(), Ok(BodyKind::Length(5)));
    let mut dec = BodyDecoder::new(head.body_kind().unwrap());
    let mut body = Vec::new();
    let (m, done) = dec.decode(&wire[n..], &mut body).unwrap();
    assert!(done);
    assert_eq!(body, b"hello");
    let (next, k) = parse_request_head(&wire[n + m..], &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(next.method, "GET");
    assert_eq!(n + m + k, wire.len());
}

#[test]
fn response_fixtures_parse() {
    let files = fixtures(".response.headers.txt");
    assert!(files.len() >= 100, "{} response fixtures", files.len());
    let mut chunked = 0;
    for (name, file) in &files {
        let result = parse_response_head(file, &Limits::default());
        if file.starts_with(b"HTTP/2") {
            assert_eq!(result, Err(HttpError::UnsupportedVersion), "{name}");
            continue;
        }
        let (head, n) = result.unwrap_or_else(|e| panic!("{name}: {e}")).unwrap();
        assert_eq!(n, file.len(), "{name}");
        let code: u16 = std::str::from_utf8(&file[9..12]).unwrap().parse().unwrap();
        assert_eq!(head.status, code, "{name}");
        assert_eq!(head.version_minor, 1, "{name}");
        assert_eq!(
            head.headers.len(),
            file.windows(2).filter(|w| w == b"\r\n").count() - 2,
            "{name}"
        );
        assert!(
            head.header("content-type").is_some() || head.status == 204,
            "{name}"
        );
        assert!(head.header("AUDIT-ID").is_some(), "{name}");
        let kind = head.body_kind("GET").unwrap();
        if head.header("transfer-encoding") == Some("chunked") {
            chunked += 1;
            assert_eq!(kind, BodyKind::Chunked, "{name}");
        } else if let Some(cl) = head.header("content-length") {
            assert_eq!(kind, BodyKind::Length(cl.parse().unwrap()), "{name}");
        } else {
            assert_eq!(kind, BodyKind::UntilClose, "{name}");
        }
        assert_eq!(head.body_kind("HEAD"), Ok(BodyKind::None));
        for cut in 0..file.len() {
            assert_eq!(
                parse_response_head(&file[..cut], &Limits::default()),
                Ok(None),
                "{name} at {cut}"
            );
        }
    }
    assert!(chunked > 10);
}

#[test]
fn wire_bodies_decode() {
    let files = fixtures("");
    let wires: Vec<_> = files
        .iter()
        .filter(|(n, _)| n.contains(".response.body.wire."))
        .collect();
    assert_eq!(wires.len(), 3);
    let mut matched = 0;
    for (name, wire) in wires {
        let (whole, n, done) = decode_pieces(BodyKind::Chunked, wire, 0).unwrap();
        assert!(done, "{name}");
        assert_eq!(n, wire.len(), "{name}");
        for piece in [1, 7] {
            let (body, n, done) = decode_pieces(BodyKind::Chunked, wire, piece).unwrap();
            assert!(
                done && n == wire.len() && body == whole,
                "{name} in {piece}-byte pieces"
            );
        }
        // Zero-copy steps yield the same payload.
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        let (mut pos, mut zc) = (0, Vec::new());
        while !dec.is_done() {
            let step = dec.step(&wire[pos..]).unwrap();
            zc.extend_from_slice(&wire[pos..][step.data]);
            pos += step.consumed;
        }
        assert_eq!(zc, whole, "{name}");
        assert!(dec.trailers().is_empty());
        // The de-chunked recording of the same exchange, where there is one.
        let plain = name.replace("-wire", "").replace(".wire", "");
        if let Some((_, body)) = files.iter().find(|(n, _)| *n == plain) {
            assert_eq!(&whole, body, "{name} vs {plain}");
            matched += 1;
        } else {
            assert!(
                whole.starts_with(b"{\"kind\":\"PodList\"") && whole.ends_with(b"}\n"),
                "{name}"
            );
        }
    }
    assert_eq!(matched, 2);
}

#[test]
fn chunked_round_trip_with_trailers() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let payload: Vec<u8> = (0..10_000).map(|_| rng.next() as u8).collect();
    let mut wire = Vec::new();
    let mut pos = 0;
    while pos < payload.len() {
        let n = (rng.next() % 3000) as usize;
        let end = (pos + n).min(payload.len());
        ChunkedEncoder::chunk(&payload[pos..end], &mut wire);
        pos = end;
    }
    ChunkedEncoder::finish_with_trailers(&[("X-Checksum", "abc"), ("Grpc-Status", "0")], &mut wire)
        .unwrap();
    wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    for piece in [0, 1, 7, 4096] {
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        let mut out = Vec::new();
        let mut pos = 0;
        let step = if piece == 0 { wire.len() } else { piece };
        while !dec.is_done() {
            let end = (pos + step).min(wire.len());
            pos += dec.decode(&wire[pos..end], &mut out).unwrap().0;
        }
        assert_eq!(out, payload);
        assert_eq!(
            &wire[pos..],
            b"HTTP/1.1 200 OK\r\n",
            "stops at the end of the body"
        );
        assert_eq!(
            dec.trailers(),
            [
                ("X-Checksum".into(), "abc".into()),
                ("Grpc-Status".into(), "0".into())
            ]
        );
    }
    let mut plain = Vec::new();
    ChunkedEncoder::finish(&mut plain);
    assert_eq!(
        decode_pieces(BodyKind::Chunked, &plain, 1).unwrap(),
        (vec![], 5, true)
    );
}

#[test]
fn chunk_extensions_and_framing_errors() {
    let ok = b"5 ; name=\"v;x\"\r\nhello\r\n0;last\r\n\r\n";
    assert_eq!(decode_pieces(BodyKind::Chunked, ok, 1).unwrap().0, b"hello");
    let upper = b"A\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(
        decode_pieces(BodyKind::Chunked, upper, 0).unwrap().0,
        b"0123456789"
    );
    let zeros = b"000000000000000000000005\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        decode_pieces(BodyKind::Chunked, zeros, 0).unwrap().0,
        b"hello"
    );
    for bad in [
        &b"ffffffffffffffffff\r\n"[..],
        b"10000000000000000\r\n",
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"\r\n",
        b" 5\r\nhello\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhelloX\r\n",
        b"5\rhello",
        b"5 6\r\n",
        b"5;a\x00\r\n",
        b"0\r\nX: y\n\r\n",
        b"0\r\n bad: fold\r\n\r\n",
        b"0\r\nbad : x\r\n\r\n",
    ] {
        let err = decode_pieces(BodyKind::Chunked, bad, 0).unwrap_err();
        assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(bad));
        let err1 = decode_pieces(BodyKind::Chunked, bad, 1).unwrap_err();
        assert_eq!(err, err1);
    }
    let long = [b"5;".as_slice(), &[b'a'; 5000], b"\r\n"].concat();
    assert_eq!(
        decode_pieces(BodyKind::Chunked, &long, 0)
            .unwrap_err()
            .status(),
        400
    );
    let mut many = b"0\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("T{i}: v\r\n").as_bytes());
    }
    assert_eq!(
        decode_pieces(BodyKind::Chunked, &many, 0),
        Err(HttpError::TooManyHeaders)
    );
    let big = [b"0\r\nT: ".as_slice(), &[b'a'; 20_000]].concat();
    assert_eq!(
        decode_pieces(BodyKind::Chunked, &big, 0),
        Err(HttpError::HeadTooLarge)
    );
}

#[test]
fn eof_handling() {
    let mut dec = BodyDecoder::new(BodyKind::UntilClose);
    let mut out = Vec::new();
    assert_eq!(dec.decode(b"abc", &mut out), Ok((3, false)));
    assert_eq!(dec.finish_eof(), Ok(()));
    assert!(dec.is_done());
    assert_eq!(out, b"abc");
    let mut dec = BodyDecoder::new(BodyKind::Length(10));
    assert_eq!(dec.decode(b"abc", &mut out), Ok((3, false)));
    assert_eq!(dec.finish_eof(), Err(HttpError::Truncated));
    let mut dec = BodyDecoder::new(BodyKind::Chunked);
    assert_eq!(dec.decode(b"3\r\nabc\r\n", &mut out), Ok((8, false)));
    assert_eq!(dec.finish_eof(), Err(HttpError::Truncated));
    let mut dec = BodyDecoder::new(BodyKind::Length(0));
    assert_eq!(dec.decode(b"next", &mut out), Ok((0, true)));
    assert_eq!(
        BodyDecoder::new(BodyKind::Length(u64::MAX)).decode(b"xy", &mut out),
        Ok((2, false))
    );
}

#[test]
fn smuggling_refused() {
    let h = "GET / HTTP/1.1\r\nHost: a\r\n";
    let cases: &[(&str, u16)] = &[
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        ("Content-Length: 5, 6\r\n", 400),
        ("Content-Length: -5\r\n", 400),
        ("Content-Length: +5\r\n", 400),
        ("Content-Length: 5x\r\n", 400),
        ("Content-Length: 0x5\r\n", 400),
        ("Content-Length: \r\n", 400),
        ("Content-Length: 1 2\r\n", 400),
        ("Content-Length: 99999999999999999999999\r\n", 400),
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        ("Transfer-Encoding: chunked, gzip\r\n", 501),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            501,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            501,
        ),
        ("Transfer-Encoding: identity\r\n", 501),
        ("Transfer-Encoding: xchunked\r\n", 501),
        ("Transfer-Encoding:\r\n", 400),
        ("Transfer-Encoding : chunked\r\n", 400),
        ("Transfer-Encoding\t: chunked\r\n", 400),
        ("X: y\r\n Transfer-Encoding: chunked\r\n", 400),
        ("X: y\r\n\tfolded\r\n", 400),
        ("X: a\x00b\r\n", 400),
        ("X: a\x01b\r\n", 400),
        ("X: a\x7fb\r\n", 400),
        ("X: a\rb\r\n", 400),
        ("X\x00: a\r\n", 400),
        (": a\r\n", 400),
        ("no colon\r\n", 400),
        ("Host: b\r\n", 400),
    ];
    for (fields, status) in cases {
        assert_eq!(req_err(&format!("{h}{fields}\r\n")), *status, "{fields:?}");
    }
    // Allowed: identical repeats, case-insensitive chunked, OWS.
    for (fields, kind) in [
        (
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            BodyKind::Length(5),
        ),
        ("Content-Length: 5, 5\r\n", BodyKind::Length(5)),
        ("Content-Length: 007\r\n", BodyKind::Length(7)),
        ("Transfer-Encoding:  Chunked \t\r\n", BodyKind::Chunked),
        (
            "Content-Length: 18446744073709551615\r\n",
            BodyKind::Length(u64::MAX),
        ),
    ] {
        let (head, _) = req(&format!("{h}{fields}\r\n")).unwrap().unwrap();
        assert_eq!(head.body_kind(), Ok(kind), "{fields:?}");
    }
    // HTTP/1.0 cannot be chunked.
    assert_eq!(
        req_err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    // Responses refuse the same ambiguities.
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(r.body_kind("GET").unwrap_err().status(), 400);
    let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(
        r.body_kind("GET"),
        Err(HttpError::UnsupportedTransferCoding)
    );
}

#[test]
fn request_line_and_version() {
    assert_eq!(req_err("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
    assert_eq!(req_err("GET / HTTP/2\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(req_err("GET / HTTP/3.0\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(req_err("GET / http/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), 505);
    assert_eq!(req_err("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(req_err("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
    assert_eq!(req_err("GET / HTTP/1.1\rHost: a\r\n\r\n"), 400, "bare CR");
    // Garbage is refused before the head completes.
    assert_eq!(
        req("\x16\x03\x01\x02\x00"),
        Err(HttpError::Malformed("invalid method"))
    );
    assert_eq!(
        parse_response_head(b"SSH-2.0", &Limits::default())
            .unwrap_err()
            .status(),
        400
    );
    // Leading empty lines, bare LF, HTTP/1.0.
    let (head, n) = req("\r\n\nGET /x?y=1 HTTP/1.0\nConnection: keep-alive\n\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        (head.target.as_str(), head.version_minor, n),
        ("/x?y=1", 0, 47)
    );
    assert!(head.keep_alive());
    let (head, _) = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!head.keep_alive());
    let (head, _) = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!head.keep_alive());
    // UTF-8 in values is kept; other obs-text is refused.
    let (head, _) = req("GET / HTTP/1.1\r\nHost: a\r\nX-Name: \u{e9}t\u{e9}\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.header("x-name"), Some("\u{e9}t\u{e9}"));
    let latin1 = b"GET / HTTP/1.1\r\nHost: a\r\nX: \xe9\r\n\r\n";
    assert_eq!(
        parse_request_head(latin1, &Limits::default())
            .unwrap_err()
            .status(),
        400
    );
}

#[test]
fn limits() {
    let small = Limits {
        max_head: 64,
        max_headers: 3,
        ..Limits::default()
    };
    let ok = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert!(parse_request_head(ok.as_bytes(), &small).unwrap().is_some());
    let four = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        parse_request_head(four.as_bytes(), &small),
        Err(HttpError::TooManyHeaders)
    );
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n", "x".repeat(40));
    assert_eq!(
        parse_request_head(long.as_bytes(), &small),
        Err(HttpError::HeadTooLarge)
    );
    // Too large while still incomplete.
    assert_eq!(
        parse_request_head(&long.as_bytes()[..64], &small),
        Err(HttpError::HeadTooLarge)
    );
    assert_eq!(parse_request_head(&long.as_bytes()[..63], &small), Ok(None));
    assert_eq!(HttpError::HeadTooLarge.status(), 431);
    assert_eq!(HttpError::TooManyHeaders.status(), 431);
    // Defaults: 16 KiB, 100 fields.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    assert_eq!(req_err(&(many.clone() + "\r\n")), 431);
    let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
    assert_eq!(req_err(&huge), 431);
    let blank = "\r\n".repeat(10_000);
    assert_eq!(req_err(&blank), 431);
}

#[test]
fn response_body_kinds() {
    let chunked = "Transfer-Encoding: chunked\r\n";
    for (line, method, kind) in [
        ("HTTP/1.1 200 OK\r\n", "GET", BodyKind::UntilClose),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
            "GET",
            BodyKind::Length(0),
        ),
        ("HTTP/1.1 100 Continue\r\n", "GET", BodyKind::None),
        (
            "HTTP/1.1 101 Switching Protocols\r\n",
            "GET",
            BodyKind::None,
        ),
        ("HTTP/1.1 204 No Content\r\n", "DELETE", BodyKind::None),
        ("HTTP/1.1 304 Not Modified\r\n", "GET", BodyKind::None),
        ("HTTP/1.1 200 OK\r\n", "HEAD", BodyKind::None),
        ("HTTP/1.1 200 OK\r\n", "CONNECT", BodyKind::None),
        ("HTTP/1.1 200\r\n", "GET", BodyKind::UntilClose),
        ("HTTP/1.1 200 \r\n", "GET", BodyKind::UntilClose),
    ] {
        let r = resp(&format!("{line}\r\n"));
        assert_eq!(r.body_kind(method), Ok(kind), "{line:?} {method}");
        if kind == BodyKind::None {
            let r = resp(&format!("{line}{chunked}\r\n"));
            assert_eq!(r.body_kind(method), Ok(kind), "{line:?} {method}");
        }
    }
    let r = resp("HTTP/1.0 200 OK\r\n\r\n");
    assert!(!r.keep_alive());
    assert_eq!(r.reason, "OK");
    for bad in [
        "HTTP/1.1 99 X\r\n\r\n",
        "HTTP/1.1 600 X\r\n\r\n",
        "HTTP/1.1 2000 X\r\n\r\n",
        "HTTP/1.1 20x X\r\n\r\n",
    ] {
        assert_eq!(
            parse_response_head(bad.as_bytes(), &Limits::default())
                .unwrap_err()
                .status(),
            400,
            "{bad:?}"
        );
    }
    assert_eq!(
        parse_response_head(b"HTTP/1.1 200 OK\x00\r\n\r\n", &Limits::default())
            .unwrap_err()
            .status(),
        400
    );
}

#[test]
fn writers() {
    let mut out = Vec::new();
    write_response_head(
        431,
        "",
        &[("Content-Length", "0"), ("Connection", "close")],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        out,
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let r = resp(std::str::from_utf8(&out).unwrap());
    assert_eq!(
        (r.status, r.body_kind("GET")),
        (431, Ok(BodyKind::Length(0)))
    );
    let no_headers: &[(&str, &str)] = &[];
    for (status, reason, headers) in [
        (200, "OK", &[("X", "a\r\nInjected: 1")][..]),
        (200, "OK", &[("Bad Name", "a")][..]),
        (200, "OK\r\n", no_headers),
        (99, "X", no_headers),
    ] {
        let mut out = Vec::new();
        assert!(write_response_head(status, reason, headers, &mut out).is_err());
        assert!(out.is_empty());
    }
    let mut out = Vec::new();
    let mut head = RequestHead {
        method: "GET".into(),
        target: "/api\r\nX: y".into(),
        version_minor: 1,
        headers: vec![("Host".into(), "a".into())],
    };
    assert_eq!(
        write_request_head(&head, &mut out).unwrap_err().status(),
        500
    );
    head.target = "/api".into();
    head.headers.push(("X".into(), "\n".into()));
    assert!(write_request_head(&head, &mut out).is_err());
    assert!(ChunkedEncoder::finish_with_trailers(&[("X", "\r\n")], &mut out).is_err());
    assert!(out.is_empty());
    let mut out = Vec::new();
    ChunkedEncoder::chunk(b"", &mut out);
    assert!(out.is_empty(), "an empty chunk would end the body");
    assert_eq!(
        HttpError::UnsupportedVersion.to_string(),
        "unsupported HTTP version (505)"
    );
}

/// xorshift64: deterministic garbage without a crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Flips, inserts, deletes and truncates a few bytes.
fn mutate(rng: &mut XorShift, src: &[u8]) -> Vec<u8> {
    let mut v = src.to_vec();
    const SPECIAL: &[u8] = b"\r\n :;\t\x00\x7f0fF-,";
    for _ in 0..1 + rng.next() % 4 {
        let at = if v.is_empty() {
            0
        } else {
            (rng.next() as usize) % v.len()
        };
        let byte = if rng.next().is_multiple_of(2) {
            SPECIAL[(rng.next() as usize) % SPECIAL.len()]
        } else {
            rng.next() as u8
        };
        match rng.next() % 4 {
            0 if at < v.len() => v[at] = byte,
            1 => v.insert(at, byte),
            2 if at < v.len() => {
                v.remove(at);
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn garbage_never_panics() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let limits = Limits::default();
    let small = Limits {
        max_head: 200,
        max_headers: 5,
        max_chunk_line: 16,
    };
    let requests: Vec<Vec<u8>> = fixtures(".request.txt")
        .iter()
        .map(|(_, f)| request_crlf(f))
        .collect();
    let responses: Vec<Vec<u8>> = fixtures(".response.headers.txt")
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let mut chunked = Vec::new();
    for i in 0..40 {
        ChunkedEncoder::chunk(&vec![b'a' + (i % 26) as u8; i * 3], &mut chunked);
    }
    ChunkedEncoder::finish_with_trailers(&[("X-T", "1")], &mut chunked).unwrap();
    for round in 0..3000 {
        let input = match round % 4 {
            0 => mutate(&mut rng, &requests[round % requests.len()]),
            1 => mutate(&mut rng, &responses[round % responses.len()]),
            2 => mutate(&mut rng, &chunked),
            _ => (0..rng.next() % 300).map(|_| rng.next() as u8).collect(),
        };
        for l in [&limits, &small] {
            if let Ok(Some((head, n))) = parse_request_head(&input, l) {
                assert!(n <= input.len());
                let _ = (head.body_kind(), head.keep_alive());
                let mut out = Vec::new();
                write_request_head(&head, &mut out).unwrap();
            }
            if let Ok(Some((head, n))) = parse_response_head(&input, l) {
                assert!(n <= input.len());
                let _ = (head.body_kind("GET"), head.keep_alive());
                write_response_head(head.status, &head.reason, &head.headers, &mut Vec::new())
                    .unwrap();
            }
            for kind in [
                BodyKind::Chunked,
                BodyKind::Length(rng.next() % 500),
                BodyKind::UntilClose,
            ] {
                let mut dec = BodyDecoder::with_limits(kind, *l);
                let mut out = Vec::new();
                if let Ok((n, _)) = dec.decode(&input, &mut out) {
                    assert!(n <= input.len() && out.len() <= n);
                }
                let _ = dec.finish_eof();
            }
        }
    }
}

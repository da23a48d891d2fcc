//! Tests of the syntax, the getters, unknown-key reports and the unit parsers.

use crate::{parse_bytes, parse_duration, Document, Error, Errors};
use std::time::Duration;

fn doc(text: &str) -> Document {
    match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => panic!("should parse, got: {e}\n{text}"),
    }
}

/// Asserts a syntax error with this line, key and a message containing `needle`.
fn syntax(text: &str, line: usize, key: Option<&str>, needle: &str) {
    let Err(e) = Document::parse(text) else {
        panic!("should fail: {text}")
    };
    check(&e, line, key, needle);
}

fn check(e: &Error, line: usize, key: Option<&str>, needle: &str) {
    assert_eq!(e.line, Some(line), "line of {e}");
    assert_eq!(e.key.as_deref(), key, "key of {e}");
    assert!(
        e.message.contains(needle),
        "{e:?} should contain {needle:?}"
    );
}

#[test]
fn comments_blank_lines_and_line_endings() {
    let d = doc("\u{feff}# top\n\n  a = 1 # after\r\n\t\n# end");
    let mut r = d.root();
    assert_eq!(r.u64("a").unwrap(), Some(1));
    assert_eq!(r.line_of("a"), Some(3));
    r.finish().unwrap();
    doc("");
    doc("# only a comment");
}

#[test]
fn strings() {
    let d = doc(concat!(
        "a = \"q\\\" b\\\\ n\\n t\\t r\\r u\\u00e9 U\\U0001F600 \\b\\f\"\n",
        "b = 'C:\\path\\ \"x\"'\n",
        "c = \"\"\n",
        "d = ''\n",
        "e = \"tab\there # not a comment\"\n",
    ));
    let mut r = d.root();
    assert_eq!(
        r.str("a").unwrap(),
        Some("q\" b\\ n\n t\t r\r u\u{e9} U\u{1F600} \u{8}\u{c}")
    );
    assert_eq!(r.str("b").unwrap(), Some("C:\\path\\ \"x\""));
    assert_eq!(r.str("c").unwrap(), Some(""));
    assert_eq!(r.str("d").unwrap(), Some(""));
    assert_eq!(r.str("e").unwrap(), Some("tab\there # not a comment"));
    assert_eq!(r.str("absent").unwrap(), None);
    r.finish().unwrap();
}

#[test]
fn integers_and_booleans() {
    let d = doc("a = 0\nb = +42\nc = 1_000_000\nd = -7\ne = 9223372036854775807\nf = -9223372036854775808\nt = true\nu = false\n");
    let mut r = d.root();
    assert_eq!(r.u64("a").unwrap(), Some(0));
    assert_eq!(r.u64("b").unwrap(), Some(42));
    assert_eq!(r.u64("c").unwrap(), Some(1_000_000));
    check(
        &r.u64("d").unwrap_err(),
        4,
        Some("d"),
        "must not be negative, found -7",
    );
    assert_eq!(r.u64("e").unwrap(), Some(i64::MAX as u64));
    assert!(r.u64("f").is_err());
    assert_eq!(r.bool("t").unwrap(), Some(true));
    assert_eq!(r.bool("u").unwrap(), Some(false));
    r.finish().unwrap();
}

#[test]
fn arrays() {
    let d = doc(concat!(
        "a = [\"x\", 'y']\n",
        "b = [1, 2, 3,]\n",
        "c = []\n",
        "d = [ # comment\n",
        "  80,\n",
        "\n",
        "  443, # https\n",
        "]\n",
        "e = 5\n",
    ));
    let mut r = d.root();
    assert_eq!(r.str_array("a").unwrap(), Some(vec!["x", "y"]));
    assert_eq!(r.u64_array("b").unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(r.u64_array("c").unwrap(), Some(vec![]));
    assert_eq!(r.u64_array("d").unwrap(), Some(vec![80, 443]));
    assert_eq!(r.line_of("e"), Some(9));
    assert_eq!(r.u64("e").unwrap(), Some(5));
    r.finish().unwrap();
}

#[test]
fn tables_and_arrays_of_tables() {
    let d = doc(concat!(
        "name = \"gw\"\n",
        "[link]\n",
        "keepalive = \"30s\"\n",
        "[link.tls]\n",
        "ca = \"/etc/ca.pem\"\n",
        "[[forward]]\n",
        "listen = 1\n",
        "[forward.opts]\n", // goes into the last [[forward]]
        "x = true\n",
        "[[forward]]\n",
        "listen = 2\n",
        "[upstream.kube-apiserver]\n",
        "port = 6443\n",
        "[upstream.etcd]\n",
        "port = 2379\n",
    ));
    let mut r = d.root();
    assert_eq!(r.str("name").unwrap(), Some("gw"));
    let mut link = r.table("link").unwrap().unwrap();
    assert_eq!((link.path(), link.line()), ("link", Some(2)));
    assert_eq!(
        link.duration("keepalive").unwrap(),
        Some(Duration::from_secs(30))
    );
    let mut tls = link.table("tls").unwrap().unwrap();
    assert_eq!(tls.path(), "link.tls");
    assert_eq!(tls.str("ca").unwrap(), Some("/etc/ca.pem"));
    let mut forward = r.tables("forward").unwrap();
    assert_eq!(forward.len(), 2);
    assert_eq!(forward[0].u64("listen").unwrap(), Some(1));
    assert_eq!(
        forward[0]
            .table("opts")
            .unwrap()
            .unwrap()
            .bool("x")
            .unwrap(),
        Some(true)
    );
    assert_eq!(forward[1].path(), "forward[1]");
    assert_eq!(forward[1].u64("listen").unwrap(), Some(2));
    assert!(forward[1].table("opts").unwrap().is_none());
    let upstream = r.sub_tables("upstream").unwrap();
    let names: Vec<&str> = upstream.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["kube-apiserver", "etcd"]);
    for (_, mut t) in upstream {
        assert!(t.u64("port").unwrap().is_some());
    }
    assert!(r.tables("absent").unwrap().is_empty());
    assert!(r.sub_tables("absent").unwrap().is_empty());
    assert!(r.table("absent").unwrap().is_none());
    r.finish().unwrap();
}

#[test]
fn implied_table_may_be_defined_later() {
    let d = doc("[a.b]\nx = 1\n[a]\ny = 2\n");
    let mut r = d.root();
    let mut a = r.table("a").unwrap().unwrap();
    assert_eq!(a.line(), Some(3));
    assert_eq!(a.u64("y").unwrap(), Some(2));
    assert_eq!(a.table("b").unwrap().unwrap().u64("x").unwrap(), Some(1));
    r.finish().unwrap();
}

#[test]
fn syntax_errors_name_line_and_key() {
    syntax(
        "a = 1\nb.c = 2\n",
        2,
        Some("b"),
        "dotted keys are not supported",
    );
    syntax("[t]\n\"q\" = 2\n", 2, Some("t"), "quoted keys");
    syntax("a 1\n", 1, Some("a"), "expected '='");
    syntax("= 1\n", 1, None, "missing key name");
    syntax("a =\nb = 1", 1, Some("a"), "missing value");
    syntax("a = # x", 1, Some("a"), "missing value");
    syntax(
        "[s]\npi = 3.14\n",
        2,
        Some("s.pi"),
        "floats are not supported",
    );
    syntax("x = 1e6\n", 1, Some("x"), "floats are not supported");
    syntax("x = -inf\n", 1, Some("x"), "floats are not supported");
    syntax("x = nan\n", 1, Some("x"), "floats are not supported");
    syntax("x = 1979-05-27\n", 1, Some("x"), "dates and times");
    syntax("x = 07:32:00\n", 1, Some("x"), "dates and times");
    syntax("x = 0xff\n", 1, Some("x"), "hexadecimal");
    syntax("x = 007\n", 1, Some("x"), "leading zeros");
    syntax("x = 1__0\n", 1, Some("x"), "underscore");
    syntax("x = 10_\n", 1, Some("x"), "underscore");
    syntax("x = 9223372036854775808\n", 1, Some("x"), "out of range");
    syntax(
        "x = -99999999999999999999999999\n",
        1,
        Some("x"),
        "out of range",
    );
    syntax(
        "x = yes\n",
        1,
        Some("x"),
        "put strings in quotes, like \"yes\"",
    );
    syntax("x = True\n", 1, Some("x"), "lowercase");
    syntax("x = -\n", 1, Some("x"), "unquoted text");
    syntax("x = \"abc\ny = 1\n", 1, Some("x"), "unterminated string");
    syntax("x = 'abc", 1, Some("x"), "unterminated string");
    syntax("\n\nx = \"a\\qb\"\n", 3, Some("x"), "unknown escape \\q");
    syntax("x = \"\\u12\"\n", 1, Some("x"), "exactly 4 hex digits");
    syntax("x = \"\\uD800\"\n", 1, Some("x"), "not a valid Unicode");
    syntax("x = \"\\UFFFFFFFF\"\n", 1, Some("x"), "not a valid Unicode");
    syntax(
        "x = \"a\u{1}b\"\n",
        1,
        Some("x"),
        "control character U+0001",
    );
    syntax("x = 'a\u{7f}'\n", 1, Some("x"), "control character U+007F");
    syntax(
        "x = \"\"\"\nabc\"\"\"\n",
        1,
        Some("x"),
        "multi-line strings",
    );
    syntax("x = '''abc'''\n", 1, Some("x"), "multi-line strings");
    syntax("x = { a = 1 }\n", 1, Some("x"), "inline tables");
    syntax("x = [[1], [2]]\n", 1, Some("x"), "nested arrays");
    syntax("a = 1\nx = [1,\n2\n", 2, Some("x"), "not closed");
    syntax(
        "x = [1,\n  2\ny = 3\n",
        3,
        Some("x"),
        "is the ']' of the array on line 1 missing?",
    );
    syntax("x = [1 2]\n", 1, Some("x"), "expected ',' or ']'");
    syntax("x = [,]\n", 1, Some("x"), "unexpected ','");
    syntax("x = 1 2\n", 1, Some("x"), "unexpected '2' after the value");
    syntax("x = \"a\" \"b\"\n", 1, Some("x"), "after the value");
    syntax("[t] x = 1\n", 1, Some("t"), "after the table header");
    syntax("[t\n", 1, Some("t"), "expected ']'");
    syntax("[[t]\n", 1, Some("t"), "expected ']]'");
    syntax("[]\n", 1, None, "expected a table name before ']'");
    syntax("[a.]\n", 1, None, "expected a table name before ']'");
    syntax("[a.\n", 1, None, "expected a key name");
    syntax("[\"a\"]\n", 1, None, "quoted keys");
    syntax("a = 1\n\rb = 2", 2, None, "carriage return");
    syntax("x = @\n", 1, Some("x"), "unexpected '@'");
    syntax(
        "a! = 1\n",
        1,
        Some("a"),
        "expected '=' after the key, found '!'",
    );
    syntax("a\n", 1, Some("a"), "found the end of the line");
    let deep = format!("[{}]\n", vec!["a"; 33].join("."));
    syntax(
        &deep,
        1,
        Some(&vec!["a"; 33].join(".")),
        "nested more than 32",
    );
}

#[test]
fn duplicates_are_errors() {
    syntax(
        "a = 1\n\na = 2\n",
        3,
        Some("a"),
        "duplicate key; it is already set on line 1",
    );
    syntax(
        "[t]\na = 1\n[u]\n[t]\n",
        4,
        Some("t"),
        "table [t] is defined twice; the first is on line 1",
    );
    syntax("[t.u]\n[t.u]\n", 2, Some("t.u"), "defined twice");
    syntax("[[f]]\na = 1\na = 2\n", 3, Some("f[0].a"), "duplicate key");
    syntax(
        "[[f]]\n[[f]]\na = 1\na = 2\n",
        4,
        Some("f[1].a"),
        "duplicate key",
    );
    syntax(
        "[t]\n[[t]]\n",
        2,
        Some("t"),
        "cannot also be an array of tables",
    );
    syntax(
        "[[t]]\n[t]\n",
        2,
        Some("t"),
        "is an array of tables (line 1)",
    );
    syntax(
        "t = 1\n[t]\n",
        2,
        Some("t"),
        "already set to the integer 1 on line 1",
    );
    syntax(
        "t = 'x'\n[t.u]\n",
        2,
        Some("t"),
        "already set to a string on line 1",
    );
    syntax(
        "[a.b]\n[a]\nb = 1\n",
        3,
        Some("a.b"),
        "duplicate key; it is already set on line 1",
    );
}

#[test]
fn getter_type_errors() {
    let d = doc("s = 'x'\ni = 3\nb = true\na = [1, 'two']\n[t]\n[[ts]]\n");
    let mut r = d.root();
    check(
        &r.str("i").unwrap_err(),
        2,
        Some("i"),
        "expected a string in quotes, found the integer 3",
    );
    check(
        &r.u64("s").unwrap_err(),
        1,
        Some("s"),
        "expected a whole number, found a string",
    );
    check(
        &r.bool("s").unwrap_err(),
        1,
        Some("s"),
        "expected true or false",
    );
    check(&r.bool("a").unwrap_err(), 4, Some("a"), "found an array");
    check(
        &r.duration("b").unwrap_err(),
        3,
        Some("b"),
        "found the boolean true",
    );
    check(&r.bytes("b").unwrap_err(), 3, Some("b"), "expected a size");
    check(
        &r.u64_array("a").unwrap_err(),
        4,
        Some("a[1]"),
        "expected non-negative whole numbers, found a string",
    );
    check(
        &r.str_array("a").unwrap_err(),
        4,
        Some("a[0]"),
        "expected strings, found the integer 1",
    );
    check(
        &r.str_array("s").unwrap_err(),
        1,
        Some("s"),
        "expected an array of strings",
    );
    check(
        &r.table("s").unwrap_err(),
        1,
        Some("s"),
        "expected a table [s]",
    );
    check(
        &r.table("ts").unwrap_err(),
        6,
        Some("ts"),
        "found an array of tables",
    );
    check(
        &r.tables("t").unwrap_err(),
        5,
        Some("t"),
        "expected [[t]] (an array of tables), found a [table]",
    );
    check(
        &r.sub_tables("i").unwrap_err(),
        2,
        Some("i"),
        "expected a table [i]",
    );
    r.finish().unwrap();

    let d = doc("[up]\nx = 1\n");
    check(
        &d.root().sub_tables("up").unwrap_err(),
        2,
        Some("up.x"),
        "expected a table [up.x]",
    );
    let d = doc("a = [-1]\n");
    check(
        &d.root().u64_array("a").unwrap_err(),
        1,
        Some("a[0]"),
        "found the integer -1",
    );
}

#[test]
fn durations_and_sizes_through_tables() {
    let d = doc("[link]\nk = 30\nt = '1m30s'\nbad = '10 parsecs'\nsz = 4096\nsz2 = '64KiB'\nneg = -1\nbig = '99999999999999999999GiB'\n");
    let mut r = d.root();
    let mut l = r.table("link").unwrap().unwrap();
    let e = l.duration("k").unwrap_err();
    assert_eq!(e.to_string(), "line 2: link.k: expected a duration like \"30s\", found the integer 30; write \"30s\" or \"30ms\"");
    assert_eq!(l.duration("t").unwrap(), Some(Duration::from_secs(90)));
    check(
        &l.duration("bad").unwrap_err(),
        4,
        Some("link.bad"),
        "remove the spaces",
    );
    assert_eq!(l.bytes("sz").unwrap(), Some(4096));
    assert_eq!(l.bytes("sz2").unwrap(), Some(65536));
    check(
        &l.bytes("neg").unwrap_err(),
        7,
        Some("link.neg"),
        "cannot be negative",
    );
    check(
        &l.bytes("big").unwrap_err(),
        8,
        Some("link.big"),
        "too large",
    );
    r.finish().unwrap();
}

#[test]
fn parse_duration_cases() {
    let ok = |s: &str, d: Duration| assert_eq!(parse_duration(s).unwrap(), d, "{s}");
    ok("500ms", Duration::from_millis(500));
    ok("30s", Duration::from_secs(30));
    ok("5m", Duration::from_secs(300));
    ok("1h", Duration::from_secs(3600));
    ok("2d", Duration::from_secs(172_800));
    ok("1m30s", Duration::from_secs(90));
    ok("1h0m5s250ms", Duration::from_millis(3_605_250));
    ok("0s", Duration::ZERO);
    ok("18446744073709551615ms", Duration::from_millis(u64::MAX));
    ok("18446744073709551615s", Duration::from_secs(u64::MAX));
    let bad = |s: &str, needle: &str| {
        let e = parse_duration(s).unwrap_err();
        assert!(e.message.contains(needle), "{s}: {e}");
        assert_eq!((e.line, e.key), (None, None));
    };
    bad("", "empty duration");
    bad("-1s", "cannot be negative");
    bad("+1s", "is not a duration");
    bad("10 parsecs", "remove the spaces");
    bad("10parsecs", "unknown unit \"parsecs\"");
    bad("30", "has no unit; write \"30s\"");
    bad("1m30", "the last number has no unit");
    bad("1.5s", "fractions are not supported");
    bad("30s1m", "largest first");
    bad("1s1s", "largest first");
    bad("s", "is not a duration");
    bad("1µs", "unknown unit \"µs\"");
    bad("99999999999999999999s", "too large");
    bad("18446744073709551615h", "too large");
    bad("5124095576030431h1m", "too large");
    bad("1S", "unknown unit");
}

#[test]
fn parse_bytes_cases() {
    let ok = |s: &str, n: u64| assert_eq!(parse_bytes(s).unwrap(), n, "{s}");
    ok("512B", 512);
    ok("0B", 0);
    ok("64KiB", 65_536);
    ok("4MiB", 4 << 20);
    ok("1GiB", 1 << 30);
    ok("2TiB", 2 << 40);
    ok("10kB", 10_000);
    ok("10MB", 10_000_000);
    ok("3GB", 3_000_000_000);
    ok("1TB", 1_000_000_000_000);
    ok("64 KiB", 65_536);
    ok("18446744073709551615B", u64::MAX);
    let bad = |s: &str, needle: &str| {
        let e = parse_bytes(s).unwrap_err();
        assert!(e.message.contains(needle), "{s}: {e}");
    };
    bad("", "empty size");
    bad("-1KiB", "cannot be negative");
    bad("KiB", "is not a size");
    bad(
        "512",
        "has no unit; write \"512B\", or the number 512 without quotes",
    );
    bad("10KB", "ambiguous");
    bad("10k", "ambiguous");
    bad("10 parsecs", "unknown unit \"parsecs\"");
    bad("10  KiB", "unknown unit \" KiB\"");
    bad("1.5GiB", "fractions");
    bad("10b", "unknown unit");
    bad("99999999999999999999B", "too large");
    bad("17179869184GiB", "too large");
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let d = doc(concat!(
        "name = 'gw'\n",
        "nmae = 'typo'\n",
        "[link]\n",
        "keep-alive = '30s'\n",
        "[link.tls]\n",
        "ca = 'x'\n",
        "[[forward]]\n",
        "listen = 1\n",
        "[[forward]]\n",
        "listen = 2\n",
        "lisen = 3\n",
        "[unread]\n",
        "a = 1\n",
        "[[unread_list]]\n",
    ));
    let mut r = d.root();
    r.str("name").unwrap();
    let mut link = r.table("link").unwrap().unwrap();
    link.duration("keepalive").unwrap();
    link.table("tls").unwrap(); // fetched, but nothing in it read
    for mut f in r.tables("forward").unwrap() {
        f.u64("listen").unwrap();
    }
    let errors = r.finish().unwrap_err();
    let shown: Vec<String> = errors.0.iter().map(Error::to_string).collect();
    assert_eq!(
        shown,
        [
            "line 2: nmae: unknown key; did you mean name?",
            "line 4: link.keep-alive: unknown key; did you mean keepalive?",
            "line 6: link.tls.ca: unknown key; nothing is read from this table",
            "line 11: forward[1].lisen: unknown key; did you mean listen?",
            "line 12: unread: unknown table; known keys here: forward, link, name",
            "line 14: unread_list: unknown array of tables; known keys here: forward, link, name",
        ]
    );
}

#[test]
fn finish_on_a_sub_table_checks_only_that_table() {
    let d = doc("a = 1\n[t]\nb = 2\nc = 3\n");
    let mut r = d.root();
    let mut t = r.table("t").unwrap().unwrap();
    t.u64("b").unwrap();
    let errors = t.finish().unwrap_err();
    assert_eq!(
        errors.to_string(),
        "line 4: t.c: unknown key; known keys here: b"
    );
    let errors = r.finish().unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
    assert_eq!(errors.0[0].key.as_deref(), Some("a"));
}

#[test]
fn sub_tables_are_checked_for_unknown_keys() {
    let d = doc("[upstream.a]\nport = 1\n[upstream.b]\nport = 2\nhost = 'x'\n");
    let mut r = d.root();
    for (_, mut t) in r.sub_tables("upstream").unwrap() {
        t.u64("port").unwrap();
    }
    let errors = r.finish().unwrap_err();
    check(&errors.0[0], 5, Some("upstream.b.host"), "unknown key");
    assert_eq!(errors.0.len(), 1);
}

#[test]
fn collecting_every_error() {
    let d = doc("a = 'x'\n[t]\nb = -1\nc = 1\n");
    let mut errors = Errors::new();
    let mut r = d.root();
    assert_eq!(errors.opt(r.u64("a")), None);
    let mut t = errors.opt(r.table("t")).unwrap();
    assert_eq!(errors.opt(t.u64("b")), None);
    assert_eq!(errors.opt(t.u64("missing")), None);
    assert_eq!(errors.take(r.finish()), None);
    errors.push(t.error("missing", "is required"));
    let all = errors.into_result().unwrap_err();
    let lines: Vec<Option<usize>> = all.0.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(all.to_string().lines().count(), 4);
    assert!(Errors::new().into_result().is_ok());
    let converted: Errors = Document::parse("x = 1.5").unwrap_err().into();
    assert_eq!(converted.0.len(), 1);
}

#[test]
fn line_of_and_error_for_callers() {
    let d = doc("[listen]\nport = 70000\n");
    let mut r = d.root();
    let mut l = r.table("listen").unwrap().unwrap();
    let port = l.u64("port").unwrap().unwrap();
    assert_eq!(l.line_of("port"), Some(2));
    assert_eq!(l.line_of("nope"), None);
    let e = l.error("port", format!("{port} is not a port (1-65535)"));
    assert_eq!(
        e.to_string(),
        "line 2: listen.port: 70000 is not a port (1-65535)"
    );
    assert_eq!(
        l.error("host", "is required").to_string(),
        "line 1: listen.host: is required"
    );
    assert_eq!(
        l.error("", "needs a port").to_string(),
        "line 1: listen: needs a port"
    );
    assert_eq!(r.error("x", "is required").to_string(), "x: is required");
    assert_eq!(r.error("", "is empty").to_string(), "is empty");
    assert_eq!(l.keys(), ["port"]);
}

#[test]
fn display_forms() {
    assert_eq!(Error::new(Some(3), None, "m").to_string(), "line 3: m");
    assert_eq!(Error::new(None, Some("k".into()), "m").to_string(), "k: m");
    let e: Box<dyn std::error::Error> = Box::new(Error::new(None, None, "m"));
    assert_eq!(e.to_string(), "m");
}

//! `tether-hub token` and `tether-hub node` (issue 7): a token made after
//! `init` prints a join command carrying the CA hash init printed, lists
//! without its secret, deletes; node list and revoke on a hub no node has
//! joined yet say so clearly.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tether_tests::pki::Pki;
use tether_tests::procs::run;

fn hub(args: &[&str]) -> (i32, String, String) {
    run("tether-hub", args)
}

/// `init` into `dir`; returns the CA hash it printed.
fn init(dir: &str) -> String {
    let (code, out, err) = hub(&[
        "init",
        "--dir",
        dir,
        "--san",
        "hub.example.com",
        "--san",
        "127.0.0.1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no CA hash in {out}"))
        .to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Whether `s` is `ID.SECRET`: 6 and 16 characters of [a-z0-9].
fn is_token(s: &str) -> bool {
    let ok = |p: &str, n| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    s.split_once('.')
        .is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

#[test]
fn token_create_prints_the_join_command_with_inits_ca_hash() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();
    let ca_hash = init(&dir_s);

    let (code, out, err) = hub(&[
        "token",
        "create",
        "--dir",
        &dir_s,
        "--node",
        "edge-1",
        "--single-use",
        "--ttl",
        "2h",
        "--description",
        "rack 3",
        "--print-join-command",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let line = out.trim_end();
    assert_eq!(out.lines().count(), 1, "{out}");
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words.len(), 9, "{line}");
    assert_eq!(
        words[..3],
        ["tether-edge", "join", "hub.example.com:7443"],
        "{line}"
    );
    assert_eq!(words[3], "--token");
    assert!(is_token(words[4]), "{line}");
    assert_eq!(words[5..7], ["--ca-hash", ca_hash.as_str()], "{line}");
    assert_eq!(words[7..], ["--node-name", "edge-1"], "{line}");
    let (id, secret) = words[4].split_once('.').expect("ID.SECRET");
    assert!(
        err.contains(&format!("token {id}")) && err.contains("single-use"),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");

    let tokens = dir.join("tokens");
    assert_eq!(mode(&tokens), 0o600);
    let stored = std::fs::read_to_string(&tokens).expect("tokens");
    assert!(stored.contains(id) && !stored.contains(secret), "{stored}");

    // --hub overrides the name from hub.pem; no --node, no --node-name.
    let (code, out, err) = hub(&[
        "token",
        "create",
        "--dir",
        &dir_s,
        "--print-join-command",
        "--hub",
        "10.9.8.7:9443",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let words: Vec<&str> = out.trim_end().split(' ').collect();
    assert_eq!(words.len(), 7, "{out}");
    assert_eq!(words[2], "10.9.8.7:9443");
    assert_eq!(words[6], ca_hash);
    let second = words[4].split_once('.').expect("token").0.to_string();

    // Without --print-join-command: the token alone.
    let (code, out, err) = hub(&[
        "token",
        "create",
        "--dir",
        &dir_s,
        "--usages",
        "join,rejoin",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(is_token(out.trim_end()), "{out}");

    // list: every token, its node and flags, no secret.
    let (code, out, err) = hub(&["token", "list", "--dir", &dir_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    let header = out.lines().next().expect("header");
    for col in ["ID", "EXPIRES", "NODE", "USAGES", "SINGLE-USE", "USED"] {
        assert!(header.contains(col), "{header}");
    }
    assert_eq!(out.lines().count(), 4, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not in {out}"));
    for word in ["edge-1", "join", "yes", "rack 3"] {
        assert!(row.contains(word), "{word} not in {row}");
    }
    assert!(out.contains("join,rejoin"), "{out}");
    assert!(!out.contains(secret), "{out}");

    // delete: gone from the list; a second delete names the id.
    let (code, out, err) = hub(&["token", "delete", id, "--dir", &dir_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("deleted token {id}")), "{out}");
    let (_, out, _) = hub(&["token", "list", "--dir", &dir_s]);
    assert!(!out.contains(id) && out.contains(&second), "{out}");
    let (code, _, err) = hub(&["token", "delete", id, "--dir", &dir_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("no token \"{id}\"")), "{err}");

    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("tmp")),
        "temporary file left: {names:?}"
    );
}

#[test]
fn bad_token_command_lines_fail_clearly() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();

    // No init yet: the CA is needed, and said so.
    let (code, _, err) = hub(&["token", "create", "--dir", &dir_s, "--print-join-command"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tether-hub init"), "{err}");
    assert!(!dir.join("tokens").exists(), "no token without a CA");

    init(&dir_s);
    for (args, needle) in [
        (vec!["token"], "create, list or delete"),
        (vec!["token", "frob"], "unknown command \"frob\""),
        (vec!["token", "create", "--ttl", "0s"], "--ttl 0s"),
        (vec!["token", "create", "--ttl", "400d"], "365d"),
        (vec!["token", "create", "--ttl", "1y"], "unknown unit"),
        (
            vec!["token", "create", "--node", "Edge_1"],
            "not a valid node name",
        ),
        (vec!["token", "create", "--usages", "admin"], "\"admin\""),
        (
            vec!["token", "create", "--hub", "h:1"],
            "--print-join-command",
        ),
        (
            vec!["token", "create", "--print-join-command", "--hub", "nohost"],
            "HOST:PORT",
        ),
        (vec!["token", "delete"], "give its ID"),
        (vec!["node", "revoke"], "give its NAME"),
        (
            vec!["node", "list", "--frob"],
            "unknown argument \"--frob\"",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--dir", &dir_s]);
        let (code, out, err) = hub(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!dir.join("tokens").exists(), "no bad command made a token");
}

#[test]
fn node_list_and_revoke_before_any_join() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();

    // A directory that is no hub's state.
    let (code, _, err) = hub(&["node", "list", "--dir", &dir_s]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--dir") && err.contains("tether-hub init"),
        "{err}"
    );

    init(&dir_s);
    let (code, out, err) = hub(&["node", "list", "--dir", &dir_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no nodes have joined"), "{out}");

    let (code, out, err) = hub(&["node", "revoke", "edge-1", "--dir", &dir_s]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("no node edge-1 has been issued a certificate") && err.contains("node list"),
        "{err}"
    );
    assert!(
        !dir.join("nodes").exists(),
        "a failed revoke writes nothing"
    );
}

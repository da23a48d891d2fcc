//! `tether-hub init` (issue 7, first part): the CA and serving certificate
//! it writes run a real hub that an edge trusting only that CA links to,
//! and bad command lines fail clearly without touching an existing CA.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use std::sync::Arc;
use std::time::Duration;
use tether_tests::cluster::{token_of, wait_linked};
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, run, wait_http_ok, Proc};

fn hub(args: &[&str]) -> (i32, String, String) {
    run("tether-hub", args)
}

/// The `[tls]` block init printed (from `[tls]` to the end).
fn tls_lines(out: &str) -> String {
    let start = out.find("[tls]\n").expect("init prints [tls]");
    out[start..].to_string()
}

/// The value of `key = "..."` in the printed lines.
fn value<'a>(lines: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = \"");
    let line = lines
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {lines}"));
    line[prefix.len()..].trim_end_matches('"')
}

/// A TLS 1.3 handshake to `addr` trusting only `ca`, checking `name`.
fn handshake(addr: SocketAddr, ca: &Path, name: &str) -> Result<(), String> {
    let cc = tether_link::tls::client_config(ca, None).map_err(|e| e.to_string())?;
    let server =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(cc), server).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    // Nothing to say: the handshake is what is checked.
    let _ = tls.flush();
    let _ = tls.read(&mut [0u8; 1]);
    Ok(())
}

/// Recomputes the CA hash independently of the hub's code: SHA-256 (from
/// rustls' ring provider) over the SubjectPublicKeyInfo of the CA key file.
fn spki_hash(ca_key: &Path) -> String {
    let pem = std::fs::read_to_string(ca_key).expect("CA key");
    let spki = rcgen::PublicKeyData::subject_public_key_info(
        &rcgen::KeyPair::from_pem(&pem).expect("CA key parses"),
    );
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let digest = suite
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(&spki);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[test]
fn init_makes_a_pki_a_hub_runs_on_and_an_edge_links_to() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();
    let (code, out, err) = hub(&[
        "init",
        "--dir",
        &dir_s,
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("DNS:localhost, IP:127.0.0.1"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let hash_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no CA hash in {out}"));
    assert_eq!(hash_line.trim().len(), 7 + 64, "{hash_line}");
    let tls = tls_lines(&out);
    let ca = Path::new(value(&tls, "client_ca")).to_path_buf();
    assert_eq!(
        ca,
        std::fs::canonicalize(dir.join("ca.pem")).expect("ca.pem")
    );
    assert_eq!(hash_line.trim(), spki_hash(&dir.join("ca-key.pem")));

    // A hub with exactly the printed [tls] lines, and a token for the edge.
    let link: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let tokens = scratch.write("init-tokens", &format!("edge-1 {}\n", token_of("edge-1")));
    let config = scratch.write(
        "init-hub.toml",
        &format!(
            "log_level = \"debug\"\n[listen]\nlink = \"{link}\"\nadmin = \"{admin}\"\n{tls}[auth]\ntoken_file = \"{}\"\n",
            tokens.display()
        ),
    );
    let hub_proc = Proc::start(
        "hub",
        &bin("tether-hub"),
        &["--config", &config.to_string_lossy()],
    );
    assert!(
        wait_http_ok(admin, "/healthz", Duration::from_secs(20)),
        "hub did not come up:\n{}",
        hub_proc.logs()
    );
    handshake(link, &ca, "localhost").expect("localhost is a SAN");
    handshake(link, &ca, "127.0.0.1").expect("127.0.0.1 is a SAN");
    assert!(
        handshake(link, &ca, "tether-hub").is_err(),
        "a name not given to init must not verify"
    );
    assert!(
        handshake(link, &scratch.ca, "localhost").is_err(),
        "another CA must not verify the hub"
    );

    // An edge trusting only the written CA links.
    let edge_token = scratch.write("init-edge-token", &token_of("edge-1"));
    let edge_config = scratch.write(
        "init-edge.toml",
        &format!(
            "node = \"edge-1\"\nlog_level = \"debug\"\n[hub]\naddress = \"{link}\"\nserver_name = \"localhost\"\nca = \"{}\"\ntoken_file = \"{}\"\n",
            ca.display(),
            edge_token.display()
        ),
    );
    let edge = Proc::start(
        "edge-1",
        &bin("tether-edge"),
        &["--config", &edge_config.to_string_lossy()],
    );
    assert!(
        wait_linked(admin, "edge-1", Duration::from_secs(20)),
        "edge did not link:\n{}\n{}",
        edge.logs(),
        hub_proc.logs()
    );
}

#[test]
fn bad_init_command_lines_fail_clearly() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();

    let (code, help, _) = hub(&["init", "--help"]);
    assert_eq!(code, 0);
    for word in [
        "tether-hub init --san NAME",
        "--dir DIR",
        "--force",
        "ca-key.pem",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }

    let (code, _, err) = hub(&["init", "--dir", &dir_s]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least one --san"), "{err}");
    assert!(!dir.exists(), "nothing is written without a --san");

    let (code, _, err) = hub(&["init", "--dir", &dir_s, "--san"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--san needs"), "{err}");

    let (code, _, err) = hub(&["init", "--dir", &dir_s, "--san", "a b"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"a b\""), "{err}");

    let (code, _, err) = hub(&["init", "--san", "localhost", "--frobnicate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown argument \"--frobnicate\""), "{err}");

    let (code, out, err) = hub(&["init", "--dir", &dir_s, "--san", "localhost"]);
    assert_eq!(code, 0, "{out}{err}");
    let ca = dir.join("ca.pem");
    let before = std::fs::read(&ca).expect("ca.pem");
    let (code, _, err) = hub(&["init", "--dir", &dir_s, "--san", "localhost"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ca.pem exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&ca).expect("ca.pem"), before, "CA untouched");

    let (code, out, err) = hub(&["init", "--dir", &dir_s, "--san", "localhost", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(
        std::fs::read(&ca).expect("ca.pem"),
        before,
        "--force replaces"
    );
}

//! Edge and hub over real TLS on loopback: authentication both ways, streams
//! from the edge to a hub upstream, streams from the hub to an edge port.

use std::time::Duration;
use tether_tests::cluster::{
    is_linked, metric, node_field, start_edge, start_hub, wait_linked, EdgeAuth, Transport,
};
use tether_tests::echo::{roundtrip, EchoServer};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

const WAIT: Duration = Duration::from_secs(20);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn token_link_carries_a_stream_to_a_hub_upstream() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!("[upstream.echo]\naddress = \"{}\"\n", echo.addr()),
    );
    let fwd = free_port();
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &format!("[[forward]]\nlisten = \"127.0.0.1:{fwd}\"\nupstream = \"echo\"\n"),
    );
    assert!(
        wait_linked(hub.admin, "edge-1", WAIT),
        "{}\n{}",
        hub.proc.logs(),
        edge.logs()
    );
    assert_eq!(
        node_field(hub.admin, "edge-1", "auth").as_deref(),
        Some("\"token\"")
    );
    let data = pattern(1 << 20);
    let back = roundtrip(([127, 0, 0, 1], fwd).into(), &data, WAIT).expect("round trip");
    assert!(
        back == data,
        "echo differs ({} of {} bytes)",
        back.len(),
        data.len()
    );
    assert!(edge.wait_for_log("link to", WAIT));
    assert!(hub.proc.logs().contains("node edge-1 linked from"));
    assert_eq!(metric(hub.admin, "tether_hub_links"), Some(1.0));
}

#[test]
fn certificate_link_and_unknown_upstream() {
    let pki = Pki::new();
    let hub = start_hub(&pki, Transport::Tls, &[], "");
    let fwd = free_port();
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Certificate("system:node:edge-1".into()),
        &format!("[[forward]]\nlisten = \"127.0.0.1:{fwd}\"\nupstream = \"nowhere\"\n"),
    );
    assert!(
        wait_linked(hub.admin, "edge-1", WAIT),
        "{}\n{}",
        hub.proc.logs(),
        edge.logs()
    );
    assert_eq!(
        node_field(hub.admin, "edge-1", "auth").as_deref(),
        Some("\"certificate\"")
    );
    // An upstream the hub does not have: the local connection closes, the
    // hub says why, and the link stays up.
    let back = roundtrip(([127, 0, 0, 1], fwd).into(), b"hello", WAIT).unwrap_or_default();
    assert!(back.is_empty());
    assert!(hub.proc.wait_for_log("which this hub does not have", WAIT));
    assert!(is_linked(hub.admin, "edge-1"));
}

#[test]
fn wrong_credentials_are_refused_and_others_keep_working() {
    let pki = Pki::new();
    let hub = start_hub(&pki, Transport::Tls, &["edge-1", "edge-2"], "");
    let good = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        "",
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT));
    // edge-2 presents edge-1's token.
    let thief = start_edge(
        &pki,
        "edge-2",
        hub.link,
        Transport::Tls,
        EdgeAuth::TokenValue(tether_tests::cluster::token_of("edge-1")),
        "",
    );
    assert!(
        thief.wait_for_log("bad credentials", WAIT),
        "{}",
        thief.logs()
    );
    // A certificate that names another node.
    let liar = start_edge(
        &pki,
        "edge-3",
        hub.link,
        Transport::Tls,
        EdgeAuth::Certificate("system:node:edge-1".into()),
        "",
    );
    assert!(liar.wait_for_log("not authorized", WAIT), "{}", liar.logs());
    // A certificate that is not a node's at all.
    let stranger = start_edge(
        &pki,
        "edge-4",
        hub.link,
        Transport::Tls,
        EdgeAuth::Certificate("admin".into()),
        "",
    );
    assert!(
        stranger.wait_for_log("not authorized", WAIT),
        "{}",
        stranger.logs()
    );
    let logs = hub.proc.logs();
    assert!(logs.contains("token is not node \"edge-2\"'s"), "{logs}");
    assert!(
        logs.contains("certificate is for node \"edge-1\" but CONNECT claims \"edge-3\""),
        "{logs}"
    );
    assert!(logs.contains("is not system:node:<name>"), "{logs}");
    assert!(!is_linked(hub.admin, "edge-2"));
    assert!(is_linked(hub.admin, "edge-1"));
    assert!(good.logs().contains("up"));
}

#[test]
fn untrusted_hub_certificate_is_refused_by_the_edge() {
    let pki = Pki::new();
    let (cert, key) = pki.untrusted_hub();
    let port = free_port();
    let admin = free_port();
    let tokens = pki.write(
        "t",
        &format!("edge-1 {}\n", tether_tests::cluster::token_of("edge-1")),
    );
    let cfg = pki.write(
        "hub-untrusted.toml",
        &format!(
            "[listen]\nlink = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[auth]\ntoken_file = \"{}\"\n",
            cert.display(),
            key.display(),
            tokens.display()
        ),
    );
    let cfg = cfg.to_string_lossy().into_owned();
    let hub = tether_tests::procs::Proc::start(
        "hub",
        &tether_tests::procs::bin("tether-hub"),
        &["--config", &cfg],
    );
    assert!(tether_tests::procs::wait_http_ok(
        ([127, 0, 0, 1], admin).into(),
        "/healthz",
        WAIT
    ));
    let edge = start_edge(
        &pki,
        "edge-1",
        ([127, 0, 0, 1], port).into(),
        Transport::Tls,
        EdgeAuth::Token,
        "",
    );
    assert!(
        edge.wait_for_log("TLS handshake with", WAIT),
        "{}",
        edge.logs()
    );
    assert!(edge.logs().contains("UnknownIssuer"), "{}", edge.logs());
    assert!(!is_linked(([127, 0, 0, 1], admin).into(), "edge-1"));
    drop(hub);
}

#[test]
fn hub_reaches_only_allowed_edge_ports() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let allowed = echo.addr().port();
    let open = free_port();
    let forbidden_listen = free_port();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[[expose]]\nlisten = \"127.0.0.1:{open}\"\nnode = \"edge-1\"\nport = {allowed}\n[[expose]]\nlisten = \"127.0.0.1:{forbidden_listen}\"\nnode = \"edge-1\"\nport = 22\n"
        ),
    );
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &format!("[services]\nallow_ports = [{allowed}]\n"),
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT));
    let data = pattern(300_000);
    let back = roundtrip(([127, 0, 0, 1], open).into(), &data, WAIT).expect("round trip");
    assert!(back == data);
    let back =
        roundtrip(([127, 0, 0, 1], forbidden_listen).into(), b"ssh?", WAIT).unwrap_or_default();
    assert!(back.is_empty());
    assert!(edge.wait_for_log("which services.allow_ports does not allow", WAIT));
}

#[test]
fn sigterm_disconnects_cleanly() {
    let pki = Pki::new();
    let hub = start_hub(&pki, Transport::Tls, &["edge-1"], "");
    let mut edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        "",
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT));
    edge.stop();
    assert!(
        edge.logs().contains("SIGTERM: disconnecting"),
        "{}",
        edge.logs()
    );
    assert!(
        hub.proc.wait_for_log("closed by the edge", WAIT),
        "{}",
        hub.proc.logs()
    );
    assert!(!is_linked(hub.admin, "edge-1"));
}

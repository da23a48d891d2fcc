//! kube-apiserver's egress through the hub (issue 4, first part): a client
//! with kube-apiserver's client certificate sends `CONNECT <node>:<port>`
//! to the hub's egress endpoint, then speaks TLS through the tunnel to a
//! stand-in kubelet on the board, end to end: it sees the kubelet's own
//! certificate, never the hub's. Also: log streaming, an interactive
//! session with half-close, and the clear errors for an unknown node and a
//! port the edge does not allow.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection, StreamOwned};
use tether_tests::cluster::{start_edge, start_hub, wait_linked, EdgeAuth, Transport};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

const WAIT: Duration = Duration::from_secs(30);

/// A stand-in kubelet: TLS with its own certificate. `GET /containerLogs`
/// streams three log lines and closes; anything else is echoed until the
/// client half-closes, then answered with `bye` and closed.
fn start_kubelet(pki: &Pki) -> SocketAddr {
    let (cert, key) = pki.server_cert("edge-1");
    let config = tether_link::tls::server_config(&cert, &key, None).expect("kubelet TLS");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = ServerConnection::new(config).expect("server conn");
                let mut tls = StreamOwned::new(conn, tcp);
                let mut first = [0u8; 64];
                let Ok(n) = tls.read(&mut first) else { return };
                if first[..n].starts_with(b"GET /containerLogs") {
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
                    for i in 0..3 {
                        let _ = tls.write_all(format!("log line {i}\n").as_bytes());
                        let _ = tls.flush();
                        std::thread::sleep(Duration::from_millis(50));
                    }
                } else {
                    let _ = tls.write_all(&first[..n]);
                    let mut buf = [0u8; 4096];
                    loop {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let _ = tls.write_all(&buf[..n]);
                            }
                        }
                    }
                    // The client half-closed; it still gets our last word.
                    let _ = tls.write_all(b"bye");
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

struct Setup {
    _edge: tether_tests::procs::Proc,
    hub: tether_tests::cluster::Hub,
    egress: SocketAddr,
    kubelet: SocketAddr,
    pki: Pki,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let kubelet = start_kubelet(&pki);
    let egress: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[egress]\nlisten = \"{egress}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nconnect_timeout = \"3s\"\n",
            pki.hub_cert.display(),
            pki.hub_key.display(),
            pki.ca.display()
        ),
    );
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &format!("[services]\nallow_ports = [{}]\n", kubelet.port()),
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT), "{}", edge.logs());
    Setup {
        _edge: edge,
        hub,
        egress,
        kubelet,
        pki,
    }
}

fn client_config(pki: &Pki, cert: Option<&str>) -> Arc<ClientConfig> {
    let pair = cert.map(|cn| pki.node_cert(cn));
    let config = tether_link::tls::client_config(
        &pki.ca,
        pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .expect("client TLS");
    Arc::new(config)
}

/// TLS to the egress endpoint as kube-apiserver, then `CONNECT target`.
/// Returns the answer's status line and, on 200, the tunnel.
fn connect(s: &Setup, target: &str) -> (String, StreamOwned<ClientConnection, TcpStream>) {
    let tcp = TcpStream::connect(s.egress).expect("connect to the egress");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(client_config(&s.pki, Some("kube-apiserver")), name)
        .expect("client conn");
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .expect("write CONNECT");
    // Read the answer head byte by byte: what follows belongs to the tunnel.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, tls)
}

#[test]
fn kubelet_through_the_egress_end_to_end() {
    let s = setup();
    let target = format!("edge-1:{}", s.kubelet.port());
    let (status, outer) = connect(&s, &target);
    assert_eq!(
        status,
        "HTTP/1.1 200 Connection established",
        "{}",
        s.hub.proc.logs()
    );
    // TLS to the kubelet inside the tunnel: it is the kubelet's
    // certificate the client sees, for the name edge-1.
    let name = ServerName::try_from("edge-1").expect("name");
    let inner = ClientConnection::new(client_config(&s.pki, None), name).expect("inner conn");
    let mut kubelet = StreamOwned::new(inner, outer);
    kubelet
        .write_all(
            b"GET /containerLogs/edge-apps/web/web?follow=true HTTP/1.1\r\nHost: edge-1\r\n\r\n",
        )
        .expect("request logs");
    let mut logs = Vec::new();
    let _ = kubelet.read_to_end(&mut logs);
    let seen = kubelet
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tether_link::tls::subject_common_name(c));
    assert_eq!(
        seen.as_deref(),
        Some("edge-1"),
        "not the kubelet's certificate"
    );
    let logs = String::from_utf8_lossy(&logs);
    assert!(
        logs.contains("log line 0\nlog line 1\nlog line 2\n"),
        "{logs}\n{}",
        s.hub.proc.logs()
    );
    assert!(s.hub.proc.wait_for_log(
        &format!(
            "egress: kube-apiserver -> node edge-1 port {}",
            s.kubelet.port()
        ),
        WAIT
    ));

    // An interactive session: echo, then the client half-closes and still
    // hears the kubelet's last word.
    let (status, outer) = connect(&s, &target);
    assert!(status.contains(" 200 "), "{status}");
    let name = ServerName::try_from("edge-1").expect("name");
    let inner = ClientConnection::new(client_config(&s.pki, None), name).expect("inner conn");
    let mut session = StreamOwned::new(inner, outer);
    session.write_all(b"hello").expect("write");
    let mut echo = [0u8; 5];
    session.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"hello");
    session.conn.send_close_notify();
    session.flush().expect("flush");
    let mut rest = Vec::new();
    let _ = session.read_to_end(&mut rest);
    assert_eq!(rest, b"bye");
}

#[test]
fn unknown_nodes_and_ports_get_clear_errors_fast() {
    let s = setup();
    let started = Instant::now();
    let (status, _) = connect(&s, &format!("edge-9:{}", s.kubelet.port()));
    assert!(status.starts_with("HTTP/1.1 404 "), "{status}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A port the edge's services.allow_ports does not list.
    let started = Instant::now();
    let (status, _) = connect(&s, "edge-1:22");
    assert!(status.starts_with("HTTP/1.1 403 "), "{status}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Anything but a CONNECT.
    let (status, _) = connect(&s, "edge-1");
    assert!(status.starts_with("HTTP/1.1 400 "), "{status}");
    // Without kube-apiserver's client certificate there is no tunnel.
    let tcp = TcpStream::connect(s.egress).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(client_config(&s.pki, None), name).expect("conn");
    let mut tls = StreamOwned::new(conn, tcp);
    let _ = tls.write_all(b"CONNECT edge-1:10250 HTTP/1.1\r\n\r\n");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

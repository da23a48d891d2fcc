//! kube-apiserver's egress through the hub (issue 4, first part): a client
//! with kube-apiserver's client certificate sends `CONNECT <node>:<port>`
//! to the hub's egress endpoint, then speaks TLS through the tunnel to a
//! stand-in kubelet on the board, end to end: it sees the kubelet's own
//! certificate, never the hub's. Also: log streaming, an interactive
//! session with half-close, and the clear errors for an unknown node and a
//! port the edge does not allow. And the figures of issue 4, all end to
//! end on loopback: 200 MB through one tunnel, 1,000 tunnels at once on one
//! link, and a tunnel across a link cut (it carries on) and across an edge
//! restart (it ends with an error at once, never hangs).
//!
//! Hosts that are no node's (a webhook's ClusterIP, as kube-apiserver's
//! `cluster` egress sends them): dialled by the hub itself with `[egress]
//! direct = "cluster"` (loopback only here, which `direct_allow` must name),
//! refused with 403 and never dialled for the blocks the hub never dials
//! (loopback, link-local and the like, by address or by a name resolving
//! there), 404 for a name without a dot (a node's) and with `direct =
//! "none"`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection, StreamOwned};
use tether_tests::cluster::{
    metric, node_field, start_edge, start_hub, wait_linked, EdgeAuth, Hub, Transport,
};
use tether_tests::echo::EchoServer;
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;
use tether_tests::tunnel::{self, client_config, Clients, Kubelet, Setup};

const WAIT: Duration = Duration::from_secs(30);

/// A stand-in kubelet: TLS with its own certificate. `GET /containerLogs`
/// streams three log lines and closes; `GET /bulk` sends [`BULK`] bytes of
/// [`pattern`] and closes; `GET /slowlogs` sends [`SLOW_LINES`] numbered
/// lines, one every [`SLOW_EVERY`], and closes; anything else is echoed
/// until the client half-closes, then answered with `bye` and closed.
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
                } else if first[..n].starts_with(b"GET /bulk") {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK}\r\n\r\n");
                    if tls.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let block = pattern();
                    let mut sent = 0u64;
                    while sent < BULK {
                        let at = (sent % block.len() as u64) as usize;
                        let len = (block.len() - at).min((BULK - sent) as usize);
                        if tls.write_all(&block[at..at + len]).is_err() {
                            return;
                        }
                        sent += len as u64;
                    }
                } else if first[..n].starts_with(b"GET /slowlogs") {
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
                    for i in 0..SLOW_LINES {
                        if tls
                            .write_all(format!("log line {i:04}\n").as_bytes())
                            .and_then(|()| tls.flush())
                            .is_err()
                        {
                            return;
                        }
                        std::thread::sleep(SLOW_EVERY);
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

/// Size of the bulk answer: 200 MB.
const BULK: u64 = 200_000_000;

/// Lines of the slow log stream, and the pause after each.
const SLOW_LINES: usize = 120;
const SLOW_EVERY: Duration = Duration::from_millis(25);

/// The bulk answer repeats this block. Its length is a prime, so it lines
/// up with no TLS record or link frame size: a chunk lost, duplicated or
/// reordered anywhere shows up as a mismatch.
fn pattern() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..65_521)
        .map(|_| {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn setup() -> Setup {
    setup_with(false)
}

fn setup_with(through_proxy: bool) -> Setup {
    let pki = Pki::new();
    let kubelet = start_kubelet(&pki);
    Setup::start(pki, kubelet, through_proxy)
}

/// TLS to the egress endpoint as kube-apiserver, then `CONNECT target`.
/// Returns the answer's status line and, on 200, the tunnel.
fn connect(s: &Setup, target: &str) -> (String, StreamOwned<ClientConnection, TcpStream>) {
    let outer = client_config(&s.pki, Some("kube-apiserver"));
    tunnel::connect(s.egress, &outer, target).expect("CONNECT")
}

/// One echo exchange, then a half-close; the kubelet answers `bye`. Ends
/// both TLS sessions cleanly.
fn echo_and_close(mut k: Kubelet, payload: &[u8]) -> std::io::Result<()> {
    echo_once(&mut k, payload)?;
    k.conn.send_close_notify();
    k.flush()?;
    let mut rest = Vec::new();
    k.read_to_end(&mut rest)?;
    if rest != b"bye" {
        return Err(std::io::Error::other(format!(
            "after the half-close: {:?}",
            String::from_utf8_lossy(&rest)
        )));
    }
    let outer = &mut k.sock;
    outer.conn.send_close_notify();
    outer.flush()
}

/// Writes `payload` and reads it back.
fn echo_once(k: &mut Kubelet, payload: &[u8]) -> std::io::Result<()> {
    k.write_all(payload)?;
    let mut echo = vec![0u8; payload.len()];
    k.read_exact(&mut echo)?;
    if echo != payload {
        return Err(std::io::Error::other(format!(
            "echo {:?} for {:?}",
            String::from_utf8_lossy(&echo),
            String::from_utf8_lossy(payload)
        )));
    }
    Ok(())
}

/// The node's open streams as the hub's /nodes reports them.
fn streams(s: &Setup) -> Option<u64> {
    node_field(s.hub.admin, "edge-1", "streams").and_then(|v| v.parse().ok())
}

fn reconnects(s: &Setup) -> u64 {
    node_field(s.hub.admin, "edge-1", "reconnects")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until `cond` holds; whether it did within `timeout`.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    // A name without a dot that is no node's is never dialled directly
    // (more hosts that are no node's: the direct tests below).
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

#[test]
fn two_hundred_megabytes_through_one_tunnel() {
    let s = setup();
    let clients = Clients::new(&s.pki);
    let mut k = clients.kubelet(&s).expect("tunnel");
    k.write_all(b"GET /bulk HTTP/1.1\r\nHost: edge-1\r\n\r\n")
        .expect("request");
    let started = Instant::now();
    let mut k = BufReader::with_capacity(64 << 10, k);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let n = k.read_line(&mut head).expect("answer head");
        assert!(n > 0, "closed in the answer head: {head:?}");
    }
    assert!(
        head.starts_with("HTTP/1.1 200 ") && head.contains(&format!("Content-Length: {BULK}\r\n")),
        "{head:?}"
    );
    // Checked as it streams, against the block it repeats.
    let block = pattern();
    let mut got = 0u64;
    loop {
        let chunk = match k.fill_buf() {
            Ok([]) => break,
            Ok(c) => c,
            Err(e) => panic!(
                "after {got} of {BULK} bytes: {e}\n{}\n{}",
                s.hub.proc.logs(),
                s.edge.logs()
            ),
        };
        let len = chunk.len();
        let mut checked = 0;
        while checked < len {
            let at = ((got + checked as u64) % block.len() as u64) as usize;
            let n = (block.len() - at).min(len - checked);
            assert!(
                chunk[checked..checked + n] == block[at..at + n],
                "the stream differs from the pattern within bytes {}..{}",
                got + checked as u64,
                got + (checked + n) as u64
            );
            checked += n;
        }
        got += len as u64;
        assert!(got <= BULK, "more than {BULK} bytes");
        k.consume(len);
    }
    let took = started.elapsed();
    assert_eq!(got, BULK, "the tunnel ended early");
    eprintln!(
        "{BULK} bytes through one tunnel in {took:?} ({:.0} MB/s)",
        BULK as f64 / took.as_secs_f64() / 1e6
    );
    drop(k);

    // The link stayed up the whole time and carries new tunnels.
    assert!(wait_linked(s.hub.admin, "edge-1", WAIT));
    assert_eq!(reconnects(&s), 0, "{}", s.edge.logs());
    let k = clients.kubelet(&s).expect("a new tunnel");
    echo_and_close(k, b"small request after the bulk").expect("small exchange");
}

/// Tunnels open at once on one link, each from its own socket.
const TUNNELS: usize = 1000;
/// Client threads; each holds TUNNELS / THREADS tunnels.
const THREADS: usize = 25;

#[test]
fn a_thousand_concurrent_tunnels_on_one_link() {
    let s = Arc::new(setup());
    let clients = Arc::new(Clients::new(&s.pki));
    let started = Instant::now();
    // All threads, and this one, meet once every tunnel is open.
    let all_open = Arc::new(Barrier::new(THREADS + 1));
    let checked = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (s, clients) = (s.clone(), clients.clone());
            let (all_open, checked) = (all_open.clone(), checked.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let ids = (t..TUNNELS).step_by(THREADS);
                let payload = |i: usize, round: usize| format!("tunnel {i:04} round {round}");
                // Open and exchange once; errors wait for the barrier too,
                // so a failure cannot leave the others hanging there.
                let opened: Result<Vec<(usize, Kubelet)>, String> = ids
                    .map(|i| {
                        let mut k = clients
                            .kubelet(&s)
                            .map_err(|e| format!("tunnel {i}: {e}"))?;
                        echo_once(&mut k, payload(i, 1).as_bytes())
                            .map_err(|e| format!("tunnel {i}: {e}"))?;
                        Ok((i, k))
                    })
                    .collect();
                all_open.wait();
                checked.wait();
                for (i, mut k) in opened? {
                    echo_once(&mut k, payload(i, 2).as_bytes())
                        .and_then(|()| echo_and_close(k, payload(i, 3).as_bytes()))
                        .map_err(|e| format!("tunnel {i}: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    all_open.wait();
    let opened_in = started.elapsed();
    let open = streams(&s);
    checked.wait();
    let failures: Vec<String> = workers
        .into_iter()
        .filter_map(|w| w.join().expect("worker").err())
        .collect();
    let done_in = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed, first: {}\n{}",
        failures.len(),
        failures[0],
        s.hub.proc.logs()
    );
    eprintln!("{TUNNELS} tunnels open after {opened_in:?}, all closed after {done_in:?}");
    assert_eq!(open, Some(TUNNELS as u64), "streams while all were open");
    // Every stream is gone from the link once its tunnel closed.
    assert!(
        wait_until(Duration::from_secs(10), || streams(&s) == Some(0)),
        "streams left: {:?}\n{}",
        streams(&s),
        s.hub.proc.logs()
    );
    assert!(wait_linked(s.hub.admin, "edge-1", WAIT));
    assert_eq!(reconnects(&s), 0, "{}", s.edge.logs());
}

/// Requests the slow log stream in a new tunnel and reads its answer head.
/// Every read of the tunnel is bounded by `timeout`.
fn slow_logs(s: &Setup, clients: &Clients, timeout: Duration) -> BufReader<Kubelet> {
    let mut k = clients.kubelet(s).expect("tunnel");
    k.sock
        .sock
        .set_read_timeout(Some(timeout))
        .expect("timeout");
    k.write_all(b"GET /slowlogs?follow=true HTTP/1.1\r\nHost: edge-1\r\n\r\n")
        .expect("request logs");
    let mut k = BufReader::new(k);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let n = k.read_line(&mut head).expect("answer head");
        assert!(n > 0, "closed in the answer head: {head:?}");
    }
    assert!(head.starts_with("HTTP/1.1 200 "), "{head:?}");
    k
}

/// Reads the slow log stream to its end, checking that lines come in
/// order, none lost or repeated; calls `fault` once line 10 arrived.
/// Returns the number of lines and how the stream ended.
fn read_logs(k: &mut BufReader<Kubelet>, mut fault: impl FnMut()) -> (usize, std::io::Result<()>) {
    let mut lines = 0;
    loop {
        let mut line = String::new();
        match k.read_line(&mut line) {
            Ok(0) => return (lines, Ok(())),
            Ok(_) => {
                assert_eq!(line, format!("log line {lines:04}\n"));
                lines += 1;
                if lines == 10 {
                    fault();
                }
            }
            Err(e) => return (lines, Err(e)),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[test]
fn a_link_cut_mid_stream_neither_hangs_nor_breaks_the_tunnel() {
    let mut s = setup_with(true);
    let clients = Clients::new(&s.pki);

    // The link is cut while the kubelet streams logs through a tunnel. The
    // edge reconnects and resumes its session (ARCHITECTURE.md §9: streams
    // carry on with no loss), so the tunnel neither hangs nor breaks: every
    // line arrives, then the kubelet's clean end.
    let mut k = slow_logs(&s, &clients, WAIT);
    let before = reconnects(&s);
    let started = Instant::now();
    let proxy = s.proxy.as_ref().expect("proxy");
    let (lines, ended) = read_logs(&mut k, || proxy.cut());
    let took = started.elapsed();
    eprintln!("log stream across a link cut: {lines} lines in {took:?}, ended with {ended:?}");
    assert!(
        !matches!(&ended, Err(e) if is_timeout(e)),
        "the tunnel hung after the cut ({lines} lines)\n{}\n{}",
        s.hub.proc.logs(),
        s.edge.logs()
    );
    assert!(
        ended.is_ok() && lines == SLOW_LINES,
        "the tunnel broke at the cut: {ended:?} after {lines} of {SLOW_LINES} lines\n{}\n{}",
        s.hub.proc.logs(),
        s.edge.logs()
    );
    drop(k);
    // The link did go down and came back, resuming the session.
    assert!(reconnects(&s) > before, "{}", s.edge.logs());
    assert!(
        wait_linked(s.hub.admin, "edge-1", WAIT),
        "{}",
        s.edge.logs()
    );
    assert!(
        s.edge.logs().contains("session resumed"),
        "{}",
        s.edge.logs()
    );
    let k = clients.kubelet(&s).expect("a tunnel after the cut");
    echo_and_close(k, b"after the cut").expect("exchange after the cut");

    // The far end goes away for good: the edge dies mid-stream and a new
    // run links in, so the hub resets the old run's streams. The tunnel
    // ends at once with an error, not a hang and not a clean-looking EOF.
    let mut k = slow_logs(&s, &clients, Duration::from_secs(10));
    let started = Instant::now();
    let mut restarted = None;
    let (lines, ended) = read_logs(&mut k, || {
        s.edge.kill();
        restarted = Some(start_edge(
            &s.pki,
            "edge-1",
            s.edge_link,
            Transport::Tls,
            EdgeAuth::Token,
            &s.edge_cfg,
        ));
    });
    let took = started.elapsed();
    eprintln!("log stream across an edge restart: {lines} lines in {took:?}, ended with {ended:?}");
    s.edge = restarted.expect("the edge was restarted");
    match &ended {
        Err(e) if is_timeout(e) => panic!(
            "the tunnel hung after the edge restarted ({lines} lines)\n{}\n{}",
            s.hub.proc.logs(),
            s.edge.logs()
        ),
        Err(_) => {}
        Ok(()) => panic!("{lines} lines then a clean end, though the edge died mid-stream"),
    }
    assert!(lines < SLOW_LINES);
    drop(k);
    assert!(
        wait_linked(s.hub.admin, "edge-1", WAIT),
        "{}",
        s.edge.logs()
    );
    let k = clients.kubelet(&s).expect("a tunnel after the restart");
    echo_and_close(k, b"after the restart").expect("exchange after the restart");
    assert!(
        wait_until(Duration::from_secs(10), || streams(&s) == Some(0)),
        "streams left: {:?}",
        streams(&s)
    );
}

/// A hub (no edge linked) whose `[egress]` has `keys` added; its egress
/// endpoint.
fn hub_with_egress(pki: &Pki, keys: &str) -> (Hub, SocketAddr) {
    let egress: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let hub = start_hub(
        pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[egress]\nlisten = \"{egress}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nconnect_timeout = \"3s\"\n{keys}",
            pki.hub_cert.display(),
            pki.hub_key.display(),
            pki.ca.display()
        ),
    );
    (hub, egress)
}

/// `CONNECT target` as kube-apiserver to `egress`.
fn connect_to(pki: &Pki, egress: SocketAddr, target: &str) -> (String, tunnel::Tunnel) {
    let outer = client_config(pki, Some("kube-apiserver"));
    tunnel::connect(egress, &outer, target).expect("CONNECT")
}

/// `tether_hub_egress_total{result="<result>"}`, 0 when not there yet.
fn egress_total(hub: &Hub, result: &str) -> f64 {
    metric(
        hub.admin,
        &format!("tether_hub_egress_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Writes `payload` through the tunnel and reads it back.
fn echoes(tunnel: &mut tunnel::Tunnel, payload: &[u8]) -> Vec<u8> {
    tunnel.write_all(payload).expect("write");
    let mut back = vec![0u8; payload.len()];
    tunnel.read_exact(&mut back).expect("echo");
    back
}

#[test]
fn a_host_that_is_no_node_is_dialled_directly() {
    let pki = Pki::new();
    // Loopback is never dialled unless direct_allow names it.
    let (hub, egress) = hub_with_egress(&pki, "direct_allow = [\"127.0.0.0/8\"]\n");
    let service = EchoServer::start();
    let port = service.addr().port();

    // By address, as kube-apiserver sends a webhook's ClusterIP.
    let (status, mut tunnel) = connect_to(&pki, egress, &format!("127.0.0.1:{port}"));
    assert_eq!(
        status,
        "HTTP/1.1 200 Connection established",
        "{}",
        hub.proc.logs()
    );
    assert_eq!(
        echoes(&mut tunnel, b"admission review"),
        b"admission review"
    );
    assert_eq!(echoes(&mut tunnel, b"and again"), b"and again");
    assert!(
        hub.proc.wait_for_log(
            &format!("egress: kube-apiserver -> direct 127.0.0.1:{port} (127.0.0.1:{port})"),
            WAIT
        ),
        "{}",
        hub.proc.logs()
    );
    drop(tunnel);
    assert_eq!(service.connections(), 1);

    // By a name resolved when dialled: the resolver reads "127.1" as
    // 127.0.0.1 (no DNS needed in a test), checked after the lookup.
    let (status, mut tunnel) = connect_to(&pki, egress, &format!("127.1:{port}"));
    assert_eq!(
        status,
        "HTTP/1.1 200 Connection established",
        "{}",
        hub.proc.logs()
    );
    assert_eq!(echoes(&mut tunnel, b"by name"), b"by name");
    assert!(
        hub.proc.wait_for_log(
            &format!("egress: kube-apiserver -> direct 127.1:{port} (127.0.0.1:{port})"),
            WAIT
        ),
        "{}",
        hub.proc.logs()
    );
    drop(tunnel);
    assert_eq!(service.connections(), 2);
    assert_eq!(egress_total(&hub, "direct"), 2.0, "{}", hub.proc.logs());

    // Outside direct_allow: refused, not dialled.
    let (status, _) = connect_to(&pki, egress, &format!("10.96.0.10:{port}"));
    assert!(status.starts_with("HTTP/1.1 403 "), "{status}");
    // Nothing listening: 502 from the hub's own dial.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (status, _) = connect_to(&pki, egress, &format!("127.0.0.1:{closed_port}"));
    assert!(status.starts_with("HTTP/1.1 502 "), "{status}");
    assert_eq!(egress_total(&hub, "direct_refused"), 1.0);
    assert_eq!(egress_total(&hub, "direct_failed"), 1.0);
    assert_eq!(service.connections(), 2);
}

#[test]
fn the_blocks_the_hub_never_dials_get_403_without_a_dial() {
    let pki = Pki::new();
    // No direct_allow: anything may be dialled but the never-dialled blocks.
    let (hub, egress) = hub_with_egress(&pki, "");
    let service = EchoServer::start();
    let port = service.addr().port();
    for target in [
        "169.254.169.254:80".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        // Linux dials 0.0.0.0 as loopback.
        format!("0.0.0.0:{port}"),
        // A name is checked by the addresses it resolves to.
        format!("127.1:{port}"),
        format!("0x7f.0.0.1:{port}"),
    ] {
        let (status, _) = connect_to(&pki, egress, &target);
        assert!(
            status.starts_with("HTTP/1.1 403 "),
            "{target}: {status}\n{}",
            hub.proc.logs()
        );
    }
    assert!(hub.proc.wait_for_log(
        "asked for 169.254.169.254:80: 403 169.254.169.254:80 is not dialled: 169.254.169.254 is link-local (cloud metadata lives there)",
        WAIT
    ), "{}", hub.proc.logs());
    // A name without a dot is a node's: not looked up, not dialled.
    let (status, _) = connect_to(&pki, egress, &format!("localhost:{port}"));
    assert!(status.starts_with("HTTP/1.1 404 "), "{status}");
    assert_eq!(service.connections(), 0, "a refused address was dialled");
    assert_eq!(egress_total(&hub, "direct_refused"), 7.0);
    assert_eq!(egress_total(&hub, "unknown_node"), 1.0);
    assert_eq!(egress_total(&hub, "direct"), 0.0);
    assert!(!hub.proc.logs().contains(" -> direct "));
}

#[test]
fn with_direct_none_a_host_that_is_no_node_gets_404() {
    let pki = Pki::new();
    let (hub, egress) = hub_with_egress(&pki, "direct = \"none\"\n");
    let service = EchoServer::start();
    let port = service.addr().port();
    for target in [format!("edge-9:{port}"), format!("127.0.0.1:{port}")] {
        let (status, _) = connect_to(&pki, egress, &target);
        assert!(status.starts_with("HTTP/1.1 404 "), "{target}: {status}");
    }
    assert_eq!(service.connections(), 0);
    assert_eq!(egress_total(&hub, "unknown_node"), 2.0);
}

//! egress-bench: the figures of kube-apiserver's egress through the hub
//! (issue 4), printed.
//!
//! Runs the release tether-hub and tether-edge on loopback with TLS 1.3 on
//! the link, a stand-in kubelet on the edge's side (TLS with its own serving
//! certificate, requiring a client certificate, as kubelet does) and the
//! stand-in kube-apiserver on the hub's side. The client plays
//! kube-apiserver: TLS to the hub's egress endpoint with its client
//! certificate, `CONNECT <node>:<kubelet port>`, then its own TLS to the
//! kubelet inside the tunnel. No TLS session resumption anywhere: every
//! connection pays full handshakes. Measures:
//! 1. throughput of one tunnelled stream: a bulk download from the kubelet
//!    through edge, link, hub and egress;
//! 2. the round trip of the node's own API traffic (GET of one pod through
//!    the edge's API proxy, the link and the hub to the stand-in
//!    kube-apiserver) with the link throttled to 1 MB/s each way by the
//!    fault proxy between edge and hub: without, then during a bulk tunnel
//!    download that saturates the link;
//! 3. time to the first byte of a `logs` answer through the hub against a
//!    direct connection to the kubelet.
//!
//! Figures 1 and 3 use node edge-2, linked straight to the hub; figure 2
//! uses node edge-1, linked through the fault proxy, with its API proxy.
//!
//! Usage: cargo run --release -p tether-tests --bin egress-bench [-- --mib N --gets N --tries N]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection, StreamOwned};
use tether_tests::apiserver::StandIn;
use tether_tests::bench::arg;
use tether_tests::client::{self, KUBELET, PROTOBUF};
use tether_tests::cluster::{start_edge, start_hub, wait_linked, EdgeAuth, Transport};
use tether_tests::faultproxy::FaultProxy;
use tether_tests::fleet::edge_config;
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

const WAIT: Duration = Duration::from_secs(30);

/// The recorded pod (bound to edge-1) whose GET is the node's API traffic.
const POD: &str = "/api/v1/namespaces/edge-apps/pods/api-m5ghvwrtzm-dcwg6";

/// What the `logs` requests ask the kubelet for.
const LOGS: &str = "/containerLogs/edge-apps/web/web?follow=true";

/// The throttle of figure 2, bytes per second each way.
const THROTTLE: u64 = 1_000_000;

/// How long the loaded round trips of figure 2 may take in all before the
/// rest are skipped, so a slow link cannot stretch the run.
const LOADED_BUDGET: Duration = Duration::from_secs(60);

type Tls<S> = StreamOwned<ClientConnection, S>;

/// A stand-in kubelet: TLS with its serving certificate for `edge-1`,
/// client certificate required. `GET /bulk?bytes=N` answers N bytes (no
/// `bytes`: without end, until the client goes); `GET /containerLogs...`
/// answers its head and first log line in one write, then closes.
fn start_kubelet(pki: &Pki) -> SocketAddr {
    let (cert, key) = pki.server_cert("edge-1");
    let config = tether_link::tls::server_config_requiring_clients(&cert, &key, &pki.ca)
        .expect("kubelet TLS");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the kubelet");
    let addr = listener.local_addr().expect("kubelet address");
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                let _ = tcp.set_nodelay(true);
                let _ = tcp.set_read_timeout(Some(WAIT));
                let conn = ServerConnection::new(config).expect("kubelet conn");
                let _ = serve_kubelet(&mut StreamOwned::new(conn, tcp));
            });
        }
    });
    addr
}

fn serve_kubelet(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
    let (head, _) = read_head(tls)?;
    let target = head.split(' ').nth(1).unwrap_or("").to_string();
    if let Some(query) = target.strip_prefix("/bulk") {
        let len: Option<u64> = query
            .trim_start_matches('?')
            .split('&')
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|v| v.parse().ok());
        let framing = len.map_or("Connection: close\r\n".to_string(), |n| {
            format!("Content-Length: {n}\r\n")
        });
        tls.write_all(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\n")
                .as_bytes(),
        )?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = len.unwrap_or(u64::MAX);
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            tls.write_all(&chunk[..n])?;
            left -= n as u64;
        }
    } else if target.starts_with("/containerLogs") {
        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nlog line 0\n")?;
    } else {
        tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
    }
    tls.conn.send_close_notify();
    tls.flush()
}

/// Reads an HTTP head: its text, and the bytes after it already read.
fn read_head<S: Read>(s: &mut S) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 16 << 10 {
            return Err(io::Error::other("head too long"));
        }
        match s.read(&mut chunk)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// kube-apiserver's two TLS clients: to the egress endpoint (its egress
/// client certificate) and to kubelets (its kubelet client certificate).
/// Neither resumes sessions.
struct Clients {
    egress: Arc<ClientConfig>,
    kubelet: Arc<ClientConfig>,
}

impl Clients {
    fn new(pki: &Pki) -> Clients {
        let config = |cn: &str| {
            let (cert, key) = pki.node_cert(cn);
            let mut c =
                tether_link::tls::client_config(&pki.ca, Some((&cert, &key))).expect("client TLS");
            c.resumption = Resumption::disabled();
            Arc::new(c)
        };
        Clients {
            egress: config("kube-apiserver"),
            kubelet: config("kube-apiserver-kubelet-client"),
        }
    }

    fn tcp(addr: SocketAddr) -> TcpStream {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp
    }

    /// TLS to the kubelet inside `transport`.
    fn to_kubelet<S: Read + Write>(&self, transport: S) -> Tls<S> {
        let name = ServerName::try_from("edge-1").expect("name");
        let conn = ClientConnection::new(self.kubelet.clone(), name).expect("kubelet conn");
        StreamOwned::new(conn, transport)
    }

    /// TLS to the egress endpoint, `CONNECT target`, then TLS to the
    /// kubelet through the tunnel. Handshakes happen on first use.
    fn through_hub(&self, egress: SocketAddr, target: &str) -> Tls<Tls<TcpStream>> {
        let name = ServerName::try_from("localhost").expect("name");
        let conn = ClientConnection::new(self.egress.clone(), name).expect("egress conn");
        let mut outer = StreamOwned::new(conn, Clients::tcp(egress));
        outer
            .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .expect("write CONNECT");
        // Byte by byte: what follows the answer belongs to the tunnel.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match outer.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!("CONNECT {target}: no answer ({other:?})"),
            }
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 200 "),
            "CONNECT {target}: {head}"
        );
        self.to_kubelet(outer)
    }

    /// TLS to the kubelet, directly.
    fn direct(&self, kubelet: SocketAddr) -> Tls<TcpStream> {
        self.to_kubelet(Clients::tcp(kubelet))
    }
}

/// Sends a GET for `target` to the kubelet on `conn` and returns the
/// status line and the body bytes already read.
fn get<S: Read + Write>(conn: &mut S, target: &str) -> (String, Vec<u8>) {
    conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: edge-1\r\n\r\n").as_bytes())
        .expect("write request");
    let (head, rest) = read_head(conn).expect("answer head");
    let status = head.lines().next().unwrap_or("").to_string();
    assert!(status.contains(" 200 "), "GET {target}: {status}");
    (status, rest)
}

/// Downloads `bytes` from the kubelet's `/bulk` on `conn`; checks the count.
fn download<S: Read + Write>(conn: &mut S, bytes: u64) {
    let (_, rest) = get(conn, &format!("/bulk?bytes={bytes}"));
    let mut got = rest.len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    while got < bytes {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => panic!("download: {e} after {got} bytes"),
        }
    }
    assert_eq!(got, bytes, "download: short");
}

/// Time from the start of `connect` to the first byte of a `logs` body.
fn first_log_byte<S: Read + Write>(connect: impl FnOnce() -> S) -> Duration {
    let start = Instant::now();
    let mut conn = connect();
    let (_, mut body) = get(&mut conn, LOGS);
    let mut buf = [0u8; 1024];
    while body.is_empty() {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => panic!("logs: no body"),
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = start.elapsed();
    assert!(body.starts_with(b"log line 0"), "logs: unexpected body");
    elapsed
}

/// p50, p99 and max by nearest rank.
fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| {
        let rank = (samples.len() as f64 * q).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn summary(samples: Vec<Duration>) -> String {
    let n = samples.len();
    let (p50, p99, max) = stats(samples);
    format!("p50 {} p99 {} max {} ({n})", ms(p50), ms(p99), ms(max))
}

/// A free port whose successor is free too (the edge's status listener).
fn free_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// `count` GETs of [`POD`] on one keep-alive connection to the edge's API
/// proxy, within `budget`; their round trips.
/// Mean of the edge's link window and in-flight bytes, from its /metrics
/// every 50 ms while `sampling` holds.
fn link_windows(status: SocketAddr, sampling: &AtomicBool) -> (f64, f64) {
    let gauge = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    let (mut window, mut inflight, mut n) = (0.0, 0.0, 0u32);
    while sampling.load(Ordering::Relaxed) {
        if let Ok((200, text)) = tether_tests::procs::http_get(status, "/metrics") {
            if let (Some(w), Some(i)) = (
                gauge(&text, "tether_edge_link_window_bytes "),
                gauge(&text, "tether_edge_link_inflight_bytes "),
            ) {
                window += w;
                inflight += i;
                n += 1;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let n = f64::from(n.max(1));
    (window / n, inflight / n)
}

fn pod_gets(proxy: SocketAddr, count: usize, budget: Duration) -> Vec<Duration> {
    let mut conn = TcpStream::connect(proxy).expect("connect to the API proxy");
    conn.set_nodelay(true).expect("nodelay");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count);
    while samples.len() < count && started.elapsed() < budget {
        let t = Instant::now();
        let answer = client::exchange(&mut conn, KUBELET, POD, PROTOBUF);
        samples.push(t.elapsed());
        assert_eq!(answer.status, 200, "GET pod: {}", answer.text());
    }
    samples
}

fn main() {
    let mib = arg("--mib", 500);
    let gets = arg("--gets", 100) as usize;
    let tries = arg("--tries", 200) as usize;
    let pki = Pki::new();
    let kubelet = start_kubelet(&pki);
    let standin = StandIn::start_tls(&pki);
    let egress: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1", "edge-2"],
        &format!(
            "[upstream.kube-apiserver]\naddress = \"{}\"\n[egress]\nlisten = \"{egress}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nconnect_timeout = \"5s\"\n",
            standin.addr(),
            pki.hub_cert.display(),
            pki.hub_key.display(),
            pki.ca.display()
        ),
    );
    let services = format!("[services]\nallow_ports = [{}]\n", kubelet.port());
    let edge2 = start_edge(
        &pki,
        "edge-2",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &services,
    );
    assert!(
        wait_linked(hub.admin, "edge-2", WAIT),
        "no link:\n{}",
        edge2.logs()
    );
    println!(
        "machine: {} cores, {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let clients = Clients::new(&pki);
    let target = format!("edge-2:{}", kubelet.port());

    // 1. One tunnelled stream.
    let bytes = mib << 20;
    download(&mut clients.through_hub(egress, &target), 1 << 20);
    let start = Instant::now();
    download(&mut clients.through_hub(egress, &target), bytes);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "1. one tunnelled stream (kubelet -> edge -> TLS link -> hub -> egress TLS -> client, inner TLS end to end): \
         {mib} MiB in {secs:.2} s = {:.1} MB/s ({:.1} MiB/s; target >= 50 MB/s)",
        bytes as f64 / secs / 1e6,
        bytes as f64 / secs / (1 << 20) as f64
    );

    // 2. The node's API round trips on a throttled link, with and without
    // a bulk tunnel download filling it.
    let proxy = FaultProxy::start(hub.link).expect("fault proxy");
    let api: SocketAddr = ([127, 0, 0, 1], free_pair()).into();
    // edge_config serves the edge's /metrics on the port after the proxy's.
    let status: SocketAddr = ([127, 0, 0, 1], api.port() + 1).into();
    let mut edge1 = start_edge(
        &pki,
        "edge-1",
        proxy.addr(),
        Transport::Tls,
        EdgeAuth::Token,
        &format!("{}{services}", edge_config(&pki, api, None, "")),
    );
    assert!(
        wait_linked(hub.admin, "edge-1", WAIT),
        "no link:\n{}",
        edge1.logs()
    );
    assert!(edge1.wait_for_log("API proxy on", WAIT), "{}", edge1.logs());
    proxy.throttle(Some(THROTTLE));
    pod_gets(api, 10, WAIT);
    let reached = || {
        standin
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.target == POD)
            .count()
    };
    let before = reached();
    let idle = pod_gets(api, gets, LOADED_BUDGET);
    let idle_count = idle.len();

    let bulk_target = format!("edge-1:{}", kubelet.port());
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut bulk = clients.through_hub(egress, &bulk_target);
    let bulk = {
        let (received, stop) = (received.clone(), stop.clone());
        thread::spawn(move || {
            let (_, rest) = get(&mut bulk, "/bulk");
            received.fetch_add(rest.len() as u64, Ordering::Relaxed);
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match bulk.read(&mut buf) {
                    Ok(0) => panic!("bulk download ended"),
                    Ok(n) => received.fetch_add(n as u64, Ordering::Relaxed),
                    Err(e) => panic!("bulk download: {e}"),
                };
            }
        })
    };
    // Let it fill the link before measuring.
    let deadline = Instant::now() + WAIT;
    while received.load(Ordering::Relaxed) < 1 << 20 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(500));
    let (bulk_before, started) = (received.load(Ordering::Relaxed), Instant::now());
    let sampling = Arc::new(AtomicBool::new(true));
    let windows = {
        let sampling = sampling.clone();
        thread::spawn(move || link_windows(status, &sampling))
    };
    let loaded = pod_gets(api, gets, LOADED_BUDGET);
    sampling.store(false, Ordering::Relaxed);
    let (window, inflight) = windows.join().expect("window samples");
    let bulk_rate =
        (received.load(Ordering::Relaxed) - bulk_before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    bulk.join().expect("bulk download");
    let loaded_count = loaded.len();
    assert_eq!(
        reached() - before,
        idle_count + loaded_count,
        "not every GET reached the stand-in kube-apiserver"
    );
    println!(
        "2. GET of one pod through the edge's API proxy, the link and the hub to kube-apiserver, link throttled to {:.0} MB/s each way by the fault proxy:\n   \
         link idle:                                   {}\n   \
         during a bulk tunnel download from the node: {} (target < 50 ms)\n   \
         the bulk download meanwhile: {:.2} MB/s\n   \
         the edge's link window meanwhile (its /metrics every 50 ms): mean {:.1} KiB, {:.1} KiB in flight",
        THROTTLE as f64 / 1e6,
        summary(idle),
        summary(loaded),
        bulk_rate / 1e6,
        window / 1024.0,
        inflight / 1024.0
    );
    if loaded_count < gets {
        println!("   (only {loaded_count} of {gets} loaded GETs fit in {LOADED_BUDGET:?})");
    }
    // Figure 3 on the unthrottled link of edge-2 alone.
    edge1.kill();
    drop(proxy);

    // 3. Time to the first log byte, through the hub and directly,
    // alternated so both see the same machine.
    for _ in 0..10 {
        first_log_byte(|| clients.through_hub(egress, &target));
        first_log_byte(|| clients.direct(kubelet));
    }
    let (mut tunnelled, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..tries {
        tunnelled.push(first_log_byte(|| clients.through_hub(egress, &target)));
        direct.push(first_log_byte(|| clients.direct(kubelet)));
    }
    let (tp50, tp99, _) = stats(tunnelled.clone());
    let (dp50, dp99, _) = stats(direct.clone());
    println!(
        "3. time to the first byte of a logs answer, {tries} tries each:\n   \
         through the hub (TCP + TLS + CONNECT + inner TLS + request): {}\n   \
         direct to the kubelet (TCP + TLS + request):                  {}\n   \
         added by the hub: p50 {} p99 {} (target <= 2 ms)",
        summary(tunnelled),
        summary(direct),
        ms(tp50.saturating_sub(dp50)),
        ms(tp99.saturating_sub(dp99))
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |s| s.trim().to_string())
}

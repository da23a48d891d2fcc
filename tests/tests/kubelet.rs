//! What kubelet speaks to kube-apiserver, through the hub's egress and the
//! link (issue 4): `exec -it` over WebSocket (the `v5.channel.k8s.io`
//! subprotocol kubectl asks for since 1.30) and over SPDY/3.1, `attach`,
//! `port-forward` (SPDY, `portforward.k8s.io`), a metrics scrape on a
//! kept-alive connection, and an interactive session that stays idle for
//! longer than the link's keepalive. The hub splices bytes and never reads
//! them, so what matters is that the upgrade answers (101) and everything
//! after them pass both ways intact, with half-close, across idle time.
//!
//! The stand-in kubelet speaks TLS with its own certificate and answers
//! the upgrade requests the way kubelet does; after a 101 it echoes what
//! it gets (WebSocket: stdin frames come back as stdout frames).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ServerConnection, StreamOwned};
use tether_tests::cluster::node_field;
use tether_tests::pki::Pki;
use tether_tests::tunnel::{Clients, Kubelet, Setup};

/// RFC 6455's sample key and the accept value it requires.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// What a metrics scrape answers.
const METRICS: &str = "# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total 357.35491 1733563200000\n";

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
                let _ = serve(BufReader::new(StreamOwned::new(conn, tcp)));
            });
        }
    });
    addr
}

type Conn = BufReader<StreamOwned<ServerConnection, std::net::TcpStream>>;

/// Answers requests on one connection until it closes.
fn serve(mut c: Conn) -> std::io::Result<()> {
    loop {
        let head = read_head(&mut c)?;
        if head.is_empty() {
            return Ok(());
        }
        let line = head.lines().next().unwrap_or("").to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let upgrade = header("Upgrade").to_ascii_lowercase();
        if line.starts_with("GET /metrics/resource ") {
            write!(
                c.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{METRICS}",
                METRICS.len()
            )?;
        } else if upgrade == "websocket" && line.starts_with("GET /exec/") {
            if header("Sec-WebSocket-Key") != WS_KEY
                || !header("Sec-WebSocket-Protocol").contains("v5.channel.k8s.io")
            {
                c.get_mut()
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
                continue;
            }
            write!(
                c.get_mut(),
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
            )?;
            c.get_mut().flush()?;
            return websocket_shell(c);
        } else if upgrade == "spdy/3.1"
            && (line.starts_with("POST /exec/")
                || line.starts_with("POST /attach/")
                || line.starts_with("POST /portForward/"))
        {
            let protocol = header("X-Stream-Protocol-Version");
            write!(
                c.get_mut(),
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
            )?;
            c.get_mut().flush()?;
            // SPDY frames are opaque here: echo them, and after the
            // client's half-close say a last word.
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match c.read(&mut buf)? {
                    0 => break,
                    n => c.get_mut().write_all(&buf[..n])?,
                }
            }
            c.get_mut().write_all(b"bye")?;
            c.get_mut().conn.send_close_notify();
            return c.get_mut().flush();
        } else {
            c.get_mut()
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
        c.get_mut().flush()?;
    }
}

/// The head of one request, empty at a clean end of the connection.
fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<String> {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if r.read_line(&mut head)? == 0 {
            return Ok(String::new());
        }
    }
    Ok(head)
}

/// A shell behind `v5.channel.k8s.io`: every stdin frame (channel 0) comes
/// back on stdout (channel 1); a close frame is answered and ends it.
fn websocket_shell(mut c: Conn) -> std::io::Result<()> {
    loop {
        let (opcode, payload) = read_frame(&mut c)?;
        match opcode {
            0x8 => {
                c.get_mut().write_all(&frame(0x8, &payload, None))?;
                c.get_mut().conn.send_close_notify();
                return c.get_mut().flush();
            }
            0x2 if payload.first() == Some(&0) => {
                let mut out = vec![1u8];
                out.extend_from_slice(&payload[1..]);
                c.get_mut().write_all(&frame(0x2, &out, None))?;
                c.get_mut().flush()?;
            }
            _ => {}
        }
    }
}

/// One WebSocket frame, final, masked with `mask` if given (clients must).
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(bit | n as u8),
        n @ 126..=65535 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one frame: its opcode and unmasked payload.
fn read_frame<R: Read>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        r.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
    r.read_exact(&mut payload)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((h[0] & 0x0f, payload))
}

fn setup() -> (Setup, Clients) {
    let pki = Pki::new();
    let kubelet = start_kubelet(&pki);
    let s = Setup::start(pki, kubelet, true);
    let clients = Clients::new(&s.pki);
    (s, clients)
}

/// Sends `request` and reads the answer head.
fn ask(k: &mut BufReader<Kubelet>, request: &str) -> String {
    k.get_mut().write_all(request.as_bytes()).expect("request");
    read_head(k).expect("answer head")
}

#[test]
fn exec_over_websocket_survives_an_idle_spell_longer_than_the_keepalive() {
    let (s, clients) = setup();
    let mut k = BufReader::new(clients.kubelet(&s).expect("tunnel"));
    let head = ask(
        &mut k,
        &format!(
            "GET /exec/edge-apps/web/web?command=sh&stdin=true&stdout=true&tty=true HTTP/1.1\r\n\
             Host: edge-1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
             Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
        ),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {WS_ACCEPT}\r\n")),
        "{head}"
    );
    let mut exchange = |typed: &[u8]| {
        let mut stdin = vec![0u8];
        stdin.extend_from_slice(typed);
        k.get_mut()
            .write_all(&frame(0x2, &stdin, Some([0x37, 0xfa, 0x21, 0x3d])))
            .expect("stdin");
        let (opcode, stdout) = read_frame(&mut k).expect("stdout frame");
        assert_eq!(opcode, 0x2);
        assert_eq!(stdout[0], 1, "not on the stdout channel");
        assert_eq!(&stdout[1..], typed);
    };
    exchange(b"uname -a\n");
    // A large paste, bigger than a link frame and a TLS record.
    exchange(&[b'x'; 100_000]);
    // Idle for more than twice the link's 2 s keepalive: the link pings,
    // and the session is still there afterwards.
    std::thread::sleep(Duration::from_secs(5));
    exchange(b"exit\n");
    k.get_mut()
        .write_all(&frame(0x8, &1000u16.to_be_bytes(), Some([1, 2, 3, 4])))
        .expect("close");
    let (opcode, payload) = read_frame(&mut k).expect("close frame");
    assert_eq!((opcode, payload), (0x8, 1000u16.to_be_bytes().to_vec()));
    let reconnects = node_field(s.hub.admin, "edge-1", "reconnects");
    assert_eq!(reconnects.as_deref(), Some("0"), "{}", s.edge.logs());
}

/// An SPDY/3.1 upgrade for `path` with `protocol`; then `payload` both ways
/// in 64 KiB steps, a half-close, and the kubelet's last word.
fn spdy_session(s: &Setup, clients: &Clients, path: &str, protocol: &str, payload: &[u8]) {
    let mut k = BufReader::new(clients.kubelet(s).expect("tunnel"));
    let head = ask(
        &mut k,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: edge-1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{path}: {head}");
    assert!(
        head.contains(&format!("X-Stream-Protocol-Version: {protocol}\r\n")),
        "{head}"
    );
    for chunk in payload.chunks(64 * 1024) {
        k.get_mut().write_all(chunk).expect("write");
        let mut echo = vec![0u8; chunk.len()];
        k.read_exact(&mut echo).expect("echo");
        assert!(echo == chunk, "{path}: the echo differs");
    }
    k.get_mut().conn.send_close_notify();
    k.get_mut().flush().expect("half-close");
    let mut rest = Vec::new();
    let _ = k.read_to_end(&mut rest);
    assert_eq!(rest, b"bye", "{path}: after the half-close");
}

#[test]
fn exec_attach_and_port_forward_over_spdy() {
    let (s, clients) = setup();
    spdy_session(
        &s,
        &clients,
        "/exec/edge-apps/web/web?command=sh&input=1&output=1&tty=1",
        "v4.channel.k8s.io",
        b"ls /\n",
    );
    spdy_session(
        &s,
        &clients,
        "/attach/edge-apps/web/web?input=1&output=1&tty=1",
        "v4.channel.k8s.io",
        b"\x03",
    );
    // 8 MB each way: a port-forward carrying a download and an upload.
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    spdy_session(
        &s,
        &clients,
        "/portForward/edge-apps/web",
        "portforward.k8s.io",
        &data,
    );
}

#[test]
fn metrics_scrapes_on_one_kept_alive_connection() {
    let (s, clients) = setup();
    let mut k = BufReader::new(clients.kubelet(&s).expect("tunnel"));
    for _ in 0..3 {
        let head = ask(
            &mut k,
            "GET /metrics/resource HTTP/1.1\r\nHost: edge-1\r\nAccept: text/plain\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", METRICS.len())),
            "{head}"
        );
        let mut body = vec![0u8; METRICS.len()];
        k.read_exact(&mut body).expect("body");
        assert_eq!(body, METRICS.as_bytes());
    }
    let head = ask(&mut k, "GET /nothing HTTP/1.1\r\nHost: edge-1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
}

//! Stand-in TCP services that tests put behind an edge or a hub, and a client for them.
//!
//! [`EchoServer`] echoes every byte and passes a half-close on (it shuts down its write side
//! once the client has, after echoing everything), so tests can check both byte integrity
//! and half-close propagation through the tunnel. [`SinkServer`] swallows bulk data and
//! answers only the byte count, for throughput tests. [`roundtrip`] is the matching client.
//! Both servers listen on `127.0.0.1:0` with plain threads and stop when dropped.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::procs::check_loopback;

/// How long the listener sleeps when no connection is waiting to be accepted.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// Size of one read.
const CHUNK: usize = 64 * 1024;

/// A TCP echo server on loopback that propagates half-close; stops when dropped.
///
/// Every accepted connection gets its bytes back in order. When the client shuts down its
/// write side, the server finishes echoing and then shuts down its own write side, so the
/// client reads everything followed by EOF.
pub struct EchoServer {
    server: Server,
}

impl EchoServer {
    /// Starts listening on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// Panics if the listener cannot be bound.
    pub fn start() -> EchoServer {
        EchoServer {
            server: Server::start("echo", Arc::new(AtomicU64::new(0)), echo),
        }
    }

    /// The address to connect to (or to configure as a tunnel target).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.shared.accepted.load(Ordering::SeqCst)
    }
}

/// A TCP server on loopback that counts bytes and answers the count at half-close.
///
/// Each connection is read to EOF without answering anything; then the server writes the
/// number of bytes that connection sent as 8 bytes big-endian and closes. For bulk-transfer
/// tests where echoing would double the traffic.
pub struct SinkServer {
    server: Server,
    received: Arc<AtomicU64>,
}

impl SinkServer {
    /// Starts listening on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// Panics if the listener cannot be bound.
    pub fn start() -> SinkServer {
        let received = Arc::new(AtomicU64::new(0));
        SinkServer {
            server: Server::start("sink", Arc::clone(&received), sink),
            received,
        }
    }

    /// The address to connect to (or to configure as a tunnel target).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Total bytes received so far over all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.shared.accepted.load(Ordering::SeqCst)
    }
}

/// Connects to `addr`, sends `payload`, half-closes, and returns everything read until EOF.
///
/// The payload is written by a separate thread, so a payload larger than the socket buffers
/// cannot deadlock against a peer that answers while still reading. The whole exchange must
/// finish within `timeout`, else [`ErrorKind::TimedOut`]. `addr` must be in `127.0.0.0/8`,
/// else [`ErrorKind::InvalidInput`].
pub fn roundtrip(addr: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    check_loopback(addr)?;
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    let mut writer_stream = stream.try_clone()?;
    writer_stream.set_write_timeout(Some(timeout))?;
    let to_send = payload.to_vec();
    let writer = thread::Builder::new()
        .name("echo-roundtrip-writer".into())
        .spawn(move || -> io::Result<()> {
            writer_stream.write_all(&to_send)?;
            writer_stream.shutdown(Shutdown::Write)
        })?;

    let mut got = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let read_result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(timed_out(got.len()));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => break Err(timed_out(got.len())),
            Err(e) => break Err(e),
        }
    };
    if read_result.is_err() {
        // Unblocks a writer stuck on a peer that stopped reading.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let write_result = writer
        .join()
        .map_err(|_| io::Error::other("roundtrip: writer thread panicked"))?;
    read_result?;
    write_result?;
    Ok(got)
}

fn timed_out(received: usize) -> io::Error {
    io::Error::new(
        ErrorKind::TimedOut,
        format!("roundtrip: no EOF in time ({received} bytes received)"),
    )
}

fn is_timeout(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut
}

/// Serves one echo connection: echo until EOF, then pass the half-close on.
fn echo(mut stream: TcpStream, _received: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return stream.shutdown(Shutdown::Write),
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Serves one sink connection: count until EOF, then answer the count and close.
fn sink(mut stream: TcpStream, received: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut count: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                count += n as u64;
                received.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.write_all(&count.to_be_bytes())?;
    stream.shutdown(Shutdown::Both)
}

/// What one connection thread runs: the stream and the server's byte counter.
type Handler = fn(TcpStream, &AtomicU64) -> io::Result<()>;

/// A listener thread handing each connection to a thread running a [`Handler`].
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

/// State shared by a server handle, its listener and its connection threads.
struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Clones of the open connections by number, so dropping the server can close them.
    conns: Mutex<HashMap<u64, TcpStream>>,
    /// Number for the next connection's entry in `conns`.
    next_id: AtomicU64,
}

impl Server {
    fn start(name: &'static str, counter: Arc<AtomicU64>, handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name}: bind 127.0.0.1:0: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: set_nonblocking: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: local_addr: {e}"));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(format!("{name}-listen"))
            .spawn(move || listen(name, &listener, &thread_shared, &counter, handler))
            .unwrap_or_else(|e| panic!("{name}: spawn listener: {e}"));
        Server {
            addr,
            shared,
            listener: Some(handle),
        }
    }
}

impl Drop for Server {
    /// Stops accepting and shuts down every open connection.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.listener.take() {
            if handle.join().is_err() {
                eprintln!("echo: listener thread panicked");
            }
        }
        for (_, conn) in lock(&self.shared.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn listen(
    name: &'static str,
    listener: &TcpListener,
    shared: &Arc<Shared>,
    counter: &Arc<AtomicU64>,
    handler: Handler,
) {
    while !shared.stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                eprintln!("{name}: accept: {e}");
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Accepted sockets may inherit non-blocking mode on some platforms.
        if let Err(e) = stream.set_nonblocking(false) {
            eprintln!("{name}: set_blocking: {e}");
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        match stream.try_clone() {
            Ok(clone) => {
                lock(&shared.conns).insert(id, clone);
            }
            Err(e) => {
                eprintln!("{name}: try_clone: {e}");
                continue;
            }
        }
        let counter = Arc::clone(counter);
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                if let Err(e) = handler(stream, &counter) {
                    if !matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::BrokenPipe
                            | ErrorKind::NotConnected
                    ) {
                        eprintln!("{name}: connection: {e}");
                    }
                }
                // Dropping the last clone closes the socket.
                lock(&conn_shared.conns).remove(&id);
            });
        if let Err(e) = spawned {
            eprintln!("{name}: spawn connection thread: {e}");
            lock(&shared.conns).remove(&id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn echo_roundtrip_one_megabyte() {
        let server = EchoServer::start();
        let payload = pattern(1024 * 1024);
        let got = roundtrip(server.addr(), &payload, T).expect("roundtrip");
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "echoed bytes differ");
        assert_eq!(roundtrip(server.addr(), b"", T).expect("empty"), b"");
        assert_eq!(server.connections(), 2);
    }

    #[test]
    fn echo_half_close_keeps_reading_side_open() {
        let server = EchoServer::start();
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        s.set_read_timeout(Some(T)).expect("timeout");
        s.write_all(b"ping").expect("write");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to EOF");
        assert_eq!(got, b"ping");
    }

    #[test]
    fn sink_counts_and_answers_at_half_close() {
        let server = SinkServer::start();
        let payload = pattern(3 * 1024 * 1024 + 17);
        let got = roundtrip(server.addr(), &payload, T).expect("roundtrip");
        assert_eq!(got, (payload.len() as u64).to_be_bytes());
        let got = roundtrip(server.addr(), b"abc", T).expect("roundtrip");
        assert_eq!(got, 3u64.to_be_bytes());
        assert_eq!(server.received(), payload.len() as u64 + 3);
        assert_eq!(server.connections(), 2);
    }

    #[test]
    fn roundtrip_times_out_and_refuses_non_loopback() {
        // A listener that accepts (in the backlog) but never answers nor closes.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let started = Instant::now();
        let err = roundtrip(
            silent.local_addr().expect("addr"),
            b"x",
            Duration::from_millis(200),
        )
        .expect_err("no answer");
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let outside: SocketAddr = "192.0.2.1:7".parse().expect("addr");
        let err = roundtrip(outside, b"x", T).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn drop_closes_open_connections() {
        let server = EchoServer::start();
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        s.set_read_timeout(Some(T)).expect("timeout");
        s.write_all(b"a").expect("write");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).expect("echo");
        drop(server);
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0);
    }
}

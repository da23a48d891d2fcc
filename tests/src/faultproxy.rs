//! The fault-injecting TCP proxy that system tests put between an edge and a hub.
//!
//! A [`FaultProxy`] listens on `127.0.0.1`, forwards every accepted connection to an
//! upstream address on loopback (the hub), and can be told at any moment to misbehave
//! the way real links do: drop every connection ([`FaultProxy::cut`]), refuse new ones
//! ([`FaultProxy::refuse`]), swallow bytes silently ([`FaultProxy::black_hole`]), add
//! latency ([`FaultProxy::delay`]) or cap throughput ([`FaultProxy::throttle`]). Fault
//! modes apply to existing and new connections alike. It also counts the payload bytes
//! it forwards, so tests can measure how chatty an idle link is.
//!
//! It uses plain threads and blocking sockets with short timeouts: one listener thread,
//! and per connection one thread per direction. Byte order is never changed. It only
//! ever talks to loopback addresses (`127.0.0.0/8`).

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a blocked read or write waits before its thread looks at the fault modes again.
const POLL: Duration = Duration::from_millis(50);

/// How long the listener sleeps when no connection is waiting to be accepted.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// How long a new connection may take to reach the upstream before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long stopping the proxy waits for connection threads before leaving them behind.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Size of one read; also the largest chunk that gets a delay deadline of its own.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes a direction may hold (delayed or throttled) before it stops reading, so a slow
/// or stalled side pushes back on the sender instead of growing memory without bound.
const QUEUE_LIMIT: usize = 1024 * 1024;

/// A fault-injecting TCP proxy on loopback; dropping it closes every connection it holds.
///
/// Tests point the edge at [`FaultProxy::addr`] instead of the hub, then switch fault
/// modes while the link is in use. Dropping the proxy stops the listener and closes all
/// proxied connections promptly, even when the peers keep their sockets open.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `upstream`.
    ///
    /// `upstream` must be an IPv4 loopback address (`127.0.0.0/8`): the proxy is for
    /// tests on one machine and never talks to anything else; other addresses are
    /// rejected with [`ErrorKind::InvalidInput`].
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        if !is_loopback(upstream) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("faultproxy: upstream {upstream} is not in 127.0.0.0/8"),
            ));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(upstream));
        let thread_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("faultproxy-listen".into())
            .spawn(move || listen(&thread_shared, &listener))?;
        Ok(FaultProxy {
            addr,
            shared,
            listener: Some(handle),
        })
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `upstream` from now on; existing connections keep theirs.
    ///
    /// For "the hub restarted on another port" scenarios.
    ///
    /// # Panics
    ///
    /// Panics if `upstream` is not in `127.0.0.0/8`, like [`FaultProxy::start`] refuses it.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        assert!(
            is_loopback(upstream),
            "faultproxy: upstream {upstream} is not in 127.0.0.0/8"
        );
        *lock(&self.shared.upstream) = upstream;
    }

    /// Back to normal forwarding: clears refuse, black hole, delay and throttle.
    ///
    /// It does not reopen connections closed by [`FaultProxy::cut`] nor bring back bytes
    /// dropped by a black hole, and it leaves the upstream address alone.
    pub fn pass(&self) {
        self.refuse(false);
        self.black_hole(false);
        self.delay(Duration::ZERO);
        self.throttle(None);
    }

    /// Closes every current connection at once, both sides, like a link that went down.
    ///
    /// Both sockets of every connection are shut down in both directions, so the peers see
    /// EOF (or a reset) promptly, even if a forwarding thread is blocked writing. New
    /// connections are still accepted and forwarded afterwards.
    pub fn cut(&self) {
        self.shared.close_all();
    }

    /// While on, new connections are accepted and closed at once, like a hub that is down.
    ///
    /// Existing connections are left untouched.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// While on, bytes in both directions are read and silently dropped, like a dead route.
    ///
    /// Nothing is forwarded, not even a FIN or a reset (a peer closing its side is passed
    /// on only once the black hole ends), and bytes held back by [`FaultProxy::delay`] or
    /// [`FaultProxy::throttle`] are dropped too. New connections are accepted and
    /// black-holed as well. Turning it off resumes forwarding of new bytes only: dropped
    /// bytes are gone for good, so the protocol above (TLS, framing) sees a corrupt stream.
    /// Tests therefore usually [`FaultProxy::cut`] after a black hole.
    pub fn black_hole(&self, on: bool) {
        self.shared.black_hole.store(on, Ordering::SeqCst);
    }

    /// Adds latency: each chunk is forwarded no earlier than `d` after it was read.
    ///
    /// The delay is taken when a chunk is read, so changing it affects bytes read from then
    /// on. Chunks queue per direction and are never reordered; reading goes on while chunks
    /// wait, so the delay does not cap throughput. `Duration::ZERO` turns it off.
    pub fn delay(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Caps throughput per direction per connection to `bytes_per_sec`; `None` = unlimited.
    ///
    /// A token bucket allows bursts of about a tenth of a second's worth of bytes.
    /// `Some(0)` is treated as one byte per second.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        let rate = bytes_per_sec.map_or(0, |r| r.max(1));
        self.shared.rate.store(rate, Ordering::SeqCst);
    }

    /// Number of proxied connections currently open (connected to the upstream).
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Number of connections accepted so far, including refused ones.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Payload bytes forwarded from clients to the upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Payload bytes forwarded from the upstream to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    /// Stops the listener and closes every connection; returns within a few seconds at most.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(handle) = self.listener.take() {
            if handle.join().is_err() {
                eprintln!("faultproxy: listener thread panicked");
            }
        }
    }
}

/// State shared by the proxy handle, the listener and the connection threads.
struct Shared {
    upstream: Mutex<SocketAddr>,
    stop: AtomicBool,
    refuse: AtomicBool,
    black_hole: AtomicBool,
    delay_nanos: AtomicU64,
    /// Bytes per second per direction; 0 means unlimited.
    rate: AtomicU64,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Shared {
    fn new(upstream: SocketAddr) -> Shared {
        Shared {
            upstream: Mutex::new(upstream),
            stop: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            black_hole: AtomicBool::new(false),
            delay_nanos: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn close_all(&self) {
        for conn in lock(&self.conns).values() {
            conn.close();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn black_holed(&self) -> bool {
        self.black_hole.load(Ordering::SeqCst)
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }
}

/// One proxied connection: the client socket, the upstream socket and whether it is closed.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
}

impl Conn {
    /// Shuts both sockets down both ways; wakes forwarding threads blocked in read or write.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Errors here only mean the socket is already down.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Accepts connections until the proxy stops, then closes and waits for them.
fn listen(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                if shared.refuse.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                handles.retain(|h| !h.is_finished());
                let upstream = *lock(&shared.upstream);
                let conn_shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("faultproxy-conn".into())
                    .spawn(move || serve(&conn_shared, client, upstream));
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(e) => eprintln!("faultproxy: cannot spawn connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) => {
                eprintln!("faultproxy: accept: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    shared.close_all();
    let deadline = Instant::now() + STOP_GRACE;
    for handle in handles {
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() && handle.join().is_err() {
            eprintln!("faultproxy: connection thread panicked");
        }
    }
}

/// Connects one accepted client to the upstream and forwards both ways until it ends.
fn serve(shared: &Shared, client: TcpStream, upstream_addr: SocketAddr) {
    let upstream = match TcpStream::connect_timeout(&upstream_addr, CONNECT_TIMEOUT) {
        Ok(stream) => stream,
        Err(_) => {
            // The upstream is down: the client sees its connection closed, like a refusal.
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    if let Err(e) = prepare(&client).and_then(|()| prepare(&upstream)) {
        eprintln!("faultproxy: socket setup: {e}");
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }
    let conn = Arc::new(Conn {
        client,
        upstream,
        closed: AtomicBool::new(false),
    });
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut conns = lock(&shared.conns);
        if shared.stopping() {
            conn.close();
            return;
        }
        conns.insert(id, Arc::clone(&conn));
    }
    thread::scope(|scope| {
        let up = thread::Builder::new()
            .name("faultproxy-up".into())
            .spawn_scoped(scope, || {
                forward(
                    shared,
                    &conn,
                    &conn.client,
                    &conn.upstream,
                    &shared.bytes_up,
                )
            });
        if let Err(e) = up {
            eprintln!("faultproxy: cannot spawn forwarding thread: {e}");
            conn.close();
            return;
        }
        forward(
            shared,
            &conn,
            &conn.upstream,
            &conn.client,
            &shared.bytes_down,
        );
    });
    lock(&shared.conns).remove(&id);
}

/// Makes a socket blocking with short timeouts and no Nagle delay.
fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))
}

/// Bytes read from one side, waiting to be written to the other.
struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
    sent: usize,
}

/// Forwards one direction of a connection, from `src` to `dst`, applying the fault modes.
///
/// Reads go into a FIFO queue stamped with the time they may leave (the delay); the
/// queue head is written when due and when the token bucket allows. A clean EOF from
/// `src` is passed on as a half-close of `dst` once the queue is empty; an error closes
/// the whole connection.
fn forward(
    shared: &Shared,
    conn: &Conn,
    mut src: &TcpStream,
    mut dst: &TcpStream,
    counter: &AtomicU64,
) {
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    let mut queued = 0usize;
    let mut bucket = Bucket::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut read_timeout = POLL;
    // Source closed cleanly (EOF) or failed; either is passed on only outside a black hole.
    let mut src_eof = false;
    let mut src_failed = false;
    loop {
        if shared.stopping() || conn.is_closed() {
            return;
        }
        let black_hole = shared.black_holed();
        if black_hole {
            queue.clear();
            queued = 0;
        }
        if src_failed && !black_hole {
            conn.close();
            return;
        }

        let mut wait = POLL;
        while let Some(chunk) = queue.front_mut() {
            if shared.stopping() || conn.is_closed() {
                return;
            }
            let now = Instant::now();
            if chunk.due > now {
                wait = wait.min(chunk.due - now);
                break;
            }
            let remaining = chunk.bytes.len() - chunk.sent;
            let allowed = match bucket.allowance(shared.rate.load(Ordering::SeqCst), remaining, now)
            {
                Ok(n) => n,
                Err(until) => {
                    wait = wait.min(until);
                    break;
                }
            };
            match dst.write(&chunk.bytes[chunk.sent..chunk.sent + allowed]) {
                Ok(0) => {
                    conn.close();
                    return;
                }
                Ok(n) => {
                    bucket.spend(n);
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                    chunk.sent += n;
                    queued -= n;
                    if chunk.sent == chunk.bytes.len() {
                        queue.pop_front();
                    }
                }
                Err(e) if is_timeout(&e) => {
                    // The other side is not reading; try again right away after a look
                    // at the fault modes and the source.
                    wait = Duration::ZERO;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    report("write", &e);
                    conn.close();
                    return;
                }
            }
        }

        if src_eof || src_failed || queued >= QUEUE_LIMIT {
            if src_eof && queue.is_empty() && !black_hole {
                // Pass the half-close on; the other direction may still have bytes to carry.
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            if !wait.is_zero() {
                thread::sleep(wait);
            }
            continue;
        }

        let timeout = wait.max(Duration::from_millis(1));
        if timeout != read_timeout {
            if let Err(e) = src.set_read_timeout(Some(timeout)) {
                report("set read timeout", &e);
                conn.close();
                return;
            }
            read_timeout = timeout;
        }
        match src.read(&mut buf) {
            Ok(0) => src_eof = true,
            Ok(n) => {
                if !shared.black_holed() {
                    queue.push_back(Chunk {
                        due: Instant::now() + shared.delay(),
                        bytes: buf[..n].to_vec(),
                        sent: 0,
                    });
                    queued += n;
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if !shared.black_holed() {
                    report("read", &e);
                    conn.close();
                    return;
                }
                src_failed = true;
            }
        }
    }
}

/// Token bucket for one direction of one connection.
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Rate the tokens were last computed for; 0 means unlimited.
    rate: u64,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: 0.0,
            last: Instant::now(),
            rate: 0,
        }
    }

    /// How many of `remaining` bytes may be written now at `rate` (0 = unlimited), or how
    /// long to wait until a worthwhile amount may.
    fn allowance(&mut self, rate: u64, remaining: usize, now: Instant) -> Result<usize, Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if rate == 0 {
            self.rate = 0;
            return Ok(remaining);
        }
        let per_sec = rate as f64;
        let burst = (per_sec / 10.0).max(1.0);
        if self.rate != rate {
            // A new limit starts with a full burst, never more than the new burst.
            self.tokens = if self.rate == 0 {
                burst
            } else {
                self.tokens.min(burst)
            };
            self.rate = rate;
        } else {
            self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        }
        // Wait for about a hundredth of a second's worth, so slow links send a few
        // medium chunks rather than a stream of single bytes.
        let need = (remaining as f64).min((per_sec / 100.0).max(1.0));
        if self.tokens >= need {
            Ok((self.tokens.floor() as usize).clamp(1, remaining))
        } else {
            Err(Duration::from_secs_f64((need - self.tokens) / per_sec))
        }
    }

    fn spend(&mut self, n: usize) {
        if self.rate != 0 {
            self.tokens -= n as f64;
        }
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
}

fn is_timeout(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut
}

/// Logs an IO error unless it is the ordinary way a connection ends.
fn report(what: &str, e: &io::Error) {
    match e.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::NotConnected
        | ErrorKind::UnexpectedEof => {}
        _ => eprintln!("faultproxy: {what}: {e}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a server that echoes every byte back on each connection.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
        let addr = listener.local_addr().expect("echo server addr");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Starts a server that sends `tag` on each connection and then waits for EOF.
    fn tag_server(tag: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tag server");
        let addr = listener.local_addr().expect("tag server addr");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                thread::spawn(move || {
                    if stream.write_all(&[tag]).is_ok() {
                        let mut buf = [0u8; 64];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
        stream.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).expect("read echo");
        assert_eq!(back, msg);
    }

    /// Asserts the peer closes `stream` (EOF or an error) within `within`.
    fn assert_closed(stream: &mut TcpStream, within: Duration) {
        let start = Instant::now();
        stream.set_read_timeout(Some(within)).expect("read timeout");
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => panic!("connection still open after {within:?}"),
                Err(_) => break,
            }
            assert!(start.elapsed() < within, "connection still sending data");
        }
        assert!(start.elapsed() < within);
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn rejects_non_loopback_upstream() {
        let err = FaultProxy::start("10.0.0.1:80".parse().unwrap())
            .err()
            .expect("must refuse");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn passes_one_megabyte_intact_and_in_order() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut stream = connect(&proxy);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = stream.try_clone().expect("clone");
        let sent = data.clone();
        let write = thread::spawn(move || writer.write_all(&sent).expect("write"));
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).expect("read");
        write.join().expect("writer");
        assert!(back == data, "echoed bytes differ");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.connections(), 1);
        drop(stream);
        wait_for("connection to end", || proxy.connections() == 0);
    }

    #[test]
    fn cut_closes_active_connection_and_new_ones_work() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"before");
        proxy.cut();
        assert_closed(&mut stream, Duration::from_secs(1));
        wait_for("connection to end", || proxy.connections() == 0);
        let mut again = connect(&proxy);
        round_trip(&mut again, b"after");
        assert_eq!(proxy.accepted(), 2);
    }

    #[test]
    fn cut_works_while_both_sides_are_stuck() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let stream = connect(&proxy);
        let mut writer = stream.try_clone().expect("clone");
        // Never read the echo: the echo server and the proxy end up blocked in write.
        let write = thread::spawn(move || {
            let chunk = [1u8; 64 * 1024];
            loop {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        wait_for("traffic", || proxy.bytes_down() > 0);
        thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        proxy.cut();
        while !write.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "writer still running"
            );
            thread::sleep(Duration::from_millis(5));
        }
        write.join().expect("writer");
        wait_for("connection to end", || proxy.connections() == 0);
    }

    #[test]
    fn refuse_closes_new_connections_only() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut old = connect(&proxy);
        round_trip(&mut old, b"old");
        proxy.refuse(true);
        let mut refused = connect(&proxy);
        assert_closed(&mut refused, Duration::from_secs(1));
        round_trip(&mut old, b"still fine");
        proxy.refuse(false);
        let mut fresh = connect(&proxy);
        round_trip(&mut fresh, b"fresh");
        assert_eq!(proxy.accepted(), 3);
    }

    #[test]
    fn black_hole_swallows_bytes_then_cut_closes() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"ping");
        proxy.black_hole(true);
        stream.write_all(b"into the void").expect("write");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) if is_timeout(&e) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        assert_eq!(proxy.connections(), 1);
        wait_for("ping counted", || proxy.bytes_up() == 4);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(proxy.bytes_up(), 4, "black-holed bytes were forwarded");
        proxy.cut();
        assert_closed(&mut stream, Duration::from_secs(1));
        proxy.black_hole(false);
        let mut fresh = connect(&proxy);
        round_trip(&mut fresh, b"back");
    }

    #[test]
    fn delay_adds_latency() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"warm up");
        let d = Duration::from_millis(150);
        proxy.delay(d);
        let start = Instant::now();
        round_trip(&mut stream, b"slow");
        assert!(
            start.elapsed() >= d,
            "round trip took {:?}",
            start.elapsed()
        );
        proxy.pass();
        round_trip(&mut stream, b"fast again");
    }

    #[test]
    fn throttle_caps_throughput() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        proxy.throttle(Some(8000));
        let mut stream = connect(&proxy);
        let data: Vec<u8> = (0..16_000u32).map(|i| (i % 253) as u8).collect();
        let start = Instant::now();
        round_trip(&mut stream, &data);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1500),
            "16000 bytes at 8000 B/s took only {elapsed:?}"
        );
    }

    #[test]
    fn counts_bytes_both_ways() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut stream = connect(&proxy);
        round_trip(&mut stream, &[7u8; 1000]);
        wait_for("counters", || {
            proxy.bytes_up() == 1000 && proxy.bytes_down() == 1000
        });
    }

    #[test]
    fn set_upstream_moves_new_connections() {
        let proxy = FaultProxy::start(tag_server(b'A')).expect("start");
        let mut first = connect(&proxy);
        let mut tag = [0u8; 1];
        first.read_exact(&mut tag).expect("first tag");
        assert_eq!(tag[0], b'A');
        proxy.set_upstream(tag_server(b'B'));
        let mut second = connect(&proxy);
        second.read_exact(&mut tag).expect("second tag");
        assert_eq!(tag[0], b'B');
    }

    #[test]
    fn drop_closes_connections_promptly() {
        let proxy = FaultProxy::start(echo_server()).expect("start");
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"hold");
        proxy.delay(Duration::from_secs(30));
        stream.write_all(b"stuck in the queue").expect("write");
        let start = Instant::now();
        drop(proxy);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "drop took {:?}",
            start.elapsed()
        );
        assert_closed(&mut stream, Duration::from_secs(1));
    }
}

//! The thin IO layer both programs drive a session with.
//!
//! A [`Link`] wraps one [`Session`] for a single-threaded executor. Streams
//! come out of it as [`LinkStream`]s (`AsyncRead + AsyncWrite`, like a TCP
//! socket, so `futures_lite::io::copy` splices them), and [`Link::drive`]
//! runs the session over one connection: socket → decode → handle → encode
//! → socket, waking the stream tasks that can make progress.

use crate::frame::{ResetCode, StreamId};
use crate::mux::{OwnedTarget, StreamError, StreamEvent};
use crate::session::{Event, Session};
use crate::LinkError;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Socket read buffer: an idle link keeps the small size (thousands of
/// links on a hub), a busy one grows it up to the large size.
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;

/// One session, shared by its driver and its streams (single thread).
#[derive(Clone)]
pub struct Link {
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    session: Session,
    /// Tasks waiting to read (or for Accept) on a stream.
    readers: HashMap<StreamId, Waker>,
    /// Tasks waiting for credit on a stream.
    writers: HashMap<StreamId, Waker>,
    accepted: HashMap<StreamId, bool>,
    incoming: VecDeque<(StreamId, OwnedTarget)>,
    incoming_waker: Option<Waker>,
    /// The driver has something to send.
    dirty: bool,
    driver_waker: Option<Waker>,
    events: VecDeque<Event>,
    event_waker: Option<Waker>,
    /// Bumped by every [`Link::drive`]; an older driver that sees a newer
    /// generation has been superseded and leaves the session alone.
    generation: u64,
    superseded_waker: Option<Waker>,
    /// Set by [`Link::cut`]: why the current driver must stop.
    cut: Option<String>,
    stats: Stats,
}

/// Counters of one link, over the session's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes received on the connection (MQTT level, after TLS).
    pub bytes_in: u64,
    /// Bytes written to the connection (MQTT level, before TLS).
    pub bytes_out: u64,
    /// Streams opened by either side.
    pub streams_opened: u64,
    /// When bytes last came in.
    pub last_input: Option<std::time::SystemTime>,
}

/// Why [`Link::drive`] returned.
#[derive(Debug)]
pub enum DriveError {
    /// The connection failed or closed.
    Io(io::Error),
    /// A newer connection of the same node took the session over.
    Superseded,
    /// The peer broke the protocol, or keepalive found the path dead.
    Link(LinkError),
    /// This side dropped the connection on purpose ([`Link::cut`]).
    Cut(String),
}

impl fmt::Display for DriveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriveError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("connection closed by peer")
            }
            DriveError::Io(e) => write!(f, "connection error: {e}"),
            DriveError::Link(e) => e.fmt(f),
            DriveError::Superseded => {
                f.write_str("replaced by a newer connection of the same node")
            }
            DriveError::Cut(why) => write!(f, "dropped by this side: {why}"),
        }
    }
}

impl std::error::Error for DriveError {}

impl Link {
    /// Wraps a session.
    pub fn new(session: Session) -> Link {
        Link {
            inner: Rc::new(RefCell::new(Inner {
                session,
                readers: HashMap::new(),
                writers: HashMap::new(),
                accepted: HashMap::new(),
                incoming: VecDeque::new(),
                incoming_waker: None,
                dirty: false,
                driver_waker: None,
                events: VecDeque::new(),
                event_waker: None,
                generation: 0,
                superseded_waker: None,
                cut: None,
                stats: Stats::default(),
            })),
        }
    }

    /// Runs `f` on the session (to attach a connection, read its state).
    pub fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        let r = f(&mut inner.session);
        inner.dispatch();
        inner.wake_driver();
        r
    }

    /// Drops the current connection, if any, at once: its driver returns
    /// [`DriveError::Cut`] with `why`. The session stays (the hub drops a
    /// revoked node's link this way and refuses its reconnects).
    pub fn cut(&self, why: &str) {
        let mut inner = self.inner.borrow_mut();
        inner.cut = Some(why.to_owned());
        inner.generation += 1;
        if let Some(w) = inner.superseded_waker.take() {
            w.wake();
        }
    }

    /// The link's counters.
    pub fn stats(&self) -> Stats {
        self.inner.borrow().stats
    }

    /// The pacer's in-flight byte window and the bytes in flight now (see
    /// [`crate::pace`]): what an operator compares when a slow link feels
    /// slow.
    pub fn window(&self) -> (usize, usize) {
        let inner = self.inner.borrow();
        (inner.session.window(), inner.session.inflight_bytes())
    }

    /// Streams currently held on this link.
    pub fn open_streams(&self) -> usize {
        self.inner.borrow_mut().session.mux().len()
    }

    /// Opens a stream towards `target`. Writing may start at once; the far
    /// side's refusal shows up as a reset on the first read or write.
    pub fn open(&self, target: OwnedTarget) -> Result<LinkStream, StreamError> {
        let mut inner = self.inner.borrow_mut();
        let id = inner.session.mux().open(target)?;
        let epoch = inner.session.mux().epoch();
        inner.stats.streams_opened += 1;
        inner.wake_driver();
        Ok(LinkStream {
            link: self.clone(),
            id,
            epoch,
        })
    }

    /// Waits for the next stream the peer opens.
    pub async fn accept(&self) -> (LinkStream, OwnedTarget) {
        futures_lite::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.incoming.pop_front() {
                Some((id, target)) => Poll::Ready((
                    LinkStream {
                        link: self.clone(),
                        id,
                        epoch: inner.session.mux().epoch(),
                    },
                    target,
                )),
                None => {
                    inner.incoming_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Waits for the next session event (link up, session lost, ...).
    pub async fn next_event(&self) -> Event {
        futures_lite::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.events.pop_front() {
                Some(ev) => Poll::Ready(ev),
                None => {
                    inner.event_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Runs the session over `conn` until it fails. `attach` tells the
    /// session about the new connection (`edge_connect` or `hub_accept`);
    /// `pending` holds bytes already read past the CONNECT. A driver still
    /// running for an older connection of the same session is stopped.
    pub async fn drive<C>(
        &self,
        conn: C,
        pending: &[u8],
        attach: impl FnOnce(&mut Session),
    ) -> DriveError
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let generation = {
            let mut inner = self.inner.borrow_mut();
            inner.generation += 1;
            // A cut meant for the connection before this one.
            inner.cut = None;
            if let Some(w) = inner.superseded_waker.take() {
                w.wake();
            }
            attach(&mut inner.session);
            inner.dispatch();
            inner.generation
        };
        let (mut rd, mut wr) = futures_lite::io::split(conn);
        if !pending.is_empty() {
            if let Err(e) = self.input(pending) {
                self.with_session(|s| s.disconnected());
                return e;
            }
        }
        let superseded = futures_lite::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.generation != generation {
                match inner.cut.take() {
                    Some(why) => {
                        inner.session.disconnected();
                        inner.dispatch();
                        Poll::Ready(DriveError::Cut(why))
                    }
                    None => Poll::Ready(DriveError::Superseded),
                }
            } else {
                inner.superseded_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let reader = async {
            let mut buf = vec![0u8; READ_MIN];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) => return DriveError::Io(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => n,
                    Err(e) => return DriveError::Io(e),
                };
                if let Err(e) = self.input(&buf[..n]) {
                    return e;
                }
                if n == buf.len() && buf.len() < READ_MAX {
                    buf = vec![0u8; buf.len() * 2];
                } else if n < buf.len() / 8 && buf.len() > READ_MIN {
                    buf = vec![0u8; buf.len() / 2];
                }
            }
        };
        let writer = async {
            loop {
                let (out, deadline) = {
                    let mut inner = self.inner.borrow_mut();
                    let now = Instant::now();
                    if let Err(e) = inner.session.handle_timeout(now) {
                        return DriveError::Link(e);
                    }
                    inner.dirty = false;
                    let out = inner.session.transmit(now);
                    inner.stats.bytes_out += out.len() as u64;
                    inner.dispatch();
                    (out, inner.session.poll_timeout())
                };
                if !out.is_empty() {
                    let written = async {
                        wr.write_all(&out).await.map_err(DriveError::Io)?;
                        wr.flush().await.map_err(DriveError::Io)
                    };
                    // A write stuck on a full socket (a black hole under
                    // load) must not hold off dead-link detection.
                    let watchdog = async {
                        loop {
                            let at = self.inner.borrow().session.poll_timeout();
                            match at {
                                Some(at) => {
                                    async_io::Timer::at(at).await;
                                }
                                None => futures_lite::future::pending::<()>().await,
                            }
                            let mut inner = self.inner.borrow_mut();
                            if let Err(e) = inner.session.handle_timeout(Instant::now()) {
                                return Err(DriveError::Link(e));
                            }
                        }
                    };
                    if let Err(e) = written.or(watchdog).await {
                        return e;
                    }
                    continue;
                }
                let wake = futures_lite::future::poll_fn(|cx| {
                    let mut inner = self.inner.borrow_mut();
                    if inner.dirty || inner.session.wants_to_transmit() {
                        Poll::Ready(())
                    } else {
                        inner.driver_waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                });
                match deadline {
                    Some(at) => {
                        wake.or(async {
                            async_io::Timer::at(at).await;
                        })
                        .await
                    }
                    None => wake.await,
                }
            }
        };
        // `superseded` first: once a newer driver exists, this one must not
        // touch the session again, not even for one more read.
        let err = superseded.or(reader.or(writer)).await;
        if !matches!(err, DriveError::Superseded) {
            self.with_session(|s| s.disconnected());
        }
        err
    }

    fn input(&self, bytes: &[u8]) -> Result<(), DriveError> {
        let mut inner = self.inner.borrow_mut();
        inner.stats.bytes_in += bytes.len() as u64;
        inner.stats.last_input = Some(std::time::SystemTime::now());
        let r = inner.session.handle_input(Instant::now(), bytes);
        inner.dispatch();
        inner.wake_driver();
        r.map_err(DriveError::Link)
    }
}

impl Inner {
    /// Turns session and mux events into wake-ups.
    fn dispatch(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            self.events.push_back(ev);
            if let Some(w) = self.event_waker.take() {
                w.wake();
            }
        }
        while let Some(ev) = self.session.mux().poll_event() {
            let id = ev.id();
            match ev {
                StreamEvent::Incoming { target, .. } => {
                    self.stats.streams_opened += 1;
                    self.incoming.push_back((id, target));
                    if let Some(w) = self.incoming_waker.take() {
                        w.wake();
                    }
                }
                StreamEvent::Accepted { .. } => {
                    self.accepted.insert(id, true);
                    wake(&mut self.readers, id);
                }
                StreamEvent::Readable { .. } => wake(&mut self.readers, id),
                StreamEvent::Writable { .. } => wake(&mut self.writers, id),
                StreamEvent::Reset { .. } => {
                    self.incoming.retain(|(i, _)| *i != id);
                    self.accepted.remove(&id);
                    wake(&mut self.readers, id);
                    wake(&mut self.writers, id);
                }
            }
        }
    }

    fn wake_driver(&mut self) {
        self.dirty = true;
        if let Some(w) = self.driver_waker.take() {
            w.wake();
        }
    }
}

fn wake(wakers: &mut HashMap<StreamId, Waker>, id: StreamId) {
    if let Some(w) = wakers.remove(&id) {
        w.wake();
    }
}

/// One stream of a link, used like a TCP connection. Dropping it before
/// both directions finished resets the stream at the peer.
pub struct LinkStream {
    link: Link,
    id: StreamId,
    /// The mux epoch the stream belongs to (see [`crate::mux::Mux::epoch`]).
    epoch: u32,
}

impl LinkStream {
    /// The stream's id on its link (for logs).
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Waits until the peer accepted the stream (reached its target), or
    /// fails with the reason it gave.
    pub async fn accepted(&self) -> io::Result<()> {
        futures_lite::future::poll_fn(|cx| {
            let mut inner = self.link.inner.borrow_mut();
            if inner.accepted.get(&self.id).copied().unwrap_or(false) {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = inner.session.mux().lost(self.id, self.epoch) {
                return Poll::Ready(Err(to_io(e)));
            }
            let mut probe = [0u8; 0];
            if let Err(e) = inner.session.mux().read(self.id, &mut probe) {
                return Poll::Ready(Err(to_io(e)));
            }
            inner.readers.insert(self.id, cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Accepts a stream the peer opened (its target was reached).
    pub fn accept(&self) {
        let mut inner = self.link.inner.borrow_mut();
        if inner.session.mux().lost(self.id, self.epoch).is_some() {
            return;
        }
        inner.session.mux().accept(self.id);
        inner.wake_driver();
    }

    /// Refuses a stream the peer opened, telling it why.
    pub fn refuse(self, code: ResetCode, reason: &str) {
        let mut inner = self.link.inner.borrow_mut();
        if inner.session.mux().lost(self.id, self.epoch).is_some() {
            return; // Drop forgets it
        }
        inner.session.mux().refuse(self.id, code, reason);
        inner.wake_driver();
        // Already released; Drop has nothing left to do.
    }
}

fn to_io(e: StreamError) -> io::Error {
    let kind = match &e {
        StreamError::Reset {
            code: ResetCode::Refused | ResetCode::UnknownTarget,
            ..
        } => io::ErrorKind::ConnectionRefused,
        StreamError::Reset { .. } => io::ErrorKind::ConnectionReset,
        StreamError::WriteAfterShutdown => io::ErrorKind::BrokenPipe,
        StreamError::Unknown(_) => io::ErrorKind::NotConnected,
        StreamError::TooManyStreams(_) => io::ErrorKind::WouldBlock,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.link.inner.borrow_mut();
        let mux = inner.session.mux();
        if let Some(e) = mux.lost(self.id, self.epoch) {
            return Poll::Ready(Err(to_io(e)));
        }
        match mux.read(self.id, buf) {
            Ok(0) if !buf.is_empty() && !mux.at_eof(self.id) => {
                inner.readers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                if n > 0 {
                    inner.wake_driver(); // credit may be due
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.link.inner.borrow_mut();
        if let Some(e) = inner.session.mux().lost(self.id, self.epoch) {
            return Poll::Ready(Err(to_io(e)));
        }
        match inner.session.mux().write(self.id, buf) {
            Ok(0) if !buf.is_empty() => {
                inner.writers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                inner.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.link.inner.borrow_mut();
        if let Some(e) = inner.session.mux().lost(self.id, self.epoch) {
            return Poll::Ready(Err(to_io(e)));
        }
        let r = inner.session.mux().shutdown(self.id).map_err(to_io);
        inner.wake_driver();
        Poll::Ready(r)
    }
}

impl Drop for LinkStream {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.link.inner.try_borrow_mut() {
            if inner.session.mux().lost(self.id, self.epoch).is_some() {
                inner.session.mux().forget(self.id, self.epoch);
                return;
            }
            inner.session.mux().release(self.id);
            inner.readers.remove(&self.id);
            inner.writers.remove(&self.id);
            inner.accepted.remove(&self.id);
            inner.wake_driver();
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions end, passing
/// half-closes on. Returns the bytes moved each way.
pub async fn splice<A, B>(a: A, b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, mut aw) = futures_lite::io::split(a);
    let (br, mut bw) = futures_lite::io::split(b);
    let ab = async {
        let n = futures_lite::io::copy(ar, &mut bw).await?;
        bw.close().await?;
        Ok::<u64, io::Error>(n)
    };
    let ba = async {
        let n = futures_lite::io::copy(br, &mut aw).await?;
        aw.close().await?;
        Ok::<u64, io::Error>(n)
    };
    // try_zip: when one way fails the other is dropped too, instead of
    // waiting forever on a peer that will not send again.
    futures_lite::future::try_zip(ab, ba).await
}

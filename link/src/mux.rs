//! The stream multiplexer: every stream's state, buffers and credit.
//!
//! Sans-IO: the application calls [`Mux::open`], [`Mux::write`], [`Mux::read`]
//! and friends; the session hands it received frames with [`Mux::handle`] and
//! asks it for frames to send with [`Mux::fill`]. What the application should
//! react to comes out of [`Mux::poll_event`].
//!
//! Flow control is per stream and credit based: a sender may have at most
//! [`INITIAL_WINDOW`] bytes outstanding that the receiver's application has
//! not read; the receiver returns credit as it reads. So one stream's bulk
//! transfer fills at most one window of buffers on either side, and frames of
//! all streams with data are sent round robin, [`MAX_DATA_FRAME`] bytes at a
//! time, so a big LIST cannot starve a small request.

use crate::frame::{data_frame_len, BatchWriter, Frame, ResetCode, StreamId, Target, MAX_REASON};
use std::collections::{HashMap, VecDeque};
use std::fmt;

/// Bytes a sender may have in flight on one stream before it gets credit.
/// Both sides assume this value at open; it is part of the wire protocol.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Largest `Data` frame a sender makes, so streams take turns.
pub const MAX_DATA_FRAME: usize = 16 * 1024;

/// Where a stream's frames go: `None` is the link's default topic; with a
/// broker between edge and hubs, `Some(hub)` is the sub-topic of the hub
/// replica that owns the stream (see [`Mux::new_routed`]).
pub type Route = Option<u32>;

/// Bytes a batch may exceed its budget by, for frame headers.
pub const BATCH_SLACK: usize = 64;

/// Credit is returned once this much has been read, not per read.
const CREDIT_THRESHOLD: u32 = INITIAL_WINDOW / 4;

/// Which end of the link this multiplexer is; decides stream id parity and
/// which targets may be opened towards us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// tether-edge: opens odd ids towards hub upstreams.
    Edge,
    /// tether-hub: opens even ids towards edge ports.
    Hub,
}

/// The upstream name an edge opens a stream to in order to tell the hub its
/// node's addresses (from its Node status), one per line, at most
/// [`ADDRESSES_MAX`] bytes; the hub reads them and closes the stream. No
/// configured upstream can have this name (config keys have no `:`).
pub const ADDRESSES_UPSTREAM: &str = "tether:node-addresses";

/// Largest address announcement accepted.
pub const ADDRESSES_MAX: usize = 4096;

/// The upstream name an edge opens a stream to in order to send the hub one
/// health [`VerdictReport`](crate::health::VerdictReport) (issue 6): one
/// report per stream, its encoding and nothing else, at most
/// [`HEALTH_REPORT_MAX`] bytes; the hub reads to the end and closes.
pub const HEALTH_UPSTREAM: &str = "tether:health-verdicts";

/// Largest health report accepted on a [`HEALTH_UPSTREAM`] stream.
pub const HEALTH_REPORT_MAX: usize = crate::health::MAX_REPORT_BYTES;

/// An owned copy of a [`Target`], for events that outlive the frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnedTarget {
    /// See [`Target::Upstream`].
    Upstream(String),
    /// See [`Target::Port`].
    Port(u16),
}

impl OwnedTarget {
    fn as_target(&self) -> Target<'_> {
        match self {
            OwnedTarget::Upstream(s) => Target::Upstream(s),
            OwnedTarget::Port(p) => Target::Port(*p),
        }
    }
}

impl fmt::Display for OwnedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_target().fmt(f)
    }
}

/// What the application learns about its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened a stream; answer with [`Mux::accept`] or [`Mux::refuse`].
    Incoming { id: StreamId, target: OwnedTarget },
    /// The peer accepted a stream we opened.
    Accepted { id: StreamId },
    /// Data or end-of-stream arrived.
    Readable { id: StreamId },
    /// Credit arrived: more may be written.
    Writable { id: StreamId },
    /// The stream is over (reset by the peer, or the peer's session was lost).
    Reset {
        id: StreamId,
        code: ResetCode,
        reason: String,
    },
}

impl StreamEvent {
    /// The stream the event is about.
    pub fn id(&self) -> StreamId {
        match *self {
            StreamEvent::Incoming { id, .. }
            | StreamEvent::Accepted { id }
            | StreamEvent::Readable { id }
            | StreamEvent::Writable { id }
            | StreamEvent::Reset { id, .. } => id,
        }
    }
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// No such stream (never opened, or already released).
    Unknown(StreamId),
    /// The stream was reset.
    Reset { code: ResetCode, reason: String },
    /// Writing after [`Mux::shutdown`].
    WriteAfterShutdown,
    /// The link holds [`Mux::max_streams`] streams already.
    TooManyStreams(usize),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Unknown(id) => write!(f, "stream {id} does not exist"),
            StreamError::Reset { code, reason } if reason.is_empty() => {
                write!(f, "stream reset: {code}")
            }
            StreamError::Reset { code, reason } => write!(f, "stream reset: {code}: {reason}"),
            StreamError::WriteAfterShutdown => f.write_str("write after shutdown"),
            StreamError::TooManyStreams(n) => {
                write!(f, "the link already carries its limit of {n} streams")
            }
        }
    }
}

impl std::error::Error for StreamError {}

#[derive(Debug, Default)]
struct Stream {
    /// Bytes the peer still lets us send (includes what sits in `send_buf`).
    send_credit: u64,
    /// Bytes written and not yet returned as credit by the peer. With
    /// `send_credit` it always sums to at most one window: a peer cannot
    /// inflate the buffer by crediting bytes it never received.
    uncredited: u64,
    send_buf: VecDeque<u8>,
    /// The application shut down writing; a FIN follows the buffered data.
    fin_queued: bool,
    fin_sent: bool,
    recv_buf: VecDeque<u8>,
    /// Bytes the peer may still send before it needs credit from us.
    recv_allowed: u32,
    /// Bytes read by the application and not yet returned as credit.
    recv_unreturned: u32,
    fin_received: bool,
    /// Set when the stream ended abnormally; reads and writes fail with it.
    reset: Option<(ResetCode, String)>,
    /// Already in `Mux::ready`.
    queued: bool,
    /// Where the stream's frames go.
    route: Route,
    /// Routed mode: the opener's data waits until a replica accepted the
    /// stream, so that all of it reaches that one replica.
    held: bool,
    /// The application released the stream after shutting down writing:
    /// its data and FIN still go out, then the stream goes. Data arriving
    /// for it has no reader and resets it.
    orphan: bool,
}

/// All streams of one link.
#[derive(Debug)]
pub struct Mux {
    side: Side,
    /// Streams are routed to the replica that accepted them.
    routed: bool,
    next_id: StreamId,
    max_streams: usize,
    streams: HashMap<StreamId, Stream>,
    /// Streams ended by [`Mux::reset_all`], kept only so their application
    /// handles get the reason until released; their ids are free again.
    lost: HashMap<(StreamId, u32), (ResetCode, String)>,
    /// Counts [`Mux::reset_all`]s: a handle from an older epoch must never
    /// reach a newer stream that reuses its id.
    epoch: u32,
    /// Open/Accept/Credit/Reset frames waiting to be sent, oldest first.
    control: VecDeque<(Route, Control)>,
    /// Streams with data or a FIN to send, in turn order.
    ready: VecDeque<StreamId>,
    events: VecDeque<StreamEvent>,
}

#[derive(Debug)]
enum Control {
    Open(StreamId, OwnedTarget),
    Accept(StreamId),
    Credit(StreamId, u32),
    Reset(StreamId, ResetCode, String),
}

impl Control {
    fn frame(&self) -> Frame<'_> {
        match self {
            Control::Open(id, t) => Frame::Open {
                id: *id,
                target: t.as_target(),
            },
            Control::Accept(id) => Frame::Accept { id: *id },
            Control::Credit(id, n) => Frame::Credit { id: *id, bytes: *n },
            Control::Reset(id, code, reason) => Frame::Reset {
                id: *id,
                code: *code,
                reason,
            },
        }
    }
}

impl Mux {
    /// An empty multiplexer for one end of a link, holding at most
    /// `max_streams` streams at once.
    pub fn new(side: Side, max_streams: usize) -> Mux {
        Mux {
            side,
            routed: false,
            next_id: match side {
                Side::Edge => 1,
                Side::Hub => 2,
            },
            max_streams,
            streams: HashMap::new(),
            lost: HashMap::new(),
            epoch: 0,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A multiplexer whose streams are routed: used by an edge that meets
    /// several hub replicas at a broker. A stream it opens goes out on the
    /// default route; the replica that accepts it owns it, and every later
    /// frame of the stream is routed to that replica. Streams a replica
    /// opens are routed back to it.
    pub fn new_routed(side: Side, max_streams: usize) -> Mux {
        Mux {
            routed: true,
            ..Mux::new(side, max_streams)
        }
    }

    /// Starts numbering this side's streams at `first` (its parity is
    /// corrected to this side's).
    pub fn first_id(&mut self, first: StreamId) {
        self.next_id = match self.side {
            Side::Edge => first | 1,
            Side::Hub => first & !1,
        }
        .max(1);
    }

    /// The most streams this link carries at once.
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Streams currently held (open, half-closed, or reset and not yet released).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is held.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Opens a stream towards `target`. Data may be written at once.
    pub fn open(&mut self, target: OwnedTarget) -> Result<StreamId, StreamError> {
        if self.streams.len() >= self.max_streams {
            return Err(StreamError::TooManyStreams(self.max_streams));
        }
        let id = self.next_id;
        // Ids wrap after 2^31 opens; skip any still in use.
        self.next_id = self.next_id.wrapping_add(2);
        if self.streams.contains_key(&id) {
            return self.open(target);
        }
        let mut stream = Stream::fresh();
        stream.held = self.routed;
        self.streams.insert(id, stream);
        self.control.push_back((None, Control::Open(id, target)));
        Ok(id)
    }

    /// Accepts a stream the peer opened (after reaching its target).
    pub fn accept(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get(&id) {
            self.control.push_back((s.route, Control::Accept(id)));
        }
    }

    /// Refuses or aborts a stream: sends a reset and forgets the stream.
    pub fn refuse(&mut self, id: StreamId, code: ResetCode, reason: &str) {
        if let Some(s) = self.streams.remove(&id) {
            if s.reset.is_none() {
                self.send_reset(s.route, id, code, reason);
            }
        }
    }

    /// Queues up to `data.len()` bytes, as far as the peer's credit allows.
    /// Returns how many were taken; 0 means wait for [`StreamEvent::Writable`].
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(self.missing(id));
        };
        s.check()?;
        if s.fin_queued {
            return Err(StreamError::WriteAfterShutdown);
        }
        let n = data
            .len()
            .min(usize::try_from(s.send_credit).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        s.send_credit -= n as u64;
        s.uncredited += n as u64;
        s.send_buf.extend(&data[..n]);
        if !s.queued && !s.held {
            s.queued = true;
            self.ready.push_back(id);
        }
        Ok(n)
    }

    /// Whether [`Mux::write`] would take at least one byte now.
    pub fn writable(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.reset.is_none() && !s.fin_queued && s.send_credit > 0)
    }

    /// Half-closes: no more writes; the peer reads end-of-stream after the
    /// data already written.
    pub fn shutdown(&mut self, id: StreamId) -> Result<(), StreamError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(self.missing(id));
        };
        s.check()?;
        if !s.fin_queued {
            s.fin_queued = true;
            if !s.queued && !s.held {
                s.queued = true;
                self.ready.push_back(id);
            }
        }
        Ok(())
    }

    /// Reads received bytes into `buf`. `Ok(0)` with a non-empty `buf` means
    /// end-of-stream if [`Mux::at_eof`], else nothing yet.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(self.missing(id));
        };
        if s.recv_buf.is_empty() {
            s.check()?;
            return Ok(0);
        }
        let n = buf.len().min(s.recv_buf.len());
        let (a, b) = s.recv_buf.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        s.recv_buf.drain(..n);
        // n <= recv_buf.len() <= INITIAL_WINDOW, so it fits a u32.
        s.recv_unreturned += n as u32;
        if s.recv_unreturned >= CREDIT_THRESHOLD && !s.fin_received {
            let credit = std::mem::take(&mut s.recv_unreturned);
            s.recv_allowed += credit;
            self.control
                .push_back((s.route, Control::Credit(id, credit)));
        }
        Ok(n)
    }

    /// Whether the peer finished sending and everything was read.
    pub fn at_eof(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_none_or(|s| s.fin_received && s.recv_buf.is_empty())
    }

    /// Whether the stream is reset (reads and writes fail).
    pub fn is_reset(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_none_or(|s| s.reset.is_some())
    }

    /// The application is done with the stream. A stream closed cleanly both
    /// ways just goes; anything else is reset towards the peer, as TCP
    /// does when a socket is closed with unread data.
    ///
    /// A stream shut down for writing is not cut short: what was written
    /// and the FIN still go out (as TCP sends its buffer after close).
    pub fn release(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let unread = !s.recv_buf.is_empty();
        if s.reset.is_none() && s.fin_queued && !unread {
            if s.fin_sent && s.fin_received {
                self.streams.remove(&id);
            } else {
                s.orphan = true;
            }
            return;
        }
        let (reset, route) = (s.reset.is_some(), s.route);
        self.streams.remove(&id);
        if !reset {
            self.send_reset(route, id, ResetCode::Cancelled, "closed by the application");
        }
    }

    /// Marks every stream reset (the peer lost its session) without sending
    /// anything, and drops queued frames, which belong to the lost session.
    /// The ids are free at once: the restarted peer numbers its streams
    /// from the start again.
    pub fn reset_all(&mut self, code: ResetCode, reason: &str) {
        self.control.clear();
        self.ready.clear();
        for (id, s) in self.streams.drain() {
            let (code, reason) = s.reset.unwrap_or((code, reason.to_owned()));
            self.events.push_back(StreamEvent::Reset {
                id,
                code,
                reason: reason.clone(),
            });
            self.lost.insert((id, self.epoch), (code, reason));
        }
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// The current epoch; a handle records it when its stream is created.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Why the stream `id` of an older `epoch` ended, if it was lost in a
    /// [`Mux::reset_all`]. Handles check this before touching `id`.
    pub fn lost(&self, id: StreamId, epoch: u32) -> Option<StreamError> {
        if epoch == self.epoch {
            return None;
        }
        let (code, reason) = self.lost.get(&(id, epoch)).cloned().unwrap_or((
            ResetCode::SessionLost,
            "the stream's session was lost".to_owned(),
        ));
        Some(StreamError::Reset { code, reason })
    }

    /// A handle of an older epoch is gone: forget its lost stream.
    pub fn forget(&mut self, id: StreamId, epoch: u32) {
        self.lost.remove(&(id, epoch));
    }

    fn missing(&self, id: StreamId) -> StreamError {
        StreamError::Unknown(id)
    }

    /// The next thing the application should know about, oldest first.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Whether the peer made this side queue more control frames (resets of
    /// refused opens and unknown streams) than its streams can explain: a
    /// peer that floods frames and never lets the answers drain.
    pub fn overloaded(&self) -> bool {
        self.control.len() > 2 * self.max_streams + 64
    }

    /// Whether [`Mux::fill`] has anything to send.
    pub fn wants_to_send(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// The route of the next frames to send, if any: batches are built one
    /// route at a time.
    pub fn next_route(&self) -> Option<Route> {
        if let Some((route, _)) = self.control.front() {
            return Some(*route);
        }
        self.ready
            .iter()
            .find_map(|id| self.streams.get(id).map(|s| s.route))
    }

    /// Appends frames for `route` to `batch` until it holds `max` bytes or
    /// nothing is left: control frames first, then data from each ready
    /// stream in turn.
    pub fn fill(&mut self, batch: &mut BatchWriter, max: usize, route: Route) {
        let mut i = 0;
        while i < self.control.len() {
            if self.control[i].0 != route {
                i += 1;
                continue;
            }
            // Control frames are small; a batch always takes at least one.
            if !batch.is_empty() && batch.len() + 64 + MAX_REASON > max {
                return;
            }
            if let Some((_, c)) = self.control.remove(i) {
                batch.push(&c.frame());
            }
        }
        let mut turns = self.ready.len();
        while turns > 0 {
            turns -= 1;
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if s.route != route {
                self.ready.push_back(id);
                continue;
            }
            s.queued = false;
            // `max` budgets stream bytes; frame headers may add up to
            // BATCH_SLACK more, so a batch holds whole frames.
            let room = (max + BATCH_SLACK).saturating_sub(batch.len() + data_frame_len(id, 0) + 4);
            let n = s.send_buf.len().min(MAX_DATA_FRAME).min(room);
            if n > 0 {
                s.send_buf.make_contiguous();
                let (bytes, _) = s.send_buf.as_slices();
                batch.push(&Frame::Data {
                    id,
                    bytes: &bytes[..n],
                });
                s.send_buf.drain(..n);
            }
            if s.send_buf.is_empty() && s.fin_queued && !s.fin_sent {
                batch.push(&Frame::Fin { id });
                s.fin_sent = true;
                if s.orphan && s.fin_received {
                    self.streams.remove(&id);
                    continue;
                }
            }
            if !s.send_buf.is_empty() {
                s.queued = true;
                if n == 0 {
                    // Batch full before this stream's turn: it goes first
                    // in the next batch. Put back behind the stream that
                    // filled this one, it would lose every turn to a bulk
                    // stream when batches hold one frame.
                    self.ready.push_front(id);
                    return;
                }
                self.ready.push_back(id);
                turns += 1; // its next chunk takes another turn
            }
        }
    }

    /// Takes one frame received from the peer.
    ///
    /// `from` is the sender of the batch it came in (its
    /// [`crate::frame::BatchHeader::sender`]); routed streams follow it.
    pub fn handle(&mut self, frame: Frame<'_>, from: u32) {
        let id = frame.id();
        let reply: Route = if self.routed { Some(from) } else { None };
        let theirs = match self.side {
            Side::Edge => id.is_multiple_of(2),
            Side::Hub => !id.is_multiple_of(2),
        };
        if let Frame::Open { target, .. } = frame {
            let allowed = matches!(
                (self.side, &target),
                (Side::Edge, Target::Port(_)) | (Side::Hub, Target::Upstream(_))
            );
            if !theirs || self.streams.contains_key(&id) {
                self.send_reset(
                    reply,
                    id,
                    ResetCode::ProtocolError,
                    "open with an id the opener may not use",
                );
            } else if !allowed {
                self.send_reset(
                    reply,
                    id,
                    ResetCode::Refused,
                    &format!("{target} cannot be opened from this side"),
                );
            } else if self.streams.len() >= self.max_streams {
                let reason = format!("limit of {} streams reached", self.max_streams);
                self.send_reset(reply, id, ResetCode::TooManyStreams, &reason);
            } else {
                let mut stream = Stream::fresh();
                stream.route = reply;
                self.streams.insert(id, stream);
                let target = match target {
                    Target::Upstream(s) => OwnedTarget::Upstream(s.to_owned()),
                    Target::Port(p) => OwnedTarget::Port(p),
                };
                self.events.push_back(StreamEvent::Incoming { id, target });
            }
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // A frame for a stream we no longer know: tell the peer once, but
            // never answer a reset with a reset.
            if !matches!(frame, Frame::Reset { .. }) {
                self.send_reset(reply, id, ResetCode::UnknownStream, "");
            }
            return;
        };
        if s.reset.is_some() {
            return;
        }
        if s.orphan {
            match frame {
                Frame::Fin { .. } if s.fin_sent => {
                    self.streams.remove(&id);
                }
                Frame::Fin { .. } | Frame::Credit { .. } | Frame::Accept { .. } => {
                    if let Frame::Credit { bytes, .. } = frame {
                        let bytes = u64::from(bytes).min(s.uncredited);
                        s.uncredited -= bytes;
                        s.send_credit += bytes;
                    }
                    s.fin_received |= matches!(frame, Frame::Fin { .. });
                }
                Frame::Data { .. } | Frame::Open { .. } => {
                    let route = s.route;
                    self.streams.remove(&id);
                    self.send_reset(
                        route,
                        id,
                        ResetCode::Cancelled,
                        "data for a stream its application closed",
                    );
                }
                Frame::Reset { .. } => {
                    self.streams.remove(&id);
                }
            }
            return;
        }
        match frame {
            Frame::Open { .. } => {}
            Frame::Accept { .. } => {
                if s.held {
                    // The accepting replica owns the stream from now on.
                    s.held = false;
                    s.route = reply;
                    if !s.send_buf.is_empty() || s.fin_queued {
                        s.queued = true;
                        self.ready.push_back(id);
                    }
                }
                self.events.push_back(StreamEvent::Accepted { id })
            }
            Frame::Data { bytes, .. } => {
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                if s.fin_received || len > s.recv_allowed {
                    let reason = if s.fin_received {
                        "data after FIN"
                    } else {
                        "data beyond the credit given"
                    };
                    self.protocol_error(id, reason);
                    return;
                }
                s.recv_allowed -= len;
                s.recv_buf.extend(bytes);
                self.events.push_back(StreamEvent::Readable { id });
            }
            Frame::Credit { bytes, .. } => {
                let was_blocked = s.send_credit == 0;
                if u64::from(bytes) > s.uncredited {
                    self.protocol_error(id, "credit for bytes never sent");
                    return;
                }
                s.uncredited -= u64::from(bytes);
                s.send_credit += u64::from(bytes);
                if was_blocked {
                    self.events.push_back(StreamEvent::Writable { id });
                }
            }
            Frame::Fin { .. } => {
                s.fin_received = true;
                self.events.push_back(StreamEvent::Readable { id });
            }
            Frame::Reset { code, reason, .. } => {
                let reason: String = reason.chars().take(MAX_REASON).collect();
                s.reset = Some((code, reason.clone()));
                s.send_buf = VecDeque::new();
                self.events
                    .push_back(StreamEvent::Reset { id, code, reason });
            }
        }
    }

    fn protocol_error(&mut self, id: StreamId, reason: &str) {
        let mut route = None;
        if let Some(s) = self.streams.get_mut(&id) {
            route = s.route;
            s.reset = Some((ResetCode::ProtocolError, reason.to_owned()));
            s.send_buf = VecDeque::new();
            self.events.push_back(StreamEvent::Reset {
                id,
                code: ResetCode::ProtocolError,
                reason: reason.to_owned(),
            });
        }
        self.send_reset(route, id, ResetCode::ProtocolError, reason);
    }

    fn send_reset(&mut self, route: Route, id: StreamId, code: ResetCode, reason: &str) {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.control
            .push_back((route, Control::Reset(id, code, reason[..end].to_owned())));
    }
}

impl Stream {
    fn fresh() -> Stream {
        Stream {
            send_credit: u64::from(INITIAL_WINDOW),
            recv_allowed: INITIAL_WINDOW,
            ..Stream::default()
        }
    }

    fn check(&self) -> Result<(), StreamError> {
        match &self.reset {
            Some((code, reason)) => Err(StreamError::Reset {
                code: *code,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_batch, BatchHeader};

    /// Moves everything `from` wants to send into `to`, as the link would.
    fn pump(from: &mut Mux, to: &mut Mux) -> usize {
        let mut n = 0;
        while from.wants_to_send() {
            let mut w = BatchWriter::new(BatchHeader {
                sender: 1,
                lane: 0,
                seq: 1,
            });
            from.fill(&mut w, 64 * 1024, None);
            let bytes = w.finish();
            let (_, frames) = read_batch(&bytes).expect("batch");
            for f in frames {
                to.handle(f.expect("frame"), 1);
                n += 1;
            }
        }
        n
    }

    fn events(m: &mut Mux) -> Vec<StreamEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    #[test]
    fn open_accept_transfer_half_close() {
        let mut edge = Mux::new(Side::Edge, 8);
        let mut hub = Mux::new(Side::Hub, 8);
        let id = edge
            .open(OwnedTarget::Upstream("kube-apiserver".into()))
            .expect("open");
        assert_eq!(edge.write(id, b"request").expect("write"), 7);
        edge.shutdown(id).expect("shutdown");
        pump(&mut edge, &mut hub);
        let ev = events(&mut hub);
        assert_eq!(
            ev[0],
            StreamEvent::Incoming {
                id,
                target: OwnedTarget::Upstream("kube-apiserver".into())
            }
        );
        let mut buf = [0u8; 64];
        assert_eq!(hub.read(id, &mut buf).expect("read"), 7);
        assert_eq!(&buf[..7], b"request");
        assert!(hub.at_eof(id));
        hub.accept(id);
        hub.write(id, b"response").expect("write");
        hub.shutdown(id).expect("shutdown");
        pump(&mut hub, &mut edge);
        assert!(events(&mut edge).contains(&StreamEvent::Accepted { id }));
        assert_eq!(edge.read(id, &mut buf).expect("read"), 8);
        assert!(edge.at_eof(id));
        edge.release(id);
        hub.release(id);
        assert!(!edge.wants_to_send() && !hub.wants_to_send());
        assert!(edge.is_empty() && hub.is_empty());
    }

    #[test]
    fn credit_bounds_the_sender() {
        let mut edge = Mux::new(Side::Edge, 8);
        let mut hub = Mux::new(Side::Hub, 8);
        let id = edge.open(OwnedTarget::Upstream("x".into())).expect("open");
        let big = vec![7u8; 3 * INITIAL_WINDOW as usize];
        let n = edge.write(id, &big).expect("write");
        assert_eq!(n, INITIAL_WINDOW as usize);
        assert_eq!(edge.write(id, &big).expect("write"), 0);
        pump(&mut edge, &mut hub);
        let mut sink = vec![0u8; INITIAL_WINDOW as usize];
        assert_eq!(
            hub.read(id, &mut sink).expect("read"),
            INITIAL_WINDOW as usize
        );
        pump(&mut hub, &mut edge);
        assert!(events(&mut edge).contains(&StreamEvent::Writable { id }));
        assert_eq!(
            edge.write(id, &big).expect("write"),
            INITIAL_WINDOW as usize
        );
    }

    #[test]
    fn streams_take_turns() {
        let mut edge = Mux::new(Side::Edge, 8);
        let bulk = edge
            .open(OwnedTarget::Upstream("bulk".into()))
            .expect("open");
        edge.write(bulk, &vec![0u8; INITIAL_WINDOW as usize])
            .expect("write");
        let small = edge
            .open(OwnedTarget::Upstream("small".into()))
            .expect("open");
        edge.write(small, b"ping").expect("write");
        // The first batch already carries the small stream's data.
        let mut w = BatchWriter::new(BatchHeader {
            sender: 1,
            lane: 0,
            seq: 1,
        });
        edge.fill(&mut w, 64 * 1024, None);
        let bytes = w.finish();
        let (_, frames) = read_batch(&bytes).expect("batch");
        let ids: Vec<_> = frames
            .filter_map(|f| match f.expect("frame") {
                Frame::Data { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert!(ids.contains(&small), "{ids:?}");
    }

    #[test]
    fn hostile_frames_reset_streams_not_the_mux() {
        let mut hub = Mux::new(Side::Hub, 2);
        // Edge opens with an even id (the hub's), and a port target.
        hub.handle(
            Frame::Open {
                id: 2,
                target: Target::Upstream("a"),
            },
            1,
        );
        hub.handle(
            Frame::Open {
                id: 3,
                target: Target::Port(22),
            },
            1,
        );
        hub.handle(
            Frame::Data {
                id: 99,
                bytes: b"x",
            },
            1,
        );
        assert!(hub.is_empty());
        hub.handle(
            Frame::Open {
                id: 1,
                target: Target::Upstream("a"),
            },
            1,
        );
        let big = vec![0u8; INITIAL_WINDOW as usize + 1];
        hub.handle(Frame::Data { id: 1, bytes: &big }, 1);
        assert!(hub.is_reset(1));
        // Limit of streams.
        hub.handle(
            Frame::Open {
                id: 5,
                target: Target::Upstream("a"),
            },
            1,
        );
        hub.handle(
            Frame::Open {
                id: 7,
                target: Target::Upstream("a"),
            },
            1,
        );
        assert_eq!(hub.len(), 2);
        let mut edge = Mux::new(Side::Edge, 8);
        pump(&mut hub, &mut edge);
        assert!(hub.control.is_empty());
    }

    #[test]
    fn release_unfinished_stream_resets_peer() {
        let mut edge = Mux::new(Side::Edge, 8);
        let mut hub = Mux::new(Side::Hub, 8);
        let id = edge.open(OwnedTarget::Upstream("x".into())).expect("open");
        pump(&mut edge, &mut hub);
        events(&mut hub);
        edge.release(id);
        pump(&mut edge, &mut hub);
        assert!(matches!(
            events(&mut hub).as_slice(),
            [StreamEvent::Reset {
                code: ResetCode::Cancelled,
                ..
            }]
        ));
        assert!(hub.write(id, b"x").is_err());
    }

    #[test]
    fn release_after_shutdown_still_delivers() {
        let mut edge = Mux::new(Side::Edge, 8);
        let mut hub = Mux::new(Side::Hub, 8);
        let id = edge.open(OwnedTarget::Upstream("x".into())).expect("open");
        pump(&mut edge, &mut hub);
        events(&mut hub);
        // The hub answers, receives the edge's FIN, writes its last bytes,
        // shuts down and lets go before anything was sent.
        edge.shutdown(id).expect("fin");
        pump(&mut edge, &mut hub);
        hub.write(id, &vec![5u8; 100_000]).expect("write");
        hub.shutdown(id).expect("fin");
        hub.release(id);
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..10 {
            pump(&mut hub, &mut edge);
            got += edge.read(id, &mut buf).expect("read");
            pump(&mut edge, &mut hub);
        }
        assert_eq!(got, 100_000);
        assert!(edge.at_eof(id));
        assert!(hub.is_empty(), "the orphan is gone once its FIN went out");
    }

    #[test]
    fn credit_beyond_what_was_sent_is_a_protocol_error() {
        let mut hub = Mux::new(Side::Hub, 8);
        hub.handle(
            Frame::Open {
                id: 1,
                target: Target::Upstream("a"),
            },
            1,
        );
        hub.write(1, &[0u8; 100]).expect("write");
        hub.handle(Frame::Credit { id: 1, bytes: 100 }, 1);
        assert!(!hub.is_reset(1));
        hub.handle(Frame::Credit { id: 1, bytes: 1 }, 1);
        assert!(hub.is_reset(1));
    }

    #[test]
    fn old_handles_never_reach_a_new_stream_with_their_id() {
        let mut hub = Mux::new(Side::Hub, 8);
        hub.handle(
            Frame::Open {
                id: 1,
                target: Target::Upstream("a"),
            },
            1,
        );
        let old = hub.epoch();
        hub.reset_all(ResetCode::SessionLost, "edge restarted");
        // The restarted edge opens id 1 again.
        hub.handle(
            Frame::Open {
                id: 1,
                target: Target::Upstream("a"),
            },
            2,
        );
        hub.handle(
            Frame::Data {
                id: 1,
                bytes: b"new",
            },
            2,
        );
        assert!(matches!(
            hub.lost(1, old),
            Some(StreamError::Reset {
                code: ResetCode::SessionLost,
                ..
            })
        ));
        assert!(hub.lost(1, hub.epoch()).is_none());
        hub.forget(1, old);
        let mut buf = [0u8; 8];
        assert_eq!(hub.read(1, &mut buf).expect("new stream"), 3);
    }

    #[test]
    fn routed_streams_wait_for_and_follow_their_replica() {
        let mut edge = Mux::new_routed(Side::Edge, 8);
        let id = edge.open(OwnedTarget::Upstream("a".into())).expect("open");
        edge.write(id, b"held").expect("write");
        assert_eq!(edge.next_route(), Some(None));
        let mut w = BatchWriter::new(BatchHeader {
            sender: 1,
            lane: 0,
            seq: 1,
        });
        edge.fill(&mut w, 64 * 1024, None);
        let bytes = w.finish();
        let (_, frames) = read_batch(&bytes).expect("batch");
        let kinds: Vec<_> = frames.map(|f| f.expect("frame")).collect();
        assert!(
            matches!(kinds.as_slice(), [Frame::Open { .. }]),
            "data waits: {kinds:?}"
        );
        assert_eq!(edge.next_route(), None);
        edge.handle(Frame::Accept { id }, 0xab);
        assert_eq!(edge.next_route(), Some(Some(0xab)));
        // A replica's own opens are answered on its route.
        edge.handle(
            Frame::Open {
                id: 2,
                target: Target::Port(10250),
            },
            0xcd,
        );
        edge.accept(2);
        assert_eq!(edge.next_route(), Some(Some(0xcd)));
    }
}

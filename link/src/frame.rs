//! Stream frames: the postcard-encoded payload of every link PUBLISH.
//!
//! One PUBLISH carries one *batch*: a [`BatchHeader`] (who sent it and its
//! sequence number, for exactly-once delivery across resends) followed by one
//! or more [`Frame`]s back to back. Batching lets many small frames share one
//! MQTT header and topic. The exact byte layout is in ARCHITECTURE.md.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies a stream on one link. Streams the edge opens are odd, streams
/// the hub opens are even, so both sides can open without coordination.
pub type StreamId = u32;

/// Longest reset reason this side sends; longer ones are cut.
pub const MAX_REASON: usize = 200;

/// Where a newly opened stream should lead.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// Edge to hub: an upstream named in the hub's config (e.g.
    /// `kube-apiserver`). Never an address: the hub dials only what it knows.
    Upstream(&'a str),
    /// Hub to edge: a local TCP port on the board, if the edge's config allows it.
    Port(u16),
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Upstream(name) => write!(f, "upstream {name:?}"),
            Target::Port(port) => write!(f, "local port {port}"),
        }
    }
}

/// Why a stream was reset. The code is for programs, the reason for people.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCode {
    /// The far side refused the open (not allowed by its config).
    Refused,
    /// The named upstream or port is not known.
    UnknownTarget,
    /// The far side could not connect to the target.
    ConnectFailed,
    /// The application on either side gave up on the stream.
    Cancelled,
    /// The peer broke the stream protocol (data beyond credit, data after FIN).
    ProtocolError,
    /// The peer's session was lost (restart), so the stream cannot go on.
    SessionLost,
    /// Too many open streams on this link.
    TooManyStreams,
    /// A frame for a stream that does not exist (any more).
    UnknownStream,
}

impl fmt::Display for ResetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResetCode::Refused => "refused",
            ResetCode::UnknownTarget => "unknown target",
            ResetCode::ConnectFailed => "connect failed",
            ResetCode::Cancelled => "cancelled",
            ResetCode::ProtocolError => "protocol error",
            ResetCode::SessionLost => "session lost",
            ResetCode::TooManyStreams => "too many streams",
            ResetCode::UnknownStream => "unknown stream",
        })
    }
}

/// Writes a byte slice as one block. On the wire this is exactly what serde
/// writes for a slice by default (postcard: a varint length, then the
/// bytes), but without a call per byte.
fn as_bytes<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// One message of the stream protocol.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Opens stream `id` towards `target`. The opener may send up to
    /// [`crate::mux::INITIAL_WINDOW`] bytes at once, before `Accept`.
    Open {
        id: StreamId,
        #[serde(borrow)]
        target: Target<'a>,
    },
    /// The target was reached; the stream is open both ways.
    Accept { id: StreamId },
    /// Stream bytes, in order.
    Data {
        id: StreamId,
        #[serde(borrow, serialize_with = "as_bytes")]
        bytes: &'a [u8],
    },
    /// The receiver has consumed `bytes` more bytes: the sender may send that
    /// many more (credit-based flow control per stream).
    Credit { id: StreamId, bytes: u32 },
    /// The sender will send no more data (half-close); the other way stays open.
    Fin { id: StreamId },
    /// The stream is over, both ways, at once.
    Reset {
        id: StreamId,
        code: ResetCode,
        reason: &'a str,
    },
}

impl Frame<'_> {
    /// The stream this frame belongs to.
    pub fn id(&self) -> StreamId {
        match *self {
            Frame::Open { id, .. }
            | Frame::Accept { id }
            | Frame::Data { id, .. }
            | Frame::Credit { id, .. }
            | Frame::Fin { id }
            | Frame::Reset { id, .. } => id,
        }
    }
}

/// The start of every batch.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Random per process start of the sender: tells resent batches of this
    /// sender apart from those of a restarted one or of another hub replica.
    pub sender: u32,
    /// The sender's sequence space: 0 for a link's default topic, the hub
    /// replica's id for batches an edge routes to that replica through a
    /// broker. MQTT keeps order only per topic, so each topic gets its own
    /// sequence.
    pub lane: u32,
    /// Counts the sender's batches in this lane from 1; a receiver drops any batch whose
    /// number it has already seen from this sender (a QoS 1 resend).
    pub seq: u64,
}

/// Why a batch could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// Builds one batch payload.
#[derive(Debug, Default)]
pub struct BatchWriter {
    buf: Vec<u8>,
    frames: usize,
}

impl BatchWriter {
    /// Starts a batch with its header.
    pub fn new(header: BatchHeader) -> BatchWriter {
        let mut w = BatchWriter::default();
        w.push_value(&header);
        w
    }

    /// Appends a frame.
    pub fn push(&mut self, frame: &Frame<'_>) {
        self.push_value(frame);
        self.frames += 1;
    }

    fn push_value<T: Serialize>(&mut self, value: &T) {
        // Serializing our own frames into a Vec cannot fail: every type here is
        // plain data with no custom serializer.
        if let Ok(v) = postcard::to_extend(value, std::mem::take(&mut self.buf)) {
            self.buf = v;
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no frame was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The finished payload.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Encoded size of a `Data` frame carrying `len` bytes, for packing batches.
pub fn data_frame_len(id: StreamId, len: usize) -> usize {
    1 + varint_len(u64::from(id)) + varint_len(len as u64) + len
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Reads a batch: its header, then its frames one by one.
pub fn read_batch(payload: &[u8]) -> Result<(BatchHeader, Frames<'_>), FrameError> {
    let (header, rest) = postcard::take_from_bytes::<BatchHeader>(payload)
        .map_err(|e| FrameError(format!("batch header: {e}")))?;
    Ok((header, Frames { rest }))
}

/// The frames of one batch, decoded lazily and without copying data.
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match postcard::take_from_bytes::<Frame<'a>>(self.rest) {
            Ok((frame, rest)) => {
                self.rest = rest;
                Some(Ok(frame))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(FrameError(e.to_string())))
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn data_bytes_are_encoded_as_a_plain_slice_would_be() {
        // The block write must not change the wire format: serde's default
        // for a slice (a sequence of u8) gives the same bytes.
        #[derive(Serialize)]
        enum Plain<'a> {
            _Open,
            _Accept,
            Data { id: StreamId, bytes: &'a [u8] },
        }
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let id: StreamId = 7;
        let block = postcard::to_allocvec(&Frame::Data {
            id,
            bytes: &payload,
        })
        .expect("encode");
        let plain = postcard::to_allocvec(&Plain::Data {
            id,
            bytes: &payload,
        })
        .expect("encode");
        assert_eq!(block, plain);
    }
    use super::*;

    #[test]
    fn batch_roundtrip() {
        let frames = [
            Frame::Open {
                id: 1,
                target: Target::Upstream("kube-apiserver"),
            },
            Frame::Data {
                id: 1,
                bytes: b"GET / HTTP/1.1\r\n\r\n",
            },
            Frame::Credit {
                id: 2,
                bytes: 65536,
            },
            Frame::Fin { id: 1 },
            Frame::Reset {
                id: 4,
                code: ResetCode::Refused,
                reason: "port 22 not allowed",
            },
            Frame::Accept { id: 3 },
            Frame::Open {
                id: 2,
                target: Target::Port(10250),
            },
        ];
        let header = BatchHeader {
            sender: 7,
            lane: 0,
            seq: 1,
        };
        let mut w = BatchWriter::new(header);
        for f in &frames {
            w.push(f);
        }
        let bytes = w.finish();
        let (h, it) = read_batch(&bytes).expect("header");
        assert_eq!(h, header);
        let back: Vec<_> = it.collect::<Result<_, _>>().expect("frames");
        assert_eq!(back, frames);
    }

    #[test]
    fn data_overhead_is_small() {
        let payload = vec![0u8; 16 * 1024];
        let mut w = BatchWriter::default();
        w.push(&Frame::Data {
            id: 12345,
            bytes: &payload,
        });
        let overhead = w.len() - payload.len();
        assert_eq!(
            overhead,
            data_frame_len(12345, payload.len()) - payload.len()
        );
        assert!(overhead <= 12, "{overhead}");
    }
}

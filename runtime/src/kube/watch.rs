//! Watch streams, sans-IO: [`WatchDecoder`] re-frames bytes that arrive in
//! arbitrary chunks into events; [`encode_watch_event`] frames one event.

use super::meta::{json_object_at, pb_enveloped_object};
use super::{json, pb, Encoding, Error, ObjectMeta, Result};

/// The `type` of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
    /// `BOOKMARK`: only `metadata.resourceVersion` is meaningful.
    Bookmark,
    /// `ERROR`: the object is a `Status` (410 Expired for a too-old RV).
    Error,
}

impl EventType {
    /// The wire name (`ADDED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
            EventType::Error => "ERROR",
        }
    }

    /// The event type with this wire name, if any.
    pub fn from_wire(name: &[u8]) -> Option<EventType> {
        Some(match name {
            b"ADDED" => EventType::Added,
            b"MODIFIED" => EventType::Modified,
            b"DELETED" => EventType::Deleted,
            b"BOOKMARK" => EventType::Bookmark,
            b"ERROR" => EventType::Error,
            _ => return None,
        })
    }
}

/// One watch event, its object borrowed from the decoder's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent<'a> {
    /// The event's `type`.
    pub event_type: EventType,
    /// The object's `kind` (`Status` for `ERROR` events).
    pub kind: String,
    /// The object as received, standalone: protobuf, the complete `k8s\0`
    /// envelope (`RawExtension.raw`); JSON, the `object` value's text.
    pub object: &'a [u8],
    /// The object's metadata (empty for a `Status`).
    pub meta: ObjectMeta,
}

/// Incremental watch-stream decoder. Feed body bytes (already de-chunked)
/// with [`push`](Self::push), then take events with
/// [`next_event`](Self::next_event) until it returns `None`. Chunk
/// boundaries do not matter. After an error the decoder keeps returning it.
#[derive(Debug, Clone)]
pub struct WatchDecoder {
    encoding: Encoding,
    max_frame: usize,
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    start: usize,
    /// JSON only: how far the current value has been scanned, and the
    /// scanner's state there.
    scan: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    failed: Option<Error>,
}

impl WatchDecoder {
    /// A decoder for a watch body in `encoding`; frames (protobuf) or event
    /// values (JSON) longer than `max_frame` bytes are an error.
    pub fn new(encoding: Encoding, max_frame: usize) -> Self {
        WatchDecoder {
            encoding,
            max_frame,
            buf: Vec::new(),
            start: 0,
            scan: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            failed: None,
        }
    }

    /// Appends received body bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan = self.scan.saturating_sub(self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as events.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// At the end of the body: `Ok` if no partial event is left over
    /// (whitespace between JSON events is fine), else [`Error::Truncated`].
    pub fn finish(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let rest = &self.buf[self.start..];
        let empty = match self.encoding {
            Encoding::Protobuf => rest.is_empty(),
            Encoding::Json => json::skip_ws(rest, 0) == rest.len(),
        };
        if empty {
            Ok(())
        } else {
            Err(Error::Truncated)
        }
    }

    /// The next complete event, `None` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<WatchEvent<'_>>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let framed = match self.encoding {
            Encoding::Protobuf => self.next_pb_frame(),
            Encoding::Json => self.next_json_value(),
        };
        let range = match framed {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        let frame = &self.buf[range];
        let decoded = match self.encoding {
            Encoding::Protobuf => decode_pb_event(frame),
            Encoding::Json => decode_json_event(frame),
        };
        match decoded {
            Ok(ev) => Ok(Some(ev)),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn next_pb_frame(&mut self) -> Result<Option<std::ops::Range<usize>>> {
        let rest = &self.buf[self.start..];
        let Some(prefix) = rest.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame {
            return Err(Error::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if rest.len() - 4 < len {
            return Ok(None);
        }
        let begin = self.start + 4;
        self.start = begin + len;
        Ok(Some(begin..begin + len))
    }

    fn next_json_value(&mut self) -> Result<Option<std::ops::Range<usize>>> {
        if self.depth == 0 {
            // Between values: skip whitespace, expect '{'.
            self.start = json::skip_ws(&self.buf, self.start);
            self.scan = self.start;
            match self.buf.get(self.start) {
                None => return Ok(None),
                Some(b'{') => {}
                Some(_) => return Err(Error::Invalid("watch event is not a JSON object")),
            }
        }
        while self.scan < self.buf.len() {
            if self.scan - self.start >= self.max_frame {
                return Err(Error::FrameTooLarge {
                    len: self.scan - self.start + 1,
                    max: self.max_frame,
                });
            }
            let c = self.buf[self.scan];
            self.scan += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if c == b'\\' {
                    self.escaped = true;
                } else if c == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self
                        .depth
                        .checked_sub(1)
                        .ok_or(Error::Invalid("unbalanced JSON"))?;
                    if self.depth == 0 {
                        let range = self.start..self.scan;
                        self.start = self.scan;
                        return Ok(Some(range));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

fn decode_pb_event(frame: &[u8]) -> Result<WatchEvent<'_>> {
    let mut event_type = None;
    let mut object = None;
    let mut r = pb::Reader::new(frame);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => {
                event_type = Some(
                    EventType::from_wire(v.bytes("WatchEvent.type")?)
                        .ok_or(Error::Invalid("watch event type"))?,
                )
            }
            2 => object = pb::find_len_field(v.bytes("WatchEvent.object")?, 1)?,
            _ => {}
        }
    }
    let event_type = event_type.ok_or(Error::Missing("WatchEvent.type"))?;
    let object = object.ok_or(Error::Missing("WatchEvent.object.raw"))?;
    let obj = pb_enveloped_object(object)?;
    Ok(WatchEvent {
        event_type,
        kind: obj.kind,
        object,
        meta: obj.meta,
    })
}

fn decode_json_event(frame: &[u8]) -> Result<WatchEvent<'_>> {
    let doc = json::document(frame)?;
    let mut event_type = None;
    let mut object = None;
    json::for_each_member(frame, doc.start, &mut |key, v| {
        match key {
            b"type" => {
                let name = json::string(frame, v)?;
                event_type = Some(
                    EventType::from_wire(name.as_bytes())
                        .ok_or(Error::Invalid("watch event type"))?,
                );
            }
            b"object" => {
                if frame.get(v.start) != Some(&b'{') {
                    return Err(Error::Invalid("watch event object is not a JSON object"));
                }
                object = Some(v);
            }
            _ => {}
        }
        Ok(())
    })?;
    let event_type = event_type.ok_or(Error::Missing("watch event type"))?;
    let range = object.ok_or(Error::Missing("watch event object"))?;
    let obj = json_object_at(frame, range.clone())?;
    Ok(WatchEvent {
        event_type,
        kind: obj.kind,
        object: &frame[range],
        meta: obj.meta,
    })
}

/// Frames one watch event as the apiserver does. `object` is as in
/// [`WatchEvent::object`]: protobuf, a `k8s\0` envelope, framed as a 4-byte
/// big-endian length + `WatchEvent{type=1, object=2{raw=1}}`; JSON, the
/// object's text, framed as `{"type":..,"object":..}` plus a newline.
pub fn encode_watch_event(encoding: Encoding, event_type: EventType, object: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => {
            let mut raw_ext = Vec::with_capacity(object.len() + 6);
            pb::put_len_field(&mut raw_ext, 1, object);
            let mut msg = Vec::with_capacity(raw_ext.len() + 16);
            pb::put_len_field(&mut msg, 1, event_type.as_str().as_bytes());
            pb::put_len_field(&mut msg, 2, &raw_ext);
            let mut out = Vec::with_capacity(msg.len() + 4);
            out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            out.extend_from_slice(&msg);
            out
        }
        Encoding::Json => {
            let mut out = Vec::with_capacity(object.len() + 32);
            out.extend_from_slice(b"{\"type\":");
            json::write_string(&mut out, event_type.as_str());
            out.extend_from_slice(b",\"object\":");
            out.extend_from_slice(object);
            out.extend_from_slice(b"}\n");
            out
        }
    }
}

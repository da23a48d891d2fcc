//! LIST answers read as they stream, sans-IO: [`ListStream`] turns body bytes
//! that arrive in arbitrary chunks into the list's head and then its items,
//! one at a time, holding at most one item in memory.
//!
//! Both encodings are read exactly as [`parse_list`](super::parse_list)
//! reads them, with one restriction that lets the items go out before the
//! body has ended: whatever the head is made of (protobuf: `typeMeta` and
//! `ListMeta`; JSON: `kind`, `apiVersion` and `metadata`) must come before
//! the items, as the apiserver writes it. Parts of the head that appear
//! after the first item are an error, never buffered.

use std::mem;

use super::meta::{json_list_meta, json_object_meta, json_str, pb_list_meta, pb_object_meta};
use super::{json, pb, Encoding, Error, ListMeta, ObjectMeta, Result};

/// Largest field number protobuf allows.
const MAX_FIELD: u64 = (1 << 29) - 1;

/// One piece of a list, in the order of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The list's type and metadata; comes exactly once, before any item.
    Head {
        /// `apiVersion` of the list (`v1`).
        api_version: String,
        /// `kind` of the list (`PodList`).
        kind: String,
        /// The list's metadata (`resourceVersion`, `continue`, ...).
        meta: ListMeta,
    },
    /// One item, as [`parse_list`](super::parse_list) gives it.
    Item {
        /// The item's parsed metadata.
        meta: ObjectMeta,
        /// The item as received: protobuf, the bare item message; JSON, the
        /// item object's text.
        bytes: Vec<u8>,
    },
}

/// Where a protobuf body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PbState {
    /// Before the `k8s\0` magic.
    Magic,
    /// At a field boundary of the envelope (`runtime.Unknown`).
    Envelope,
    /// At a field boundary inside `Unknown.raw` (the List message), with
    /// `left` bytes of it still to come.
    Raw { left: u64 },
}

/// A top-level member of a JSON list that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Kind,
    ApiVersion,
    Metadata,
    Items,
    Other,
}

/// Where a JSON body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonState {
    /// Before the opening `{`.
    Open,
    /// Expecting a member's key (or, for the first, the closing `}`).
    Key { first: bool },
    /// After a key, expecting `:`.
    Colon(Key),
    /// After `:`, expecting the member's value.
    Value(Key),
    /// After a member, expecting `,` or `}`.
    AfterValue,
    /// Inside `items`, expecting an item (or, for the first, the closing `]`).
    Element { first: bool },
    /// After an item, expecting `,` or `]`.
    AfterElement,
    /// After the closing `}`: only whitespace may follow.
    Closed,
}

/// Progress of the search for the end of the JSON value that starts at the
/// read position, kept between calls so that no byte is looked at twice.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    /// Offset from the read position of the next byte to look at.
    off: usize,
    /// Open `{` and `[`.
    depth: usize,
    in_string: bool,
    escaped: bool,
}

/// A protobuf field's key, and where its value is.
#[derive(Debug, Clone, Copy)]
struct Field {
    number: u32,
    wire: u64,
    /// Bytes of the key, and of the length (wire type 2) or the whole value
    /// (wire type 0).
    head: usize,
    /// Bytes of the value after `head` (0 for wire type 0).
    len: u64,
}

/// Incremental decoder of one LIST answer. Feed body bytes (already
/// de-chunked) with [`push`](Self::push), then take parts with
/// [`next_part`](Self::next_part) until it returns `Ok(None)`; at the end of
/// the body, [`is_complete`](Self::is_complete) tells whether the whole
/// list was seen. Chunk boundaries do not matter.
///
/// Memory is bounded: any value the decoder must hold whole (an item, the
/// list metadata, a JSON key or unknown member, a protobuf `typeMeta`)
/// longer than `max_item` bytes is [`Error::FrameTooLarge`], reported as
/// soon as it is known (protobuf: from the length; JSON: once `max_item`
/// bytes of it have arrived). Other bytes are consumed as they arrive. After
/// an error every call returns it again.
#[derive(Debug, Clone)]
pub struct ListStream {
    encoding: Encoding,
    max_item: usize,
    buf: Vec<u8>,
    /// First unconsumed byte of `buf`.
    pos: usize,
    /// Protobuf: bytes of an ignored field still to be dropped.
    skip: u64,
    pb: PbState,
    json: JsonState,
    scan: Scan,
    api_version: String,
    kind: String,
    meta: ListMeta,
    head_sent: bool,
    /// Protobuf: `Unknown.raw` has begun; JSON: an `items` member has.
    body_seen: bool,
    failed: Option<Error>,
}

impl ListStream {
    /// A decoder for a LIST body in `encoding` whose items (and other whole
    /// values) are at most `max_item` bytes long.
    pub fn new(encoding: Encoding, max_item: usize) -> ListStream {
        ListStream {
            encoding,
            max_item,
            buf: Vec::new(),
            pos: 0,
            skip: 0,
            pb: PbState::Magic,
            json: JsonState::Open,
            scan: Scan::default(),
            api_version: String::new(),
            kind: String::new(),
            meta: ListMeta::default(),
            head_sent: false,
            body_seen: false,
            failed: None,
        }
    }

    /// Appends body bytes (already de-chunked). Bytes pushed after an error
    /// are dropped.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() || data.is_empty() {
            return;
        }
        // Drop the consumed front once it is at least as long as what is
        // left: each byte is moved at most once on average, and the dead
        // front never outweighs the live bytes.
        if self.pos > 0 && self.pos >= self.buf.len() - self.pos {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next part: `Ok(None)` when more bytes are needed, or when the
    /// list is complete (see [`is_complete`](Self::is_complete)).
    pub fn next_part(&mut self) -> Result<Option<Part>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let next = match self.encoding {
            Encoding::Protobuf => self.next_pb(),
            Encoding::Json => self.next_json(),
        };
        if let Err(e) = &next {
            self.failed = Some(e.clone());
        }
        next
    }

    /// Whether the whole list was seen, well-formed, with nothing pushed
    /// left over (meaningful once [`next_part`](Self::next_part) has
    /// returned `Ok(None)`). Protobuf: `Unknown.raw` ended and no envelope
    /// field is half-received; JSON: the closing `}` and any whitespace
    /// after it were read.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none()
            && self.skip == 0
            && self.pos == self.buf.len()
            && match self.encoding {
                Encoding::Protobuf => self.body_seen && self.pb == PbState::Envelope,
                Encoding::Json => self.json == JsonState::Closed,
            }
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.pos += n;
        self.scan = Scan::default();
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    fn head(&mut self) -> Part {
        self.head_sent = true;
        Part::Head {
            api_version: mem::take(&mut self.api_version),
            kind: mem::take(&mut self.kind),
            meta: mem::take(&mut self.meta),
        }
    }

    fn too_large(&self, len: u64) -> Error {
        Error::FrameTooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: self.max_item,
        }
    }

    /// The range in `buf` of the value of length-delimited field `f` at the
    /// read position, once all of it is there.
    fn whole(&self, f: &Field) -> Result<Option<std::ops::Range<usize>>> {
        let len = match usize::try_from(f.len) {
            Ok(len) if len <= self.max_item => len,
            _ => return Err(self.too_large(f.len)),
        };
        if self.rest().len() - f.head < len {
            return Ok(None);
        }
        let start = self.pos + f.head;
        Ok(Some(start..start + len))
    }

    // ------------------------------------------------------------ protobuf

    fn next_pb(&mut self) -> Result<Option<Part>> {
        loop {
            if self.skip > 0 {
                let have = self.rest().len();
                let n = usize::try_from(self.skip).map_or(have, |s| s.min(have));
                self.consume(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            match self.pb {
                PbState::Magic => {
                    let rest = self.rest();
                    if rest.len() < pb::MAGIC.len() {
                        return if pb::MAGIC.starts_with(rest) {
                            Ok(None)
                        } else {
                            Err(Error::Missing("the k8s\\0 protobuf magic"))
                        };
                    }
                    if !rest.starts_with(pb::MAGIC) {
                        return Err(Error::Missing("the k8s\\0 protobuf magic"));
                    }
                    self.consume(pb::MAGIC.len());
                    self.pb = PbState::Envelope;
                }
                PbState::Envelope => {
                    let Some(f) = field_header(self.rest())? else {
                        return Ok(None);
                    };
                    match f.number {
                        1 => {
                            expect_len(&f, "Unknown.typeMeta")?;
                            if self.body_seen {
                                return Err(Error::Invalid("Unknown.typeMeta after Unknown.raw"));
                            }
                            let Some(r) = self.whole(&f)? else {
                                return Ok(None);
                            };
                            let n = r.end - self.pos;
                            let mut tm = pb::Reader::new(&self.buf[r]);
                            let (mut api_version, mut kind) = (None, None);
                            while let Some((field, v)) = tm.next_field()? {
                                match field {
                                    1 => api_version = Some(v.str("TypeMeta.apiVersion")?),
                                    2 => kind = Some(v.str("TypeMeta.kind")?),
                                    _ => {}
                                }
                            }
                            if let Some(a) = api_version {
                                self.api_version = a.to_owned();
                            }
                            if let Some(k) = kind {
                                self.kind = k.to_owned();
                            }
                            self.consume(n);
                        }
                        2 => {
                            expect_len(&f, "Unknown.raw")?;
                            if self.body_seen {
                                return Err(Error::Invalid("a second Unknown.raw"));
                            }
                            self.body_seen = true;
                            self.consume(f.head);
                            self.pb = PbState::Raw { left: f.len };
                        }
                        3 | 4 => {
                            let what = if f.number == 3 {
                                "Unknown.contentEncoding"
                            } else {
                                "Unknown.contentType"
                            };
                            expect_len(&f, what)?;
                            let Some(r) = self.whole(&f)? else {
                                return Ok(None);
                            };
                            let n = r.end - self.pos;
                            std::str::from_utf8(&self.buf[r]).map_err(|_| Error::Invalid(what))?;
                            self.consume(n);
                        }
                        _ => {
                            self.consume(f.head);
                            self.skip = f.len;
                        }
                    }
                }
                PbState::Raw { left } => {
                    if left == 0 {
                        self.pb = PbState::Envelope;
                        if !self.head_sent {
                            return Ok(Some(self.head()));
                        }
                        continue;
                    }
                    let rest = self.rest();
                    let in_raw = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    let Some(f) = field_header(&rest[..in_raw])? else {
                        return if rest.len() as u64 >= left {
                            Err(Error::Invalid(
                                "a List field runs past the end of Unknown.raw",
                            ))
                        } else {
                            Ok(None)
                        };
                    };
                    let total = (f.head as u64).saturating_add(f.len);
                    if total > left {
                        return Err(Error::Invalid(
                            "a List field runs past the end of Unknown.raw",
                        ));
                    }
                    match f.number {
                        1 => {
                            expect_len(&f, "List.metadata")?;
                            if self.head_sent {
                                return Err(Error::Invalid("ListMeta after list items"));
                            }
                            let Some(r) = self.whole(&f)? else {
                                return Ok(None);
                            };
                            let n = r.end - self.pos;
                            self.meta = pb_list_meta(&self.buf[r])?;
                            self.consume(n);
                            self.pb = PbState::Raw { left: left - total };
                        }
                        2 => {
                            expect_len(&f, "List.items")?;
                            if f.len > self.max_item as u64 {
                                return Err(self.too_large(f.len));
                            }
                            if !self.head_sent {
                                return Ok(Some(self.head()));
                            }
                            let Some(r) = self.whole(&f)? else {
                                return Ok(None);
                            };
                            let bytes = self.buf[r].to_vec();
                            let meta = pb_object_meta(&bytes)?;
                            self.consume(f.head + bytes.len());
                            self.pb = PbState::Raw { left: left - total };
                            return Ok(Some(Part::Item { meta, bytes }));
                        }
                        _ => {
                            self.consume(f.head);
                            self.skip = f.len;
                            self.pb = PbState::Raw { left: left - total };
                        }
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- JSON

    /// Consumes whitespace; the next byte, if there is one.
    fn skip_ws(&mut self) -> Option<u8> {
        let n = json::skip_ws(self.rest(), 0);
        self.consume(n);
        self.rest().first().copied()
    }

    /// The length of the JSON value that starts at the read position, once
    /// it has all arrived (a number once the byte after it has). Containers
    /// nested deeper than `max_depth` are an error, as in the whole-body
    /// parser; the value is checked only for its end here.
    fn scan_value(&mut self, max_depth: usize) -> Result<Option<usize>> {
        let b = &self.buf[self.pos..];
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        let s = &mut self.scan;
        while let Some(&c) = b.get(s.off) {
            if scalar && matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']') {
                return Ok(Some(s.off));
            }
            if s.off >= self.max_item {
                return Err(Error::FrameTooLarge {
                    len: s.off + 1,
                    max: self.max_item,
                });
            }
            s.off += 1;
            if scalar {
                continue;
            }
            if s.in_string {
                if s.escaped {
                    s.escaped = false;
                } else if c == b'\\' {
                    s.escaped = true;
                } else if c == b'"' {
                    s.in_string = false;
                    if s.depth == 0 {
                        return Ok(Some(s.off));
                    }
                }
                continue;
            }
            match c {
                b'"' => s.in_string = true,
                b'{' | b'[' => {
                    s.depth += 1;
                    if s.depth > max_depth {
                        return Err(Error::Invalid("JSON nested too deeply"));
                    }
                }
                b'}' | b']' => {
                    s.depth = s
                        .depth
                        .checked_sub(1)
                        .ok_or(Error::Invalid("unbalanced JSON"))?;
                    if s.depth == 0 {
                        return Ok(Some(s.off));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn close(&mut self) -> Result<()> {
        if !self.body_seen {
            return Err(Error::Missing("items"));
        }
        self.json = JsonState::Closed;
        Ok(())
    }

    fn next_json(&mut self) -> Result<Option<Part>> {
        // Nesting the whole-body parser allows (json::MAX_DEPTH counts from
        // the list object): top-level members are one level down, items two.
        const MEMBER_DEPTH: usize = json::MAX_DEPTH - 1;
        const ITEM_DEPTH: usize = json::MAX_DEPTH - 2;
        loop {
            let Some(c) = self.skip_ws() else {
                return Ok(None);
            };
            match self.json {
                JsonState::Open => {
                    if c != b'{' {
                        return Err(Error::Invalid("JSON body is not an object"));
                    }
                    self.consume(1);
                    self.json = JsonState::Key { first: true };
                }
                JsonState::Key { first } => {
                    if first && c == b'}' {
                        self.consume(1);
                        self.close()?;
                        continue;
                    }
                    if c != b'"' {
                        return Err(Error::Invalid("expected a JSON string"));
                    }
                    let Some(end) = self.scan_value(MEMBER_DEPTH)? else {
                        return Ok(None);
                    };
                    let raw = &self.buf[self.pos..self.pos + end];
                    if !matches!(json::string_end(raw, 0), Ok(e) if e == end) {
                        return Err(Error::Invalid("JSON object key"));
                    }
                    let key = match &raw[1..end - 1] {
                        b"kind" => Key::Kind,
                        b"apiVersion" => Key::ApiVersion,
                        b"metadata" => Key::Metadata,
                        b"items" => Key::Items,
                        _ => Key::Other,
                    };
                    self.consume(end);
                    self.json = JsonState::Colon(key);
                }
                JsonState::Colon(key) => {
                    if c != b':' {
                        return Err(Error::Invalid("expected ':' in JSON object"));
                    }
                    self.consume(1);
                    self.json = JsonState::Value(key);
                }
                JsonState::Value(Key::Items) => {
                    if !self.head_sent {
                        return Ok(Some(self.head()));
                    }
                    self.body_seen = true;
                    if c == b'[' {
                        self.consume(1);
                        self.json = JsonState::Element { first: true };
                        continue;
                    }
                    let Some(end) = self.scan_value(MEMBER_DEPTH)? else {
                        return Ok(None);
                    };
                    if &self.buf[self.pos..self.pos + end] != b"null" {
                        return Err(Error::Invalid("expected a JSON array"));
                    }
                    self.consume(end);
                    self.json = JsonState::AfterValue;
                }
                JsonState::Value(key) => {
                    if self.head_sent && key != Key::Other {
                        return Err(Error::Invalid(
                            "list kind, apiVersion or metadata after its items",
                        ));
                    }
                    let Some(end) = self.scan_value(MEMBER_DEPTH)? else {
                        return Ok(None);
                    };
                    let v = &self.buf[self.pos..self.pos + end];
                    if !matches!(json::value_end(v, 0), Ok(e) if e == end) {
                        return Err(Error::Invalid("JSON value"));
                    }
                    match key {
                        Key::Kind => self.kind = json_str(v, 0..end)?,
                        Key::ApiVersion => self.api_version = json_str(v, 0..end)?,
                        Key::Metadata => self.meta = json_list_meta(v, 0..end)?,
                        Key::Items | Key::Other => {}
                    }
                    self.consume(end);
                    self.json = JsonState::AfterValue;
                }
                JsonState::AfterValue => {
                    self.consume(1);
                    match c {
                        b',' => self.json = JsonState::Key { first: false },
                        b'}' => self.close()?,
                        _ => return Err(Error::Invalid("expected ',' or '}' in JSON object")),
                    }
                }
                JsonState::Element { first } => {
                    if first && c == b']' {
                        self.consume(1);
                        self.json = JsonState::AfterValue;
                        continue;
                    }
                    if c != b'{' {
                        return Err(Error::Invalid("list item is not a JSON object"));
                    }
                    let Some(end) = self.scan_value(ITEM_DEPTH)? else {
                        return Ok(None);
                    };
                    let v = &self.buf[self.pos..self.pos + end];
                    let mut meta = ObjectMeta::default();
                    let checked = json::for_each_member(v, 0, &mut |k, mv| {
                        if k == b"metadata" {
                            meta = json_object_meta(v, mv)?;
                        }
                        Ok(())
                    });
                    match checked {
                        Ok(e) if e == end => {}
                        Ok(_) | Err(Error::Truncated) => {
                            return Err(Error::Invalid("JSON list item"));
                        }
                        Err(e) => return Err(e),
                    }
                    let bytes = v.to_vec();
                    self.consume(end);
                    self.json = JsonState::AfterElement;
                    return Ok(Some(Part::Item { meta, bytes }));
                }
                JsonState::AfterElement => {
                    self.consume(1);
                    match c {
                        b',' => self.json = JsonState::Element { first: false },
                        b']' => self.json = JsonState::AfterValue,
                        _ => return Err(Error::Invalid("expected ',' or ']' in JSON array")),
                    }
                }
                JsonState::Closed => return Err(Error::Invalid("bytes after the JSON object")),
            }
        }
    }
}

/// The key (and length, or varint value) of the protobuf field at the start
/// of `b`; `None` if `b` ends first.
fn field_header(b: &[u8]) -> Result<Option<Field>> {
    let mut r = pb::Reader::new(b);
    let more = |e: Error| match e {
        Error::Truncated => Ok(None),
        e => Err(e),
    };
    let key = match r.read_varint() {
        Ok(k) => k,
        Err(e) => return more(e),
    };
    let number = key >> 3;
    if number == 0 || number > MAX_FIELD {
        return Err(Error::Invalid("protobuf field number"));
    }
    let wire = key & 7;
    let len = match wire {
        0 => match r.read_varint() {
            Ok(_) => 0,
            Err(e) => return more(e),
        },
        1 => 8,
        2 => match r.read_varint() {
            Ok(len) => len,
            Err(e) => return more(e),
        },
        5 => 4,
        3 | 4 => return Err(Error::Invalid("protobuf groups are not supported")),
        _ => return Err(Error::Invalid("protobuf wire type")),
    };
    Ok(Some(Field {
        number: number as u32,
        wire,
        head: r.position(),
        len,
    }))
}

/// Requires `f` to be length-delimited, as `what` is.
fn expect_len(f: &Field, what: &'static str) -> Result<()> {
    if f.wire == 2 {
        Ok(())
    } else {
        Err(Error::Invalid(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::{encode_list, parse_list, List};

    const FIXTURES: &[(Encoding, &[u8])] = &[
        (
            Encoding::Json,
            fixture!("list-pods-node-edge-1-rv0-json.response.body.json"),
        ),
        (
            Encoding::Protobuf,
            fixture!("list-pods-node-edge-1-rv0-pb.response.body.bin"),
        ),
        (
            Encoding::Json,
            fixture!("list-configmaps-edge-apps-json.response.body.json"),
        ),
        (
            Encoding::Protobuf,
            fixture!("list-configmaps-edge-apps-pb.response.body.bin"),
        ),
        (
            Encoding::Json,
            fixture!("list-services-rv0-json.response.body.json"),
        ),
        (
            Encoding::Protobuf,
            fixture!("list-services-rv0-pb.response.body.bin"),
        ),
        (
            Encoding::Json,
            fixture!("list-endpointslices-kubeproxy-json.response.body.json"),
        ),
        (
            Encoding::Protobuf,
            fixture!("list-endpointslices-kubeproxy-pb.response.body.bin"),
        ),
        (
            Encoding::Json,
            fixture!("list-nodes-edge-1-rv0-json.response.body.json"),
        ),
        (
            Encoding::Protobuf,
            fixture!("list-nodes-edge-1-rv0-pb.response.body.bin"),
        ),
    ];

    /// Takes every part now available.
    fn drain(s: &mut ListStream, parts: &mut Vec<Part>) -> Result<()> {
        while let Some(p) = s.next_part()? {
            parts.push(p);
        }
        Ok(())
    }

    /// Feeds `body` in pieces of `piece` bytes, taking parts after each.
    fn feed(
        encoding: Encoding,
        body: &[u8],
        piece: usize,
        max_item: usize,
    ) -> (ListStream, Vec<Part>, Result<()>) {
        let mut s = ListStream::new(encoding, max_item);
        let mut parts = Vec::new();
        for chunk in body.chunks(piece.max(1)) {
            s.push(chunk);
            if let Err(e) = drain(&mut s, &mut parts) {
                return (s, parts, Err(e));
            }
        }
        (s, parts, Ok(()))
    }

    /// What `parse_list` gives, as parts.
    fn expected(list: &List<'_>) -> Vec<Part> {
        let mut parts = vec![Part::Head {
            api_version: list.api_version.clone(),
            kind: list.kind.clone(),
            meta: list.meta.clone(),
        }];
        parts.extend(list.items.iter().map(|i| Part::Item {
            meta: i.meta.clone(),
            bytes: i.bytes.to_vec(),
        }));
        parts
    }

    fn largest_item(list: &List<'_>) -> usize {
        list.items.iter().map(|i| i.bytes.len()).max().unwrap_or(0)
    }

    #[test]
    fn fixtures_in_pieces_of_every_size_give_what_parse_list_gives() {
        for &(encoding, body) in FIXTURES {
            let list = parse_list(encoding, body).expect("fixture parses");
            assert!(!list.items.is_empty());
            let want = expected(&list);
            let largest = largest_item(&list);
            let mut sizes: Vec<usize> = (1..=300).collect();
            sizes.push(body.len());
            for piece in sizes {
                let mut s = ListStream::new(encoding, largest);
                let mut parts = Vec::new();
                for chunk in body.chunks(piece) {
                    s.push(chunk);
                    drain(&mut s, &mut parts).expect("a valid list");
                    // One item (plus a header), twice at most for the
                    // consumed front, plus one piece.
                    assert!(
                        s.buf.len() <= 2 * (largest + 64) + piece,
                        "{} bytes buffered",
                        s.buf.len()
                    );
                }
                assert!(s.is_complete(), "piece {piece}");
                assert_eq!(parts, want, "piece {piece}");
                assert!(s.next_part().expect("still fine").is_none());
                assert!(s.is_complete());
            }
        }
    }

    #[test]
    fn a_long_list_streams_through_a_small_buffer() {
        for &(encoding, fixture) in &FIXTURES[..2] {
            let list = parse_list(encoding, fixture).expect("fixture");
            let largest = largest_item(&list);
            let items = list.items.iter().map(|i| i.bytes).cycle().take(3000);
            let body = encode_list(encoding, "v1", "PodList", &list.meta, items);
            assert!(body.len() > 8 << 20);
            let piece = 16 << 10;
            let mut s = ListStream::new(encoding, largest);
            let mut count = 0;
            for chunk in body.chunks(piece) {
                s.push(chunk);
                while let Some(part) = s.next_part().expect("a valid list") {
                    if let Part::Item { bytes, .. } = part {
                        assert_eq!(bytes, list.items[count % list.items.len()].bytes);
                        count += 1;
                    }
                }
                assert!(s.buf.capacity() <= 2 * (2 * (largest + 64) + piece));
            }
            assert!(s.is_complete());
            assert_eq!(count, 3000);
        }
    }

    #[test]
    fn every_truncation_is_incomplete_and_no_error() {
        for &(encoding, body) in FIXTURES {
            let mut s = ListStream::new(encoding, body.len());
            let mut parts = Vec::new();
            for n in 1..=body.len() {
                s.push(&body[n - 1..n]);
                drain(&mut s, &mut parts).expect("a prefix of a valid list is no error");
                let prefix = &body[..n];
                if s.is_complete() {
                    // Only a trailing newline (JSON) or the empty
                    // contentEncoding/contentType (protobuf) may be missing.
                    assert!(
                        body.len() - n <= 4,
                        "complete {} bytes early",
                        body.len() - n
                    );
                    let list = parse_list(encoding, prefix).expect("complete means parseable");
                    assert_eq!(parts, expected(&list));
                } else if n % 97 == 0 || body.len() - n < 8 {
                    assert!(parse_list(encoding, prefix).is_err(), "prefix {n}");
                }
            }
            assert!(s.is_complete());
        }
    }

    #[test]
    fn an_item_longer_than_the_bound_is_an_error_before_it_is_buffered() {
        for &(encoding, body) in FIXTURES {
            let list = parse_list(encoding, body).expect("fixture");
            let largest = largest_item(&list);
            let big = list
                .items
                .iter()
                .find(|i| i.bytes.len() == largest)
                .expect("an item");
            let at = big.bytes.as_ptr() as usize - body.as_ptr() as usize;
            let mut s = ListStream::new(encoding, largest - 1);
            let mut parts = Vec::new();
            let mut failed_at = None;
            for n in 1..=body.len() {
                s.push(&body[n - 1..n]);
                if let Err(e) = drain(&mut s, &mut parts) {
                    assert!(matches!(e, Error::FrameTooLarge { max, .. } if max == largest - 1));
                    failed_at = Some(n);
                    break;
                }
                assert!(s.buf.len() <= largest + 64);
            }
            let n = failed_at.expect("an error");
            // Protobuf announces the length before the item; JSON shows it once
            // max_item + 1 bytes of it are in.
            let limit = match encoding {
                Encoding::Protobuf => at,
                Encoding::Json => at + largest,
            };
            assert!(n <= limit, "error at {n}, item at {at}");
            assert!(!s.is_complete());
            // The error sticks, whatever comes next.
            s.push(&body[n..]);
            assert!(matches!(s.next_part(), Err(Error::FrameTooLarge { .. })));
            assert!(s.next_part().is_err());
            assert!(!s.is_complete());
            // With the bound at the largest item it goes through.
            let (s, parts, end) = feed(encoding, body, 1000, largest);
            end.expect("fits");
            assert!(s.is_complete());
            assert_eq!(parts, expected(&list));
        }
    }

    /// Feeds `body` whole and in single bytes; both must agree.
    fn both_ways(encoding: Encoding, body: &[u8]) -> (Vec<Part>, Result<()>, bool) {
        let (s, parts, end) = feed(encoding, body, body.len(), 1 << 20);
        let (s1, parts1, end1) = feed(encoding, body, 1, 1 << 20);
        assert_eq!(parts, parts1);
        assert_eq!(end.is_ok(), end1.is_ok());
        assert_eq!(s.is_complete(), s1.is_complete());
        (parts, end, s.is_complete())
    }

    /// Agrees with `parse_list` and completes.
    fn same_as_parse_list(encoding: Encoding, body: &[u8]) -> Vec<Part> {
        let list = parse_list(encoding, body).expect("parse_list reads it");
        let (parts, end, complete) = both_ways(encoding, body);
        end.expect("no error");
        assert!(complete);
        assert_eq!(parts, expected(&list));
        parts
    }

    fn pb_list_body(raw: &[u8]) -> Vec<u8> {
        pb::encode_envelope("v1", "PodList", raw)
    }

    #[test]
    fn empty_lists() {
        let meta = ListMeta {
            resource_version: "42".into(),
            continue_token: String::new(),
            remaining_item_count: None,
        };
        for encoding in [Encoding::Protobuf, Encoding::Json] {
            let body = encode_list(encoding, "v1", "PodList", &meta, Vec::<Vec<u8>>::new());
            let parts = same_as_parse_list(encoding, &body);
            assert_eq!(
                parts,
                vec![Part::Head {
                    api_version: "v1".into(),
                    kind: "PodList".into(),
                    meta: meta.clone(),
                }]
            );
        }
        for body in [
            &br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"42"},"items":null}"#[..],
            b" {\n \"kind\" : \"PodList\" ,\t\"apiVersion\":\"v1\",\"metadata\" : {\"resourceVersion\":\"42\"} , \"items\" : null }\r\n ",
            b"{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"42\"},\"items\":[ ]}",
            b"{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"42\"},\"items\":[]}\n",
        ] {
            let parts = same_as_parse_list(Encoding::Json, body);
            assert_eq!(parts.len(), 1);
            assert!(matches!(&parts[0], Part::Head { kind, meta, .. } if kind == "PodList" && meta.resource_version == "42"));
        }
        // Without metadata, or even without a type: what parse_list says.
        same_as_parse_list(Encoding::Json, br#"{"items":[]}"#);
        same_as_parse_list(
            Encoding::Json,
            br#"{"kind":null,"metadata":null,"items":null}"#,
        );
        same_as_parse_list(Encoding::Protobuf, &pb_list_body(b""));
        // No items member at all is not a list.
        for body in [&b"{}"[..], b"{\"kind\":\"PodList\",\"metadata\":{}}"] {
            let (_, end, complete) = both_ways(Encoding::Json, body);
            assert_eq!(end, Err(Error::Missing("items")));
            assert!(!complete);
        }
        // Protobuf without raw never completes.
        let mut no_raw = pb::MAGIC.to_vec();
        pb::put_len_field(&mut no_raw, 3, b"");
        let (parts, end, complete) = both_ways(Encoding::Protobuf, &no_raw);
        assert!(parts.is_empty() && end.is_ok() && !complete);
    }

    #[test]
    fn whitespace_unknown_members_and_fields_are_read_as_parse_list_does() {
        same_as_parse_list(
            Encoding::Json,
            b"{ \"kind\" : \"PodList\", \"x\" : [1, {\"a\": [true, false, null]}, -2.5e3, \"]}\\\"\"],\n\
              \"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"7\",\"continue\":\"c\",\"remainingItemCount\":3},\n\
              \"items\" : [ {\"metadata\":{\"name\":\"a\",\"labels\":{\"k\":\"v\"}}} ,\n{\"metadata\":{\"name\":\"b]}\"}} ] ,\
              \"y\": 12 , \"z\":\"}\" }\n\n",
        );
        // Two items members: parse_list takes both.
        let parts = same_as_parse_list(
            Encoding::Json,
            br#"{"kind":"L","items":[{"metadata":{"name":"a"}}],"items":[{"metadata":{"name":"b"}}]}"#,
        );
        assert_eq!(parts.len(), 3);
        // Protobuf: unknown envelope and List fields of every wire type,
        // contentEncoding/contentType before and after raw.
        let mut meta = Vec::new();
        pb::put_len_field(&mut meta, 2, b"99");
        let mut item = Vec::new();
        pb::put_len_field(&mut item, 1, &{
            let mut m = Vec::new();
            pb::put_len_field(&mut m, 1, b"pod-a");
            m
        });
        let mut raw = Vec::new();
        pb::put_varint_field(&mut raw, 7, 300);
        pb::put_len_field(&mut raw, 1, &meta);
        pb::put_len_field(&mut raw, 9, &[0xff; 300]);
        pb::put_len_field(&mut raw, 2, &item);
        raw.extend_from_slice(&[8 << 3 | 1, 1, 2, 3, 4, 5, 6, 7, 8, 8 << 3 | 5, 1, 2, 3, 4]);
        pb::put_len_field(&mut raw, 2, &item);
        let mut body = pb::MAGIC.to_vec();
        pb::put_len_field(&mut body, 3, b"");
        pb::put_len_field(&mut body, 1, &{
            let mut tm = Vec::new();
            pb::put_len_field(&mut tm, 1, b"v1");
            pb::put_len_field(&mut tm, 2, b"PodList");
            tm
        });
        pb::put_varint_field(&mut body, 6, 1);
        pb::put_len_field(&mut body, 2, &raw);
        pb::put_len_field(&mut body, 9, &[0u8; 1000]);
        pb::put_len_field(&mut body, 4, b"");
        let parts = same_as_parse_list(Encoding::Protobuf, &body);
        assert_eq!(parts.len(), 3);
        assert!(matches!(&parts[0], Part::Head { meta, .. } if meta.resource_version == "99"));
        assert!(matches!(&parts[1], Part::Item { meta, .. } if meta.name == "pod-a"));
    }

    #[test]
    fn head_parts_after_the_items_are_an_error() {
        for body in [
            &br#"{"kind":"PodList","items":[{"metadata":{}}],"metadata":{"resourceVersion":"1"}}"#
                [..],
            br#"{"items":[],"kind":"PodList"}"#,
            br#"{"items":null,"apiVersion":"v1"}"#,
        ] {
            let (parts, end, complete) = both_ways(Encoding::Json, body);
            assert!(matches!(parts.first(), Some(Part::Head { .. })));
            assert!(
                end.is_err() && !complete,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // ListMeta after an item.
        let mut raw = Vec::new();
        pb::put_len_field(&mut raw, 2, b"");
        pb::put_len_field(&mut raw, 1, b"");
        let (parts, end, _) = both_ways(Encoding::Protobuf, &pb_list_body(&raw));
        assert_eq!(parts.len(), 2);
        assert_eq!(end, Err(Error::Invalid("ListMeta after list items")));
        // typeMeta after raw, or a second raw.
        let mut body = pb::MAGIC.to_vec();
        pb::put_len_field(&mut body, 2, b"");
        pb::put_len_field(&mut body, 1, b"");
        let (parts, end, _) = both_ways(Encoding::Protobuf, &body);
        assert_eq!(parts.len(), 1);
        assert!(end.is_err());
        let mut body = pb_list_body(b"");
        pb::put_len_field(&mut body, 2, b"");
        assert!(both_ways(Encoding::Protobuf, &body).1.is_err());
    }

    #[test]
    fn a_length_past_the_end_of_raw_is_an_error_at_once() {
        // raw of 10 bytes announcing an item of 50: no need to wait for it.
        let mut raw = vec![2 << 3 | 2, 50];
        raw.extend_from_slice(&[0; 8]);
        let body = pb_list_body(&raw);
        let head_len = body.len() - raw.len() - 4 + 2;
        let mut s = ListStream::new(Encoding::Protobuf, 1 << 20);
        s.push(&body[..head_len]);
        assert!(matches!(s.next_part(), Err(Error::Invalid(_))));
        // Likewise a field key cut by the end of raw.
        let body = pb_list_body(&[2 << 3 | 2]);
        let (_, end, complete) = both_ways(Encoding::Protobuf, &body);
        assert!(end.is_err() && !complete);
        let body = pb_list_body(&[0x80]);
        assert!(both_ways(Encoding::Protobuf, &body).1.is_err());
    }

    #[test]
    fn trailing_bytes() {
        let (encoding, body) = FIXTURES[2];
        for tail in [&b"x"[..], b" \n{}", b"]", b"\0"] {
            let mut b = body.to_vec();
            b.extend_from_slice(tail);
            let (_, end, complete) = both_ways(encoding, &b);
            assert_eq!(end, Err(Error::Invalid("bytes after the JSON object")));
            assert!(!complete);
        }
        let mut b = body.to_vec();
        b.extend_from_slice(b" \t\r\n\n");
        same_as_parse_list(encoding, &b);
        // Protobuf: after raw, envelope fields are fine; garbage is not.
        let (encoding, body) = FIXTURES[3];
        let mut b = body.to_vec();
        pb::put_len_field(&mut b, 4, b"application/vnd.kubernetes.protobuf");
        same_as_parse_list(encoding, &b);
        let mut b = body.to_vec();
        b.push(0);
        assert!(both_ways(encoding, &b).1.is_err());
        let mut b = body.to_vec();
        b.push(3 << 3 | 2); // contentEncoding's key, its length not yet in
        let (_, end, complete) = both_ways(encoding, &b);
        assert!(end.is_ok() && !complete);
    }

    #[test]
    fn errors_stick() {
        let mut s = ListStream::new(Encoding::Json, 1 << 10);
        s.push(b"[1]");
        let e = s.next_part().expect_err("not an object");
        let (_, body) = FIXTURES[4];
        s.push(body);
        assert_eq!(s.next_part().expect_err("still"), e);
        assert!(!s.is_complete());
        assert!(s.buf.len() <= 3);
        let mut s = ListStream::new(Encoding::Protobuf, 1 << 10);
        s.push(b"k8s\x01");
        assert!(s.next_part().is_err());
        assert!(s.next_part().is_err());
        let mut s = ListStream::new(Encoding::Protobuf, 1 << 10);
        s.push(b"k8");
        assert_eq!(s.next_part(), Ok(None));
        s.push(b"x");
        assert_eq!(
            s.next_part(),
            Err(Error::Missing("the k8s\\0 protobuf magic"))
        );
    }

    #[test]
    fn json_nested_as_deeply_as_parse_list_allows() {
        for depth in [100, 124, 125, 126, 127, 128, 200] {
            let mut body = b"{\"items\":[".to_vec();
            body.extend(std::iter::repeat_n(b'[', depth));
            body.extend(std::iter::repeat_n(b']', depth));
            body.extend_from_slice(b"]}");
            let mut item_body = b"{\"items\":[{\"a\":".to_vec();
            item_body.extend(std::iter::repeat_n(b'[', depth));
            item_body.extend(std::iter::repeat_n(b']', depth));
            item_body.extend_from_slice(b"}]}");
            let mut member_body = b"{\"a\":".to_vec();
            member_body.extend(std::iter::repeat_n(b'[', depth));
            member_body.extend(std::iter::repeat_n(b']', depth));
            member_body.extend_from_slice(b",\"items\":[]}");
            for body in [body, item_body, member_body] {
                let parsed = parse_list(Encoding::Json, &body).map(|l| expected(&l));
                let (parts, end, complete) = both_ways(Encoding::Json, &body);
                match parsed {
                    Ok(want) => {
                        assert!(end.is_ok() && complete, "depth {depth}");
                        assert_eq!(parts, want);
                    }
                    Err(_) => assert!(end.is_err() && !complete, "depth {depth}"),
                }
            }
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Feeds `body` in random pieces; must not panic, and a list it calls
    /// complete is one parse_list reads the same.
    fn poke(rng: &mut XorShift, encoding: Encoding, body: &[u8], max_item: usize) {
        let mut s = ListStream::new(encoding, max_item);
        let mut parts = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(512));
            s.push(&rest[..n]);
            rest = &rest[n..];
            if drain(&mut s, &mut parts).is_err() {
                assert!(s.next_part().is_err());
                assert!(!s.is_complete());
                return;
            }
        }
        if s.is_complete() {
            let list = parse_list(encoding, body).expect("complete means parse_list reads it");
            assert_eq!(parts, expected(&list));
        }
        assert!(parts.iter().skip(1).all(|p| matches!(p, Part::Item { .. })));
        assert!(parts.iter().take(1).all(|p| matches!(p, Part::Head { .. })));
    }

    #[test]
    fn corrupted_fixtures_never_panic() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for round in 0..3000 {
            let (encoding, src) = FIXTURES[round % FIXTURES.len()];
            let mut body = src.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(body.len());
                match rng.below(6) {
                    0 => body[at] = rng.next() as u8,
                    1 => body[at] ^= 1 << rng.below(8),
                    2 => body.truncate(at),
                    3 => body.insert(at, rng.next() as u8),
                    4 => {
                        let end = (at + rng.below(64)).min(body.len());
                        body.drain(at..end);
                    }
                    _ => body[at] = b"{}[]\",: \\"[rng.below(9)],
                }
                if body.is_empty() {
                    break;
                }
            }
            let max_item = if round % 7 == 0 { 64 } else { 1 << 20 };
            poke(&mut rng, encoding, &body, max_item);
            // The wrong decoder for the bytes must not panic either.
            let other = match encoding {
                Encoding::Json => Encoding::Protobuf,
                Encoding::Protobuf => Encoding::Json,
            };
            poke(&mut rng, other, &body, max_item);
        }
        for len in 0..64 {
            let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            for encoding in [Encoding::Json, Encoding::Protobuf] {
                poke(&mut rng, encoding, &garbage, 1 << 20);
                let mut framed = b"k8s\0".to_vec();
                framed.extend_from_slice(&garbage);
                poke(&mut rng, encoding, &framed, 1 << 20);
            }
        }
    }
}

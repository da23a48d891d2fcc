//! Objects, lists and Status bodies in either encoding: their metadata is
//! parsed, the object bytes are kept as received, and lists can be framed
//! again from cached item bytes exactly as the apiserver frames them.

use std::ops::Range;

use super::{json, pb, Encoding, Error, Result};

/// The parts of `metadata` (ObjectMeta) a cache needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.labels`, in the order received.
    pub labels: Vec<(String, String)>,
    /// Whether `metadata.deletionTimestamp` is set (a graceful delete is under way).
    pub deletion: bool,
    /// Whether the annotation `k8s.io/initial-events-end` is `"true"`: the
    /// BOOKMARK that ends a streaming list's initial events.
    pub initial_events_end: bool,
}

/// The annotation on the BOOKMARK that ends a streaming list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// The `metadata` (ListMeta) of a list, also carried by `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMeta {
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.continue`: the token for the next page (empty on the last).
    pub continue_token: String,
    /// `metadata.remainingItemCount`, when the server sent it.
    pub remaining_item_count: Option<i64>,
}

/// One list item: its metadata and its bytes exactly as received (protobuf:
/// the item message without envelope; JSON: the item object's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    /// The item's parsed metadata.
    pub meta: ObjectMeta,
    /// The item as received.
    pub bytes: &'a [u8],
}

/// A list response: type, list metadata and items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<'a> {
    /// `apiVersion` of the list (`v1`).
    pub api_version: String,
    /// `kind` of the list (`PodList`).
    pub kind: String,
    /// The list's metadata.
    pub meta: ListMeta,
    /// The items, in order.
    pub items: Vec<Item<'a>>,
}

/// A single object response: its type and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Object {
    /// `apiVersion` (`v1`, `coordination.k8s.io/v1`).
    pub api_version: String,
    /// `kind` (`Pod`). A `Status` body parses with empty `meta`; see [`parse_status`].
    pub kind: String,
    /// The object's metadata.
    pub meta: ObjectMeta,
}

/// A `metav1.Status` (errors, and some write results).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `status`: `Success` or `Failure`.
    pub status: String,
    /// `message`, for humans.
    pub message: String,
    /// `reason` (`Expired`, `NotFound`, ...).
    pub reason: String,
    /// `code`: the HTTP status it stands for (410 for an expired RV).
    pub code: i32,
    /// `metadata`: on a 410 for an expired `continue`, a fresh token.
    pub meta: ListMeta,
}

const STATUS: &str = "Status";

// ---------------------------------------------------------------- protobuf

pub(crate) fn pb_object_meta(object: &[u8]) -> Result<ObjectMeta> {
    let mut meta = ObjectMeta::default();
    let Some(m) = pb::find_len_field(object, 1)? else {
        return Ok(meta);
    };
    let mut r = pb::Reader::new(m);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => meta.name = v.str("ObjectMeta.name")?.to_owned(),
            3 => meta.namespace = v.str("ObjectMeta.namespace")?.to_owned(),
            5 => meta.uid = v.str("ObjectMeta.uid")?.to_owned(),
            6 => meta.resource_version = v.str("ObjectMeta.resourceVersion")?.to_owned(),
            9 => {
                v.bytes("ObjectMeta.deletionTimestamp")?;
                meta.deletion = true;
            }
            11 => {
                let mut entry = pb::Reader::new(v.bytes("ObjectMeta.labels")?);
                let (mut key, mut value) = ("", "");
                while let Some((f, v)) = entry.next_field()? {
                    match f {
                        1 => key = v.str("label key")?,
                        2 => value = v.str("label value")?,
                        _ => {}
                    }
                }
                meta.labels.push((key.to_owned(), value.to_owned()));
            }
            12 => {
                let mut entry = pb::Reader::new(v.bytes("ObjectMeta.annotations")?);
                let (mut key, mut value) = ("", "");
                while let Some((f, v)) = entry.next_field()? {
                    match f {
                        1 => key = v.str("annotation key")?,
                        2 => value = v.str("annotation value")?,
                        _ => {}
                    }
                }
                if key == INITIAL_EVENTS_END && value == "true" {
                    meta.initial_events_end = true;
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

pub(crate) fn pb_list_meta(m: &[u8]) -> Result<ListMeta> {
    let mut meta = ListMeta::default();
    let mut r = pb::Reader::new(m);
    while let Some((field, v)) = r.next_field()? {
        match field {
            2 => meta.resource_version = v.str("ListMeta.resourceVersion")?.to_owned(),
            3 => meta.continue_token = v.str("ListMeta.continue")?.to_owned(),
            4 => meta.remaining_item_count = Some(v.varint("ListMeta.remainingItemCount")? as i64),
            _ => {}
        }
    }
    Ok(meta)
}

/// Metadata of a protobuf object in its `k8s\0` envelope (as in a GET body
/// or a watch event): `(apiVersion, kind, meta)`.
pub(crate) fn pb_enveloped_object(body: &[u8]) -> Result<Object> {
    let env = pb::parse_envelope(body)?;
    let meta = if env.kind == STATUS {
        // Status carries a ListMeta in field 1; still check its framing.
        pb::find_len_field(env.raw, 1)?;
        ObjectMeta::default()
    } else {
        pb_object_meta(env.raw)?
    };
    Ok(Object {
        api_version: env.api_version.to_owned(),
        kind: env.kind.to_owned(),
        meta,
    })
}

fn pb_list(body: &[u8]) -> Result<List<'_>> {
    let env = pb::parse_envelope(body)?;
    let mut list = List {
        api_version: env.api_version.to_owned(),
        kind: env.kind.to_owned(),
        meta: ListMeta::default(),
        items: Vec::new(),
    };
    let mut r = pb::Reader::new(env.raw);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => list.meta = pb_list_meta(v.bytes("List.metadata")?)?,
            2 => {
                let bytes = v.bytes("List.items")?;
                list.items.push(Item {
                    meta: pb_object_meta(bytes)?,
                    bytes,
                });
            }
            _ => {}
        }
    }
    Ok(list)
}

fn pb_status(body: &[u8]) -> Result<Status> {
    let env = pb::parse_envelope(body)?;
    if env.kind != STATUS {
        return Err(Error::Invalid("body is not a Status"));
    }
    let mut st = Status::default();
    let mut r = pb::Reader::new(env.raw);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => st.meta = pb_list_meta(v.bytes("Status.metadata")?)?,
            2 => st.status = v.str("Status.status")?.to_owned(),
            3 => st.message = v.str("Status.message")?.to_owned(),
            4 => st.reason = v.str("Status.reason")?.to_owned(),
            6 => st.code = v.varint("Status.code")? as i32,
            _ => {}
        }
    }
    Ok(st)
}

fn pb_encode_list_meta(meta: &ListMeta) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + meta.resource_version.len() + meta.continue_token.len());
    pb::put_len_field(&mut m, 1, b""); // selfLink, always written (empty since 1.20)
    pb::put_len_field(&mut m, 2, meta.resource_version.as_bytes());
    pb::put_len_field(&mut m, 3, meta.continue_token.as_bytes());
    if let Some(n) = meta.remaining_item_count {
        pb::put_varint_field(&mut m, 4, n as u64);
    }
    m
}

// -------------------------------------------------------------------- JSON

pub(crate) fn json_str(b: &[u8], r: Range<usize>) -> Result<String> {
    if json::is_null(b, &r) {
        Ok(String::new())
    } else {
        json::string(b, r)
    }
}

pub(crate) fn json_object_meta(b: &[u8], r: Range<usize>) -> Result<ObjectMeta> {
    let mut meta = ObjectMeta::default();
    if json::is_null(b, &r) {
        return Ok(meta);
    }
    json::for_each_member(b, r.start, &mut |key, v| {
        match key {
            b"name" => meta.name = json_str(b, v)?,
            b"namespace" => meta.namespace = json_str(b, v)?,
            b"uid" => meta.uid = json_str(b, v)?,
            b"resourceVersion" => meta.resource_version = json_str(b, v)?,
            b"deletionTimestamp" => meta.deletion = !json::is_null(b, &v),
            b"labels" if !json::is_null(b, &v) => {
                json::for_each_member(b, v.start, &mut |k, lv| {
                    meta.labels.push((json::unescape(k)?, json_str(b, lv)?));
                    Ok(())
                })?;
            }
            b"annotations" if !json::is_null(b, &v) => {
                json::for_each_member(b, v.start, &mut |k, av| {
                    if k == INITIAL_EVENTS_END.as_bytes() && json_str(b, av)? == "true" {
                        meta.initial_events_end = true;
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(meta)
}

pub(crate) fn json_list_meta(b: &[u8], r: Range<usize>) -> Result<ListMeta> {
    let mut meta = ListMeta::default();
    if json::is_null(b, &r) {
        return Ok(meta);
    }
    json::for_each_member(b, r.start, &mut |key, v| {
        match key {
            b"resourceVersion" => meta.resource_version = json_str(b, v)?,
            b"continue" => meta.continue_token = json_str(b, v)?,
            b"remainingItemCount" if !json::is_null(b, &v) => {
                meta.remaining_item_count = Some(json::int(b, v)?)
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(meta)
}

/// Metadata of the JSON object at `r` inside `b` (a whole body or a watch
/// event's `object`).
pub(crate) fn json_object_at(b: &[u8], r: Range<usize>) -> Result<Object> {
    let mut obj = Object::default();
    let mut meta_range = None;
    json::for_each_member(b, r.start, &mut |key, v| {
        match key {
            b"kind" => obj.kind = json_str(b, v)?,
            b"apiVersion" => obj.api_version = json_str(b, v)?,
            b"metadata" => meta_range = Some(v),
            _ => {}
        }
        Ok(())
    })?;
    if obj.kind != STATUS {
        if let Some(m) = meta_range {
            obj.meta = json_object_meta(b, m)?;
        }
    }
    Ok(obj)
}

fn json_list(body: &[u8]) -> Result<List<'_>> {
    let doc = json::document(body)?;
    let mut list = List {
        api_version: String::new(),
        kind: String::new(),
        meta: ListMeta::default(),
        items: Vec::new(),
    };
    let mut saw_items = false;
    json::for_each_member(body, doc.start, &mut |key, v| {
        match key {
            b"kind" => list.kind = json_str(body, v)?,
            b"apiVersion" => list.api_version = json_str(body, v)?,
            b"metadata" => list.meta = json_list_meta(body, v)?,
            b"items" => {
                saw_items = true;
                if !json::is_null(body, &v) {
                    json::for_each_element(body, v.start, &mut |item| {
                        let mut meta = ObjectMeta::default();
                        json::for_each_member(body, item.start, &mut |k, mv| {
                            if k == b"metadata" {
                                meta = json_object_meta(body, mv)?;
                            }
                            Ok(())
                        })?;
                        list.items.push(Item {
                            meta,
                            bytes: &body[item],
                        });
                        Ok(())
                    })?;
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    if !saw_items {
        return Err(Error::Missing("items"));
    }
    Ok(list)
}

fn json_status(body: &[u8]) -> Result<Status> {
    let doc = json::document(body)?;
    let mut st = Status::default();
    let mut kind = String::new();
    json::for_each_member(body, doc.start, &mut |key, v| {
        match key {
            b"kind" => kind = json_str(body, v)?,
            b"metadata" => st.meta = json_list_meta(body, v)?,
            b"status" => st.status = json_str(body, v)?,
            b"message" => st.message = json_str(body, v)?,
            b"reason" => st.reason = json_str(body, v)?,
            b"code" => {
                st.code =
                    i32::try_from(json::int(body, v)?).map_err(|_| Error::Invalid("Status.code"))?
            }
            _ => {}
        }
        Ok(())
    })?;
    if kind != STATUS {
        return Err(Error::Invalid("body is not a Status"));
    }
    Ok(st)
}

fn json_encode_list_meta(out: &mut Vec<u8>, meta: &ListMeta) {
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    if !meta.resource_version.is_empty() {
        sep(out);
        out.extend_from_slice(b"\"resourceVersion\":");
        json::write_string(out, &meta.resource_version);
    }
    if !meta.continue_token.is_empty() {
        sep(out);
        out.extend_from_slice(b"\"continue\":");
        json::write_string(out, &meta.continue_token);
    }
    if let Some(n) = meta.remaining_item_count {
        sep(out);
        out.extend_from_slice(b"\"remainingItemCount\":");
        out.extend_from_slice(n.to_string().as_bytes());
    }
    out.push(b'}');
}

// ------------------------------------------------------------------ public

/// Reads the type and metadata of a single-object body (GET, write
/// responses). Protobuf bodies must carry the `k8s\0` envelope; JSON bodies
/// must be exactly one object.
pub fn parse_object(encoding: Encoding, body: &[u8]) -> Result<Object> {
    match encoding {
        Encoding::Protobuf => pb_enveloped_object(body),
        Encoding::Json => {
            let doc = json::document(body)?;
            json_object_at(body, doc)
        }
    }
}

/// Reads a list body: its type, ListMeta, and each item's metadata and
/// bytes (borrowed from `body`, not copied).
pub fn parse_list(encoding: Encoding, body: &[u8]) -> Result<List<'_>> {
    match encoding {
        Encoding::Protobuf => pb_list(body),
        Encoding::Json => json_list(body),
    }
}

/// Reads a `Status` body (an error response, or the object of a watch
/// `ERROR` event). Any other kind is an error.
pub fn parse_status(encoding: Encoding, body: &[u8]) -> Result<Status> {
    match encoding {
        Encoding::Protobuf => pb_status(body),
        Encoding::Json => json_status(body),
    }
}

/// Frames a list response from item bytes (as in [`Item::bytes`]) the way
/// the apiserver does: protobuf as `k8s\0` envelope around
/// `List{metadata=1, items=2...}`; JSON as compact
/// `{"kind":..,"apiVersion":..,"metadata":{..},"items":[..]}` plus a newline.
pub fn encode_list<I, B>(
    encoding: Encoding,
    api_version: &str,
    kind: &str,
    meta: &ListMeta,
    items: I,
) -> Vec<u8>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let mut list = ListEncoder::new(encoding, api_version, kind, meta, 0);
    for item in items {
        list.push(item.as_ref());
    }
    list.finish().into_vec()
}

/// A list response built item by item, as [`encode_list`] frames it, with
/// each item copied once, straight into the answer: the proxy builds
/// offline answers of thousands of cached objects this way.
///
/// Protobuf needs the list's length before the items; the encoder leaves
/// room for the longest possible head, writes the items after it, and
/// fills in the head at the end, so nothing is moved.
pub struct ListEncoder {
    encoding: Encoding,
    out: Vec<u8>,
    /// Protobuf: what the head is made of, filled in at the end.
    head: Option<PbHead>,
    items: usize,
}

/// The parts of a protobuf list's head.
struct PbHead {
    api_version: String,
    kind: String,
    list_meta: Vec<u8>,
    /// Where the items start in the encoder's buffer.
    room: usize,
}

/// An encoded list: the answer is `buf[start..]`.
#[derive(Debug)]
pub struct Encoded {
    buf: Vec<u8>,
    start: usize,
}

impl Encoded {
    /// The answer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The answer as a vector of its own (moves the bytes if the head was
    /// shorter than the room left for it).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(buf: Vec<u8>) -> Encoded {
        Encoded { buf, start: 0 }
    }
}

impl ListEncoder {
    /// Starts a list of `kind` in `api_version` with `meta`; `size_hint` is
    /// the expected total of the items' bytes.
    pub fn new(
        encoding: Encoding,
        api_version: &str,
        kind: &str,
        meta: &ListMeta,
        size_hint: usize,
    ) -> ListEncoder {
        match encoding {
            Encoding::Protobuf => {
                let list_meta = pb_encode_list_meta(meta);
                // The head with the largest length a varint can carry.
                let room = pb::encode_envelope_head(api_version, kind, usize::MAX).len()
                    + 1
                    + varint_len(list_meta.len() as u64)
                    + list_meta.len();
                let mut out = Vec::with_capacity(room + size_hint + size_hint / 256 + 16);
                out.resize(room, 0);
                ListEncoder {
                    encoding,
                    out,
                    head: Some(PbHead {
                        api_version: api_version.to_owned(),
                        kind: kind.to_owned(),
                        list_meta,
                        room,
                    }),
                    items: 0,
                }
            }
            Encoding::Json => {
                let mut out = Vec::with_capacity(size_hint + size_hint / 256 + 256);
                out.extend_from_slice(b"{\"kind\":");
                json::write_string(&mut out, kind);
                out.extend_from_slice(b",\"apiVersion\":");
                json::write_string(&mut out, api_version);
                out.extend_from_slice(b",\"metadata\":");
                json_encode_list_meta(&mut out, meta);
                out.extend_from_slice(b",\"items\":[");
                ListEncoder {
                    encoding,
                    out,
                    head: None,
                    items: 0,
                }
            }
        }
    }

    /// Appends one item (bytes as in [`Item::bytes`]).
    pub fn push(&mut self, item: &[u8]) {
        match self.encoding {
            Encoding::Protobuf => pb::put_len_field(&mut self.out, 2, item),
            Encoding::Json => {
                if self.items > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(item);
            }
        }
        self.items += 1;
    }

    /// The finished answer.
    pub fn finish(mut self) -> Encoded {
        match self.head.take() {
            Some(PbHead {
                api_version,
                kind,
                list_meta,
                room,
            }) => {
                let raw_len = 1
                    + varint_len(list_meta.len() as u64)
                    + list_meta.len()
                    + (self.out.len() - room);
                let mut head = pb::encode_envelope_head(&api_version, &kind, raw_len);
                pb::put_len_field(&mut head, 1, &list_meta);
                let start = room - head.len();
                self.out[start..room].copy_from_slice(&head);
                pb::encode_envelope_tail(&mut self.out);
                Encoded {
                    buf: self.out,
                    start,
                }
            }
            None => {
                self.out.extend_from_slice(b"]}\n");
                Encoded {
                    buf: self.out,
                    start: 0,
                }
            }
        }
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A BOOKMARK event's object: an empty `kind` carrying only
/// `metadata.resourceVersion` and, at the end of a streaming list's initial
/// events, the annotation `k8s.io/initial-events-end: "true"`. Clients read
/// only the metadata of a bookmark.
pub fn bookmark_object(
    encoding: Encoding,
    api_version: &str,
    kind: &str,
    resource_version: &str,
    initial_events_end: bool,
) -> Vec<u8> {
    const END: &str = INITIAL_EVENTS_END;
    match encoding {
        Encoding::Json => {
            let mut out = Vec::with_capacity(160);
            out.extend_from_slice(b"{\"kind\":");
            json::write_string(&mut out, kind);
            out.extend_from_slice(b",\"apiVersion\":");
            json::write_string(&mut out, api_version);
            out.extend_from_slice(b",\"metadata\":{\"resourceVersion\":");
            json::write_string(&mut out, resource_version);
            out.extend_from_slice(b",\"creationTimestamp\":null");
            if initial_events_end {
                out.extend_from_slice(b",\"annotations\":{\"");
                out.extend_from_slice(END.as_bytes());
                out.extend_from_slice(b"\":\"true\"}");
            }
            out.extend_from_slice(b"}}");
            out
        }
        Encoding::Protobuf => {
            // ObjectMeta{resourceVersion=6, annotations=12 (map entries)}.
            let mut meta = Vec::new();
            pb::put_len_field(&mut meta, 6, resource_version.as_bytes());
            if initial_events_end {
                let mut entry = Vec::new();
                pb::put_len_field(&mut entry, 1, END.as_bytes());
                pb::put_len_field(&mut entry, 2, b"true");
                pb::put_len_field(&mut meta, 12, &entry);
            }
            let mut raw = Vec::new();
            pb::put_len_field(&mut raw, 1, &meta);
            pb::encode_envelope(api_version, kind, &raw)
        }
    }
}

/// A watch event's object in the shape a list holds it: protobuf, the bare
/// message without its `k8s\0` envelope; JSON, the object without its
/// leading `kind` and `apiVersion` (the apiserver leaves both out of list
/// items). Lets a cache keep one shape for objects from lists and watches.
pub fn watch_object_to_item(encoding: Encoding, object: &[u8]) -> Result<Vec<u8>> {
    match encoding {
        Encoding::Protobuf => Ok(pb::parse_envelope(object)?.raw.to_vec()),
        Encoding::Json => {
            let start = json::skip_ws(object, 0);
            let mut out = Vec::with_capacity(object.len());
            out.push(b'{');
            json::for_each_member(object, start, &mut |key, value| {
                if key != b"kind" && key != b"apiVersion" {
                    if out.len() > 1 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(key);
                    out.extend_from_slice(b"\":");
                    out.extend_from_slice(&object[value]);
                }
                Ok(())
            })?;
            out.push(b'}');
            Ok(out)
        }
    }
}

/// The opposite of [`watch_object_to_item`]: a list item framed as a watch
/// event's object of `kind` in `api_version`.
pub fn item_to_watch_object(
    encoding: Encoding,
    api_version: &str,
    kind: &str,
    item: &[u8],
) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => pb::encode_envelope(api_version, kind, item),
        Encoding::Json => {
            let mut out = Vec::with_capacity(item.len() + kind.len() + api_version.len() + 32);
            out.extend_from_slice(b"{\"kind\":");
            json::write_string(&mut out, kind);
            out.extend_from_slice(b",\"apiVersion\":");
            json::write_string(&mut out, api_version);
            let rest = item.strip_prefix(b"{").unwrap_or(item);
            if rest.first() != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            out
        }
    }
}

//! Recording an answer in the cache while it streams to the client. Small
//! answers are buffered and written in one transaction. A list that
//! outgrows the buffer is split into items as it arrives
//! ([`ListStream`]) and written to a staged view in batches, which replaces
//! the client's view whole once the list is complete. Memory stays within
//! the buffer plus one item, whatever the list's size.

use super::offline::{self, RecordError};
use super::token;
use crate::cache::{ListMeta, ObjectRow, Staged, Store, ViewKey};
use crate::kube::list_stream::{ListStream, Part};
use crate::kube::Encoding;
use log::debug;

/// Largest single object (GET, TokenRequest) recorded: etcd keeps objects
/// under 1.5 MiB; JSON may spell one out larger.
const MAX_OBJECT: usize = 4 << 20;

/// Items written to a staged view per transaction, in bytes.
const BATCH: usize = 256 << 10;

/// Records one answer, fed as its body arrives.
pub struct Recorder {
    key: ViewKey,
    encoding: Encoding,
    /// A TokenRequest answer rather than a GET or LIST.
    token: bool,
    /// Bytes buffered before a list is streamed into a staged view.
    buffer: usize,
    state: State,
}

enum State {
    /// Holding the whole answer so far.
    Buffer(Vec<u8>),
    /// Writing a large list into a staged view.
    Stream(Box<Streaming>),
    /// The answer is the view as already cached.
    Unchanged,
    /// Not recording (too large, unparsable, or the cache failed).
    Off,
}

struct Streaming {
    decoder: ListStream,
    staged: Option<Staged>,
    batch: Vec<ObjectRow>,
    batch_bytes: usize,
}

impl Recorder {
    /// Records the answer for `key` in `encoding`; `token` for a
    /// TokenRequest; a list larger than `buffer` bytes is streamed to disk.
    pub fn new(key: ViewKey, encoding: Encoding, token: bool, buffer: usize) -> Recorder {
        Recorder {
            key,
            encoding,
            token,
            buffer,
            state: State::Buffer(Vec::new()),
        }
    }

    /// Takes the next piece of the answer's body (de-chunked).
    pub fn feed(&mut self, store: &mut Store, data: &[u8]) {
        let is_list = !self.token && self.key.name.is_empty();
        let limit = if is_list { self.buffer } else { MAX_OBJECT };
        match &mut self.state {
            State::Buffer(buf) if buf.len() + data.len() <= limit => {
                buf.extend_from_slice(data);
            }
            State::Buffer(buf) if is_list => {
                let mut decoder = ListStream::new(self.encoding, MAX_OBJECT);
                decoder.push(buf);
                decoder.push(data);
                self.state = State::Stream(Box::new(Streaming {
                    decoder,
                    staged: None,
                    batch: Vec::new(),
                    batch_bytes: 0,
                }));
                self.drain(store);
            }
            State::Buffer(_) => {
                debug!("not cached ({}): larger than {MAX_OBJECT} bytes", self.key);
                self.state = State::Off;
            }
            State::Stream(s) => {
                s.decoder.push(data);
                self.drain(store);
            }
            State::Unchanged | State::Off => {}
        }
    }

    /// Writes what the decoder has ready; on any failure drops the staged
    /// view and stops recording.
    fn drain(&mut self, store: &mut Store) {
        if let Err(why) = self.try_drain(store, false) {
            debug!("not cached ({}): {why}", self.key);
            self.stop(store);
        }
    }

    fn try_drain(&mut self, store: &mut Store, last: bool) -> Result<(), String> {
        let State::Stream(s) = &mut self.state else {
            return Ok(());
        };
        while let Some(part) = s.decoder.next_part().map_err(|e| e.to_string())? {
            match part {
                Part::Head {
                    api_version,
                    kind,
                    meta,
                } => {
                    if !meta.continue_token.is_empty() {
                        return Err("one page of a paged list".into());
                    }
                    let rv = &meta.resource_version;
                    let view = store.view(&self.key).map_err(|e| e.to_string())?;
                    if !rv.is_empty()
                        && view.is_some_and(|v| v.list.complete && &v.list.resource_version == rv)
                    {
                        store.touch(&self.key).map_err(|e| e.to_string())?;
                        self.state = State::Unchanged;
                        return Ok(());
                    }
                    let list = ListMeta {
                        resource_version: meta.resource_version,
                        kind,
                        api_version,
                        complete: true,
                    };
                    s.staged = Some(
                        store
                            .stage_view(&self.key, &list)
                            .map_err(|e| e.to_string())?,
                    );
                }
                Part::Item { meta, bytes } => {
                    s.batch_bytes += bytes.len();
                    s.batch.push(ObjectRow {
                        namespace: meta.namespace,
                        name: meta.name,
                        uid: meta.uid,
                        resource_version: meta.resource_version,
                        labels: meta.labels.into_iter().collect(),
                        body: bytes,
                    });
                }
            }
            if s.batch_bytes >= BATCH {
                flush(store, s)?;
            }
        }
        if last {
            flush(store, s)?;
        }
        Ok(())
    }

    /// The answer is complete: writes what is left. Returns whether the
    /// cache changed.
    pub fn finish(mut self, store: &mut Store) -> Result<bool, RecordError> {
        match std::mem::replace(&mut self.state, State::Off) {
            State::Buffer(body) if self.token => {
                token::record(store, &self.key, self.encoding, &body).map(|()| true)
            }
            State::Buffer(body) => offline::record(store, &self.key, self.encoding, &body),
            State::Stream(s) => {
                self.state = State::Stream(s);
                if let Err(why) = self.try_drain(store, true) {
                    self.stop(store);
                    return Err(RecordError::Stream(why));
                }
                let State::Stream(s) = std::mem::replace(&mut self.state, State::Off) else {
                    // The head showed the view unchanged.
                    return Ok(false);
                };
                let complete = s.decoder.is_complete();
                match s.staged {
                    Some(staged) if complete => Ok(store.commit_staged(staged, None)?),
                    Some(staged) => {
                        store.abort_staged(staged)?;
                        Err(RecordError::Partial)
                    }
                    None => Err(RecordError::Partial),
                }
            }
            State::Unchanged => Ok(false),
            State::Off => Ok(false),
        }
    }

    /// The whole answer, while it is held in memory (not streamed).
    pub fn buffered(&self) -> Option<&[u8]> {
        match &self.state {
            State::Buffer(body) => Some(body),
            _ => None,
        }
    }

    /// The answer broke off: drops whatever was staged.
    pub fn abort(mut self, store: &mut Store) {
        self.stop(store);
    }

    fn stop(&mut self, store: &mut Store) {
        if let State::Stream(s) = std::mem::replace(&mut self.state, State::Off) {
            if let Some(staged) = s.staged {
                if let Err(e) = store.abort_staged(staged) {
                    debug!("cache: cannot drop a staged view: {e}");
                }
            }
        }
    }
}

/// Writes the batch to the staged view and keeps the cache under its quota
/// as the list grows.
fn flush(store: &mut Store, s: &mut Streaming) -> Result<(), String> {
    if s.batch.is_empty() {
        return Ok(());
    }
    let Some(staged) = &s.staged else {
        return Err("list items before the list's metadata".into());
    };
    let rows = std::mem::take(&mut s.batch);
    s.batch_bytes = 0;
    let kept = store
        .append_staged(
            staged,
            rows.into_iter().map(Ok::<_, crate::cache::StoreError>),
        )
        .map_err(|e| e.to_string())?;
    if !kept {
        return Err("the list is larger than the cache quota".into());
    }
    store.evict_to_quota().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::request::classify;
    use crate::kube::{self, Encoding};
    use crate::testing::{fixture, temp_store};

    fn items(enc: Encoding, body: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = kube::parse_list(enc, body)
            .expect("list")
            .items
            .iter()
            .map(|i| (i.meta.name.clone(), i.bytes.to_vec()))
            .collect();
        v.sort();
        v
    }

    /// Feeds `body` in `piece`-byte pieces through a recorder whose buffer
    /// is `buffer` bytes.
    fn feed(
        store: &mut Store,
        key: &ViewKey,
        enc: Encoding,
        body: &[u8],
        buffer: usize,
    ) -> Recorder {
        let mut r = Recorder::new(key.clone(), enc, false, buffer);
        for piece in body.chunks(700) {
            r.feed(store, piece);
        }
        r
    }

    #[test]
    fn lists_larger_than_the_buffer_stream_into_the_cache() {
        let (mut store, dir) = temp_store("record", 64 << 20);
        for (enc, file) in [
            (
                Encoding::Protobuf,
                "list-pods-node-edge-1-rv0-pb.response.body.bin",
            ),
            (
                Encoding::Json,
                "list-pods-node-edge-1-rv0-json.response.body.json",
            ),
        ] {
            let accept = match enc {
                Encoding::Protobuf => "application/vnd.kubernetes.protobuf",
                Encoding::Json => "application/json",
            };
            let api = classify(
                "GET",
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
                Some("kubelet/1"),
                Some(accept),
            )
            .expect("classify");
            let key = offline::view_key(&api).expect("a view");
            let body = fixture(file);
            // A buffer far smaller than the list: it is streamed.
            let r = feed(&mut store, &key, enc, &body, 4096);
            assert!(matches!(r.state, State::Stream(_)));
            assert!(r.finish(&mut store).expect("recorded"));
            let back = offline::answer(&mut store, &key, enc, &Default::default())
                .expect("read")
                .expect("cached")
                .into_vec();
            assert_eq!(items(enc, &back), items(enc, &body));
            assert_eq!(
                kube::parse_list(enc, &back).expect("list").meta,
                kube::parse_list(enc, &body).expect("list").meta
            );
            // The same list again: nothing is rewritten.
            let r = feed(&mut store, &key, enc, &body, 4096);
            assert!(matches!(r.state, State::Unchanged));
            assert!(!r.finish(&mut store).expect("unchanged"));

            // A list cut short, or broken off, leaves the cached view as it was.
            store.remove_view(&key).expect("remove");
            let before = store.stats().expect("stats");
            let r = feed(&mut store, &key, enc, &body[..body.len() / 2], 4096);
            assert!(r.finish(&mut store).is_err());
            assert!(offline::answer(&mut store, &key, enc, &Default::default())
                .expect("read")
                .is_none());
            let r = feed(&mut store, &key, enc, &body[..body.len() / 2], 4096);
            r.abort(&mut store);
            let after = store.stats().expect("stats");
            assert_eq!(after.views, before.views, "a staged view was left behind");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Offline answers kept encoded in memory, so that a client asking again
//! while kube-apiserver is away (kubelet re-lists every time a watch
//! fails) is answered without reading and encoding its view once more.
//! Bounded in bytes, least recently used first; emptied on every write to
//! the cache, so an answer kept here is always the view as stored.

use crate::cache::ViewKey;
use crate::kube::Encoded;
use std::collections::VecDeque;
use std::rc::Rc;

/// The kept answers, most recently used last.
pub struct Answers {
    limit: usize,
    bytes: usize,
    entries: VecDeque<(ViewKey, Rc<Encoded>)>,
}

impl Answers {
    /// Keeps at most `limit` bytes of answers (0: none).
    pub fn new(limit: usize) -> Answers {
        Answers {
            limit,
            bytes: 0,
            entries: VecDeque::new(),
        }
    }

    /// The answer kept for `key`, if any.
    pub fn get(&mut self, key: &ViewKey) -> Option<Rc<Encoded>> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let answer = entry.1.clone();
        self.entries.push_back(entry);
        Some(answer)
    }

    /// Keeps `answer` for `key`, dropping the least recently used ones to
    /// make room. An answer larger than the whole limit is not kept.
    pub fn put(&mut self, key: &ViewKey, answer: Rc<Encoded>) {
        let size = answer.as_slice().len();
        if size > self.limit {
            return;
        }
        if let Some(at) = self.entries.iter().position(|(k, _)| k == key) {
            if let Some((_, old)) = self.entries.remove(at) {
                self.bytes -= old.as_slice().len();
            }
        }
        while self.bytes + size > self.limit {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old.as_slice().len(),
                None => break,
            }
        }
        self.bytes += size;
        self.entries.push_back((key.clone(), answer));
    }

    /// Forgets every answer (the cache changed, or memory is short).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ViewKey {
        ViewKey {
            client: "kubelet".into(),
            resource: "v1/pods".into(),
            name: name.into(),
            ..ViewKey::default()
        }
    }

    fn answer(size: usize) -> Rc<Encoded> {
        Rc::new(Encoded::from(vec![7u8; size]))
    }

    #[test]
    fn bounded_least_recently_used_first() {
        let mut a = Answers::new(100);
        a.put(&key("a"), answer(40));
        a.put(&key("b"), answer(40));
        assert!(a.get(&key("a")).is_some());
        // "b" is the least recently used now.
        a.put(&key("c"), answer(40));
        assert!(a.get(&key("b")).is_none());
        assert!(a.get(&key("a")).is_some());
        assert_eq!(a.bytes(), 80);
        // Replacing keeps one entry per key.
        a.put(&key("a"), answer(10));
        assert_eq!(a.bytes(), 50);
        // Too large for the whole limit: not kept, nothing dropped.
        a.put(&key("d"), answer(101));
        assert!(a.get(&key("d")).is_none());
        assert_eq!(a.bytes(), 50);
        a.clear();
        assert!(a.get(&key("a")).is_none());
        assert_eq!(a.bytes(), 0);
        // No room at all.
        let mut none = Answers::new(0);
        none.put(&key("a"), answer(1));
        assert!(none.get(&key("a")).is_none());
    }
}

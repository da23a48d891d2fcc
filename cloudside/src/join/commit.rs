//! Group commit of node records: a burst of joins shares rewrites of the
//! nodes file instead of taking one locked, synced rewrite each, and the
//! records' snapshot is kept in memory between changes instead of parsed
//! once per join.
//!
//! Each caller queues its record and waits. Whoever finds no rewrite in
//! progress takes everything queued so far, writes it in one
//! [`NodeStore::record_issues`], hands every waiter its result and reloads
//! the snapshot; records queued meanwhile go into the next rewrite. With
//! 1,000 joins at once that is a few dozen rewrites, not a thousand.

use super::nodes::{IssueRecord, NodeStore, Nodes};
use super::store::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

/// The nodes file behind a group commit and a snapshot.
pub struct Committer {
    store: NodeStore,
    state: Mutex<State>,
    done: Condvar,
    snapshot: Mutex<Arc<Nodes>>,
}

#[derive(Default)]
struct State {
    next: u64,
    queue: Vec<(u64, IssueRecord)>,
    results: HashMap<u64, Result<(), StoreError>>,
    writing: bool,
}

impl Committer {
    /// Over `store`, with its records loaded now.
    pub fn open(store: NodeStore) -> Result<Committer, StoreError> {
        let snapshot = store.load()?;
        Ok(Committer {
            store,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            snapshot: Mutex::new(Arc::new(snapshot)),
        })
    }

    /// The store.
    pub fn store(&self) -> &NodeStore {
        &self.store
    }

    /// The records as of the last change, reloaded first if another process
    /// (`tether-hub node revoke`) changed the file since. Shared, not
    /// copied: the running hub asks every second.
    pub fn snapshot(&self) -> Result<Arc<Nodes>, StoreError> {
        let mut snap = lock(&self.snapshot);
        if self.store.changed_since(snap.stamp()) {
            *snap = Arc::new(self.store.load()?);
        }
        Ok(snap.clone())
    }

    /// Records one issued certificate, together with whatever else is
    /// queued; blocks until it is on disk (or refused).
    pub fn record(&self, record: IssueRecord, now: SystemTime) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        let ticket = st.next;
        st.next += 1;
        st.queue.push((ticket, record));
        loop {
            if let Some(result) = st.results.remove(&ticket) {
                return result;
            }
            if st.writing {
                st = self
                    .done
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            st.writing = true;
            let batch = std::mem::take(&mut st.queue);
            drop(st);
            let tickets: Vec<u64> = batch.iter().map(|(t, _)| *t).collect();
            let records = batch.into_iter().map(|(_, r)| r).collect();
            let results = match self.store.record_issues(records, now) {
                Ok(results) => results,
                // The file failed for all of them: each gets the reason.
                Err(e) => {
                    let why = e.to_string();
                    tickets
                        .iter()
                        .map(|_| Err(StoreError::Invalid(why.clone())))
                        .collect()
                }
            };
            if let Ok(fresh) = self.store.load() {
                *lock(&self.snapshot) = Arc::new(fresh);
            }
            st = lock(&self.state);
            st.results.extend(tickets.into_iter().zip(results));
            st.writing = false;
            self.done.notify_all();
        }
    }
}

/// A lock whose holder panicked still guards consistent data here (every
/// change is whole before the guard drops).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::nodes::{CertStatus, Issue};
    use crate::join::store::test_dir::TempDir;
    use tether_link::topic::NodeName;

    #[test]
    fn many_threads_share_rewrites_and_every_record_lands() {
        let dir = TempDir::new("commit");
        let c = Arc::new(Committer::open(NodeStore::open(dir.path())).expect("open"));
        let now = SystemTime::now();
        let threads: Vec<_> = (0..64u8)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    c.record(
                        IssueRecord {
                            node: NodeName::new(&format!("edge-{i}")).expect("name"),
                            serial: vec![0x40, i + 1],
                            not_after: now + std::time::Duration::from_secs(60),
                            how: Issue::Joined {
                                token: "abcdef".into(),
                            },
                        },
                        now,
                    )
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("recorded");
        }
        let snap = c.snapshot().expect("snapshot");
        assert_eq!(snap.len(), 64);
        for i in 0..64u8 {
            let node = NodeName::new(&format!("edge-{i}")).expect("name");
            assert_eq!(snap.status(&node, &[0x40, i + 1]), CertStatus::Current);
        }
        // Fewer rewrites than records: the generation counts rewrites.
        let on_disk = NodeStore::open(dir.path()).load().expect("load");
        assert_eq!(on_disk.len(), 64);
    }

    #[test]
    fn a_refused_record_does_not_stop_the_others_in_its_batch() {
        let dir = TempDir::new("commit-refused");
        let c = Committer::open(NodeStore::open(dir.path())).expect("open");
        let now = SystemTime::now();
        let node = NodeName::new("edge-1").expect("name");
        let rec = |serial: u8, how| IssueRecord {
            node: node.clone(),
            serial: vec![serial],
            not_after: now,
            how,
        };
        c.record(rec(1, Issue::Joined { token: "t".into() }), now)
            .expect("joined");
        c.store().revoke(&node, now).expect("revoke");
        // The snapshot sees the other process's revocation.
        assert!(matches!(
            c.snapshot().expect("snap").status(&node, &[1]),
            CertStatus::Revoked { .. }
        ));
        assert!(matches!(
            c.record(rec(2, Issue::Renewed), now),
            Err(StoreError::Revoked { .. })
        ));
        c.record(rec(3, Issue::Joined { token: "t".into() }), now)
            .expect("a join brings it back");
    }
}

//! The cache store: views (one client's cached answer to one request shape)
//! and their objects in one SQLite file, with whole-view LRU eviction under a
//! disk quota and recovery from unusable files.
//!
//! Every write is one transaction, so a reader (or a process restarted after
//! `kill -9` or a power cut) sees a view either as it was before a write or
//! as it is after it, never half-written.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use super::schema::{self, Labels};

/// Memory and disk budgets of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of SQLite page cache (`PRAGMA cache_size`). The process-wide
    /// SQLite heap limits are derived from it (see [`schema::set_heap_limits`]).
    pub page_cache_bytes: u64,
    /// Bytes of object bodies [`Store::evict_to_quota`] keeps the cache under.
    /// Keys, labels and SQLite's own overhead come on top (typically a few
    /// percent); the file shrinks after eviction (incremental auto-vacuum).
    pub max_disk_bytes: u64,
}

/// Which cached answer: one client's request shape. Two clients never share
/// a view, so each sees only what it fetched itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ViewKey {
    /// The client, told apart by its User-Agent.
    pub client: String,
    /// The resource path, e.g. `pods` or `apps/v1/deployments`.
    pub resource: String,
    /// The namespace; `""` for cluster-wide.
    pub namespace: String,
    /// The object's name for a single-object GET; `""` for a list.
    pub name: String,
    /// The label selector as the client sent it.
    pub label_selector: String,
    /// The field selector as the client sent it.
    pub field_selector: String,
    /// The encoding the client asked for: `json` or `protobuf`.
    pub encoding: String,
}

impl fmt::Display for ViewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // For log lines and errors: the request shape only, never content.
        write!(
            f,
            "client={:?} resource={:?} namespace={:?} name={:?} labels={:?} fields={:?} encoding={:?}",
            self.client,
            self.resource,
            self.namespace,
            self.name,
            self.label_selector,
            self.field_selector,
            self.encoding
        )
    }
}

/// The list-level metadata of a view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListMeta {
    /// The list's resourceVersion (after the last applied watch event).
    pub resource_version: String,
    /// The list's kind, e.g. `PodList`.
    pub kind: String,
    /// The list's apiVersion, e.g. `v1`.
    pub api_version: String,
    /// Whether the view holds the whole answer (false: e.g. a LIST cut off
    /// mid-way whose remainder never arrived).
    pub complete: bool,
}

/// A view as stored: its list metadata plus totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewMeta {
    /// List-level metadata.
    pub list: ListMeta,
    /// Number of objects in the view.
    pub objects: u64,
    /// Sum of the objects' body sizes, in bytes.
    pub bytes: u64,
    /// Logical LRU clock of the last use; larger is more recent.
    pub last_used: u64,
}

/// One object of a view: parsed metadata plus the bytes as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRow {
    /// The object's namespace; `""` for cluster-scoped objects.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object's metadata.uid.
    pub uid: String,
    /// The object's metadata.resourceVersion.
    pub resource_version: String,
    /// The object's labels, kept for selector evaluation.
    pub labels: Labels,
    /// The object exactly as received, in the view's encoding.
    pub body: Vec<u8>,
}

/// A watch event to apply to a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The object was created: insert (or overwrite) it.
    Added(ObjectRow),
    /// The object changed: overwrite (or insert) it.
    Modified(ObjectRow),
    /// The object is gone: remove it by namespace and name.
    Deleted(ObjectRow),
}

/// Totals for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Number of views.
    pub views: u64,
    /// Number of objects over all views.
    pub objects: u64,
    /// Bytes of object bodies over all views.
    pub bytes: u64,
    /// Views evicted by this [`Store`] since it was opened.
    pub evictions: u64,
}

/// What went wrong, worded for the operator. Never carries object bodies.
#[derive(Debug)]
pub enum StoreError {
    /// The cache file or its directory could not be created or made private.
    Create {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// SQLite could not open the file for a reason that moving it aside would
    /// not fix (locked by another process, disk full, out of memory, …).
    Open {
        /// The cache file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file was unusable, and could not be moved aside.
    MoveAside {
        /// The cache file.
        path: PathBuf,
        /// Why it was unusable.
        reason: String,
        /// The OS error of the rename.
        source: io::Error,
    },
    /// The file was moved aside and the fresh one is unusable too.
    Unusable {
        /// The cache file.
        path: PathBuf,
        /// Why the fresh file is unusable.
        reason: String,
    },
    /// A read or write failed.
    Db {
        /// What the store was doing, e.g. "replace a view".
        action: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored row is malformed (the file was damaged in a way SQLite's
    /// checks did not see).
    Corrupt {
        /// What is malformed.
        what: &'static str,
    },
    /// A value is too large to store (a label over 4 GiB).
    TooLarge {
        /// What is too large.
        what: &'static str,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Create { path, source } => write!(
                f,
                "cannot create the cache file {}: {source}; check that tether-edge may write \
                 its directory",
                path.display()
            ),
            StoreError::Open { path, source } => write!(
                f,
                "cannot open the cache file {}: {source}; check that no other tether-edge uses \
                 it and that the disk has space",
                path.display()
            ),
            StoreError::MoveAside {
                path,
                reason,
                source,
            } => write!(
                f,
                "the cache file {} is unusable ({reason}) and could not be moved aside: \
                 {source}; delete it by hand",
                path.display()
            ),
            StoreError::Unusable { path, reason } => write!(
                f,
                "a fresh cache file {} is unusable too ({reason}); check the file system",
                path.display()
            ),
            StoreError::Db { action, source } => {
                write!(f, "cache: cannot {action}: {source}")?;
                match source.sqlite_error_code() {
                    Some(ErrorCode::DiskFull) => {
                        write!(f, "; the disk is full: free space or lower the cache quota")
                    }
                    Some(ErrorCode::OutOfMemory) => {
                        write!(
                            f,
                            "; SQLite hit its heap limit: raise the cache memory budget"
                        )
                    }
                    _ => write!(
                        f,
                        "; if this persists, stop tether-edge and delete the cache file \
                         (it is rebuilt from the apiserver)"
                    ),
                }
            }
            StoreError::Corrupt { what } => write!(
                f,
                "the cache file holds a malformed {what}; stop tether-edge and delete the cache \
                 file (it is rebuilt from the apiserver)"
            ),
            StoreError::TooLarge { what } => write!(f, "cache: {what} is too large to store"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Create { source, .. } | StoreError::MoveAside { source, .. } => {
                Some(source)
            }
            StoreError::Open { source, .. } | StoreError::Db { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Adds what the store was doing to a SQLite error.
trait Ctx<T> {
    fn ctx(self, action: &'static str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, action: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { action, source })
    }
}

/// Why one attempt to open the file failed.
enum Attempt {
    /// Moving the file aside and starting empty fixes it.
    Unusable(String),
    /// Moving the file aside would not help (or would lose a good cache).
    Fatal(StoreError),
}

/// The cache: one SQLite connection, used from one thread.
pub struct Store {
    conn: Connection,
    limits: Limits,
    evictions: u64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.conn.path())
            .field("limits", &self.limits)
            .field("evictions", &self.evictions)
            .finish()
    }
}

const VIEW_KEY_WHERE: &str = "client = ?1 AND resource = ?2 AND namespace = ?3 AND name = ?4 \
     AND label_selector = ?5 AND field_selector = ?6 AND encoding = ?7";

const OBJECT_COLUMNS: &str = "namespace, name, uid, resource_version, labels, body";

/// Staged views are stored under a client name no real client has (client
/// names never hold control characters), so no lookup by key finds them.
const STAGING_MARK: char = '\u{1}';

/// A view being written in pieces: a list too large to hold in memory is
/// recorded while it streams through. Readers never see it; it replaces the
/// view it stands for whole, in one transaction, at
/// [`Store::commit_staged`], or is dropped by [`Store::abort_staged`] (or,
/// after a crash, when the cache is next opened).
#[derive(Debug)]
pub struct Staged {
    id: i64,
    key: ViewKey,
}

impl Store {
    /// Opens (or creates) the cache file at `path` with mode 0600.
    ///
    /// A file that is not a database, fails `PRAGMA quick_check`, or has
    /// another schema version is moved aside to `<path>.corrupt-<unix
    /// seconds>` with a warning, and the store starts empty; this happens at
    /// most once per call, so a bad file never causes a crash loop. Errors
    /// that moving aside would not fix (file locked, disk full, directory not
    /// writable) are returned; the caller should then run without a cache.
    pub fn open(path: impl AsRef<Path>, limits: Limits) -> Result<Store, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Create {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let conn = match Self::attempt(path, &limits) {
            Ok(conn) => conn,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Unusable(reason)) => {
                let aside = move_aside(path).map_err(|source| StoreError::MoveAside {
                    path: path.to_path_buf(),
                    reason: reason.clone(),
                    source,
                })?;
                log::warn!(
                    "cache: {} is unusable ({reason}); moved it to {} and starting with an \
                     empty cache",
                    path.display(),
                    Path::new(&aside).display()
                );
                match Self::attempt(path, &limits) {
                    Ok(conn) => conn,
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Unusable(reason)) => {
                        return Err(StoreError::Unusable {
                            path: path.to_path_buf(),
                            reason,
                        })
                    }
                }
            }
        };
        // Views staged when the process died are never committed.
        conn.execute(
            "DELETE FROM views WHERE substr(client, 1, 1) = ?1",
            [STAGING_MARK.to_string()],
        )
        .ctx("drop unfinished views")?;
        Ok(Store {
            conn,
            limits,
            evictions: 0,
        })
    }

    /// Starts writing a new version of the view `key` in pieces, with the
    /// list metadata `list` it will have once committed.
    pub fn stage_view(&mut self, key: &ViewKey, list: &ListMeta) -> Result<Staged, StoreError> {
        const ACTION: &str = "stage a view";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(ACTION)?;
        let tick = next_tick(&tx).ctx(ACTION)?;
        // The tick makes the hidden name unique among staged views.
        let hidden = format!("{STAGING_MARK}{tick}:{}", key.client);
        let id = upsert_view(&tx, &hidden, key, list, false, tick).ctx(ACTION)?;
        tx.commit().ctx(ACTION)?;
        Ok(Staged {
            id,
            key: key.clone(),
        })
    }

    /// Adds `objects` to a staged view, in one transaction. Returns false
    /// (adding nothing) if the staged view is gone: eviction took it because
    /// the cache is too small for it, and the caller should give up on it.
    pub fn append_staged<E, I>(&mut self, staged: &Staged, objects: I) -> Result<bool, E>
    where
        E: From<StoreError>,
        I: IntoIterator<Item = Result<ObjectRow, E>>,
    {
        const ACTION: &str = "add to a staged view";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(ACTION)?;
        if !row_exists(&tx, staged.id).ctx(ACTION)? {
            return Ok(false);
        }
        let (mut count, mut bytes) = (0i64, 0i64);
        for row in objects {
            let row = row?;
            count += 1;
            bytes += i64::try_from(row.body.len())
                .map_err(|_| StoreError::TooLarge { what: "an object" })?;
            upsert_object(&tx, staged.id, &row)?;
        }
        // Running totals, so the quota sees the staged bytes as they grow;
        // made exact at commit.
        tx.execute(
            "UPDATE views SET objects = objects + ?2, bytes = bytes + ?3 WHERE id = ?1",
            params![staged.id, count, bytes],
        )
        .ctx(ACTION)?;
        tx.commit().ctx(ACTION)?;
        Ok(true)
    }

    /// Replaces the view the staged one stands for with it, whole, in one
    /// transaction, with `resource_version` as its list resourceVersion if
    /// given (a streaming list learns it only at its end). Returns false
    /// (changing nothing) if the staged view is gone (evicted). Counts as a
    /// use for LRU.
    pub fn commit_staged(
        &mut self,
        staged: Staged,
        resource_version: Option<&str>,
    ) -> Result<bool, StoreError> {
        const ACTION: &str = "commit a staged view";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(ACTION)?;
        let tick = next_tick(&tx).ctx(ACTION)?;
        if !row_exists(&tx, staged.id).ctx(ACTION)? {
            return Ok(false);
        }
        // ON DELETE CASCADE removes the old view's objects.
        tx.execute(
            &format!("DELETE FROM views WHERE {VIEW_KEY_WHERE}"),
            key_params(&staged.key),
        )
        .ctx(ACTION)?;
        tx.execute(
            "UPDATE views SET client = ?2, complete = 1, last_used = ?3,
                 resource_version = COALESCE(?4, resource_version),
                 (objects, bytes) = (SELECT COUNT(*), COALESCE(SUM(length(body)), 0)
                                     FROM objects WHERE view_id = ?1)
             WHERE id = ?1",
            params![staged.id, staged.key.client, tick, resource_version],
        )
        .ctx(ACTION)?;
        tx.commit().ctx(ACTION)?;
        Ok(true)
    }

    /// Drops a staged view and what was written to it.
    pub fn abort_staged(&mut self, staged: Staged) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM views WHERE id = ?1", [staged.id])
            .ctx("drop a staged view")?;
        Ok(())
    }

    /// One attempt at opening `path`; the connection is closed on failure so
    /// that the file can be moved aside.
    fn attempt(path: &Path, limits: &Limits) -> Result<Connection, Attempt> {
        create_private(path).map_err(|source| {
            Attempt::Fatal(StoreError::Create {
                path: path.to_path_buf(),
                source,
            })
        })?;
        let classify = |e: rusqlite::Error| match e.sqlite_error_code() {
            // Moving a file aside because it is busy or the disk is full
            // would throw away a good cache.
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::PermissionDenied,
            ) => Attempt::Fatal(StoreError::Open {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Attempt::Unusable(e.to_string()),
        };
        let mut conn = Connection::open(path).map_err(classify)?;
        schema::configure(&conn, limits.page_cache_bytes).map_err(classify)?;
        match schema::ensure(&mut conn) {
            Ok(()) => {}
            Err(schema::Unfit::Db(e)) => return Err(classify(e)),
            Err(schema::Unfit::Reason(r)) => return Err(Attempt::Unusable(r)),
        }
        schema::set_heap_limits(&conn, limits.page_cache_bytes).map_err(classify)?;
        // SQLite creates -wal and -shm with the main file's mode already;
        // this makes sure of it, e.g. for sidecars left by an older build.
        for suffix in ["-wal", "-shm"] {
            let side = sidecar(path, suffix);
            match fs::set_permissions(&side, fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Attempt::Fatal(StoreError::Create {
                        path: side.into(),
                        source,
                    }))
                }
            }
        }
        Ok(conn)
    }

    /// Replaces the view `key` wholly, in one transaction: readers see the old
    /// view or the new one, never a mix. If `objects` yields an error (e.g. the
    /// upstream LIST broke off), nothing changes and that error is returned.
    /// Objects with the same namespace and name: the last one wins. Counts as
    /// a use for LRU.
    pub fn replace_view<E, I>(
        &mut self,
        key: &ViewKey,
        list: &ListMeta,
        objects: I,
    ) -> Result<(), E>
    where
        E: From<StoreError>,
        I: IntoIterator<Item = Result<ObjectRow, E>>,
    {
        const ACTION: &str = "replace a view";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(ACTION)?;
        let tick = next_tick(&tx).ctx(ACTION)?;
        let id = upsert_view(&tx, &key.client, key, list, list.complete, tick).ctx(ACTION)?;
        tx.execute("DELETE FROM objects WHERE view_id = ?1", [id])
            .ctx(ACTION)?;
        for row in objects {
            upsert_object(&tx, id, &row?)?;
        }
        // One pass over the new rows keeps the totals exact even when the
        // list held duplicates.
        tx.execute(
            "UPDATE views SET (objects, bytes) =
                 (SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM objects WHERE view_id = ?1)
             WHERE id = ?1",
            [id],
        )
        .ctx(ACTION)?;
        tx.commit().ctx(ACTION)?;
        Ok(())
    }

    /// Applies one watch event to the view `key` and moves its list
    /// resourceVersion from `from_rv` to `to_rv`, in one transaction.
    ///
    /// Only a view at `from_rv` takes the event: a watch's events continue
    /// the state at the resourceVersion the watch started from (or last
    /// delivered), and applied to any other state they would make a view
    /// that claims to be newer than it is (a process killed between
    /// relaying a LIST and recording it leaves the view older than what the
    /// client then watches from). Returns false, changing nothing, if the
    /// view is not cached (evicted) or is at another resourceVersion; the
    /// view then stays as it was, consistent, until a LIST replaces it.
    pub fn apply_event(
        &mut self,
        key: &ViewKey,
        event: &Event,
        from_rv: &str,
        to_rv: &str,
    ) -> Result<bool, StoreError> {
        const ACTION: &str = "apply a watch event";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(ACTION)?;
        let Some(id) = view_id_at(&tx, key, from_rv).ctx(ACTION)? else {
            return Ok(false);
        };
        let obj = match event {
            Event::Added(o) | Event::Modified(o) | Event::Deleted(o) => o,
        };
        let old: Option<i64> = tx
            .query_row(
                "SELECT length(body) FROM objects
                 WHERE view_id = ?1 AND namespace = ?2 AND name = ?3",
                params![id, obj.namespace, obj.name],
                |r| r.get(0),
            )
            .optional()
            .ctx(ACTION)?;
        let (d_objects, d_bytes) = match event {
            Event::Added(o) | Event::Modified(o) => {
                upsert_object(&tx, id, o)?;
                let new = i64::try_from(o.body.len())
                    .map_err(|_| StoreError::TooLarge { what: "an object" })?;
                match old {
                    Some(old) => (0, new - old),
                    None => (1, new),
                }
            }
            Event::Deleted(o) => {
                tx.execute(
                    "DELETE FROM objects WHERE view_id = ?1 AND namespace = ?2 AND name = ?3",
                    params![id, o.namespace, o.name],
                )
                .ctx(ACTION)?;
                match old {
                    Some(old) => (-1, -old),
                    None => (0, 0),
                }
            }
        };
        tx.execute(
            "UPDATE views SET objects = objects + ?2, bytes = bytes + ?3, resource_version = ?4
             WHERE id = ?1",
            params![id, d_objects, d_bytes, to_rv],
        )
        .ctx(ACTION)?;
        tx.commit().ctx(ACTION)?;
        Ok(true)
    }

    /// Moves the view `key` from resourceVersion `from_rv` to `to_rv` with no
    /// change to its objects: a BOOKMARK says nothing happened in between.
    /// Returns false if the view is not at `from_rv` (see
    /// [`Store::apply_event`]).
    pub fn advance(
        &mut self,
        key: &ViewKey,
        from_rv: &str,
        to_rv: &str,
    ) -> Result<bool, StoreError> {
        let [a, b, c, d, e, f, g] = key_params(key);
        let n = self
            .conn
            .prepare_cached(&format!(
                "UPDATE views SET resource_version = ?9
                 WHERE {VIEW_KEY_WHERE} AND resource_version = ?8"
            ))
            .and_then(|mut stmt| stmt.execute(params![a, b, c, d, e, f, g, from_rv, to_rv]))
            .ctx("advance a view")?;
        Ok(n > 0)
    }

    /// The view `key`'s metadata, if it is cached. Does not count as a use.
    pub fn view(&self, key: &ViewKey) -> Result<Option<ViewMeta>, StoreError> {
        read_view(&self.conn, key).ctx("read a view")
    }

    /// Streams the view `key`: `on_meta` once, then `on_object` for every
    /// object in (namespace, name) order, all from one consistent snapshot.
    /// Returns false (calling neither) if the view is not cached. An error
    /// from a callback stops the scan and is returned. Does not count as a
    /// use; call [`Store::touch`].
    pub fn scan<E, M, O>(&self, key: &ViewKey, on_meta: M, mut on_object: O) -> Result<bool, E>
    where
        E: From<StoreError>,
        M: FnOnce(&ViewMeta) -> Result<(), E>,
        O: FnMut(ObjectRow) -> Result<(), E>,
    {
        const ACTION: &str = "read a view";
        // A read transaction: the metadata and every row come from the same
        // snapshot even if a write commits in between.
        let tx = self.conn.unchecked_transaction().ctx(ACTION)?;
        let Some(meta) = read_view(&tx, key).ctx(ACTION)? else {
            return Ok(false);
        };
        on_meta(&meta)?;
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {OBJECT_COLUMNS} FROM objects
                 WHERE view_id = (SELECT id FROM views WHERE {VIEW_KEY_WHERE})
                 ORDER BY namespace, name"
            ))
            .ctx(ACTION)?;
        let mut rows = stmt.query(key_params(key)).ctx(ACTION)?;
        while let Some(row) = rows.next().ctx(ACTION)? {
            on_object(object_from_row(row)?)?;
        }
        Ok(true)
    }

    /// Like [`Store::scan`], but hands on only each object's body, as stored
    /// and without copying it: what an answer from the cache needs, at a
    /// fraction of the cost of whole rows. `start` turns the view's metadata
    /// into a state that `on_body` then gets with every body; the state is
    /// returned, or `None` if the view is not cached.
    pub fn scan_bodies<E, S, M, O>(
        &self,
        key: &ViewKey,
        start: M,
        mut on_body: O,
    ) -> Result<Option<S>, E>
    where
        E: From<StoreError>,
        M: FnOnce(&ViewMeta) -> Result<S, E>,
        O: FnMut(&mut S, &[u8]) -> Result<(), E>,
    {
        const ACTION: &str = "read a view";
        // One read transaction: metadata and rows from the same snapshot.
        let tx = self.conn.unchecked_transaction().ctx(ACTION)?;
        let Some(meta) = read_view(&tx, key).ctx(ACTION)? else {
            return Ok(None);
        };
        let mut state = start(&meta)?;
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT body FROM objects
                 WHERE view_id = (SELECT id FROM views WHERE {VIEW_KEY_WHERE})
                 ORDER BY namespace, name"
            ))
            .ctx(ACTION)?;
        let mut rows = stmt.query(key_params(key)).ctx(ACTION)?;
        while let Some(row) = rows.next().ctx(ACTION)? {
            let body = row
                .get_ref(0)
                .ctx(ACTION)?
                .as_blob()
                .map_err(|_| StoreError::Corrupt {
                    what: "object body",
                })?;
            on_body(&mut state, body)?;
        }
        Ok(Some(state))
    }

    /// All objects of the view `key` in (namespace, name) order; empty if the
    /// view is not cached (use [`Store::view`] to tell). Holds the whole view
    /// in memory: for large lists use [`Store::scan`].
    pub fn objects(&self, key: &ViewKey) -> Result<Vec<ObjectRow>, StoreError> {
        let mut out = Vec::new();
        self.scan(
            key,
            |_| Ok::<(), StoreError>(()),
            |o| {
                out.push(o);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// One object of the view `key`, if both are cached.
    pub fn get_object(
        &self,
        key: &ViewKey,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectRow>, StoreError> {
        const ACTION: &str = "read an object";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {OBJECT_COLUMNS} FROM objects
                 WHERE view_id = (SELECT id FROM views WHERE {VIEW_KEY_WHERE})
                   AND namespace = ?8 AND name = ?9"
            ))
            .ctx(ACTION)?;
        let [a, b, c, d, e, f, g] = key_params(key);
        let mut rows = stmt
            .query(params![a, b, c, d, e, f, g, namespace, name])
            .ctx(ACTION)?;
        match rows.next().ctx(ACTION)? {
            Some(row) => Ok(Some(object_from_row(row)?)),
            None => Ok(None),
        }
    }

    /// Marks the view `key` as just used, for LRU eviction. Returns false if
    /// it is not cached.
    pub fn touch(&mut self, key: &ViewKey) -> Result<bool, StoreError> {
        const ACTION: &str = "mark a view used";
        // One statement, so one implicit transaction. The view that is
        // already the most recently used is left alone: repeated reads of
        // one view then write nothing.
        let changed = self
            .conn
            .prepare_cached(&format!(
                "UPDATE views SET last_used = (SELECT MAX(last_used) + 1 FROM views)
                 WHERE {VIEW_KEY_WHERE}
                   AND last_used < (SELECT MAX(last_used) FROM views)"
            ))
            .and_then(|mut stmt| stmt.execute(key_params(key)))
            .ctx(ACTION)?;
        if changed > 0 {
            return Ok(true);
        }
        Ok(view_id(&self.conn, key).ctx(ACTION)?.is_some())
    }

    /// Removes the view `key` and its objects. Returns false if it was not
    /// cached.
    pub fn remove_view(&mut self, key: &ViewKey) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                &format!("DELETE FROM views WHERE {VIEW_KEY_WHERE}"),
                key_params(key),
            )
            .ctx("remove a view")?;
        Ok(n > 0)
    }

    /// Evicts whole least-recently-used views, in one transaction, until the
    /// cached bytes are at most `max_disk_bytes`, and returns how many. A view
    /// is never partly evicted. Callers run it after writes.
    pub fn evict_to_quota(&mut self) -> Result<u64, StoreError> {
        const ACTION: &str = "evict views";
        let quota = i64::try_from(self.limits.max_disk_bytes).unwrap_or(i64::MAX);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(ACTION)?;
        let mut total: i64 = tx
            .query_row("SELECT COALESCE(SUM(bytes), 0) FROM views", [], |r| {
                r.get(0)
            })
            .ctx(ACTION)?;
        let mut evicted = 0u64;
        while total > quota {
            let oldest: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT id, bytes FROM views ORDER BY last_used, id LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .ctx(ACTION)?;
            let Some((id, bytes)) = oldest else { break };
            // ON DELETE CASCADE removes the objects in the same transaction.
            tx.execute("DELETE FROM views WHERE id = ?1", [id])
                .ctx(ACTION)?;
            total -= bytes;
            evicted += 1;
        }
        tx.commit().ctx(ACTION)?;
        if evicted > 0 {
            self.evictions += evicted;
            // Give the freed pages back to the file system, so that the quota
            // bounds the file and not only the live data.
            self.conn
                .execute_batch("PRAGMA incremental_vacuum")
                .ctx("shrink the cache file")?;
            log::debug!("cache: evicted {evicted} views to stay under the disk quota");
        }
        Ok(evicted)
    }

    /// Totals over all views, and evictions since open.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let (views, objects, bytes): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(objects), 0), COALESCE(SUM(bytes), 0) FROM views",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ctx("read the cache totals")?;
        Ok(Stats {
            views: to_u64(views),
            objects: to_u64(objects),
            bytes: to_u64(bytes),
            evictions: self.evictions,
        })
    }
}

/// Stored counts are never negative; clamp rather than fail if one is.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn key_params(key: &ViewKey) -> [&str; 7] {
    [
        &key.client,
        &key.resource,
        &key.namespace,
        &key.name,
        &key.label_selector,
        &key.field_selector,
        &key.encoding,
    ]
}

/// The next value of the logical LRU clock.
fn next_tick(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(last_used), 0) + 1 FROM views",
        [],
        |r| r.get(0),
    )
}

/// Whether the views row `id` is still there (eviction may have taken it).
fn row_exists(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM views WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// The id of the view `key` if it is at resourceVersion `rv`.
fn view_id_at(conn: &Connection, key: &ViewKey, rv: &str) -> rusqlite::Result<Option<i64>> {
    let [a, b, c, d, e, f, g] = key_params(key);
    conn.query_row(
        &format!("SELECT id FROM views WHERE {VIEW_KEY_WHERE} AND resource_version = ?8"),
        params![a, b, c, d, e, f, g, rv],
        |r| r.get(0),
    )
    .optional()
}

fn view_id(conn: &Connection, key: &ViewKey) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        &format!("SELECT id FROM views WHERE {VIEW_KEY_WHERE}"),
        key_params(key),
        |r| r.get(0),
    )
    .optional()
}

fn read_view(conn: &Connection, key: &ViewKey) -> rusqlite::Result<Option<ViewMeta>> {
    conn.query_row(
        &format!(
            "SELECT resource_version, kind, api_version, complete, objects, bytes, last_used
             FROM views WHERE {VIEW_KEY_WHERE}"
        ),
        key_params(key),
        |r| {
            Ok(ViewMeta {
                list: ListMeta {
                    resource_version: r.get(0)?,
                    kind: r.get(1)?,
                    api_version: r.get(2)?,
                    complete: r.get(3)?,
                },
                objects: to_u64(r.get(4)?),
                bytes: to_u64(r.get(5)?),
                last_used: to_u64(r.get(6)?),
            })
        },
    )
    .optional()
}

/// Writes the views row of `key` under client name `client` (the key's own,
/// or a staged view's hidden one) with `list`'s metadata, `complete`, used
/// at `tick`, and no objects counted yet; replaces the row if it exists.
/// Returns its id.
fn upsert_view(
    conn: &Connection,
    client: &str,
    key: &ViewKey,
    list: &ListMeta,
    complete: bool,
    tick: i64,
) -> rusqlite::Result<i64> {
    conn.query_row(
        "INSERT INTO views (client, resource, namespace, name, label_selector,
             field_selector, encoding, resource_version, kind, api_version, complete,
             last_used, objects, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, 0)
         ON CONFLICT (client, resource, namespace, name, label_selector, field_selector,
             encoding)
         DO UPDATE SET resource_version = excluded.resource_version,
             kind = excluded.kind, api_version = excluded.api_version,
             complete = excluded.complete, last_used = excluded.last_used,
             objects = 0, bytes = 0
         RETURNING id",
        params![
            client,
            key.resource,
            key.namespace,
            key.name,
            key.label_selector,
            key.field_selector,
            key.encoding,
            list.resource_version,
            list.kind,
            list.api_version,
            complete,
            tick,
        ],
        |r| r.get(0),
    )
}

fn upsert_object(conn: &Connection, view_id: i64, o: &ObjectRow) -> Result<(), StoreError> {
    let labels =
        schema::encode_labels(&o.labels).ok_or(StoreError::TooLarge { what: "a label" })?;
    conn.prepare_cached(
        "INSERT INTO objects (view_id, namespace, name, uid, resource_version, labels, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (view_id, namespace, name) DO UPDATE SET uid = excluded.uid,
             resource_version = excluded.resource_version, labels = excluded.labels,
             body = excluded.body",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            view_id,
            o.namespace,
            o.name,
            o.uid,
            o.resource_version,
            labels,
            o.body
        ])
    })
    .ctx("write an object")?;
    Ok(())
}

/// Reads a row selected with [`OBJECT_COLUMNS`].
fn object_from_row(row: &Row<'_>) -> Result<ObjectRow, StoreError> {
    const ACTION: &str = "read an object";
    let blob: Vec<u8> = row.get(4).ctx(ACTION)?;
    Ok(ObjectRow {
        namespace: row.get(0).ctx(ACTION)?,
        name: row.get(1).ctx(ACTION)?,
        uid: row.get(2).ctx(ACTION)?,
        resource_version: row.get(3).ctx(ACTION)?,
        labels: schema::decode_labels(&blob).ok_or(StoreError::Corrupt { what: "label set" })?,
        body: row.get(5).ctx(ACTION)?,
    })
}

/// Creates `path` with mode 0600 if missing (so the mode never depends on
/// the umask), or sets 0600 on an existing file.
fn create_private(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        }
        Err(e) => Err(e),
    }
}

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`, …).
fn sidecar(path: &Path, suffix: &str) -> OsString {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s
}

/// Renames `path` (and its -wal and -shm, which belong to it) to
/// `<path>.corrupt-<unix seconds>[-n]`; returns the new name.
fn move_aside(path: &Path) -> io::Result<OsString> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = sidecar(path, &format!(".corrupt-{secs}"));
    let mut n = 1;
    while Path::new(&aside).exists() {
        aside = sidecar(path, &format!(".corrupt-{secs}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        match fs::rename(sidecar(path, suffix), sidecar(Path::new(&aside), suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    const CHILD_ENV: &str = "TETHER_CACHE_CRASH_CHILD";

    /// A fresh directory under the system temp dir (no tempfile crate).
    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tether-cache-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn limits(max_disk_bytes: u64) -> Limits {
        Limits {
            page_cache_bytes: 1 << 20,
            max_disk_bytes,
        }
    }

    fn key(client: &str, resource: &str) -> ViewKey {
        ViewKey {
            client: client.into(),
            resource: resource.into(),
            encoding: "json".into(),
            ..ViewKey::default()
        }
    }

    fn obj(ns: &str, name: &str, body: &str) -> ObjectRow {
        let mut labels = Labels::new();
        labels.insert("app".into(), name.into());
        ObjectRow {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: "1".into(),
            labels,
            body: body.as_bytes().to_vec(),
        }
    }

    fn meta(rv: &str) -> ListMeta {
        ListMeta {
            resource_version: rv.into(),
            kind: "PodList".into(),
            api_version: "v1".into(),
            complete: true,
        }
    }

    fn replace(store: &mut Store, k: &ViewKey, rv: &str, rows: Vec<ObjectRow>) {
        store
            .replace_view(k, &meta(rv), rows.into_iter().map(Ok::<_, StoreError>))
            .unwrap();
    }

    fn mode(path: impl AsRef<Path>) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect()
    }

    #[test]
    fn staged_views_replace_whole_views_at_commit() {
        let dir = temp_dir("staged");
        let path = dir.join("cache.db");
        let mut s = Store::open(&path, limits(1 << 20)).unwrap();
        let k = key("kube-proxy", "discovery.k8s.io/v1/endpointslices");
        replace(&mut s, &k, "10", vec![obj("a", "old", "{}")]);
        let names = |s: &Store| -> Vec<String> {
            s.objects(&k).unwrap().into_iter().map(|o| o.name).collect()
        };
        // Written in pieces; readers see the old view throughout.
        let staged = s.stage_view(&k, &meta("20")).unwrap();
        for part in [["x1", "x2"], ["x3", "x4"]] {
            let rows = part.map(|n| Ok::<_, StoreError>(obj("a", n, "{\"big\":1}")));
            assert!(s.append_staged(&staged, rows).unwrap());
            assert_eq!(names(&s), ["old"]);
            assert_eq!(s.view(&k).unwrap().unwrap().list.resource_version, "10");
        }
        assert!(s.commit_staged(staged, None).unwrap());
        assert_eq!(names(&s), ["x1", "x2", "x3", "x4"]);
        let v = s.view(&k).unwrap().unwrap();
        assert_eq!(
            (v.list.resource_version.as_str(), v.list.complete),
            ("20", true)
        );
        assert_eq!((v.objects, v.bytes), (4, 4 * 9));
        assert_eq!(s.stats().unwrap().views, 1);

        // Aborted: the old view stays as it was.
        let staged = s.stage_view(&k, &meta("30")).unwrap();
        assert!(s
            .append_staged(&staged, [Ok::<_, StoreError>(obj("a", "y", "{}"))])
            .unwrap());
        s.abort_staged(staged).unwrap();
        assert_eq!(names(&s), ["x1", "x2", "x3", "x4"]);
        assert_eq!(s.stats().unwrap().views, 1);

        // A process that dies mid-list leaves nothing behind after reopening.
        let staged = s.stage_view(&k, &meta("40")).unwrap();
        assert!(s
            .append_staged(&staged, [Ok::<_, StoreError>(obj("a", "z", "{}"))])
            .unwrap());
        drop(staged);
        drop(s);
        let mut s = Store::open(&path, limits(64)).unwrap();
        assert_eq!(names(&s), ["x1", "x2", "x3", "x4"]);
        assert_eq!(s.stats().unwrap().views, 1);

        // Larger than the quota: eviction takes the staged view too, and
        // the writer learns it from the next append.
        let staged = s.stage_view(&k, &meta("50")).unwrap();
        let big = "x".repeat(100);
        assert!(s
            .append_staged(&staged, [Ok::<_, StoreError>(obj("a", "huge", &big))])
            .unwrap());
        s.evict_to_quota().unwrap();
        assert!(!s
            .append_staged(&staged, [Ok::<_, StoreError>(obj("a", "more", "{}"))])
            .unwrap());
        assert!(!s.commit_staged(staged, Some("51")).unwrap());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn views_and_events_round_trip() {
        let dir = temp_dir("round");
        let path = dir.join("cache.db");
        let k = key("kubelet", "pods");
        {
            let mut s = Store::open(&path, limits(1 << 30)).unwrap();
            assert_eq!(s.view(&k).unwrap(), None);
            replace(
                &mut s,
                &k,
                "10",
                vec![
                    obj("b", "x", "bx"),
                    obj("a", "y", "ayy"),
                    obj("a", "x", "a"),
                ],
            );
            let v = s.view(&k).unwrap().unwrap();
            assert_eq!((v.objects, v.bytes), (3, 6));
            assert_eq!(v.list, meta("10"));
            let names: Vec<_> = s
                .objects(&k)
                .unwrap()
                .into_iter()
                .map(|o| format!("{}/{}", o.namespace, o.name))
                .collect();
            assert_eq!(names, ["a/x", "a/y", "b/x"]);
            assert_eq!(
                s.get_object(&k, "a", "y").unwrap(),
                Some(obj("a", "y", "ayy"))
            );
            assert_eq!(s.get_object(&k, "a", "z").unwrap(), None);
            // Other clients never see this view.
            assert_eq!(s.objects(&key("kube-proxy", "pods")).unwrap(), vec![]);

            assert!(s
                .apply_event(&k, &Event::Added(obj("c", "n", "cccc")), "10", "11")
                .unwrap());
            assert!(s
                .apply_event(&k, &Event::Modified(obj("a", "x", "aaaaa")), "11", "12")
                .unwrap());
            assert!(s
                .apply_event(&k, &Event::Deleted(obj("b", "x", "")), "12", "13")
                .unwrap());
            // An event that does not continue the view's state is refused:
            // the view stays as it was.
            assert!(!s
                .apply_event(&k, &Event::Added(obj("a", "gap", "g")), "12", "20")
                .unwrap());
            assert_eq!(s.get_object(&k, "a", "gap").unwrap(), None);
            // A bookmark moves it on only from where it is.
            assert!(!s.advance(&k, "12", "14").unwrap());
            assert!(s.advance(&k, "13", "13").unwrap());
            // Deleting what is not there changes only the resourceVersion.
            assert!(s
                .apply_event(&k, &Event::Deleted(obj("q", "q", "")), "13", "14")
                .unwrap());
            assert!(s
                .apply_event(&k, &Event::Added(obj("a", "b", "c")), "14", "14")
                .unwrap());
            assert!(!s
                .apply_event(
                    &key("nobody", "pods"),
                    &Event::Added(obj("a", "b", "c")),
                    "0",
                    "1"
                )
                .unwrap());
            assert_eq!(s.view(&key("nobody", "pods")).unwrap(), None);

            // A replace whose source breaks off changes nothing.
            let rows = vec![
                Ok(obj("z", "z", "zz")),
                Err(StoreError::Corrupt { what: "test" }),
            ];
            assert!(s.replace_view(&k, &meta("99"), rows).is_err());
            assert_eq!(s.view(&k).unwrap().unwrap().list.resource_version, "14");
        }
        // Everything survives a reopen.
        let s = Store::open(&path, limits(1 << 30)).unwrap();
        let v = s.view(&k).unwrap().unwrap();
        assert_eq!(v.list.resource_version, "14");
        let objs = s.objects(&k).unwrap();
        let got: Vec<_> = objs
            .iter()
            .map(|o| (o.namespace.as_str(), o.name.as_str(), o.body.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "b", &b"c"[..]),
                ("a", "x", b"aaaaa"),
                ("a", "y", b"ayy"),
                ("c", "n", b"cccc")
            ]
        );
        assert_eq!(objs[0].labels.get("app").map(String::as_str), Some("b"));
        assert_eq!((v.objects, v.bytes), (4, 13));
        let st = s.stats().unwrap();
        assert_eq!((st.views, st.objects, st.bytes), (1, 4, 13));
        let av: i64 = s
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(av, 2, "incremental auto-vacuum");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn eviction_removes_whole_least_recently_used_views() {
        let dir = temp_dir("lru");
        let mut s = Store::open(dir.join("cache.db"), limits(1000)).unwrap();
        let keys: Vec<_> = (0..4).map(|i| key("c", &format!("r{i}"))).collect();
        for k in &keys {
            let rows = (0..4)
                .map(|i| obj("ns", &format!("o{i}"), &"x".repeat(100)))
                .collect();
            replace(&mut s, k, "1", rows);
        }
        assert_eq!(s.stats().unwrap().bytes, 1600);
        assert!(s.touch(&keys[0]).unwrap());
        assert!(!s.touch(&key("c", "none")).unwrap());
        assert_eq!(s.evict_to_quota().unwrap(), 2);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.view(k).unwrap().is_some(), i == 0 || i == 3, "view {i}");
        }
        let orphans: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM objects WHERE view_id NOT IN (SELECT id FROM views)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
        assert_eq!(
            s.stats().unwrap(),
            Stats {
                views: 2,
                objects: 8,
                bytes: 800,
                evictions: 2
            }
        );
        assert_eq!(s.evict_to_quota().unwrap(), 0);
        assert!(s.remove_view(&keys[3]).unwrap());
        assert_eq!(s.stats().unwrap().views, 1);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn unusable_files_are_moved_aside() {
        let dir = temp_dir("corrupt");
        let path = dir.join("cache.db");
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        fs::write(&path, &garbage).unwrap();
        let mut s = Store::open(&path, limits(1 << 20)).unwrap();
        let aside = corrupt_files(&dir);
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(fs::read(&aside[0]).unwrap(), garbage);
        let k = key("c", "pods");
        replace(&mut s, &k, "5", vec![obj("a", "b", "c")]);
        assert_eq!(s.objects(&k).unwrap().len(), 1);
        drop(s);

        // A database of another schema version is moved aside too.
        let dir2 = temp_dir("version");
        let path2 = dir2.join("cache.db");
        {
            let c = Connection::open(&path2).unwrap();
            c.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
                .unwrap();
        }
        let s = Store::open(&path2, limits(1 << 20)).unwrap();
        assert_eq!(s.stats().unwrap().views, 0);
        assert_eq!(corrupt_files(&dir2).len(), 1);
        let _ = fs::remove_dir_all(dir);
        let _ = fs::remove_dir_all(dir2);
    }

    #[test]
    fn files_are_private() {
        let dir = temp_dir("mode");
        let path = dir.join("sub").join("cache.db");
        let mut s = Store::open(&path, limits(1 << 20)).unwrap();
        replace(&mut s, &key("c", "pods"), "1", vec![obj("a", "b", "c")]);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        for suffix in ["-wal", "-shm"] {
            let side = sidecar(&path, suffix);
            assert!(Path::new(&side).exists(), "{suffix} exists in WAL mode");
            assert_eq!(mode(&side), 0o600, "{suffix}");
        }
        drop(s);
        // A file left with a looser mode is tightened on open.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let _s = Store::open(&path, limits(1 << 20)).unwrap();
        assert_eq!(mode(&path), 0o600);
        let _ = fs::remove_dir_all(dir);
    }

    const CRASH_VIEWS: u64 = 6;

    fn crash_key(v: u64) -> ViewKey {
        key("writer", &format!("r{v}"))
    }

    /// The object count the writer uses for view `v` at generation `g`.
    fn crash_count(g: u64, v: u64) -> u64 {
        1 + (g + v) % 9
    }

    /// Not a test on its own: when [`crashes_never_tear_a_view`] runs this
    /// binary with `TETHER_CACHE_CRASH_CHILD` set, it writes views until it
    /// is killed. Every object of a view carries the view's generation.
    #[test]
    fn crash_writer_child() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let mut s = Store::open(&path, limits(20_000)).unwrap();
        let mut g = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
            % 1_000_000_000;
        loop {
            for v in 0..CRASH_VIEWS {
                let rows = (0..crash_count(g, v)).map(|i| {
                    let mut labels = Labels::new();
                    labels.insert("gen".into(), g.to_string());
                    Ok::<_, StoreError>(ObjectRow {
                        namespace: "ns".into(),
                        name: format!("o{i:02}"),
                        uid: format!("u{i}"),
                        resource_version: g.to_string(),
                        labels,
                        body: format!("g{g};v{v};i{i};")
                            .repeat(1 + (i as usize % 5) * 20)
                            .into_bytes(),
                    })
                });
                s.replace_view(&crash_key(v), &meta(&g.to_string()), rows)
                    .unwrap();
                if g.is_multiple_of(3) {
                    let mut labels = Labels::new();
                    labels.insert("gen".into(), g.to_string());
                    let ev = Event::Modified(ObjectRow {
                        namespace: "ns".into(),
                        name: "o00".into(),
                        uid: "u0".into(),
                        resource_version: format!("{g}-1"),
                        labels,
                        body: format!("g{g};v{v};event").into_bytes(),
                    });
                    s.apply_event(&crash_key(v), &ev, &g.to_string(), &format!("{g}-1"))
                        .unwrap();
                }
                if v.is_multiple_of(2) {
                    s.touch(&crash_key(v)).unwrap();
                }
            }
            s.evict_to_quota().unwrap();
            g += 1;
        }
    }

    /// Checks every view is one the writer committed, whole.
    fn check_consistent(s: &Store) -> u64 {
        let check: String = s
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let orphans: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM objects WHERE view_id NOT IN (SELECT id FROM views)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
        let mut seen = 0;
        for v in 0..CRASH_VIEWS {
            let k = crash_key(v);
            let Some(m) = s.view(&k).unwrap() else {
                continue; // never written yet, or evicted: both fine
            };
            seen += 1;
            let g: u64 = m
                .list
                .resource_version
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let objs = s.objects(&k).unwrap();
            assert_eq!(m.objects, objs.len() as u64, "view {v}: object count");
            let bytes: usize = objs.iter().map(|o| o.body.len()).sum();
            assert_eq!(m.bytes, bytes as u64, "view {v}: byte total");
            assert_eq!(m.objects, crash_count(g, v), "view {v}: count for gen {g}");
            let prefix = format!("g{g};v{v};");
            for o in &objs {
                assert!(
                    o.body.starts_with(prefix.as_bytes()),
                    "view {v} gen {g}: torn object {}",
                    o.name
                );
                assert_eq!(o.labels.get("gen"), Some(&g.to_string()));
            }
        }
        seen
    }

    #[test]
    fn crashes_never_tear_a_view() {
        let dir = temp_dir("crash");
        let path = dir.join("cache.db");
        let exe = std::env::current_exe().unwrap();
        let rand = std::collections::hash_map::RandomState::new();
        let mut seen = 0;
        for round in 0..10u64 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "cache::store::tests::crash_writer_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let ms = 80 + rand.hash_one(round) % 400;
            std::thread::sleep(Duration::from_millis(ms));
            // Child::kill is SIGKILL on Unix: no destructors, no cleanup.
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert!(status.code().is_none(), "writer died on its own: {status}");
            let s = Store::open(&path, limits(20_000)).unwrap();
            seen += check_consistent(&s);
            assert!(
                corrupt_files(&dir).is_empty(),
                "round {round}: a kill -9 made the file unusable"
            );
        }
        assert!(seen > 0, "the writer never committed a view");
        let _ = fs::remove_dir_all(dir);
    }
}

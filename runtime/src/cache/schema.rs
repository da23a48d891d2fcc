//! The cache's on-disk format: the schema, its version, the connection
//! settings, and the encoding of an object's labels.

use std::collections::BTreeMap;

use rusqlite::Connection;

/// Version of the schema below, kept in `PRAGMA user_version`. A file with
/// any other version is moved aside and rebuilt: the cache can always be
/// refilled from the apiserver, so migrations are not worth their risk.
pub const SCHEMA_VERSION: i64 = 1;

/// The schema. `views` holds one row per cached answer; `objects` its items.
///
/// `views.bytes` and `views.objects` duplicate what the `objects` rows say,
/// so that the quota and LRU eviction never scan objects; every write keeps
/// them equal inside the same transaction. `last_used` is a logical clock
/// (max + 1), not wall time: boards without a real-time clock boot in 1970.
pub const SCHEMA: &str = "
CREATE TABLE views (
    id               INTEGER PRIMARY KEY,
    client           TEXT    NOT NULL,
    resource         TEXT    NOT NULL,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    label_selector   TEXT    NOT NULL,
    field_selector   TEXT    NOT NULL,
    encoding         TEXT    NOT NULL,
    resource_version TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    api_version      TEXT    NOT NULL,
    complete         INTEGER NOT NULL,
    last_used        INTEGER NOT NULL,
    objects          INTEGER NOT NULL,
    bytes            INTEGER NOT NULL,
    UNIQUE (client, resource, namespace, name, label_selector, field_selector, encoding)
);
CREATE INDEX views_last_used ON views (last_used);
CREATE TABLE objects (
    view_id          INTEGER NOT NULL REFERENCES views (id) ON DELETE CASCADE,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    uid              TEXT    NOT NULL,
    resource_version TEXT    NOT NULL,
    labels           BLOB    NOT NULL,
    body             BLOB    NOT NULL,
    PRIMARY KEY (view_id, namespace, name)
);
";

/// Sets the per-connection pragmas. Runs before anything reads the file, so
/// a file that is not a database fails here.
///
/// * `journal_mode=WAL` with `synchronous=NORMAL`: in WAL mode SQLite syncs
///   the WAL at every checkpoint, not at every commit. A power cut can
///   therefore lose the last few commits, but never tears one and never
///   corrupts the file (SQLite's documented guarantee for WAL + NORMAL). For
///   a cache that is the right trade: a lost commit only means a slightly
///   older view, whose own resourceVersion still says how old it is, and the
///   watch resumes from there. A `kill -9` loses nothing that was committed.
/// * `cache_size = -KiB`: bounds the page cache in bytes, not pages.
/// * `journal_size_limit`: the WAL is truncated back after checkpoints, so it
///   does not keep the size of the largest list ever written.
/// * `auto_vacuum=INCREMENTAL`: see [`crate::cache::store::Store::evict_to_quota`].
/// * `foreign_keys`: deleting a view deletes its objects (ON DELETE CASCADE).
pub fn configure(conn: &Connection, page_cache_bytes: u64) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // auto_vacuum only takes effect while the file is empty, before WAL
    // mode writes the header; on an existing cache it is a no-op.
    // Incremental lets eviction hand freed pages back to the file system.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some file systems (no shared memory) refuse WAL; the rollback
        // journal is still crash-safe, only slower, so carry on.
        log::warn!("cache: SQLite refused WAL mode (got {mode}); using a rollback journal");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let kib = i64::try_from(page_cache_bytes / 1024)
        .unwrap_or(i64::MAX)
        .max(64);
    conn.pragma_update(None, "cache_size", -kib)?;
    conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
    Ok(())
}

/// Sets SQLite's heap limits from the page cache budget. They are global to
/// the process, which is fine: the cache is the process's only SQLite user.
///
/// The soft limit (page cache + 4 MiB for schema and statements) makes
/// SQLite give back cache memory before it grows further. The hard limit adds
/// 32 MiB for the largest objects in flight (a blob being read or written is
/// held whole by SQLite); past it an allocation fails with SQLITE_NOMEM,
/// which the store reports as an error (a cache miss to its callers) instead
/// of growing the process until the board's OOM killer steps in.
pub fn set_heap_limits(conn: &Connection, page_cache_bytes: u64) -> rusqlite::Result<()> {
    let soft = page_cache_bytes.saturating_add(4 << 20);
    let hard = soft.saturating_add(32 << 20);
    let soft = i64::try_from(soft).unwrap_or(i64::MAX);
    let hard = i64::try_from(hard).unwrap_or(i64::MAX);
    // These pragmas return the new limit as a row; read it so the statement
    // runs to completion.
    let _: i64 = conn.pragma_update_and_check(None, "soft_heap_limit", soft, |r| r.get(0))?;
    let _: i64 = conn.pragma_update_and_check(None, "hard_heap_limit", hard, |r| r.get(0))?;
    Ok(())
}

/// Why a file cannot hold the cache.
#[derive(Debug)]
pub enum Unfit {
    /// SQLite failed while checking or creating; the caller judges whether
    /// the file or the situation (busy, disk full) is at fault.
    Db(rusqlite::Error),
    /// The file is a database but not a usable cache.
    Reason(String),
}

impl From<rusqlite::Error> for Unfit {
    fn from(e: rusqlite::Error) -> Self {
        Unfit::Db(e)
    }
}

/// Checks the file, and creates the schema if it is empty. The creation is
/// one transaction (`user_version` lives in the file's header and commits
/// with it), so a crash leaves either nothing or all of it.
pub fn ensure(conn: &mut Connection) -> Result<(), Unfit> {
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(Unfit::Reason(format!("quick_check failed: {check}")));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if version != 0 || tables != 0 {
        return Err(Unfit::Reason(format!(
            "schema version {version}, this tether-edge needs {SCHEMA_VERSION}"
        )));
    }
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// An object's labels, in key order.
pub type Labels = BTreeMap<String, String>;

/// Encodes labels as repeated (u32 BE length, key bytes, u32 BE length,
/// value bytes). Length-prefixed rather than delimited, so no label content
/// can break the framing. Returns `None` if a string exceeds 4 GiB.
pub fn encode_labels(labels: &Labels) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (k, v) in labels {
        for s in [k, v] {
            let len = u32::try_from(s.len()).ok()?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Some(out)
}

/// Decodes what [`encode_labels`] wrote; `None` if the blob is malformed.
pub fn decode_labels(mut blob: &[u8]) -> Option<Labels> {
    fn take<'a>(blob: &mut &'a [u8]) -> Option<&'a str> {
        let (len, rest) = blob.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (s, rest) = rest.split_at(len);
        *blob = rest;
        std::str::from_utf8(s).ok()
    }
    let mut labels = Labels::new();
    while !blob.is_empty() {
        let k = take(&mut blob)?;
        let v = take(&mut blob)?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_reject_garbage() {
        let mut l = Labels::new();
        l.insert("app".into(), "web".into());
        l.insert("k8s.io/x".into(), String::new());
        let blob = encode_labels(&l).unwrap();
        assert_eq!(decode_labels(&blob), Some(l));
        assert_eq!(decode_labels(&[]), Some(Labels::new()));
        assert_eq!(decode_labels(&blob[..blob.len() - 1]), None);
        assert_eq!(decode_labels(&[0, 0, 0, 9, b'a']), None);
    }
}

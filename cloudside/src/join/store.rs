//! The join state files (`tokens`, `nodes`) in the hub's state directory:
//! how they are read, locked and replaced, and what goes wrong with them.
//!
//! Both the `tether-hub token`/`node` commands and the running hub change
//! these files, so every change is a read-modify-write under an exclusive
//! lock (`std::fs::File::lock`, an `flock` on `<file>.lock`), and the new
//! text replaces the old one by rename: a temporary file in the same
//! directory, created with mode 0600, written and fsynced, renamed over the
//! old, and the directory fsynced. Readers therefore never take the lock:
//! they see the old file or the new one, never half of one. The directory
//! is created with mode 0700 if missing (it also holds the CA key).

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tether_link::topic::NodeName;

/// What went wrong with a state file, or with what was asked of it.
#[derive(Debug)]
pub enum StoreError {
    /// The file (or its directory, lock or temporary file) could not be
    /// read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("read", "lock", "write", ...).
        doing: &'static str,
        /// The system's error.
        error: io::Error,
    },
    /// A line of the file does not parse (edited by hand, or damaged).
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// An option is out of range (e.g. a token's time to live).
    Invalid(String),
    /// `token delete` of a token that does not exist.
    NoSuchToken {
        /// The token id asked for.
        id: String,
    },
    /// `node revoke` (or a lookup) of a node with no record.
    NoSuchNode {
        /// The node asked for.
        node: NodeName,
    },
    /// A renewal for a revoked node: only a new join with a token brings a
    /// revoked node back.
    Revoked {
        /// The node.
        node: NodeName,
        /// When it was revoked.
        at: SystemTime,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, doing, error } => {
                write!(f, "{}: cannot {doing}: {error}", path.display())
            }
            StoreError::Corrupt { path, line, why } => write!(
                f,
                "{}: line {line}: {why} (the file is written by tether-hub; restore it from a backup or remove that line)",
                path.display()
            ),
            StoreError::Invalid(why) => f.write_str(why),
            StoreError::NoSuchToken { id } => write!(
                f,
                "no token {id:?} (it may have expired and been removed); `tether-hub token list` shows the tokens"
            ),
            StoreError::NoSuchNode { node } => write!(
                f,
                "no node {node} has been issued a certificate by this hub; `tether-hub node list` shows the nodes"
            ),
            StoreError::Revoked { node, at } => write!(
                f,
                "node {node} was revoked at {}: it cannot renew its certificate; only a join with a new token (`tether-hub token create --node {node}`) brings it back",
                rfc3339(*at)
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// One state file and its lock file.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    lock: PathBuf,
    temp: PathBuf,
}

impl StateFile {
    /// The file `name` in `dir` (nothing is touched until used).
    pub fn new(dir: &Path, name: &str) -> StateFile {
        StateFile {
            dir: dir.to_path_buf(),
            path: dir.join(name),
            lock: dir.join(format!("{name}.lock")),
            temp: dir.join(format!(".{name}.tmp")),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text as it is now; a missing file (or directory) reads
    /// as empty: nothing was stored yet.
    pub fn read(&self) -> Result<String, StoreError> {
        match fs::read_to_string(&self.path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(self.io("read", error)),
        }
    }

    /// The file opened for reading, or `None` if there is none yet.
    pub fn open(&self) -> Result<Option<File>, StoreError> {
        match File::open(&self.path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.io("open", error)),
        }
    }

    /// Read-modify-write under the exclusive lock: `change` gets the
    /// current text and returns the new text (`None`: leave the file as it
    /// is) and a result. Concurrent updates, from this process or another,
    /// run one after the other, so none is lost.
    pub fn update<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&str) -> Result<(Option<String>, T), E>,
    ) -> Result<T, E> {
        self.make_dir()?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| StoreError::Io {
                path: self.lock.clone(),
                doing: "open the lock file",
                error: e,
            })?;
        lock.lock().map_err(|e| StoreError::Io {
            path: self.lock.clone(),
            doing: "lock",
            error: e,
        })?;
        let current = self.read()?;
        let (new, out) = change(&current)?;
        if let Some(text) = new {
            self.replace(text.as_bytes())?;
        }
        // Dropping `lock` closes it, which releases the lock.
        drop(lock);
        Ok(out)
    }

    /// Replaces the file by a renamed temporary file of mode 0600. Called
    /// under the lock, so the one temporary name is never shared.
    fn replace(&self, data: &[u8]) -> Result<(), StoreError> {
        let temp_io = |doing, error| StoreError::Io {
            path: self.temp.clone(),
            doing,
            error,
        };
        // A temporary file left by a writer that died.
        match fs::remove_file(&self.temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(temp_io("remove", e)),
        }
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.temp)
            .map_err(|e| temp_io("create", e))
            .and_then(|mut f| {
                f.write_all(data)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| temp_io("write", e))
            })
            .and_then(|()| fs::rename(&self.temp, &self.path).map_err(|e| self.io("replace", e)));
        if let Err(e) = written {
            let _ = fs::remove_file(&self.temp);
            return Err(e);
        }
        // The rename itself is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Io {
                path: self.dir.clone(),
                doing: "sync the directory",
                error: e,
            })
    }

    /// Creates the state directory with mode 0700 if it is missing.
    fn make_dir(&self) -> Result<(), StoreError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let cannot = |error| StoreError::Io {
            path: self.dir.clone(),
            doing: "create the state directory",
            error,
        };
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(cannot)?;
        }
        match DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.dir.is_dir() => Ok(()),
            Err(e) => Err(cannot(e)),
        }
    }

    /// An I/O error about the file itself.
    pub fn io(&self, doing: &'static str, error: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            doing,
            error,
        }
    }

    /// A parse error at `line` (from 1).
    pub fn corrupt(&self, line: usize, why: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            line,
            why: why.into(),
        }
    }
}

/// A time as RFC 3339 UTC with whole seconds (`2026-12-07T10:00:00Z`), for
/// messages and listings.
pub fn rfc3339(t: SystemTime) -> String {
    tether_link::logger::rfc3339(t)
}

/// Seconds since the Unix epoch, as the files store times (earlier times
/// are 0).
pub fn to_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time `secs` seconds after the Unix epoch.
pub fn from_secs(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of lowercase or uppercase hex, or `None`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod test_dir {
    //! A scratch state directory for the join modules' tests.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    static N: AtomicU32 = AtomicU32::new(0);

    /// A fresh, not yet created, path under the temp directory, removed
    /// (with its parent) on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(what: &str) -> TempDir {
            let n = N.fetch_add(1, Ordering::SeqCst);
            TempDir(
                std::env::temp_dir()
                    .join(format!("tether-hub-{what}-{}-{n}", std::process::id()))
                    .join("state"),
            )
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Some(parent) = self.0.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_dir::TempDir;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn update_creates_a_private_directory_and_file_and_leaves_no_temp_file() {
        let tmp = TempDir::new("store");
        let f = StateFile::new(tmp.path(), "things");
        assert_eq!(f.read().expect("read"), "", "missing reads as empty");
        f.update(|old| Ok::<_, StoreError>((Some(format!("{old}one\n")), ())))
            .expect("update");
        f.update(|old| Ok::<_, StoreError>((Some(format!("{old}two\n")), ())))
            .expect("update");
        assert_eq!(f.read().expect("read"), "one\ntwo\n");
        assert_eq!(mode(tmp.path()), 0o700);
        assert_eq!(mode(f.path()), 0o600);
        assert_eq!(mode(&tmp.path().join("things.lock")), 0o600);
        let mut names: Vec<String> = fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["things", "things.lock"]);
    }

    #[test]
    fn a_failed_change_leaves_the_file_alone() {
        let tmp = TempDir::new("store");
        let f = StateFile::new(tmp.path(), "things");
        f.update(|_| Ok::<_, StoreError>((Some("kept\n".into()), ())))
            .expect("update");
        let e = f
            .update(|_| Err::<(Option<String>, ()), _>(StoreError::Invalid("no".into())))
            .expect_err("refused");
        assert_eq!(e.to_string(), "no");
        assert_eq!(f.read().expect("read"), "kept\n");
    }

    #[test]
    fn concurrent_updates_from_separate_handles_lose_nothing() {
        let tmp = TempDir::new("store");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let f = StateFile::new(tmp.path(), "counter");
                std::thread::spawn(move || {
                    for i in 0..25 {
                        f.update(|old| Ok::<_, StoreError>((Some(format!("{old}{t}-{i}\n")), ())))
                            .expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let text = StateFile::new(tmp.path(), "counter").read().expect("read");
        assert_eq!(text.lines().count(), 200);
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(rfc3339(from_secs(1_796_637_600)), "2026-12-07T10:00:00Z");
        assert_eq!(to_secs(from_secs(42)), 42);
    }
}

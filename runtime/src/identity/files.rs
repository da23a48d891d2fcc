//! Writing what a join or renewal makes, all or nothing: every file is
//! written to a temporary name beside its target (synced, with its final
//! mode from the start), and only when all are written are they renamed
//! into place. A failure on the way removes the temporaries, so no half
//! set is ever left behind.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One file to write.
pub struct Planned {
    /// Where it goes.
    pub path: PathBuf,
    /// Its contents.
    pub data: Vec<u8>,
    /// Its mode (0600 for anything holding a key).
    pub mode: u32,
}

fn temp_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tether-new-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes every planned file, or none. Parent directories are made (0755)
/// when missing.
pub fn write_all(files: &[Planned]) -> Result<(), String> {
    let mut written: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for f in files {
            if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("{}: cannot make the directory: {e}", dir.display()))?;
            }
            let tmp = temp_of(&f.path);
            let _ = fs::remove_file(&tmp);
            written.push(tmp.clone());
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(f.mode)
                .open(&tmp)
                .map_err(|e| format!("{}: cannot write: {e}", f.path.display()))?;
            file.write_all(&f.data)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("{}: cannot write: {e}", f.path.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for tmp in &written {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    for f in files {
        let tmp = temp_of(&f.path);
        fs::rename(&tmp, &f.path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("{}: cannot move into place: {e}", f.path.display())
        })?;
    }
    // The renames themselves must survive a power cut.
    for dir in files.iter().filter_map(|f| f.path.parent()) {
        if let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn all_or_nothing() {
        let dir = std::env::temp_dir().join(format!("tether-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let good = |name: &str, mode| Planned {
            path: dir.join(name),
            data: name.as_bytes().to_vec(),
            mode,
        };
        write_all(&[good("a", 0o600), good("sub/b", 0o644)]).expect("written");
        assert_eq!(fs::read(dir.join("a")).expect("a"), b"a");
        let mode = fs::metadata(dir.join("a"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // The second target's parent is a file: nothing is replaced, no
        // temporaries stay.
        let e = write_all(&[
            Planned {
                path: dir.join("a"),
                data: b"new".to_vec(),
                mode: 0o600,
            },
            good("a/c", 0o644),
        ])
        .expect_err("fails");
        assert!(e.contains("a"), "{e}");
        assert_eq!(fs::read(dir.join("a")).expect("a"), b"a");
        let left: Vec<_> = fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}

//! What the unit tests share: the recorded kube-apiserver answers and
//! throw-away cache files.

use crate::cache::{Limits, Store};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A recorded exchange's file from `tests/fixtures/kube-apiserver-1.24/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/kube-apiserver-1.24/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fresh cache in its own temporary folder (returned, to remove after),
/// with a 1 MiB page cache and a disk quota of `quota` bytes.
pub fn temp_store(tag: &str, quota: u64) -> (Store, PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tether-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let store = Store::open(
        dir.join("cache.db"),
        Limits {
            page_cache_bytes: 1 << 20,
            max_disk_bytes: quota,
        },
    )
    .expect("a cache");
    (store, dir)
}

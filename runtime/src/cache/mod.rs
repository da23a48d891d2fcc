//! The edge's cache of apiserver answers (issue 3): a bounded, crash-safe
//! SQLite store, without HTTP. Callers hand it parsed metadata and the raw
//! bytes as received; it never parses or logs object bodies.
//!
//! - [`store`]: [`Store`], views and their objects, LRU eviction under a
//!   disk quota, recovery from corrupt files.
//! - [`schema`]: the on-disk format and connection settings.

pub mod schema;
pub mod store;

pub use schema::Labels;
pub use store::{
    Event, Limits, ListMeta, ObjectRow, Staged, Stats, Store, StoreError, ViewKey, ViewMeta,
};

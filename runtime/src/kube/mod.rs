//! Kubernetes API responses, sans-IO: the two encodings (JSON and protobuf),
//! the error type, and re-exports of what the apiserver cache builds on.
//!
//! Objects are kept as the bytes received; only metadata is parsed. See
//! [`meta`] for objects and lists, [`watch`] for watch streams, [`pb`] and
//! [`json`] for the two minimal wire readers underneath, and [`request`] for
//! what a request asks for.

use std::fmt;

/// A recorded kube-apiserver 1.24 answer (tests/fixtures), for the tests of
/// every kube module; defined before them so all of them see it.
#[cfg(test)]
macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/kube-apiserver-1.24/",
            $name
        ))
        .as_slice()
    };
}

pub mod endpoints;
pub mod json;
pub mod list_stream;
pub mod meta;
pub mod node;
pub mod pb;
pub mod request;
pub mod token;
pub mod watch;

#[cfg(test)]
mod tests;

pub use meta::{
    bookmark_object, encode_list, item_to_watch_object, parse_list, parse_object, parse_status,
    watch_object_to_item, Encoded, Item, List, ListEncoder, ListMeta, Object, ObjectMeta, Status,
};
pub use watch::{encode_watch_event, EventType, WatchDecoder, WatchEvent};

/// The media type of `application/json` bodies.
pub const JSON_MEDIA_TYPE: &str = "application/json";
/// The media type of Kubernetes protobuf bodies.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How a Kubernetes API body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `application/json`: JSON documents; watches are JSON values one after another.
    Json,
    /// `application/vnd.kubernetes.protobuf`: `k8s\0` envelopes; watches are
    /// frames with a 4-byte big-endian length prefix.
    Protobuf,
}

impl Encoding {
    /// The encoding named by a `Content-Type` (or one `Accept` entry), ignoring
    /// parameters such as `;stream=watch` and `;charset=utf-8`. `None` for
    /// anything else (YAML, text, tables are still JSON and are accepted).
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case(JSON_MEDIA_TYPE) {
            Some(Encoding::Json)
        } else if media.eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE) {
            Some(Encoding::Protobuf)
        } else {
            None
        }
    }

    /// The `Content-Type` the apiserver sends for this encoding. JSON watches
    /// carry no `;stream=watch` parameter; protobuf watches do.
    pub fn content_type(self, watch: bool) -> &'static str {
        match (self, watch) {
            (Encoding::Json, _) => JSON_MEDIA_TYPE,
            (Encoding::Protobuf, false) => PROTOBUF_MEDIA_TYPE,
            (Encoding::Protobuf, true) => "application/vnd.kubernetes.protobuf;stream=watch",
        }
    }
}

/// Why a body could not be read. Parsers never panic on input; they return this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input ended inside a value or frame.
    Truncated,
    /// The bytes are not what the encoding allows; the text says where.
    Invalid(&'static str),
    /// A required part is absent (for example the `k8s\0` magic or `items`).
    Missing(&'static str),
    /// A watch frame is longer than the decoder's bound.
    FrameTooLarge {
        /// Frame length announced (protobuf) or seen so far (JSON).
        len: usize,
        /// The bound it exceeded.
        max: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "kube body truncated"),
            Error::Invalid(what) => write!(f, "invalid kube body: {what}"),
            Error::Missing(what) => write!(f, "kube body lacks {what}"),
            Error::FrameTooLarge { len, max } => {
                write!(f, "watch frame of {len} bytes exceeds the {max}-byte bound")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, Error>;

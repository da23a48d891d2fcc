//! tether-edge: the apiserver proxy, bounded cache and health peer on each
//! edge board. This crate is the program's library, so that load and
//! benchmark programs run the very same link code.
//!
//! - [`cache`]: the bounded, crash-safe SQLite store of cached apiserver
//!   answers (views per client and request).
//! - [`config`]: the edge's config file.
//! - [`uplink`]: keeps exactly one link to the hub up, reconnecting with
//!   backoff; the session survives reconnects.
//! - [`forward`]: local TCP ports whose connections become streams to a
//!   named hub upstream (the kube-apiserver, to start with).
//! - [`services`]: streams the hub opens towards local ports the config allows.
//! - [`shutdown`]: SIGTERM/SIGINT end the link with a DISCONNECT.
//! - [`status`]: `/healthz` and `/metrics` of the edge.
//! - [`announce`]: tells the hub the addresses of this node's Node status.
//! - [`apiclient`]: HTTPS connections to kube-apiserver with the node's
//!   credentials, through the link or direct.
//! - [`http`]: sans-IO HTTP/1.1 codec (heads, body framing, chunked) for
//!   the local apiserver proxy and its upstream side.
//! - [`proxy`]: the node's apiserver on 127.0.0.1:10261: relays to
//!   kube-apiserver, records answers, serves GET/LIST offline.
//! - [`health`]: health peers (issue 6): probing the unit's other edges,
//!   signed verdicts, and the unit's vote; sans IO.
//! - [`memory`]: the memory budget: RSS against `[proxy] memory_budget`.
//! - [`kube`]: sans-IO parsing of kube-apiserver responses (JSON and
//!   protobuf): object metadata, lists, watch streams, Status.

pub mod announce;
pub mod apiclient;
pub mod cache;
pub mod config;
pub mod fleet;
pub mod forward;
pub mod health;
pub mod http;
pub mod identity;
pub mod kube;
pub mod memory;
pub mod proxy;
pub mod services;
pub mod shutdown;
pub mod status;
#[cfg(test)]
mod testing;
pub mod uplink;

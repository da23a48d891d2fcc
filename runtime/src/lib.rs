//! tether-edge: the apiserver proxy, bounded cache and health peer on each
//! edge board. This crate is the program's library, so that load and
//! benchmark programs run the very same link code.
//!
//! - [`config`]: the edge's config file.
//! - [`uplink`]: keeps exactly one link to the hub up, reconnecting with
//!   backoff; the session survives reconnects.
//! - [`forward`]: local TCP ports whose connections become streams to a
//!   named hub upstream (the kube-apiserver, to start with).
//! - [`services`]: streams the hub opens towards local ports the config allows.
//! - [`shutdown`]: SIGTERM/SIGINT end the link with a DISCONNECT.

pub mod config;
pub mod forward;
pub mod services;
pub mod shutdown;
pub mod uplink;

//! tether-hub: the cloud end of every edge's link.
//!
//! - [`config`]: the hub's config file.
//! - [`auth`]: node tokens, certificates, and the verdict on each CONNECT.
//! - [`registry`]: nodes, their sessions and counters.
//! - [`links`]: the link listener: handshake under deadline, attach, drive.
//! - [`upstream`]: streams edges open to the hub's named upstreams.
//! - [`expose`]: cloud-side ports that reach a port on an edge.
//! - [`egress`]: kube-apiserver's egress: HTTP CONNECT to `<node>:<port>`
//!   becomes a stream to that port on the node.
//! - [`reach`]: reaching a port on a node for `expose` and `egress`, and
//!   their HTTP error answers.
//! - [`broker`]: the replica's broker connection, relaying node sessions.
//! - [`health`]: the edges' health reports and each unit's vote (issue 6).
//! - [`autonomy`]: renewing the Leases of cut-off nodes their unit votes
//!   alive, so Kubernetes keeps their pods (issue 6).
//! - [`admin`]: `/healthz`, `/metrics`, `/nodes`.
//! - [`join`]: bootstrap tokens, node certificates and revocation (issue 7).
//! - [`pki`]: `tether-hub init`: the hub's CA and serving certificate on disk (issue 7).
//! - [`manifests`]: `tether-hub manifests`: the Kubernetes objects installing the hub (issue 7).

pub mod admin;
pub mod auth;
pub mod autonomy;
pub mod broker;
pub mod config;
pub mod egress;
pub mod expose;
pub mod health;
pub mod join;
pub mod links;
pub mod manifests;
pub mod pki;
pub mod reach;
pub mod registry;
pub mod upstream;

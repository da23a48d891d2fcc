//! Joining nodes to the hub (issue 7): bootstrap tokens, the certificates
//! issued to nodes and their revocation, kept in the hub's state directory.
//!
//! - [`store`]: the state files' rules: mode 0600, a lock, atomic rewrite.
//! - [`tokens`]: bootstrap tokens (`tether-hub token`), redeemed on join.
//! - [`nodes`]: certificates issued to nodes, and revocation (`tether-hub node`).
//! - [`sign`]: the CA that signs node certificates.
//! - [`commit`]: group commit of node records, and their snapshot.
//! - [`serve`]: deciding a join or renewal request.
//! - [`live`]: the service in the running hub: refusing revoked
//!   certificates, dropping revoked nodes' links.

pub mod commit;
pub mod live;
pub mod nodes;
pub mod serve;
pub mod sign;
pub mod store;
pub mod tokens;

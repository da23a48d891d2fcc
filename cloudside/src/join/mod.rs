//! Joining nodes to the hub (issue 7): bootstrap tokens, the certificates
//! issued to nodes and their revocation, kept in the hub's state directory.
//!
//! - [`store`]: the state files' rules: mode 0600, a lock, atomic rewrite.
//! - [`tokens`]: bootstrap tokens (`tether-hub token`), redeemed on join.
//! - [`nodes`]: certificates issued to nodes, and revocation (`tether-hub node`).

pub mod nodes;
pub mod sign;
pub mod store;
pub mod tokens;

//! The node's identity with the hub: its key (made on the board, never
//! sent), its certificate, and getting and renewing that certificate
//! (`tether-edge join`, `tether-edge reset`, renewal while running); and
//! its Kubernetes identity, kubelet's client certificate (`join
//! --kube-token`).

pub mod exchange;
pub mod files;
pub mod join;
pub mod key;
pub mod kubelet;
pub mod pin;
pub mod renew;

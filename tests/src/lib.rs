//! Test support for the system tests.
pub mod apiserver;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod echo;
pub mod faultproxy;
pub mod fleet;
pub mod healthunit;
pub mod mosquitto;
pub mod pki;
pub mod procs;
pub mod qemu;
pub mod tunnel;
pub mod udpdrop;

//! Test support for the system tests.
pub mod faultproxy;

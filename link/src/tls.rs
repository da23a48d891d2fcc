//! tls placeholder

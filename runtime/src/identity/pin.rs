//! Trusting the hub by a pinned CA hash during a join, as kubeadm's
//! `--discovery-token-ca-cert-hash` does: among the certificates the hub
//! presents, the one whose SubjectPublicKeyInfo hashes (SHA-256) to the pin
//! becomes the only root, and the hub's certificate must chain to it and
//! name the address joined. A hub that presents no such CA fails the
//! handshake with a message that says so.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// A CA pin: the 32 bytes of `sha256:<hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaHash(pub [u8; 32]);

impl CaHash {
    /// Reads `sha256:` and 64 hex digits.
    pub fn parse(text: &str) -> Result<CaHash, String> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            format!("{text:?} is not a CA hash: expected sha256:<64 hex digits>, as `tether-hub init` prints")
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not a CA hash: expected sha256: and 64 hex digits"
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{text:?}: not hex"))?;
        }
        Ok(CaHash(out))
    }

    /// Whether the certificate `der` is the pinned CA.
    pub fn matches(&self, der: &[u8]) -> bool {
        tether_link::tls::subject_public_key_info(der).is_some_and(|spki| {
            ring::digest::digest(&ring::digest::SHA256, spki).as_ref() == self.0
        })
    }
}

impl std::fmt::Display for CaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The verifier that trusts only the pinned CA among those presented.
#[derive(Debug)]
pub struct PinnedCa {
    pin: CaHash,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    /// Trusts the CA `pin` names.
    pub fn new(pin: CaHash) -> PinnedCa {
        PinnedCa {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// A TLS 1.3 client configuration with this verifier and no client
    /// certificate (a join proves itself inside the exchange).
    pub fn client_config(pin: CaHash) -> Result<rustls::ClientConfig, String> {
        let verifier = Arc::new(PinnedCa::new(pin));
        Ok(
            rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| self.pin.matches(c)) else {
            return Err(rustls::Error::General(format!(
                "the hub presented no CA with hash {} (check --ca-hash against what `tether-hub init` printed, and that the address is that hub's)",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_and_print_back() {
        let text = format!("sha256:{}", "0a".repeat(32));
        let h = CaHash::parse(&text).expect("valid");
        assert_eq!(h.0, [0x0a; 32]);
        assert_eq!(h.to_string(), text);
        for bad in [
            "0a".repeat(32),
            format!("sha1:{}", "0a".repeat(32)),
            format!("sha256:{}", "0a".repeat(31)),
            format!("sha256:{}zz", "0a".repeat(31)),
        ] {
            assert!(CaHash::parse(&bad).is_err(), "{bad}");
        }
    }
}

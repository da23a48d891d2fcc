//! The node's private key: ECDSA P-256, made on the board with ring, kept
//! as PKCS#8 PEM in a file of mode 0600, and what it signs (certificate
//! requests, renewal proofs).

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use std::path::Path;
use tether_link::topic::NodeName;

/// A node key and its PKCS#8 encoding (to write it out once).
pub struct NodeKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl NodeKey {
    /// A new key from the system's randomness.
    pub fn generate() -> Result<NodeKey, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| "cannot generate a key: no randomness".to_string())?;
        NodeKey::from_pkcs8(pkcs8.as_ref().to_vec())
            .map_err(|e| format!("a generated key does not load: {e}"))
    }

    /// The key in a PEM file (the `PRIVATE KEY` block; a file may also
    /// hold the certificate).
    pub fn load(path: &Path) -> Result<NodeKey, String> {
        let der = PrivateKeyDer::from_pem_file(path)
            .map_err(|e| format!("{}: no private key: {e}", path.display()))?;
        match der {
            PrivateKeyDer::Pkcs8(k) => NodeKey::from_pkcs8(k.secret_pkcs8_der().to_vec())
                .map_err(|e| format!("{}: {e}", path.display())),
            _ => Err(format!(
                "{}: not a PKCS#8 key (the node key tether-edge join makes is)",
                path.display()
            )),
        }
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<NodeKey, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not an ECDSA P-256 key: {e}"))?;
        Ok(NodeKey { pair, pkcs8 })
    }

    /// The key as PEM, for its file.
    pub fn pem(&self) -> String {
        tether_link::der::pem("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key as a 65-byte uncompressed point.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs `message` (ECDSA P-256 SHA-256, ASN.1 DER).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| "cannot sign: no randomness".to_string())
    }

    /// A certificate request for `node` with this key, DER.
    pub fn csr(&self, node: &NodeName) -> Result<Vec<u8>, String> {
        let info = tether_link::csr::request_info(node, self.public_point());
        Ok(tether_link::csr::assemble(&info, &self.sign(&info)?))
    }

    /// Whether `cert_der` certifies this key.
    pub fn matches(&self, cert_der: &[u8]) -> bool {
        tether_link::tls::subject_public_key_info(cert_der)
            .is_some_and(|spki| spki == tether_link::csr::p256_spki(self.public_point()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_through_pem_and_signs_requests_the_hub_accepts() {
        let key = NodeKey::generate().expect("key");
        let path = std::env::temp_dir().join(format!("tether-key-{}.pem", std::process::id()));
        std::fs::write(&path, key.pem()).expect("write");
        let back = NodeKey::load(&path).expect("load");
        let _ = std::fs::remove_file(&path);
        assert_eq!(back.public_point(), key.public_point());
        let node = NodeName::new("edge-1").expect("name");
        let req = tether_link::csr::parse_and_verify(&back.csr(&node).expect("csr"))
            .expect("valid request");
        assert_eq!(req.node(), Some(node));
        assert_eq!(req.public_point, key.public_point());
    }
}

//! The hub's CA at work: signing node certificates and checking the ones
//! it signed before (for renewals).
//!
//! The CA is the one `tether-hub init` wrote into the state directory
//! (`ca.pem`, `ca-key.pem`). A node certificate is ECDSA P-256, subject
//! `O=system:nodes, CN=system:node:<name>` (what Kubernetes expects of a
//! node), `clientAuth` only, a random 128-bit serial, valid from a minute
//! before it is made (clocks differ) for the configured lifetime.

use crate::pki;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SecureRandom;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_link::topic::NodeName;

/// How far back a certificate's validity starts: a board whose clock is a
/// little behind must accept a certificate made this second. At most a
/// tenth of the lifetime, so a short-lived certificate's renewal (due at a
/// fraction of its whole validity) is not due at once.
const BACKDATE: Duration = Duration::from_secs(60);

/// The hub's CA, loaded.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: Vec<u8>,
    verifier: Arc<dyn ClientCertVerifier>,
    lifetime: Duration,
}

/// A certificate just made.
#[derive(Debug, Clone)]
pub struct Issued {
    /// DER.
    pub der: Vec<u8>,
    /// Its serial number (content bytes of the INTEGER).
    pub serial: Vec<u8>,
    /// Its end of validity.
    pub not_after: SystemTime,
}

/// A node's public key, as rcgen signs it.
struct NodeKey<'a>(&'a [u8]);

impl PublicKeyData for NodeKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl Authority {
    /// Loads the CA from `dir` (`tether-hub init`'s state directory); node
    /// certificates will be valid for `lifetime`. Errors name the file.
    pub fn load(dir: &Path, lifetime: Duration) -> Result<Authority, String> {
        Authority::load_files(&dir.join(pki::CA_CERT), &dir.join(pki::CA_KEY), lifetime)
    }

    /// Loads the CA from its certificate and key files.
    pub fn load_files(
        cert_path: &Path,
        key_path: &Path,
        lifetime: Duration,
    ) -> Result<Authority, String> {
        let hint = "(made by `tether-hub init --dir DIR`)";
        let certs = tether_link::tls::load_certs(cert_path).map_err(|e| format!("{e} {hint}"))?;
        let ca_der = certs
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| format!("{}: no certificate {hint}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path)
            .map_err(|e| format!("{}: cannot read the CA key: {e} {hint}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("{}: not a private key: {e}", key_path.display()))?;
        let spki = tether_link::tls::subject_public_key_info(&ca_der)
            .ok_or_else(|| format!("{}: not a certificate", cert_path.display()))?;
        if spki != key.subject_public_key_info().as_slice() {
            return Err(format!(
                "{} does not belong to {}: the CA key and certificate differ",
                key_path.display(),
                cert_path.display()
            ));
        }
        let cn = tether_link::tls::subject_common_name(&ca_der);
        if cn.as_deref() != Some(pki::CA_CN) {
            return Err(format!(
                "{}: subject CN is {cn:?}, not {:?}: not a CA made by `tether-hub init`",
                cert_path.display(),
                pki::CA_CN
            ));
        }
        // Same subject and key as the CA on disk: what it signs chains to it.
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, pki::CA_CN);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.clone()))
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            ca_der,
            verifier,
            lifetime,
        })
    }

    /// The CA certificate, DER: what edges trust.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// How long the certificates it makes are valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Signs a certificate for `node` with the public key `point` (65-byte
    /// uncompressed P-256, from a checked request).
    pub fn issue(&self, node: &NodeName, point: &[u8], now: SystemTime) -> Result<Issued, String> {
        let mut serial = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut serial)
            .map_err(|_| "no randomness for a serial number".to_string())?;
        // Positive and without a leading zero byte, as DER INTEGERs must be.
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let not_before = now
            .checked_sub(BACKDATE.min(self.lifetime / 10))
            .unwrap_or(now);
        let not_after = now + self.lifetime;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::OrganizationName,
            tether_link::csr::NODE_ORGANIZATION,
        );
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{}{node}", tether_link::csr::NODE_CN_PREFIX),
        );
        params.not_before = offset(not_before)?;
        params.not_after = offset(not_after)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&NodeKey(point), &self.issuer)
            .map_err(|e| format!("cannot sign the certificate of {node}: {e}"))?;
        let der = cert.der().to_vec();
        let not_after = tether_link::tls::validity_of_certificate(&der)
            .map(|(_, until)| UNIX_EPOCH + Duration::from_secs(until.max(0) as u64))
            .unwrap_or(not_after);
        Ok(Issued {
            der,
            serial: serial.to_vec(),
            not_after,
        })
    }

    /// Whether `der` is a client certificate this CA signed that was valid
    /// at `at` (the renewal path checks an expired one at a moment of its
    /// life; the expiry itself is judged against the grace by the caller).
    pub fn verify(&self, der: &[u8], at: SystemTime) -> Result<(), String> {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "clock before 1970".to_string())?;
        self.verifier
            .verify_client_cert(
                &CertificateDer::from(der.to_vec()),
                &[],
                UnixTime::since_unix_epoch(secs),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime, String> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "clock before 1970".to_string())?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::store::test_dir::TempDir;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

    fn authority(tmp: &TempDir, lifetime: Duration) -> Authority {
        pki::init(&pki::InitOptions {
            dir: tmp.path().to_path_buf(),
            sans: vec!["hub.test".into()],
            force: false,
        })
        .expect("init");
        Authority::load(tmp.path(), lifetime).expect("load")
    }

    fn node_key() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("gen");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load")
            .public_key()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn issues_a_node_certificate_that_chains_to_the_ca() {
        let tmp = TempDir::new("issue");
        let ca = authority(&tmp, Duration::from_secs(3600));
        let node = NodeName::new("edge-1").expect("name");
        let point = node_key();
        let now = SystemTime::now();
        let issued = ca.issue(&node, &point, now).expect("issue");
        assert_eq!(
            tether_link::tls::subject_common_name(&issued.der).as_deref(),
            Some("system:node:edge-1")
        );
        assert_eq!(
            tether_link::tls::serial_of_certificate(&issued.der),
            Some(&issued.serial[..])
        );
        let spki = tether_link::tls::subject_public_key_info(&issued.der).expect("spki");
        assert_eq!(spki, tether_link::csr::p256_spki(&point));
        let (from, until) = tether_link::tls::validity_of_certificate(&issued.der).expect("v");
        let unix = now.duration_since(UNIX_EPOCH).expect("now").as_secs() as i64;
        assert_eq!((from, until), (unix - 60, unix + 3600));
        let short = authority(&TempDir::new("short"), Duration::from_secs(10));
        let brief = short.issue(&node, &point, now).expect("issue");
        let (from, until) = tether_link::tls::validity_of_certificate(&brief.der).expect("v");
        assert_eq!((from, until), (unix - 1, unix + 10));
        ca.verify(&issued.der, now).expect("valid now");
        let later = now + Duration::from_secs(3601);
        assert!(ca.verify(&issued.der, later).is_err(), "expired");
    }

    #[test]
    fn a_certificate_of_another_ca_does_not_verify() {
        let (a, b) = (TempDir::new("a"), TempDir::new("b"));
        let (ca_a, ca_b) = (
            authority(&a, Duration::from_secs(60)),
            authority(&b, Duration::from_secs(60)),
        );
        let node = NodeName::new("edge-1").expect("name");
        let issued = ca_a
            .issue(&node, &node_key(), SystemTime::now())
            .expect("issue");
        assert!(ca_b.verify(&issued.der, SystemTime::now()).is_err());
    }

    #[test]
    fn a_ca_key_that_does_not_match_is_refused() {
        let (a, b) = (TempDir::new("ka"), TempDir::new("kb"));
        let _ = authority(&a, Duration::from_secs(60));
        let _ = authority(&b, Duration::from_secs(60));
        std::fs::copy(b.path().join(pki::CA_KEY), a.path().join(pki::CA_KEY)).expect("copy");
        let e = Authority::load(a.path(), Duration::from_secs(60))
            .err()
            .expect("refused");
        assert!(e.contains("differ"), "{e}");
        let e = Authority::load(&a.path().join("nothing"), Duration::from_secs(60))
            .err()
            .expect("missing");
        assert!(e.contains("tether-hub init"), "{e}");
    }
}

//! rustls configurations for both ends of the link (ring provider, TLS 1.3).
//!
//! The hub presents its serving certificate and, when a client CA is
//! configured, asks for (but does not require) a client certificate: a node
//! proves who it is either by that certificate, whose subject CN must be
//! `system:node:<name>`, or by a token in CONNECT.

use crate::der::read as der_read;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS setup problem, naming the file at fault.
#[derive(Debug)]
pub struct TlsError {
    /// The file involved, if any.
    pub path: Option<PathBuf>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}: {}", p.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TlsError {}

fn err(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError {
        path: Some(path.to_owned()),
        message: message.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| err(path, format!("cannot read private key: {e}")))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path)? {
        store
            .add(cert)
            .map_err(|e| err(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The edge's TLS client: trusts only `ca` (the hub's CA), and presents
/// `identity` (certificate chain and key files) if given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError {
            path: None,
            message: e.to_string(),
        })?
        .with_root_certificates(roots(ca)?);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| err(key, format!("key does not fit the certificate: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The hub's TLS server: presents `cert`/`key`; with `client_ca`, verifies
/// client certificates against it (clients without one may still use a token).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    build_server(cert, key, client_ca, false)
}

/// A TLS server that accepts only clients with a certificate signed by
/// `client_ca` (the hub's egress endpoint: kube-apiserver's certificate).
pub fn server_config_requiring_clients(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<ServerConfig, TlsError> {
    build_server(cert, key, Some(client_ca), true)
}

fn build_server(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    required: bool,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError {
            path: None,
            message: e.to_string(),
        })?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = if required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| err(ca, format!("cannot verify clients with this CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| err(key, format!("key does not fit the certificate: {e}")))
}

/// The node name a verified client certificate speaks for: its subject CN
/// must be `system:node:<name>`. `None` for any other certificate.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let cn = subject_common_name(der)?;
    cn.strip_prefix("system:node:").map(str::to_owned)
}

/// Reads the subject common name out of a DER certificate. The certificate
/// was verified by webpki already; this only walks its structure, refusing
/// anything that does not parse rather than guessing.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (mut subject, _) = der_read(from_subject(der)?, 0x30)?;
    let mut found = None;
    while !subject.is_empty() {
        let (set, next) = der_read(subject, 0x31)?;
        subject = next;
        let (atv, _) = der_read(set, 0x30)?;
        let (oid, value) = der_read(atv, 0x06)?;
        if oid == [0x55, 0x04, 0x03] {
            let tag = *value.first()?;
            // UTF8String, PrintableString or IA5String.
            if ![0x0c, 0x13, 0x16].contains(&tag) {
                return None;
            }
            let (text, _) = der_read(value, tag)?;
            found = Some(std::str::from_utf8(text).ok()?.to_owned());
        }
    }
    found
}

/// The SubjectPublicKeyInfo of a DER certificate, whole (tag and length
/// included): what a CA pin (`sha256:<hex>`, as kubeadm's discovery hash)
/// is computed over. Walks only the fields before it, trusting nothing but
/// their lengths; `None` for anything not shaped like a certificate.
pub fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    let rest = der_read(from_subject(der)?, 0x30)?.1; // subject
    let (_, after) = der_read(rest, 0x30)?;
    Some(&rest[..rest.len() - after.len()])
}

/// The serial number of a DER certificate (the INTEGER's content bytes):
/// what the hub's node records name a certificate by.
pub fn serial_of_certificate(der: &[u8]) -> Option<&[u8]> {
    Some(der_read(from_serial(der)?, 0x02)?.0)
}

/// A DER certificate's validity as unix seconds: (not before, not after).
/// The edge schedules its renewal from it.
pub fn validity_of_certificate(der: &[u8]) -> Option<(i64, i64)> {
    let mut rest = der_read(from_serial(der)?, 0x02)?.1; // serial
    rest = der_read(rest, 0x30)?.1; // signature algorithm
    rest = der_read(rest, 0x30)?.1; // issuer
    let (validity, _) = der_read(rest, 0x30)?;
    let (from, rest) = asn1_time(validity)?;
    let (until, _) = asn1_time(rest)?;
    Some((from, until))
}

/// One UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) as unix seconds, and what follows it.
fn asn1_time(buf: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest, year_digits) = match buf.first()? {
        0x17 => {
            let (t, r) = der_read(buf, 0x17)?;
            (t, r, 2)
        }
        0x18 => {
            let (t, r) = der_read(buf, 0x18)?;
            (t, r, 4)
        }
        _ => return None,
    };
    if text.len() != year_digits + 11 || text.last() != Some(&b'Z') {
        return None;
    }
    let num = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let mut year = num(&text[..year_digits])?;
    if year_digits == 2 {
        year += if year < 50 { 2000 } else { 1900 };
    }
    let f = &text[year_digits..];
    let (month, day) = (num(&f[0..2])?, num(&f[2..4])?);
    let (h, m, s) = (num(&f[4..6])?, num(&f[6..8])?, num(&f[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some((
        days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s,
        rest,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The fields of a DER certificate's TBSCertificate from its serial on
/// (past the optional version).
fn from_serial(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = der_read(der, 0x30)?;
    let (rest, _) = der_read(cert, 0x30)?;
    match rest.first() {
        Some(0xa0) => Some(der_read(rest, 0xa0)?.1),
        _ => Some(rest),
    }
}

/// The fields of a DER certificate's TBSCertificate from its subject on.
fn from_subject(der: &[u8]) -> Option<&[u8]> {
    let mut rest = der_read(from_serial(der)?, 0x02)?.1; // serial
    rest = der_read(rest, 0x30)?.1; // signature algorithm
    rest = der_read(rest, 0x30)?.1; // issuer
    rest = der_read(rest, 0x30)?.1; // validity
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_unix_seconds() {
        let utc = |s: &str| [vec![0x17, s.len() as u8], s.as_bytes().to_vec()].concat();
        let gen = |s: &str| [vec![0x18, s.len() as u8], s.as_bytes().to_vec()].concat();
        assert_eq!(asn1_time(&utc("700101000000Z")).map(|t| t.0), Some(0));
        assert_eq!(
            asn1_time(&utc("261207033009Z")).map(|t| t.0),
            Some(1_796_614_209)
        );
        assert_eq!(
            asn1_time(&gen("20500101000000Z")).map(|t| t.0),
            Some(2_524_608_000)
        );
        assert_eq!(
            asn1_time(&utc("491231235959Z")).map(|t| t.0),
            Some(2_524_607_999)
        );
        assert_eq!(asn1_time(&utc("261307033009Z")), None);
        assert_eq!(asn1_time(&utc("2612070330Z")), None);
        assert_eq!(asn1_time(&utc("26120703300xZ")), None);
    }

    #[test]
    fn garbage_certificates_have_no_name() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(subject_common_name(&[0x30, 0x02, 0x30, 0x00]), None);
        let mut x = 0x9e37_79b9u32;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = subject_common_name(&bytes);
            let _ = validity_of_certificate(&bytes);
            let _ = serial_of_certificate(&bytes);
        }
    }
}

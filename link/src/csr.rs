//! Certificate requests for node identities: PKCS#10 built on the board
//! (whose key never leaves it) and read and checked on the hub.
//!
//! Only one shape is spoken: an ECDSA P-256 key, signed with SHA-256, and
//! the subject Kubernetes expects of a node (`O=system:nodes`,
//! `CN=system:node:<name>`). Building and reading live side by side so the
//! two ends cannot drift, and a few dozen lines of DER beat a certificate
//! crate on a board with 4 MiB of flash to spare.

use crate::der::{read as der_read, tlv};
use crate::topic::NodeName;
use std::fmt;

/// id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// commonName (2.5.4.3).
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// organizationName (2.5.4.10).
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The organization Kubernetes puts nodes in.
pub const NODE_ORGANIZATION: &str = "system:nodes";
/// The prefix of a node's common name.
pub const NODE_CN_PREFIX: &str = "system:node:";

/// The SubjectPublicKeyInfo of a P-256 key given as its 65-byte
/// uncompressed point.
pub fn p256_spki(point: &[u8]) -> Vec<u8> {
    let alg = [tlv(0x06, OID_EC_PUBLIC_KEY), tlv(0x06, OID_P256)].concat();
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    tlv(0x30, &[tlv(0x30, &alg), tlv(0x03, &bits)].concat())
}

fn name_entry(oid: &[u8], value: &str) -> Vec<u8> {
    // UTF8String: ':' is not a PrintableString character.
    tlv(
        0x31,
        &tlv(
            0x30,
            &[tlv(0x06, oid), tlv(0x0c, value.as_bytes())].concat(),
        ),
    )
}

/// The part of a request its key signs: version 0, the node's subject, the
/// key, no attributes.
pub fn request_info(node: &NodeName, point: &[u8]) -> Vec<u8> {
    let subject = tlv(
        0x30,
        &[
            name_entry(OID_O, NODE_ORGANIZATION),
            name_entry(OID_CN, &format!("{NODE_CN_PREFIX}{node}")),
        ]
        .concat(),
    );
    tlv(
        0x30,
        &[tlv(0x02, &[0]), subject, p256_spki(point), vec![0xa0, 0x00]].concat(),
    )
}

/// The whole request from its signed part and the ASN.1 DER ECDSA signature
/// over it.
pub fn assemble(info: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(signature);
    tlv(
        0x30,
        &[
            info.to_vec(),
            tlv(0x30, &tlv(0x06, OID_ECDSA_SHA256)),
            tlv(0x03, &bits),
        ]
        .concat(),
    )
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The subject's common name.
    pub common_name: String,
    /// The subject's organizations, in order.
    pub organizations: Vec<String>,
    /// The public key as a 65-byte uncompressed P-256 point.
    pub public_point: Vec<u8>,
}

impl Request {
    /// The node the request is for, when its subject is exactly a node's
    /// (`O=system:nodes`, `CN=system:node:<valid name>`).
    pub fn node(&self) -> Option<NodeName> {
        let name = self.common_name.strip_prefix(NODE_CN_PREFIX)?;
        if self.organizations != [NODE_ORGANIZATION] {
            return None;
        }
        NodeName::new(name).ok()
    }
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrError {
    /// Not DER of the expected shape.
    Malformed(&'static str),
    /// A key or signature algorithm other than ECDSA P-256 with SHA-256.
    Unsupported,
    /// The signature does not match the key: the sender does not hold it.
    BadSignature,
}

impl fmt::Display for CsrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsrError::Malformed(what) => write!(f, "malformed certificate request: {what}"),
            CsrError::Unsupported => {
                f.write_str("certificate request is not ECDSA P-256 with SHA-256")
            }
            CsrError::BadSignature => {
                f.write_str("certificate request signature does not match its key")
            }
        }
    }
}

impl std::error::Error for CsrError {}

/// Reads a request and checks its self-signature (proof that the sender
/// holds the key). Anything but the one shape [`request_info`] builds, plus
/// PrintableString names and attributes, is refused.
pub fn parse_and_verify(der: &[u8]) -> Result<Request, CsrError> {
    let m = CsrError::Malformed;
    let (outer, rest) = der_read(der, 0x30).ok_or(m("not a SEQUENCE"))?;
    if !rest.is_empty() {
        return Err(m("bytes after the request"));
    }
    let (info_contents, after_info) = der_read(outer, 0x30).ok_or(m("no request info"))?;
    let info = &outer[..outer.len() - after_info.len()];
    let (alg, after_alg) = der_read(after_info, 0x30).ok_or(m("no signature algorithm"))?;
    let (oid, _) = der_read(alg, 0x06).ok_or(m("signature algorithm without OID"))?;
    if oid != OID_ECDSA_SHA256 {
        return Err(CsrError::Unsupported);
    }
    let (bits, _) = der_read(after_alg, 0x03).ok_or(m("no signature"))?;
    let signature = match bits.split_first() {
        Some((0, sig)) => sig,
        _ => return Err(m("signature BIT STRING with unused bits")),
    };

    let (version, rest) = der_read(info_contents, 0x02).ok_or(m("no version"))?;
    if version != [0] {
        return Err(m("version is not 0"));
    }
    let (mut subject, rest) = der_read(rest, 0x30).ok_or(m("no subject"))?;
    let (spki, _) = der_read(rest, 0x30).ok_or(m("no public key"))?;
    let (key_alg, after_key_alg) = der_read(spki, 0x30).ok_or(m("no key algorithm"))?;
    let (alg_oid, curve) = der_read(key_alg, 0x06).ok_or(m("key algorithm without OID"))?;
    let (curve_oid, _) = der_read(curve, 0x06).unwrap_or((&[], &[]));
    if alg_oid != OID_EC_PUBLIC_KEY || curve_oid != OID_P256 {
        return Err(CsrError::Unsupported);
    }
    let (key_bits, _) = der_read(after_key_alg, 0x03).ok_or(m("no key bits"))?;
    let point = match key_bits.split_first() {
        Some((0, p)) if p.len() == 65 && p[0] == 4 => p,
        _ => return Err(m("key is not an uncompressed P-256 point")),
    };

    let mut common_name = None;
    let mut organizations = Vec::new();
    while !subject.is_empty() {
        let (set, next) = der_read(subject, 0x31).ok_or(m("subject entry"))?;
        subject = next;
        let (atv, _) = der_read(set, 0x30).ok_or(m("subject attribute"))?;
        let (oid, value) = der_read(atv, 0x06).ok_or(m("subject attribute OID"))?;
        let tag = *value.first().ok_or(m("subject value"))?;
        if ![0x0c, 0x13].contains(&tag) {
            return Err(m("subject value is not a UTF8String or PrintableString"));
        }
        let (text, _) = der_read(value, tag).ok_or(m("subject value"))?;
        let text = std::str::from_utf8(text).map_err(|_| m("subject value is not UTF-8"))?;
        if oid == OID_CN {
            if common_name.replace(text.to_owned()).is_some() {
                return Err(m("two common names"));
            }
        } else if oid == OID_O {
            organizations.push(text.to_owned());
        }
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(info, signature)
        .map_err(|_| CsrError::BadSignature)?;
    Ok(Request {
        common_name: common_name.ok_or(m("no common name"))?,
        organizations,
        public_point: point.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("generate");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load")
    }

    fn request(node: &str, key: &EcdsaKeyPair) -> Vec<u8> {
        let node = NodeName::new(node).expect("name");
        let info = request_info(&node, key.public_key().as_ref());
        let sig = key.sign(&SystemRandom::new(), &info).expect("sign");
        assemble(&info, sig.as_ref())
    }

    #[test]
    fn a_built_request_reads_back_as_the_node() {
        let k = key();
        let der = request("edge-1", &k);
        let r = parse_and_verify(&der).expect("valid");
        assert_eq!(r.common_name, "system:node:edge-1");
        assert_eq!(r.organizations, ["system:nodes"]);
        assert_eq!(r.public_point, k.public_key().as_ref());
        assert_eq!(r.node().expect("node").as_str(), "edge-1");
    }

    #[test]
    fn a_request_with_another_key_or_a_changed_byte_is_refused() {
        let (a, b) = (key(), key());
        let node = NodeName::new("edge-1").expect("name");
        // Signed by b but carrying a's key: the sender does not hold a's key.
        let info = request_info(&node, a.public_key().as_ref());
        let sig = b.sign(&SystemRandom::new(), &info).expect("sign");
        assert_eq!(
            parse_and_verify(&assemble(&info, sig.as_ref())),
            Err(CsrError::BadSignature)
        );
        let mut der = request("edge-1", &a);
        // The last letter of the common name: still well formed, now "edge-2".
        let at = der
            .windows(6)
            .position(|w| w == b"edge-1")
            .expect("name in request");
        der[at + 5] = b'2';
        assert_eq!(parse_and_verify(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn garbage_never_panics_and_is_refused() {
        assert!(parse_and_verify(&[]).is_err());
        assert!(parse_and_verify(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        let good = request("edge-1", &key());
        for cut in 0..good.len() {
            assert!(parse_and_verify(&good[..cut]).is_err());
        }
        let mut x = 0x2545_f491u32;
        for _ in 0..2000 {
            let mut bytes = good.clone();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % bytes.len();
            bytes[i] ^= (x >> 8) as u8 | 1;
            assert!(parse_and_verify(&bytes).is_err(), "flipped byte {i}");
        }
    }

    #[test]
    fn other_subjects_are_not_nodes() {
        let r = Request {
            common_name: "system:node:edge-1".into(),
            organizations: vec!["system:masters".into()],
            public_point: vec![],
        };
        assert_eq!(r.node(), None);
        let r = Request {
            common_name: "admin".into(),
            organizations: vec!["system:nodes".into()],
            public_point: vec![],
        };
        assert_eq!(r.node(), None);
    }
}

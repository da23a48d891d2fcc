//! Deciding one join or renewal request ([`tether_link::join`]): which
//! checks, in which order, and what the edge and the log are told.
//!
//! A join: the request's CSR must be for the node the CONNECT names and
//! signed by its key; the bootstrap token must be good for that node (and
//! for replacing a live certificate, if the node has one); then the CA
//! signs and the node's record is updated. A renewal: the CSR as for a
//! join; the presented certificate must be this CA's, for this node, the
//! node's current or previous one, not revoked, and expired no longer ago
//! than the grace; the proof must be a fresh signature by that
//! certificate's key over the new request.
//!
//! Blocking: the stores lock and sync files, so the hub runs this on its
//! blocking pool.

use super::commit::Committer;
use super::nodes::{CertStatus, Issue, IssueRecord, NodeStore};
use super::sign::Authority;
use super::tokens::TokenStore;
use crate::config::Join as JoinConfig;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_link::join::{proof_message, Answer, Refusal, Request};
use tether_link::topic::NodeName;

/// How far a renewal's proof may be from the hub's clock, either way.
const PROOF_SKEW: Duration = Duration::from_secs(600);

/// The hub's join service: the CA and the two stores.
pub struct Joiner {
    authority: Authority,
    tokens: TokenStore,
    commit: Committer,
    grace: Duration,
}

/// What happened, for the log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `joined`, `renewed`, or a refusal's label.
    pub label: &'static str,
    /// One line for the log (never a secret).
    pub line: String,
}

impl Joiner {
    /// Loads the CA from `[join] dir`; the stores live beside it.
    pub fn open(cfg: &JoinConfig) -> Result<Joiner, String> {
        Ok(Joiner {
            authority: Authority::load_files(&cfg.ca, &cfg.ca_key, cfg.lifetime)?,
            tokens: TokenStore::open(&cfg.dir),
            commit: Committer::open(NodeStore::open(&cfg.dir))
                .map_err(|e| format!("cannot read the node records: {e}"))?,
            grace: cfg.grace,
        })
    }

    /// The node records as of the last change (reloaded when another
    /// process, such as `tether-hub node revoke`, changed them).
    pub fn records(&self) -> Result<std::sync::Arc<super::nodes::Nodes>, String> {
        self.commit
            .snapshot()
            .map_err(|e| format!("cannot read the node records: {e}"))
    }

    /// Decides `request` from the CONNECT of `node`.
    pub fn handle(&self, node: &NodeName, request: Request, now: SystemTime) -> (Answer, Outcome) {
        let result = match request {
            Request::Join { token, csr } => self.join(node, &token, &csr, now),
            Request::Renew {
                certificate,
                csr,
                signed_at_ms,
                proof,
            } => self.renew(node, &certificate, &csr, signed_at_ms, &proof, now),
        };
        match result {
            Ok((answer, line)) => {
                let label = match line.0 {
                    true => "joined",
                    false => "renewed",
                };
                (
                    answer,
                    Outcome {
                        label,
                        line: line.1,
                    },
                )
            }
            Err((reason, message)) => (
                Answer::Refused {
                    reason,
                    message: message.clone(),
                },
                Outcome {
                    label: reason.as_str(),
                    line: message,
                },
            ),
        }
    }

    fn checked_csr(&self, node: &NodeName, csr: &[u8]) -> Result<Vec<u8>, (Refusal, String)> {
        let req = tether_link::csr::parse_and_verify(csr)
            .map_err(|e| (Refusal::BadRequest, e.to_string()))?;
        match req.node() {
            Some(n) if n == *node => Ok(req.public_point),
            Some(n) => Err((
                Refusal::NameMismatch,
                format!("the certificate request is for node {n} but the connection names {node}; use the same --node-name"),
            )),
            None => Err((
                Refusal::NameMismatch,
                format!(
                    "the certificate request's subject (CN {:?}) is not O=system:nodes, CN=system:node:<name>",
                    req.common_name
                ),
            )),
        }
    }

    fn issue(
        &self,
        node: &NodeName,
        point: &[u8],
        how: Issue,
        now: SystemTime,
    ) -> Result<(Answer, SystemTime), (Refusal, String)> {
        let issued = self
            .authority
            .issue(node, point, now)
            .map_err(|e| (Refusal::Unavailable, e))?;
        let record = IssueRecord {
            node: node.clone(),
            serial: issued.serial.clone(),
            not_after: issued.not_after,
            how,
        };
        self.commit
            .record(record, now)
            .map_err(|e| match e {
                super::store::StoreError::Revoked { .. } => (
                    Refusal::Revoked,
                    format!("node {node} is revoked: it needs a new bootstrap token (tether-hub token create --node {node}) and tether-edge join --force"),
                ),
                e => (Refusal::Unavailable, format!("cannot record the certificate: {e}")),
            })?;
        Ok((
            Answer::Issued {
                certificate: issued.der,
                ca: self.authority.ca_der().to_vec(),
                grace_s: self.grace.as_secs(),
            },
            issued.not_after,
        ))
    }

    #[allow(clippy::type_complexity)]
    fn join(
        &self,
        node: &NodeName,
        token: &str,
        csr: &[u8],
        now: SystemTime,
    ) -> Result<(Answer, (bool, String)), (Refusal, String)> {
        let point = self.checked_csr(node, csr)?;
        let live = self
            .commit
            .snapshot()
            .map_err(|e| {
                (
                    Refusal::Unavailable,
                    format!("cannot read the node records: {e}"),
                )
            })?
            .has_live_cert(node, now);
        let redeemed = self.tokens.redeem(token, node, live, now).map_err(|e| {
            // A failing store tells the edge only that tokens cannot be
            // checked; the hub's log gets the file and the error.
            if let Some(cause) = std::error::Error::source(&e) {
                log::error!("cannot check the token of {node}: {e}: {cause}");
            }
            (Refusal::Token, e.to_string())
        })?;
        let id = redeemed.id.clone();
        let (answer, until) = self.issue(node, &point, Issue::Joined { token: id.clone() }, now)?;
        Ok((
            answer,
            (
                true,
                format!(
                    "node {node} joined with token {id}{}: certificate valid until {}",
                    if redeemed.rejoin {
                        " (replacing its live certificate)"
                    } else {
                        ""
                    },
                    super::store::rfc3339(until)
                ),
            ),
        ))
    }

    #[allow(clippy::type_complexity)]
    fn renew(
        &self,
        node: &NodeName,
        cert: &[u8],
        csr: &[u8],
        signed_at_ms: u64,
        proof: &[u8],
        now: SystemTime,
    ) -> Result<(Answer, (bool, String)), (Refusal, String)> {
        let point = self.checked_csr(node, csr)?;
        let not_proven = |why: String| (Refusal::NotProven, why);
        if tether_link::tls::node_of_certificate(cert).as_deref() != Some(node.as_str()) {
            return Err(not_proven(format!(
                "the certificate presented is not node {node}'s"
            )));
        }
        let serial = tether_link::tls::serial_of_certificate(cert)
            .ok_or_else(|| not_proven("the certificate presented does not parse".into()))?;
        let nodes = self.commit.snapshot().map_err(|e| {
            (
                Refusal::Unavailable,
                format!("cannot read the node records: {e}"),
            )
        })?;
        match nodes.status(node, serial) {
            CertStatus::Current | CertStatus::Previous => {}
            CertStatus::Revoked { at } => {
                return Err((
                    Refusal::Revoked,
                    format!(
                        "node {node} was revoked at {}: it needs a new bootstrap token (tether-hub token create --node {node}) and tether-edge join --force",
                        super::store::rfc3339(at)
                    ),
                ))
            }
            CertStatus::Superseded => {
                return Err(not_proven(format!(
                    "the certificate presented is an older one of {node}; a newer one was issued since"
                )))
            }
            CertStatus::Unknown => {
                return Err(not_proven(format!(
                    "this hub has no record of issuing that certificate to {node}; join with a bootstrap token"
                )))
            }
        }
        let (_, until) = tether_link::tls::validity_of_certificate(cert)
            .ok_or_else(|| not_proven("the certificate's validity does not parse".into()))?;
        let until = UNIX_EPOCH + Duration::from_secs(until.max(0) as u64);
        let check_at = if now > until {
            if now > until + self.grace {
                return Err((
                    Refusal::PastGrace,
                    format!(
                        "the certificate of {node} expired at {}, longer ago than this hub's grace of {} days: it needs a new bootstrap token (tether-hub token create --node {node}) and tether-edge join --force",
                        super::store::rfc3339(until),
                        self.grace.as_secs() / 86_400
                    ),
                ));
            }
            // Checked as of its last valid second: expiry is judged above.
            until - Duration::from_secs(1)
        } else {
            now
        };
        self.authority.verify(cert, check_at).map_err(|e| {
            not_proven(format!(
                "the certificate presented is not valid from this CA: {e}"
            ))
        })?;
        let signed_at = UNIX_EPOCH + Duration::from_millis(signed_at_ms);
        let skew = now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        if skew > PROOF_SKEW {
            return Err(not_proven(format!(
                "the renewal was signed {} s away from the hub's clock (at most {} s): check the board's clock",
                skew.as_secs(),
                PROOF_SKEW.as_secs()
            )));
        }
        let spki = tether_link::tls::subject_public_key_info(cert)
            .ok_or_else(|| not_proven("the certificate has no public key".into()))?;
        let old_point = spki_point(spki)
            .ok_or_else(|| not_proven("the certificate's key is not ECDSA P-256".into()))?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            old_point,
        )
        .verify(&proof_message(node, csr, signed_at_ms), proof)
        .map_err(|_| not_proven("the proof is not signed by the certificate's key".into()))?;
        let (answer, until) = self.issue(node, &point, Issue::Renewed, now)?;
        Ok((
            answer,
            (
                false,
                format!(
                    "node {node} renewed its certificate: valid until {}",
                    super::store::rfc3339(until)
                ),
            ),
        ))
    }
}

/// The uncompressed point in a P-256 SubjectPublicKeyInfo (whole element).
fn spki_point(spki: &[u8]) -> Option<&[u8]> {
    let expected_prefix = tether_link::csr::p256_spki(&[4; 65]);
    let head = expected_prefix.len() - 65;
    (spki.len() == expected_prefix.len() && spki[..head] == expected_prefix[..head])
        .then(|| &spki[head..])
}

#[cfg(test)]
mod tests;

//! Every refusal of the join service and both successes, without sockets.

use super::*;
use crate::join::store::test_dir::TempDir;
use crate::join::tokens::{TokenOptions, Usage};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

const HOUR: Duration = Duration::from_secs(3600);

struct Board {
    key: EcdsaKeyPair,
}

impl Board {
    fn new() -> Board {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("gen");
        Board {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .expect("load"),
        }
    }

    fn csr(&self, node: &str) -> Vec<u8> {
        let node = NodeName::new(node).expect("name");
        let info = tether_link::csr::request_info(&node, self.key.public_key().as_ref());
        let sig = self.key.sign(&SystemRandom::new(), &info).expect("sign");
        tether_link::csr::assemble(&info, sig.as_ref())
    }

    fn prove(&self, node: &str, csr: &[u8], at: SystemTime) -> (u64, Vec<u8>) {
        let ms = at.duration_since(UNIX_EPOCH).expect("t").as_millis() as u64;
        let msg = proof_message(&NodeName::new(node).expect("n"), csr, ms);
        (
            ms,
            self.key
                .sign(&SystemRandom::new(), &msg)
                .expect("sign")
                .as_ref()
                .to_vec(),
        )
    }
}

struct Hub {
    _dir: TempDir,
    joiner: Joiner,
}

fn hub(lifetime: Duration, grace: Duration) -> Hub {
    let dir = TempDir::new("serve");
    crate::pki::init(&crate::pki::InitOptions {
        dir: dir.path().to_path_buf(),
        sans: vec!["hub.test".into()],
        force: false,
    })
    .expect("init");
    let joiner = Joiner::open(&JoinConfig {
        dir: dir.path().to_path_buf(),
        ca: dir.path().join(crate::pki::CA_CERT),
        ca_key: dir.path().join(crate::pki::CA_KEY),
        lifetime,
        grace,
    })
    .expect("open");
    Hub { _dir: dir, joiner }
}

fn token(h: &Hub, opts: TokenOptions, now: SystemTime) -> String {
    h.joiner
        .tokens
        .create(&opts, now)
        .expect("token")
        .to_string()
}

fn n(name: &str) -> NodeName {
    NodeName::new(name).expect("name")
}

fn join(h: &Hub, node: &str, token: &str, board: &Board, now: SystemTime) -> Answer {
    h.joiner
        .handle(
            &n(node),
            Request::Join {
                token: token.into(),
                csr: board.csr(node),
            },
            now,
        )
        .0
}

fn refused(a: &Answer) -> (Refusal, String) {
    match a {
        Answer::Refused { reason, message } => (*reason, message.clone()),
        Answer::Issued { .. } => panic!("issued, expected a refusal"),
    }
}

fn issued(a: &Answer) -> Vec<u8> {
    match a {
        Answer::Issued { certificate, .. } => certificate.clone(),
        Answer::Refused { reason, message } => panic!("refused {reason}: {message}"),
    }
}

fn renew(h: &Hub, node: &str, cert: &[u8], old: &Board, new: &Board, now: SystemTime) -> Answer {
    let csr = new.csr(node);
    let (ms, proof) = old.prove(node, &csr, now);
    h.joiner
        .handle(
            &n(node),
            Request::Renew {
                certificate: cert.to_vec(),
                csr,
                signed_at_ms: ms,
                proof,
            },
            now,
        )
        .0
}

#[test]
fn a_join_issues_a_certificate_for_the_boards_key() {
    let h = hub(HOUR, HOUR);
    let now = SystemTime::now();
    let t = token(&h, TokenOptions::default(), now);
    let board = Board::new();
    let (answer, outcome) = h.joiner.handle(
        &n("edge-1"),
        Request::Join {
            token: t.clone(),
            csr: board.csr("edge-1"),
        },
        now,
    );
    let cert = issued(&answer);
    assert_eq!(outcome.label, "joined");
    assert!(
        !outcome.line.contains(&t),
        "no secret in the log: {}",
        outcome.line
    );
    assert_eq!(
        tether_link::tls::node_of_certificate(&cert).as_deref(),
        Some("edge-1")
    );
    let spki = tether_link::tls::subject_public_key_info(&cert).expect("spki");
    assert_eq!(
        spki,
        tether_link::csr::p256_spki(board.key.public_key().as_ref())
    );
    let nodes = h.joiner.commit.snapshot().expect("nodes");
    let serial = tether_link::tls::serial_of_certificate(&cert).expect("serial");
    assert_eq!(nodes.status(&n("edge-1"), serial), CertStatus::Current);
}

#[test]
fn token_refusals_are_specific() {
    let h = hub(HOUR, HOUR);
    let now = SystemTime::now();
    let board = Board::new();
    // Unknown and malformed.
    let (r, m) = refused(&join(&h, "edge-1", "abcdef.0123456789abcdef", &board, now));
    assert_eq!(r, Refusal::Token);
    assert!(m.contains("abcdef"), "{m}");
    assert_eq!(
        refused(&join(&h, "edge-1", "garbage", &board, now)).0,
        Refusal::Token
    );
    // Expired.
    let t = token(
        &h,
        TokenOptions {
            ttl: Duration::from_secs(60),
            ..Default::default()
        },
        now,
    );
    let (r, m) = refused(&join(
        &h,
        "edge-1",
        &t,
        &board,
        now + Duration::from_secs(61),
    ));
    assert_eq!(r, Refusal::Token);
    assert!(m.contains("expired"), "{m}");
    // Bound to another node.
    let t = token(
        &h,
        TokenOptions {
            node: Some(n("edge-a")),
            ..Default::default()
        },
        now,
    );
    let (r, m) = refused(&join(&h, "edge-b", &t, &board, now));
    assert_eq!(r, Refusal::Token);
    assert!(m.contains("edge-a"), "{m}");
    // Single use, used twice.
    let t = token(
        &h,
        TokenOptions {
            single_use: true,
            ..Default::default()
        },
        now,
    );
    issued(&join(&h, "edge-2", &t, &Board::new(), now));
    let (r, m) = refused(&join(&h, "edge-3", &t, &Board::new(), now));
    assert_eq!(r, Refusal::Token);
    assert!(m.contains("used"), "{m}");
    // A node with a live certificate needs a rejoin token.
    let t = token(&h, TokenOptions::default(), now);
    let (r, m) = refused(&join(&h, "edge-2", &t, &Board::new(), now));
    assert_eq!(r, Refusal::Token);
    assert!(m.contains("rejoin"), "{m}");
    let t = token(
        &h,
        TokenOptions {
            usage: Usage::Rejoin,
            ..Default::default()
        },
        now,
    );
    issued(&join(&h, "edge-2", &t, &Board::new(), now));
}

#[test]
fn a_request_for_another_name_or_with_a_broken_signature_is_refused() {
    let h = hub(HOUR, HOUR);
    let now = SystemTime::now();
    let t = token(&h, TokenOptions::default(), now);
    let board = Board::new();
    let answer = h
        .joiner
        .handle(
            &n("edge-1"),
            Request::Join {
                token: t.clone(),
                csr: board.csr("edge-9"),
            },
            now,
        )
        .0;
    let (r, m) = refused(&answer);
    assert_eq!(r, Refusal::NameMismatch);
    assert!(m.contains("edge-9") && m.contains("edge-1"), "{m}");
    let mut csr = board.csr("edge-1");
    let last = csr.len() - 1;
    csr[last] ^= 1;
    let answer = h
        .joiner
        .handle(&n("edge-1"), Request::Join { token: t, csr }, now)
        .0;
    assert_eq!(refused(&answer).0, Refusal::BadRequest);
}

#[test]
fn renewal_before_expiry_within_grace_and_after_it() {
    let h = hub(Duration::from_secs(300), Duration::from_secs(600));
    let now = SystemTime::now();
    let t = token(&h, TokenOptions::default(), now);
    let b1 = Board::new();
    let c1 = issued(&join(&h, "edge-1", &t, &b1, now));

    // Before expiry.
    let b2 = Board::new();
    let at = now + Duration::from_secs(200);
    let c2 = issued(&renew(&h, "edge-1", &c1, &b1, &b2, at));
    let nodes = h.joiner.commit.snapshot().expect("nodes");
    let s = |c: &[u8]| {
        tether_link::tls::serial_of_certificate(c)
            .expect("serial")
            .to_vec()
    };
    assert_eq!(nodes.status(&n("edge-1"), &s(&c2)), CertStatus::Current);
    assert_eq!(nodes.status(&n("edge-1"), &s(&c1)), CertStatus::Previous);

    // Expired 5 minutes ago, grace 10: renewed.
    let b3 = Board::new();
    let at = at + Duration::from_secs(300 + 300);
    let c3 = issued(&renew(&h, "edge-1", &c2, &b2, &b3, at));

    // Past the grace: refused, saying what to do.
    let b4 = Board::new();
    let late = at + Duration::from_secs(300 + 601);
    let (r, m) = refused(&renew(&h, "edge-1", &c3, &b3, &b4, late));
    assert_eq!(r, Refusal::PastGrace);
    assert!(m.contains("token create"), "{m}");

    // A superseded certificate (c1, two generations back) is refused.
    let (r, _) = refused(&renew(&h, "edge-1", &c1, &b1, &Board::new(), at));
    assert_eq!(r, Refusal::NotProven);
}

#[test]
fn a_renewal_must_be_proven_by_the_current_key() {
    let h = hub(HOUR, HOUR);
    let now = SystemTime::now();
    let t = token(&h, TokenOptions::default(), now);
    let b1 = Board::new();
    let c1 = issued(&join(&h, "edge-1", &t, &b1, now));
    // A thief with the certificate but not the key.
    let thief = Board::new();
    let (r, m) = refused(&renew(&h, "edge-1", &c1, &thief, &thief, now));
    assert_eq!(r, Refusal::NotProven);
    assert!(m.contains("key"), "{m}");
    // Another node's certificate.
    let (r, _) = refused(&renew(&h, "edge-2", &c1, &b1, &Board::new(), now));
    assert_eq!(r, Refusal::NotProven);
    // An old proof.
    let b2 = Board::new();
    let csr = b2.csr("edge-1");
    let (ms, proof) = b1.prove("edge-1", &csr, now - Duration::from_secs(3600));
    let a = h
        .joiner
        .handle(
            &n("edge-1"),
            Request::Renew {
                certificate: c1.clone(),
                csr,
                signed_at_ms: ms,
                proof,
            },
            now,
        )
        .0;
    let (r, m) = refused(&a);
    assert_eq!(r, Refusal::NotProven);
    assert!(m.contains("clock"), "{m}");
}

#[test]
fn a_revoked_node_cannot_renew_until_it_joins_again() {
    let h = hub(HOUR, HOUR);
    let now = SystemTime::now();
    let t = token(&h, TokenOptions::default(), now);
    let b1 = Board::new();
    let c1 = issued(&join(&h, "edge-1", &t, &b1, now));
    h.joiner
        .commit
        .store()
        .revoke(&n("edge-1"), now)
        .expect("revoke");
    let (r, m) = refused(&renew(&h, "edge-1", &c1, &b1, &Board::new(), now));
    assert_eq!(r, Refusal::Revoked);
    assert!(m.contains("token create"), "{m}");
    // A token brings it back.
    issued(&join(&h, "edge-1", &t, &Board::new(), now));
}

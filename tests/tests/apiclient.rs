//! The edge's HTTPS client to kube-apiserver in direct mode: TLS end to end
//! with the node's client certificate, and a certificate rotated on disk
//! is picked up by the next connection.

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::thread;
use tether_edge::apiclient::{ApiClient, Identity};
use tether_edge::config::Apiserver;
use tether_tests::pki::Pki;

/// A one-shot TLS server: reports the client certificate it saw, answers
/// one line.
fn tls_server(pki: &Pki, conns: usize) -> (std::net::SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let config = tether_link::tls::server_config(&pki.hub_cert, &pki.hub_key, Some(&pki.ca))
        .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for tcp in listener.incoming().take(conns) {
            let Ok(tcp) = tcp else { return };
            let conn = rustls::ServerConnection::new(config.clone()).expect("conn");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut line = [0u8; 5];
            if tls.read_exact(&mut line).is_err() {
                continue;
            }
            let cert = tls
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default();
            let _ = tls.write_all(b"pong\n");
            let _ = tls.flush();
            let _ = tx.send(cert);
        }
    });
    (addr, rx)
}

#[test]
fn direct_tls_with_the_node_certificate_and_rotation() {
    let pki = Pki::new();
    let (addr, seen) = tls_server(&pki, 2);
    let (cert, key) = pki.node_cert("system:node:edge-1");
    let cfg = Apiserver {
        upstream: None,
        direct: Some(addr.to_string()),
        server_name: "localhost".into(),
        ca: pki.ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let client = ApiClient::new(cfg, None).expect("client");
    let ask = || {
        smol::block_on(async {
            let mut conn = client.connect(Identity::Node).await.expect("connect");
            conn.write_all(b"ping\n").await.expect("write");
            conn.flush().await.expect("flush");
            let mut answer = [0u8; 5];
            conn.read_exact(&mut answer).await.expect("read");
            answer
        })
    };
    assert_eq!(&ask(), b"pong\n");
    let first = seen.recv().expect("first cert");
    assert_eq!(
        tether_link::tls::node_of_certificate(&first).as_deref(),
        Some("edge-1")
    );

    // kubelet rotates its certificate: new files in the same place.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (new_cert, new_key) = pki.node_cert("system:node:edge-1");
    std::fs::copy(&new_cert, &cert).expect("rotate cert");
    std::fs::copy(&new_key, &key).expect("rotate key");
    assert_eq!(&ask(), b"pong\n");
    let second = seen.recv().expect("second cert");
    assert_ne!(first, second, "the rotated certificate was not used");
}

#[test]
fn missing_credentials_are_a_clear_error() {
    let pki = Pki::new();
    let cfg = Apiserver {
        upstream: None,
        direct: Some("127.0.0.1:1".into()),
        server_name: "localhost".into(),
        ca: pki.ca.clone(),
        cert: pki.dir.join("nope.pem"),
        key: pki.dir.join("nope-key.pem"),
    };
    let err = ApiClient::new(cfg, None).err().expect("must fail");
    assert!(err.contains("nope.pem"), "{err}");
}

//! kube-apiserver's egress finds a node by an address of its Node status
//! (issue 4): kubelet's GET of its own Node object passes through the
//! edge's proxy, the edge tells the hub the addresses in it, and a
//! `CONNECT <address>:<port>` then reaches that node.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_tests::apiserver::StandIn;
use tether_tests::client::{call, JSON, KUBELET};
use tether_tests::cluster::{start_edge, start_hub, wait_linked, EdgeAuth, Transport};
use tether_tests::echo::EchoServer;
use tether_tests::fleet::edge_config;
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;
use tether_tests::tunnel::{self, Tunnel};

const WAIT: Duration = Duration::from_secs(30);

/// TLS to the egress as kube-apiserver, `CONNECT target`; the status line
/// and the tunnel.
fn connect(pki: &Pki, egress: SocketAddr, target: &str) -> (String, Tunnel) {
    let (cert, key) = pki.node_cert("kube-apiserver");
    let config = tether_link::tls::client_config(&pki.ca, Some((&cert, &key))).expect("tls");
    tunnel::connect(egress, &Arc::new(config), target).expect("CONNECT")
}

#[test]
fn the_egress_finds_a_node_by_its_reported_address() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let service = EchoServer::start();
    let egress: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[upstream.kube-apiserver]\naddress = \"{}\"\n[egress]\nlisten = \"{egress}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ndirect = \"none\"\n",
            standin.addr(),
            pki.hub_cert.display(),
            pki.hub_key.display(),
            pki.ca.display()
        ),
    );
    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = format!(
        "{}[services]\nallow_ports = [{}]\n",
        edge_config(&pki, proxy, None, ""),
        service.addr().port()
    );
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &config,
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT), "{}", edge.logs());
    assert!(edge.wait_for_log("API proxy on", WAIT), "{}", edge.logs());

    // Before the edge has seen its Node object, the address is nobody's
    // (and with direct = "none" the hub does not dial it itself).
    let (status, _) = connect(
        &pki,
        egress,
        &format!("192.168.10.11:{}", service.addr().port()),
    );
    assert!(status.starts_with("HTTP/1.1 404 "), "{status}");

    // kubelet gets its node through the proxy; the recorded Node says
    // 192.168.10.11 (InternalIP) and edge-1 (Hostname).
    let node = call(proxy, KUBELET, "GET", "/api/v1/nodes/edge-1", JSON, b"");
    assert_eq!(node.status, 200, "{}", edge.logs());
    assert!(
        hub.proc.wait_for_log("node edge-1 reports addresses", WAIT),
        "{}\n{}",
        hub.proc.logs(),
        edge.logs()
    );
    let (status, mut tunnel) = connect(
        &pki,
        egress,
        &format!("192.168.10.11:{}", service.addr().port()),
    );
    assert_eq!(
        status,
        "HTTP/1.1 200 Connection established",
        "{}",
        hub.proc.logs()
    );
    tunnel.write_all(b"ping").expect("write");
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping");
    // Another address is still nobody's.
    let (status, _) = connect(&pki, egress, &format!("10.9.9.9:{}", service.addr().port()));
    assert!(status.starts_with("HTTP/1.1 404 "), "{status}");
}

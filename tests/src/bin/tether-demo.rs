//! tether-demo: the main job on one machine. Starts a tether-hub and a
//! tether-edge linked over TLS 1.3 with a client certificate, a stand-in
//! upstream behind the hub, and shows their state: the hub's node list and
//! metrics, and a request travelling edge → link → hub → upstream.
//!
//! Usage: cargo run --release -p tether-tests --bin tether-demo [-- --once]
//! Without --once it keeps running and prints the node list every 10 s
//! until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;
use tether_tests::cluster::{
    metrics, nodes, start_edge, start_hub, wait_linked, EdgeAuth, Transport,
};
use tether_tests::echo::{roundtrip, EchoServer};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

fn main() {
    let once = std::env::args().any(|a| a == "--once");
    let pki = Pki::new();
    let upstream = EchoServer::start();
    println!("== stand-in upstream (echo) on {}", upstream.addr());
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!("[upstream.echo]\naddress = \"{}\"\n", upstream.addr()),
    );
    println!(
        "== tether-hub: links on {}, admin on http://{}/nodes",
        hub.link, hub.admin
    );
    let fwd: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Certificate("system:node:edge-1".into()),
        &format!("[[forward]]\nlisten = \"{fwd}\"\nupstream = \"echo\"\n"),
    );
    if !wait_linked(hub.admin, "edge-1", Duration::from_secs(30)) {
        eprintln!(
            "the edge did not link:\n{}\n{}",
            hub.proc.logs(),
            edge.logs()
        );
        std::process::exit(1);
    }
    println!(
        "== edge-1 is linked (config and certificates in {})",
        pki.dir.display()
    );
    let reply = roundtrip(fwd, b"hello through the link\n", Duration::from_secs(10));
    match reply {
        Ok(r) => println!(
            "== {fwd} (edge forward) -> hub -> echo answered: {}",
            String::from_utf8_lossy(&r).trim()
        ),
        Err(e) => println!("== round trip failed: {e}"),
    }
    println!("== hub node list:\n{}", nodes(hub.admin));
    let m = metrics(hub.admin);
    println!("== hub metrics (excerpt):");
    for line in m.lines().filter(|l| !l.starts_with('#')).take(12) {
        println!("   {line}");
    }
    if once {
        return;
    }
    println!("== running; Ctrl-C to stop");
    loop {
        std::thread::sleep(Duration::from_secs(10));
        println!("{}", nodes(hub.admin));
    }
}

//! link-bench: measures the link's figures on this machine and prints them.
//!
//! Runs the real release binaries on loopback with TLS 1.3:
//! - throughput of one stream over one link (client → edge → link → hub →
//!   sink upstream), with the wire overhead per stream frame;
//! - idle traffic of one link on the wire at the default keepalive, counted
//!   as TCP payload bytes by the fault proxy sitting between edge and hub;
//! - the idle edge's resident memory, read from /proc.
//!
//! Usage: cargo run --release -p tether-tests --bin link-bench [-- --mb N --idle-secs S]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tether_link::frame::data_frame_len;
use tether_link::mux::MAX_DATA_FRAME;
use tether_tests::bench::{arg, status_kib};
use tether_tests::cluster::{node_field, start_edge, start_hub, wait_linked, EdgeAuth, Transport};
use tether_tests::echo::SinkServer;
use tether_tests::faultproxy::FaultProxy;
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

fn bytes_in(admin: SocketAddr) -> u64 {
    node_field(admin, "edge-1", "bytes_in")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mb = arg("--mb", 1024);
    let idle_secs = arg("--idle-secs", 125);
    let wait = Duration::from_secs(30);
    let pki = Pki::new();
    let sink = SinkServer::start();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!("[upstream.sink]\naddress = \"{}\"\n", sink.addr()),
    );
    let proxy = FaultProxy::start(hub.link).expect("proxy");
    let fwd: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let edge = start_edge(
        &pki,
        "edge-1",
        proxy.addr(),
        Transport::Tls,
        EdgeAuth::Token,
        &format!("[[forward]]\nlisten = \"{fwd}\"\nupstream = \"sink\"\n"),
    );
    assert!(
        wait_linked(hub.admin, "edge-1", wait),
        "no link:\n{}",
        edge.logs()
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );

    // Idle first, while nothing else has run on the link.
    std::thread::sleep(Duration::from_secs(3));
    let rss = status_kib(edge.pid(), "VmRSS:");
    let hwm = status_kib(edge.pid(), "VmHWM:");
    println!("edge idle RSS, link up over TLS: {rss} KiB (peak {hwm} KiB)");

    let (up0, down0) = (proxy.bytes_up(), proxy.bytes_down());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let secs = start.elapsed().as_secs_f64();
    let idle = (proxy.bytes_up() - up0) + (proxy.bytes_down() - down0);
    println!(
        "idle link traffic at default keepalive (60 s): {idle} TCP payload bytes in {secs:.0} s = {:.2} B/s ({} up, {} down)",
        idle as f64 / secs,
        proxy.bytes_up() - up0,
        proxy.bytes_down() - down0
    );

    // Throughput: one stream, `mb` MiB.
    let total = mb << 20;
    let chunk = vec![0x5au8; 256 * 1024];
    let before = bytes_in(hub.admin);
    let start = Instant::now();
    let mut tcp = TcpStream::connect(fwd).expect("forward");
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        tcp.write_all(&chunk[..n]).expect("write");
        sent += n as u64;
    }
    tcp.shutdown(Shutdown::Write).expect("half-close");
    let mut count = [0u8; 8];
    tcp.set_read_timeout(Some(Duration::from_secs(300))).ok();
    tcp.read_exact(&mut count).expect("sink count");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        u64::from_be_bytes(count),
        total,
        "sink received a different amount"
    );
    let wire = bytes_in(hub.admin) - before;
    println!(
        "one stream over one TLS link: {} MiB in {secs:.2} s = {:.1} MB/s ({:.1} MiB/s)",
        mb,
        total as f64 / secs / 1e6,
        total as f64 / secs / (1 << 20) as f64
    );
    let frames = total.div_ceil(MAX_DATA_FRAME as u64);
    println!(
        "stream overhead: {} bytes per {} KiB Data frame (its header); all link bytes the hub received over the payload: \
         {:.2} bytes per {} KiB frame (MQTT headers, topics, batch headers, credit and PUBACK traffic; {} MQTT bytes for {} payload bytes)",
        data_frame_len(1, MAX_DATA_FRAME) - MAX_DATA_FRAME,
        MAX_DATA_FRAME / 1024,
        (wire.saturating_sub(total)) as f64 / frames as f64,
        MAX_DATA_FRAME / 1024,
        wire,
        total
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |s| s.trim().to_string())
}

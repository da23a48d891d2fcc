//! Scale-out through a broker: edges and two hub replicas meet at Debian's
//! mosquitto, whose ACL keeps every node to its own topics. Streams are
//! shared out between the replicas, and each stream stays with the replica
//! that accepted it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;
use tether_link::mqtt::{self, Connect, Packet, Pid, Protocol, QoS, QosPid};
use tether_tests::cluster::{node_field, token_of};
use tether_tests::echo::{roundtrip, EchoServer};
use tether_tests::mosquitto::{self, Mosquitto};
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, wait_http_ok, Proc};

const WAIT: Duration = Duration::from_secs(30);
const HUB_PASSWORD: &str = "hub-password-0123456789";

struct Replica {
    proc: Proc,
    admin: SocketAddr,
}

/// Whether the broker in a test serves TLS (the fleet then uses it too).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    On,
    Off,
}

fn tls_lines(pki: &Pki, tls: Tls) -> String {
    match tls {
        Tls::On => format!(
            "ca = \"{}\"\nserver_name = \"localhost\"\n",
            pki.ca.display()
        ),
        Tls::Off => String::new(),
    }
}

fn start_replica(pki: &Pki, broker: SocketAddr, echo: &EchoServer, n: usize, tls: Tls) -> Replica {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let pass = pki.write("hub-pass", HUB_PASSWORD);
    let cfg = pki.write(
        &format!("replica-{n}.toml"),
        &format!(
            "log_level = \"debug\"\n[listen]\nadmin = \"{admin}\"\n[broker]\naddress = \"{broker}\"\nusername = \"hub\"\npassword_file = \"{}\"\n{}[link]\nkeepalive = \"5s\"\n[upstream.echo]\naddress = \"{}\"\n",
            pass.display(),
            tls_lines(pki, tls),
            echo.addr()
        ),
    );
    let cfg = cfg.to_string_lossy().into_owned();
    let proc = Proc::start(&format!("hub-{n}"), &bin("tether-hub"), &["--config", &cfg]);
    assert!(wait_http_ok(admin, "/healthz", WAIT), "{}", proc.logs());
    assert!(
        proc.wait_for_log("broker connection up", WAIT),
        "{}",
        proc.logs()
    );
    Replica { proc, admin }
}

fn start_edge(pki: &Pki, node: &str, broker: SocketAddr, fwd: SocketAddr, tls: Tls) -> Proc {
    let token = pki.write(&format!("token-{node}"), &token_of(node));
    let cfg = pki.write(
        &format!("edge-{node}.toml"),
        &format!(
            "node = \"{node}\"\nlog_level = \"debug\"\n[hub]\naddress = \"{broker}\"\nbroker = true\n{}token_file = \"{}\"\n[link]\nkeepalive = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n[[forward]]\nlisten = \"{fwd}\"\nupstream = \"echo\"\n",
            match tls {
                Tls::On => tls_lines(pki, tls),
                Tls::Off => "plaintext = true\n".to_string(),
            },
            token.display()
        ),
    );
    let cfg = cfg.to_string_lossy().into_owned();
    let edge = Proc::start(node, &bin("tether-edge"), &["--config", &cfg]);
    assert!(edge.wait_for_log("up", WAIT), "{}", edge.logs());
    edge
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

fn streams_opened(admin: SocketAddr, node: &str) -> u64 {
    node_field(admin, node, "streams_opened")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn broker_with_fleet(pki: &Pki, tls: Tls) -> Mosquitto {
    let t1 = token_of("edge-1");
    let t2 = token_of("edge-2");
    let users = [
        ("hub", HUB_PASSWORD),
        ("edge-1", t1.as_str()),
        ("edge-2", t2.as_str()),
    ];
    mosquitto::start(pki, &users, tls == Tls::On)
}

#[test]
fn two_replicas_share_the_streams_of_two_edges() {
    if mosquitto::binary().is_none() {
        panic!("mosquitto is not installed: run .ci/run, which installs it");
    }
    let pki = Pki::new();
    let echo = EchoServer::start();
    // TLS 1.3 everywhere: edges and replicas to the broker.
    let broker = broker_with_fleet(&pki, Tls::On);
    let hubs = [
        start_replica(&pki, broker.addr, &echo, 1, Tls::On),
        start_replica(&pki, broker.addr, &echo, 2, Tls::On),
    ];
    let fwd1: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let fwd2: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let edges = [
        start_edge(&pki, "edge-1", broker.addr, fwd1, Tls::On),
        start_edge(&pki, "edge-2", broker.addr, fwd2, Tls::On),
    ];
    let mut runs = Vec::new();
    for i in 0..24 {
        let fwd = if i % 2 == 0 { fwd1 } else { fwd2 };
        let data = pattern(i, 1000 + i * 20_000);
        runs.push(thread::spawn(move || (roundtrip(fwd, &data, WAIT), data)));
    }
    for run in runs {
        let (got, want) = run.join().expect("thread");
        let got = got.unwrap_or_else(|e| {
            panic!(
                "round trip failed: {e}\n{}\n{}",
                edges[0].logs(),
                hubs[0].proc.logs()
            )
        });
        assert!(
            got == want,
            "stream data differs ({} vs {} bytes)",
            got.len(),
            want.len()
        );
    }
    // Both replicas carried streams: the shared subscription spread the
    // opens, and every stream finished on the replica that accepted it.
    let per_hub: Vec<u64> = hubs
        .iter()
        .map(|h| streams_opened(h.admin, "edge-1") + streams_opened(h.admin, "edge-2"))
        .collect();
    assert_eq!(per_hub.iter().sum::<u64>(), 24, "{per_hub:?}");
    assert!(
        per_hub.iter().all(|n| *n > 0),
        "one replica took every stream: {per_hub:?}"
    );
}

#[test]
fn a_replica_restart_leaves_the_fleet_served() {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let broker = broker_with_fleet(&pki, Tls::Off);
    let mut first = start_replica(&pki, broker.addr, &echo, 1, Tls::Off);
    let second = start_replica(&pki, broker.addr, &echo, 2, Tls::Off);
    let fwd: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _edge = start_edge(&pki, "edge-1", broker.addr, fwd, Tls::Off);
    first.proc.kill();
    // With one replica gone, the shared subscription hands every open to
    // the one that is left.
    for i in 0..6 {
        let data = pattern(i, 50_000);
        let got = roundtrip(fwd, &data, WAIT).expect("round trip");
        assert!(got == data);
    }
    assert!(streams_opened(second.admin, "edge-1") >= 6);
}

/// A raw MQTT client: CONNECT as `user`, returns the connection after CONNACK.
fn mqtt_client(broker: SocketAddr, user: &str, password: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(broker).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = Vec::new();
    mqtt::encode(
        &Packet::Connect(Connect {
            protocol: Protocol::MQTT311,
            keep_alive: 60,
            client_id: &format!("raw-{user}-{}", free_port()),
            clean_session: true,
            last_will: None,
            username: Some(user),
            password: Some(password.as_bytes()),
        }),
        &mut out,
    )
    .expect("encode");
    tcp.write_all(&out).expect("write");
    let mut ack = [0u8; 4];
    tcp.read_exact(&mut ack).expect("connack");
    assert_eq!(ack, [0x20, 2, 0, 0], "broker refused {user}");
    tcp
}

fn subscribe(tcp: &mut TcpStream, topic: &str) -> u8 {
    let mut out = Vec::new();
    mqtt::encode(
        &Packet::Subscribe(mqtt::Subscribe {
            pid: Pid::try_from(1).expect("pid"),
            topics: vec![mqtt::SubscribeTopic {
                topic_path: topic.into(),
                qos: QoS::AtLeastOnce,
            }],
        }),
        &mut out,
    )
    .expect("encode");
    tcp.write_all(&out).expect("write");
    let mut ack = [0u8; 5];
    tcp.read_exact(&mut ack).expect("suback");
    ack[4]
}

fn publish(tcp: &mut TcpStream, topic: &str, payload: &[u8]) {
    let mut out = Vec::new();
    mqtt::encode(
        &Packet::Publish(mqtt::Publish {
            dup: false,
            qospid: QosPid::AtLeastOnce(Pid::try_from(2).expect("pid")),
            retain: false,
            topic_name: topic,
            payload,
        }),
        &mut out,
    )
    .expect("encode");
    tcp.write_all(&out).expect("write");
}

#[test]
fn the_acl_keeps_each_node_to_its_own_topics() {
    let pki = Pki::new();
    let broker = broker_with_fleet(&pki, Tls::Off);
    let mut observer = mqtt_client(broker.addr, "hub", HUB_PASSWORD);
    assert_eq!(subscribe(&mut observer, "tether/+/up/#"), 1);
    let mut thief = mqtt_client(broker.addr, "edge-2", &token_of("edge-2"));
    // mosquitto grants a 3.1.1 subscription and applies the read ACL per
    // message: what the hubs send edge-1 never reaches edge-2.
    subscribe(&mut thief, "tether/edge-1/down");
    publish(&mut observer, "tether/edge-1/down", b"for edge-1 only");
    let mut leak = [0u8; 256];
    thief
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    match thief.read(&mut leak) {
        Ok(n) => assert!(
            !leak[..n].windows(8).any(|w| w == b"edge-1 o"),
            "edge-2 read edge-1's topic"
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    // The observer's own PUBACK must not confuse what it reads next.
    observer
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // Publishing on another node's up topic never reaches a hub; its own does.
    publish(&mut thief, "tether/edge-1/up", b"forged");
    publish(&mut thief, "tether/edge-2/up", b"genuine");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    observer
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    while let Ok(n) = observer.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(7).any(|w| w == b"genuine") {
            break;
        }
    }
    assert!(
        seen.windows(7).any(|w| w == b"genuine"),
        "the node's own publish did not arrive"
    );
    assert!(
        !seen.windows(6).any(|w| w == b"forged"),
        "a forged publish reached the hubs"
    );
}

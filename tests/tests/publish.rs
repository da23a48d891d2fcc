//! Edge web services published on the hub under paths (issue 4): a
//! request to `http://<hub>/edge-1/app/...` reaches the service on the
//! board with the prefix removed, through the link; an unknown path gets
//! 404 from the hub.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tether_tests::cluster::{start_edge, start_hub, wait_linked, EdgeAuth, Transport};
use tether_tests::pki::Pki;
use tether_tests::procs::free_port;

const WAIT: Duration = Duration::from_secs(30);

/// A web service on the board: answers each request with its request
/// line and the X-Forwarded-Prefix it got.
fn start_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut prefix = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(p) = line.strip_prefix("X-Forwarded-Prefix: ") {
                        prefix = p.trim().to_owned();
                    }
                }
                let body = format!("{} via {prefix}", request.trim());
                let mut tcp = tcp;
                let _ = write!(
                    tcp,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

fn get(hub: SocketAddr, target: &str) -> String {
    let mut tcp = TcpStream::connect(hub).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(tcp, "GET {target} HTTP/1.1\r\nHost: hub\r\n\r\n").expect("write");
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer
}

#[test]
fn http_services_of_a_board_are_published_under_paths() {
    let pki = Pki::new();
    let service = start_service();
    let web: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[[expose]]\nlisten = \"{web}\"\nnode = \"edge-1\"\nport = {}\npath = \"/edge-1/app\"\n[[expose]]\nlisten = \"{web}\"\nnode = \"edge-1\"\nport = 1\npath = \"/edge-1/closed\"\n",
            service.port()
        ),
    );
    let edge = start_edge(
        &pki,
        "edge-1",
        hub.link,
        Transport::Tls,
        EdgeAuth::Token,
        &format!("[services]\nallow_ports = [{}]\n", service.port()),
    );
    assert!(wait_linked(hub.admin, "edge-1", WAIT), "{}", edge.logs());

    let answer = get(web, "/edge-1/app/status?verbose=1");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK"),
        "{answer}\n{}",
        hub.proc.logs()
    );
    assert!(
        answer.ends_with("GET /status?verbose=1 HTTP/1.1 via /edge-1/app"),
        "{answer}"
    );
    let answer = get(web, "/edge-1/app");
    assert!(
        answer.ends_with("GET / HTTP/1.1 via /edge-1/app"),
        "{answer}"
    );
    // Nothing published there.
    assert!(get(web, "/edge-2/app").starts_with("HTTP/1.1 404 "));
    // Published, but the edge does not allow the port.
    assert!(get(web, "/edge-1/closed").starts_with("HTTP/1.1 502 "));
    // Garbage: a head that never ends gets 400 once it passes the bound,
    // and the port goes on serving.
    let mut tcp = TcpStream::connect(web).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = tcp.write_all(&[b'x'; 20 * 1024]);
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(get(web, "\u{1}\u{2}").starts_with("HTTP/1.1 404 "));
    assert!(get(web, "/edge-1/app").starts_with("HTTP/1.1 200 OK"));
}

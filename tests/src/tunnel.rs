//! kube-apiserver's side of the hub's egress in tests: TLS to the egress
//! endpoint with a client configuration, `CONNECT <target>`, and the
//! tunnel that follows.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A tunnel through the hub's egress: the TLS connection to the egress
/// endpoint, after its CONNECT answer.
pub type Tunnel = StreamOwned<ClientConnection, TcpStream>;

/// How long reads and writes on the tunnel may block.
const WAIT: Duration = Duration::from_secs(30);

/// Connects to the egress at `egress` (its certificate names `localhost`)
/// with `config`, sends `CONNECT target` and reads the answer head byte by
/// byte, so that what follows stays in the tunnel. Returns the answer's
/// status line and the tunnel (only usable after a 200).
///
/// # Errors
///
/// The connection or the TLS handshake failed.
pub fn connect(
    egress: SocketAddr,
    config: &Arc<ClientConfig>,
    target: &str,
) -> io::Result<(String, Tunnel)> {
    let tcp = TcpStream::connect(egress)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    Ok((status, tls))
}

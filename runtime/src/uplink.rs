//! Keeps exactly one link to the hub up.
//!
//! Connect (TCP, then TLS), attach the connection to the session, drive it
//! until it fails, wait a jittered backoff, repeat. The session, its streams
//! and its unacknowledged publishes live across all of this, so a reconnect
//! resumes where the last connection stopped.

use crate::config::{Credentials, Hub, Link as LinkConfig};
use futures_lite::FutureExt;
use futures_rustls::TlsConnector;
use log::{debug, error, info, warn};
use rustls::pki_types::ServerName;
use smol::net::TcpStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_link::backoff::{random_seed, Backoff};
use tether_link::io::{DriveError, Link};
use tether_link::mux::Side;
use tether_link::session::{Event, Session};
use tether_link::tls;
use tether_link::topic::NodeName;

/// A link that stayed up this long counts as healthy: backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// A fresh edge-side link for `node`; `broker` routes streams to hub
/// replicas behind a broker.
pub fn new_link(node: NodeName, cfg: &LinkConfig, broker: bool) -> Link {
    let session = tether_link::session::Config {
        routed: broker,
        ..cfg.session.clone()
    };
    Link::new(Session::new(
        Side::Edge,
        node,
        session,
        random_seed() as u32,
    ))
}

/// Builds the TLS client for `hub`, or `None` for plaintext.
pub fn tls_connector(hub: &Hub) -> Result<Option<TlsConnector>, String> {
    if hub.plaintext {
        return Ok(None);
    }
    let ca = hub
        .ca
        .as_deref()
        .ok_or("hub.ca is required without plaintext")?;
    let identity = match &hub.credentials {
        Some(Credentials::Certificate { cert, key }) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let config = tls::client_config(ca, identity).map_err(|e| e.to_string())?;
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// When the files the TLS client is built from last changed: a renewed
/// certificate (or CA) is picked up at the next connection.
fn identity_stamp(hub: &Hub) -> Vec<Option<(std::time::SystemTime, u64)>> {
    let mut files: Vec<&std::path::Path> = hub.ca.iter().map(|p| p.as_path()).collect();
    if let Some(Credentials::Certificate { cert, key }) = &hub.credentials {
        files.push(cert);
        files.push(key);
    }
    files
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Runs the link forever: connect, drive, back off, reconnect.
pub async fn run(link: Link, hub: Hub, cfg: LinkConfig, tls: Option<TlsConnector>) {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max, random_seed());
    let mut failures = 0u32;
    let mut tls = tls;
    let mut stamp = identity_stamp(&hub);
    loop {
        if tls.is_some() {
            let now = identity_stamp(&hub);
            if now != stamp {
                stamp = now;
                match tls_connector(&hub) {
                    Ok(t) => {
                        info!("the hub certificate files changed: the link uses them from now on");
                        tls = t;
                    }
                    Err(e) => warn!("the hub certificate files changed but do not load, keeping the previous ones: {e}"),
                }
            }
        }
        let started = Instant::now();
        let mut went_up = false;
        let outcome = connect(&hub, &cfg, tls.as_ref())
            .or(async {
                async_io::Timer::after(cfg.connect_timeout).await;
                Err(format!(
                    "no TCP/TLS connection within {:?} (link.connect_timeout)",
                    cfg.connect_timeout
                ))
            })
            .await;
        match outcome {
            Ok(conn) => {
                let reason = drive(&link, conn, &hub, &mut went_up, failures).await;
                let lasted = started.elapsed();
                if went_up {
                    warn!(
                        "link to {} down after {:.1} s: {reason}",
                        hub.address,
                        lasted.as_secs_f32()
                    );
                    failures = 0;
                    if lasted >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                } else {
                    failures += 1;
                    report_failure(&hub, failures, &reason);
                }
            }
            Err(reason) => {
                failures += 1;
                report_failure(&hub, failures, &reason);
            }
        }
        let delay = backoff.next_delay();
        debug!(
            "reconnecting to {} in {:.2} s",
            hub.address,
            delay.as_secs_f32()
        );
        async_io::Timer::after(delay).await;
    }
}

/// Logs a failed attempt once per streak, then now and then, not per retry.
fn report_failure(hub: &Hub, failures: u32, reason: &str) {
    if failures == 1 {
        warn!(
            "cannot link to {}: {reason}; retrying with backoff",
            hub.address
        );
    } else if failures.is_power_of_two() {
        info!(
            "still cannot link to {} after {failures} attempts: {reason}",
            hub.address
        );
    } else {
        debug!(
            "attempt {failures} to link to {} failed: {reason}",
            hub.address
        );
    }
}

/// A connection to the hub, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

async fn connect(hub: &Hub, cfg: &LinkConfig, tls: Option<&TlsConnector>) -> Result<Conn, String> {
    let _ = cfg;
    let addrs = resolve(&hub.address).await?;
    let mut last = format!("{} resolved to no address", hub.address);
    for addr in addrs {
        match tcp_connect(addr, hub.source_address).await {
            Ok(tcp) => {
                // Small frames (pings, acks, API requests) must not wait for Nagle.
                let _ = tcp.set_nodelay(true);
                let Some(tls) = tls else {
                    return Ok(Conn::Plain(tcp));
                };
                let name = ServerName::try_from(hub.server_name.clone())
                    .map_err(|e| format!("hub.server_name {:?}: {e}", hub.server_name))?;
                return match tls.connect(name, tcp).await {
                    Ok(s) => Ok(Conn::Tls(Box::new(s))),
                    Err(e) => Err(format!("TLS handshake with {addr} failed: {e}")),
                };
            }
            Err(e) => last = format!("TCP connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// TCP connect, from `source` if given (bind before connect).
async fn tcp_connect(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(source, 0)),
    )?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = async_io::Async::new(std::net::TcpStream::from(fd))?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    Ok(TcpStream::from(stream))
}

async fn resolve(address: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let owned = address.to_owned();
    // DNS blocks; keep it off the executor thread.
    smol::unblock(move || {
        use std::net::ToSocketAddrs;
        owned
            .to_socket_addrs()
            .map(|a| a.collect())
            .map_err(|e| format!("cannot resolve {owned}: {e}"))
    })
    .await
}

/// Drives one connection, logging session events, until it fails.
async fn drive(link: &Link, conn: Conn, hub: &Hub, went_up: &mut bool, failures: u32) -> String {
    let node = link.with_session(|s| s.node().to_string());
    let (user, pass) = match &hub.credentials {
        Some(Credentials::Token(t)) => (Some(node.clone()), Some(t.as_bytes().to_vec())),
        _ => (None, None),
    };
    let attach = |s: &mut Session| {
        s.edge_connect(Instant::now(), user.as_deref(), pass.as_deref());
    };
    let events = async {
        loop {
            match link.next_event().await {
                Event::Up { resumed, resent } => {
                    *went_up = true;
                    let after = if failures > 0 {
                        format!(" after {failures} failed attempts")
                    } else {
                        String::new()
                    };
                    if resumed {
                        info!("link to {} up{after}: session resumed, {resent} unacknowledged publishes resent", hub.address);
                    } else {
                        info!("link to {} up{after}: new session", hub.address);
                    }
                }
                Event::SessionLost => {
                    warn!(
                        "the hub lost this node's session (hub restart, or the session expired): open streams were reset"
                    );
                }
                Event::ForeignSubscribe { .. } => {}
            }
        }
    };
    let err = match conn {
        Conn::Plain(s) => link.drive(s, &[], attach).or(events).await,
        Conn::Tls(s) => link.drive(*s, &[], attach).or(events).await,
    };
    if let DriveError::Link(tether_link::LinkError::Refused(_)) = &err {
        error!("{err}");
    }
    err.to_string()
}

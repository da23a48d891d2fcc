//! Streams edges open towards the hub's named upstreams.
//!
//! The edge names an upstream; the hub dials the address its own config
//! gives for that name and splices bytes. An edge can never make the hub
//! dial an address of its choosing.
//!
//! Two reserved names are read by the hub itself, never dialled: the
//! node's addresses ([`ADDRESSES_UPSTREAM`], here) and its health verdict
//! reports ([`HEALTH_UPSTREAM`], [`crate::health::receive`]).

use crate::links::Hub;
use futures_lite::FutureExt;
use log::{debug, info, warn};
use smol::net::TcpStream;
use std::rc::Rc;
use tether_link::frame::ResetCode;
use tether_link::io::{splice, Link, LinkStream};
use tether_link::mux::{OwnedTarget, ADDRESSES_MAX, ADDRESSES_UPSTREAM, HEALTH_UPSTREAM};
use tether_link::session::Event;
use tether_link::topic::NodeName;

/// Serves one node's incoming streams and session events for as long as
/// its session lives.
pub async fn serve(hub: Rc<Hub>, node: NodeName, link: Link) {
    let events = async {
        loop {
            match link.next_event().await {
                Event::ForeignSubscribe { topic } => {
                    warn!("node {node} tried to subscribe to {topic:?}, which is not its own topic: refused")
                }
                Event::Up { resent, .. } if resent > 0 => {
                    debug!("node {node}: {resent} unacknowledged publishes resent")
                }
                Event::Up { .. } | Event::SessionLost => {}
            }
        }
    };
    let streams = async {
        loop {
            let (stream, target) = link.accept().await;
            match target {
                OwnedTarget::Upstream(name) if name == ADDRESSES_UPSTREAM => {
                    hub.ex
                        .spawn(addresses(hub.clone(), node.clone(), stream))
                        .detach();
                }
                OwnedTarget::Upstream(name) if name == HEALTH_UPSTREAM => {
                    hub.ex
                        .spawn(crate::health::receive(hub.clone(), node.clone(), stream))
                        .detach();
                }
                OwnedTarget::Upstream(name) => {
                    hub.ex
                        .spawn(relay(hub.clone(), node.clone(), stream, name))
                        .detach();
                }
                OwnedTarget::Port(_) => {
                    stream.refuse(ResetCode::Refused, "the hub has no ports to open");
                }
            }
        }
    };
    events.or(streams).await
}

/// Reads a node's addresses (one per line) for the egress to find it by.
async fn addresses(hub: Rc<Hub>, node: NodeName, mut stream: LinkStream) {
    use futures_lite::io::AsyncReadExt;
    use futures_lite::FutureExt;
    stream.accept();
    let mut text = Vec::new();
    let read = async {
        let mut chunk = [0u8; 512];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return true,
                Ok(n) if text.len() + n <= ADDRESSES_MAX => text.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
    }
    .or(async {
        async_io::Timer::after(std::time::Duration::from_secs(10)).await;
        false
    });
    if !read.await {
        debug!("node {node}: address announcement too long, broken or slow; ignored");
        return;
    }
    let list = parse_addresses(&text);
    let mut reg = hub.registry.borrow_mut();
    if let Some(n) = reg.nodes.get_mut(&node) {
        if n.addresses != list {
            info!("node {node} reports addresses {list:?}");
            n.addresses = list;
        }
    }
}

/// The addresses in an edge's announcement: one per line; lines that are
/// not a host name or an IP address (`[A-Za-z0-9.:-]`, at most 253
/// characters) are dropped, so a confused edge cannot plant anything else.
pub fn parse_addresses(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && a.len() <= 253
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-'))
        })
        .map(str::to_ascii_lowercase)
        .collect()
}

async fn relay(hub: Rc<Hub>, node: NodeName, stream: LinkStream, name: String) {
    let Some(upstream) = hub.cfg.upstreams.get(&name).cloned() else {
        info!("node {node} asked for upstream {name:?}, which this hub does not have");
        stream.refuse(
            ResetCode::UnknownTarget,
            &format!("no upstream named {name:?} in the hub's config"),
        );
        return;
    };
    let timeout = upstream.connect_timeout;
    let tcp = TcpStream::connect(upstream.address.as_str())
        .or(async {
            async_io::Timer::after(timeout).await;
            Err(std::io::ErrorKind::TimedOut.into())
        })
        .await;
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => {
            warn!(
                "node {node}: upstream {name} ({}) unreachable: {e}",
                upstream.address
            );
            stream.refuse(
                ResetCode::ConnectFailed,
                &format!("upstream {name} unreachable: {e}"),
            );
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    stream.accept();
    let id = stream.id();
    match splice(stream, tcp).await {
        Ok((up, down)) => {
            debug!("node {node} stream {id} to {name}: closed, {up} bytes up, {down} down")
        }
        Err(e) => debug!("node {node} stream {id} to {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_addresses;

    #[test]
    fn announcements_keep_only_addresses() {
        let long = "a".repeat(254);
        let text = format!(
            "192.168.10.11\r\nEdge-1\n\n fd00::1 \nevil host\n{long}\n\u{0}x\n<script>\n\u{fffd}"
        );
        assert_eq!(
            parse_addresses(text.as_bytes()),
            ["192.168.10.11", "edge-1", "fd00::1"]
        );
        assert!(parse_addresses(&[0xff, 0xfe, b'\n']).is_empty());
    }
}

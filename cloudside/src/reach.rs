//! Reaching a port on a node through its link, for the hub's cloud-side
//! endpoints (`expose`, `egress`): the node's link while it is linked, a
//! stream to the port once the edge has reached it, and the short HTTP
//! answers those endpoints give when something is out of reach.

use crate::links::Hub;
use futures_lite::FutureExt;
use std::io;
use std::time::Duration;
use tether_link::io::{Link, LinkStream};
use tether_link::mux::{OwnedTarget, StreamError};
use tether_link::topic::NodeName;

/// The link of `node`, if it is linked now.
pub fn linked(hub: &Hub, node: &NodeName) -> Option<Link> {
    let reg = hub.registry.borrow();
    reg.nodes
        .get(node)
        .filter(|n| n.linked)
        .map(|n| n.link.clone())
}

/// Why a port on a node was not reached.
#[derive(Debug)]
pub enum Unreached {
    /// No stream could be opened on the link (too many streams).
    Open(StreamError),
    /// The edge refused the port (not in its `services.allow_ports`).
    Refused(io::Error),
    /// The edge could not connect to the port, or the stream broke.
    Failed(io::Error),
    /// The edge did not answer within the timeout.
    Timeout,
}

/// Opens a stream to `port` on `link` and waits, at most `timeout`, for the
/// edge to reach it.
pub async fn port(link: &Link, port: u16, timeout: Duration) -> Result<LinkStream, Unreached> {
    let stream = link
        .open(OwnedTarget::Port(port))
        .map_err(Unreached::Open)?;
    let accepted = async { Some(stream.accepted().await) }.or(async {
        async_io::Timer::after(timeout).await;
        None
    });
    match accepted.await {
        Some(Ok(())) => Ok(stream),
        Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(Unreached::Refused(e)),
        Some(Err(e)) => Err(Unreached::Failed(e)),
        None => Err(Unreached::Timeout),
    }
}

/// An HTTP error answer of `status` whose short text body is `message`;
/// the connection closes after it.
pub fn http_error(status: u16, message: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Gateway Timeout",
    };
    let body = format!("tether-hub: {message}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_http() {
        let refused = String::from_utf8(http_error(404, "no node")).expect("text");
        assert!(refused.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(refused.contains("\r\nContent-Length: 20\r\n"));
        assert!(refused.ends_with("\r\n\r\ntether-hub: no node\n"));
        let late = String::from_utf8(http_error(504, "slow")).expect("text");
        assert!(late.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
    }
}

//! Cloud-side ports that reach a port on an edge board through its link.
//!
//! A connection to `listen` becomes a stream the hub opens towards the
//! node; the edge dials its local port if its config allows it.

use crate::config::Expose;
use crate::links::Hub;
use crate::reach::{self, http_error, Unreached};
use log::{debug, info, warn};
use smol::net::TcpListener;
use std::rc::Rc;
use tether_link::io::splice;
use tether_link::mux::OwnedTarget;

/// Accepts connections for one exposed port forever.
pub async fn serve(hub: Rc<Hub>, listener: TcpListener, expose: Expose) {
    info!(
        "exposing port {} of node {} on {}",
        expose.port, expose.node, expose.listen
    );
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("expose {}: accept failed: {e}", expose.listen);
                async_io::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(link) = reach::linked(&hub, &expose.node) else {
            debug!(
                "expose {}: node {} is not linked; closing connection from {peer}",
                expose.listen, expose.node
            );
            continue;
        };
        let stream = match link.open(OwnedTarget::Port(expose.port)) {
            Ok(s) => s,
            Err(e) => {
                warn!("expose {}: {e}", expose.listen);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let port = expose.port;
        let node = expose.node.clone();
        hub.ex
            .spawn(async move {
                let id = stream.id();
                match splice(tcp, stream).await {
                    Ok((a, b)) => debug!("{peer} -> node {node} port {port} (stream {id}): closed, {a} bytes in, {b} out"),
                    Err(e) => debug!("{peer} -> node {node} port {port} (stream {id}): {e}"),
                }
            })
            .detach();
    }
}

/// Largest request head an HTTP expose reads before routing.
const MAX_HEAD: usize = 16 << 10;

/// How long a client may take to send its request head, and the edge to
/// reach the port.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The route for request target `target` among `routes` (longest path
/// prefix, on a segment boundary), and the target the edge's service gets:
/// the prefix removed, so a service published under `/edge-1/ui` sees `/`.
pub fn route<'r>(routes: &'r [Expose], target: &str) -> Option<(&'r Expose, String)> {
    let path_end = target.find(['?', '#']).unwrap_or(target.len());
    let path = &target[..path_end];
    routes
        .iter()
        .filter_map(|e| {
            let prefix = e.path.as_deref()?;
            let rest = path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some((e, prefix.len()))
        })
        .max_by_key(|(_, len)| *len)
        .map(|(e, len)| {
            let rest = &target[len..];
            let rewritten = if rest.is_empty() || rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_owned()
            };
            (e, rewritten)
        })
}

/// The request head `head` (up to its blank line) for the edge's service:
/// `target` in the request line, `Connection: close` (so that the next
/// request on a client's connection is routed again, not passed to the same
/// service), and an `X-Forwarded-Prefix` naming the published prefix.
pub fn rewrite_head(head: &str, target: &str, prefix: &str) -> Option<String> {
    let mut lines = head.split("\r\n");
    let request = lines.next()?;
    let mut parts = request.splitn(3, ' ');
    let (method, _, version) = (parts.next()?, parts.next()?, parts.next()?);
    let mut out = format!("{method} {target} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("Connection")
            || name.eq_ignore_ascii_case("Keep-Alive")
            || name.eq_ignore_ascii_case("X-Forwarded-Prefix")
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "X-Forwarded-Prefix: {prefix}\r\nConnection: close\r\n\r\n"
    ));
    Some(out)
}

/// Serves edge web services published under paths of one cloud-side port.
pub async fn serve_http(hub: Rc<Hub>, listener: TcpListener, routes: Vec<Expose>) {
    for e in &routes {
        info!(
            "publishing http://{}{} -> port {} of node {}",
            e.listen,
            e.path.as_deref().unwrap_or(""),
            e.port,
            e.node
        );
    }
    let routes = Rc::new(routes);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("http expose: accept failed: {e}");
                async_io::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        hub.ex
            .spawn(http_connection(hub.clone(), routes.clone(), tcp, peer))
            .detach();
    }
}

async fn http_connection(
    hub: Rc<Hub>,
    routes: Rc<Vec<Expose>>,
    mut tcp: smol::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
    use futures_lite::FutureExt;
    let mut buf = Vec::new();
    let head_end = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end + 4);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    .or(async {
        async_io::Timer::after(HTTP_TIMEOUT).await;
        None
    })
    .await;
    let refuse = |status: u16, message: String| http_error(status, &message);
    let Some(end) = head_end else {
        let _ = tcp.write_all(&refuse(400, "no request head".into())).await;
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
    let Some((e, rewritten)) = route(&routes, &target) else {
        let message = format!("nothing is published at {target:?}");
        let _ = tcp.write_all(&refuse(404, message)).await;
        return;
    };
    let Some(new_head) = rewrite_head(&head, &rewritten, e.path.as_deref().unwrap_or("")) else {
        let _ = tcp.write_all(&refuse(400, "bad request line".into())).await;
        return;
    };
    let Some(link) = reach::linked(&hub, &e.node) else {
        let message = format!("node {} is not linked", e.node);
        let _ = tcp.write_all(&refuse(503, message)).await;
        return;
    };
    let mut stream = match reach::port(&link, e.port, HTTP_TIMEOUT).await {
        Ok(s) => s,
        Err(err) => {
            let (node, port) = (&e.node, e.port);
            let answer = match err {
                Unreached::Open(err) => refuse(503, format!("node {node}: {err}")),
                Unreached::Refused(err) | Unreached::Failed(err) => {
                    refuse(502, format!("node {node} port {port}: {err}"))
                }
                Unreached::Timeout => refuse(504, format!("node {node} port {port}: no answer")),
            };
            let _ = tcp.write_all(&answer).await;
            return;
        }
    };
    let id = stream.id();
    info!(
        "http {peer} {target} -> node {} port {} (stream {id})",
        e.node, e.port
    );
    let first: Vec<u8> = [new_head.as_bytes(), &buf[end..]].concat();
    if stream.write_all(&first).await.is_err() {
        return;
    }
    match splice(tcp, stream).await {
        Ok((a, b)) => debug!(
            "http {peer} -> node {} port {} (stream {id}): closed, {a} bytes in, {b} out",
            e.node, e.port
        ),
        Err(err) => debug!(
            "http {peer} -> node {} port {} (stream {id}): {err}",
            e.node, e.port
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(path: &str, port: u16) -> Expose {
        Expose {
            listen: "127.0.0.1:8080".parse().expect("addr"),
            node: tether_link::topic::NodeName::new("edge-1").expect("name"),
            port,
            path: Some(path.into()),
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let routes = [published("/edge-1", 80), published("/edge-1/metrics", 9100)];
        let target = |t: &str| route(&routes, t).map(|(e, rest)| (e.port, rest));
        assert_eq!(
            target("/edge-1/metrics/x?y=1"),
            Some((9100, "/x?y=1".into()))
        );
        assert_eq!(target("/edge-1/metrics"), Some((9100, "/".into())));
        assert_eq!(target("/edge-1/metricsx"), Some((80, "/metricsx".into())));
        assert_eq!(target("/edge-1?q"), Some((80, "/?q".into())));
        assert_eq!(target("/edge-12/ui"), None);
        assert_eq!(target("/"), None);
        assert_eq!(target("http://x/edge-1"), None);
    }

    #[test]
    fn heads_are_rewritten_for_the_service() {
        let head = "GET /edge-1/ui/a HTTP/1.1\r\nHost: hub\r\nConnection: keep-alive\r\nX-Forwarded-Prefix: /evil";
        let out = rewrite_head(head, "/a", "/edge-1/ui").expect("head");
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: hub\r\nX-Forwarded-Prefix: /edge-1/ui\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(rewrite_head("garbage", "/", "/x"), None);
    }
}

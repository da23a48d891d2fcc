//! kube-apiserver's egress: HTTP CONNECT, over TLS with client
//! certificates or over a unix socket, as an `EgressSelectorConfiguration`
//! with `proxyProtocol: HTTPConnect` sends it for the `cluster` egress.
//! `CONNECT <node>:<port>` becomes a stream over that node's link; the edge
//! dials the port if its `services.allow_ports` allows it and splices. The
//! hub only relays the bytes of the inner connection (kube-apiserver's TLS
//! to the kubelet, a webhook or an aggregated API), never plaintext.
//!
//! The host is a node's name, or an address a node reports in its Node
//! status (the edge tells the hub, see `upstream`). Any other host is what
//! kube-apiserver reaches in the cluster network (a webhook's or an
//! APIService's ClusterIP, a pod's address): with `[egress] direct =
//! "cluster"` (the default) the hub dials it itself ([`direct`]), within
//! the limits of [`policy`]; with `"none"` it is refused with 404. A name
//! without a dot is always a node's: an unknown one is never dialled.
//!
//! Answers: 200 once the edge reached the port, or the hub the address; 404
//! for a host that is no node's name or reported address (a name without a
//! dot, or any with `direct = "none"`); 502 for an address several nodes report; 503 for a node that
//! is not linked; 403 for a port the edge does not allow, or an address the
//! hub never dials; 502 when the edge, or the hub, could not connect; 504
//! when that did not happen within `connect_timeout`; 400/405 for anything
//! but a CONNECT.

mod direct;
pub mod policy;

use crate::config::{Direct, Egress};
use crate::links::Hub;
use crate::reach::{self, http_error, Unreached};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;
use log::{debug, info, warn};
use std::rc::Rc;
use std::time::Duration;
use tether_link::io::splice;
use tether_link::topic::NodeName;

/// Largest CONNECT head accepted.
const MAX_HEAD: usize = 8 << 10;

/// How long a client may take to send its CONNECT.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a CONNECT asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host part, lowercased: a node's name or reported address, or
    /// what the hub is to dial itself (an IPv6 address in brackets).
    pub host: String,
    /// The port on the node or that host.
    pub port: u16,
}

/// Why a CONNECT is not followed: the status, the metric label and the
/// text to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Its `tether_hub_egress_total` result label.
    pub label: &'static str,
    /// What to tell the client.
    pub message: String,
}

impl Refusal {
    /// A refusal about a node (or the request), labelled by its status.
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal::labelled(status, outcome(status), message)
    }

    /// A refusal with its own metric label.
    fn labelled(status: u16, label: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            label,
            message: message.into(),
        }
    }
}

/// Reads a CONNECT request head from the start of `buf`. `Ok(None)`: more
/// bytes are needed. On success, also the length of the head (bytes after
/// it already belong to the tunnel).
pub fn parse_connect(buf: &[u8]) -> Result<Option<(Target, usize)>, Refusal> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(Refusal::new(431, "request head too large"));
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(Refusal::new(431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| Refusal::new(400, "request head is not text"))?;
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, authority, version) = (parts.next(), parts.next(), parts.next());
    if parts.next().is_some() || !matches!(version, Some("HTTP/1.1" | "HTTP/1.0")) {
        return Err(Refusal::new(400, "bad request line"));
    }
    if method != Some("CONNECT") {
        return Err(Refusal::new(405, "only CONNECT is served here"));
    }
    let authority = authority.unwrap_or("");
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| Refusal::new(400, format!("{authority:?} is not host:port")))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Refusal::new(400, format!("{port:?} is not a port")))?;
    if host.is_empty() {
        return Err(Refusal::new(400, "empty host"));
    }
    Ok(Some((
        Target {
            host: host.to_ascii_lowercase(),
            port,
        },
        end + 4,
    )))
}

/// What kube-apiserver needs to use this egress: the
/// `EgressSelectorConfiguration` (v1beta1, as kube-apiserver 1.24 reads it)
/// for the `cluster` egress, and its flags. `tether-hub egress-config`
/// prints it.
pub fn selector_config(cfg: &Egress) -> String {
    let mut out = String::from(
        "# kube-apiserver's egress through tether-hub: save as\n\
         # /etc/kubernetes/egress-selector.yaml and start kube-apiserver with\n\
         #   --egress-selector-config-file=/etc/kubernetes/egress-selector.yaml\n\
         #   --kubelet-preferred-address-types=Hostname\n\
         # (the hub finds a node by the host of each CONNECT: its name).\n\
         apiVersion: apiserver.k8s.io/v1beta1\n\
         kind: EgressSelectorConfiguration\n\
         egressSelections:\n\
         - name: cluster\n  \
           connection:\n    \
             proxyProtocol: HTTPConnect\n    \
             transport:\n",
    );
    match (&cfg.uds, cfg.listen) {
        (Some(path), _) => {
            out.push_str(&format!(
                "      uds:\n        udsName: {}\n",
                path.display()
            ));
        }
        (None, Some(addr)) => {
            let host = if addr.ip().is_unspecified() {
                format!("HUB-HOST:{}", addr.port())
            } else {
                addr.to_string()
            };
            out.push_str(&format!(
                "      tcp:\n        url: https://{host}\n        tlsConfig:\n          \
                 # the CA that signed the hub's egress certificate\n          \
                 caBundle: /etc/kubernetes/pki/tether-hub-ca.crt\n          \
                 # a client certificate signed by the hub's [egress] client_ca\n          \
                 clientCert: /etc/kubernetes/pki/tether-egress-client.crt\n          \
                 clientKey: /etc/kubernetes/pki/tether-egress-client.key\n"
            ));
        }
        (None, None) => {}
    }
    out
}

/// The metric label of a CONNECT refused about a node or the request.
fn outcome(status: u16) -> &'static str {
    match status {
        403 => "port_not_allowed",
        404 => "unknown_node",
        502 => "connect_failed",
        503 => "node_not_linked",
        504 => "timeout",
        _ => "bad_request",
    }
}

/// The answer to a CONNECT the edge reached: what follows is the tunnel.
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Accepts TLS connections (client certificate required) forever.
pub async fn serve_tls(
    hub: Rc<Hub>,
    listener: smol::net::TcpListener,
    tls: futures_rustls::TlsAcceptor,
    cfg: Egress,
) {
    let cfg = Rc::new(cfg);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("egress: accept failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (hub2, tls, cfg) = (hub.clone(), tls.clone(), cfg.clone());
        hub.ex
            .spawn(async move {
                let handshake = async { tls.accept(tcp).await.map(Some) }.or(async {
                    async_io::Timer::after(HEAD_TIMEOUT).await;
                    Ok(None)
                });
                match handshake.await {
                    Ok(Some(conn)) => {
                        let who = conn
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| tether_link::tls::subject_common_name(c))
                            .unwrap_or_else(|| peer.to_string());
                        tunnel(hub2, conn, who, cfg).await;
                    }
                    Ok(None) => debug!("egress: {peer}: no TLS handshake in time"),
                    Err(e) => debug!("egress: {peer}: TLS handshake failed: {e}"),
                }
            })
            .detach();
    }
}

/// Accepts unix-socket connections forever.
pub async fn serve_unix(hub: Rc<Hub>, listener: smol::net::unix::UnixListener, cfg: Egress) {
    let cfg = Rc::new(cfg);
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                warn!("egress: accept on the unix socket failed: {e}");
                async_io::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        hub.ex
            .spawn(tunnel(hub.clone(), conn, "unix socket".into(), cfg.clone()))
            .detach();
    }
}

/// Where a CONNECT was opened to.
enum Opened {
    /// A stream to a port on a node, over its link.
    Node(tether_link::io::LinkStream),
    /// A connection the hub dialled itself, and the address it reached.
    Direct(smol::net::TcpStream, std::net::SocketAddr),
}

/// Serves one CONNECT: reads it, opens the stream or dials, answers,
/// splices.
async fn tunnel<S>(hub: Rc<Hub>, mut conn: S, who: String, cfg: Rc<Egress>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut buf = Vec::new();
    let read_head = async {
        loop {
            if let Some(found) = parse_connect(&buf)? {
                return Ok(found);
            }
            let mut chunk = [0u8; 2048];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(Refusal::new(400, "closed before a whole request")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    .or(async {
        async_io::Timer::after(HEAD_TIMEOUT).await;
        Err(Refusal::new(400, "no request in time"))
    });
    let (target, used) = match read_head.await {
        Ok(t) => t,
        Err(refusal) => {
            hub.registry.borrow_mut().egress(refusal.label);
            let _ = conn
                .write_all(&http_error(refusal.status, &refusal.message))
                .await;
            let _ = conn.flush().await;
            return;
        }
    };
    let opened = match open(&hub, &target, &cfg).await {
        Ok(o) => o,
        Err(refusal) => {
            hub.registry.borrow_mut().egress(refusal.label);
            info!(
                "egress: {who} asked for {}:{}: {} {}",
                target.host, target.port, refusal.status, refusal.message
            );
            let _ = conn
                .write_all(&http_error(refusal.status, &refusal.message))
                .await;
            let _ = conn.flush().await;
            return;
        }
    };
    // Bytes the client sent right after its CONNECT (a TLS ClientHello)
    // go first.
    let early = buf.split_off(used);
    let (host, port) = (&target.host, target.port);
    match opened {
        Opened::Node(stream) => {
            hub.registry.borrow_mut().egress("tunnelled");
            let what = format!("node {host} port {port} (stream {})", stream.id());
            info!("egress: {who} -> {what}");
            relay(conn, stream, early, &who, &what).await;
        }
        Opened::Direct(tcp, addr) => {
            hub.registry.borrow_mut().egress(direct::DIALLED);
            let what = format!("direct {host}:{port} ({addr})");
            info!("egress: {who} -> {what}");
            relay(conn, tcp, early, &who, &what).await;
        }
    }
}

/// Answers 200, sends `early` on and splices the client with `upstream`
/// until both ends are done; logs the end at debug level.
async fn relay<C, U>(mut conn: C, mut upstream: U, early: Vec<u8>, who: &str, what: &str)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if conn.write_all(ESTABLISHED).await.is_err() || conn.flush().await.is_err() {
        return;
    }
    let result = async {
        if !early.is_empty() {
            upstream.write_all(&early).await?;
        }
        splice(conn, upstream).await
    }
    .await;
    match result {
        Ok((a, b)) => debug!("egress: {who} -> {what}: closed, {a} bytes in, {b} out"),
        Err(e) => debug!("egress: {who} -> {what}: {e}"),
    }
}

/// Opens a stream to the target's node and port and waits for the edge
/// to reach it; a host that is no node's is dialled by the hub itself
/// when `direct = "cluster"`.
async fn open(hub: &Hub, target: &Target, cfg: &Egress) -> Result<Opened, Refusal> {
    let connect_timeout = cfg.connect_timeout;
    // Node addresses are stored bare; an IPv6 host comes in brackets.
    let bare = target
        .host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&target.host);
    let link = {
        let reg = hub.registry.borrow();
        // By name first; else by an address a node reports in its status.
        let by_name = NodeName::new(&target.host)
            .ok()
            .and_then(|name| reg.nodes.get(&name));
        let found = match by_name {
            Some(n) => Some(n),
            None => {
                let mut owners = reg
                    .nodes
                    .values()
                    .filter(|n| n.addresses.iter().any(|a| a == bare));
                match (owners.next(), owners.next()) {
                    (Some(n), None) => Some(n),
                    (Some(_), Some(_)) => {
                        return Err(Refusal::new(
                            502,
                            format!(
                                "several nodes report the address {:?}: ask for the node by name",
                                target.host
                            ),
                        ))
                    }
                    (None, _) => None,
                }
            }
        };
        match found {
            Some(n) if !n.linked => {
                return Err(Refusal::new(
                    503,
                    format!("node of {} is not linked", target.host),
                ))
            }
            Some(n) => Some(n.link.clone()),
            None => None,
        }
    };
    let Some(link) = link else {
        return match cfg.direct {
            Direct::Off => Err(Refusal::new(
                404,
                format!(
                    "no node of this hub is named {:?} or reports that address (and [egress] direct = \"none\")",
                    target.host
                ),
            )),
            Direct::Cluster => {
                let host = direct::host(&target.host)?;
                if matches!(&host, direct::Host::Name(n) if !n.contains('.')) {
                    // kube-apiserver sends Services as addresses and an
                    // ExternalName as its DNS name: a bare name is a node's
                    // (the Hostname address type), never resolved through
                    // the hub's search domains.
                    return Err(Refusal::new(
                        404,
                        format!(
                            "no node of this hub is named {:?} (a name without a dot is a node's, never dialled directly)",
                            target.host
                        ),
                    ));
                }
                let (tcp, addr) =
                    direct::dial(&host, target.port, &cfg.direct_policy, connect_timeout).await?;
                Ok(Opened::Direct(tcp, addr))
            }
        };
    };
    let (host, port) = (&target.host, target.port);
    reach::port(&link, port, connect_timeout)
        .await
        .map(Opened::Node)
        .map_err(|e| match e {
            Unreached::Open(e) => Refusal::new(503, format!("node {host}: {e}")),
            Unreached::Refused(e) => {
                Refusal::new(403, format!("node {host} does not allow port {port}: {e}"))
            }
            Unreached::Failed(e) => {
                Refusal::new(502, format!("node {host} could not reach port {port}: {e}"))
            }
            Unreached::Timeout => Refusal::new(
                504,
                format!("node {host} did not reach port {port} within {connect_timeout:?}"),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_heads() {
        let head = b"CONNECT edge-1:10250 HTTP/1.1\r\nHost: edge-1:10250\r\n\r\n\x16\x03\x01";
        let (target, used) = parse_connect(head).expect("valid").expect("whole");
        assert_eq!(
            target,
            Target {
                host: "edge-1".into(),
                port: 10250
            }
        );
        assert_eq!(&head[used..], b"\x16\x03\x01");
        assert_eq!(
            parse_connect(b"CONNECT edge-1:10250 HTTP/1.1\r\n"),
            Ok(None)
        );
        for (bad, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 405),
            (b"CONNECT edge-1 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT edge-1:0 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT edge-1:99999 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT :10250 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT edge-1:10250 SPDY/3\r\n\r\n", 400),
            (b"CONNECT a b:1 HTTP/1.1\r\n\r\n", 400),
        ] {
            assert_eq!(
                parse_connect(bad).map_err(|r| r.status),
                Err(status),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_connect(&huge).map_err(|r| r.status), Err(431));
    }

    #[test]
    fn selector_configs() {
        let tcp = Egress {
            listen: Some("0.0.0.0:8131".parse().expect("addr")),
            tls: None,
            uds: None,
            connect_timeout: Duration::from_secs(5),
            direct: Direct::Cluster,
            direct_policy: policy::Policy::default(),
        };
        let text = selector_config(&tcp);
        assert!(text.contains("kind: EgressSelectorConfiguration\n"));
        assert!(text.contains("- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: https://HUB-HOST:8131\n"));
        assert!(text.contains("--kubelet-preferred-address-types=Hostname"));
        let uds = Egress {
            uds: Some("/run/tether/egress.sock".into()),
            ..tcp
        };
        assert!(selector_config(&uds)
            .contains("      uds:\n        udsName: /run/tether/egress.sock\n"));
    }
}

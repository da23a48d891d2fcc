//! The link listener: accepts connections, runs TLS and CONNECT under a
//! deadline, authenticates, and attaches each link to its node's session.
//!
//! Hostile peers cost bounded time and memory: a connection must finish TLS
//! and send a CONNECT of at most [`MAX_CONNECT`] bytes within
//! `limits.handshake_timeout`; while `limits.max_handshakes` connections are
//! in that phase, no more are accepted; anything malformed is dropped at once.

use crate::auth::{self, Tokens};
use crate::autonomy::check::{self, LinkCheck, Step};
use crate::config::HubConfig;
use crate::registry::{Node, Registry};
use crate::upstream;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;
use futures_rustls::TlsAcceptor;
use log::{info, warn};
use smol::net::{TcpListener, TcpStream};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Instant, SystemTime};
use tether_link::accept::{read_connect, refusal, Hello, MAX_CONNECT};
use tether_link::io::{DriveError, Link};
use tether_link::mqtt::ConnectReturnCode;
use tether_link::mux::Side;
use tether_link::session::Session;
use tether_link::LinkError;

/// What every connection task shares.
pub struct Hub {
    /// The configuration.
    pub cfg: HubConfig,
    /// Node tokens.
    pub tokens: Tokens,
    /// TLS, unless plaintext.
    pub tls: Option<TlsAcceptor>,
    /// Nodes and counters.
    pub registry: RefCell<Registry>,
    /// Spawns connection and stream tasks.
    pub ex: Rc<smol::LocalExecutor<'static>>,
    /// This hub process's sender id on every link.
    pub sender: u32,
    /// Joins, renewals and revocation (`[join]`), if configured.
    pub join: Option<crate::join::live::JoinService>,
}

/// Accepts link connections forever.
pub async fn serve(hub: Rc<Hub>, listener: TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("link listener: accept failed: {e}");
                async_io::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut reg = hub.registry.borrow_mut();
            reg.counters.connections += 1;
            reg.counters.handshakes += 1;
        }
        hub.ex.spawn(connection(hub.clone(), tcp, peer)).detach();
        // At the handshake limit, stop accepting until one finishes: the
        // kernel's backlog and TCP's SYN retries queue the rest, which
        // spreads a reconnecting fleet instead of failing it.
        futures_lite::future::poll_fn(|cx| {
            let mut reg = hub.registry.borrow_mut();
            if reg.counters.handshakes < hub.cfg.limits.max_handshakes {
                std::task::Poll::Ready(())
            } else {
                reg.handshake_waiter = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Decrements the handshake count however the handshake ends.
struct HandshakeGuard<'a>(&'a Hub, bool);

impl HandshakeGuard<'_> {
    fn done(&mut self) {
        if !self.1 {
            self.1 = true;
            let mut reg = self.0.registry.borrow_mut();
            reg.counters.handshakes -= 1;
            if let Some(w) = reg.handshake_waiter.take() {
                w.wake();
            }
        }
    }
}

impl Drop for HandshakeGuard<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

async fn connection(hub: Rc<Hub>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut guard = HandshakeGuard(&hub, false);
    // TLS and CONNECT share one deadline.
    let deadline = Instant::now() + hub.cfg.limits.handshake_timeout;
    match &hub.tls {
        None => {
            let result = handshake(&hub, tcp, peer, None, None, deadline).await;
            guard.done();
            if let Some((conn, hello, pending, method)) = result {
                link(&hub, conn, peer, hello, pending, method).await;
            }
        }
        Some(tls) => {
            let accepted = tls
                .accept(tcp)
                .or(async {
                    async_io::Timer::at(deadline).await;
                    Err(std::io::ErrorKind::TimedOut.into())
                })
                .await;
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    let label = if e.kind() == std::io::ErrorKind::TimedOut {
                        "handshake_timeout"
                    } else {
                        "tls"
                    };
                    hub.registry.borrow_mut().dropped(label);
                    info!("dropped connection from {peer}: TLS handshake failed: {e}");
                    return;
                }
            };
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let cn = leaf.and_then(|c| tether_link::tls::subject_common_name(c));
            let serial = leaf
                .and_then(|c| tether_link::tls::serial_of_certificate(c))
                .map(<[u8]>::to_vec);
            let result = handshake(&hub, stream, peer, cn, serial, deadline).await;
            guard.done();
            if let Some((conn, hello, pending, method)) = result {
                link(&hub, conn, peer, hello, pending, method).await;
            }
        }
    }
}

/// Reads CONNECT under the handshake deadline and decides. Returns the
/// connection, the CONNECT, bytes read past it, and how the node proved itself.
async fn handshake<C>(
    hub: &Hub,
    mut conn: C,
    peer: SocketAddr,
    cert_cn: Option<String>,
    cert_serial: Option<Vec<u8>>,
    deadline: Instant,
) -> Option<(C, Hello, Vec<u8>, auth::Method)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            match read_connect(&buf) {
                Ok(Some((hello, used))) => return Ok((hello, buf[used..].to_vec())),
                Ok(None) if buf.len() > MAX_CONNECT + 5 => {
                    return Err(("oversized", "CONNECT larger than the limit".to_string()))
                }
                Ok(None) => {}
                Err(LinkError::Decode(tether_link::mqtt::DecodeError::BadProtocol)) => {
                    // MQTT asks for this answer to a protocol it does not speak.
                    let _ = conn
                        .write_all(&refusal(ConnectReturnCode::RefusedProtocolVersion))
                        .await;
                    let _ = conn.flush().await;
                    return Err(("bad_protocol", "CONNECT is not MQTT 3.1.1".to_string()));
                }
                Err(e) => return Err(("malformed", e.to_string())),
            }
            match conn.read(&mut chunk).await {
                Ok(0) => return Err(("closed", "closed before CONNECT".to_string())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(("closed", e.to_string())),
            }
        }
    };
    let limit = hub.cfg.limits.handshake_timeout;
    let result = read
        .or(async {
            async_io::Timer::at(deadline).await;
            Err(("handshake_timeout", format!("no CONNECT within {limit:?}")))
        })
        .await;
    let (hello, pending) = match result {
        Ok(r) => r,
        Err((label, reason)) => {
            hub.registry.borrow_mut().dropped(label);
            info!("dropped connection from {peer}: {reason}");
            return None;
        }
    };
    if hello.username.as_deref() == Some(tether_link::join::USERNAME) {
        serve_join(hub, conn, peer, hello).await;
        return None;
    }
    let verdict = auth::verdict(&hello, cert_cn.as_deref(), &hub.tokens);
    let refuse =
        |code: ConnectReturnCode, label: &'static str, reason: String| (code, label, reason);
    let revoked = match (&verdict, &hub.join, &cert_serial) {
        (Ok(auth::Method::Certificate), Some(join), Some(serial)) => {
            join.refusal(&hello.node, serial)
        }
        _ => None,
    };
    let problem = match &verdict {
        Err(r) => Some(refuse(r.code, r.label, r.reason.clone())),
        Ok(_) if revoked.is_some() => revoked
            .clone()
            .map(|(label, reason)| refuse(ConnectReturnCode::NotAuthorized, label, reason)),
        // A node replacing its own link does not add one.
        Ok(_)
            if hub.registry.borrow().links_up() >= hub.cfg.limits.max_links
                && !hub
                    .registry
                    .borrow()
                    .nodes
                    .get(&hello.node)
                    .is_some_and(|n| n.linked) =>
        {
            Some(refuse(
                ConnectReturnCode::ServerUnavailable,
                "max_links",
                format!("limit of {} links reached", hub.cfg.limits.max_links),
            ))
        }
        Ok(_) => None,
    };
    if let Some((code, label, reason)) = problem {
        hub.registry.borrow_mut().refused(label);
        warn!(
            "refused link from {peer} claiming node {}: {reason}",
            hello.node
        );
        // Best effort: the peer learns why, then the connection closes.
        let _ = conn.write_all(&refusal(code)).await;
        let _ = conn.flush().await;
        return None;
    }
    verdict.ok().map(|m| (conn, hello, pending, m))
}

/// Answers a join or renewal ([`tether_link::join`]) and closes: decided on
/// the blocking pool (the stores lock and sync files).
async fn serve_join<C>(hub: &Hub, mut conn: C, peer: SocketAddr, hello: Hello)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    use tether_link::join::{decode_request, encode_answer, Answer, Refusal};
    let node = hello.node.clone();
    let decided = match (&hub.join, hello.password.as_deref().map(decode_request)) {
        (None, _) => Err((
            Refusal::Unavailable,
            "this hub does not issue node certificates: its config has no [join] table".to_string(),
        )),
        (Some(_), None) => Err((Refusal::BadRequest, "the join request is empty".to_string())),
        (Some(_), Some(Err(e))) => Err((Refusal::BadRequest, e.to_string())),
        (Some(join), Some(Ok(request))) => {
            let joiner = join.joiner.clone();
            let who = node.clone();
            // Once started, a decision is always answered: giving up on it
            // here would not undo a token it used or a certificate it
            // recorded, and the edge's retry would then be refused.
            Ok(smol::unblock(move || joiner.handle(&who, request, SystemTime::now())).await)
        }
    };
    let (answer, label, line) = match decided {
        Ok((answer, outcome)) => (answer, outcome.label, outcome.line),
        Err((reason, message)) => (
            Answer::Refused {
                reason,
                message: message.clone(),
            },
            reason.as_str(),
            message,
        ),
    };
    hub.registry.borrow_mut().joined(label);
    match &answer {
        Answer::Issued { .. } => info!("{line} (from {peer})"),
        Answer::Refused { .. } => {
            warn!("refused a join or renewal from {peer} for node {node}: {line}")
        }
    }
    let _ = conn.write_all(&encode_answer(&answer)).await;
    let _ = conn.flush().await;
    let _ = conn.close().await;
}

/// Attaches an authenticated connection to the node's session and drives it.
async fn link<C>(
    hub: &Rc<Hub>,
    conn: C,
    peer: SocketAddr,
    hello: Hello,
    pending: Vec<u8>,
    method: auth::Method,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let node = hello.node.clone();
    let (link, resumed, links) = {
        let mut reg = hub.registry.borrow_mut();
        let entry = node_entry(hub, &mut reg, &node, method.as_str());
        let existed = entry.links > 0;
        if hello.clean_session && existed {
            // The edge restarted: whatever its previous run left is void.
            entry
                .link
                .with_session(|s| s.peer_restarted("the edge restarted"));
        }
        entry.linked = true;
        entry.linked_since = Some(SystemTime::now());
        entry.down_since = None;
        entry.links += 1;
        entry.remote = Some(peer);
        entry.auth = method.as_str();
        (
            entry.link.clone(),
            existed && !hello.clean_session,
            entry.links,
        )
    };
    info!(
        "node {node} linked from {peer} ({}, {}{})",
        method.as_str(),
        if resumed {
            "session resumed"
        } else {
            "new session"
        },
        if links > 1 {
            format!(", link #{links}")
        } else {
            String::new()
        }
    );
    let keep_alive = hello.keep_alive;
    let driven = link.drive(conn, &pending, |s| {
        s.hub_accept(Instant::now(), keep_alive, resumed)
    });
    // With [autonomy], a link that fell silent is checked, and cut when
    // the check goes unanswered (a black hole), long before the edge's
    // keepalive would find it (autonomy::check). The session stays, so
    // the edge resumes it when it reconnects.
    let check = hub
        .cfg
        .autonomy
        .as_ref()
        .and_then(|a| LinkCheck::new(a.link_check_after, a.link_check_timeout));
    let found_dead = std::cell::Cell::new(false);
    let err = match check {
        Some(check) => {
            let since = Instant::now();
            let watched = async {
                if let Step::Drop { silent, timeout } = check::watch(&link, check, since).await {
                    warn!(
                        "link to {node} from {peer} silent for {} s and a check unanswered in {} s: dropped as dead",
                        silent.as_secs(),
                        timeout.as_secs_f64()
                    );
                    hub.registry.borrow_mut().dropped("silent");
                    found_dead.set(true);
                    link.cut("silent, and a link check went unanswered");
                }
                // The driver returns the cut; this side never ends first.
                futures_lite::future::pending::<DriveError>().await
            };
            driven.or(watched).await
        }
        None => driven.await,
    };
    if matches!(err, DriveError::Superseded) {
        info!("node {node}: link from {peer} replaced by a newer one");
        return;
    }
    {
        let mut reg = hub.registry.borrow_mut();
        if let Some(n) = reg.nodes.get_mut(&node) {
            n.linked = false;
            n.down_since = Some((Instant::now(), SystemTime::now()));
        }
        // That node may need its Lease renewed now.
        reg.autonomy.wake();
    }
    if found_dead.get() {
        return; // logged once above
    }
    match err {
        DriveError::Link(LinkError::Closed) => {
            info!("node {node} link from {peer} closed by the edge")
        }
        DriveError::Link(
            e @ (LinkError::ForeignTopic { .. }
            | LinkError::Decode(_)
            | LinkError::Frame(_)
            | LinkError::Protocol(_)),
        ) => {
            warn!("node {node} link from {peer} dropped: {e}")
        }
        e => info!("node {node} link from {peer} down: {e}"),
    }
}

/// The node's registry entry, created with its session and stream server
/// on first sight.
pub fn node_entry<'r>(
    hub: &Rc<Hub>,
    reg: &'r mut Registry,
    node: &tether_link::topic::NodeName,
    auth: &'static str,
) -> &'r mut Node {
    reg.nodes.entry(node.clone()).or_insert_with(|| {
        let link = Link::new(Session::new(
            Side::Hub,
            node.clone(),
            hub.cfg.session.clone(),
            hub.sender,
        ));
        let server = hub
            .ex
            .spawn(upstream::serve(hub.clone(), node.clone(), link.clone()));
        Node {
            link,
            linked: false,
            linked_since: None,
            down_since: None,
            links: 0,
            remote: None,
            auth,
            server: Some(server),
            addresses: Vec::new(),
        }
    })
}

/// Forgets sessions whose node stayed away longer than `session_expiry`.
pub async fn expire_sessions(hub: Rc<Hub>) {
    let expiry = hub.cfg.limits.session_expiry;
    let every = (expiry / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    );
    loop {
        async_io::Timer::after(every).await;
        let expired: Vec<Node> = {
            let mut reg = hub.registry.borrow_mut();
            let names: Vec<_> = reg
                .nodes
                .iter()
                .filter(|(_, n)| {
                    !n.linked && n.down_since.is_some_and(|(t, _)| t.elapsed() >= expiry)
                })
                .map(|(k, _)| k.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|k| reg.nodes.remove(&k))
                .collect()
        };
        for node in expired {
            let name = node.link.with_session(|s| {
                s.peer_restarted("the node's session expired while it was away");
                s.node().clone()
            });
            info!("session of node {name} expired after {expiry:?} without a link");
        }
    }
}

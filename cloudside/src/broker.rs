//! The hub replica's connection to an MQTT broker, for fleets that put a
//! broker between edges and several hub replicas.
//!
//! One client connection to the broker ([`tether_link::relay::Relay`])
//! carries every node. Each node still has its own hub session, driven over
//! an in-memory pipe to the relay instead of a socket, so streams, upstreams
//! and exposed ports work exactly as with direct links.

use crate::links::{node_entry, Hub};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::{FutureExt, Stream};
use log::{debug, info, warn};
use smol::channel::{unbounded, Receiver, Sender};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tether_link::backoff::{random_seed, Backoff};
use tether_link::relay::{Relay, RelayEvent};
use tether_link::topic::NodeName;

/// Bytes a node session wrote, tagged with its node.
type FromNode = (NodeName, Vec<u8>);

/// TCP connect plus TLS handshake to the broker must finish within this.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The TLS client for the broker, if `[broker] ca` is set. Built at start
/// so that a bad CA file stops the hub with a clear error.
pub fn tls(cfg: &crate::config::Broker) -> Result<Option<futures_rustls::TlsConnector>, String> {
    match &cfg.ca {
        Some(ca) => tether_link::tls::client_config(ca, None)
            .map(|c| Some(futures_rustls::TlsConnector::from(std::sync::Arc::new(c))))
            .map_err(|e| format!("broker.ca: {e}")),
        None => Ok(None),
    }
}

/// Keeps the broker connection up and relays for as long as the hub runs.
pub async fn run(hub: Rc<Hub>, tls: Option<futures_rustls::TlsConnector>) {
    let Some(cfg) = hub.cfg.broker.clone() else {
        return;
    };
    let relay = Rc::new(RefCell::new(Relay::new(
        hub.sender,
        hub.cfg.session.keepalive,
        hub.cfg.session.max_packet,
    )));
    let (from_nodes_tx, from_nodes) = unbounded::<FromNode>();
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(30),
        random_seed(),
    );
    info!(
        "relaying through the broker at {} as replica {:08x}",
        cfg.address, hub.sender
    );
    loop {
        let connect = smol::net::TcpStream::connect(cfg.address.as_str()).or(async {
            async_io::Timer::after(CONNECT_TIMEOUT).await;
            Err(io::ErrorKind::TimedOut.into())
        });
        match connect.await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let mut pipes: HashMap<NodeName, Sender<Vec<u8>>> = HashMap::new();
                let (tx, rx, p) = (&from_nodes_tx, &from_nodes, &mut pipes);
                let came_up = std::cell::Cell::new(false);
                let p = (p, &came_up);
                let reason = match &tls {
                    None => serve(&hub, &relay, tcp, tx, rx, p, &cfg).await,
                    Some(tls) => {
                        match rustls::pki_types::ServerName::try_from(cfg.server_name.clone()) {
                            Err(e) => format!("broker.server_name {:?}: {e}", cfg.server_name),
                            Ok(name) => match tls
                                .connect(name, tcp)
                                .or(async {
                                    async_io::Timer::after(CONNECT_TIMEOUT).await;
                                    Err(io::ErrorKind::TimedOut.into())
                                })
                                .await
                            {
                                Ok(s) => serve(&hub, &relay, s, tx, rx, p, &cfg).await,
                                Err(e) => format!("TLS handshake with the broker failed: {e}"),
                            },
                        }
                    }
                };
                relay.borrow_mut().disconnected();
                // Closing the pipes ends the node drivers; the sessions stay.
                drop(pipes);
                for node in hub.registry.borrow_mut().nodes.values_mut() {
                    if node.auth == "broker" && node.linked {
                        node.linked = false;
                        node.down_since = Some((Instant::now(), SystemTime::now()));
                    }
                }
                warn!("broker connection to {} lost: {reason}", cfg.address);
                if came_up.get() {
                    backoff.reset();
                }
            }
            Err(e) => warn!("cannot reach the broker at {}: {e}", cfg.address),
        }
        async_io::Timer::after(backoff.next_delay()).await;
    }
}

async fn serve<C: AsyncRead + AsyncWrite + Unpin>(
    hub: &Rc<Hub>,
    relay: &Rc<RefCell<Relay>>,
    tcp: C,
    from_nodes_tx: &Sender<FromNode>,
    from_nodes: &Receiver<FromNode>,
    (pipes, came_up): (
        &mut HashMap<NodeName, Sender<Vec<u8>>>,
        &std::cell::Cell<bool>,
    ),
    cfg: &crate::config::Broker,
) -> String {
    relay.borrow_mut().connect(
        Instant::now(),
        cfg.username.as_deref(),
        cfg.password.as_deref().map(str::as_bytes),
    );
    let (mut rd, mut wr) = futures_lite::io::split(tcp);
    let wake = Rc::new(smol::channel::bounded::<()>(1));
    let pipes = RefCell::new(pipes);
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => return "closed by the broker".to_string(),
                Ok(n) => n,
                Err(e) => return e.to_string(),
            };
            if let Err(e) = relay.borrow_mut().handle_input(Instant::now(), &buf[..n]) {
                return e.to_string();
            }
            loop {
                let event = relay.borrow_mut().poll_event();
                match event {
                    None => break,
                    Some(RelayEvent::Up) => {
                        came_up.set(true);
                        info!(
                            "broker connection up; relaying for replica {:08x}",
                            hub.sender
                        );
                        // Nodes known from before resend what they had in flight.
                        let known: Vec<NodeName> = hub
                            .registry
                            .borrow()
                            .nodes
                            .iter()
                            .filter(|(_, n)| n.auth == "broker")
                            .map(|(k, _)| k.clone())
                            .collect();
                        for node in known {
                            let pipe = attach(hub, &node, from_nodes_tx, cfg);
                            pipes.borrow_mut().insert(node, pipe);
                        }
                    }
                    Some(RelayEvent::ToNode { node, bytes }) => {
                        let existing = pipes.borrow().get(&node).cloned();
                        let bytes = match existing {
                            Some(p) => match p.try_send(bytes) {
                                Ok(()) => continue,
                                // The node's session driver ended (it broke
                                // the protocol): attach it afresh.
                                Err(e) => e.into_inner(),
                            },
                            None => bytes,
                        };
                        let pipe = attach(hub, &node, from_nodes_tx, cfg);
                        let _ = pipe.try_send(bytes);
                        pipes.borrow_mut().insert(node, pipe);
                    }
                }
            }
            let _ = wake.0.try_send(());
        }
    };
    let nodes = async {
        while let Ok((node, bytes)) = from_nodes.recv().await {
            if let Err(e) = relay.borrow_mut().from_node(&node, &bytes) {
                return e.to_string();
            }
            let _ = wake.0.try_send(());
        }
        "node channel closed".to_string()
    };
    let writer = async {
        loop {
            let (out, deadline) = {
                let mut r = relay.borrow_mut();
                if let Err(e) = r.handle_timeout(Instant::now()) {
                    return e.to_string();
                }
                (r.transmit(Instant::now()), r.poll_timeout())
            };
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    return e.to_string();
                }
                let _ = wr.flush().await;
                continue;
            }
            let wait = async {
                let _ = wake.1.recv().await;
            };
            match deadline {
                Some(at) => {
                    wait.or(async {
                        async_io::Timer::at(at).await;
                    })
                    .await
                }
                None => wait.await,
            }
        }
    };
    reader.or(nodes).or(writer).await
}

/// Attaches `node`'s hub session to the relay through a pipe and drives it.
fn attach(
    hub: &Rc<Hub>,
    node: &NodeName,
    from_nodes: &Sender<FromNode>,
    cfg: &crate::config::Broker,
) -> Sender<Vec<u8>> {
    let (to_node, rx) = unbounded::<Vec<u8>>();
    let link = {
        let mut reg = hub.registry.borrow_mut();
        let entry = node_entry(hub, &mut reg, node, "broker");
        let resumed = entry.links > 0;
        entry.linked = true;
        entry.linked_since = Some(SystemTime::now());
        entry.down_since = None;
        entry.links += 1;
        entry.remote = None;
        entry.auth = "broker";
        if !resumed {
            info!("node {node} seen through the broker at {}", cfg.address);
        }
        (entry.link.clone(), resumed)
    };
    let pipe = Pipe {
        node: node.clone(),
        rx: Box::pin(rx),
        pending: Vec::new(),
        tx: from_nodes.clone(),
    };
    let node = node.clone();
    hub.ex
        .spawn(async move {
            let (link, resumed) = link;
            let err = link
                .drive(pipe, &[], |s| s.hub_relayed(Instant::now(), resumed))
                .await;
            debug!("node {node}: relayed session detached: {err}");
        })
        .detach();
    to_node
}

/// One node session's end of the in-memory pipe to the relay.
struct Pipe {
    node: NodeName,
    rx: Pin<Box<Receiver<Vec<u8>>>>,
    pending: Vec<u8>,
    tx: Sender<FromNode>,
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_empty() {
            match self.rx.as_mut().poll_next(cx) {
                Poll::Ready(Some(bytes)) => self.pending = bytes,
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Unbounded, but what a session writes is bounded by its in-flight
        // limit and batch size.
        match self.tx.try_send((self.node.clone(), buf.to_vec())) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

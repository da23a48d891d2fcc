//! Cloud-side ports that reach a port on an edge board through its link.
//!
//! A connection to `listen` becomes a stream the hub opens towards the
//! node; the edge dials its local port if its config allows it.

use crate::config::Expose;
use crate::links::Hub;
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
        let link = {
            let reg = hub.registry.borrow();
            reg.nodes
                .get(&expose.node)
                .filter(|n| n.linked)
                .map(|n| n.link.clone())
        };
        let Some(link) = link else {
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

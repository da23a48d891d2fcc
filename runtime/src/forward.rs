//! Local ports whose connections become streams to a named hub upstream.
//!
//! A program on the board connects to `listen`; the edge opens a stream to
//! the upstream the hub knows by that name and splices the two. While the
//! link is down the stream waits in the session (its data is queued, within
//! the stream's window) and goes through when the link is back.

use crate::config::Forward;
use log::{debug, info, warn};
use smol::net::TcpListener;
use std::rc::Rc;
use tether_link::io::{splice, Link};
use tether_link::mux::OwnedTarget;

/// Binds the forward's port. Binding early lets startup fail loudly.
pub async fn bind(forward: &Forward) -> Result<TcpListener, String> {
    TcpListener::bind(forward.listen).await.map_err(|e| {
        format!(
            "forward {} -> {}: cannot listen: {e}",
            forward.listen, forward.upstream
        )
    })
}

/// Accepts connections on `listener` forever, one task per connection.
pub async fn serve(
    ex: Rc<smol::LocalExecutor<'static>>,
    link: Link,
    listener: TcpListener,
    forward: Forward,
) {
    info!(
        "forwarding {} to hub upstream {:?}",
        forward.listen, forward.upstream
    );
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!("forward {}: accept failed: {e}", forward.listen);
                async_io::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = match link.open(OwnedTarget::Upstream(forward.upstream.clone())) {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "forward {}: cannot open a stream for {peer}: {e}",
                    forward.listen
                );
                continue;
            }
        };
        let upstream = forward.upstream.clone();
        ex.spawn(async move {
            let id = stream.id();
            match splice(tcp, stream).await {
                Ok((up, down)) => {
                    debug!("stream {id} {peer} -> {upstream}: closed, {up} bytes up, {down} down")
                }
                Err(e) => debug!("stream {id} {peer} -> {upstream}: {e}"),
            }
        })
        .detach();
    }
}

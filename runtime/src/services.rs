//! Streams the hub opens towards this board: each goes to a local TCP port,
//! and only to ports the config allows (by default only the kubelet's), so
//! the cloud cannot reach arbitrary ports on the board.

use futures_lite::FutureExt;
use log::{debug, info};
use smol::net::TcpStream;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tether_link::frame::ResetCode;
use tether_link::io::{splice, Link, LinkStream};
use tether_link::mux::OwnedTarget;

/// How long dialing a local port may take before the stream is refused.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the hub's incoming streams forever.
pub async fn serve(ex: Rc<smol::LocalExecutor<'static>>, link: Link, allow_ports: Vec<u16>) {
    loop {
        let (stream, target) = link.accept().await;
        let port = match target {
            OwnedTarget::Port(p) if allow_ports.contains(&p) => p,
            OwnedTarget::Port(p) => {
                info!("hub asked for local port {p}, which services.allow_ports does not allow: refused");
                stream.refuse(
                    ResetCode::Refused,
                    &format!("port {p} is not in services.allow_ports of this edge"),
                );
                continue;
            }
            OwnedTarget::Upstream(name) => {
                stream.refuse(
                    ResetCode::Refused,
                    &format!("edges serve ports, not upstream {name:?}"),
                );
                continue;
            }
        };
        ex.spawn(dial(stream, port)).detach();
    }
}

async fn dial(stream: LinkStream, port: u16) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpStream::connect(addr)
        .or(async {
            async_io::Timer::after(DIAL_TIMEOUT).await;
            Err(std::io::ErrorKind::TimedOut.into())
        })
        .await;
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => {
            debug!("stream {}: local port {port}: {e}", stream.id());
            stream.refuse(ResetCode::ConnectFailed, &format!("local port {port}: {e}"));
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    stream.accept();
    let id = stream.id();
    match splice(stream, tcp).await {
        Ok((down, up)) => debug!("stream {id} to port {port}: closed, {down} bytes in, {up} out"),
        Err(e) => debug!("stream {id} to port {port}: {e}"),
    }
}

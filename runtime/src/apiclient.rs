//! The edge's connections to kube-apiserver: HTTPS end to end with the
//! node's own credentials, carried by a link stream through the hub (the
//! default; the hub relays bytes it cannot read) or by a direct TCP
//! connection (direct mode, no hub).
//!
//! The node's client certificate is the kubelet's, which kubelet rotates on
//! disk; the files are checked before every connection and the TLS
//! configuration is rebuilt when they change, so a rotation needs no
//! restart.

use crate::config::Apiserver;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt;
use log::info;
use rustls::pki_types::ServerName;
use std::cell::RefCell;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tether_link::io::{Link, LinkStream};
use tether_link::mux::OwnedTarget;

/// TCP (or stream open) plus TLS handshake must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One TLS connection to kube-apiserver, over whichever transport.
pub enum ApiConn {
    /// Through the link and the hub.
    Link(Box<futures_rustls::client::TlsStream<LinkStream>>),
    /// Direct TCP.
    Direct(Box<futures_rustls::client::TlsStream<smol::net::TcpStream>>),
}

/// Opens connections to kube-apiserver.
pub struct ApiClient {
    cfg: Apiserver,
    link: Option<Link>,
    server_name: ServerName<'static>,
    tls: RefCell<Loaded>,
}

/// The TLS client configs and the file times they were built from.
struct Loaded {
    /// Presents the node's certificate.
    node: futures_rustls::TlsConnector,
    /// Presents no certificate: for requests that bring their own
    /// credentials, which must never travel on the node's identity.
    own: futures_rustls::TlsConnector,
    stamps: [Option<SystemTime>; 3],
}

/// Whose identity a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The node's client certificate.
    Node,
    /// None at the TLS layer: the request carries its own (a bearer token).
    Own,
}

impl ApiClient {
    /// Whether the link that carries the connections is up (`false` in
    /// direct mode): a proxy offline because the link was down tries again
    /// as soon as it is back.
    pub fn link_up(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.with_session(|s| s.is_up()))
    }

    /// A client for `cfg`; `link` carries the streams unless `cfg` is in
    /// direct mode. Fails if the credentials cannot be loaded.
    pub fn new(cfg: Apiserver, link: Option<Link>) -> Result<ApiClient, String> {
        if cfg.direct.is_none() && link.is_none() {
            return Err("apiserver: no link to reach it through, and no direct address".into());
        }
        let server_name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|e| format!("apiserver.server_name {:?}: {e}", cfg.server_name))?;
        let tls = RefCell::new(load(&cfg)?);
        Ok(ApiClient {
            cfg,
            link,
            server_name,
            tls,
        })
    }

    /// A client for a node that has no certificate yet (kubelet's TLS
    /// bootstrap in `join`): only [`Identity::Own`] connections, whose
    /// requests carry a bootstrap token. `cfg.cert` and `cfg.key` need
    /// not exist.
    pub fn without_node_certificate(
        cfg: Apiserver,
        link: Option<Link>,
    ) -> Result<ApiClient, String> {
        if cfg.direct.is_none() && link.is_none() {
            return Err("apiserver: no link to reach it through, and no direct address".into());
        }
        let server_name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|e| format!("apiserver.server_name {:?}: {e}", cfg.server_name))?;
        let own = connector(&cfg, None)?;
        let tls = RefCell::new(Loaded {
            node: own.clone(),
            own,
            stamps: stamps(&cfg),
        });
        Ok(ApiClient {
            cfg,
            link,
            server_name,
            tls,
        })
    }

    /// Whether connections go through the link and it is down.
    pub fn link_down(&self) -> bool {
        self.cfg.direct.is_none()
            && self
                .link
                .as_ref()
                .is_some_and(|l| !l.with_session(|s| s.is_up()))
    }

    /// Opens one TLS connection to kube-apiserver carrying `identity`.
    pub async fn connect(&self, identity: Identity) -> io::Result<ApiConn> {
        self.reload_if_rotated();
        let connector = match identity {
            Identity::Node => self.tls.borrow().node.clone(),
            Identity::Own => self.tls.borrow().own.clone(),
        };
        let name = self.server_name.clone();
        let attempt = async {
            match (&self.cfg.direct, &self.link) {
                (Some(address), _) => {
                    let tcp = smol::net::TcpStream::connect(address.as_str()).await?;
                    let _ = tcp.set_nodelay(true);
                    let tls = connector.connect(name, tcp).await?;
                    Ok(ApiConn::Direct(Box::new(tls)))
                }
                (None, Some(link)) => {
                    // While the link is down a stream would only wait: fail
                    // at once so the proxy answers from the cache.
                    if !link.with_session(|s| s.is_up()) {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "the link to the hub is down",
                        ));
                    }
                    let upstream = self.cfg.upstream.clone().unwrap_or_default();
                    let stream = link
                        .open(OwnedTarget::Upstream(upstream))
                        .map_err(|e| io::Error::new(io::ErrorKind::WouldBlock, e))?;
                    let tls = connector.connect(name, stream).await?;
                    Ok(ApiConn::Link(Box::new(tls)))
                }
                (None, None) => Err(io::ErrorKind::NotConnected.into()),
            }
        };
        attempt
            .or(async {
                async_io::Timer::after(CONNECT_TIMEOUT).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS connection to kube-apiserver within {CONNECT_TIMEOUT:?}"),
                ))
            })
            .await
    }

    /// Rebuilds the TLS config when kubelet rotated the certificate files.
    /// A rotation caught half-written keeps the old config until the files
    /// make sense again.
    fn reload_if_rotated(&self) {
        let stamps = stamps(&self.cfg);
        if stamps == self.tls.borrow().stamps {
            return;
        }
        match load(&self.cfg) {
            Ok(loaded) => {
                info!("apiserver credentials changed on disk: reloaded");
                *self.tls.borrow_mut() = loaded;
            }
            Err(e) => log::warn!(
                "apiserver credentials changed but cannot be loaded, keeping the old ones: {e}"
            ),
        }
    }
}

fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn stamps(cfg: &Apiserver) -> [Option<SystemTime>; 3] {
    [stamp(&cfg.ca), stamp(&cfg.cert), stamp(&cfg.key)]
}

fn connector(
    cfg: &Apiserver,
    identity: Option<(&Path, &Path)>,
) -> Result<futures_rustls::TlsConnector, String> {
    let mut config = tether_link::tls::client_config(&cfg.ca, identity)
        .map_err(|e| format!("apiserver: {e}"))?;
    // HTTP/1.1 only: the proxy speaks it on both sides.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(futures_rustls::TlsConnector::from(Arc::new(config)))
}

fn load(cfg: &Apiserver) -> Result<Loaded, String> {
    let stamps = stamps(cfg);
    Ok(Loaded {
        node: connector(cfg, Some((&cfg.cert, &cfg.key)))?,
        own: connector(cfg, None)?,
        stamps,
    })
}

impl AsyncRead for ApiConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiConn::Link(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ApiConn::Direct(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ApiConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiConn::Link(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ApiConn::Direct(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiConn::Link(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ApiConn::Direct(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiConn::Link(s) => Pin::new(s.as_mut()).poll_close(cx),
            ApiConn::Direct(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

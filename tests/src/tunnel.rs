//! kube-apiserver's side of the hub's egress in tests: TLS to the egress
//! endpoint with a client configuration, `CONNECT <target>`, and the
//! tunnel that follows; and [`Setup`], the hub, egress and edge that the
//! egress tests start around a stand-in kubelet of their own.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{start_edge, start_hub, wait_linked, EdgeAuth, Hub, Transport};
use crate::faultproxy::FaultProxy;
use crate::pki::Pki;
use crate::procs::{free_port, Proc};

/// A tunnel through the hub's egress: the TLS connection to the egress
/// endpoint, after its CONNECT answer.
pub type Tunnel = StreamOwned<ClientConnection, TcpStream>;

/// How long reads and writes on the tunnel may block.
const WAIT: Duration = Duration::from_secs(30);

/// Connects to the egress at `egress` (its certificate names `localhost`)
/// with `config`, sends `CONNECT target` and reads the answer head byte by
/// byte, so that what follows stays in the tunnel. Returns the answer's
/// status line and the tunnel (only usable after a 200).
///
/// # Errors
///
/// The connection or the TLS handshake failed.
pub fn connect(
    egress: SocketAddr,
    config: &Arc<ClientConfig>,
    target: &str,
) -> io::Result<(String, Tunnel)> {
    let tcp = TcpStream::connect(egress)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    Ok((status, tls))
}

/// How long a test waits for the edge to link.
const LINKED: Duration = Duration::from_secs(30);

/// A hub with its egress endpoint and one edge, `edge-1`, that allows the
/// port of a stand-in kubelet the test started; what egress tests share.
pub struct Setup {
    /// The edge process.
    pub edge: Proc,
    /// The hub process and its addresses.
    pub hub: Hub,
    /// The hub's egress endpoint (TLS, client certificate required).
    pub egress: SocketAddr,
    /// The stand-in kubelet, on the edge's side.
    pub kubelet: SocketAddr,
    /// The certificates everything uses.
    pub pki: Pki,
    /// Between edge and hub, if the test asked for one.
    pub proxy: Option<FaultProxy>,
    /// Where the edge links to, and its extra config (to start it again).
    pub edge_link: SocketAddr,
    /// The edge's extra config.
    pub edge_cfg: String,
}

impl Setup {
    /// Starts the hub with the egress endpoint and an edge that allows
    /// `kubelet`'s port; with `through_proxy`, the edge links through a
    /// [`FaultProxy`] with a 2 s keepalive and reconnects quickly after a cut.
    ///
    /// # Panics
    ///
    /// Panics if the edge does not link within 30 s.
    pub fn start(pki: Pki, kubelet: SocketAddr, through_proxy: bool) -> Setup {
        let egress: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let hub = start_hub(
            &pki,
            Transport::Tls,
            &["edge-1"],
            &format!(
                "[egress]\nlisten = \"{egress}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nconnect_timeout = \"3s\"\n",
                pki.hub_cert.display(),
                pki.hub_key.display(),
                pki.ca.display()
            ),
        );
        let proxy = through_proxy.then(|| FaultProxy::start(hub.link).expect("proxy"));
        let (link, link_cfg) = match &proxy {
            Some(p) => (
                p.addr(),
                "[link]\nkeepalive = \"2s\"\nconnect_timeout = \"3s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n",
            ),
            None => (hub.link, ""),
        };
        let edge_cfg = format!("{link_cfg}[services]\nallow_ports = [{}]\n", kubelet.port());
        let edge = start_edge(
            &pki,
            "edge-1",
            link,
            Transport::Tls,
            EdgeAuth::Token,
            &edge_cfg,
        );
        assert!(wait_linked(hub.admin, "edge-1", LINKED), "{}", edge.logs());
        Setup {
            edge,
            hub,
            egress,
            kubelet,
            pki,
            proxy,
            edge_link: link,
            edge_cfg,
        }
    }
}

/// A client configuration trusting the test CA, with the client
/// certificate of `cert` (a common name) if given.
///
/// # Panics
///
/// Panics if the certificate files cannot be read.
pub fn client_config(pki: &Pki, cert: Option<&str>) -> Arc<ClientConfig> {
    let pair = cert.map(|cn| pki.node_cert(cn));
    let config = tether_link::tls::client_config(
        &pki.ca,
        pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .expect("client TLS");
    Arc::new(config)
}

/// TLS to the kubelet inside a tunnel.
pub type Kubelet = StreamOwned<ClientConnection, Tunnel>;

/// The client configurations of kube-apiserver: to the hub with its client
/// certificate, to the kubelet without. Made once: each new certificate
/// costs a key generation.
pub struct Clients {
    outer: Arc<ClientConfig>,
    inner: Arc<ClientConfig>,
}

impl Clients {
    /// kube-apiserver's configurations under `pki`.
    pub fn new(pki: &Pki) -> Clients {
        Clients {
            outer: client_config(pki, Some("kube-apiserver")),
            inner: client_config(pki, None),
        }
    }

    /// A tunnel to `s`'s kubelet through the egress, TLS inside it (for
    /// the name `edge-1`). The TLS handshake with the kubelet happens on
    /// the first write.
    ///
    /// # Errors
    ///
    /// The tunnel could not be opened, or the CONNECT was not answered 200.
    pub fn kubelet(&self, s: &Setup) -> io::Result<Kubelet> {
        let target = format!("edge-1:{}", s.kubelet.port());
        let (status, outer) = connect(s.egress, &self.outer, &target)?;
        if status != "HTTP/1.1 200 Connection established" {
            return Err(io::Error::other(format!("CONNECT {target}: {status:?}")));
        }
        let name = ServerName::try_from("edge-1").map_err(io::Error::other)?;
        let inner = ClientConnection::new(self.inner.clone(), name).map_err(io::Error::other)?;
        Ok(StreamOwned::new(inner, outer))
    }
}

//! The setup the API proxy's system tests and benchmarks share: a stand-in
//! kube-apiserver (TLS), a hub that relays to it as upstream
//! `kube-apiserver`, and one edge (`edge-1`) linked to the hub whose API
//! proxy reaches the stand-in through the link with the node's certificate.

use crate::apiserver::StandIn;
use crate::cluster::{start_edge, start_hub, token_of, wait_linked, EdgeAuth, Hub, Transport};
use crate::pki::Pki;
use crate::procs::{free_port, Proc};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long the setup waits for the link and the proxy.
const WAIT: Duration = Duration::from_secs(30);

/// A running fleet. Fields drop in order: processes before the PKI folder
/// they read.
pub struct Fleet {
    /// The edge.
    pub edge: Proc,
    /// The hub.
    pub hub: Hub,
    /// The stand-in kube-apiserver.
    pub standin: StandIn,
    /// The edge's API proxy.
    pub proxy: SocketAddr,
    /// The edge's `/healthz` and `/metrics`.
    pub status: SocketAddr,
    /// The edge's config after the `[hub]` part: start another edge with it
    /// to restart this one with the same cache.
    pub config: String,
    /// Certificates and the folder everything writes to.
    pub pki: Pki,
}

/// The `[apiserver]`, `[proxy]` and `[status]` config of an edge whose
/// proxy listens on `proxy`, with its cache in the PKI folder; `direct`
/// skips the hub. `extra` is appended to `[proxy]`.
pub fn edge_config(
    pki: &Pki,
    proxy: SocketAddr,
    direct: Option<SocketAddr>,
    extra: &str,
) -> String {
    let (cert, key) = pki.node_cert("system:node:edge-1");
    let direct = direct.map_or(String::new(), |d| format!("direct = \"{d}\"\n"));
    format!(
        "[link]\nkeepalive = \"2s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n[apiserver]\n{direct}server_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n{extra}[status]\nlisten = \"127.0.0.1:{}\"\n",
        pki.ca.display(),
        cert.display(),
        key.display(),
        pki.dir.join(format!("cache-{}.db", proxy.port())).display(),
        proxy.port() + 1
    )
}

/// How the edge's proxy reaches kube-apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the link and the hub (the default).
    Link,
    /// Directly over TCP (direct mode); the edge still links to the hub.
    Direct,
}

/// [`start`] through the link.
pub fn through_link(pki: Pki, standin: StandIn, proxy_extra: &str) -> Fleet {
    start(pki, standin, Route::Link, proxy_extra)
}

/// Starts the fleet and waits until the edge is linked and its proxy
/// serves. `standin` is started by the caller (seeded as it likes);
/// `proxy_extra` is appended to the edge's `[proxy]` table.
///
/// # Panics
///
/// If the edge does not link or its proxy does not start within 30 s.
pub fn start(pki: Pki, standin: StandIn, route: Route, proxy_extra: &str) -> Fleet {
    launch(pki, standin, route, proxy_extra, None)
}

/// A command that runs the edge binary for it, such as an emulator running a
/// cross-built edge (`qemu-arm-static -cpu arm1176 <edge>`): the edge's own
/// arguments (`--config FILE`) follow `args`.
#[derive(Debug, Clone)]
pub struct EdgeCommand {
    /// The program to start (the emulator, or the edge itself).
    pub program: PathBuf,
    /// Its arguments before the edge's, ending with the edge binary's path
    /// when `program` is an emulator.
    pub args: Vec<String>,
}

/// [`start`] with the edge started by `edge` instead of the workspace's own
/// binary, so the same scenario runs against a cross build under qemu-user.
/// The edge authenticates with its token over TLS, as [`start`]'s does.
///
/// # Panics
///
/// If the edge does not link or its proxy does not start within 30 s.
pub fn start_with(
    pki: Pki,
    standin: StandIn,
    route: Route,
    proxy_extra: &str,
    edge: &EdgeCommand,
) -> Fleet {
    launch(pki, standin, route, proxy_extra, Some(edge))
}

/// Starts `edge-1` as `command` with the config [`start_edge`] would write for
/// token auth over TLS; `cluster` always runs the native binary, hence this copy.
fn start_edge_as(pki: &Pki, hub: SocketAddr, extra: &str, command: &EdgeCommand) -> Proc {
    let node = "edge-1";
    let token = pki.write(&format!("token-{node}"), &token_of(node));
    let text = format!(
        "node = \"{node}\"\nlog_level = \"debug\"\n[hub]\naddress = \"{hub}\"\nserver_name = \"localhost\"\nca = \"{}\"\ntoken_file = \"{}\"\n{extra}\n",
        pki.ca.display(),
        token.display()
    );
    let config = pki.write(&format!("edge-{node}-{}.toml", free_port()), &text);
    let config = config.to_string_lossy().into_owned();
    let mut args: Vec<&str> = command.args.iter().map(String::as_str).collect();
    args.extend(["--config", &config]);
    Proc::start(node, &command.program, &args)
}

/// [`start`] and [`start_with`]: the native edge when `edge` is `None`.
fn launch(
    pki: Pki,
    standin: StandIn,
    route: Route,
    proxy_extra: &str,
    edge: Option<&EdgeCommand>,
) -> Fleet {
    let hub = start_hub(
        &pki,
        Transport::Tls,
        &["edge-1"],
        &format!(
            "[upstream.kube-apiserver]\naddress = \"{}\"\n",
            standin.addr()
        ),
    );
    // The status port is the proxy's plus one: pick a proxy port whose
    // neighbour is free too.
    let proxy: SocketAddr = ([127, 0, 0, 1], free_pair()).into();
    let direct = (route == Route::Direct).then(|| standin.addr());
    let config = edge_config(&pki, proxy, direct, proxy_extra);
    let edge = match edge {
        None => start_edge(
            &pki,
            "edge-1",
            hub.link,
            Transport::Tls,
            EdgeAuth::Token,
            &config,
        ),
        Some(command) => start_edge_as(&pki, hub.link, &config, command),
    };
    assert!(wait_linked(hub.admin, "edge-1", WAIT), "{}", edge.logs());
    assert!(edge.wait_for_log("API proxy on", WAIT), "{}", edge.logs());
    Fleet {
        edge,
        hub,
        standin,
        proxy,
        status: ([127, 0, 0, 1], proxy.port() + 1).into(),
        config,
        pki,
    }
}

/// A free port whose successor is free too.
fn free_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

//! The join service as the running hub holds it: the [`Joiner`] for
//! requests, and a copy of the node records that decides at every connect
//! whether a node certificate is still good, reloaded within a second of
//! any change (`tether-hub node revoke` runs as another process), and that
//! drops the link of a node revoked while linked.

use super::nodes::{CertStatus, Nodes};
use super::serve::Joiner;
use crate::links::Hub;
use log::{info, warn};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tether_link::topic::NodeName;

/// How often the node records are looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The join service of a running hub.
pub struct JoinService {
    /// Decides requests (shared with the blocking pool).
    pub joiner: Arc<Joiner>,
    /// The records CONNECTs are checked against, refreshed from the
    /// joiner's snapshot each [`RELOAD_EVERY`] (no file I/O per CONNECT).
    nodes: RefCell<Arc<Nodes>>,
}

impl JoinService {
    /// Opens the CA and the stores of `[join]`; a CA that does not load
    /// stops the hub at start, with the file named.
    pub fn open(cfg: &crate::config::Join) -> Result<JoinService, String> {
        let joiner = Joiner::open(cfg)?;
        let nodes = joiner.records()?;
        Ok(JoinService {
            joiner: Arc::new(joiner),
            nodes: RefCell::new(nodes),
        })
    }

    /// Why a link with the node certificate of serial `serial` must be
    /// refused (metrics label, log line), or `None`.
    pub fn refusal(&self, node: &NodeName, serial: &[u8]) -> Option<(&'static str, String)> {
        match self.nodes.borrow().status(node, serial) {
            CertStatus::Current | CertStatus::Previous | CertStatus::Unknown => None,
            CertStatus::Revoked { at } => Some((
                "certificate_revoked",
                format!("node {node} was revoked at {}", super::store::rfc3339(at)),
            )),
            CertStatus::Superseded => Some((
                "certificate_superseded",
                format!("an older certificate of {node}: a newer one was issued since"),
            )),
        }
    }

    /// Takes the joiner's current records; returns whether they changed.
    fn reload(&self) -> bool {
        match self.joiner.records() {
            Ok(fresh) if fresh.stamp() != self.nodes.borrow().stamp() => {
                *self.nodes.borrow_mut() = fresh;
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!("cannot reload the node records, keeping the previous ones: {e}");
                false
            }
        }
    }
}

/// Reloads the records every [`RELOAD_EVERY`] and drops the links of
/// revoked nodes at once; their streams are reset.
pub async fn watch(hub: Rc<Hub>) {
    let Some(service) = hub.join.as_ref() else {
        return;
    };
    loop {
        async_io::Timer::after(RELOAD_EVERY).await;
        if !service.reload() {
            continue;
        }
        let revoked: Vec<NodeName> = service
            .nodes
            .borrow()
            .revoked()
            .map(|(n, _)| n.clone())
            .collect();
        let reg = hub.registry.borrow();
        for node in revoked {
            if let Some(entry) = reg.nodes.get(&node).filter(|n| n.linked) {
                info!("node {node} is revoked: dropping its link");
                entry
                    .link
                    .with_session(|s| s.peer_restarted("the node was revoked"));
                entry.link.cut("the node was revoked");
            }
        }
    }
}

//! What the edge tells the hub about its node: the addresses in its Node
//! status, so that kube-apiserver's egress can find the node by them (the
//! hub never sees the apiserver's answers itself: they are end-to-end TLS).
//! Sent on a short stream to the reserved upstream
//! [`ADDRESSES_UPSTREAM`], one address per line.

use futures_lite::io::AsyncWriteExt;
use log::debug;
use std::time::Duration;
use tether_link::io::Link;
use tether_link::mux::{OwnedTarget, ADDRESSES_MAX, ADDRESSES_UPSTREAM};

/// Attempts before an announcement is given up (the next one comes with
/// the next Node answer).
const ATTEMPTS: u32 = 30;

/// Tells the hub the node's `addresses`, retrying while the link is down.
pub async fn addresses(link: Link, addresses: Vec<String>) {
    let mut text = String::new();
    for a in &addresses {
        if text.len() + a.len() + 1 > ADDRESSES_MAX {
            break;
        }
        text.push_str(a);
        text.push('\n');
    }
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            async_io::Timer::after(Duration::from_secs(2)).await;
        }
        if !link.with_session(|s| s.is_up()) {
            continue;
        }
        let Ok(mut stream) = link.open(OwnedTarget::Upstream(ADDRESSES_UPSTREAM.into())) else {
            continue;
        };
        if let Err(e) = stream.accepted().await {
            debug!("announcing the node's addresses: {e}");
            continue;
        }
        if stream.write_all(text.as_bytes()).await.is_ok() && stream.close().await.is_ok() {
            debug!("told the hub the node's addresses {addresses:?}");
            return;
        }
    }
}

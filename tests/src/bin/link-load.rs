//! link-load: one hub holding thousands of idle links, and their return
//! after a hub restart.
//!
//! Starts the release tether-hub (TLS 1.3, token auth), then runs N edge
//! links in this one process with the real edge link code
//! (`tether_edge::uplink`), each from its own loopback source address in
//! 127.1.0.0/16. Prints the hub's resident memory per link, then kills and
//! restarts the hub and prints how long the fleet took to relink and how
//! the reconnects spread over time (a herd would pile them into one second).
//!
//! Usage: cargo run --release -p tether-tests --bin link-load [-- --links N]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tether_edge::config::{Credentials, Hub as HubCfg, Link as LinkCfg};
use tether_edge::uplink;
use tether_link::session;
use tether_link::topic::NodeName;
use tether_tests::bench::{arg, status_kib};
use tether_tests::cluster::{metric, start_hub, start_hub_on, token_of, Transport};
use tether_tests::pki::Pki;

fn node(i: u64) -> String {
    format!("load-{i:05}")
}

/// Waits until the hub reports `want` links; samples accepted connections
/// every 250 ms on the way. Returns the time taken and the samples.
fn wait_links(
    admin: SocketAddr,
    want: u64,
    limit: Duration,
) -> (Option<Duration>, Vec<(f64, f64)>) {
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < limit {
        let links = metric(admin, "tether_hub_links").unwrap_or(0.0);
        let conns = metric(admin, "tether_hub_connections_total").unwrap_or(0.0);
        samples.push((start.elapsed().as_secs_f64(), conns));
        if links as u64 >= want {
            return (Some(start.elapsed()), samples);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (None, samples)
}

/// Connections accepted per whole second, from cumulative samples.
fn per_second(samples: &[(f64, f64)]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last = 0.0;
    for s in 1.. {
        let Some(at) = samples.iter().rev().find(|(t, _)| *t <= s as f64) else {
            break;
        };
        if samples.last().is_some_and(|(t, _)| *t < (s - 1) as f64) {
            break;
        }
        out.push((at.1 - last).max(0.0) as u64);
        last = at.1;
    }
    out
}

fn main() {
    let n = arg("--links", 10_000);
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let pki = Pki::new();
    let names: Vec<String> = (0..n).map(node).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let extra = format!("[limits]\nmax_links = {}\n", n + 100);
    let mut hub = start_hub(&pki, Transport::Tls, &refs, &extra);
    std::thread::sleep(Duration::from_millis(500));
    let base = status_kib(hub.proc.pid(), "VmRSS:");
    println!("hub RSS with no links: {base} KiB");

    let hub_addr = hub.link;
    let ca = pki.ca.clone();
    let load = std::thread::spawn(move || {
        let ex = Rc::new(smol::LocalExecutor::new());
        let probe = HubCfg {
            address: hub_addr.to_string(),
            server_name: "localhost".into(),
            ca: Some(ca),
            plaintext: false,
            credentials: None,
            broker: false,
            source_address: None,
            renew_at_percent: 0,
        };
        let tls = uplink::tls_connector(&probe)
            .expect("tls")
            .expect("tls connector");
        let timing = LinkCfg {
            session: session::Config::default(),
            connect_timeout: Duration::from_secs(20),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        };
        for i in 0..n {
            let name = node(i);
            let source = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
            let cfg = HubCfg {
                credentials: Some(Credentials::Token(token_of(&name))),
                source_address: Some(source),
                ..probe.clone()
            };
            let link = uplink::new_link(NodeName::new(&name).expect("name"), &timing, false);
            ex.spawn(uplink::run(link, cfg, timing.clone(), Some(tls.clone())))
                .detach();
        }
        smol::block_on(ex.run(std::future::pending::<()>()));
    });

    let (took, _) = wait_links(hub.admin, n, Duration::from_secs(300));
    let Some(took) = took else {
        panic!(
            "only {:?} of {n} links came up",
            metric(hub.admin, "tether_hub_links")
        );
    };
    println!("{n} links up after {:.1} s", took.as_secs_f64());
    std::thread::sleep(Duration::from_secs(5));
    let rss = status_kib(hub.proc.pid(), "VmRSS:");
    println!(
        "hub RSS with {n} idle TLS links: {rss} KiB = {:.1} KiB per link (over the {base} KiB of an empty hub)",
        (rss.saturating_sub(base)) as f64 / n as f64
    );

    let port = hub.link.port();
    hub.proc.kill();
    let killed = Instant::now();
    let hub = start_hub_on(&pki, Transport::Tls, &refs, &extra, port);
    let restarted = killed.elapsed();
    let (took, samples) = wait_links(hub.admin, n, Duration::from_secs(180));
    match took {
        Some(t) => println!(
            "after a hub restart ({:.1} s down): all {n} links back {:.1} s after the kill",
            restarted.as_secs_f64(),
            (restarted + t).as_secs_f64()
        ),
        None => println!(
            "after a hub restart: NOT all links back within 180 s: {:?}",
            metric(hub.admin, "tether_hub_links")
        ),
    }
    let spread = per_second(&samples);
    let peak = spread.iter().max().copied().unwrap_or(0);
    println!("reconnects accepted per second after the restart: {spread:?} (peak {peak}, {:.0}% of the fleet)", peak as f64 * 100.0 / n as f64);
    drop(load);
}

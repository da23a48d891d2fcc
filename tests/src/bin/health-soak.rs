//! health-soak: issue 6's figures with the real binaries on loopback. A
//! unit of edges (5 by default) and a hub run for a while with a share of
//! the health datagrams dropped at random by a relay in front of each
//! edge's health port (`tests::udpdrop`); every minute it prints whether
//! the hub ever voted a live node dead (it must never), how often an edge
//! judged a live peer dead on its own (hysteresis lets that happen; the
//! vote must not follow), and the health bytes per second each edge sent,
//! measured at the relays with UDP/IPv4 headers. At the end it kills one
//! edge and prints how long, in probe intervals, until the hub's /nodes
//! shows it voted dead.
//!
//! Usage:
//!   cargo run --release -p tether-tests --bin health-soak -- --minutes 30 --drop 0.05
//!   cargo run --release -p tether-tests --bin health-soak -- --unit 20 --minutes 5 --drop 0
//!
//! Options: `--minutes M` (30), `--drop P` (0.05), `--unit N` (5, at most
//! 64), `--interval S` (25, the default `[health] interval`).

use std::time::{Duration, Instant};
use tether_tests::bench::arg;
use tether_tests::healthunit::{shown_vote, Options, Unit};
use tether_tests::udpdrop::Relays;

/// The value after `--drop`, a share from 0 to 1.
fn drop_arg(default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--drop")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|p| (0.0..=1.0).contains(p))
        .unwrap_or(default)
}

fn main() {
    let minutes = arg("--minutes", 30);
    let drop = drop_arg(0.05);
    let size = (arg("--unit", 5) as usize).clamp(3, 64);
    let interval = Duration::from_secs(arg("--interval", 25).clamp(2, 3600));
    println!(
        "health-soak: unit of {size}, interval {} s, dead_after 3, {:.1}% of health datagrams \
         dropped, {minutes} min",
        interval.as_secs(),
        drop * 100.0
    );

    let relays = Relays::start(size, drop).expect("UDP relays");
    // 16-character node names and a 12-character unit, as the traffic
    // arithmetic in ARCHITECTURE.md §5.2 assumes, so the figures compare.
    let mut opts = Options::new("greenhouse-a", size, &format!("{}s", interval.as_secs()));
    opts.names = (1..=size).map(|i| format!("gh-soak-node-{i:03}")).collect();
    let unit = Unit::start(&opts, &|j, own| {
        relays.point(j, own);
        relays.addr(j)
    });
    let admin = unit.hub.admin;
    let names: Vec<String> = unit.members.iter().map(|m| m.name.clone()).collect();

    // Settle: every node voted alive, with an opinion from everyone else
    // (in a large unit with drops some single verdicts may already be
    // dead: hysteresis allows that, the vote must not follow).
    let settled = Instant::now();
    let everyone = (size - 1) as u32;
    while !names.iter().all(|n| {
        shown_vote(admin, n).is_some_and(|v| v.vote == "alive" && v.alive + v.dead == everyone)
    }) {
        assert!(
            settled.elapsed() < interval * 6,
            "the unit did not settle:\n{}",
            unit.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "settled: every node voted alive, with an opinion from all {everyone} others, after {:.1} s",
        settled.elapsed().as_secs_f64()
    );
    let hub_dead_before = unit.hub.proc.count_log("voted dead");
    let edge_dead_before: usize = flaps(&unit);
    relays.reset_counts();
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut seen_dead: Vec<String> = Vec::new();
    let mut minute = 1;
    while Instant::now() < end {
        for n in &names {
            if shown_vote(admin, n).is_some_and(|v| v.vote == "dead") && !seen_dead.contains(n) {
                seen_dead.push(n.clone());
            }
        }
        if start.elapsed() >= Duration::from_secs(minute * 60) {
            report(
                &unit,
                &relays,
                start,
                minute,
                hub_dead_before,
                edge_dead_before,
                &seen_dead,
            );
            minute += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if minute <= minutes {
        report(
            &unit,
            &relays,
            start,
            minute,
            hub_dead_before,
            edge_dead_before,
            &seen_dead,
        );
    }
    let hub_dead = unit.hub.proc.count_log("voted dead") - hub_dead_before;
    let counts = relays.counts();
    let secs = start.elapsed().as_secs_f64();
    let rates: Vec<f64> = unit
        .members
        .iter()
        .map(|m| *counts.sent.get(&m.health).unwrap_or(&0) as f64 / secs)
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let (min, max) = rates
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!(
        "health traffic sent per edge (UDP/IPv4 included, unit of {size}, interval {} s): \
         mean {mean:.1} B/s, min {min:.1}, max {max:.1}",
        interval.as_secs()
    );
    println!(
        "soak result: live nodes voted dead by the hub: {} ({}); edge verdicts of dead on \
         live peers: {}",
        hub_dead,
        if hub_dead == 0 && seen_dead.is_empty() {
            "never, as required"
        } else {
            "FAILED"
        },
        flaps(&unit) - edge_dead_before
    );

    // Kill one edge: time until the hub shows it voted dead.
    let mut unit = unit;
    let victim = names[size - 1].clone();
    let killed = Instant::now();
    if let Some(p) = unit.member(&victim).proc.as_mut() {
        p.kill();
    }
    let took = loop {
        if shown_vote(admin, &victim).is_some_and(|v| v.vote == "dead") {
            break Some(killed.elapsed());
        }
        if killed.elapsed() > interval * 6 {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match took {
        Some(t) => println!(
            "killed {victim}: voted dead by the hub after {:.1} s = {:.2} intervals (goal: <= 3)",
            t.as_secs_f64(),
            t.as_secs_f64() / interval.as_secs_f64()
        ),
        None => println!("killed {victim}: NOT voted dead within 6 intervals"),
    }
}

/// Edge verdicts of dead so far, all edges together.
fn flaps(unit: &Unit) -> usize {
    unit.members
        .iter()
        .filter_map(|m| m.proc.as_ref())
        .map(|p| p.count_log("-> dead"))
        .sum()
}

/// The line printed every minute.
fn report(
    unit: &Unit,
    relays: &Relays,
    start: Instant,
    minute: u64,
    hub_dead_before: usize,
    edge_dead_before: usize,
    seen_dead: &[String],
) {
    let counts = relays.counts();
    let secs = start.elapsed().as_secs_f64();
    let total: u64 = counts.sent.values().sum();
    let datagrams = counts.forwarded + counts.dropped;
    println!(
        "minute {minute}: live nodes voted dead by the hub: {} (seen in /nodes: {seen_dead:?}); \
         edge verdicts of dead on live peers: {}; {:.1} health B/s per edge; {} of {} \
         datagrams dropped ({:.1}%)",
        unit.hub.proc.count_log("voted dead") - hub_dead_before,
        flaps(unit) - edge_dead_before,
        total as f64 / secs / unit.members.len() as f64,
        counts.dropped,
        datagrams,
        100.0 * counts.dropped as f64 / datagrams.max(1) as f64
    );
}

//! join-bench: issue 7's two figures for `tether-edge join`.
//!
//! 1. **Join to proxying.** A stand-in kube-apiserver (TLS), `tether-hub
//!    init`, a hub with `[join]` that relays upstream `kube-apiserver` to the
//!    stand-in; then per run, with a fresh node name and folder: `token
//!    create --print-join-command` (not timed), the printed `tether-edge
//!    join` with `--board` (a board file written here), then `tether-edge
//!    --config` on the written config, until the hub's `/nodes` shows the
//!    node linked and a GET through its API proxy answers 200. Prints each
//!    run's times and their min/median/max.
//! 2. **Parallel joins.** One hub with `[join]`, and N (1,000) joins at once
//!    from this process with the edge's own exchange code, each with its
//!    own key and CSR (made before the clock starts): once on one multi-use
//!    token, once on N single-use tokens bound to their nodes. Counts
//!    successes and failures by kind, checks every certificate (this node,
//!    this key, the pinned CA), prints wall time, joins/s, latencies, the
//!    hub's CPU time, and checks that `tether-hub node list` shows exactly
//!    the nodes that were answered a certificate.
//!
//! Child processes are killed on the way out: errors are returned, not
//! panicked (the release profile aborts on panic, which skips `Proc`'s drop).
//!
//! Usage: cargo run --release -p tether-tests --bin join-bench
//!        [-- --runs 5 --joins 1000 --threads 4 --part 0|1|2]
//! (`--part 1`: only join to proxying, `2`: only the parallel joins.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};
use tether_edge::identity::exchange::{exchange, ExchangeError};
use tether_edge::identity::key::NodeKey;
use tether_edge::identity::pin::{CaHash, PinnedCa};
use tether_hub::join::nodes::{Issue, NodeStore};
use tether_hub::join::tokens::{TokenOptions, TokenStore};
use tether_link::join::{Answer, Request};
use tether_link::topic::NodeName;
use tether_tests::apiserver::StandIn;
use tether_tests::bench::arg;
use tether_tests::cluster::{is_linked, metrics};
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, http_get, wait_http_ok, Proc};

/// How long one run may take to get from the join command to a proxied 200.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How often the hub's `/nodes` and the edge's proxy are polled.
const POLL: Duration = Duration::from_millis(5);
/// Per exchange in the parallel joins: longer than the hub's 10 s
/// handshake timeout, so the hub's own answers (or drops) are what counts.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("join-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    raise_file_limit();
    let runs = arg("--runs", 5).max(1);
    let joins = arg("--joins", 1000).max(1);
    let threads = arg("--threads", 4).clamp(1, 64);
    let part = arg("--part", 0);
    let hub = bin("tether-hub");
    let edge = bin("tether-edge");
    if part != 2 {
        join_to_proxying(&hub, &edge, runs)?;
    }
    if part != 1 {
        parallel_joins(&hub, joins, threads, false)?;
        parallel_joins(&hub, joins, threads, true)?;
        println!("== the serialized part of a join, with 1,000 nodes on record, 50 samples ==");
        let disk = std::env::temp_dir();
        for base in [disk.as_path(), Path::new("/dev/shm")] {
            if !base.is_dir() {
                continue;
            }
            let (record, load) = store_cost(base, 1000, 50)?;
            println!(
                "in {}: record_issue {record:.2} ms (one at a time, under the lock), load {load:.2} ms (every join, no lock)",
                base.display()
            );
        }
    }
    Ok(())
}

/// The bench opens thousands of sockets at once: raise the soft limit.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A hub with `[join]` on the state folder `init` made.
struct JoinHub {
    proc: Proc,
    link: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    ca_hash: String,
}

/// `tether-hub init --dir <pki>/<name> --san 127.0.0.1`, then a hub on it
/// with `extra` appended to its config.
fn start_join_hub(
    hub_bin: &Path,
    pki: &Pki,
    name: &str,
    log_level: &str,
    extra: &str,
) -> Result<JoinHub, String> {
    let dir = pki.dir.join(name);
    let dir_s = dir.display().to_string();
    let init = output(hub_bin, &["init", "--dir", &dir_s, "--san", "127.0.0.1"])?;
    let ca_hash = init
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .ok_or_else(|| format!("tether-hub init printed no sha256: hash:\n{init}"))?
        .trim_end_matches([',', '.', ')'])
        .to_string();
    let link: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = format!(
        "log_level = \"{log_level}\"\n[listen]\nlink = \"{link}\"\nadmin = \"{admin}\"\n[tls]\ncert = \"{d}/hub.pem\"\nkey = \"{d}/hub-key.pem\"\nclient_ca = \"{d}/ca.pem\"\n[join]\ndir = \"{d}\"\n{extra}",
        d = dir_s
    );
    let config = pki.write(&format!("{name}.toml"), &text);
    let config = config.display().to_string();
    let proc = Proc::start(name, hub_bin, &["--config", &config]);
    if !wait_http_ok(admin, "/healthz", Duration::from_secs(20)) {
        return Err(format!("the hub did not come up:\n{}", proc.logs()));
    }
    Ok(JoinHub {
        proc,
        link,
        admin,
        dir,
        ca_hash,
    })
}

/// Runs a command to its end; its stdout, or an error with both outputs.
fn output(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} {} exited with {}:\n{stdout}{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// One run's times.
struct RunTimes {
    /// The `tether-edge join` command, start to exit.
    join: Duration,
    /// From starting the edge to the hub listing the node linked.
    linked: Duration,
    /// From starting the edge to the first 200 through its proxy.
    proxied: Duration,
    /// From the join command's start to the first proxied 200.
    total: Duration,
    /// Answers other than 200 before it, by status.
    not_ok: BTreeMap<u16, usize>,
}

fn join_to_proxying(hub_bin: &Path, edge_bin: &Path, runs: u64) -> Result<(), String> {
    println!("== join to proxying: {runs} runs ==");
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    let upstream = format!(
        "[upstream.kube-apiserver]\naddress = \"{}\"\n",
        standin.addr()
    );
    let hub = start_join_hub(hub_bin, &pki, "hub-proxying", "info", &upstream)?;
    let mut all = Vec::new();
    for i in 0..runs {
        let t = one_join(hub_bin, edge_bin, &pki, &hub, &format!("bench-{i}"))?;
        println!(
            "run {}: join command {:>6.0} ms, edge start to linked {:>5.0} ms, to first proxied 200 {:>5.0} ms; total {:>6.0} ms",
            i + 1,
            ms(t.join),
            ms(t.linked),
            ms(t.proxied),
            ms(t.total)
        );
        if !t.not_ok.is_empty() {
            println!(
                "       answers before the first 200, by status: {:?}",
                t.not_ok
            );
        }
        all.push(t);
    }
    for (what, pick) in [
        (
            "join command",
            (|t: &RunTimes| t.join) as fn(&RunTimes) -> Duration,
        ),
        ("edge start to linked", |t| t.linked),
        ("edge start to proxied 200", |t| t.proxied),
        ("total, command to proxied 200", |t| t.total),
    ] {
        let mut v: Vec<Duration> = all.iter().map(pick).collect();
        v.sort();
        println!(
            "{what:<30} min {:>6.0} ms, median {:>6.0} ms, max {:>6.0} ms",
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    }
    drop(hub);
    Ok(())
}

/// One node from `token create` to a proxied 200; the edge is stopped after.
fn one_join(
    hub_bin: &Path,
    edge_bin: &Path,
    pki: &Pki,
    hub: &JoinHub,
    node: &str,
) -> Result<RunTimes, String> {
    let dir = pki.dir.join(node);
    let boards = dir.join("boards");
    std::fs::create_dir_all(&boards).map_err(|e| format!("{}: {e}", boards.display()))?;
    let (cert, key) = pki.node_cert(&format!("system:node:{node}"));
    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let board = format!(
        "node = \"set-by-fleet\"\n[hub]\naddress = \"placeholder.invalid:1\"\n[link]\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n[apiserver]\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n",
        pki.ca.display(),
        cert.display(),
        key.display(),
        dir.join("cache.db").display()
    );
    let board_file = boards.join("bench-board.toml");
    std::fs::write(&board_file, board).map_err(|e| format!("{}: {e}", board_file.display()))?;

    let printed = output(
        hub_bin,
        &[
            "token",
            "create",
            "--dir",
            &hub.dir.display().to_string(),
            "--print-join-command",
            "--hub",
            &hub.link.to_string(),
        ],
    )?;
    let command: Vec<&str> = printed
        .lines()
        .find(|l| l.starts_with("tether-edge join "))
        .ok_or_else(|| format!("token create printed no join command:\n{printed}"))?
        .split_whitespace()
        .skip(1)
        .collect();
    let config = dir.join("edge.toml").display().to_string();
    let kubeconfig = dir.join("kubelet.kubeconfig").display().to_string();
    let id_dir = dir.join("identity").display().to_string();
    let board_s = board_file.display().to_string();
    let mut args = command.clone();
    args.extend([
        "--node-name",
        node,
        "--dir",
        &id_dir,
        "--config",
        &config,
        "--kubeconfig",
        &kubeconfig,
        "--board",
        &board_s,
    ]);

    let start = Instant::now();
    output(edge_bin, &args)?;
    let join = start.elapsed();
    let edge_start = Instant::now();
    let edge = Proc::start(node, edge_bin, &["--config", &config]);
    let target = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}&limit=500");
    let mut linked = None;
    let mut not_ok: BTreeMap<u16, usize> = BTreeMap::new();
    let proxied = loop {
        if linked.is_none() && is_linked(hub.admin, node) {
            linked = Some(edge_start.elapsed());
        }
        match http_get(proxy, &target) {
            Ok((200, _)) => break edge_start.elapsed(),
            // The proxy listens but could not relay (yet).
            Ok((status, _)) => *not_ok.entry(status).or_insert(0) += 1,
            Err(_) => {}
        }
        if edge_start.elapsed() > RUN_LIMIT {
            return Err(format!(
                "{node}: no 200 through the proxy within {RUN_LIMIT:?} (linked: {linked:?}); edge log:\n{}",
                edge.logs()
            ));
        }
        std::thread::sleep(POLL);
    };
    let total = start.elapsed();
    // The link may be listed a moment after the first answer came through it.
    let linked = match linked {
        Some(l) => l,
        None => {
            while !is_linked(hub.admin, node) {
                if edge_start.elapsed() > RUN_LIMIT {
                    return Err(format!("{node}: proxied, but never listed linked"));
                }
                std::thread::sleep(POLL);
            }
            edge_start.elapsed()
        }
    };
    drop(edge);
    Ok(RunTimes {
        join,
        linked,
        proxied,
        total,
        not_ok,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One join of the parallel run: what was asked and what came of it.
struct Outcome {
    node: String,
    took: Duration,
    /// `None` for a checked certificate, else the failure's kind.
    failure: Option<String>,
    /// The hub's or the exchange's message, for the first of each kind.
    detail: String,
}

fn parallel_joins(hub_bin: &Path, n: u64, threads: u64, single_use: bool) -> Result<(), String> {
    let what = if single_use {
        format!("{n} single-use tokens, one bound to each node")
    } else {
        "one multi-use token (default ttl)".to_string()
    };
    println!("== {n} joins at once on {what}, from {threads} threads in this process ==");
    let pki = Pki::new();
    let name = if single_use {
        "hub-single"
    } else {
        "hub-multi"
    };
    let hub = start_join_hub(hub_bin, &pki, name, "warn", "")?;
    let prefix = if single_use { "single" } else { "multi" };
    let nodes: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    let tokens: Vec<String> = if single_use {
        let store = TokenStore::open(&hub.dir);
        let made = Instant::now();
        let mut out = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let opts = TokenOptions {
                node: Some(NodeName::new(node).map_err(|e| e.to_string())?),
                single_use: true,
                ..TokenOptions::default()
            };
            let t = store
                .create(&opts, SystemTime::now())
                .map_err(|e| format!("making a token: {e}"))?;
            out.push(t.to_string());
        }
        println!(
            "made {n} single-use tokens with the hub's token store in {:.1} s",
            made.elapsed().as_secs_f64()
        );
        out
    } else {
        let printed = output(
            hub_bin,
            &["token", "create", "--dir", &hub.dir.display().to_string()],
        )?;
        let token = printed
            .split_whitespace()
            .find(|w| w.len() == 23 && w.as_bytes()[6] == b'.')
            .ok_or_else(|| format!("token create printed no token:\n{printed}"))?
            .to_string();
        vec![token; nodes.len()]
    };
    let pin = CaHash::parse(&hub.ca_hash)?;
    let tls = Arc::new(PinnedCa::client_config(pin)?);
    let cpu_before = cpu_ticks(hub.proc.pid());

    // Each thread makes its keys and CSRs, then all start at once.
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let address = hub.link.to_string();
    let mut handles = Vec::new();
    for t in 0..threads as usize {
        let work: Vec<(String, String)> = nodes
            .iter()
            .zip(&tokens)
            .skip(t)
            .step_by(threads as usize)
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        let barrier = barrier.clone();
        let tls = tls.clone();
        let address = address.clone();
        handles.push(std::thread::spawn(move || {
            join_thread(work, &address, tls, pin, &barrier)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut outcomes = Vec::new();
    let mut thread_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(mut o)) => outcomes.append(&mut o),
            Ok(Err(e)) => thread_error = Some(e),
            Err(_) => thread_error = Some("a join thread panicked".to_string()),
        }
    }
    let wall = start.elapsed();
    if let Some(e) = thread_error {
        return Err(e);
    }
    let cpu = cpu_ticks(hub.proc.pid()).saturating_sub(cpu_before);

    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut ok: Vec<Duration> = Vec::new();
    let mut all: Vec<Duration> = Vec::new();
    let mut issued = BTreeSet::new();
    for o in &outcomes {
        all.push(o.took);
        match &o.failure {
            None => {
                ok.push(o.took);
                issued.insert(o.node.clone());
            }
            Some(kind) => {
                let e = kinds.entry(kind.clone()).or_insert((0, o.detail.clone()));
                e.0 += 1;
            }
        }
    }
    ok.sort();
    all.sort();
    println!(
        "{} of {n} joined, each certificate checked (this node, this key, the pinned CA); {} failed",
        ok.len(),
        outcomes.len() - ok.len()
    );
    for (kind, (count, detail)) in &kinds {
        println!("  failed: {count} × {kind} (first: {detail})");
    }
    println!(
        "wall time {:.2} s, {:.0} joins/s; latency of successes p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; hub CPU {:.2} s ({:.2} ms per join)",
        wall.as_secs_f64(),
        ok.len() as f64 / wall.as_secs_f64(),
        pct(&ok, 50),
        pct(&ok, 99),
        ok.last().map_or(0.0, |d| ms(*d)),
        cpu as f64 / 100.0,
        cpu as f64 * 10.0 / n as f64
    );
    let edge_timeout = Duration::from_secs(10);
    println!(
        "{} of the {} certificates came within 10 s of the start (`tether-edge join --timeout`'s default; a later one is lost to that command)",
        ok.iter().filter(|d| **d <= edge_timeout).count(),
        ok.len()
    );
    if ok.len() != all.len() {
        println!(
            "latency of all attempts p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pct(&all, 50),
            pct(&all, 99),
            all.last().map_or(0.0, |d| ms(*d))
        );
    }
    let m = metrics(hub.admin);
    for line in m.lines().filter(|l| {
        l.starts_with("tether_hub_joins_total{") || l.starts_with("tether_hub_dropped_total{")
    }) {
        println!("  hub: {line}");
    }

    let listed = settled_node_list(hub_bin, &hub.dir)?;
    let late: BTreeSet<&String> = listed.difference(&issued).collect();
    let missing: Vec<&String> = issued.difference(&listed).take(5).collect();
    if late.is_empty() && missing.is_empty() {
        println!(
            "`tether-hub node list` shows {} nodes: exactly those answered a certificate",
            listed.len()
        );
    } else {
        let refused: BTreeSet<&String> = outcomes
            .iter()
            .filter(|o| o.failure.is_some())
            .map(|o| &o.node)
            .collect();
        println!(
            "MISMATCH: `tether-hub node list` shows {} nodes, {} were answered a certificate; {} more were recorded ({} of them among the refused joins, e.g. {:?}); answered but not listed (first 5): {missing:?}",
            listed.len(),
            issued.len(),
            late.len(),
            late.iter().filter(|n| refused.contains(**n)).count(),
            late.iter().take(3).collect::<Vec<_>>()
        );
    }
    // A refused join is to be run again: does the same token work now?
    let failed: Vec<(String, String)> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| (o.node.clone(), tokens[index_of(&o.node)].clone()))
        .collect();
    if !failed.is_empty() {
        let again = join_thread(failed, &address, tls, pin, &Barrier::new(1))?;
        let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for o in &again {
            let kind = o.failure.clone().unwrap_or_else(|| "joined".into());
            kinds.entry(kind).or_insert((0, o.detail.clone())).0 += 1;
        }
        println!(
            "the {} refused joins run again with the same token (a new key, as a second `tether-edge join` makes):",
            again.len()
        );
        for (kind, (count, detail)) in &kinds {
            println!("  {count} × {kind} (first: {detail})");
        }
    }
    drop(hub);
    Ok(())
}

/// The names `tether-hub node list` shows, once two lists a second apart
/// agree: a decision the hub gave up waiting for may still be writing.
fn settled_node_list(hub_bin: &Path, dir: &Path) -> Result<BTreeSet<String>, String> {
    let dir = dir.display().to_string();
    let list = || -> Result<BTreeSet<String>, String> {
        Ok(output(hub_bin, &["node", "list", "--dir", &dir])?
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    };
    let mut last = list()?;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let now = list()?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// The index of node `name` (`<prefix>-NNNNN`) in the run's lists.
fn index_of(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The part of a join that runs one at a time in the hub: recording the
/// certificate (`NodeStore::record_issue`: under the nodes file's lock,
/// the whole file read, parsed, rendered, written, fsynced and renamed,
/// the folder fsynced), timed with `records` records already stored, in a
/// folder under `base`; and reading the records (`NodeStore::load`, once
/// per join, outside the lock). Returns the mean milliseconds of each.
fn store_cost(base: &Path, records: usize, samples: usize) -> Result<(f64, f64), String> {
    let dir = base.join(format!("join-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = NodeStore::open(&dir);
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(86_400);
    let issue = |i: usize| -> Result<(), String> {
        let node = NodeName::new(&format!("store-{i:06}")).map_err(|e| e.to_string())?;
        let serial = (0x0100_0000_0000_0000u64 + i as u64).to_be_bytes();
        store
            .record_issue(
                &node,
                &serial,
                not_after,
                Issue::Joined {
                    token: "abcdef".into(),
                },
                now,
            )
            .map_err(|e| format!("{}: {e}", dir.display()))
    };
    let result = (|| {
        for i in 0..records {
            issue(i)?;
        }
        let start = Instant::now();
        for i in records..records + samples {
            issue(i)?;
        }
        let record = ms(start.elapsed()) / samples as f64;
        let start = Instant::now();
        for _ in 0..samples {
            store
                .load()
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok((record, ms(start.elapsed()) / samples as f64))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One thread's share of the parallel joins, on its own executor.
fn join_thread(
    work: Vec<(String, String)>,
    address: &str,
    tls: Arc<rustls::ClientConfig>,
    pin: CaHash,
    barrier: &Barrier,
) -> Result<Vec<Outcome>, String> {
    let mut prepared = Vec::with_capacity(work.len());
    let mut failed = None;
    for (node, token) in work {
        let made = NodeName::new(&node)
            .map_err(|e| e.to_string())
            .and_then(|name| {
                let key = NodeKey::generate()?;
                let csr = key.csr(&name)?;
                Ok((name, key, Request::Join { token, csr }))
            });
        match made {
            Ok(p) => prepared.push(p),
            Err(e) => failed = Some(e),
        }
    }
    // Wait even after a failure, so the main thread is not left waiting.
    barrier.wait();
    if let Some(e) = failed {
        return Err(format!("making a key or CSR: {e}"));
    }
    let ex = smol::LocalExecutor::new();
    let run = async {
        let tasks: Vec<_> = prepared
            .into_iter()
            .map(|(node, key, request)| {
                let tls = tls.clone();
                ex.spawn(async move {
                    let start = Instant::now();
                    let answer =
                        exchange(address, "127.0.0.1", tls, &node, &request, EXCHANGE_LIMIT).await;
                    let took = start.elapsed();
                    let (failure, detail) = judge(answer, &node, &key, &pin);
                    Outcome {
                        node: node.to_string(),
                        took,
                        failure,
                        detail,
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    };
    Ok(smol::block_on(ex.run(run)))
}

/// The failure kind of one exchange (`None`: a good certificate) and its message.
fn judge(
    answer: Result<Answer, ExchangeError>,
    node: &NodeName,
    key: &NodeKey,
    pin: &CaHash,
) -> (Option<String>, String) {
    let kind = |k: &str, d: String| (Some(k.to_string()), d);
    match answer {
        Ok(Answer::Issued {
            certificate, ca, ..
        }) => {
            if !pin.matches(&ca) {
                kind("wrong CA", String::new())
            } else if !key.matches(&certificate) {
                kind("certificate for another key", String::new())
            } else if tether_link::tls::node_of_certificate(&certificate).as_deref()
                != Some(node.as_str())
            {
                kind("certificate for another node", String::new())
            } else {
                (None, String::new())
            }
        }
        Ok(Answer::Refused { reason, message }) => kind(&format!("refused: {reason}"), message),
        Err(e) => {
            let k = match &e {
                ExchangeError::Connect(_) => "connect",
                ExchangeError::Tls(_) => "tls",
                ExchangeError::Protocol(_) => "protocol",
                ExchangeError::Timeout(_) => "timeout",
            };
            kind(k, e.to_string())
        }
    }
}

/// The `p`th percentile of sorted durations, in ms.
fn pct(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    ms(sorted[i.min(sorted.len() - 1)])
}

/// User plus system CPU time of `pid` in clock ticks (1/100 s), 0 if unreadable.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

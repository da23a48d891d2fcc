//! The tether-edge program: reads its config, keeps the link to the hub up
//! and serves forwards and hub-opened streams, all on one thread.

use futures_lite::FutureExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tether_conf::cli;
use tether_edge::{config, fleet, forward, services, shutdown, uplink};

const HELP: &str = "\
tether-edge: the Tether runtime on an edge board. Keeps one outbound,
TLS-protected link to tether-hub and carries streams over it.

USAGE:
    tether-edge [run] [--config FILE] [--log-level LEVEL]
    tether-edge check-config FILE
    tether-edge render-config FLEET_FILE NODE [--boards DIR]
    tether-edge join HUB:PORT --token ID.SECRET --ca-hash sha256:HEX
                [--node-name NAME] [--board MODEL|FILE] [--boards DIR]
                [--config FILE] [--dir DIR] [--kubeconfig FILE]
                [--timeout DURATION] [--force]
                [--kube-token ID.SECRET [--kube-ca FILE]
                 [--kubelet-pki DIR] [--kube-timeout DURATION]]
    tether-edge reset [--config FILE] [--dir DIR] [--kubeconfig FILE]
    tether-edge --help | --version

COMMANDS:
    run             Run the edge (the default).
    check-config    Check a config file, print every error with its line
                    and key, exit 0 if it is valid, 1 if not. The files
                    it names (certificates, token) are read at start, not
                    here: they may exist only on the board. Given a
                    fleet file (one with site = \"...\" and [[node]]
                    tables), render and check every node's config.
    render-config   Print the config of NODE of the fleet FLEET_FILE: its
                    board's file, the fleet's site settings and the node's
                    [[node]] entry merged, later wins. Board files are
                    DIR/<board>.toml [default: ../boards from the fleet
                    file's folder]. See board-configs/README.md.
    join            Put this board into the fleet: check the hub by the
                    pinned CA hash (what `tether-hub init` printed), make
                    the node's key here (it never leaves the board), get
                    its certificate (CN system:node:NAME) with the
                    bootstrap token from `tether-hub token create`, write
                    DIR/node.pem (certificate and key, 0600), DIR/hub-ca.pem,
                    the edge config (the board's file with --board) and a
                    kubelet kubeconfig pointing at the local proxy, then
                    bring a link up with the new identity. Each step is
                    reported; nothing is written unless the hub issued a
                    certificate that fits. An existing identity is kept
                    unless --force.
                    --node-name   [default: the host name]
                    --board       a model looked up in --boards [default
                                  /usr/share/tether/boards], or a file
                    --config      [default: /etc/tether/edge.toml]
                    --dir         [default: /etc/tether]
                    --kubeconfig  [default: /etc/tether/kubelet.kubeconfig]
                    --timeout     per exchange with the hub [default: 30s]
                    With --kube-token (a Kubernetes bootstrap token, as
                    `kubeadm token create` makes), join then does
                    kubelet's TLS bootstrap through the hub: a new key
                    here, a CertificateSigningRequest (signer
                    kubernetes.io/kube-apiserver-client-kubelet) sent
                    with the token, its certificate once approved, kept
                    as kubelet keeps it: DIR/kubelet-client-<time>.pem
                    (certificate and key, 0600) and the symlink
                    DIR/kubelet-client-current.pem, which the edge
                    config's [apiserver] and the kubeconfig name, so
                    kubelet's own rotation keeps it current. Without it,
                    kubelet's credentials must come from elsewhere.
                    --kube-ca     the cluster CA [default: the board
                                  file's [apiserver] ca, else
                                  /etc/kubernetes/pki/ca.crt]
                    --kubelet-pki DIR, kubelet's --cert-dir [default:
                                  /var/lib/kubelet/pki]
                    --kube-timeout for the approval [default: 5m]
                    Exit status: 1 a problem here (existing identity, bad
                    config), 2 bad command line, 3 the hub refused (the
                    message says why: token, node, revoked), 4 the hub
                    could not be reached or verified (wrong --ca-hash),
                    5 files written but the link check failed, 6 the hub
                    identity is written and works but kubelet's TLS
                    bootstrap failed (token unknown or expired, not
                    allowed, denied, not approved in time); nothing of
                    kubelet's is written then.
    reset           Undo a join: remove DIR/node.pem, DIR/hub-ca.pem, the
                    kubeconfig, the cache and the config (files join did
                    not write are named and left alone). Stop the edge
                    first.

EXIT STATUS:
    0 success, 1 failure, 2 bad command line, 78 run with a config file
    that does not pass check-config (a supervisor should not restart).

OPTIONS:
    -c, --config FILE      Config file [default: /etc/tether/edge.toml]
    --log-level LEVEL      error, warn, info, debug or trace; overrides
                           log_level from the file.
    -h, --help             This text.
    -V, --version          The version.

CONFIG FILE (a strict TOML subset; unknown keys are errors):
    node = \"edge-1\"                 This node's Kubernetes name (required).
    log_level = \"info\"              error, warn, info, debug, trace.
    unit = \"bench-a\"                The health unit the edge belongs to
                                    (lowercase letters, digits, '-')
                                    [default: none].

    [labels]                        The node's labels, key = \"value\":
    zone = \"north\"                  Kubernetes label keys (no prefix: a
                                    key here cannot hold '.' or '/') and
                                    values (at most 63 characters).

    [board]                         The board the file is for (optional;
    model = \"rpi-zero-w\"            board-configs/boards/ has one each).
    target = \"arm-unknown-linux-musleabihf\"
                                    Rust target of its binary: arm-unknown-
                                    linux-musleabihf, armv7-unknown-linux-
                                    gnueabihf or -musleabihf, thumbv7neon-
                                    unknown-linux-gnueabihf, aarch64- or
                                    x86_64-unknown-linux-gnu or -musl. A
                                    binary of another arch warns at start.
    memory_max = \"48MiB\"            The hard cap the systemd unit sets
                                    (MemoryMax=): quoted, whole KiB, MiB or
                                    GiB, larger than proxy.memory_budget.

    [hub]
    address = \"hub.example:7443\"    tether-hub as host:port (required).
    server_name = \"...\"             Name on the hub's certificate
                                    [default: the host of address].
    ca = \"hub-ca.pem\"               CA that signed the hub's certificate.
    cert = \"node.pem\"               Client certificate, subject CN
    key = \"node-key.pem\"            system:node:<node>, and its key; or
    token_file = \"token\"            a file holding the node's hub token.
    plaintext = false               No TLS: only for tests on loopback.
    broker = false                  address is an MQTT broker that several
                                    hub replicas share (scale-out).
    source_address = \"192.0.2.7\"    Local address to connect from
                                    [default: chosen by the kernel].
    renew_at_percent = 67           Renew the certificate (made by tether-edge
                                    join) with the hub once this share of its
                                    life has passed: 10-95, 0 = never.
    (Relative paths are taken from the config file's folder.)

    [link]
    keepalive = \"60s\"               PINGREQ after this much silence; the
                                    link is dead after 1.5x with nothing
                                    received (black holes included).
    connect_timeout = \"20s\"         Name lookup, TCP connect and TLS
                                    handshake together.
    backoff_initial = \"1s\"          Reconnect delays: random in [0, d] with
    backoff_max = \"60s\"             d doubling from initial up to max.
    max_inflight = 16               Unacknowledged QoS 1 publishes; beyond
                                    it writers wait (back-pressure).
    max_batch = \"128KiB\"            Largest PUBLISH payload sent.
    max_packet = \"256KiB\"          Largest packet accepted.
    max_streams = 4096              Streams open at once on the link.
    queue_delay = \"10ms\"            Queue the paced in-flight window aims
                                    at on a slow path, so a bulk stream
                                    holds others back only that long
                                    (\"0s\": no pacing, only max_inflight).

    [services]
    allow_ports = [10250]           Local ports the hub may open streams to.

    [apiserver]                     kube-apiserver, for the API proxy
    upstream = \"kube-apiserver\"     (being built: issue 3). Through this
                                    hub upstream [default], or
    direct = \"10.0.0.1:6443\"        directly, without a hub.
    server_name = \"kubernetes\"      Name on the apiserver's certificate.
    ca = \"/etc/kubernetes/pki/ca.crt\"
    cert = \"/var/lib/kubelet/pki/kubelet-client-current.pem\"
    key = \"/var/lib/kubelet/pki/kubelet-client-current.pem\"
                                    The node's own credentials, re-read
                                    when kubelet rotates them.

    [proxy]                         The node's apiserver (with [apiserver]).
    listen = \"127.0.0.1:10261\"      kubelet's kubeconfig points here.
    cache = \"/var/lib/tether/cache.db\"   SQLite cache (none: relay only).
    cache_quota = \"256MiB\"         Cached object bytes before whole views
                                    are evicted, least recently used first.
    page_cache = \"2MiB\"            SQLite page cache.
    record_buffer = \"1MiB\"         Bytes of an answer held while it is
                                    recorded; larger lists are written to
                                    the cache in pieces as they stream.
    memory_budget = \"20MiB\"        RSS above which the proxy records
                                    nothing new and turns new connections
                                    away until it is back under 90 %
                                    (\"0\": no budget).
    answer_cache = \"4MiB\"          Offline answers kept encoded in memory
                                    while kube-apiserver is away, so a
                                    client asking again is answered at
                                    once (\"0\": none).

    [health]                        Health peers (issue 6): the edges of a
                                    unit probe each other over UDP, vote on
                                    who is alive, and report their verdicts
                                    to the hub (its /nodes shows the votes).
                                    Needs the top-level unit with peers,
                                    or unit_label (exactly one of the two).
    listen = \"0.0.0.0:10263\"        The health port (UDP).
    key_file = \"unit.key\"           The unit's shared key (required; no
                                    default key): at least 32 bytes, e.g.
                                    `openssl rand -hex 32`, the same file on
                                    every member, mode 0600 (refused if
                                    group or others can access it). With
                                    unit_label: every node with the same
                                    label value shares this key.
    peers = [\"edge-2=192.168.1.12:10263\"]
                                    The unit's other members, name=host:port
                                    (required; at most 63). Every member
                                    must list the same unit. A unit of one
                                    never votes, a unit of two only while
                                    both report: use three or more.
    unit_label = \"tether.io/unit\"   Instead of unit and peers: a node label
                                    key. Its value on this node's Node is
                                    the unit; the Nodes with that value are
                                    the members, each at its InternalIP
                                    (else ExternalIP, else Hostname). Read
                                    from kube-apiserver (needs [apiserver])
                                    at start and every refresh; the last
                                    one read is kept while it is out of
                                    reach, and saved next to proxy.cache
                                    (file health-unit) for a restart.
    peer_port = 10263               With unit_label: the members' health
                                    port [default: the port of listen].
    refresh = \"60s\"                 With unit_label: read the membership
                                    this often (1s-1h).
    interval = \"25s\"                Probe each peer this often (2s-1h). At
                                    25 s a unit of 20 sends < 200 bytes/s
                                    per edge and a dead peer is voted dead
                                    within 2.5 intervals.
    dead_after = 3                  Failed probes in a row (each waits half
                                    an interval) before a peer is dead.
    alive_after = 2                 Answered probes in a row before a dead
                                    peer is alive again.
    max_skew = \"30s\"                Largest clock difference accepted from
                                    a peer (its messages carry the time).

    [status]
    listen = \"127.0.0.1:10262\"      /healthz and /metrics of the edge
                                    [default: not served].

    [[forward]]                     Repeatable: a local port whose
    listen = \"127.0.0.1:16443\"      connections go to a named upstream of
    upstream = \"kube-apiserver\"     the hub.
";

fn main() -> ExitCode {
    let program = cli::Program {
        name: "tether-edge",
        version: env!("CARGO_PKG_VERSION"),
        help: HELP,
        default_config: "/etc/tether/edge.toml",
        reports: &[],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A command of its own shape (two operands), outside the shared command line.
    if args.first().is_some_and(|a| a == "render-config") {
        return render_config(args.get(1..).unwrap_or_default());
    }
    if args.first().is_some_and(|a| a == "join") {
        return join(args.get(1..).unwrap_or_default());
    }
    if args.first().is_some_and(|a| a == "reset") {
        return reset(args.get(1..).unwrap_or_default());
    }
    cli::main(program, check, run, |name, _| {
        Err(format!("unknown report {name:?}"))
    })
}

/// `check-config`: an edge config, or a fleet file, whose every node is
/// rendered and checked.
fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if fleet::is_fleet(&text) {
        fleet::Fleet::read(path, &fleet::default_boards(path))?.check()
    } else {
        config::check(path)
    }
}

/// `render-config FLEET_FILE NODE [--boards DIR]`: prints the node's config
/// on stdout; exit codes as for the other commands (1: a problem in the
/// files, 2: a bad command line).
fn render_config(args: &[String]) -> ExitCode {
    let mut operands = Vec::new();
    let mut boards = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "--boards" => match it.next() {
                Some(dir) => boards = Some(PathBuf::from(dir)),
                None => return usage("--boards needs a DIR"),
            },
            other if other.starts_with('-') => {
                return usage(&format!("unknown argument {other:?}"))
            }
            other => operands.push(other),
        }
    }
    let [fleet_file, node] = operands[..] else {
        return usage("render-config needs FLEET_FILE and NODE");
    };
    let fleet_file = Path::new(fleet_file);
    let boards = boards.unwrap_or_else(|| fleet::default_boards(fleet_file));
    match fleet::Fleet::read(fleet_file, &boards).and_then(|f| f.render(node)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `join HUB:PORT --token ID.SECRET --ca-hash sha256:HEX [...]`: see
/// [`identity::join`]; exit codes in HELP.
fn join(args: &[String]) -> ExitCode {
    use tether_edge::identity::join as j;
    let mut hub = None;
    let (mut token, mut ca_hash, mut node, mut board) = (None, None, None, None);
    let mut boards = PathBuf::from(j::DEFAULT_BOARDS);
    let mut config = PathBuf::from("/etc/tether/edge.toml");
    let mut dir = PathBuf::from(j::DEFAULT_DIR);
    let mut kubeconfig = PathBuf::from(j::DEFAULT_KUBECONFIG);
    let mut timeout = std::time::Duration::from_secs(30);
    let mut force = false;
    let (mut kube_token, mut kube_ca, mut kubelet_pki, mut kube_timeout) =
        (None, None, None::<PathBuf>, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| match it.next() {
            Some(v) => Ok(v.clone()),
            None => Err(usage(&format!("{name} needs a value"))),
        };
        let result = match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "--token" => value("--token").map(|v| token = Some(v)),
            "--ca-hash" => value("--ca-hash").map(|v| ca_hash = Some(v)),
            "--node-name" => value("--node-name").map(|v| node = Some(v)),
            "--board" => value("--board").map(|v| board = Some(v)),
            "--boards" => value("--boards").map(|v| boards = v.into()),
            "--config" | "-c" => value("--config").map(|v| config = v.into()),
            "--dir" => value("--dir").map(|v| dir = v.into()),
            "--kubeconfig" => value("--kubeconfig").map(|v| kubeconfig = v.into()),
            "--timeout" => value("--timeout").and_then(|v| {
                tether_conf::parse_duration(&v)
                    .map(|d| timeout = d)
                    .map_err(|e| usage(&format!("--timeout: {e}")))
            }),
            "--force" => {
                force = true;
                Ok(())
            }
            "--kube-token" => value("--kube-token").map(|v| kube_token = Some(v)),
            "--kube-ca" => value("--kube-ca").map(|v| kube_ca = Some(PathBuf::from(v))),
            "--kubelet-pki" => value("--kubelet-pki").map(|v| kubelet_pki = Some(v.into())),
            "--kube-timeout" => value("--kube-timeout").and_then(|v| {
                tether_conf::parse_duration(&v)
                    .map(|d| kube_timeout = Some(d))
                    .map_err(|e| usage(&format!("--kube-timeout: {e}")))
            }),
            other if other.starts_with('-') => Err(usage(&format!("unknown argument {other:?}"))),
            other if hub.is_none() => {
                hub = Some(other.to_owned());
                Ok(())
            }
            other => Err(usage(&format!("unexpected argument {other:?}"))),
        };
        if let Err(code) = result {
            return code;
        }
    }
    let Some(hub) = hub else {
        return usage("join needs the hub's HUB:PORT (as `tether-hub token create --print-join-command` prints it)");
    };
    if !hub
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        return usage(&format!("{hub:?} is not HOST:PORT"));
    }
    let Some(token) = token else {
        return usage("join needs --token ID.SECRET (from `tether-hub token create`)");
    };
    let ca_hash = match ca_hash.as_deref().map(tether_edge::identity::pin::CaHash::parse) {
        Some(Ok(h)) => h,
        Some(Err(e)) => return usage(&format!("--ca-hash: {e}")),
        None => {
            return usage("join needs --ca-hash sha256:HEX (printed by `tether-hub init` and `token create --print-join-command`): without it the hub cannot be told from an impostor")
        }
    };
    let name = match node {
        Some(n) => n,
        None => match nix::unistd::gethostname() {
            Ok(h) => h.to_string_lossy().to_lowercase(),
            Err(e) => return usage(&format!("no --node-name and no host name: {e}")),
        },
    };
    let node = match tether_link::topic::NodeName::new(&name) {
        Ok(n) => n,
        Err(e) => return usage(&format!("node name: {e}; give one with --node-name")),
    };
    let kube = match kube_token {
        Some(token) => {
            if !is_bootstrap_token(&token) {
                return usage("--kube-token: not a Kubernetes bootstrap token: 6 and 16 characters of [a-z0-9] joined by '.', as `kubeadm token create` prints");
            }
            Some(tether_edge::identity::kubelet::KubeOptions {
                token,
                ca: kube_ca,
                pki: kubelet_pki
                    .unwrap_or_else(|| tether_edge::identity::kubelet::DEFAULT_PKI.into()),
                timeout: kube_timeout.unwrap_or(tether_edge::identity::kubelet::DEFAULT_TIMEOUT),
            })
        }
        None if kube_ca.is_some() || kubelet_pki.is_some() || kube_timeout.is_some() => {
            return usage("--kube-ca, --kubelet-pki and --kube-timeout are for kubelet's TLS bootstrap: they need --kube-token");
        }
        None => None,
    };
    let opts = j::JoinOptions {
        hub,
        token,
        ca_hash,
        node,
        board,
        boards,
        config,
        dir,
        kubeconfig,
        force,
        timeout,
        kube,
    };
    match j::join(&opts, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-edge join: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Whether `t` has the shape of a Kubernetes bootstrap token: `[a-z0-9]{6}`
/// `.` `[a-z0-9]{16}`.
fn is_bootstrap_token(t: &str) -> bool {
    let ok = |s: &str, n| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    t.split_once('.')
        .is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

/// `reset [--config FILE] [--dir DIR] [--kubeconfig FILE]`: undoes a join.
fn reset(args: &[String]) -> ExitCode {
    use tether_edge::identity::join as j;
    let mut opts = j::ResetOptions {
        config: PathBuf::from("/etc/tether/edge.toml"),
        dir: PathBuf::from(j::DEFAULT_DIR),
        kubeconfig: PathBuf::from(j::DEFAULT_KUBECONFIG),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let slot = match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "--config" | "-c" => &mut opts.config,
            "--dir" => &mut opts.dir,
            "--kubeconfig" => &mut opts.kubeconfig,
            other => return usage(&format!("unknown argument {other:?}")),
        };
        match it.next() {
            Some(v) => *slot = v.into(),
            None => return usage(&format!("{arg} needs a value")),
        }
    }
    match j::reset(&opts, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-edge reset: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A bad command line: says why, exit code 2.
fn usage(why: &str) -> ExitCode {
    eprintln!("tether-edge: {why}\nTry 'tether-edge --help'.");
    ExitCode::from(2)
}

fn run(path: &std::path::Path, log_level: Option<String>) -> Result<(), String> {
    let cfg = config::load(path)?;
    tether_link::logger::init(log_level.as_deref().unwrap_or(&cfg.log_level))?;
    if let Some(board) = &cfg.board {
        if let Some(warning) = board.arch_mismatch(std::env::consts::ARCH) {
            log::warn!("{warning}");
        }
    }
    let tls = uplink::tls_connector(&cfg.hub)?;
    let terminated = shutdown::on_termination()?;
    // One thread: the executor runs here; async-io adds only its reactor.
    let ex = std::rc::Rc::new(smol::LocalExecutor::new());
    let link = uplink::new_link(cfg.node.clone(), &cfg.link, cfg.hub.broker);
    smol::block_on(ex.run(async {
        let mut listeners = Vec::new();
        for f in &cfg.forwards {
            listeners.push((forward::bind(f).await?, f.clone()));
        }
        log::info!(
            "tether-edge {} starting: node {}, hub {}{}",
            env!("CARGO_PKG_VERSION"),
            cfg.node,
            cfg.hub.address,
            if cfg.hub.plaintext {
                " (plaintext: tests only)"
            } else {
                ""
            }
        );
        for (listener, f) in listeners {
            ex.spawn(forward::serve(ex.clone(), link.clone(), listener, f))
                .detach();
        }
        ex.spawn(services::serve(
            ex.clone(),
            link.clone(),
            cfg.allow_ports.clone(),
        ))
        .detach();
        let mut proxy = None;
        if let Some(api) = &cfg.apiserver {
            let budget =
                std::rc::Rc::new(tether_edge::memory::Budget::new(cfg.proxy.memory_budget));
            ex.spawn(tether_edge::memory::watch(budget.clone()))
                .detach();
            let (p, listener) = start_proxy(&cfg, api, &link, budget).await?;
            // The addresses of this node's Node status go to the hub, for
            // kube-apiserver's egress to find the node by.
            let (announce_ex, announce_link) = (ex.clone(), link.clone());
            p.announce_addresses(cfg.node.as_str(), move |addresses| {
                announce_ex
                    .spawn(tether_edge::announce::addresses(
                        announce_link.clone(),
                        addresses,
                    ))
                    .detach();
            });
            ex.spawn(tether_edge::proxy::serve(ex.clone(), p.clone(), listener))
                .detach();
            proxy = Some(p);
        }
        let mut health = None;
        if let Some(h) = &cfg.health {
            let unit = if h.label.is_some() {
                None
            } else {
                cfg.unit.as_deref()
            };
            let mut port =
                tether_edge::health::io::HealthPort::bind(cfg.node.clone(), unit, h).await?;
            if let (Some(label), Some(api)) = (&h.label, &cfg.apiserver) {
                // The unit from a node label, read with the node's own
                // credentials on connections of its own.
                let link = api.direct.is_none().then(|| link.clone());
                let client = tether_edge::apiclient::ApiClient::new(api.clone(), link)?;
                port.follow(tether_edge::health::members::Source::new(
                    client,
                    &api.server_name,
                    cfg.node.clone(),
                    label.clone(),
                ));
            }
            health = Some(port.view());
            if let Some(p) = &proxy {
                // Node awareness: offline, the proxy leaves out the
                // endpoints on the nodes the unit votes dead.
                let p = p.clone();
                port.publish_dead(move |dead| p.set_dead_nodes(dead));
            }
            ex.spawn(port.run(link.clone())).detach();
        }
        if let Some(addr) = cfg.status {
            let listener = smol::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("status.listen {addr}: {e}"))?;
            let sources = std::rc::Rc::new(tether_edge::status::Sources {
                link: link.clone(),
                proxy,
                health,
            });
            ex.spawn(tether_edge::status::serve(ex.clone(), sources, listener))
                .detach();
        }
        if let (Some(config::Credentials::Certificate { cert, key }), Some(ca), p @ 1..) =
            (&cfg.hub.credentials, &cfg.hub.ca, cfg.hub.renew_at_percent)
        {
            let renewal = tether_edge::identity::renew::Renewal {
                node: cfg.node.clone(),
                address: cfg.hub.address.clone(),
                server_name: cfg.hub.server_name.clone(),
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                at_percent: p,
            };
            ex.spawn(tether_edge::identity::renew::run(renewal))
                .detach();
        }
        let stop = async {
            let signal = terminated.await;
            log::info!("{signal}: disconnecting from the hub and stopping");
            link.with_session(|s| s.disconnect());
            // Give the driver a moment to put the DISCONNECT on the wire.
            async_io::Timer::after(std::time::Duration::from_millis(300)).await;
        };
        uplink::run(link.clone(), cfg.hub.clone(), cfg.link.clone(), tls)
            .or(stop)
            .await;
        Ok(())
    }))
}

/// Opens the cache and binds the API proxy's port.
async fn start_proxy(
    cfg: &config::EdgeConfig,
    api: &config::Apiserver,
    link: &tether_link::io::Link,
    budget: std::rc::Rc<tether_edge::memory::Budget>,
) -> Result<
    (
        std::rc::Rc<tether_edge::proxy::Proxy>,
        smol::net::TcpListener,
    ),
    String,
> {
    let link = if api.direct.is_some() {
        None
    } else {
        Some(link.clone())
    };
    let client = tether_edge::apiclient::ApiClient::new(api.clone(), link)?;
    let store = match &cfg.proxy.cache {
        Some(path) => {
            let limits = tether_edge::cache::Limits {
                page_cache_bytes: cfg.proxy.page_cache,
                max_disk_bytes: cfg.proxy.cache_quota,
            };
            match tether_edge::cache::Store::open(path, limits) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::error!("cache {}: {e}; relaying without a cache", path.display());
                    None
                }
            }
        }
        None => None,
    };
    let listener = smol::net::TcpListener::bind(cfg.proxy.listen)
        .await
        .map_err(|e| format!("proxy.listen {}: {e}", cfg.proxy.listen))?;
    let route = match &api.direct {
        Some(d) => format!("direct to {d}"),
        None => format!(
            "through the hub upstream {:?}",
            api.upstream.as_deref().unwrap_or("")
        ),
    };
    let cache = cfg
        .proxy
        .cache
        .as_ref()
        .map_or("off".to_string(), |p| p.display().to_string());
    log::info!(
        "API proxy on http://{} ({route}, cache {cache})",
        cfg.proxy.listen
    );
    Ok((
        std::rc::Rc::new(tether_edge::proxy::Proxy::new(
            client,
            store,
            usize::try_from(cfg.proxy.record_buffer).unwrap_or(usize::MAX),
            usize::try_from(cfg.proxy.answer_cache).unwrap_or(usize::MAX),
            budget,
        )),
        listener,
    ))
}

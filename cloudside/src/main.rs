//! The tether-hub program: reads its config, listens for links, relays
//! streams, serves its admin port, all on one thread.

use std::process::ExitCode;
use std::rc::Rc;
use tether_conf::cli;
use tether_hub::join::{self, nodes, tokens};
use tether_hub::{admin, auth, autonomy, broker, config, egress, expose, links, manifests, pki};

const HELP: &str = "\
tether-hub: the cloud end of Tether. Accepts one MQTT-framed TLS link per
edge node, authenticates it, and relays the streams it carries.

USAGE:
    tether-hub [run] [--config FILE] [--log-level LEVEL]
    tether-hub check-config FILE
    tether-hub egress-config [--config FILE]
    tether-hub init --san NAME [--san NAME ...] [--dir DIR] [--force]
    tether-hub token create [--ttl D] [--node NAME] [--usages join[,rejoin]]
                     [--single-use] [--description TEXT]
                     [--print-join-command [--hub HOST:PORT]] [--dir DIR]
    tether-hub token list [--dir DIR]
    tether-hub token delete ID [--dir DIR]
    tether-hub node list [--dir DIR]
    tether-hub node revoke NAME [--dir DIR]
    tether-hub manifests [--namespace NS] [--image IMAGE] [--link-port PORT]
               [--service-type LoadBalancer|NodePort] [--autonomy]
               [--webhook-ca FILE]
    tether-hub --help | --version

COMMANDS:
    run             Run the hub (the default).
    check-config    Check a config file, print every error with its line
                    and key, exit 0 if valid, 1 if not.
    egress-config   Print the EgressSelectorConfiguration and the flags
                    kube-apiserver needs to use the hub's [egress].
    init            Create the hub's CA (ECDSA P-256, 10 years) and its
                    serving certificate signed by it (5 years) in DIR
                    [default: /var/lib/tether-hub], made mode 0700: ca.pem,
                    ca-key.pem, hub.pem, hub-key.pem (keys mode 0600).
                    Prints the CA hash (sha256:..., what tether-edge join
                    --ca-hash pins) and the [tls] lines for the config.
        --san NAME  A DNS name or IP address edges reach the hub by
                    (repeatable, at least one; localhost is not added
                    unless given).
        --dir DIR   The hub's state directory.
        --force     Replace an existing CA: every edge trusting the old
                    one will refuse the hub until it trusts the new one.
    token create    Create a bootstrap token ID.SECRET for tether-edge join
                    (kept in DIR/tokens, mode 0600, the secret as SHA-256
                    only) and print it, once.
        --ttl D     Time to live [default: 24h; at most 365d]: 30m, 90d...
        --node NAME Only node NAME may join with it.
        --usages U  join: a certificate for a node name with no live
                    certificate [default]; join,rejoin: also replace a
                    node's live certificate (a new board for a name).
        --single-use
                    Good for one certificate; a second use is refused.
        --description TEXT
                    A note shown by token list.
        --print-join-command
                    Print the whole command for the board instead:
                    tether-edge join HOST:PORT --token ID.SECRET
                    --ca-hash sha256:HEX [--node-name NAME], with the
                    hash of DIR/ca.pem (run init first).
        --hub HOST:PORT
                    Where edges reach the hub [default: the first name
                    of DIR/hub.pem, port 7443].
        --ca FILE   The CA whose hash the command carries [default:
                    DIR/ca.pem; in the cluster the Secret's, see
                    manifests].
    token list      The tokens: id, expiry, node, usages, single-use, use
                    (never a secret).
    token delete    Delete token ID: it can no longer join anything.
    node list       The nodes the hub issued certificates to: serial,
                    expiry, when and how issued, revocation.
    node revoke     Revoke node NAME: its certificates are refused and a
                    running hub drops its link within a second; only a
                    join with a new token brings it back.
    manifests       Print the Kubernetes objects that install the hub into
                    an existing cluster (for kubectl apply -f -; the same
                    through kubectl delete -f - removes them): Namespace,
                    ServiceAccount, ConfigMap (hub.toml), Deployment,
                    Services; the steps around them (the Secret from
                    init's files, kube-apiserver's egress selector) as
                    comments at the top. No key is printed.
        --namespace NS       [default: tether-system]
        --image IMAGE        The hub's image [default: tether-hub:VERSION].
        --link-port PORT     Where edges link in [default: 7443].
        --service-type TYPE  The link Service: LoadBalancer (default) or
                             NodePort.
        --autonomy           Also [autonomy], its RBAC (cloudside/rbac.yaml)
                             and the webhook's Service port; without it the
                             hub has no RBAC at all.
        --webhook-ca FILE    The CA of the hub's certificate (init's ca.pem):
                             adds the webhook's registration with it as
                             caBundle (with --autonomy).

EXIT STATUS:
    0 success, 1 failure, 2 bad command line, 78 run with a config file
    that does not pass check-config (a supervisor should not restart).

OPTIONS:
    -c, --config FILE      Config file [default: /etc/tether/hub.toml]
    --log-level LEVEL      error, warn, info, debug or trace; overrides
                           log_level from the file.
    -h, --help             This text.
    -V, --version          The version.

CONFIG FILE (a strict TOML subset; unknown keys are errors):
    log_level = \"info\"

    [listen]
    link = \"0.0.0.0:7443\"           Where edges link in (required unless
                                    a [broker] is set).
    admin = \"127.0.0.1:7080\"        /healthz, /metrics, /nodes (optional).

    [tls]
    cert = \"hub.pem\"                Serving certificate chain and key.
    key = \"hub-key.pem\"
    client_ca = \"ca.pem\"            CA of node client certificates (subject
                                    CN system:node:<name>); without it,
                                    nodes authenticate by token only.
    plaintext = false               No TLS: only for tests on loopback.

    [auth]
    token_file = \"tokens\"           Lines \"<node> <token>\" (token of 16+
                                    characters); '#' starts a comment.

    [limits]
    handshake_timeout = \"10s\"       TLS plus CONNECT must finish within.
    max_handshakes = 1024           Connections in handshake at once; at
                                    the limit the hub stops accepting until
                                    one finishes (the kernel queues the rest).
    max_links = 50000               Links up at once.
    session_expiry = \"10m\"          Session kept this long after a link
                                    drops, for the node to resume it.

    [link]                          Same keys as the edge's [link] session
    keepalive = \"60s\"               settings: used when an edge announces
    max_inflight = 16               keepalive 0, and for what the hub
    max_batch = \"128KiB\"            sends and accepts.
    max_packet = \"256KiB\"
    max_streams = 4096
    queue_delay = \"10ms\"

    [broker]                        Scale-out: meet edges at an MQTT broker
    address = \"127.0.0.1:1883\"     (several replicas share the work; see
    username = \"hub\"               ARCHITECTURE.md). Edges then use
    password_file = \"hub-pass\"     hub.broker = true.
    ca = \"broker-ca.pem\"           TLS 1.3 to the broker, verified with
    server_name = \"...\"            this CA [default name: its host].

    [upstream.NAME]                 Repeatable: what edges may reach, by
    address = \"10.0.0.1:6443\"       name (e.g. kube-apiserver). The hub
    connect_timeout = \"5s\"          dials only these addresses.

    [egress]                        kube-apiserver's egress selector
    listen = \"0.0.0.0:8131\"       (HTTP CONNECT <node>:<port>), over TLS
    cert = \"egress.pem\"           that requires a client certificate
    key = \"egress-key.pem\"        signed by client_ca (kube-apiserver's),
    client_ca = \"apiserver-ca.pem\" and/or on a unix socket (mode 0600).
    uds = \"/run/tether/egress.sock\"
    connect_timeout = \"5s\"        The edge must reach the port (or the
                                    hub dial a host) within.
                                    The host is the node's name: run
                                    kube-apiserver with
                                    --kubelet-preferred-address-types=Hostname.
    direct = \"cluster\"            A host that is no node's (a webhook's or
                                    aggregated API's ClusterIP, a pod): the
                                    hub dials it itself, as konnectivity
                                    does; \"none\": 404. Never dialled:
                                    loopback, link-local (169.254.169.254),
                                    unspecified, multicast, broadcast.
    direct_allow = [\"10.96.0.0/12\"] Only these blocks [default: any but
                                    the never-dialled ones]; a block inside
                                    those (127.0.0.0/8) opens it.

    [[expose]]                      Repeatable: a cloud-side port that
    listen = \"127.0.0.1:2222\"       reaches a port on one edge (the edge's
    node = \"edge-1\"                 services.allow_ports must list it), as
    port = 22                       TCP (HTTPS and SSH pass end to end).
    path = \"/edge-1/ui\"             With path: an HTTP service published
                                    under that prefix (stripped; the service
                                    gets X-Forwarded-Prefix); several may
                                    share one listen with different paths.

    [autonomy]                      Issue 6: while a node's link is down and
                                    its unit votes it alive (or its Node is
                                    annotated tether.io/autonomy: \"true\"),
                                    renew its Lease in kube-node-lease on its
                                    behalf so Kubernetes keeps its pods; each
                                    start and stop is an Event on the Node.
                                    Needs RBAC: leases get, update (in
                                    kube-node-lease); nodes get, list, watch;
                                    events create (cloudside/rbac.yaml).
    apiserver = \"https://10.0.0.1:6443\"
                                    kube-apiserver [default: https:// and the
                                    address of [upstream.kube-apiserver]].
    server_name = \"...\"             Name its certificate carries [default:
                                    the host of apiserver].
    ca = \"apiserver-ca.pem\"         CA of its serving certificate (in a pod:
                                    /var/run/secrets/kubernetes.io/
                                    serviceaccount/ca.crt).
    cert = \"hub-client.pem\"         The hub's client certificate and key,
    key = \"hub-client-key.pem\"      or:
    token_file = \"token\"            A bearer token, re-read per request (in
                                    a pod: .../serviceaccount/token).
    renew_every = \"10s\"             Renewal period, 1s to 20s (kubelet's is
                                    10s; nodes go Unknown 40s after the last).
    link_check_after = \"15s\"        A linked node's link silent this long is
                                    checked with a stream the edge refuses;
                                    \"0s\": no checks (a black hole is then
                                    seen only after 1.5 x the edge's
                                    keepalive).
    link_check_timeout = \"5s\"       No answer this long: the link is dropped
                                    as dead, so autonomy applies.
    webhook_listen = \"0.0.0.0:8443\" Optional: a mutating admission webhook
    webhook_cert = \"webhook.pem\"    (HTTPS, POST /mutate-pods) that gives
    webhook_key = \"webhook-key.pem\" pods labelled tether.io/offline: autonomy
                                    tolerations for node.kubernetes.io/
                                    unreachable and not-ready without
                                    tolerationSeconds (replacing the 300s
                                    ones of DefaultTolerationSeconds), so they
                                    stay through outages of any length.
                                    Register it with cloudside/webhook.yaml
                                    (caBundle: the CA of webhook_cert).

    [join]                          Issue 7: sign node certificates for
                                    tether-edge join (a bootstrap token from
                                    token create) and renewals (the current
                                    certificate, within renew_grace after
                                    expiry), on the link port; refuse revoked
                                    nodes (node revoke) and drop their links.
                                    Needs [tls] client_ca = DIR/ca.pem.
    dir = \"/var/lib/tether-hub\"     The state directory of init: CA, tokens,
                                    node records.
    ca = \"ca.pem\"                   The CA and its key [default: in dir]
    ca_key = \"ca-key.pem\"           (in a pod: the Secret's files).
    certificate_lifetime = \"90d\"    Node certificates' life (10s-3650d);
                                    edges renew at two thirds of it.
    renew_grace = \"30d\"             How long after expiry a node may still
                                    renew on its old key; past it, it needs a
                                    new token.
";

fn main() -> ExitCode {
    let program = cli::Program {
        name: "tether-hub",
        version: env!("CARGO_PKG_VERSION"),
        help: HELP,
        default_config: "/etc/tether/hub.toml",
        reports: &["egress-config"],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A command of its own shape (its own flags, no config file), outside
    // the shared command line.
    match args.first().map(String::as_str) {
        Some("init") => return init(args.get(1..).unwrap_or_default()),
        Some("token") => return token(args.get(1..).unwrap_or_default()),
        Some("node") => return node(args.get(1..).unwrap_or_default()),
        Some("manifests") => return print_manifests(args.get(1..).unwrap_or_default()),
        _ => {}
    }
    cli::main(program, |path| config::load(path).map(|_| ()), run, report)
}

/// `init --san NAME... [--dir DIR] [--force]`: the hub's CA and serving
/// certificate (see [`pki::init`]). Exit 2 for a bad command line, 1 when
/// the files cannot be made (an existing CA without --force).
fn init(args: &[String]) -> ExitCode {
    fn fail(code: u8, e: &str) -> ExitCode {
        eprintln!("tether-hub init: {e}");
        if code == 2 {
            eprintln!("Try 'tether-hub --help'.");
        }
        ExitCode::from(code)
    }
    let mut opts = pki::InitOptions {
        dir: pki::DEFAULT_DIR.into(),
        sans: Vec::new(),
        force: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--san" => match it.next() {
                Some(v) => opts.sans.push(v.clone()),
                None => return fail(2, "--san needs a DNS name or IP address"),
            },
            "--dir" => match it.next() {
                Some(v) => opts.dir = v.into(),
                None => return fail(2, "--dir needs a directory"),
            },
            "--force" => opts.force = true,
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            other => return fail(2, &format!("unknown argument {other:?}")),
        }
    }
    if opts.sans.is_empty() {
        return fail(
            2,
            "at least one --san is needed: the names (DNS or IP) edges reach the hub by, e.g. --san hub.example.com --san 203.0.113.7",
        );
    }
    match pki::init(&opts) {
        Ok(w) => {
            print!("{}", pki::summary(&w));
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e),
    }
}

/// A failed `tether-hub <cmd>`: exit 2 for a bad command line, 1 otherwise.
fn fail(cmd: &str, code: u8, e: &str) -> ExitCode {
    eprintln!("tether-hub {cmd}: {e}");
    if code == 2 {
        eprintln!("Try 'tether-hub --help'.");
    }
    ExitCode::from(code)
}

/// The value after flag `flag`, or a command-line error naming what it needs.
fn value<'a>(
    it: &mut impl Iterator<Item = &'a String>,
    flag: &str,
    what: &str,
) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs {what}"))
}

/// `token create|list|delete`: the hub's bootstrap tokens (see
/// [`tokens::TokenStore`]).
fn token(args: &[String]) -> ExitCode {
    let cmd = match args.first().map(String::as_str) {
        Some(c @ ("create" | "list" | "delete")) => c,
        Some("-h" | "--help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            return fail(
                "token",
                2,
                &format!("unknown command {other:?}: use create, list or delete"),
            )
        }
        None => return fail("token", 2, "a command is needed: create, list or delete"),
    };
    let name = format!("token {cmd}");
    let mut dir = std::path::PathBuf::from(pki::DEFAULT_DIR);
    let mut opts = tokens::TokenOptions::default();
    let mut print_join = false;
    let mut hub = None;
    let mut ca = None;
    let mut id = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let parsed: Result<(), String> = match (cmd, arg.as_str()) {
            (_, "--dir") => value(&mut it, "--dir", "a directory").map(|v| dir = v.into()),
            (_, "-h" | "--help") => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            ("create", "--ttl") => value(&mut it, "--ttl", "a duration such as 24h or 90d")
                .and_then(|v| {
                    match tether_conf::parse_duration(v) {
                        Ok(d) if !d.is_zero() && d <= tokens::MAX_TTL => Ok(d),
                        Ok(_) => Err(format!("--ttl {v}: a token must expire, within 365d at most (e.g. --ttl 24h, --ttl 90d)")),
                        Err(e) => Err(format!("--ttl: {}", e.message)),
                    }
                })
                .map(|d| opts.ttl = d),
            ("create", "--node") => value(&mut it, "--node", "a node name")
                .and_then(|v| {
                    tether_link::topic::NodeName::new(v).map_err(|e| format!("--node: {e}"))
                })
                .map(|n| opts.node = Some(n)),
            ("create", "--usages") => value(&mut it, "--usages", "join or join,rejoin")
                .and_then(|v| v.parse().map_err(|e| format!("--usages: {e}")))
                .map(|u| opts.usage = u),
            ("create", "--single-use") => {
                opts.single_use = true;
                Ok(())
            }
            ("create", "--description") => value(&mut it, "--description", "a text")
                .map(|v| opts.description = Some(v.to_string())),
            ("create", "--print-join-command") => {
                print_join = true;
                Ok(())
            }
            ("create", "--ca") => {
                value(&mut it, "--ca", "a file").map(|v| ca = Some(std::path::PathBuf::from(v)))
            }
            ("create", "--hub") => value(&mut it, "--hub", "HOST:PORT")
                .and_then(host_port)
                .map(|v| hub = Some(v)),
            ("delete", v) if id.is_none() && !v.starts_with('-') => {
                id = Some(v.to_string());
                Ok(())
            }
            (_, other) => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            return fail(&name, 2, &e);
        }
    }
    let ca = ca.unwrap_or_else(|| dir.join(pki::CA_CERT));
    if let Err(e) = state_dir(&dir, (cmd == "create").then_some(ca.as_path())) {
        return fail(&name, 1, &e);
    }
    let store = tokens::TokenStore::open(&dir);
    match cmd {
        "create" => {
            if hub.is_some() && !print_join {
                return fail(&name, 2, "--hub goes with --print-join-command");
            }
            // Everything the join command needs is found before a token
            // exists, so a failure leaves no orphan token behind.
            let target = if print_join {
                match join_target(&dir, &ca, hub) {
                    Ok(t) => Some(t),
                    Err(e) => return fail(&name, 1, &e),
                }
            } else {
                None
            };
            let t = match store.create(&opts, std::time::SystemTime::now()) {
                Ok(t) => t,
                Err(e) => return fail(&name, 1, &e.to_string()),
            };
            match target {
                Some((hub, ca_hash)) => {
                    let node = t
                        .info
                        .node
                        .as_ref()
                        .map_or(String::new(), |n| format!(" --node-name {n}"));
                    println!("tether-edge join {hub} --token {t} --ca-hash {ca_hash}{node}");
                }
                None => println!("{t}"),
            }
            eprintln!(
                "token {}: {}, expires {}{}{} (stored in {})",
                t.id,
                t.info.usage,
                join::store::rfc3339(t.expires),
                t.info
                    .node
                    .as_ref()
                    .map_or(String::new(), |n| format!(", only for node {n}")),
                if t.info.single_use {
                    ", single-use"
                } else {
                    ""
                },
                store.path().display()
            );
            ExitCode::SUCCESS
        }
        "list" => match store.list() {
            Ok(list) if list.is_empty() => {
                println!("no tokens (in {})", store.path().display());
                ExitCode::SUCCESS
            }
            Ok(list) => {
                let now = std::time::SystemTime::now();
                let mut rows = vec![[
                    "ID",
                    "EXPIRES",
                    "NODE",
                    "USAGES",
                    "SINGLE-USE",
                    "USED",
                    "DESCRIPTION",
                ]
                .map(String::from)];
                for t in list {
                    rows.push([
                        t.id,
                        format!(
                            "{}{}",
                            join::store::rfc3339(t.expires),
                            if t.expires <= now { " (expired)" } else { "" }
                        ),
                        t.node.map_or("(any)".into(), |n| n.to_string()),
                        t.usage.to_string(),
                        if t.single_use { "yes" } else { "no" }.into(),
                        t.used.map_or("-".into(), |(at, by)| {
                            format!("{} by {by}", join::store::rfc3339(at))
                        }),
                        t.description.unwrap_or_default(),
                    ]);
                }
                print!("{}", table(&rows));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&name, 1, &e.to_string()),
        },
        _ => {
            let Some(id) = id else {
                return fail(
                    &name,
                    2,
                    "which token? give its ID (see `tether-hub token list`)",
                );
            };
            match store.delete(&id) {
                Ok(()) => {
                    println!("deleted token {id}: it can no longer join a node");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&name, 1, &e.to_string()),
            }
        }
    }
}

/// Checks that `dir` is a hub's state directory (with the CA `ca` when
/// given: a token is of no use without it), so a mistyped --dir says so
/// instead of listing nothing or storing tokens where no hub looks.
fn state_dir(dir: &std::path::Path, ca: Option<&std::path::Path>) -> Result<(), String> {
    let missing_ca = ca.is_some_and(|c| !c.exists());
    if !dir.is_dir() || missing_ca {
        let ca = ca.unwrap_or(dir);
        return Err(format!(
            "{} not found: no hub state there; give the hub's --dir, or run `tether-hub init --san NAME --dir {}` first",
            if dir.is_dir() { ca.display() } else { dir.display() },
            dir.display()
        ));
    }
    Ok(())
}

/// Where the join command points and the CA pin it carries: `hub` or the
/// first name of `<dir>/hub.pem` with the link port the installed hub
/// listens on (`manifests::DEFAULT_LINK_PORT`, as every example config), and the hash
/// of `<dir>/ca.pem`.
fn join_target(
    dir: &std::path::Path,
    ca: &std::path::Path,
    hub: Option<String>,
) -> Result<(String, String), String> {
    let cert = |path: &std::path::Path| {
        tether_link::tls::load_certs(path)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no certificate in it", path.display()))
    };
    let ca_der = cert(ca)?;
    let spki = pki::spki_of_certificate(&ca_der)
        .ok_or_else(|| format!("{}: not an X.509 certificate", ca.display()))?;
    let hash = pki::ca_hash(spki);
    let hub = match hub {
        Some(h) => h,
        None => {
            let path = dir.join(pki::HUB_CERT);
            let name = cert(&path)
                .ok()
                .and_then(|der| pki::first_san(&der))
                .ok_or_else(|| {
                    format!(
                        "cannot tell from {} where edges reach the hub; give --hub HOST:PORT",
                        path.display()
                    )
                })?;
            if name.contains(':') {
                format!("[{name}]:{}", manifests::DEFAULT_LINK_PORT)
            } else {
                format!("{name}:{}", manifests::DEFAULT_LINK_PORT)
            }
        }
    };
    Ok((hub, hash))
}

/// Checks a `--hub` value: `HOST:PORT` (`[v6]:PORT` for an IPv6 address).
fn host_port(v: &str) -> Result<String, String> {
    let bad = || {
        format!("--hub {v:?}: expected HOST:PORT, e.g. hub.example.com:7443 or [2001:db8::1]:7443")
    };
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let ok_host = match bare {
        Some(h) => h.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains([':', ' ', '/']),
    };
    if !ok_host || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(v.to_string())
}

/// `node list|revoke NAME`: the nodes the hub issued certificates to (see
/// [`nodes::NodeStore`]).
fn node(args: &[String]) -> ExitCode {
    let cmd = match args.first().map(String::as_str) {
        Some(c @ ("list" | "revoke")) => c,
        Some("-h" | "--help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            return fail(
                "node",
                2,
                &format!("unknown command {other:?}: use list or revoke"),
            )
        }
        None => return fail("node", 2, "a command is needed: list or revoke"),
    };
    let name = format!("node {cmd}");
    let mut dir = std::path::PathBuf::from(pki::DEFAULT_DIR);
    let mut target = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let parsed = match (cmd, arg.as_str()) {
            (_, "--dir") => value(&mut it, "--dir", "a directory").map(|v| dir = v.into()),
            (_, "-h" | "--help") => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            ("revoke", v) if target.is_none() && !v.starts_with('-') => {
                tether_link::topic::NodeName::new(v)
                    .map(|n| target = Some(n))
                    .map_err(|e| e.to_string())
            }
            (_, other) => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            return fail(&name, 2, &e);
        }
    }
    if let Err(e) = state_dir(&dir, None) {
        return fail(&name, 1, &e);
    }
    let store = nodes::NodeStore::open(&dir);
    if cmd == "list" {
        return match store.list() {
            Ok(list) if list.is_empty() => {
                println!(
                    "no nodes have joined this hub (records in {})",
                    store.path().display()
                );
                ExitCode::SUCCESS
            }
            Ok(list) => {
                let mut rows =
                    vec![["NAME", "SERIAL", "NOT-AFTER", "ISSUED", "HOW", "REVOKED"]
                        .map(String::from)];
                for r in list {
                    rows.push([
                        r.node.to_string(),
                        nodes::short_serial(&r.current.serial),
                        nodes::show_time(r.current.not_after),
                        nodes::show_time(r.issued_at),
                        r.how.to_string(),
                        r.revoked_at.map_or("-".into(), nodes::show_time),
                    ]);
                }
                print!("{}", table(&rows));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&name, 1, &e.to_string()),
        };
    }
    let Some(target) = target else {
        return fail(
            &name,
            2,
            "which node? give its NAME (see `tether-hub node list`)",
        );
    };
    match store.revoke(&target, std::time::SystemTime::now()) {
        Ok(r) if r.already => {
            println!(
                "node {} was already revoked at {}; nothing changed",
                r.node,
                nodes::show_time(r.at)
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "revoked node {} at {} (certificate serial {}): its certificates are refused, and a running hub drops its link within a second. Only a join with a new token brings it back (`tether-hub token create --node {}`).",
                r.node,
                nodes::show_time(r.at),
                nodes::short_serial(&r.serial),
                r.node
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&name, 1, &e.to_string()),
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `manifests [flags]`: the hub's Kubernetes objects (see
/// [`manifests::render`]). Exit 2 for a bad command line, 1 when the
/// `--webhook-ca` file cannot be used.
fn print_manifests(args: &[String]) -> ExitCode {
    match manifests::parse_args(args).map(|o| o.map(|o| manifests::manifests(&o))) {
        Ok(None) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Some(Ok(yaml))) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Ok(Some(Err(e))) => {
            eprintln!("tether-hub manifests: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tether-hub manifests: {e}\nTry 'tether-hub --help'.");
            ExitCode::from(2)
        }
    }
}

/// `egress-config`: what kube-apiserver needs to use the hub's egress.
fn report(name: &str, path: &std::path::Path) -> Result<String, String> {
    let cfg = config::load(path)?;
    match (name, &cfg.egress) {
        ("egress-config", Some(e)) => Ok(egress::selector_config(e)),
        ("egress-config", None) => Err(format!("{}: no [egress] table", path.display())),
        (other, _) => Err(format!("unknown report {other:?}")),
    }
}

fn run(path: &std::path::Path, log_level: Option<String>) -> Result<(), String> {
    let cfg = config::load(path)?;
    tether_link::logger::init(log_level.as_deref().unwrap_or(&cfg.log_level))?;
    raise_file_limit(cfg.limits.max_links);
    let tokens = match &cfg.token_file {
        Some(f) => auth::Tokens::load(f)?,
        None => auth::Tokens::default(),
    };
    let tls = match &cfg.tls {
        Some(t) => {
            let sc = tether_link::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
                .map_err(|e| e.to_string())?;
            Some(futures_rustls::TlsAcceptor::from(std::sync::Arc::new(sc)))
        }
        None => None,
    };
    if tokens.is_empty()
        && cfg.listen_link.is_some()
        && cfg.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
    {
        return Err(
            "no way for nodes to authenticate: set auth.token_file, or tls.client_ca".into(),
        );
    }
    let join = match &cfg.join {
        Some(j) => {
            if cfg.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                return Err(format!(
                    "[join] issues node certificates, but [tls] has no client_ca to check them with: set client_ca = \"{}\"",
                    j.ca.display()
                ));
            }
            Some(join::live::JoinService::open(j)?)
        }
        None => None,
    };
    let broker_tls = match &cfg.broker {
        Some(b) => broker::tls(b)?,
        None => None,
    };
    // Built before anything listens, so a bad CA, key or token file stops
    // the hub at start with the file named.
    let autonomy_client = match &cfg.autonomy {
        Some(a) => Some((autonomy::client::Client::new(a)?, a.renew_every)),
        None => None,
    };
    let webhook = match cfg.autonomy.as_ref().and_then(|a| a.webhook.as_ref()) {
        Some(w) => Some((w.listen, autonomy::webhook::tls(&w.cert, &w.key)?)),
        None => None,
    };
    let ex = Rc::new(smol::LocalExecutor::new());
    smol::block_on(ex.run(async {
        let link_listener = match cfg.listen_link {
            Some(a) => Some(
                smol::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("listen.link {a}: {e}"))?,
            ),
            None => None,
        };
        let admin_listener = match cfg.listen_admin {
            Some(a) => Some(
                smol::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("listen.admin {a}: {e}"))?,
            ),
            None => None,
        };
        let webhook_listener = match webhook {
            Some((a, acceptor)) => Some((
                smol::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("autonomy.webhook_listen {a}: {e}"))?,
                acceptor,
            )),
            None => None,
        };
        let mut expose_listeners = Vec::new();
        let mut http_listeners: Vec<(smol::net::TcpListener, Vec<config::Expose>)> = Vec::new();
        for e in &cfg.exposes {
            if e.path.is_some() {
                // HTTP services on one port share its listener.
                if let Some((_, routes)) = http_listeners
                    .iter_mut()
                    .find(|(_, r)| r.first().is_some_and(|f| f.listen == e.listen))
                {
                    routes.push(e.clone());
                    continue;
                }
            }
            let l = smol::net::TcpListener::bind(e.listen)
                .await
                .map_err(|err| format!("expose {}: {err}", e.listen))?;
            if e.path.is_some() {
                http_listeners.push((l, vec![e.clone()]));
            } else {
                expose_listeners.push((l, e.clone()));
            }
        }
        log::info!(
            "tether-hub {} listening for links on {}{}; admin on {}; {} node tokens, {} upstreams",
            env!("CARGO_PKG_VERSION"),
            cfg.listen_link.map_or("-".to_string(), |a| a.to_string()),
            if cfg.tls.is_none() {
                " (plaintext: tests only)"
            } else {
                " (TLS 1.3)"
            },
            cfg.listen_admin.map_or("-".to_string(), |a| a.to_string()),
            tokens.len(),
            cfg.upstreams.len()
        );
        let hub = Rc::new(links::Hub {
            cfg: cfg.clone(),
            tokens,
            tls,
            registry: Default::default(),
            ex: ex.clone(),
            sender: tether_link::backoff::random_seed() as u32,
            join,
        });
        ex.spawn(join::live::watch(hub.clone())).detach();
        if let Some(l) = admin_listener {
            ex.spawn(admin::serve(hub.clone(), l)).detach();
        }
        for (l, e) in expose_listeners {
            ex.spawn(expose::serve(hub.clone(), l, e)).detach();
        }
        for (l, routes) in http_listeners {
            ex.spawn(expose::serve_http(hub.clone(), l, routes))
                .detach();
        }
        if let Some(egress) = &cfg.egress {
            start_egress(&hub, egress).await?;
        }
        ex.spawn(links::expire_sessions(hub.clone())).detach();
        ex.spawn(tether_hub::health::retally(hub.clone())).detach();
        if let Some((client, every)) = autonomy_client {
            ex.spawn(autonomy::run(hub.clone(), client, every)).detach();
        }
        if let Some((l, acceptor)) = webhook_listener {
            log::info!(
                "autonomy webhook (pods labelled {}={}) on https://{}{}",
                autonomy::webhook::LABEL,
                autonomy::webhook::LABEL_VALUE,
                l.local_addr().map_or("?".to_string(), |a| a.to_string()),
                autonomy::webhook::PATH
            );
            ex.spawn(autonomy::webhook::serve(hub.clone(), l, acceptor))
                .detach();
        }
        if cfg.broker.is_some() {
            ex.spawn(broker::run(hub.clone(), broker_tls)).detach();
        }
        match link_listener {
            Some(l) => links::serve(hub, l).await,
            None => std::future::pending::<()>().await,
        }
        Ok(())
    }))
}

/// Binds kube-apiserver's egress listeners (TLS, unix socket) and serves them.
async fn start_egress(hub: &Rc<links::Hub>, cfg: &config::Egress) -> Result<(), String> {
    if let (Some(addr), Some(t), Some(ca)) = (
        cfg.listen,
        &cfg.tls,
        cfg.tls.as_ref().and_then(|t| t.client_ca.as_deref()),
    ) {
        let sc = tether_link::tls::server_config_requiring_clients(&t.cert, &t.key, ca)
            .map_err(|e| format!("egress TLS: {e}"))?;
        let acceptor = futures_rustls::TlsAcceptor::from(std::sync::Arc::new(sc));
        let listener = smol::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("egress.listen {addr}: {e}"))?;
        log::info!(
            "egress for kube-apiserver (HTTP CONNECT, TLS with client certificates) on {addr}"
        );
        hub.ex
            .spawn(egress::serve_tls(
                hub.clone(),
                listener,
                acceptor,
                cfg.clone(),
            ))
            .detach();
    }
    if let Some(path) = &cfg.uds {
        // A socket left by an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = smol::net::unix::UnixListener::bind(path)
            .map_err(|e| format!("egress.uds {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("egress.uds {}: {e}", path.display()))?;
        log::info!(
            "egress for kube-apiserver (HTTP CONNECT) on unix socket {}",
            path.display()
        );
        hub.ex
            .spawn(egress::serve_unix(hub.clone(), listener, cfg.clone()))
            .detach();
    }
    Ok(())
}

/// Every link is a file descriptor: lift the soft limit to the hard one and
/// say so if that still cannot hold `max_links`.
fn raise_file_limit(max_links: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        log::warn!("cannot raise the open-file limit from {soft} to {hard}");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |l| l.0);
    if (limit as usize) < max_links + 64 {
        log::warn!("open-file limit {limit} is below limits.max_links {max_links}: links beyond it will fail to be accepted");
    }
}

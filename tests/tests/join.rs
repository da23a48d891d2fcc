//! Join, identity and certificates end to end on loopback (issue 7):
//! `tether-hub init`, `token create`, `tether-edge join`, the edge linking
//! with its new identity and proxying to the stand-in kube-apiserver; every
//! refusal specific on both sides and leaving nothing behind; revocation;
//! renewal before expiry, within the grace after it, and past the grace.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_edge::identity::exchange::exchange;
use tether_edge::identity::key::NodeKey;
use tether_edge::identity::pin::{CaHash, PinnedCa};
use tether_link::join::{Answer, Refusal, Request};
use tether_link::topic::NodeName;
use tether_tests::apiserver::StandIn;
use tether_tests::client::{call, JSON, KUBELET};
use tether_tests::cluster::{is_linked, metric, node_field, wait_linked};
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, run, wait_http_ok, Proc};

const WAIT: Duration = Duration::from_secs(30);
const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500&resourceVersion=0";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A hub with `[join]` in front of the stand-in kube-apiserver. Fields drop
/// in order: the processes before the folder they use.
struct Site {
    hub: Proc,
    link: SocketAddr,
    admin: SocketAddr,
    _standin: StandIn,
    state: PathBuf,
    pki: Pki,
}

impl Site {
    fn start(lifetime: &str, grace: &str) -> Site {
        let pki = Pki::new();
        let standin = StandIn::start_tls(&pki);
        let state = pki.dir.join("hub-state");
        let (code, out, err) = run(
            "tether-hub",
            &["init", "--dir", &s(&state), "--san", "127.0.0.1"],
        );
        assert_eq!(code, 0, "init: {out}{err}");
        let link: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let st = s(&state);
        let text = format!(
            "log_level = \"debug\"\n[listen]\nlink = \"{link}\"\nadmin = \"{admin}\"\n\
             [tls]\ncert = \"{st}/hub.pem\"\nkey = \"{st}/hub-key.pem\"\nclient_ca = \"{st}/ca.pem\"\n\
             [join]\ndir = \"{st}\"\ncertificate_lifetime = \"{lifetime}\"\nrenew_grace = \"{grace}\"\n\
             [upstream.kube-apiserver]\naddress = \"{}\"\n",
            standin.addr()
        );
        let config = pki.write("hub.toml", &text);
        let hub = Proc::start("hub", &bin("tether-hub"), &["--config", &s(&config)]);
        assert!(
            wait_http_ok(admin, "/healthz", WAIT),
            "hub did not start:\n{}",
            hub.logs()
        );
        Site {
            hub,
            link,
            admin,
            _standin: standin,
            state,
            pki,
        }
    }

    /// `tether-hub ARGS --dir STATE`.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = args.to_vec();
        let dir = s(&self.state);
        all.extend(["--dir", &dir]);
        run("tether-hub", &all)
    }

    /// A token from `token create --print-join-command ARGS`: (token, CA hash).
    fn token(&self, args: &[&str]) -> (String, String) {
        let hub = self.link.to_string();
        let mut all = vec!["token", "create", "--print-join-command", "--hub", &hub];
        all.extend(args);
        let (code, out, err) = self.cli(&all);
        assert_eq!(code, 0, "token create: {out}{err}");
        let words: Vec<&str> = out.split_whitespace().collect();
        let after = |flag: &str| {
            let i = words
                .iter()
                .position(|w| *w == flag)
                .unwrap_or_else(|| panic!("no {flag} in {out}"));
            words[i + 1].to_string()
        };
        assert!(out.contains(&format!("tether-edge join {hub} ")), "{out}");
        (after("--token"), after("--ca-hash"))
    }
}

/// One board's files: a board file for the test (proxy port, the
/// stand-in's client certificate) and where join writes.
struct Board {
    dir: PathBuf,
    board: PathBuf,
    proxy: SocketAddr,
}

impl Board {
    fn new(site: &Site, node: &str, hub_extra: &str) -> Board {
        let dir = site.pki.dir.join(format!("board-{node}"));
        std::fs::create_dir_all(&dir).expect("board dir");
        let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let (cert, key) = site.pki.node_cert(&format!("system:node:{node}"));
        let text = format!(
            "node = \"set-by-fleet\"\nlog_level = \"debug\"\n[hub]\naddress = \"placeholder.invalid:1\"\n{hub_extra}\
             [link]\nkeepalive = \"2s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n\
             [apiserver]\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n",
            s(&site.pki.ca),
            s(&cert),
            s(&key),
            s(&dir.join("cache.db"))
        );
        let board = dir.join("test-board.toml");
        std::fs::write(&board, text).expect("board file");
        Board { dir, board, proxy }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("edge.toml")
    }

    fn identity(&self) -> PathBuf {
        self.dir.join("node.pem")
    }

    /// `tether-edge join` for `node` with `token`, writing into this board's folder.
    fn join(
        &self,
        site: &Site,
        node: &str,
        token: &str,
        ca_hash: &str,
        extra: &[&str],
    ) -> (i32, String, String) {
        let (hub, dir, config, kube, board) = (
            site.link.to_string(),
            s(&self.dir),
            s(&self.config()),
            s(&self.dir.join("kubelet.kubeconfig")),
            s(&self.board),
        );
        let mut args = vec![
            "join",
            &hub,
            "--token",
            token,
            "--ca-hash",
            ca_hash,
            "--node-name",
            node,
            "--dir",
            &dir,
            "--config",
            &config,
            "--kubeconfig",
            &kube,
            "--board",
            &board,
        ];
        args.extend(extra);
        run("tether-edge", &args)
    }

    /// The files in the folder besides the board file.
    fn written(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "test-board.toml")
            .collect();
        names.sort();
        names
    }

    fn start(&self, node: &str) -> Proc {
        Proc::start(node, &bin("tether-edge"), &["--config", &s(&self.config())])
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

fn serial(path: &Path) -> Vec<u8> {
    let certs = tether_link::tls::load_certs(path).expect("certs");
    tether_link::tls::serial_of_certificate(&certs[0])
        .expect("serial")
        .to_vec()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_board_joins_links_with_its_new_identity_and_proxies() {
    let site = Site::start("90d", "30d");
    let (token, ca_hash) = site.token(&[]);
    let board = Board::new(&site, "edge-1", "");
    let started = Instant::now();
    let (code, out, err) = board.join(&site, "edge-1", &token, &ca_hash, &[]);
    let join_took = started.elapsed();
    assert_eq!(code, 0, "join: {out}{err}");
    for step in 1..=5 {
        assert!(
            out.contains(&format!("[{step}/5]")),
            "step {step} not reported:\n{out}"
        );
    }
    assert!(
        !out.contains(token.split('.').nth(1).expect("secret")),
        "the secret is printed:\n{out}"
    );
    assert_eq!(
        board.written(),
        ["edge.toml", "hub-ca.pem", "kubelet.kubeconfig", "node.pem"],
        "exactly these files, no temporaries"
    );
    assert_eq!(mode(&board.identity()), 0o600);
    assert_eq!(mode(&board.config()), 0o600);
    let kubeconfig = std::fs::read_to_string(board.dir.join("kubelet.kubeconfig")).expect("kc");
    assert!(
        kubeconfig.contains(&format!("server: http://{}", board.proxy)),
        "{kubeconfig}"
    );
    // The hub logged the join, without the secret.
    assert!(
        site.hub.wait_for_log("node edge-1 joined with token", WAIT),
        "{}",
        site.hub.logs()
    );
    assert!(!site
        .hub
        .logs()
        .contains(token.split('.').nth(1).expect("secret")));

    let edge = board.start("edge-1");
    assert!(wait_linked(site.admin, "edge-1", WAIT), "{}", edge.logs());
    assert_eq!(
        node_field(site.admin, "edge-1", "auth").as_deref(),
        Some("\"certificate\"")
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = call(board.proxy, KUBELET, "GET", PODS, JSON, b"");
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy answers {}: {}",
            answer.status,
            edge.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "join took {join_took:?}; command to linked and proxying {:?}",
        started.elapsed()
    );
    let (code, out, _) = site.cli(&["node", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("edge-1"), "{out}");

    // An identity is never replaced by accident.
    let (code, _, err) = board.join(&site, "edge-1", &token, &ca_hash, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    // With --force, the same token still cannot take over a name with a
    // live certificate: that needs a rejoin token.
    let (code, _, err) = board.join(&site, "edge-1", &token, &ca_hash, &["--force"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rejoin"), "{err}");
    drop(edge);

    // Reset undoes the join.
    let (code, out, err) = run(
        "tether-edge",
        &[
            "reset",
            "--config",
            &s(&board.config()),
            "--dir",
            &s(&board.dir),
            "--kubeconfig",
            &s(&board.dir.join("kubelet.kubeconfig")),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(board.written().is_empty(), "left: {:?}", board.written());
}

#[test]
fn refusals_are_specific_and_leave_nothing_behind() {
    let site = Site::start("90d", "30d");
    let (token, ca_hash) = site.token(&[]);
    let board = Board::new(&site, "edge-2", "");

    // A wrong CA hash: the hub is not trusted, nothing is asked of it.
    let mut wrong = ca_hash.clone();
    let last = wrong.pop().expect("hex");
    wrong.push(if last == '0' { '1' } else { '0' });
    let (code, _, err) = board.join(&site, "edge-2", &token, &wrong, &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("--ca-hash"), "{err}");
    assert!(board.written().is_empty(), "{:?}", board.written());

    // An expired token.
    let (short, _) = site.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (code, _, err) = board.join(&site, "edge-2", &short, &ca_hash, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(board.written().is_empty());

    // A single-use token used twice.
    let (once, _) = site.token(&["--single-use"]);
    let other = Board::new(&site, "edge-3", "");
    let (code, out, err) = other.join(&site, "edge-3", &once, &ca_hash, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = board.join(&site, "edge-2", &once, &ca_hash, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("used"), "{err}");
    assert!(board.written().is_empty());

    // A token bound to node A used for node B.
    let (bound, _) = site.token(&["--node", "edge-a"]);
    let (code, _, err) = board.join(&site, "edge-2", &bound, &ca_hash, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("edge-a"), "{err}");
    assert!(board.written().is_empty());

    // A request whose CSR names another node than --node-name (the
    // connection's): built by hand, since tether-edge never sends one.
    let key = NodeKey::generate().expect("key");
    let csr = key.csr(&NodeName::new("edge-x").expect("n")).expect("csr");
    let tls = PinnedCa::client_config(CaHash::parse(&ca_hash).expect("hash")).expect("tls");
    let answer = smol::block_on(exchange(
        &site.link.to_string(),
        "127.0.0.1",
        Arc::new(tls),
        &NodeName::new("edge-2").expect("n"),
        &Request::Join {
            token: token.clone(),
            csr,
        },
        Duration::from_secs(10),
    ))
    .expect("an answer");
    match answer {
        Answer::Refused { reason, message } => {
            assert_eq!(reason, Refusal::NameMismatch);
            assert!(
                message.contains("edge-x") && message.contains("edge-2"),
                "{message}"
            );
        }
        Answer::Issued { .. } => panic!("issued a certificate for a mismatched request"),
    }
    // The hub says so too, once per refusal, and counts them.
    assert!(site.hub.wait_for_log("refused a join or renewal", WAIT));
    let m = |r: &str| {
        metric(
            site.admin,
            &format!("tether_hub_joins_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(m("token"), Some(3.0));
    assert_eq!(m("name_mismatch"), Some(1.0));
    assert_eq!(m("joined"), Some(1.0));
    // The good token still works for the board.
    let (code, out, err) = board.join(&site, "edge-2", &token, &ca_hash, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_revoked_node_is_dropped_at_once_and_refused_from_then_on() {
    let site = Site::start("90d", "30d");
    let (token, ca_hash) = site.token(&[]);
    let board = Board::new(&site, "edge-4", "");
    let (code, out, err) = board.join(&site, "edge-4", &token, &ca_hash, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let edge = board.start("edge-4");
    assert!(wait_linked(site.admin, "edge-4", WAIT), "{}", edge.logs());

    let (code, out, err) = site.cli(&["node", "revoke", "edge-4"]);
    assert_eq!(code, 0, "{out}{err}");
    let revoked = Instant::now();
    wait_for("the revoked link to drop", Duration::from_secs(5), || {
        !is_linked(site.admin, "edge-4")
    });
    eprintln!("link dropped {:?} after revoke", revoked.elapsed());
    assert!(site
        .hub
        .wait_for_log("node edge-4 is revoked: dropping its link", WAIT));
    // The edge keeps trying; every attempt is refused.
    wait_for("a refused reconnect", WAIT, || {
        metric(
            site.admin,
            "tether_hub_refused_total{reason=\"certificate_revoked\"}",
        )
        .is_some_and(|n| n >= 1.0)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(!is_linked(site.admin, "edge-4"), "{}", site.hub.logs());
    // Renewing with the revoked certificate is refused too.
    let (list_code, list, _) = site.cli(&["node", "list"]);
    assert_eq!(list_code, 0);
    assert!(list.contains("edge-4"), "{list}");
}

#[test]
fn the_certificate_is_renewed_before_expiry_and_used_from_the_next_link() {
    let site = Site::start("12s", "1h");
    let (token, ca_hash) = site.token(&[]);
    let board = Board::new(&site, "edge-5", "renew_at_percent = 50\n");
    let (code, out, err) = board.join(&site, "edge-5", &token, &ca_hash, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let first = serial(&board.identity());
    let joined = Instant::now();
    let mut edge = board.start("edge-5");
    assert!(wait_linked(site.admin, "edge-5", WAIT), "{}", edge.logs());
    assert!(
        edge.wait_for_log("node certificate renewed", WAIT),
        "{}",
        edge.logs()
    );
    assert_ne!(
        serial(&board.identity()),
        first,
        "the identity file holds the new certificate"
    );
    assert_eq!(mode(&board.identity()), 0o600);
    assert!(
        metric(site.admin, "tether_hub_joins_total{result=\"renewed\"}").is_some_and(|n| n >= 1.0)
    );
    // Past the first certificate's end, a new link can only be made with
    // the renewed one.
    let expiry = Duration::from_secs(13);
    if let Some(rest) = expiry.checked_sub(joined.elapsed()) {
        std::thread::sleep(rest);
    }
    edge.kill();
    let edge = board.start("edge-5");
    assert!(wait_linked(site.admin, "edge-5", WAIT), "{}", edge.logs());
}

#[test]
fn an_expired_certificate_renews_within_the_grace_and_not_after_it() {
    let within = Site::start("10s", "1h");
    let past = Site::start("10s", "0s");
    let (t1, h1) = within.token(&[]);
    let (t2, h2) = past.token(&[]);
    let b1 = Board::new(&within, "edge-6", "");
    let b2 = Board::new(&past, "edge-7", "");
    let (code, out, err) = b1.join(&within, "edge-6", &t1, &h1, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = b2.join(&past, "edge-7", &t2, &h2, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // Both boards stay off until their certificates have expired.
    std::thread::sleep(Duration::from_secs(11));

    let e1 = b1.start("edge-6");
    assert!(
        e1.wait_for_log("node certificate renewed", WAIT),
        "{}",
        e1.logs()
    );
    assert!(wait_linked(within.admin, "edge-6", WAIT), "{}", e1.logs());

    let e2 = b2.start("edge-7");
    assert!(
        e2.wait_for_log("node certificate renewal refused", WAIT),
        "{}",
        e2.logs()
    );
    let logs = e2.logs();
    assert!(
        logs.contains("past_grace") && logs.contains("token create"),
        "{logs}"
    );
    assert!(past.hub.logs().contains("longer ago than this hub's grace"));
    assert!(!is_linked(past.admin, "edge-7"));
}

#[test]
fn a_garbage_join_request_is_refused_as_such_and_the_hub_goes_on() {
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
    let site = Site::start("90d", "30d");
    let (token, ca_hash) = site.token(&[]);
    let tls = PinnedCa::client_config(CaHash::parse(&ca_hash).expect("hash")).expect("tls");
    // A CONNECT that says join, with a password that is no join request.
    let mut connect = Vec::new();
    tether_link::mqtt::encode(
        &tether_link::mqtt::Packet::Connect(tether_link::mqtt::Connect {
            protocol: tether_link::mqtt::Protocol::MQTT311,
            keep_alive: 0,
            client_id: "edge-8",
            clean_session: true,
            last_will: None,
            username: Some(tether_link::join::USERNAME),
            password: Some(&[0xff; 40]),
        }),
        &mut connect,
    )
    .expect("encode");
    let answer = smol::block_on(async {
        let tcp = smol::net::TcpStream::connect(site.link).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut conn = futures_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .expect("tls");
        conn.write_all(&connect).await.expect("write");
        conn.flush().await.expect("flush");
        let mut buf = Vec::new();
        let _ = conn.read_to_end(&mut buf).await;
        tether_link::join::decode_answer(&buf)
            .expect("an answer")
            .expect("a whole answer")
    });
    match answer {
        Answer::Refused { reason, message } => {
            assert_eq!(reason, Refusal::BadRequest);
            assert!(message.contains("malformed join request"), "{message}");
        }
        Answer::Issued { .. } => panic!("issued a certificate for garbage"),
    }
    assert!(site.hub.wait_for_log("refused a join or renewal", WAIT));
    assert_eq!(
        metric(site.admin, "tether_hub_joins_total{result=\"bad_request\"}"),
        Some(1.0)
    );
    // Nothing recorded for it, and a real join still works.
    let (_, list, _) = site.cli(&["node", "list"]);
    assert!(!list.contains("edge-8"), "{list}");
    let board = Board::new(&site, "edge-8", "");
    let (code, out, err) = board.join(&site, "edge-8", &token, &ca_hash, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

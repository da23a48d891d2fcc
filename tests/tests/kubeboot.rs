//! `tether-edge join --kube-token` (issue 7): after the hub identity, join
//! does kubelet's TLS bootstrap through the hub's `kube-apiserver`
//! upstream against the stand-in kube-apiserver: the certificate is
//! written as kubelet writes it (a 0600 file named by time, the symlink
//! `kubelet-client-current.pem`), and the edge started with the written
//! config reaches kube-apiserver with it. A wrong bootstrap token or a
//! denied request fail clearly, with exit status 6 and nothing of
//! kubelet's written.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_edge::http;
use tether_edge::identity::key::NodeKey;
use tether_edge::identity::kubelet::{csr_object, parse_csr, CsrState};
use tether_link::topic::NodeName;
use tether_tests::apiserver::{CsrMode, StandIn};
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, http_get, run, wait_http_ok, Proc};

/// The Kubernetes bootstrap token the stand-in knows.
const KUBE_TOKEN: &str = "abcdef.0123456789abcdef";

/// A hub made with `tether-hub init` that serves joins and relays
/// `kube-apiserver` to the stand-in, and a board file for the edge.
struct Setup {
    pki: Pki,
    standin: StandIn,
    state: String,
    ca_hash: String,
    hub: Proc,
    link: u16,
    board: PathBuf,
    proxy: u16,
}

impl Setup {
    fn new() -> Setup {
        let pki = Pki::new();
        let standin = StandIn::start_tls(&pki);
        standin.set_bootstrap_token(KUBE_TOKEN);
        let state = pki.dir.join("hub-state").to_string_lossy().into_owned();
        let (code, out, err) = run(
            "tether-hub",
            &["init", "--dir", &state, "--san", "127.0.0.1"],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let ca_hash = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no CA hash in {out}"))
            .to_string();
        let link = free_port();
        let admin = free_port();
        let config = pki.write(
            "hub.toml",
            &format!(
                "log_level = \"debug\"\n[listen]\nlink = \"127.0.0.1:{link}\"\nadmin = \"127.0.0.1:{admin}\"\n[tls]\ncert = \"{state}/hub.pem\"\nkey = \"{state}/hub-key.pem\"\nclient_ca = \"{state}/ca.pem\"\n[join]\ndir = \"{state}\"\n[upstream.kube-apiserver]\naddress = \"{}\"\n",
                standin.addr()
            ),
        );
        let hub = Proc::start(
            "hub",
            &bin("tether-hub"),
            &["--config", &config.to_string_lossy()],
        );
        assert!(
            wait_http_ok(
                ([127, 0, 0, 1], admin).into(),
                "/healthz",
                Duration::from_secs(20)
            ),
            "hub did not come up:\n{}",
            hub.logs()
        );
        // The board: kube-apiserver is the stand-in, whose certificate is
        // for localhost, and trusts the test CA.
        let boards = pki.dir.join("boards");
        std::fs::create_dir_all(&boards).expect("boards dir");
        let proxy = free_port();
        let board = boards.join("testboard.toml");
        std::fs::write(
            &board,
            format!(
                "node = \"set-by-fleet\"\n[apiserver]\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"/var/lib/kubelet/pki/kubelet-client-current.pem\"\nkey = \"/var/lib/kubelet/pki/kubelet-client-current.pem\"\n[proxy]\nlisten = \"127.0.0.1:{proxy}\"\n",
                pki.ca.display()
            ),
        )
        .expect("board file");
        Setup {
            pki,
            standin,
            state,
            ca_hash,
            hub,
            link,
            board,
            proxy,
        }
    }

    fn hub_token(&self) -> String {
        let (code, out, err) = run("tether-hub", &["token", "create", "--dir", &self.state]);
        assert_eq!(code, 0, "{out}\n{err}");
        out.trim().to_string()
    }

    /// Joins `node` with `kube_token`; files go to `<pki>/<node>/`.
    fn join(&self, node: &str, kube_token: &str) -> (i32, String, String, PathBuf) {
        self.join_within(node, kube_token, "20s")
    }

    /// [`Setup::join`] with `--kube-timeout kube_timeout`.
    fn join_within(
        &self,
        node: &str,
        kube_token: &str,
        kube_timeout: &str,
    ) -> (i32, String, String, PathBuf) {
        let dir = self.pki.dir.join(node);
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let token = self.hub_token();
        let hub = format!("127.0.0.1:{}", self.link);
        let board = self.board.to_string_lossy().into_owned();
        let (code, out, err) = run(
            "tether-edge",
            &[
                "join",
                &hub,
                "--token",
                &token,
                "--ca-hash",
                &self.ca_hash,
                "--node-name",
                node,
                "--board",
                &board,
                "--config",
                &d("edge.toml"),
                "--dir",
                &d("."),
                "--kubeconfig",
                &d("kubelet.kubeconfig"),
                "--kube-token",
                kube_token,
                "--kubelet-pki",
                &d("kubelet-pki"),
                "--kube-timeout",
                kube_timeout,
            ],
        );
        (code, out, err, dir)
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One HTTP/1.1 request to `addr` (the edge's proxy), as kubelet sends it
/// there: no credentials. Returns the status and the de-chunked body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kubelet/v1.24.0 (linux/arm64) kubernetes/2cc6ddc\r\nAccept: application/json, */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).expect("write");
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).expect("read");
    let (resp, used) = http::parse_response_head(&all, &http::Limits::default())
        .expect("head parses")
        .expect("a whole head");
    let mut decoder = http::BodyDecoder::new(resp.body_kind(method).expect("framing"));
    let mut out = Vec::new();
    decoder.decode(&all[used..], &mut out).expect("body");
    (resp.status, out)
}

fn cert_cn(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem).ok()?;
    tether_link::tls::subject_common_name(&der)
}

#[test]
fn join_bootstraps_kubelets_certificate_through_the_hub_and_the_edge_uses_it() {
    let s = Setup::new();
    let (code, out, err, dir) = s.join("edge-1", KUBE_TOKEN);
    assert_eq!(code, 0, "join failed\n{out}\n{err}\nhub:\n{}", s.hub.logs());
    assert!(out.contains("[6/6]"), "{out}");
    println!("{out}");

    // What kubelet writes: one file named by time, 0600, and the symlink.
    let pki = dir.join("kubelet-pki");
    let names = files_in(&pki);
    assert_eq!(names.len(), 2, "{names:?}");
    let file = names
        .iter()
        .find(|n| n.starts_with("kubelet-client-2") && n.ends_with(".pem"))
        .unwrap_or_else(|| panic!("no kubelet-client-<time>.pem in {names:?}"));
    let mode = std::fs::metadata(pki.join(file))
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let current = pki.join("kubelet-client-current.pem");
    assert_eq!(
        std::fs::read_link(&current).expect("symlink"),
        PathBuf::from(file)
    );
    let pem = std::fs::read(&current).expect("read current");
    assert_eq!(cert_cn(&pem).as_deref(), Some("system:node:edge-1"));
    assert!(String::from_utf8_lossy(&pem).contains("-----BEGIN PRIVATE KEY-----"));

    // The request kubelet would send, with the bootstrap token.
    let create = s
        .standin
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.target.contains("certificatesigningrequests"))
        .expect("a CSR was created");
    assert_eq!(create.identity, format!("bearer:{KUBE_TOKEN}"));
    let body = String::from_utf8_lossy(&create.body);
    assert!(
        body.contains("\"signerName\":\"kubernetes.io/kube-apiserver-client-kubelet\"")
            && body.contains("\"usages\":[\"digital signature\",\"client auth\"]")
            && body.contains("\"generateName\":\"node-csr-\""),
        "{body}"
    );

    // The config and the kubeconfig name the symlink.
    let config = std::fs::read_to_string(dir.join("edge.toml")).expect("config");
    assert!(
        config.contains(&format!("cert = \"{}\"", current.display())),
        "{config}"
    );
    let kubeconfig = std::fs::read_to_string(dir.join("kubelet.kubeconfig")).expect("kubeconfig");
    assert!(
        kubeconfig.contains(&format!("client-certificate: {}", current.display())),
        "{kubeconfig}"
    );

    // The edge with the written config serves kubelet with that certificate.
    let edge = Proc::start(
        "edge-1",
        &bin("tether-edge"),
        &["--config", &dir.join("edge.toml").to_string_lossy()],
    );
    let proxy = ([127, 0, 0, 1], s.proxy).into();
    let mut answer = None;
    for _ in 0..100 {
        if let Ok((200, body)) = http_get(proxy, "/api/v1/nodes/edge-1") {
            answer = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = answer.unwrap_or_else(|| panic!("no proxied GET\nedge:\n{}", edge.logs()));
    assert!(body.contains("\"name\":\"edge-1\""), "{body}");
    let get = s
        .standin
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "GET" && r.target == "/api/v1/nodes/edge-1")
        .expect("the GET reached the stand-in");
    assert_eq!(get.identity, "system:node:edge-1");

    // kubelet's rotation through the proxy: a new CSR sent without
    // credentials reaches kube-apiserver as the node, which may renew its
    // own client certificate.
    let key = NodeKey::generate().expect("key");
    let csr = key
        .csr(&NodeName::new("edge-1").expect("name"))
        .expect("csr");
    let (status, created) = request(
        proxy,
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        &csr_object(&csr),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let (name, state) = parse_csr(&created).expect("a CSR");
    assert_eq!(
        state,
        CsrState::Pending,
        "the create's answer shows no approval"
    );
    let (status, got) = request(
        proxy,
        "GET",
        &format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"),
        "",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    let CsrState::Issued(pem) = parse_csr(&got).expect("a CSR").1 else {
        panic!("not issued: {}", String::from_utf8_lossy(&got));
    };
    assert_eq!(
        cert_cn(pem.as_bytes()).as_deref(),
        Some("system:node:edge-1")
    );
    let renewal = s
        .standin
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "POST")
        .expect("the renewal's POST");
    assert_eq!(renewal.identity, "system:node:edge-1");
}

#[test]
fn an_unknown_kube_token_fails_clearly_and_writes_nothing_of_kubelets() {
    let s = Setup::new();
    let (code, out, err, dir) = s.join("edge-2", "zzzzzz.0123456789abcdef");
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(
        err.contains("does not accept the bootstrap token") && err.contains("kubeadm token create"),
        "{err}"
    );
    assert_eq!(files_in(&dir.join("kubelet-pki")), Vec::<String>::new());
    assert!(s.standin.csr_names().is_empty());
}

#[test]
fn a_denied_request_fails_clearly_and_writes_nothing_of_kubelets() {
    let s = Setup::new();
    s.standin.set_csr_mode(CsrMode::Deny);
    let (code, out, err, dir) = s.join("edge-3", KUBE_TOKEN);
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(err.contains("denied (KubectlDeny)"), "{err}");
    let name = s.standin.csr_names().pop().expect("a CSR");
    assert!(err.contains(&format!("kubectl get csr {name}")), "{err}");
    assert_eq!(files_in(&dir.join("kubelet-pki")), Vec::<String>::new());
}

#[test]
fn a_token_without_rights_on_csrs_names_kubeadms_binding() {
    let s = Setup::new();
    s.standin.forbid(
        &format!("bearer:{KUBE_TOKEN}"),
        "create",
        "certificatesigningrequests",
    );
    let (code, out, err, dir) = s.join("edge-4", KUBE_TOKEN);
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(
        err.contains("kubeadm:kubelet-bootstrap") && err.contains("system:bootstrap:abcdef"),
        "{err}"
    );
    assert_eq!(files_in(&dir.join("kubelet-pki")), Vec::<String>::new());
}

#[test]
fn a_request_nobody_approves_times_out_naming_it() {
    let s = Setup::new();
    s.standin.set_csr_mode(CsrMode::Pending);
    let (code, out, err, dir) = s.join_within("edge-5", KUBE_TOKEN, "2s");
    assert_eq!(code, 6, "{out}\n{err}");
    let name = s.standin.csr_names().pop().expect("a CSR");
    assert!(
        err.contains(&format!("no certificate for {name} within 2s"))
            && err.contains(&format!("kubectl certificate approve {name}")),
        "{err}"
    );
    assert_eq!(files_in(&dir.join("kubelet-pki")), Vec::<String>::new());
}

#[test]
fn kube_flags_without_a_kube_token_are_refused() {
    let (code, _, err) = run(
        "tether-edge",
        &[
            "join",
            "127.0.0.1:7443",
            "--token",
            "aaaaaa.bbbbbbbbbbbbbbbb",
            "--ca-hash",
            &format!("sha256:{}", "0".repeat(64)),
            "--kubelet-pki",
            "/tmp/nowhere",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("need --kube-token"), "{err}");
    let (code, _, err) = run(
        "tether-edge",
        &[
            "join",
            "127.0.0.1:7443",
            "--token",
            "aaaaaa.bbbbbbbbbbbbbbbb",
            "--ca-hash",
            &format!("sha256:{}", "0".repeat(64)),
            "--kube-token",
            "not-a-token",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--kube-token: not a Kubernetes bootstrap token"),
        "{err}"
    );
}

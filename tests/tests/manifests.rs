//! `tether-hub manifests` (issue 7): what it prints parses as YAML
//! documents of the expected kinds and names; RBAC only with `--autonomy`,
//! and then exactly `cloudside/rbac.yaml`'s; the webhook registration from
//! `cloudside/webhook.yaml` with the CA `init` made; the ConfigMap's
//! hub.toml passes check-config and, with the Secret's files `init` made
//! in place of the pod's mounts, runs a hub; bad command lines exit 2.

use serde::Deserialize as _;
use serde_yaml::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;
use tether_tests::pki::Pki;
use tether_tests::procs::{bin, free_port, run, wait_http_ok, Proc};

fn hub(args: &[&str]) -> (i32, String, String) {
    run("tether-hub", args)
}

/// Prints the manifests, which must succeed.
fn manifests(args: &[&str]) -> String {
    let mut all = vec!["manifests"];
    all.extend_from_slice(args);
    let (code, out, err) = hub(&all);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    out
}

/// Every non-empty YAML document of `text`, as kubectl would read them.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_name(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().expect("kind").to_string(),
        v["metadata"]["name"].as_str().expect("name").to_string(),
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind_name(d) == (kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn shipped(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cloudside")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const RBAC_KINDS: [&str; 4] = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"];

/// The ConfigMap's hub.toml.
fn hub_toml(docs: &[Value]) -> String {
    find(docs, "ConfigMap", "tether-hub-config")["data"]["hub.toml"]
        .as_str()
        .expect("hub.toml")
        .to_string()
}

/// `--from-file` keys of the Secret command in the comments: what the
/// Secret will hold.
fn secret_keys(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("--from-file=")
        })
        .map(|f| {
            let f = f.trim_end_matches(" \\");
            match f.split_once('=') {
                Some((key, _)) => key.to_string(),
                None => Path::new(f)
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
            }
        })
        .collect()
}

fn service_ports(svc: &Value) -> Vec<(String, u64)> {
    svc["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name").to_string(),
                p["port"].as_u64().expect("port"),
            )
        })
        .collect()
}

#[test]
fn relay_only_objects_without_rbac() {
    let out = manifests(&[]);
    let docs = documents(&out);
    let names: Vec<(String, String)> = docs.iter().map(kind_name).collect();
    let expect = [
        ("Namespace", "tether-system"),
        ("ServiceAccount", "tether-hub"),
        ("ConfigMap", "tether-hub-config"),
        ("PersistentVolumeClaim", "tether-hub-state"),
        ("Deployment", "tether-hub"),
        ("Service", "tether-hub-link"),
        ("Service", "tether-hub"),
    ];
    assert_eq!(
        names,
        expect.map(|(k, n)| (k.to_string(), n.to_string())),
        "{out}"
    );
    for d in &docs[1..] {
        assert_eq!(d["metadata"]["namespace"].as_str(), Some("tether-system"));
    }
    assert!(!out.contains("PRIVATE KEY"));

    let pod = &find(&docs, "Deployment", "tether-hub")["spec"];
    assert_eq!(pod["replicas"].as_u64(), Some(1));
    let spec = &pod["template"]["spec"];
    assert_eq!(spec["serviceAccountName"].as_str(), Some("tether-hub"));
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some("/healthz"));
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("admin"));
    }
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"].as_str() == Some("tether-hub-pki")));
    assert!(volumes
        .iter()
        .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some("tether-hub-state")));
    // The container's ports are the ones hub.toml listens on.
    let toml = hub_toml(&docs);
    for (name, addr) in [
        ("link", "link = \"0.0.0.0:7443\""),
        ("egress", "listen = \"0.0.0.0:8131\""),
        ("admin", "admin = \"0.0.0.0:7080\""),
    ] {
        let port = c["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"));
        assert!(toml.contains(addr), "{toml}");
        assert!(addr.ends_with(&format!(":{port}\"")), "{name}");
    }
    assert!(!toml.contains("[autonomy]"));
    // Every file hub.toml names under the Secret's mount is in the Secret
    // the comments say to create.
    let keys = secret_keys(&out);
    assert_eq!(
        keys,
        [
            "ca.pem",
            "ca-key.pem",
            "hub.pem",
            "hub-key.pem",
            "egress-client-ca.pem"
        ]
    );
    for line in toml.lines().filter(|l| l.contains("/etc/tether-hub/pki/")) {
        let file = line.rsplit('/').next().expect("file").trim_end_matches('"');
        assert!(keys.iter().any(|k| k == file), "{line}");
    }

    let link = find(&docs, "Service", "tether-hub-link");
    assert_eq!(link["spec"]["type"].as_str(), Some("LoadBalancer"));
    assert_eq!(service_ports(link), [("link".to_string(), 7443)]);
    let inner = find(&docs, "Service", "tether-hub");
    assert_eq!(inner["spec"]["type"].as_str(), Some("ClusterIP"));
    assert_eq!(service_ports(inner), [("egress".to_string(), 8131)]);

    // The steps: the Secret, the egress selector and its flag, detach.
    assert!(out.contains("kubectl -n tether-system create secret generic tether-hub-pki"));
    assert!(out.contains("#      kind: EgressSelectorConfiguration\n"));
    assert!(out.contains("--egress-selector-config-file="));
    assert!(out.contains("tether-hub manifests | kubectl delete -f -"));

    // Flags change what they name, and nothing brings RBAC in.
    let other = manifests(&[
        "--namespace",
        "edge-sys",
        "--link-port",
        "443",
        "--service-type",
        "NodePort",
        "--image",
        "registry.example/tether-hub:1",
    ]);
    let docs = documents(&other);
    assert!(!other.contains("tether-system"));
    let link = find(&docs, "Service", "tether-hub-link");
    assert_eq!(link["spec"]["type"].as_str(), Some("NodePort"));
    assert_eq!(service_ports(link), [("link".to_string(), 443)]);
    assert!(hub_toml(&docs).contains("link = \"0.0.0.0:443\""));
    assert_eq!(
        find(&docs, "Deployment", "tether-hub")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str(),
        Some("registry.example/tether-hub:1")
    );
    for d in docs {
        let (kind, _) = kind_name(&d);
        assert!(!RBAC_KINDS.contains(&kind.as_str()), "{kind}");
    }
}

#[test]
fn autonomy_brings_exactly_the_shipped_rbac_and_webhook() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();
    let (code, _, err) = hub(&["init", "--dir", &dir_s, "--san", "localhost"]);
    assert_eq!(code, 0, "{err}");
    let ca = dir.join("ca.pem");

    // Without the CA: RBAC, but no webhook registration, and how to add it.
    let out = manifests(&["--autonomy"]);
    let docs = documents(&out);
    let rbac: Vec<Value> = documents(&shipped("rbac.yaml"));
    for want in &rbac {
        let (kind, name) = kind_name(want);
        assert_eq!(find(&docs, &kind, &name), want, "{kind} {name}");
    }
    let ours: Vec<(String, String)> = docs
        .iter()
        .map(kind_name)
        .filter(|(k, _)| RBAC_KINDS.contains(&k.as_str()))
        .collect();
    assert_eq!(ours.len(), rbac.len() - 1, "only rbac.yaml's: {ours:?}");
    assert!(!docs
        .iter()
        .any(|d| d["kind"].as_str() == Some("MutatingWebhookConfiguration")));
    assert!(out.contains("--webhook-ca /var/lib/tether-hub/ca.pem"));
    let spec = &find(&docs, "Deployment", "tether-hub")["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(true));
    assert!(hub_toml(&docs)
        .contains("token_file = \"/var/run/secrets/kubernetes.io/serviceaccount/token\""));
    assert_eq!(
        service_ports(find(&docs, "Service", "tether-hub")),
        [("egress".to_string(), 8131), ("webhook".to_string(), 443)]
    );

    // With the CA: webhook.yaml's object, caBundle the CA file.
    let out = manifests(&["--autonomy", "--webhook-ca", &ca.to_string_lossy()]);
    let docs = documents(&out);
    let mwc = find(
        &docs,
        "MutatingWebhookConfiguration",
        "tether-offline-autonomy",
    );
    let bundle = mwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle");
    assert_eq!(
        tether_link::der::unbase64(bundle).expect("base64"),
        std::fs::read(&ca).expect("ca.pem")
    );
    let mut want = documents(&shipped("webhook.yaml")).remove(0);
    want["webhooks"][0]["clientConfig"]["caBundle"] = Value::String(bundle.to_string());
    assert_eq!(mwc, &want);

    // Another namespace: the same rules, bound to the ServiceAccount there.
    let out = manifests(&["--autonomy", "--namespace", "edge-sys"]);
    let docs = documents(&out);
    for want in &rbac {
        let (kind, name) = kind_name(want);
        let got = find(&docs, &kind, &name);
        if kind.ends_with("Binding") {
            assert_eq!(got["roleRef"], want["roleRef"]);
            assert_eq!(got["subjects"][0]["namespace"].as_str(), Some("edge-sys"));
        } else if kind.ends_with("Role") {
            assert_eq!(got["rules"], want["rules"], "{kind} {name}");
        }
    }
}

/// hub.toml with the pod's mounts replaced by `init`'s files in `dir`,
/// `sa` for the ServiceAccount, and every listener on a free loopback port.
fn localize(toml: &str, dir: &Path, sa: &Path) -> (String, SocketAddr) {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut t = toml
        .replace("/etc/tether-hub/pki/", &format!("{}/", dir.display()))
        .replace("/var/lib/tether-hub", &dir.display().to_string())
        .replace(
            "/var/run/secrets/kubernetes.io/serviceaccount/",
            &format!("{}/", sa.display()),
        )
        .replace("0.0.0.0:7080", &admin.to_string())
        .replace("kubernetes.default.svc:443", "127.0.0.1:1");
    for port in ["7443", "8131", "8443"] {
        t = t.replace(
            &format!("0.0.0.0:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    assert!(!t.contains("0.0.0.0"), "{t}");
    (t, admin)
}

#[test]
fn the_config_map_runs_a_hub_with_the_secrets_files() {
    let scratch = Pki::new();
    let dir = scratch.dir.join("state");
    let dir_s = dir.to_string_lossy().into_owned();
    let (code, _, err) = hub(&["init", "--dir", &dir_s, "--san", "localhost"]);
    assert_eq!(code, 0, "{err}");
    // The Secret's fourth file (kube-apiserver's client CA) and the
    // ServiceAccount's files, stand-ins for the test.
    std::fs::copy(&scratch.ca, dir.join("egress-client-ca.pem")).expect("copy");
    let sa: PathBuf = scratch.dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).expect("sa dir");
    std::fs::copy(&scratch.ca, sa.join("ca.crt")).expect("copy");
    std::fs::write(sa.join("token"), "a-service-account-token\n").expect("token");

    for flags in [&[][..], &["--autonomy"][..]] {
        let toml = hub_toml(&documents(&manifests(flags)));
        // As printed, the file passes check-config.
        let file = scratch.write("manifests-hub.toml", &toml);
        let (code, out, err) = hub(&["check-config", &file.to_string_lossy()]);
        assert_eq!(code, 0, "{flags:?}: {out}{err}\n{toml}");

        // And with the files in place, the hub runs on it.
        let (local, admin) = localize(&toml, &dir, &sa);
        let file = scratch.write("manifests-hub-local.toml", &local);
        let mut p = Proc::start(
            "hub",
            &bin("tether-hub"),
            &["--config", &file.to_string_lossy()],
        );
        assert!(
            wait_http_ok(admin, "/healthz", Duration::from_secs(20)),
            "{flags:?}: the hub did not come up:\n{}\n{local}",
            p.logs()
        );
        p.stop();
    }
}

#[test]
fn bad_command_lines_exit_2() {
    for (args, names) in [
        (
            &["manifests", "--service-type", "ClusterIP"][..],
            "--service-type",
        ),
        (
            &["manifests", "--namespace", "Not_A_Name"][..],
            "--namespace",
        ),
        (&["manifests", "--link-port", "99999"][..], "--link-port"),
        (&["manifests", "--link-port"][..], "--link-port needs"),
        (&["manifests", "--webhook-ca", "ca.pem"][..], "--autonomy"),
        (&["manifests", "--frobnicate"][..], "--frobnicate"),
    ] {
        let (code, out, err) = hub(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(err.contains("tether-hub --help"), "{args:?}: {err}");
    }
    // A CA file that is not there, or not a certificate: 1, named.
    let scratch = Pki::new();
    let missing = scratch.dir.join("missing.pem");
    let (code, out, err) = hub(&[
        "manifests",
        "--autonomy",
        "--webhook-ca",
        &missing.to_string_lossy(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("missing.pem"), "{err}");
    let (code, _, err) = hub(&[
        "manifests",
        "--autonomy",
        "--webhook-ca",
        &scratch.hub_key.to_string_lossy(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a PEM certificate"), "{err}");
    // The command is in the help.
    let (code, out, _) = hub(&["manifests", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("tether-hub manifests [--namespace NS]"),
        "{out}"
    );
}

//! The programs' command lines: --help explains, check-config names every
//! error with its line and key, bad arguments and configs fail clearly.

use std::process::Command;
use tether_tests::pki::Pki;
use tether_tests::procs::bin;

fn run(program: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(program)).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_section() {
    let (code, out, _) = run("tether-edge", &["--help"]);
    assert_eq!(code, 0);
    for key in [
        "[hub]",
        "[link]",
        "keepalive",
        "[services]",
        "[[forward]]",
        "check-config",
        "broker",
    ] {
        assert!(out.contains(key), "edge --help lacks {key}");
    }
    let (code, out, _) = run("tether-hub", &["--help"]);
    assert_eq!(code, 0);
    for key in [
        "[listen]",
        "[tls]",
        "[auth]",
        "[limits]",
        "[broker]",
        "[upstream.NAME]",
        "[egress]",
        "egress-config",
        "[[expose]]",
    ] {
        assert!(out.contains(key), "hub --help lacks {key}");
    }
}

#[test]
fn check_config_names_every_error() {
    let pki = Pki::new();
    let good = pki.write(
        "edge-good.toml",
        "node = \"edge-1\"\n[hub]\naddress = \"127.0.0.1:7443\"\nplaintext = true\n",
    );
    let (code, out, _) = run("tether-edge", &["check-config", &good.to_string_lossy()]);
    assert_eq!(code, 0, "{out}");
    let bad = pki.write(
        "edge-bad.toml",
        "node = \"edge-1\"\n[hub]\naddress = \"127.0.0.1\"\nplaintext = true\n[link]\nkeepalive = 30\nkeepalvie = \"30s\"\n",
    );
    let (code, _, err) = run("tether-edge", &["check-config", &bad.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 3: hub.address"), "{err}");
    assert!(err.contains("line 6: link.keepalive"), "{err}");
    assert!(err.contains("line 7: link.keepalvie: unknown key"), "{err}");
    let hub = pki.write("hub-bad.toml", "[listen]\nadmin = \"127.0.0.1:1\"\n");
    let (code, _, err) = run("tether-hub", &["check-config", &hub.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("listen.link"), "{err}");
}

#[test]
fn bad_arguments_and_files_fail_clearly() {
    let (code, _, err) = run("tether-edge", &["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown argument") && err.contains("--help"),
        "{err}"
    );
    // A config that cannot work exits 78 (EX_CONFIG): the systemd unit
    // does not restart on it, since a restart cannot fix the file.
    let (code, _, err) = run("tether-hub", &["--config", "/nonexistent/hub.toml"]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/hub.toml: cannot read"), "{err}");
    let dir = std::env::temp_dir().join(format!("tether-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("edge.toml");
    std::fs::write(
        &bad,
        "node = \"edge-1\"\n[hub]\naddress = \"127.0.0.1:1\"\ncolour = 1\n",
    )
    .expect("write");
    let (code, _, err) = run("tether-edge", &["run", "--config", &bad.to_string_lossy()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("hub.colour: unknown key"), "{err}");
}

#[test]
fn the_hub_prints_kube_apiservers_egress_config() {
    let pki = Pki::new();
    let config = pki.write(
        "egress-hub.toml",
        "[listen]\nlink = \"127.0.0.1:7443\"\n[tls]\ncert = \"hub.pem\"\nkey = \"hub-key.pem\"\n[auth]\ntoken_file = \"tokens\"\n[egress]\nlisten = \"10.0.0.5:8131\"\ncert = \"hub.pem\"\nkey = \"hub-key.pem\"\nclient_ca = \"ca.pem\"\n",
    );
    let config = config.to_string_lossy().into_owned();
    let (code, out, err) = run("tether-hub", &["egress-config", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "kind: EgressSelectorConfiguration",
        "proxyProtocol: HTTPConnect",
        "url: https://10.0.0.5:8131",
        "--egress-selector-config-file=",
        "--kubelet-preferred-address-types=Hostname",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    // Without an [egress] there is nothing to print, and it says so.
    let plain = pki.write(
        "plain-hub.toml",
        "[listen]\nlink = \"127.0.0.1:7443\"\n[tls]\ncert = \"hub.pem\"\nkey = \"hub-key.pem\"\n[auth]\ntoken_file = \"tokens\"\n",
    );
    let plain = plain.to_string_lossy().into_owned();
    let (code, _, err) = run("tether-hub", &["egress-config", "-c", &plain]);
    assert_eq!(code, 1);
    assert!(err.contains("no [egress]"), "{err}");
}

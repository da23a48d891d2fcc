//! `cross/install`, the one command that puts tether-edge onto a running
//! Raspberry Pi OS or Debian board without Yocto (issue 5): run here with
//! `--root` into a temporary folder laid out like the board, and with the
//! host's own binary standing in for the board's cross build, so it needs
//! no cross toolchain. What lands is what the board gets over `--ssh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tether_tests::procs::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Runs cross/install with `args`; (exit status, stdout + stderr).
fn install(args: &[&str]) -> (i32, String) {
    let edge = bin("tether-edge");
    let out = Command::new(repo().join("cross/install"))
        .args(args)
        .env("TETHER_EDGE", &edge)
        .output()
        .expect("run cross/install");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_fleet_node_lands_as_the_board_expects_it() {
    let root = std::env::temp_dir().join(format!("tether-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let edge = bin("tether-edge");
    let fleet = repo().join("board-configs/fleets/greenhouse.toml");
    let (code, out) = install(&[
        "--board",
        "rpi-zero-w",
        "--fleet",
        &fleet.to_string_lossy(),
        "--node",
        "gh-bench-01",
        "--root",
        &root.to_string_lossy(),
        "--binary",
        &edge.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("MemoryMax=48M"), "{out}");

    let binary = root.join("usr/bin/tether-edge");
    assert_eq!(mode(&binary), 0o755);
    let config = root.join("etc/tether/edge.toml");
    assert_eq!(
        mode(&config),
        0o600,
        "the config names key files: owner only"
    );
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("node = \"gh-bench-01\""), "{text}");
    let check = Command::new(&binary)
        .args(["check-config", &config.to_string_lossy()])
        .output()
        .expect("check-config");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/tether-edge.service")).expect("unit");
    assert!(unit.lines().any(|l| l == "MemoryMax=48M"), "{unit}");
    assert!(unit.contains("ExecStart=/usr/bin/tether-edge run --config /etc/tether/edge.toml"));
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=78"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn mistakes_are_named_before_anything_is_installed() {
    let root = std::env::temp_dir().join(format!("tether-install-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let r = root.to_string_lossy().into_owned();

    let (code, out) = install(&["--board", "rpi-9", "--root", &r]);
    assert_eq!(code, 1);
    assert!(
        out.contains("no board rpi-9") && out.contains("rpi-zero-w"),
        "{out}"
    );

    let (code, out) = install(&["--board", "rpi-3", "--fleet", "x.toml", "--root", &r]);
    assert_eq!(code, 1);
    assert!(out.contains("--fleet needs --node"), "{out}");

    let (code, out) = install(&["--board", "rpi-3"]);
    assert_eq!(code, 1);
    assert!(out.contains("--ssh USER@HOST or --root DIR"), "{out}");

    // A config with an unknown key is refused with check-config's words.
    let bad = std::env::temp_dir().join(format!("tether-install-bad-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "node = \"n1\"\n[hub]\naddress = \"hub:7443\"\ncolour = 1\n",
    )
    .expect("write");
    let edge = bin("tether-edge");
    let (code, out) = install(&[
        "--board",
        "rpi-3",
        "--config",
        &bad.to_string_lossy(),
        "--root",
        &r,
        "--binary",
        &edge.to_string_lossy(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hub.colour: unknown key"), "{out}");
    assert!(!root.exists(), "something was installed");
    let _ = std::fs::remove_file(&bad);
}

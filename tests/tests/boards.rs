//! The shipped board configs and fleet files, through the real binary: every
//! file in board-configs/boards and board-configs/fleets passes
//! `tether-edge check-config` (a new file is picked up on its own), every
//! node of every fleet renders to a config that check-config accepts, and
//! mistakes in these files are named with file, line and key.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use tether_edge::{config, fleet};
use tether_tests::pki::Pki;
use tether_tests::procs::bin;

/// The board models issue 5 asks a config for, with the Rust target of each.
const BOARDS: &[(&str, &str)] = &[
    ("rpi-zero-w", "arm-unknown-linux-musleabihf"),
    ("rpi-1", "arm-unknown-linux-musleabihf"),
    ("rpi-zero-2-w", "aarch64-unknown-linux-musl"),
    ("rpi-3", "aarch64-unknown-linux-musl"),
    ("rpi-4", "aarch64-unknown-linux-musl"),
    ("rpi-5", "aarch64-unknown-linux-musl"),
    ("rpi-2", "armv7-unknown-linux-musleabihf"),
    ("rpi-3-32", "armv7-unknown-linux-musleabihf"),
    ("udoo-neo", "armv7-unknown-linux-musleabihf"),
    ("udoo-quad", "armv7-unknown-linux-musleabihf"),
    ("udoo-dual", "armv7-unknown-linux-musleabihf"),
    ("udoo-x86-ii", "x86_64-unknown-linux-musl"),
    ("udoo-bolt", "x86_64-unknown-linux-musl"),
];

/// Runs tether-edge with `args`: exit code, stdout, stderr.
fn edge(args: &[&Path]) -> (i32, String, String) {
    let out = Command::new(bin("tether-edge"))
        .args(args)
        .output()
        .expect("run tether-edge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_config(file: &Path) -> (i32, String, String) {
    edge(&[Path::new("check-config"), file])
}

fn render_config(fleet: &Path, node: &str) -> (i32, String, String) {
    edge(&[Path::new("render-config"), fleet, Path::new(node)])
}

/// board-configs/<folder>.
fn shipped(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../board-configs")
        .join(folder)
}

/// Every `.toml` file in `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_board_file_passes_check_config() {
    let files = toml_files(&shipped("boards"));
    for file in &files {
        let (code, out, err) = check_config(file);
        assert_eq!(code, 0, "{}: {out}{err}", file.display());
        // The model is the file's name: fleets and the image build find the
        // board by it.
        let text = fs::read_to_string(file).expect("board file");
        let cfg = config::parse(&text, Path::new("/etc/tether")).expect("valid");
        let board = cfg
            .board
            .unwrap_or_else(|| panic!("{}: no [board]", file.display()));
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        assert_eq!(board.model, stem, "{}", file.display());
        assert!(board.memory_max > cfg.proxy.memory_budget);
        // The image build reads this line as text.
        assert!(
            text.lines().any(|l| l.starts_with("memory_max = \"")),
            "{}: memory_max is not on a line of its own",
            file.display()
        );
    }
    for (model, target) in BOARDS {
        let file = shipped("boards").join(format!("{model}.toml"));
        assert!(files.contains(&file), "no board file for {model}");
        let text = fs::read_to_string(&file).expect("board file");
        let cfg = config::parse(&text, Path::new("/etc/tether")).expect("valid");
        assert_eq!(cfg.board.map(|b| b.target).as_deref(), Some(*target));
    }
}

#[test]
fn every_fleet_passes_and_every_node_renders_to_a_valid_config() {
    let fleets = toml_files(&shipped("fleets"));
    assert!(!fleets.is_empty(), "no fleet files");
    let out_dir = Pki::new();
    for fleet_file in &fleets {
        let (code, out, err) = check_config(fleet_file);
        assert_eq!(code, 0, "{}: {out}{err}", fleet_file.display());
        let fleet = fleet::Fleet::read(fleet_file, &fleet::default_boards(fleet_file))
            .unwrap_or_else(|e| panic!("{e}"));
        for node in fleet.node_names() {
            let (code, text, err) = render_config(fleet_file, node);
            assert_eq!(code, 0, "{} {node}: {err}", fleet_file.display());
            assert!(text.contains(&format!("\nnode = \"{node}\"\n")), "{text}");
            assert!(
                !text.contains("example.invalid"),
                "placeholder left:\n{text}"
            );
            let rendered = out_dir.write(&format!("{node}.toml"), &text);
            let (code, out, err) = check_config(&rendered);
            assert_eq!(code, 0, "{node}: {out}{err}\n{text}");
        }
    }
}

/// A boards/ and fleets/ pair in a temporary folder: the shipped Pi Zero W
/// file, changed by `board`, and a two-node fleet, changed by `fleet`.
struct Site {
    _dir: Pki,
    board: PathBuf,
    fleet: PathBuf,
}

fn site(board: impl Fn(String) -> String, fleet: &str) -> Site {
    let dir = Pki::new();
    fs::create_dir_all(dir.dir.join("boards")).expect("boards folder");
    fs::create_dir_all(dir.dir.join("fleets")).expect("fleets folder");
    let shipped_board =
        fs::read_to_string(shipped("boards").join("rpi-zero-w.toml")).expect("rpi-zero-w.toml");
    let board_path = dir.dir.join("boards/rpi-zero-w.toml");
    fs::write(&board_path, board(shipped_board)).expect("board file");
    let fleet_path = dir.dir.join("fleets/site.toml");
    fs::write(&fleet_path, fleet).expect("fleet file");
    Site {
        _dir: dir,
        board: board_path,
        fleet: fleet_path,
    }
}

const FLEET: &str = "\
site = \"test\"
[hub]
address = \"hub.test.example:7443\"

[[node]]
name = \"t-1\"
board = \"rpi-zero-w\"

[[node]]
name = \"t-2\"
board = \"rpi-zero-w\"
";

/// The line `needle` starts on in `text`, from 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the file"))
        + 1
}

#[test]
fn mistakes_are_named_with_file_line_and_key() {
    // An unknown key in a board file: check-config on the board file and on
    // a fleet using it both name it.
    let s = site(
        |b| b.replace("max_batch = \"32KiB\"", "max_batch = \"32KiB\"\nmtu = 1400"),
        FLEET,
    );
    let line = line_of(&fs::read_to_string(&s.board).expect("board"), "mtu");
    let (code, _, err) = check_config(&s.board);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("line {line}: link.mtu: unknown key")),
        "{err}"
    );
    let (code, _, err) = check_config(&s.fleet);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "boards/rpi-zero-w.toml: line {line}: link.mtu: unknown key"
        )),
        "{err}"
    );
    let (code, _, err) = render_config(&s.fleet, "t-2");
    assert_eq!(code, 1);
    assert!(err.contains(&format!("line {line}: link.mtu")), "{err}");

    // An unknown node: the known ones are listed.
    let s = site(|b| b, FLEET);
    let (code, out, err) = render_config(&s.fleet, "t-3");
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("site.toml: no node \"t-3\" in this fleet; its nodes are: t-1, t-2"),
        "{err}"
    );

    // memory_max at or below the budget, in the board file and through a
    // node's override of the budget.
    let s = site(
        |b| b.replace("memory_max = \"48MiB\"", "memory_max = \"12MiB\""),
        FLEET,
    );
    let line = line_of(&fs::read_to_string(&s.board).expect("board"), "memory_max");
    let (code, _, err) = check_config(&s.board);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "line {line}: board.memory_max: 12MiB must be larger than proxy.memory_budget (16MiB)"
        )),
        "{err}"
    );
    let s = site(
        |b| b,
        &format!("{FLEET}[node.proxy]\nmemory_budget = \"64MiB\"\n"),
    );
    let line = line_of(&fs::read_to_string(&s.board).expect("board"), "memory_max");
    let (code, _, err) = check_config(&s.fleet);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "rpi-zero-w.toml: line {line}: board.memory_max: 48MiB must be larger than proxy.memory_budget (64MiB)"
        )) && err.contains("(node t-2)"),
        "{err}"
    );

    // Mistakes in the fleet itself: an unknown key in a node's entry, an
    // unknown board, a duplicate name.
    let s = site(
        |b| b,
        &FLEET
            .replacen(
                "board = \"rpi-zero-w\"",
                "board = \"rpi-zero-w\"\ncolor = \"red\"",
                1,
            )
            .replace(
                "name = \"t-2\"\nboard = \"rpi-zero-w\"",
                "name = \"t-2\"\nboard = \"rpi-6\"",
            ),
    );
    let (code, _, err) = check_config(&s.fleet);
    assert_eq!(code, 1);
    assert!(
        err.contains("site.toml: line 8: node[0].color: unknown key"),
        "{err}"
    );
    assert!(
        err.contains("site.toml: line 12: node[1].board: unknown board \"rpi-6\"")
            && err.contains("the boards are: rpi-zero-w"),
        "{err}"
    );
    let s = site(|b| b, &FLEET.replace("t-2", "t-1"));
    let (code, _, err) = render_config(&s.fleet, "t-1");
    assert_eq!(code, 1);
    assert!(
        err.contains("site.toml: line 10: node[1].name: duplicate node name \"t-1\""),
        "{err}"
    );
}

#[test]
fn render_config_command_line() {
    let fleet = shipped("fleets").join("greenhouse.toml");
    // --boards names the folder; a wrong one makes every board unknown.
    let (code, text, err) = edge(&[
        Path::new("render-config"),
        &fleet,
        Path::new("gh-bench-01"),
        Path::new("--boards"),
        &shipped("boards"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("model = \"rpi-zero-w\""), "{text}");
    let (code, _, err) = edge(&[
        Path::new("render-config"),
        &fleet,
        Path::new("gh-bench-01"),
        Path::new("--boards"),
        &shipped("fleets"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("node[0].board: unknown board \"rpi-zero-w\""),
        "{err}"
    );
    for bad in [
        &[Path::new("render-config")][..],
        &[Path::new("render-config"), &fleet],
        &[
            Path::new("render-config"),
            &fleet,
            Path::new("a"),
            Path::new("--boards"),
        ],
        &[
            Path::new("render-config"),
            &fleet,
            Path::new("a"),
            Path::new("--colour"),
        ],
    ] {
        let (code, _, err) = edge(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("--help"), "{err}");
    }
}

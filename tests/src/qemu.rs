//! Cross-built `tether-edge` binaries run under qemu-user, for the tests that
//! check each board's build works, not only that it compiles.
//!
//! [`Emulated`] names a Rust target, the qemu-user program that runs it and
//! the CPU to emulate: the oldest core the build is for, so an instruction a
//! board lacks (an ARMv7 one in the ARMv6 build) fails the test with SIGILL
//! as it would on the board. [`Emulated::edge_command`] builds the binaries
//! with `cross/build` (once per test process; cargo makes an up-to-date build
//! a quick no-op) and returns the command that starts the edge, for
//! [`crate::fleet::start_with`].

use crate::fleet::EdgeCommand;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// ELF `e_machine` of 32-bit ARM.
const EM_ARM: u16 = 40;
/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;

/// What to run when a tool is missing.
const INSTALL_HINT: &str = "run `cross/build --install-deps` (or `.ci/run`) first";

/// One cross target as qemu-user runs it.
#[derive(Debug, Clone, Copy)]
pub struct Emulated {
    /// The Rust target `cross/build` builds.
    pub target: &'static str,
    /// The boards the build is for (for messages).
    pub boards: &'static str,
    /// The qemu-user program (Debian's `qemu-user-static`).
    pub qemu: &'static str,
    /// The CPU qemu emulates: the oldest the boards have.
    pub cpu: &'static str,
    /// Where the target's dynamic loader and libc are (Debian's cross
    /// `libc6-*-cross`), for a dynamically linked build; `None` if static.
    pub sysroot: Option<&'static str>,
    /// The ELF machine the binary must be for: proves qemu, not the host,
    /// runs it.
    pub machine: u16,
}

/// 64-bit Raspberry Pis (3/4/5, Zero 2 W): glibc build, Cortex-A53.
pub const AARCH64: Emulated = Emulated {
    target: "aarch64-unknown-linux-gnu",
    boards: "Pi 3/4/5, Pi Zero 2 W",
    qemu: "qemu-aarch64-static",
    cpu: "cortex-a53",
    sysroot: Some("/usr/aarch64-linux-gnu"),
    machine: EM_AARCH64,
};

/// 32-bit ARMv7 with NEON (Pi 2/3, UDOO i.MX6): glibc Thumb-2 build, Cortex-A9.
pub const ARMV7: Emulated = Emulated {
    target: "thumbv7neon-unknown-linux-gnueabihf",
    boards: "Pi 2/3 32-bit, UDOO Neo/Quad/Dual",
    qemu: "qemu-arm-static",
    cpu: "cortex-a9",
    sysroot: Some("/usr/arm-linux-gnueabihf"),
    machine: EM_ARM,
};

/// ARMv6 (Pi Zero W, Pi 1): static musl build, ARM1176.
pub const ARMV6: Emulated = Emulated {
    target: "arm-unknown-linux-musleabihf",
    boards: "Pi Zero W, Pi 1",
    qemu: "qemu-arm-static",
    cpu: "arm1176",
    sysroot: None,
    machine: EM_ARM,
};

/// 64-bit boards on any OS: static musl build, Cortex-A53 (what the board
/// files name; not in CI: its build takes minutes more, see cross/README.md).
pub const AARCH64_MUSL: Emulated = Emulated {
    target: "aarch64-unknown-linux-musl",
    boards: "Pi 3/4/5, Pi Zero 2 W, any OS",
    qemu: "qemu-aarch64-static",
    cpu: "cortex-a53",
    sysroot: None,
    machine: EM_AARCH64,
};

/// 32-bit ARMv7 boards on any OS: static musl build (std built from
/// source), Cortex-A9 (what the board files name; not in CI).
pub const ARMV7_MUSL: Emulated = Emulated {
    target: "armv7-unknown-linux-musleabihf",
    boards: "Pi 2/3 32-bit, UDOO Neo/Quad/Dual, any OS",
    qemu: "qemu-arm-static",
    cpu: "cortex-a9",
    sysroot: None,
    machine: EM_ARM,
};

/// The targets the qemu tests run, built together by one `cross/build` call.
pub const TESTED: [Emulated; 3] = [AARCH64, ARMV7, ARMV6];

impl Emulated {
    /// The command that starts this target's edge under qemu, after building
    /// it with `cross/build` if it is missing or stale.
    ///
    /// # Panics
    ///
    /// With what to install if qemu, the cross toolchains or the target's
    /// loader are missing, or if the build fails: a test that cannot run
    /// the board's binary must fail, never pass by skipping.
    pub fn edge_command(&self) -> EdgeCommand {
        let qemu = find_on_path(self.qemu).unwrap_or_else(|| {
            panic!(
                "qemu: {} (Debian qemu-user-static) is not on PATH; {INSTALL_HINT}",
                self.qemu
            )
        });
        if let Some(root) = self.sysroot {
            assert!(
                Path::new(root).join("lib").is_dir(),
                "qemu: {root}/lib (the {} libc for qemu's -L) is missing; {INSTALL_HINT}",
                self.target
            );
        }
        let edge = cross_edge(self.target);
        let machine =
            elf_machine(&edge).unwrap_or_else(|e| panic!("qemu: reading {}: {e}", edge.display()));
        assert_eq!(
            machine,
            self.machine,
            "qemu: {} is not an ELF for {} (e_machine {machine})",
            edge.display(),
            self.target
        );
        let mut args = vec!["-cpu".to_string(), self.cpu.to_string()];
        if let Some(root) = self.sysroot {
            args.extend(["-L".to_string(), root.to_string()]);
        }
        args.push(edge.to_string_lossy().into_owned());
        EdgeCommand {
            program: qemu,
            args,
        }
    }
}

/// The binary `cross/build` made for `target`, built (with every target of
/// [`TESTED`], in one call) the first time any is asked for in this process.
///
/// The build goes to the target directory this test executable was built
/// into (`target/` by default), like [`crate::procs::bin`]'s.
///
/// # Panics
///
/// If `cross/build` fails (its own message says what is missing) or the
/// binary is not where it says it puts it.
pub fn cross_edge(target: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let target_dir = match BUILT.get_or_init(build_tested) {
        Ok(dir) => dir,
        Err(e) => panic!("qemu: {e}"),
    };
    let path = target_dir.join("cross").join(target).join("tether-edge");
    assert!(
        path.is_file(),
        "qemu: {} is missing after cross/build; is {target} in tests::qemu::TESTED?",
        path.display()
    );
    path
}

/// Runs `cross/build` for every [`TESTED`] target; the target directory.
fn build_tested() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests crate has no workspace folder")?
        .to_path_buf();
    let target_dir = target_dir()?;
    let script = workspace.join("cross").join("build");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(TESTED.iter().map(|t| t.target))
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null());
    eprintln!("qemu: building the cross binaries: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if status.success() {
        Ok(target_dir)
    } else {
        Err(format!(
            "{cmd:?} exited with {status}; its output above says why. If a tool is missing, \
             {INSTALL_HINT}"
        ))
    }
}

/// The target directory this executable was built into: it is
/// `<target dir>/<profile>/deps/<test>` (or `<target dir>/<profile>/<bin>`).
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = exe.parent().ok_or("the test executable has no folder")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().ok_or("deps has no parent folder")?;
    }
    dir.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent folder", dir.display()))
}

/// `name`'s path in a folder of `PATH`, if it is there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The `e_machine` field of an ELF file's header.
fn elf_machine(path: &Path) -> std::io::Result<u16> {
    let mut head = [0u8; 20];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    if &head[..4] != b"\x7fELF" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an ELF file",
        ));
    }
    // Every target here is little-endian (EI_DATA 1), so the field is too.
    Ok(u16::from_le_bytes([head[18], head[19]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn elf_machine_reads_the_host_binary() {
        let exe = std::env::current_exe().expect("current_exe");
        // EM_X86_64.
        assert_eq!(elf_machine(&exe).expect("an ELF"), 62);
    }

    #[test]
    fn elf_machine_refuses_what_is_no_elf() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(elf_machine(&manifest).is_err());
    }
}

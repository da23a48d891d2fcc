//! Running the real `tether-hub` / `tether-edge` binaries from tests, and talking HTTP to them.
//!
//! [`bin`] finds (building once if needed) a workspace binary next to the test executable.
//! [`Proc`] owns one running child process: its stdout and stderr are captured line by line
//! into an in-memory log that tests search ([`Proc::wait_for_log`], [`Proc::count_log`]),
//! and each line is echoed to the test's stderr with the process label, so
//! `cargo test -- --nocapture` shows what the binaries said. A `Proc` is killed on drop.
//! [`free_port`], [`http_get`] and [`wait_http_ok`] are small helpers for the binaries'
//! listeners and HTTP endpoints; they only ever use loopback addresses (`127.0.0.0/8`).

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often [`Proc::wait_for_log`] looks at the log again.
const LOG_POLL: Duration = Duration::from_millis(20);

/// How long [`Proc::stop`] gives a process to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long stopping waits for the pipe reader threads to drain the last lines.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Connect, read and write timeout of [`http_get`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`wait_http_ok`] retries.
const HTTP_POLL: Duration = Duration::from_millis(50);

/// Path of workspace binary `name` (`tether-hub`, `tether-edge`), built fresh once per run.
///
/// Binaries live in the target profile directory, two levels above the test executable
/// (`target/debug/deps/<test>` → `target/debug/<name>`). The first call in a test process
/// runs `cargo build -p tether-hub -p tether-edge --bins` (using `$CARGO`, else `cargo`)
/// into that same target directory and profile, so tests never run a stale binary even
/// when only this crate's tests were built; when the binaries are up to date that build
/// is a no-op of about a second. If cargo cannot be started at all, an existing binary is
/// used as is.
///
/// # Panics
///
/// Panics with a clear message if the build fails or the binary is still missing.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: OnceLock<Result<(), BuildError>> = OnceLock::new();
    let exe = std::env::current_exe().expect("procs: current_exe");
    // Test executables live in target/<profile>/deps, benchmark programs
    // in target/<profile> itself.
    let dir = exe
        .parent()
        .expect("procs: executable has no parent folder");
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("procs: deps folder has no parent")
    } else {
        dir
    }
    .to_path_buf();
    let path = profile_dir.join(name);
    match BUILD.get_or_init(|| build_bins(&profile_dir)) {
        Ok(()) => {}
        Err(BuildError::NoCargo(e)) if path.is_file() => {
            eprintln!(
                "procs: cannot run cargo ({e}); using {} as is",
                path.display()
            );
        }
        Err(e) => panic!("procs: building {name} failed: {e}"),
    }
    assert!(
        path.is_file(),
        "procs: {} is missing even after `cargo build -p tether-hub -p tether-edge --bins`; \
         is `{name}` a binary of the workspace?",
        path.display()
    );
    path
}

/// Runs the workspace binary `name` with `args` to completion: (exit
/// status, or -1 on a signal; stdout; stderr).
///
/// # Panics
///
/// If the binary cannot be started.
pub fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Why [`build_bins`] did not build.
#[derive(Debug, Clone)]
enum BuildError {
    /// Cargo could not be started (not installed, not on `PATH`).
    NoCargo(String),
    /// Cargo ran and failed: the binaries do not compile.
    Failed(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::NoCargo(e) => write!(f, "cannot run cargo: {e}"),
            BuildError::Failed(e) => f.write_str(e),
        }
    }
}

/// Builds the hub and edge binaries into the target directory `profile_dir` belongs to.
fn build_bins(profile_dir: &Path) -> Result<(), BuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|ws| ws.join("Cargo.toml"))
        .ok_or_else(|| BuildError::Failed("tests crate has no workspace directory".into()))?;
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "tether-hub", "-p", "tether-edge", "--bins"])
        .arg("--manifest-path")
        .arg(&manifest);
    // `target/<profile>`: build the same profile into the same target directory (`debug`
    // is the `dev` profile; custom profiles such as `bench-release` have their own
    // folder). `--target <triple>` layouts fall back to cargo's defaults.
    let profile = profile_dir.file_name().and_then(|s| s.to_str());
    if let (Some(p), Some(target_dir)) = (profile, profile_dir.parent()) {
        if p != "debug" {
            cmd.arg("--profile").arg(p);
        }
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("procs: building binaries: {cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| BuildError::NoCargo(format!("{cargo:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(format!("{cmd:?} exited with {status}")))
    }
}

/// A running child process whose output is captured; killed when dropped.
///
/// Tests start the hub or edge with [`Proc::start`], wait for log lines that say what
/// happened, and stop it gracefully ([`Proc::stop`]) or abruptly ([`Proc::kill`]).
pub struct Proc {
    label: String,
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// Set once the exit has been seen and the readers drained, so that is done only once.
    reaped: bool,
}

impl Proc {
    /// Starts `bin` with `args`; `label` prefixes its echoed output lines (e.g. `hub`).
    ///
    /// Stdin is closed; stdout and stderr both go to the shared log.
    ///
    /// # Panics
    ///
    /// Panics if the process cannot be started.
    pub fn start(label: &str, bin: &Path, args: &[&str]) -> Proc {
        Proc::start_with_env(label, bin, args, &[])
    }

    /// Like [`Proc::start`], with extra environment variables (e.g. `RUST_LOG`) set.
    ///
    /// # Panics
    ///
    /// Panics if the process cannot be started.
    pub fn start_with_env(label: &str, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("procs: starting {label} ({}): {e}", bin.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(label, out, &log));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(label, err, &log));
        }
        Proc {
            label: label.to_string(),
            child,
            log,
            readers,
            reaped: false,
        }
    }

    /// Everything the process printed so far, stdout and stderr interleaved by line.
    pub fn logs(&self) -> String {
        lock(&self.log).clone()
    }

    /// Waits until the log contains `needle`; false if it did not within `timeout`.
    ///
    /// Lines already printed count, so call it after the action that causes the line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.log).contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(LOG_POLL);
        }
    }

    /// Number of (non-overlapping) occurrences of `needle` in the log so far.
    pub fn count_log(&self, needle: &str) -> usize {
        if needle.is_empty() {
            return 0;
        }
        lock(&self.log).matches(needle).count()
    }

    /// Kills the process at once (SIGKILL) and reaps it, like a power cut.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("procs: killing {}: {e}", self.label);
            }
        }
        if let Err(e) = self.child.wait() {
            eprintln!("procs: waiting for {}: {e}", self.label);
        }
        self.drain();
    }

    /// Asks the process to exit (SIGTERM), waits up to 5 s, then kills it.
    ///
    /// For graceful-shutdown tests; the signal is sent with the `kill` command.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let sent = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(sent, Ok(s) if s.success()) {
                eprintln!("procs: sending SIGTERM to {} failed: {sent:?}", self.label);
            }
            if self.wait_exit(STOP_GRACE).is_none() {
                eprintln!(
                    "procs: {} did not exit within {STOP_GRACE:?} of SIGTERM; killing it",
                    self.label
                );
            }
        }
        self.kill();
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or `None`.
    ///
    /// For tests where a binary must refuse to start (bad config) or exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.drain();
                    return Some(status);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("procs: waiting for {}: {e}", self.label);
                    return None;
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(LOG_POLL);
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id, e.g. to send it other signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Gives the reader threads a moment to log the last lines of an exited process.
    ///
    /// Bounded: a grandchild holding the pipes open must not hang the test.
    fn drain(&mut self) {
        if std::mem::replace(&mut self.reaped, true) {
            return;
        }
        let deadline = Instant::now() + DRAIN_GRACE;
        while Instant::now() < deadline && self.readers.iter().any(|r| !r.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
        let (done, pending): (Vec<_>, Vec<_>) =
            self.readers.drain(..).partition(JoinHandle::is_finished);
        for reader in done {
            if reader.join().is_err() {
                eprintln!("procs: a log reader of {} panicked", self.label);
            }
        }
        self.readers = pending;
    }
}

impl Drop for Proc {
    /// Kills the process if it still runs, so no test leaves a binary behind.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a thread copying lines of `pipe` into `log` and echoing them to stderr.
fn spawn_reader<R: Read + Send + 'static>(
    label: &str,
    pipe: R,
    log: &Arc<Mutex<String>>,
) -> JoinHandle<()> {
    let label = label.to_string();
    let log = Arc::clone(log);
    thread::Builder::new()
        .name(format!("procs-{label}"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        let line = text.trim_end_matches(['\n', '\r']);
                        eprintln!("[{label}] {line}");
                        let mut log = lock(&log);
                        log.push_str(line);
                        log.push('\n');
                    }
                }
            }
        })
        .expect("procs: spawn log reader thread")
}

/// Locks `m`, ignoring poisoning: a panicked reader must not hide the log from the test.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TCP port on `127.0.0.1` that was free a moment ago, for a binary to listen on.
///
/// The port is released before returning, so another process could take it in between;
/// good enough for tests.
///
/// # Panics
///
/// Panics if no port can be bound.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("procs: bind 127.0.0.1:0");
    listener.local_addr().expect("procs: local_addr").port()
}

/// Minimal HTTP/1.1 `GET path` to `addr`: returns the status code and the body.
///
/// Sends `Connection: close`; the body is `Content-Length` bytes when the header is given,
/// else everything up to EOF (chunked encoding is not supported). Connect, reads and writes
/// time out after 5 s. `addr` must be in `127.0.0.0/8`, else [`ErrorKind::InvalidInput`].
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    check_loopback(addr)?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes())?;

    let mut data = Vec::new();
    let mut chunk = [0u8; 8192];
    // (end of headers, Content-Length) once the header block is complete.
    let mut head: Option<(usize, Option<usize>)> = None;
    loop {
        if head.is_none() {
            if let Some(end) = find(&data, b"\r\n\r\n") {
                let headers = String::from_utf8_lossy(&data[..end]).into_owned();
                head = Some((end + 4, content_length(&headers)?));
            }
        }
        if let Some((start, Some(len))) = head {
            if data.len() >= start + len {
                data.truncate(start + len);
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A peer that closes with unread data may reset; what arrived still counts.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && head.is_some() => break,
            Err(e) => return Err(e),
        }
    }
    let Some((start, len)) = head else {
        return Err(bad_response(
            "connection closed before the end of the headers",
        ));
    };
    if let Some(len) = len {
        if data.len() < start + len {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "http_get: body shorter than Content-Length",
            ));
        }
    }
    let status_line = String::from_utf8_lossy(&data[..start]);
    let status_line = status_line.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad_response(&format!("bad status line {status_line:?}")))?;
    let body = String::from_utf8_lossy(&data[start..]).into_owned();
    Ok((code, body))
}

/// Polls [`http_get`] until it answers status 200; false if it did not within `timeout`.
///
/// For waiting until a binary's HTTP endpoint is up.
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(http_get(addr, path), Ok((200, _))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(HTTP_POLL);
    }
}

/// The `Content-Length` of a header block, if it has one.
fn content_length(headers: &str) -> io::Result<Option<usize>> {
    for line in headers.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                return value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| bad_response(&format!("bad Content-Length {value:?}")));
            }
        }
    }
    Ok(None)
}

fn bad_response(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("http_get: {what}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Refuses addresses outside `127.0.0.0/8`: tests talk to this machine only.
pub(crate) fn check_loopback(addr: SocketAddr) -> io::Result<()> {
    if matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{addr} is not in 127.0.0.0/8"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one HTTP request on loopback with `response`, returning the address and the
    /// request it received.
    fn one_shot(response: Vec<u8>) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = stream.read(&mut buf).expect("read request");
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            stream.write_all(&response).expect("write response");
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, handle)
    }

    #[test]
    fn http_get_with_content_length() {
        let body = "{\"ok\":true}";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, server) = one_shot(resp.into_bytes());
        let (code, got) = http_get(addr, "/healthz").expect("get");
        assert_eq!((code, got.as_str()), (200, body));
        let req = server.join().expect("server");
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Connection: close\r\n"), "{req}");
    }

    #[test]
    fn http_get_to_eof() {
        let (addr, server) =
            one_shot(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot ready\n".to_vec());
        assert_eq!(
            http_get(addr, "/readyz").expect("get"),
            (503, "not ready\n".to_string())
        );
        server.join().expect("server");
    }

    #[test]
    fn wait_http_ok_and_refusals() {
        let (addr, server) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec());
        assert!(wait_http_ok(addr, "/", Duration::from_secs(5)));
        server.join().expect("server");
        // Nothing listens there any more.
        assert!(!wait_http_ok(addr, "/", Duration::from_millis(200)));
        let outside: SocketAddr = "192.0.2.1:80".parse().expect("addr");
        let err = http_get(outside, "/").expect_err("non-loopback refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    }

    #[test]
    fn proc_captures_and_stops() {
        let mut p = Proc::start(
            "sh",
            Path::new("sh"),
            &["-c", "echo hello; echo oops >&2; sleep 5"],
        );
        assert!(p.pid() > 0);
        assert!(
            p.wait_for_log("hello", Duration::from_secs(5)),
            "{}",
            p.logs()
        );
        assert!(
            p.wait_for_log("oops", Duration::from_secs(5)),
            "{}",
            p.logs()
        );
        assert_eq!(p.count_log("hello"), 1);
        assert!(!p.wait_for_log("never printed", Duration::from_millis(50)));
        assert!(p.is_running());
        let started = Instant::now();
        p.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            started.elapsed()
        );
        assert!(!p.is_running());
        assert!(p.logs().contains("hello\n"));
    }

    #[test]
    fn proc_kill_and_exit_status() {
        let mut p = Proc::start("sleep", Path::new("sleep"), &["30"]);
        assert!(p.is_running());
        p.kill();
        assert!(!p.is_running());

        let mut p = Proc::start_with_env(
            "env",
            Path::new("sh"),
            &["-c", "echo \"x=$TETHER_X\"; echo x; exit 3"],
            &[("TETHER_X", "42")],
        );
        let status = p.wait_exit(Duration::from_secs(5)).expect("exits");
        assert_eq!(status.code(), Some(3));
        assert!(p.logs().contains("x=42\n"), "{}", p.logs());
        assert_eq!(p.count_log("x"), 2);
    }
}

//! Stopping cleanly: SIGTERM (systemd's stop) or SIGINT ends the edge with
//! an MQTT DISCONNECT, so the hub logs a clean close instead of waiting for
//! the keepalive to expire.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Blocks SIGTERM and SIGINT and returns a future that completes when one
/// arrives. Call it before any thread starts, so every thread inherits the
/// mask and the signal is only ever read here.
pub fn on_termination() -> Result<impl std::future::Future<Output = &'static str>, String> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("cannot block SIGTERM/SIGINT: {e}"))?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;
    let fd = async_io::Async::new(fd).map_err(|e| format!("cannot watch the signalfd: {e}"))?;
    Ok(async move {
        loop {
            if fd.readable().await.is_err() {
                return "signal watch failed";
            }
            match fd.get_ref().read_signal() {
                Ok(Some(info)) if info.ssi_signo == Signal::SIGINT as u32 => return "SIGINT",
                Ok(Some(_)) => return "SIGTERM",
                Ok(None) => continue,
                Err(_) => return "signal watch failed",
            }
        }
    })
}

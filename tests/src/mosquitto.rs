//! A real MQTT broker (Debian's mosquitto) for the scale-out tests: users
//! with passwords, and an ACL file that keeps every node to its own topics.

use crate::pki::Pki;
use crate::procs::{free_port, Proc};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The ACL the tests run with: hubs may use every link topic (and the
/// shared subscription), a node only its own.
pub const ACL: &str = "\
user hub
topic readwrite tether/#

pattern write tether/%u/up
pattern write tether/%u/up/#
pattern read tether/%u/down
";

/// A running mosquitto.
pub struct Mosquitto {
    /// The broker process.
    pub proc: Proc,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
}

/// Path of the mosquitto binary, if installed (`.ci/run` installs it).
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Starts mosquitto on a free loopback port with `users` (name, password),
/// serving TLS 1.3 with the test PKI's hub certificate if `tls`.
pub fn start(pki: &Pki, users: &[(&str, &str)], tls: bool) -> Mosquitto {
    let bin = binary().expect("mosquitto is not installed: run .ci/run, which installs it");
    let passwd = pki.write("mosquitto.passwd", "");
    for (user, pass) in users {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .arg(user)
            .arg(pass)
            .status()
            .expect("mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed for {user}");
    }
    let acl = pki.write("mosquitto.acl", ACL);
    let port = free_port();
    let conf = pki.write(
        "mosquitto.conf",
        &format!(
            "user root\nlistener {port} 127.0.0.1\n{}allow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            if tls {
                format!(
                    "certfile {}\nkeyfile {}\ntls_version tlsv1.3\n",
                    pki.hub_cert.display(),
                    pki.hub_key.display()
                )
            } else {
                String::new()
            },
            passwd.display(),
            acl.display()
        ),
    );
    let conf = conf.to_string_lossy().into_owned();
    // `user root`: the test's files live in a private folder that the
    // `mosquitto` user mosquitto would otherwise switch to cannot read (a
    // broker started by an unprivileged user ignores the line).
    let proc = Proc::start("mosquitto", &bin, &["-c", &conf]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start:\n{}",
            proc.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Mosquitto { proc, addr }
}

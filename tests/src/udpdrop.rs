//! A lossy UDP relay on loopback for the health soak: one socket per edge
//! that forwards every datagram it receives to that edge's health port,
//! drops a given share of them at random, and counts the bytes by sender
//! and by receiver.
//!
//! Every member's `[health] peers` names the other members' relays instead
//! of their ports, so each datagram between two edges crosses exactly one
//! relay (the receiver's), and answers come back through the asker's relay
//! (an edge answers to the address configured for the asker, never to a
//! datagram's source). A plain thread per relay, blocking reads with a
//! short timeout; only loopback addresses.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// UDP and IPv4 header bytes on the wire per datagram, added to the counts
/// so they compare with the figures in ARCHITECTURE.md §5.2.
pub const UDP_IPV4: u64 = 28;

/// Bytes and datagrams seen, by sender address (an edge's health port).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Bytes (payload + [`UDP_IPV4`]) each sender sent through any relay.
    pub sent: BTreeMap<SocketAddr, u64>,
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Datagrams dropped on purpose.
    pub dropped: u64,
}

/// The relays of one unit.
pub struct Relays {
    relays: Vec<Relay>,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
    drop_ppm: Arc<AtomicU64>,
}

struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl Relays {
    /// `count` relays on 127.0.0.1, dropping `drop` (0.0 to 1.0) of the
    /// datagrams; each forwards nowhere until [`Relays::point`] is called.
    pub fn start(count: usize, drop: f64) -> std::io::Result<Relays> {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let drop_ppm = Arc::new(AtomicU64::new((drop.clamp(0.0, 1.0) * 1e6) as u64));
        let mut relays = Vec::with_capacity(count);
        for i in 0..count {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let addr = socket.local_addr()?;
            let target = Arc::new(Mutex::new(None));
            let (t, c, s, d) = (
                target.clone(),
                counts.clone(),
                stop.clone(),
                drop_ppm.clone(),
            );
            let seed = 0x2545_f491_4f6c_dd1d ^ ((i as u64 + 1) << 17);
            let thread = thread::Builder::new()
                .name(format!("udpdrop-{i}"))
                .spawn(move || relay(&socket, &t, &c, &s, &d, seed))?;
            relays.push(Relay {
                addr,
                target,
                thread: Some(thread),
            });
        }
        Ok(Relays {
            relays,
            counts,
            stop,
            drop_ppm,
        })
    }

    /// Relay `i`'s address: what the peers of member `i` send to.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.relays[i].addr
    }

    /// Makes relay `i` forward to `target` (member `i`'s health port).
    pub fn point(&self, i: usize, target: SocketAddr) {
        assert!(
            target.ip().is_loopback(),
            "udpdrop: {target} is not loopback"
        );
        *self.relays[i]
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(target);
    }

    /// Changes the share of datagrams dropped.
    pub fn set_drop(&self, drop: f64) {
        self.drop_ppm
            .store((drop.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts counting afresh.
    pub fn reset_counts(&self) {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner) = Counts::default();
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in &mut self.relays {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn relay(
    socket: &UdpSocket,
    target: &Mutex<Option<SocketAddr>>,
    counts: &Mutex<Counts>,
    stop: &AtomicBool,
    drop_ppm: &AtomicU64,
    mut seed: u64,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(to) = *target.lock().unwrap_or_else(PoisonError::into_inner) else {
            continue;
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let dropped = seed % 1_000_000 < drop_ppm.load(Ordering::Relaxed);
        {
            let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
            *c.sent.entry(from).or_default() += len as u64 + UDP_IPV4;
            if dropped {
                c.dropped += 1;
            } else {
                c.forwarded += 1;
            }
        }
        if !dropped {
            let _ = socket.send_to(&buf[..len], to);
        }
    }
}

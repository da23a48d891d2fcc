//! The health peer's IO (issue 6): owns the `[health] listen` UDP socket,
//! drives [`Health`] with real time and datagrams, logs what changed, and
//! sends this edge's verdict reports to the hub over the link.
//!
//! Three loops share one [`Health`] on the edge's single-threaded executor:
//!
//! - **probe**: sleeps until [`Health::poll_timeout`] or a datagram, calls
//!   the state machine, sends what it returns to the peers' configured
//!   addresses (never to a datagram's source: a forged probe cannot aim
//!   answers at someone else), logs each verdict change once and rejected
//!   datagrams at most once a minute per sender address, with a count;
//! - **report**: sends the hub a [`VerdictReport`] on every verdict change,
//!   every interval while the link is up, and at once when the link comes
//!   up (see *Reports* below);
//! - **resolve**: peers given by host name are looked up at start and every
//!   minute (an address literal needs no lookup); a peer that does not
//!   resolve gets no probes, so it is judged dead like any peer that does
//!   not answer.
//!
//! With `[health] unit_label` a fourth, **members**, reads the unit and its
//! members from kube-apiserver at start and every `refresh`
//! ([`members::Source`]) and hands changes to [`Health::set_members`],
//! logging each change once. While kube-apiserver cannot be reached the
//! last membership stays; the last one read is saved next to the proxy's
//! cache, and an edge that starts cut off starts from it. Until some
//! membership is known the edge probes no one and reports nothing.
//!
//! # Reports
//!
//! Each report is one short stream to the reserved upstream
//! [`HEALTH_UPSTREAM`]: the report's postcard encoding, then the end of the
//! stream (the hub reads at most [`HEALTH_REPORT_MAX`] bytes). One stream
//! per report rather than one long-lived stream, as `announce` does: it
//! needs no framing, and nothing to reopen after the session is lost (the
//! next report opens a new stream anyway). The cost is an open, an accept
//! and a close frame, tens of bytes, once per interval (25 s by default).
//! A report is built when it is sent, never queued: while the link is down
//! nothing is sent, and the first report after it comes back is current.
//! At most one report is in flight, and one that takes longer than
//! [`REPORT_TIMEOUT`] is given up until the next.

use super::members::{self, Membership, Source};
use super::{wire, Config, Datagram, Event, Health, PeerAddr};
use futures_lite::io::AsyncWriteExt;
use futures_lite::FutureExt;
use log::{debug, info, warn};
use smol::channel::{Receiver, Sender};
use smol::net::UdpSocket;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};
use tether_link::health::{Verdict, VerdictReport, Vote};
use tether_link::io::Link;
use tether_link::mux::{OwnedTarget, HEALTH_REPORT_MAX, HEALTH_UPSTREAM};
use tether_link::topic::NodeName;

/// Rejected datagrams from one sender address are logged at most once per
/// this long; the others are counted and the count is logged.
pub const REJECT_LOG_WINDOW: Duration = Duration::from_secs(60);
/// Sender addresses whose rejections are logged apart; beyond this many,
/// all others share one entry, so a flood from many addresses costs a
/// bounded table and one line a minute.
const REJECT_LOG_SENDERS: usize = 64;
/// How long sending one report may take before it is given up.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a link that is down is looked at, so the first report after
/// it comes back goes out within this long.
const LINK_POLL: Duration = Duration::from_secs(1);
/// How long a link that is down may keep the unit from being read before
/// that is logged (it is down for a moment at every start).
const LINK_GRACE: Duration = Duration::from_secs(10);
/// How often peers given by host name are looked up again.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);

/// The bound health port with its state machine; [`HealthPort::run`]
/// serves it.
pub struct HealthPort {
    shared: Rc<RefCell<Shared>>,
    socket: UdpSocket,
    peers: Vec<PeerAddr>,
    /// This edge's name: never in the dead set it publishes.
    own: NodeName,
    /// Where the nodes the unit votes dead go (node awareness).
    dead_out: Option<DeadOut>,
    /// Where the unit comes from with `[health] unit_label`.
    source: Option<Source>,
    /// Wakes the probe loop when the members changed (new peers are due
    /// at once).
    wake: (Sender<()>, Receiver<()>),
}

/// The receiver of the dead set and what it was last given.
struct DeadOut {
    publish: Box<dyn Fn(BTreeSet<String>)>,
    last: RefCell<Option<BTreeSet<String>>>,
}

/// What the loops share, and what the status port reads.
struct Shared {
    health: Health,
    /// Rejected datagrams by [`wire::Error::label`], every label present.
    rejected: BTreeMap<&'static str, u64>,
    reject_log: RejectLog,
    reports_sent: u64,
    /// Where each peer's health port is (parsed or looked up).
    resolved: BTreeMap<NodeName, SocketAddr>,
    /// Peers a send failed to, until one succeeds (logged once each way).
    send_failing: BTreeSet<NodeName>,
    /// The unit is known: always with `unit`, once read with `unit_label`.
    /// Until then nothing is probed or reported.
    known: bool,
    /// Members from a node label with no address to probe (logged when
    /// the set changes, not every refresh).
    unaddressed: BTreeSet<NodeName>,
}

/// What the status port shows of the health peer; cheap to clone.
#[derive(Clone)]
pub struct View(Rc<RefCell<Shared>>);

impl View {
    /// This edge's verdict on each peer it has one on (peers not yet
    /// judged are left out).
    pub fn verdicts(&self) -> Vec<(NodeName, Verdict)> {
        self.0.borrow().health.verdicts()
    }

    /// Rejected datagrams by the check that failed ([`wire::Error::LABELS`]).
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        self.0
            .borrow()
            .rejected
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Reports the hub accepted the stream of since start.
    pub fn reports_sent(&self) -> u64 {
        self.0.borrow().reports_sent
    }
}

impl HealthPort {
    /// Binds `config.listen` and starts the state machine of `own` in `unit`
    /// (its first probes are due at once); with `None` (the unit comes from
    /// a node label, see [`HealthPort::follow`]) it waits for its unit. The
    /// error names the key and says why, for the caller to stop with.
    pub async fn bind(
        own: NodeName,
        unit: Option<&str>,
        config: &Config,
    ) -> Result<HealthPort, String> {
        let socket = UdpSocket::bind(config.listen)
            .await
            .map_err(|e| format!("health.listen {}: {e}", config.listen))?;
        let known = unit.is_some();
        let unit = unit.unwrap_or("");
        let health = Health::new(own.clone(), unit, config, unix_ms(), Instant::now());
        // Address literals need no lookup; host names wait for `resolve`.
        let resolved = config
            .peers
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.addr.parse().ok()?)))
            .collect();
        let members = match &config.label {
            Some(l) => format!(
                "unit and members from node label {} (read every {} s, peers' port {})",
                l.key,
                l.refresh.as_secs(),
                l.peer_port
            ),
            None => format!("unit {unit}, {} peers", config.peers.len()),
        };
        info!(
            "health peer: listening on {} (UDP), {members}, probing every {} s",
            config.listen,
            config.interval.as_secs_f64()
        );
        Ok(HealthPort {
            shared: Rc::new(RefCell::new(Shared {
                health,
                rejected: wire::Error::LABELS.iter().map(|l| (*l, 0)).collect(),
                reject_log: RejectLog::default(),
                reports_sent: 0,
                resolved,
                send_failing: BTreeSet::new(),
                known,
                unaddressed: BTreeSet::new(),
            })),
            socket,
            peers: config.peers.clone(),
            own,
            dead_out: None,
            source: None,
            wake: smol::channel::bounded(1),
        })
    }

    /// Takes the unit and its members from `source` (`[health]
    /// unit_label`): see the module docs.
    pub fn follow(&mut self, source: Source) {
        self.source = Some(source);
    }

    /// Hands `publish` the nodes the unit votes dead by this edge's own
    /// tally ([`Health::votes`]), at start and whenever they change. The
    /// tally is taken after every timer and datagram, since a vote also
    /// changes without an event when a peer's report goes stale. This edge
    /// is never in it: it is running.
    pub fn publish_dead(&mut self, publish: impl Fn(BTreeSet<String>) + 'static) {
        self.dead_out = Some(DeadOut {
            publish: Box::new(publish),
            last: RefCell::new(None),
        });
    }

    /// Publishes the dead set if it changed (see [`HealthPort::publish_dead`]).
    fn publish_votes(&self, now: Instant) {
        let Some(out) = &self.dead_out else { return };
        let dead: BTreeSet<String> = self
            .shared
            .borrow()
            .health
            .votes(now)
            .into_iter()
            .filter(|(node, vote)| matches!(vote, Vote::Dead { .. }) && *node != self.own)
            .map(|(node, _)| node.as_str().to_owned())
            .collect();
        if out.last.borrow().as_ref() != Some(&dead) {
            *out.last.borrow_mut() = Some(dead.clone());
            (out.publish)(dead);
        }
    }

    /// The address the health port is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// What the status port reads.
    pub fn view(&self) -> View {
        View(self.shared.clone())
    }

    /// Serves the health port and reports to the hub over `link`, forever.
    pub async fn run(self, link: Link) {
        // A verdict changed: the reporter sends at once. One pending signal
        // is enough, since a report is built when it is sent.
        let (changed, on_change) = smol::channel::bounded(1);
        self.probe(changed)
            .or(self.report(link, on_change))
            .or(self.resolve())
            .or(self.members())
            .await
    }

    /// The probe loop: timers, datagrams, events.
    async fn probe(&self, changed: Sender<()>) {
        // One byte more than the largest message, so a longer one shows as
        // oversized instead of being cut to a valid-looking length.
        let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
        loop {
            let wake = {
                let s = self.shared.borrow();
                [s.health.poll_timeout(), s.reject_log.next_flush()]
                    .into_iter()
                    .flatten()
                    .min()
            };
            let wake_up = &self.wake.1;
            let received = async { Some(self.socket.recv_from(&mut buf).await) }
                .or(async {
                    // The members changed: new peers are due now.
                    let _ = wake_up.recv().await;
                    None
                })
                .or(async {
                    match wake {
                        Some(at) => {
                            async_io::Timer::at(at).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                    None
                })
                .await;
            let (now, ms) = (Instant::now(), unix_ms());
            let out = match received {
                Some(Ok((len, from))) => self.received(now, ms, &buf[..len], from),
                Some(Err(e)) => {
                    debug!("health port: receiving failed: {e}");
                    async_io::Timer::after(Duration::from_millis(100)).await;
                    Vec::new()
                }
                None => self.shared.borrow_mut().health.handle_timeout(now, ms),
            };
            for d in out {
                self.send(d).await;
            }
            self.publish_votes(now);
            if self.log_events() {
                let _ = changed.try_send(());
            }
            let lines = self.shared.borrow_mut().reject_log.flush(now);
            for line in lines {
                warn!("{line}");
            }
        }
    }

    /// Handles one datagram; returns the answer to send, if any.
    fn received(&self, now: Instant, ms: u64, bytes: &[u8], from: SocketAddr) -> Vec<Datagram> {
        let mut s = self.shared.borrow_mut();
        match s.health.handle_datagram(now, ms, bytes) {
            Ok(answer) => answer.into_iter().collect(),
            Err(e) => {
                *s.rejected.entry(e.label()).or_default() += 1;
                if s.reject_log.note(now, from, e.label()) {
                    warn!(
                        "health port: datagram from {from} rejected: {e} (further rejections \
                         from {from} are counted, and logged at most once a minute)"
                    );
                }
                Vec::new()
            }
        }
    }

    /// Sends one datagram to its peer's resolved address; a failure is
    /// logged when it starts and when it ends.
    async fn send(&self, d: Datagram) {
        let addr = self.shared.borrow().resolved.get(&d.to).copied();
        // Not resolved (yet): the probe goes unanswered, as it should.
        let Some(addr) = addr else { return };
        let result = self.socket.send_to(&d.bytes, addr).await;
        let mut s = self.shared.borrow_mut();
        match result {
            Ok(_) => {
                if s.send_failing.remove(&d.to) {
                    info!("health peer {}: sending to {addr} works again", d.to);
                }
            }
            Err(e) => {
                if s.send_failing.insert(d.to.clone()) {
                    warn!(
                        "health peer {}: cannot send to {addr} ({}): {e}; its probes count \
                         as unanswered",
                        d.to, d.addr
                    );
                }
            }
        }
    }

    /// Logs the state machine's events; true if a verdict changed.
    fn log_events(&self) -> bool {
        let mut s = self.shared.borrow_mut();
        let (dead_after, alive_after) = s.health.hysteresis();
        let mut changed = false;
        while let Some(event) = s.health.poll_event() {
            match &event {
                Event::Verdict { peer, change } => {
                    changed = true;
                    let why = match change.to {
                        Verdict::Dead => format!("{dead_after} probes in a row unanswered"),
                        Verdict::Alive if change.from.is_none() => "answered".to_string(),
                        Verdict::Alive => format!("{alive_after} probes in a row answered"),
                    };
                    let line = match change.from {
                        Some(from) => {
                            format!("health peer {peer}: {from} -> {} ({why})", change.to)
                        }
                        None => format!("health peer {peer}: {} ({why})", change.to),
                    };
                    match change.to {
                        Verdict::Dead => warn!("{line}"),
                        Verdict::Alive => info!("{line}"),
                    }
                }
                Event::MembersDiffer { .. } => warn!("{event}"),
            }
        }
        changed
    }

    /// The report loop (see the module docs).
    async fn report(&self, link: Link, on_change: Receiver<()>) {
        let interval = self.shared.borrow().health.interval();
        let mut was_up = false;
        let mut owed = true;
        let mut next = Instant::now();
        let mut failing = false;
        loop {
            let up = link.with_session(|s| s.is_up());
            // A unit not known yet has nothing to report.
            let known = self.shared.borrow().known;
            if up && known && (owed || !was_up || Instant::now() >= next) {
                let report = self.shared.borrow_mut().health.report();
                let seq = report.seq;
                match send_report(&link, &report).await {
                    Ok(()) => {
                        self.shared.borrow_mut().reports_sent += 1;
                        debug!("health report {seq} sent to the hub");
                        if std::mem::take(&mut failing) {
                            info!("health reports reach the hub again");
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            warn!(
                                "health report to the hub failed: {e}; trying again every \
                                 interval and on every verdict change"
                            );
                        }
                    }
                }
                owed = false;
                next = Instant::now() + interval;
            }
            was_up = up;
            let wake = if up && known {
                next
            } else {
                Instant::now() + LINK_POLL
            };
            let change = async { on_change.recv().await.is_ok() }
                .or(async {
                    async_io::Timer::at(wake).await;
                    false
                })
                .await;
            owed |= change;
        }
    }

    /// The resolve loop: looks up peers given by host name.
    async fn resolve(&self) {
        let names: Vec<&PeerAddr> = self
            .peers
            .iter()
            .filter(|p| p.addr.parse::<SocketAddr>().is_err())
            .collect();
        if names.is_empty() {
            return std::future::pending().await;
        }
        let ipv4 = self
            .socket
            .local_addr()
            .map(|a| a.is_ipv4())
            .unwrap_or(true);
        let mut failing = BTreeSet::new();
        loop {
            for p in &names {
                let found = smol::net::resolve(p.addr.as_str()).await.map(|list| {
                    // The socket's own family first: an IPv4 socket cannot
                    // send to an IPv6 address.
                    list.iter()
                        .find(|a| a.is_ipv4() == ipv4)
                        .or(list.first())
                        .copied()
                });
                match found {
                    Ok(Some(addr)) => {
                        let old = self
                            .shared
                            .borrow_mut()
                            .resolved
                            .insert(p.name.clone(), addr);
                        if failing.remove(&p.name) || old.is_some_and(|o| o != addr) {
                            info!("health peer {}: {} is at {addr}", p.name, p.addr);
                        }
                    }
                    Ok(None) | Err(_) => {
                        if failing.insert(p.name.clone()) {
                            let why = match found {
                                Err(e) => e.to_string(),
                                _ => "no address".to_string(),
                            };
                            warn!(
                                "health peer {}: cannot look up {}: {why}; it gets no probes \
                                 until it resolves (kept: {:?})",
                                p.name,
                                p.addr,
                                self.shared.borrow().resolved.get(&p.name)
                            );
                        }
                    }
                }
            }
            async_io::Timer::after(RESOLVE_EVERY).await;
        }
    }
}

impl HealthPort {
    /// The members loop (`[health] unit_label`, see the module docs).
    async fn members(&self) {
        let Some(source) = &self.source else {
            return std::future::pending().await;
        };
        let (label, own) = (source.label(), source.own());
        let mut saved: Option<Membership> = None;
        match label.state_file.as_deref() {
            Some(path) => match members::load_state(path, &label.key, own) {
                Ok(Some(m)) => {
                    info!(
                        "health unit {}: starting from the membership saved in {} until \
                         kube-apiserver answers",
                        m.unit,
                        path.display()
                    );
                    self.apply(&m).await;
                    saved = Some(m);
                }
                Ok(None) => {}
                Err(e) => warn!("health unit: the saved membership is not used: {e}"),
            },
            None => info!(
                "health unit: [proxy] has no cache, so the membership read from node label {} \
                 is not kept across restarts",
                label.key
            ),
        }
        // Failing since, and whether that was logged.
        let mut failing: Option<(Instant, bool)> = None;
        loop {
            let mut next = label.refresh;
            match source.fetch().await {
                Ok(m) => {
                    if failing.take().is_some_and(|(_, logged)| logged) {
                        info!("health unit: kube-apiserver answers again");
                    }
                    self.apply(&m).await;
                    if saved.as_ref() != Some(&m) {
                        if let Some(path) = &label.state_file {
                            let text = members::encode_state(&label.key, &m);
                            if let Err(e) = members::save_state(path, &text) {
                                warn!("health unit: cannot save the membership: {e}");
                            }
                        }
                        saved = Some(m);
                    }
                }
                Err(e) => {
                    let (since, logged) = failing.get_or_insert((Instant::now(), false));
                    // A link still coming up (at start) is no news for a
                    // while, and costs nothing to look at every second.
                    let link_down = source.link_down();
                    if link_down {
                        next = next.min(LINK_POLL);
                    }
                    if !*logged && (!link_down || since.elapsed() >= LINK_GRACE) {
                        *logged = true;
                        let unit = self.shared.borrow().health.unit().to_owned();
                        let now = if self.shared.borrow().known {
                            format!("keeping unit {unit} as last read")
                        } else {
                            "the health peer waits: no unit is known yet (none saved either), \
                             so it probes and reports nothing"
                                .to_owned()
                        };
                        warn!(
                            "health unit: cannot read the unit from node label {}: {e}; {now}; \
                             trying again every {} s",
                            label.key,
                            label.refresh.as_secs()
                        );
                    }
                }
            }
            async_io::Timer::after(next).await;
        }
    }

    /// Makes `m` the unit's membership: the state machine's members (the
    /// change logged once), where the peers are (host names looked up now:
    /// they are read again every refresh anyway), and wakes the probe loop.
    async fn apply(&self, m: &Membership) {
        let changed = {
            let mut s = self.shared.borrow_mut();
            s.known = true;
            s.health.set_members(&m.unit, &m.peers, Instant::now())
        };
        if let Some(change) = changed {
            info!("{change}");
        }
        let ipv4 = self
            .socket
            .local_addr()
            .map(|a| a.is_ipv4())
            .unwrap_or(true);
        let mut resolved = BTreeMap::new();
        let mut unaddressed = BTreeSet::new();
        for p in &m.peers {
            let found = match p.addr.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) if p.addr.is_empty() => None,
                Err(_) => smol::net::resolve(p.addr.as_str())
                    .await
                    .ok()
                    .and_then(|list| {
                        list.iter()
                            .find(|a| a.is_ipv4() == ipv4)
                            .or(list.first())
                            .copied()
                    }),
            };
            match found {
                Some(addr) => {
                    resolved.insert(p.name.clone(), addr);
                }
                None => {
                    unaddressed.insert(p.name.clone());
                }
            }
        }
        let mut s = self.shared.borrow_mut();
        if unaddressed != s.unaddressed && !unaddressed.is_empty() {
            let names: Vec<&str> = unaddressed.iter().map(NodeName::as_str).collect();
            warn!(
                "health unit {}: no address to probe for {} (their Nodes list none in \
                 status.addresses, or the host name does not resolve): judged dead like peers \
                 that do not answer",
                m.unit,
                names.join(" ")
            );
        }
        s.unaddressed = unaddressed;
        s.resolved = resolved;
        drop(s);
        let _ = self.wake.0.try_send(());
    }
}

/// Sends one report on a stream of its own (see the module docs).
async fn send_report(link: &Link, report: &VerdictReport) -> Result<(), String> {
    let bytes = report.encode();
    if bytes.len() > HEALTH_REPORT_MAX {
        // Cannot happen with a config the edge accepts (at most 64 members).
        return Err(format!("report of {} bytes is too large", bytes.len()));
    }
    async {
        let mut stream = link
            .open(OwnedTarget::Upstream(HEALTH_UPSTREAM.into()))
            .map_err(|e| e.to_string())?;
        stream.accepted().await.map_err(|e| {
            format!("{e} (a hub older than the health reports refuses {HEALTH_UPSTREAM:?})")
        })?;
        stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
        stream.close().await.map_err(|e| e.to_string())
    }
    .or(async {
        async_io::Timer::after(REPORT_TIMEOUT).await;
        Err(format!("not done within {} s", REPORT_TIMEOUT.as_secs()))
    })
    .await
}

/// The wall clock in milliseconds since 1970 (0 before it, which every
/// peer then finds stale: the clock needs setting).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Rate limit of the rejected-datagram log: per sender address, the first
/// rejection is logged, the next ones within [`REJECT_LOG_WINDOW`] are
/// counted, and the count is logged when the window ends.
#[derive(Debug, Default)]
struct RejectLog {
    /// By sender address; `None` is every sender beyond
    /// [`REJECT_LOG_SENDERS`].
    senders: BTreeMap<Option<SocketAddr>, Window>,
}

/// One sender's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Instant,
    /// Rejections not logged since `since`.
    count: u64,
    /// The check the last of them failed.
    last: &'static str,
}

impl RejectLog {
    /// Notes a rejection of a datagram from `from`; true if it is to be
    /// logged now (the first from this sender in its window).
    fn note(&mut self, now: Instant, from: SocketAddr, label: &'static str) -> bool {
        let mut key = Some(from);
        if !self.senders.contains_key(&key) && self.senders.len() >= REJECT_LOG_SENDERS {
            key = None;
        }
        match self.senders.get_mut(&key) {
            Some(w) => {
                w.count += 1;
                w.last = label;
                false
            }
            None => {
                self.senders.insert(
                    key,
                    Window {
                        since: now,
                        count: 0,
                        last: label,
                    },
                );
                // The shared entry's first line is as useful as any other.
                true
            }
        }
    }

    /// When [`RejectLog::flush`] has something to do.
    fn next_flush(&self) -> Option<Instant> {
        self.senders
            .values()
            .map(|w| w.since + REJECT_LOG_WINDOW)
            .min()
    }

    /// Ends the windows that are over: the lines to log for those that
    /// counted rejections (their senders start a new window, so a steady
    /// flood is one line a minute), and forgets the quiet ones.
    fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        self.senders.retain(|sender, w| {
            if now < w.since + REJECT_LOG_WINDOW {
                return true;
            }
            if w.count == 0 {
                return false;
            }
            let who = sender.map_or("other senders".to_string(), |a| a.to_string());
            lines.push(format!(
                "health port: {} more datagrams from {who} rejected in the last {} s (the \
                 last: {})",
                w.count,
                REJECT_LOG_WINDOW.as_secs(),
                w.last
            ));
            *w = Window {
                since: now,
                count: 0,
                last: w.last,
            };
            true
        });
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn rejections_are_logged_once_a_minute_per_sender_with_a_count() {
        let start = Instant::now();
        let mut log = RejectLog::default();
        assert!(log.note(start, addr(1), "forged"));
        assert!(!log.note(start, addr(1), "forged"));
        assert!(!log.note(start, addr(1), "replayed"));
        // Another sender has a window of its own.
        assert!(log.note(start, addr(2), "stale"));
        assert_eq!(log.next_flush(), Some(start + REJECT_LOG_WINDOW));
        assert!(log.flush(start + Duration::from_secs(59)).is_empty());
        let lines = log.flush(start + REJECT_LOG_WINDOW);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("2 more datagrams from 127.0.0.1:1")
                && lines[0].contains("the last: replayed"),
            "{lines:?}"
        );
        // The quiet sender is forgotten; the busy one starts a new window.
        assert_eq!(log.senders.len(), 1);
        let later = start + REJECT_LOG_WINDOW;
        assert!(!log.note(later, addr(1), "forged"));
        assert!(log.note(later, addr(2), "forged"));
    }

    #[test]
    fn many_senders_share_one_entry() {
        let now = Instant::now();
        let mut log = RejectLog::default();
        let mut logged = 0;
        for port in 0..1000u16 {
            logged += usize::from(log.note(now, addr(port), "forged"));
        }
        assert_eq!(log.senders.len(), REJECT_LOG_SENDERS + 1);
        assert_eq!(logged, REJECT_LOG_SENDERS + 1);
        let lines = log.flush(now + REJECT_LOG_WINDOW);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("from other senders"), "{lines:?}");
    }
}

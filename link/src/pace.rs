//! The session's in-flight byte window: how many unacknowledged bytes one
//! side may have out, sized so the queue it builds on a slow path stays
//! near a target delay.
//!
//! Why: every stream of a node shares one connection. With a fixed window
//! (`max_inflight` × `max_batch`, 2 MiB by default) one bulk stream (a
//! large port-forward, a log download) fills whatever queue sits on a slow
//! path, and every other stream's frames wait behind it: at 1 MB/s, two
//! seconds before the node's next API request gets through. A window of
//! about one bandwidth-delay product plus a little keeps the bulk stream at
//! the path's full rate while the others wait only that little.
//!
//! How, sans IO (instants in, a byte count out): each acknowledged publish
//! gives a round-trip sample, and the acks give delivery-rate samples (the
//! bytes acknowledged over spans of at least [`RATE_SPAN`]). The window is
//! the recent top delivery rate times (the base round trip + the target
//! delay). At the path's rate that leaves about `target` of queue. When the
//! path could carry more, the rates measured grow, and with them the
//! window, by (base + target) / base per round trip. A rate measured while
//! the sender had nothing more to send says how much there was, not what
//! the path carries, so it never lowers the top (BBR's app-limited
//! samples); until a rate is known the window is the ceiling.

//! The base round trip is the least seen. A queue this side keeps up
//! would hide the true least, and a window sized on a queued round trip
//! keeps that queue up: so when the least has not been seen again for
//! [`BASE_WINDOW`] ([`FIRST_PROBE`] after a connect), the window drops to
//! [`FLOOR`] until a publish sent into the drained queue comes back, and
//! its round trip is the base from then on (BBR's ProbeRTT, in short). That
//! costs about `target` of sending every ten seconds, and also lets a path
//! that got longer (another route, another access point) be believed.
//!
//! A round trip includes the publish's own time on the path (its ack comes
//! once its last byte is through), so the base is a little high, by at
//! most FLOOR at the path's rate. It is not taken off: with a rate measured
//! while the sender was idle, that would make the base too low, and a
//! window sized on it would shrink with each round trip to the floor.

use std::time::{Duration, Instant};

/// The smallest window: a kubelet request and its headers pass at once,
/// while on a 1 MB/s path it is only 4 ms of queue.
pub const FLOOR: usize = 4 * 1024;

/// How long a least round trip stands for the path's base delay before
/// it is measured again.
pub const BASE_WINDOW: Duration = Duration::from_secs(10);

/// When the base is first measured again after a connect: the first
/// samples come while the window is still wide open, queue and all.
pub const FIRST_PROBE: Duration = Duration::from_secs(1);

/// How long a top delivery rate stands for the path's rate; after that a
/// slower path (a Wi-Fi link that degraded) shrinks the window.
pub const RATE_WINDOW: Duration = Duration::from_secs(2);

/// The least time a rate sample spans: the bytes acknowledged from one
/// sample's end to the next one's, at least this long apart. Acks come in
/// bursts (a token-bucket shaper, a Wi-Fi aggregate, delayed acks), and a
/// rate over one burst says how fast the burst came, not the path: the
/// window would open to match.
pub const RATE_SPAN: Duration = Duration::from_millis(25);

/// What a publish carries from its sending to its ack, for the samples.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    sent_at: Instant,
    /// Sent with nothing more waiting (see [`Pacer::stamp`]).
    app_limited: bool,
}

/// One side's window; see the module docs.
#[derive(Debug)]
pub struct Pacer {
    /// Queue delay aimed at; zero turns pacing off (the window is the ceiling).
    target: Duration,
    ceiling: usize,
    /// Least round trip and when it was seen.
    base: Option<(Duration, Instant)>,
    /// Top delivery rate (bytes per second) and when it was seen.
    rate: Option<(f64, Instant)>,
    /// Bytes acknowledged in all.
    delivered: u64,
    /// (when, `delivered` then) at the start of the current rate sample's
    /// span; none while the path is idle.
    mark: Option<(Instant, u64)>,
    /// Draining the queue to measure the base again, since then.
    draining: Option<Instant>,
    /// A drain has measured the base on this connection.
    probed: bool,
}

impl Pacer {
    /// A window that aims at `target` of queue and never exceeds `ceiling`
    /// bytes. Until the first samples it is the ceiling.
    pub fn new(target: Duration, ceiling: usize) -> Pacer {
        Pacer {
            target,
            ceiling: ceiling.max(FLOOR),
            base: None,
            rate: None,
            delivered: 0,
            mark: None,
            draining: None,
            probed: false,
        }
    }

    /// Unacknowledged bytes allowed now.
    pub fn window(&self) -> usize {
        if self.target.is_zero() {
            return self.ceiling;
        }
        if self.draining.is_some() {
            return FLOOR;
        }
        let (Some((base, _)), Some((rate, _))) = (self.base, self.rate) else {
            return self.ceiling;
        };
        let bytes = rate * (base + self.target).as_secs_f64();
        // Saturating float-to-int conversion; the clamp keeps it in range.
        (bytes as usize).clamp(FLOOR, self.ceiling)
    }

    /// The stamp of a publish sent at `now`. `idle`: nothing else was in
    /// flight, so the time since the last ack was idle, not delivery, and
    /// does not count towards the rate. `drained`: the sender had nothing
    /// more to send, so this publish's rate says how much there was to
    /// carry, not how much the path carries.
    pub fn stamp(&mut self, now: Instant, idle: bool, drained: bool) -> Stamp {
        if idle {
            self.mark = None;
        }
        Stamp {
            sent_at: now,
            app_limited: drained,
        }
    }

    /// The publish of `stamp`, `bytes` long, was acknowledged at `now`.
    pub fn acked(&mut self, now: Instant, stamp: Stamp, bytes: usize) {
        let rtt = now.saturating_duration_since(stamp.sent_at);
        self.delivered += bytes as u64;
        let Some((since, then)) = self.mark else {
            // The first ack since the path was idle starts a span.
            self.mark = Some((now, self.delivered));
            self.sample_base(now, stamp, rtt);
            return;
        };
        let interval = now.duration_since(since);
        if interval >= RATE_SPAN {
            self.mark = Some((now, self.delivered));
            let sample = (self.delivered - then) as f64 / interval.as_secs_f64();
            // A lower rate replaces the top only once the top is old, and
            // only if the sender was not short of data (as in BBR): a side
            // that mostly sends acks and small answers must not shrink its
            // window to those, or its next large answer waits round trips.
            // Until a sample that was not short of data, the rate is not
            // known and the window stays open.
            self.rate = match self.rate {
                Some((top, at))
                    if top > sample
                        && (stamp.app_limited || now.duration_since(at) < RATE_WINDOW) =>
                {
                    Some((top, at))
                }
                None if stamp.app_limited => None,
                _ => Some((sample, now)),
            };
        }
        self.sample_base(now, stamp, rtt);
    }

    /// Takes `rtt`, the round trip of `stamp`'s publish, into the base
    /// round trip (module docs), and starts or ends a drain.
    fn sample_base(&mut self, now: Instant, stamp: Stamp, rtt: Duration) {
        if let Some(since) = self.draining {
            // Sent into the drained queue: behind FLOOR bytes at most.
            if stamp.sent_at >= since {
                self.draining = None;
                self.probed = true;
                self.base = Some((rtt, now));
            }
            return;
        }
        let stands = if self.probed {
            BASE_WINDOW
        } else {
            FIRST_PROBE
        };
        self.base = match self.base {
            Some((least, at)) if least < rtt && now.duration_since(at) < stands => {
                Some((least, at))
            }
            // Stale, with a queue of this side's own: drain it to measure.
            Some((least, at)) if least < rtt && !stamp.app_limited && !self.target.is_zero() => {
                self.draining = Some(now);
                Some((least, at))
            }
            // Stale with nothing queued here: the sample is as good as a
            // drained one (whatever it has on top is not this side's).
            _ => Some((rtt, now)),
        };
    }

    /// The connection was lost: what the samples said about it may not hold
    /// for the next one (another route, another access point).
    pub fn reset(&mut self) {
        *self = Pacer::new(self.target, self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path of `rate` bytes per second behind one FIFO queue, with `base`
    /// round trip: publishes are sent whenever the window allows and the
    /// sender always has more. Returns the mean queue delay seen by the
    /// last quarter of publishes and the rate delivered.
    fn run(rate: f64, base: Duration, target: Duration, publish: usize) -> (Duration, f64) {
        let start = Instant::now();
        let mut pacer = Pacer::new(target, 2 << 20);
        let mut now = start;
        // (ack time, stamp, bytes) of publishes in flight, in order.
        let mut flight: std::collections::VecDeque<(Instant, Stamp, usize)> = Default::default();
        let mut queued = 0usize;
        let mut link_free = start;
        let mut delays = Vec::new();
        let mut delivered = 0usize;
        let end = start + Duration::from_secs(30);
        while now < end {
            while queued + publish <= pacer.window().max(publish) {
                let stamp = pacer.stamp(now, queued == 0, false);
                let begin = link_free.max(now);
                link_free = begin + Duration::from_secs_f64(publish as f64 / rate);
                delays.push(begin - now);
                flight.push_back((link_free + base, stamp, publish));
                queued += publish;
            }
            let Some((at, stamp, bytes)) = flight.pop_front() else {
                break;
            };
            now = at;
            queued -= bytes;
            delivered += bytes;
            pacer.acked(now, stamp, bytes);
        }
        let tail = &delays[delays.len() * 3 / 4..];
        let mean = tail.iter().sum::<Duration>() / tail.len() as u32;
        (mean, delivered as f64 / (now - start).as_secs_f64())
    }

    #[test]
    fn slow_path_keeps_the_queue_near_the_target() {
        let target = Duration::from_millis(20);
        let (delay, rate) = run(1e6, Duration::from_millis(2), target, 2048);
        assert!(delay < Duration::from_millis(35), "queue delay {delay:?}");
        assert!(rate > 0.95e6, "rate {rate}");
    }

    #[test]
    fn long_path_keeps_its_rate() {
        // 10 MB/s over 100 ms: the window must open to a full BDP and more.
        let (delay, rate) = run(
            10e6,
            Duration::from_millis(100),
            Duration::from_millis(20),
            16384,
        );
        assert!(delay < Duration::from_millis(40), "queue delay {delay:?}");
        assert!(rate > 9e6, "rate {rate}");
    }

    #[test]
    fn fast_path_opens_to_the_ceiling() {
        let mut pacer = Pacer::new(Duration::from_millis(20), 2 << 20);
        let t0 = Instant::now();
        let s = pacer.stamp(t0, true, false);
        pacer.acked(t0 + Duration::from_millis(1), s, 1 << 20);
        assert_eq!(pacer.window(), 2 << 20);
    }

    #[test]
    fn off_is_the_ceiling() {
        let mut pacer = Pacer::new(Duration::ZERO, 1 << 20);
        let t0 = Instant::now();
        let s = pacer.stamp(t0, true, false);
        pacer.acked(t0 + Duration::from_secs(1), s, 1000);
        assert_eq!(pacer.window(), 1 << 20);
    }

    #[test]
    fn a_stale_base_drains_to_the_floor_then_resamples() {
        let mut pacer = Pacer::new(Duration::from_millis(20), 2 << 20);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = pacer.stamp(t0, true, false);
        pacer.acked(t0 + ms(10), s, 10);
        // Longer round trips for FIRST_PROBE: a queue is up.
        let t1 = t0 + FIRST_PROBE + ms(10);
        let s = pacer.stamp(t1, false, false);
        pacer.acked(t1 + ms(30), s, 10);
        assert!(pacer.draining.is_some());
        assert_eq!(pacer.window(), FLOOR);
        // An ack of something sent before the drain does not end it...
        pacer.acked(t1 + ms(35), s, 10);
        assert!(pacer.draining.is_some());
        // ...one sent after it does, its round trip the new base...
        let t2 = t1 + ms(40);
        let s = pacer.stamp(t2, false, false);
        pacer.acked(t2 + ms(50), s, 10);
        assert!(pacer.draining.is_none());
        assert!(pacer.base.is_some_and(|(b, _)| b > ms(45)));
        // ...which stands for BASE_WINDOW from then on.
        let t3 = t2 + ms(50) + FIRST_PROBE + ms(10);
        let s = pacer.stamp(t3, false, false);
        pacer.acked(t3 + ms(80), s, 10);
        assert!(pacer.draining.is_none());
    }

    #[test]
    fn short_of_data_samples_never_shrink_the_window() {
        let mut pacer = Pacer::new(Duration::from_millis(20), 2 << 20);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Acks of `bytes` every 10 ms from `from` on, all with a 40 ms round
        // trip; `drained` as the sender says.
        let acks = |pacer: &mut Pacer, from: Instant, bytes: usize, drained: bool| {
            for k in 0..10u32 {
                let sent = from + ms(10) * k;
                let s = pacer.stamp(sent, k == 0, drained);
                pacer.acked(sent + ms(40), s, bytes);
            }
        };
        // Only small answers and acks: the rate is not known, the window open.
        acks(&mut pacer, t0, 100, true);
        assert_eq!(pacer.window(), 2 << 20);
        // Bulk sets it: 10 KB every 10 ms is 1 MB/s, times (40 + 20) ms.
        acks(&mut pacer, t0 + ms(200), 10_000, false);
        let bulk = pacer.window();
        assert!(bulk.abs_diff(60_000) < 6_000, "{bulk}");
        // Small answers seconds later leave it be.
        acks(&mut pacer, t0 + RATE_WINDOW * 3, 100, true);
        assert_eq!(pacer.window(), bulk);
    }
}

//! One peer's probing: when to probe it, the probe awaiting its answer, and
//! its verdict with hysteresis. Sans IO: instants in, decisions out.
//!
//! # Schedule
//!
//! A peer is probed once per `interval`. A probe unanswered within
//! `interval / 2` (the *answer window*) has failed. After a failure, while
//! the peer is not yet [`Verdict::Dead`], it is probed again at once
//! instead of an interval later, so `dead_after` failures in a row take
//! `dead_after` answer windows, not `dead_after` intervals. A dead peer is
//! probed once per interval again (to see it come back).
//!
//! Worst case from death to verdict: the peer dies just after answering,
//! the next probe goes out up to one interval later, then `dead_after`
//! windows: `interval × (1 + dead_after / 2)`, 2.5 intervals with the
//! default `dead_after = 3`. Steady state costs one probe and one answer per
//! peer and interval; only a failing peer is probed faster, and only until
//! it is dead.
//!
//! # Hysteresis
//!
//! - `dead_after` consecutive failures make a peer Dead.
//! - A Dead peer becomes Alive after `alive_after` consecutive answers.
//! - A new peer has **no verdict** until its first answer (Alive) or
//!   `dead_after` failures (Dead); meanwhile it is left out of reports, an
//!   abstention in the vote. Starting Alive would vote for a node nobody has
//!   heard from (a node that died while this edge restarted would be kept
//!   from eviction by our vote); starting Dead would vote every healthy
//!   neighbour dead after each restart of this edge. One answer is enough
//!   from no verdict, since there is no earlier verdict to flap from.
//!
//! Each change is returned once as a [`Change`], so the IO layer logs
//! verdict changes once, not every probe.

use std::time::{Duration, Instant};
use tether_link::health::Verdict;

/// The probing settings shared by all peers of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time between probes of a peer.
    pub interval: Duration,
    /// Consecutive failed probes before a peer is dead (at least 1).
    pub dead_after: u32,
    /// Consecutive answered probes before a dead peer is alive (at least 1).
    pub alive_after: u32,
}

impl Timing {
    /// How long a probe waits for its answer: half an interval.
    pub fn answer_window(&self) -> Duration {
        self.interval / 2
    }
}

/// A verdict that changed: the IO layer logs it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The verdict before (`None`: the peer had none yet).
    pub from: Option<Verdict>,
    /// The verdict now.
    pub to: Verdict,
}

/// A probe sent and not yet answered or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outstanding {
    nonce: u32,
    deadline: Instant,
}

/// One peer's probe state and verdict.
#[derive(Debug, Clone)]
pub struct Probing {
    verdict: Option<Verdict>,
    /// Consecutive failures (reset by an answer).
    failures: u32,
    /// Consecutive answers (reset by a failure).
    answers: u32,
    next_probe: Instant,
    outstanding: Option<Outstanding>,
}

impl Probing {
    /// A peer with no verdict, to be probed at `now`.
    pub fn new(now: Instant) -> Probing {
        Probing {
            verdict: None,
            failures: 0,
            answers: 0,
            next_probe: now,
            outstanding: None,
        }
    }

    /// The current verdict; `None` until the first answer or `dead_after`
    /// failures.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// When [`Probing::handle_timeout`] has something to do: the outstanding
    /// probe's deadline, else the next probe.
    pub fn poll_timeout(&self) -> Instant {
        match self.outstanding {
            Some(o) => o.deadline,
            None => self.next_probe,
        }
    }

    /// Fails the outstanding probe if its window has passed, then says
    /// whether to send a probe now. A probe to send must be recorded with
    /// [`Probing::sent`].
    pub fn handle_timeout(&mut self, now: Instant, timing: &Timing) -> (Option<Change>, bool) {
        let mut change = None;
        if let Some(o) = self.outstanding {
            if now >= o.deadline {
                self.outstanding = None;
                change = self.failure(timing);
                if self.verdict != Some(Verdict::Dead) {
                    // Suspect: confirm or clear it within answer windows.
                    self.next_probe = now;
                }
            }
        }
        let probe = self.outstanding.is_none() && now >= self.next_probe;
        (change, probe)
    }

    /// Records a probe with `nonce` sent at `now`.
    pub fn sent(&mut self, nonce: u32, now: Instant, timing: &Timing) {
        self.outstanding = Some(Outstanding {
            nonce,
            deadline: now + timing.answer_window(),
        });
        self.next_probe = now + timing.interval;
    }

    /// An answer with `nonce`: counts only if it answers the outstanding
    /// probe (a late answer to a probe already failed does not undo it).
    pub fn answered(&mut self, nonce: u32, timing: &Timing) -> Option<Change> {
        match self.outstanding {
            Some(o) if o.nonce == nonce => {
                self.outstanding = None;
                self.answer(timing)
            }
            _ => None,
        }
    }

    fn answer(&mut self, timing: &Timing) -> Option<Change> {
        self.failures = 0;
        self.answers = self.answers.saturating_add(1);
        let to = match self.verdict {
            Some(Verdict::Alive) => return None,
            Some(Verdict::Dead) if self.answers < timing.alive_after => return None,
            _ => Verdict::Alive,
        };
        self.set(to)
    }

    fn failure(&mut self, timing: &Timing) -> Option<Change> {
        self.answers = 0;
        self.failures = self.failures.saturating_add(1);
        if self.verdict == Some(Verdict::Dead) || self.failures < timing.dead_after {
            return None;
        }
        self.set(Verdict::Dead)
    }

    fn set(&mut self, to: Verdict) -> Option<Change> {
        let from = self.verdict.replace(to);
        Some(Change { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        interval: Duration::from_secs(20),
        dead_after: 3,
        alive_after: 2,
    };

    /// Runs the peer's timer until `until`, answering each probe when
    /// `answers` says so; returns every change with its time.
    fn run(
        p: &mut Probing,
        start: Instant,
        until: Instant,
        mut answers: impl FnMut(Instant) -> bool,
    ) -> Vec<(Duration, Change)> {
        let mut changes = Vec::new();
        let mut nonce = 0;
        loop {
            let at = p.poll_timeout();
            if at > until {
                return changes;
            }
            let (change, probe) = p.handle_timeout(at, &T);
            changes.extend(change.map(|c| (at - start, c)));
            if probe {
                nonce += 1;
                p.sent(nonce, at, &T);
                if answers(at) {
                    changes.extend(p.answered(nonce, &T).map(|c| (at - start, c)));
                }
            }
        }
    }

    #[test]
    fn first_answer_makes_alive_and_steady_state_is_one_probe_an_interval() {
        let start = Instant::now();
        let mut p = Probing::new(start);
        assert_eq!(p.verdict(), None);
        let mut probes = 0;
        let changes = run(&mut p, start, start + T.interval * 10, |_| {
            probes += 1;
            true
        });
        assert_eq!(
            changes,
            vec![(
                Duration::ZERO,
                Change {
                    from: None,
                    to: Verdict::Alive
                }
            )]
        );
        assert_eq!(probes, 11);
    }

    #[test]
    fn hysteresis_down_and_up() {
        let start = Instant::now();
        let mut p = Probing::new(start);
        let death = start + T.interval * 3 + Duration::from_millis(1);
        let back = start + T.interval * 10;
        let changes = run(&mut p, start, start + T.interval * 20, |at| {
            at < death || at >= back
        });
        let to: Vec<Verdict> = changes.iter().map(|(_, c)| c.to).collect();
        assert_eq!(to, [Verdict::Alive, Verdict::Dead, Verdict::Alive]);
        // Dead within interval × (1 + dead_after / 2) of the death.
        let dead_at = start + changes[1].0;
        assert!(
            dead_at - death <= T.interval * 5 / 2,
            "{:?}",
            dead_at - death
        );
        // Alive again only after alive_after answers, an interval apart.
        let alive_at = start + changes[2].0;
        assert_eq!(alive_at - back, T.interval * (T.alive_after - 1));
    }

    #[test]
    fn one_lost_probe_is_not_death() {
        let start = Instant::now();
        let mut p = Probing::new(start);
        let lost = [start + T.interval * 2, start + T.interval * 5];
        let changes = run(&mut p, start, start + T.interval * 8, |at| {
            !lost.contains(&at)
        });
        assert_eq!(changes.len(), 1, "{changes:?}");
        // A failure two in a row short of dead_after is cleared by an answer.
        let mut p = Probing::new(start);
        let gap = start + T.interval..start + T.interval * 2;
        let changes = run(&mut p, start, start + T.interval * 8, |at| {
            !gap.contains(&at)
        });
        assert_eq!(changes.len(), 1, "{changes:?}");
    }

    #[test]
    fn never_answered_is_dead_without_being_alive_first() {
        let start = Instant::now();
        let mut p = Probing::new(start);
        let changes = run(&mut p, start, start + T.interval * 4, |_| false);
        assert_eq!(
            changes,
            vec![(
                T.answer_window() * 3,
                Change {
                    from: None,
                    to: Verdict::Dead
                }
            )]
        );
    }

    #[test]
    fn late_or_foreign_answers_do_not_count() {
        let start = Instant::now();
        let mut p = Probing::new(start);
        let (_, probe) = p.handle_timeout(start, &T);
        assert!(probe);
        p.sent(1, start, &T);
        assert_eq!(p.answered(2, &T), None);
        let (change, retry) = p.handle_timeout(start + T.answer_window(), &T);
        assert_eq!(change, None, "one failure of three");
        assert!(retry, "a suspect peer is probed again at once");
        // The answer to the failed probe comes too late to count.
        assert_eq!(p.answered(1, &T), None);
        assert_eq!(p.verdict(), None);
    }
}

//! The link check of `[autonomy]`: finds a black-holed link long before the
//! edge's keepalive would, so a cut-off node's Lease is renewed within
//! Kubernetes' node grace.
//!
//! A closed connection is seen at once, but a black hole (packets silently
//! dropped) only 1.5 × the edge's keepalive after the last byte, and board
//! keepalives (30 s to 120 s) are longer than kube-controller-manager's
//! 40 s node-monitor grace. A node with a kubelet is never quiet for long
//! (kubelet renews its Lease every 10 s through the link), so a link that
//! received nothing for `link_check_after` is asked for an answer: the hub
//! opens a stream the edge always refuses, and any answer proves the link.
//! No answer within `link_check_timeout` and the link is dropped as dead.
//! Healthy busy links cost nothing; a quiet healthy one costs an open and
//! a reset (a few dozen bytes) per `link_check_after`.
//!
//! [`LinkCheck`] decides when to check and when to drop (sans IO, times
//! are inputs); [`watch`] drives it on one link.

use futures_lite::FutureExt;
use log::debug;
use std::time::{Duration, Instant, SystemTime};
use tether_link::io::Link;
use tether_link::mux::OwnedTarget;

/// The target of a check stream. The hub may open only ports (§3.4), so
/// the edge's mux itself refuses an upstream with `Refused`, whatever its
/// version and `services.allow_ports`, without dialling or logging (a port
/// the edge does not allow would be logged there at every check).
pub const CHECK_TARGET: &str = "tether:link-check";

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until this instant (or until something arrives).
    Wait(Instant),
    /// Open a check stream now, then call [`LinkCheck::sent`].
    Check,
    /// The link is dead: it was silent for `silent`, and a check sent
    /// `timeout` ago is unanswered. Drop it.
    Drop {
        /// How long nothing had arrived when the check was sent.
        silent: Duration,
        /// How long the check waited.
        timeout: Duration,
    },
}

/// One link's check state: idle, or a check sent at an instant.
#[derive(Debug, Clone)]
pub struct LinkCheck {
    after: Duration,
    timeout: Duration,
    /// When the pending check was sent, and how long the link had been
    /// silent then.
    pending: Option<(Instant, Duration)>,
    /// When the last check was answered (or could not be asked): the
    /// silence is counted from then at the earliest.
    heard: Option<Instant>,
}

impl LinkCheck {
    /// A check after `after` of silence, waiting `timeout` for the answer;
    /// `None` when checks are off (`after` is `None`).
    pub fn new(after: Option<Duration>, timeout: Duration) -> Option<LinkCheck> {
        after.map(|after| LinkCheck {
            after,
            timeout,
            pending: None,
            heard: None,
        })
    }

    /// What to do at `now`, given when the link last received anything
    /// (`last_input`; the link's start if nothing yet).
    pub fn poll(&mut self, now: Instant, last_input: Instant) -> Step {
        let last_input = self.heard.map_or(last_input, |h| h.max(last_input));
        if let Some((sent, silent)) = self.pending {
            // Anything that arrived after the check proves the link.
            if last_input > sent {
                self.pending = None;
            } else if now >= sent + self.timeout {
                return Step::Drop {
                    silent,
                    timeout: self.timeout,
                };
            } else {
                return Step::Wait(sent + self.timeout);
            }
        }
        let due = last_input + self.after;
        if now >= due {
            Step::Check
        } else {
            Step::Wait(due)
        }
    }

    /// A check was sent at `now`.
    pub fn sent(&mut self, now: Instant, last_input: Instant) {
        self.pending = Some((now, now.saturating_duration_since(last_input)));
    }

    /// The edge answered the check at `now` (the answer also shows as
    /// input; this covers an input time that a clock step made look
    /// older), or no check could be asked: the next one comes after
    /// another quiet period.
    pub fn answered(&mut self, now: Instant) {
        self.pending = None;
        self.heard = Some(now);
    }
}

/// When `link` last received anything, not before `since` (the link's
/// start: the session's counters span its earlier connections).
fn last_input(link: &Link, since: Instant) -> Instant {
    let at = link.stats().last_input.and_then(|t| {
        let ago = SystemTime::now().duration_since(t).ok()?;
        Instant::now().checked_sub(ago)
    });
    at.map_or(since, |a| a.max(since))
}

/// Checks `link` (up since `since`) while it is driven; returns only when
/// the link is dead ([`Step::Drop`]): the caller runs it beside the driver
/// and then cuts the link ([`Link::cut`]), keeping the session.
pub async fn watch(link: &Link, mut check: LinkCheck, since: Instant) -> Step {
    loop {
        let now = Instant::now();
        match check.poll(now, last_input(link, since)) {
            Step::Wait(at) => {
                async_io::Timer::at(at).await;
            }
            step @ Step::Drop { .. } => return step,
            Step::Check => {
                let stream = match link.open(OwnedTarget::Upstream(CHECK_TARGET.to_owned())) {
                    Ok(s) => s,
                    Err(e) => {
                        // No question asked, so no proof of death: try
                        // again after another quiet period.
                        debug!("link check: no stream to open ({e}); trying again later");
                        check.answered(now);
                        continue;
                    }
                };
                check.sent(now, last_input(link, since));
                let deadline = now + check.timeout;
                let answer = async { Some(stream.accepted().await) }.or(async {
                    async_io::Timer::at(deadline).await;
                    None
                });
                if let Some(a) = answer.await {
                    debug!("link check: answered ({a:?})");
                    check.answered(Instant::now());
                }
                // Dropping the stream resets it if the edge accepted it
                // (it never should).
                drop(stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_busy_link_is_never_checked() {
        let t0 = Instant::now();
        let mut c = LinkCheck::new(Some(15 * S), 5 * S).expect("on");
        // Input every 10 s (kubelet's Lease): always waiting.
        for i in 0..10u32 {
            let last = t0 + 10 * S * i;
            assert_eq!(c.poll(last + 14 * S, last), Step::Wait(last + 15 * S));
        }
    }

    #[test]
    fn silent_then_answered_then_silent_again() {
        let t0 = Instant::now();
        let mut c = LinkCheck::new(Some(15 * S), 5 * S).expect("on");
        assert_eq!(c.poll(t0 + 15 * S, t0), Step::Check);
        c.sent(t0 + 15 * S, t0);
        assert_eq!(c.poll(t0 + 16 * S, t0), Step::Wait(t0 + 20 * S));
        // The answer arrives 200 ms after the check: idle again, the next
        // check 15 s after that answer.
        let answer = t0 + 15 * S + S / 5;
        assert_eq!(c.poll(t0 + 16 * S, answer), Step::Wait(answer + 15 * S));
        assert_eq!(c.poll(answer + 15 * S, answer), Step::Check);
    }

    #[test]
    fn silent_and_unanswered_is_dropped() {
        let t0 = Instant::now();
        let mut c = LinkCheck::new(Some(15 * S), 5 * S).expect("on");
        assert_eq!(c.poll(t0 + 16 * S, t0), Step::Check);
        c.sent(t0 + 16 * S, t0);
        assert_eq!(c.poll(t0 + 20 * S, t0), Step::Wait(t0 + 21 * S));
        assert_eq!(
            c.poll(t0 + 21 * S, t0),
            Step::Drop {
                silent: 16 * S,
                timeout: 5 * S
            }
        );
    }

    #[test]
    fn an_answer_by_the_stream_counts_even_without_newer_input() {
        let t0 = Instant::now();
        let mut c = LinkCheck::new(Some(3 * S), S).expect("on");
        assert_eq!(c.poll(t0 + 3 * S, t0), Step::Check);
        c.sent(t0 + 3 * S, t0);
        c.answered(t0 + 3 * S + S / 10);
        // Not dropped at the timeout: checked again only after another
        // quiet period from the answer.
        assert_eq!(c.poll(t0 + 4 * S, t0), Step::Wait(t0 + 6 * S + S / 10));
        assert_eq!(c.poll(t0 + 7 * S, t0), Step::Check);
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(LinkCheck::new(None, 5 * S).is_none());
    }
}

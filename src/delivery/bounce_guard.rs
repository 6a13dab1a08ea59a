//! The bounce guard: a configuration mistake must never become a mass
//! bounce.
//!
//! Why: after an outage the whole backlog goes to the upstream at once. If
//! its connector is wrong (or the mail host changed what it accepts), every
//! message gets the same permanent reply — Exchange Online's
//! `550 5.7.51 TenantInboundAttribution`, a relay refusal — and bouncing
//! each one would return the backlog to its senders: the worst outcome a
//! continuity relay exists to prevent. So when one upstream gives the same
//! permanent reply (same SMTP code and enhanced status code) for
//! `bounce_guard_failures` recipients within `bounce_guard_window`, and for
//! more recipients than it accepted since the first of those refusals (a
//! few unknown users among thousands delivered are verdicts; an upstream
//! that refuses everything alike is not), the guard *trips*: that reply is treated as a fault of the upstream, not a verdict
//! on each message. The recipients it comes back for from then on stay
//! deferred (with the reply kept in their history), the upstream is held,
//! an alert goes out with the reply text, and an operator decides: release
//! the upstream (its mail is retried) or bounce those messages. Up to
//! `bounce_guard_failures - 1` recipients (plus those already in flight
//! when the count is reached, which are deferred too) bounce before it
//! trips; replies made up locally (no MX, a bad route) never count.
//!
//! `soft_bounce` is Postfix's emergency switch: while it is on, every
//! permanent reply from an upstream is kept as a deferral and retried.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Why an upstream is held by the guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trip {
    /// The reply that repeated, as the upstream gave it first.
    pub reply: String,
    /// Recipients refused with it inside the window when it tripped.
    pub recipients: usize,
    pub at_ms: u64,
}

/// What to do with one permanent reply from an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// A verdict on this recipient: bounce it.
    Bounce,
    /// Keep it deferred, with this reply recorded.
    Defer(String),
    /// This reply tripped the guard: defer it, hold the upstream, alert.
    Tripped(String, Trip),
}

pub struct BounceGuard {
    failures: usize,
    window_ms: u64,
    soft_bounce: AtomicBool,
    state: Mutex<GuardState>,
}

#[derive(Default)]
struct GuardState {
    /// Per upstream: (time, reply class) of recent permanent replies.
    recent: HashMap<String, VecDeque<(u64, String)>>,
    /// Per upstream: recipients accepted, in buckets of `BUCKET_MS`
    /// (bucket start, count), inside the window.
    accepted: HashMap<String, VecDeque<(u64, usize)>>,
    tripped: HashMap<String, Trip>,
}

/// Acceptances are counted per tenth of a second: a drain of thousands a
/// second costs one entry per bucket, not per recipient.
const BUCKET_MS: u64 = 100;

fn forget_before<T>(queue: &mut VecDeque<(u64, T)>, oldest_ms: u64) {
    while queue.front().is_some_and(|(at, _)| *at < oldest_ms) {
        queue.pop_front();
    }
}

/// "550 5.7.51 TenantInboundAttribution; …" → "550 5.7.51": what two
/// replies must share to count as the same refusal.
fn reply_class(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    match words.next() {
        Some(enhanced) if enhanced.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            format!("{code} {enhanced}")
        }
        _ => code.to_string(),
    }
}

impl BounceGuard {
    /// `failures` = 0 turns the guard off.
    pub fn new(failures: u32, window: Duration, soft_bounce: bool) -> BounceGuard {
        BounceGuard {
            failures: failures as usize,
            window_ms: window.as_millis() as u64,
            soft_bounce: AtomicBool::new(soft_bounce),
            state: Mutex::new(GuardState::default()),
        }
    }

    pub fn soft_bounce(&self) -> bool {
        self.soft_bounce.load(Ordering::SeqCst)
    }

    pub fn set_soft_bounce(&self, on: bool) {
        self.soft_bounce.store(on, Ordering::SeqCst);
    }

    /// Judge one permanent reply `upstream` gave at `now_ms`.
    pub fn judge(&self, upstream: &str, reply: &str, now_ms: u64) -> Judgement {
        if self.soft_bounce() {
            return Judgement::Defer(format!(
                "{reply} (soft_bounce is on: kept and retried, not bounced)"
            ));
        }
        if self.failures == 0 {
            return Judgement::Bounce;
        }
        let mut state = self.state.lock().expect("bounce guard lock");
        if let Some(trip) = state.tripped.get(upstream) {
            return Judgement::Defer(held_reply(reply, trip));
        }
        let class = reply_class(reply);
        let oldest = now_ms.saturating_sub(self.window_ms);
        let recent = state.recent.entry(upstream.to_string()).or_default();
        forget_before(recent, oldest);
        recent.push_back((now_ms, class.clone()));
        let mut alike = recent.iter().filter(|(_, c)| *c == class);
        let first_ms = alike.next().map_or(now_ms, |(at, _)| *at);
        let same = 1 + alike.count();
        if same < self.failures {
            return Judgement::Bounce;
        }
        let accepted: usize = state.accepted.get_mut(upstream).map_or(0, |buckets| {
            forget_before(buckets, oldest);
            buckets
                .iter()
                .filter(|(at, _)| at + BUCKET_MS > first_ms)
                .map(|(_, count)| count)
                .sum()
        });
        if same <= accepted {
            return Judgement::Bounce;
        }
        state.recent.remove(upstream);
        let trip = Trip {
            reply: reply.to_string(),
            recipients: same,
            at_ms: now_ms,
        };
        state.tripped.insert(upstream.to_string(), trip.clone());
        Judgement::Tripped(held_reply(reply, &trip), trip)
    }

    /// `upstream` accepted a recipient at `now_ms`.
    pub fn accepted(&self, upstream: &str, now_ms: u64) {
        if self.failures == 0 {
            return;
        }
        let bucket = now_ms - now_ms % BUCKET_MS;
        let mut state = self.state.lock().expect("bounce guard lock");
        let buckets = state.accepted.entry(upstream.to_string()).or_default();
        match buckets.back_mut() {
            Some((at, count)) if *at == bucket => *count += 1,
            _ => buckets.push_back((bucket, 1)),
        }
        forget_before(buckets, now_ms.saturating_sub(self.window_ms));
    }

    /// Does the guard hold `upstream`?
    pub fn holds(&self, upstream: &str) -> bool {
        self.state
            .lock()
            .expect("bounce guard lock")
            .tripped
            .contains_key(upstream)
    }

    /// The upstreams the guard holds, and why.
    pub fn trips(&self) -> HashMap<String, Trip> {
        self.state
            .lock()
            .expect("bounce guard lock")
            .tripped
            .clone()
    }

    /// An operator released the upstream: count afresh.
    pub fn clear(&self, upstream: &str) {
        let mut state = self.state.lock().expect("bounce guard lock");
        state.tripped.remove(upstream);
        state.recent.remove(upstream);
        state.accepted.remove(upstream);
    }
}

fn held_reply(reply: &str, trip: &Trip) -> String {
    format!(
        "4.3.0 bounce guard: upstream held after {} recipients were refused alike ({}); not bounced, an operator decides. Reply: {reply}",
        trip.recipients,
        reply_class(&trip.reply)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXO: &str = "550 5.7.51 TenantInboundAttribution; Rejecting the message";

    #[test]
    fn the_same_refusal_trips_it_and_other_replies_or_old_ones_do_not() {
        let guard = BounceGuard::new(3, Duration::from_secs(60), false);
        assert_eq!(guard.judge("exo", EXO, 1_000), Judgement::Bounce);
        // Another refusal, another upstream, and an unknown user are counted apart.
        assert_eq!(
            guard.judge("exo", "550 5.1.1 unknown user", 1_100),
            Judgement::Bounce
        );
        assert_eq!(guard.judge("other", EXO, 1_200), Judgement::Bounce);
        assert_eq!(guard.judge("exo", EXO, 2_000), Judgement::Bounce);
        // Outside the window the first one no longer counts.
        assert_eq!(guard.judge("exo", EXO, 61_500), Judgement::Bounce);
        let Judgement::Tripped(reply, trip) = guard.judge("exo", "550 5.7.51 other words", 61_900)
        else {
            panic!("the third alike within a minute trips it");
        };
        assert!(reply.starts_with("4.3.0 bounce guard"), "{reply}");
        assert_eq!(trip.recipients, 3);
        // Now every permanent reply from it is deferred, any text.
        assert!(matches!(
            guard.judge("exo", "550 5.1.1 unknown user", 63_000),
            Judgement::Defer(_)
        ));
        assert_eq!(guard.trips().len(), 1);
        assert_eq!(guard.judge("other", EXO, 63_000), Judgement::Bounce);
        guard.clear("exo");
        assert_eq!(guard.judge("exo", EXO, 64_000), Judgement::Bounce);
    }

    #[test]
    fn refusals_among_more_acceptances_are_verdicts_not_a_fault() {
        let guard = BounceGuard::new(3, Duration::from_secs(600), false);
        // Unknown users sprinkled through a drain that mostly gets through.
        for i in 0..50u64 {
            for j in 0..10 {
                guard.accepted("exo", 1_000 + i * 1_000 + j);
            }
            assert_eq!(
                guard.judge("exo", "550 5.1.1 unknown user", 1_500 + i * 1_000),
                Judgement::Bounce,
                "refusal {i}"
            );
        }
        // An upstream that accepted a first batch and then refuses
        // everything: what it accepted before the refusals began does not
        // count against them.
        for j in 0..500 {
            guard.accepted("exo", 100_000 + j);
        }
        assert_eq!(guard.judge("exo", EXO, 101_000), Judgement::Bounce);
        assert_eq!(guard.judge("exo", EXO, 101_100), Judgement::Bounce);
        assert!(matches!(
            guard.judge("exo", EXO, 101_200),
            Judgement::Tripped(..)
        ));
    }

    #[test]
    fn soft_bounce_defers_everything_and_zero_failures_turns_the_guard_off() {
        let guard = BounceGuard::new(0, Duration::from_secs(60), false);
        for at in 0..100 {
            assert_eq!(guard.judge("exo", EXO, at), Judgement::Bounce);
        }
        guard.set_soft_bounce(true);
        assert!(
            matches!(guard.judge("exo", EXO, 200), Judgement::Defer(r) if r.contains("soft_bounce"))
        );
        assert_eq!(reply_class("554 relay denied"), "554");
    }
}

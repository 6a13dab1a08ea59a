//! One delivery attempt of one message: group its pending recipients by
//! upstream, run one transaction per upstream through the SMTP client, and
//! record every recipient's outcome durably (`Spool::update_state`, merged
//! onto the state as it is now) before the next attempt is planned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::client::{Outcome, SessionFailure, Transaction};
use super::route::{self, RouteError};
use super::upstream::Availability;
use super::*;
use crate::envelope::{now_ms, Envelope, MessageState, QueueId, RecipientStatus};
use crate::smtp_client::FileTail;
use crate::spool::StoredBody;

impl Engine {
    /// The route for one recipient of a message: a per-message override
    /// (admin "requeue") first, then `[send] relay` for users' mail to
    /// other domains, then the domain's own.
    pub(super) fn route_of(
        &self,
        envelope: &Envelope,
        state: &MessageState,
        domain: &str,
    ) -> route::Route {
        match &state.route {
            Some(hosts) => route::Route {
                upstream: hosts.clone(),
                tls: crate::config::UpstreamTls::Opportunistic,
                relay: false,
            },
            None => self.router.route_for_recipient(envelope, domain),
        }
    }

    /// The upstream name (health, hold, concurrency) of one recipient.
    pub(super) fn route_name(
        &self,
        envelope: &Envelope,
        state: &MessageState,
        domain: &str,
    ) -> String {
        self.route_of(envelope, state, domain).upstream
    }

    pub(super) async fn process(self: &Arc<Self>, id: QueueId) {
        let message = match self.spool.get(id).await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(queue_id = %id, error = %err, "delivery: cannot read message state");
                return;
            }
        };
        if message.state.held {
            // Held by an operator after it was picked from the schedule.
            return;
        }
        let stored = match self.spool.open_body(id).await {
            Ok(stored) => stored,
            Err(crate::spool::SpoolError::NotFound(_)) => return,
            Err(err) => {
                // Damaged on disk: keep it for an operator, never drop it.
                tracing::error!(queue_id = %id, error = %err, "delivery: message body unreadable; parked for an operator");
                let _ = self.spool.park(id, PARKED_INDEFINITELY_MS).await;
                return;
            }
        };
        let mut state = message.state.clone();
        let mut recorded = 0;
        let envelope = &message.envelope;
        let body = match with_intake_verdicts(stored, envelope, &self.hostname) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(queue_id = %id, error = %err, "delivery: message body unreadable; parked for an operator");
                let _ = self.spool.park(id, PARKED_INDEFINITELY_MS).await;
                return;
            }
        };

        // Pending recipients, grouped by upstream (one transaction each).
        let mut groups: BTreeMap<String, (route::Route, String, Vec<usize>)> = BTreeMap::new();
        for (index, rcpt) in envelope.recipients.iter().enumerate() {
            if state.recipients[index].status.is_final() {
                continue;
            }
            let route = self.route_of(envelope, &state, rcpt.domain());
            groups
                .entry(route.upstream.clone())
                .or_insert_with(|| (route, rcpt.domain().to_string(), Vec::new()))
                .2
                .push(index);
        }

        let mut attempted = false;
        let mut parked_until: Option<u64> = None;
        let mut parked_on = Vec::new();
        let mut waiting_on = Vec::new();
        let mut abandoned_on: Vec<(String, String)> = Vec::new();
        for (name, (route, domain, indexes)) in groups {
            match self.upstreams.availability(&name, &domain) {
                Availability::Open => {}
                Availability::Held | Availability::Down => {
                    // Until the upstream is released or seen up again.
                    parked_until.get_or_insert(PARKED_INDEFINITELY_MS);
                    parked_on.push((name, domain));
                    continue;
                }
                Availability::Throttled(until) => {
                    // The earliest moment any of its upstreams may be tried.
                    parked_until = Some(parked_until.map_or(until, |t| t.min(until)));
                    continue;
                }
            }
            attempted = true;
            let permits = self.upstreams.permits(&name, &domain);
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let (outcomes, reach) = self
                .attempt(
                    &domain,
                    &route,
                    envelope,
                    &indexes,
                    &body,
                    state.route.as_deref(),
                )
                .await;
            for (index, outcome, relay) in outcomes {
                let outcome = self.guard_bounce(id, &name, outcome, &relay).await;
                self.record(id, envelope, &mut state, index, outcome, &relay);
                recorded += 1;
            }
            if self.bounce_guard.holds(&name) {
                // Kept for the operator: flushed the moment they release
                // the upstream, not at the next retry.
                waiting_on.push((name, domain));
                continue;
            }
            if reach != Reach::Reached {
                // Keeps its retry schedule, but is flushed with the rest the
                // moment the upstream is seen up again.
                if reach == Reach::Abandoned {
                    abandoned_on.push((name.clone(), domain.clone()));
                }
                waiting_on.push((name, domain));
            }
        }

        self.expire(id, envelope, &mut state);
        // A large message's DSN returns its header section only (like
        // Postfix's bounce_size_limit).
        let bounced = self
            .bounce_failures(&message, &mut state, &body.head, body.tail.is_none())
            .await;
        if state.is_finished() && bounced {
            if self
                .retain(id, envelope, &message.state, &mut state, recorded)
                .await
            {
                return;
            }
            let reason = if state
                .recipients
                .iter()
                .any(|r| r.status == RecipientStatus::Failed)
            {
                "bounced"
            } else {
                "delivered"
            };
            match self.spool.remove(id, reason).await {
                Ok(_) => tracing::info!(queue_id = %id, reason, "removed"),
                Err(err) => {
                    tracing::error!(queue_id = %id, error = %err, "cannot remove finished message; it may be delivered again")
                }
            }
            return;
        }
        if !bounced {
            // The DSN could not be queued: keep the message and try again soon.
            attempted = true;
        }
        for (name, domain) in parked_on.iter().chain(&waiting_on) {
            self.upstreams.park(name, domain, id);
        }
        if attempted {
            state.next_attempt_ms = now_ms() + self.backoff(&state);
            // Abandoned because its upstream came back: try again now.
            if abandoned_on.iter().any(|(name, domain)| {
                self.upstreams.availability(name, domain) == Availability::Open
            }) {
                state.next_attempt_ms = now_ms();
            }
            let recorded_state = self
                .spool
                .update_state(id, |current| {
                    merge_attempt(current, &message.state, &state, recorded)
                })
                .await;
            match recorded_state {
                Ok(Some(())) => {}
                Ok(None) => {
                    tracing::info!(queue_id = %id, "delivery: message left the spool during the attempt (operator)")
                }
                Err(err) => {
                    tracing::error!(queue_id = %id, error = %err, "delivery: cannot record attempt; it will be repeated")
                }
            }
        } else if let Some(until) = parked_until {
            let _ = self.spool.park(id, until).await;
        }
        // A flush may have raced with parking: re-check now-open upstreams.
        for (name, domain) in parked_on {
            if self.upstreams.availability(&name, &domain) == Availability::Open {
                self.flush(&self.upstreams.take_parked(&name)).await;
            }
        }
    }

    /// One transaction for one upstream: per-recipient outcomes with the relay
    /// used, and whether the upstream could not be reached at all.
    pub(super) async fn attempt(
        self: &Arc<Self>,
        domain: &str,
        route: &route::Route,
        envelope: &Envelope,
        indexes: &[usize],
        message: &Outbound,
        via: Option<&str>,
    ) -> (Vec<(usize, Outcome, String)>, Reach) {
        let name = route.upstream.as_str();
        let all = |outcome: Outcome, relay: &str| {
            indexes
                .iter()
                .map(|i| (*i, outcome.clone(), relay.to_string()))
                .collect::<Vec<_>>()
        };
        let resolved = match via {
            Some(hosts) => self.router.targets_via(hosts).await,
            None if route.relay => self.router.relay_targets().await,
            None => self.router.targets(domain).await,
        };
        let targets = match resolved {
            Ok(targets) => targets,
            Err(RouteError::Permanent(why)) => {
                return (all(Outcome::Failed(why), "none"), Reach::Reached)
            }
            Err(RouteError::Temporary(why)) => {
                return (all(Outcome::Deferred(why), "none"), Reach::Reached)
            }
        };
        let tx = Transaction {
            envelope,
            recipients: indexes
                .iter()
                .map(|i| (*i, &envelope.recipients[*i]))
                .collect(),
            prefix: &message.prefix,
            body: &message.head,
            tail: message.tail.as_ref(),
            tls: route.tls,
        };
        let mut last_error = String::new();
        let mut all_unreachable = true;
        let mut transitions = self.upstreams.transitions(name, domain);
        transitions.mark_unchanged();
        for target in &targets {
            // An attempt under way when the upstream is declared down or
            // comes back is abandoned (its connection may be one that went
            // silent): deferred now and tried again, instead of waiting out
            // `command_timeout` on a dead connection.
            let delivered = tokio::select! {
                delivered = self.transport.deliver(target, &tx) => delivered,
                _ = transitions.changed() => {
                    tracing::info!(upstream = name, target = %target.addr, "delivery: attempt abandoned: the upstream changed state while it ran");
                    self.transport.clear_pool();
                    let reply = "4.4.2 attempt abandoned: the upstream went down or came back while it ran".to_string();
                    return (all(Outcome::Deferred(reply), "none"), Reach::Abandoned);
                }
            };
            match delivered {
                Ok(report) => {
                    let flushed = self.upstreams.record_success(name, domain);
                    self.flush(&flushed).await;
                    let relay = format!(
                        "{}[{}]{}",
                        target.host,
                        target.addr,
                        report.tls.map(|t| format!(" ({t})")).unwrap_or_default()
                    );
                    if let Some(throttle) = report.outcomes.iter().find_map(|(_, o)| match o {
                        Outcome::Deferred(reply) if client::is_throttle(reply) => Some(reply),
                        _ => None,
                    }) {
                        let pause = self
                            .retry
                            .first()
                            .copied()
                            .unwrap_or(Duration::from_secs(60));
                        tracing::info!(upstream = name, reply = %throttle, "throttled by upstream");
                        self.upstreams
                            .throttle(name, domain, now_ms() + pause.as_millis() as u64);
                    }
                    let outcomes = report
                        .outcomes
                        .into_iter()
                        .map(|(i, o)| (i, o, relay.clone()));
                    return (outcomes.collect(), Reach::Reached);
                }
                Err(SessionFailure::Unreachable(why)) => last_error = why,
                Err(SessionFailure::Broken(why)) => {
                    all_unreachable = false;
                    last_error = match target.mta_sts {
                        true => format!(
                            "{why} (the MTA-STS policy of {domain} is enforce: verified TLS only)"
                        ),
                        false => why,
                    };
                }
            }
        }
        if all_unreachable && self.upstreams.record_failure(name, domain, &last_error) {
            self.transport.clear_pool();
            tokio::spawn(self.clone().probe(name.to_string()));
        }
        let reply = if last_error.starts_with('4') || last_error.contains(" 4.") {
            last_error
        } else {
            format!("4.4.1 {last_error}")
        };
        let reach = if all_unreachable {
            Reach::Unreachable
        } else {
            Reach::Reached
        };
        (all(Outcome::Deferred(reply), "none"), reach)
    }

    /// A permanent reply from the upstream goes past the bounce guard (and
    /// `soft_bounce`) before it becomes a bounce; the guard also counts what
    /// the upstream accepts. Replies made up here
    /// (relay "none": no MX, a bad route) are verdicts of our own and pass.
    async fn guard_bounce(
        &self,
        id: QueueId,
        upstream: &str,
        outcome: Outcome,
        relay: &str,
    ) -> Outcome {
        if relay == "none" {
            return outcome;
        }
        let reply = match outcome {
            Outcome::Failed(reply) => reply,
            Outcome::Delivered(_) => {
                self.bounce_guard.accepted(upstream, now_ms());
                return outcome;
            }
            Outcome::Deferred(_) => return outcome,
        };
        match self.bounce_guard.judge(upstream, &reply, now_ms()) {
            super::bounce_guard::Judgement::Bounce => Outcome::Failed(reply),
            super::bounce_guard::Judgement::Defer(held) => Outcome::Deferred(held),
            super::bounce_guard::Judgement::Tripped(held, trip) => {
                tracing::error!(
                    queue_id = %id,
                    upstream,
                    recipients = trip.recipients,
                    reply = %trip.reply,
                    "bounce guard: the upstream refuses every recipient alike; holding it instead of bouncing its mail (release it to retry, or bounce the messages)"
                );
                crate::metrics::get().bounce_guard_trips.inc();
                if let Err(err) = self.spool.set_upstream_held(upstream, true).await {
                    tracing::error!(upstream, error = %err, "bounce guard: cannot store the hold durably; held until restart");
                }
                self.upstreams.set_held(upstream, true);
                Outcome::Deferred(held)
            }
        }
    }

    pub(super) fn record(
        &self,
        id: QueueId,
        envelope: &Envelope,
        state: &mut MessageState,
        index: usize,
        outcome: Outcome,
        relay: &str,
    ) {
        let rcpt = &mut state.recipients[index];
        rcpt.attempts += 1;
        let (status, reply, word) = match outcome {
            Outcome::Delivered(reply) => (RecipientStatus::Delivered, reply, "sent"),
            Outcome::Deferred(reply) => (RecipientStatus::Deferred, reply, "deferred"),
            Outcome::Failed(reply) => (RecipientStatus::Failed, reply, "bounced"),
        };
        rcpt.status = status;
        crate::metrics::get().delivery(word);
        let delay = now_ms().saturating_sub(envelope.received_at_ms) as f64 / 1000.0;
        tracing::info!(
            queue_id = %id,
            to = %envelope.recipients[index].address,
            relay,
            delay = format!("{delay:.1}"),
            attempts = rcpt.attempts,
            status = word,
            reply = %reply,
            "delivery"
        );
        state.history.push(crate::envelope::Attempt {
            ts_ms: now_ms(),
            recipient: index,
            outcome: word.to_string(),
            relay: relay.to_string(),
            reply: reply.clone(),
        });
        let excess = state
            .history
            .len()
            .saturating_sub(crate::envelope::MAX_HISTORY);
        state.history.drain(..excess);
        state.recipients[index].last_reply = Some(reply);
    }

    pub(super) fn backoff(&self, state: &MessageState) -> u64 {
        let attempts = state
            .recipients
            .iter()
            .filter(|r| !r.status.is_final())
            .map(|r| r.attempts)
            .min()
            .unwrap_or(1)
            .max(1) as usize;
        let base = self.retry[(attempts - 1).min(self.retry.len() - 1)];
        let jitter = 0.8 + fastrand::f64() * 0.4;
        (base.as_millis() as f64 * jitter) as u64
    }
}

/// Whether one attempt got an answer from its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    Reached,
    /// No target took a connection.
    Unreachable,
    /// Given up because the upstream was declared down or came back meanwhile.
    Abandoned,
}

/// Apply what one attempt changed (`before` → `after`) to the state as it
/// is now (`current`), which an operator may have changed meanwhile. The
/// attempt owns the recipients' outcomes, its history entries (`recorded`
/// of them, the newest of `after`) and retention; the operator owns hold,
/// route and rescheduling: a hold, release, retry or requeue made during
/// the attempt is never undone by its result.
pub(super) fn merge_attempt(
    current: &mut MessageState,
    before: &MessageState,
    after: &MessageState,
    recorded: usize,
) {
    let operator_changed = current.operator_changes != before.operator_changes;
    for (index, outcome) in after.recipients.iter().enumerate() {
        if before.recipients.get(index) != Some(outcome) {
            if let Some(slot) = current.recipients.get_mut(index) {
                // A delay notice sent while the attempt ran stays sent.
                let notified = slot.delay_notified;
                *slot = outcome.clone();
                slot.delay_notified |= notified;
            }
        }
    }
    let added = recorded.min(after.history.len());
    current
        .history
        .extend_from_slice(&after.history[after.history.len() - added..]);
    let excess = current
        .history
        .len()
        .saturating_sub(crate::envelope::MAX_HISTORY);
    current.history.drain(..excess);
    if after.retain_until_ms != before.retain_until_ms {
        current.retain_until_ms = after.retain_until_ms;
    }
    if !operator_changed {
        current.next_attempt_ms = after.next_attempt_ms;
    }
}

/// The message as it leaves: our intake verdicts on top (Exchange Online
/// transport rules can act on them), and any `Authentication-Results` that
/// claims to be ours but came from outside removed (RFC 8601 5). A large
/// body's header section (at most `HEAD_MAX` bytes) is read for that; the
/// rest stays in its file and is read as it is sent.
pub(super) fn with_intake_verdicts(
    stored: StoredBody,
    envelope: &Envelope,
    hostname: &str,
) -> std::io::Result<Outbound> {
    let (mut head, tail) = match stored {
        StoredBody::Memory(body) => (body, None),
        StoredBody::File { file, len } => {
            use std::os::unix::fs::FileExt;
            let mut start = vec![0u8; len.min(HEAD_MAX) as usize];
            crate::fsutil::run_blocking(|| file.read_exact_at(&mut start, 0))?;
            let header_end =
                memchr::memmem::find(&start, b"\r\n\r\n").map_or(start.len(), |at| at + 4);
            start.truncate(header_end);
            let tail = FileTail {
                file,
                offset: header_end as u64,
                len: len - header_end as u64,
            };
            (start, Some(tail))
        }
    };
    crate::trust::auth::strip_forged_results(&mut head, hostname);
    let mut prefix = String::new();
    if let Some(verdict) = envelope.lure.as_ref().filter(|v| v.score > 0) {
        prefix.push_str(&format!(
            "X-Breakwater-Lure: {}\r\n",
            verdict.header_value()
        ));
    }
    if let Some(auth) = &envelope.auth {
        prefix.push_str(&auth.header());
    }
    Ok(Outbound {
        prefix: prefix.into_bytes(),
        head,
        tail,
    })
}

/// How much of a large message is read to find its header section.
const HEAD_MAX: u64 = 1024 * 1024;

/// A message as it goes upstream: the header fields intake's verdicts add,
/// then the stored bytes: all of them (`tail` = None), or a large body's
/// header section with the rest still in its file. Kept apart so that adding
/// two header lines never copies a body, and a 50 MB body in flight costs a
/// read buffer, not 50 MB.
pub(super) struct Outbound {
    prefix: Vec<u8>,
    head: Vec<u8>,
    tail: Option<FileTail>,
}

impl Outbound {
    /// The stored message's start (all of it when small, else at least its
    /// header section).
    pub(super) fn head(&self) -> &[u8] {
        &self.head
    }
}

//! DELIVERY: take due messages from the spool's schedule and get them to the
//! upstream — per recipient, with retries, bounces, and an automatic flush
//! when a down upstream comes back.
//!
//! - `route`: static hosts or MX (hickory), self-MX protection;
//! - `client`: the SMTP client (mail-send low-level calls), TLS policy, pool;
//! - `upstream`: per-upstream circuit, holds, throttling, parked messages;
//! - `dsn`: RFC 3464 bounces.
//!
//! The scheduler reads only the spool's `schedule` index (never a full scan),
//! parks a message while it is in flight (a lease, so a crashed task cannot
//! lose it), and records each attempt's per-recipient outcome durably with
//! `Spool::set_state` before the next attempt is planned. A delivery that
//! happened but was not yet recorded when the process died is repeated after
//! restart: duplicates are possible, loss is not.

pub mod client;
pub mod dsn;
pub mod route;
pub mod upstream;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Config, DeliveryConfig};
use crate::envelope::{
    now_ms, ClientInfo, Envelope, MessageState, QueueId, Recipient, RecipientStatus,
};
use crate::spool::{Spool, SpooledMessage};
use client::{Outcome, SessionFailure, Transaction, Transport};
use route::{RouteError, Router};
use upstream::{Availability, UpstreamStatus, Upstreams};

/// How long a message stays parked while in flight before it is considered
/// abandoned and becomes due again.
const IN_FLIGHT_LEASE_MS: u64 = 30 * 60 * 1000;
/// "Until further notice" for messages waiting on a held or down upstream.
const PARKED_INDEFINITELY_MS: u64 = u64::MAX / 2;

struct Engine {
    spool: Spool,
    router: Router,
    transport: Transport,
    upstreams: Upstreams,
    config: DeliveryConfig,
    hostname: String,
    retry: Vec<Duration>,
    /// `[web] retain_delivered`: keep delivered messages readable this long.
    retain_delivered_ms: u64,
    global: Arc<Semaphore>,
    /// Messages with an attempt (or an operator's bounce) under way: the
    /// delivery lock of a message. Whoever inserts an ID owns the message's
    /// delivery until it removes it and wakes `in_flight_done`.
    in_flight: Mutex<HashSet<QueueId>>,
    in_flight_done: tokio::sync::Notify,
}

pub struct DeliveryEngine {
    handle: DeliveryHandle,
    scheduler: JoinHandle<()>,
}

/// What operators (admin API, tests) use to steer delivery. Cheap to clone.
#[derive(Clone)]
pub struct DeliveryHandle {
    engine: Arc<Engine>,
}

impl std::ops::Deref for DeliveryEngine {
    type Target = DeliveryHandle;
    fn deref(&self) -> &DeliveryHandle {
        &self.handle
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("delivery setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

impl DeliveryEngine {
    pub fn start(
        config: &Config,
        spool: Spool,
        shutdown: watch::Receiver<bool>,
    ) -> Result<DeliveryEngine, DeliveryError> {
        let router = Router::new(config).map_err(DeliveryError::Setup)?;
        let transport =
            Transport::new(&config.delivery, &config.hostname).map_err(DeliveryError::Setup)?;
        let held = spool.held_upstreams()?;
        for name in &held {
            tracing::info!(upstream = %name, "upstream is on hold (from previous run)");
        }
        let engine = Arc::new(Engine {
            upstreams: Upstreams::new(
                held,
                config.delivery.down_after_failures,
                config.delivery.per_upstream,
            ),
            retry: config.delivery.retry_schedule(),
            retain_delivered_ms: config.web.retain_delivered.as_millis() as u64,
            global: Arc::new(Semaphore::new(config.delivery.concurrency)),
            config: config.delivery.clone(),
            hostname: config.hostname.clone(),
            in_flight: Mutex::new(HashSet::new()),
            in_flight_done: tokio::sync::Notify::new(),
            spool,
            router,
            transport,
        });
        let scheduler = tokio::spawn(engine.clone().schedule(shutdown));
        Ok(DeliveryEngine {
            handle: DeliveryHandle { engine },
            scheduler,
        })
    }

    /// After shutdown was signalled: let running deliveries finish (bounded).
    pub async fn join(self, grace: Duration) {
        let _ = self.scheduler.await;
        let engine = self.handle.engine;
        let all = engine.config.concurrency as u32;
        if tokio::time::timeout(grace, engine.global.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "delivery: attempts still running at shutdown; they will be retried after restart"
            );
        }
    }
}

impl DeliveryHandle {
    /// Stop delivering to an upstream; everything for it stays spooled. Durable.
    pub fn hold(&self, upstream: &str) -> Result<(), DeliveryError> {
        self.engine.spool.set_upstream_held(upstream, true)?;
        self.engine.upstreams.set_held(upstream, true);
        tracing::info!(upstream, "upstream held");
        Ok(())
    }

    /// Resume delivery to an upstream and flush its parked mail now.
    pub fn release(&self, upstream: &str) -> Result<(), DeliveryError> {
        self.engine.spool.set_upstream_held(upstream, false)?;
        self.engine.upstreams.set_held(upstream, false);
        let parked = self.engine.upstreams.take_parked(upstream);
        tracing::info!(
            upstream,
            messages = parked.len(),
            "upstream released; flushing"
        );
        self.engine.flush(&parked);
        Ok(())
    }

    /// The upstream a recipient domain is routed to (its hold/health name).
    pub fn upstream_for(&self, domain: &str) -> String {
        self.engine.router.route_for(domain).upstream
    }

    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.engine.upstreams.status()
    }

    /// Make every pending message for an upstream due now.
    pub fn flush_upstream(&self, upstream: &str) -> Result<usize, DeliveryError> {
        let engine = &self.engine;
        let mut ids = engine.upstreams.take_parked(upstream);
        for message in engine.spool.list()? {
            let pending_here = message
                .envelope
                .recipients
                .iter()
                .zip(&message.state.recipients)
                .any(|(r, st)| {
                    !st.status.is_final()
                        && engine.route_name(&message.state, r.domain()) == upstream
                });
            if pending_here {
                ids.push(message.id);
            }
        }
        ids.sort();
        ids.dedup();
        engine.flush(&ids);
        Ok(ids.len())
    }

    /// The upstreams a message's pending recipients are waiting for.
    pub fn upstreams_of(&self, message: &SpooledMessage) -> Vec<String> {
        let mut names: Vec<String> = message
            .envelope
            .recipients
            .iter()
            .zip(&message.state.recipients)
            .filter(|(_, st)| !st.status.is_final())
            .map(|(r, _)| self.engine.route_name(&message.state, r.domain()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Return a message to its sender now: every pending recipient fails
    /// with `reason`, a DSN goes out (unless the sender is `<>`), and the
    /// message leaves the spool. An attempt under way is waited for (it
    /// holds the message's delivery lease) so that a recipient it delivers
    /// is never also bounced; if it does not end within the wait, the bounce
    /// is refused and nothing changes.
    pub async fn bounce(&self, id: QueueId, reason: &str) -> Result<bool, DeliveryError> {
        let engine = &self.engine;
        let wait = engine.config.command_timeout * 3 + engine.config.connect_timeout;
        let leased = tokio::time::timeout(wait, engine.take_lease(id)).await;
        if leased.is_err() {
            return Err(DeliveryError::Setup(
                "a delivery attempt for this message is still running; try again".into(),
            ));
        }
        let result = self.bounce_leased(id, reason).await;
        engine.release_lease(id);
        result
    }

    async fn bounce_leased(&self, id: QueueId, reason: &str) -> Result<bool, DeliveryError> {
        let engine = &self.engine;
        let Some(message) = engine.spool.get(id)? else {
            return Ok(false);
        };
        let body = match engine.spool.read_body(id) {
            Ok(body) => body,
            Err(crate::spool::SpoolError::NotFound(_)) => return Ok(false),
            Err(err) => return Err(err.into()),
        };
        let mut state = message.state.clone();
        for rcpt in state.recipients.iter_mut().filter(|r| !r.status.is_final()) {
            rcpt.status = RecipientStatus::Failed;
            rcpt.last_reply = Some(format!("5.0.0 {reason}"));
        }
        if !engine.bounce_failures(&message, &mut state, &body).await {
            return Err(DeliveryError::Setup("could not queue the DSN".into()));
        }
        engine.spool.remove(id, "bounced by administrator").await?;
        Ok(true)
    }
}

impl Engine {
    /// Wait until no attempt runs for `id`, then own its delivery lease.
    async fn take_lease(&self, id: QueueId) {
        loop {
            let done = self.in_flight_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.in_flight.lock().expect("in-flight lock").insert(id) {
                return;
            }
            done.await;
        }
    }

    fn release_lease(&self, id: QueueId) {
        self.in_flight.lock().expect("in-flight lock").remove(&id);
        self.in_flight_done.notify_waiters();
        self.spool.work_notify().notify_one();
    }

    async fn schedule(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let work = self.spool.work_notify();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = now_ms();
            let due = match self.spool.due(now, 256) {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(error = %err, "delivery: cannot read the schedule");
                    Vec::new()
                }
            };
            let due_count = due.len();
            let mut busy = 0;
            for id in due {
                if !self.in_flight.lock().expect("in-flight lock").insert(id) {
                    // Made due again (a flush, an operator's retry) while its
                    // attempt or bounce runs. Left due, never parked here: a
                    // flush landing after the attempt recorded its result
                    // would otherwise leave it parked for the whole lease.
                    // The lease's release wakes this loop.
                    busy += 1;
                    continue;
                }
                let _ = self.spool.park(id, now + IN_FLIGHT_LEASE_MS);
                let permit = tokio::select! {
                    permit = self.global.clone().acquire_owned() => permit.expect("semaphore open"),
                    _ = shutdown.changed() => {
                        self.in_flight.lock().expect("in-flight lock").remove(&id);
                        return;
                    }
                };
                let engine = self.clone();
                tokio::spawn(async move {
                    engine.process(id).await;
                    engine.release_lease(id);
                    drop(permit);
                });
            }
            let wait = match self.spool.next_due_ms() {
                // Only messages whose lease is held are due: no 10 ms spin,
                // the release of a lease wakes the scheduler.
                Ok(Some(_)) if due_count > 0 && busy == due_count => Duration::from_secs(1),
                Ok(Some(next)) => {
                    Duration::from_millis(next.saturating_sub(now_ms()).clamp(10, 60_000))
                }
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = work.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The upstream name for a recipient domain, honouring a per-message
    /// route override (admin "requeue").
    fn route_name(&self, state: &MessageState, domain: &str) -> String {
        match &state.route {
            Some(route) => route.clone(),
            None => self.router.route_for(domain).upstream,
        }
    }

    /// Make messages due now.
    fn flush(&self, ids: &[QueueId]) {
        let now = now_ms();
        for id in ids {
            let _ = self.spool.park(*id, now);
        }
    }

    async fn process(self: &Arc<Self>, id: QueueId) {
        let message = match self.spool.get(id) {
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
        let body = match self.spool.read_body(id) {
            Ok(body) => body,
            Err(crate::spool::SpoolError::NotFound(_)) => return,
            Err(err) => {
                // Damaged on disk: keep it for an operator, never drop it.
                tracing::error!(queue_id = %id, error = %err, "delivery: message body unreadable; parked for an operator");
                let _ = self.spool.park(id, PARKED_INDEFINITELY_MS);
                return;
            }
        };
        let mut state = message.state.clone();
        let mut recorded = 0;
        let envelope = &message.envelope;
        let body = with_intake_verdicts(body, envelope, &self.hostname);

        // Pending recipients, grouped by upstream (one transaction each).
        let mut groups: BTreeMap<String, (route::Route, String, Vec<usize>)> = BTreeMap::new();
        for (index, rcpt) in envelope.recipients.iter().enumerate() {
            if state.recipients[index].status.is_final() {
                continue;
            }
            let route = match &state.route {
                Some(hosts) => route::Route {
                    upstream: hosts.clone(),
                    tls: crate::config::UpstreamTls::Opportunistic,
                },
                None => self.router.route_for(rcpt.domain()),
            };
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
                self.record(id, envelope, &mut state, index, outcome, &relay);
                recorded += 1;
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
        let bounced = self.bounce_failures(&message, &mut state, &body.body).await;
        if state.is_finished() && bounced {
            if self.retain(id, &message.state, &mut state, recorded).await {
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
            let _ = self.spool.park(id, until);
        }
        // A flush may have raced with parking: re-check now-open upstreams.
        for (name, domain) in parked_on {
            if self.upstreams.availability(&name, &domain) == Availability::Open {
                self.flush(&self.upstreams.take_parked(&name));
            }
        }
    }

    /// With `[web] retain_delivered`, a delivered message stays in the spool
    /// (finished, read-only) until its retention ends, so people can still
    /// read it in the web reader. True while it is to be kept.
    async fn retain(
        &self,
        id: QueueId,
        before: &MessageState,
        state: &mut MessageState,
        recorded: usize,
    ) -> bool {
        let now = now_ms();
        let until = match state.retain_until_ms {
            Some(until) => until,
            None if self.retain_delivered_ms > 0
                && state
                    .recipients
                    .iter()
                    .any(|r| r.status == RecipientStatus::Delivered) =>
            {
                let until = now + self.retain_delivered_ms;
                state.retain_until_ms = Some(until);
                state.next_attempt_ms = until;
                let merged = self
                    .spool
                    .update_state(id, |current| {
                        merge_attempt(current, before, state, recorded)
                    })
                    .await;
                match merged.map(|found| found.is_some()) {
                    Ok(true) => {
                        tracing::info!(queue_id = %id, until_ms = until, "retained for the web reader")
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(queue_id = %id, error = %err, "cannot record retention; it will be repeated")
                    }
                }
                return true;
            }
            None => return false,
        };
        if now >= until {
            return false;
        }
        // Woken early (an operator retry, a flush): sleep on until the end.
        let _ = self.spool.park(id, until);
        true
    }

    /// One transaction for one upstream: per-recipient outcomes with the relay
    /// used, and whether the upstream could not be reached at all.
    async fn attempt(
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
            body: &message.body,
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
                    self.flush(&flushed);
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
                    last_error = why;
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

    fn record(
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

    /// Deferred recipients older than `max_age` fail (RFC 3463 4.4.7).
    fn expire(&self, id: QueueId, envelope: &Envelope, state: &mut MessageState) {
        let age = now_ms().saturating_sub(envelope.received_at_ms);
        if age < self.config.max_age.as_millis() as u64 {
            return;
        }
        for (index, rcpt) in state.recipients.iter_mut().enumerate() {
            if !rcpt.status.is_final() {
                let last = rcpt
                    .last_reply
                    .clone()
                    .unwrap_or_else(|| "no attempt possible".into());
                rcpt.status = RecipientStatus::Failed;
                rcpt.last_reply = Some(format!(
                    "4.4.7 message expired after {}; last error: {last}",
                    humantime::format_duration(self.config.max_age)
                ));
                tracing::info!(queue_id = %id, to = %envelope.recipients[index].address, status = "expired", "delivery");
            }
        }
    }

    fn backoff(&self, state: &MessageState) -> u64 {
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

    /// Queue one DSN for the recipients that failed since the last one
    /// (Postfix bounces failures at once, without waiting for deferred
    /// recipients). False if the DSN could not be queued.
    async fn bounce_failures(
        &self,
        message: &SpooledMessage,
        state: &mut MessageState,
        body: &[u8],
    ) -> bool {
        let envelope = &message.envelope;
        let pending: Vec<usize> = (0..state.recipients.len())
            .filter(|&i| {
                state.recipients[i].status == RecipientStatus::Failed
                    && !state.recipients[i].dsn_done
            })
            .collect();
        let failed: Vec<dsn::FailedRecipient<'_>> = pending
            .iter()
            .filter(|&&i| dsn::wants_failure_notice(envelope.recipients[i].notify))
            .map(|&i| dsn::FailedRecipient {
                address: &envelope.recipients[i].address,
                orcpt: envelope.recipients[i].orcpt.as_deref(),
                diagnostic: state.recipients[i]
                    .last_reply
                    .as_deref()
                    .unwrap_or("5.0.0 delivery failed"),
                remote_mta: None,
            })
            .collect();
        // Never bounce a bounce.
        if !failed.is_empty() && !envelope.sender.is_empty() {
            let report = dsn::build(&self.hostname, message.id, envelope, &failed, body);
            let mut dsn_body = self.spool.new_body();
            let written = dsn_body.write(&report);
            let dsn_envelope = Envelope {
                sender: String::new(),
                recipients: vec![Recipient {
                    address: envelope.sender.clone(),
                    orcpt: None,
                    notify: 0,
                }],
                dsn_ret: None,
                dsn_envid: None,
                smtputf8: !envelope.sender.is_ascii(),
                body_8bitmime: true,
                requiretls: false,
                client: ClientInfo {
                    ip: std::net::IpAddr::from([127, 0, 0, 1]),
                    helo: self.hostname.clone(),
                    tls: None,
                },
                received_at_ms: now_ms(),
                size: 0,
                lure: None,
                auth: None,
            };
            let queued = match written {
                Ok(()) => self.spool.enqueue(dsn_body, dsn_envelope).await,
                Err(err) => Err(err.into()),
            };
            match queued {
                Ok(dsn_id) => {
                    tracing::info!(queue_id = %message.id, dsn = %dsn_id, to = %envelope.sender, recipients = failed.len(), "sender non-delivery notification queued")
                }
                Err(err) => {
                    tracing::error!(queue_id = %message.id, error = %err, "cannot queue DSN; will retry");
                    return false;
                }
            }
        }
        for i in pending {
            state.recipients[i].dsn_done = true;
        }
        true
    }

    async fn probe(self: Arc<Self>, name: String) {
        let interval = self.config.probe_interval;
        loop {
            tokio::time::sleep(interval).await;
            if !self.upstreams.is_down(&name) {
                return;
            }
            let Some(domain) = self.upstreams.sample_domain(&name) else {
                return;
            };
            let route = self.router.route_for(&domain);
            let Ok(targets) = self.router.targets(&domain).await else {
                continue;
            };
            for target in &targets {
                if self.transport.probe(target, route.tls).await.is_ok() {
                    let parked = self.upstreams.record_success(&name, &domain);
                    self.transport.clear_pool();
                    tracing::info!(upstream = %name, messages = parked.len(), "probe succeeded; flushing parked mail");
                    self.flush(&parked);
                    return;
                }
            }
        }
    }
}

/// Whether one attempt got an answer from its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
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
fn merge_attempt(
    current: &mut MessageState,
    before: &MessageState,
    after: &MessageState,
    recorded: usize,
) {
    let operator_changed = current.operator_changes != before.operator_changes;
    for (index, outcome) in after.recipients.iter().enumerate() {
        if before.recipients.get(index) != Some(outcome) {
            if let Some(slot) = current.recipients.get_mut(index) {
                *slot = outcome.clone();
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
/// claims to be ours but came from outside removed (RFC 8601 5).
fn with_intake_verdicts(mut body: Vec<u8>, envelope: &Envelope, hostname: &str) -> Outbound {
    crate::trust::auth::strip_forged_results(&mut body, hostname);
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
    Outbound {
        prefix: prefix.into_bytes(),
        body,
    }
}

/// A message as it goes upstream: the header fields intake's verdicts add,
/// then the stored bytes. Kept apart so that adding two header lines never
/// copies a 50 MB body (delivery holds one copy of each body in flight).
struct Outbound {
    prefix: Vec<u8>,
    body: Vec<u8>,
}

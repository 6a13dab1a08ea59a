//! DELIVERY: take due messages from the spool's schedule and get them to the
//! upstream — per recipient, with retries, bounces, and an automatic flush
//! when a down upstream comes back.
//!
//! - `scheduler`: due messages → leases → attempts; flush after a probe;
//! - `attempt`: one message's attempt, recorded per recipient;
//! - `bounces`: expiry and the sender's non-delivery notice;
//! - `delay_notices`: one "delayed, still trying" notice after `delay_warning`;
//! - `retention`: delivered mail kept readable for `[web] retain_delivered`;
//! - `route`: static hosts or MX (hickory), self-MX protection;
//! - `client`: delivery's use of `smtp_client` (TLS policy, pool);
//! - `upstream`: per-upstream circuit, holds, throttling, parked messages;
//! - `bounce_guard`: the same permanent reply for many recipients holds
//!   the upstream instead of bouncing its backlog; `soft_bounce`;
//! - `dsn`: RFC 3464 bounces.
//!
//! The scheduler reads only the spool's `schedule` index (never a full scan),
//! parks a message while it is in flight (a lease, so a crashed task cannot
//! lose it), and records each attempt's per-recipient outcome durably with
//! `Spool::update_state` before the next attempt is planned. A delivery that
//! happened but was not yet recorded when the process died is repeated after
//! restart: duplicates are possible, loss is not.

mod attempt;
pub mod bounce_guard;
mod bounces;
pub mod client;
mod delay_notices;
pub mod dsn;
mod retention;
pub mod route;
mod scheduler;
mod sts;
pub mod upstream;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Config, DeliveryConfig};
use crate::envelope::{QueueId, RecipientStatus};
use crate::spool::{Spool, SpooledMessage};
use client::Transport;
use route::Router;
use upstream::{UpstreamStatus, Upstreams};

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
    bounce_guard: bounce_guard::BounceGuard,
    config: DeliveryConfig,
    hostname: String,
    retry: Vec<Duration>,
    /// `[web] retain_delivered`: keep delivered messages readable this long.
    retain_delivered_ms: u64,
    /// `[send] keep_sent`: users' own mail stays for the Sent page.
    keep_sent_ms: u64,
    global: Arc<Semaphore>,
    /// Messages with an attempt (or an operator's bounce) under way: the
    /// delivery lock of a message. Whoever inserts an ID owns the message's
    /// delivery until it removes it and wakes `in_flight_done`.
    in_flight: Mutex<HashSet<QueueId>>,
    in_flight_done: tokio::sync::Notify,
    /// `serve`'s shutdown signal: tasks the engine spawns on its own (the
    /// upstream probes) end with it instead of outliving the spool.
    stopping: watch::Receiver<bool>,
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

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("delivery setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

impl DeliveryEngine {
    pub async fn start(
        config: &Config,
        spool: Spool,
        shutdown: watch::Receiver<bool>,
    ) -> Result<DeliveryEngine, DeliveryError> {
        let router = Router::new(config).map_err(DeliveryError::Setup)?;
        let transport =
            Transport::new(&config.delivery, &config.hostname).map_err(DeliveryError::Setup)?;
        let held = spool.held_upstreams().await?;
        for name in &held {
            tracing::info!(upstream = %name, "upstream is on hold (from previous run)");
        }
        let engine = Arc::new(Engine {
            upstreams: Upstreams::new(
                held,
                config.delivery.down_after_failures,
                config.delivery.per_upstream,
            ),
            bounce_guard: bounce_guard::BounceGuard::new(
                config.delivery.bounce_guard_failures,
                config.delivery.bounce_guard_window,
                config.delivery.soft_bounce,
            ),
            retry: config.delivery.retry_schedule(),
            retain_delivered_ms: config.web.retain_delivered.as_millis() as u64,
            keep_sent_ms: config.send.keep_sent.as_millis() as u64,
            global: Arc::new(Semaphore::new(config.delivery.concurrency)),
            config: config.delivery.clone(),
            hostname: config.hostname.clone(),
            in_flight: Mutex::new(HashSet::new()),
            in_flight_done: tokio::sync::Notify::new(),
            stopping: shutdown.clone(),
            spool,
            router,
            transport,
        });
        for domain in &config.domains {
            if domain.upstream != "mx" {
                let route = engine.router.route_for(&domain.name);
                engine.upstreams.register(&route.upstream, &domain.name);
            }
        }
        tokio::spawn(engine.clone().warn_delayed(shutdown.clone()));
        let scheduler = tokio::spawn(engine.clone().schedule(shutdown));
        Ok(DeliveryEngine {
            handle: DeliveryHandle { engine },
            scheduler,
        })
    }

    /// What operators and the other stages steer delivery with.
    pub fn handle(&self) -> &DeliveryHandle {
        &self.handle
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
    pub async fn hold(&self, upstream: &str) -> Result<(), DeliveryError> {
        self.engine.spool.set_upstream_held(upstream, true).await?;
        self.engine.upstreams.set_held(upstream, true);
        tracing::info!(upstream, "upstream held");
        Ok(())
    }

    /// Resume delivery to an upstream and flush its parked mail now.
    pub async fn release(&self, upstream: &str) -> Result<(), DeliveryError> {
        self.engine.spool.set_upstream_held(upstream, false).await?;
        self.engine.upstreams.set_held(upstream, false);
        self.engine.bounce_guard.clear(upstream);
        let parked = self.engine.upstreams.take_parked(upstream);
        tracing::info!(
            upstream,
            messages = parked.len(),
            "upstream released; flushing"
        );
        self.engine.flush(&parked).await;
        Ok(())
    }

    /// The upstream a recipient domain is routed to (its hold/health name).
    pub fn upstream_for(&self, domain: &str) -> String {
        self.engine.router.route_for(domain).upstream
    }

    /// Changes whenever an upstream's verdict (up, down, held) changes.
    pub fn verdict_changes(&self) -> watch::Receiver<u64> {
        self.engine.upstreams.verdict_changes()
    }

    /// The alert monitor's idle probes could not reach `upstream` (the
    /// route of recipient `domain`): the circuit takes that as its verdict,
    /// parks the upstream's mail and starts its own probe, so the list, the
    /// web banner, the gauge and the alert all say "down" together.
    pub fn declare_down(&self, upstream: &str, domain: &str, error: &str) {
        if self.engine.upstreams.declare_down(upstream, domain, error) {
            tokio::spawn(self.engine.clone().probe(upstream.to_string()));
        }
    }

    /// The monitor's probe reached `upstream` again: if the circuit had it
    /// down, it is up now and its parked mail is flushed (what the
    /// circuit's own probe would do a moment later).
    pub async fn declare_reachable(&self, upstream: &str, domain: &str) {
        // Only an upstream the circuit has down: a success here must not
        // reset the failure count of deliveries that are failing now.
        if !self.engine.upstreams.is_down(upstream) {
            return;
        }
        let parked = self.engine.upstreams.record_success(upstream, domain);
        if !parked.is_empty() {
            self.engine.transport.clear_pool();
            tracing::info!(
                upstream,
                messages = parked.len(),
                "monitor probe succeeded; flushing parked mail"
            );
            self.engine.flush(&parked).await;
        }
    }

    pub fn status(&self) -> Vec<UpstreamStatus> {
        let trips = self.engine.bounce_guard.trips();
        let mut status = self.engine.upstreams.status();
        for upstream in &mut status {
            upstream.bounce_guard = trips.get(&upstream.name).cloned();
        }
        status
    }

    /// Postfix's `soft_bounce`: while on, permanent replies are deferrals.
    /// Starts as `[delivery] soft_bounce`; a change here lasts until restart.
    pub fn soft_bounce(&self) -> bool {
        self.engine.bounce_guard.soft_bounce()
    }

    pub fn set_soft_bounce(&self, on: bool) {
        self.engine.bounce_guard.set_soft_bounce(on);
        tracing::warn!(on, "delivery: soft_bounce switched");
    }

    /// Make every pending message for an upstream due now.
    pub async fn flush_upstream(&self, upstream: &str) -> Result<usize, DeliveryError> {
        let engine = &self.engine;
        let mut ids = engine.upstreams.take_parked(upstream);
        for message in engine.spool.list().await? {
            let pending_here = message
                .envelope
                .recipients
                .iter()
                .zip(&message.state.recipients)
                .any(|(r, st)| {
                    !st.status.is_final()
                        && engine.route_name(&message.envelope, &message.state, r.domain())
                            == upstream
                });
            if pending_here {
                ids.push(message.id);
            }
        }
        ids.sort();
        ids.dedup();
        engine.flush(&ids).await;
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
            .map(|(r, _)| {
                self.engine
                    .route_name(&message.envelope, &message.state, r.domain())
            })
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
        let Some(message) = engine.spool.get(id).await? else {
            return Ok(false);
        };
        let body = match engine.spool.read_body(id).await {
            Ok(body) => body,
            Err(crate::spool::SpoolError::NotFound(_)) => return Ok(false),
            Err(err) => return Err(err.into()),
        };
        let mut state = message.state.clone();
        for rcpt in state.recipients.iter_mut().filter(|r| !r.status.is_final()) {
            rcpt.status = RecipientStatus::Failed;
            rcpt.last_reply = Some(format!("5.0.0 {reason}"));
        }
        if !engine
            .bounce_failures(&message, &mut state, &body, true)
            .await
        {
            return Err(DeliveryError::Setup("could not queue the DSN".into()));
        }
        engine.spool.remove(id, "bounced by administrator").await?;
        Ok(true)
    }
}

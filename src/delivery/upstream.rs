//! Upstream health: a circuit per upstream, operator holds, throttling, and
//! the set of messages parked while an upstream cannot take mail.
//!
//! Why a circuit: during an Exchange Online outage, trying every deferred
//! message one by one just burns connections and log lines. After
//! `down_after_failures` consecutive connection failures the upstream is
//! marked down, its messages are parked (no durable write), and a single
//! cheap probe runs every `probe_interval`. The moment the probe succeeds,
//! every parked message is made due at once — the auto-flush.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::envelope::{now_ms, QueueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Open,
    Held,
    Down,
    /// Asked to slow down; try again at this time (ms).
    Throttled(u64),
}

/// A snapshot for operators (admin API, drills).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub state: &'static str,
    /// When it went down (ms since epoch), if it is down.
    pub down_since_ms: Option<u64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub parked_messages: usize,
    /// Connections it may have now (lower than `per_upstream` after throttling).
    pub connections_allowed: usize,
    /// Paused by a throttling reply until this time (ms), if in the future.
    pub throttled_until_ms: Option<u64>,
    /// Held by the bounce guard, and why (`super::bounce_guard`).
    pub bounce_guard: Option<super::bounce_guard::Trip>,
}

struct State {
    consecutive_failures: u32,
    down_since_ms: Option<u64>,
    last_error: Option<String>,
    throttled_until_ms: u64,
    /// Connections currently allowed (≤ per_upstream): halved on each
    /// throttling reply, grown back by one per successful attempt.
    allowed: usize,
    /// A recipient domain routed here, for the probe's DNS lookup.
    sample_domain: String,
    parked: HashSet<QueueId>,
    permits: Arc<Semaphore>,
    /// Bumped when the upstream is declared down or seen up again: an
    /// attempt under way on a connection from before the change is
    /// abandoned (see `Engine::attempt`), so no message stays stuck on a
    /// connection that went silent when the outage began.
    transitions: tokio::sync::watch::Sender<u64>,
}

pub struct Upstreams {
    states: Mutex<HashMap<String, State>>,
    held: Mutex<BTreeSet<String>>,
    down_after: u32,
    per_upstream: usize,
    /// Bumped on every change of any upstream's verdict (down, up, held,
    /// released), so the alert monitor reports the circuit's verdict the
    /// moment it changes instead of keeping one of its own.
    verdicts: tokio::sync::watch::Sender<u64>,
}

impl Upstreams {
    pub fn new(held: BTreeSet<String>, down_after: u32, per_upstream: usize) -> Upstreams {
        Upstreams {
            states: Mutex::new(HashMap::new()),
            held: Mutex::new(held),
            down_after: down_after.max(1),
            per_upstream,
            verdicts: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes whenever any upstream's verdict changes.
    pub fn verdict_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.verdicts.subscribe()
    }

    fn verdict_changed(&self) {
        self.verdicts.send_modify(|epoch| *epoch += 1);
    }

    /// Make an upstream known before any mail goes there, so lists and
    /// gauges show every configured upstream from the start ("up": not
    /// known to be down).
    pub fn register(&self, name: &str, domain: &str) {
        self.with(name, domain, |_| ());
    }

    fn with<R>(&self, name: &str, domain: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut states = self.states.lock().expect("upstream lock");
        let state = states.entry(name.to_string()).or_insert_with(|| State {
            consecutive_failures: 0,
            down_since_ms: None,
            last_error: None,
            throttled_until_ms: 0,
            allowed: self.per_upstream,
            sample_domain: domain.to_string(),
            parked: HashSet::new(),
            permits: Arc::new(Semaphore::new(self.per_upstream)),
            transitions: tokio::sync::watch::Sender::new(0),
        });
        f(state)
    }

    /// Changes whenever `name` is declared down or comes back up.
    pub fn transitions(&self, name: &str, domain: &str) -> tokio::sync::watch::Receiver<u64> {
        self.with(name, domain, |s| s.transitions.subscribe())
    }

    pub fn availability(&self, name: &str, domain: &str) -> Availability {
        if self.held.lock().expect("held lock").contains(name) {
            return Availability::Held;
        }
        self.with(name, domain, |s| {
            if s.down_since_ms.is_some() {
                Availability::Down
            } else if s.throttled_until_ms > now_ms() {
                Availability::Throttled(s.throttled_until_ms)
            } else {
                Availability::Open
            }
        })
    }

    pub fn permits(&self, name: &str, domain: &str) -> Arc<Semaphore> {
        self.with(name, domain, |s| s.permits.clone())
    }

    /// A connection got through. Returns the parked messages to flush if the
    /// upstream was down.
    pub fn record_success(&self, name: &str, domain: &str) -> Vec<QueueId> {
        self.with(name, domain, |s| {
            s.consecutive_failures = 0;
            self.grow(s);
            if s.down_since_ms.take().is_some() {
                tracing::info!(upstream = name, "upstream up");
                s.transitions.send_modify(|epoch| *epoch += 1);
                self.verdict_changed();
                return s.parked.drain().collect();
            }
            Vec::new()
        })
    }

    /// Every target was unreachable. Returns true when this marks it down.
    pub fn record_failure(&self, name: &str, domain: &str, error: &str) -> bool {
        self.with(name, domain, |s| {
            s.consecutive_failures += 1;
            s.last_error = Some(error.to_string());
            if s.down_since_ms.is_none() && s.consecutive_failures >= self.down_after {
                s.down_since_ms = Some(now_ms());
                tracing::warn!(
                    upstream = name,
                    failures = s.consecutive_failures,
                    error,
                    "upstream down: parking its mail and probing"
                );
                s.transitions.send_modify(|epoch| *epoch += 1);
                self.verdict_changed();
                return true;
            }
            false
        })
    }

    /// Declare an upstream down on outside evidence (the alert monitor's
    /// idle probes failed), whatever the failure count. Returns true when
    /// this marks it down.
    pub fn declare_down(&self, name: &str, domain: &str, error: &str) -> bool {
        self.with(name, domain, |s| {
            s.last_error = Some(error.to_string());
            if s.down_since_ms.is_some() {
                return false;
            }
            s.consecutive_failures = s.consecutive_failures.max(self.down_after);
            s.down_since_ms = Some(now_ms());
            tracing::warn!(
                upstream = name,
                error,
                "upstream down (idle probes failed): parking its mail and probing"
            );
            s.transitions.send_modify(|epoch| *epoch += 1);
            self.verdict_changed();
            true
        })
    }

    /// The upstream said "too many": pause it until `until_ms` and halve the
    /// number of connections it gets (never below one).
    pub fn throttle(&self, name: &str, domain: &str, until_ms: u64) {
        self.with(name, domain, |s| {
            if s.throttled_until_ms < until_ms {
                s.throttled_until_ms = until_ms;
                let fewer = (s.allowed / 2).max(1);
                // Permits in use come back later; forget what is free now and
                // let `record_success` stop returning the rest.
                let dropped = s.permits.forget_permits(s.allowed - fewer);
                s.allowed -= dropped;
                tracing::warn!(
                    upstream = name,
                    until_ms,
                    connections = s.allowed,
                    "upstream asked us to slow down"
                );
            }
        });
    }

    /// One more connection after a good attempt, up to `per_upstream`.
    fn grow(&self, s: &mut State) {
        if s.allowed < self.per_upstream && s.throttled_until_ms <= now_ms() {
            s.allowed += 1;
            s.permits.add_permits(1);
        }
    }

    pub fn park(&self, name: &str, domain: &str, id: QueueId) {
        self.with(name, domain, |s| {
            s.parked.insert(id);
        });
    }

    /// Take every parked message of an upstream (to flush it).
    pub fn take_parked(&self, name: &str) -> Vec<QueueId> {
        let mut states = self.states.lock().expect("upstream lock");
        states
            .get_mut(name)
            .map(|s| s.parked.drain().collect())
            .unwrap_or_default()
    }

    pub fn sample_domain(&self, name: &str) -> Option<String> {
        let states = self.states.lock().expect("upstream lock");
        states.get(name).map(|s| s.sample_domain.clone())
    }

    pub fn is_down(&self, name: &str) -> bool {
        let states = self.states.lock().expect("upstream lock");
        states.get(name).is_some_and(|s| s.down_since_ms.is_some())
    }

    pub fn set_held(&self, name: &str, held: bool) {
        let mut holds = self.held.lock().expect("held lock");
        let changed = if held {
            holds.insert(name.to_string())
        } else {
            holds.remove(name)
        };
        drop(holds);
        if changed {
            self.verdict_changed();
        }
    }

    pub fn status(&self) -> Vec<UpstreamStatus> {
        let held = self.held.lock().expect("held lock").clone();
        let states = self.states.lock().expect("upstream lock");
        let mut names: BTreeSet<String> = states.keys().cloned().collect();
        names.extend(held.iter().cloned());
        names
            .into_iter()
            .map(|name| {
                let s = states.get(&name);
                let state = if held.contains(&name) {
                    "held"
                } else if s.is_some_and(|s| s.down_since_ms.is_some()) {
                    "down"
                } else {
                    "up"
                };
                UpstreamStatus {
                    state,
                    down_since_ms: s.and_then(|s| s.down_since_ms),
                    last_error: s.and_then(|s| s.last_error.clone()),
                    consecutive_failures: s.map_or(0, |s| s.consecutive_failures),
                    parked_messages: s.map_or(0, |s| s.parked.len()),
                    connections_allowed: s.map_or(self.per_upstream, |s| s.allowed),
                    throttled_until_ms: s.map(|s| s.throttled_until_ms).filter(|t| *t > now_ms()),
                    bounce_guard: None,
                    name,
                }
            })
            .collect()
    }
}

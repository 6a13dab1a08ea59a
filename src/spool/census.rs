//! What the spool holds, counted as it changes instead of by scanning.
//!
//! Why: the `/metrics` gauges (messages by status, the oldest message,
//! messages per upstream) used to be computed by listing the whole spool
//! at every scrape: 1.25 s at 200,000 messages, over the default Prometheus
//! timeout long before a million. The store adjusts these counts in the
//! same step as each change (enqueue, state change, removal), so a scrape
//! reads a few counters.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MessageState, STATUSES};

/// Where a message's pending recipients go, before routing: an operator's
/// route override, or the recipient domain (which delivery maps to its
/// upstream at scrape time; the mapping can change on reload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    Route(String),
    Domain(String),
}

/// Running counts of the spool's messages.
#[derive(Debug, Default, Clone)]
pub struct Census {
    by_status: HashMap<&'static str, i64>,
    /// Messages by the set of destinations they still wait for (sorted,
    /// deduplicated); counted per set so a message with two domains on one
    /// upstream is counted once for it.
    by_destinations: HashMap<Vec<Destination>, i64>,
    /// Arrival time → messages, for the oldest one.
    arrivals: BTreeMap<u64, usize>,
    /// Messages by the minute they arrived, and by pending recipient domain
    /// and that minute: the age histogram of `queue shape`.
    by_minute: HashMap<u64, i64>,
    by_domain_minute: HashMap<(String, u64), i64>,
}

/// A copy of the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CensusSnapshot {
    pub by_status: BTreeMap<&'static str, i64>,
    pub by_destinations: BTreeMap<Vec<Destination>, i64>,
    pub oldest_received_ms: Option<u64>,
    /// Arrival minute (ms since the epoch / 60,000) → messages.
    pub by_minute: BTreeMap<u64, i64>,
    /// (pending recipient domain, lower-cased; arrival minute) → messages.
    pub by_domain_minute: BTreeMap<(String, u64), i64>,
}

impl Census {
    pub fn add(&mut self, envelope: &Envelope, state: &MessageState) {
        self.count(envelope, state, 1);
        *self.arrivals.entry(envelope.received_at_ms).or_default() += 1;
        bump(&mut self.by_minute, arrival_minute(envelope), 1);
    }

    pub fn remove(&mut self, envelope: &Envelope, state: &MessageState) {
        self.count(envelope, state, -1);
        bump(&mut self.by_minute, arrival_minute(envelope), -1);
        if let Some(count) = self.arrivals.get_mut(&envelope.received_at_ms) {
            *count -= 1;
            if *count == 0 {
                self.arrivals.remove(&envelope.received_at_ms);
            }
        }
    }

    pub fn change(&mut self, envelope: &Envelope, before: &MessageState, after: &MessageState) {
        self.count(envelope, before, -1);
        self.count(envelope, after, 1);
    }

    fn count(&mut self, envelope: &Envelope, state: &MessageState, by: i64) {
        bump(&mut self.by_status, state.status(), by);
        // One walk over the recipients for both counts.
        let domains = pending_domains(envelope, state);
        if !domains.is_empty() {
            bump(&mut self.by_destinations, destinations(state, &domains), by);
        }
        let minute = arrival_minute(envelope);
        for domain in domains {
            bump(&mut self.by_domain_minute, (domain, minute), by);
        }
    }

    pub fn snapshot(&self) -> CensusSnapshot {
        CensusSnapshot {
            by_status: pairs(&self.by_status).collect(),
            by_destinations: pairs(&self.by_destinations).collect(),
            oldest_received_ms: self.arrivals.keys().next().copied(),
            by_minute: pairs(&self.by_minute).collect(),
            by_domain_minute: pairs(&self.by_domain_minute).collect(),
        }
    }

    /// How many messages are counted (every message has one status).
    pub fn messages(&self) -> usize {
        self.by_status.values().sum::<i64>().max(0) as usize
    }

    /// The counts as plain data, to be saved at a clean shutdown
    /// (`segments::checkpoint`); `arrivals` go separately, they are many.
    pub fn to_parts(&self) -> (CensusCounts, Vec<(u64, usize)>) {
        let counts = CensusCounts {
            by_minute: pairs(&self.by_minute).collect(),
            by_domain_minute: pairs(&self.by_domain_minute).collect(),
            by_status: self
                .by_status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            by_destinations: pairs(&self.by_destinations).collect(),
        };
        let arrivals = self.arrivals.iter().map(|(k, v)| (*k, *v)).collect();
        (counts, arrivals)
    }

    /// The census saved by `to_parts`; `None` when it names a status this
    /// version does not know.
    pub fn from_parts(counts: CensusCounts, arrivals: Vec<(u64, usize)>) -> Option<Census> {
        let mut by_status = HashMap::new();
        for (status, count) in counts.by_status {
            let known = STATUSES.iter().find(|s| **s == status)?;
            by_status.insert(*known, count);
        }
        Some(Census {
            by_status,
            by_destinations: counts.by_destinations.into_iter().collect(),
            arrivals: arrivals.into_iter().collect(),
            by_minute: counts.by_minute.into_iter().collect(),
            by_domain_minute: counts.by_domain_minute.into_iter().collect(),
        })
    }

    /// The counts of these messages, from scratch (start-up, and the check
    /// that the running counts are right).
    pub fn of<'m>(messages: impl IntoIterator<Item = (&'m Envelope, &'m MessageState)>) -> Census {
        let mut census = Census::default();
        for (envelope, state) in messages {
            census.add(envelope, state);
        }
        census
    }
}

/// The counts of a [`Census`] as plain data (see `Census::to_parts`).
#[derive(Debug, Serialize, Deserialize)]
pub struct CensusCounts {
    by_status: Vec<(String, i64)>,
    by_destinations: Vec<(Vec<Destination>, i64)>,
    by_minute: Vec<(u64, i64)>,
    by_domain_minute: Vec<((String, u64), i64)>,
}

/// A map's entries as owned pairs (for snapshots and the checkpoint).
fn pairs<K: Clone, V: Copy>(map: &HashMap<K, V>) -> impl Iterator<Item = (K, V)> + '_ {
    map.iter().map(|(k, v)| (k.clone(), *v))
}

/// Adjust a count; a key that reaches zero is dropped, so snapshots of the
/// same spool compare equal however they were reached.
fn bump<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, i64>, key: K, by: i64) {
    use std::collections::hash_map::Entry;
    match counts.entry(key) {
        Entry::Occupied(mut entry) => {
            *entry.get_mut() += by;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
        Entry::Vacant(entry) => {
            entry.insert(by);
        }
    }
}

fn arrival_minute(envelope: &Envelope) -> u64 {
    envelope.received_at_ms / 60_000
}

/// The recipient domains a message still waits for (lower-cased, once each;
/// an operator's route override does not change them).
fn pending_domains(envelope: &Envelope, state: &MessageState) -> Vec<String> {
    let mut out: Vec<String> = envelope
        .recipients
        .iter()
        .zip(&state.recipients)
        .filter(|(_, r)| !r.status.is_final())
        .map(|(recipient, _)| recipient.domain().to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The destinations a message with these pending recipient domains waits
/// for: its operator's route override, or the domains themselves.
fn destinations(state: &MessageState, pending_domains: &[String]) -> Vec<Destination> {
    match &state.route {
        Some(route) => vec![Destination::Route(route.clone())],
        None => pending_domains
            .iter()
            .map(|domain| Destination::Domain(domain.clone()))
            .collect(),
    }
}

//! Recipient domains' MTA-STS policies for MX-routed delivery (RFC 8461
//! section 5): what the route asks before it picks MX hosts.
//!
//! Why: a domain in `enforce` mode tells senders to deliver only to the MX
//! hosts its policy lists, over TLS verified for that host name, and never
//! in cleartext. Without this an attacker who forges the MX answer (or
//! strips STARTTLS) gets the mail; honouring the policy is what Gmail and
//! Microsoft do when they send to us, so we do it when we send.
//!
//! The cache follows section 5.1: a policy is kept for its `max_age`; the
//! `_mta-sts` TXT record is looked at again at most once a minute per
//! domain (the resolver caches it by TTL anyway), and a new id means a new
//! fetch. When the record is missing, DNS fails or the fetch fails, an
//! unexpired cached policy stays in force (so stripping the record is not a
//! downgrade); with nothing cached the domain has no policy. Only one fetch
//! per domain runs at a time: a backlog draining to one domain waits for
//! one fetch, not one per message. Kept in memory (a restart starts empty),
//! bounded in the number of domains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;

use crate::mta_sts::{self, Mode, Policy, Record};
use crate::smtp_client::TlsClients;

/// How often a domain's `_mta-sts` record is looked at again.
const RECHECK: Duration = Duration::from_secs(60);

/// The longest a policy fetch may take (the route waits for it once).
const FETCH_LIMIT: Duration = Duration::from_secs(10);

/// Domains remembered at most (DSNs go to many sender domains).
const MAX_DOMAINS: usize = 10_000;

/// A policy in force for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub id: String,
    pub policy: Policy,
}

/// What is known about one domain: the policy fetched last (until it
/// expires) and when its record was last looked at.
#[derive(Default)]
struct Known {
    cached: Option<(InForce, Instant)>,
    checked: Option<Instant>,
}

impl Known {
    /// The policy still in force at `now` (an expired one is forgotten).
    fn in_force(&mut self, domain: &str, now: Instant) -> Option<InForce> {
        if self.cached.as_ref().is_some_and(|(_, until)| *until <= now) {
            tracing::info!(domain, "mta-sts: cached policy expired (max_age)");
            self.cached = None;
        }
        self.cached
            .as_ref()
            .map(|(in_force, _)| in_force.clone())
            .filter(|in_force| in_force.policy.mode != Mode::None)
    }

    /// What the `_mta-sts` record says is to be fetched: a new id only.
    /// RFC 8461 5.1: no usable record (or no answer) leaves an unexpired
    /// cached policy in force; the same id means the cached one is current.
    fn id_to_fetch(
        &mut self,
        domain: &str,
        record: Result<Record, String>,
        now: Instant,
    ) -> Option<String> {
        match record {
            Ok(Record::Id(id)) => {
                let current = self.in_force_id(now).is_some_and(|cached| *cached == id);
                (!current).then_some(id)
            }
            Ok(Record::Absent) => None,
            Ok(Record::Unusable(why)) | Err(why) => {
                tracing::warn!(domain, reason = %why, "mta-sts: no usable policy record; a cached policy (if any) stays in force");
                None
            }
        }
    }

    fn in_force_id(&self, now: Instant) -> Option<&String> {
        self.cached
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(in_force, _)| &in_force.id)
    }

    /// A fetch's result: a good policy replaces the cached one for its
    /// `max_age`; a failed fetch leaves the cached one in force.
    fn fetched(&mut self, domain: &str, id: String, result: Result<Policy, String>, now: Instant) {
        match result {
            Ok(policy) => {
                tracing::info!(
                    domain,
                    id = %id,
                    mode = ?policy.mode,
                    mx = %policy.mx.join(","),
                    max_age = policy.max_age,
                    "mta-sts: policy cached"
                );
                let until = now + Duration::from_secs(policy.max_age);
                self.cached = Some((InForce { id, policy }, until));
            }
            Err(why) => {
                tracing::warn!(domain, id = %id, reason = %why, "mta-sts: policy cannot be fetched; a cached policy (if any) stays in force");
            }
        }
    }
}

pub struct StsPolicies {
    resolver: TokioResolver,
    tls: TlsClients,
    /// 443 except in labs and tests (`[delivery] mta_sts_port`).
    port: u16,
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Known>>>>,
}

impl StsPolicies {
    pub fn new(resolver: TokioResolver, tls: TlsClients, port: u16) -> StsPolicies {
        StsPolicies {
            resolver,
            tls,
            port,
            domains: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain` (`None`: no policy, or mode none).
    pub async fn policy(&self, domain: &str) -> Option<InForce> {
        let slot = self.slot(domain);
        let mut known = slot.lock().await;
        let now = Instant::now();
        let recently = known
            .checked
            .is_some_and(|at| now.duration_since(at) < RECHECK);
        if !recently {
            known.checked = Some(now);
            let record = mta_sts::lookup_record(&self.resolver, domain).await;
            if let Some(id) = known.id_to_fetch(domain, record, now) {
                let fetched =
                    mta_sts::fetch(&self.resolver, &self.tls, domain, self.port, FETCH_LIMIT)
                        .await
                        .and_then(|text| mta_sts::parse_policy(&text));
                known.fetched(domain, id, fetched, Instant::now());
            }
        }
        known.in_force(domain, Instant::now())
    }

    fn slot(&self, domain: &str) -> Arc<tokio::sync::Mutex<Known>> {
        let mut domains = self.domains.lock().expect("sts lock");
        if let Some(slot) = domains.get(domain) {
            return slot.clone();
        }
        if domains.len() >= MAX_DOMAINS {
            // Forget domains without a live policy first; all only if that
            // is not enough (memory beats downgrade resistance here).
            let now = Instant::now();
            domains.retain(|_, slot| {
                slot.try_lock()
                    .map_or(true, |k| k.cached.as_ref().is_some_and(|(_, u)| *u > now))
            });
            if domains.len() >= MAX_DOMAINS {
                domains.clear();
            }
        }
        domains.entry(domain.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: Mode, mx: &str, max_age: u64) -> Policy {
        Policy {
            mode,
            max_age,
            mx: vec![mx.to_string()],
        }
    }

    /// RFC 8461 5.1: the cache is what resists a downgrade. A stripped or
    /// broken record, an unanswered lookup or a failed fetch leave the
    /// cached policy in force; only a new id is fetched; max_age ends it.
    #[test]
    fn a_cached_policy_survives_a_missing_record_and_a_failed_fetch_until_max_age() {
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        let mut known = Known::default();
        assert_eq!(
            known.id_to_fetch("d", Ok(Record::Id("a".into())), start),
            Some("a".into())
        );
        known.fetched(
            "d",
            "a".into(),
            Ok(policy(Mode::Enforce, "mx.d", 100)),
            start,
        );
        assert_eq!(known.in_force("d", later(1)).unwrap().id, "a");
        // Same id: nothing to fetch.
        assert_eq!(
            known.id_to_fetch("d", Ok(Record::Id("a".into())), later(2)),
            None
        );
        // Record stripped, broken, or DNS silent: the policy stays.
        for record in [
            Ok(Record::Absent),
            Ok(Record::Unusable("two records".into())),
            Err("timed out".into()),
        ] {
            assert_eq!(known.id_to_fetch("d", record, later(3)), None);
            assert_eq!(known.in_force("d", later(3)).unwrap().policy.mx, ["mx.d"]);
        }
        // A new id whose fetch fails: the old policy stays.
        let id = known
            .id_to_fetch("d", Ok(Record::Id("b".into())), later(4))
            .unwrap();
        known.fetched("d", id, Err("HTTP 500".into()), later(4));
        assert_eq!(known.in_force("d", later(4)).unwrap().id, "a");
        // A new id that fetches: replaced; mode none withdraws the policy.
        known.fetched(
            "d",
            "c".into(),
            Ok(policy(Mode::None, "mx.d", 100)),
            later(5),
        );
        assert_eq!(known.in_force("d", later(5)), None);
        known.fetched(
            "d",
            "e".into(),
            Ok(policy(Mode::Testing, "mx2.d", 10)),
            later(6),
        );
        assert_eq!(
            known.in_force("d", later(15)).unwrap().policy.mode,
            Mode::Testing
        );
        // max_age over: forgotten, and the same id is fetched again.
        assert_eq!(known.in_force("d", later(16)), None);
        assert_eq!(
            known.id_to_fetch("d", Ok(Record::Id("e".into())), later(16)),
            Some("e".into())
        );
    }
}

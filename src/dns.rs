//! The one DNS resolver configuration every stage uses (MX routing, the
//! SPF/DKIM/DMARC checks, DNS block lists, the self-check), so `[dns]
//! nameservers` points all of them at the same servers — a loopback server in
//! tests, a local validating resolver in production.

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// The resolver every DNS user shares: `[dns] nameservers` when set (tests
/// use a loopback server), else the system's.
pub fn build_resolver(dns: &crate::config::DnsConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver configuration: {e}"))?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let options = builder.options_mut();
    options.timeout = std::time::Duration::from_secs(5);
    options.attempts = 2;
    // One cache for every consumer (routing, SPF/DKIM/DMARC, DNSBL): answers
    // are kept for their TTL, so a burst from one sender costs one lookup.
    options.cache_size = 8192;
    if !dns.nameservers.is_empty() {
        // Explicit name servers are the whole truth (and what tests
        // rely on): /etc/hosts must not answer for them.
        options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    }
    let resolver = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
    Ok(resolver)
}

/// Whether the resolver itself answers, so that a dead one does not cost
/// every message its whole DNS budget (a large cloud outage often takes DNS
/// with it, and that is when Breakwater must take mail fastest).
///
/// Callers report each check that ran out of time. After
/// [`ResolverHealth::TRIP_AFTER`] in a row, a probe asks the resolver for
/// the root's NS records — a question any working recursive resolver
/// answers at once from its cache. Only if the probe gets no answer either
/// is the resolver declared down: checks are then skipped (a `temperror`
/// at once) and the probe repeats every [`ResolverHealth::REPROBE`] until
/// an answer comes. A sender's own silent name servers (a domain that times
/// out) therefore never turn the checks off for everyone.
pub struct ResolverHealth {
    resolver: TokioResolver,
    consecutive_timeouts: std::sync::atomic::AtomicU32,
    down: std::sync::atomic::AtomicBool,
    probing: std::sync::atomic::AtomicBool,
}

impl ResolverHealth {
    pub const TRIP_AFTER: u32 = 3;
    pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    pub const REPROBE: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn new(resolver: TokioResolver) -> std::sync::Arc<ResolverHealth> {
        std::sync::Arc::new(ResolverHealth {
            resolver,
            consecutive_timeouts: Default::default(),
            down: Default::default(),
            probing: Default::default(),
        })
    }

    /// True while the resolver is known not to answer: skip the lookup.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A check finished: `timed_out` if it ran out of its DNS budget.
    pub fn record(self: &std::sync::Arc<Self>, timed_out: bool) {
        use std::sync::atomic::Ordering;
        if !timed_out {
            self.consecutive_timeouts.store(0, Ordering::Relaxed);
            return;
        }
        let count = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if count >= Self::TRIP_AFTER && !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().probe());
        }
    }

    async fn probe(self: std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        loop {
            let answer = tokio::time::timeout(
                Self::PROBE_TIMEOUT,
                self.resolver
                    .lookup(".", hickory_resolver::proto::rr::RecordType::NS),
            )
            .await;
            let answered = matches!(&answer, Ok(Ok(_)))
                || matches!(&answer, Ok(Err(err)) if err.is_no_records_found());
            if answered {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::warn!("dns: resolver answers again; sender checks resume");
                }
                self.consecutive_timeouts.store(0, Ordering::Relaxed);
                self.probing.store(false, Ordering::Release);
                return;
            }
            if !self.down.swap(true, Ordering::AcqRel) {
                crate::metrics::get().rejected("dns_resolver_down");
                tracing::error!("dns: resolver does not answer; SPF/DKIM/DMARC checks skipped as temperror until it does");
            }
            tokio::time::sleep(Self::REPROBE).await;
        }
    }
}

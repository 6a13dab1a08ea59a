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
    build(dns, Caching::Shared)
}

/// A resolver for [`ResolverHealth`]'s probe: the same servers, one try,
/// and nothing kept. With a cache, a root NS answer fetched while the
/// resolver worked (TTL: six days) would "answer" every probe after it died.
pub fn build_probe_resolver(dns: &crate::config::DnsConfig) -> Result<TokioResolver, String> {
    build(dns, Caching::None)
}

#[derive(PartialEq)]
enum Caching {
    Shared,
    None,
}

fn build(dns: &crate::config::DnsConfig, caching: Caching) -> Result<TokioResolver, String> {
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
    if caching == Caching::None {
        options.cache_size = 0;
        options.positive_max_ttl = Some(std::time::Duration::ZERO);
        options.negative_max_ttl = Some(std::time::Duration::ZERO);
        options.attempts = 1;
        options.timeout = ResolverHealth::PROBE_TIMEOUT;
    }
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
/// Every DNS-backed check runs through [`ResolverHealth::within`]. A check
/// still unanswered after [`ResolverHealth::SUSPECT_AFTER`] (or
/// [`ResolverHealth::TRIP_AFTER`] checks in a row that ran out of time)
/// starts a probe: a question for the root's NS records, which any working
/// recursive resolver answers at once from its cache, asked through a
/// resolver of our own that caches nothing. Only if the probe gets no answer
/// either is the resolver declared down: the checks waiting on it end at
/// once, later checks are skipped (a `temperror` at once), and the probe
/// repeats every [`ResolverHealth::REPROBE`] until an answer comes. A
/// sender's own silent name servers (one domain that times out) therefore
/// never turn the checks off for everyone, and a dead resolver costs the
/// first wave of sessions about `SUSPECT_AFTER + PROBE_TIMEOUT`, not their
/// whole budget at MAIL and again at end of data.
pub struct ResolverHealth {
    probe_resolver: TokioResolver,
    consecutive_timeouts: std::sync::atomic::AtomicU32,
    down: tokio::sync::watch::Sender<bool>,
    probing: std::sync::atomic::AtomicBool,
    /// When a probe last got an answer: slow sender domains do not make us
    /// probe more than once a second.
    last_answer: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ResolverHealth {
    pub const TRIP_AFTER: u32 = 3;
    pub const SUSPECT_AFTER: std::time::Duration = std::time::Duration::from_millis(500);
    /// A recursive resolver primes the root NS set when it starts (it cannot
    /// recurse without it), so a live one answers this from memory.
    pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
    pub const REPROBE: std::time::Duration = std::time::Duration::from_secs(5);

    /// `probe_resolver` from [`build_probe_resolver`].
    pub fn new(probe_resolver: TokioResolver) -> std::sync::Arc<ResolverHealth> {
        std::sync::Arc::new(ResolverHealth {
            probe_resolver,
            consecutive_timeouts: Default::default(),
            down: tokio::sync::watch::Sender::new(false),
            probing: Default::default(),
            last_answer: std::sync::Mutex::new(None),
        })
    }

    /// True while the resolver is known not to answer: skip the lookup.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Run one DNS-backed check within `budget`. `None` when it ran out of
    /// time, or when the resolver is (or is meanwhile found) down.
    pub async fn within<F: std::future::Future>(
        self: &std::sync::Arc<Self>,
        budget: std::time::Duration,
        check: F,
    ) -> Option<F::Output> {
        use std::sync::atomic::Ordering;
        if self.is_down() {
            return None;
        }
        let mut down = self.down.subscribe();
        let suspect = tokio::time::sleep(Self::SUSPECT_AFTER.min(budget));
        let deadline = tokio::time::sleep(budget);
        tokio::pin!(check, suspect, deadline);
        let mut suspected = false;
        loop {
            tokio::select! {
                output = &mut check => {
                    self.consecutive_timeouts.store(0, Ordering::Relaxed);
                    return Some(output);
                }
                () = &mut suspect, if !suspected => {
                    suspected = true;
                    self.start_probe();
                }
                () = resolver_down(&mut down) => return None,
                () = &mut deadline => {
                    let count = self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                    if count >= Self::TRIP_AFTER {
                        self.start_probe();
                    }
                    return None;
                }
            }
        }
    }

    fn start_probe(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        let answered_lately = self
            .last_answer
            .lock()
            .expect("probe time lock")
            .is_some_and(|at| at.elapsed() < Self::SUSPECT_AFTER);
        if !answered_lately && !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().probe());
        }
    }

    async fn probe(self: std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        loop {
            let answer = tokio::time::timeout(
                Self::PROBE_TIMEOUT,
                self.probe_resolver
                    .lookup(".", hickory_resolver::proto::rr::RecordType::NS),
            )
            .await;
            let answered = matches!(&answer, Ok(Ok(_)))
                || matches!(&answer, Ok(Err(err)) if err.is_no_records_found());
            if answered {
                *self.last_answer.lock().expect("probe time lock") =
                    Some(std::time::Instant::now());
                if self.down.send_replace(false) {
                    tracing::warn!("dns: resolver answers again; sender checks resume");
                }
                self.consecutive_timeouts.store(0, Ordering::Relaxed);
                self.probing.store(false, Ordering::Release);
                return;
            }
            if !self.down.send_replace(true) {
                crate::metrics::get().rejected("dns_resolver_down");
                tracing::error!("dns: resolver does not answer; SPF/DKIM/DMARC checks skipped as temperror until it does");
            }
            tokio::time::sleep(Self::REPROBE).await;
        }
    }
}

/// Resolves when the resolver is declared down (the `Ref` that `wait_for`
/// returns must not live across the caller's `select!`).
async fn resolver_down(down: &mut tokio::sync::watch::Receiver<bool>) {
    if down.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A TXT record's text: its character-strings joined (RFC 7208 3.3 and
/// RFC 8461 3.1 read a record split into several strings as one).
pub fn txt_text(txt: &hickory_resolver::proto::rr::rdata::TXT) -> String {
    txt.txt_data
        .iter()
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

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

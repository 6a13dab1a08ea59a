//! `[trust]` and `[dns]`: sender authentication and the resolver.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{nonzero_durations, ConfigError, Invalid};

/// Verdicts about inbound mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Score every message for outage-themed phishing (never blocks mail).
    pub lure_scoring: bool,
    /// Domains known to be newly registered (no live whois); links to them score.
    pub recent_domains: Vec<String>,
    /// SPF, DKIM, ARC and DMARC on every message, recorded in an
    /// `Authentication-Results` header (RFC 8601) added on delivery.
    pub authenticate: bool,
    /// Budget for the DNS lookups of one check (SPF at MAIL, DKIM/DMARC at
    /// end of data).
    #[serde(with = "humantime_serde")]
    pub dns_timeout: Duration,
    /// A DNS failure during the checks: "accept" (record temperror) or
    /// "tempfail" (451 4.4.3, the client retries).
    pub on_dns_error: DnsErrorPolicy,
    /// Bodies above this many bytes are not read back from disk for DKIM/ARC
    /// (DMARC then rests on SPF alone), so a huge message never costs its size in RAM.
    pub max_verify_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsErrorPolicy {
    Accept,
    Tempfail,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            lure_scoring: true,
            recent_domains: Vec::new(),
            authenticate: true,
            dns_timeout: Duration::from_secs(10),
            on_dns_error: DnsErrorPolicy::Accept,
            max_verify_size: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Resolvers to ask, e.g. ["127.0.0.1:5353"]; empty = the system's.
    pub nameservers: Vec<SocketAddr>,
}

impl TrustConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        nonzero_durations(invalid, &[("trust.dns_timeout", self.dns_timeout)])
    }
}

//! `[limits]`, `[[dnsbl]]` and `[callout]`: who may send how much, and
//! whether a recipient exists.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{is_valid_hostname, nonzero, nonzero_durations, ConfigError, Invalid};

/// Abuse limits at intake (Postfix anvil + postscreen-style checks).
/// A rate of 0 means "no limit". Clients in `allow` skip all of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Networks exempt from rate limits, DNSBL checks and tarpitting, e.g.
    /// Exchange Online's outbound ranges and monitoring hosts.
    pub allow: Vec<ipnet::IpNet>,
    /// Per client IP address.
    pub connections_per_minute: u32,
    pub messages_per_minute: u32,
    pub recipients_per_minute: u32,
    /// Per client network: the /24 of an IPv4 address, the /64 of an IPv6 one.
    pub network_connections_per_minute: u32,
    pub network_messages_per_minute: u32,
    pub network_recipients_per_minute: u32,
    /// Concurrent connections from one /24 or /64 (per IP: `smtp.max_connections_per_ip`).
    pub max_connections_per_network: usize,
    /// After this many rejected commands or recipients in a session, every
    /// further reply is delayed by `tarpit_delay` (slows dictionary attacks).
    pub tarpit_after: u32,
    #[serde(with = "humantime_serde")]
    pub tarpit_delay: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            // Like Postfix's mynetworks default: the host itself is trusted.
            allow: vec![
                "127.0.0.0/8".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            // Generous: on the day the primary fails every sender's backlog
            // arrives here at once, and a legitimate bulk sender must not be
            // turned away. Tighten per site.
            connections_per_minute: 300,
            messages_per_minute: 1200,
            recipients_per_minute: 6000,
            network_connections_per_minute: 1200,
            network_messages_per_minute: 4800,
            network_recipients_per_minute: 24000,
            max_connections_per_network: 100,
            tarpit_after: 5,
            tarpit_delay: Duration::from_secs(1),
        }
    }
}

/// A DNS block list checked when a client connects (`[[dnsbl]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblConfig {
    /// e.g. "zen.spamhaus.org"
    pub zone: String,
    /// Answers that count as "listed"; empty = any 127.0.0.0/8 answer except
    /// 127.255.255.0/24 (Spamhaus' "query refused" codes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<std::net::Ipv4Addr>,
}

/// Recipient verification by callout (`verify_recipients = "callout"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalloutConfig {
    /// Results survive restarts here (an outage is exactly when they matter).
    pub cache_file: PathBuf,
    /// Postfix address_verify_positive_expire_time.
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// Postfix address_verify_negative_expire_time.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Whole probe (connect, EHLO, MAIL, RCPT).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// After a failed probe, the upstream is not probed again for this long:
    /// during an outage RCPT must not wait on a dead host each time.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for CalloutConfig {
    fn default() -> Self {
        CalloutConfig {
            cache_file: PathBuf::from("data/callout-cache.tsv"),
            positive_ttl: Duration::from_secs(7 * 86_400),
            negative_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(60),
        }
    }
}

/// `[limits]`, every `[[dnsbl]]` and `[callout]`.
pub(super) fn validate(
    limits: &LimitsConfig,
    dnsbls: &[DnsblConfig],
    callout: &CalloutConfig,
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    for (i, dnsbl) in dnsbls.iter().enumerate() {
        let zone = dnsbl.zone.trim_end_matches('.');
        if !is_valid_hostname(zone) || !zone.contains('.') {
            return Err(invalid(
                &format!("dnsbl[{i}].zone"),
                format!("{:?} is not a DNS zone name", dnsbl.zone),
            ));
        }
    }
    nonzero_durations(
        invalid,
        &[
            ("callout.timeout", callout.timeout),
            ("callout.positive_ttl", callout.positive_ttl),
            ("callout.negative_ttl", callout.negative_ttl),
        ],
    )?;
    nonzero(
        invalid,
        &[(
            "limits.max_connections_per_network",
            limits.max_connections_per_network as u64,
        )],
    )
}

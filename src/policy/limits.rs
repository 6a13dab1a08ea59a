//! Per-client abuse limits: rates per IP address and per network (/24 for
//! IPv4, /64 for IPv6 — one host's neighbours usually share an owner),
//! concurrent connections per network, and the allow-list that exempts
//! known senders (Exchange Online's outbound ranges, monitoring).
//!
//! Rates are GCRA buckets from `governor` ("N per minute", bursts up to N),
//! so a burst is absorbed and a steady flood is not. Going over answers with
//! a temporary failure: a legitimate sender queues and comes back, an abuser
//! is slowed down.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::LimitsConfig;

/// What is being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connection,
    Message,
    Recipient,
}

pub struct ClientLimits {
    allow: Vec<IpNet>,
    /// Indexed by `Event as usize`: (per IP, per network).
    rates: [(Option<Limiter>, Option<Limiter>); 3],
    checks: AtomicU32,
    pub max_connections_per_network: usize,
    pub tarpit_after: u32,
    pub tarpit_delay: std::time::Duration,
}

struct Limiter {
    name: &'static str,
    buckets: DefaultKeyedRateLimiter<IpAddr>,
}

impl Limiter {
    fn per_minute(name: &'static str, rate: u32) -> Option<Limiter> {
        let rate = NonZeroU32::new(rate)?;
        Some(Limiter {
            name,
            buckets: RateLimiter::keyed(Quota::per_minute(rate)),
        })
    }
}

impl ClientLimits {
    pub fn new(config: &LimitsConfig) -> ClientLimits {
        ClientLimits {
            allow: config.allow.clone(),
            rates: [
                (
                    Limiter::per_minute("connections_per_minute", config.connections_per_minute),
                    Limiter::per_minute(
                        "network_connections_per_minute",
                        config.network_connections_per_minute,
                    ),
                ),
                (
                    Limiter::per_minute("messages_per_minute", config.messages_per_minute),
                    Limiter::per_minute(
                        "network_messages_per_minute",
                        config.network_messages_per_minute,
                    ),
                ),
                (
                    Limiter::per_minute("recipients_per_minute", config.recipients_per_minute),
                    Limiter::per_minute(
                        "network_recipients_per_minute",
                        config.network_recipients_per_minute,
                    ),
                ),
            ],
            checks: AtomicU32::new(0),
            max_connections_per_network: config.max_connections_per_network,
            tarpit_after: config.tarpit_after,
            tarpit_delay: config.tarpit_delay,
        }
    }

    /// On the allow-list: no rate limits, DNSBL or tarpit.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Count one event; `Err(limit name)` when the client is over a limit.
    pub fn check(&self, ip: IpAddr, event: Event) -> Result<(), &'static str> {
        if self.is_allowed(ip) {
            return Ok(());
        }
        self.forget_idle_clients();
        let (per_ip, per_network) = &self.rates[event as usize];
        let ip = canonical(ip);
        // Both buckets are charged: a host within its own allowance can
        // still be stopped by its network's.
        for (limiter, key) in [(per_ip, ip), (per_network, network_of(ip))] {
            if let Some(limiter) = limiter {
                if limiter.buckets.check_key(&key).is_err() {
                    return Err(limiter.name);
                }
            }
        }
        Ok(())
    }

    /// Bucket maps grow with every client seen; drop the ones at rest now
    /// and then so memory stays bounded under a spray of source addresses.
    fn forget_idle_clients(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            for (per_ip, per_network) in &self.rates {
                for limiter in [per_ip, per_network].into_iter().flatten() {
                    limiter.buckets.retain_recent();
                }
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 clients.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The /24 (IPv4) or /64 (IPv6) a client belongs to, as its first address.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32) -> ClientLimits {
        ClientLimits::new(&LimitsConfig {
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            messages_per_minute: rate,
            network_messages_per_minute: rate * 2,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn per_ip_then_per_network_limits() {
        let limits = limits(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check(a, Event::Message).is_ok());
        }
        assert_eq!(limits.check(a, Event::Message), Err("messages_per_minute"));
        // b has its own per-IP allowance, but shares a's /24 (6 per minute).
        assert!(limits.check(b, Event::Message).is_ok());
        assert!(limits.check(b, Event::Message).is_ok());
        assert!(limits.check(b, Event::Message).is_ok());
        assert_eq!(
            limits.check(c, Event::Message),
            Err("network_messages_per_minute")
        );
        // Other networks and allow-listed clients are not affected.
        assert!(limits
            .check("198.51.100.7".parse().unwrap(), Event::Message)
            .is_ok());
        for _ in 0..100 {
            assert!(limits
                .check("10.9.3.4".parse().unwrap(), Event::Message)
                .is_ok());
        }
        // Zero means no limit.
        assert!(limits.check(a, Event::Connection).is_ok());
    }

    #[test]
    fn networks() {
        assert_eq!(
            network_of("203.0.113.77".parse().unwrap()),
            "203.0.113.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network_of("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network_of("::ffff:203.0.113.77".parse().unwrap()),
            "203.0.113.0".parse::<IpAddr>().unwrap()
        );
    }
}

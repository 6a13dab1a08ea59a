//! DNS block lists (`[[dnsbl]]`), asked once per connection before the
//! greeting: `4.3.2.1.zone. A?` for 1.2.3.4, nibbles for IPv6 (RFC 5782).
//!
//! A lookup that fails or times out counts as "not listed": a DNSBL outage
//! must never turn into a mail outage.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_resolver::TokioResolver;

use crate::config::DnsblConfig;

pub struct Dnsbls {
    lists: Vec<DnsblConfig>,
    resolver: Option<TokioResolver>,
    timeout: Duration,
}

impl Dnsbls {
    pub fn new(
        lists: Vec<DnsblConfig>,
        resolver: Option<TokioResolver>,
        timeout: Duration,
    ) -> Self {
        Dnsbls {
            lists,
            resolver,
            timeout,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty() || self.resolver.is_none()
    }

    /// The first zone that lists `ip`, with the answer it gave.
    pub async fn listed(&self, ip: IpAddr) -> Option<(String, Ipv4Addr)> {
        let resolver = self.resolver.as_ref()?;
        let lookups = self.lists.iter().map(|list| async move {
            let zone = list.zone.trim_end_matches('.');
            let name = format!("{}.{zone}.", reversed(ip));
            let answer = tokio::time::timeout(
                self.timeout,
                resolver.lookup(name.as_str(), hickory_resolver::proto::rr::RecordType::A),
            )
            .await
            .ok()?
            .ok()?;
            let hit = answer
                .answers()
                .iter()
                .find_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::A(a) if counts(list, a.0) => Some(a.0),
                    _ => None,
                })?;
            Some((zone.to_string(), hit))
        });
        // All lists at once: the slowest bounds the wait, not the sum.
        futures_first(lookups).await
    }
}

async fn futures_first<F>(lookups: impl Iterator<Item = F>) -> Option<(String, Ipv4Addr)>
where
    F: std::future::Future<Output = Option<(String, Ipv4Addr)>>,
{
    let results = futures_util::future::join_all(lookups).await;
    results.into_iter().flatten().next()
}

fn counts(list: &DnsblConfig, answer: Ipv4Addr) -> bool {
    if list.answers.is_empty() {
        let [a, b, c, _] = answer.octets();
        a == 127 && !(b == 255 && c == 255)
    } else {
        list.answers.contains(&answer)
    }
}

/// The query label for an address: reversed octets, or reversed nibbles.
pub fn reversed(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let hex = format!("{:032x}", u128::from(v6));
            let nibbles: Vec<String> = hex.chars().rev().map(String::from).collect();
            nibbles.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(
            reversed("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        let any = DnsblConfig {
            zone: "bl.example".into(),
            answers: vec![],
        };
        assert!(counts(&any, "127.0.0.2".parse().unwrap()));
        assert!(!counts(&any, "127.255.255.254".parse().unwrap()));
        assert!(!counts(&any, "10.0.0.1".parse().unwrap()));
    }
}

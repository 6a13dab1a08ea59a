//! MTA-STS (RFC 8461): find a domain's policy and read it.
//!
//! Why Breakwater cares: a domain whose policy is in `enforce` mode tells
//! every sender to deliver only to the MX hosts the policy lists. A
//! secondary MX missing from that list is silently skipped by those senders
//! (Gmail, Microsoft and others honour MTA-STS), so during an outage their
//! mail never comes near Breakwater. `breakwater check` uses this module to
//! say so before the outage does.
//!
//! The fetch follows the RFC's rules: `https://mta-sts.DOMAIN/.well-known/
//! mta-sts.txt`, a certificate verified for that name (webpki roots plus
//! `[delivery] extra_ca_file`), no redirects, a 200 answer, at most 64 KiB,
//! and a time limit for the whole exchange. Names are resolved with
//! Breakwater's own resolver (`[dns]`), like everything else it looks up.
//!
//! Shared service: imports `smtp_client` (the TLS trust roots) and `dns`.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::smtp_client::TlsClients;

/// RFC 8461 3.2 suggests senders read at most 64 KiB.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// RFC 8461 3.2: max_age is at most 31557600 (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub max_age: u64,
    /// `mx:` patterns, lower-cased: a name, or `*.` and a name (one label).
    pub mx: Vec<String>,
}

impl Policy {
    /// RFC 8461 4.1: does the policy allow delivery to MX host `host`?
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// The `_mta-sts` TXT record: its policy `id`.
pub fn parse_record(text: &str) -> Result<String, String> {
    let mut fields = text.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(format!("{text:?} does not start with v=STSv1"));
    }
    let id = fields
        .find_map(|f| f.strip_prefix("id="))
        .ok_or_else(|| format!("{text:?} has no id="))?;
    if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("id {id:?} must be 1-32 letters and digits"));
    }
    Ok(id.to_string())
}

/// What a domain's `_mta-sts` TXT records say (RFC 8461 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// No `v=STSv1` record: the domain has no policy.
    Absent,
    /// Exactly one valid record: the policy's current id.
    Id(String),
    /// Several `v=STSv1` records, or one that does not parse: senders
    /// treat the domain as having no policy (say why).
    Unusable(String),
}

/// Look up `_mta-sts.DOMAIN` TXT. `Err` only when DNS did not answer
/// (a missing name is [`Record::Absent`]).
pub async fn lookup_record(resolver: &TokioResolver, domain: &str) -> Result<Record, String> {
    let name = format!("_mta-sts.{}.", domain.trim_end_matches('.'));
    let texts: Vec<String> = match resolver.txt_lookup(name.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(crate::dns::txt_text(txt)),
                _ => None,
            })
            .collect(),
        Err(err) if err.is_no_records_found() || err.is_nx_domain() => Vec::new(),
        Err(err) => {
            return Err(format!(
                "lookup of {} TXT failed: {err}",
                &name[..name.len() - 1]
            ))
        }
    };
    // RFC 8461 3.1: records that do not begin with v=STSv1 are discarded.
    let sts: Vec<&String> = texts.iter().filter(|t| t.starts_with("v=STSv1")).collect();
    Ok(match sts.as_slice() {
        [] => Record::Absent,
        [one] => match parse_record(one) {
            Ok(id) => Record::Id(id),
            Err(err) => Record::Unusable(format!("_mta-sts.{domain}: {err}")),
        },
        _ => Record::Unusable(format!(
            "{} v=STSv1 records at _mta-sts.{domain}: senders treat that as no policy",
            sts.len()
        )),
    })
}

/// The policy file (RFC 8461 3.2): `key: value` lines.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line {}: {line:?} is not \"key: value\"", n + 1));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => {
                        return Err(format!(
                            "line {}: mode {other:?} is not enforce, testing or none",
                            n + 1
                        ))
                    }
                })
            }
            "max_age" => {
                let age: u64 = value
                    .parse()
                    .map_err(|_| format!("line {}: max_age {value:?} is not a number", n + 1))?;
                if age > MAX_AGE_LIMIT {
                    return Err(format!(
                        "line {}: max_age {age} is over the limit {MAX_AGE_LIMIT}",
                        n + 1
                    ));
                }
                max_age = Some(age);
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            // RFC 8461 3.2: unknown fields are ignored.
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no \"version: STSv1\" line".into());
    }
    let mode = mode.ok_or("no mode line")?;
    let max_age = max_age.ok_or("no max_age line")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx line".into());
    }
    Ok(Policy { mode, max_age, mx })
}

/// Fetch the policy text of `domain` from `https://mta-sts.DOMAIN:port/`
/// (`port` is 443 except in labs and tests), within `limit`.
pub async fn fetch(
    resolver: &TokioResolver,
    tls: &TlsClients,
    domain: &str,
    port: u16,
    limit: Duration,
) -> Result<String, String> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    match tokio::time::timeout(limit, fetch_from(resolver, tls, &host, port)).await {
        Ok(result) => {
            result.map_err(|err| format!("https://{host}/.well-known/mta-sts.txt: {err}"))
        }
        Err(_) => Err(format!(
            "https://{host}/.well-known/mta-sts.txt: no complete answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

async fn fetch_from(
    resolver: &TokioResolver,
    tls: &TlsClients,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let ips = resolver
        .lookup_ip(format!("{host}.").as_str())
        .await
        .map_err(|err| format!("cannot resolve {host}: {err}"))?;
    let addr = ips
        .iter()
        .next()
        .map(|ip| SocketAddr::new(ip, port))
        .ok_or_else(|| format!("{host} has no address"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect to {addr}: {err}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|err| err.to_string())?;
    let stream = tls
        .verified_connector()
        .connect(name, tcp)
        .await
        .map_err(|err| format!("TLS with {host} ({addr}): {err}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "breakwater")
        .body(Empty::<Bytes>::new())
        .map_err(|err| err.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| err.to_string())?;
    // RFC 8461 3.3: no redirects; anything but 200 is no policy.
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("answered HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                format!("the policy is larger than {} KiB", MAX_POLICY_BYTES / 1024)
            } else {
                err.to_string()
            }
        })?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8 text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_parses_and_matches_mx_names() {
        let policy = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.backup.example.com\r\nmax_age: 604800\r\nextension: ignored\r\n",
        )
        .unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert!(policy.allows("mail.example.com."));
        assert!(policy.allows("MX2.backup.example.com"));
        // A wildcard matches exactly one label.
        assert!(!policy.allows("a.b.backup.example.com"));
        assert!(!policy.allows("backup.example.com"));
        assert!(!policy.allows("mx2.example.com"));
    }

    #[test]
    fn broken_policies_and_records_are_errors_that_say_why() {
        for (text, why) in [
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
            ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n",
                "over the limit",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "no mx"),
            ("version: STSv1\nmode enforce\n", "key: value"),
        ] {
            let err = parse_policy(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        assert_eq!(
            parse_record("v=STSv1; id=20261201T1;").unwrap(),
            "20261201T1"
        );
        assert!(parse_record("v=STSv2; id=1").is_err());
        assert!(parse_record("v=STSv1;").unwrap_err().contains("no id"));
    }
}

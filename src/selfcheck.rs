//! `breakwater check`: is this deployment ready for the next outage?
//!
//! Each check yields pass / warn / fail with a one-line finding and, when
//! not passing, the fix. DNS goes through hickory with `[dns] nameservers`
//! (so tests can point it at a loopback server); SPF and DMARC records are
//! parsed with mail-auth, not by hand; TLS checks speak real SMTP and
//! STARTTLS to the upstreams and to our own listener.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use serde::{Deserialize, Serialize};

use crate::config::{parse_host_port, Config, UpstreamTls};
use crate::smtp_client::{Dialer, Session, StartTlsError, TlsClients};

/// MX TTLs above this make a failover change slow to take effect.
const MAX_GOOD_TTL: u32 = 3600;
/// RFC 7208 4.6.4: at most 10 DNS-querying terms per SPF evaluation.
const MAX_SPF_LOOKUPS: usize = 10;
const EXPIRY_WARNING_DAYS: i64 = 14;
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// The domain, or "listener" / "host" for server-wide checks.
    pub subject: String,
    pub check: String,
    pub level: Level,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Breakwater is a backup MX behind the primary (worse preference).
    Secondary,
    /// Breakwater is the only MX and relays everything.
    Gateway,
}

struct Report {
    findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, subject: &str, check: &str, level: Level, detail: String, fix: Option<&str>) {
        self.findings.push(Finding {
            subject: subject.to_string(),
            check: check.to_string(),
            level,
            detail,
            fix: fix.map(str::to_string),
        });
    }
}

/// 0 all pass, 1 warnings, 2 failures (like `postfix check` callers expect).
pub fn exit_code(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.level).max() {
        Some(Level::Fail) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

pub fn table(findings: &[Finding]) -> String {
    let width = |f: fn(&Finding) -> usize| findings.iter().map(f).max().unwrap_or(0);
    let (ws, wc) = (
        width(|f| f.subject.len()).max(7),
        width(|f| f.check.len()).max(5),
    );
    let mut out = format!("{:<ws$}  {:<wc$}  RESULT  DETAIL\n", "SUBJECT", "CHECK");
    for f in findings {
        let level = match f.level {
            Level::Pass => "pass",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{:<ws$}  {:<wc$}  {level:<6}  {}\n",
            f.subject, f.check, f.detail
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("{:<ws$}  {:<wc$}          fix: {fix}\n", "", ""));
        }
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    out.push_str(&format!(
        "{} pass, {} warnings, {} failures\n",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    ));
    out
}

/// Run every check for `domains` (all configured domains when empty).
/// HTTPS port of MTA-STS policy hosts (RFC 8461 3.3); `run_with_mta_sts_port`
/// lets a lab or a test serve policies elsewhere.
pub const MTA_STS_PORT: u16 = 443;

pub async fn run(config: &Config, domains: &[String], mode: Mode) -> Vec<Finding> {
    run_with_mta_sts_port(config, domains, mode, MTA_STS_PORT).await
}

pub async fn run_with_mta_sts_port(
    config: &Config,
    domains: &[String],
    mode: Mode,
    mta_sts_port: u16,
) -> Vec<Finding> {
    let mut report = Report {
        findings: Vec::new(),
    };
    let resolver = match crate::dns::build_resolver(&config.dns) {
        Ok(resolver) => resolver,
        Err(err) => {
            report.add(
                "dns",
                "resolver",
                Level::Fail,
                err,
                Some("fix [dns] nameservers or /etc/resolv.conf"),
            );
            return report.findings;
        }
    };
    let hostname = config.hostname.trim_end_matches('.').to_ascii_lowercase();
    let domains: Vec<String> = if domains.is_empty() {
        config.domains.iter().map(|d| d.name.clone()).collect()
    } else {
        domains.to_vec()
    };
    host_checks(&mut report, config, &resolver, &hostname).await;
    let memory_file = config.spool.dir.join(MTA_STS_MEMORY);
    let mut memory = MtaStsMemory::load(&memory_file);
    let mut enforced = false;
    for domain in &domains {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mx = mx_checks(&mut report, &resolver, &domain, &hostname, mode).await;
        spf_check(&mut report, &resolver, &domain).await;
        dmarc_check(&mut report, &resolver, &domain).await;
        dkim_check(&mut report, &resolver, config, &domain).await;
        sending_spf_check(&mut report, &resolver, config, &domain, &hostname).await;
        let sts = MtaStsTarget {
            domain: &domain,
            hostname: &hostname,
            port: mta_sts_port,
            mx: &mx,
        };
        enforced |= mta_sts_check(&mut report, config, &resolver, &sts, &mut memory).await;
        upstream_checks(&mut report, config, &resolver, &domain, &hostname, &mx).await;
    }
    listener_check(&mut report, config, enforced).await;
    // Best effort: without a writable spool directory (a check run as
    // another user) the next run cannot compare, which is only less help.
    // Never create the spool directory: a `sudo breakwater check` before the
    // first start would leave it owned by root, and `serve` unable to write.
    if config.spool.dir.is_dir() {
        if let Ok(json) = serde_json::to_vec_pretty(&memory) {
            let _ = crate::fsutil::write_atomic(&memory_file, &json, None);
        }
    }
    report.findings
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

async fn records(
    resolver: &TokioResolver,
    name: &str,
    kind: RecordType,
) -> Result<Vec<(u32, RData)>, String> {
    match resolver.lookup(fqdn(name).as_str(), kind).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .map(|r| (r.ttl, r.data.clone()))
            .collect()),
        Err(err) if err.is_no_records_found() || err.is_nx_domain() => Ok(Vec::new()),
        Err(err) => Err(format!("lookup of {name} {kind} failed: {err}")),
    }
}

async fn txt(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    Ok(records(resolver, name, RecordType::TXT)
        .await?
        .into_iter()
        .filter_map(|(_, data)| match data {
            RData::TXT(txt) => Some(crate::dns::txt_text(&txt)),
            _ => None,
        })
        .collect())
}

/// (preference, exchange, ttl), best first.
type MxList = Vec<(u16, String, u32)>;

async fn mx_checks(
    report: &mut Report,
    resolver: &TokioResolver,
    domain: &str,
    hostname: &str,
    mode: Mode,
) -> MxList {
    let mut mx: MxList = match records(resolver, domain, RecordType::MX).await {
        Ok(found) => found
            .into_iter()
            .filter_map(|(ttl, data)| match data {
                RData::MX(mx) => Some((
                    mx.preference,
                    mx.exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                    ttl,
                )),
                _ => None,
            })
            .collect(),
        Err(err) => {
            report.add(
                domain,
                "mx",
                Level::Fail,
                err,
                Some("check the domain's DNS servers"),
            );
            return Vec::new();
        }
    };
    mx.sort();
    if mx.is_empty() {
        report.add(domain, "mx", Level::Fail, "no MX records: senders use the A record, Breakwater gets nothing".into(),
            Some(&format!("publish MX records: the primary (e.g. 10 {domain}.mail.protection.outlook.com) and 20 {hostname}")));
        return mx;
    }
    let listing = mx
        .iter()
        .map(|(p, h, _)| format!("{p} {h}"))
        .collect::<Vec<_>>()
        .join(", ");
    report.add(domain, "mx", Level::Pass, format!("MX: {listing}"), None);
    let ours: Vec<&(u16, String, u32)> = mx.iter().filter(|(_, h, _)| h == hostname).collect();
    let others: Vec<&(u16, String, u32)> = mx.iter().filter(|(_, h, _)| h != hostname).collect();
    match (mode, ours.first(), others.first()) {
        (_, None, _) => report.add(domain, "mx-self", Level::Fail,
            format!("{hostname} (this Breakwater) is not among the MX hosts: it will receive no mail"),
            Some(&format!("add an MX record for {hostname}"))),
        (Mode::Secondary, Some(_), None) => report.add(domain, "mx-order", Level::Fail,
            "Breakwater is the only MX, but this is a secondary deployment: there is no primary".into(),
            Some("add the primary MX with a better (lower) preference, or run the check with --gateway")),
        (Mode::Secondary, Some(own), Some(best_other)) => {
            if own.0 > best_other.0 {
                report.add(domain, "mx-order", Level::Pass,
                    format!("primary {} ({}) is preferred over Breakwater ({})", best_other.1, best_other.0, own.0), None);
            } else {
                report.add(domain, "mx-order", Level::Fail,
                    format!("Breakwater ({}) is preferred over or equal to the primary {} ({}): it takes mail even while the primary is up", own.0, best_other.1, best_other.0),
                    Some(&format!("give {hostname} a higher preference number than {}", best_other.1)));
            }
        }
        (Mode::Gateway, Some(_), None) => report.add(domain, "mx-order", Level::Pass, "Breakwater is the only MX (gateway mode)".into(), None),
        (Mode::Gateway, Some(_), Some(other)) => report.add(domain, "mx-order", Level::Warn,
            format!("gateway mode, but {} is also an MX: senders may bypass Breakwater", other.1),
            Some("remove the other MX records, or run the check without --gateway")),
    }
    for (_, host, _) in &mx {
        match records(resolver, host, RecordType::A).await {
            Ok(answers) => {
                if let Some(target) = answers.iter().find_map(|(_, d)| match d {
                    RData::CNAME(c) => Some(c.0.to_ascii()),
                    _ => None,
                }) {
                    report.add(domain, "mx-cname", Level::Fail,
                        format!("MX host {host} is a CNAME (to {}); RFC 2181 10.3 forbids it and some senders will not deliver", target.trim_end_matches('.')),
                        Some(&format!("point the MX at the canonical name, or give {host} its own A/AAAA records")));
                }
                let mut addresses: Vec<(u32, RData)> = answers
                    .into_iter()
                    .filter(|(_, d)| matches!(d, RData::A(_)))
                    .collect();
                if let Ok(v6) = records(resolver, host, RecordType::AAAA).await {
                    addresses.extend(v6.into_iter().filter(|(_, d)| matches!(d, RData::AAAA(_))));
                }
                if addresses.is_empty() {
                    report.add(
                        domain,
                        "mx-resolves",
                        Level::Fail,
                        format!("MX host {host} has no A/AAAA record"),
                        Some(&format!("publish an address for {host}")),
                    );
                } else {
                    report.add(
                        domain,
                        "mx-resolves",
                        Level::Pass,
                        format!("{host} has {} address(es)", addresses.len()),
                        None,
                    );
                }
            }
            Err(err) => report.add(domain, "mx-resolves", Level::Fail, err, None),
        }
    }
    let max_ttl = mx.iter().map(|(_, _, ttl)| *ttl).max().unwrap_or(0);
    if max_ttl > MAX_GOOD_TTL {
        report.add(
            domain,
            "mx-ttl",
            Level::Warn,
            format!(
                "MX TTL is {max_ttl} s: a failover change would take that long to reach senders"
            ),
            Some("lower the MX TTL to 3600 s or less (300 s during a migration)"),
        );
    } else {
        report.add(
            domain,
            "mx-ttl",
            Level::Pass,
            format!("MX TTL {max_ttl} s"),
            None,
        );
    }
    mx
}

async fn host_checks(
    report: &mut Report,
    config: &Config,
    resolver: &TokioResolver,
    hostname: &str,
) {
    let addresses: Vec<IpAddr> = match resolver.lookup_ip(fqdn(hostname).as_str()).await {
        Ok(lookup) => lookup.iter().collect(),
        Err(_) => Vec::new(),
    };
    if addresses.is_empty() {
        report.add(
            "host",
            "hostname",
            Level::Fail,
            format!("{hostname} (our hostname) does not resolve"),
            Some(&format!(
                "publish an A/AAAA record for {hostname}, or fix `hostname` in the config"
            )),
        );
        return;
    }
    let listening: Vec<IpAddr> = config.smtp.listen.iter().map(|a| a.ip()).collect();
    // Unspecified (0.0.0.0) or loopback listeners (behind a proxy or NAT
    // forwarder, or a lab): we cannot tell which public address is ours.
    let specific: Vec<&IpAddr> = listening
        .iter()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .collect();
    if addresses.iter().all(|a| a.is_loopback()) && !specific.is_empty() {
        report.add(
            "host",
            "hostname",
            Level::Fail,
            format!("{hostname} resolves to a loopback address: no sender can reach it"),
            Some(&format!(
                "publish the public address of this server for {hostname}"
            )),
        );
    } else if specific.is_empty() || addresses.iter().any(|a| specific.contains(&a)) {
        report.add(
            "host",
            "hostname",
            Level::Pass,
            format!(
                "{hostname} → {}",
                addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        );
    } else {
        report.add("host", "hostname", Level::Warn,
            format!("{hostname} → {} but [smtp] listen is {} (fine behind NAT; otherwise mail goes elsewhere)",
                addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
                specific.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
            Some("make the hostname's address the one Breakwater listens on (or its NAT address)"));
    }
    for ip in addresses.into_iter().filter(|ip| !ip.is_loopback()) {
        let names: Vec<String> = match resolver.reverse_lookup(ip).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(name) => {
                        Some(name.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if names.iter().any(|n| n == hostname) {
            report.add(
                "host",
                "ptr",
                Level::Pass,
                format!("{ip} → {hostname} (forward-confirmed)"),
                None,
            );
        } else {
            report.add(
                "host",
                "ptr",
                Level::Warn,
                format!(
                    "reverse DNS of {ip} is {}, not {hostname}; some receivers distrust that",
                    if names.is_empty() {
                        "missing".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
                Some(&format!(
                    "ask the address's owner to set PTR {ip} → {hostname}"
                )),
            );
        }
    }
}

/// DNS-querying terms of an SPF record, following include/redirect (RFC 7208 4.6.4).
fn spf_lookups<'a>(
    resolver: &'a TokioResolver,
    domain: &'a str,
    depth: usize,
    seen: &'a mut BTreeSet<String>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, String>> + Send + 'a>> {
    Box::pin(async move {
        if depth > 10 || !seen.insert(domain.to_string()) {
            return Err(format!("SPF include loop at {domain}"));
        }
        let records: Vec<String> = txt(resolver, domain)
            .await?
            .into_iter()
            .filter(|t| is_spf(t))
            .collect();
        let Some(record) = records.first() else {
            return Err(format!("{domain} (included) has no SPF record"));
        };
        let spf = mail_auth::spf::Spf::parse(record.as_bytes())
            .map_err(|e| format!("SPF of {domain} does not parse: {e}"))?;
        let mut count = 0;
        let mut nested = Vec::new();
        for directive in spf.directives.iter() {
            use mail_auth::spf::Mechanism;
            match &directive.mechanism {
                Mechanism::Include { macro_string } => {
                    count += 1;
                    if let mail_auth::spf::Macro::Literal(name) = macro_string {
                        nested.push(String::from_utf8_lossy(name).into_owned());
                    }
                }
                Mechanism::A { .. }
                | Mechanism::Mx { .. }
                | Mechanism::Ptr { .. }
                | Mechanism::Exists { .. } => count += 1,
                _ => {}
            }
        }
        if let Some(mail_auth::spf::Macro::Literal(name)) = &spf.redirect {
            count += 1;
            nested.push(String::from_utf8_lossy(name).into_owned());
        }
        for name in nested {
            count += spf_lookups(resolver, &name, depth + 1, seen).await?;
        }
        Ok(count)
    })
}

fn is_spf(record: &str) -> bool {
    let lower = record.trim().to_ascii_lowercase();
    lower == "v=spf1" || lower.starts_with("v=spf1 ")
}

async fn spf_check(report: &mut Report, resolver: &TokioResolver, domain: &str) {
    let records: Vec<String> = match txt(resolver, domain).await {
        Ok(all) => all.into_iter().filter(|t| is_spf(t)).collect(),
        Err(err) => {
            report.add(domain, "spf", Level::Fail, err, None);
            return;
        }
    };
    match records.len() {
        0 => {
            report.add(domain, "spf", Level::Warn, "no SPF record: receivers cannot tell your mail from forgeries".into(),
                Some(&format!("publish one TXT record like \"v=spf1 include:spf.protection.outlook.com -all\" at {domain}")));
            return;
        }
        1 => {}
        n => {
            report.add(
                domain,
                "spf",
                Level::Fail,
                format!("{n} SPF records: RFC 7208 makes that a permanent error for every check"),
                Some("merge them into a single v=spf1 record"),
            );
            return;
        }
    }
    if let Err(err) = mail_auth::spf::Spf::parse(records[0].as_bytes()) {
        report.add(
            domain,
            "spf",
            Level::Fail,
            format!("the SPF record does not parse: {err}"),
            Some("fix the record's syntax"),
        );
        return;
    }
    let mut seen = BTreeSet::new();
    match spf_lookups(resolver, domain, 0, &mut seen).await {
        Ok(n) if n > MAX_SPF_LOOKUPS => report.add(domain, "spf", Level::Fail,
            format!("the SPF record needs {n} DNS lookups (limit {MAX_SPF_LOOKUPS}): evaluation ends in permerror"),
            Some("flatten includes (ip4:/ip6:) or drop unused ones")),
        Ok(n) => report.add(domain, "spf", Level::Pass, format!("one SPF record, {n} DNS lookups"), None),
        Err(err) => report.add(domain, "spf", Level::Fail, err, Some("fix the included records")),
    }
}

/// A domain that can send during an outage (`dkim_key`): the record
/// published under its selector must hold the key on disk, or every
/// message sent fails DKIM (and, with DMARC enforced, is rejected).
/// The addresses users' mail leaves from (`[send]`): the smart host's
/// when `[send] relay` is set, else our host name's (the address
/// receivers see when DNS is right; behind NAT it may differ).
async fn outbound_addresses(
    resolver: &TokioResolver,
    config: &Config,
    hostname: &str,
) -> Result<(String, Vec<IpAddr>), String> {
    let host = match parse_host_port(&config.send.relay) {
        Some((host, _)) => host.trim_matches(['[', ']']).to_string(),
        None => hostname.to_string(),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((host, vec![ip]));
    }
    match resolver.lookup_ip(fqdn(&host).as_str()).await {
        Ok(lookup) => Ok((host, lookup.iter().collect())),
        Err(err) => Err(format!("{host} does not resolve: {err}")),
    }
}

/// A domain users send from (it has a DKIM key): does its SPF record
/// authorise the address that mail leaves from? Without it, receivers
/// with DMARC `p=reject` may still take it on DKIM alone, but SPF-only
/// checkers (and DMARC with a broken DKIM path) will not.
async fn sending_spf_check(
    report: &mut Report,
    resolver: &TokioResolver,
    config: &Config,
    domain: &str,
    hostname: &str,
) {
    let sends = config
        .domains
        .iter()
        .any(|d| d.dkim_key.is_some() && d.name.trim_end_matches('.').eq_ignore_ascii_case(domain));
    if !sends {
        return;
    }
    let (host, addresses) = match outbound_addresses(resolver, config, hostname).await {
        Ok(found) => found,
        Err(err) => {
            report.add(
                domain,
                "spf-send",
                Level::Fail,
                err,
                Some("fix `hostname` or `[send] relay`"),
            );
            return;
        }
    };
    let verifier = mail_auth::MessageAuthenticator(resolver.clone());
    let sender = format!("postmaster@{domain}");
    let mut refused = Vec::new();
    for ip in &addresses {
        let output = verifier
            .verify_spf(mail_auth::spf::verify::SpfParameters::verify_mail_from(
                *ip, hostname, hostname, &sender,
            ))
            .await;
        if output.result() != mail_auth::SpfResult::Pass {
            refused.push((*ip, output.result()));
        }
    }
    if refused.is_empty() && !addresses.is_empty() {
        report.add(
            domain,
            "spf-send",
            Level::Pass,
            format!(
                "SPF of {domain} authorises {host} ({})",
                join_ips(&addresses)
            ),
            None,
        );
        return;
    }
    let mechanisms: Vec<String> = refused
        .iter()
        .map(|(ip, _)| match ip {
            IpAddr::V4(v4) => format!("ip4:{v4}"),
            IpAddr::V6(v6) => format!("ip6:{v6}"),
        })
        .collect();
    let results: Vec<String> = refused
        .iter()
        .map(|(ip, result)| format!("{ip}: {result}"))
        .collect();
    let fix = match config.send.relay.is_empty() {
        true => format!(
            "add {} to the SPF record of {domain} before [send] mode leaves off",
            mechanisms.join(" ")
        ),
        false => format!(
            "add the include: your smart host documents (or {}) to the SPF record of {domain}",
            mechanisms.join(" ")
        ),
    };
    report.add(
        domain,
        "spf-send",
        Level::Fail,
        format!(
            "mail users send from {domain} leaves from {host}, which its SPF does not authorise ({})",
            results.join(", ")
        ),
        Some(&fix),
    );
}

fn join_ips(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn dkim_check(report: &mut Report, resolver: &TokioResolver, config: &Config, domain: &str) {
    let Some(configured) = config
        .domains
        .iter()
        .find(|d| d.name.trim_end_matches('.').eq_ignore_ascii_case(domain))
    else {
        return;
    };
    let Some(path) = &configured.dkim_key else {
        return;
    };
    let key = match crate::dkim::load(path, domain, &configured.dkim_selector) {
        Ok(key) => key,
        Err(err) => {
            report.add(
                domain,
                "dkim",
                Level::Fail,
                err.to_string(),
                Some("make a key with `breakwater dkim keygen` (or fix the file's owner and mode)"),
            );
            return;
        }
    };
    let name = key.dns_name();
    let publish = format!("publish {}", key.zone_line());
    let records = match txt(resolver, &name).await {
        Ok(records) => records,
        Err(err) => {
            report.add(domain, "dkim", Level::Fail, err, None);
            return;
        }
    };
    let Some(record) = records.iter().find(|r| r.contains("p=")) else {
        report.add(
            domain,
            "dkim",
            Level::Fail,
            format!(
                "no DKIM record at {name}: mail sent from {domain} during an outage fails DKIM"
            ),
            Some(&publish),
        );
        return;
    };
    use crate::dkim::Published;
    match key.compare(record) {
        Published::Matches => report.add(
            domain,
            "dkim",
            Level::Pass,
            format!(
                "{name} publishes the {} key in {}",
                key.algorithm(),
                path.display()
            ),
            None,
        ),
        Published::Differs => report.add(
            domain,
            "dkim",
            Level::Fail,
            format!("{name} publishes a different key than {}", path.display()),
            Some(&publish),
        ),
        Published::Revoked => report.add(
            domain,
            "dkim",
            Level::Fail,
            format!("{name} revokes its key (empty p=)"),
            Some(&publish),
        ),
        Published::Unreadable(why) => report.add(
            domain,
            "dkim",
            Level::Fail,
            format!("the record at {name} is not a DKIM key: {why}"),
            Some(&publish),
        ),
    }
}

async fn dmarc_check(report: &mut Report, resolver: &TokioResolver, domain: &str) {
    let name = format!("_dmarc.{domain}");
    let records: Vec<String> = match txt(resolver, &name).await {
        Ok(all) => all
            .into_iter()
            .filter(|t| t.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
            .collect(),
        Err(err) => {
            report.add(domain, "dmarc", Level::Fail, err, None);
            return;
        }
    };
    let Some(record) = records.first() else {
        report.add(
            domain,
            "dmarc",
            Level::Warn,
            format!("no DMARC record at {name}: outage-themed spoofing of {domain} is not blocked"),
            Some(&format!(
                "publish TXT {name} \"v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}\""
            )),
        );
        return;
    };
    match mail_auth::dmarc::Dmarc::parse(record.as_bytes()) {
        Ok(dmarc) => {
            use mail_auth::dmarc::Policy;
            let (level, fix) = match dmarc.p {
                Policy::Reject | Policy::Quarantine => (Level::Pass, None),
                _ => (
                    Level::Warn,
                    Some("move to p=quarantine or p=reject once reports look clean"),
                ),
            };
            report.add(
                domain,
                "dmarc",
                level,
                format!("DMARC policy p={:?}", dmarc.p).to_lowercase(),
                fix,
            );
        }
        Err(err) => report.add(
            domain,
            "dmarc",
            Level::Fail,
            format!("the DMARC record does not parse: {err}"),
            Some("fix the record's syntax"),
        ),
    }
}

/// What an SMTP + STARTTLS probe learnt about one server.
struct TlsProbe {
    starttls: bool,
    /// Err: why the verified handshake failed.
    verified: Result<(), String>,
    days_left: Option<i64>,
    extensions: Vec<String>,
}

/// The self-check's SMTP client: our host name, `NETWORK_TIMEOUT`, the
/// delivery trust roots (so "verified" means what delivery means by it).
/// What the last `check` saw of each domain's MTA-STS set-up, kept in the
/// spool directory: senders re-fetch a policy only when the `id` in the
/// `_mta-sts` record changes, so a changed policy (or a changed MX set it
/// should follow) under the same id is a mistake only a comparison with an
/// earlier run can show.
const MTA_STS_MEMORY: &str = "selfcheck-mta-sts.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct MtaStsMemory {
    domains: std::collections::BTreeMap<String, MtaStsSeen>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MtaStsSeen {
    id: String,
    mx: Vec<String>,
    policy: String,
}

impl MtaStsMemory {
    fn load(path: &std::path::Path) -> MtaStsMemory {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }
}

struct MtaStsTarget<'a> {
    domain: &'a str,
    hostname: &'a str,
    port: u16,
    mx: &'a MxList,
}

/// MTA-STS: a policy in `enforce` mode that does not list our host name
/// makes every sender that honours it skip Breakwater. TLS-RPT is where
/// those senders report failures. True when an enforce policy lists us
/// (then our listener's certificate must verify, or those senders refuse).
async fn mta_sts_check(
    report: &mut Report,
    config: &Config,
    resolver: &TokioResolver,
    target: &MtaStsTarget<'_>,
    memory: &mut MtaStsMemory,
) -> bool {
    let (domain, hostname, port) = (target.domain, target.hostname, target.port);
    let fix_list = format!("add \"mx: {hostname}\" to https://mta-sts.{domain}/.well-known/mta-sts.txt, then change the id= of _mta-sts.{domain} TXT (docs/exchange-online.md)");
    match txt(resolver, &format!("_smtp._tls.{domain}")).await {
        Ok(records) if records.iter().any(|r| r.starts_with("v=TLSRPTv1")) => report.add(
            domain, "tls-rpt", Level::Pass, "TLS reporting (RFC 8460) is published".into(), None),
        Ok(_) => report.add(domain, "tls-rpt", Level::Warn,
            format!("no TLS-RPT record at _smtp._tls.{domain}: senders cannot tell you when TLS or MTA-STS to your MX fails"),
            Some("publish _smtp._tls TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@…\"")),
        Err(err) => report.add(domain, "tls-rpt", Level::Warn, err, None),
    }
    let id = match crate::mta_sts::lookup_record(resolver, domain).await {
        Ok(crate::mta_sts::Record::Id(id)) => id,
        Ok(crate::mta_sts::Record::Absent) => {
            report.add(
                domain,
                "mta-sts",
                Level::Pass,
                "no MTA-STS policy (_mta-sts TXT): senders use every MX, Breakwater included"
                    .into(),
                None,
            );
            return false;
        }
        Ok(crate::mta_sts::Record::Unusable(why)) => {
            report.add(
                domain,
                "mta-sts",
                Level::Fail,
                why,
                Some("publish exactly one \"v=STSv1; id=…\" record"),
            );
            return false;
        }
        Err(err) => {
            report.add(domain, "mta-sts", Level::Warn, err, None);
            return false;
        }
    };
    let tls = match TlsClients::for_delivery(&config.delivery) {
        Ok(tls) => tls,
        Err(err) => {
            report.add(domain, "mta-sts", Level::Fail, err, None);
            return false;
        }
    };
    let text = match crate::mta_sts::fetch(resolver, &tls, domain, port, NETWORK_TIMEOUT).await {
        Ok(text) => text,
        Err(err) => {
            report.add(domain, "mta-sts", Level::Fail,
                format!("policy id {id} is announced but cannot be fetched: {err}"),
                Some("serve the policy over HTTPS with a valid certificate for mta-sts.<domain>, or remove the _mta-sts record"));
            return false;
        }
    };
    let policy = match crate::mta_sts::parse_policy(&text) {
        Ok(policy) => policy,
        Err(err) => {
            report.add(
                domain,
                "mta-sts",
                Level::Fail,
                format!("policy id {id}: {err}"),
                Some("fix the policy file (RFC 8461 3.2)"),
            );
            return false;
        }
    };
    use crate::mta_sts::Mode as StsMode;
    let listed = policy.allows(hostname);
    match (policy.mode, listed) {
        (StsMode::Enforce, false) => report.add(domain, "mta-sts", Level::Fail,
            format!("policy id {id} is in enforce mode and does not list {hostname} (mx: {}): senders that honour MTA-STS will never deliver to Breakwater", policy.mx.join(", ")),
            Some(&fix_list)),
        (StsMode::Testing, false) => report.add(domain, "mta-sts", Level::Warn,
            format!("policy id {id} (testing mode) does not list {hostname}: TLS-RPT reports will show failures, and switching to enforce would cut Breakwater off"),
            Some(&fix_list)),
        (StsMode::None, _) => report.add(domain, "mta-sts", Level::Warn,
            format!("policy id {id} is in mode none (being withdrawn)"), None),
        (mode, true) => {
            let mode = if mode == StsMode::Enforce { "enforce" } else { "testing" };
            report.add(domain, "mta-sts", Level::Pass,
                format!("policy id {id} ({mode}) lists {hostname}"), None)
        }
    }
    let enforced = policy.mode == StsMode::Enforce && listed;
    let mut mx: Vec<String> = target.mx.iter().map(|(_, host, _)| host.clone()).collect();
    mx.sort();
    let seen = MtaStsSeen {
        id: id.clone(),
        mx,
        policy: text.clone(),
    };
    if let Some(before) = memory.domains.get(domain).filter(|b| b.id == id) {
        if before.policy != seen.policy {
            report.add(domain, "mta-sts-id", Level::Warn,
                format!("the policy file changed since the last check, but the id is still {id}: senders keep their cached copy for up to max_age"),
                Some("change the id= of the _mta-sts TXT record whenever the policy changes"));
        } else if before.mx != seen.mx && policy.mode != StsMode::None {
            report.add(domain, "mta-sts-id", Level::Warn,
                format!("the MX records changed since the last check ({} → {}) but the policy and its id {id} did not: is every MX still listed?", before.mx.join(", "), seen.mx.join(", ")),
                Some("update the policy's mx lines, then change the id"));
        }
    }
    memory.domains.insert(domain.to_string(), seen);
    if policy.mode != StsMode::None && policy.max_age < 86_400 {
        report.add(domain, "mta-sts-max-age", Level::Warn,
            format!("max_age {} s is under a day: senders forget the policy between visits (RFC 8461 suggests weeks)", policy.max_age),
            Some("max_age: 604800 or more"));
    }
    enforced
}

fn dialer(config: &Config) -> Result<Dialer, String> {
    let tls = TlsClients::for_delivery(&config.delivery)?;
    Ok(Dialer::new(
        &config.hostname,
        NETWORK_TIMEOUT,
        NETWORK_TIMEOUT,
        Arc::new(tls),
    ))
}

/// Connect, EHLO, and try a verified STARTTLS against `server_name`.
async fn probe(addr: SocketAddr, server_name: &str, dialer: &Dialer) -> Result<TlsProbe, String> {
    let session = dialer
        .connect(server_name, addr)
        .await
        .map_err(|e| e.to_string())?;
    let names = |session: &Session| -> Vec<String> {
        session
            .extension_names()
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let extensions = names(&session);
    let (starttls, verified) = match session.starttls(dialer, true).await {
        Ok(tls) => {
            let probe = TlsProbe {
                starttls: true,
                verified: Ok(()),
                days_left: tls.certificate_days_left(),
                extensions: names(&tls),
            };
            tls.quit().await;
            return Ok(probe);
        }
        Err((plain, StartTlsError::NotOffered)) => {
            if let Some(plain) = plain {
                plain.quit().await;
            }
            (false, Err("no STARTTLS".to_string()))
        }
        Err((plain, StartTlsError::Refused(reply))) => {
            if let Some(plain) = plain {
                plain.quit().await;
            }
            (false, Err(format!("STARTTLS answered {reply}")))
        }
        Err((_, StartTlsError::Handshake(why))) => (true, Err(why)),
        Err((_, StartTlsError::Broken(why))) => return Err(why),
    };
    Ok(TlsProbe {
        starttls,
        verified,
        days_left: None,
        extensions,
    })
}

async fn upstream_checks(
    report: &mut Report,
    config: &Config,
    resolver: &TokioResolver,
    domain: &str,
    hostname: &str,
    mx: &MxList,
) {
    let Some(settings) = config
        .domains
        .iter()
        .find(|d| d.name.trim_end_matches('.').eq_ignore_ascii_case(domain))
    else {
        return;
    };
    // (host for TLS names, port) of every upstream host.
    let hosts: Vec<(String, u16)> = if settings.upstream == "mx" {
        mx.iter()
            .filter(|(_, h, _)| h != hostname)
            .map(|(_, h, _)| (h.clone(), config.delivery.mx_port))
            .collect()
    } else {
        settings
            .upstream
            .split(',')
            .filter_map(|p| parse_host_port(p.trim()))
            .map(|(h, p)| (h.to_string(), p))
            .collect()
    };
    if hosts.is_empty() {
        report.add(
            domain,
            "upstream",
            Level::Fail,
            "no upstream host to deliver to".into(),
            Some("set [[domain]] upstream"),
        );
        return;
    }
    let dialer = match dialer(config) {
        Ok(dialer) => dialer,
        Err(err) => {
            report.add(
                domain,
                "upstream",
                Level::Fail,
                err,
                Some("fix [delivery] extra_ca_file"),
            );
            return;
        }
    };
    for (host, port) in hosts {
        let subject = format!("{domain} → {host}:{port}");
        let address = match host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => resolver
                .lookup_ip(fqdn(&host).as_str())
                .await
                .ok()
                .and_then(|l| l.iter().next()),
        };
        let Some(ip) = address else {
            report.add(
                &subject,
                "upstream",
                Level::Fail,
                format!("{host} does not resolve"),
                None,
            );
            continue;
        };
        let result = probe(SocketAddr::new(ip, port), &host, &dialer).await;
        let probe = match result {
            Ok(probe) => probe,
            Err(err) => {
                report.add(
                    &subject,
                    "upstream",
                    Level::Fail,
                    err,
                    Some("check the upstream address and firewalls"),
                );
                continue;
            }
        };
        report.add(
            &subject,
            "upstream",
            Level::Pass,
            format!("{ip}:{port} answers EHLO"),
            None,
        );
        let required = settings.tls == UpstreamTls::Required;
        match (&probe.verified, probe.starttls) {
            (Ok(()), _) => match probe.days_left {
                Some(days) if days < 0 => report.add(
                    &subject,
                    "upstream-tls",
                    Level::Fail,
                    "certificate expired".into(),
                    Some("renew the upstream's certificate"),
                ),
                Some(days) if days < EXPIRY_WARNING_DAYS => report.add(
                    &subject,
                    "upstream-tls",
                    Level::Warn,
                    format!("certificate valid for {host}, but expires in {days} days"),
                    Some("renew the upstream's certificate"),
                ),
                Some(days) => report.add(
                    &subject,
                    "upstream-tls",
                    Level::Pass,
                    format!("STARTTLS, certificate valid for {host}, {days} days left"),
                    None,
                ),
                None => report.add(
                    &subject,
                    "upstream-tls",
                    Level::Pass,
                    format!("STARTTLS, certificate valid for {host}"),
                    None,
                ),
            },
            (Err(why), false) => report.add(
                &subject,
                "upstream-tls",
                if required { Level::Fail } else { Level::Warn },
                format!(
                    "{why}: mail to this upstream travels in clear text{}",
                    if required {
                        ", and tls = \"required\" will refuse it"
                    } else {
                        ""
                    }
                ),
                Some("enable STARTTLS on the upstream"),
            ),
            (Err(why), true) => report.add(
                &subject,
                "upstream-tls",
                if required { Level::Fail } else { Level::Warn },
                format!("certificate not valid for {host}: {why}"),
                Some(
                    "fix the upstream's certificate (or add its CA with [delivery] extra_ca_file)",
                ),
            ),
        }
        let has = |ext: &str| {
            probe.extensions.iter().any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(ext))
            })
        };
        let missing: Vec<&str> = ["CHUNKING", "SIZE"]
            .into_iter()
            .filter(|e| !has(e))
            .collect();
        if missing.is_empty() {
            report.add(
                &subject,
                "upstream-extensions",
                Level::Pass,
                "CHUNKING and SIZE advertised".into(),
                None,
            );
        } else {
            report.add(
                &subject,
                "upstream-extensions",
                Level::Warn,
                format!(
                    "{} not advertised (slower delivery, no early size refusal)",
                    missing.join(", ")
                ),
                None,
            );
        }
    }
}

async fn listener_check(report: &mut Report, config: &Config, mta_sts_enforced: bool) {
    let smtp = &config.smtp;
    match crate::tls::not_after(&smtp.tls_cert) {
        Ok(expiry) => {
            let days = (expiry - time::OffsetDateTime::now_utc()).whole_days();
            let (level, fix) = match days {
                d if d < 0 => (
                    Level::Fail,
                    Some("renew the certificate (certbot/lego) and point [smtp] tls_cert at it"),
                ),
                d if d < EXPIRY_WARNING_DAYS => (Level::Warn, Some("renew the certificate soon")),
                _ => (Level::Pass, None),
            };
            report.add(
                "listener",
                "certificate",
                level,
                format!("{}: {days} days left", smtp.tls_cert.display()),
                fix,
            );
        }
        Err(err) => {
            report.add(
                "listener",
                "certificate",
                Level::Warn,
                format!("no usable certificate: {err}"),
                Some("install a certificate: senders will deliver without TLS"),
            );
            return;
        }
    }
    let Some(listen) = smtp.listen.first() else {
        return;
    };
    let target = if listen.ip().is_unspecified() {
        SocketAddr::new(
            if listen.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            },
            listen.port(),
        )
    } else {
        *listen
    };
    let dialer = match dialer(config) {
        Ok(dialer) => dialer,
        Err(err) => {
            report.add("listener", "starttls", Level::Fail, err, None);
            return;
        }
    };
    match probe(target, &config.hostname, &dialer).await {
        Err(err) => report.add("listener", "starttls", Level::Warn, format!("{err} (is `breakwater serve` running?)"), None),
        Ok(p) if !p.starttls => report.add("listener", "starttls", Level::Fail, "our listener does not offer STARTTLS".into(), Some("configure [smtp] tls_cert and tls_key")),
        Ok(TlsProbe { verified: Err(why), .. }) if mta_sts_enforced => report.add("listener", "starttls", Level::Fail,
            format!("an MTA-STS policy in enforce mode lists {}, but its certificate does not verify: those senders will not deliver here: {why}", config.hostname),
            Some("use a certificate from a public CA for the hostname")),
        Ok(TlsProbe { verified: Err(why), .. }) => report.add("listener", "starttls", Level::Warn,
            format!("STARTTLS works, but senders cannot verify the certificate for {}: {why}", config.hostname),
            Some("use a certificate from a public CA for the hostname (self-signed is fine for labs)")),
        Ok(_) => report.add("listener", "starttls", Level::Pass, format!("STARTTLS works with a certificate valid for {}", config.hostname), None),
    }
}

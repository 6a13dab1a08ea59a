//! Operator configuration: TOML on disk, typed here, validated once at start-up.
//!
//! The keys are an operator-facing contract (docs and tools depend on them), so
//! unknown keys are rejected instead of silently ignored, and every error names
//! the file, the key path and the problem, the way `postfix check` would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where `serve` and `check-config` look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/breakwater.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Banner and EHLO name, and the authserv-id in trace headers.
    #[serde(default = "system_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub trust: TrustConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// DNS block lists: `[[dnsbl]]` tables (none by default).
    #[serde(default, rename = "dnsbl", skip_serializing_if = "Vec::is_empty")]
    pub dnsbls: Vec<DnsblConfig>,
    #[serde(default)]
    pub callout: CalloutConfig,
    #[serde(default)]
    pub drill: DrillConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Where alerts go: `[[alert]]` tables.
    #[serde(default, rename = "alert", skip_serializing_if = "Vec::is_empty")]
    pub alert_targets: Vec<AlertTarget>,
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    /// Bytes; advertised in the SIZE extension and enforced while streaming.
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Generate a self-signed certificate when both files are missing, so a fresh
    /// checkout offers STARTTLS out of the box. Turn off in production.
    pub tls_generate_if_missing: bool,
    /// How often the certificate files are checked for changes (renewals).
    #[serde(with = "humantime_serde")]
    pub tls_reload_check: Duration,
    /// RFC 5321 4.5.3.2.7: server timeout waiting for the next command.
    /// It bounds the whole command line, not each read, so a client
    /// trickling a byte at a time cannot hold a connection forever.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// The command timeout while over 80 % of `max_connections` are in use
    /// (Postfix's stress mode: `smtpd_timeout = ${stress?10}`): idle and
    /// slow clients make room for ones that are sending mail.
    #[serde(with = "humantime_serde")]
    pub stress_timeout: Duration,
    /// RFC 5321 4.5.3.2.5/6: timeout for each read while receiving message data.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Bad commands tolerated before the session is closed with 421.
    pub max_errors: u32,
    /// NOOP, RSET, VRFY and HELP commands a session may send before each
    /// further one counts as an error (Postfix `smtpd_junk_command_limit`):
    /// a client that only keeps the connection busy runs into `max_errors`.
    pub junk_command_limit: u32,
    /// What to do with bare LF / bare CR line endings (SMTP smuggling defence).
    pub bare_lf: BareLfPolicy,
    /// Messages with more trace headers than this are rejected as looping.
    pub max_received_headers: usize,
    /// On SIGTERM, how long running sessions may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLfPolicy {
    /// Reject the message (550 5.5.2) and commands ending in a bare LF.
    Reject,
    /// Treat bare LF/CR as a line end, stored as CRLF; only CRLF.CRLF ends DATA.
    Normalize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// A segment is sealed and a new one started past this many bytes.
    pub segment_size: u64,
    /// Message bodies larger than this go to their own file instead of a segment,
    /// so a huge message never sits whole in memory or blocks the group commit.
    pub large_message_threshold: u64,
    /// Spool quota: past this many bytes of spool files, new mail is refused
    /// with 452 4.3.1 (delivery goes on and frees space). Unset = no quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<bytesize::ByteSize>,
    /// Free-space floor on the spool's file system: below it new mail gets
    /// 452 4.3.1, so the disk never fills up under acknowledged mail and
    /// delivery always has room for its small state records.
    pub min_free: bytesize::ByteSize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Turn the delivery engine off (spool only), e.g. for intake benchmarks.
    pub enabled: bool,
    /// Deliveries in flight at once, overall.
    pub concurrency: usize,
    /// Deliveries in flight at once to one upstream.
    pub per_upstream: usize,
    /// Wait before attempt n+1 (the last value repeats), each ±20% jitter.
    pub retry: Vec<humantime_serde::Serde<Duration>>,
    /// A recipient still deferred this long after arrival fails (DSN).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How often a down upstream is probed (connect + EHLO + QUIT).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Consecutive connection failures before an upstream is marked down.
    pub down_after_failures: u32,
    /// Postfix smtp_connect_timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Each command reply (Postfix smtp_helo/mail/rcpt_timeout: 300 s).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Sending the message and reading the final reply (Postfix data_done: 600 s).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub connection_idle: Duration,
    /// Port used for MX-routed delivery (25; other values only for labs and tests).
    pub mx_port: u16,
    /// Extra trusted CA certificates (PEM) besides the Mozilla roots, e.g. a
    /// private CA in front of the upstream, or a test CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
}

impl DeliveryConfig {
    pub fn retry_schedule(&self) -> Vec<Duration> {
        self.retry.iter().map(|d| **d).collect()
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            concurrency: 20,
            per_upstream: 10,
            retry: [60, 120, 300, 600, 900]
                .into_iter()
                .map(|s| Duration::from_secs(s).into())
                .collect(),
            max_age: Duration::from_secs(5 * 24 * 3600),
            // Worst-case delay before the flush starts once the upstream is
            // back; 3 s keeps it under the 5 s target with margin.
            probe_interval: Duration::from_secs(3),
            down_after_failures: 3,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            connection_idle: Duration::from_secs(30),
            mx_port: 25,
            extra_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// The admin HTTP API (JSON, bearer tokens), `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// Hashed API tokens (`breakwater token create`).
    pub tokens_file: PathBuf,
    /// Where `token create --save` puts a token for the local `breakwater queue` CLI.
    pub cli_token_file: PathBuf,
    /// Append-only, hash-chained audit log (JSON lines).
    pub audit_log: PathBuf,
    /// Rotate the audit log past this size; keep this many old files.
    pub audit_max_bytes: u64,
    pub audit_keep: usize,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:8025".parse().expect("literal address"),
            tokens_file: PathBuf::from("data/admin-tokens.json"),
            cli_token_file: PathBuf::from("data/admin.token"),
            audit_log: PathBuf::from("data/audit.log"),
            audit_max_bytes: 16 * 1024 * 1024,
            audit_keep: 10,
            max_connections: 64,
        }
    }
}

/// The web reader: end users read their spooled mail, admins steer the spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Serve HTTPS directly with these (PEM); absent = plain HTTP behind a TLS proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Mark cookies `Secure`. Defaults to on when serving HTTPS directly; turn
    /// it on by hand behind a TLS-terminating proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_cookies: Option<bool>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (their last entry
    /// is taken as the client address for lockouts and the audit log).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Local accounts (`breakwater user …`), argon2id hashes and TOTP secrets.
    pub users_file: PathBuf,
    /// Sign out after this long without a request, and after `session_max` in any case.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// TOTP is always required for admins; this requires it for everyone.
    pub require_totp: bool,
    /// Failed logins on one account within `lockout_window` that lock it for `lockout_duration`.
    pub lockout_failures: u32,
    /// Failed logins from one IP address within `lockout_window` that block that address.
    pub lockout_ip_failures: u32,
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
    /// Keep delivered messages readable in the web reader this long (0 = remove at delivery).
    #[serde(with = "humantime_serde")]
    pub retain_delivered: Duration,
    /// Messages per mailbox page.
    pub page_size: usize,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// The address users open to read their mail, for outage notices
    /// (e.g. "https://mx2.contoso.com:8443/"); empty = not said.
    pub public_url: String,
    /// What users call the upstream in the status badge and outage banner.
    pub upstream_label: String,
    /// UI language when the browser states no preference: "en" or "ja".
    pub default_language: String,
    /// UTC offset used for dates before the browser reformats them in its own zone, e.g. "+09:00".
    pub utc_offset: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            tls_cert: None,
            tls_key: None,
            secure_cookies: None,
            trusted_proxies: Vec::new(),
            users_file: PathBuf::from("data/users.json"),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            require_totp: false,
            lockout_failures: 5,
            lockout_ip_failures: 20,
            lockout_window: Duration::from_secs(15 * 60),
            lockout_duration: Duration::from_secs(15 * 60),
            retain_delivered: Duration::ZERO,
            page_size: 50,
            max_connections: 512,
            public_url: String::new(),
            upstream_label: "Exchange Online".to_string(),
            default_language: "en".to_string(),
            utc_offset: "+00:00".to_string(),
        }
    }
}

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

/// Failover drills.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// The running drill's state and the reports (JSON + Markdown).
    pub reports_dir: PathBuf,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            reports_dir: PathBuf::from("data/drills"),
        }
    }
}

/// Outage detection: active upstream probes and queue thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// How often each configured upstream is probed (connect + EHLO) and
    /// the queue looked at.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Consecutive failed probes before an upstream counts as down.
    pub probe_failures: u32,
    /// Notify again this often while an alert lasts.
    #[serde(with = "humantime_serde")]
    pub repeat: Duration,
    /// Alert when more messages than this wait (0 = off).
    pub queue_depth: usize,
    /// Alert when the oldest waiting message is older than this (0 = off).
    #[serde(with = "humantime_serde")]
    pub oldest_age: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            check_interval: Duration::from_secs(15),
            probe_failures: 2,
            repeat: Duration::from_secs(3600),
            queue_depth: 0,
            oldest_age: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Webhook,
    Mail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": …, "upstream": …, …}`
    #[default]
    Json,
    /// `{"text": "…"}`: Slack, Mattermost and Teams incoming webhooks.
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTarget {
    pub kind: AlertKind,
    /// webhook: where to POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// mail: the recipient (on a domain that does not depend on the failed upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// mail: the relay to send through, "host:port".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// "+09:00" / "-05:30" / "Z" → an offset.
pub fn parse_utc_offset(text: &str) -> Option<time::UtcOffset> {
    if text == "Z" || text.eq_ignore_ascii_case("utc") {
        return Some(time::UtcOffset::UTC);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

impl WebConfig {
    pub fn cookies_secure(&self) -> bool {
        self.secure_cookies.unwrap_or(self.tls_cert.is_some())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Resolvers to ask, e.g. ["127.0.0.1:5353"]; empty = the system's.
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// One address per line; absent = any local part is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<PathBuf>,
    /// "mx" (DNS MX lookup), or "host:port", or several "host:port" separated
    /// by commas, tried in order.
    #[serde(default = "default_upstream")]
    pub upstream: String,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// DMARC failures: "tag" records them; "enforce" rejects p=reject
    /// (550 5.7.1) and flags p=quarantine.
    #[serde(default)]
    pub dmarc: DmarcMode,
    /// SPF "fail" (-all): "tag" records it; "reject" refuses at RCPT (550 5.7.23).
    #[serde(default)]
    pub spf: SpfMode,
    /// "list": the `recipients` file (or any local part without one);
    /// "callout": ask the upstream with a RCPT probe, cached.
    #[serde(default)]
    pub verify_recipients: RecipientCheck,
    /// When a callout cannot be made and nothing is cached or listed:
    /// "accept" (the default: an outage must not bounce mail) or "tempfail".
    #[serde(default)]
    pub callout_fallback: CalloutFallback,
}

impl DomainConfig {
    /// A domain with defaults for everything but its name and upstream.
    pub fn new(name: &str, upstream: &str) -> DomainConfig {
        DomainConfig {
            name: name.to_string(),
            recipients: None,
            upstream: upstream.to_string(),
            tls: UpstreamTls::default(),
            dmarc: DmarcMode::default(),
            spf: SpfMode::default(),
            verify_recipients: RecipientCheck::default(),
            callout_fallback: CalloutFallback::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcMode {
    #[default]
    Tag,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfMode {
    #[default]
    Tag,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientCheck {
    #[default]
    List,
    Callout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalloutFallback {
    #[default]
    Accept,
    Tempfail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Required,
    #[default]
    Opportunistic,
    None,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec!["127.0.0.1:2525".parse().expect("literal address")],
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            tls_cert: PathBuf::from("certs/cert.pem"),
            tls_key: PathBuf::from("certs/key.pem"),
            tls_generate_if_missing: true,
            tls_reload_check: Duration::from_secs(10),
            command_timeout: Duration::from_secs(300),
            stress_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(180),
            max_errors: 20,
            junk_command_limit: 100,
            bare_lf: BareLfPolicy::Reject,
            max_received_headers: 50,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("data/spool"),
            segment_size: 64 * 1024 * 1024,
            large_message_threshold: 1024 * 1024,
            max_bytes: None,
            min_free: bytesize::ByteSize::gb(1),
        }
    }
}

fn default_upstream() -> String {
    "mx".to_string()
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname NUL-terminates
    // within it (or truncates), which we handle by searching for the NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            if !name.is_empty() {
                return name.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// A configuration problem, always naming the file and (when there is one) the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        file: PathBuf,
        key: String,
        problem: String,
    },
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate TOML text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let key = if key == "." { "(document)".into() } else { key };
            let inner = err.into_inner();
            // Point at the line for syntax errors (and anything with a span).
            let line = inner
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = inner.message().trim().replace('\n', " ");
            ConfigError::Invalid {
                file: path.to_path_buf(),
                key,
                problem: match line {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        if !is_valid_hostname(&self.hostname) {
            return Err(invalid(
                "hostname",
                format!("{:?} is not a valid host name", self.hostname),
            ));
        }
        let smtp = &self.smtp;
        if smtp.listen.is_empty() {
            return Err(invalid("smtp.listen", "needs at least one address".into()));
        }
        for (key, value) in [
            ("smtp.max_message_size", smtp.max_message_size),
            ("smtp.max_recipients", smtp.max_recipients as u64),
            ("smtp.max_connections", smtp.max_connections as u64),
            (
                "smtp.max_connections_per_ip",
                smtp.max_connections_per_ip as u64,
            ),
            (
                "smtp.max_received_headers",
                smtp.max_received_headers as u64,
            ),
            ("spool.segment_size", self.spool.segment_size),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        let delivery = &self.delivery;
        if delivery.retry.is_empty() {
            return Err(invalid(
                "delivery.retry",
                "needs at least one interval".into(),
            ));
        }
        if delivery.concurrency == 0 || delivery.per_upstream == 0 {
            return Err(invalid(
                "delivery.concurrency",
                "concurrency and per_upstream must be greater than 0".into(),
            ));
        }
        if let Some(ca) = &delivery.extra_ca_file {
            if let Err(err) = std::fs::metadata(ca) {
                return Err(invalid(
                    "delivery.extra_ca_file",
                    format!("cannot read {}: {err}", ca.display()),
                ));
            }
        }
        for (key, value) in [
            ("smtp.command_timeout", smtp.command_timeout),
            ("smtp.data_timeout", smtp.data_timeout),
            ("delivery.probe_interval", delivery.probe_interval),
            ("delivery.connect_timeout", delivery.connect_timeout),
            ("delivery.command_timeout", delivery.command_timeout),
            ("delivery.data_timeout", delivery.data_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s".into()));
            }
        }
        for (i, target) in self.alert_targets.iter().enumerate() {
            let key = format!("alert[{i}]");
            match target.kind {
                AlertKind::Webhook => {
                    let url = target.url.as_deref().unwrap_or("");
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(invalid(
                            &format!("{key}.url"),
                            format!("a webhook needs url = \"https://…\", got {url:?}"),
                        ));
                    }
                }
                AlertKind::Mail => {
                    if !target.to.as_deref().is_some_and(|t| t.contains('@')) {
                        return Err(invalid(
                            &format!("{key}.to"),
                            "a mail alert needs to = \"oncall@other-domain.example\"".into(),
                        ));
                    }
                    if target.route.as_deref().and_then(parse_host_port).is_none() {
                        return Err(invalid(&format!("{key}.route"), "a mail alert needs route = \"host:port\" (a relay that does not depend on the failed upstream)".into()));
                    }
                }
            }
        }
        if self.alerts.check_interval.is_zero() || self.alerts.probe_failures == 0 {
            return Err(invalid(
                "alerts.check_interval",
                "check_interval and probe_failures must be greater than 0".into(),
            ));
        }
        let web = &self.web;
        if !["en", "ja"].contains(&web.default_language.as_str()) {
            return Err(invalid(
                "web.default_language",
                format!("{:?} is not \"en\" or \"ja\"", web.default_language),
            ));
        }
        if parse_utc_offset(&web.utc_offset).is_none() {
            return Err(invalid(
                "web.utc_offset",
                format!("{:?} is not an offset like \"+09:00\"", web.utc_offset),
            ));
        }
        if web.tls_cert.is_some() != web.tls_key.is_some() {
            return Err(invalid(
                "web.tls_cert",
                "tls_cert and tls_key must be given together".into(),
            ));
        }
        for (key, value) in [
            ("web.page_size", web.page_size as u64),
            ("web.max_connections", web.max_connections as u64),
            ("admin.max_connections", self.admin.max_connections as u64),
            ("web.lockout_failures", u64::from(web.lockout_failures)),
            (
                "web.lockout_ip_failures",
                u64::from(web.lockout_ip_failures),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        for (key, value) in [
            ("web.session_idle", web.session_idle),
            ("web.session_max", web.session_max),
            ("web.lockout_window", web.lockout_window),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s".into()));
            }
        }
        if self.domains.is_empty() {
            return Err(invalid(
                "domain",
                "no [[domain]] configured: Breakwater would accept no mail".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, domain) in self.domains.iter().enumerate() {
            let key = |field: &str| format!("domain[{i}].{field}");
            let name = domain.name.trim_end_matches('.').to_ascii_lowercase();
            if !is_valid_hostname(&name) || !name.contains('.') {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is not a valid domain name", domain.name),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    &key("name"),
                    format!("domain {name} is configured twice"),
                ));
            }
            if domain.upstream != "mx"
                && domain
                    .upstream
                    .split(',')
                    .any(|part| parse_host_port(part.trim()).is_none())
            {
                return Err(invalid(
                    &key("upstream"),
                    format!(
                        "{:?} is neither \"mx\" nor host:port (e.g. \"tenant.mail.protection.outlook.com:25\")",
                        domain.upstream
                    ),
                ));
            }
            if let Some(list) = &domain.recipients {
                if let Err(err) = std::fs::metadata(list) {
                    return Err(invalid(
                        &key("recipients"),
                        format!("cannot read {}: {err}", list.display()),
                    ));
                }
            }
            if domain.verify_recipients == RecipientCheck::Callout && domain.upstream == "mx" {
                return Err(invalid(
                    &key("verify_recipients"),
                    "\"callout\" needs a host:port upstream (a callout through MX could ask this very host)".into(),
                ));
            }
        }
        for (i, dnsbl) in self.dnsbls.iter().enumerate() {
            let zone = dnsbl.zone.trim_end_matches('.');
            if !is_valid_hostname(zone) || !zone.contains('.') {
                return Err(invalid(
                    &format!("dnsbl[{i}].zone"),
                    format!("{:?} is not a DNS zone name", dnsbl.zone),
                ));
            }
        }
        if self.trust.dns_timeout.is_zero() {
            return Err(invalid(
                "trust.dns_timeout",
                "must be longer than 0s".into(),
            ));
        }
        for (key, value) in [
            ("callout.timeout", self.callout.timeout),
            ("callout.positive_ttl", self.callout.positive_ttl),
            ("callout.negative_ttl", self.callout.negative_ttl),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s".into()));
            }
        }
        if self.limits.max_connections_per_network == 0 {
            return Err(invalid(
                "limits.max_connections_per_network",
                "must be greater than 0".into(),
            ));
        }
        Ok(())
    }

    /// Settings that differ in `new` but are only read at start-up, as
    /// `section.key` (or `domain.<name>.key`). SIGHUP applies recipient
    /// lists, per-domain acceptance modes and the certificate; everything
    /// listed here waits for a restart, and the reload log says so.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let as_table = |config: &Config| match toml::Value::try_from(config) {
            Ok(toml::Value::Table(table)) => table,
            _ => toml::map::Map::new(),
        };
        let (old, new_table) = (as_table(self), as_table(new));
        let mut changed = Vec::new();
        let keys: std::collections::BTreeSet<&String> =
            old.keys().chain(new_table.keys()).collect();
        for key in keys {
            if key == "domain" {
                continue;
            }
            match (old.get(key), new_table.get(key)) {
                (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                    let inner: std::collections::BTreeSet<&String> =
                        a.keys().chain(b.keys()).collect();
                    for sub in inner {
                        let reloaded = key == "smtp" && (sub == "tls_cert" || sub == "tls_key");
                        if !reloaded && a.get(sub) != b.get(sub) {
                            changed.push(format!("{key}.{sub}"));
                        }
                    }
                }
                (a, b) if a != b => changed.push(key.clone()),
                _ => {}
            }
        }
        for domain in &new.domains {
            match self.domains.iter().find(|d| d.name == domain.name) {
                None => changed.push(format!(
                    "domain.{} (new domain: delivery route)",
                    domain.name
                )),
                Some(old) => {
                    if old.upstream != domain.upstream {
                        changed.push(format!("domain.{}.upstream", domain.name));
                    }
                    if old.tls != domain.tls {
                        changed.push(format!("domain.{}.tls", domain.name));
                    }
                }
            }
        }
        changed
    }

    /// The effective configuration as TOML (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// `host:port` with a non-empty host and a numeric port.
pub fn parse_host_port(value: &str) -> Option<(&str, u16)> {
    let (host, port) = value.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn reload_names_settings_that_need_a_restart() {
        let base = "hostname = \"mx2.example.com\"\n[[domain]]\nname = \"example.com\"\n";
        let old = parse(base).unwrap();
        assert!(old.restart_needed(&old.clone()).is_empty());
        let new = parse(&format!(
            "{base}dmarc = \"enforce\"\nupstream = \"10.0.0.1:25\"\n[[domain]]\nname = \"new.example\"\n[smtp]\nmax_connections = 5\ntls_cert = \"other.pem\"\n[spool]\nmin_free = \"2GB\"\n"
        ))
        .unwrap();
        assert_eq!(
            old.restart_needed(&new),
            vec![
                "smtp.max_connections".to_string(),
                "spool.min_free".to_string(),
                "domain.example.com.upstream".to_string(),
                "domain.new.example (new domain: delivery route)".to_string(),
            ]
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse("hostname = \"mx2.example.com\"\n[[domain]]\nname = \"example.com\"\n")
            .expect("valid");
        assert_eq!(config.smtp.max_recipients, 100);
        assert_eq!(config.smtp.command_timeout, Duration::from_secs(300));
        assert_eq!(config.domains[0].upstream, "mx");
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let err = parse("[smtp]\nmax_recipients = \"many\"\n[[domain]]\nname=\"example.com\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml: key `smtp.max_recipients`"),
            "{err}"
        );
        assert!(err.contains("invalid type"), "{err}");

        let err = parse("[smtp]\nlisten_on = []\n").unwrap_err().to_string();
        assert!(
            err.contains("smtp.listen_on") || err.contains("unknown field"),
            "{err}"
        );

        let err = parse("[[domain]]\nname=\"example.com\"\nupstream=\"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("domain[0].upstream"), "{err}");

        let err = parse("hostname = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("key `domain`"), "{err}");

        let err = parse("[[domain]]\nname = \"example.com\"\n[smtp\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "syntax errors name the line: {err}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(parse_host_port("a.b:25"), Some(("a.b", 25)));
        assert_eq!(parse_host_port("[::1]:2526"), Some(("::1", 2526)));
        assert_eq!(parse_host_port("a.b"), None);
        assert_eq!(parse_host_port(":25"), None);
    }
}

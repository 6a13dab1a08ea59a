//! `[web]`: the web reader, its accounts, sessions and lockouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{nonzero, nonzero_durations, ConfigError, Invalid};

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
    /// When not empty, admin pages and admin sign-ins only from these
    /// networks (client address as `trusted_proxies` define it); an admin
    /// account signing in from elsewhere is refused.
    pub admin_networks: Vec<ipnet::IpNet>,
    /// Local accounts (`breakwater user …`), argon2id hashes and TOTP secrets.
    pub users_file: PathBuf,
    /// Sign out after this long without a request, and after `session_max` in any case.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// How long a sign-in or a "confirm it's you" (password or code again)
    /// lets a session delete, bounce, revoke sessions or change its account.
    #[serde(with = "humantime_serde")]
    pub reauth_window: Duration,
    /// TOTP is always required for admins; this requires it for everyone.
    pub require_totp: bool,
    /// Failed logins on one account within `lockout_window` that lock it for `lockout_duration`.
    pub lockout_failures: u32,
    /// Failed logins from one IP address within `lockout_window` that block that address.
    pub lockout_ip_failures: u32,
    /// Failed logins across all accounts and addresses within
    /// `lockout_window` that raise the `sign-in-spray` security event
    /// (password spraying spreads its tries below each lockout; 0 = off).
    pub spray_failures: u32,
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
    /// The mailbox search index (rebuilt from the spool when missing);
    /// absent = `search` under `[spool] dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_index: Option<PathBuf>,
}

impl WebConfig {
    pub fn search_index_dir(&self, spool: &super::SpoolConfig) -> PathBuf {
        self.search_index
            .clone()
            .unwrap_or_else(|| spool.dir.join("search"))
    }
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
            reauth_window: Duration::from_secs(5 * 60),
            require_totp: false,
            lockout_failures: 5,
            lockout_ip_failures: 20,
            spray_failures: 50,
            admin_networks: Vec::new(),
            lockout_window: Duration::from_secs(15 * 60),
            lockout_duration: Duration::from_secs(15 * 60),
            retain_delivered: Duration::ZERO,
            page_size: 50,
            max_connections: 512,
            public_url: String::new(),
            upstream_label: "Exchange Online".to_string(),
            default_language: "en".to_string(),
            utc_offset: "+00:00".to_string(),
            search_index: None,
        }
    }
}

impl WebConfig {
    pub fn cookies_secure(&self) -> bool {
        self.secure_cookies.unwrap_or(self.tls_cert.is_some())
    }
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
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        if !["en", "ja"].contains(&self.default_language.as_str()) {
            return Err(invalid(
                "web.default_language",
                format!("{:?} is not \"en\" or \"ja\"", self.default_language),
            ));
        }
        if parse_utc_offset(&self.utc_offset).is_none() {
            return Err(invalid(
                "web.utc_offset",
                format!("{:?} is not an offset like \"+09:00\"", self.utc_offset),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "web.tls_cert",
                "tls_cert and tls_key must be given together".into(),
            ));
        }
        nonzero(
            invalid,
            &[
                ("web.page_size", self.page_size as u64),
                ("web.max_connections", self.max_connections as u64),
                ("web.lockout_failures", u64::from(self.lockout_failures)),
                (
                    "web.lockout_ip_failures",
                    u64::from(self.lockout_ip_failures),
                ),
            ],
        )?;
        nonzero_durations(
            invalid,
            &[
                ("web.session_idle", self.session_idle),
                ("web.session_max", self.session_max),
                ("web.reauth_window", self.reauth_window),
                ("web.lockout_window", self.lockout_window),
            ],
        )
    }
}

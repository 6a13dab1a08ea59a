//! Operator configuration: TOML on disk, typed here, validated once at start-up.
//!
//! The keys are an operator-facing contract (docs and tools depend on them), so
//! unknown keys are rejected instead of silently ignored, and every error names
//! the file, the key path and the problem, the way `postfix check` would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod admin;
mod cluster;
mod delivery;
mod domain;
mod drill;
mod policy;
mod send;
mod smtp;
mod spool;
mod trust;
mod web;

pub use admin::AdminConfig;
pub use cluster::{ClusterConfig, OnUnavailable, Replicate};
pub use delivery::DeliveryConfig;
pub use domain::{CalloutFallback, DmarcMode, DomainConfig, RecipientCheck, SpfMode, UpstreamTls};
pub use drill::{AlertKind, AlertTarget, AlertsConfig, DrillConfig, WebhookFormat};
pub use policy::{CalloutConfig, DnsblConfig, LimitsConfig};
pub use send::{SendConfig, SendMode};
pub use smtp::{BareLfPolicy, SmtpConfig};
pub use spool::SpoolConfig;
pub use trust::{DnsConfig, DnsErrorPolicy, TrustConfig};
pub use web::{parse_utc_offset, WebConfig};

/// Makes the error for one key of the file being validated (each section's
/// `validate` gets one, so every message names the file and the key).
type Invalid<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

/// Keys that must not be 0.
fn nonzero(invalid: &Invalid, keys: &[(&str, u64)]) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(invalid(key, "must be greater than 0".into())),
        None => Ok(()),
    }
}

/// Durations that must not be 0s.
fn nonzero_durations(invalid: &Invalid, keys: &[(&str, Duration)]) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, value)| value.is_zero()) {
        Some((key, _)) => Err(invalid(key, "must be longer than 0s".into())),
        None => Ok(()),
    }
}

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
    #[serde(default)]
    pub send: SendConfig,
    /// Several nodes on one PostgreSQL database (docs/CLUSTER.md); absent =
    /// a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainConfig>,
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

    /// Every section checks its own keys; this checks what spans them.
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
        self.smtp.validate(&invalid)?;
        self.spool.validate(&invalid)?;
        self.delivery.validate(&invalid)?;
        drill::validate_alerts(&self.alerts, &self.alert_targets, &invalid)?;
        self.web.validate(&invalid)?;
        self.admin.validate(&invalid)?;
        self.send.validate(&invalid)?;
        domain::validate_domains(&self.domains, &invalid)?;
        policy::validate(&self.limits, &self.dnsbls, &self.callout, &invalid)?;
        self.trust.validate(&invalid)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate(&invalid)?;
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

pub(crate) fn is_valid_hostname(name: &str) -> bool {
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

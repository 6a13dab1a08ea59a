//! `[drill]`, `[alerts]` and `[[alert]]`: failover drills and outage alerts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{parse_host_port, ConfigError, Invalid};

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
    /// Language of security-event alert texts: "en" or "ja".
    pub language: String,
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
            language: "en".to_string(),
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

/// `[alerts]` and every `[[alert]]` target.
pub(super) fn validate_alerts(
    alerts: &AlertsConfig,
    targets: &[AlertTarget],
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    for (i, target) in targets.iter().enumerate() {
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
    if !["en", "ja"].contains(&alerts.language.as_str()) {
        return Err(invalid(
            "alerts.language",
            format!("{:?} is not \"en\" or \"ja\"", alerts.language),
        ));
    }
    if alerts.check_interval.is_zero() || alerts.probe_failures == 0 {
        return Err(invalid(
            "alerts.check_interval",
            "check_interval and probe_failures must be greater than 0".into(),
        ));
    }
    Ok(())
}

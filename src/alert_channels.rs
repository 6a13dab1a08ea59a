//! The `[[alert]]` channels: where the outage monitor's notices and the
//! security events go. A webhook (the notice as JSON, or `{"text"}` for
//! Slack, Teams and Mattermost) or a mail through the target's own relay,
//! which must not depend on the upstream that just failed.
//!
//! Shared service: the monitor and `security_events` both call
//! [`deliver`]; neither owns the channels. Imports `config` and
//! `smtp_client` only.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{parse_host_port, AlertKind, AlertTarget, Config, WebhookFormat};
use crate::envelope::now_ms;
use crate::smtp_client::{self, Dialer, Relay, TlsClients, TlsPolicy};

/// Send one notice to every `[[alert]]` target: `json` to JSON webhooks,
/// `text` to text webhooks and as the mail (first line = subject).
/// Failures are logged, never fatal, and one target's failure does not
/// stop the others.
pub async fn deliver(config: &Config, event: &str, text: &str, json: &serde_json::Value) {
    for target in &config.alert_targets {
        let result = match target.kind {
            AlertKind::Webhook => webhook(target, text, json).await,
            AlertKind::Mail => mail(config, target, event, text, json).await,
        };
        if let Err(err) = result {
            tracing::error!(event, target = ?target.kind, error = %err, "alert could not be delivered");
        }
    }
}

async fn webhook(target: &AlertTarget, text: &str, json: &serde_json::Value) -> Result<(), String> {
    let body = match target.format {
        WebhookFormat::Json => json.clone(),
        WebhookFormat::Text => serde_json::json!({ "text": text }),
    };
    post_json(target.url.clone().unwrap_or_default(), body).await
}

/// POST a JSON body (10 s for the whole exchange).
pub async fn post_json(url: String, body: serde_json::Value) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        agent
            .post(&url)
            .send_json(&body)
            .map(|_| ())
            .map_err(|e| format!("POST {url}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A plain SMTP submission through the alert's own relay.
async fn mail(
    config: &Config,
    target: &AlertTarget,
    event: &str,
    text: &str,
    json: &serde_json::Value,
) -> Result<(), String> {
    let route = target.route.as_deref().unwrap_or("");
    let (host, port) = parse_host_port(route).ok_or_else(|| format!("bad route {route:?}"))?;
    let to = target.to.clone().unwrap_or_default();
    let from = format!("breakwater-alerts@{}", config.hostname);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let subject = text.lines().next().unwrap_or("");
    // The subject may be Japanese ([alerts] language = "ja").
    let subject = if subject.is_ascii() {
        subject.to_string()
    } else {
        format!(
            "=?utf-8?b?{}?=",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, subject)
        )
    };
    let message = format!(
        "From: Breakwater <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{event}.{}@{}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n\r\n{}\r\n",
        now_ms(),
        config.hostname,
        text.replace("\r\n", "\n").replace('\n', "\r\n"),
        serde_json::to_string_pretty(json)
            .unwrap_or_default()
            .replace('\n', "\r\n"),
    );
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("relay does not resolve")?;
    // The relay is outside the outage; encrypt when it offers STARTTLS.
    let relay = Relay {
        host,
        addr,
        policy: TlsPolicy::Opportunistic,
    };
    let limit = Duration::from_secs(30);
    let tls = TlsClients::for_delivery(&config.delivery)?;
    let dialer = Dialer::new(&config.hostname, limit, limit, std::sync::Arc::new(tls));
    smtp_client::submit(&dialer, &relay, &from, &to, message.as_bytes(), limit)
        .await
        .map(|_| ())
}

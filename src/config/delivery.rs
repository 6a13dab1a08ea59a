//! `[delivery]`: retries, timeouts and trust roots for sending upstream.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{nonzero_durations, ConfigError, Invalid};

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
    /// How often a down upstream is probed (connect + EHLO + QUIT). It
    /// bounds how long the backlog waits once the upstream is back: one
    /// cheap connection a second to the organisation's own mail host.
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
    /// Honour recipient domains' MTA-STS policies (RFC 8461) on MX-routed
    /// delivery: under `enforce`, only the listed MX hosts, verified TLS.
    pub mta_sts: bool,
    /// HTTPS port of `mta-sts.DOMAIN` (443; other values only for labs and tests).
    pub mta_sts_port: u16,
    /// Postfix's delay_warning_time: a sender whose mail has waited this
    /// long for a recipient gets one "delayed, still trying" notice (0 = off).
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
    /// Postfix's emergency switch: every permanent reply from an upstream
    /// is kept as a deferral and retried (also switchable at run time).
    pub soft_bounce: bool,
    /// The bounce guard: this many recipients refused by one upstream with
    /// the same permanent reply within `bounce_guard_window` hold the
    /// upstream instead of bouncing (0 = off).
    pub bounce_guard_failures: u32,
    #[serde(with = "humantime_serde")]
    pub bounce_guard_window: Duration,
    /// Extra trusted CA certificates (PEM) besides the Mozilla roots, e.g. a
    /// private CA in front of the upstream, or a test CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
    /// Connect to upstreams over IPv4 only (Postfix's `inet_protocols =
    /// ipv4` for the client side). Exchange Online's inbound connectors
    /// match senders by `SenderIPAddresses`, which takes IPv4 addresses
    /// only: a delivery over IPv6 would not be recognised as ours.
    pub ipv4_only: bool,
    /// Certificate chain (PEM) presented to upstreams that ask for a
    /// client certificate during STARTTLS: Exchange Online's inbound
    /// connector can identify us by it (`TlsSenderCertificateName`), which
    /// also works when our addresses change. With `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
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
            // back (the drain's first delivery waits for it).
            probe_interval: Duration::from_secs(1),
            down_after_failures: 3,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            connection_idle: Duration::from_secs(30),
            mx_port: 25,
            mta_sts: true,
            mta_sts_port: 443,
            delay_warning: Duration::ZERO,
            soft_bounce: false,
            // Ten recipients refused alike in ten minutes: far more than a
            // few unknown users after an outage, far fewer than a backlog.
            bounce_guard_failures: 10,
            bounce_guard_window: Duration::from_secs(600),
            extra_ca_file: None,
            ipv4_only: false,
            client_cert: None,
            client_key: None,
        }
    }
}

impl DeliveryConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        if self.retry.is_empty() {
            return Err(invalid(
                "delivery.retry",
                "needs at least one interval".into(),
            ));
        }
        if self.concurrency == 0 || self.per_upstream == 0 {
            return Err(invalid(
                "delivery.concurrency",
                "concurrency and per_upstream must be greater than 0".into(),
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "delivery.client_cert",
                    "client_cert and client_key go together: give both or neither".into(),
                ))
            }
            (Some(cert), Some(key)) => {
                // Parsed here so that a wrong file is a configuration error
                // naming the key, not a failure at the first delivery.
                use rustls_pki_types::pem::PemObject;
                let certs: Result<Vec<_>, _> =
                    rustls_pki_types::CertificateDer::pem_file_iter(cert)
                        .and_then(|certs| certs.collect());
                match certs {
                    Ok(certs) if !certs.is_empty() => {}
                    Ok(_) => {
                        return Err(invalid(
                            "delivery.client_cert",
                            format!("{}: no PEM certificate in the file", cert.display()),
                        ))
                    }
                    Err(err) => {
                        return Err(invalid(
                            "delivery.client_cert",
                            format!("{}: {err}", cert.display()),
                        ))
                    }
                }
                if let Err(err) = rustls_pki_types::PrivateKeyDer::from_pem_file(key) {
                    return Err(invalid(
                        "delivery.client_key",
                        format!("{}: {err}", key.display()),
                    ));
                }
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.extra_ca_file {
            if let Err(err) = std::fs::metadata(ca) {
                return Err(invalid(
                    "delivery.extra_ca_file",
                    format!("cannot read {}: {err}", ca.display()),
                ));
            }
        }
        nonzero_durations(
            invalid,
            &[
                ("delivery.probe_interval", self.probe_interval),
                ("delivery.connect_timeout", self.connect_timeout),
                ("delivery.command_timeout", self.command_timeout),
                ("delivery.data_timeout", self.data_timeout),
                ("delivery.bounce_guard_window", self.bounce_guard_window),
            ],
        )
    }
}

//! `[smtp]`: the listeners and what intake accepts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{nonzero, nonzero_durations, ConfigError, Invalid};

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

impl SmtpConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("smtp.listen", "needs at least one address".into()));
        }
        nonzero(
            invalid,
            &[
                ("smtp.max_message_size", self.max_message_size),
                ("smtp.max_recipients", self.max_recipients as u64),
                ("smtp.max_connections", self.max_connections as u64),
                (
                    "smtp.max_connections_per_ip",
                    self.max_connections_per_ip as u64,
                ),
                (
                    "smtp.max_received_headers",
                    self.max_received_headers as u64,
                ),
            ],
        )?;
        nonzero_durations(
            invalid,
            &[
                ("smtp.command_timeout", self.command_timeout),
                ("smtp.data_timeout", self.data_timeout),
            ],
        )
    }
}

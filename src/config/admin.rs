//! `[admin]`: the JSON API, its tokens and the audit log.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{nonzero, ConfigError, Invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// The admin HTTP API (JSON, bearer tokens), `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// The same API on a Unix socket for the CLI on this machine (mode
    /// 0660; only root and the user `serve` runs as get in, by their peer
    /// credentials, no token needed); "" turns it off.
    pub socket: PathBuf,
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
    /// `serve` checks the audit log's hash chain this often (and at start);
    /// a broken chain is a security event.
    #[serde(with = "humantime_serde")]
    pub audit_verify_interval: std::time::Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:8025".parse().expect("literal address"),
            socket: PathBuf::from("data/admin.sock"),
            tokens_file: PathBuf::from("data/admin-tokens.json"),
            cli_token_file: PathBuf::from("data/admin.token"),
            audit_log: PathBuf::from("data/audit.log"),
            audit_max_bytes: 16 * 1024 * 1024,
            audit_keep: 10,
            max_connections: 64,
            audit_verify_interval: std::time::Duration::from_secs(600),
        }
    }
}

impl AdminConfig {
    /// The local socket, unless turned off.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        (!self.socket.as_os_str().is_empty()).then_some(self.socket.as_path())
    }

    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        // sockaddr_un holds 108 bytes with the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(invalid(
                "admin.socket",
                format!(
                    "{} is {} bytes long; a Unix socket path may have at most 107",
                    self.socket.display(),
                    self.socket.as_os_str().len()
                ),
            ));
        }
        nonzero(
            invalid,
            &[
                ("admin.max_connections", self.max_connections as u64),
                (
                    "admin.audit_verify_interval",
                    self.audit_verify_interval.as_millis() as u64,
                ),
            ],
        )
    }
}

//! Changes made on this machine with the CLI (`breakwater user …`,
//! `breakwater token …`), for the audit log.
//!
//! The CLI edits the accounts and tokens files itself, because they must
//! be editable while the server is down (in the middle of an outage, at
//! 3 a.m.). The hash-chained audit log, though, has one writer: the
//! server, which alone knows the hash of the last line. So the CLI tells
//! the server over the admin socket, and the server records the change
//! under the local user's name; when no server answers, the CLI appends
//! the change to `<audit_log>.pending` and the server records it at its
//! next start (and checks for stragglers every `audit_verify_interval`).
//! Both sides take the pending file's lock, so no line is lost between
//! one reading it and the other appending.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;

/// One change, as the CLI reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalChange {
    /// When the CLI made it (milliseconds since the epoch).
    pub ts_ms: u64,
    /// The local user who ran the CLI (pending file only; over the socket
    /// the server takes it from the peer credentials instead).
    #[serde(default)]
    pub user: String,
    /// `user:add`, `token:revoke`, …
    pub action: String,
    /// The account or token it changed.
    pub target: String,
    pub result: String,
}

impl LocalChange {
    pub fn new(action: &str, target: &str, result: &str) -> LocalChange {
        LocalChange {
            ts_ms: crate::envelope::now_ms(),
            user: current_user(),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
        }
    }

    /// What the server accepts: CLI account and token changes, of a sane
    /// length. Anything else is not a local change and not recorded as one.
    pub fn check(&self) -> Result<(), String> {
        if !(self.action.starts_with("user:") || self.action.starts_with("token:")) {
            return Err(format!(
                "{:?} is not a local change (user:… or token:…)",
                self.action
            ));
        }
        for (field, value) in [
            ("action", &self.action),
            ("target", &self.target),
            ("result", &self.result),
            ("user", &self.user),
        ] {
            if value.len() > 512 || value.chars().any(char::is_control) {
                return Err(format!(
                    "{field} is longer than 512 bytes or holds control characters"
                ));
            }
        }
        Ok(())
    }
}

/// Where the CLI leaves changes for a server that is not running.
pub fn pending_path(audit_log: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pending", audit_log.display()))
}

/// Append `change` to the pending file durably (one JSON line, fsync'd).
pub fn append_pending(audit_log: &Path, change: &LocalChange) -> std::io::Result<PathBuf> {
    let path = pending_path(audit_log);
    let line = format!(
        "{}\n",
        serde_json::to_string(change).expect("a change serialises")
    );
    crate::fsutil::with_lock(
        &path,
        |e| e,
        || {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            crate::fsutil::create_dir_durable(dir)?;
            let existed = path.exists();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&path)?;
            crate::fsutil::hand_to_directory_owner(&file, dir)?;
            file.write_all(line.as_bytes())?;
            file.sync_all()?;
            if !existed {
                crate::fsutil::sync_dir(dir)?;
            }
            Ok(path.clone())
        },
    )
}

/// Record every pending change in the audit log, then remove the file.
/// Returns how many were recorded. A line that does not parse is
/// recorded too, as it stands: a pending file is evidence, not input to
/// be cleaned up. If recording fails midway the file stays whole, and the
/// next try records its lines again (a duplicate, never a loss).
pub fn record_pending(audit_log_path: &Path, audit: &AuditLog) -> std::io::Result<usize> {
    let path = pending_path(audit_log_path);
    if !path.exists() {
        return Ok(0);
    }
    crate::fsutil::with_lock(
        &path,
        |e| e,
        || {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(err) => return Err(err),
            };
            let mut recorded = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<LocalChange>(line) {
                    Ok(change) if change.check().is_ok() => {
                        audit.record(
                            &format!("local:{}", change.user),
                            "local",
                            &change.action,
                            &change.target,
                            &format!(
                                "{}; made at {} while the server was not running",
                                change.result,
                                crate::envelope::rfc3339_ms(change.ts_ms)
                            ),
                        )?;
                    }
                    _ => {
                        let shown: String = line.chars().take(512).collect();
                        audit.record(
                            "local:unknown",
                            "local",
                            "local:unreadable-pending-change",
                            &shown.escape_default().to_string(),
                            "recorded as found",
                        )?;
                    }
                }
                recorded += 1;
            }
            std::fs::remove_file(&path)?;
            Ok(recorded)
        },
    )
}

/// Record what is pending now and then, until `shutdown` turns true: a
/// CLI that found no server a moment before it started leaves its change
/// here, and it should not wait for the next restart.
pub async fn record_pending_until(
    audit_log_path: PathBuf,
    audit: std::sync::Arc<AuditLog>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // Usually no file at all; else a few lines, each fsync'd by the
        // audit log off the worker's hands (`AuditLog::record`).
        match record_pending(&audit_log_path, &audit) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                changes = n,
                "audit: recorded changes made with the CLI while the server was not running"
            ),
            Err(err) => tracing::error!(
                error = %err,
                file = %pending_path(&audit_log_path).display(),
                "audit: cannot record the pending CLI changes; they stay pending"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The login name of `uid`, or `uid N` when it has none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// Who runs this process.
pub fn current_user() -> String {
    user_name(nix::unistd::geteuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_changes_are_recorded_once_and_garbage_is_kept_as_evidence() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("audit.log");
        let audit = AuditLog::open(&log_path, 1 << 20, 2).unwrap();
        append_pending(
            &log_path,
            &LocalChange::new("user:add", "a@example.com", "admin"),
        )
        .unwrap();
        append_pending(&log_path, &LocalChange::new("token:revoke", "ops", "ok")).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(pending_path(&log_path))
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        assert_eq!(record_pending(&log_path, &audit).unwrap(), 3);
        assert!(!pending_path(&log_path).exists());
        assert_eq!(record_pending(&log_path, &audit).unwrap(), 0);
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("\"action\":\"user:add\""), "{text}");
        assert!(lines[0].contains(&format!("\"actor\":\"local:{}\"", current_user())));
        assert!(lines[0].contains("while the server was not running"));
        assert!(lines[2].contains("unreadable-pending-change"), "{text}");
        assert_eq!(crate::audit::verify(&log_path).unwrap(), 3);
    }

    #[test]
    fn only_account_and_token_changes_pass() {
        assert!(LocalChange::new("user:passwd", "a@example.com", "ok")
            .check()
            .is_ok());
        assert!(LocalChange::new("queue:delete", "x", "ok").check().is_err());
        assert!(LocalChange::new("user:add", "a\nb", "ok").check().is_err());
        assert!(LocalChange::new("user:add", &"a".repeat(600), "ok")
            .check()
            .is_err());
    }
}

//! Admin API tokens: random, shown once, stored only as SHA-256 hashes,
//! with an optional expiry, revocation, and a record of their use.
//!
//! Tokens are 256-bit random strings, so a fast hash is enough (a slow
//! password hash such as argon2 protects low-entropy secrets). Comparison is
//! constant-time. The file is re-read when it changes, so `token create`
//! and `token revoke` take effect without a restart. A revoked token stays
//! in the file, marked, so a later use of it is told apart from a guess
//! (and raised as a security event by the admin API).
//!
//! Use (when, from which addresses) is written by the server alone, to a
//! file of its own next to the tokens file (`<name>.usage.json`), so the
//! CLI's edits of the tokens file never race with it. A token's first use
//! and its first use from an address it was never used from are what the
//! admin API raises as security events.
//!
//! Shared service: the admin API checks tokens, the CLI edits them, the
//! security watcher reads them. Imports `secrets`, `fsutil`, `envelope`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::envelope::now_ms;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: list, show, shape, upstream status, audit.
    Viewer,
    /// Everything, including hold/release/retry/delete/bounce/requeue.
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_ms: u64,
    /// Refused from this moment on (`token create --expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Refused since `token revoke`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

impl StoredToken {
    /// "active", "expired" or "revoked" at `now_ms`.
    pub fn status(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|at| at <= now_ms) {
            "expired"
        } else {
            "active"
        }
    }
}

/// When and from where a token was used (kept by the server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub last_used_ms: u64,
    pub last_address: String,
    /// Address → last use (the most recent `MAX_ADDRESSES`).
    pub addresses: BTreeMap<String, u64>,
}

/// Addresses remembered per token.
const MAX_ADDRESSES: usize = 32;

/// The usage file is rewritten at most this often for routine uses (a
/// first use or a new address is written at once).
const USAGE_WRITE_EVERY: Duration = Duration::from_secs(60);

/// What a presented token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid {
        name: String,
        role: Role,
        /// Set when this use is new: its first ever, or from a new address.
        novelty: Option<Novelty>,
    },
    /// One of ours, but revoked or expired ("revoked" / "expired").
    Refused {
        name: String,
        why: &'static str,
    },
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Novelty {
    FirstUse,
    NewAddress,
}

pub struct TokenStore {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<StoredToken>)>,
    /// Token hash → its use; and when the file was last written.
    usage: Mutex<(HashMap<String, TokenUsage>, Option<std::time::Instant>)>,
}

fn load(path: &Path) -> std::io::Result<Vec<StoredToken>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

/// The server's record of token use, next to the tokens file.
pub fn usage_path(tokens_file: &Path) -> PathBuf {
    tokens_file.with_extension("usage.json")
}

/// Every token's use, by token hash (empty when never used or unreadable).
pub fn load_usage(tokens_file: &Path) -> HashMap<String, TokenUsage> {
    std::fs::read(usage_path(tokens_file))
        .ok()
        .and_then(|data| serde_json::from_slice(&data).ok())
        .unwrap_or_default()
}

impl TokenStore {
    pub fn new(path: &Path) -> TokenStore {
        TokenStore {
            path: path.to_path_buf(),
            cache: Mutex::new((None, Vec::new())),
            usage: Mutex::new((load_usage(path), None)),
        }
    }

    /// What `token` is, presented from `ip`; a valid use is recorded.
    pub fn check(&self, token: &str, ip: &str) -> Verdict {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let found = {
            let mut cache = self.cache.lock().expect("token cache");
            if cache.0 != modified || modified.is_none() {
                match load(&self.path) {
                    Ok(tokens) => *cache = (modified, tokens),
                    Err(err) => tracing::error!(error = %err, "admin: cannot read tokens file"),
                }
            }
            let presented = crate::secrets::sha256_hex(token.as_bytes());
            let mut found = None;
            // Look at every entry so the time taken does not depend on which matched.
            for stored in &cache.1 {
                if crate::secrets::same_secret(&stored.sha256, &presented) {
                    found = Some(stored.clone());
                }
            }
            found
        };
        let Some(stored) = found else {
            return Verdict::Unknown;
        };
        match stored.status(now_ms()) {
            "active" => {}
            why => {
                return Verdict::Refused {
                    name: stored.name,
                    why,
                }
            }
        }
        let novelty = self.record_use(&stored.sha256, ip);
        Verdict::Valid {
            name: stored.name,
            role: stored.role,
            novelty,
        }
    }

    fn record_use(&self, sha256: &str, ip: &str) -> Option<Novelty> {
        let mut usage = self.usage.lock().expect("token usage");
        let now = now_ms();
        let entry = usage.0.entry(sha256.to_string()).or_default();
        let novelty = if entry.last_used_ms == 0 {
            Some(Novelty::FirstUse)
        } else if !entry.addresses.contains_key(ip) {
            Some(Novelty::NewAddress)
        } else {
            None
        };
        entry.last_used_ms = now;
        entry.last_address = ip.to_string();
        entry.addresses.insert(ip.to_string(), now);
        while entry.addresses.len() > MAX_ADDRESSES {
            let oldest = entry
                .addresses
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(a, _)| a.clone())
                .expect("not empty");
            entry.addresses.remove(&oldest);
        }
        let due = usage.1.is_none_or(|at| at.elapsed() >= USAGE_WRITE_EVERY);
        if novelty.is_some() || due {
            usage.1 = Some(std::time::Instant::now());
            let data = serde_json::to_vec_pretty(&usage.0).expect("usage serialises");
            let path = usage_path(&self.path);
            if let Err(err) = crate::fsutil::run_blocking(|| write_private(&path, &data)) {
                tracing::error!(file = %path.display(), error = %err, "admin: cannot record token use");
            }
        }
        novelty
    }
}

/// Every stored token (revoked and expired ones too).
pub fn list(path: &Path) -> std::io::Result<Vec<StoredToken>> {
    load(path)
}

/// Read-modify-write the tokens file under its lock.
fn edit<R>(
    path: &Path,
    change: impl FnOnce(&mut Vec<StoredToken>) -> std::io::Result<R>,
) -> std::io::Result<R> {
    crate::fsutil::with_lock(
        path,
        |e| e,
        || {
            let mut tokens = load(path)?;
            let result = change(&mut tokens)?;
            write_private(
                path,
                &serde_json::to_vec_pretty(&tokens).expect("tokens serialise"),
            )?;
            Ok(result)
        },
    )
}

/// Create a token, store its hash (file written 0600 via temp + rename), and
/// return the token itself — the only time it is ever visible.
pub fn create(
    path: &Path,
    name: &str,
    role: Role,
    expires_in: Option<Duration>,
) -> std::io::Result<String> {
    edit(path, |tokens| {
        if tokens.iter().any(|t| t.name == name) {
            return Err(std::io::Error::other(format!(
                "a token named {name:?} already exists (revoked tokens keep their name)"
            )));
        }
        let token = format!("bw_{}", crate::secrets::random_token());
        let now = now_ms();
        tokens.push(StoredToken {
            name: name.to_string(),
            role,
            sha256: crate::secrets::sha256_hex(token.as_bytes()),
            created_ms: now,
            expires_ms: expires_in.map(|d| now + d.as_millis() as u64),
            revoked_ms: None,
        });
        Ok(token)
    })
}

/// Revoke a token by name: every later use answers 401.
pub fn revoke(path: &Path, name: &str) -> std::io::Result<()> {
    edit(path, |tokens| {
        let token = tokens
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| std::io::Error::other(format!("no token named {name:?}")))?;
        if token.revoked_ms.is_some() {
            return Err(std::io::Error::other(format!(
                "token {name:?} is already revoked"
            )));
        }
        token.revoked_ms = Some(now_ms());
        Ok(())
    })
}

/// Write a file only its owner can read, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, data, Some(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let admin = create(&path, "ops", Role::Admin, None).unwrap();
        let viewer = create(&path, "noc", Role::Viewer, None).unwrap();
        assert!(create(&path, "ops", Role::Viewer, None).is_err());
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(
            !stored.contains(&admin) && !stored.contains(&viewer),
            "plaintext token stored"
        );
        let store = TokenStore::new(&path);
        let valid = |name: &str, role, novelty| Verdict::Valid {
            name: name.into(),
            role,
            novelty,
        };
        assert_eq!(
            store.check(&admin, "10.0.0.1"),
            valid("ops", Role::Admin, Some(Novelty::FirstUse))
        );
        assert_eq!(
            store.check(&admin, "10.0.0.1"),
            valid("ops", Role::Admin, None)
        );
        assert_eq!(
            store.check(&admin, "10.0.0.2"),
            valid("ops", Role::Admin, Some(Novelty::NewAddress))
        );
        assert_eq!(
            store.check(&viewer, "10.0.0.1"),
            valid("noc", Role::Viewer, Some(Novelty::FirstUse))
        );
        assert_eq!(store.check("bw_wrong", "10.0.0.1"), Verdict::Unknown);
        assert_eq!(store.check("", "10.0.0.1"), Verdict::Unknown);
        // Use survives a restart: no second "first use".
        let store = TokenStore::new(&path);
        assert_eq!(
            store.check(&admin, "10.0.0.2"),
            valid("ops", Role::Admin, None)
        );
        let usage = load_usage(&path);
        let ops = list(&path)
            .unwrap()
            .into_iter()
            .find(|t| t.name == "ops")
            .unwrap();
        assert_eq!(usage[&ops.sha256].addresses.len(), 2);
    }

    #[test]
    fn revoked_and_expired_tokens_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let token = create(&path, "ops", Role::Admin, None).unwrap();
        let short = create(&path, "short", Role::Admin, Some(Duration::ZERO)).unwrap();
        let store = TokenStore::new(&path);
        assert!(matches!(store.check(&token, "ip"), Verdict::Valid { .. }));
        revoke(&path, "ops").unwrap();
        assert!(revoke(&path, "ops")
            .unwrap_err()
            .to_string()
            .contains("already"));
        assert!(revoke(&path, "nobody").is_err());
        assert_eq!(
            store.check(&token, "ip"),
            Verdict::Refused {
                name: "ops".into(),
                why: "revoked"
            }
        );
        assert_eq!(
            store.check(&short, "ip"),
            Verdict::Refused {
                name: "short".into(),
                why: "expired"
            }
        );
        assert!(
            create(&path, "ops", Role::Admin, None).is_err(),
            "name kept"
        );
    }
}

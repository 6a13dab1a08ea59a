//! API tokens: random, shown once, stored only as SHA-256 hashes.
//!
//! Tokens are 256-bit random strings, so a fast hash is enough (a slow
//! password hash such as argon2 protects low-entropy secrets). Comparison is
//! constant-time. The file is re-read when it changes, so `token create`
//! takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

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
}

pub struct TokenStore {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<StoredToken>)>,
}

fn load(path: &Path) -> std::io::Result<Vec<StoredToken>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

impl TokenStore {
    pub fn new(path: &Path) -> TokenStore {
        TokenStore {
            path: path.to_path_buf(),
            cache: Mutex::new((None, Vec::new())),
        }
    }

    /// The name and role of the token, if it is one of ours.
    pub fn check(&self, token: &str) -> Option<(String, Role)> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
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
                found = Some((stored.name.clone(), stored.role));
            }
        }
        found
    }
}

/// Create a token, store its hash (file written 0600 via temp + rename), and
/// return the token itself — the only time it is ever visible.
pub fn create(path: &Path, name: &str, role: Role) -> std::io::Result<String> {
    let mut tokens = load(path)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(std::io::Error::other(format!(
            "a token named {name:?} already exists"
        )));
    }
    let token = format!("bw_{}", crate::secrets::random_token());
    tokens.push(StoredToken {
        name: name.to_string(),
        role,
        sha256: crate::secrets::sha256_hex(token.as_bytes()),
        created_ms: crate::envelope::now_ms(),
    });
    write_private(
        path,
        &serde_json::to_vec_pretty(&tokens).expect("tokens serialise"),
    )?;
    Ok(token)
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
        let admin = create(&path, "ops", Role::Admin).unwrap();
        let viewer = create(&path, "noc", Role::Viewer).unwrap();
        assert!(create(&path, "ops", Role::Viewer).is_err());
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(
            !stored.contains(&admin) && !stored.contains(&viewer),
            "plaintext token stored"
        );
        let store = TokenStore::new(&path);
        assert_eq!(store.check(&admin), Some(("ops".into(), Role::Admin)));
        assert_eq!(store.check(&viewer), Some(("noc".into(), Role::Viewer)));
        assert_eq!(store.check("bw_wrong"), None);
        assert_eq!(store.check(""), None);
    }
}

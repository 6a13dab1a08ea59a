//! Local web accounts, independent of the cloud directory that may be down.
//!
//! One JSON file (`[web] users_file`, mode 0600) holds every account with its
//! argon2id hash and TOTP secret. The CLI (`breakwater user …`) edits it under
//! a lock file and replaces it atomically; the running server notices the new
//! modification time and re-reads it, so onboarding needs no restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::envelope::now_ms;

pub mod recovery;
pub mod totp;

/// Shortest password `user add` / `user passwd` accept.
pub const MIN_PASSWORD_LEN: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// The login name: the user's primary mail address, lower-cased.
    pub address: String,
    #[serde(default)]
    pub display_name: String,
    /// More addresses whose mail this user may read (lower-cased).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub disabled: bool,
    /// PHC string (`$argon2id$…`).
    pub password_hash: String,
    /// Base32 TOTP secret, when enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// SHA-256 of each unused recovery code (`recovery`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_codes: Vec<String>,
    #[serde(default)]
    pub created_ms: u64,
    /// Sessions started before this (password change, new TOTP secret,
    /// re-enabling) are no longer accepted.
    #[serde(default)]
    pub sessions_valid_after_ms: u64,
    /// Told (JSON POST) when an outage starts, with where to read mail:
    /// a webhook in front of an SMS gateway or a chat on another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_webhook: Option<String>,
}

impl Account {
    /// Every address whose mail this account may read.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.address.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    pub fn owns(&self, address: &str) -> bool {
        self.addresses().any(|a| a.eq_ignore_ascii_case(address))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AccountFile {
    accounts: Vec<Account>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not a valid users file: {source}")]
    Parse {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io_error(file: &Path) -> impl FnOnce(std::io::Error) -> AccountError + '_ {
    move |source| AccountError::Io {
        file: file.to_path_buf(),
        source,
    }
}

/// Canonical form of an address: trimmed, lower-cased, and plausibly a mailbox.
pub fn normalize_address(address: &str) -> Result<String, AccountError> {
    let address = address.trim().to_lowercase();
    let valid = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !address.chars().any(|c| c.is_whitespace() || c.is_control())
            && !domain.contains('@')
    });
    if valid {
        Ok(address)
    } else {
        Err(AccountError::Invalid(format!(
            "{address:?} is not a mail address like alice@example.com"
        )))
    }
}

pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AccountError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AccountError::Invalid(format!("cannot hash the password: {e}")))
}

/// Verify against a PHC string; false for a malformed hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash to verify against when the account does not exist, so that the
/// answer takes as long as for a real account (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"breakwater-no-such-user")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The account file as the server sees it, re-read when it changes on disk.
pub struct Accounts {
    path: PathBuf,
    cache: Mutex<Cached>,
}

struct Cached {
    modified: Option<SystemTime>,
    checked: Option<Instant>,
    accounts: Arc<BTreeMap<String, Account>>,
}

impl Accounts {
    pub fn new(path: &Path) -> Accounts {
        Accounts {
            path: path.to_path_buf(),
            cache: Mutex::new(Cached {
                modified: None,
                checked: None,
                accounts: Arc::new(BTreeMap::new()),
            }),
        }
    }

    /// The current accounts (the file is looked at no more than once a second).
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Account>> {
        let mut cache = self.cache.lock().expect("accounts lock");
        if cache
            .checked
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return cache.accounts.clone();
        }
        cache.checked = Some(Instant::now());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified != cache.modified || modified.is_none() {
            match read(&self.path) {
                Ok(accounts) => {
                    cache.accounts = Arc::new(accounts);
                    cache.modified = modified;
                }
                // Keep serving the accounts we had: a half-edited file must
                // not lock everyone out during an outage.
                Err(err) => tracing::error!(error = %err, "web: cannot read the users file"),
            }
        }
        cache.accounts.clone()
    }

    /// Look at the file again at the next read (after this process changed it).
    pub fn invalidate(&self) {
        self.cache.lock().expect("accounts lock").checked = None;
    }

    pub fn get(&self, address: &str) -> Option<Account> {
        self.snapshot().get(&address.trim().to_lowercase()).cloned()
    }
}

fn read(path: &Path) -> Result<BTreeMap<String, Account>, AccountError> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(io_error(path)(err)),
    };
    let file: AccountFile =
        serde_json::from_slice(&data).map_err(|source| AccountError::Parse {
            file: path.to_path_buf(),
            source,
        })?;
    Ok(file
        .accounts
        .into_iter()
        .map(|a| (a.address.clone(), a))
        .collect())
}

/// Read-modify-write the users file under an exclusive lock, replacing it
/// atomically (0600). `change` returns what to report.
pub fn edit<R>(
    path: &Path,
    change: impl FnOnce(&mut BTreeMap<String, Account>) -> Result<R, AccountError>,
) -> Result<R, AccountError> {
    crate::fsutil::with_lock(path, io_error(path), || {
        let mut accounts = read(path)?;
        let result = change(&mut accounts)?;
        let file = AccountFile {
            accounts: accounts.into_values().collect(),
        };
        let data = serde_json::to_vec_pretty(&file).expect("accounts serialise");
        crate::fsutil::write_atomic(path, &data, Some(0o600)).map_err(io_error(path))?;
        Ok(result)
    })
}

/// Add a new account. Aliases already owned by another account are refused:
/// two people must not read each other's mail by accident.
pub fn add(
    path: &Path,
    address: &str,
    display_name: &str,
    aliases: &[String],
    admin: bool,
    password: &str,
) -> Result<Account, AccountError> {
    let address = normalize_address(address)?;
    let aliases = aliases
        .iter()
        .map(|a| normalize_address(a))
        .collect::<Result<Vec<_>, _>>()?;
    let password_hash = hash_password(password)?;
    edit(path, |accounts| {
        if accounts.contains_key(&address) {
            return Err(AccountError::Invalid(format!(
                "{address} already exists (use `user passwd` or `user disable`)"
            )));
        }
        for candidate in std::iter::once(&address).chain(&aliases) {
            if let Some(owner) = accounts.values().find(|a| a.owns(candidate)) {
                return Err(AccountError::Invalid(format!(
                    "{candidate} already belongs to {}",
                    owner.address
                )));
            }
        }
        let account = Account {
            address: address.clone(),
            display_name: display_name.trim().to_string(),
            aliases,
            admin,
            disabled: false,
            password_hash,
            totp_secret: None,
            recovery_codes: Vec::new(),
            created_ms: now_ms(),
            sessions_valid_after_ms: 0,
            notify_webhook: None,
        };
        accounts.insert(address.clone(), account.clone());
        Ok(account)
    })
}

/// Set a new password: hashed (argon2id) and every existing session of the
/// account ended. The one password change, for `breakwater user passwd`.
pub fn change_password(
    path: &Path,
    address: &str,
    password: &str,
) -> Result<Account, AccountError> {
    let hash = hash_password(password)?;
    update(path, address, |a| {
        a.password_hash = hash;
        a.sessions_valid_after_ms = crate::envelope::now_ms();
        Ok(())
    })
}

/// Enrol a TOTP secret (the user proved it with a code) and issue a fresh
/// set of recovery codes; every other session of the account ends. With
/// `only_if_none`, refuse when a secret appeared meanwhile (first-sign-in
/// enrolment must not replace one set up elsewhere). Returns the codes to show once.
pub fn enrol_totp(
    path: &Path,
    address: &str,
    secret: &str,
    only_if_none: bool,
) -> Result<(Account, Vec<String>), AccountError> {
    let (codes, hashes) = recovery::generate();
    let account = update(path, address, |a| {
        if only_if_none && a.totp_secret.is_some() {
            return Err(AccountError::Invalid(format!(
                "{} already has an authenticator",
                a.address
            )));
        }
        a.totp_secret = Some(secret.to_string());
        a.recovery_codes = hashes;
        a.sessions_valid_after_ms = now_ms();
        Ok(())
    })?;
    Ok((account, codes))
}

/// Replace the account's recovery codes by a fresh set; returns the codes.
pub fn regenerate_recovery_codes(
    path: &Path,
    address: &str,
) -> Result<(Account, Vec<String>), AccountError> {
    let (codes, hashes) = recovery::generate();
    let account = update(path, address, |a| {
        a.recovery_codes = hashes;
        Ok(())
    })?;
    Ok((account, codes))
}

/// Spend a recovery code: true (and the code is gone) when it was one of
/// the account's unused codes.
pub fn use_recovery_code(path: &Path, address: &str, code: &str) -> Result<bool, AccountError> {
    let address = normalize_address(address)?;
    edit(path, |accounts| {
        let Some(account) = accounts.get_mut(&address) else {
            return Ok(false);
        };
        match recovery::find(&account.recovery_codes, code) {
            Some(i) => {
                account.recovery_codes.remove(i);
                Ok(true)
            }
            // Nothing to write; an error keeps `edit` from rewriting the file.
            None => Err(AccountError::Invalid(NOT_A_RECOVERY_CODE.into())),
        }
    })
    .or_else(|err| match err {
        AccountError::Invalid(msg) if msg == NOT_A_RECOVERY_CODE => Ok(false),
        other => Err(other),
    })
}

const NOT_A_RECOVERY_CODE: &str = "not one of the account's recovery codes";

pub fn update(
    path: &Path,
    address: &str,
    change: impl FnOnce(&mut Account) -> Result<(), AccountError>,
) -> Result<Account, AccountError> {
    let address = normalize_address(address)?;
    edit(path, |accounts| {
        let account = accounts
            .get_mut(&address)
            .ok_or_else(|| AccountError::Invalid(format!("no account {address}")))?;
        change(account)?;
        Ok(account.clone())
    })
}

pub fn list(path: &Path) -> Result<Vec<Account>, AccountError> {
    Ok(read(path)?.into_values().collect())
}

/// One row of a bulk-onboarding CSV: address, display name, aliases
/// (separated by `;` or spaces). A header row starting with "address" is skipped.
#[derive(Debug, PartialEq, Eq)]
pub struct ImportRow {
    pub address: String,
    pub display_name: String,
    pub aliases: Vec<String>,
}

pub fn parse_import(data: &[u8]) -> Result<Vec<ImportRow>, AccountError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(data);
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 1;
        let record =
            record.map_err(|e| AccountError::Invalid(format!("CSV record {line}: {e}")))?;
        let address = record.get(0).unwrap_or("");
        if address.is_empty() || (n == 0 && address.eq_ignore_ascii_case("address")) {
            continue;
        }
        let address = normalize_address(address)
            .map_err(|e| AccountError::Invalid(format!("CSV record {line}: {e}")))?;
        let aliases = record
            .get(2)
            .unwrap_or("")
            .split([';', ' ', ','])
            .filter(|a| !a.is_empty())
            .map(normalize_address)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AccountError::Invalid(format!("CSV record {line}: {e}")))?;
        rows.push(ImportRow {
            address,
            display_name: record.get(1).unwrap_or("").to_string(),
            aliases,
        });
    }
    Ok(rows)
}

/// A random password for imported accounts: 16 characters from an
/// unambiguous alphabet (~93 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_csv_with_header_quotes_and_aliases() {
        let csv = "address,display name,aliases\n\
                   Alice@Example.com,\"Sato, Alice\",sales@example.com;info@example.com\n\
                   # a comment\n\
                   bob@example.com,山田 太郎,\n";
        let rows = parse_import(csv.as_bytes()).expect("parses");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].address, "alice@example.com");
        assert_eq!(rows[0].display_name, "Sato, Alice");
        assert_eq!(
            rows[0].aliases,
            vec!["sales@example.com", "info@example.com"]
        );
        assert_eq!(rows[1].display_name, "山田 太郎");
        assert!(rows[1].aliases.is_empty());
        let err = parse_import(b"not-an-address,x\n").unwrap_err();
        assert!(err.to_string().contains("record 1"), "{err}");
    }

    #[test]
    fn password_hash_round_trip_and_policy() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse battery!", &hash));
        assert!(!verify_password("x", "not a hash"));
        assert!(hash_password("short").is_err());
    }
}

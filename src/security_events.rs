//! Security events: the changes an attacker who wants the admin plane
//! makes (a new admin, MFA removed, a token minted, the audit log edited),
//! each one an audit entry, a metric and an alert through the `[[alert]]`
//! channels at once, never in a digest.
//!
//! Why the credential files are watched rather than the commands that edit
//! them: `breakwater token` and `breakwater user` run in another process
//! (which cannot append to the hash-chained audit log safely), and an
//! attacker with a shell would edit the files directly anyway. The server,
//! the log's only writer, compares the files with what it saw last, every
//! 250 ms while it runs and at start against a snapshot it keeps in the
//! spool directory (hashes only, never secrets), so a change made while it
//! was stopped is reported when it starts. The audit chain is verified at
//! start and every `[admin] audit_verify_interval`, anchored at the last
//! entry this process wrote.
//!
//! Shared service: imports `config`, `audit`, `metrics`, `accounts` (the
//! users file), `secrets`, `fsutil` and `alert_channels`; the admin API
//! tells it about token use (`admin` imports this module, not the reverse).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::config::Config;

/// Every kind of security event, with its name in logs, audit and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    TokenCreated,
    TokenRevoked,
    TokenFirstUse,
    TokenNewAddress,
    /// A revoked or expired token was presented.
    TokenRefused,
    AdminCreated,
    AdminGranted,
    AdminRemoved,
    AdminPasswordChanged,
    TotpRemoved,
    TotpEnrolled,
    RecoveryCodesRegenerated,
    RecoveryCodeUsed,
    AuditChainBroken,
    ConfigReloaded,
    /// An admin signed in from an address not seen for that account in 30 days.
    AdminSignInNewAddress,
    /// An admin account's right password, from outside `[web] admin_networks`.
    AdminSignInRefused,
    /// Repeated failures locked an account (or an address) out.
    AccountLocked,
    /// More failed sign-ins across all accounts than `[web] spray_failures`
    /// within `[web] lockout_window`.
    SignInSpray,
    /// A local user other than root and the service user knocked on the
    /// admin socket.
    LocalAccessRefused,
    /// An admin stopped or resumed all sending (`[send]`).
    SendingSwitched,
    /// A user reached `[send] max_per_hour` (a phished account sending
    /// spam looks like this first).
    SendingLimitReached,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::TokenCreated => "token-created",
            EventKind::TokenRevoked => "token-revoked",
            EventKind::TokenFirstUse => "token-first-use",
            EventKind::TokenNewAddress => "token-new-address",
            EventKind::TokenRefused => "token-refused",
            EventKind::AdminCreated => "admin-created",
            EventKind::AdminGranted => "admin-granted",
            EventKind::AdminRemoved => "admin-removed",
            EventKind::AdminPasswordChanged => "admin-password-changed",
            EventKind::TotpRemoved => "totp-removed",
            EventKind::TotpEnrolled => "totp-enrolled",
            EventKind::RecoveryCodesRegenerated => "recovery-codes-regenerated",
            EventKind::RecoveryCodeUsed => "recovery-code-used",
            EventKind::AuditChainBroken => "audit-chain-broken",
            EventKind::ConfigReloaded => "config-reloaded",
            EventKind::AdminSignInNewAddress => "admin-sign-in-new-address",
            EventKind::AdminSignInRefused => "admin-sign-in-refused",
            EventKind::AccountLocked => "account-locked",
            EventKind::SignInSpray => "sign-in-spray",
            EventKind::LocalAccessRefused => "local-access-refused",
            EventKind::SendingSwitched => "sending-switched",
            EventKind::SendingLimitReached => "sending-limit-reached",
        }
    }

    /// The alert's first line in the operator's language.
    fn headline(self, language: &str) -> &'static str {
        let ja = language == "ja";
        match (self, ja) {
            (EventKind::TokenCreated, false) => "An admin API token was created",
            (EventKind::TokenCreated, true) => "管理 API トークンが作成されました",
            (EventKind::TokenRevoked, false) => "An admin API token was revoked",
            (EventKind::TokenRevoked, true) => "管理 API トークンが失効されました",
            (EventKind::TokenFirstUse, false) => "An admin API token was used for the first time",
            (EventKind::TokenFirstUse, true) => "管理 API トークンが初めて使われました",
            (EventKind::TokenNewAddress, false) => "An admin API token was used from a new address",
            (EventKind::TokenNewAddress, true) => {
                "管理 API トークンが新しいアドレスから使われました"
            }
            (EventKind::TokenRefused, false) => "A revoked or expired API token was presented",
            (EventKind::TokenRefused, true) => {
                "失効済みまたは期限切れの API トークンが使われました"
            }
            (EventKind::AdminCreated, false) => "An admin account was created",
            (EventKind::AdminCreated, true) => "管理者アカウントが作成されました",
            (EventKind::AdminGranted, false) => "An account was given the admin role",
            (EventKind::AdminGranted, true) => "アカウントに管理者権限が付与されました",
            (EventKind::AdminRemoved, false) => {
                "An admin account lost the admin role or was removed"
            }
            (EventKind::AdminRemoved, true) => "管理者アカウントの権限が外されたか、削除されました",
            (EventKind::AdminPasswordChanged, false) => "An admin account's password was changed",
            (EventKind::AdminPasswordChanged, true) => {
                "管理者アカウントのパスワードが変更されました"
            }
            (EventKind::TotpRemoved, false) => "Two-factor authentication (TOTP) was removed",
            (EventKind::TotpRemoved, true) => "二要素認証 (TOTP) が削除されました",
            (EventKind::TotpEnrolled, false) => {
                "Two-factor authentication (TOTP) was enrolled anew"
            }
            (EventKind::TotpEnrolled, true) => "二要素認証 (TOTP) が新たに登録されました",
            (EventKind::RecoveryCodesRegenerated, false) => "New recovery codes were made",
            (EventKind::RecoveryCodesRegenerated, true) => "リカバリーコードが再発行されました",
            (EventKind::RecoveryCodeUsed, false) => {
                "A recovery code was used instead of the authenticator"
            }
            (EventKind::RecoveryCodeUsed, true) => {
                "認証アプリの代わりにリカバリーコードが使われました"
            }
            (EventKind::AuditChainBroken, false) => {
                "The audit log failed verification (edited, removed or inserted lines)"
            }
            (EventKind::AuditChainBroken, true) => {
                "監査ログの検証に失敗しました (行の改ざん・削除・挿入)"
            }
            (EventKind::ConfigReloaded, false) => "The configuration was reloaded",
            (EventKind::ConfigReloaded, true) => "設定が再読み込みされました",
            (EventKind::AdminSignInNewAddress, false) => {
                "An admin signed in from an address not seen for that account in 30 days"
            }
            (EventKind::AdminSignInNewAddress, true) => {
                "管理者が 30 日間使われていないアドレスからサインインしました"
            }
            (EventKind::AdminSignInRefused, false) => {
                "An admin's password was used from outside the admin networks"
            }
            (EventKind::AdminSignInRefused, true) => {
                "管理者のパスワードが管理者用ネットワークの外から使われました"
            }
            (EventKind::AccountLocked, false) => "Sign-in locked out after repeated failures",
            (EventKind::AccountLocked, true) => "サインインの連続失敗によりロックされました",
            (EventKind::SignInSpray, false) => {
                "Many failed sign-ins across accounts (password spraying?)"
            }
            (EventKind::SignInSpray, true) => {
                "複数アカウントでサインイン失敗が多発しています (パスワードスプレー攻撃の可能性)"
            }
            (EventKind::LocalAccessRefused, false) => {
                "A local user was refused at the admin socket"
            }
            (EventKind::LocalAccessRefused, true) => {
                "許可されていないローカルユーザーが管理ソケットを使おうとしました"
            }
            (EventKind::SendingSwitched, false) => {
                "Sending from the web reader was stopped or resumed"
            }
            (EventKind::SendingSwitched, true) => {
                "Web リーダーからの送信が停止または再開されました"
            }
            (EventKind::SendingLimitReached, false) => {
                "A user reached the hourly sending limit of the web reader"
            }
            (EventKind::SendingLimitReached, true) => {
                "利用者が Web リーダーからの 1 時間あたりの送信上限に達しました"
            }
        }
    }
}

/// One event: what happened, to what, by whom, from where.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    pub kind: EventKind,
    /// A token name, an account address, the audit log, the configuration.
    pub subject: String,
    pub actor: String,
    pub ip: String,
    pub detail: String,
}

/// The notice as sent to JSON webhooks (and appended to alert mail).
#[derive(Debug, Serialize)]
struct Notice<'a> {
    event: &'static str,
    kind: &'static str,
    subject: &'a str,
    actor: &'a str,
    ip: &'a str,
    host: &'a str,
    at_ms: u64,
    detail: &'a str,
    text: String,
}

pub struct SecurityEvents {
    config: Config,
    audit: Arc<AuditLog>,
    /// Notifications are sent on the server's runtime, also when an event
    /// is raised from outside it (a reload driven by a signal thread).
    runtime: tokio::runtime::Handle,
    /// Key → when it was last raised (`raise_at_most_every`).
    raised: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Admin account → address → last sign-in (ms), loaded on first use
    /// from `<spool>/admin-sign-ins.json`.
    sign_ins: std::sync::Mutex<Option<SignIns>>,
    /// Failed web sign-ins within `[web] lockout_window`, all accounts.
    failures: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// The tokens and accounts as last looked at (the watcher's and this
    /// process's own changes diff against it; saved as `security-snapshot.json`).
    seen: std::sync::Mutex<Option<Credentials>>,
}

type SignIns = BTreeMap<String, BTreeMap<String, u64>>;

/// An admin's sign-in address is "new" when not seen for this long.
const SIGN_IN_MEMORY_MS: u64 = 30 * 24 * 3600 * 1000;

impl SecurityEvents {
    /// Call from within the runtime the notifications are to be sent on.
    pub fn new(config: &Config, audit: Arc<AuditLog>) -> Arc<SecurityEvents> {
        Arc::new(SecurityEvents {
            runtime: tokio::runtime::Handle::current(),
            config: config.clone(),
            audit,
            raised: Default::default(),
            sign_ins: Default::default(),
            failures: Default::default(),
            seen: std::sync::Mutex::new(
                std::fs::read(snapshot_path(config))
                    .ok()
                    .and_then(|data| serde_json::from_slice(&data).ok()),
            ),
        })
    }

    /// Record the event (audit entry, metric, log line) and send its alert
    /// to every `[[alert]]` target in the background.
    pub fn raise(&self, event: SecurityEvent) {
        let name = event.kind.name();
        let text = alert_text(&event, &self.config.alerts.language, &self.config.hostname);
        tracing::warn!(event = name, subject = %event.subject, actor = %event.actor, ip = %event.ip, detail = %event.detail, "security event");
        crate::metrics::get().security_event(name);
        if let Err(err) = self.audit.record(
            &event.actor,
            &event.ip,
            &format!("security:{name}"),
            &event.subject,
            &event.detail,
        ) {
            tracing::error!(event = name, error = %err, "security event: cannot write the audit entry");
        }
        let notice = Notice {
            event: name,
            kind: "security",
            subject: &event.subject,
            actor: &event.actor,
            ip: &event.ip,
            host: &self.config.hostname,
            at_ms: crate::envelope::now_ms(),
            detail: &event.detail,
            text: text.clone(),
        };
        let json = serde_json::to_value(&notice).unwrap_or_default();
        let config = self.config.clone();
        self.runtime.spawn(async move {
            crate::alert_channels::deliver(&config, name, &text, &json).await;
        });
    }

    /// [`raise`](Self::raise), unless an event with the same `key` was
    /// raised less than `every` ago: a stolen revoked token tried in a loop
    /// is one alert per `every`, not a flood (each try is still logged).
    pub fn raise_at_most_every(&self, key: &str, every: Duration, event: SecurityEvent) {
        {
            let mut raised = self.raised.lock().expect("raised lock");
            if raised.get(key).is_some_and(|at| at.elapsed() < every) {
                tracing::warn!(event = event.kind.name(), subject = %event.subject, ip = %event.ip, "security event (repeat; alerted recently)");
                return;
            }
            if raised.len() > 10_000 {
                raised.retain(|_, at| at.elapsed() < every);
            }
            raised.insert(key.to_string(), std::time::Instant::now());
        }
        self.raise(event);
    }

    /// Look at the tokens and users files now and raise what changed since
    /// the last look. The watcher calls it when a file's time changes; the
    /// server calls it right after a change it made itself for `actor`
    /// (account, address), so the event is raised at once, names who did
    /// it, and is not lost between two polls of a quick sequence (enrol,
    /// then spend a recovery code). Blocking: file reads and a write.
    pub fn credentials_changed(&self, actor: Option<(&str, &str)>) {
        let config = &self.config;
        let now = match Credentials::read(config) {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "security: cannot read a credentials file; changes in it are not seen until it parses");
                return;
            }
        };
        let mut seen = self.seen.lock().expect("seen lock");
        match seen.as_ref() {
            Some(before) => {
                for mut event in
                    before.changes(&now, &config.admin.tokens_file, &config.web.users_file)
                {
                    if let Some((who, ip)) = actor.filter(|(who, _)| *who == event.subject) {
                        event.actor = who.to_string();
                        event.ip = ip.to_string();
                    }
                    self.raise(event);
                }
            }
            None => {
                tracing::info!(snapshot = %snapshot_path(config).display(), "security: first look at the tokens and users files; later changes are alerted")
            }
        }
        if seen.as_ref() != Some(&now) {
            let data = serde_json::to_vec_pretty(&now).expect("snapshot serialises");
            if let Err(err) =
                crate::fsutil::write_atomic(&snapshot_path(config), &data, Some(0o600))
            {
                tracing::error!(error = %err, "security: cannot save the credential snapshot");
            }
        }
        *seen = Some(now);
    }

    /// A web sign-in of an admin account completed (after TOTP): an
    /// address not seen for the account in 30 days is an event.
    pub fn admin_signed_in(&self, account: &str, ip: &str) {
        let path = self.config.spool.dir.join("admin-sign-ins.json");
        let now = crate::envelope::now_ms();
        let new_address = {
            let mut memory = self.sign_ins.lock().expect("sign-ins lock");
            let known = memory.get_or_insert_with(|| {
                std::fs::read(&path)
                    .ok()
                    .and_then(|data| serde_json::from_slice(&data).ok())
                    .unwrap_or_default()
            });
            let addresses = known.entry(account.to_string()).or_default();
            addresses.retain(|_, at| now.saturating_sub(*at) < SIGN_IN_MEMORY_MS);
            let new_address = !addresses.contains_key(ip);
            addresses.insert(ip.to_string(), now);
            let data = serde_json::to_vec_pretty(&*known).expect("sign-ins serialise");
            if let Err(err) = crate::fsutil::run_blocking(|| {
                crate::fsutil::write_atomic(&path, &data, Some(0o600))
            }) {
                tracing::error!(file = %path.display(), error = %err, "security: cannot save admin sign-in addresses");
            }
            new_address
        };
        if new_address {
            self.raise(SecurityEvent {
                kind: EventKind::AdminSignInNewAddress,
                subject: account.to_string(),
                actor: account.to_string(),
                ip: ip.to_string(),
                detail: "web sign-in (password and TOTP) from an address this admin has not used in 30 days".into(),
            });
        }
    }

    /// A failed web sign-in; `locked` names what the failure locked out
    /// ("account" / "address"), if it did.
    pub fn sign_in_failed(&self, account: &str, ip: &str, locked: Option<&str>) {
        if let Some(what) = locked {
            self.raise(SecurityEvent {
                kind: EventKind::AccountLocked,
                subject: account.to_string(),
                actor: account.to_string(),
                ip: ip.to_string(),
                detail: format!(
                    "{what} locked for {} after repeated failures",
                    humantime::format_duration(self.config.web.lockout_duration)
                ),
            });
        }
        let limit = self.config.web.spray_failures as usize;
        if limit == 0 {
            return;
        }
        let window = self.config.web.lockout_window;
        let count = {
            let mut failures = self.failures.lock().expect("failures lock");
            let now = std::time::Instant::now();
            failures.push_back(now);
            while failures
                .front()
                .is_some_and(|at| now.duration_since(*at) > window)
            {
                failures.pop_front();
            }
            // Only the count matters beyond the limit.
            while failures.len() > limit + 1 {
                failures.pop_front();
            }
            failures.len()
        };
        if count > limit {
            self.raise_at_most_every(
                "sign-in-spray",
                window,
                SecurityEvent {
                    kind: EventKind::SignInSpray,
                    subject: "web sign-in".into(),
                    actor: "unknown".into(),
                    ip: ip.to_string(),
                    detail: format!(
                        "more than {limit} failed sign-ins within {} (latest: {account} from {ip})",
                        humantime::format_duration(window)
                    ),
                },
            );
        }
    }

    /// The audit chain, checked now: a broken one is raised as an event.
    pub fn verify_audit(&self) -> bool {
        match self.audit.verify_chain() {
            Ok(_) => true,
            Err(why) => {
                self.raise(SecurityEvent {
                    kind: EventKind::AuditChainBroken,
                    subject: self.config.admin.audit_log.display().to_string(),
                    actor: "breakwater".into(),
                    ip: "local".into(),
                    detail: why,
                });
                false
            }
        }
    }
}

fn alert_text(event: &SecurityEvent, language: &str, host: &str) -> String {
    let headline = event.kind.headline(language);
    let (on, by, from) = match language {
        "ja" => ("対象", "操作者", "接続元"),
        _ => ("subject", "by", "from"),
    };
    format!(
        "[{host}] {headline}: {}\n{on}: {}\n{by}: {}\n{from}: {}\n{}",
        event.subject, event.subject, event.actor, event.ip, event.detail
    )
}

/// What the watcher compares: per token and per account, only the facts
/// that matter for takeover, secrets as hashes of their stored form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Credentials {
    tokens: BTreeMap<String, TokenFacts>,
    accounts: BTreeMap<String, AccountFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenFacts {
    role: String,
    sha256: String,
    revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AccountFacts {
    admin: bool,
    /// SHA-256 of the stored password hash.
    password: String,
    /// SHA-256 of the stored TOTP secret, if any.
    totp: Option<String>,
    /// The stored recovery-code hashes (hashes of hashes would add nothing:
    /// the codes carry 80 random bits).
    #[serde(default)]
    recovery: Vec<String>,
}

impl Credentials {
    fn read(config: &Config) -> Result<Credentials, String> {
        let tokens = crate::api_tokens::list(&config.admin.tokens_file)
            .map_err(|e| format!("{}: {e}", config.admin.tokens_file.display()))?
            .into_iter()
            .map(|t| {
                let facts = TokenFacts {
                    role: format!("{:?}", t.role).to_lowercase(),
                    sha256: t.sha256,
                    revoked: t.revoked_ms.is_some(),
                };
                (t.name, facts)
            })
            .collect();
        let accounts = crate::accounts::list(&config.web.users_file)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|a| {
                let facts = AccountFacts {
                    admin: a.admin,
                    password: crate::secrets::sha256_hex(a.password_hash.as_bytes()),
                    totp: a
                        .totp_secret
                        .as_deref()
                        .map(|s| crate::secrets::sha256_hex(s.as_bytes())),
                    recovery: a.recovery_codes,
                };
                (a.address, facts)
            })
            .collect();
        Ok(Credentials { tokens, accounts })
    }

    /// The events that lead from `self` (seen before) to `now`.
    fn changes(
        &self,
        now: &Credentials,
        tokens_file: &Path,
        users_file: &Path,
    ) -> Vec<SecurityEvent> {
        let mut events = Vec::new();
        let mut event = |kind, subject: &str, file: &Path, detail: String| {
            events.push(SecurityEvent {
                kind,
                subject: subject.to_string(),
                actor: format!("local change to {}", file.display()),
                ip: "local".into(),
                detail,
            })
        };
        for (name, token) in &now.tokens {
            let before = self.tokens.get(name);
            if !token.revoked && before.is_none_or(|b| b.sha256 != token.sha256) {
                event(
                    EventKind::TokenCreated,
                    name,
                    tokens_file,
                    format!("role {}", token.role),
                );
            }
            if let Some(b) = before.filter(|b| b.sha256 == token.sha256 && b.role != token.role) {
                // Only an edit of the file does this (the CLI cannot).
                event(
                    EventKind::TokenCreated,
                    name,
                    tokens_file,
                    format!("role changed from {} to {}", b.role, token.role),
                );
            }
            if token.revoked && before.is_some_and(|b| !b.revoked) {
                event(
                    EventKind::TokenRevoked,
                    name,
                    tokens_file,
                    format!("role {}", token.role),
                );
            }
        }
        for (name, token) in &self.tokens {
            if !token.revoked && !now.tokens.contains_key(name) {
                event(
                    EventKind::TokenRevoked,
                    name,
                    tokens_file,
                    "removed from the file".into(),
                );
            }
        }
        for (address, account) in &now.accounts {
            let before = self.accounts.get(address);
            match before {
                None if account.admin => event(
                    EventKind::AdminCreated,
                    address,
                    users_file,
                    "new account with the admin role".into(),
                ),
                Some(b) if account.admin && !b.admin => event(
                    EventKind::AdminGranted,
                    address,
                    users_file,
                    "existing account given the admin role".into(),
                ),
                Some(b) if !account.admin && b.admin => event(
                    EventKind::AdminRemoved,
                    address,
                    users_file,
                    "admin role taken away".into(),
                ),
                Some(b) if account.admin && b.password != account.password => event(
                    EventKind::AdminPasswordChanged,
                    address,
                    users_file,
                    "password changed".into(),
                ),
                _ => {}
            }
            let totp_before = before.and_then(|b| b.totp.as_ref());
            match (totp_before, &account.totp) {
                (Some(_), None) => event(
                    EventKind::TotpRemoved,
                    address,
                    users_file,
                    "TOTP removed: the account signs in with its password alone".into(),
                ),
                (old, Some(new)) if before.is_some() && old != Some(new) => event(
                    EventKind::TotpEnrolled,
                    address,
                    users_file,
                    format!(
                        "a new TOTP secret was enrolled, with {} new recovery codes",
                        account.recovery.len()
                    ),
                ),
                _ => {
                    // Recovery codes on their own (an enrolment above
                    // already says it issued new ones).
                    if let Some(b) = before {
                        let fresh = account.recovery.iter().filter(|h| !b.recovery.contains(h));
                        if fresh.count() > 0 {
                            event(
                                EventKind::RecoveryCodesRegenerated,
                                address,
                                users_file,
                                format!(
                                    "{} new recovery codes; the old ones no longer work",
                                    account.recovery.len()
                                ),
                            );
                        } else if account.recovery.len() < b.recovery.len() {
                            event(
                                EventKind::RecoveryCodeUsed,
                                address,
                                users_file,
                                format!(
                                    "a recovery code was used to sign in instead of the authenticator; {} left",
                                    account.recovery.len()
                                ),
                            );
                        }
                    }
                }
            }
        }
        for (address, account) in &self.accounts {
            if account.admin && !now.accounts.contains_key(address) {
                event(
                    EventKind::AdminRemoved,
                    address,
                    users_file,
                    "admin account removed from the file".into(),
                );
            }
        }
        events
    }
}

/// Where the watcher keeps what it saw last (0600, hashes only).
fn snapshot_path(config: &Config) -> PathBuf {
    config.spool.dir.join("security-snapshot.json")
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watch the tokens and users files and the audit chain until `shutdown`.
/// Changes made while the server was stopped are raised at the first look.
pub async fn watch(
    events: Arc<SecurityEvents>,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stamps = None;
    events.verify_audit();
    let mut audit_checked = tokio::time::Instant::now();
    let mut chain_ok = true;
    loop {
        let now_stamps = (
            modified(&config.admin.tokens_file),
            modified(&config.web.users_file),
        );
        if stamps != Some(now_stamps) {
            // Looked at once per change of either file, also when it does
            // not parse (warned once; the next edit is read again).
            stamps = Some(now_stamps);
            crate::fsutil::run_blocking(|| events.credentials_changed(None));
        }
        if audit_checked.elapsed() >= config.admin.audit_verify_interval {
            audit_checked = tokio::time::Instant::now();
            // Alert once per break, not every interval.
            let ok = if chain_ok {
                events.verify_audit()
            } else {
                events.audit.verify_chain().is_ok()
            };
            chain_ok = ok;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(admin: bool, password: &str, totp: Option<&str>) -> AccountFacts {
        AccountFacts {
            admin,
            password: password.into(),
            totp: totp.map(String::from),
            recovery: Vec::new(),
        }
    }

    fn kinds(before: &Credentials, now: &Credentials) -> Vec<(EventKind, String)> {
        before
            .changes(now, Path::new("t"), Path::new("u"))
            .into_iter()
            .map(|e| (e.kind, e.subject))
            .collect()
    }

    #[test]
    fn each_takeover_step_in_the_files_is_one_event() {
        let mut before = Credentials::default();
        before
            .accounts
            .insert("a@x".into(), account(true, "p1", Some("s1")));
        before
            .accounts
            .insert("u@x".into(), account(false, "p2", Some("s2")));
        before.tokens.insert(
            "ops".into(),
            TokenFacts {
                role: "admin".into(),
                sha256: "h1".into(),
                revoked: false,
            },
        );
        assert!(kinds(&before, &before).is_empty());
        let mut now = before.clone();
        now.accounts
            .insert("evil@x".into(), account(true, "p3", None));
        now.accounts.insert("u@x".into(), account(true, "p2", None));
        now.accounts
            .insert("a@x".into(), account(true, "p9", Some("s9")));
        now.tokens.get_mut("ops").unwrap().revoked = true;
        now.tokens.insert(
            "mint".into(),
            TokenFacts {
                role: "admin".into(),
                sha256: "h2".into(),
                revoked: false,
            },
        );
        let mut got = kinds(&before, &now);
        got.sort_by_key(|(k, s)| (k.name(), s.clone()));
        assert_eq!(
            got,
            [
                (EventKind::AdminCreated, "evil@x".to_string()),
                (EventKind::AdminGranted, "u@x".to_string()),
                (EventKind::AdminPasswordChanged, "a@x".to_string()),
                (EventKind::TokenCreated, "mint".to_string()),
                (EventKind::TokenRevoked, "ops".to_string()),
                (EventKind::TotpEnrolled, "a@x".to_string()),
                (EventKind::TotpRemoved, "u@x".to_string()),
            ]
        );
        // A viewer token turned into an admin one by editing the file.
        let mut edited = before.clone();
        edited.tokens.get_mut("ops").unwrap().role = "viewer".into();
        let got = kinds(&edited, &before);
        assert_eq!(got, [(EventKind::TokenCreated, "ops".to_string())]);
        // And back: the admin role taken away, an admin removed.
        let mut after = now.clone();
        after.accounts.remove("evil@x");
        after
            .accounts
            .insert("u@x".into(), account(false, "p2", None));
        let got = kinds(&now, &after);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|(k, _)| *k == EventKind::AdminRemoved));
    }

    #[test]
    fn recovery_codes_made_anew_or_spent_are_told_apart() {
        let codes = |list: &[&str]| list.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let mut before = Credentials::default();
        let mut facts = account(true, "p", Some("s"));
        facts.recovery = codes(&["r1", "r2", "r3"]);
        before.accounts.insert("a@x".into(), facts.clone());
        let mut spent = before.clone();
        spent.accounts.get_mut("a@x").unwrap().recovery = codes(&["r1", "r3"]);
        assert_eq!(
            kinds(&before, &spent),
            [(EventKind::RecoveryCodeUsed, "a@x".to_string())]
        );
        let mut fresh = before.clone();
        fresh.accounts.get_mut("a@x").unwrap().recovery = codes(&["n1", "n2", "n3"]);
        assert_eq!(
            kinds(&spent, &fresh),
            [(EventKind::RecoveryCodesRegenerated, "a@x".to_string())]
        );
        // A new authenticator brings new codes: one event, not two.
        let mut enrolled = fresh.clone();
        let account = enrolled.accounts.get_mut("a@x").unwrap();
        account.totp = Some("s2".into());
        account.recovery = codes(&["m1"]);
        assert_eq!(
            kinds(&fresh, &enrolled),
            [(EventKind::TotpEnrolled, "a@x".to_string())]
        );
    }

    #[test]
    fn alert_texts_speak_both_languages() {
        let event = SecurityEvent {
            kind: EventKind::TotpRemoved,
            subject: "a@x".into(),
            actor: "local".into(),
            ip: "local".into(),
            detail: "d".into(),
        };
        let en = alert_text(&event, "en", "mx2");
        assert!(
            en.starts_with("[mx2] Two-factor authentication (TOTP) was removed: a@x"),
            "{en}"
        );
        let ja = alert_text(&event, "ja", "mx2");
        assert!(
            ja.contains("二要素認証 (TOTP) が削除されました") && ja.contains("対象: a@x"),
            "{ja}"
        );
    }
}

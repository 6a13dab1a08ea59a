//! Sessions, login throttling and second factors.
//!
//! Sessions live in memory on purpose: a restart signs everyone out, which
//! is the safe failure, and there is nothing on disk to steal. The cookie
//! carries a random 256-bit ID; the server keeps the user, the CSRF token and
//! the expiry. A session starts `pending` (password checked, TOTP owed) and
//! becomes `full` only after the second factor.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::envelope::now_ms;

pub const COOKIE: &str = "bw_session";
/// Double-submit cookie protecting the login form itself (no session yet).
pub const LOGIN_COOKIE: &str = "bw_login";
/// A password-checked session must present its TOTP code within this time.
const PENDING_LIFETIME_MS: u64 = 5 * 60 * 1000;

use crate::secrets::random_token;

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// Shown to admins as a handle for revocation (never the cookie value).
    pub handle: String,
    pub user: String,
    pub full: bool,
    #[serde(skip)]
    pub csrf: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub ip: String,
    pub user_agent: String,
    /// "Confirm it's you" holds until then: destructive and account-changing
    /// actions ask for the password or a code again after it (a sign-in
    /// counts as a confirmation).
    #[serde(skip)]
    pub confirmed_until_ms: u64,
    /// A TOTP secret shown to the user and not yet proven with a code.
    #[serde(skip)]
    pub enrolling: Option<String>,
    /// `[send] require_totp`: a code was given at this session's first send.
    #[serde(skip)]
    pub send_confirmed: bool,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle_ms: u64,
    max_ms: u64,
    reauth_ms: u64,
}

impl Sessions {
    /// `reauth`: how long a sign-in or a "confirm it's you" lasts.
    pub fn new(idle: Duration, max: Duration, reauth: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle_ms: idle.as_millis() as u64,
            max_ms: max.as_millis() as u64,
            reauth_ms: reauth.as_millis() as u64,
        }
    }

    /// Start a session for `user`; returns the cookie value.
    pub fn create(&self, user: &str, full: bool, ip: &str, user_agent: &str) -> String {
        let id = random_token();
        let now = now_ms();
        let session = Session {
            handle: random_token()[..16].to_string(),
            user: user.to_string(),
            full,
            csrf: random_token(),
            created_ms: now,
            last_seen_ms: now,
            ip: ip.to_string(),
            user_agent: user_agent.chars().take(200).collect(),
            confirmed_until_ms: if full { now + self.reauth_ms } else { 0 },
            enrolling: None,
            send_confirmed: false,
        };
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| !self.expired(s, now));
        map.insert(id.clone(), session);
        id
    }

    fn expired(&self, session: &Session, now: u64) -> bool {
        let max = if session.full {
            self.max_ms
        } else {
            PENDING_LIFETIME_MS.min(self.max_ms)
        };
        now.saturating_sub(session.last_seen_ms) > self.idle_ms
            || now.saturating_sub(session.created_ms) > max
    }

    /// Look a session up and mark it used; expired ones are dropped.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = now_ms();
        let mut map = self.map.lock().expect("sessions lock");
        let session = map.get_mut(id)?;
        if self.expired(session, now) {
            map.remove(id);
            return None;
        }
        session.last_seen_ms = now;
        Some(session.clone())
    }

    /// Replace a pending session by a full one (a new ID: no session fixation).
    pub fn upgrade(&self, id: &str) -> Option<String> {
        let mut map = self.map.lock().expect("sessions lock");
        let mut session = map.remove(id)?;
        session.full = true;
        session.csrf = random_token();
        session.last_seen_ms = now_ms();
        session.confirmed_until_ms = session.last_seen_ms + self.reauth_ms;
        session.enrolling = None;
        let new_id = random_token();
        map.insert(new_id.clone(), session);
        Some(new_id)
    }

    /// The user just proved it is them again ("confirm it's you").
    pub fn confirm(&self, handle: &str) {
        let until = now_ms() + self.reauth_ms;
        self.with_handle(handle, |s| s.confirmed_until_ms = until);
    }

    /// `[send] require_totp`: this session gave a code for sending.
    pub fn confirm_sending(&self, handle: &str) {
        self.with_handle(handle, |s| s.send_confirmed = true);
    }

    /// Remember (or forget) the TOTP secret being enrolled in this session.
    pub fn set_enrolling(&self, handle: &str, secret: Option<String>) {
        self.with_handle(handle, |s| s.enrolling = secret);
    }

    fn with_handle(&self, handle: &str, change: impl FnOnce(&mut Session)) {
        let mut map = self.map.lock().expect("sessions lock");
        if let Some(session) = map.values_mut().find(|s| s.handle == handle) {
            change(session);
        }
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }

    /// Every live full session (for the admin page).
    pub fn list(&self) -> Vec<Session> {
        let now = now_ms();
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| !self.expired(s, now));
        let mut list: Vec<Session> = map.values().filter(|s| s.full).cloned().collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.last_seen_ms));
        list
    }

    /// Revoke by handle; returns the user it belonged to.
    pub fn revoke(&self, handle: &str) -> Option<String> {
        let mut map = self.map.lock().expect("sessions lock");
        let id = map.iter().find(|(_, s)| s.handle == handle)?.0.clone();
        map.remove(&id).map(|s| s.user)
    }

    /// Sign a user out everywhere (password change, account disabled).
    pub fn revoke_user(&self, user: &str) -> usize {
        let mut map = self.map.lock().expect("sessions lock");
        let before = map.len();
        map.retain(|_, s| s.user != user);
        before - map.len()
    }
}

/// Why a login attempt is refused before the password is even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Account { minutes: u64 },
    Address { minutes: u64 },
}

#[derive(Default)]
struct Failures {
    window_start_ms: u64,
    count: u32,
    locked_until_ms: u64,
}

/// Counts failed logins per account and per client address; past a limit
/// within the window, the account (or address) is locked for a while.
pub struct Throttle {
    accounts: Mutex<HashMap<String, Failures>>,
    addresses: Mutex<HashMap<String, Failures>>,
    account_limit: u32,
    address_limit: u32,
    window_ms: u64,
    lock_ms: u64,
}

impl Throttle {
    pub fn new(account_limit: u32, address_limit: u32, window: Duration, lock: Duration) -> Self {
        Throttle {
            accounts: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            account_limit,
            address_limit,
            window_ms: window.as_millis() as u64,
            lock_ms: lock.as_millis() as u64,
        }
    }

    fn minutes_left(until: u64, now: u64) -> u64 {
        until.saturating_sub(now).div_ceil(60_000).max(1)
    }

    pub fn check(&self, account: &str, ip: &str) -> Result<(), Blocked> {
        let now = now_ms();
        if let Some(f) = self.addresses.lock().expect("throttle lock").get(ip) {
            if f.locked_until_ms > now {
                return Err(Blocked::Address {
                    minutes: Self::minutes_left(f.locked_until_ms, now),
                });
            }
        }
        if let Some(f) = self.accounts.lock().expect("throttle lock").get(account) {
            if f.locked_until_ms > now {
                return Err(Blocked::Account {
                    minutes: Self::minutes_left(f.locked_until_ms, now),
                });
            }
        }
        Ok(())
    }

    fn bump(
        map: &Mutex<HashMap<String, Failures>>,
        key: &str,
        limit: u32,
        window: u64,
        lock: u64,
    ) -> bool {
        let now = now_ms();
        let mut map = map.lock().expect("throttle lock");
        if map.len() > 100_000 {
            // Bounded memory under a spray from many addresses.
            map.retain(|_, f| {
                f.locked_until_ms > now || now.saturating_sub(f.window_start_ms) < window
            });
        }
        let f = map.entry(key.to_string()).or_default();
        if now.saturating_sub(f.window_start_ms) > window {
            f.window_start_ms = now;
            f.count = 0;
        }
        f.count += 1;
        if f.count >= limit {
            f.locked_until_ms = now + lock;
            f.count = 0;
            f.window_start_ms = now;
            return true;
        }
        false
    }

    /// Record a failure; returns which locks it just triggered (account, address).
    pub fn fail(&self, account: &str, ip: &str) -> (bool, bool) {
        (
            Self::bump(
                &self.accounts,
                account,
                self.account_limit,
                self.window_ms,
                self.lock_ms,
            ),
            Self::bump(
                &self.addresses,
                ip,
                self.address_limit,
                self.window_ms,
                self.lock_ms,
            ),
        )
    }

    pub fn succeed(&self, account: &str) {
        self.accounts.lock().expect("throttle lock").remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_locks_account_after_limit() {
        let t = Throttle::new(3, 100, Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(t.fail("a", "1.1.1.1"), (false, false));
        assert_eq!(t.fail("a", "1.1.1.1"), (false, false));
        assert_eq!(t.fail("a", "1.1.1.1"), (true, false));
        assert!(matches!(
            t.check("a", "1.1.1.1"),
            Err(Blocked::Account { .. })
        ));
        assert!(t.check("b", "1.1.1.1").is_ok());
    }

    #[test]
    fn sessions_expire_and_upgrade_with_new_id() {
        let s = Sessions::new(
            Duration::from_secs(60),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        let id = s.create("a", false, "127.0.0.1", "test");
        assert!(!s.touch(&id).expect("live").full);
        let full = s.upgrade(&id).expect("upgrade");
        assert_ne!(id, full);
        assert!(s.touch(&id).is_none(), "old id is gone");
        assert!(s.touch(&full).expect("live").full);
        let handle = s.list()[0].handle.clone();
        assert_eq!(s.revoke(&handle).as_deref(), Some("a"));
        assert!(s.touch(&full).is_none());
    }
}

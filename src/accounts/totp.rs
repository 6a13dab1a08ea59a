//! TOTP second factors (RFC 6238) for local accounts: secrets are made by
//! `breakwater user` and checked at web sign-in.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::envelope::now_ms;
use crate::secrets::same_secret;

/// TOTP (RFC 6238: SHA-1, 6 digits, 30 s) with one step of clock skew either
/// way, and no code accepted twice for the same account (replay).
pub struct SecondFactor {
    last_step: Mutex<HashMap<String, u64>>,
}

pub fn totp_for(secret_base32: &str, account: &str) -> Option<totp_rs::TOTP> {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .ok()?;
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        Some("Breakwater".to_string()),
        account.to_string(),
    )
    .ok()
}

/// A new random TOTP secret (160 bits, base32).
pub fn new_totp_secret() -> String {
    let mut bytes = [0u8; 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random");
    totp_rs::Secret::Raw(bytes.to_vec())
        .to_encoded()
        .to_string()
}

impl Default for SecondFactor {
    fn default() -> Self {
        Self::new()
    }
}

impl SecondFactor {
    pub fn new() -> SecondFactor {
        SecondFactor {
            last_step: Mutex::new(HashMap::new()),
        }
    }

    pub fn verify(&self, secret_base32: &str, account: &str, code: &str) -> bool {
        let code = code.trim().replace(' ', "");
        let Some(totp) = totp_for(secret_base32, account) else {
            return false;
        };
        let now = now_ms() / 1000;
        let mut last = self.last_step.lock().expect("totp lock");
        for step in [now / 30, (now / 30).saturating_sub(1), now / 30 + 1] {
            if same_secret(&totp.generate(step * 30), &code) {
                if last.get(account).is_some_and(|&used| step <= used) {
                    return false;
                }
                last.insert(account.to_string(), step);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_accepts_current_code_once() {
        let secret = new_totp_secret();
        let totp = totp_for(&secret, "a@example.com").expect("totp");
        let code = totp.generate(now_ms() / 1000);
        let factor = SecondFactor::new();
        assert!(!factor.verify(&secret, "a@example.com", "000000x"));
        assert!(factor.verify(&secret, "a@example.com", &code));
        assert!(
            !factor.verify(&secret, "a@example.com", &code),
            "replayed code"
        );
    }
}

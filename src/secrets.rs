//! The small secret-handling helpers every door uses (web sessions, admin
//! tokens, the audit chain, TOTP): one random token generator, one
//! constant-time comparison, one SHA-256 hex digest. Imports no stage.

use subtle::ConstantTimeEq;

/// 256 random bits from the system generator, as 64 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random");
    hex(&bytes)
}

/// Constant-time string comparison for secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// SHA-256 of `data`, as 64 lower-case hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

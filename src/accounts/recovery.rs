//! Recovery codes: ten one-time codes that stand in for the authenticator
//! when the phone is lost, shown once and stored only as hashes.
//!
//! A code carries 80 random bits (16 characters of a 32-letter alphabet),
//! so a plain SHA-256 is enough to store it: unlike a password there is no
//! dictionary to try, and 2^80 guesses are out of reach offline.

use crate::secrets::{same_secret, sha256_hex};

/// How many codes a fresh set has.
pub const COUNT: usize = 10;

/// No i, l, o and no 1: codes are read off paper and typed by hand (0 has
/// no letter o to be confused with).
const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";

/// A fresh set: the codes to show (`xxxx-xxxx-xxxx-xxxx`) and the hashes to keep.
pub fn generate() -> (Vec<String>, Vec<String>) {
    let rng = ring::rand::SystemRandom::new();
    let mut codes = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut bytes).expect("system random");
        // 256 is a multiple of 32: every letter is equally likely.
        let letters: Vec<char> = bytes
            .iter()
            .map(|b| ALPHABET[*b as usize % 32] as char)
            .collect();
        let code = letters
            .chunks(4)
            .map(|chunk| chunk.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-");
        codes.push(code);
    }
    let hashes = codes.iter().map(|c| hash(c)).collect();
    (codes, hashes)
}

/// What is hashed: the letters alone, lower-cased (dashes and spaces as
/// typed do not matter).
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

pub fn hash(code: &str) -> String {
    sha256_hex(normalize(code).as_bytes())
}

/// Does `code` look like a recovery code rather than a 6-digit TOTP code?
pub fn looks_like_one(code: &str) -> bool {
    normalize(code).len() == 16
}

/// The index of the stored hash `code` matches, compared in constant time.
pub fn find(hashes: &[String], code: &str) -> Option<usize> {
    if !looks_like_one(code) {
        return None;
    }
    let wanted = hash(code);
    // Compare against every hash: the time does not say which one matched.
    let mut found = None;
    for (i, stored) in hashes.iter().enumerate() {
        if same_secret(stored, &wanted) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_typed_loosely_and_found_by_hash_only() {
        let (codes, hashes) = generate();
        assert_eq!(codes.len(), COUNT);
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), COUNT);
        assert!(codes.iter().all(|c| c.len() == 19 && looks_like_one(c)));
        assert!(hashes.iter().all(|h| h.len() == 64 && !codes.contains(h)));
        let typed = codes[3].to_uppercase().replace('-', " ");
        assert_eq!(find(&hashes, &typed), Some(3));
        assert_eq!(find(&hashes, "123456"), None);
        assert_eq!(find(&hashes, "aaaa-aaaa-aaaa-aaaa"), None);
    }
}

//! DKIM keys for mail Breakwater sends on its users' behalf during an
//! outage (reply, forward, compose): one key per domain (`[[domain]]
//! dkim_selector` and `dkim_key`), made by `breakwater dkim keygen`,
//! published at `<selector>._domainkey.<domain>`, and used to sign with
//! mail-auth (RFC 6376; Ed25519 per RFC 8463).
//!
//! A shared service, not part of a stage: the sending side signs with it,
//! `check-config` loads the keys, and the self-check compares the published
//! record with the key on disk. RSA keys are *made* with the `rsa` crate
//! (ring cannot generate them); all signing is ring's, through mail-auth.
//! Imports no stage.

use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// The header fields a signature covers. Listed fields that a message does
/// not have are signed as absent, so nobody can add them later (RFC 6376
/// 8.15, "oversigning").
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// RSA-2048 with SHA-256: what every verifier checks.
    Rsa,
    /// Ed25519 (RFC 8463): short, but not every verifier checks it yet.
    Ed25519,
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{path}: {problem}")]
    Key { path: String, problem: String },
    #[error("cannot make a key: {0}")]
    Generate(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One domain's signing key.
pub struct DomainKey {
    pub domain: String,
    pub selector: String,
    signer: Signer,
    /// The `p=` of the DNS record: SubjectPublicKeyInfo for RSA, the raw
    /// 32 bytes for Ed25519.
    public: Vec<u8>,
}

/// Never the key itself in a log or a panic message.
impl std::fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// A new private key as PKCS#8 PEM.
pub fn generate(algorithm: Algorithm) -> Result<String, DkimError> {
    let der = match algorithm {
        Algorithm::Ed25519 => {
            Ed25519Key::generate_pkcs8().map_err(|e| DkimError::Generate(e.to_string()))?
        }
        Algorithm::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| DkimError::Generate(e.to_string()))?;
            key.to_pkcs8_der()
                .map_err(|e| DkimError::Generate(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
    };
    Ok(pem("PRIVATE KEY", &der))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Read `path` (PKCS#8 RSA or Ed25519, or PKCS#1 "RSA PRIVATE KEY" as
/// `openssl genrsa` writes it).
pub fn load(path: &Path, domain: &str, selector: &str) -> Result<DomainKey, DkimError> {
    let failed = |problem: String| DkimError::Key {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
    from_pem(&text, domain, selector).map_err(failed)
}

/// The key in `pem` (see `load`), for `domain` and `selector`.
pub fn from_pem(pem: &[u8], domain: &str, selector: &str) -> Result<DomainKey, String> {
    let key =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let (signer, public) = match &key {
        PrivateKeyDer::Pkcs8(der) => {
            match Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der()) {
                Ok(ed) => {
                    let public = ed.public_key();
                    let signer = DkimSigner::from_key(ed)
                        .domain(&domain)
                        .selector(selector)
                        .headers(SIGNED_HEADERS);
                    (Signer::Ed25519(signer), public)
                }
                Err(_) => {
                    use rsa::pkcs8::DecodePrivateKey;
                    let parsed = rsa::RsaPrivateKey::from_pkcs8_der(der.secret_pkcs8_der())
                        .map_err(|e| format!("not a key DKIM signs with (RSA or Ed25519): {e}"))?;
                    (rsa_signer(&key, &domain, selector)?, rsa_public(&parsed)?)
                }
            }
        }
        PrivateKeyDer::Pkcs1(der) => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            let parsed = rsa::RsaPrivateKey::from_pkcs1_der(der.secret_pkcs1_der())
                .map_err(|e| format!("not an RSA key: {e}"))?;
            (rsa_signer(&key, &domain, selector)?, rsa_public(&parsed)?)
        }
        _ => return Err("an EC key; DKIM signs with RSA or Ed25519".into()),
    };
    Ok(DomainKey {
        domain,
        selector: selector.to_string(),
        signer,
        public,
    })
}

fn rsa_signer(key: &PrivateKeyDer<'_>, domain: &str, selector: &str) -> Result<Signer, String> {
    let key = RsaKey::<Sha256>::from_key_der(key.clone_key()).map_err(|e| e.to_string())?;
    Ok(Signer::Rsa(
        DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_HEADERS),
    ))
}

fn rsa_public(key: &rsa::RsaPrivateKey) -> Result<Vec<u8>, String> {
    use rsa::pkcs8::EncodePublicKey;
    use rsa::traits::PublicKeyParts;
    if key.size() < 128 {
        return Err(format!(
            "an RSA key of {} bits; use at least 1024 (2048 is the norm)",
            key.size() * 8
        ));
    }
    key.to_public_key()
        .to_public_key_der()
        .map(|der| der.as_bytes().to_vec())
        .map_err(|e| e.to_string())
}

/// Every configured domain's key, loaded: a key that is missing, unreadable
/// or of the wrong kind is named by its config key (`domain[N].dkim_key`).
pub fn load_configured(config: &crate::config::Config) -> Result<Vec<DomainKey>, String> {
    let mut keys = Vec::new();
    for (i, domain) in config.domains.iter().enumerate() {
        if let Some(path) = &domain.dkim_key {
            let key = load(path, &domain.name, &domain.dkim_selector)
                .map_err(|e| format!("key `domain[{i}].dkim_key`: {e}"))?;
            keys.push(key);
        }
    }
    Ok(keys)
}

/// What the published record says of a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// The same public key.
    Matches,
    /// A record with another key (or another algorithm).
    Differs,
    /// `p=` is empty: the key is revoked (RFC 6376 3.6.1).
    Revoked,
    /// Not a DKIM key record.
    Unreadable(String),
}

impl DomainKey {
    pub fn algorithm(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "rsa",
            Signer::Ed25519(_) => "ed25519",
        }
    }

    /// Where the record goes: `<selector>._domainkey.<domain>.`
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}.", self.selector, self.domain)
    }

    /// The TXT record's text.
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm(),
            base64::engine::general_purpose::STANDARD.encode(&self.public)
        )
    }

    /// The record as a zone-file line, the text cut into strings of at
    /// most 255 bytes (one TXT string's limit; an RSA-2048 key is longer).
    pub fn zone_line(&self) -> String {
        let record = self.dns_record();
        let strings: Vec<String> = record
            .as_bytes()
            .chunks(255)
            .map(|c| {
                format!(
                    "\"{}\"",
                    std::str::from_utf8(c).expect("the record is ASCII")
                )
            })
            .collect();
        format!("{} IN TXT ( {} )", self.dns_name(), strings.join(" "))
    }

    /// The `DKIM-Signature:` header field (with its CRLF) to put in front
    /// of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let signature = match &self.signer {
            Signer::Rsa(signer) => signer.sign(message),
            Signer::Ed25519(signer) => signer.sign(message),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(signature.to_header())
    }

    /// Compare a published TXT record (its strings joined) with this key.
    pub fn compare(&self, record: &str) -> Published {
        let tags: Vec<(String, String)> = record
            .split(';')
            .filter_map(|tag| tag.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.chars().filter(|c| !c.is_whitespace()).collect(),
                )
            })
            .collect();
        let tag = |name: &str| {
            tags.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if tag("v").is_some_and(|v| v != "DKIM1") {
            return Published::Unreadable(format!("v={} is not DKIM1", tag("v").unwrap_or("")));
        }
        let Some(p) = tag("p") else {
            return Published::Unreadable("no p= tag".into());
        };
        if p.is_empty() {
            return Published::Revoked;
        }
        let k = tag("k").unwrap_or("rsa").to_ascii_lowercase();
        match base64::engine::general_purpose::STANDARD.decode(p) {
            Ok(bytes) if bytes == self.public && k == self.algorithm() => Published::Matches,
            Ok(_) => Published::Differs,
            Err(err) => Published::Unreadable(format!("p= is not base64: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@remote.test\r\nSubject: =?UTF-8?B?44GT44KT44Gr44Gh44Gv?=\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@mx2.example.com>\r\n\r\nHello\r\n";

    #[test]
    fn made_keys_load_sign_and_describe_their_record() {
        for algorithm in [Algorithm::Ed25519, Algorithm::Rsa] {
            let pem = generate(algorithm).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
            let key = from_pem(pem.as_bytes(), "Example.COM.", "bw1").unwrap();
            assert_eq!(key.dns_name(), "bw1._domainkey.example.com.");
            let record = key.dns_record();
            assert!(
                record.starts_with(&format!("v=DKIM1; k={}; p=", key.algorithm())),
                "{record}"
            );
            assert_eq!(key.compare(&record), Published::Matches);
            // As a DNS console splits and spaces it.
            let spaced = record.replacen("p=", "p= ", 1).replace(';', " ;");
            assert_eq!(key.compare(&spaced), Published::Matches);
            let header = key.sign(MESSAGE).unwrap();
            assert!(header.starts_with("DKIM-Signature: "), "{header}");
            assert!(header.ends_with("\r\n"));
            assert!(header.contains("d=example.com"), "{header}");
            assert!(header.contains("s=bw1"), "{header}");
            let signed = header
                .split("h=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap();
            for field in ["From", "To", "Subject", "Date", "Message-ID", "Reply-To"] {
                assert!(signed.contains(field), "{field} not signed: {header}");
            }
        }
        let rsa = from_pem(generate(Algorithm::Rsa).unwrap().as_bytes(), "a.test", "s").unwrap();
        let ed = from_pem(
            generate(Algorithm::Ed25519).unwrap().as_bytes(),
            "a.test",
            "s",
        )
        .unwrap();
        assert_eq!(ed.compare(&rsa.dns_record()), Published::Differs);
        assert_eq!(rsa.compare("v=DKIM1; k=rsa; p="), Published::Revoked);
        assert!(matches!(
            rsa.compare("v=spf1 -all"),
            Published::Unreadable(_)
        ));
    }

    #[test]
    fn bad_key_files_are_refused_with_the_path_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dkim.key");
        let err = load(&path, "a.test", "s").unwrap_err().to_string();
        assert!(
            err.contains("dkim.key") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(&path, "not a key").unwrap();
        let err = load(&path, "a.test", "s").unwrap_err().to_string();
        assert!(err.contains("not a PEM private key"), "{err}");
        let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(&path, ec).unwrap();
        let err = load(&path, "a.test", "s").unwrap_err().to_string();
        assert!(err.contains("RSA or Ed25519"), "{err}");
    }
}

//! What intake's checks concluded about a message, stored with it in the
//! envelope and read by delivery (headers it adds) and the web reader
//! (warnings). Data only: the checks themselves live in `trust`, which
//! this module must not import (the envelope is the shared vocabulary).

use serde::{Deserialize, Serialize};

/// What the checks concluded, kept with the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthVerdict {
    /// The `Authentication-Results` field value (authserv-id first).
    pub results: String,
    /// pass | fail | softfail | neutral | none | temperror | permerror
    pub spf: String,
    /// At least one DKIM signature verified.
    #[serde(default)]
    pub dkim_pass: bool,
    /// pass | fail | none | temperror | permerror
    pub dmarc: String,
    /// The From domain's published policy: none | quarantine | reject.
    #[serde(default)]
    pub dmarc_policy: String,
    /// The RFC 5322.From domain DMARC was evaluated for.
    #[serde(default)]
    pub from_domain: String,
    /// Spooled although DMARC failed under p=quarantine (`dmarc = "enforce"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
}

impl AuthVerdict {
    pub fn dmarc_failed(&self) -> bool {
        self.dmarc == "fail"
    }

    pub fn is_temp_error(&self) -> bool {
        self.dmarc == "temperror" || self.spf == "temperror"
    }

    /// The header as delivered, folded as mail-auth folds it.
    pub fn header(&self) -> String {
        format!("Authentication-Results: {}\r\n", self.results)
    }
}

/// At or above this, the web reader shows the warning banner.
pub const BANNER_THRESHOLD: u32 = 6;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LureVerdict {
    pub score: u32,
    pub reasons: Vec<String>,
}

impl LureVerdict {
    pub fn is_flagged(&self) -> bool {
        self.score >= BANNER_THRESHOLD
    }

    /// The header delivery adds: `score=7; reasons=brand-words,credential-form`.
    pub fn header_value(&self) -> String {
        format!("score={}; reasons={}", self.score, self.reasons.join(","))
    }
}

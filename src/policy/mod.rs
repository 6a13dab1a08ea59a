//! Who may send mail to whom through us: never an open relay.
//!
//! A recipient is accepted only when its domain is one of the configured
//! `[[domain]]`s and, where the domain has a recipient list, its address is on
//! it. Everything is decided at RCPT time, so unknown users are rejected in the
//! SMTP dialogue and never turn into backscatter bounces.
//!
//! Relay tricks are refused the way Postfix does with
//! `allow_untrusted_routing = no`: a local part carrying its own routing
//! (`%`, `!`, or an `@` inside quotes) could make a downstream host forward the
//! mail elsewhere, so it is rejected even for a configured domain.

pub mod callout;
pub mod directory;
pub mod dnsbl;
pub mod limits;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::config::{CalloutFallback, Config, DmarcMode, RecipientCheck, SpfMode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accept; the address in canonical form (domain lower-cased, local part
    /// quoted if it needs to be).
    Accept(String),
    /// 550 5.7.1: not a domain we relay for, or a routing trick.
    RelayDenied(&'static str),
    /// 550 5.1.1: our domain, but no such user on its list.
    UnknownUser,
    /// 553 5.1.3: not a usable address at all.
    BadSyntax(&'static str),
    /// Our domain, verified by asking its upstream (`verify_recipients =
    /// "callout"`); `listed` is the static list's opinion for the fallback.
    Callout(CalloutRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    pub address: String,
    pub upstream: String,
    pub listed: Option<bool>,
    pub fallback: CalloutFallback,
}

/// What RCPT does once the callout (or its cache) has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutDecision {
    Accept,
    UnknownUser,
    /// 451 4.4.3: cannot tell now (`callout_fallback = "tempfail"`).
    TryLater,
}

impl CalloutRequest {
    /// The upstream's word first; when it cannot be asked, the static list;
    /// then the domain's fallback. Never tempfail by default: accepting
    /// during an outage is the point of the product.
    pub fn decide(&self, answer: &callout::Answer) -> CalloutDecision {
        match (answer, self.listed, self.fallback) {
            (callout::Answer::Known { .. }, _, _) => CalloutDecision::Accept,
            (callout::Answer::Unknown { .. }, _, _) => CalloutDecision::UnknownUser,
            (callout::Answer::Unavailable(_), Some(true), _) => CalloutDecision::Accept,
            (callout::Answer::Unavailable(_), Some(false), _) => CalloutDecision::UnknownUser,
            (callout::Answer::Unavailable(_), None, CalloutFallback::Accept) => {
                CalloutDecision::Accept
            }
            (callout::Answer::Unavailable(_), None, CalloutFallback::Tempfail) => {
                CalloutDecision::TryLater
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct RecipientPolicy {
    domains: HashMap<String, DomainRule>,
}

#[derive(Debug)]
struct DomainRule {
    /// Lower-cased full addresses; `None` = any local part.
    recipients: Option<HashSet<String>>,
    dmarc: DmarcMode,
    spf: SpfMode,
    /// `Some(upstream)` when recipients are verified by callout.
    callout: Option<(String, CalloutFallback)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct PolicyError {
    pub file: PathBuf,
    pub problem: String,
}

impl RecipientPolicy {
    /// Build from the configuration, reading every recipient list.
    pub fn load(config: &Config) -> Result<RecipientPolicy, PolicyError> {
        let mut domains = HashMap::new();
        for domain in &config.domains {
            let name = domain.name.trim_end_matches('.').to_ascii_lowercase();
            let recipients = match &domain.recipients {
                Some(path) => Some(read_recipient_list(path, &name)?),
                None => None,
            };
            let callout = (domain.verify_recipients == RecipientCheck::Callout)
                .then(|| (domain.upstream.clone(), domain.callout_fallback));
            domains.insert(
                name,
                DomainRule {
                    recipients,
                    dmarc: domain.dmarc,
                    spf: domain.spf,
                    callout,
                },
            );
        }
        Ok(RecipientPolicy { domains })
    }

    /// Decide on one RCPT address as parsed by the command parser (quotes
    /// removed, source route already dropped).
    pub fn check(&self, address: &str) -> RcptVerdict {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return RcptVerdict::BadSyntax("address needs a domain");
        };
        if local.is_empty() {
            return RcptVerdict::BadSyntax("empty local part");
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
        if domain.is_empty() || domain.starts_with('[') || domain.ends_with('.') {
            return RcptVerdict::RelayDenied("relay access denied");
        }
        let Some(rule) = self.domains.get(&domain) else {
            return RcptVerdict::RelayDenied("relay access denied");
        };
        if local.contains(['@', '%', '!']) {
            return RcptVerdict::RelayDenied("routing in the local part is not permitted");
        }
        if local.chars().any(|c| c.is_control()) {
            return RcptVerdict::BadSyntax("control characters in address");
        }
        let canonical = match crate::address::canonical(&format!("{local}@{domain}"), true) {
            Ok(canonical) => canonical,
            Err(_) => return RcptVerdict::BadSyntax("malformed address"),
        };
        let listed = rule
            .recipients
            .as_ref()
            .map(|list| list.contains(&canonical.to_lowercase()));
        if let Some((upstream, fallback)) = &rule.callout {
            return RcptVerdict::Callout(CalloutRequest {
                address: canonical,
                upstream: upstream.clone(),
                listed,
                fallback: *fallback,
            });
        }
        if listed == Some(false) {
            return RcptVerdict::UnknownUser;
        }
        RcptVerdict::Accept(canonical)
    }

    /// The DMARC mode of a recipient domain (tag for unknown domains).
    pub fn dmarc_mode(&self, domain: &str) -> DmarcMode {
        self.domains
            .get(&domain.to_lowercase())
            .map_or(DmarcMode::Tag, |rule| rule.dmarc)
    }

    pub fn spf_mode(&self, domain: &str) -> SpfMode {
        self.domains
            .get(&domain.to_lowercase())
            .map_or(SpfMode::Tag, |rule| rule.spf)
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }
}

fn read_recipient_list(path: &Path, domain: &str) -> Result<HashSet<String>, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|err| PolicyError {
        file: path.to_path_buf(),
        problem: format!("cannot read recipient list: {err}"),
    })?;
    let mut out = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // A bare local part means "at this domain".
        let address = match line.rsplit_once('@') {
            Some((_, d)) if !d.eq_ignore_ascii_case(domain) => {
                return Err(PolicyError {
                    file: path.to_path_buf(),
                    problem: format!("line {}: {line:?} is not an address at {domain}", n + 1),
                })
            }
            Some(_) => line.to_lowercase(),
            None => format!("{line}@{domain}").to_lowercase(),
        };
        out.insert(address);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RecipientPolicy {
        let mut domains = HashMap::new();
        let rule = |recipients, callout| DomainRule {
            recipients,
            dmarc: DmarcMode::Tag,
            spf: SpfMode::Tag,
            callout,
        };
        domains.insert("example.com".to_string(), rule(None, None));
        let mut list = HashSet::new();
        list.insert("alice@listed.example".to_string());
        domains.insert("listed.example".to_string(), rule(Some(list.clone()), None));
        domains.insert(
            "verified.example".to_string(),
            rule(
                None,
                Some(("127.0.0.1:25".to_string(), CalloutFallback::Tempfail)),
            ),
        );
        RecipientPolicy { domains }
    }

    #[test]
    fn callout_domains_defer_to_the_upstream_then_the_list_then_the_fallback() {
        let p = policy();
        let RcptVerdict::Callout(request) = p.check("Carol@Verified.Example") else {
            panic!("callout expected");
        };
        assert_eq!(request.address, "Carol@verified.example");
        assert_eq!(request.listed, None);
        use callout::Answer;
        let down = Answer::Unavailable("down".into());
        assert_eq!(
            request.decide(&Answer::Known { cached: false }),
            CalloutDecision::Accept
        );
        assert_eq!(
            request.decide(&Answer::Unknown {
                cached: true,
                reply: String::new()
            }),
            CalloutDecision::UnknownUser
        );
        assert_eq!(request.decide(&down), CalloutDecision::TryLater);
        let accept = CalloutRequest {
            fallback: CalloutFallback::Accept,
            ..request.clone()
        };
        assert_eq!(accept.decide(&down), CalloutDecision::Accept);
        let listed = CalloutRequest {
            listed: Some(false),
            ..request.clone()
        };
        assert_eq!(listed.decide(&down), CalloutDecision::UnknownUser);
        let listed = CalloutRequest {
            listed: Some(true),
            ..request
        };
        assert_eq!(listed.decide(&down), CalloutDecision::Accept);
    }

    #[test]
    fn accepts_configured_domains_case_insensitively() {
        let p = policy();
        assert_eq!(
            p.check("Bob@EXAMPLE.com"),
            RcptVerdict::Accept("Bob@example.com".into())
        );
        assert_eq!(
            p.check("bob@example.com."),
            RcptVerdict::Accept("bob@example.com".into())
        );
        assert_eq!(
            p.check("ALICE@Listed.Example"),
            RcptVerdict::Accept("ALICE@listed.example".into())
        );
        assert_eq!(
            p.check("john doe@example.com"),
            RcptVerdict::Accept("\"john doe\"@example.com".into())
        );
    }

    #[test]
    fn rejects_relay_and_unknown() {
        let p = policy();
        assert!(matches!(
            p.check("bob@other.example"),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("bob@example.com.evil.example"),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("bob@sub.example.com"),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("bob@example.com.."),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("bob@[127.0.0.1]"),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("bob%evil.example@example.com"),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("evil.example!bob@example.com"),
            RcptVerdict::RelayDenied(_)
        ));
        assert!(matches!(
            p.check("bob@evil.example@example.com"),
            RcptVerdict::RelayDenied(_)
        ));
        assert_eq!(p.check("mallory@listed.example"), RcptVerdict::UnknownUser);
        assert!(matches!(p.check("nodomain"), RcptVerdict::BadSyntax(_)));
        assert!(matches!(p.check("@example.com"), RcptVerdict::BadSyntax(_)));
    }
}

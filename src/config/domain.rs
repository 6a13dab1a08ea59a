//! `[[domain]]`: the domains Breakwater accepts mail for, and where it goes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{is_valid_hostname, parse_host_port, ConfigError, Invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// One address per line; absent = any local part is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<PathBuf>,
    /// "mx" (DNS MX lookup), or "host:port", or several "host:port" separated
    /// by commas, tried in order.
    #[serde(default = "default_upstream")]
    pub upstream: String,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// DMARC failures: "tag" records them; "enforce" rejects p=reject
    /// (550 5.7.1) and flags p=quarantine.
    #[serde(default)]
    pub dmarc: DmarcMode,
    /// SPF "fail" (-all): "tag" records it; "reject" refuses at RCPT (550 5.7.23).
    #[serde(default)]
    pub spf: SpfMode,
    /// "list": the `recipients` file (or any local part without one);
    /// "callout": ask the upstream with a RCPT probe, cached.
    #[serde(default)]
    pub verify_recipients: RecipientCheck,
    /// When a callout cannot be made and nothing is cached or listed:
    /// "accept" (the default: an outage must not bounce mail) or "tempfail".
    #[serde(default)]
    pub callout_fallback: CalloutFallback,
    /// DKIM for mail users send from this domain during an outage: the
    /// selector and the private key (`breakwater dkim keygen`). A domain
    /// without both cannot send.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dkim_selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim_key: Option<PathBuf>,
}

impl DomainConfig {
    /// A domain with defaults for everything but its name and upstream.
    pub fn new(name: &str, upstream: &str) -> DomainConfig {
        DomainConfig {
            name: name.to_string(),
            recipients: None,
            upstream: upstream.to_string(),
            tls: UpstreamTls::default(),
            dmarc: DmarcMode::default(),
            spf: SpfMode::default(),
            verify_recipients: RecipientCheck::default(),
            callout_fallback: CalloutFallback::default(),
            dkim_selector: String::new(),
            dkim_key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcMode {
    #[default]
    Tag,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfMode {
    #[default]
    Tag,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientCheck {
    #[default]
    List,
    Callout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalloutFallback {
    #[default]
    Accept,
    Tempfail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Required,
    #[default]
    Opportunistic,
    None,
}

fn default_upstream() -> String {
    "mx".to_string()
}

/// Every `[[domain]]`: a real name, once, a route, a readable list.
pub(super) fn validate_domains(
    domains: &[DomainConfig],
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    if domains.is_empty() {
        return Err(invalid(
            "domain",
            "no [[domain]] configured: Breakwater would accept no mail".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, domain) in domains.iter().enumerate() {
        let key = |field: &str| format!("domain[{i}].{field}");
        let name = domain.name.trim_end_matches('.').to_ascii_lowercase();
        if !is_valid_hostname(&name) || !name.contains('.') {
            return Err(invalid(
                &key("name"),
                format!("{:?} is not a valid domain name", domain.name),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(invalid(
                &key("name"),
                format!("domain {name} is configured twice"),
            ));
        }
        if domain.upstream != "mx"
            && domain
                .upstream
                .split(',')
                .any(|part| parse_host_port(part.trim()).is_none())
        {
            return Err(invalid(
                &key("upstream"),
                format!(
                    "{:?} is neither \"mx\" nor host:port (e.g. \"tenant.mail.protection.outlook.com:25\")",
                    domain.upstream
                ),
            ));
        }
        if let Some(list) = &domain.recipients {
            if let Err(err) = std::fs::metadata(list) {
                return Err(invalid(
                    &key("recipients"),
                    format!("cannot read {}: {err}", list.display()),
                ));
            }
        }
        match (domain.dkim_selector.is_empty(), &domain.dkim_key) {
            (true, None) => {}
            (false, Some(_)) => {
                let selector = &domain.dkim_selector;
                if !is_valid_hostname(selector) {
                    return Err(invalid(
                        &key("dkim_selector"),
                        format!("{selector:?} is not a DNS name (letters, digits, '-', '.'), e.g. \"bw1\""),
                    ));
                }
            }
            (true, Some(_)) => {
                return Err(invalid(
                    &key("dkim_selector"),
                    "missing: dkim_key is set, and the key is published under a selector (e.g. \"bw1\")".into(),
                ))
            }
            (false, None) => {
                return Err(invalid(
                    &key("dkim_key"),
                    "missing: dkim_selector is set; make a key with `breakwater dkim keygen`".into(),
                ))
            }
        }
        if domain.verify_recipients == RecipientCheck::Callout && domain.upstream == "mx" {
            return Err(invalid(
                &key("verify_recipients"),
                "\"callout\" needs a host:port upstream (a callout through MX could ask this very host)".into(),
            ));
        }
    }
    Ok(())
}

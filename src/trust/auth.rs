//! Sender authentication: SPF (at MAIL), DKIM, ARC and DMARC (at end of
//! data), summarised as an RFC 8601 `Authentication-Results` header.
//!
//! Why here and not left to the primary: a secondary MX is the classic way
//! around the primary's filters, so it has to check at least as much. The
//! verdict is stored with the message (the envelope) and the header is added
//! on delivery, next to `X-Breakwater-Lure`; incoming copies of the header
//! that claim to come from us are removed on delivery (RFC 8601 5).
//!
//! DNS failures never cost a message: each stage has a time budget and a
//! failure is a `temperror` that the caller either records (accept) or turns
//! into a 451 (tempfail), per `[trust] on_dns_error`.

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};

pub use crate::verdict::AuthVerdict;

/// SPF result for the MAIL FROM identity (RFC 7208 2.4: the HELO identity
/// stands in for the null sender).
#[derive(Debug, Clone)]
pub struct SpfCheck {
    output: SpfOutput,
    /// The HELO identity's own result (RFC 7208 2.3), when HELO names a domain.
    helo: Option<SpfOutput>,
}

impl SpfCheck {
    pub fn result(&self) -> SpfResult {
        self.output.result()
    }

    pub fn is_fail(&self) -> bool {
        self.output.result() == SpfResult::Fail
    }

    pub fn is_temp_error(&self) -> bool {
        self.output.result() == SpfResult::TempError
    }
}

/// Runs the checks with the shared resolver (`[dns] nameservers`, cached).
pub struct Authenticator {
    dns: MessageAuthenticator,
    hostname: String,
    budget: Duration,
    /// A dead resolver is noticed once, not paid for per message.
    health: std::sync::Arc<crate::dns::ResolverHealth>,
}

/// What the Authentication-Results say when a check was skipped because the
/// resolver is down.
const RESOLVER_DOWN: &str = "DNS resolver not answering; check skipped";

impl Authenticator {
    pub fn new(config: &crate::config::Config) -> Result<Authenticator, String> {
        let resolver = crate::dns::build_resolver(&config.dns)?;
        Ok(Authenticator {
            health: crate::dns::ResolverHealth::new(crate::dns::build_probe_resolver(&config.dns)?),
            dns: MessageAuthenticator(resolver),
            hostname: config.hostname.clone(),
            budget: config.trust.dns_timeout,
        })
    }

    pub async fn check_spf(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfCheck {
        use mail_auth::spf::verify::SpfParameters;
        let helo = helo_domain(helo);
        let timed_out =
            |domain: &str| SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError);
        if self.health.is_down() {
            let domain = sender.rsplit_once('@').map_or(helo.as_str(), |(_, d)| d);
            return SpfCheck {
                output: timed_out(domain).with_explanation(RESOLVER_DOWN.to_string()),
                helo: None,
            };
        }
        // Both identities at once; the HELO one only when it names a domain
        // (for the null sender the MAIL FROM check already is the HELO check).
        let mail_from = self.health.within(
            self.budget,
            self.dns.verify_spf(SpfParameters::verify_mail_from(
                ip,
                &helo,
                &self.hostname,
                sender,
            )),
        );
        let helo_check = async {
            if helo.is_empty() || sender.is_empty() {
                return None;
            }
            let lookup = self
                .dns
                .verify_spf(SpfParameters::verify_ehlo(ip, &helo, &self.hostname));
            Some(
                self.health
                    .within(self.budget, lookup)
                    .await
                    .unwrap_or_else(|| timed_out(&helo)),
            )
        };
        let (mail_from, helo_output) = tokio::join!(mail_from, helo_check);
        let sender_domain = sender.rsplit_once('@').map_or(helo.as_str(), |(_, d)| d);
        let output = match mail_from {
            Some(output) => output,
            None if self.health.is_down() => {
                timed_out(sender_domain).with_explanation(RESOLVER_DOWN.to_string())
            }
            None => timed_out(sender_domain),
        };
        SpfCheck {
            output,
            helo: helo_output,
        }
    }

    /// DKIM (every signature), ARC and DMARC over the received message.
    /// `raw` is the message as received; `body_verified` is false when only
    /// its header section could be read (too large to verify), in which
    /// case DKIM and ARC are skipped and DMARC rests on SPF.
    pub async fn verify(
        &self,
        raw: &[u8],
        body_verified: bool,
        spf: &SpfCheck,
        ip: IpAddr,
        helo: &str,
        sender: &str,
    ) -> AuthVerdict {
        let helo = helo_domain(helo);
        if self.health.is_down() {
            return self.timed_out(spf, ip, &helo, sender, RESOLVER_DOWN);
        }
        let verdict = self
            .health
            .within(
                self.budget,
                self.verify_within_budget(raw, body_verified, spf, ip, &helo, sender),
            )
            .await;
        match verdict {
            Some(verdict) => verdict,
            None if self.health.is_down() => self.timed_out(spf, ip, &helo, sender, RESOLVER_DOWN),
            None => self.timed_out(spf, ip, &helo, sender, "DNS timeout"),
        }
    }

    async fn verify_within_budget(
        &self,
        raw: &[u8],
        body_verified: bool,
        spf: &SpfCheck,
        ip: IpAddr,
        helo: &str,
        sender: &str,
    ) -> AuthVerdict {
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            // Not even a header section: nothing to align with.
            let results = AuthenticationResults::new(&self.hostname)
                .with_spf_mailfrom_result(&spf.output, ip, sender, helo)
                .to_string();
            return AuthVerdict {
                results: format!("{results};\r\n\tdmarc=permerror reason=\"no header section\""),
                spf: spf_name(spf.output.result()).into(),
                dmarc: "permerror".into(),
                ..AuthVerdict::default()
            };
        };
        let dkim = if body_verified {
            self.dns.verify_dkim(&message).await
        } else {
            Vec::new()
        };
        let arc = if body_verified
            && (!message.as_headers.is_empty() || !message.ams_headers.is_empty())
        {
            Some(self.dns.verify_arc(&message).await)
        } else {
            None
        };
        let mail_from_domain = sender
            .rsplit_once('@')
            .map_or(helo, |(_, domain)| domain)
            .to_string();
        let dmarc = self
            .dns
            .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
                &message,
                &dkim,
                &mail_from_domain,
                &spf.output,
            ))
            .await;
        let mut header = AuthenticationResults::new(&self.hostname)
            .with_dkim_results(&dkim, message.from())
            .with_spf_mailfrom_result(&spf.output, ip, sender, helo);
        if let Some(helo_output) = &spf.helo {
            header = header.with_spf_ehlo_result(helo_output, ip, helo);
        }
        if let Some(arc) = &arc {
            header = header.with_arc_result(arc, ip);
        }
        let mut results = header.with_dmarc_result(&dmarc).to_string();
        if !body_verified {
            results.push_str(";\r\n\tdkim=none reason=\"message too large to verify\"");
        }
        AuthVerdict {
            results,
            spf: spf_name(spf.output.result()).into(),
            dkim_pass: dkim.iter().any(|d| d.result() == &DkimResult::Pass),
            dmarc: dmarc_name(&dmarc.result()).into(),
            dmarc_policy: match dmarc.policy() {
                Policy::Reject => "reject",
                Policy::Quarantine => "quarantine",
                Policy::None | Policy::Unspecified => "none",
            }
            .into(),
            from_domain: dmarc.domain().to_string(),
            quarantined: false,
        }
    }

    fn timed_out(
        &self,
        spf: &SpfCheck,
        ip: IpAddr,
        helo: &str,
        sender: &str,
        reason: &str,
    ) -> AuthVerdict {
        let results = AuthenticationResults::new(&self.hostname)
            .with_spf_mailfrom_result(&spf.output, ip, sender, helo)
            .to_string();
        AuthVerdict {
            results: format!(
                "{results};\r\n\tdkim=temperror reason=\"{reason}\";\r\n\tdmarc=temperror reason=\"{reason}\""
            ),
            spf: spf_name(spf.output.result()).into(),
            dmarc: "temperror".into(),
            ..AuthVerdict::default()
        }
    }
}

/// RFC 7208 4.3: a HELO that is an address literal or not a domain has no
/// SPF record to look up; keep what mail-auth can use.
fn helo_domain(helo: &str) -> String {
    let helo = helo.trim().trim_end_matches('.');
    if helo.starts_with('[') || helo.parse::<IpAddr>().is_ok() || !helo.contains('.') {
        String::new()
    } else {
        helo.to_ascii_lowercase()
    }
}

fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dmarc_name(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// Drop `Authentication-Results` fields in the top-level header section whose
/// authserv-id is ours: only we may speak for us (RFC 8601 5). Other
/// hosts' results are left alone. Edits `raw` in place (a 50 MB message is
/// not copied to drop a header line); returns whether anything was removed.
pub fn strip_forged_results(raw: &mut Vec<u8>, authserv_id: &str) -> bool {
    let header_end = header_section_end(raw);
    let mut forged = Vec::new();
    let mut pos = 0;
    while pos < header_end {
        let end = field_end(raw, pos, header_end);
        if is_our_results_field(&raw[pos..end], authserv_id) {
            forged.push(pos..end);
        }
        pos = end;
    }
    // Last first, so the earlier ranges still point at the same bytes.
    for range in forged.iter().rev() {
        raw.drain(range.clone());
    }
    !forged.is_empty()
}

/// Offset of the blank line ending the header section (or the end).
fn header_section_end(raw: &[u8]) -> usize {
    let mut pos = 0;
    while pos < raw.len() {
        if raw[pos..].starts_with(b"\r\n") || raw[pos..].starts_with(b"\n") {
            return pos;
        }
        match memchr::memchr(b'\n', &raw[pos..]) {
            Some(n) => pos += n + 1,
            None => return raw.len(),
        }
    }
    raw.len()
}

/// End of the field starting at `start`: its first line plus continuation
/// lines (those starting with white space).
fn field_end(raw: &[u8], start: usize, limit: usize) -> usize {
    let mut pos = start;
    loop {
        match memchr::memchr(b'\n', &raw[pos..limit]) {
            Some(n) => pos += n + 1,
            None => return limit,
        }
        if pos >= limit || !matches!(raw[pos], b' ' | b'\t') {
            return pos;
        }
    }
}

fn is_our_results_field(field: &[u8], authserv_id: &str) -> bool {
    const NAME: &[u8] = b"authentication-results";
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    if !field[..colon].trim_ascii().eq_ignore_ascii_case(NAME) {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let value = strip_comments(&value);
    let id = value
        .split(';')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("");
    id.trim_end_matches('.')
        .eq_ignore_ascii_case(authserv_id.trim_end_matches('.'))
}

/// RFC 5322 comments (possibly nested) removed, so `(forged) mx.example`
/// cannot hide the authserv-id.
fn strip_comments(value: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_for_our_id_are_removed_others_kept() {
        let raw = b"Received: from x\r\n\tby mx2.example\r\nAuthentication-Results: (spoof) MX2.example.;\r\n\tdmarc=pass header.from=bank.example\r\nAuthentication-Results: other.example; spf=pass\r\nauthentication-results:mx2.example; dkim=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx2.example; body text stays\r\n";
        let mut out = raw.to_vec();
        assert!(strip_forged_results(&mut out, "mx2.example"));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "Received: from x\r\n\tby mx2.example\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx2.example; body text stays\r\n"
        );
        let mut clean = b"Subject: x\r\n\r\nbody".to_vec();
        assert!(!strip_forged_results(&mut clean, "mx2.example"));
        assert_eq!(clean, b"Subject: x\r\n\r\nbody");
        // A look-alike id is somebody else's.
        let mut look_alike = b"Authentication-Results: mx2.example.evil; spf=pass\r\n\r\n".to_vec();
        assert!(!strip_forged_results(&mut look_alike, "mx2.example"));
    }

    #[test]
    fn helo_literals_are_not_spf_domains() {
        assert_eq!(helo_domain("[127.0.0.1]"), "");
        assert_eq!(helo_domain("localhost"), "");
        assert_eq!(helo_domain("Mail.Example.COM."), "mail.example.com");
    }
}

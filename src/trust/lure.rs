//! Outage-lure scoring: does this message look like the phishing that
//! arrives while Microsoft 365 is down ("restore your mailbox", "verify your
//! account", 「パスワード再設定」)?
//!
//! A transparent sum of named signals, not a black box: every point comes
//! with a reason an IT team can read (and a test can check). It never
//! deletes or rejects anything; it marks the message in the spool, the web
//! reader warns, and delivery adds `X-Breakwater-Lure` for transport rules.

use std::collections::BTreeSet;

use mail_parser::MimeHeaders;

pub use crate::verdict::{LureVerdict, BANNER_THRESHOLD};

/// What the scorer knows besides the message.
#[derive(Debug, Clone, Default)]
pub struct LureContext {
    /// The organisation's own domains (mail claiming to be from them is checked).
    pub own_domains: Vec<String>,
    /// Domains registered recently (operator-supplied list; no live whois).
    pub recent_domains: Vec<String>,
}

const BRAND_WORDS: &[&str] = &[
    "microsoft",
    "office 365",
    "office365",
    "microsoft 365",
    "m365",
    "outlook",
    "exchange",
    "teams",
    "onedrive",
    "sharepoint",
    "helpdesk",
    "help desk",
    "it support",
    "it department",
    "administrator",
    "マイクロソフト",
    "アウトルック",
    "情報システム部",
    "ヘルプデスク",
    "管理者",
];
const ACTION_WORDS: &[&str] = &[
    "password",
    "verify",
    "verification",
    "restore",
    "reactivate",
    "suspended",
    "unlock",
    "reschedule",
    "rescheduled",
    "status page",
    "service status",
    "mailbox full",
    "quarantine",
    "sign in to",
    "log in to",
    "validate",
    "expire",
    "パスワード",
    "復旧",
    "再設定",
    "アカウント確認",
    "会議の変更",
    "認証",
    "ロック",
    "有効期限",
    "再開",
    "本人確認",
    "サインイン",
];
const BRAND_DOMAINS: &[&str] = &[
    "microsoft",
    "office",
    "outlook",
    "live",
    "sharepoint",
    "onedrive",
];
/// Registrable domains the brand words legitimately link to.
const BRAND_HOMES: &[&str] = &[
    "microsoft.com",
    "office.com",
    "outlook.com",
    "live.com",
    "sharepoint.com",
    "onedrive.com",
    "microsoftonline.com",
    "office365.com",
    "windows.net",
    "azure.com",
];

fn contains_any(text: &str, words: &[&str]) -> Option<String> {
    let lower = text.to_lowercase();
    words
        .iter()
        .find(|w| lower.contains(*w))
        .map(|w| w.to_string())
}

/// The registrable domain by Mozilla's public suffix list, so that
/// `login.example.co.jp` and `example.co.jp` are one site and two `.co.jp`
/// companies are two. A name with no listed suffix is taken whole.
fn registrable(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    psl::domain_str(&host).map_or_else(|| host.clone(), str::to_string)
}

/// `candidate` imitates `genuine` (both registrable domains): not the same
/// name, but the same after the usual glyph swaps (examp1e, exarnple) or one
/// typo away (exmaple). Short names are left out: one edit from a four-letter
/// name is usually somebody else's real domain.
fn imitates(candidate: &str, genuine: &str) -> bool {
    const SHORTEST: usize = 5;
    if candidate == genuine || genuine.split('.').next().map_or(0, str::len) < SHORTEST {
        return false;
    }
    let unswapped = |d: &str| {
        d.replace("rn", "m")
            .replace("vv", "w")
            .replace('0', "o")
            .replace('1', "l")
    };
    unswapped(candidate) == unswapped(genuine)
        || strsim::damerau_levenshtein(candidate, genuine) == 1
}

/// Hosts of the `http(s)://` addresses written out in plain text (a lure
/// without HTML still has to send people somewhere).
fn text_link_hosts(text: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("http") {
        let candidate = &rest[at..];
        // An address ends at white space, markup quoting or the first
        // non-ASCII character (Japanese text often runs straight on).
        let end = candidate
            .find(|c: char| c.is_whitespace() || !c.is_ascii() || "<>\"'()".contains(c))
            .unwrap_or(candidate.len());
        if let Some(host) = host_of(&candidate[..end]) {
            hosts.push(host);
        }
        rest = &candidate[end.max(4)..];
    }
    hosts
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .trim_end_matches('>')
        .to_lowercase()
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.trim().split_once("://")?.1;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit('@').next()?.split(':').next()?;
    (!host.is_empty()).then(|| host.to_lowercase())
}

/// (href, visible text) of every link, from the sanitised-for-reading HTML.
fn links(html: &str) -> Vec<(String, String)> {
    // ASCII lower-casing keeps every byte offset valid in `html`; Unicode
    // lower-casing can change lengths ('İ' → "i̇") and broke slicing (found by
    // the mail_render fuzz target).
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<a ") {
        let start = at + start;
        let Some(tag_end) = lower[start..].find('>') else {
            break;
        };
        let tag = &html[start..start + tag_end];
        let close = lower[start..]
            .find("</a>")
            .map_or(lower.len(), |c| start + c);
        let text_start = (start + tag_end + 1).min(close);
        let href = tag
            .to_ascii_lowercase()
            .find("href=")
            .map(|h| {
                let value = &tag[h + 5..];
                let quote = value.chars().next().unwrap_or(' ');
                if quote == '"' || quote == '\'' {
                    value[1..].split(quote).next().unwrap_or("").to_string()
                } else {
                    value.split([' ', '>']).next().unwrap_or("").to_string()
                }
            })
            .unwrap_or_default();
        let text = strip_tags(&html[text_start..close]);
        out.push((href, text));
        at = close.max(start + 1);
    }
    out
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// What intake knows about a message besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals<'a> {
    /// MAIL FROM.
    pub envelope_sender: &'a str,
    /// SPF/DKIM/DMARC, when `[trust] authenticate` is on.
    pub auth: Option<&'a super::auth::AuthVerdict>,
    /// An upstream is down or a drill runs: the moment lures are sent.
    pub outage: bool,
}

/// Score a message with only its MAIL FROM known (no DMARC, no outage).
pub fn score(raw: &[u8], context: &LureContext, envelope_sender: &str) -> LureVerdict {
    score_with(
        raw,
        context,
        &Signals {
            envelope_sender,
            ..Signals::default()
        },
    )
}

pub fn score_with(raw: &[u8], context: &LureContext, signals: &Signals) -> LureVerdict {
    let envelope_sender = signals.envelope_sender;
    let mut reasons: BTreeSet<(u32, &'static str)> = BTreeSet::new();
    let Some(message) = crate::mime::parse(raw) else {
        return LureVerdict::default();
    };
    let subject = message.subject().unwrap_or("").to_string();
    let from = message.from().and_then(|a| a.first());
    let display = from.and_then(|a| a.name()).unwrap_or("").to_string();
    let from_domain = from
        .and_then(|a| a.address())
        .map(domain_of)
        .unwrap_or_default();
    let own = |d: &str| {
        context
            .own_domains
            .iter()
            .any(|o| o.eq_ignore_ascii_case(d))
    };
    let html = message
        .body_html(0)
        .map(|h| h.into_owned())
        .unwrap_or_default();
    let text = message
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let headline = format!("{display}\n{subject}");
    let brand_in_headline = contains_any(&headline, BRAND_WORDS).is_some();
    if brand_in_headline {
        reasons.insert((2, "brand-words"));
    }
    if contains_any(&headline, ACTION_WORDS).is_some()
        || contains_any(&text, ACTION_WORDS).is_some()
    {
        reasons.insert((2, "action-words"));
    }
    // A display name speaking for Microsoft/IT from a domain that is neither
    // Microsoft's nor ours.
    if contains_any(&display, BRAND_WORDS).is_some()
        && !own(&from_domain)
        && !BRAND_HOMES.contains(&registrable(&from_domain).as_str())
    {
        reasons.insert((2, "display-name-impersonation"));
    }
    // Claims to be from our own domain, but the envelope sender is elsewhere
    // (until DMARC results exist, the plainest spoofing signal).
    let envelope_domain = domain_of(envelope_sender);
    if own(&from_domain) && !envelope_domain.is_empty() && !own(&envelope_domain) {
        reasons.insert((3, "own-domain-spoofed"));
    }
    let own_sites: Vec<String> = context.own_domains.iter().map(|o| registrable(o)).collect();
    let imitates_own = |domain: &str| {
        let domain = registrable(domain);
        own_sites.iter().any(|site| imitates(&domain, site))
    };
    if imitates_own(&from_domain) {
        reasons.insert((3, "own-domain-look-alike"));
    }
    let mut targets = Vec::new();
    for (href, visible) in links(&html) {
        let Some(target) = host_of(&href) else {
            continue;
        };
        if let Some(shown) = host_of(&visible).or_else(|| {
            let v = visible.trim().to_lowercase();
            let host = v.split(['/', '?', '#']).next().unwrap_or("").to_string();
            (host.contains('.') && !host.contains(' ')).then_some(host)
        }) {
            if registrable(&shown) != registrable(&target) {
                reasons.insert((3, "link-text-mismatch"));
            }
        }
        targets.push(target);
    }
    targets.extend(text_link_hosts(&text));
    for target in targets {
        if target.split('.').any(|label| label.starts_with("xn--")) {
            reasons.insert((3, "punycode-link"));
        }
        let home = registrable(&target);
        let imitates_brand = !BRAND_HOMES.contains(&home.as_str())
            && BRAND_DOMAINS.iter().any(|b| {
                home.contains(b)
                    || home
                        .replace('0', "o")
                        .replace("rn", "m")
                        .replace('1', "l")
                        .contains(b)
            });
        if imitates_brand || imitates_own(&home) {
            reasons.insert((3, "look-alike-link"));
        }
        if context.recent_domains.iter().any(|d| {
            home == d.to_lowercase() || target.ends_with(&format!(".{}", d.to_lowercase()))
        }) {
            reasons.insert((3, "recently-registered-link"));
        }
    }
    // Alignment: DMARC is the real test of "is this From genuine". Mail from
    // our own domains that is not failing is left alone (own notices).
    let content_signal = brand_in_headline || reasons.iter().any(|(_, r)| *r == "action-words");
    let mut unauthenticated = false;
    if let Some(auth) = signals.auth {
        match auth.dmarc.as_str() {
            "fail" if own(&from_domain) => {
                reasons.insert((4, "own-domain-dmarc-fail"));
            }
            "fail" => {
                reasons.insert((2, "dmarc-fail"));
            }
            "pass" => {}
            _ if own(&from_domain) => {}
            _ => {
                reasons.insert((1, "not-dmarc-aligned"));
            }
        }
        unauthenticated = auth.dmarc != "pass" && !(own(&from_domain) && auth.dmarc != "fail");
    }
    if signals.outage && content_signal && (signals.auth.is_none() || unauthenticated) {
        reasons.insert((1, "during-outage"));
    }
    let lower_html = html.to_lowercase();
    if lower_html.contains("<form")
        && (lower_html.contains("type=\"password\"")
            || lower_html.contains("type=password")
            || lower_html.contains("type='password'"))
    {
        reasons.insert((4, "credential-form"));
    }
    // An HTML attachment that is itself a login page.
    if message.attachments().any(|a| {
        a.content_type()
            .is_some_and(|ct| ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("html")))
            && String::from_utf8_lossy(a.contents())
                .to_lowercase()
                .contains("password")
    }) {
        reasons.insert((4, "credential-form"));
    }
    LureVerdict {
        score: reasons.iter().map(|(w, _)| w).sum(),
        reasons: reasons.iter().map(|(_, r)| r.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrable_domains_follow_the_public_suffix_list() {
        assert_eq!(registrable("login.example.co.jp"), "example.co.jp");
        assert_eq!(registrable("Mail.Example.COM."), "example.com");
        assert_ne!(registrable("a.co.jp"), registrable("b.co.jp"));
        assert_eq!(registrable("localhost"), "localhost");
    }

    #[test]
    fn look_alikes_of_a_domain() {
        for fake in [
            "examp1e.com",
            "exarnple.com",
            "exmaple.com",
            "example.co",
            "exampie.com",
        ] {
            assert!(imitates(fake, "example.com"), "{fake}");
        }
        for other in ["example.com", "sample.net", "examples-shop.com"] {
            assert!(!imitates(other, "example.com"), "{other}");
        }
        // One edit from a short name is just another domain.
        assert!(!imitates("abd.jp", "abc.jp"));
    }

    #[test]
    fn addresses_written_in_plain_text() {
        let text = "下記よりhttps://verify-center.top/a?id=1から確認。\n\
                    (see http://Portal.Example.com:8443/x) or <https://user@host.test/>";
        assert_eq!(
            text_link_hosts(text),
            ["verify-center.top", "portal.example.com", "host.test"]
        );
        assert!(text_link_hosts("http https:// httpx").is_empty());
    }

    #[test]
    fn links_survive_text_whose_lowercase_is_longer() {
        // 'İ' lower-cases to two characters: offsets from a Unicode-lowered
        // copy would not fit the original any more.
        let html = "İİİİ <a href=\"https://xn--mcrosoft-x0a.com/\">İİ https://login.microsoftonline.com</a> İ <a href='x'>y";
        let found = links(html);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "https://xn--mcrosoft-x0a.com/");
        let regression = include_bytes!("../../fuzz/regressions/mail_render/lure-lowercase-index");
        let _ = score(regression, &LureContext::default(), "a@b.example");
    }
}

//! The one place that knows what an SMTP mailbox looks like (RFC 5321 4.1.2,
//! RFC 6531 for SMTPUTF8), shared by intake, policy, delivery, DSNs and the
//! drill/alert senders. Any stage may use it; it imports nothing.
//!
//! Addresses are kept in their **wire form**: the local part as a dot-atom
//! when it is one, otherwise as a quoted string with `"` and `\` escaped.
//! smtp-proto hands intake the local part with its quotes removed
//! (`"john smith"@x` arrives as `john smith@x`), so [`canonical`] re-quotes
//! it; every writer of an SMTP command, header or DSN goes through
//! [`wire`]/[`path`], which also re-quotes an address stored raw by an older
//! version. Nothing writes an address into a command line by hand: a quoted
//! local part such as `"a@b> RET=FULL "` is then data, never parameters.

use std::fmt;

/// Why an address cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    NoDomain,
    EmptyLocalPart,
    BadDomain,
    /// Control characters (CR, LF, NUL, DEL…) have no representation at all.
    ControlCharacter,
    NonAscii,
    TooLong,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::NoDomain => "address needs a domain",
            AddressError::EmptyLocalPart => "empty local part",
            AddressError::BadDomain => "malformed domain",
            AddressError::ControlCharacter => "control characters in address",
            AddressError::NonAscii => "non-ASCII address needs SMTPUTF8",
            AddressError::TooLong => "address too long",
        })
    }
}

impl std::error::Error for AddressError {}

/// RFC 5321 4.5.3.1 sets 64 octets of local part and 255 of domain, and asks
/// implementations to impose no limits where they can: real mail has longer
/// local parts (Postfix takes them), so only the whole path is bounded.
const MAX_LOCAL: usize = 254;
const MAX_DOMAIN: usize = 255;

/// The wire form of an address as smtp-proto parsed it (quotes removed),
/// checked: a domain of LDH (or, with `smtputf8`, UTF-8) labels, a local part
/// with no control characters. The empty address (`<>`) is returned as is.
pub fn canonical(unquoted: &str, smtputf8: bool) -> Result<String, AddressError> {
    if unquoted.is_empty() {
        return Ok(String::new());
    }
    let (local, domain) = unquoted.rsplit_once('@').ok_or(AddressError::NoDomain)?;
    // `user@example.com.` is the same domain; senders write it (Postfix
    // accepts and strips the dot), so it is normalised, not refused.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    check_parts(local, domain, smtputf8)?;
    Ok(format!("{}@{domain}", quote_local_part(local)))
}

/// The wire form of a stored address, for an SMTP command, a header or a DSN.
/// Canonical addresses come back unchanged; one stored raw (before intake
/// quoted local parts) is quoted now; one that cannot be represented is an
/// error, never written. One set of checks for both: the stored form is
/// unquoted (if it is a wire form) and made canonical again.
pub fn wire(stored: &str) -> Result<String, AddressError> {
    if stored.is_empty() {
        return Ok(String::new());
    }
    let unquoted = unquoted(stored).unwrap_or_else(|| stored.to_string());
    canonical(&unquoted, !stored.is_ascii())
}

/// `<wire form>` for MAIL FROM / RCPT TO (`<>` for the null sender).
pub fn path(stored: &str) -> Result<String, AddressError> {
    Ok(format!("<{}>", wire(stored)?))
}

fn check_parts(local: &str, domain: &str, smtputf8: bool) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    if domain.is_empty() {
        return Err(AddressError::NoDomain);
    }
    if local.chars().chain(domain.chars()).any(char::is_control) {
        return Err(AddressError::ControlCharacter);
    }
    let ascii = local.is_ascii() && domain.is_ascii();
    if !smtputf8 && !ascii {
        return Err(AddressError::NonAscii);
    }
    if local.len() > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if !is_domain(domain) {
        return Err(AddressError::BadDomain);
    }
    Ok(())
}

/// Dot-separated labels of letters, digits and hyphens (a U-label's
/// non-ASCII characters count as letters), no empty label, no hyphen at a
/// label's edge, no trailing dot. Address literals are not accepted: no mail
/// for `[192.0.2.1]` is ours, and sender literals are refused with them.
fn is_domain(domain: &str) -> bool {
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// RFC 5321 4.1.2: a local part that is not a dot-atom must be sent quoted.
fn quote_local_part(local: &str) -> String {
    if is_dot_atom(local) {
        return local.to_string();
    }
    let mut quoted = String::with_capacity(local.len() + 2);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `"a b"@x` → `a b@x` (escapes removed), `a.b@x` as it is; `None` when
/// the local part is neither a dot-atom nor one well-formed quoted string.
fn unquoted(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if is_dot_atom(local) {
        return Some(address.to_string());
    }
    let inner = local.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len() + domain.len() + 1);
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    out.push('@');
    out.push_str(domain);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_quotes_what_is_not_a_dot_atom() {
        assert_eq!(
            canonical("john.smith@x.example", false).unwrap(),
            "john.smith@x.example"
        );
        assert_eq!(
            canonical("john smith@x.example", false).unwrap(),
            "\"john smith\"@x.example"
        );
        assert_eq!(
            canonical("a@b> RET=FULL NOTIFY=x @sender.test", false).unwrap(),
            "\"a@b> RET=FULL NOTIFY=x \"@sender.test"
        );
        assert_eq!(
            canonical("a\"b\\c@x.example", false).unwrap(),
            "\"a\\\"b\\\\c\"@x.example"
        );
        assert_eq!(
            canonical("a.@x.example", false).unwrap(),
            "\"a.\"@x.example"
        );
        assert_eq!(canonical("", false).unwrap(), "");
        assert_eq!(canonical("a@x.example.", false).unwrap(), "a@x.example");
        assert_eq!(
            canonical("ユーザー@例え.jp", true).unwrap(),
            "ユーザー@例え.jp"
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for (address, why) in [
            ("a@", AddressError::NoDomain),
            ("nodomain", AddressError::NoDomain),
            ("@x.example", AddressError::EmptyLocalPart),
            ("a@x.example..", AddressError::BadDomain),
            ("a@.x.example", AddressError::BadDomain),
            ("a@x..example", AddressError::BadDomain),
            ("a@-x.example", AddressError::BadDomain),
            ("a@x_y.example", AddressError::BadDomain),
            ("a@[192.0.2.1]", AddressError::BadDomain),
            ("a@x!y", AddressError::BadDomain),
            ("a\r\nRCPT@x.example", AddressError::ControlCharacter),
            ("a\0@x.example", AddressError::ControlCharacter),
            ("ü@x.example", AddressError::NonAscii),
        ] {
            assert_eq!(canonical(address, false), Err(why), "{address:?}");
        }
        assert_eq!(
            canonical(&format!("{}@x.example", "a".repeat(255)), false),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn wire_is_idempotent_and_requotes_raw_legacy_forms() {
        for stored in [
            "a@x.example",
            "\"john smith\"@x.example",
            "\"a\\\"b\"@x.example",
        ] {
            assert_eq!(wire(stored).unwrap(), stored);
            assert_eq!(wire(&wire(stored).unwrap()).unwrap(), stored);
        }
        // What an older version stored for a quoted sender.
        assert_eq!(
            path("a@b> RET=FULL NOTIFY=x @sender.test").unwrap(),
            "<\"a@b> RET=FULL NOTIFY=x \"@sender.test>"
        );
        assert_eq!(path("").unwrap(), "<>");
        assert!(wire("a\r\n@x.example").is_err());
        assert_eq!(
            wire("\"unterminated@x.example").unwrap(),
            "\"\\\"unterminated\"@x.example"
        );
    }
}

//! The one door to mail-parser for the stages that read message content
//! (the web reader and the lure scorer).
//!
//! Why a guard: our `mail_render` fuzz target made mail-parser 0.11.9 panic
//! on malformed nested MIME (`debug_assert!(false, "Invalid part ID…")` in
//! its `parsers/message.rs`). That assertion exists only in builds with debug
//! assertions — a release build carries on — but the next parser bug may be
//! a real panic. Mail is written by strangers, so a parser bug must
//! cost only the rendering of that one message — the web worker, the admin
//! page listing it, or the SMTP session scoring it must carry on. A message
//! the parser cannot handle is treated like one it cannot parse at all: the
//! caller shows or scores it as undecodable, and the raw bytes stay intact in
//! the spool and are still delivered.

//!
//! Charset labels that mail-parser does not know but mail clients decode
//! (Python's `email` does) are read with the nearest decoder it has:
//! `Shift_JISX0213`/`Shift_JIS-2004` as Shift_JIS (CP932) and
//! `EUC-JISX0213`/`EUC-JIS-2004` as EUC-JP. The JIS X 0213 additions outside
//! those sets show as replacement characters; everything else reads right,
//! where the unknown label made the whole part mojibake.

use std::borrow::Cow;

use mail_parser::{Message, MessageParser};

/// Unknown label (lower case) → the label of the decoder that reads it.
const CHARSET_ALIASES: &[(&[u8], &[u8])] = &[
    (b"shift_jisx0213", b"Shift_JIS"),
    (b"shift_jis-2004", b"Shift_JIS"),
    (b"euc-jisx0213", b"EUC-JP"),
    (b"euc-jis-2004", b"EUC-JP"),
];

/// Parse `raw`; `None` if mail-parser rejects it or panics on it. The
/// parser sees the top-level header block as a strict RFC 5322 reader does
/// (see [`header_defects`]) and the charset labels of [`CHARSET_ALIASES`]
/// under names it knows; the spooled bytes are never changed.
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    let prepared = match strict_headers(raw).0 {
        Cow::Borrowed(raw) => with_known_charsets(raw),
        Cow::Owned(rewritten) => Cow::Owned(with_known_charsets(&rewritten).into_owned()),
    };
    match prepared {
        Cow::Borrowed(raw) => parse_guarded(raw),
        Cow::Owned(rewritten) => parse_guarded(&rewritten).map(Message::into_owned),
    }
}

/// The name a malformed header line is shown under, so that no reader of
/// our parse takes `Sub ject: x` or a stray ` Subject: x` for the subject.
const MALFORMED: &[u8] = b"X-Breakwater-Malformed-Header: ";

/// The top-level header lines a strict RFC 5322 parser does not read as
/// fields (a name with space or control characters, no colon, a
/// continuation with no field before it), for a warning next to the
/// message: mail-parser alone would show `Sub ject: x` as the Subject.
pub fn header_defects(raw: &[u8]) -> Vec<String> {
    strict_headers(raw).1
}

/// The header block as a strict parser reads it: malformed lines renamed to
/// [`MALFORMED`], and a `Date:` whose zone is a name (`14:53:31 A`, `EST`)
/// given the numeric zone RFC 5322 4.3 assigns it — mail-parser's date
/// parser otherwise swallows the next header line (the Subject vanished).
fn strict_headers(raw: &[u8]) -> (Cow<'_, [u8]>, Vec<String>) {
    let mut defects = Vec::new();
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    let mut have_field = false;
    while at < raw.len() {
        let end = memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |p| at + p + 1);
        let line = &raw[at..end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            break; // end of the header block
        }
        let replacement: Option<Vec<u8>> = if content[0] == b' ' || content[0] == b'\t' {
            if have_field {
                None
            } else {
                defects.push(String::from_utf8_lossy(content).into_owned());
                Some([MALFORMED, content.trim_ascii_start(), b"\r\n"].concat())
            }
        } else {
            let name = content
                .iter()
                .position(|&b| b == b':')
                .map(|colon| &content[..colon]);
            match name {
                Some(name) if !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b)) => {
                    have_field = true;
                    if name.eq_ignore_ascii_case(b"date") {
                        numeric_zone(content).map(|fixed| [&fixed[..], b"\r\n"].concat())
                    } else {
                        None
                    }
                }
                _ => {
                    have_field = true;
                    defects.push(String::from_utf8_lossy(content).into_owned());
                    Some([MALFORMED, content, b"\r\n"].concat())
                }
            }
        };
        match replacement {
            Some(new_line) => out
                .get_or_insert_with(|| raw[..at].to_vec())
                .extend_from_slice(&new_line),
            None => {
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(line);
                }
            }
        }
        at = end;
    }
    match out {
        Some(mut out) => {
            out.extend_from_slice(&raw[at..]);
            (Cow::Owned(out), defects)
        }
        None => (Cow::Borrowed(raw), defects),
    }
}

/// `Date: … 14:53:31 A` → `Date: … 14:53:31 -0000` (military zones and
/// unknown names are "-0000", RFC 5322 4.3; the US names get their offsets).
fn numeric_zone(line: &[u8]) -> Option<Vec<u8>> {
    let trimmed = line.trim_ascii_end();
    let start = trimmed.iter().rposition(|&b| b == b' ' || b == b'\t')? + 1;
    let zone = &trimmed[start..];
    if zone.is_empty() || !zone.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let upper = zone.to_ascii_uppercase();
    let offset: &[u8] = match upper.as_slice() {
        b"UT" | b"GMT" | b"UTC" | b"Z" => b"+0000",
        b"EDT" => b"-0400",
        b"EST" | b"CDT" => b"-0500",
        b"CST" | b"MDT" => b"-0600",
        b"MST" | b"PDT" => b"-0700",
        b"PST" => b"-0800",
        _ => b"-0000",
    };
    Some([&trimmed[..start], offset].concat())
}

/// `raw` with the labels of [`CHARSET_ALIASES`] replaced where they name a
/// charset (after `charset=`, `charset="` or in an encoded word's `=?`), and
/// nowhere else. Borrowed (no copy) for the usual message that has none.
fn with_known_charsets(raw: &[u8]) -> Cow<'_, [u8]> {
    // Every alias ends in "0213" or "2004": one cheap scan rules them out.
    let finder = |needle: &[u8]| memchr::memmem::find(raw, needle).is_some();
    if !finder(b"0213") && !finder(b"2004") {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let names_charset = out.ends_with(b"=?")
            || out.ends_with(b"=\"")
                && out.len() >= 9
                && out[out.len() - 9..out.len() - 2].eq_ignore_ascii_case(b"charset")
            || out.len() >= 8 && out[out.len() - 8..].eq_ignore_ascii_case(b"charset=");
        if names_charset {
            if let Some((label, known)) = CHARSET_ALIASES.iter().find(|(label, _)| {
                raw.len() - i >= label.len() && raw[i..i + label.len()].eq_ignore_ascii_case(label)
            }) {
                out.extend_from_slice(known);
                i += label.len();
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    if out.len() == raw.len() && out == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(out)
    }
}

fn parse_guarded(raw: &[u8]) -> Option<Message<'_>> {
    match std::panic::catch_unwind(|| MessageParser::default().parse(raw)) {
        Ok(message) => message,
        Err(_) => {
            tracing::warn!(
                bytes = raw.len(),
                "mail-parser panicked on a message; showing it as undecodable"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 日本語 in Shift_JIS and EUC-JP, under the JIS X 0213 labels.
    #[test]
    fn jis_x_0213_labels_decode() {
        let sjis = b"\x93\xfa\x96\x7b\x8c\xea";
        let euc = b"\xc6\xfc\xcb\xdc\xb8\xec";
        for (label, bytes) in [
            ("Shift_JISX0213", &sjis[..]),
            ("shift_jis-2004", &sjis[..]),
            ("EUC-JISX0213", &euc[..]),
            ("EUC-JIS-2004", &euc[..]),
        ] {
            let mut raw = format!(
                "From: a@example.jp\r\nSubject: =?{label}?B?{}?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"{label}\"\r\n\r\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
            )
            .into_bytes();
            raw.extend_from_slice(bytes);
            raw.extend_from_slice(b" about Shift_JISX0213\r\n");
            let message = parse(&raw).expect("parses");
            assert_eq!(message.subject(), Some("日本語"), "{label}");
            assert_eq!(
                message.body_text(0).as_deref().map(str::trim_end),
                Some("日本語 about Shift_JISX0213"),
                "{label}: the label in the text is left alone"
            );
        }
        // A message without those labels is parsed from the caller's bytes.
        assert!(matches!(
            strict_headers(b"Subject: x\r\n\r\nhi").0,
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            with_known_charsets(b"Subject: x 2004\r\n\r\nhi"),
            Cow::Borrowed(_)
        ));
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    /// What Python's `email` (a strict reader) sees: no Subject for a
    /// malformed name or a stray continuation, and a military-zone Date does
    /// not eat the Subject after it.
    #[test]
    fn headers_read_as_a_strict_parser_reads_them() {
        for (raw, subject, defect) in [
            (&b"From: a@example.org\r\nSub ject: x\r\n\r\nbody\r\n"[..], None, Some("Sub ject: x")),
            (b"From: a@example.org\r\nSub\tject: tab\r\n\r\nbody\r\n", None, Some("Sub\tject: tab")),
            (b" Subject: stray\r\nFrom: a@example.org\r\n\r\nbody\r\n", None, Some(" Subject: stray")),
            (b"From: a@example.org\r\nDate: Tue, 1 Dec 2026 14:53:31 A\r\nSubject: after date\r\n\r\nbody\r\n", Some("after date"), None),
            (b"From: a@example.org\r\nDate: Tue, 1 Dec 2026 14:53:31 EST\r\nSubject: est\r\n\r\nbody\r\n", Some("est"), None),
            (b"From: a@example.org\nSubject: lf only\n folded\n\nbody\n", Some("lf only folded"), None),
        ] {
            let message = parse(raw).expect("parses");
            assert_eq!(message.subject(), subject, "{:?}", String::from_utf8_lossy(raw));
            let defects = header_defects(raw);
            assert_eq!(defects.first().map(String::as_str), defect, "{:?}", String::from_utf8_lossy(raw));
            // The From header is still read in every case.
            assert!(message.from().is_some(), "{:?}", String::from_utf8_lossy(raw));
        }
        let est = parse(b"Date: Tue, 1 Dec 2026 14:53:31 EST\r\n\r\nx").unwrap();
        // As Python computes it: 14:53:31 -0500.
        assert_eq!(est.date().unwrap().to_timestamp(), 1_796_154_811);
    }
}

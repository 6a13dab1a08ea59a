//! Turning a spooled message into something a browser may safely show.
//!
//! mail-parser (with `full_encoding`) decodes MIME, RFC 2047/2231 words and
//! the Japanese charsets (ISO-2022-JP, Shift_JIS/CP932, EUC-JP). HTML bodies
//! go through ammonia's allow-list; the result is then shown in a sandboxed
//! frame under a `default-src 'none'` policy, so a sanitiser miss still
//! cannot run script or fetch anything. Remote images are dropped unless the
//! reader asks for them; `cid:` images become `data:` URLs from the
//! message's own parts, so the frame needs no network at all.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mail_parser::{Message, MimeHeaders};

/// Inline images above this size are not embedded (the frame would balloon).
const MAX_INLINE_IMAGE: usize = 2 * 1024 * 1024;
/// How much body text a search looks through per message.
const SEARCH_TEXT_LIMIT: usize = 32 * 1024;

/// What the mailbox list and search need, computed once per message.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub subject: String,
    pub from_name: String,
    pub from_address: String,
    /// Date header (ms since epoch), if it parses.
    pub date_ms: Option<i64>,
    pub has_attachments: bool,
    /// Lower-cased subject, sender and body text, for search.
    pub search_text: String,
}

#[derive(Debug, Clone)]
pub struct AttachmentInfo {
    /// Position among the message's attachments (the download URL uses it).
    pub index: u32,
    pub file_name: String,
    pub content_type: String,
    pub size: usize,
}

/// A message decoded for display.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub date_ms: Option<i64>,
    pub text: Option<String>,
    pub has_html: bool,
    pub attachments: Vec<AttachmentInfo>,
    /// Header lines a strict parser does not read as fields (shown with a
    /// warning: other mail programs may display this message differently).
    pub malformed_headers: Vec<String>,
}

fn parse(raw: &[u8]) -> Option<Message<'_>> {
    crate::mime::parse(raw)
}

fn addresses(list: Option<&mail_parser::Address<'_>>) -> String {
    list.map(|a| {
        a.iter()
            .map(|addr| match (addr.name(), addr.address()) {
                (Some(name), Some(address)) => format!("{name} <{address}>"),
                (None, Some(address)) => address.to_string(),
                (Some(name), None) => name.to_string(),
                (None, None) => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

fn date_ms(message: &Message<'_>) -> Option<i64> {
    message.date().map(|d| d.to_timestamp() * 1000)
}

pub fn summarize(raw: &[u8]) -> Summary {
    let Some(message) = parse(raw) else {
        return Summary {
            subject: String::new(),
            search_text: String::from_utf8_lossy(&raw[..raw.len().min(SEARCH_TEXT_LIMIT)])
                .to_lowercase(),
            ..Summary::default()
        };
    };
    let from = message.from().and_then(|a| a.first());
    let subject = message.subject().unwrap_or("").to_string();
    let from_name = from.and_then(|a| a.name()).unwrap_or("").to_string();
    let from_address = from.and_then(|a| a.address()).unwrap_or("").to_string();
    let mut search_text = format!("{subject}\n{from_name}\n{from_address}\n");
    if let Some(text) = message.body_text(0) {
        let mut end = text.len().min(SEARCH_TEXT_LIMIT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        search_text.push_str(&text[..end]);
    }
    let has_attachments = message.attachments().any(|p| !is_inline_image(p));
    Summary {
        has_attachments,
        date_ms: date_ms(&message),
        subject,
        from_name,
        from_address,
        search_text: search_text.to_lowercase(),
    }
}

fn is_inline_image(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_id().is_some()
        && part
            .content_type()
            .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("image"))
        && part
            .content_disposition()
            .is_none_or(|d| !d.ctype().eq_ignore_ascii_case("attachment"))
}

fn content_type_of(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        })
        .unwrap_or_else(|| "application/octet-stream".into())
        .to_lowercase()
}

/// The message for display, and its sanitised HTML body (when it has one)
/// from the same parse: the message page needs both (the blocked-image count).
pub fn render_with_html(raw: &[u8], allow_remote_images: bool) -> (Rendered, Option<SafeHtml>) {
    let (mut rendered, html) = match parse(raw) {
        Some(message) => (
            render_parsed(&message),
            sanitize_parsed(&message, allow_remote_images),
        ),
        None => (undecodable(raw), None),
    };
    rendered.malformed_headers = crate::mime::header_defects(raw);
    (rendered, html)
}

pub fn render(raw: &[u8]) -> Rendered {
    let mut rendered = match parse(raw) {
        Some(message) => render_parsed(&message),
        None => undecodable(raw),
    };
    rendered.malformed_headers = crate::mime::header_defects(raw);
    rendered
}

/// What the reader shows for a message the parser rejects: its raw text.
fn undecodable(raw: &[u8]) -> Rendered {
    Rendered {
        text: Some(String::from_utf8_lossy(raw).into_owned()),
        ..Rendered::default()
    }
}

fn render_parsed(message: &Message<'_>) -> Rendered {
    let has_html = message.html_part(0).is_some_and(|part| part.is_text_html());
    let text = message
        .text_part(0)
        .filter(|part| !part.is_text_html())
        .and_then(|part| part.text_contents().map(str::to_string))
        .or_else(|| (!has_html).then(|| message.body_text(0).map(|t| t.into_owned()))?);
    let attachments = message
        .attachments()
        .enumerate()
        .filter(|(_, part)| !(has_html && is_inline_image(part)))
        .map(|(index, part)| AttachmentInfo {
            index: index as u32,
            file_name: safe_file_name(part.attachment_name().unwrap_or(""), index),
            content_type: content_type_of(part),
            size: part.len(),
        })
        .collect();
    Rendered {
        subject: message.subject().unwrap_or("").to_string(),
        from: addresses(message.from()),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        date_ms: date_ms(message),
        text,
        has_html,
        attachments,
        malformed_headers: Vec::new(),
    }
}

/// A download: the part's bytes, its checked content type and a safe name.
pub struct Download {
    pub content_type: String,
    pub file_name: String,
    pub data: Vec<u8>,
}

pub fn attachment(raw: &[u8], index: u32) -> Option<Download> {
    let message = parse(raw)?;
    let part = message.attachment(index)?;
    let content_type = content_type_of(part);
    // Only a plain `type/subtype` token goes into the header; anything odd
    // (parameters, injection attempts) downloads as octet-stream.
    let content_type = if is_mime_token(&content_type) {
        content_type
    } else {
        "application/octet-stream".into()
    };
    Some(Download {
        content_type,
        file_name: safe_file_name(part.attachment_name().unwrap_or(""), index as usize),
        data: part.contents().to_vec(),
    })
}

fn is_mime_token(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    value
        .split_once('/')
        .is_some_and(|(t, s)| token(t) && token(s))
}

/// A file name safe for `Content-Disposition` and for the user's disk: no
/// directories, no control characters, no quotes, no leading dots.
pub fn safe_file_name(name: &str, index: usize) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | ';' | ':' | '*' | '?' | '<' | '>' | '|'))
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .chars()
        .take(150)
        .collect();
    if cleaned.is_empty() {
        format!("attachment-{}", index + 1)
    } else {
        cleaned
    }
}

/// `Content-Disposition: attachment` with an ASCII fallback and the RFC
/// 5987/6266 UTF-8 form for Japanese names.
pub fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = file_name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// The sanitised HTML body and how many remote images were blocked.
pub struct SafeHtml {
    pub html: String,
    pub blocked_images: usize,
}

const SAFE_STYLE_PROPERTIES: &[&str] = &[
    "color",
    "background-color",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "text-align",
    "text-decoration",
    "text-indent",
    "line-height",
    "letter-spacing",
    "white-space",
    "vertical-align",
    "margin",
    "margin-top",
    "margin-bottom",
    "margin-left",
    "margin-right",
    "padding",
    "padding-top",
    "padding-bottom",
    "padding-left",
    "padding-right",
    "border",
    "border-top",
    "border-bottom",
    "border-left",
    "border-right",
    "border-color",
    "border-style",
    "border-width",
    "border-collapse",
    "border-spacing",
    "border-radius",
    "width",
    "height",
    "max-width",
    "min-width",
    "display",
];

fn is_raster_data_image(value: &str) -> bool {
    let lower = value.trim_start().to_ascii_lowercase();
    ["png", "gif", "jpeg", "jpg", "webp"]
        .iter()
        .any(|t| lower.starts_with(&format!("data:image/{t};base64,")))
}

pub fn safe_html(raw: &[u8], allow_remote_images: bool) -> Option<SafeHtml> {
    sanitize_parsed(&parse(raw)?, allow_remote_images)
}

fn sanitize_parsed(message: &Message<'_>, allow_remote_images: bool) -> Option<SafeHtml> {
    let part = message.html_part(0).filter(|p| p.is_text_html())?;
    let html = part.text_contents()?.to_string();
    // cid: → data: from the message's own parts.
    let mut inline: HashMap<String, String> = HashMap::new();
    for part in message.parts.iter() {
        let (Some(cid), Some(ct)) = (part.content_id(), part.content_type()) else {
            continue;
        };
        if !ct.ctype().eq_ignore_ascii_case("image") || part.len() > MAX_INLINE_IMAGE {
            continue;
        }
        let subtype = ct.subtype().unwrap_or("png").to_ascii_lowercase();
        if !["png", "gif", "jpeg", "jpg", "webp"].contains(&subtype.as_str()) {
            continue;
        }
        let data = base64_encode(part.contents());
        let key = cid.trim_matches(['<', '>']).to_string();
        inline.insert(key, format!("data:image/{subtype};base64,{data}"));
    }
    let inline = Arc::new(inline);
    let blocked = Arc::new(AtomicUsize::new(0));
    let mut builder = ammonia::Builder::default();
    builder
        .url_schemes(HashSet::from([
            "http", "https", "mailto", "tel", "cid", "data",
        ]))
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer"))
        .set_tag_attribute_value("a", "target", "_blank")
        .add_generic_attributes(["style"])
        .filter_style_properties(SAFE_STYLE_PROPERTIES.iter().copied().collect())
        .strip_comments(true)
        // `<title>` (and the rest of `<head>`'s text) is not body content:
        // dropped with its text, as script and style are, instead of
        // showing up as the body's first line.
        .clean_content_tags(HashSet::from(["script", "style", "title"]));
    {
        let inline = inline.clone();
        let blocked = blocked.clone();
        builder.attribute_filter(move |element, attribute, value| {
            let lower = value.trim_start().to_ascii_lowercase();
            if element == "img" && attribute == "src" {
                if lower.starts_with("cid:") {
                    let cid = value.trim_start()[4..].trim_matches(['<', '>']);
                    return inline
                        .get(cid)
                        .or_else(|| {
                            inline
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(cid))
                                .map(|(_, v)| v)
                        })
                        .map(|data| Cow::Owned(data.clone()));
                }
                if lower.starts_with("data:") {
                    return is_raster_data_image(value).then_some(Cow::Borrowed(value));
                }
                if !allow_remote_images {
                    blocked.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                return Some(Cow::Borrowed(value));
            }
            // data: and cid: are only for images.
            if lower.starts_with("data:") || lower.starts_with("cid:") {
                return None;
            }
            Some(Cow::Borrowed(value))
        });
    }
    let html = builder.clean(&html).to_string();
    Some(SafeHtml {
        html,
        blocked_images: blocked.load(Ordering::Relaxed),
    })
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html_message(html: &str) -> Vec<u8> {
        format!("From: a@example.org\r\nTo: b@example.com\r\nSubject: t\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n").into_bytes()
    }

    /// Every input the `mail_render` fuzz target ever broke on goes through
    /// the same calls as the fuzz target, without panicking.
    #[test]
    fn saved_fuzz_crashes_render_without_panicking() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/mail_render");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let raw = std::fs::read(entry.unwrap().path()).unwrap();
            let rendered = render(&raw);
            for a in &rendered.attachments {
                let _ = attachment(&raw, a.index);
            }
            let _ = render_with_html(&raw, true);
            let _ = summarize(&raw);
            let _ = crate::trust::lure::score(&raw, &Default::default(), "a@b.example");
            seen += 1;
        }
        assert!(seen >= 5, "regression inputs found: {seen}");
        // The one that trips mail-parser 0.11.9's debug assertion: in a
        // release build the parser carries on: the sender and the parts it
        // found are shown.
        let raw =
            include_bytes!("../../fuzz/regressions/mail_render/mail-parser-nested-digest-panic");
        let rendered = render(raw);
        assert_eq!(rendered.from, "aperson@dom.ain", "{rendered:?}");
        assert!(!rendered.attachments.is_empty(), "{rendered:?}");
    }

    /// `<title>` is head matter: neither it nor its text is shown as body.
    #[test]
    fn title_text_is_not_body_text() {
        let raw = html_message(
            "<html><head><title>Sign in now</title></head><body><p>Hello</p></body></html>",
        );
        let safe = safe_html(&raw, false).expect("html");
        assert!(!safe.html.contains("Sign in now"), "{}", safe.html);
        assert!(safe.html.contains("Hello"), "{}", safe.html);
    }

    #[test]
    fn sanitiser_strips_active_content_and_remote_images() {
        let raw = html_message(
            r#"<p onclick="x()">hi</p><script>alert(1)</script><img src="https://track.example/p.gif" onerror="alert(2)">
            <a href="javascript:alert(3)">j</a><a href="data:text/html,<script>alert(4)</script>">d</a>
            <a href="https://example.org/">ok</a><form action="https://evil.example/"><input name=p></form>
            <svg><script>alert(5)</script></svg><math><mtext><style><img src=x onerror=alert(6)></style></mtext></math>
            <meta http-equiv="refresh" content="0;url=https://evil.example/"><base href="https://evil.example/">
            <div style="color: red; position: fixed; background-image: url(https://evil.example/x)">s</div>
            <img src="/admin/queue">"#,
        );
        let safe = safe_html(&raw, false).expect("html");
        let out = safe.html.to_lowercase();
        for bad in [
            "<script",
            "onclick",
            "onerror",
            "javascript:",
            "data:text",
            "<form",
            "<input",
            "<meta",
            "<base",
            "evil.example",
            "position",
            "track.example",
            "/admin/queue",
        ] {
            assert!(!out.contains(bad), "{bad} survived: {out}");
        }
        assert!(out.contains(r#"href="https://example.org/""#), "{out}");
        assert!(out.contains("noopener noreferrer"), "{out}");
        assert!(out.contains(r#"target="_blank""#), "{out}");
        assert!(out.contains("color:red"), "{out}");
        assert_eq!(safe.blocked_images, 1);
        let allowed = safe_html(&raw, true).expect("html");
        assert!(allowed.html.contains("https://track.example/p.gif"));
        assert!(!allowed.html.contains("onerror"));
    }

    #[test]
    fn japanese_charsets_and_encoded_file_names_decode() {
        // ISO-2022-JP subject (RFC 2047 B) and body.
        let mut raw = b"From: =?ISO-2022-JP?B?GyRCOzNFRBsoQg==?= <yamada@example.jp>\r\nTo: b@example.com\r\nSubject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n\r\n".to_vec();
        raw.extend_from_slice(b"\x1b$B$3$s$K$A$O\x1b(B\r\n");
        let r = render(&raw);
        assert_eq!(r.subject, "テスト");
        assert!(r.from.starts_with("山田"), "{}", r.from);
        assert_eq!(r.text.as_deref().map(str::trim), Some("こんにちは"));
        // Shift_JIS body, RFC 2231 file name.
        let mut raw = b"From: a@example.jp\r\nSubject: sjis\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=Shift_JIS\r\n\r\n".to_vec();
        raw.extend_from_slice(b"\x82\xb1\x82\xf1\x82\xc9\x82\xbf\x82\xcd\r\n");
        raw.extend_from_slice(b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''%E8%AB%8B%E6%B1%82%E6%9B%B8.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n");
        let r = render(&raw);
        assert_eq!(r.text.as_deref().map(str::trim), Some("こんにちは"));
        assert_eq!(r.attachments.len(), 1);
        assert_eq!(r.attachments[0].file_name, "請求書.pdf");
        let d = attachment(&raw, 0).expect("part");
        assert_eq!(d.content_type, "application/pdf");
        assert_eq!(d.data, b"%PDF-");
    }

    #[test]
    fn euc_jp_body_and_q_encoded_subject_decode() {
        let mut raw = b"From: a@example.jp\r\nSubject: =?EUC-JP?Q?=A4=B3=A4=F3=A4=CB=A4=C1=A4=CF?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=EUC-JP\r\n\r\n".to_vec();
        raw.extend_from_slice(b"\xa4\xb3\xa4\xf3\xa4\xcb\xa4\xc1\xa4\xcf\r\n");
        let r = render(&raw);
        assert_eq!(r.subject, "こんにちは");
        assert_eq!(r.text.as_deref().map(str::trim), Some("こんにちは"));
    }

    #[test]
    fn file_names_cannot_escape_or_inject() {
        assert_eq!(safe_file_name("../../etc/passwd", 0), "passwd");
        assert_eq!(safe_file_name("..\\..\\boot.ini", 0), "boot.ini");
        assert_eq!(
            safe_file_name("a\"; filename=evil.exe\r\nX: y", 0),
            "a filename=evil.exeX y"
        );
        assert_eq!(safe_file_name("...", 2), "attachment-3");
        let cd = content_disposition("請求書 \"1\".pdf");
        assert!(
            cd.starts_with("attachment; filename=\"___ _1_.pdf\""),
            "{cd}"
        );
        assert!(cd.contains("filename*=UTF-8''%E8%AB%8B"), "{cd}");
        assert!(!is_mime_token("text/html\r\nX-Evil: 1"));
        assert!(is_mime_token("application/vnd.ms-excel"));
    }
}

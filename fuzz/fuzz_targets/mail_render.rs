//! The web reader's path for hostile mail: MIME decoding (mail-parser),
//! the HTML sanitiser, attachments, and the lure scorer must never panic,
//! and the sanitised HTML must never carry script or event handlers.
#![no_main]

use breakwater::trust::lure::{self, LureContext};
use breakwater::web::render;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rendered = render::render(data);
    for a in &rendered.attachments {
        let _ = render::attachment(data, a.index);
        let name = render::safe_file_name(&a.file_name, 0);
        assert!(!name.contains('/') && !name.contains('\\') && !name.contains('"'));
        assert!(render::content_disposition(&name).is_ascii());
    }
    for remote in [false, true] {
        if let Some(safe) = render::safe_html(data, remote) {
            let lower = safe.html.to_ascii_lowercase();
            assert!(!lower.contains("<script"), "script survived: {}", safe.html);
            // As text it is harmless; as a URL it is not. ammonia always
            // double-quotes attribute values, so look at every href/src value.
            for attribute in ["href=\"", "src=\""] {
                for (at, _) in lower.match_indices(attribute) {
                    // Only inside a tag: text content never holds a raw '<'
                    // (the serialiser escapes it), so "inside a tag" = the
                    // last '<' before this point comes after the last '>'.
                    let before = &lower[..at];
                    let in_tag = before.rfind('<').is_some_and(|lt| before.rfind('>').is_none_or(|gt| lt > gt));
                    if !in_tag {
                        continue;
                    }
                    let value = &lower[at + attribute.len()..];
                    let value = value.split('"').next().unwrap_or("");
                    assert!(
                        !value.trim_start().starts_with("javascript:"),
                        "javascript: URL survived: {}",
                        safe.html
                    );
                }
            }
        }
    }
    let _ = render::summarize(data);
    let context = LureContext {
        own_domains: vec!["example.com".into()],
        recent_domains: vec!["new.example".into()],
    };
    let _ = lure::score(data, &context, "sender@example.org");
});

//! Where the web reader may send a browser back to after sign-in or a
//! language switch: only a path of our own GET route table, rebuilt from its
//! parsed parts, never the caller's string as given.
//!
//! Why rebuild instead of filtering: browsers "repair" what they are sent.
//! `/<TAB>/evil.example` loses its tab and becomes the network path
//! `//evil.example`, `/\evil.example` becomes `//evil.example`, and so on. A
//! blacklist of such tricks is never complete; a target assembled from route
//! segments of `[A-Za-z0-9._~-]` and a re-encoded query cannot carry one.

use super::ROUTES;

/// Where to go when the requested target is not acceptable.
pub const DEFAULT_TARGET: &str = "/mail";

/// Routes that make no sense as a place to return to (sign-in pages, the
/// language switch, static files): a `next` naming them goes to the default.
const NOT_A_TARGET: &[&str] = &[
    "/login",
    "/login/totp",
    "/login/enrol",
    "/lang/{code}",
    "/static/",
];

/// The local target for `next` (already URL-decoded once, as a query value
/// is), or [`DEFAULT_TARGET`].
pub fn local_target(next: Option<&str>) -> String {
    next.and_then(parse)
        .unwrap_or_else(|| DEFAULT_TARGET.to_string())
}

fn parse(raw: &str) -> Option<String> {
    if raw.len() > 2048 || raw.contains('#') {
        return None;
    }
    let (path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (raw, None),
    };
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if !segments.iter().all(|s| is_plain_segment(s)) {
        return None;
    }
    let route = matching_get_route(&segments)?;
    if NOT_A_TARGET.iter().any(|excluded| {
        route == *excluded || (excluded.ends_with('/') && route.starts_with(excluded))
    }) {
        return None;
    }
    let mut target = format!("/{}", segments.join("/"));
    if let Some(query) = query {
        let mut out = form_urlencoded::Serializer::new(String::new());
        let mut any = false;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return None;
            }
            out.append_pair(&key, &value);
            any = true;
        }
        if any {
            target.push('?');
            target.push_str(&out.finish());
        }
    }
    Some(target)
}

/// A path segment as our routes write them: queue IDs, numbers, language
/// codes, page names. Nothing that a browser could reinterpret.
fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

fn matching_get_route(segments: &[&str]) -> Option<&'static str> {
    ROUTES.iter().find_map(|&(method, pattern)| {
        if method != "get" || pattern == "/" {
            return None;
        }
        let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
        let matches = parts.len() == segments.len()
            && parts
                .iter()
                .zip(segments)
                .all(|(part, segment)| part.starts_with('{') || part == segment);
        matches.then_some(pattern)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_routes_are_kept_and_rebuilt() {
        assert_eq!(local_target(Some("/mail")), "/mail");
        assert_eq!(
            local_target(Some("/mail?page=2&q=a%20b")),
            "/mail?page=2&q=a+b"
        );
        assert_eq!(
            local_target(Some("/mail/01KAB3ZT7W5XQ9Y2V4N6M8P0RS")),
            "/mail/01KAB3ZT7W5XQ9Y2V4N6M8P0RS"
        );
        assert_eq!(local_target(Some("/admin/audit")), "/admin/audit");
        // A query value cannot break out: it is re-encoded.
        assert_eq!(
            local_target(Some("/mail?q=%0d%0aSet-Cookie:x")),
            "/mail?q=%0D%0ASet-Cookie%3Ax"
        );
    }

    #[test]
    fn anything_a_browser_could_send_elsewhere_goes_to_the_default() {
        for hostile in [
            "/\t/evil.example",
            "/%09/evil.example",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/ /evil.example",
            "/\n/evil.example",
            "/\r/evil.example",
            "/\u{0}/evil.example",
            "https://evil.example/",
            "evil.example",
            "/mail/../../evil",
            "/mail/./x",
            "/nonexistent",
            "/mail#frag",
            "/mail?Next=//evil.example",
            "/login",
            "/lang/en",
            "/static/app.css",
            "",
            "/",
            "/\u{3000}/evil.example",
            "/%2f%2fevil.example",
        ] {
            assert_eq!(local_target(Some(hostile)), DEFAULT_TARGET, "{hostile:?}");
        }
        assert_eq!(local_target(None), DEFAULT_TARGET);
    }
}

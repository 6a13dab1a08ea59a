//! The page frame (header, outage banner, language switch), shared bits of
//! markup, and the embedded stylesheet and script.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::i18n::{Lang, LANG_COOKIE};
use super::{Shared, Viewer, WebState};

const STYLESHEET: &str = include_str!("assets/app.css");
const SCRIPT: &str = include_str!("assets/app.js");

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

pub async fn switch_language(
    State(state): State<Shared>,
    Path(code): Path<String>,
    Query(next): Query<Next>,
) -> Response {
    let lang = Lang::from_code(&code).unwrap_or(Lang::En);
    let cookie = format!(
        "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax{}",
        lang.code(),
        if state.config.cookies_secure() {
            "; Secure"
        } else {
            ""
        }
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&super::redirect::local_target(next.next.as_deref())),
    )
        .into_response()
}

pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A `<time>` the script re-renders in the browser's own zone and locale;
/// until then (or without script) it shows the configured offset.
pub fn time(state: &WebState, ms: i64) -> Markup {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(state.offset);
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    );
    let iso = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    html! { time datetime=(iso) data-ms=(ms) { (text) } }
}

pub fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.0} KB", b as f64 / 1024.0),
        b => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// `{}` placeholders filled in order.
pub fn fill(template: &str, values: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = template;
    for value in values {
        match rest.split_once("{}") {
            Some((before, after)) => {
                out.push_str(before);
                out.push_str(value);
                rest = after;
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// A translated template with markup (e.g. a `<time>`) in its `{}` places.
pub fn fill_markup(template: &str, values: &[Markup]) -> Markup {
    let mut pieces = template.split("{}");
    html! {
        (pieces.next().unwrap_or(""))
        @for (value, piece) in values.iter().zip(pieces) { (value) (piece) }
    }
}

/// The upstreams this viewer's mail goes through.
fn own_upstreams(delivery: &crate::delivery::DeliveryHandle, viewer: &Viewer) -> Vec<String> {
    viewer
        .account
        .addresses()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| delivery.upstream_for(d)))
        .collect()
}

/// Is this viewer in an outage: an upstream of theirs down or held, or a
/// drill running (`[send] mode = "outage"`)?
pub(super) fn outage_for(state: &WebState, viewer: &Viewer) -> bool {
    if state.drills.as_ref().and_then(|d| d.current()).is_some() {
        return true;
    }
    let Some(delivery) = state.delivery.as_ref() else {
        return false;
    };
    let mine = own_upstreams(delivery, viewer);
    delivery
        .status()
        .iter()
        .any(|s| mine.contains(&s.name) && s.state != "up")
}

/// The outage banner: upstreams this viewer's mail goes through that are
/// down or held (every upstream for admins).
fn banner(state: &WebState, viewer: &Viewer) -> Option<Markup> {
    let delivery = state.delivery.as_ref()?;
    let mine = own_upstreams(delivery, viewer);
    let lang = viewer.lang;
    let label = &state.config.upstream_label;
    let lines: Vec<Markup> = delivery
        .status()
        .into_iter()
        .filter(|s| viewer.account.admin || mine.contains(&s.name))
        .filter_map(|s| {
            let name = html! { (label) " (" (s.name) ")" };
            match s.state {
                "down" => {
                    let since = s
                        .down_since_ms
                        .map_or_else(|| html! {}, |ms| time(state, ms as i64));
                    Some(fill_markup(lang.t("banner.down"), &[name, since]))
                }
                "held" => Some(fill_markup(lang.t("banner.held"), &[name])),
                _ => None,
            }
        })
        .collect();
    let mut lines = lines;
    if let Some(drill) = state.drills.as_ref().and_then(|d| d.current()) {
        lines.insert(
            0,
            fill_markup(
                lang.t("banner.drill"),
                &[html! { (drill.id) }, time(state, drill.started_ms as i64)],
            ),
        );
    }
    if lines.is_empty() {
        return None;
    }
    Some(html! {
        div.banner role="status" {
            @for line in &lines { p { (line) } }
        }
    })
}

/// The frame of every signed-in page.
pub fn page(state: &WebState, viewer: &Viewer, title: &str, body: Markup) -> Response {
    let lang = viewer.lang;
    let other = if lang == Lang::En { "ja" } else { "en" };
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Breakwater" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/mail" { "Breakwater" }
                    nav {
                        a href="/mail" { (lang.t("nav.mailbox")) }
                        a href="/account" { (lang.t("nav.account")) }
                        @if state.outbox.as_ref().is_some_and(|o| o.mode() != crate::config::SendMode::Off) {
                            a href="/mail/compose" { (lang.t("nav.compose")) }
                            a href="/mail/sent" { (lang.t("nav.sent")) }
                        }
                        @if viewer.account.admin {
                            a href="/admin" { (lang.t("nav.admin")) }
                            a href="/admin/upstreams" { (lang.t("nav.upstreams")) }
                            a href="/admin/audit" { (lang.t("nav.audit")) }
                            a href="/admin/sessions" { (lang.t("nav.sessions")) }
                            a href="/admin/drills" { (lang.t("nav.drills")) }
                        }
                    }
                    div.who {
                        a.lang href={ "/lang/" (other) "?next=/mail" } lang=(other) { (lang.t("lang.switch")) }
                        span.user { (viewer.account.address) }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(viewer.session.csrf);
                            button type="submit" { (lang.t("logout")) }
                        }
                    }
                }
                @if let Some(banner) = banner(state, viewer) { (banner) }
                main { (body) }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page for visitors who are not signed in (login, errors).
pub fn bare_page(lang: Lang, title: &str, body: Markup) -> Markup {
    let other = if lang == Lang::En { "ja" } else { "en" };
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Breakwater" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body.bare {
                header.top {
                    span.brand { "Breakwater" }
                    div.who { a.lang href={ "/lang/" (other) "?next=/login" } lang=(other) { (lang.t("lang.switch")) } }
                }
                main { (body) }
            }
        }
    }
}

pub fn error_page(lang: Lang, status: StatusCode, key: &str) -> Response {
    let body = html! {
        h1 { (status.as_u16()) }
        p.error { (lang.t(key)) }
        p { a href="/mail" { (lang.t("message.back")) } }
    };
    (
        status,
        Html(bare_page(lang, lang.t(key), body).into_string()),
    )
        .into_response()
}

pub fn not_found(lang: Lang) -> Response {
    error_page(lang, StatusCode::NOT_FOUND, "error.not_found")
}

pub fn internal_error(lang: Lang, err: impl std::fmt::Display) -> Response {
    tracing::error!(error = %err, "web: request failed");
    error_page(lang, StatusCode::INTERNAL_SERVER_ERROR, "error.internal")
}

pub fn csrf_error(lang: Lang) -> Response {
    error_page(lang, StatusCode::FORBIDDEN, "error.csrf")
}

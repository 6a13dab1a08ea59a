//! A user's mailbox: the spooled (and, with retention, recently delivered)
//! messages addressed to their addresses, one message, its parts, its source.
//!
//! Access rule, checked on every request: the message must have one of the
//! viewer's addresses among its envelope recipients. Admins may open any
//! message, and each such view is audited as an admin view. Anything else
//! answers 404, exactly like an ID that does not exist, so IDs cannot be probed.

use std::collections::{BTreeSet, HashSet};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::i18n::Lang;
use super::pages::{self, fill, page, size, time};
use super::render;
use super::search;
use super::{Shared, Viewer, WebState};
use crate::envelope::{QueueId, RecipientStatus};
use crate::spool::SpooledMessage;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
}

/// Every message addressed to the viewer, newest first (every node's in a
/// cluster), and those this node holds (the ones its search index knows).
async fn mailbox_ids(
    state: &WebState,
    viewer: &Viewer,
) -> Result<(Vec<QueueId>, HashSet<QueueId>), crate::spool::SpoolError> {
    let mail = state.mail();
    let mut ids = BTreeSet::new();
    let mut here = HashSet::new();
    for address in viewer.account.addresses() {
        ids.extend(mail.ids_for_recipient(address).await?);
        if mail.spans_nodes() {
            here.extend(state.spool.ids_for_recipient(address).await?);
        }
    }
    if !mail.spans_nodes() {
        here.extend(ids.iter().copied());
    }
    Ok((ids.into_iter().rev().collect(), here))
}

/// What the status badge says, from the viewer's own recipients' states.
fn badge(
    state: &WebState,
    lang: Lang,
    message: &SpooledMessage,
    viewer: &Viewer,
) -> (String, &'static str) {
    let mine: Vec<RecipientStatus> = message
        .envelope
        .recipients
        .iter()
        .zip(&message.state.recipients)
        .filter(|(r, _)| viewer.account.owns(&r.address))
        .map(|(_, s)| s.status)
        .collect();
    if !mine.is_empty() && mine.iter().all(|s| *s == RecipientStatus::Delivered) {
        (lang.t("status.delivered").to_string(), "delivered")
    } else if mine.contains(&RecipientStatus::Failed) {
        (lang.t("status.failed").to_string(), "failed")
    } else if message.state.held {
        (lang.t("status.held").to_string(), "held")
    } else {
        (
            fill(lang.t("status.waiting"), &[&state.config.upstream_label]),
            "waiting",
        )
    }
}

/// The viewer's messages holding every term of `needle`, from the search
/// index, and the arrivals not in it yet (to be checked one by one); None when it cannot answer (not built yet, unusable, or a query
/// of punctuation only), and the mailbox is scanned instead.
fn indexed_search(
    state: &WebState,
    viewer: &Viewer,
    needle: &str,
) -> Option<(HashSet<QueueId>, HashSet<QueueId>)> {
    let index = state.search.as_ref().filter(|index| index.is_caught_up())?;
    let addresses: Vec<String> = viewer.account.addresses().map(str::to_string).collect();
    // Taken first: an arrival committed in between is then in both.
    let waiting = index.waiting();
    match crate::fsutil::run_blocking(|| index.search(&addresses, needle)) {
        Ok(found) => found.map(|found| (found, waiting)),
        Err(err) => {
            tracing::warn!(error = %err, "web: search index failed; scanning the mailbox");
            None
        }
    }
}

/// The slow way: every message's summary, decoded on first use.
async fn scan_search(state: &WebState, ids: Vec<QueueId>, needle: &str) -> Vec<QueueId> {
    let mut matching = Vec::new();
    for id in ids {
        let summary = state.summaries.get(&state.mail(), id).await;
        if summary.is_some_and(|s| s.search_text.contains(needle)) {
            matching.push(id);
        }
    }
    matching
}

pub async fn list(
    State(state): State<Shared>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Response {
    let lang = viewer.lang;
    let needle = query.q.trim().to_lowercase();
    let page_size = state.config.page_size;
    let result = async {
        let (ids, here) = mailbox_ids(&state, &viewer).await?;
        let mut scanned = false;
        let matching: Vec<QueueId> = if needle.is_empty() {
            ids
        } else {
            match indexed_search(&state, &viewer, &needle) {
                Some((found, waiting)) => {
                    let mut matching = Vec::new();
                    for id in ids {
                        if found.contains(&id) {
                            matching.push(id);
                        } else if waiting.contains(&id) || !here.contains(&id) {
                            // Arrived a moment ago, not in the index yet, or
                            // on another node (the index follows this one's
                            // spool): checked one by one.
                            let summary = state.summaries.get(&state.mail(), id).await;
                            if summary.is_some_and(|s| search::matches(&s.search_text, &needle)) {
                                matching.push(id);
                            }
                        }
                    }
                    matching
                }
                None => {
                    scanned = true;
                    scan_search(&state, ids, &needle).await
                }
            }
        };
        let total = matching.len();
        let mut rows = Vec::new();
        for id in matching.iter().skip(query.page * page_size).take(page_size) {
            let Ok(Some(message)) = state.mail().get(*id).await else {
                continue;
            };
            if let Some(summary) = state.summaries.get(&state.mail(), *id).await {
                rows.push((message, summary));
            }
        }
        Ok::<_, crate::spool::SpoolError>((total, rows, scanned))
    }
    .await;
    let (total, rows, scanned) = match result {
        Ok(found) => found,
        Err(err) => return pages::internal_error(lang, err),
    };
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        "web-mailbox",
        &viewer.account.address,
        &format!(
            "page={} q={:?} shown={}",
            query.page,
            query.q.trim(),
            rows.len()
        ),
    );
    let q = query.q.trim();
    let link = |page: usize| format!("/mail?page={page}&q={}", pages::url_encode(q));
    let body = html! {
        h1 { (lang.t("mailbox.title")) }
        form.search method="get" action="/mail" role="search" {
            input type="search" name="q" value=(q) placeholder=(lang.t("mailbox.search")) aria-label=(lang.t("mailbox.search"));
            button type="submit" { (lang.t("mailbox.search_button")) }
        }
        p.count { (fill(lang.t("mailbox.count"), &[&total.to_string()])) }
        @if scanned && state.search.as_ref().is_some_and(|index| !index.is_caught_up()) {
            p.note.search-building { (lang.t("mailbox.search_building")) }
        }
        @if state.mail().is_partial() {
            p.note.partial role="status" { (lang.t("mailbox.partial")) }
        }
        @if rows.is_empty() {
            p.empty { (lang.t("mailbox.empty")) }
        } @else {
            table.messages {
                thead { tr {
                    th { (lang.t("col.from")) }
                    th { (lang.t("col.subject")) }
                    th.date { (lang.t("col.date")) }
                    th.size { (lang.t("col.size")) }
                    th { (lang.t("col.status")) }
                } }
                tbody {
                    @for (message, summary) in &rows {
                        @let (badge_text, badge_class) = badge(&state, lang, message, &viewer);
                        tr {
                            td.from data-label=(lang.t("col.from")) {
                                @if summary.from_name.is_empty() { (summary.from_address) } @else { (summary.from_name) }
                            }
                            td.subject data-label=(lang.t("col.subject")) {
                                a href={ "/mail/" (message.id) } {
                                    @if summary.subject.is_empty() { (lang.t("message.no_subject")) } @else { (summary.subject) }
                                }
                                @if summary.has_attachments { " " span.clip title=(lang.t("col.attachment")) aria-label=(lang.t("col.attachment")) { "📎" } }
                                @if message.envelope.lure.as_ref().is_some_and(|v| v.is_flagged()) { " " span.badge.failed.lure title=(lang.t("lure.short")) { "⚠ " (lang.t("lure.short")) } }
                            }
                            td.date data-label=(lang.t("col.date")) { (time(&state, summary.date_ms.unwrap_or(message.envelope.received_at_ms as i64))) }
                            td.size data-label=(lang.t("col.size")) { (size(message.envelope.size)) }
                            td data-label=(lang.t("col.status")) { span class={ "badge " (badge_class) } { (badge_text) } }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if query.page > 0 { a href=(link(query.page - 1)) rel="prev" { "← " (lang.t("mailbox.newer")) } }
            @if (query.page + 1) * page_size < total { a href=(link(query.page + 1)) rel="next" { (lang.t("mailbox.older")) " →" } }
        }
    };
    page(&state, &viewer, lang.t("mailbox.title"), body)
}

/// Who is opening a message: one of its recipients, or an admin (audited as such).
#[derive(PartialEq, Eq)]
pub(super) enum Access {
    Recipient,
    Admin,
}

/// The message, who is asking, and its raw bytes — or the 404/500 page.
pub(super) async fn open(
    state: &WebState,
    viewer: &Viewer,
    id: &str,
) -> Result<(SpooledMessage, Access, Vec<u8>), Response> {
    let not_found = || pages::not_found(viewer.lang);
    let id: QueueId = id.parse().map_err(|_| not_found())?;
    let message = match state.mail().get(id).await {
        Ok(Some(message)) => message,
        Ok(None) => return Err(not_found()),
        Err(err) => return Err(pages::internal_error(viewer.lang, err)),
    };
    let access = if message
        .envelope
        .recipients
        .iter()
        .any(|r| viewer.account.owns(&r.address))
    {
        Access::Recipient
    } else if viewer.account.admin {
        Access::Admin
    } else {
        return Err(not_found());
    };
    let raw = read_raw(state, viewer.lang, message.id).await?;
    Ok((message, access, raw))
}

fn audit_view(
    state: &WebState,
    viewer: &Viewer,
    access: &Access,
    what: &str,
    id: QueueId,
    detail: &str,
) {
    let action = match access {
        Access::Recipient => format!("web-{what}"),
        Access::Admin => format!("web-admin-{what}"),
    };
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        &action,
        &id.to_string(),
        detail,
    );
}

async fn read_raw(state: &WebState, lang: Lang, id: QueueId) -> Result<Vec<u8>, Response> {
    state.mail().read_body(id).await.map_err(|err| match err {
        crate::spool::SpoolError::NotFound(_) => pages::not_found(lang),
        other => pages::internal_error(lang, other),
    })
}

#[derive(Deserialize)]
pub struct ViewQuery {
    #[serde(default)]
    images: u8,
    #[serde(default)]
    view: String,
}

pub async fn show(
    State(state): State<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<ViewQuery>,
) -> Response {
    let lang = viewer.lang;
    let (message, access, raw) = match open(&state, &viewer, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let images = query.images == 1;
    let (rendered, blocked) = tokio::task::block_in_place(|| {
        let (rendered, html) = render::render_with_html(&raw, images);
        (rendered, html.map_or(0, |h| h.blocked_images))
    });
    audit_view(&state, &viewer, &access, "message-view", message.id, "ok");
    let show_html = rendered.has_html && query.view != "text";
    let id = message.id;
    let (badge_text, badge_class) = badge(&state, lang, &message, &viewer);
    let subject = if rendered.subject.is_empty() {
        lang.t("message.no_subject").to_string()
    } else {
        rendered.subject.clone()
    };
    let body = html! {
        p { a href="/mail" { "← " (lang.t("message.back")) } }
        article.message {
            h1 { (subject) }
            dl.headers {
                dt { (lang.t("col.from")) } dd { (rendered.from) }
                dt { (lang.t("col.to")) } dd { (rendered.to) }
                @if !rendered.cc.is_empty() { dt { (lang.t("col.cc")) } dd { (rendered.cc) } }
                dt { (lang.t("col.date")) } dd { (time(&state, rendered.date_ms.unwrap_or(message.envelope.received_at_ms as i64))) }
                dt { (lang.t("col.status")) } dd { span class={ "badge " (badge_class) } { (badge_text) } }
            }
            @if let Some(auth) = message.envelope.auth.as_ref().filter(|a| a.dmarc_failed()) {
                div.lure role="alert" {
                    strong { (lang.t("auth.failed")) " " (auth.from_domain) }
                    @if auth.quarantined { " " (lang.t("auth.quarantined")) }
                }
            }
            @if !rendered.malformed_headers.is_empty() {
                div.lure role="alert" {
                    strong { (lang.t("headers.malformed")) }
                    ul { @for line in &rendered.malformed_headers { li { code { (line) } } } }
                }
            }
            @if let Some(verdict) = message.envelope.lure.as_ref().filter(|v| v.is_flagged()) {
                div.lure role="alert" {
                    strong { (lang.t("lure.title")) }
                    " " (lang.t("lure.explain"))
                    ul { @for reason in &verdict.reasons { li { (lang.t(&format!("lure.reason.{reason}"))) } } }
                }
            }
            nav.views {
                @if rendered.has_html {
                    @if show_html { a href={ "/mail/" (id) "?view=text" } { (lang.t("message.text_version")) } }
                    @else { a href={ "/mail/" (id) } { (lang.t("message.html_version")) } }
                }
                a href={ "/mail/" (id) "/source" } { (lang.t("message.source")) }
                @if state.outbox.as_ref().is_some_and(|o| o.mode() != crate::config::SendMode::Off) {
                    a.reply href={ "/mail/compose?reply=" (id) } { (lang.t("message.reply")) }
                    a.reply href={ "/mail/compose?reply=" (id) "&all=1" } { (lang.t("message.reply_all")) }
                    a.reply href={ "/mail/compose?forward=" (id) } { (lang.t("message.forward")) }
                }
            }
            @if show_html {
                @if blocked > 0 {
                    p.notice {
                        (fill(lang.t("message.images_blocked"), &[&blocked.to_string()])) " "
                        a.button href={ "/mail/" (id) "?images=1" } id="load-images" { (lang.t("message.load_images")) }
                    }
                }
                iframe.mailbody sandbox="allow-popups allow-popups-to-escape-sandbox" title=(lang.t("message.frame_title"))
                    src={ "/mail/" (id) "/body?images=" (u8::from(images)) } {}
            } @else {
                pre.text { (rendered.text.clone().unwrap_or_default()) }
            }
            @if !rendered.attachments.is_empty() {
                section.attachments {
                    h2 { (lang.t("message.attachments")) }
                    ul { @for a in &rendered.attachments {
                        li { a href={ "/mail/" (id) "/part/" (a.index) } download=(a.file_name) { (a.file_name) } " " span.meta { (a.content_type) ", " (size(a.size as u64)) } }
                    } }
                }
            }
        }
    };
    page(&state, &viewer, &subject, body)
}

/// The sanitised HTML body, framed by `show`. Its own CSP forbids scripts
/// and every fetch except inline (`data:`) images, and remote images only
/// when the reader asked for them.
pub async fn body_frame(
    State(state): State<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<ViewQuery>,
) -> Response {
    let lang = viewer.lang;
    let (message, access, raw) = match open(&state, &viewer, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let images = query.images == 1;
    let Some(safe) = tokio::task::block_in_place(|| render::safe_html(&raw, images)) else {
        return pages::not_found(lang);
    };
    if images {
        audit_view(
            &state,
            &viewer,
            &access,
            "remote-images",
            message.id,
            "loaded",
        );
    }
    let doc: Markup = html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                style { "body{font-family:system-ui,sans-serif;margin:8px;overflow-wrap:anywhere}img{max-width:100%;height:auto}" }
            }
            body { (PreEscaped(safe.html)) }
        }
    };
    let img_src = if images {
        "data: https: http:"
    } else {
        "data:"
    };
    let csp = format!(
        "default-src 'none'; img-src {img_src}; style-src 'unsafe-inline'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox"
    );
    let mut response = Html(doc.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).expect("ASCII policy"),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    response
}

pub async fn download(
    State(state): State<Shared>,
    viewer: Viewer,
    Path((id, index)): Path<(String, String)>,
) -> Response {
    let lang = viewer.lang;
    let Ok(index) = index.parse::<u32>() else {
        return pages::not_found(lang);
    };
    let (message, access, raw) = match open(&state, &viewer, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(part) = tokio::task::block_in_place(|| render::attachment(&raw, index)) else {
        return pages::not_found(lang);
    };
    audit_view(
        &state,
        &viewer,
        &access,
        "attachment-download",
        message.id,
        &part.file_name,
    );
    let disposition = render::content_disposition(&part.file_name);
    let mut response = part.data.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&part.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).expect("disposition is ASCII"),
    );
    // Should the file be opened in the browser anyway, it runs nothing.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    response
}

pub async fn source(
    State(state): State<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let (message, access, raw) = match open(&state, &viewer, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    audit_view(&state, &viewer, &access, "source-view", message.id, "ok");
    let text = String::from_utf8_lossy(&raw).into_owned();
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}.eml\"", message.id),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        text,
    )
        .into_response()
}

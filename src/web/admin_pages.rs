//! Admin pages: the spool with the admin API's filters, one message's
//! delivery state with actions, upstreams, the audit log and sessions.
//! Actions are POST + CSRF, go through the same code as the admin API
//! (`admin::apply_action`), and are audited.

use std::collections::BTreeMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::i18n::Lang;
use super::pages::{self, fill, page, size, time};
use super::reauth::{self, Proof};
use super::{check_csrf, Shared, Viewer};
use crate::control::filter::{self, status_of, Filter};
use crate::envelope::QueueId;

const PAGE: usize = 100;

#[derive(Deserialize)]
pub struct SpoolQuery {
    #[serde(flatten)]
    filter: Filter,
    after: Option<String>,
}

fn non_empty(filter: Filter) -> Filter {
    let keep = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Filter {
        status: keep(filter.status),
        sender: keep(filter.sender),
        recipient: keep(filter.recipient),
        domain: keep(filter.domain),
        upstream: keep(filter.upstream),
        older_than: keep(filter.older_than),
        newer_than: keep(filter.newer_than),
        subject: keep(filter.subject),
    }
}

fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.session.csrf); }
}

fn action_button(viewer: &Viewer, action: &str, confirm: bool) -> Markup {
    let lang = viewer.lang;
    html! {
        button type="submit" name="action" value=(action)
            data-confirm=[confirm.then(|| lang.t("admin.confirm"))] { (lang.t(&format!("action.{action}"))) }
    }
}

pub async fn spool(
    State(state): State<Shared>,
    viewer: Viewer,
    query: Result<Query<SpoolQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    let Ok(Query(query)) = query else {
        return pages::error_page(lang, axum::http::StatusCode::BAD_REQUEST, "error.not_found");
    };
    let filter = non_empty(query.filter);
    let shown = filter.clone();
    let compiled = match filter.compile() {
        Ok(compiled) => compiled,
        Err(problem) => {
            return page(
                &state,
                &viewer,
                lang.t("admin.title"),
                html! { p.error { (problem) } },
            )
        }
    };
    let after = query
        .after
        .as_deref()
        .and_then(|a| a.parse::<QueueId>().ok());
    // This node's mail: the page's actions act on what this node holds.
    let result = filter::select(
        &state.spool.this_node(),
        &compiled,
        state.delivery.as_ref(),
        after,
        PAGE,
    )
    .await;
    let (messages, next) = match result {
        Ok(found) => found,
        Err(err) => return pages::internal_error(lang, err),
    };
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let next_link = next.map(|id| {
        let mut query = serde_urlencoded_pairs(&shown);
        query.push(("after".into(), id.to_string()));
        format!(
            "/admin?{}",
            query
                .iter()
                .map(|(k, v)| format!("{k}={}", pages::url_encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        )
    });
    let body = html! {
        h1 { (lang.t("admin.title")) " (" (state.spool.len()) ")" }
        form.filters method="get" action="/admin" {
            label { (lang.t("col.status"))
                select name="status" {
                    option value="" { "—" }
                    @for s in filter::STATUSES { option value=(s) selected[shown.status.as_deref() == Some(s)] { (s) } }
                }
            }
            label { "sender" input name="sender" value=(text(&shown.sender)); }
            label { "recipient" input name="recipient" value=(text(&shown.recipient)); }
            label { "domain" input name="domain" value=(text(&shown.domain)); }
            label { "upstream" input name="upstream" value=(text(&shown.upstream)); }
            label { "older_than" input name="older_than" placeholder="30m" value=(text(&shown.older_than)); }
            label { "newer_than" input name="newer_than" placeholder="2h" value=(text(&shown.newer_than)); }
            label { "subject" input name="subject" value=(text(&shown.subject)); }
            button type="submit" { (lang.t("admin.filter")) }
        }
        table.messages {
            thead { tr {
                th { (lang.t("col.id")) } th { (lang.t("col.status")) } th { (lang.t("col.date")) }
                th { (lang.t("col.from")) } th { (lang.t("col.to")) } th.size { (lang.t("col.size")) }
            } }
            tbody { @for m in &messages {
                tr {
                    td data-label=(lang.t("col.id")) { a href={ "/admin/message/" (m.id) } { code { (m.id) } } }
                    td data-label=(lang.t("col.status")) { span class={ "badge " (status_of(m)) } { (status_of(m)) } }
                    td data-label=(lang.t("col.date")) { (time(&state, m.envelope.received_at_ms as i64)) }
                    td data-label=(lang.t("col.from")) { @if m.envelope.sender.is_empty() { "<>" } @else { (m.envelope.sender) } }
                    td data-label=(lang.t("col.to")) { (m.envelope.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>().join(", ")) }
                    td.size data-label=(lang.t("col.size")) { (size(m.envelope.size)) }
                }
            } }
        }
        @if let Some(link) = next_link { nav.pager { a href=(link) rel="next" { (lang.t("admin.next")) " →" } } }
    };
    page(&state, &viewer, lang.t("admin.title"), body)
}

fn serde_urlencoded_pairs(filter: &Filter) -> Vec<(String, String)> {
    let value = serde_json::to_value(filter).unwrap_or_default();
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

pub async fn message(
    State(state): State<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    let Ok(id) = id.parse::<QueueId>() else {
        return pages::not_found(lang);
    };
    let message = match state.spool.get(id).await {
        Ok(Some(message)) => message,
        Ok(None) => return pages::not_found(lang),
        Err(err) => return pages::internal_error(lang, err),
    };
    let env = &message.envelope;
    let upstreams = state
        .delivery
        .as_ref()
        .map(|d| d.upstreams_of(&message).join(", "))
        .unwrap_or_default();
    let body = html! {
        p { a href="/admin" { "← " (lang.t("admin.title")) } }
        @if let Some(done) = &done.done { p.notice role="status" { (fill(lang.t("admin.done"), &[done])) } }
        h1 { code { (id) } " " span class={ "badge " (status_of(&message)) } { (status_of(&message)) } }
        dl.headers {
            dt { (lang.t("col.from")) } dd { @if env.sender.is_empty() { "<>" } @else { (env.sender) } }
            dt { (lang.t("col.date")) } dd { (time(&state, env.received_at_ms as i64)) }
            dt { (lang.t("col.size")) } dd { (size(env.size)) }
            dt { "Client" } dd { (env.client.ip) " (" (env.client.helo) ")" @if let Some(tls) = &env.client.tls { ", " (tls.version) " " (tls.cipher) } }
            dt { (lang.t("col.upstream")) } dd { (upstreams) }
        }
        h2 { (lang.t("col.recipient")) }
        table.recipients {
            thead { tr { th { (lang.t("col.recipient")) } th { (lang.t("col.status")) } th { (lang.t("col.attempts")) } th { (lang.t("col.last_reply")) } } }
            tbody { @for (r, s) in env.recipients.iter().zip(&message.state.recipients) {
                tr {
                    td data-label=(lang.t("col.recipient")) { (r.address) }
                    td data-label=(lang.t("col.status")) { (format!("{:?}", s.status).to_lowercase()) }
                    td data-label=(lang.t("col.attempts")) { (s.attempts) }
                    td data-label=(lang.t("col.last_reply")) { code { (s.last_reply.clone().unwrap_or_default()) } }
                }
            } }
        }
        @if !message.state.history.is_empty() {
            h2 { "History" }
            table.history { tbody { @for a in message.state.history.iter().rev() {
                tr { td { (time(&state, a.ts_ms as i64)) } td { (a.outcome) } td { (a.relay) } td { code { (a.reply) } } }
            } } }
        }
        form.actions method="post" action={ "/admin/message/" (id) "/action" } {
            (csrf_field(&viewer))
            (action_button(&viewer, "hold", false))
            (action_button(&viewer, "release", false))
            (action_button(&viewer, "retry", false))
            (action_button(&viewer, "bounce", true))
            (action_button(&viewer, "delete", true))
        }
        p { a.button href={ "/mail/" (id) } { (lang.t("admin.view")) } }
    };
    page(&state, &viewer, &id.to_string(), body)
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(flatten)]
    proof: Proof,
}

const MESSAGE_ACTIONS: [&str; 5] = ["hold", "release", "retry", "delete", "bounce"];

pub async fn message_action(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let Ok(id) = id.parse::<QueueId>() else {
        return pages::not_found(lang);
    };
    if !MESSAGE_ACTIONS.contains(&form.action.as_str()) {
        return pages::error_page(lang, axum::http::StatusCode::BAD_REQUEST, "error.forbidden");
    }
    // Delete and bounce cannot be undone: confirm it's you.
    if matches!(form.action.as_str(), "delete" | "bounce") {
        let target = format!("/admin/message/{id}/action");
        let carry = [("action", form.action.as_str())];
        if let Err(challenge) = reauth::require(&state, &viewer, &target, &carry, &form.proof).await
        {
            return challenge;
        }
    }
    let outcome = crate::control::apply_action(
        &state.spool,
        state.delivery.as_ref(),
        &form.action,
        None,
        id,
    )
    .await;
    let result = match &outcome {
        Ok(true) => "ok".to_string(),
        Ok(false) => "not in the spool".to_string(),
        Err(err) => err.clone(),
    };
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        &format!("web-admin-{}", form.action),
        &id.to_string(),
        &result,
    );
    tracing::info!(actor = %viewer.account.address, action = %form.action, queue_id = %id, result = %result, "web admin action");
    state.summaries.forget(id);
    let target = if matches!(form.action.as_str(), "delete" | "bounce") && outcome == Ok(true) {
        "/admin".to_string()
    } else {
        format!(
            "/admin/message/{id}?done={}",
            pages::url_encode(&format!("{} {result}", form.action))
        )
    };
    Redirect::to(&target).into_response()
}

pub async fn upstreams(State(state): State<Shared>, viewer: Viewer) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    let (statuses, depth) = match &state.delivery {
        Some(delivery) => {
            let mut depth: BTreeMap<String, u64> = BTreeMap::new();
            if let Ok(list) = state.spool.list().await {
                for message in list {
                    for name in delivery.upstreams_of(&message) {
                        *depth.entry(name).or_default() += 1;
                    }
                }
            }
            (delivery.status(), depth)
        }
        None => (Vec::new(), BTreeMap::new()),
    };
    let body = html! {
        h1 { (lang.t("upstreams.title")) }
        @if statuses.is_empty() && depth.is_empty() { p.empty { (lang.t("upstreams.none")) } }
        table.upstreams {
            thead { tr {
                th { (lang.t("col.upstream")) } th { (lang.t("col.state")) } th { (lang.t("col.since")) }
                th { (lang.t("col.depth")) } th { (lang.t("col.error")) } th {}
            } }
            tbody {
                @for s in &statuses {
                    tr {
                        td data-label=(lang.t("col.upstream")) { code { (s.name) } }
                        td data-label=(lang.t("col.state")) { span class={ "badge " (s.state) } { (s.state) } }
                        td data-label=(lang.t("col.since")) { @if let Some(ms) = s.down_since_ms { (time(&state, ms as i64)) } }
                        td data-label=(lang.t("col.depth")) { (depth.get(&s.name).copied().unwrap_or(0)) }
                        td data-label=(lang.t("col.error")) { code { (s.last_error.clone().unwrap_or_default()) } }
                        td { (upstream_form(&viewer, &s.name)) }
                    }
                }
                @for (name, count) in depth.iter().filter(|(n, _)| !statuses.iter().any(|s| &s.name == *n)) {
                    tr {
                        td { code { (name) } } td { span.badge.up { "up" } } td {} td { (count) } td {}
                        td { (upstream_form(&viewer, name)) }
                    }
                }
            }
        }
        @if let Some(outbox) = state.outbox.as_ref().filter(|o| o.mode() != crate::config::SendMode::Off) {
            h2 { (lang.t("sending.title")) }
            p {
                @if outbox.stopped() { span.badge.failed { (lang.t("sending.stopped")) } }
                @else { span.badge.up { (lang.t("sending.open")) } }
                " " (lang.t("sending.explain"))
            }
            form.actions method="post" action="/admin/sending" {
                (csrf_field(&viewer))
                @if outbox.stopped() { (action_button(&viewer, "resume_sending", true)) }
                @else { (action_button(&viewer, "stop_sending", true)) }
            }
        }
    };
    page(&state, &viewer, lang.t("upstreams.title"), body)
}

fn upstream_form(viewer: &Viewer, name: &str) -> Markup {
    html! {
        form.actions method="post" action={ "/admin/upstreams/" (pages::url_encode(name)) "/action" } {
            (csrf_field(viewer))
            (action_button(viewer, "hold", true))
            (action_button(viewer, "release", false))
            (action_button(viewer, "flush", false))
        }
    }
}

pub async fn upstream_action(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let Some(delivery) = &state.delivery else {
        return pages::not_found(lang);
    };
    let result = match form.action.as_str() {
        "hold" => delivery.hold(&name).await.map(|_| "held".to_string()),
        "release" => delivery
            .release(&name)
            .await
            .map(|_| "released".to_string()),
        "flush" => delivery
            .flush_upstream(&name)
            .await
            .map(|n| format!("flushed {n}")),
        _ => {
            return pages::error_page(lang, axum::http::StatusCode::BAD_REQUEST, "error.forbidden")
        }
    };
    let result = result.unwrap_or_else(|e| format!("error: {e}"));
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        &format!("web-upstream-{}", form.action),
        &name,
        &result,
    );
    Redirect::to("/admin/upstreams").into_response()
}

/// The admins' switch for all users' sending (`[send]`), as `breakwater
/// sending stop|resume` and `POST /api/v1/sending`. Stopping is one click;
/// resuming is what an attacker holding an admin's cookie would do, so it
/// asks "confirm it's you". Either way a security event.
pub async fn sending_action(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let Some(outbox) = state.outbox.clone() else {
        return pages::not_found(lang);
    };
    let stop = match form.action.as_str() {
        "stop_sending" => true,
        "resume_sending" => false,
        _ => {
            return pages::error_page(lang, axum::http::StatusCode::BAD_REQUEST, "error.forbidden")
        }
    };
    if !stop {
        let carry = [("action", form.action.as_str())];
        if let Err(challenge) =
            reauth::require(&state, &viewer, "/admin/sending", &carry, &form.proof).await
        {
            return challenge;
        }
    }
    let word = if stop { "stopped" } else { "resumed" };
    let result = crate::fsutil::run_blocking(|| outbox.set_stopped(stop))
        .map(|()| word.to_string())
        .unwrap_or_else(|e| format!("error: {e}"));
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        &format!("web-sending-{}", if stop { "stop" } else { "resume" }),
        "sending",
        &result,
    );
    if result == word {
        state.security.raise(crate::security_events::SecurityEvent {
            kind: crate::security_events::EventKind::SendingSwitched,
            subject: "sending".into(),
            actor: viewer.account.address.clone(),
            ip: viewer.ip.clone(),
            detail: format!("all sending from the web reader {word} (web admin)"),
        });
    }
    Redirect::to("/admin/upstreams").into_response()
}

#[derive(Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
}

pub async fn audit(
    State(state): State<Shared>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    let actor = query.actor.filter(|s| !s.is_empty());
    let action = query.action.filter(|s| !s.is_empty());
    let entries = match tokio::task::block_in_place(|| {
        state
            .audit
            .query(actor.as_deref(), action.as_deref(), None, 500)
    }) {
        Ok(entries) => entries,
        Err(err) => return pages::internal_error(lang, err),
    };
    let body = html! {
        h1 { (lang.t("audit.title")) }
        form.filters method="get" action="/admin/audit" {
            label { (lang.t("col.actor")) input name="actor" value=(actor.clone().unwrap_or_default()); }
            label { (lang.t("col.action")) input name="action" value=(action.clone().unwrap_or_default()); }
            button type="submit" { (lang.t("admin.filter")) }
        }
        table.audit {
            thead { tr {
                th { (lang.t("col.date")) } th { (lang.t("col.actor")) } th { (lang.t("col.ip")) }
                th { (lang.t("col.action")) } th { (lang.t("col.target")) } th { (lang.t("col.result")) }
            } }
            tbody { @for e in entries.iter().rev() {
                tr {
                    td data-label=(lang.t("col.date")) { (time(&state, e.ts_ms as i64)) }
                    td data-label=(lang.t("col.actor")) { (e.actor) }
                    td data-label=(lang.t("col.ip")) { (e.ip) }
                    td data-label=(lang.t("col.action")) { code { (e.action) } }
                    td data-label=(lang.t("col.target")) { (e.target) }
                    td data-label=(lang.t("col.result")) { (e.result) }
                }
            } }
        }
    };
    page(&state, &viewer, lang.t("audit.title"), body)
}

pub async fn sessions(State(state): State<Shared>, viewer: Viewer) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang: Lang = viewer.lang;
    let list = state.sessions.list();
    let body = html! {
        h1 { (lang.t("sessions.title")) }
        table.sessions {
            thead { tr {
                th { (lang.t("col.user")) } th { (lang.t("col.ip")) } th { (lang.t("col.started")) }
                th { (lang.t("col.last_seen")) } th {}
            } }
            tbody { @for s in &list {
                tr {
                    td data-label=(lang.t("col.user")) { (s.user) @if s.handle == viewer.session.handle { " ★" } }
                    td data-label=(lang.t("col.ip")) { (s.ip) }
                    td data-label=(lang.t("col.started")) { (time(&state, s.created_ms as i64)) }
                    td data-label=(lang.t("col.last_seen")) { (time(&state, s.last_seen_ms as i64)) }
                    td {
                        form method="post" action="/admin/sessions/revoke" {
                            (csrf_field(&viewer))
                            input type="hidden" name="handle" value=(s.handle);
                            button type="submit" data-confirm=(lang.t("admin.confirm")) { (lang.t("action.revoke")) }
                        }
                    }
                }
            } }
        }
    };
    page(&state, &viewer, lang.t("sessions.title"), body)
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    handle: String,
    #[serde(flatten)]
    proof: Proof,
}

pub async fn revoke_session(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(viewer.lang);
    }
    let carry = [("handle", form.handle.as_str())];
    if let Err(challenge) = reauth::require(
        &state,
        &viewer,
        "/admin/sessions/revoke",
        &carry,
        &form.proof,
    )
    .await
    {
        return challenge;
    }
    let user = state.sessions.revoke(&form.handle);
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        "web-session-revoke",
        user.as_deref().unwrap_or("(unknown session)"),
        if user.is_some() { "ok" } else { "not found" },
    );
    Redirect::to("/admin/sessions").into_response()
}

pub async fn drills(State(state): State<Shared>, viewer: Viewer) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    let (current, reports) = match &state.drills {
        Some(d) => (d.current(), d.list()),
        None => (None, Vec::new()),
    };
    let body = html! {
        h1 { (lang.t("drills.title")) }
        @if let Some(d) = &current {
            section.notice {
                h2 { (lang.t("drills.running")) ": " (d.id) }
                p { code { (d.upstream) } " — " (d.reason) " — " (time(&state, d.started_ms as i64)) }
            }
        }
        @if reports.is_empty() && current.is_none() { p.empty { (lang.t("drills.none")) } }
        table.drills {
            thead { tr { th { "ID" } th { (lang.t("col.upstream")) } th { (lang.t("col.started")) } th { (lang.t("drills.drain")) } th { (lang.t("drills.problems")) } } }
            tbody { @for d in &reports {
                tr {
                    td { a href={ "/admin/drills/" (d.id) } { (d.id) } }
                    td { code { (d.upstream) } }
                    td { (time(&state, d.started_ms as i64)) }
                    td { @match &d.drain {
                        Some(drain) => { (drain.messages) " / " (drain.drain_ms.map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0))) }
                        None => { "…" }
                    } }
                    td { (d.problems.len()) }
                }
            } }
        }
    };
    page(&state, &viewer, lang.t("drills.title"), body)
}

pub async fn drill_report(
    State(state): State<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = viewer.require_admin() {
        return denied;
    }
    let lang = viewer.lang;
    let Some(drill) = state.drills.as_ref().and_then(|d| d.report(&id)) else {
        return pages::not_found(lang);
    };
    let drain = drill.drain.clone().unwrap_or_default();
    let body = html! {
        p { a href="/admin/drills" { "← " (lang.t("drills.title")) } }
        h1 { (drill.id) }
        dl.headers {
            dt { (lang.t("col.upstream")) } dd { code { (drill.upstream) } }
            dt { (lang.t("col.started")) } dd { (time(&state, drill.started_ms as i64)) " — " (drill.started_by) }
            @if let Some(end) = drill.finished_ms { dt { "Finished" } dd { (time(&state, end as i64)) " — " (drill.finished_by.clone().unwrap_or_default()) } }
            dt { "Queue" } dd { (drill.queue_at_start) " → max " (drill.max_queue_depth) }
            dt { (lang.t("drills.drain")) } dd {
                (drain.messages) " messages, " (drain.delivered) " delivered, " (drain.failed) " failed, " (drain.waiting) " waiting; "
                (drain.drain_ms.map_or("not finished".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0)))
            }
            dt { "Probe" } dd { @if drill.probe_id.is_none() { "—" } @else if drain.probe_delivered { "delivered ✓" } @else { "NOT confirmed" } }
            @if let Some(probe) = &drill.send_probe {
                dt { (lang.t("drills.send_probe")) } dd {
                    (probe.from) " → " (probe.to) ": "
                    @match (&probe.queue_id, &probe.outcome) {
                        (None, _) => span.badge.failed { "refused" },
                        (Some(_), None) => span.badge.queued { "queued" },
                        (Some(_), Some(outcome)) => span class={ "badge " (outcome) } { (outcome) },
                    }
                }
            }
            dt { (lang.t("drills.sent_by_users")) } dd { (drill.sent_by_users) }
        }
        h2 { (lang.t("drills.problems")) }
        @if drill.problems.is_empty() { p { "—" } }
        ul { @for p in &drill.problems { li.error { (p) } } }
        h2 { "Timeline" }
        table { tbody { @for (ms, what) in &drill.timeline { tr { td { (time(&state, *ms as i64)) } td { (what) } } } } }
        h2 { "Self-check" }
        table { tbody { @for f in &drill.self_check {
            tr { td { (f.subject) } td { code { (f.check) } } td { span class={ "badge " (format!("{:?}", f.level).to_lowercase()) } { (format!("{:?}", f.level).to_lowercase()) } } td { (f.detail) } }
        } } }
    };
    page(&state, &viewer, &drill.id, body)
}

//! Reply, reply all, forward and new message, while the mail host is down
//! (`[send] mode`). The page only gathers what the user wrote; every check
//! that matters (From among the user's own addresses, limits, header
//! injection, DKIM) is `sending::Outbox`'s, so a crafted form gets no
//! further than the page's own one would.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::mailbox::{self, Access};
use super::pages::{self, page};
use super::{check_csrf, Shared, Viewer};
use crate::config::SendMode;
use crate::sending::{Attachment, Draft, Refusal};

#[derive(Deserialize, Default)]
pub struct ComposeQuery {
    reply: Option<String>,
    #[serde(default)]
    all: u8,
    forward: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct SendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    cc: String,
    #[serde(default)]
    bcc: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    in_reply_to: String,
    /// Space-separated Message-IDs.
    #[serde(default)]
    references: String,
    /// The queue ID of a forwarded message: its attachments go along.
    #[serde(default)]
    forward: String,
}

/// May this viewer send now? (The outbox says so again at send time.)
fn sending_open(state: &Shared, viewer: &Viewer) -> Result<(), &'static str> {
    match state.outbox.as_ref().map(|o| o.mode()) {
        None | Some(SendMode::Off) => Err("compose.off"),
        _ if state.outbox.as_ref().is_some_and(|o| o.stopped()) => Err("compose.stopped"),
        Some(SendMode::Outage) if !pages::outage_for(state, viewer) => Err("compose.not_now"),
        _ => Ok(()),
    }
}

/// A message addressed to this viewer. An admin may read other people's
/// mail (audited), but not answer or forward it: that would send it on.
async fn own_message(
    state: &Shared,
    viewer: &Viewer,
    id: &str,
) -> Result<(crate::spool::SpooledMessage, Vec<u8>), Response> {
    match mailbox::open(state, viewer, id).await? {
        (message, Access::Recipient, raw) => Ok((message, raw)),
        (_, Access::Admin, _) => Err(pages::not_found(viewer.lang)),
    }
}

/// The addresses of a header, comma-separated.
fn listed(list: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    list.map(|l| {
        l.iter()
            .filter_map(|a| a.address.as_ref().map(|s| s.to_string()))
            .collect()
    })
    .unwrap_or_default()
}

fn prefixed(prefix: &str, subject: &str) -> String {
    let lower = subject.to_ascii_lowercase();
    if lower.starts_with(&format!("{}:", prefix.to_ascii_lowercase())) {
        subject.to_string()
    } else {
        format!("{prefix}: {subject}")
    }
}

/// The form, filled in from the message answered or forwarded.
async fn draft_from(
    state: &Shared,
    viewer: &Viewer,
    query: &ComposeQuery,
) -> Result<SendForm, Response> {
    let own: Vec<String> = viewer.account.addresses().map(str::to_string).collect();
    let mut form = SendForm {
        from: viewer.account.address.clone(),
        ..SendForm::default()
    };
    let Some(id) = query.reply.as_ref().or(query.forward.as_ref()) else {
        return Ok(form);
    };
    let (message, raw) = own_message(state, viewer, id).await?;
    let Some(parsed) = crate::mime::parse(&raw) else {
        return Ok(form);
    };
    // Answer from the address the message came to.
    if let Some(mine) = message
        .envelope
        .recipients
        .iter()
        .find(|r| viewer.account.owns(&r.address))
    {
        if let Some(address) = own.iter().find(|a| a.eq_ignore_ascii_case(&mine.address)) {
            form.from = address.clone();
        }
    }
    let subject = parsed.subject().unwrap_or("").to_string();
    let text = parsed
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let from = listed(parsed.from()).join(", ");
    if query.reply.is_some() {
        let reply_to = listed(parsed.reply_to());
        form.to = if reply_to.is_empty() {
            from.clone()
        } else {
            reply_to.join(", ")
        };
        if query.all == 1 {
            let others: Vec<String> = listed(parsed.to())
                .into_iter()
                .chain(listed(parsed.cc()))
                .filter(|a| !viewer.account.owns(a))
                .collect();
            form.cc = others.join(", ");
        }
        form.subject = prefixed("Re", &subject);
        if let Some(id) = parsed.message_id() {
            form.in_reply_to = id.to_string();
            let mut thread: Vec<String> = parsed
                .references()
                .as_text_list()
                .map(|l| l.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default();
            thread.push(id.to_string());
            form.references = thread.join(" ");
        }
        let quoted: String = text.lines().map(|l| format!("> {l}\n")).collect();
        form.text = format!("\n\n{from}:\n{quoted}");
    } else {
        form.subject = prefixed("Fwd", &subject);
        form.forward = message.id.to_string();
        form.text = format!(
            "\n\n---------- Forwarded message ----------\nFrom: {from}\nSubject: {subject}\n\n{text}"
        );
    }
    Ok(form)
}

fn form_markup(viewer: &Viewer, form: &SendForm, error: Option<&str>) -> Markup {
    let lang = viewer.lang;
    let own: Vec<&str> = viewer.account.addresses().collect();
    html! {
        h1 { (lang.t("compose.title")) }
        p.notice { (lang.t("compose.note")) }
        @if let Some(error) = error { p.error role="alert" { (lang.t("compose.refused")) " " (error) } }
        form.compose method="post" action="/mail/send" {
            input type="hidden" name="csrf" value=(viewer.session.csrf);
            input type="hidden" name="in_reply_to" value=(form.in_reply_to);
            input type="hidden" name="references" value=(form.references);
            input type="hidden" name="forward" value=(form.forward);
            label { (lang.t("compose.from"))
                select name="from" {
                    @for address in &own {
                        option value=(address) selected[address.eq_ignore_ascii_case(&form.from)] { (address) }
                    }
                }
            }
            label { (lang.t("col.to")) input type="text" name="to" value=(form.to) required; }
            label { (lang.t("col.cc")) input type="text" name="cc" value=(form.cc); }
            label { (lang.t("compose.bcc")) input type="text" name="bcc" value=(form.bcc); }
            label { (lang.t("compose.subject")) input type="text" name="subject" value=(form.subject); }
            textarea name="text" rows="16" { (form.text) }
            @if !form.forward.is_empty() { p.meta { (lang.t("compose.forward_attachments")) } }
            button type="submit" { (lang.t("compose.send")) }
        }
    }
}

pub async fn form(
    State(state): State<Shared>,
    viewer: Viewer,
    Query(query): Query<ComposeQuery>,
) -> Response {
    let lang = viewer.lang;
    if let Err(why) = sending_open(&state, &viewer) {
        let body = html! { h1 { (lang.t("compose.title")) } p.notice { (lang.t(why)) } };
        let mut response = page(&state, &viewer, lang.t("compose.title"), body);
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    match draft_from(&state, &viewer, &query).await {
        Ok(form) => page(
            &state,
            &viewer,
            lang.t("compose.title"),
            form_markup(&viewer, &form, None),
        ),
        Err(response) => response,
    }
}

/// Addresses typed into one field: separated by commas, semicolons or
/// line breaks (what people paste from Outlook).
fn split(field: &str) -> Vec<String> {
    field
        .split([',', ';', '\n'])
        .map(|a| {
            a.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim()
                .to_string()
        })
        .filter(|a| !a.is_empty())
        .collect()
}

pub async fn send(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Response {
    let lang = viewer.lang;
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let Some(outbox) = state.outbox.clone() else {
        return (StatusCode::FORBIDDEN, lang.t("compose.off")).into_response();
    };
    let mut attachments = Vec::new();
    if !form.forward.is_empty() {
        // The user's own access to the forwarded message is checked again.
        let (_, raw) = match own_message(&state, &viewer, &form.forward).await {
            Ok(found) => found,
            Err(response) => return response,
        };
        if let Some(parsed) = crate::mime::parse(&raw) {
            use mail_parser::MimeHeaders;
            for part in parsed.attachments() {
                attachments.push(Attachment {
                    name: part.attachment_name().unwrap_or("attachment").to_string(),
                    content_type: part
                        .content_type()
                        .map_or("application/octet-stream".into(), |c| {
                            format!("{}/{}", c.ctype(), c.subtype().unwrap_or("octet-stream"))
                        }),
                    data: part.contents().to_vec(),
                });
            }
        }
    }
    let draft = Draft {
        from: form.from.clone(),
        to: split(&form.to),
        cc: split(&form.cc),
        bcc: split(&form.bcc),
        subject: form.subject.clone(),
        text: form.text.clone(),
        in_reply_to: Some(form.in_reply_to.trim().to_string()).filter(|s| !s.is_empty()),
        references: form
            .references
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        attachments,
    };
    let own: Vec<String> = viewer.account.addresses().map(str::to_string).collect();
    let outage = pages::outage_for(&state, &viewer);
    let user = viewer.account.address.clone();
    match outbox.send(&user, &own, outage, draft.clone()).await {
        Ok(sent) => {
            let recipients: Vec<String> = draft
                .to
                .iter()
                .chain(&draft.cc)
                .chain(&draft.bcc)
                .cloned()
                .collect();
            state.audit(
                &user,
                &viewer.ip,
                "web-send",
                &sent.queue_id.to_string(),
                &format!(
                    "from {} to {}; {} bytes; Message-ID <{}>",
                    draft.from,
                    recipients.join(", "),
                    sent.size,
                    sent.message_id
                ),
            );
            let body = html! {
                h1 { (lang.t("compose.sent_title")) }
                p { (pages::fill(lang.t("compose.sent_text"), &[&sent.recipients.to_string(), &sent.queue_id.to_string()])) }
                p { a href="/mail" { "← " (lang.t("message.back")) } }
            };
            page(&state, &viewer, lang.t("compose.sent_title"), body)
        }
        Err(refusal) => {
            state.audit(
                &user,
                &viewer.ip,
                "web-send-refused",
                &draft.from,
                &refusal.to_string(),
            );
            let status = match refusal {
                Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Refusal::Off
                | Refusal::Stopped
                | Refusal::NotDuringOutage
                | Refusal::NotYourAddress(_) => StatusCode::FORBIDDEN,
                Refusal::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            let mut response = page(
                &state,
                &viewer,
                lang.t("compose.title"),
                form_markup(&viewer, &form, Some(&refusal.to_string())),
            );
            *response.status_mut() = status;
            response
        }
    }
}

//! Reply, reply all, forward and new message, while the mail host is down
//! (`[send] mode`). The page only gathers what the user wrote; every check
//! that matters (From among the user's own addresses, limits, header
//! injection, DKIM) is `sending::Outbox`'s, so a crafted form gets no
//! further than the page's own one would.
//!
//! The form is `multipart/form-data` (attachments); a plain urlencoded
//! post (no attachments) is taken too.

use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
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
    /// `[send] require_totp`: the code, at a session's first send.
    #[serde(default)]
    send_code: String,
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

fn form_markup(state: &Shared, viewer: &Viewer, form: &SendForm, error: Option<&str>) -> Markup {
    let lang = viewer.lang;
    let own: Vec<&str> = viewer.account.addresses().collect();
    let send = state
        .outbox
        .as_ref()
        .map(|o| o.config().clone())
        .unwrap_or_default();
    let ask_code = send.require_totp && !viewer.session.send_confirmed;
    html! {
        h1 { (lang.t("compose.title")) }
        p.notice {
            (lang.t("compose.note")) " "
            @if send.copy_to_mailbox { (lang.t("compose.copy_note")) } @else { (lang.t("compose.no_copy_note")) }
        }
        @if let Some(error) = error { p.error role="alert" { (lang.t("compose.refused")) " " (error) } }
        form.compose method="post" action="/mail/send" enctype="multipart/form-data" {
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
            label { (lang.t("compose.attach")) " (" (pages::fill(lang.t("compose.attach_limit"), &[&send.max_message_size.to_string()])) ")"
                input type="file" name="attachment" multiple;
            }
            @if ask_code {
                label { (lang.t("compose.send_code"))
                    input type="text" name="send_code" inputmode="numeric" autocomplete="one-time-code" required;
                }
            }
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
            form_markup(&state, &viewer, &form, None),
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

/// Why the posted form could not be read.
enum Unreadable {
    /// Larger than `[send] max_message_size` allows.
    TooLarge,
    Broken(String),
}

/// The form and its uploaded files, from a multipart or urlencoded post.
/// Uploads stop at `max` bytes in all: the outbox checks the message as
/// built, this only keeps a hostile post from filling the memory first.
async fn read_form(
    state: &Shared,
    request: Request,
    max: u64,
) -> Result<(SendForm, Vec<Attachment>), Unreadable> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !multipart {
        return Form::<SendForm>::from_request(request, state)
            .await
            .map(|Form(form)| (form, Vec::new()))
            .map_err(|e| Unreadable::Broken(e.body_text()));
    }
    let mut parts = Multipart::from_request(request, state)
        .await
        .map_err(|e| Unreadable::Broken(e.body_text()))?;
    let mut form = SendForm::default();
    let mut files = Vec::new();
    let mut total = 0u64;
    let broken = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Unreadable::TooLarge,
        _ => Unreadable::Broken(e.body_text()),
    };
    while let Some(mut field) = parts.next_field().await.map_err(broken)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "attachment" {
            let file_name = field.file_name().unwrap_or("").to_string();
            let content_type = field
                .content_type()
                .filter(|t| t.contains('/'))
                .unwrap_or("application/octet-stream")
                .to_string();
            let mut data = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(broken)? {
                total += chunk.len() as u64;
                if total > max {
                    return Err(Unreadable::TooLarge);
                }
                data.extend_from_slice(&chunk);
            }
            // An empty file input still posts a part without a name.
            if !file_name.is_empty() {
                files.push(Attachment {
                    name: file_name,
                    content_type,
                    data,
                });
            }
            continue;
        }
        let value = field.text().await.map_err(broken)?;
        total += value.len() as u64;
        if total > max {
            return Err(Unreadable::TooLarge);
        }
        let slot = match name.as_str() {
            "csrf" => &mut form.csrf,
            "from" => &mut form.from,
            "to" => &mut form.to,
            "cc" => &mut form.cc,
            "bcc" => &mut form.bcc,
            "subject" => &mut form.subject,
            "text" => &mut form.text,
            "in_reply_to" => &mut form.in_reply_to,
            "references" => &mut form.references,
            "forward" => &mut form.forward,
            "send_code" => &mut form.send_code,
            _ => continue,
        };
        *slot = value;
    }
    Ok((form, files))
}

/// The refusal in the viewer's language.
fn refusal_text(lang: super::Lang, refusal: &Refusal) -> String {
    use pages::fill;
    let field = |name: &'static str| match name {
        "subject" => lang.t("compose.subject"),
        "sender" => lang.t("compose.from"),
        "recipient list" => lang.t("send.field_recipients"),
        "reply reference" => lang.t("send.field_reference"),
        "attachment name" | "attachment type" => lang.t("compose.attach"),
        other => other,
    };
    match refusal {
        Refusal::Off => lang.t("compose.off").into(),
        Refusal::Stopped => lang.t("compose.stopped").into(),
        Refusal::NotDuringOutage => lang.t("compose.not_now").into(),
        Refusal::NotYourAddress(address) => fill(lang.t("send.not_yours"), &[address]),
        Refusal::NoKey { domain } => fill(lang.t("send.no_key"), &[domain]),
        Refusal::NoRecipients => lang.t("send.no_recipients").into(),
        Refusal::TooManyRecipients { max } => fill(lang.t("send.too_many"), &[&max.to_string()]),
        Refusal::BadRecipient { address, problem } => {
            fill(lang.t("send.bad_recipient"), &[address, problem])
        }
        Refusal::ControlCharacter(name) => fill(lang.t("send.control"), &[field(name)]),
        Refusal::RateLimited { max, retry_after } => fill(
            lang.t("send.rate"),
            &[
                &max.to_string(),
                &retry_after.as_secs().div_ceil(60).to_string(),
            ],
        ),
        Refusal::TooLarge { size, max } => fill(
            lang.t("send.too_large"),
            &[
                &bytesize::ByteSize::b(*size).to_string(),
                &bytesize::ByteSize::b(*max).to_string(),
            ],
        ),
        Refusal::Failed(why) => fill(lang.t("send.failed"), &[why]),
    }
}

/// `[send] require_totp`: the session's first send needs a current code.
/// Wrong codes count towards the account's lockout like sign-in failures.
fn second_factor(state: &Shared, viewer: &Viewer, code: &str) -> Result<(), &'static str> {
    let require = state
        .outbox
        .as_ref()
        .is_some_and(|o| o.config().require_totp);
    if !require || viewer.session.send_confirmed {
        return Ok(());
    }
    let user = &viewer.account.address;
    let Some(secret) = viewer.account.totp_secret.as_deref() else {
        return Err("send.totp_enrol");
    };
    if state.throttle.check(user, &viewer.ip).is_err() {
        return Err("send.totp_locked");
    }
    if code.trim().is_empty() {
        return Err("send.totp_needed");
    }
    if state.second_factor.verify(secret, user, code) {
        state.throttle.succeed(user);
        state.sessions.confirm_sending(&viewer.session.handle);
        return Ok(());
    }
    let (account_locked, address_locked) = state.throttle.fail(user, &viewer.ip);
    let locked = match (account_locked, address_locked) {
        (true, _) => Some("account"),
        (false, true) => Some("address"),
        _ => None,
    };
    state.security.sign_in_failed(user, &viewer.ip, locked);
    Err("send.totp_wrong")
}

/// The form again, with why it was not sent.
fn refused_page(
    state: &Shared,
    viewer: &Viewer,
    form: &SendForm,
    status: StatusCode,
    why: &str,
) -> Response {
    let mut response = page(
        state,
        viewer,
        viewer.lang.t("compose.title"),
        form_markup(state, viewer, form, Some(why)),
    );
    *response.status_mut() = status;
    response
}

pub async fn send(State(state): State<Shared>, viewer: Viewer, request: Request) -> Response {
    let lang = viewer.lang;
    let headers: HeaderMap = request.headers().clone();
    let Some(outbox) = state.outbox.clone() else {
        return (StatusCode::FORBIDDEN, lang.t("compose.off")).into_response();
    };
    let max = outbox.config().max_message_size.as_u64();
    let (form, uploads) = match read_form(&state, request, max).await {
        Ok(read) => read,
        Err(Unreadable::TooLarge) => {
            let why = refusal_text(lang, &Refusal::TooLarge { size: max + 1, max });
            return refused_page(
                &state,
                &viewer,
                &SendForm::default(),
                StatusCode::PAYLOAD_TOO_LARGE,
                &why,
            );
        }
        Err(Unreadable::Broken(why)) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let user = viewer.account.address.clone();
    if let Err(why) = second_factor(&state, &viewer, &form.send_code) {
        state.audit(
            &user,
            &viewer.ip,
            "web-send-refused",
            &form.from,
            super::Lang::En.t(why),
        );
        return refused_page(&state, &viewer, &form, StatusCode::FORBIDDEN, lang.t(why));
    }
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
    attachments.extend(uploads);
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
    let attached = draft.attachments.len();
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
                    "from {} to {}; {} bytes, {attached} attachments; Message-ID <{}>",
                    draft.from,
                    recipients.join(", "),
                    sent.size,
                    sent.message_id
                ),
            );
            let body = html! {
                h1 { (lang.t("compose.sent_title")) }
                p { (pages::fill(lang.t("compose.sent_text"), &[&sent.recipients.to_string(), &sent.queue_id.to_string()])) }
                p { a href="/mail/sent" { (lang.t("nav.sent")) } " · " a href="/mail" { "← " (lang.t("message.back")) } }
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
                Refusal::RateLimited { .. } => {
                    state.security.raise_at_most_every(
                        &format!("sending-limit:{}", user.to_ascii_lowercase()),
                        std::time::Duration::from_secs(3600),
                        crate::security_events::SecurityEvent {
                            kind: crate::security_events::EventKind::SendingLimitReached,
                            subject: user.clone(),
                            actor: user.clone(),
                            ip: viewer.ip.clone(),
                            detail: refusal.to_string(),
                        },
                    );
                    StatusCode::TOO_MANY_REQUESTS
                }
                Refusal::Off
                | Refusal::Stopped
                | Refusal::NotDuringOutage
                | Refusal::NotYourAddress(_) => StatusCode::FORBIDDEN,
                Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            refused_page(
                &state,
                &viewer,
                &form,
                status,
                &refusal_text(lang, &refusal),
            )
        }
    }
}

//! Sent: what the signed-in user sent through the web reader during the
//! outage, newest first, with each recipient's delivery status as the
//! spool has it now (and the copy for their own mailbox upstream).
//! A message no longer in the spool was finished: delivered to or
//! bounced by every recipient, then removed after its retention.

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::pages::{page, time};
use super::{Shared, Viewer};
use crate::envelope::RecipientStatus;

/// One recipient's line: address, status word, its CSS class, last reply.
struct Line {
    address: String,
    status: &'static str,
    class: &'static str,
    reply: String,
}

fn status_key(status: RecipientStatus) -> (&'static str, &'static str) {
    match status {
        RecipientStatus::Queued => ("sent.queued", "queued"),
        RecipientStatus::Deferred => ("sent.deferred", "deferred"),
        RecipientStatus::Delivered => ("sent.delivered", "delivered"),
        RecipientStatus::Failed => ("sent.failed", "failed"),
    }
}

/// Each recipient of `id` as the spool has it; None when it has left.
async fn lines(state: &Shared, id: crate::envelope::QueueId) -> Option<Vec<Line>> {
    let message = state.spool.get(id).await.ok().flatten()?;
    Some(
        message
            .envelope
            .recipients
            .iter()
            .zip(&message.state.recipients)
            .map(|(recipient, st)| {
                let (status, class) = status_key(st.status);
                Line {
                    address: recipient.address.clone(),
                    status,
                    class,
                    reply: st.last_reply.clone().unwrap_or_default(),
                }
            })
            .collect(),
    )
}

pub async fn list(State(state): State<Shared>, viewer: Viewer) -> Response {
    let lang = viewer.lang;
    let records = match &state.outbox {
        None => Vec::new(),
        Some(outbox) => {
            let user = viewer.account.address.clone();
            crate::fsutil::run_blocking(|| outbox.sent_by(&user)).unwrap_or_else(|err| {
                tracing::error!(error = %err, "web: cannot read the sent log");
                Vec::new()
            })
        }
    };
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let recipients = lines(&state, record.queue_id).await;
        let copy = match record.copy {
            Some(copy) => Some(lines(&state, copy).await),
            None => None,
        };
        rows.push((record, recipients, copy));
    }
    let body = html! {
        h1 { (lang.t("sent.title")) }
        p.note { (lang.t("sent.explain")) }
        @if rows.is_empty() {
            p.empty { (lang.t("sent.empty")) }
        } @else {
            table.messages.sent {
                thead { tr {
                    th { (lang.t("col.to")) }
                    th { (lang.t("col.subject")) }
                    th.date { (lang.t("col.date")) }
                    th { (lang.t("col.status")) }
                } }
                tbody {
                    @for (record, recipients, copy) in &rows {
                        tr data-queue-id=(record.queue_id) {
                            td.to data-label=(lang.t("col.to")) { (record.recipients.join(", ")) }
                            td.subject data-label=(lang.t("col.subject")) {
                                @if record.subject.is_empty() { (lang.t("message.no_subject")) } @else { (record.subject) }
                                br; span.meta { (lang.t("compose.from")) ": " (record.from) }
                            }
                            td.date data-label=(lang.t("col.date")) { (time(&state, record.at_ms as i64)) }
                            td.status data-label=(lang.t("col.status")) {
                                @match recipients {
                                    Some(lines) => {
                                        ul.recipients {
                                            @for line in lines {
                                                li { (line.address) " " span class={ "badge " (line.class) } title=(line.reply) { (lang.t(line.status)) } }
                                            }
                                        }
                                    }
                                    None => { span.badge.delivered { (lang.t("sent.finished")) } }
                                }
                                @if let Some(copy) = copy {
                                    p.meta.copy {
                                        (lang.t("sent.copy")) " "
                                        @match copy {
                                            Some(lines) => @for line in lines { span class={ "badge " (line.class) } { (lang.t(line.status)) } },
                                            None => span.badge.delivered { (lang.t("sent.finished")) },
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { a href="/mail" { "← " (lang.t("message.back")) } }
    };
    page(&state, &viewer, lang.t("sent.title"), body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_status_has_a_word() {
        use super::*;
        for status in [
            RecipientStatus::Queued,
            RecipientStatus::Deferred,
            RecipientStatus::Delivered,
            RecipientStatus::Failed,
        ] {
            let (key, _) = status_key(status);
            for lang in [super::super::Lang::En, super::super::Lang::Ja] {
                assert_ne!(lang.t(key), "?", "{key} is in the table");
            }
        }
    }
}

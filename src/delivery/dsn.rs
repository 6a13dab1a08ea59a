//! Delivery status notifications (RFC 3464 `multipart/report`), sent from
//! `<>` to the envelope sender when recipients fail for good, or once when
//! they have waited `[delivery] delay_warning` ("delayed", still trying).

use time::format_description::well_known::Rfc2822;

use crate::envelope::{DsnRet, Envelope, QueueId, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER};

/// What a report tells the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// The recipients failed for good (`Action: failed`).
    Failure,
    /// Not delivered yet, still being retried until then (`Action:
    /// delayed`, `Will-Retry-Until`); only the original's headers go back.
    Delay { retry_until_ms: u64 },
}

/// One failed recipient for the report.
pub struct FailedRecipient<'a> {
    pub address: &'a str,
    pub orcpt: Option<&'a str>,
    /// The reply or reason, starting with its enhanced status code when known.
    pub diagnostic: &'a str,
    pub remote_mta: Option<&'a str>,
}

/// Whether a failure DSN is owed for this recipient (RFC 3461 4.1: default
/// is failure notifications only; NEVER means none).
pub fn wants_failure_notice(notify: u8) -> bool {
    notify == 0 || (notify & NOTIFY_NEVER == 0 && notify & NOTIFY_FAILURE != 0)
}

/// Whether a delay notice is owed for this recipient: when the sender asked
/// for NOTIFY=DELAY, or gave no NOTIFY (RFC 3461 4.1 leaves delay notices
/// to the MTA then; Postfix sends them too).
pub fn wants_delay_notice(notify: u8) -> bool {
    notify == 0 || (notify & NOTIFY_NEVER == 0 && notify & NOTIFY_DELAY != 0)
}

fn rfc2822(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .unwrap_or_default()
}

/// The enhanced status code at the start of a diagnostic, if any.
fn status_of(diagnostic: &str, default: &str) -> String {
    diagnostic
        .split_whitespace()
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or(default)
        .to_string()
}

/// Build the DSN message (CRLF line endings, ready to spool). `original`
/// is the message, or only its start when `complete` is false (a large
/// message): then only its header section goes back, whatever RET asked.
pub fn build(
    hostname: &str,
    id: QueueId,
    envelope: &Envelope,
    failed: &[FailedRecipient<'_>],
    original: &[u8],
    complete: bool,
    kind: ReportKind,
) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc()
        .format(&Rfc2822)
        .unwrap_or_default();
    let arrival = rfc2822(envelope.received_at_ms);
    let (subject, summary, action, default_status, complete) = match kind {
        ReportKind::Failure => (
            "Undelivered Mail Returned to Sender".to_string(),
            "Your message could not be delivered to one or more recipients.\r\nIt is attached below.".to_string(),
            "failed",
            "5.0.0",
            complete,
        ),
        ReportKind::Delay { retry_until_ms } => (
            "Delayed Mail (still being retried)".to_string(),
            format!(
                "Your message has not been delivered to one or more recipients yet.\r\nIt is safe here and delivery is being retried until {}.\r\nYou do not need to send it again. Its headers are attached below.",
                rfc2822(retry_until_ms)
            ),
            "delayed",
            "4.0.0",
            false,
        ),
    };
    let boundary = format!("{id}/{hostname}");
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    out.push_str(&format!("To: {}\r\n", shown_path(&envelope.sender)));
    out.push_str(&format!("Subject: {subject}\r\n"));
    out.push_str(&format!("Date: {now}\r\n"));
    out.push_str(&format!("Message-ID: <{id}.dsn@{hostname}>\r\n"));
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    out.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\n{summary}\r\n\r\n"
    ));
    for rcpt in failed {
        out.push_str(&format!(
            "{}: {}\r\n",
            shown_path(rcpt.address),
            rcpt.diagnostic
        ));
    }
    out.push_str("\r\n");

    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(envid) = &envelope.dsn_envid {
        out.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    out.push_str(&format!("X-Breakwater-Queue-ID: {id}\r\n"));
    out.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for rcpt in failed {
        out.push_str("\r\n");
        if let Some(orcpt) = rcpt.orcpt {
            out.push_str(&format!(
                "Original-Recipient: {}\r\n",
                orcpt.replacen(';', "; ", 1)
            ));
        }
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            crate::address::wire(rcpt.address).unwrap_or_else(|_| "invalid@invalid".into())
        ));
        out.push_str(&format!("Action: {action}\r\n"));
        out.push_str(&format!(
            "Status: {}\r\n",
            status_of(rcpt.diagnostic, default_status)
        ));
        if let Some(mta) = rcpt.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        out.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", rcpt.diagnostic));
        if let ReportKind::Delay { retry_until_ms } = kind {
            out.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                rfc2822(retry_until_ms)
            ));
        }
    }
    out.push_str("\r\n");

    let headers_only = envelope.dsn_ret == Some(DsnRet::Hdrs) || !complete;
    let mut bytes = out.into_bytes();
    if headers_only {
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        let end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(original.len(), |p| p + 2);
        bytes.extend_from_slice(&original[..end]);
    } else {
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(original);
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// `<address>` in its wire form for a DSN header or text; an address that
/// cannot be represented (only in a spool written by an old version) is not
/// copied raw into the report.
fn shown_path(address: &str) -> String {
    crate::address::path(address).unwrap_or_else(|_| "<invalid@invalid>".into())
}

//! Giving up: recipients past `[delivery] max_age` fail, and every newly
//! failed recipient is reported to the sender once (RFC 3464, `dsn`).

use super::*;
use crate::envelope::{now_ms, Envelope, MessageState, QueueId, RecipientStatus};
use crate::spool::SpooledMessage;

impl Engine {
    /// Deferred recipients older than `max_age` fail (RFC 3463 4.4.7).
    pub(super) fn expire(&self, id: QueueId, envelope: &Envelope, state: &mut MessageState) {
        let age = now_ms().saturating_sub(envelope.received_at_ms);
        if age < self.config.max_age.as_millis() as u64 {
            return;
        }
        for (index, rcpt) in state.recipients.iter_mut().enumerate() {
            if !rcpt.status.is_final() {
                let last = rcpt
                    .last_reply
                    .clone()
                    .unwrap_or_else(|| "no attempt possible".into());
                rcpt.status = RecipientStatus::Failed;
                rcpt.last_reply = Some(format!(
                    "4.4.7 message expired after {}; last error: {last}",
                    humantime::format_duration(self.config.max_age)
                ));
                tracing::info!(queue_id = %id, to = %envelope.recipients[index].address, status = "expired", "delivery");
            }
        }
    }

    /// Queue one DSN for the recipients that failed since the last one
    /// (Postfix bounces failures at once, without waiting for deferred
    /// recipients). False if the DSN could not be queued.
    pub(super) async fn bounce_failures(
        &self,
        message: &SpooledMessage,
        state: &mut MessageState,
        body: &[u8],
        body_complete: bool,
    ) -> bool {
        let envelope = &message.envelope;
        let pending: Vec<usize> = (0..state.recipients.len())
            .filter(|&i| {
                state.recipients[i].status == RecipientStatus::Failed
                    && !state.recipients[i].dsn_done
            })
            .collect();
        let failed: Vec<dsn::FailedRecipient<'_>> = pending
            .iter()
            .filter(|&&i| dsn::wants_failure_notice(envelope.recipients[i].notify))
            .map(|&i| dsn::FailedRecipient {
                address: &envelope.recipients[i].address,
                orcpt: envelope.recipients[i].orcpt.as_deref(),
                diagnostic: state.recipients[i]
                    .last_reply
                    .as_deref()
                    .unwrap_or("5.0.0 delivery failed"),
                remote_mta: None,
            })
            .collect();
        if !self
            .send_report(
                message,
                &failed,
                body,
                body_complete,
                dsn::ReportKind::Failure,
            )
            .await
        {
            return false;
        }
        for i in pending {
            state.recipients[i].dsn_done = true;
        }
        true
    }

    /// Queue one report to the message's sender about `recipients`. False
    /// if it could not be queued. Nothing for no recipients, and never a
    /// report about a report (sender `<>`).
    pub(super) async fn send_report(
        &self,
        message: &SpooledMessage,
        recipients: &[dsn::FailedRecipient<'_>],
        body: &[u8],
        body_complete: bool,
        kind: dsn::ReportKind,
    ) -> bool {
        let envelope = &message.envelope;
        if recipients.is_empty() || envelope.sender.is_empty() {
            return true;
        }
        let report = dsn::build(
            &self.hostname,
            message.id,
            envelope,
            recipients,
            body,
            body_complete,
            kind,
        );
        let mut dsn_body = self.spool.new_body();
        let written = dsn_body.write(&report);
        let dsn_envelope = Envelope::local("", &envelope.sender, &self.hostname);
        let queued = match written {
            Ok(()) => self.spool.enqueue(dsn_body, dsn_envelope).await,
            Err(err) => Err(err.into()),
        };
        let what = match kind {
            dsn::ReportKind::Failure => "sender non-delivery notification queued",
            dsn::ReportKind::Delay { .. } => "sender delay notification queued",
        };
        match queued {
            Ok(dsn_id) => {
                tracing::info!(queue_id = %message.id, dsn = %dsn_id, to = %envelope.sender, recipients = recipients.len(), "{what}");
                true
            }
            Err(err) => {
                tracing::error!(queue_id = %message.id, error = %err, "cannot queue DSN; will retry");
                false
            }
        }
    }
}

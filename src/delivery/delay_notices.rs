//! Delay notices (RFC 3464 `Action: delayed`, Postfix's
//! `delay_warning_time`): a sender whose message has waited
//! `[delivery] delay_warning` for a recipient is told once that it is
//! delayed and still being retried, so they do not resend it or assume it
//! lost. Only for recipients whose sender asked (NOTIFY=DELAY) or gave no
//! NOTIFY, never to `<>`.
//!
//! Why a sweep and not the delivery attempt: during an outage a message
//! waiting for a down upstream is parked and not attempted at all, which is
//! exactly when the notice matters. The sweep walks the spool in queue-ID
//! order (IDs are ULIDs: arrival order) from where its last round stopped,
//! up to the messages not yet old enough, so a round reads only what has
//! come of age since; after a restart the first round walks from the start
//! and skips recipients already notified.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::envelope::{now_ms, QueueId};

/// Messages read per page of the walk.
const PAGE: usize = 500;

impl Engine {
    pub(super) async fn warn_delayed(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let delay = self.config.delay_warning;
        if delay.is_zero() {
            return;
        }
        // Often enough that a notice is at most a little late.
        let every = (delay / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        let mut cursor: Option<QueueId> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            match self.delay_round(cursor).await {
                Ok(reached) => cursor = reached.or(cursor),
                Err(err) => {
                    tracing::warn!(error = %err, "delivery: delay notices: cannot read the spool; next round tries again")
                }
            }
        }
    }

    /// One walk from `after`; returns the last message it is done with.
    async fn delay_round(
        &self,
        after: Option<QueueId>,
    ) -> Result<Option<QueueId>, crate::spool::SpoolError> {
        let old_before = now_ms().saturating_sub(self.config.delay_warning.as_millis() as u64);
        let mut done = None;
        let mut next = after;
        loop {
            let (page, more) = self.spool.page(next, PAGE, |_| true).await?;
            for message in &page {
                if message.envelope.received_at_ms > old_before {
                    return Ok(done);
                }
                if !self.notify_delayed(message).await {
                    // Not queued: this message and the rest wait for the next round.
                    return Ok(done);
                }
                done = Some(message.id);
            }
            match more {
                Some(last) => next = Some(last),
                None => return Ok(done),
            }
        }
    }

    /// Send the notice for `message`'s delayed recipients, if any is owed,
    /// and record that it went. False if it could not be queued.
    async fn notify_delayed(&self, message: &SpooledMessage) -> bool {
        let envelope = &message.envelope;
        if envelope.sender.is_empty() || message.state.held {
            return true;
        }
        let owed: Vec<usize> = (0..envelope.recipients.len())
            .filter(|&i| {
                let rcpt = &message.state.recipients[i];
                !rcpt.status.is_final()
                    && !rcpt.delay_notified
                    && dsn::wants_delay_notice(envelope.recipients[i].notify)
            })
            .collect();
        if owed.is_empty() {
            return true;
        }
        let stored = match self.spool.open_body(message.id).await {
            Ok(stored) => stored,
            Err(crate::spool::SpoolError::NotFound(_)) => return true,
            Err(err) => {
                tracing::warn!(queue_id = %message.id, error = %err, "delivery: delay notice: body unreadable; not sent");
                return true;
            }
        };
        let Ok(body) = attempt::with_intake_verdicts(stored, envelope, &self.hostname) else {
            return true;
        };
        let recipients: Vec<dsn::FailedRecipient<'_>> = owed
            .iter()
            .map(|&i| dsn::FailedRecipient {
                address: &envelope.recipients[i].address,
                orcpt: envelope.recipients[i].orcpt.as_deref(),
                diagnostic: message.state.recipients[i]
                    .last_reply
                    .as_deref()
                    .unwrap_or("4.4.1 not delivered yet: the upstream has not taken it"),
                remote_mta: None,
            })
            .collect();
        let retry_until_ms = envelope.received_at_ms + self.config.max_age.as_millis() as u64;
        let kind = dsn::ReportKind::Delay { retry_until_ms };
        if !self
            .send_report(message, &recipients, body.head(), false, kind)
            .await
        {
            return false;
        }
        // Recorded after the notice is queued: a crash in between sends
        // it twice, never not at all.
        let recorded = self
            .spool
            .update_state(message.id, |state| {
                for &i in &owed {
                    if let Some(rcpt) = state.recipients.get_mut(i) {
                        rcpt.delay_notified = true;
                    }
                }
            })
            .await;
        if let Err(err) = recorded {
            tracing::error!(queue_id = %message.id, error = %err, "delivery: cannot record the delay notice; it may be sent again");
        }
        true
    }
}

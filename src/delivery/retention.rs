//! `[web] retain_delivered`: a delivered message stays readable in the web
//! reader (finished, read-only) until its retention ends. `[send]
//! keep_sent`: mail a user wrote in the web reader stays, delivered or
//! not, so the Sent page can show each recipient's outcome.

use super::attempt::merge_attempt;
use super::*;
use crate::envelope::{now_ms, Envelope, MessageState, QueueId, RecipientStatus};

impl Engine {
    /// With `[web] retain_delivered`, a delivered message stays in the spool
    /// (finished, read-only) until its retention ends, so people can still
    /// read it in the web reader. True while it is to be kept.
    pub(super) async fn retain(
        &self,
        id: QueueId,
        envelope: &Envelope,
        before: &MessageState,
        state: &mut MessageState,
        recorded: usize,
    ) -> bool {
        let now = now_ms();
        let delivered = state
            .recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Delivered);
        let keep_ms = match envelope.sent_by {
            Some(_) => self
                .keep_sent_ms
                .max(self.retain_delivered_ms * u64::from(delivered)),
            None if delivered => self.retain_delivered_ms,
            None => 0,
        };
        let until = match state.retain_until_ms {
            Some(until) => until,
            None if keep_ms > 0 => {
                let until = now + keep_ms;
                state.retain_until_ms = Some(until);
                state.next_attempt_ms = until;
                let merged = self
                    .spool
                    .update_state(id, |current| {
                        merge_attempt(current, before, state, recorded)
                    })
                    .await;
                match merged.map(|found| found.is_some()) {
                    Ok(true) => {
                        tracing::info!(queue_id = %id, until_ms = until, "retained for the web reader")
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(queue_id = %id, error = %err, "cannot record retention; it will be repeated")
                    }
                }
                return true;
            }
            None => return false,
        };
        if now >= until {
            return false;
        }
        // Woken early (an operator retry, a flush): sleep on until the end.
        let _ = self.spool.park(id, until).await;
        true
    }
}

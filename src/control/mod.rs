//! Operator control of the spool, shared by every door an operator uses:
//! the admin JSON API (and through it the `breakwater queue` CLI) and the
//! web admin pages. One implementation of each action and one filter, so
//! the doors cannot drift apart. Callers audit what they did; this module
//! only acts.
//!
//! May import: spool, delivery (its handle, for bounces), envelope, config.

pub mod filter;

use crate::envelope::{now_ms, QueueId};

/// Apply one operator action to one message. Ok(false): not in the spool.
pub async fn apply_action(
    spool: &crate::spool::Spool,
    delivery: Option<&crate::delivery::DeliveryHandle>,
    action: &str,
    route: Option<&str>,
    id: QueueId,
) -> Result<bool, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    // Each change is made to the state as it is at that moment, under the
    // message's lock (never a copy read earlier), so an attempt finishing
    // meanwhile cannot undo it, nor it the attempt's outcome.
    let change: Box<dyn FnOnce(&mut crate::envelope::MessageState) + Send> = match action {
        "hold" => Box::new(|s| s.held = true),
        "release" => Box::new(|s| {
            s.held = false;
            s.next_attempt_ms = now_ms();
        }),
        "retry" => Box::new(|s| s.next_attempt_ms = now_ms()),
        "requeue" => {
            let route = route.map(str::to_string);
            Box::new(move |s| {
                s.route = route;
                s.next_attempt_ms = now_ms();
            })
        }
        "delete" => {
            return spool
                .remove(id, "deleted by administrator")
                .await
                .map_err(|e| err(&e))
        }
        "bounce" => {
            let Some(delivery) = delivery else {
                return Err("delivery is disabled; cannot send a DSN".into());
            };
            return delivery
                .bounce(id, "message returned by the administrator")
                .await
                .map_err(|e| err(&e));
        }
        other => return Err(format!("unknown action {other:?}")),
    };
    let found = spool
        .update_state(id, |state| {
            change(state);
            state.operator_changes += 1;
        })
        .await
        .map_err(|e| err(&e))?;
    Ok(found.is_some())
}

//! Keeps the search index following the spool: a full pass, then the
//! spool's arrival and removal feed (see the parent module for why).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::{Indexed, SearchIndex};
use crate::envelope::QueueId;
use crate::spool::{Spool, SpoolEvent};

/// Arrivals are committed (made searchable) at least this often.
const COMMIT_EVERY: Duration = Duration::from_secs(2);
/// Arrivals indexed at once, and messages per page of the full pass.
const BATCH: usize = 500;

enum FeedEnd {
    Lagged,
    Stopped,
}

/// Run until `shutdown` (or until the spool's feed closes).
pub async fn follow(index: Arc<SearchIndex>, spool: Spool, mut shutdown: watch::Receiver<bool>) {
    // Subscribed before the pass: what happens during it is in the feed.
    let mut events = spool.subscribe();
    loop {
        let started = Instant::now();
        match full_pass(&index, &spool, &shutdown).await {
            Ok((added, deleted)) => {
                tracing::info!(
                    added,
                    deleted,
                    took_ms = started.elapsed().as_millis() as u64,
                    "web: search index follows the spool"
                );
                index.set_caught_up();
            }
            Err(err) => {
                tracing::error!(error = %err, "web: search index pass failed; searches scan the mailbox; trying again in a minute");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
        match follow_feed(&index, &spool, &mut events, &mut shutdown).await {
            FeedEnd::Lagged => {
                tracing::warn!("web: search index fell behind the spool's feed; another full pass");
                events = events.resubscribe();
            }
            FeedEnd::Stopped => {
                if let Err(err) = index.commit() {
                    tracing::warn!(error = %err, "web: search index commit at shutdown failed (the next start catches up)");
                }
                return;
            }
        }
    }
}

/// Add every spooled message the index lacks and delete every document
/// whose message is gone. Returns (added, deleted).
async fn full_pass(
    index: &SearchIndex,
    spool: &Spool,
    shutdown: &watch::Receiver<bool>,
) -> Result<(usize, usize), super::SearchError> {
    let mut indexed: HashSet<QueueId> = index.all_ids()?.into_iter().collect();
    let (mut added, mut after) = (0, None);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (page, next) = spool
            .page(after, BATCH, |_| true)
            .await
            .map_err(|err| super::SearchError(err.to_string()))?;
        let worked = Instant::now();
        let missing: Vec<_> = page
            .into_iter()
            .filter(|message| !indexed.remove(&message.id))
            .collect();
        for message in &missing {
            let recipients = message
                .envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect();
            added += add(index, spool, message.id, recipients).await? as usize;
        }
        if !missing.is_empty() {
            index.commit()?;
            // As long a pause as the page took: building the index for a
            // million messages takes at most half a core from intake.
            tokio::time::sleep(worked.elapsed()).await;
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    // What is left was indexed but is no longer in the spool.
    let deleted = indexed.len();
    for id in indexed {
        index.delete(id);
    }
    index.commit()?;
    Ok((added, deleted))
}

/// Index one message; false when it left the spool meanwhile.
async fn add(
    index: &SearchIndex,
    spool: &Spool,
    id: QueueId,
    recipients: Vec<String>,
) -> Result<bool, super::SearchError> {
    let Some(summary) = super::super::summaries::summarize(spool, id).await else {
        return Ok(false);
    };
    index.add(&Indexed {
        id,
        recipients,
        text: &summary.search_text,
    })?;
    Ok(true)
}

async fn follow_feed(
    index: &SearchIndex,
    spool: &Spool,
    events: &mut tokio::sync::broadcast::Receiver<SpoolEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> FeedEnd {
    let mut arrived: Vec<QueueId> = Vec::new();
    let mut dirty = false;
    let mut tick = tokio::time::interval(COMMIT_EVERY);
    loop {
        let flush_now = tokio::select! {
            event = events.recv() => match event {
                Ok(SpoolEvent::Arrived(id)) => {
                    index.arrived(id);
                    arrived.push(id);
                    arrived.len() >= BATCH
                }
                Ok(SpoolEvent::Removed(id)) => {
                    arrived.retain(|waiting| *waiting != id);
                    index.searchable(&[id]);
                    index.delete(id);
                    dirty = true;
                    false
                }
                Err(RecvError::Lagged(_)) => return FeedEnd::Lagged,
                Err(RecvError::Closed) => return FeedEnd::Stopped,
            },
            _ = tick.tick() => true,
            _ = shutdown.changed() => return FeedEnd::Stopped,
        };
        if !flush_now {
            continue;
        }
        let batch: Vec<QueueId> = std::mem::take(&mut arrived);
        for &id in &batch {
            let Ok(Some(message)) = spool.get(id).await else {
                continue;
            };
            let recipients = message
                .envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect();
            match add(index, spool, id, recipients).await {
                Ok(added) => dirty |= added,
                Err(err) => {
                    tracing::warn!(queue_id = %id, error = %err, "web: cannot index a message; the next full pass tries again");
                    return FeedEnd::Lagged;
                }
            }
        }
        if dirty {
            match index.commit() {
                Ok(()) => {
                    dirty = false;
                    index.searchable(&batch);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "web: search index commit failed; another full pass");
                    return FeedEnd::Lagged;
                }
            }
        }
    }
}

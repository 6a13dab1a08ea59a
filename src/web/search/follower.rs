//! Keeps the search index following the spool: a full pass, then the
//! spool's arrival and removal feed (see the parent module for why).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::{Indexed, SearchIndex};
use crate::envelope::QueueId;
use crate::spool::{Spool, SpoolEvent, SpooledMessage};

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
            Ok(None) => return,
            Ok(Some((added, deleted))) => {
                tracing::info!(
                    added,
                    deleted,
                    took_ms = started.elapsed().as_millis() as u64,
                    "web: search index follows the spool"
                );
                index.set_caught_up(true);
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
                // Arrivals were missed: until the pass has found them, a
                // search from the index could miss them too.
                index.set_caught_up(false);
                tracing::warn!("web: search index fell behind the spool's feed; another full pass (searches scan until it is done)");
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
/// whose message is gone. Returns (added, deleted), or None when shutdown
/// came first (nothing is deleted then: the unvisited rest is not gone).
async fn full_pass(
    index: &SearchIndex,
    spool: &Spool,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<(usize, usize)>, super::SearchError> {
    index.forget_waiting();
    // Sorted, 16 bytes each: a million IDs in 16 MB, not a hash set.
    let mut indexed: Vec<QueueId> = index.all_ids()?;
    indexed.sort_unstable();
    let mut seen = vec![false; indexed.len()];
    let (mut added, mut after) = (0, None);
    loop {
        if *shutdown.borrow() {
            index.commit()?;
            return Ok(None);
        }
        let (page, next) = spool
            .page(after, BATCH, |_| true)
            .await
            .map_err(|err| super::SearchError(err.to_string()))?;
        let worked = Instant::now();
        let mut missing = Vec::new();
        for message in page {
            match indexed.binary_search(&message.id) {
                Ok(at) => seen[at] = true,
                Err(_) => missing.push(message),
            }
        }
        for message in &missing {
            added += add(index, spool, message).await? as usize;
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
    // Indexed but not met in the spool: gone.
    let mut deleted = 0;
    for (id, seen) in indexed.iter().zip(&seen) {
        if !seen {
            index.delete(*id);
            deleted += 1;
        }
    }
    index.commit()?;
    drop((indexed, seen));
    crate::heap::release_freed_memory();
    Ok(Some((added, deleted)))
}

/// Index one message; false when it left the spool meanwhile.
async fn add(
    index: &SearchIndex,
    spool: &Spool,
    message: &SpooledMessage,
) -> Result<bool, super::SearchError> {
    let Some(summary) = super::super::summaries::summarize(&spool.this_node(), message.id).await
    else {
        return Ok(false);
    };
    index.add(&Indexed {
        id: message.id,
        recipients: message
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect(),
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
            match add(index, spool, &message).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass cut short by shutdown deletes nothing: the documents of the
    /// messages it had not reached yet are not gone (it used to delete
    /// them, so every restart during a pass cost the next start a rebuild).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_stopped_by_shutdown_deletes_nothing_and_a_full_one_deletes_the_gone() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::SpoolConfig {
            dir: dir.path().join("spool"),
            ..crate::config::SpoolConfig::default()
        };
        let (spool, _) = Spool::open(&config).unwrap();
        let index = SearchIndex::open(&dir.path().join("search")).unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let mut body = spool.new_body();
            body.write(format!("Subject: note {i}\r\n\r\nwidgets\r\n").as_bytes())
                .unwrap();
            let envelope =
                crate::envelope::Envelope::local("s@example.org", "a@example.com", "bw.test");
            ids.push(spool.enqueue(body, envelope).await.unwrap());
        }
        let (stop, stopped) = watch::channel(false);
        assert_eq!(
            full_pass(&index, &spool, &stopped).await.unwrap(),
            Some((3, 0))
        );
        assert!(spool.remove(ids[0], "delivered").await.unwrap());
        stop.send(true).unwrap();
        assert_eq!(full_pass(&index, &spool, &stopped).await.unwrap(), None);
        let me = ["a@example.com".to_string()];
        assert_eq!(index.search(&me, "widgets").unwrap().unwrap().len(), 3);
        let (_stop, running) = watch::channel(false);
        assert_eq!(
            full_pass(&index, &spool, &running).await.unwrap(),
            Some((0, 1))
        );
        assert_eq!(index.search(&me, "widgets").unwrap().unwrap().len(), 2);
        spool.close().await;
    }
}

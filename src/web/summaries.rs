//! Per-message list data (subject, sender, date, attachment mark, search
//! text), decoded once and kept in memory.
//!
//! Why a cache and not a column in the spool index: the index is the
//! delivery engine's hot path and must stay small; list data is only needed
//! by people reading mail, and is cheap to rebuild from the spool files after
//! a restart. Messages never change once spooled, so entries never go stale;
//! entries of messages that left the spool are only dropped when an admin
//! action removes them or when the cache reaches `MAX_ENTRIES` or
//! [`MAX_BYTES`] of text and is cleared (a few hundred bytes to 32 KiB each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::render::{self, Summary};
use crate::envelope::QueueId;
use crate::spool::View;

const MAX_ENTRIES: usize = 200_000;
/// Bytes of a message read to summarise it (headers, preview, early parts).
const SUMMARY_SCAN: usize = 2 * 1024 * 1024;

/// Read and decode a message's summary (not cached). None when it is no
/// longer in the spool.
pub async fn summarize(mail: &View, id: QueueId) -> Option<Summary> {
    // The head is enough for subject, sender, date, preview and which
    // attachments start early; a huge message is never read whole here.
    let raw = mail.read_head(id, SUMMARY_SCAN).await.ok()?;
    Some(crate::fsutil::run_blocking(|| render::summarize(&raw)))
}

pub struct SummaryCache {
    /// [`MAX_BYTES`] except in tests.
    max_bytes: usize,
    map: Mutex<HashMap<QueueId, Arc<Summary>>>,
    /// Bytes of text held (each summary keeps up to 32 KiB of search text:
    /// by count alone the cache could grow to gigabytes).
    bytes: std::sync::atomic::AtomicUsize,
}

/// The cache is emptied (and refilled on demand) past this many bytes.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

impl Default for SummaryCache {
    fn default() -> Self {
        SummaryCache::with_max_bytes(MAX_BYTES)
    }
}

fn summary_bytes(summary: &Summary) -> usize {
    summary.subject.len()
        + summary.from_name.len()
        + summary.from_address.len()
        + summary.search_text.len()
        + 64
}

impl SummaryCache {
    pub fn with_max_bytes(max_bytes: usize) -> SummaryCache {
        SummaryCache {
            max_bytes,
            map: Mutex::new(HashMap::new()),
            bytes: Default::default(),
        }
    }

    /// The summary of a message, decoding it on first use. None when it is
    /// no longer in the spool.
    pub async fn get(&self, mail: &View, id: QueueId) -> Option<Arc<Summary>> {
        if let Some(summary) = self.map.lock().expect("summary lock").get(&id) {
            return Some(summary.clone());
        }
        let summary = Arc::new(summarize(mail, id).await?);
        use std::sync::atomic::Ordering;
        let mut map = self.map.lock().expect("summary lock");
        let size = summary_bytes(&summary);
        if map.len() >= MAX_ENTRIES || self.bytes.load(Ordering::Relaxed) + size > self.max_bytes {
            map.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
        if let Some(old) = map.insert(id, summary.clone()) {
            self.bytes.fetch_sub(summary_bytes(&old), Ordering::Relaxed);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);

        Some(summary)
    }

    pub fn forget(&self, id: QueueId) {
        if let Some(old) = self.map.lock().expect("summary lock").remove(&id) {
            self.bytes
                .fetch_sub(summary_bytes(&old), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Bytes of text held now.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3,000 summaries of 32 KiB of search text each would be ~96 MiB: the
    /// cache stays under its byte bound instead (it used to count entries
    /// only, 200,000 of them: ~6.5 GB possible).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_cache_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::SpoolConfig {
            dir: dir.path().join("spool"),
            ..crate::config::SpoolConfig::default()
        };
        let (spool, _) = crate::spool::Spool::open(&config).unwrap();
        let text = "word ".repeat(8 * 1024);
        let mut ids = Vec::new();
        for i in 0..40 {
            let mut body = spool.new_body();
            body.write(format!("Subject: {i}\r\n\r\n{text}\r\n").as_bytes())
                .unwrap();
            let envelope: crate::envelope::Envelope = serde_json::from_value(serde_json::json!({
                "sender": "s@example.org",
                "recipients": [{"address": "a@example.com"}],
                "client": {"ip": "127.0.0.1", "helo": "t"},
                "received_at_ms": 1, "size": 0
            }))
            .unwrap();
            ids.push(spool.enqueue(body, envelope).await.unwrap());
        }
        // 40 summaries of ~40 KiB against a 200 KB bound.
        let cache = SummaryCache::with_max_bytes(200_000);
        let mut peak = 0;
        for round in 0..3 {
            for id in &ids {
                cache.get(&spool.everywhere(), *id).await.unwrap();
                peak = peak.max(cache.held_bytes());
            }
            let _ = round;
        }
        assert!(peak > 100_000, "summaries are held: {peak}");
        assert!(peak <= 200_000, "{peak} bytes held");
        spool.close().await;
    }
}

//! Per-message list data (subject, sender, date, attachment mark, search
//! text), decoded once and kept in memory.
//!
//! Why a cache and not a column in the spool index: the index is the
//! delivery engine's hot path and must stay small; list data is only needed
//! by people reading mail, and is cheap to rebuild from the spool files after
//! a restart. Messages never change once spooled, so entries never go stale;
//! entries of messages that left the spool are only dropped when an admin
//! action removes them or when the cache reaches `MAX_ENTRIES` and is
//! cleared (a few hundred bytes to 32 KiB each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::render::{self, Summary};
use crate::envelope::QueueId;
use crate::spool::Spool;

const MAX_ENTRIES: usize = 200_000;
/// Bytes of a message read to summarise it (headers, preview, early parts).
const SUMMARY_SCAN: usize = 2 * 1024 * 1024;

#[derive(Default)]
pub struct SummaryCache {
    map: Mutex<HashMap<QueueId, Arc<Summary>>>,
}

impl SummaryCache {
    /// The summary of a message, decoding it on first use. None when it is
    /// no longer in the spool.
    pub fn get(&self, spool: &Spool, id: QueueId) -> Option<Arc<Summary>> {
        if let Some(summary) = self.map.lock().expect("summary lock").get(&id) {
            return Some(summary.clone());
        }
        // The head is enough for subject, sender, date, preview and which
        // attachments start early; a huge message is never read whole here.
        let raw = spool.read_head(id, SUMMARY_SCAN).ok()?;
        let summary = Arc::new(render::summarize(&raw));
        let mut map = self.map.lock().expect("summary lock");
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(id, summary.clone());
        Some(summary)
    }

    pub fn forget(&self, id: QueueId) {
        self.map.lock().expect("summary lock").remove(&id);
    }
}

//! The sled index: fast lookups over the spool, never the truth.
//!
//! Trees:
//! - `messages`:     queue ID (16 bytes) → JSON [`IndexEntry`] (where the record is,
//!   envelope, delivery state);
//! - `schedule`:     next-attempt ms (u64 BE) ‖ queue ID → () for messages that
//!   are neither held nor finished: the delivery engine's work list, in due order;
//! - `by_recipient`: lower-cased address ‖ 0x00 ‖ queue ID → () for the web
//!   mailbox view.
//!
//! Everything here can be rebuilt from the segments (see `recovery`), which is
//! why sled's own crash-consistency issues cannot lose mail.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Location;
use crate::envelope::{Envelope, MessageState, QueueId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub location: Location,
    pub envelope: Envelope,
    pub state: MessageState,
    /// A volatile schedule override set by the delivery engine (in flight,
    /// or waiting for a held/down upstream). Never written to the segments:
    /// after a restart the durable `next_attempt_ms` applies again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_until_ms: Option<u64>,
}

impl IndexEntry {
    fn due_ms(&self) -> u64 {
        self.parked_until_ms.unwrap_or(self.state.next_attempt_ms)
    }
}

pub(crate) struct Index {
    db: sled::Db,
    messages: sled::Tree,
    schedule: sled::Tree,
    by_recipient: sled::Tree,
}

pub(crate) type IndexResult<T> = Result<T, sled::Error>;

fn schedule_key(due_ms: u64, id: QueueId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&due_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.to_bytes());
    key
}

fn recipient_key(address: &str, id: QueueId) -> Vec<u8> {
    let mut key = address.to_lowercase().into_bytes();
    key.push(0);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// Finished messages leave the schedule, except those retained for the web
/// reader: they come due once more, to be purged.
fn is_scheduled(state: &MessageState) -> bool {
    !state.held && (!state.is_finished() || state.retain_until_ms.is_some())
}

impl Index {
    pub fn open(dir: &Path) -> IndexResult<Index> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            .open()?;
        Ok(Index {
            messages: db.open_tree("messages")?,
            schedule: db.open_tree("schedule")?,
            by_recipient: db.open_tree("by_recipient")?,
            db,
        })
    }

    pub fn insert(&self, id: QueueId, entry: &IndexEntry) -> IndexResult<()> {
        self.put(id, entry)?;
        for rcpt in &entry.envelope.recipients {
            self.by_recipient
                .insert(recipient_key(&rcpt.address, id), &[])?;
        }
        Ok(())
    }

    /// The entry and its schedule key; the recipient index is left alone
    /// (recipients never change after a message is accepted).
    fn put(&self, id: QueueId, entry: &IndexEntry) -> IndexResult<()> {
        let value = serde_json::to_vec(entry).expect("index entry serialises");
        self.messages.insert(id.to_bytes(), value)?;
        if is_scheduled(&entry.state) {
            self.schedule
                .insert(schedule_key(entry.due_ms(), id), &[])?;
        }
        Ok(())
    }

    pub fn get(&self, id: QueueId) -> IndexResult<Option<IndexEntry>> {
        Ok(self
            .messages
            .get(id.to_bytes())?
            .and_then(|raw| serde_json::from_slice(&raw).ok()))
    }

    pub fn set_state(&self, id: QueueId, state: &MessageState) -> IndexResult<Option<IndexEntry>> {
        let Some(mut entry) = self.get(id)? else {
            return Ok(None);
        };
        self.schedule.remove(schedule_key(entry.due_ms(), id))?;
        entry.state = state.clone();
        entry.parked_until_ms = None;
        self.put(id, &entry)?;
        Ok(Some(entry))
    }

    /// Move a message in the schedule without touching its durable state.
    pub fn park(&self, id: QueueId, until_ms: u64) -> IndexResult<bool> {
        let Some(mut entry) = self.get(id)? else {
            return Ok(false);
        };
        self.schedule.remove(schedule_key(entry.due_ms(), id))?;
        entry.parked_until_ms = Some(until_ms);
        self.put(id, &entry)?;
        Ok(true)
    }

    pub fn remove(&self, id: QueueId) -> IndexResult<Option<IndexEntry>> {
        let Some(entry) = self.get(id)? else {
            return Ok(None);
        };
        self.schedule.remove(schedule_key(entry.due_ms(), id))?;
        for rcpt in &entry.envelope.recipients {
            self.by_recipient.remove(recipient_key(&rcpt.address, id))?;
        }
        self.messages.remove(id.to_bytes())?;
        Ok(Some(entry))
    }

    /// Up to `limit` message IDs whose next attempt is at or before `now_ms`.
    pub fn due(&self, now_ms: u64, limit: usize) -> IndexResult<Vec<QueueId>> {
        let end = schedule_key(now_ms, QueueId::from_bytes([0xff; 16]));
        let mut out = Vec::new();
        for item in self.schedule.range(..=end.as_slice()).take(limit) {
            let (key, _) = item?;
            out.push(QueueId::from_bytes(
                key[8..24].try_into().expect("24-byte key"),
            ));
        }
        Ok(out)
    }

    /// The earliest scheduled attempt, for the scheduler's sleep.
    pub fn next_due_ms(&self) -> IndexResult<Option<u64>> {
        Ok(self
            .schedule
            .first()?
            .map(|(key, _)| u64::from_be_bytes(key[..8].try_into().expect("8 bytes"))))
    }

    pub fn for_recipient(&self, address: &str) -> IndexResult<Vec<QueueId>> {
        let mut prefix = address.to_lowercase().into_bytes();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.by_recipient.scan_prefix(&prefix) {
            let (key, _) = item?;
            let id: [u8; 16] = key[key.len() - 16..].try_into().expect("16 bytes");
            out.push(QueueId::from_bytes(id));
        }
        Ok(out)
    }

    pub fn all(&self) -> impl Iterator<Item = IndexResult<(QueueId, IndexEntry)>> + '_ {
        self.iter_after(None)
    }

    /// Entries in queue-ID (arrival) order, starting after `after`.
    pub fn iter_after(
        &self,
        after: Option<QueueId>,
    ) -> impl Iterator<Item = IndexResult<(QueueId, IndexEntry)>> + '_ {
        let start = match after {
            Some(id) => std::ops::Bound::Excluded(id.to_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.messages
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            .map(|item| {
                let (key, value) = item?;
                let id = QueueId::from_bytes(key.as_ref().try_into().unwrap_or([0; 16]));
                let entry = serde_json::from_slice(&value).map_err(|err| {
                    sled::Error::Unsupported(format!("undecodable index entry {id}: {err}"))
                })?;
                Ok((id, entry))
            })
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn recipient_entries(&self) -> usize {
        self.by_recipient.len()
    }

    pub fn clear(&self) -> IndexResult<()> {
        self.messages.clear()?;
        self.schedule.clear()?;
        self.by_recipient.clear()?;
        Ok(())
    }

    pub fn flush(&self) -> IndexResult<()> {
        self.db.flush().map(|_| ())
    }
}

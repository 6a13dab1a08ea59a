//! The index: fast lookups over the spool, never the truth.
//!
//! sled trees (derived, rebuildable from the segments, see `recovery`):
//! - `messages`:     queue ID (16 bytes) → JSON [`IndexEntry`] (where the record is,
//!   envelope, durable delivery state);
//! - `by_recipient`: lower-cased address ‖ 0x00 ‖ queue ID → () for the web
//!   mailbox view.
//!
//! The delivery schedule (due time ‖ queue ID for messages that are neither
//! held nor finished, or retained and waiting to be purged) is **in memory**,
//! built at open from the entries. Why: it holds the engine's volatile
//! parking (in flight, waiting for a down upstream), which must be forgotten
//! at a restart anyway — kept in sled, every restart either rewrote every
//! parked entry or rebuilt the whole index because the parking differed.
//!
//! Every change to an entry and its schedule place happens under one lock
//! (`update`). An insert writes `messages` and `by_recipient` in one sled
//! transaction, so a reader never finds a message without its recipient
//! keys; a removal drops the entry first and then its keys, without a
//! transaction (see `remove`). `due` still drops a schedule key whose
//! message is gone (self-healing, instead of returning it every 10 ms until
//! a restart).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::Location;
use crate::envelope::{Envelope, MessageState, QueueId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub location: Location,
    pub envelope: Envelope,
    pub state: MessageState,
}

/// Finished messages leave the schedule, except those retained for the web
/// reader: they come due once more, to be purged.
pub(crate) fn is_scheduled(state: &MessageState) -> bool {
    !state.held && (!state.is_finished() || state.retain_until_ms.is_some())
}

/// The in-memory schedule: due time of every scheduled message, in order.
#[derive(Default)]
struct Schedule {
    order: BTreeSet<(u64, QueueId)>,
    /// Each scheduled message's place in `order` and its durable due time
    /// (they differ while it is parked).
    due_of: HashMap<QueueId, Place>,
    /// Volatile parking by the delivery engine (overrides the durable time).
    parked: HashMap<QueueId, u64>,
}

#[derive(Clone, Copy)]
struct Place {
    due: u64,
    durable: u64,
}

impl Schedule {
    fn place(&mut self, id: QueueId, state: Option<&MessageState>) {
        match state.filter(|s| is_scheduled(s)) {
            Some(state) => self.put(id, state.next_attempt_ms),
            None => {
                self.unplace(id);
                self.parked.remove(&id);
            }
        }
    }

    /// Schedule `id` at its durable due time `durable` (or where it is parked).
    fn put(&mut self, id: QueueId, durable: u64) {
        self.unplace(id);
        let due = self.parked.get(&id).copied().unwrap_or(durable);
        self.order.insert((due, id));
        self.due_of.insert(id, Place { due, durable });
    }

    fn unplace(&mut self, id: QueueId) {
        if let Some(old) = self.due_of.remove(&id) {
            self.order.remove(&(old.due, id));
        }
    }
}

pub(crate) struct Index {
    db: sled::Db,
    messages: sled::Tree,
    by_recipient: sled::Tree,
    /// Guards every read-modify-write of an entry together with its
    /// schedule place (sled's per-key atomicity does not cover the two).
    schedule: Mutex<Schedule>,
    /// Acknowledged messages whose index insert failed: still delivered
    /// (they are in the schedule) and read from here until an insert works.
    pending: Mutex<BTreeMap<QueueId, IndexEntry>>,
    /// Test hook: fail this many upcoming inserts.
    failing_inserts: AtomicUsize,
}

pub(crate) type IndexResult<T> = Result<T, sled::Error>;

fn recipient_key(address: &str, id: QueueId) -> Vec<u8> {
    let mut key = address.to_lowercase().into_bytes();
    key.push(0);
    key.extend_from_slice(&id.to_bytes());
    key
}

fn recipient_keys_of(entry: &IndexEntry, id: QueueId) -> Vec<Vec<u8>> {
    entry
        .envelope
        .recipients
        .iter()
        .map(|r| recipient_key(&r.address, id))
        .collect()
}

fn storage_error(err: TransactionError<()>) -> sled::Error {
    match err {
        TransactionError::Storage(err) => err,
        TransactionError::Abort(()) => sled::Error::Unsupported("transaction aborted".into()),
    }
}

pub(crate) fn encode(entry: &IndexEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("index entry serialises")
}

pub(crate) fn decode(id: QueueId, raw: &[u8]) -> IndexResult<IndexEntry> {
    serde_json::from_slice(raw)
        .map_err(|err| sled::Error::Unsupported(format!("undecodable index entry {id}: {err}")))
}

/// Key (in sled's default tree) of the mark shared with the checkpoint.
const CHECKPOINT_MARK: &[u8] = b"checkpoint-mark";
/// Key (in sled's default tree) of the index watermark (`watermark`).
const DURABLE_BELOW: &[u8] = b"durable-below";

/// How long [`Index::open`] waits for sled's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Is this sled's "could not acquire lock" (another handle on the same
/// files is still open)? The spool's own lock keeps other processes out, so
/// the holder is an earlier handle in this process whose background threads
/// have not let go yet (sled releases its file lock a moment after the last
/// `Db` is dropped). Such an index is healthy and must never be rebuilt.
pub(crate) fn is_locked(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// sled's own cache of index pages.
const INDEX_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Index {
    /// Open the index, waiting up to [`LOCK_WAIT`] while an earlier opener
    /// in this process is still letting go of it (see [`is_locked`]).
    pub fn open(dir: &Path) -> IndexResult<Index> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            // sled's page cache defaults to 1 GiB, which a large spool's
            // index fills (start-up reconciliation reads every entry): RSS
            // then grows with the spool. The index is read through the OS
            // page cache anyway.
            match sled::Config::new()
                .path(dir)
                .cache_capacity(INDEX_CACHE_BYTES)
                .flush_every_ms(Some(1000))
                .open()
            {
                Ok(db) => break db,
                Err(err) if is_locked(&err) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => return Err(err),
            }
        };
        // sled never syncs the directory it creates its files in; without
        // this, a power cut soon after the first start loses the whole index
        // (recovery would rebuild it, but from scratch every time).
        crate::fsutil::sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            crate::fsutil::sync_dir(parent)?;
        }
        // A schedule tree written by earlier versions is not used any more.
        let _ = db.drop_tree("schedule");
        Ok(Index {
            messages: db.open_tree("messages")?,
            by_recipient: db.open_tree("by_recipient")?,
            db,
            schedule: Mutex::new(Schedule::default()),
            pending: Mutex::new(BTreeMap::new()),
            failing_inserts: AtomicUsize::new(0),
        })
    }

    /// Tag this index with the mark of the checkpoint about to be written,
    /// durably: a checkpoint is used only with the index it was written
    /// with (not a fresh, deleted or restored one).
    pub fn mark_checkpoint(&self, mark: u64) -> IndexResult<()> {
        self.db.insert(CHECKPOINT_MARK, &mark.to_le_bytes())?;
        self.flush()
    }

    pub fn checkpoint_mark(&self) -> IndexResult<Option<u64>> {
        self.read_u64(CHECKPOINT_MARK)
    }

    /// Record the index watermark: every record in a segment below it has
    /// its change in this index, durably (the caller flushed first). It
    /// becomes durable itself with the next flush; until then recovery uses
    /// the previous one, which is also true.
    pub fn set_durable_below(&self, segment: u64) -> IndexResult<()> {
        self.db.insert(DURABLE_BELOW, &segment.to_le_bytes())?;
        Ok(())
    }

    /// The index watermark, if this index has one (a fresh, rebuilt or
    /// older index has none: recovery then compares every entry).
    pub fn durable_below(&self) -> IndexResult<Option<u64>> {
        self.read_u64(DURABLE_BELOW)
    }

    fn read_u64(&self, key: &[u8]) -> IndexResult<Option<u64>> {
        Ok(self
            .db
            .get(key)?
            .and_then(|raw| raw.as_ref().try_into().ok())
            .map(u64::from_le_bytes))
    }

    /// The stored bytes of one entry (recovery compares them).
    pub fn get_raw(&self, id: QueueId) -> IndexResult<Option<sled::IVec>> {
        self.messages.get(id.to_bytes())
    }

    /// Is this recipient key present?
    pub fn has_recipient_key(&self, address: &str, id: QueueId) -> IndexResult<bool> {
        self.by_recipient.contains_key(recipient_key(address, id))
    }

    /// Build the in-memory schedule from the spool's messages (at open, from
    /// the replay the index was just reconciled with: reading the index back
    /// would decode every entry once more).
    pub fn build_schedule<'e>(
        &self,
        entries: impl IntoIterator<Item = (&'e QueueId, &'e IndexEntry)>,
    ) {
        let mut schedule = self.schedule.lock().expect("schedule lock");
        *schedule = Schedule::default();
        for (id, entry) in entries {
            schedule.place(*id, Some(&entry.state));
        }
    }

    /// The schedule saved at a clean shutdown (`checkpoint`): every scheduled
    /// message at its durable due time (parking is forgotten at a restart).
    pub fn restore_schedule(&self, places: &[(QueueId, u64)]) {
        let mut schedule = self.schedule.lock().expect("schedule lock");
        *schedule = Schedule::default();
        for &(id, durable) in places {
            schedule.put(id, durable);
        }
    }

    /// Every scheduled message with its durable due time, for the
    /// checkpoint; `None` while an acknowledged message is still missing
    /// from sled (only a replay would find it after a restart).
    pub fn durable_schedule(&self) -> Option<Vec<(QueueId, u64)>> {
        if !self.heal() {
            return None;
        }
        let schedule = self.schedule.lock().expect("schedule lock");
        Some(
            schedule
                .due_of
                .iter()
                .map(|(id, place)| (*id, place.durable))
                .collect(),
        )
    }

    /// A new message: entry and recipient keys in one transaction, then its
    /// schedule place. If sled fails, the entry is kept in memory (still
    /// scheduled and readable) and written by a later [`Index::heal`].
    pub fn insert(&self, id: QueueId, entry: &IndexEntry) -> IndexResult<()> {
        // Under the schedule lock: `due` must never find the schedule place
        // of an entry that is not readable yet (it would drop it as stale;
        // the chaos soak caught that).
        let mut schedule = self.schedule.lock().expect("schedule lock");
        let written = self.write_new(id, entry);
        if written.is_err() {
            self.pending
                .lock()
                .expect("pending lock")
                .insert(id, entry.clone());
        }
        schedule.place(id, Some(&entry.state));
        written
    }

    fn write_new(&self, id: QueueId, entry: &IndexEntry) -> IndexResult<()> {
        let injected = self
            .failing_inserts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            return Err(sled::Error::Unsupported("injected index failure".into()));
        }
        let value = encode(entry);
        let keys = recipient_keys_of(entry, id);
        (&self.messages, &self.by_recipient)
            .transaction(|(messages, by_recipient)| {
                messages.insert(&id.to_bytes(), value.as_slice())?;
                for key in &keys {
                    by_recipient.insert(key.as_slice(), &[])?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)
    }

    /// Write the entries whose insert failed; true when none is left.
    pub fn heal(&self) -> bool {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.is_empty() {
            return true;
        }
        let ids: Vec<QueueId> = pending.keys().copied().collect();
        for id in ids {
            let entry = pending[&id].clone();
            match self.write_new(id, &entry) {
                Ok(()) => {
                    pending.remove(&id);
                    tracing::info!(queue_id = %id, "spool: index entry written after an earlier failure");
                }
                Err(_) => return false,
            }
        }
        true
    }

    pub fn get(&self, id: QueueId) -> IndexResult<Option<IndexEntry>> {
        if let Some(entry) = self.pending.lock().expect("pending lock").get(&id) {
            return Ok(Some(entry.clone()));
        }
        match self.messages.get(id.to_bytes())? {
            Some(raw) => decode(id, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Change an entry and move it in the schedule, atomically with respect
    /// to every other change. `None` if the message is not indexed.
    pub fn update(
        &self,
        id: QueueId,
        change: impl FnOnce(&mut IndexEntry),
    ) -> IndexResult<Option<IndexEntry>> {
        self.heal();
        let mut schedule = self.schedule.lock().expect("schedule lock");
        let mut pending = self.pending.lock().expect("pending lock");
        if let Some(entry) = pending.get_mut(&id) {
            // Still not in sled: change it here; the next heal writes it.
            change(entry);
            let entry = entry.clone();
            schedule.parked.remove(&id);
            schedule.place(id, Some(&entry.state));
            return Ok(Some(entry));
        }
        drop(pending);
        let Some(mut entry) = self.get(id)? else {
            return Ok(None);
        };
        change(&mut entry);
        self.messages.insert(id.to_bytes(), encode(&entry))?;
        schedule.parked.remove(&id);
        schedule.place(id, Some(&entry.state));
        Ok(Some(entry))
    }

    /// Point an entry at a new record of the same message (compaction):
    /// its state and its place in the schedule (parking included) stay.
    pub fn relocate(&self, id: QueueId, location: Location) -> IndexResult<bool> {
        self.heal();
        let _schedule = self.schedule.lock().expect("schedule lock");
        let mut pending = self.pending.lock().expect("pending lock");
        if let Some(entry) = pending.get_mut(&id) {
            entry.location = location;
            return Ok(true);
        }
        drop(pending);
        let Some(mut entry) = self.get(id)? else {
            return Ok(false);
        };
        entry.location = location;
        self.messages.insert(id.to_bytes(), encode(&entry))?;
        Ok(true)
    }

    /// Move a message in the schedule without touching its durable state;
    /// false when it is not scheduled. The schedule alone decides (places
    /// change only with their entries, under this lock): no entry is read,
    /// which matters when a flush parks a whole backlog at once.
    pub fn park(&self, id: QueueId, until_ms: u64) -> IndexResult<bool> {
        let mut schedule = self.schedule.lock().expect("schedule lock");
        let Some(place) = schedule.due_of.get(&id).copied() else {
            return Ok(false);
        };
        schedule.parked.insert(id, until_ms);
        schedule.put(id, place.durable);
        Ok(true)
    }

    pub fn remove(&self, id: QueueId) -> IndexResult<Option<IndexEntry>> {
        self.heal();
        let mut schedule = self.schedule.lock().expect("schedule lock");
        let Some(entry) = self.get(id)? else {
            schedule.place(id, None);
            return Ok(None);
        };
        // Recipient keys first, then the entry, without a transaction (the
        // most expensive part of a delivered message's removal): sled
        // applies writes in order, so a crash in between leaves an entry
        // with some keys gone, which recovery finds from the remove record
        // and finishes; keys left without their entry could not be found
        // that way. Meanwhile a reader listing by recipient may miss a
        // message that is being removed anyway.
        for key in recipient_keys_of(&entry, id) {
            self.by_recipient.remove(key)?;
        }
        self.messages.remove(id.to_bytes())?;
        self.pending.lock().expect("pending lock").remove(&id);
        schedule.place(id, None);
        Ok(Some(entry))
    }

    /// Up to `limit` message IDs whose next attempt is at or before `now_ms`.
    /// A schedule place whose message is gone is dropped here.
    pub fn due(&self, now_ms: u64, limit: usize) -> IndexResult<Vec<QueueId>> {
        self.heal();
        let mut schedule = self.schedule.lock().expect("schedule lock");
        let candidates: Vec<QueueId> = schedule
            .order
            .iter()
            .take_while(|(due, _)| *due <= now_ms)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        // Places change only with their entries (under this lock), so only
        // existence is checked here: no entry decoded per due message on the
        // scheduler's loop.
        let pending = self.pending.lock().expect("pending lock");
        let mut out = Vec::with_capacity(candidates.len());
        for id in candidates {
            if pending.contains_key(&id) || self.messages.contains_key(id.to_bytes())? {
                out.push(id);
            } else {
                tracing::warn!(queue_id = %id, "spool: dropping a stale schedule place");
                schedule.place(id, None);
            }
        }
        Ok(out)
    }

    /// The earliest scheduled attempt, for the scheduler's sleep.
    pub fn next_due_ms(&self) -> IndexResult<Option<u64>> {
        let schedule = self.schedule.lock().expect("schedule lock");
        Ok(schedule.order.first().map(|(due, _)| *due))
    }

    /// How many messages are in the schedule (for tests and metrics).
    pub fn scheduled(&self) -> usize {
        self.schedule.lock().expect("schedule lock").order.len()
    }

    pub fn for_recipient(&self, address: &str) -> IndexResult<Vec<QueueId>> {
        self.heal();
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
        self.heal();
        let start = match after {
            Some(id) => std::ops::Bound::Excluded(id.to_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.messages
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            .map(|item| {
                let (key, value) = item?;
                let id = QueueId::from_bytes(key.as_ref().try_into().unwrap_or([0; 16]));
                Ok((id, decode(id, &value)?))
            })
    }

    /// Every entry as stored (not decoded), for reconciliation.
    pub fn all_raw(&self) -> impl Iterator<Item = IndexResult<(QueueId, sled::IVec)>> + '_ {
        self.messages.iter().map(|item| {
            let (key, value) = item?;
            let id = QueueId::from_bytes(key.as_ref().try_into().unwrap_or([0; 16]));
            Ok((id, value))
        })
    }

    /// Recipient keys: (lower-cased address, queue ID), for reconciliation.
    pub fn recipient_keys(&self) -> impl Iterator<Item = IndexResult<(Vec<u8>, QueueId)>> + '_ {
        self.by_recipient.iter().keys().map(|key| {
            let key = key?;
            let split = key.len().saturating_sub(17);
            let id: [u8; 16] = key[key.len().saturating_sub(16)..]
                .try_into()
                .unwrap_or([0; 16]);
            Ok((key[..split].to_vec(), QueueId::from_bytes(id)))
        })
    }

    /// Reconciliation's writes: put an entry as the segments say it is,
    /// with its recipient keys.
    pub fn repair_put(&self, id: QueueId, entry: &IndexEntry) -> IndexResult<()> {
        self.write_new(id, entry)
    }

    pub fn repair_remove_recipient_key(&self, address: &[u8], id: QueueId) -> IndexResult<()> {
        let mut key = address.to_vec();
        key.push(0);
        key.extend_from_slice(&id.to_bytes());
        self.by_recipient.remove(key)?;
        Ok(())
    }

    pub fn repair_remove(&self, id: QueueId) -> IndexResult<()> {
        self.messages.remove(id.to_bytes())?;
        Ok(())
    }

    /// Reconciliation's removal of an entry the segments say is gone,
    /// together with its recipient keys (when it can still be decoded).
    pub fn repair_remove_with_keys(&self, id: QueueId, raw: &[u8]) -> IndexResult<()> {
        if let Ok(entry) = decode(id, raw) {
            for key in recipient_keys_of(&entry, id) {
                self.by_recipient.remove(key)?;
            }
        }
        self.repair_remove(id)
    }

    pub fn clear(&self) -> IndexResult<()> {
        self.messages.clear()?;
        self.by_recipient.clear()?;
        Ok(())
    }

    pub fn flush(&self) -> IndexResult<()> {
        self.db.flush().map(|_| ())
    }

    /// Test hook: the next `count` inserts fail as if sled had.
    pub fn fail_inserts(&self, count: usize) {
        self.failing_inserts.store(count, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(held: bool) -> IndexEntry {
        let mut envelope = Envelope::local("s@example.org", "a@example.com", "t");
        envelope.received_at_ms = 1;
        envelope.size = 1;
        let mut state = MessageState::new_for(&envelope);
        state.held = held;
        IndexEntry {
            location: Location {
                segment: 1,
                offset: 0,
                meta_len: 0,
                body_len: 0,
                body_crc: 0,
                external: false,
                header_len: 48,
            },
            envelope,
            state,
        }
    }

    #[test]
    fn a_stale_schedule_place_is_dropped_not_returned_forever() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let id = QueueId::generate();
        index.insert(id, &entry(false)).unwrap();
        assert_eq!(index.due(u64::MAX, 10).unwrap(), [id]);
        // The entry vanishes behind the schedule's back (what a non-atomic
        // multi-tree update used to leave): due() heals instead of spinning.
        index.messages.remove(id.to_bytes()).unwrap();
        assert!(index.due(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(index.scheduled(), 0);
    }

    #[test]
    fn concurrent_park_update_and_remove_leave_no_stale_place() {
        let dir = tempfile::tempdir().unwrap();
        let index = std::sync::Arc::new(Index::open(dir.path()).unwrap());
        let ids: Vec<QueueId> = (0..200).map(|_| QueueId::generate()).collect();
        for id in &ids {
            index.insert(*id, &entry(false)).unwrap();
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let index = index.clone();
                let ids = ids.clone();
                std::thread::spawn(move || {
                    for (i, id) in ids.iter().enumerate() {
                        match (i + t) % 4 {
                            0 => {
                                let _ = index.park(*id, 5);
                            }
                            1 => {
                                let _ = index.update(*id, |e| e.state.next_attempt_ms = 7);
                            }
                            2 if t == 0 => {
                                let _ = index.remove(*id);
                            }
                            _ => {
                                let _ = index.update(*id, |e| e.state.held = !e.state.held);
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let schedule = index.schedule.lock().unwrap();
        for (id, place) in &schedule.due_of {
            let due = &place.due;
            let entry = index.get(*id).unwrap().expect("scheduled message exists");
            assert!(is_scheduled(&entry.state), "{id} scheduled but held");
            assert!(schedule.order.contains(&(*due, *id)));
        }
        assert_eq!(schedule.order.len(), schedule.due_of.len());
    }

    #[test]
    fn a_failed_insert_is_still_scheduled_readable_and_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let id = QueueId::generate();
        index.fail_inserts(1);
        assert!(index.insert(id, &entry(false)).is_err());
        assert!(index.get(id).unwrap().is_some(), "readable from memory");
        assert_eq!(index.due(u64::MAX, 10).unwrap(), [id], "scheduled");
        assert_eq!(index.for_recipient("a@example.com").unwrap(), [id]);
        assert!(
            index.messages.get(id.to_bytes()).unwrap().is_some(),
            "healed"
        );
    }
}

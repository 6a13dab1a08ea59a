//! The single-node store: append-only segment files with a sled index, on
//! this node's disk. Implements [`SpoolStore`]; the contract is there.
//!
//! Layout under `[spool] dir`:
//! ```text
//! segments/0000000000000001.seg   append-only record logs (the truth, see `record`)
//! large/<QUEUEID>.eml             bodies above the large-message threshold
//! tmp/<QUEUEID>.part              bodies being received (deleted at start-up)
//! index/                          sled database (derived; rebuilt when in doubt)
//! lock                            flock'd by the one process using this spool
//! upstream-holds.json             upstreams an operator put on hold
//! ```
//!
//! How the contract is kept: `enqueue` returns only after the message's
//! record (and its large body file, if any) are fsync'd. Appends from all
//! sessions go through one writer thread that batches them into a single
//! fsync (group commit, `writer`). Atomic state changes hold a per-message
//! lock from reading the state to indexing the new one.
//!
//! Segments are reclaimed oldest-first once every message in them is finished;
//! in-order reclamation is what lets a `remove` record never outlive the
//! message record it cancels (see docs/ARCHITECTURE.md).

mod checkpoint;
mod compaction;
mod digest;
mod index;
mod record;
mod recovery;
mod watermark;
mod writer;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use index::IndexEntry;
use record::{Kind, MessageMeta, RemoveMeta, StateMeta};
use watermark::{Advance, Changes, Watermark};
use writer::{AppendOp, Op, SegmentWriter};

use super::space::{self, Shortage};
use super::{
    Census, CensusSnapshot, Maintenance, MessageBody, SpoolError, SpoolStore, SpooledMessage,
    StateUpdate, Stats, StoredBody,
};
use crate::config::SpoolConfig;
use crate::envelope::{Envelope, MessageState, QueueId};

/// Where a message record lives on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub segment: u64,
    /// Start of the record (its header) in the segment file.
    pub offset: u64,
    pub meta_len: u32,
    /// Length of the body stored in the segment; 0 when `external`.
    pub body_len: u64,
    pub body_crc: u32,
    pub external: bool,
    /// 48 for records with a MAC, 32 for those written before (index
    /// entries of older versions lack the field).
    #[serde(default = "version_1_header_len")]
    pub header_len: u32,
}

fn version_1_header_len() -> u32 {
    record::HEADER_LEN as u32
}

/// When the last writability probe ran, and what it found.
type WritableProbe = (std::time::Instant, Result<(), String>);

/// The single-node store (see the module doc).
pub struct SegmentStore {
    segments_dir: PathBuf,
    large_dir: PathBuf,
    tmp_dir: PathBuf,
    large_threshold: u64,
    /// Where the writer seals a segment (compaction's slack).
    segment_size: u64,
    index: Arc<index::Index>,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    current_segment: Arc<AtomicU64>,
    reclaim: Arc<Mutex<Reclaim>>,
    stats: Arc<Stats>,
    space: Arc<space::Space>,
    holds_path: PathBuf,
    holds_lock: Mutex<()>,
    /// Per-message locks (sharded): a state change reads the current state,
    /// changes it and writes it back under its message's lock, so an
    /// operator's hold and a delivery's outcome never overwrite each other.
    message_locks: Vec<tokio::sync::Mutex<()>>,
    /// Counts for the gauges, changed with every enqueue, state change and
    /// removal (under the message's lock, after the record is durable).
    census: Mutex<Census>,
    /// The last writability probe and when it ran.
    writable_probe: Arc<Mutex<Option<WritableProbe>>>,
    /// Changes between their append and their index and census update.
    changes: Arc<Changes>,
    /// Below it, every record's index change is durable (`watermark`);
    /// segments are deleted only below it.
    watermark: Arc<Watermark>,
    /// Moves the watermark about once a second; stopped by `close`.
    watermark_thread: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Held for the life of the spool: two processes on one spool would
    /// interleave appends and delete each other's index.
    _lock: std::fs::File,
}

/// Live message count (and bytes of their records) per segment, and the
/// oldest segment still on disk.
///
/// The writer thread raises a segment's count for each message record in
/// the same step that makes it durable, before anyone learns where the
/// record is: a count raised later (by `enqueue`, after the index insert)
/// left a window in which delivery could finish the new message, or another
/// one in the same segment, and `reclaim` then saw the segment at zero and
/// deleted a live message (found by the 30-minute chaos soak).
pub(crate) struct Reclaim {
    live: HashMap<u64, LiveRecords>,
    oldest: u64,
    /// Finished segments whose deletion failed, tried again next time.
    retry: Vec<u64>,
}

/// The live message records of one segment.
#[derive(Debug, Default, Clone, Copy)]
struct LiveRecords {
    messages: usize,
    /// Their bytes (header, metadata, inline body): compaction's measure.
    bytes: u64,
}

impl Reclaim {
    fn live_messages(&self, segment: u64) -> usize {
        self.live.get(&segment).map_or(0, |live| live.messages)
    }

    /// Advance past every finished segment older than `current` and hand
    /// them (and earlier failed deletions) to the caller to delete.
    fn take_finished(&mut self, current: u64) -> Vec<u64> {
        let mut finished = std::mem::take(&mut self.retry);
        while self.oldest < current && self.live_messages(self.oldest) == 0 {
            self.live.remove(&self.oldest);
            finished.push(self.oldest);
            self.oldest += 1;
        }
        finished
    }

    pub(crate) fn count_new_messages(&mut self, segment: u64, messages: usize, bytes: u64) {
        if messages > 0 {
            let live = self.live.entry(segment).or_default();
            live.messages += messages;
            live.bytes += bytes;
        }
    }

    /// The message record at `location` is no longer its message's record
    /// (the message was removed, or compaction copied it forward).
    fn finish(&mut self, location: &Location) {
        if let Some(live) = self.live.get_mut(&location.segment) {
            live.messages = live.messages.saturating_sub(1);
            live.bytes = live.bytes.saturating_sub(location.record_len());
        }
    }
}

/// What `Spool::open` found, for the start-up log line and for tests.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub messages: usize,
    pub segments: usize,
    pub records: u64,
    /// Why the index had to be rebuilt or repaired from the spool files, if
    /// it had to (None after a clean shutdown).
    pub index_rebuilt: Option<String>,
    /// Index entries written or removed to match the segments.
    pub index_repairs: usize,
    /// Resumed from the clean-shutdown checkpoint: nothing was replayed.
    pub from_checkpoint: bool,
    /// Index entries compared with the replay: every one without an index
    /// watermark (or after damage), else only those from the watermark on.
    pub index_compared: usize,
    /// Finished segments replayed from their digests, not read.
    pub segments_from_digest: usize,
}

/// The store's in-memory state as recovered at open.
struct Recovered {
    /// Segment IDs on disk, oldest first.
    segments: Vec<u64>,
    census: Census,
    reclaim: Reclaim,
    report: OpenReport,
}

impl Recovered {
    /// After a clean shutdown: the checkpoint's state, trusted as it is (see
    /// `checkpoint` for why that is safe); nothing replayed or compared.
    fn from_checkpoint(checkpoint: checkpoint::Checkpoint, index: &index::Index) -> Recovered {
        index.restore_schedule(&checkpoint.schedule);
        let mut reclaim = Reclaim {
            live: HashMap::new(),
            oldest: checkpoint.files.oldest_segment,
            retry: checkpoint.files.undeleted,
        };
        for (segment, messages, bytes) in checkpoint.files.live {
            reclaim.count_new_messages(segment, messages, bytes);
        }
        let messages = checkpoint.census.messages();
        tracing::info!(
            messages,
            "spool: resumed from the clean-shutdown checkpoint (no replay)"
        );
        Recovered {
            segments: checkpoint
                .files
                .segments
                .iter()
                .map(|(id, _)| *id)
                .collect(),
            census: checkpoint.census,
            reclaim,
            report: OpenReport {
                messages,
                segments: checkpoint.files.segments.len(),
                records: 0,
                index_rebuilt: None,
                index_repairs: 0,
                from_checkpoint: true,
                index_compared: 0,
                segments_from_digest: 0,
            },
        }
    }

    /// After a crash (or without a usable checkpoint): replay every segment
    /// and make the index agree with it.
    fn by_replay(
        root: &Path,
        segments_dir: &Path,
        large_dir: &Path,
        key: &record::RecordKey,
        index: &index::Index,
    ) -> Result<Recovered, SpoolError> {
        let quarantine_dir = root.join("quarantine");
        let started = std::time::Instant::now();
        let tail_from = index.durable_below().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "spool: index watermark unreadable; comparing the whole index");
            None
        });
        let mut replay = recovery::replay(segments_dir, key, &quarantine_dir, tail_from)?;
        let replayed = started.elapsed();
        quarantine_orphan_large_files(large_dir, &quarantine_dir, &replay.live)?;
        let (reconciled, compared) = match tail_from {
            Some(_) => recovery::reconcile_tail(index, &mut replay)?,
            None => (recovery::reconcile(index, &replay)?, replay.live.len()),
        };
        let verified = started.elapsed();
        index.build_schedule(&replay.live);
        tracing::info!(
            replay_ms = replayed.as_millis() as u64,
            verify_ms = (verified - replayed).as_millis() as u64,
            schedule_ms = (started.elapsed() - verified).as_millis() as u64,
            index_watermark = tail_from,
            compared,
            segments_from_digest = replay.from_digests,
            "spool: recovery by replay"
        );
        let index_rebuilt = match (&reconciled.unreadable, reconciled.repairs) {
            (Some(reason), _) => Some(reason.clone()),
            (None, 0) => None,
            (None, repairs) => Some(format!(
                "{repairs} index entries repaired to match the spool files"
            )),
        };
        match &index_rebuilt {
            Some(reason) => {
                tracing::warn!(messages = replay.live.len(), repairs = reconciled.repairs, %reason, "spool: index reconciled with the spool files")
            }
            None => tracing::info!(
                messages = replay.live.len(),
                "spool: index verified against spool files"
            ),
        }
        let census = Census::of(
            replay
                .live
                .values()
                .map(|entry| (&entry.envelope, &entry.state)),
        );
        let mut reclaim = Reclaim {
            live: HashMap::new(),
            oldest: replay.segments.first().copied().unwrap_or(0),
            retry: Vec::new(),
        };
        for entry in replay.live.values() {
            reclaim.count_new_messages(entry.location.segment, 1, entry.location.record_len());
        }
        Ok(Recovered {
            report: OpenReport {
                messages: replay.live.len(),
                segments: replay.segments.len(),
                records: replay.records,
                index_rebuilt,
                index_repairs: reconciled.repairs,
                from_checkpoint: false,
                index_compared: compared,
                segments_from_digest: replay.from_digests,
            },
            segments: replay.segments,
            census,
            reclaim,
        })
    }
}

impl SegmentStore {
    /// Open (creating if needed) the spool, recover it and start the writer.
    pub fn open(config: &SpoolConfig) -> Result<(SegmentStore, OpenReport), SpoolError> {
        let root = &config.dir;
        let segments_dir = root.join("segments");
        let large_dir = root.join("large");
        let tmp_dir = root.join("tmp");
        let index_dir = root.join("index");
        for dir in [root, &segments_dir, &large_dir, &tmp_dir] {
            crate::fsutil::create_dir_durable(dir)?;
        }
        let lock = lock_spool(root)?;
        for entry in std::fs::read_dir(&tmp_dir)? {
            let _ = std::fs::remove_file(entry?.path());
        }

        let key = Arc::new(record::RecordKey::load_or_create(&root.join("record.key"))?);
        let found = checkpoint::take(root, &segments_dir).unwrap_or_else(|err| {
            checkpoint::Found::Unusable(format!("cannot read or delete it: {err}"))
        });
        let (index, index_recreated) = match index::Index::open(&index_dir) {
            Ok(index) => (index, false),
            // Held open elsewhere past the wait: fail the start, naming it,
            // rather than delete a healthy index under its holder.
            Err(err) if index::is_locked(&err) => return Err(SpoolError::Index(err)),
            Err(err) => {
                tracing::error!(error = %err, "spool: index does not open; rebuilding it from the spool files");
                std::fs::remove_dir_all(&index_dir)?;
                (index::Index::open(&index_dir)?, true)
            }
        };
        let recovered = match found {
            checkpoint::Found::Usable(checkpoint)
                if !index_recreated
                    && index.checkpoint_mark().ok().flatten()
                        == Some(checkpoint.files.index_mark) =>
            {
                Recovered::from_checkpoint(*checkpoint, &index)
            }
            found => {
                if let checkpoint::Found::Usable(_) = found {
                    tracing::warn!("spool: clean-shutdown checkpoint not used: the index is not the one it was written with; replaying the segments");
                }
                if let checkpoint::Found::Unusable(why) = found {
                    tracing::warn!(reason = %why, "spool: clean-shutdown checkpoint not used; replaying the segments");
                }
                Recovered::by_replay(root, &segments_dir, &large_dir, &key, &index)?
            }
        };
        let Recovered {
            segments,
            census,
            mut reclaim,
            report,
        } = recovered;

        // Always append to a fresh segment after a restart (never after a
        // possibly torn region), but reuse the newest one if it is empty.
        let next_segment = match segments.last() {
            None => 1,
            Some(&last) => {
                let empty = std::fs::metadata(writer::segment_path(&segments_dir, last))
                    .is_ok_and(|m| m.len() == 0);
                if empty {
                    last
                } else {
                    last + 1
                }
            }
        };
        if segments.is_empty() {
            reclaim.oldest = next_segment;
        }
        // Recovery left the index equal to every segment on disk.
        index.set_durable_below(next_segment)?;
        index.flush()?;
        let index = Arc::new(index);
        let watermark = Arc::new(Watermark::new(next_segment));
        let changes = Arc::new(Changes::default());
        let stats = Arc::new(Stats::default());
        let used = space::dir_bytes(&segments_dir)? + space::dir_bytes(&large_dir)?;
        let space = Arc::new(space::Space::new(
            root,
            config.min_free.as_u64(),
            config.max_bytes.map(|b| b.as_u64()),
            used,
        ));
        let current_segment = Arc::new(AtomicU64::new(next_segment));
        let reclaim = Arc::new(Mutex::new(reclaim));
        let writer = SegmentWriter::open(
            segments_dir.clone(),
            large_dir.clone(),
            config.segment_size,
            next_segment,
            key,
            writer::Shared {
                current_id: current_segment.clone(),
                stats: stats.clone(),
                space: space.clone(),
                reclaim: reclaim.clone(),
            },
        )?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))?;
        let watermark_thread = spawn_watermark_thread(
            index.clone(),
            changes.clone(),
            current_segment.clone(),
            watermark.clone(),
        )?;

        let store = SegmentStore {
            segments_dir,
            large_dir,
            tmp_dir,
            large_threshold: config.large_message_threshold,
            segment_size: config.segment_size,
            index,
            tx: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            current_segment,
            reclaim,
            stats,
            space,
            holds_path: root.join("upstream-holds.json"),
            holds_lock: Mutex::new(()),
            message_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            census: Mutex::new(census),
            writable_probe: Arc::new(Mutex::new(None)),
            changes,
            watermark,
            watermark_thread: Mutex::new(Some(watermark_thread)),
            _lock: lock,
        };
        store.reclaim();
        // Recovery held every live entry in memory at once.
        crate::heap::release_freed_memory();
        Ok((store, report))
    }

    /// Save the clean-shutdown checkpoint (`checkpoint`): called by `close`
    /// once the writer has stopped and the index is flushed. Without it the
    /// next start replays every segment, which is slower, never wrong.
    fn save_checkpoint(&self) {
        let Some(schedule) = self.index.durable_schedule() else {
            tracing::warn!("spool: an index entry is still unwritten; no clean-shutdown checkpoint (the next start replays the segments)");
            return;
        };
        let root = self
            .segments_dir
            .parent()
            .expect("segments/ is inside the spool directory");
        let index_mark = fastrand::u64(..);
        let saved = (|| {
            self.index
                .mark_checkpoint(index_mark)
                .map_err(std::io::Error::other)?;
            // The reclaim lock keeps segment deletion out while the files are listed.
            let reclaim = self.reclaim.lock().expect("reclaim lock");
            let checkpoint = checkpoint::Checkpoint {
                files: checkpoint::SegmentFiles {
                    index_mark,
                    segments: checkpoint::segment_files(&self.segments_dir)?,
                    live: reclaim
                        .live
                        .iter()
                        .map(|(segment, live)| (*segment, live.messages, live.bytes))
                        .collect(),
                    oldest_segment: reclaim.oldest,
                    undeleted: reclaim.retry.clone(),
                },
                census: self.census.lock().expect("census lock").clone(),
                schedule,
            };
            checkpoint::save(root, &checkpoint)
        })();
        match saved {
            Ok(()) => tracing::info!("spool: clean-shutdown checkpoint written"),
            Err(err) => {
                tracing::warn!(error = %err, "spool: cannot write the clean-shutdown checkpoint (the next start replays the segments)")
            }
        }
    }

    /// Fault injection for tests: the next `count` index inserts fail as if
    /// sled had failed.
    #[doc(hidden)]
    pub fn fail_index_inserts(&self, count: usize) {
        self.index.fail_inserts(count);
    }

    /// Up to `limit` bytes of a message's stored body, from its segment or
    /// its large file, with where it lives (for the checksum).
    ///
    /// Looked up twice at most: compaction may copy the message forward and
    /// delete its old segment between the index lookup and the open.
    fn read_stored(&self, id: QueueId, limit: usize) -> Result<(Vec<u8>, Location), SpoolError> {
        let mut tries = 0;
        loop {
            let entry = self.index.get(id)?.ok_or(SpoolError::NotFound(id))?;
            let location = entry.location;
            let read = if location.external {
                use std::io::Read;
                let mut data = Vec::with_capacity(limit.min(entry.envelope.size as usize));
                std::fs::File::open(self.large_path(id))
                    .and_then(|file| file.take(limit as u64).read_to_end(&mut data))
                    .map(|_| data)
            } else {
                self.read_at(&location, limit)
            };
            match read {
                Ok(data) => return Ok((data, location)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && tries == 0 => tries += 1,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Up to `limit` bytes of the body stored inline at `location`.
    fn read_at(&self, location: &Location, limit: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(writer::segment_path(&self.segments_dir, location.segment))?;
        let mut data = vec![0u8; (location.body_len as usize).min(limit)];
        let start = location.offset + u64::from(location.header_len) + u64::from(location.meta_len);
        file.read_exact_at(&mut data, start)?;
        Ok(data)
    }

    /// One page of [`SpoolStore::page`], read from the index.
    fn page_now(
        &self,
        after: Option<QueueId>,
        limit: usize,
        keep: &mut (dyn for<'m> FnMut(&'m SpooledMessage) -> bool + Send),
    ) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
        let mut out = Vec::new();
        for item in self.index.iter_after(after) {
            let (id, entry) = item?;
            let message = SpooledMessage {
                id,
                envelope: entry.envelope,
                state: entry.state,
            };
            if keep(&message) {
                out.push(message);
                if out.len() == limit {
                    return Ok((out, Some(id)));
                }
            }
        }
        Ok((out, None))
    }

    async fn lock_message(&self, id: QueueId) -> tokio::sync::MutexGuard<'_, ()> {
        let shard = id.to_bytes()[15] as usize % self.message_locks.len();
        self.message_locks[shard].lock().await
    }

    fn read_holds(&self) -> Result<BTreeSet<String>, SpoolError> {
        match std::fs::read(&self.holds_path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|err| {
                SpoolError::Corrupt(
                    QueueId::from_bytes([0; 16]),
                    format!("{}: {err}", self.holds_path.display()),
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(err) => Err(err.into()),
        }
    }

    async fn append(
        &self,
        kind: Kind,
        meta: Vec<u8>,
        body: Vec<u8>,
        external_body_crc: Option<u32>,
    ) -> Result<Location, SpoolError> {
        let (done, result) = oneshot::channel();
        let op = Op::Append(AppendOp {
            kind,
            meta,
            body,
            external_body_crc,
            done,
        });
        {
            let tx = self.tx.lock().expect("tx lock");
            let tx = tx.as_ref().ok_or(SpoolError::Closed)?;
            tx.send(op).map_err(|_| SpoolError::Closed)?;
        }
        Ok(result.await.map_err(|_| SpoolError::Closed)??)
    }

    fn large_path(&self, id: QueueId) -> PathBuf {
        self.large_dir.join(format!("{id}.eml"))
    }

    /// Is the oldest segment finished but not yet below the watermark?
    fn reclaim_waits_for_watermark(&self) -> bool {
        let current = self.current_segment.load(Ordering::SeqCst);
        let reclaim = self.reclaim.lock().expect("reclaim lock");
        reclaim.oldest < current
            && reclaim.live_messages(reclaim.oldest) == 0
            && reclaim.oldest >= self.watermark.durable_below()
    }

    /// Move the watermark up to the segment being written now, waiting for
    /// the changes begun before (bounded); false when it could not.
    pub(super) async fn advance_watermark(&self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let step = crate::fsutil::run_blocking(|| {
                self.watermark
                    .advance(&self.changes, &self.current_segment, &self.index)
            });
            match step {
                Ok(Advance::Moved(_)) => return true,
                Ok(Advance::Waiting) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Ok(_) => return false,
                Err(err) => {
                    tracing::warn!(error = %err, "spool: index flush failed; the index watermark stays");
                    return false;
                }
            }
        }
    }

    /// Delete segments, oldest first, while every message in them is finished.
    ///
    /// The segments are chosen under the reclaim lock but deleted after it is
    /// released: the writer thread takes the same lock after every group
    /// commit, and unlinking a large segment can take milliseconds. A segment
    /// behind `oldest` is never written again, so deleting it unlocked is safe.
    /// Returns how many segments went, and their bytes.
    fn reclaim(&self) -> (usize, u64) {
        // Never at or past the watermark: recovery would not find the
        // records whose index changes a crash may still cost.
        let current = self
            .current_segment
            .load(Ordering::SeqCst)
            .min(self.watermark.durable_below());
        let finished = self
            .reclaim
            .lock()
            .expect("reclaim lock")
            .take_finished(current);
        let mut undeleted = Vec::new();
        let (mut deleted, mut freed) = (0, 0);
        for segment in finished {
            let path = writer::segment_path(&self.segments_dir, segment);
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            digest::remove(&self.segments_dir, segment);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.space.sub(size);
                    deleted += 1;
                    freed += size;
                    tracing::debug!(segment, "spool: segment reclaimed")
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(segment, error = %err, "spool: cannot delete finished segment; will retry");
                    undeleted.push(segment);
                }
            }
        }
        if !undeleted.is_empty() {
            self.reclaim
                .lock()
                .expect("reclaim lock")
                .retry
                .extend(undeleted);
        }
        (deleted, freed)
    }
}

#[async_trait]
impl SpoolStore for SegmentStore {
    fn new_body(&self) -> MessageBody {
        MessageBody::new(
            QueueId::generate(),
            self.large_threshold,
            self.tmp_dir.clone(),
        )
    }

    async fn enqueue(
        &self,
        mut body: MessageBody,
        mut envelope: Envelope,
    ) -> Result<QueueId, SpoolError> {
        let id = body.id;
        envelope.size = body.len;
        let state = MessageState::new_for(&envelope);
        let meta = serde_json::to_vec(&MessageMeta {
            id,
            envelope: envelope.clone(),
            state: state.clone(),
        })
        .expect("message metadata serialises");

        let (content, external_body_crc) = match body.spill.take() {
            Some(spill) => {
                let target = self.large_path(id);
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    spill.file.sync_data()?;
                    std::fs::rename(&spill.path, &target)
                })
                .await
                .map_err(|err| std::io::Error::other(err.to_string()))??;
                self.space.add(body.len);
                (Vec::new(), Some(body.crc.clone().finalize()))
            }
            None => (std::mem::take(&mut body.memory), None),
        };

        let mut change = self.changes.begin();
        let appended = self
            .append(Kind::Message, meta, content, external_body_crc)
            .await;
        change.finish_if_closed(&appended);
        let location = match appended {
            Ok(location) => location,
            Err(err) => {
                if external_body_crc.is_some() {
                    let _ = std::fs::remove_file(self.large_path(id));
                    self.space.sub(body.len);
                }
                return Err(err);
            }
        };
        self.census
            .lock()
            .expect("census lock")
            .add(&envelope, &state);
        let entry = IndexEntry {
            location,
            envelope,
            state,
        };
        if let Err(err) = self.index.insert(id, &entry) {
            // The message is durable; only sled missed it. The index keeps
            // it in memory (scheduled, readable, listed) and writes it again
            // on its next change; start-up reconciliation is the last resort.
            tracing::error!(queue_id = %id, error = %err, "spool: index insert failed; message is safe on disk and kept in memory");
        }
        change.finish();
        Ok(id)
    }

    async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError> {
        Ok(self.index.get(id)?.map(|entry| SpooledMessage {
            id,
            envelope: entry.envelope,
            state: entry.state,
        }))
    }

    async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        let (data, location) = self.read_stored(id, usize::MAX)?;
        if crc32fast::hash(&data) != location.body_crc {
            return Err(SpoolError::Corrupt(id, "body checksum mismatch".into()));
        }
        Ok(data)
    }

    /// A large body as its open file, its CRC checked by one streaming read
    /// (an open file stays readable if the message is removed meanwhile).
    async fn open_body(&self, id: QueueId) -> Result<StoredBody, SpoolError> {
        let entry = self.index.get(id)?.ok_or(SpoolError::NotFound(id))?;
        if !entry.location.external {
            return self.read_body(id).await.map(StoredBody::Memory);
        }
        let path = self.large_path(id);
        crate::fsutil::run_blocking(|| {
            use std::io::Read;
            let mut file = std::fs::File::open(&path).map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => SpoolError::NotFound(id),
                _ => err.into(),
            })?;
            let (mut crc, mut len) = (crc32fast::Hasher::new(), 0u64);
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                crc.update(&chunk[..n]);
                len += n as u64;
            }
            if crc.finalize() != entry.location.body_crc {
                return Err(SpoolError::Corrupt(id, "body checksum mismatch".into()));
            }
            Ok(StoredBody::File {
                file: Arc::new(file),
                len,
            })
        })
    }

    async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        Ok(self.read_stored(id, limit)?.0)
    }

    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<QueueId>, SpoolError> {
        Ok(self.index.due(now_ms, limit)?)
    }

    async fn next_due_ms(&self) -> Result<Option<u64>, SpoolError> {
        Ok(self.index.next_due_ms()?)
    }

    /// One state record, fsync'd, written under the message's lock.
    async fn update_state(
        &self,
        id: QueueId,
        change: &mut (dyn for<'s> FnMut(&'s mut MessageState) + Send),
    ) -> Result<StateUpdate, SpoolError> {
        let _guard = self.lock_message(id).await;
        let Some(entry) = self.index.get(id)? else {
            return Ok(StateUpdate::NotFound);
        };
        let mut state = entry.state.clone();
        change(&mut state);
        if state == entry.state {
            return Ok(StateUpdate::Unchanged);
        }
        let meta = serde_json::to_vec(&StateMeta {
            id,
            state: state.clone(),
        })
        .expect("state metadata serialises");
        let mut change = self.changes.begin();
        let appended = self.append(Kind::State, meta, Vec::new(), None).await;
        change.finish_if_closed(&appended);
        appended?;
        self.census
            .lock()
            .expect("census lock")
            .change(&entry.envelope, &entry.state, &state);
        self.index.update(id, |entry| entry.state = state)?;
        change.finish();
        Ok(StateUpdate::Written)
    }

    async fn park(&self, id: QueueId, until_ms: u64) -> Result<bool, SpoolError> {
        Ok(self.index.park(id, until_ms)?)
    }

    async fn held_upstreams(&self) -> Result<BTreeSet<String>, SpoolError> {
        self.read_holds()
    }

    /// Write, fsync, rename, fsync the directory (`fsutil::write_atomic`).
    async fn set_upstream_held(&self, upstream: &str, held: bool) -> Result<(), SpoolError> {
        let _guard = self.holds_lock.lock().expect("holds lock");
        let mut holds = self.read_holds()?;
        if held {
            holds.insert(upstream.to_string());
        } else {
            holds.remove(upstream);
        }
        crate::fsutil::write_atomic(
            &self.holds_path,
            &serde_json::to_vec_pretty(&holds).expect("holds serialise"),
            None,
        )?;
        Ok(())
    }

    /// A remove record, fsync'd, under the message's lock; its segment is
    /// reclaimed once every message in it is finished.
    async fn remove(&self, id: QueueId, reason: &str) -> Result<bool, SpoolError> {
        let guard = self.lock_message(id).await;
        if self.index.get(id)?.is_none() {
            return Ok(false);
        }
        let meta = serde_json::to_vec(&RemoveMeta {
            id,
            reason: reason.to_string(),
        })
        .expect("remove metadata serialises");
        let mut change = self.changes.begin();
        let appended = self.append(Kind::Remove, meta, Vec::new(), None).await;
        change.finish_if_closed(&appended);
        appended?;
        let Some(entry) = self.index.remove(id)? else {
            change.finish();
            return Ok(false);
        };
        self.census
            .lock()
            .expect("census lock")
            .remove(&entry.envelope, &entry.state);
        if entry.location.external && std::fs::remove_file(self.large_path(id)).is_ok() {
            self.space.sub(entry.envelope.size);
        }
        self.reclaim
            .lock()
            .expect("reclaim lock")
            .finish(&entry.location);
        change.finish();
        drop(guard);
        if self.reclaim_waits_for_watermark() {
            // Once per segment: the space is freed now, not a second later.
            self.advance_watermark().await;
        }
        self.reclaim();
        Ok(true)
    }

    /// Scans the whole index (`fsutil::run_blocking`).
    async fn list(&self) -> Result<Vec<SpooledMessage>, SpoolError> {
        crate::fsutil::run_blocking(|| {
            self.index
                .all()
                .map(|item| {
                    let (id, entry) = item?;
                    Ok(SpooledMessage {
                        id,
                        envelope: entry.envelope,
                        state: entry.state,
                    })
                })
                .collect()
        })
    }

    async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        keep: &mut (dyn for<'m> FnMut(&'m SpooledMessage) -> bool + Send),
    ) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
        crate::fsutil::run_blocking(|| self.page_now(after, limit, keep))
    }

    async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError> {
        Ok(self.index.for_recipient(address)?)
    }

    fn len(&self) -> usize {
        // The census, not sled: sled counts its entries by walking them.
        self.census.lock().expect("census lock").messages()
    }

    fn scheduled(&self) -> usize {
        self.index.scheduled()
    }

    fn check_space(&self, incoming: u64) -> Result<(), Shortage> {
        self.space.check(incoming)
    }

    fn used_bytes(&self) -> u64 {
        self.space.used()
    }

    fn free_bytes(&self) -> std::io::Result<u64> {
        self.space.free()
    }

    /// Create + fsync + remove a file in `tmp/`; the answer is reused for a
    /// second.
    async fn probe_writable(&self) -> Result<(), String> {
        const FRESH: Duration = Duration::from_secs(1);
        let (last_probe, path) = (self.writable_probe.clone(), self.tmp_dir.join(".probe"));
        let probe = tokio::task::spawn_blocking(move || {
            let mut last = last_probe.lock().expect("probe lock");
            if let Some((at, result)) = last.as_ref() {
                if at.elapsed() < FRESH {
                    return result.clone();
                }
            }
            let result = std::fs::File::create(&path)
                .and_then(|file| file.sync_all())
                .and_then(|()| std::fs::remove_file(&path))
                .map_err(|err| err.to_string());
            *last = Some((std::time::Instant::now(), result.clone()));
            result
        });
        probe
            .await
            .unwrap_or_else(|err| Err(format!("writability probe failed: {err}")))
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn census(&self) -> CensusSnapshot {
        self.census.lock().expect("census lock").snapshot()
    }

    /// Compaction of the oldest segment, when it is worth it (`compaction`).
    async fn maintain(&self) -> Result<Maintenance, SpoolError> {
        // Segments finished since the last removal (it may have found them
        // above the watermark then).
        let (segments, bytes) = self.reclaim();
        let mut done = self.compact_if_worthwhile().await?;
        done.segments_reclaimed += segments;
        done.bytes_reclaimed += bytes;
        Ok(done)
    }

    /// Finish pending appends, stop the writer and flush the index.
    async fn close(&self) {
        let tx = self.tx.lock().expect("tx lock").take();
        if let Some(tx) = tx {
            let (ack, done) = oneshot::channel();
            if tx.send(Op::Shutdown(ack)).is_ok() {
                let _ = done.await;
            }
        }
        let thread = self.writer_thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let watermark_thread = self.watermark_thread.lock().expect("thread lock").take();
        if let Some((stop, thread)) = watermark_thread {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Changes whose records the writer committed before it stopped may
        // still be updating the index and the counts.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.changes.under_way() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let consistent = self.changes.under_way() == 0 && !self.changes.abandoned();
        match self.index.flush() {
            Ok(()) if consistent => self.save_checkpoint(),
            Ok(()) => tracing::warn!(
                "spool: a change was interrupted between its record and its index entry; no clean-shutdown checkpoint (the next start replays the segments)"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "spool: index flush at shutdown failed (it will be verified at start-up)")
            }
        }
        let stats = &self.stats;
        tracing::info!(
            fsyncs = stats.fsyncs.load(Ordering::Relaxed),
            records = stats.fsync_records.load(Ordering::Relaxed),
            fsync_ms = stats.fsync_micros.load(Ordering::Relaxed) / 1000,
            "spool closed"
        );
    }
}

impl Drop for SegmentStore {
    /// Without `close` (a test, a failed start): stop the watermark thread
    /// before the index closes, or its handle would keep sled open and a
    /// new open of this spool would find the index locked.
    fn drop(&mut self) {
        let watermark_thread = self.watermark_thread.lock().expect("thread lock").take();
        if let Some((stop, thread)) = watermark_thread {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// The thread that moves the index watermark: a round about every second
/// (each costs one sled flush when it moves), sooner while one waits for
/// changes to finish. It ends when `stop` is dropped.
fn spawn_watermark_thread(
    index: Arc<index::Index>,
    changes: Arc<Changes>,
    current_segment: Arc<AtomicU64>,
    watermark: Arc<Watermark>,
) -> std::io::Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("spool-watermark".into())
        .spawn(move || {
            let mut pause = Duration::from_secs(1);
            let mut told = false;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(pause) {
                pause = match watermark.advance(&changes, &current_segment, &index) {
                    Ok(Advance::Waiting) => Duration::from_millis(5),
                    Ok(Advance::Moved(_)) => Duration::from_secs(1),
                    Ok(Advance::Stopped(why)) => {
                        if !told && changes.abandoned() {
                            told = true;
                            tracing::warn!(reason = why, "spool: index watermark stopped until the next start (finished segments are kept until then)");
                        }
                        Duration::from_secs(1)
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "spool: index flush failed; the index watermark stays");
                        Duration::from_secs(1)
                    }
                };
            }
        })?;
    Ok((stop, thread))
}

fn lock_spool(root: &Path) -> Result<std::fs::File, SpoolError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("lock"))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(SpoolError::Locked(root.to_path_buf()));
    }
    Ok(file)
}

/// A large body no live message points at: kept in `quarantine/` for an
/// operator, not deleted (recovery cannot tell a leftover of a finished
/// message from the body of one whose record was damaged).
fn quarantine_orphan_large_files(
    large_dir: &Path,
    quarantine_dir: &Path,
    live: &std::collections::BTreeMap<QueueId, IndexEntry>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(large_dir)? {
        let path = entry?.path();
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<QueueId>().ok());
        let keep = id.is_some_and(|id| live.get(&id).is_some_and(|e| e.location.external));
        if !keep {
            crate::fsutil::create_dir_durable(quarantine_dir)?;
            let target = quarantine_dir.join(path.file_name().unwrap_or_default());
            tracing::warn!(file = %path.display(), to = %target.display(), "spool: large body with no live message moved to quarantine");
            std::fs::rename(&path, &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod reclaim_tests {
    use super::{LiveRecords, Reclaim};
    use std::collections::HashMap;

    #[test]
    fn finished_segments_are_taken_oldest_first_and_never_the_current_one() {
        let mut reclaim = Reclaim {
            live: HashMap::from(
                [(1, 0), (2, 1), (3, 0)]
                    .map(|(segment, messages)| (segment, LiveRecords { messages, bytes: 0 })),
            ),
            oldest: 1,
            retry: Vec::new(),
        };
        assert_eq!(reclaim.take_finished(4), vec![1]);
        assert_eq!(reclaim.take_finished(4), Vec::<u64>::new());
        reclaim.live.get_mut(&2).unwrap().messages = 0;
        // 4 is being written: never handed out, even with no live messages.
        assert_eq!(reclaim.take_finished(4), vec![2, 3]);
        assert_eq!(reclaim.oldest, 4);
        reclaim.retry.push(3);
        assert_eq!(reclaim.take_finished(4), vec![3]);
        assert!(reclaim.retry.is_empty());
    }
}

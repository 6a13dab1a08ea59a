//! Segment compaction: copy the live messages of the oldest segment forward
//! so it can be reclaimed, instead of one long-deferred (or retained) message
//! pinning it and every segment after it.
//!
//! Why only the oldest: segments are deleted oldest first, which is what
//! keeps a `remove` record from ever outliving the message record it cancels
//! (see `Reclaim`). Compacting the head keeps that order: once its live
//! messages have been copied forward its live count is zero and the normal
//! reclamation deletes it, then the next segment becomes the head.
//!
//! Why it is safe at every instant, crash included: a copy is a fresh
//! message record (same queue ID, the envelope and state as they are now,
//! the same body bytes, or the same `large/` file) appended through the
//! writer, so it is fsync'd before anything points at it. It is made under
//! the message's lock, so no state change or removal of that message falls
//! between reading its state and the copy (a change is either in the copy or
//! in a record after it). Replay lets the later message record of an ID
//! replace the earlier one, so after a crash the message is found through
//! the original or through the copy, never neither; and a removed message is
//! never copied (the index is checked under the lock), so nothing is
//! resurrected. Only after the copy is indexed does the old segment's live
//! count drop; a message that could not be copied (a damaged body, an index
//! error) keeps its segment on disk.

use std::io::{BufReader, Read};
use std::path::Path;

use serde::Deserialize;

use super::record::{Header, Kind, MessageMeta, HEADER_LEN};
use super::{writer, Location, SegmentStore};
use crate::envelope::QueueId;
use crate::spool::{Maintenance, SpoolError};

/// Compact the oldest segment when at most this share of it is live.
const SPARSE_LIVE_SHARE: f64 = 0.5;
/// ... or when the segments take more than this many times the bytes of the
/// live message records in them (plus one segment of slack for the one being
/// filled): state records of retried messages and dead records spread over
/// many segments add up even when no single segment is sparse.
const MAX_AMPLIFICATION: f64 = 1.3;
/// Copies in flight at once: they ride the same group commits.
const COPIES_AT_ONCE: usize = 64;

/// Only the queue ID of a message record's metadata.
#[derive(Deserialize)]
struct RecordId {
    id: QueueId,
}

impl SegmentStore {
    /// Compact the oldest segment if it is worth it (see the thresholds),
    /// then reclaim what became finished.
    pub(super) async fn compact_if_worthwhile(&self) -> Result<Maintenance, SpoolError> {
        let Some(segment) = self.compaction_candidate()? else {
            return Ok(Maintenance::default());
        };
        self.compact(segment).await
    }

    /// The oldest sealed segment, if it still holds live messages and is
    /// sparse, or the spool as a whole is too large for what it holds.
    fn compaction_candidate(&self) -> Result<Option<u64>, SpoolError> {
        let current = self
            .current_segment
            .load(std::sync::atomic::Ordering::SeqCst);
        let (head, head_live, total_live) = {
            let reclaim = self.reclaim.lock().expect("reclaim lock");
            let head = reclaim.oldest;
            let Some(live) = reclaim.live.get(&head).filter(|live| live.messages > 0) else {
                // Finished already: reclamation, not compaction.
                return Ok(None);
            };
            (
                head,
                live.bytes,
                reclaim.live.values().map(|live| live.bytes).sum::<u64>(),
            )
        };
        if head >= current {
            return Ok(None);
        }
        let size_of = |segment: u64| {
            std::fs::metadata(writer::segment_path(&self.segments_dir, segment))
                .map_or(0, |m| m.len())
        };
        let head_size = size_of(head);
        let sparse = (head_live as f64) <= head_size as f64 * SPARSE_LIVE_SHARE;
        let on_disk: u64 = super::recovery::list_segments(&self.segments_dir)?
            .into_iter()
            .map(size_of)
            .sum();
        let amplified =
            on_disk as f64 > total_live as f64 * MAX_AMPLIFICATION + self.segment_size as f64;
        Ok((sparse || amplified).then_some(head))
    }

    /// Copy every live message of `segment` forward, then reclaim.
    pub(super) async fn compact(&self, segment: u64) -> Result<Maintenance, SpoolError> {
        let path = writer::segment_path(&self.segments_dir, segment);
        let records = crate::fsutil::run_blocking(|| message_records(&path, segment))?;
        let mut moved = 0;
        let mut kept = 0;
        for chunk in records.chunks(COPIES_AT_ONCE) {
            let copies = chunk
                .iter()
                .map(|&(offset, id)| self.copy_forward(segment, offset, id));
            for copied in futures_util::future::join_all(copies).await {
                match copied {
                    Ok(Copy::Moved) => moved += 1,
                    Ok(Copy::NotLive) => {}
                    Ok(Copy::Kept) => kept += 1,
                    Err(err) => return Err(err),
                }
            }
        }
        crate::metrics::get()
            .compacted_messages
            .inc_by(moved as u64);
        // The copies' index changes must be durable before the segment
        // they leave is deleted.
        self.advance_watermark().await;
        let (segments_reclaimed, bytes_reclaimed) = self.reclaim();
        tracing::info!(
            segment,
            moved,
            kept,
            segments_reclaimed,
            bytes_reclaimed,
            "spool: oldest segment compacted"
        );
        Ok(Maintenance {
            messages_moved: moved,
            segments_reclaimed,
            bytes_reclaimed,
        })
    }

    /// Copy one message forward if its current record is the one at
    /// `segment`/`offset` (see the module doc for why this order is safe).
    async fn copy_forward(
        &self,
        segment: u64,
        offset: u64,
        id: QueueId,
    ) -> Result<Copy, SpoolError> {
        let _guard = self.lock_message(id).await;
        let Some(entry) = self.index.get(id)? else {
            return Ok(Copy::NotLive);
        };
        let old = entry.location;
        if old.segment != segment || old.offset != offset {
            return Ok(Copy::NotLive);
        }
        let (body, external_body_crc) = if old.external {
            (Vec::new(), Some(old.body_crc))
        } else {
            let body = crate::fsutil::run_blocking(|| self.read_at(&old, usize::MAX))?;
            if crc32fast::hash(&body) != old.body_crc {
                tracing::error!(queue_id = %id, segment, "spool: body checksum mismatch; message not compacted, its segment stays");
                return Ok(Copy::Kept);
            }
            (body, None)
        };
        let meta = serde_json::to_vec(&MessageMeta {
            id,
            envelope: entry.envelope,
            state: entry.state,
        })
        .expect("message metadata serialises");
        let mut change = self.changes.begin();
        let appended = self
            .append(Kind::Message, meta, body, external_body_crc)
            .await;
        change.finish_if_closed(&appended);
        let new = appended?;
        if let Err(err) = self.index.relocate(id, new) {
            // The copy is durable and replay will find it; until then the
            // index points at the original, which therefore stays.
            tracing::error!(queue_id = %id, error = %err, "spool: index update after compaction copy failed; old segment kept");
            return Ok(Copy::Kept);
        }
        self.reclaim.lock().expect("reclaim lock").finish(&old);
        change.finish();
        Ok(Copy::Moved)
    }
}

enum Copy {
    Moved,
    /// Removed or already moved: nothing to do.
    NotLive,
    /// Live but left where it is (logged); its segment stays.
    Kept,
}

/// Offsets and queue IDs of the message records of a sealed segment, in
/// order. Stops at the first record it cannot read (logged): what follows
/// stays uncompacted and its segment on disk, never lost.
fn message_records(path: &Path, segment: u64) -> Result<Vec<(u64, QueueId)>, SpoolError> {
    let file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; super::record::HEADER_LEN_V2];
    let mut meta = Vec::new();
    while offset < file_len {
        let read = (|| -> Result<u64, String> {
            reader
                .read_exact(&mut header[..HEADER_LEN])
                .map_err(|e| e.to_string())?;
            let len = Header::len_for_magic(&header[..4]).ok_or("bad magic")?;
            reader
                .read_exact(&mut header[HEADER_LEN..len])
                .map_err(|e| e.to_string())?;
            let decoded = Header::decode(&header[..len]).ok_or("bad header")?;
            if offset + decoded.total_len() > file_len {
                return Err("record runs past the end".into());
            }
            meta.resize(decoded.meta_len as usize, 0);
            reader.read_exact(&mut meta).map_err(|e| e.to_string())?;
            if crc32fast::hash(&meta) != decoded.meta_crc {
                return Err("metadata checksum mismatch".into());
            }
            if decoded.kind == Kind::Message {
                let RecordId { id } = serde_json::from_slice(&meta).map_err(|e| e.to_string())?;
                records.push((offset, id));
            }
            reader
                .seek_relative(decoded.body_len as i64)
                .map_err(|e| e.to_string())?;
            Ok(decoded.total_len())
        })();
        match read {
            Ok(len) => offset += len,
            Err(why) => {
                tracing::warn!(segment, offset, reason = %why, "spool: compaction stops at an unreadable record; the rest of the segment stays");
                break;
            }
        }
    }
    Ok(records)
}

impl Location {
    /// Bytes of the record in its segment (header, metadata, inline body).
    pub(super) fn record_len(&self) -> u64 {
        u64::from(self.header_len) + u64::from(self.meta_len) + self.body_len
    }
}

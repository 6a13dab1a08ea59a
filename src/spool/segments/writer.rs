//! Group commit: one thread owns the open segment and turns a burst of appends
//! from many SMTP sessions into one `write` and one `fdatasync`.
//!
//! Why a thread and not a task: fsync blocks for milliseconds, and while it runs
//! new appends pile up in the channel; the next loop iteration takes all of them
//! at once. That pile-up *is* the batching — no timers, no added latency when
//! the spool is idle (a lone message is synced immediately).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::oneshot;

use super::record::{self, Kind};
use super::Location;

/// Keep one batch's buffer bounded so a burst of large messages doesn't balloon.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
const MAX_BATCH_OPS: usize = 1024;

pub(crate) struct AppendOp {
    pub kind: Kind,
    pub meta: Vec<u8>,
    pub body: Vec<u8>,
    /// Set when the body was already made durable in `large/`.
    pub external_body_crc: Option<u32>,
    pub done: oneshot::Sender<std::io::Result<Location>>,
}

pub(crate) enum Op {
    Append(AppendOp),
    /// Stop after finishing everything queued before it.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct SegmentWriter {
    segments_dir: PathBuf,
    large_dir: PathBuf,
    segment_size: u64,
    current: u64,
    file: File,
    len: u64,
    key: Arc<record::RecordKey>,
    shared: Shared,
    /// Headers and metadata of the records in the current segment, for its
    /// digest (`super::digest`); `None` once that would not be much smaller
    /// than the segment (mostly small state and remove records).
    digest: Option<Vec<u8>>,
}

/// What the writer thread shares with the [`super::SegmentStore`].
pub(crate) struct Shared {
    /// The segment being written, so the spool never reclaims it.
    pub current_id: Arc<AtomicU64>,
    pub stats: Arc<crate::spool::Stats>,
    pub space: Arc<crate::spool::space::Space>,
    /// Raised here, as records become durable (see `super::Reclaim`).
    pub reclaim: Arc<std::sync::Mutex<super::Reclaim>>,
}

pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

impl SegmentWriter {
    pub fn open(
        segments_dir: PathBuf,
        large_dir: PathBuf,
        segment_size: u64,
        first_segment: u64,
        key: Arc<record::RecordKey>,
        shared: Shared,
    ) -> std::io::Result<SegmentWriter> {
        let file = create_segment(&segments_dir, first_segment)?;
        shared.current_id.store(first_segment, Ordering::SeqCst);
        Ok(SegmentWriter {
            segments_dir,
            large_dir,
            segment_size,
            current: first_segment,
            file,
            len: 0,
            key,
            shared,
            digest: Some(Vec::new()),
        })
    }

    pub fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut batch: Vec<AppendOp> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1024 * 1024);
        while let Ok(first) = rx.recv() {
            let mut shutdown = None;
            match first {
                Op::Append(op) => batch.push(op),
                Op::Shutdown(ack) => shutdown = Some(ack),
            }
            let mut bytes: usize = batch.iter().map(|op| op.meta.len() + op.body.len()).sum();
            while shutdown.is_none() && batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(Op::Append(op)) => {
                        bytes += op.meta.len() + op.body.len();
                        batch.push(op);
                    }
                    Ok(Op::Shutdown(ack)) => shutdown = Some(ack),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch, &mut buf);
            }
            if let Some(ack) = shutdown {
                // Nothing is appended to this segment again (the next start
                // begins a new one), so it gets its digest now.
                if self.file.sync_all().is_ok() {
                    self.save_digest();
                }
                let _ = ack.send(());
                return;
            }
        }
    }

    fn commit(&mut self, batch: &mut Vec<AppendOp>, buf: &mut Vec<u8>) {
        if self.len >= self.segment_size {
            if let Err(err) = self.roll() {
                tracing::error!(error = %err, "spool: cannot start a new segment");
                fail_all(batch, &err);
                return;
            }
        }
        buf.clear();
        let start = self.len;
        let mut locations = Vec::with_capacity(batch.len());
        let mut any_external = false;
        for op in batch.iter() {
            let offset = start + buf.len() as u64;
            record::encode_into(
                buf,
                &self.key,
                op.kind,
                &op.meta,
                &op.body,
                op.external_body_crc,
            );
            any_external |= op.external_body_crc.is_some();
            locations.push(Location {
                segment: self.current,
                offset,
                meta_len: op.meta.len() as u32,
                body_len: op.body.len() as u64,
                body_crc: op
                    .external_body_crc
                    .unwrap_or_else(|| crc32fast::hash(&op.body)),
                external: op.external_body_crc.is_some(),
                header_len: record::HEADER_LEN_V2 as u32,
            });
        }
        let started = Instant::now();
        let result = (|| {
            if any_external {
                // The renames into large/ must be durable before a record points at them.
                sync_dir(&self.large_dir)?;
            }
            self.file.write_all(buf)?;
            self.file.sync_data()
        })();
        match result {
            Ok(()) => {
                // Counted only when the write and the fdatasync both ran
                // and succeeded: the counter is what tests of group commit
                // (and the fsync metric) rely on.
                self.shared
                    .stats
                    .record_fsync(started.elapsed(), batch.len());
                crate::metrics::get()
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.len += buf.len() as u64;
                self.shared.space.add(buf.len() as u64);
                // Counted before any caller learns the location: see `Reclaim`.
                {
                    let mut reclaim = self.shared.reclaim.lock().expect("reclaim lock");
                    let (mut messages, mut bytes) = (0, 0);
                    for location in batch
                        .iter()
                        .zip(&locations)
                        .filter(|(op, _)| op.kind == Kind::Message)
                        .map(|(_, location)| location)
                    {
                        messages += 1;
                        bytes += location.record_len();
                    }
                    reclaim.count_new_messages(self.current, messages, bytes);
                }
                self.collect_digest(buf, start, &locations);
                for (op, location) in batch.drain(..).zip(locations) {
                    let _ = op.done.send(Ok(location));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, segment = self.current, "spool: append failed; nothing in this batch was acknowledged");
                fail_all(batch, &err);
                // Never append after a torn or unsynced region, and after a
                // failed fsync the kernel may have dropped the dirty pages:
                // trim what this batch wrote and continue in a new segment.
                // (The seek matters if no new segment can be made: the next
                // batch must start exactly where this one did.)
                let _ = self
                    .file
                    .set_len(start)
                    .and_then(|_| self.file.seek(SeekFrom::Start(start)))
                    .and_then(|_| self.file.sync_all());
                if let Err(err) = self.roll() {
                    tracing::error!(error = %err, "spool: cannot start a new segment");
                }
            }
        }
    }

    /// Add the headers and metadata of the records just made durable.
    fn collect_digest(&mut self, buf: &[u8], start: u64, locations: &[Location]) {
        let Some(digest) = self.digest.as_mut() else {
            return;
        };
        for location in locations {
            let at = (location.offset - start) as usize;
            let end = at + location.header_len as usize + location.meta_len as usize;
            digest.extend_from_slice(&buf[at..end]);
        }
        if digest.len() as u64 > self.segment_size / 8 {
            self.digest = None;
        }
    }

    fn save_digest(&mut self) {
        if let Some(digest) = self.digest.take() {
            if self.len > 0 {
                super::digest::save(&self.segments_dir, self.current, self.len, &digest);
            }
        }
    }

    fn roll(&mut self) -> std::io::Result<()> {
        let next = self.current + 1;
        let file = create_segment(&self.segments_dir, next)?;
        if self.file.sync_all().is_ok() {
            self.save_digest();
        }
        self.digest = Some(Vec::new());
        self.file = file;
        self.current = next;
        self.len = 0;
        self.shared.current_id.store(next, Ordering::SeqCst);
        Ok(())
    }
}

fn fail_all(batch: &mut Vec<AppendOp>, err: &std::io::Error) {
    for op in batch.drain(..) {
        let _ = op
            .done
            .send(Err(std::io::Error::new(err.kind(), err.to_string())));
    }
}

fn create_segment(dir: &Path, id: u64) -> std::io::Result<File> {
    // A digest left under this number describes no segment that will exist.
    super::digest::remove(dir, id);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(segment_path(dir, id))?;
    sync_dir(dir)?;
    Ok(file)
}

use crate::fsutil::sync_dir;

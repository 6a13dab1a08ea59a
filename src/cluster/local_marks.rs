//! What a cluster node keeps about replication on its own disk, beside the
//! spool (`<spool>/cluster/`):
//! - `unreplicated/<queue id>`: one empty file per message this node
//!   acknowledged while the database did not commit (`on_unavailable =
//!   "accept-local"`, or `replicate = "after-ack"` with a failed upload).
//!   Created and its directory fsync'd **before the 250**, so the mark
//!   survives a crash and the reconciler finds the message again; removed
//!   once the database holds the message. A mark left by a crash after the
//!   upload only costs one more idempotent upload.
//! - `spool-id`: a random name for this spool directory, also written to
//!   the node's database row. A node whose spool is new (disk replaced,
//!   directory deleted) finds a different name there and so knows that the
//!   database's messages it lacks were not delivered by it: they are kept
//!   (marked orphaned), never deleted as finished.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::envelope::QueueId;

pub struct LocalMarks {
    unreplicated_dir: PathBuf,
    count: AtomicUsize,
    /// The spool directory's name (see the module doc).
    pub spool_id: String,
}

impl LocalMarks {
    pub fn open(spool_dir: &Path) -> std::io::Result<LocalMarks> {
        let dir = spool_dir.join("cluster");
        let unreplicated_dir = dir.join("unreplicated");
        crate::fsutil::create_dir_durable(&dir)?;
        crate::fsutil::create_dir_durable(&unreplicated_dir)?;
        let id_file = dir.join("spool-id");
        let spool_id = match std::fs::read_to_string(&id_file) {
            Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
            Ok(_) => new_spool_id(&id_file)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => new_spool_id(&id_file)?,
            Err(err) => return Err(err),
        };
        let marks = LocalMarks {
            unreplicated_dir,
            count: AtomicUsize::new(0),
            spool_id,
        };
        let count = marks.unreplicated()?.len();
        marks.count.store(count, Ordering::Relaxed);
        crate::metrics::get().cluster_unreplicated.set(count as i64);
        Ok(marks)
    }

    /// Mark a message unreplicated, durably (file, then its directory).
    /// Blocks on two fsyncs: off the async workers' hands
    /// (`fsutil::run_blocking`).
    pub fn mark(&self, id: QueueId) -> std::io::Result<()> {
        crate::fsutil::run_blocking(|| self.mark_now(id))
    }

    fn mark_now(&self, id: QueueId) -> std::io::Result<()> {
        let path = self.unreplicated_dir.join(id.to_string());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.sync_all()?;
        crate::fsutil::sync_dir(&self.unreplicated_dir)?;
        let now = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::get().cluster_unreplicated.set(now as i64);
        Ok(())
    }

    /// The database holds the message now (or it is gone): drop its mark.
    pub fn clear(&self, id: QueueId) {
        let path = self.unreplicated_dir.join(id.to_string());
        if std::fs::remove_file(&path).is_ok() {
            let now = self.count.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            crate::metrics::get().cluster_unreplicated.set(now as i64);
        }
    }

    /// Every marked message, in queue-ID order. Names that are not queue
    /// IDs (an editor's backup file) are skipped.
    pub fn unreplicated(&self) -> std::io::Result<BTreeSet<QueueId>> {
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&self.unreplicated_dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.parse::<QueueId>().ok()) {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    pub fn unreplicated_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

fn new_spool_id(path: &Path) -> std::io::Result<String> {
    let id = crate::secrets::random_token()[..20].to_string();
    crate::fsutil::write_atomic(path, id.as_bytes(), Some(0o600))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopening_and_the_spool_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let marks = LocalMarks::open(dir.path()).unwrap();
        let (a, b) = (QueueId::generate(), QueueId::generate());
        marks.mark(a).unwrap();
        marks.mark(b).unwrap();
        marks.clear(a);
        marks.clear(a);
        std::fs::write(dir.path().join("cluster/unreplicated/notes.txt~"), b"").unwrap();
        let again = LocalMarks::open(dir.path()).unwrap();
        assert_eq!(again.unreplicated().unwrap(), BTreeSet::from([b]));
        assert_eq!(again.unreplicated_count(), 1);
        assert_eq!(again.spool_id, marks.spool_id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            LocalMarks::open(other.path()).unwrap().spool_id,
            marks.spool_id
        );
    }
}

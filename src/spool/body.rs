//! A message body while it is being received: in memory while small, spilled to
//! `tmp/` once it crosses the large-message threshold, so a 50 MB message costs
//! a file, not 50 MB of RAM.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use crate::envelope::QueueId;

/// A spooled message to send: small ones in memory; a large one as its
/// open file (checksum verified when opened), read as it goes out, so a
/// drain of large messages does not hold them whole in memory.
pub enum StoredBody {
    Memory(Vec<u8>),
    File {
        file: std::sync::Arc<File>,
        len: u64,
    },
}

pub struct MessageBody {
    pub(crate) id: QueueId,
    pub(crate) memory: Vec<u8>,
    pub(crate) spill: Option<Spill>,
    pub(crate) len: u64,
    pub(crate) crc: crc32fast::Hasher,
    threshold: u64,
    tmp_dir: PathBuf,
}

pub(crate) struct Spill {
    pub file: File,
    pub path: PathBuf,
}

impl MessageBody {
    pub(crate) fn new(id: QueueId, threshold: u64, tmp_dir: PathBuf) -> MessageBody {
        MessageBody {
            id,
            memory: Vec::with_capacity(16 * 1024),
            spill: None,
            len: 0,
            crc: crc32fast::Hasher::new(),
            threshold,
            tmp_dir,
        }
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The whole body, while it is still held in memory (not spilled).
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.spill.is_none().then_some(self.memory.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `limit` bytes of the body (all of it when shorter), read
    /// back from the spill file if it was spilled: for checks that need the
    /// message as a whole (DKIM) but must stay bounded in memory.
    pub fn read_prefix(&self, limit: u64) -> std::io::Result<Vec<u8>> {
        match &self.spill {
            None => Ok(self.memory[..self.memory.len().min(limit as usize)].to_vec()),
            Some(spill) => {
                use std::io::Read;
                let mut out = Vec::with_capacity(self.len.min(limit) as usize);
                File::open(&spill.path)?.take(limit).read_to_end(&mut out)?;
                Ok(out)
            }
        }
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.crc.update(data);
        self.len += data.len() as u64;
        if let Some(spill) = &mut self.spill {
            return spill.file.write_all(data);
        }
        self.memory.extend_from_slice(data);
        if self.memory.len() as u64 > self.threshold {
            let path = self.tmp_dir.join(format!("{}.part", self.id));
            let mut file = File::create(&path)?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.spill = Some(Spill { file, path });
        }
        Ok(())
    }
}

impl Drop for MessageBody {
    fn drop(&mut self) {
        // A body dropped without being enqueued (rejected, aborted, crashed
        // session) leaves nothing behind; enqueue takes `spill` out first.
        if let Some(spill) = self.spill.take() {
            let _ = std::fs::remove_file(&spill.path);
        }
    }
}

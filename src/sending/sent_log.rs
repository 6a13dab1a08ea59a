//! What each user sent through the web reader: the Sent view's list, and
//! the hourly limit's memory across restarts (a restart, or an attacker
//! causing one, must not hand out a fresh hour).
//!
//! One JSON line per message in `<spool>/sent.jsonl`, appended and synced
//! before the page says "sent". The delivery status is not kept here: the
//! spool has it while the message is queued or retained.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::envelope::QueueId;

/// One message a user sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    pub at_ms: u64,
    /// The account (lower case).
    pub user: String,
    pub queue_id: QueueId,
    /// The copy queued for the sender's own mailbox upstream
    /// (`[send] copy_to_mailbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<QueueId>,
    /// Without `<>`.
    pub message_id: String,
    pub from: String,
    /// To, Cc and Bcc as queued.
    pub recipients: Vec<String>,
    pub subject: String,
    pub size: usize,
}

pub struct SentLog {
    path: PathBuf,
    /// One appender at a time, so lines never interleave.
    append: Mutex<()>,
}

impl SentLog {
    pub fn new(path: PathBuf) -> SentLog {
        SentLog {
            path,
            append: Mutex::new(()),
        }
    }

    /// Append `record` and sync it. Blocking.
    pub fn append(&self, record: &SentRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _one = self.append.lock().expect("sent log lock");
        let created = !self.path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)?;
        // After a crash mid-append the file may end in half a line: start
        // on a fresh one, or this record would be glued to it and lost.
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1)?;
            if last[0] != b'\n' {
                line.insert(0, b'\n');
            }
        }
        file.write_all(&line)?;
        file.sync_data()?;
        if created {
            if let Some(dir) = self.path.parent() {
                crate::fsutil::sync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Every record `keep` accepts, oldest first. A line torn by a crash
    /// (the last one, unsynced) is skipped. Blocking.
    pub fn read(&self, keep: impl Fn(&SentRecord) -> bool) -> std::io::Result<Vec<SentRecord>> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        Ok(text
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<SentRecord>(line).ok())
            .filter(|record| keep(record))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, at_ms: u64) -> SentRecord {
        SentRecord {
            at_ms,
            user: user.into(),
            queue_id: QueueId::generate(),
            copy: None,
            message_id: format!("{at_ms}@mx2.example.com"),
            from: user.into(),
            recipients: vec!["a@remote.test".into()],
            subject: "件名".into(),
            size: 100,
        }
    }

    #[test]
    fn records_survive_reopening_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sent.jsonl");
        let log = SentLog::new(path.clone());
        let first = record("taro@example.com", 1);
        log.append(&first).unwrap();
        log.append(&record("hanako@example.com", 2)).unwrap();
        // A crash in the middle of an append.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"at_ms\":3,\"user\":\"ta").unwrap();
        let again = SentLog::new(path);
        let taro = again.read(|r| r.user == "taro@example.com").unwrap();
        assert_eq!(taro, vec![first]);
        assert_eq!(again.read(|_| true).unwrap().len(), 2);
        // Appending after a torn line still gives whole records.
        again.append(&record("taro@example.com", 4)).unwrap();
        assert_eq!(
            again.read(|r| r.user == "taro@example.com").unwrap().len(),
            2
        );
    }
}

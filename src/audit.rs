//! The audit log: who did what to which mail, when, from where.
//!
//! JSON lines, appended and fsync'd one by one (admin actions are rare and
//! must not be lost), rotated by size. Tamper evidence: every line carries
//! `prev`, the SHA-256 of the previous line's bytes, so editing or deleting a
//! line breaks the chain at the next one; the chain continues across
//! rotated files. `breakwater audit verify` walks it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// Milliseconds since the epoch.
    pub ts_ms: u64,
    /// Token name or web user.
    pub actor: String,
    pub ip: String,
    pub action: String,
    /// What it was applied to: queue IDs, an upstream, a filter.
    pub target: String,
    pub result: String,
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
}

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    state: Mutex<Tail>,
}

struct Tail {
    file: File,
    len: u64,
    last_hash: String,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// The hash of the last line of a file (GENESIS for an empty or missing file).
fn last_line_hash(path: &Path) -> std::io::Result<String> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(GENESIS.into()),
        Err(err) => return Err(err),
    };
    let trimmed = data.strip_suffix(b"\n").unwrap_or(&data);
    if trimmed.is_empty() {
        return Ok(GENESIS.into());
    }
    let start = trimmed
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    Ok(crate::secrets::sha256_hex(&trimmed[start..]))
}

impl AuditLog {
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut last_hash = last_line_hash(path)?;
        if last_hash == GENESIS {
            // An empty current file continues the chain of the newest rotated one.
            last_hash = last_line_hash(&rotated(path, 1))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(AuditLog {
            path: path.to_path_buf(),
            max_bytes,
            keep: keep.max(1),
            state: Mutex::new(Tail {
                file,
                len,
                last_hash,
            }),
        })
    }

    /// Append one entry durably. Returns the entry as written.
    ///
    /// Callable from async handlers (web, admin API, drills): the entry is
    /// fsync'd under the log's lock, so on a multi-threaded runtime the wait
    /// happens in `block_in_place`, off the async worker's hands, and a burst
    /// of requests never stalls the other tasks on that worker.
    pub fn record(
        &self,
        actor: &str,
        ip: &str,
        action: &str,
        target: &str,
        result: &str,
    ) -> std::io::Result<AuditEntry> {
        crate::fsutil::run_blocking(|| self.append(actor, ip, action, target, result))
    }

    fn append(
        &self,
        actor: &str,
        ip: &str,
        action: &str,
        target: &str,
        result: &str,
    ) -> std::io::Result<AuditEntry> {
        let mut tail = self.state.lock().expect("audit lock");
        if tail.len >= self.max_bytes {
            self.rotate(&mut tail)?;
        }
        let entry = AuditEntry {
            ts_ms: crate::envelope::now_ms(),
            actor: actor.to_string(),
            ip: ip.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
            prev: tail.last_hash.clone(),
        };
        let line = serde_json::to_string(&entry).expect("audit entry serialises");
        tail.file.write_all(format!("{line}\n").as_bytes())?;
        tail.file.sync_data()?;
        tail.len += line.len() as u64 + 1;
        tail.last_hash = crate::secrets::sha256_hex(line.as_bytes());
        Ok(entry)
    }

    fn rotate(&self, tail: &mut Tail) -> std::io::Result<()> {
        let _ = std::fs::remove_file(rotated(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        tail.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        tail.len = 0;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Verify the chain on disk while no entry is being appended, and
    /// that it ends where this process last wrote: the hash kept in memory
    /// is an anchor from outside the file, so an edited or removed last
    /// line (which a chain alone cannot show) is found too.
    pub fn verify_chain(&self) -> Result<usize, String> {
        crate::fsutil::run_blocking(|| {
            let tail = self.state.lock().expect("audit lock");
            let (checked, end) = verify_to_end(&self.path)?;
            let end = end.unwrap_or_else(|| GENESIS.to_string());
            if end != tail.last_hash {
                return Err(format!(
                    "{}: the log does not end with the entry this server wrote last (its last line was edited or removed)",
                    self.path.display()
                ));
            }
            Ok(checked)
        })
    }

    /// Entries (newest last) matching the filters, from the current file and
    /// the rotated ones, at most `limit` (the newest).
    pub fn query(
        &self,
        actor: Option<&str>,
        action: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> std::io::Result<Vec<AuditEntry>> {
        let mut files: Vec<PathBuf> = (1..=self.keep)
            .rev()
            .map(|n| rotated(&self.path, n))
            .filter(|p| p.exists())
            .collect();
        files.push(self.path.clone());
        let mut out = Vec::new();
        for file in files {
            for line in BufReader::new(File::open(file)?).lines() {
                let Ok(entry) = serde_json::from_str::<AuditEntry>(&line?) else {
                    continue;
                };
                if actor.is_some_and(|a| a != entry.actor)
                    || action.is_some_and(|a| a != entry.action)
                    || since_ms.is_some_and(|s| entry.ts_ms < s)
                {
                    continue;
                }
                out.push(entry);
            }
        }
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }
}

/// Check the hash chain of an audit log (oldest rotated file first). Returns
/// the number of lines checked, or where the chain first breaks.
pub fn verify(path: &Path) -> Result<usize, String> {
    verify_to_end(path).map(|(checked, _)| checked)
}

/// [`verify`], also returning the hash of the last line (the chain's end).
fn verify_to_end(path: &Path) -> Result<(usize, Option<String>), String> {
    let mut files: Vec<PathBuf> = (1..1000)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    // The oldest kept file may start after entries that rotation already
    // deleted: its first line is taken as the anchor.
    let mut expected: Option<String> = (files.len() == 1).then(|| GENESIS.to_string());
    let mut checked = 0;
    for file in files {
        let reader =
            BufReader::new(File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?);
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", file.display()))?;
            let entry: AuditEntry = serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not an audit entry: {e}", file.display(), n + 1))?;
            if expected.as_ref().is_some_and(|e| *e != entry.prev) {
                return Err(format!(
                    "{}:{}: chain broken (line does not follow the previous one: it was edited, removed or inserted)",
                    file.display(),
                    n + 1
                ));
            }
            expected = Some(crate::secrets::sha256_hex(line.as_bytes()));
            checked += 1;
        }
    }
    Ok((checked, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_survives_rotation_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 300, 3).unwrap();
        for i in 0..10 {
            log.record("ops", "127.0.0.1", "hold", &format!("id{i}"), "ok")
                .unwrap();
        }
        drop(log);
        assert!(rotated(&path, 1).exists(), "rotated by size");
        // Reopening continues the chain.
        let log = AuditLog::open(&path, 300, 3).unwrap();
        log.record("ops", "127.0.0.1", "release", "id0", "ok")
            .unwrap();
        let checked = verify(&path).unwrap();
        assert!(checked >= 3, "{checked}");
        assert_eq!(log.query(None, Some("release"), None, 10).unwrap().len(), 1);

        // Edit a line that has a successor (the last line has none, which is
        // the known limit of a hash chain without an outside anchor).
        let older = rotated(&path, 1);
        let text = std::fs::read_to_string(&older).unwrap();
        std::fs::write(&older, text.replacen("\"ok\"", "\"denied\"", 1)).unwrap();
        let broken = verify(&path).unwrap_err();
        assert!(broken.contains("chain broken"), "{broken}");
        assert!(log.verify_chain().is_err());
    }

    #[test]
    fn the_running_log_notices_its_last_line_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1 << 20, 3).unwrap();
        assert_eq!(log.verify_chain(), Ok(0));
        for i in 0..3 {
            log.record("ops", "127.0.0.1", "hold", &format!("id{i}"), "ok")
                .unwrap();
        }
        assert_eq!(log.verify_chain(), Ok(3));
        // The chain alone cannot see this; the in-memory end can.
        let text = std::fs::read_to_string(&path).unwrap();
        let last_start = text.trim_end().rfind('\n').unwrap() + 1;
        std::fs::write(
            &path,
            format!(
                "{}{}",
                &text[..last_start],
                text[last_start..].replacen("id2", "id9", 1)
            ),
        )
        .unwrap();
        assert!(
            verify(&path).is_ok(),
            "a chain has no successor to check the last line"
        );
        let err = log.verify_chain().unwrap_err();
        assert!(err.contains("last line was edited or removed"), "{err}");
    }
}

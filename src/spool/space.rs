//! Storage admission: may the spool take another message?
//!
//! Why a floor and a quota rather than waiting for ENOSPC: a write that fails
//! half-way costs the client a retry, but a disk that fills to the last block
//! also stops the *delivery* side, which needs a few hundred bytes per
//! message to record "delivered" — and those records are what free the
//! space. So new mail is refused (452 4.3.1, RFC 3463 "mail system full")
//! while there is still room, like Postfix's `queue_minfree`, and intake
//! resumes by itself once delivery has freed space: the check is live, never
//! latched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why a message cannot be taken now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortage {
    /// The file system's free space is (or would be) under `min_free`.
    FreeSpace { free: u64, min_free: u64 },
    /// The spool's own files are (or would be) over `max_bytes`.
    Quota { used: u64, max_bytes: u64 },
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shortage::FreeSpace { free, min_free } => write!(
                f,
                "free space {} is below spool.min_free {}",
                bytesize::ByteSize(*free),
                bytesize::ByteSize(*min_free)
            ),
            Shortage::Quota { used, max_bytes } => write!(
                f,
                "spool size {} has reached spool.max_bytes {}",
                bytesize::ByteSize(*used),
                bytesize::ByteSize(*max_bytes)
            ),
        }
    }
}

pub(crate) struct Space {
    dir: PathBuf,
    min_free: u64,
    max_bytes: Option<u64>,
    /// Bytes in segment files and large bodies, kept up to date by the
    /// writer, `enqueue`, `remove` and reclamation.
    used: AtomicU64,
    /// Whether intake is currently refused, so the log says so once per
    /// change instead of once per client.
    short: AtomicBool,
}

impl Space {
    pub fn new(dir: &Path, min_free: u64, max_bytes: Option<u64>, used: u64) -> Space {
        Space {
            dir: dir.to_path_buf(),
            min_free,
            max_bytes,
            used: AtomicU64::new(used),
            short: AtomicBool::new(false),
        }
    }

    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Room for `incoming` more bytes? Checked at MAIL (with the declared
    /// SIZE, or 0) and again at end of data with the real size.
    pub fn check(&self, incoming: u64) -> Result<(), Shortage> {
        let verdict = self.evaluate(incoming);
        // Only the "no size yet" check flips the logged state: a single
        // oversized SIZE= must not announce that intake stopped.
        if incoming == 0 {
            let was_short = self.short.swap(verdict.is_err(), Ordering::Relaxed);
            match (&verdict, was_short) {
                (Err(shortage), false) => {
                    tracing::error!(%shortage, "spool: refusing new mail (452 4.3.1) until space returns")
                }
                (Ok(()), true) => tracing::warn!(
                    free = %bytesize::ByteSize(self.free().unwrap_or(0)),
                    "spool: space available again; accepting mail"
                ),
                _ => {}
            }
        }
        verdict
    }

    fn evaluate(&self, incoming: u64) -> Result<(), Shortage> {
        if let Some(max_bytes) = self.max_bytes {
            let used = self.used();
            if used.saturating_add(incoming) > max_bytes {
                return Err(Shortage::Quota { used, max_bytes });
            }
        }
        match self.free() {
            // `incoming > free` is checked on its own: with `min_free = 0`
            // the saturating difference alone would never refuse.
            Ok(free) if incoming > free || free - incoming < self.min_free => {
                Err(Shortage::FreeSpace {
                    free,
                    min_free: self.min_free,
                })
            }
            Ok(_) => Ok(()),
            // statvfs failing on a directory we hold open is not a reason to
            // refuse mail; the write itself will tell.
            Err(err) => {
                tracing::warn!(error = %err, "spool: cannot read free space");
                Ok(())
            }
        }
    }

    /// Bytes available to an unprivileged writer (what the spool can use).
    pub fn free(&self) -> std::io::Result<u64> {
        free_bytes(&self.dir)
    }
}

pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("spool path contains a NUL byte"))?;
    // SAFETY: statvfs only writes into the zeroed struct we pass.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // fsblkcnt_t and c_ulong are u64 here but 32 bits on some targets.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(size))
}

/// Bytes of regular files directly in `dir` (segments or large bodies).
pub(crate) fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Is this error the file system being full (ENOSPC) or over a quota (EDQUOT)?
pub fn is_storage_full(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_counts_incoming_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path(), 0, Some(1000), 900);
        assert_eq!(space.check(0), Ok(()));
        assert_eq!(
            space.check(200),
            Err(Shortage::Quota {
                used: 900,
                max_bytes: 1000
            })
        );
        space.add(200);
        assert!(space.check(0).is_err());
        space.sub(500);
        assert_eq!(space.check(200), Ok(()));
        space.sub(10_000);
        assert_eq!(space.used(), 0);
    }

    #[test]
    fn floor_uses_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let space = Space::new(dir.path(), free.saturating_add(1 << 40), None, 0);
        assert!(matches!(space.check(0), Err(Shortage::FreeSpace { .. })));
        let space = Space::new(dir.path(), 0, None, 0);
        assert_eq!(space.check(0), Ok(()));
        assert!(space.check(free.saturating_add(1 << 40)).is_err());
    }
}

//! The one way a whole file is replaced on disk, for every stage (spool
//! holds and record key, tokens, accounts, recipient lists, the callout
//! cache, drill reports): write a temporary file next to it, fsync it,
//! rename it over the target, fsync the directory. After a crash or power
//! loss the target is the old file or the new one, never a torn mix, and a
//! returned `Ok` means the new one survives. Imports nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replace `path` with `data` durably. `mode` sets the permission bits of
/// the new file (e.g. 0o600 for secrets); `None` keeps the default.
pub fn write_atomic(path: &Path, data: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = parent_dir(path);
    create_dir_durable(&dir)?;
    let tmp = temporary_name(path);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&tmp)?;
        hand_to_directory_owner(&file, &dir)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// When root writes into a directory another user owns (`sudo breakwater
/// user add` into the data directory of a service that runs as its own
/// user), the new file takes the directory's owner and group: otherwise
/// the service could no longer read its own accounts or tokens, or take
/// their locks. Anyone else cannot give files away and needs not to.
pub fn hand_to_directory_owner(file: &File, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let owner = std::fs::metadata(dir)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))
}

/// `create_dir_all`, but each directory it creates is made durable in its
/// parent: a new directory's name is a directory entry like any other, and
/// after a power cut an unsynced one is gone with everything under it.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_dir(dir);
    if parent != dir {
        create_dir_durable(&parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(&parent),
        // Another thread or process made it meanwhile; it synced it.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(err),
    }
}

/// Make a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.name.tmp` beside the target: same file system (rename is atomic), and
/// never a name the target's own readers look at.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp"))
}

/// Run work that may take a while (an fsync, a scan of the spool index,
/// decoding a large message) from async code without stalling the other tasks on this worker:
/// in `block_in_place` on a multi-threaded runtime, inline on a
/// current-thread one (where `block_in_place` is not allowed and there is
/// no other worker to hand the tasks to anyway).
pub fn run_blocking<T>(work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Run `edit` holding an exclusive lock (`flock`) on `<path>.lock`: the
/// read-modify-write of a file that several processes edit (`breakwater
/// user`, `breakwater token`) never loses one of two concurrent changes.
/// The lock is released when `edit` returns; `lock_failed` turns a failure
/// to take it into the caller's error.
pub fn with_lock<R, E>(
    path: &Path,
    lock_failed: impl FnOnce(std::io::Error) -> E,
    edit: impl FnOnce() -> Result<R, E>,
) -> Result<R, E> {
    let lock = match take_lock(path) {
        Ok(lock) => lock,
        Err(err) => return Err(lock_failed(err)),
    };
    let result = edit();
    drop(lock);
    result
}

fn take_lock(path: &Path) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", lock_path.display()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(named)?;
    hand_to_directory_owner(&lock, &parent_dir(path)).map_err(named)?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(named(std::io::Error::last_os_error()));
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.json");
        write_atomic(&path, b"one", Some(0o600)).unwrap();
        write_atomic(&path, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}

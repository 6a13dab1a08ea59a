//! Handing freed heap back to the operating system.
//!
//! Why: glibc keeps freed memory in its arenas (one per thread that
//! allocated), so a process that once held a large working set (recovery's
//! million index entries, a search index pass over a million messages)
//! keeps that peak as its RSS for good unless it asks for a trim. Shared by
//! the spool and the web's search index; owned by neither.

/// Return free heap pages of every arena to the kernel (Linux with glibc;
/// elsewhere nothing to do).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Heap arenas for the whole process: two, instead of glibc's default of
/// eight per core, unless the operator set `MALLOC_ARENA_MAX` (glibc reads
/// it itself; that choice wins). Every thread that allocates gets an arena
/// up to that limit, and freed memory stays in the arena it came from: with
/// the tokio workers, sled's and tantivy's threads, a search index pass over
/// a million messages took RSS from 225 MB to 720-870 MB; with two arenas it
/// stayed at 320 MB (docs/BENCHMARKS.md). Call before any thread is started.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other
    // threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, DEFAULT_ARENAS);
    }
}

/// See [`limit_arenas`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_ARENAS: libc::c_int = 2;

//! The index watermark: a segment below which every record's index change is
//! durable in sled, so that recovery after a crash compares only the
//! records from there on with the index, not a million entries.
//!
//! Why it is needed: a change is durable once its record is fsync'd, but its
//! index entry follows a moment later and sled flushes only every second. A
//! crash can therefore cost the index the last second or so of changes, and
//! nothing else. The watermark says where that "last second" may begin.
//!
//! How it moves (one round): note the segment being written now, then flip
//! the epoch of [`Changes`]. Every change that begins after the flip appends
//! its record after the note, so in that segment or a later one; the changes
//! that began before it are waited for. Once they have all finished, sled is
//! flushed and the noted segment is the new watermark (also written into
//! sled, where recovery reads it). A change abandoned half-way (its caller's
//! future dropped while the writer still committed its record) or an index
//! entry only held in memory stops the watermark: recovery then compares
//! from the last watermark, which is still true.
//!
//! Segments are deleted only below the watermark, so every record whose index
//! change may not be durable is still on disk for recovery to find.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::index::{Index, IndexResult};

/// Changes whose record may be durable before their index entry, census and
/// schedule follow it, counted per epoch.
#[derive(Default)]
pub(super) struct Changes {
    under_way: [AtomicUsize; 2],
    epoch: AtomicUsize,
    abandoned: AtomicBool,
}

/// One change under way; dropped without [`Change::finish`], it marks the
/// store's in-memory state as possibly behind its segments.
pub(super) struct Change<'a> {
    changes: &'a Changes,
    slot: usize,
    finished: bool,
}

impl Changes {
    pub fn begin(&self) -> Change<'_> {
        loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            let slot = epoch & 1;
            self.under_way[slot].fetch_add(1, Ordering::SeqCst);
            // Counted in the epoch it saw only if that epoch is still
            // current: a round that flipped in between must not miss it.
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return Change {
                    changes: self,
                    slot,
                    finished: false,
                };
            }
            self.under_way[slot].fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn under_way(&self) -> usize {
        self.under_way
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum()
    }

    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Start a new epoch; returns the slot of the one that ended.
    fn flip(&self) -> usize {
        self.epoch.fetch_add(1, Ordering::SeqCst) & 1
    }

    fn all_finished(&self, slot: usize) -> bool {
        self.under_way[slot].load(Ordering::SeqCst) == 0
    }
}

impl Change<'_> {
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Finished already when the append failed because the spool is closed
    /// (nothing was written); any other failure leaves it unfinished.
    pub fn finish_if_closed<T>(&mut self, appended: &Result<T, crate::spool::SpoolError>) {
        if matches!(appended, Err(crate::spool::SpoolError::Closed)) {
            self.finished = true;
        }
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.changes.abandoned.store(true, Ordering::SeqCst);
        }
        self.changes.under_way[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

/// A round in progress: the segment noted before its flip, and the slot of
/// the changes it waits for.
#[derive(Clone, Copy)]
struct Round {
    segment: u64,
    slot: usize,
}

pub(super) struct Watermark {
    durable_below: AtomicU64,
    round: Mutex<Option<Round>>,
}

/// What one step of [`Watermark::advance`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Advance {
    /// The watermark is now this segment.
    Moved(u64),
    /// Changes from before the flip are still finishing: step again soon.
    Waiting,
    /// It cannot move now (see [`Watermark`]'s rules); why.
    Stopped(&'static str),
}

impl Watermark {
    pub fn new(durable_below: u64) -> Watermark {
        Watermark {
            durable_below: AtomicU64::new(durable_below),
            round: Mutex::new(None),
        }
    }

    pub fn durable_below(&self) -> u64 {
        self.durable_below.load(Ordering::SeqCst)
    }

    /// One step towards moving the watermark up to the segment being
    /// written now (blocks for one sled flush when it moves).
    pub fn advance(
        &self,
        changes: &Changes,
        current_segment: &AtomicU64,
        index: &Index,
    ) -> IndexResult<Advance> {
        let mut round = self.round.lock().expect("watermark lock");
        let open = match *round {
            Some(open) => open,
            None => {
                // The note comes before the flip (see the module doc).
                let segment = current_segment.load(Ordering::SeqCst);
                let open = Round {
                    segment,
                    slot: changes.flip(),
                };
                *round = Some(open);
                open
            }
        };
        if !changes.all_finished(open.slot) {
            return Ok(Advance::Waiting);
        }
        *round = None;
        if changes.abandoned() {
            return Ok(Advance::Stopped(
                "a change was abandoned between its record and its index entry",
            ));
        }
        if !index.heal() {
            return Ok(Advance::Stopped("an index entry is only held in memory"));
        }
        if open.segment <= self.durable_below() {
            return Ok(Advance::Moved(self.durable_below()));
        }
        index.flush()?;
        index.set_durable_below(open.segment)?;
        self.durable_below.store(open.segment, Ordering::SeqCst);
        Ok(Advance::Moved(open.segment))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_waits_for_changes_begun_before_its_flip_and_not_for_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let changes = Changes::default();
        let current = AtomicU64::new(3);
        let watermark = Watermark::new(1);

        let early = changes.begin();
        assert_eq!(
            watermark.advance(&changes, &current, &index).unwrap(),
            Advance::Waiting
        );
        // Begun after the flip, and still under way: not waited for.
        let late = changes.begin();
        current.store(5, Ordering::SeqCst);
        assert_eq!(
            watermark.advance(&changes, &current, &index).unwrap(),
            Advance::Waiting,
            "the same round goes on"
        );
        early.finish();
        assert_eq!(
            watermark.advance(&changes, &current, &index).unwrap(),
            Advance::Moved(3),
            "the segment noted before the flip, not the one written now"
        );
        assert_eq!(index.durable_below().unwrap(), Some(3));
        // The next round waits for `late`.
        assert_eq!(
            watermark.advance(&changes, &current, &index).unwrap(),
            Advance::Waiting
        );
        drop(late);
        assert!(matches!(
            watermark.advance(&changes, &current, &index).unwrap(),
            Advance::Stopped(_)
        ));
        assert_eq!(watermark.durable_below(), 3, "an abandoned change stops it");
    }
}

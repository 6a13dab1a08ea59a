//! The clean-shutdown checkpoint: what the store keeps in memory (the
//! schedule, the census, the live records per segment), saved when it closes
//! cleanly so that the next start need not replay every segment and compare
//! every index entry with it.
//!
//! Why it is safe to trust: it is written only after the writer has stopped
//! (nothing more can be appended), every committed change has reached the
//! index and the counts (none was abandoned half-way: `Changes`), the index
//! has been flushed (sled fsyncs) and every acknowledged message is in sled; it names every segment file
//! with its length, and is used only when the files on disk are exactly
//! those and the index carries the checkpoint's mark (a deleted, fresh or
//! restored index does not). It is deleted (durably) at the start that reads it, before anything
//! new is written, so it describes one moment and can never be used twice: a
//! crash after that start finds no checkpoint and replays, as always.
//!
//! What a clean start then does not do: look for damage that happened while
//! the spool was stopped. Bytes of a segment changed in place (a bad
//! sector) are found when the message is read (every body is checked
//! against its CRC, so a damaged one is never delivered), not at start; an
//! index damaged behind sled's back is not found until the next replay.
//! Deleting the checkpoint (`clean-shutdown` in the spool directory) forces
//! the full replay and verification at the next start.
//!
//! Format (little-endian): `BWCKPT02`, u32 length of a JSON header, the
//! header, then `schedule_len` × (16-byte queue ID, u64 durable due time),
//! then `arrivals_len` × (u64 arrival ms, u64 messages), then a CRC32 of
//! everything before it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::envelope::QueueId;
use crate::spool::{Census, CensusCounts};

pub(crate) const FILE_NAME: &str = "clean-shutdown";
const MAGIC: &[u8; 8] = b"BWCKPT02";

/// The store's in-memory state at a clean shutdown.
pub(crate) struct Checkpoint {
    pub files: SegmentFiles,
    pub census: Census,
    /// Every scheduled message with its durable due time.
    pub schedule: Vec<(QueueId, u64)>,
}

/// The segment files a checkpoint describes, and their live records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentFiles {
    /// Also stored in the index it was written with (`Index::mark_checkpoint`).
    pub index_mark: u64,
    /// Every segment file (ID, length), oldest first.
    pub segments: Vec<(u64, u64)>,
    /// Live records per segment: (segment, messages, bytes).
    pub live: Vec<(u64, usize, u64)>,
    pub oldest_segment: u64,
    /// Finished segments whose deletion had failed.
    pub undeleted: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    files: SegmentFiles,
    census: CensusCounts,
    schedule_len: u64,
    arrivals_len: u64,
}

/// Segment files on disk with their lengths, oldest first.
pub(crate) fn segment_files(segments_dir: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    super::recovery::list_segments(segments_dir)?
        .into_iter()
        .map(|id| {
            let len = std::fs::metadata(super::writer::segment_path(segments_dir, id))?.len();
            Ok((id, len))
        })
        .collect()
}

/// Save `checkpoint` in `root` (durably).
pub(crate) fn save(root: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let (counts, arrivals) = checkpoint.census.to_parts();
    let header = Header {
        files: checkpoint.files.clone(),
        census: counts,
        schedule_len: checkpoint.schedule.len() as u64,
        arrivals_len: arrivals.len() as u64,
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(
        16 + header.len() + checkpoint.schedule.len() * 24 + arrivals.len() * 16,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for (id, due) in &checkpoint.schedule {
        out.extend_from_slice(&id.to_bytes());
        out.extend_from_slice(&due.to_le_bytes());
    }
    for (ms, count) in arrivals {
        out.extend_from_slice(&ms.to_le_bytes());
        out.extend_from_slice(&(count as u64).to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    crate::fsutil::write_atomic(&root.join(FILE_NAME), &out, Some(0o600))
}

/// What [`take`] found.
pub(crate) enum Found {
    /// No checkpoint: the last stop was not clean (or it was never written).
    None,
    /// A checkpoint that cannot be used, and why (it is gone now).
    Unusable(String),
    Usable(Box<Checkpoint>),
}

/// Read the checkpoint in `root` and delete it, durably, whatever it holds.
/// It is usable only when it is intact and the segment files on disk are
/// exactly the ones it names, with the same lengths.
pub(crate) fn take(root: &Path, segments_dir: &Path) -> std::io::Result<Found> {
    let path = root.join(FILE_NAME);
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Found::None),
        Err(err) => return Err(err),
    };
    // Gone before anything is written: it describes the spool as it is now
    // and never again.
    std::fs::remove_file(&path)?;
    crate::fsutil::sync_dir(root)?;
    let checkpoint = match decode(&data) {
        Ok(checkpoint) => checkpoint,
        Err(why) => return Ok(Found::Unusable(why)),
    };
    let on_disk = segment_files(segments_dir)?;
    if on_disk != checkpoint.files.segments {
        return Ok(Found::Unusable(format!(
            "the segment files changed since it was written ({} on disk, {} in the checkpoint)",
            on_disk.len(),
            checkpoint.files.segments.len()
        )));
    }
    Ok(Found::Usable(Box::new(checkpoint)))
}

fn decode(data: &[u8]) -> Result<Checkpoint, String> {
    let body_len = data
        .len()
        .checked_sub(4)
        .filter(|&n| n >= 12)
        .ok_or("too short")?;
    let (body, crc) = data.split_at(body_len);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    if &body[..8] != MAGIC {
        return Err("unknown format".into());
    }
    let header_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    let rest = &body[12..];
    if rest.len() < header_len {
        return Err("header runs past the end".into());
    }
    let (header, mut rest) = rest.split_at(header_len);
    let header: Header = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let expected = header.schedule_len.checked_mul(24).and_then(|s| {
        header
            .arrivals_len
            .checked_mul(16)
            .and_then(|a| s.checked_add(a))
    });
    if expected != Some(rest.len() as u64) {
        return Err("length mismatch".into());
    }
    let u64_at = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    let mut schedule = Vec::with_capacity(header.schedule_len as usize);
    for _ in 0..header.schedule_len {
        let (place, tail) = rest.split_at(24);
        let id = QueueId::from_bytes(place[..16].try_into().expect("16 bytes"));
        schedule.push((id, u64_at(&place[16..])));
        rest = tail;
    }
    let mut arrivals = Vec::with_capacity(header.arrivals_len as usize);
    for _ in 0..header.arrivals_len {
        let (arrival, tail) = rest.split_at(16);
        arrivals.push((u64_at(&arrival[..8]), u64_at(&arrival[8..]) as usize));
        rest = tail;
    }
    let census =
        Census::from_parts(header.census, arrivals).ok_or("the census names an unknown status")?;
    Ok(Checkpoint {
        files: header.files,
        census,
        schedule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            files: SegmentFiles {
                index_mark: 7,
                segments: vec![(3, 100), (4, 0)],
                live: vec![(3, 2, 90)],
                oldest_segment: 3,
                undeleted: vec![2],
            },
            census: Census::default(),
            schedule: vec![(QueueId::generate(), 17), (QueueId::generate(), u64::MAX)],
        }
    }

    #[test]
    fn a_checkpoint_is_used_once_and_only_while_the_segments_match() {
        let dir = tempfile::tempdir().unwrap();
        let segments = dir.path().join("segments");
        std::fs::create_dir(&segments).unwrap();
        std::fs::write(super::super::writer::segment_path(&segments, 3), [0; 100]).unwrap();
        std::fs::write(super::super::writer::segment_path(&segments, 4), []).unwrap();
        let checkpoint = sample();
        save(dir.path(), &checkpoint).unwrap();
        let Found::Usable(read) = take(dir.path(), &segments).unwrap() else {
            panic!("usable");
        };
        assert_eq!(read.schedule, checkpoint.schedule);
        assert_eq!(read.files, checkpoint.files);
        assert!(matches!(take(dir.path(), &segments).unwrap(), Found::None));

        // A segment that grew after the checkpoint makes it unusable.
        save(dir.path(), &checkpoint).unwrap();
        std::fs::write(super::super::writer::segment_path(&segments, 4), [1]).unwrap();
        assert!(matches!(
            take(dir.path(), &segments).unwrap(),
            Found::Unusable(_)
        ));
        // So does any damage to the file.
        save(dir.path(), &checkpoint).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 10;
        data[last] ^= 1;
        std::fs::write(&path, data).unwrap();
        assert!(matches!(
            take(dir.path(), &segments).unwrap(),
            Found::Unusable(why) if why.contains("checksum")
        ));
    }
}

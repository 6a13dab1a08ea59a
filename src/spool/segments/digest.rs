//! Segment digests: every record's header and metadata of one finished
//! segment, without the bodies, in a small file beside it
//! (`<id>.digest`).
//!
//! Why: recovery after a crash replays every segment to learn what is live
//! (the schedule, the census, the records per segment). It needs only the
//! headers and metadata, but with messages of a few KiB these share pages
//! with the bodies, so it reads every byte: 8 GB for a million messages,
//! 14 s with a cold page cache. Their digests are about a twentieth of that.
//!
//! Why it is safe: a digest is derived data, never the truth. It is used
//! only for a finished segment (never the newest one, whose bodies recovery
//! checks and whose torn tail it cuts), only when its CRC verifies, it names
//! that segment, and its records, laid end to end, add up to exactly the
//! segment's length on disk. Anything else — missing, torn, stale, from a
//! different length — and recovery reads the segment itself (and writes a
//! new digest for next time). It is written once the segment is finished
//! (nothing is ever appended to it again), without fsync: a digest lost to
//! power loss fails its CRC or is missing, and costs only the slower read.
//! What a digest does not show, like a sealed segment read without its
//! bodies: a body damaged in place (found when the message is read, by its
//! CRC) — and, unlike reading the segment, a header damaged in place in
//! the segment (harmless to reading: the body is found by its location and
//! checked against its CRC; compaction, or a recovery that reads the
//! segment, reports it).
//!
//! Format (little-endian): `BWDIGE01`, u64 segment ID, u64 segment length,
//! then each record's header and metadata exactly as in the segment, in
//! order, then a CRC-32 of everything before it.

use std::path::{Path, PathBuf};

use super::record::Header;

const MAGIC: &[u8; 8] = b"BWDIGE01";
const PREAMBLE: usize = 24;

pub(crate) fn path(segments_dir: &Path, segment: u64) -> PathBuf {
    segments_dir.join(format!("{segment:016}.digest"))
}

/// Save the digest of `segment` (`records`: its headers and metadata, as
/// collected while it was written or read). Not durable, on purpose (see
/// the module docs); a failure only costs the next crash recovery time.
pub(crate) fn save(segments_dir: &Path, segment: u64, segment_len: u64, records: &[u8]) {
    let target = path(segments_dir, segment);
    let written = (|| {
        let mut out = Vec::with_capacity(PREAMBLE + records.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&segment.to_le_bytes());
        out.extend_from_slice(&segment_len.to_le_bytes());
        out.extend_from_slice(records);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let temporary = target.with_extension("digest.tmp");
        std::fs::write(&temporary, &out)?;
        std::fs::rename(&temporary, &target)
    })();
    if let Err(err) = written {
        tracing::warn!(segment, error = %err, "spool: cannot write segment digest (crash recovery will read the segment instead)");
    }
}

/// Delete the digest of `segment`, if any (before the segment itself goes,
/// or before its number is used for a new segment).
pub(crate) fn remove(segments_dir: &Path, segment: u64) {
    match std::fs::remove_file(path(segments_dir, segment)) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(segment, error = %err, "spool: cannot delete segment digest")
        }
    }
}

/// Delete digests of segments that are gone (a crash between deleting the
/// two, or an old spool), so none can ever describe a later segment.
pub(crate) fn remove_orphans(segments_dir: &Path, segments: &[u64]) -> std::io::Result<()> {
    for entry in std::fs::read_dir(segments_dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let id = name
            .strip_suffix(".digest")
            .or_else(|| name.strip_suffix(".digest.tmp"))
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = id {
            if name.ends_with(".tmp") || segments.binary_search(&id).is_err() {
                let _ = std::fs::remove_file(segments_dir.join(name.as_ref()));
            }
        }
    }
    Ok(())
}

/// The records of `segment`'s digest, when it exists and describes exactly
/// the `segment_len` bytes on disk; `None` means: read the segment.
pub(crate) fn load(segments_dir: &Path, segment: u64, segment_len: u64) -> Option<Digest> {
    let bytes = std::fs::read(path(segments_dir, segment)).ok()?;
    match verify(bytes, segment, segment_len) {
        Ok(digest) => Some(digest),
        Err(why) => {
            tracing::info!(
                segment,
                reason = why,
                "spool: segment digest not used; reading the segment"
            );
            None
        }
    }
}

fn verify(bytes: Vec<u8>, segment: u64, segment_len: u64) -> Result<Digest, &'static str> {
    if bytes.len() < PREAMBLE + 4 || &bytes[..8] != MAGIC {
        return Err("not a digest");
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(content) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch");
    }
    let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if le64(8) != segment {
        return Err("names another segment");
    }
    if le64(16) != segment_len {
        return Err("segment length differs");
    }
    let digest = Digest { bytes };
    let mut end = 0;
    for record in digest.records() {
        let record = record?;
        end = record.offset + record.header.total_len();
        if end > segment_len {
            return Err("records run past the segment");
        }
    }
    if end != segment_len {
        return Err("records do not cover the segment");
    }
    Ok(digest)
}

/// A loaded, verified digest.
pub(crate) struct Digest {
    bytes: Vec<u8>,
}

/// One record as the digest describes it.
pub(crate) struct DigestRecord<'a> {
    /// Where the record starts in the segment.
    pub offset: u64,
    pub header: Header,
    pub meta: &'a [u8],
}

impl Digest {
    /// The records in segment order; an `Err` ends the walk.
    pub(crate) fn records(&self) -> impl Iterator<Item = Result<DigestRecord<'_>, &'static str>> {
        let records = &self.bytes[PREAMBLE..self.bytes.len() - 4];
        let mut at = 0usize;
        let mut offset = 0u64;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || at == records.len() {
                return None;
            }
            let step = (|| {
                let header = Header::decode(&records[at..]).ok_or("bad header")?;
                let header_len = header.len as usize;
                let meta_end = at
                    .checked_add(header_len)
                    .and_then(|end| end.checked_add(header.meta_len as usize))
                    .filter(|&end| end <= records.len())
                    .ok_or("short metadata")?;
                let meta = &records[at + header_len..meta_end];
                if crc32fast::hash(meta) != header.meta_crc {
                    return Err("metadata checksum mismatch");
                }
                Ok((header, meta, meta_end))
            })();
            match step {
                Ok((header, meta, next)) => {
                    let record = DigestRecord {
                        offset,
                        header,
                        meta,
                    };
                    offset += header.total_len();
                    at = next;
                    Some(Ok(record))
                }
                Err(why) => {
                    failed = true;
                    Some(Err(why))
                }
            }
        })
    }
}

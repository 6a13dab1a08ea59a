//! Start-up recovery: read the segments (the truth), cut off a torn tail, and
//! make the sled index agree with them — verifying it, or rebuilding it.
//!
//! Sealed segments were fully fsync'd before the next one was created, so for
//! them only headers and metadata are read (bodies are skipped, checked on
//! read). The newest segment may end in a torn batch from a crash: its bodies
//! are checked too and the file is cut at the first bad record. Nothing in a
//! torn batch had been acknowledged, because acknowledgement waits for fsync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::index::{Index, IndexEntry};
use super::record::{
    Header, Kind, MessageMeta, RecordKey, RemoveMeta, StateMeta, HEADER_LEN, HEADER_LEN_V2,
};
use super::Location;
use crate::envelope::QueueId;

/// What replaying the segments produced.
pub(crate) struct Replay {
    pub live: BTreeMap<QueueId, IndexEntry>,
    /// Segment IDs present on disk, oldest first.
    pub segments: Vec<u64>,
    pub records: u64,
    /// IDs with a record at or after the index watermark (when replayed
    /// with one), in no order and possibly repeated: the only messages
    /// whose index entries a crash can have left behind.
    pub tail: Vec<QueueId>,
    /// Set when damage (or a torn tail) was found: records may have been
    /// lost anywhere, so the whole index is compared.
    pub damaged: bool,
    /// Finished segments replayed from their digests (`super::digest`)
    /// instead of being read.
    pub from_digests: usize,
}

pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Replay every segment; with `tail_from` (the index watermark), also note
/// the IDs of records in segments from there on.
pub(crate) fn replay(
    segments_dir: &Path,
    key: &RecordKey,
    quarantine_dir: &Path,
    tail_from: Option<u64>,
) -> std::io::Result<Replay> {
    let segments = list_segments(segments_dir)?;
    let mut replay = Replay {
        live: BTreeMap::new(),
        segments: segments.clone(),
        records: 0,
        tail: Vec::new(),
        damaged: false,
        from_digests: 0,
    };
    super::digest::remove_orphans(segments_dir, &segments)?;
    for (i, &segment) in segments.iter().enumerate() {
        let is_newest = i + 1 == segments.len();
        let path = super::writer::segment_path(segments_dir, segment);
        let in_tail = tail_from.is_some_and(|from| segment >= from);
        let place = Place {
            segment,
            is_newest,
            in_tail,
        };
        if !is_newest {
            let len = std::fs::metadata(&path)?.len();
            if let Some(digest) = super::digest::load(segments_dir, segment, len) {
                match replay_digest(&digest, place, &mut replay) {
                    Ok(()) => {
                        replay.from_digests += 1;
                        continue;
                    }
                    // Reading the segment applies the same records again
                    // from its start, which leaves the same result (each
                    // record sets, not adds), and handles the damage.
                    Err(why) => {
                        tracing::warn!(segment, reason = %why, "spool: segment digest does not replay; reading the segment")
                    }
                }
            }
        }
        replay_segment(&path, place, key, quarantine_dir, &mut replay)?;
    }
    Ok(replay)
}

/// Replay a finished segment from its verified digest.
fn replay_digest(
    digest: &super::digest::Digest,
    place: Place,
    replay: &mut Replay,
) -> Result<(), String> {
    for record in digest.records() {
        let record = record.map_err(str::to_string)?;
        apply(&record.header, record.meta, place, record.offset, replay)?;
        replay.records += 1;
    }
    Ok(())
}

/// Which segment is being replayed, and what that means for it.
#[derive(Clone, Copy)]
struct Place {
    segment: u64,
    /// Its bodies are checked too, and a torn end is cut off.
    is_newest: bool,
    /// At or after the index watermark.
    in_tail: bool,
}

/// Where damage was found in a segment, and how far it reaches.
struct Damage {
    at: u64,
    why: String,
    /// The damaged record's own end, when its header is intact: recovery
    /// goes on there and never looks for a header inside its claimed length
    /// (a message body may hold record-shaped bytes).
    record_end: Option<u64>,
}

fn replay_segment(
    path: &PathBuf,
    place: Place,
    key: &RecordKey,
    quarantine_dir: &Path,
    replay: &mut Replay,
) -> std::io::Result<()> {
    let Place {
        segment, is_newest, ..
    } = place;
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut offset = 0u64;
    let mut header_buf = [0u8; HEADER_LEN_V2];
    let mut meta = Vec::new();
    let mut body = Vec::new();
    // Headers and metadata for the segment's digest: it is finished after
    // this start (appends go to a new segment), so the next recovery need
    // not read it again. Not kept after damage (it is read again then) or
    // when it would not be much smaller than the segment.
    let mut digest = Some(Vec::new());
    loop {
        if offset == file_len {
            if let Some(records) = digest.filter(|_| file_len > 0) {
                super::digest::save(
                    path.parent().expect("segment dir"),
                    segment,
                    file_len,
                    &records,
                );
            }
            return Ok(());
        }
        let outcome: Result<u64, Damage> = (|| {
            let bad = |why: &str, record_end: Option<u64>| Damage {
                at: offset,
                why: why.to_string(),
                record_end,
            };
            if file_len - offset < HEADER_LEN as u64 {
                return Err(bad("short header", None));
            }
            reader
                .read_exact(&mut header_buf[..HEADER_LEN])
                .map_err(|e| bad(&e.to_string(), None))?;
            let header_len =
                Header::len_for_magic(&header_buf[..4]).ok_or_else(|| bad("bad header", None))?;
            if header_len > HEADER_LEN {
                if file_len - offset < header_len as u64 {
                    return Err(bad("short header", None));
                }
                reader
                    .read_exact(&mut header_buf[HEADER_LEN..header_len])
                    .map_err(|e| bad(&e.to_string(), None))?;
            }
            let header =
                Header::decode(&header_buf[..header_len]).ok_or_else(|| bad("bad header", None))?;
            let end = offset + header.total_len();
            if end > file_len {
                return Err(bad("record runs past end of file", None));
            }
            let bad = |why: &str| bad(why, Some(end));
            meta.resize(header.meta_len as usize, 0);
            reader
                .read_exact(&mut meta)
                .map_err(|e| bad(&e.to_string()))?;
            if crc32fast::hash(&meta) != header.meta_crc {
                return Err(bad("metadata checksum mismatch"));
            }
            if is_newest && !header.external_body() {
                body.resize(header.body_len as usize, 0);
                reader
                    .read_exact(&mut body)
                    .map_err(|e| bad(&e.to_string()))?;
                if crc32fast::hash(&body) != header.body_crc {
                    return Err(bad("body checksum mismatch"));
                }
            } else {
                reader
                    .seek_relative(header.body_len as i64)
                    .map_err(|e| bad(&e.to_string()))?;
            }
            apply(&header, &meta, place, offset, replay).map_err(|e| bad(&e))?;
            if let Some(records) = digest.as_mut() {
                records.extend_from_slice(&header_buf[..header_len]);
                records.extend_from_slice(&meta);
                if records.len() as u64 > file_len / 8 {
                    digest = None;
                }
            }
            Ok(header.total_len())
        })();
        let damage = match outcome {
            Ok(len) => {
                offset += len;
                replay.records += 1;
                continue;
            }
            Err(damage) => damage,
        };
        let Damage {
            at,
            why,
            record_end,
        } = damage;
        digest = None;
        let resume = match record_end {
            Some(end) => Some(end),
            None => find_next_header(path, at + 1, file_len, key)?,
        };
        let until = resume.unwrap_or(file_len);
        quarantine(path, segment, at, until, quarantine_dir);
        match resume {
            None if is_newest => {
                tracing::warn!(
                    segment,
                    offset = at,
                    dropped_bytes = file_len - at,
                    reason = %why,
                    "spool: cutting torn tail of newest segment (unacknowledged writes from a crash; copy kept in quarantine/)"
                );
                let file = std::fs::OpenOptions::new().write(true).open(path)?;
                file.set_len(at)?;
                file.sync_all()?;
                // Unacknowledged by the rules; but if the disk broke them
                // (a lost fsync, damage), entries for the records cut off
                // may be anywhere in the index.
                replay.damaged = true;
                return Ok(());
            }
            None => {
                replay.damaged = true;
                tracing::error!(segment, offset = at, reason = %why, "spool: damaged record at the end of a sealed segment (copy kept in quarantine/)");
                return Ok(());
            }
            // Damage followed by intact records is not a torn tail but
            // corruption (or a torn batch written out of order). Go on at the
            // damaged record's own end when its header is intact, else at the
            // next header with a valid MAC, so one bad sector costs the
            // records in it, not everything after it.
            Some(next) => {
                replay.damaged = true;
                tracing::error!(segment, offset = at, resume_at = next, reason = %why, "spool: damaged record; resuming at the next intact record (copy kept in quarantine/)");
                reader.seek(SeekFrom::Start(next))?;
                offset = next;
            }
        }
    }
}

/// Keep a copy of bytes recovery could not place, for an operator (never
/// silently gone). Best effort: recovery goes on if the copy fails.
fn quarantine(path: &Path, segment: u64, from: u64, to: u64, dir: &Path) {
    if to <= from {
        return;
    }
    let copy = (|| -> std::io::Result<PathBuf> {
        crate::fsutil::create_dir_durable(dir)?;
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        file.take(to - from).read_to_end(&mut data)?;
        let target = dir.join(format!("segment-{segment:016}-at-{from}.damaged"));
        crate::fsutil::write_atomic(&target, &data, Some(0o600))?;
        Ok(target)
    })();
    match copy {
        Ok(target) => {
            tracing::warn!(segment, from, to, file = %target.display(), "spool: damaged bytes copied to quarantine")
        }
        Err(err) => {
            tracing::error!(segment, from, to, error = %err, "spool: cannot copy damaged bytes to quarantine")
        }
    }
}

/// The next header at or after `from` that this spool wrote (its MAC
/// verifies), fully inside the file.
fn find_next_header(
    path: &Path,
    from: u64,
    file_len: u64,
    key: &RecordKey,
) -> std::io::Result<Option<u64>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let mut start = 0;
    while let Some(pos) = memchr::memmem::find(&data[start..], super::record::MAGIC_V2) {
        let at = start + pos;
        if let Some(header) = Header::decode_authentic(&data[at..], key) {
            if from + at as u64 + header.total_len() <= file_len {
                return Ok(Some(from + at as u64));
            }
        }
        start = at + 1;
    }
    Ok(None)
}

fn apply(
    header: &Header,
    meta: &[u8],
    place: Place,
    offset: u64,
    replay: &mut Replay,
) -> Result<(), String> {
    match header.kind {
        Kind::Message => {
            let meta: MessageMeta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
            if place.in_tail {
                replay.tail.push(meta.id);
            }
            let location = Location {
                segment: place.segment,
                offset,
                meta_len: header.meta_len,
                body_len: header.body_len,
                body_crc: header.body_crc,
                external: header.external_body(),
                header_len: header.len,
            };
            replay.live.insert(
                meta.id,
                IndexEntry {
                    location,
                    envelope: meta.envelope,
                    state: meta.state,
                },
            );
        }
        Kind::State => {
            let meta: StateMeta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
            if place.in_tail {
                replay.tail.push(meta.id);
            }
            if let Some(entry) = replay.live.get_mut(&meta.id) {
                entry.state = meta.state;
            }
        }
        Kind::Remove => {
            let meta: RemoveMeta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
            if place.in_tail {
                replay.tail.push(meta.id);
            }
            replay.live.remove(&meta.id);
        }
    }
    Ok(())
}

/// What start-up reconciliation did to the index.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reconciled {
    /// Entries (and recipient keys) written or removed to match the segments.
    pub repairs: usize,
    /// Set when the index could not be read and was rebuilt whole.
    pub unreadable: Option<String>,
}

/// Make the index equal to the replay, writing only what differs: after a
/// clean shutdown nothing; after a crash, the entries the index missed (it
/// is flushed every second, the segments at every acknowledgement). Only an
/// index that cannot be read is rebuilt whole.
pub(crate) fn reconcile(index: &Index, replay: &Replay) -> Result<Reconciled, sled::Error> {
    match repair(index, replay) {
        Ok(repairs) => Ok(Reconciled {
            repairs,
            unreadable: None,
        }),
        Err(err) => {
            index.clear()?;
            for (id, entry) in &replay.live {
                index.repair_put(*id, entry)?;
            }
            index.flush()?;
            Ok(Reconciled {
                repairs: replay.live.len(),
                unreadable: Some(format!("index unreadable: {err}")),
            })
        }
    }
}

/// After a crash with an index watermark: compare only the entries of the
/// messages with a record at or after it (`Replay::tail`), the only ones
/// whose index changes the crash can have cost (`watermark`). Damage found
/// by the replay, or an index that cannot be read, means the whole index is
/// compared ([`reconcile`]) instead. Returns how many were compared.
pub(crate) fn reconcile_tail(
    index: &Index,
    replay: &mut Replay,
) -> Result<(Reconciled, usize), sled::Error> {
    if replay.damaged {
        return reconcile(index, replay).map(|done| (done, replay.live.len()));
    }
    replay.tail.sort_unstable();
    replay.tail.dedup();
    match repair_tail(index, replay) {
        Ok(repairs) => Ok((
            Reconciled {
                repairs,
                unreadable: None,
            },
            replay.tail.len(),
        )),
        Err(err) => {
            tracing::warn!(error = %err, "spool: index unreadable where the crash left it; comparing all of it");
            reconcile(index, replay).map(|done| (done, replay.live.len()))
        }
    }
}

fn repair_tail(index: &Index, replay: &Replay) -> Result<usize, sled::Error> {
    let mut repairs = 0;
    for &id in &replay.tail {
        let stored = index.get_raw(id)?;
        match (replay.live.get(&id), stored) {
            (Some(entry), stored) => {
                let entry_ok = stored.is_some_and(|raw| {
                    super::index::encode(entry) == raw.as_ref()
                        || super::index::decode(id, &raw).is_ok_and(|found| found == *entry)
                });
                let mut keys_ok = entry_ok;
                if entry_ok {
                    for address in key_addresses(entry) {
                        if !index.has_recipient_key(&address, id)? {
                            keys_ok = false;
                            break;
                        }
                    }
                }
                if !keys_ok {
                    index.repair_put(id, entry)?;
                    repairs += 1;
                }
            }
            (None, Some(raw)) => {
                index.repair_remove_with_keys(id, &raw)?;
                repairs += 1;
            }
            (None, None) => {}
        }
    }
    if repairs > 0 {
        index.flush()?;
    }
    Ok(repairs)
}

/// The recipient keys `entry` must have: lower-cased addresses, once each.
fn key_addresses(entry: &IndexEntry) -> Vec<String> {
    let mut addresses: Vec<String> = entry
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_lowercase())
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// Does a stored recipient key (`address` as in the key) belong to `entry`?
fn has_key_address(entry: &IndexEntry, address: &[u8]) -> bool {
    entry.envelope.recipients.iter().any(|r| {
        if r.address.is_ascii() {
            r.address.as_bytes().eq_ignore_ascii_case(address)
        } else {
            r.address.to_lowercase().as_bytes() == address
        }
    })
}

/// Compare the index with the replay and write what differs. Both the
/// `messages` tree and the replay are in queue-ID order, so the entries are
/// compared in one merge (no set of a million IDs), and recipient keys are
/// counted per replayed message by its position (found by binary search).
fn repair(index: &Index, replay: &Replay) -> Result<usize, sled::Error> {
    let mut repairs = 0;
    let live: Vec<(&QueueId, &IndexEntry)> = replay.live.iter().collect();
    // Per replayed message: is its entry right, and how many of its
    // recipient keys were found.
    let mut entry_ok = vec![false; live.len()];
    let mut keys_found = vec![0u32; live.len()];
    let mut stale = Vec::new();
    let mut position = 0;
    for item in index.all_raw() {
        let (id, raw) = item?;
        while position < live.len() && *live[position].0 < id {
            position += 1;
        }
        match live.get(position) {
            Some((live_id, live_entry)) if **live_id == id => {
                // Encoding is cheaper than decoding, and an entry this
                // version wrote encodes to the same bytes; one written by an
                // older version (fields it lacked) is compared decoded.
                entry_ok[position] = super::index::encode(live_entry) == raw.as_ref()
                    || super::index::decode(id, &raw).is_ok_and(|entry| entry == **live_entry);
            }
            _ => stale.push(id),
        }
    }
    for id in stale {
        index.repair_remove(id)?;
        repairs += 1;
    }
    // Recipient keys: each must belong to a live message that has that
    // recipient; count them to find messages missing some.
    let mut stale_keys = Vec::new();
    for item in index.recipient_keys() {
        let (address, id) = item?;
        let found = live.binary_search_by(|(live_id, _)| (**live_id).cmp(&id));
        match found {
            Ok(at) if has_key_address(live[at].1, &address) => keys_found[at] += 1,
            _ => stale_keys.push((address, id)),
        }
    }
    for (address, id) in stale_keys {
        index.repair_remove_recipient_key(&address, id)?;
        repairs += 1;
    }
    for (at, (id, entry)) in live.iter().enumerate() {
        let wanted = match entry.envelope.recipients.len() {
            1 => 1,
            _ => key_addresses(entry).len(),
        };
        if !entry_ok[at] || keys_found[at] as usize != wanted {
            index.repair_put(**id, entry)?;
            repairs += 1;
        }
    }
    if repairs > 0 {
        index.flush()?;
    }
    Ok(repairs)
}

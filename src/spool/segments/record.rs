//! The on-disk record format of the spool segments (the durable truth).
//!
//! A segment is an append-only sequence of records. Each record is a fixed
//! 32-byte header, a JSON metadata block and (for messages) the raw message:
//!
//! ```text
//! 0   4  magic "BWR1"
//! 4   1  kind: 1 message, 2 state, 3 remove
//! 5   1  flags: bit 0 = body stored in large/<id>.eml, not here
//! 6   2  reserved, zero
//! 8   4  meta_len   (u32 LE)
//! 12  8  body_len   (u64 LE; 0 when the body is external)
//! 20  4  meta_crc   (CRC-32 of the meta bytes)
//! 24  4  body_crc   (CRC-32 of the body, wherever it is stored)
//! 28  4  header_crc (CRC-32 of bytes 0..28)
//! 32  meta_len bytes of JSON, then body_len bytes of message
//! ```
//!
//! Three CRCs let recovery check the small parts of every record cheaply while
//! skipping the bodies of sealed segments, and still verify bodies on read.
//!
//! Version 2 (magic "BWR2", written since the record key exists) appends a
//! 16-byte MAC to that header: HMAC-SHA-256 of bytes 0..32 under the spool's
//! secret `record.key`, truncated. Why: a CRC is not a MAC. A message body
//! can contain bytes that look exactly like a record, CRCs and all; when
//! recovery has to find its way again after a damaged record, it must never
//! land on one of those and apply an envelope a sender chose. Recovery only
//! resynchronises on headers whose MAC verifies, and never inside the claimed
//! length of a record whose header is intact. Version 1 records (32-byte
//! header) are still read in sequence, never resynchronised on.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MessageState, QueueId};

pub const MAGIC: &[u8; 4] = b"BWR1";
pub const MAGIC_V2: &[u8; 4] = b"BWR2";
/// Length of a version 1 header (and of the CRC-covered part of version 2).
pub const HEADER_LEN: usize = 32;
pub const MAC_LEN: usize = 16;
pub const HEADER_LEN_V2: usize = HEADER_LEN + MAC_LEN;

/// The spool's secret for record MACs (`<spool>/record.key`, 32 random
/// bytes, 0600). Losing it costs nothing in normal reading; only
/// resynchronisation after damage then finds no trusted header.
pub struct RecordKey(ring::hmac::Key);

impl RecordKey {
    pub fn load_or_create(path: &std::path::Path) -> std::io::Result<RecordKey> {
        let secret = match std::fs::read(path) {
            Ok(secret) if secret.len() == 32 => secret,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a 32-byte record key", path.display()),
                ))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .map_err(|_| std::io::Error::other("no system randomness"))?;
                crate::fsutil::write_atomic(path, &secret, Some(0o600))?;
                secret
            }
            Err(err) => return Err(err),
        };
        Ok(RecordKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &secret,
        )))
    }

    fn mac(&self, header: &[u8]) -> [u8; MAC_LEN] {
        let tag = ring::hmac::sign(&self.0, &header[..HEADER_LEN]);
        tag.as_ref()[..MAC_LEN].try_into().expect("16 bytes")
    }

    #[cfg(test)]
    pub fn for_tests() -> RecordKey {
        RecordKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]))
    }
}
/// Refuse absurd metadata sizes when scanning (a corrupt header must not make
/// recovery allocate gigabytes).
pub const MAX_META_LEN: u32 = 16 * 1024 * 1024;

pub const FLAG_EXTERNAL_BODY: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Message = 1,
    State = 2,
    Remove = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Message),
            2 => Some(Kind::State),
            3 => Some(Kind::Remove),
            _ => None,
        }
    }
}

/// Metadata of a `Kind::Message` record: the envelope and the state it had when
/// written (a fresh message, or a message copied forward by compaction).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: QueueId,
    pub envelope: Envelope,
    pub state: MessageState,
}

/// Metadata of a `Kind::State` record: the whole new delivery state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateMeta {
    pub id: QueueId,
    pub state: MessageState,
}

/// Metadata of a `Kind::Remove` record: the message is finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveMeta {
    pub id: QueueId,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 32 (version 1) or 48 (version 2, with MAC).
    pub len: u32,
    pub kind: Kind,
    pub flags: u8,
    pub meta_len: u32,
    pub body_len: u64,
    pub meta_crc: u32,
    pub body_crc: u32,
}

impl Header {
    /// A version 2 header with its MAC.
    pub fn encode(&self, key: &RecordKey) -> [u8; HEADER_LEN_V2] {
        let mut out = [0u8; HEADER_LEN_V2];
        out[0..4].copy_from_slice(MAGIC_V2);
        out[4] = self.kind as u8;
        out[5] = self.flags;
        out[8..12].copy_from_slice(&self.meta_len.to_le_bytes());
        out[12..20].copy_from_slice(&self.body_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.meta_crc.to_le_bytes());
        out[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        let mac = key.mac(&out);
        out[HEADER_LEN..].copy_from_slice(&mac);
        out
    }

    /// How long the header starting with these 4 bytes is, if it is one.
    pub fn len_for_magic(magic: &[u8]) -> Option<usize> {
        match magic {
            m if m == MAGIC => Some(HEADER_LEN),
            m if m == MAGIC_V2 => Some(HEADER_LEN_V2),
            _ => None,
        }
    }

    /// A header found by resynchronisation: only version 2 with a MAC that
    /// verifies under `key` (a record-shaped run of bytes inside a message
    /// body has CRCs an attacker can compute, but no MAC).
    pub fn decode_authentic(bytes: &[u8], key: &RecordKey) -> Option<Header> {
        let header = Header::decode(bytes)?;
        let authentic = header.len as usize == HEADER_LEN_V2
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                &key.mac(bytes)[..],
                &bytes[HEADER_LEN..HEADER_LEN_V2],
            ));
        authentic.then_some(header)
    }

    /// `None` for anything that is not an intact header (torn write, garbage).
    /// The MAC of a version 2 header is not checked here: a header reached
    /// by following record lengths from the start of a segment is where a
    /// record begins.
    pub fn decode(bytes: &[u8]) -> Option<Header> {
        let len = Header::len_for_magic(bytes.get(0..4)?)?;
        if bytes.len() < len {
            return None;
        }
        let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[0..28]) != le32(28) {
            return None;
        }
        let header = Header {
            len: len as u32,
            kind: Kind::from_byte(bytes[4])?,
            flags: bytes[5],
            meta_len: le32(8),
            body_len: u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")),
            meta_crc: le32(20),
            body_crc: le32(24),
        };
        (header.meta_len <= MAX_META_LEN).then_some(header)
    }

    pub fn total_len(&self) -> u64 {
        u64::from(self.len) + u64::from(self.meta_len) + self.body_len
    }

    pub fn external_body(&self) -> bool {
        self.flags & FLAG_EXTERNAL_BODY != 0
    }
}

/// Serialise one record into `out`. `body` is empty for state/remove records and
/// for messages whose body lives in its own file (`body_crc` then describes it).
pub fn encode_into(
    out: &mut Vec<u8>,
    key: &RecordKey,
    kind: Kind,
    meta: &[u8],
    body: &[u8],
    external_body_crc: Option<u32>,
) {
    let (flags, body_crc) = match external_body_crc {
        Some(crc) => (FLAG_EXTERNAL_BODY, crc),
        None => (0, crc32fast::hash(body)),
    };
    let header = Header {
        len: HEADER_LEN_V2 as u32,
        kind,
        flags,
        meta_len: meta.len() as u32,
        body_len: body.len() as u64,
        meta_crc: crc32fast::hash(meta),
        body_crc,
    };
    out.extend_from_slice(&header.encode(key));
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_corruption() {
        let key = RecordKey::for_tests();
        let mut out = Vec::new();
        encode_into(&mut out, &key, Kind::Message, b"{}", b"hello", None);
        let header = Header::decode(&out).expect("intact");
        assert!(Header::decode_authentic(&out, &key).is_some());
        assert_eq!(header.kind, Kind::Message);
        assert_eq!(header.meta_len, 2);
        assert_eq!(header.body_len, 5);
        assert_eq!(header.body_crc, crc32fast::hash(b"hello"));
        assert_eq!(header.total_len(), out.len() as u64);
        for i in 0..HEADER_LEN_V2 {
            let mut broken = out.clone();
            broken[i] ^= 0x40;
            assert!(
                Header::decode_authentic(&broken, &key).is_none(),
                "flip at byte {i} not caught"
            );
            if i < HEADER_LEN {
                assert!(
                    Header::decode(&broken).is_none(),
                    "flip at byte {i} not caught"
                );
            }
        }
        assert!(Header::decode(&out[..47]).is_none());
        // A record with correct CRCs but no key behind it (what a sender can
        // put in a body) is readable in sequence but never authentic.
        let other = RecordKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32]));
        assert!(Header::decode_authentic(&out, &other).is_none());
    }
}

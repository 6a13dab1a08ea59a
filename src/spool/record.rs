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

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MessageState, QueueId};

pub const MAGIC: &[u8; 4] = b"BWR1";
pub const HEADER_LEN: usize = 32;
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
    pub kind: Kind,
    pub flags: u8,
    pub meta_len: u32,
    pub body_len: u64,
    pub meta_crc: u32,
    pub body_crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.flags;
        out[8..12].copy_from_slice(&self.meta_len.to_le_bytes());
        out[12..20].copy_from_slice(&self.body_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.meta_crc.to_le_bytes());
        out[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` for anything that is not an intact header (torn write, garbage).
    pub fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LEN || &bytes[0..4] != MAGIC {
            return None;
        }
        let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[0..28]) != le32(28) {
            return None;
        }
        let header = Header {
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
        HEADER_LEN as u64 + u64::from(self.meta_len) + self.body_len
    }

    pub fn external_body(&self) -> bool {
        self.flags & FLAG_EXTERNAL_BODY != 0
    }
}

/// Serialise one record into `out`. `body` is empty for state/remove records and
/// for messages whose body lives in its own file (`body_crc` then describes it).
pub fn encode_into(
    out: &mut Vec<u8>,
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
        kind,
        flags,
        meta_len: meta.len() as u32,
        body_len: body.len() as u64,
        meta_crc: crc32fast::hash(meta),
        body_crc,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_corruption() {
        let mut out = Vec::new();
        encode_into(&mut out, Kind::Message, b"{}", b"hello", None);
        let header = Header::decode(&out).expect("intact");
        assert_eq!(header.kind, Kind::Message);
        assert_eq!(header.meta_len, 2);
        assert_eq!(header.body_len, 5);
        assert_eq!(header.body_crc, crc32fast::hash(b"hello"));
        assert_eq!(header.total_len(), out.len() as u64);
        for i in 0..HEADER_LEN {
            let mut broken = out.clone();
            broken[i] ^= 0x40;
            assert!(
                Header::decode(&broken).is_none(),
                "flip at byte {i} not caught"
            );
        }
        assert!(Header::decode(&out[..31]).is_none());
    }
}

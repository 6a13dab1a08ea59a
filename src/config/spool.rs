//! `[spool]`: where and how much mail is kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{nonzero, ConfigError, Invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// A segment is sealed and a new one started past this many bytes.
    pub segment_size: u64,
    /// Message bodies larger than this go to their own file instead of a segment,
    /// so a huge message never sits whole in memory or blocks the group commit.
    pub large_message_threshold: u64,
    /// Spool quota: past this many bytes of spool files, new mail is refused
    /// with 452 4.3.1 (delivery goes on and frees space). Unset = no quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<bytesize::ByteSize>,
    /// Free-space floor on the spool's file system: below it new mail gets
    /// 452 4.3.1, so the disk never fills up under acknowledged mail and
    /// delivery always has room for its small state records.
    pub min_free: bytesize::ByteSize,
    /// How often to look for a segment worth compacting (its live messages
    /// copied forward so it can be deleted).
    #[serde(with = "humantime_serde")]
    pub compact_interval: std::time::Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("data/spool"),
            segment_size: 64 * 1024 * 1024,
            large_message_threshold: 1024 * 1024,
            max_bytes: None,
            min_free: bytesize::ByteSize::gb(1),
            compact_interval: std::time::Duration::from_secs(30),
        }
    }
}

impl SpoolConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        nonzero(invalid, &[("spool.segment_size", self.segment_size)])?;
        super::nonzero_durations(
            invalid,
            &[("spool.compact_interval", self.compact_interval)],
        )
    }
}

//! The small shared vocabulary the stages meet in: a queue ID, the SMTP envelope
//! as it was received, and the per-recipient delivery state the spool keeps.
//!
//! These types are serialised into the spool files, so changing a field is an
//! on-disk format change (see docs/ARCHITECTURE.md).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Time-sortable queue ID (a ULID), logged in every line about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub ulid::Ulid);

impl QueueId {
    /// A new ID, larger than every ID this process made before (within one
    /// millisecond the random part counts up), so queue IDs sort in the
    /// order messages began to arrive. Access to a message never depends on
    /// its ID being hard to guess.
    pub fn generate() -> QueueId {
        static GENERATOR: std::sync::Mutex<ulid::Generator> =
            std::sync::Mutex::new(ulid::Generator::new());
        let next = GENERATOR.lock().expect("queue id generator").generate();
        // Err only when 2^80 IDs were made in one millisecond.
        QueueId(next.unwrap_or_else(|_| ulid::Ulid::new()))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> QueueId {
        QueueId(ulid::Ulid::from_bytes(bytes))
    }

    /// Milliseconds since the epoch when the ID was made (≈ arrival time).
    pub fn timestamp_ms(self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for QueueId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(QueueId)
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything known about a message at the moment it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path; empty for the null sender `<>` (bounces).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// DSN (RFC 3461) RET parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_ret: Option<DsnRet>,
    /// DSN ENVID parameter (xtext-decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_envid: Option<String>,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub body_8bitmime: bool,
    /// RFC 8689: the sender asked that every hop use TLS.
    #[serde(default)]
    pub requiretls: bool,
    pub client: ClientInfo,
    /// Milliseconds since the epoch.
    pub received_at_ms: u64,
    /// Bytes of the spooled message, including our Received header.
    pub size: u64,
    /// The outage-lure score taken at intake (absent: not scored, e.g.
    /// bodies too large to score in memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lure: Option<crate::verdict::LureVerdict>,
    /// SPF/DKIM/DMARC at intake; delivery adds its `Authentication-Results`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::verdict::AuthVerdict>,
    /// The web account that wrote it (`sending`): its mail to other
    /// domains goes through `[send] relay` when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_by: Option<String>,
}

impl Envelope {
    /// The envelope of a message Breakwater writes itself (a DSN, an alert,
    /// the drill's probe): from `sender` ("" = the null sender) to one
    /// address, submitted by this host now, no DSN parameters.
    pub fn local(sender: &str, to: &str, hostname: &str) -> Envelope {
        Envelope {
            sender: sender.to_string(),
            recipients: vec![Recipient {
                address: to.to_string(),
                orcpt: None,
                notify: 0,
            }],
            dsn_ret: None,
            dsn_envid: None,
            smtputf8: !sender.is_ascii() || !to.is_ascii(),
            body_8bitmime: true,
            requiretls: false,
            client: ClientInfo {
                ip: std::net::IpAddr::from([127, 0, 0, 1]),
                helo: hostname.to_string(),
                tls: None,
            },
            received_at_ms: now_ms(),
            size: 0,
            lure: None,
            auth: None,
            sent_by: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    Full,
    Hdrs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Forward-path, domain lower-cased.
    pub address: String,
    /// DSN ORCPT parameter, as given (`rfc822;user@example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// DSN NOTIFY flags: bit set of `NOTIFY_*`; 0 = not given (default: failure).
    #[serde(default)]
    pub notify: u8,
}

pub const NOTIFY_SUCCESS: u8 = 1;
pub const NOTIFY_FAILURE: u8 = 2;
pub const NOTIFY_DELAY: u8 = 4;
pub const NOTIFY_NEVER: u8 = 8;

impl Recipient {
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub helo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

/// Delivery state of one message; replaced as a whole on every update so that
/// replaying the spool log is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    #[serde(default)]
    pub held: bool,
    /// When the delivery engine should next look at this message (ms since epoch).
    pub next_attempt_ms: u64,
    /// One entry per envelope recipient, same order.
    pub recipients: Vec<RecipientState>,
    /// Operator override of the route ("host:port[,host:port]"), set by
    /// "requeue"; `None` = the configured route for each recipient domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The most recent delivery attempts (newest last, at most
    /// `MAX_HISTORY`), so an operator can see why a message waits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// Delivered, but kept for the web reader until then (`[web] retain_delivered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until_ms: Option<u64>,
    /// Bumped by every operator action (`control::apply_action`): how an
    /// attempt that ran meanwhile knows to leave the operator's hold,
    /// route and schedule alone. Inferring it from the fields failed when a
    /// retry set `next_attempt_ms` to the value it already had (same
    /// millisecond as the message's arrival on a fast loopback).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub operator_changes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub const MAX_HISTORY: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub ts_ms: u64,
    /// Index of the recipient in the envelope.
    pub recipient: usize,
    /// sent | deferred | bounced
    pub outcome: String,
    pub relay: String,
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecipientState {
    pub status: RecipientStatus,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// A failure notification for this recipient has been queued (or was
    /// not wanted): never bounce the same recipient twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dsn_done: bool,
    /// The sender has been told this recipient is delayed (`[delivery]
    /// delay_warning`): once per recipient.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Never attempted yet.
    #[default]
    Queued,
    /// Attempted; temporary failure; will be retried.
    Deferred,
    Delivered,
    /// Permanent failure; a DSN is owed to the sender.
    Failed,
}

impl RecipientStatus {
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Failed)
    }
}

impl MessageState {
    /// A freshly accepted message: every recipient queued, due now.
    pub fn new_for(envelope: &Envelope) -> MessageState {
        MessageState {
            held: false,
            next_attempt_ms: envelope.received_at_ms,
            recipients: vec![RecipientState::default(); envelope.recipients.len()],
            route: None,
            history: Vec::new(),
            retain_until_ms: None,
            operator_changes: 0,
        }
    }

    /// Nothing left to do for any recipient.
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    /// The operator-facing status (one of [`STATUSES`]).
    pub fn status(&self) -> &'static str {
        if self.retain_until_ms.is_some() {
            // Finished and kept only for the web reader.
            "delivered"
        } else if self.held {
            "held"
        } else if self
            .recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Failed)
        {
            "failed"
        } else if self
            .recipients
            .iter()
            .any(|r| r.attempts > 0 && !r.status.is_final())
        {
            "deferred"
        } else {
            "queued"
        }
    }
}

/// Every value of [`MessageState::status`].
pub const STATUSES: [&str; 5] = ["queued", "deferred", "held", "failed", "delivered"];

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as RFC 3339 in UTC ("" if out of range).
pub fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

//! The seam between the spool's API ([`super::Spool`], what every stage
//! calls) and the storage behind it.
//!
//! Why a trait: a single node keeps its spool in append-only segments with a
//! sled index ([`super::SegmentStore`]); a cluster keeps it in a shared
//! database, so that a message survives the loss of the node that took it.
//! The stages must not notice which one they talk to, so the guarantees each
//! call gives are written here, once, and every store must give them. The
//! same contract is in docs/ARCHITECTURE.md ("The spool API").
//!
//! Words used below:
//! - **durable**: survives `kill -9` and power loss of this node (and, for a
//!   replicated store, the loss of this node) once the call returns `Ok`.
//! - **atomic**: other calls see the state before or after, never between;
//!   two changes of one message never overwrite each other.
//! - **hint**: cheap, may be stale; never a reason to lose or duplicate mail.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{CensusSnapshot, MessageBody, Shortage, SpoolError, SpooledMessage, Stats, StoredBody};
use crate::envelope::{Envelope, MessageState, QueueId};

/// What [`SpoolStore::update_state`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateUpdate {
    /// No such message (finished, or never spooled).
    NotFound,
    /// The change left the state as it was; nothing was written.
    Unchanged,
    /// The new state is durable.
    Written,
}

/// What one [`SpoolStore::maintain`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Live messages rewritten elsewhere so their old storage can go.
    pub messages_moved: usize,
    pub segments_reclaimed: usize,
    pub bytes_reclaimed: u64,
}

/// A place messages are spooled. See the module doc for the words.
#[async_trait]
pub trait SpoolStore: Send + Sync + 'static {
    /// A buffer for a message being received, with its queue ID assigned
    /// now (it goes into the Received header and every log line). Memory
    /// while small, a local temporary file once large; nothing is durable.
    fn new_body(&self) -> MessageBody;

    /// Make a received message durable with a fresh delivery state (every
    /// recipient pending, due now). **Durable** when it returns `Ok`: body,
    /// envelope and state; only then may SMTP answer 250. On `Err` nothing
    /// of the message may be visible later (a stray body is removed or
    /// quarantined, never delivered).
    async fn enqueue(&self, body: MessageBody, envelope: Envelope) -> Result<QueueId, SpoolError>;

    /// The message's envelope and its latest durable state, `None` when it
    /// is not in the spool. Reads its own writes.
    async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError>;

    /// The whole message as spooled, verified against its checksum
    /// ([`SpoolError::Corrupt`] otherwise). For delivery, export, display.
    async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError>;

    /// The same bytes as `read_body`, verified the same way, but a store may
    /// hand a large body over as an open file to be read as it is sent
    /// (delivery). The file's content does not change while it is open.
    async fn open_body(&self, id: QueueId) -> Result<StoredBody, SpoolError> {
        self.read_body(id).await.map(StoredBody::Memory)
    }

    /// At most `limit` bytes from the start of the message, not verified:
    /// for list views and filters only.
    async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError>;

    /// Up to `limit` messages whose next attempt is due at `now_ms`, oldest
    /// due first. A **hint**: the caller still reads each message and parks
    /// it while in flight. A store shared by several nodes hands each due
    /// message to one node at a time (a lease that expires, so a node that
    /// dies does not keep its messages).
    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<QueueId>, SpoolError>;

    /// When the next message becomes due, if any is scheduled. A **hint**
    /// for how long the scheduler may sleep (it is also woken on new work).
    async fn next_due_ms(&self) -> Result<Option<u64>, SpoolError>;

    /// Change a message's delivery state **atomically** and **durably**:
    /// `change` is called exactly once, with the state as it is now, while
    /// no other change of this message can run; if it changed the state,
    /// the new state is durable before this returns and before the next
    /// change of the message begins.
    async fn update_state(
        &self,
        id: QueueId,
        change: &mut (dyn for<'s> FnMut(&'s mut MessageState) + Send),
    ) -> Result<StateUpdate, SpoolError>;

    /// Move a message in the schedule **without** a durable write (while in
    /// flight, or while its upstream is held or down). Forgotten at restart,
    /// which goes back to the durable schedule: at worst an early retry.
    /// False when the message is not scheduled.
    async fn park(&self, id: QueueId, until_ms: u64) -> Result<bool, SpoolError>;

    /// Finish a message (delivered, bounced, deleted), **durably**: once
    /// this returns `Ok(true)` the message never comes back, not even after
    /// a crash. False when it was not in the spool (finished already).
    async fn remove(&self, id: QueueId, reason: &str) -> Result<bool, SpoolError>;

    /// Upstreams an operator put on hold (durable, see `set_upstream_held`).
    async fn held_upstreams(&self) -> Result<BTreeSet<String>, SpoolError>;

    /// Hold or release an upstream, **durably**, atomic with respect to
    /// other holds and releases.
    async fn set_upstream_held(&self, upstream: &str, held: bool) -> Result<(), SpoolError>;

    /// Every message, in queue-ID order. Bounded only by the spool; pages
    /// should use [`SpoolStore::page`].
    async fn list(&self) -> Result<Vec<SpooledMessage>, SpoolError>;

    /// Up to `limit` messages in queue-ID order after the cursor `after`
    /// that `keep` accepts, and the cursor for the next page (`None` at the
    /// end). Queue IDs grow in the order messages began to arrive
    /// (`QueueId::generate`), so paging is stable while mail arrives: a
    /// message shows up on a later page unless its receipt began before the
    /// cursor's message did (a slow upload finishing after the page was read).
    async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        keep: &mut (dyn for<'m> FnMut(&'m SpooledMessage) -> bool + Send),
    ) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError>;

    /// IDs of the messages with `address` among their recipients
    /// (case-insensitive), oldest first.
    async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError>;

    /// How many messages are spooled. A **hint** (exact on one node).
    fn len(&self) -> usize;

    /// No message spooled? A **hint**, like `len`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many messages are in the delivery schedule. A **hint**.
    fn scheduled(&self) -> usize;

    /// Room for a message of `incoming` bytes (0 = not known yet)? Asked at
    /// MAIL and at end of data; a **hint**, the write itself is the truth.
    fn check_space(&self, incoming: u64) -> Result<(), Shortage>;

    /// Bytes the spool occupies. A **hint**.
    fn used_bytes(&self) -> u64;

    /// Free bytes where the spool writes. A **hint**.
    fn free_bytes(&self) -> std::io::Result<u64>;

    /// Can the store take a durable write right now? For `/readyz`; the
    /// answer may be reused for a short while.
    async fn probe_writable(&self) -> Result<(), String>;

    /// Durable-commit counters (for metrics and benchmarks).
    fn stats(&self) -> &Stats;

    /// Messages by status, by the destinations they wait for, and the
    /// oldest arrival: a **hint**, kept as messages change (never a scan),
    /// equal to counting the messages `list` returns whenever no change is
    /// under way.
    fn census(&self) -> CensusSnapshot;

    /// Background upkeep (the segment store compacts its oldest segment when
    /// most of it is dead weight). Called periodically, concurrently with
    /// every other call; it changes where messages are kept, never what a
    /// call returns, and a crash in the middle loses and resurrects nothing.
    async fn maintain(&self) -> Result<Maintenance, SpoolError> {
        Ok(Maintenance::default())
    }

    /// Finish pending writes and stop; later writes fail with
    /// [`SpoolError::Closed`].
    async fn close(&self);
}

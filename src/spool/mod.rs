//! THE HUB: the durable spool every other stage talks to through [`Spool`].
//!
//! Two halves, so that a cluster store can replace the single-node one
//! without any stage changing:
//! - [`Spool`] is the API the stages call (intake enqueues, delivery takes
//!   due work and records outcomes, web and admin read, page and steer).
//!   It adds what does not depend on where mail is stored: waking the
//!   delivery scheduler, typed state changes, recent removal reasons.
//! - [`SpoolStore`] is where mail is kept, with its contract (what is
//!   durable, atomic or only a hint) written once in `store`. Today's one
//!   implementation is [`SegmentStore`]: append-only segment files with a
//!   sled index on this node's disk (layout in `segments`); a cluster
//!   node's is `cluster::ReplicatedStore`.
//! - [`View`] (`view`) is the read-only half for readers, over this node's
//!   mail or, in a cluster, every node's ([`Spool::everywhere`]).
//!
//! Durability at `250`: [`Spool::enqueue`] returns only once the store has
//! made the message durable; the SMTP layer answers 250 only after that.

mod body;
mod census;
mod segments;
mod space;
mod store;
mod view;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

pub use body::{MessageBody, StoredBody};
pub use census::{Census, CensusCounts, CensusSnapshot, Destination};
pub use segments::{OpenReport, SegmentStore};
pub use space::{is_storage_full, Shortage};
pub use store::{Maintenance, SpoolStore, StateUpdate};
pub use view::{OtherNodes, View};

use crate::config::SpoolConfig;
use crate::envelope::{Envelope, MessageState, QueueId};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool index error: {0}")]
    Index(#[from] sled::Error),
    #[error("message {0} is not in the spool")]
    NotFound(QueueId),
    #[error("message {0} is damaged on disk: {1}")]
    Corrupt(QueueId, String),
    #[error("the spool is shut down")]
    Closed,
    #[error("the spool {0} is in use by another process")]
    Locked(std::path::PathBuf),
    /// Cluster mode with `on_unavailable = "tempfail"`: the database did
    /// not commit the message, so it is not acknowledged.
    #[error("not committed to the cluster database: {0}")]
    NotReplicated(String),
}

/// A message as the rest of the program sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpooledMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    pub state: MessageState,
}

/// Counters about durable commits (group commit on one node), for
/// benchmarks and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub fsyncs: AtomicU64,
    pub fsync_records: AtomicU64,
    pub fsync_micros: AtomicU64,
}

impl Stats {
    fn record_fsync(&self, took: Duration, records: usize) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.fsync_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The spool API. Cheap to clone; every clone talks to the same store.
#[derive(Clone)]
pub struct Spool {
    store: Arc<dyn SpoolStore>,
    /// Wakes the delivery scheduler: new message, new schedule.
    work: Arc<tokio::sync::Notify>,
    /// Why recent messages left the spool (delivered, bounced, deleted…),
    /// for drill reports; in memory only, bounded.
    removed: Arc<Mutex<HashMap<QueueId, String>>>,
    /// Arrivals and removals, for followers such as the web's search index.
    events: tokio::sync::broadcast::Sender<SpoolEvent>,
    /// In a cluster, the other nodes' mail, for readers ([`Spool::everywhere`]).
    others: Option<Arc<dyn OtherNodes>>,
}

/// A message came into or left the spool (see [`Spool::subscribe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolEvent {
    Arrived(QueueId),
    Removed(QueueId),
}

/// Events a follower may fall behind by before it is told it lagged.
const EVENTS_BUFFERED: usize = 65_536;

/// How many removal reasons are remembered before the memory starts over.
const REMEMBERED_REMOVALS: usize = 100_000;

impl Spool {
    /// Open (creating if needed) the single-node spool under `[spool] dir`,
    /// recovering it from its files.
    pub fn open(config: &SpoolConfig) -> Result<(Spool, OpenReport), SpoolError> {
        let (store, report) = SegmentStore::open(config)?;
        Ok((Spool::new(Arc::new(store)), report))
    }

    /// The API over a store that is already open.
    pub fn new(store: Arc<dyn SpoolStore>) -> Spool {
        Spool {
            store,
            work: Arc::new(tokio::sync::Notify::new()),
            removed: Arc::new(Mutex::new(HashMap::new())),
            events: tokio::sync::broadcast::channel(EVENTS_BUFFERED).0,
            others: None,
        }
    }

    /// The API over a cluster node's store, whose readers also see what the
    /// other nodes hold ([`Spool::everywhere`]).
    pub fn with_other_nodes(store: Arc<dyn SpoolStore>, others: Arc<dyn OtherNodes>) -> Spool {
        Spool {
            others: Some(others),
            ..Spool::new(store)
        }
    }

    /// Every later arrival and removal, in the order they became durable.
    /// A follower that falls behind by more than the buffer gets
    /// `RecvError::Lagged` and must look at the spool itself.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SpoolEvent> {
        self.events.subscribe()
    }

    /// Start receiving a new message (see [`SpoolStore::new_body`]).
    pub fn new_body(&self) -> MessageBody {
        self.store.new_body()
    }

    /// Make a message durable. When this returns `Ok`, the message survives
    /// a crash and may be acknowledged to the client.
    pub async fn enqueue(
        &self,
        body: MessageBody,
        envelope: Envelope,
    ) -> Result<QueueId, SpoolError> {
        let id = self.store.enqueue(body, envelope).await?;
        self.work.notify_one();
        // No follower is not an error.
        let _ = self.events.send(SpoolEvent::Arrived(id));
        Ok(id)
    }

    pub async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError> {
        self.store.get(id).await
    }

    /// The message exactly as spooled (our Received header first), checksum-verified.
    pub async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        self.store.read_body(id).await
    }

    /// The message for sending ([`SpoolStore::open_body`]).
    pub async fn open_body(&self, id: QueueId) -> Result<StoredBody, SpoolError> {
        self.store.open_body(id).await
    }

    /// The first `limit` bytes of a message, for list views and filters
    /// (subject, sender, a text preview): a 50 MB message costs `limit`
    /// bytes of memory here, not 50 MB. Not checksum-verified — anything that
    /// delivers, exports or shows the whole message uses [`Spool::read_body`].
    pub async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        self.store.read_head(id, limit).await
    }

    /// Up to `limit` messages due for a delivery attempt at `now_ms`, oldest due first.
    pub async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<QueueId>, SpoolError> {
        self.store.due(now_ms, limit).await
    }

    /// When the next message becomes due, if any is scheduled.
    pub async fn next_due_ms(&self) -> Result<Option<u64>, SpoolError> {
        self.store.next_due_ms().await
    }

    /// Durably replace a message's whole delivery state. Prefer
    /// [`Spool::update_state`], which changes the state as it is now.
    pub async fn set_state(&self, id: QueueId, state: MessageState) -> Result<(), SpoolError> {
        match self.update_state(id, |current| *current = state).await? {
            Some(()) => Ok(()),
            None => Err(SpoolError::NotFound(id)),
        }
    }

    /// Durably change a message's delivery state: `change` gets the state as
    /// it is now, under the message's lock, and its result is written before
    /// the next change of that message can begin. `None` when the message
    /// is not in the spool. A change that leaves the state as it was writes
    /// nothing.
    pub async fn update_state<T: Send>(
        &self,
        id: QueueId,
        change: impl FnOnce(&mut MessageState) -> T + Send,
    ) -> Result<Option<T>, SpoolError> {
        let mut change = Some(change);
        let mut result = None;
        let update = self
            .store
            .update_state(id, &mut |state| {
                if let Some(change) = change.take() {
                    result = Some(change(state));
                }
            })
            .await?;
        match update {
            StateUpdate::NotFound => return Ok(None),
            StateUpdate::Written => self.work.notify_one(),
            StateUpdate::Unchanged => {}
        }
        Ok(result)
    }

    /// Move a message in the delivery schedule without a durable write: used
    /// while it is in flight, or while its upstream is held or down. A restart
    /// forgets all parking and goes back to the durable schedule.
    pub async fn park(&self, id: QueueId, until_ms: u64) -> Result<bool, SpoolError> {
        let parked = self.store.park(id, until_ms).await?;
        if until_ms <= crate::envelope::now_ms() {
            self.work.notify_one();
        }
        Ok(parked)
    }

    /// Wakes whoever waits for delivery work (new message, new schedule).
    pub fn work_notify(&self) -> Arc<tokio::sync::Notify> {
        self.work.clone()
    }

    /// Upstreams an operator has put on hold; survives restarts.
    pub async fn held_upstreams(&self) -> Result<BTreeSet<String>, SpoolError> {
        self.store.held_upstreams().await
    }

    /// Hold or release an upstream, durably.
    pub async fn set_upstream_held(&self, upstream: &str, held: bool) -> Result<(), SpoolError> {
        self.store.set_upstream_held(upstream, held).await
    }

    /// Durably finish a message (delivered, bounced, deleted). Returns false if
    /// it was not in the spool.
    pub async fn remove(&self, id: QueueId, reason: &str) -> Result<bool, SpoolError> {
        let removed = self.store.remove(id, reason).await?;
        if removed {
            let mut reasons = self.removed.lock().expect("removed lock");
            if reasons.len() >= REMEMBERED_REMOVALS {
                reasons.clear();
            }
            reasons.insert(id, reason.to_string());
            drop(reasons);
            let _ = self.events.send(SpoolEvent::Removed(id));
        }
        Ok(removed)
    }

    /// Why a message left the spool ("delivered", "bounced", "deleted by
    /// administrator", …), if this process removed it recently.
    pub fn removal_reason(&self, id: QueueId) -> Option<String> {
        self.removed.lock().expect("removed lock").get(&id).cloned()
    }

    /// Every message in the spool, oldest first.
    pub async fn list(&self) -> Result<Vec<SpooledMessage>, SpoolError> {
        self.store.list().await
    }

    /// One page of messages in arrival order after the cursor `after`, keeping
    /// those `keep` accepts. Returns the page and the cursor for the next one
    /// (None at the end). New messages always sort after existing ones, so
    /// paging is stable while mail keeps arriving.
    pub async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        mut keep: impl FnMut(&SpooledMessage) -> bool + Send,
    ) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
        self.store.page(after, limit, &mut keep).await
    }

    /// Messages with `address` among their recipients (case-insensitive).
    pub async fn for_recipient(&self, address: &str) -> Result<Vec<SpooledMessage>, SpoolError> {
        let mut out = Vec::new();
        for id in self.store.ids_for_recipient(address).await? {
            if let Some(message) = self.store.get(id).await? {
                out.push(message);
            }
        }
        Ok(out)
    }

    /// IDs of the messages with `address` among their recipients, oldest
    /// first, without loading them (the web mailbox pages through these).
    pub async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError> {
        self.store.ids_for_recipient(address).await
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// How many messages are in the delivery schedule (waiting or parked).
    pub fn scheduled(&self) -> usize {
        self.store.scheduled()
    }

    /// Can the spool take a write right now? (Reused for a second: `/readyz`
    /// is unauthenticated, and a probe per request would let anyone make the
    /// spool's disk fsync in a loop.)
    pub async fn probe_writable(&self) -> Result<(), String> {
        self.store.probe_writable().await
    }

    /// Is there room for a new message of `incoming` bytes (0 = size not
    /// known yet)? Intake asks before taking mail; see `space`.
    pub fn check_space(&self, incoming: u64) -> Result<(), Shortage> {
        self.store.check_space(incoming)
    }

    /// Bytes of spool files on disk (segments and large bodies).
    pub fn used_bytes(&self) -> u64 {
        self.store.used_bytes()
    }

    /// Free bytes on the spool's file system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        self.store.free_bytes()
    }

    pub fn stats(&self) -> &Stats {
        self.store.stats()
    }

    /// Counts of what the spool holds ([`SpoolStore::census`]).
    pub fn census(&self) -> CensusSnapshot {
        self.store.census()
    }

    /// Background upkeep of the store ([`SpoolStore::maintain`]).
    pub async fn maintain(&self) -> Result<Maintenance, SpoolError> {
        self.store.maintain().await
    }

    /// Run [`Spool::maintain`] every `every` until `shutdown`; while it
    /// finds work (one segment per call) again after at most a second, so a
    /// backlog of pinned segments goes in minutes without compaction
    /// taking the disk from intake, and an idle spool costs one check per
    /// interval.
    pub async fn maintain_until(
        &self,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let worked = match self.maintain().await {
                Ok(done) => done.messages_moved > 0 || done.segments_reclaimed > 0,
                Err(err) => {
                    tracing::warn!(error = %err, "spool: maintenance failed; trying again later");
                    false
                }
            };
            if *shutdown.borrow() {
                return;
            }
            let pause = if worked {
                every.min(Duration::from_secs(1))
            } else {
                every
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Finish pending writes and stop the store. Further writes fail with
    /// [`SpoolError::Closed`].
    pub async fn close(&self) {
        self.store.close().await
    }
}

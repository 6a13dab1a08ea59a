//! The one task that writes this node's mail to the database.
//!
//! Why one task: every database write of a node — a new message, a state
//! change, a removal, a reconciliation — goes through one ordered queue, so
//! the database sees them in the order they happened on the node (a
//! removal can never be overtaken by the upload of the same message). New
//! messages that arrive while a commit runs wait for the next one and share
//! it, as the segment writer shares an fsync: one transaction per batch.
//!
//! Up and down: after a commit fails or does not return within
//! `commit_timeout`, the connection is thrown away (its server side may
//! still wait for a synchronous standby; the query is cancelled) and the
//! database counts as **down**: new messages are answered at once by the
//! `on_unavailable` rule instead of each waiting `commit_timeout`. Every
//! second a probe (the reconciliation of marked messages, else a heartbeat
//! write, both of which wait for the synchronous standby like any commit)
//! tries again; the first one that commits in time brings it **up**.
//!
//! A row the database refuses (a data or constraint error, SQLSTATE class
//! 22 or 23: the database is up, this message is the problem) must not
//! take the node's replication down with it: the batch is written again
//! one message per transaction, the others commit, and the refused one
//! stays on this node only (marked unreplicated, alerted, logged with its
//! SQLSTATE) and is tried again every [`REFUSED_RETRY`].
//!
//! Reconciliation uploads what the database may lack or have stale: the
//! messages marked unreplicated on disk (`local_marks`), state changes and
//! removals whose write failed, and at start a pass over the whole spool
//! against this node's rows (both directions, in pages, between batches).
//! Every upload is idempotent by queue ID, and a re-upload always writes a
//! row version, so its commit, too, waits for the standby: a commit that
//! was cancelled after it committed on the primary alone is made good.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Json;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use super::local_marks::LocalMarks;
use super::ClusterError;
use crate::config::ClusterConfig;
use crate::envelope::QueueId;
use crate::spool::{SegmentStore, SpoolStore};

/// Work for the replicator, in the order the node did it.
pub(super) enum Op {
    /// Write the local message (envelope, state, body, recipients) to the
    /// database; `done` hears when that is committed (before-ack).
    Upload {
        id: QueueId,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// The message changed state or left the spool: make its row say so.
    Sync(QueueId),
    /// Finish what is queued (briefly), then stop.
    Close(oneshot::Sender<()>),
}

/// What the store, the heartbeat and the status read of the replicator.
pub(super) struct Shared {
    pub config: ClusterConfig,
    pub settings: tokio_postgres::Config,
    pub local: Arc<SegmentStore>,
    pub marks: LocalMarks,
    up: AtomicBool,
    last_error: Mutex<String>,
    /// Messages whose row the database refused, waiting to be tried again.
    refused: AtomicUsize,
}

impl Shared {
    pub fn new(
        config: ClusterConfig,
        settings: tokio_postgres::Config,
        local: Arc<SegmentStore>,
        marks: LocalMarks,
    ) -> Shared {
        Shared {
            config,
            settings,
            local,
            marks,
            up: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            refused: AtomicUsize::new(0),
        }
    }

    /// Did the last commit (or probe) succeed in time?
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How many messages' rows the database refused (see the module doc).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().expect("error lock").clone()
    }

    fn set_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.config.node, unreplicated = self.marks.unreplicated_count(), "cluster: database commits succeed again");
        }
        crate::metrics::get().cluster_database_up.set(1);
    }

    fn set_down(&self, error: String) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(node = %self.config.node, error = %error, "cluster: database unavailable; new mail is handled by cluster.on_unavailable");
        }
        *self.last_error.lock().expect("error lock") = error;
        crate::metrics::get().cluster_database_up.set(0);
    }
}

/// The whole row and its recipient index entries, in one statement.
const UPSERT: &str = "WITH message AS (
        INSERT INTO breakwater_messages
            (queue_id, node, received_at, sender, size, envelope, state, body, body_sha256)
        VALUES ($1, $2, to_timestamp($3::float8 / 1000), $4, $5, $6, $7, $8, $9)
        ON CONFLICT (queue_id) DO UPDATE
            SET state = EXCLUDED.state, orphaned = false, replicated_at = now()
        RETURNING queue_id)
    INSERT INTO breakwater_recipients (address, queue_id)
    SELECT unnest($10::text[]), queue_id FROM message ON CONFLICT DO NOTHING";
const UPDATE_STATE: &str =
    "UPDATE breakwater_messages SET state = $2, replicated_at = now() WHERE queue_id = $1";
const DELETE: &str = "DELETE FROM breakwater_messages WHERE queue_id = $1 AND node = $2";

struct Statements {
    upsert: Statement,
    update_state: Statement,
    delete: Statement,
}

struct Connection {
    client: Client,
    statements: Statements,
}

impl Connection {
    async fn open(settings: &tokio_postgres::Config) -> Result<Connection, ClusterError> {
        let client = super::database::connect_checked(settings).await?;
        let statements = Statements {
            upsert: client.prepare(UPSERT).await?,
            update_state: client.prepare(UPDATE_STATE).await?,
            delete: client.prepare(DELETE).await?,
        };
        Ok(Connection { client, statements })
    }
}

/// Most operations in one transaction, and most body bytes.
const BATCH_OPS: usize = 512;
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Messages reconciled per transaction; local messages per start-up page.
const RECONCILE_CHUNK: usize = 200;
const RESYNC_PAGE: usize = 500;
/// How long a message whose row the database refused waits before it is
/// tried again (a constraint an operator fixes, a bug fixed by an upgrade).
const REFUSED_RETRY: Duration = Duration::from_secs(300);
/// How often a down database is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// While new mail keeps the queue busy, reconciliation still runs a step
/// this often.
const BACKGROUND_EVERY: Duration = Duration::from_millis(50);

/// Where the start-up pass over the spool is.
#[derive(Debug, Clone, PartialEq)]
enum Resync {
    /// Compare the spool's name with the node's row first.
    Start,
    /// Local messages after this one are still to be compared.
    Upload(Option<QueueId>),
    /// This node's rows after this queue ID are still to be looked for locally.
    Absent(String),
    Done,
}

pub(super) struct Replicator {
    shared: Arc<Shared>,
    ops: mpsc::UnboundedReceiver<Op>,
    connection: Option<Connection>,
    /// Messages whose row may be out of date after a failed write.
    pending: BTreeSet<QueueId>,
    /// Messages whose row the database refused, and when to try again.
    refused: HashMap<QueueId, Instant>,
    /// Set when everything left to reconcile was refused: no background
    /// step before then (the marks are not listed in a busy loop).
    quiet_until: Option<Instant>,
    next_probe: Instant,
    resync: Resync,
}

/// Why a write did not commit.
#[derive(Debug, Clone)]
enum WriteError {
    /// Not connected, failed or late: the database counts as down.
    Down(String),
    /// The database answered and refused a row (SQLSTATE class 22 or 23).
    Refused(String),
}

impl WriteError {
    fn text(&self) -> String {
        match self {
            WriteError::Down(why) => why.clone(),
            WriteError::Refused(why) => format!("refused by the database: {why}"),
        }
    }
}

/// A data exception or an integrity constraint violation: the row, not the
/// database, is at fault.
fn is_refusal(err: &ClusterError) -> bool {
    matches!(err, ClusterError::Database(db)
        if db.code().is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23")))
}

impl Replicator {
    pub fn new(shared: Arc<Shared>, ops: mpsc::UnboundedReceiver<Op>) -> Replicator {
        Replicator {
            shared,
            ops,
            connection: None,
            pending: BTreeSet::new(),
            refused: HashMap::new(),
            quiet_until: None,
            next_probe: Instant::now(),
            resync: Resync::Start,
        }
    }

    /// Connect and probe once, so the node starts knowing whether the
    /// database is there (the start-up log says so).
    pub async fn first_probe(&mut self) {
        self.probe().await;
    }

    pub async fn run(mut self) {
        let mut last_background = Instant::now();
        loop {
            // Under a steady stream of new mail the queue is never empty:
            // the probe and the reconciliation still get their turn.
            if !self.shared.is_up() && Instant::now() >= self.next_probe {
                self.probe().await;
            } else if self.background_due() && last_background.elapsed() >= BACKGROUND_EVERY {
                self.background_step().await;
                last_background = Instant::now();
            }
            let background = self.background_due();
            let wait = if background {
                Duration::ZERO
            } else {
                self.next_probe.saturating_duration_since(Instant::now())
            };
            let first = tokio::select! {
                biased;
                op = self.ops.recv() => match op {
                    Some(op) => Some(op),
                    None => return,
                },
                _ = tokio::time::sleep(wait), if background || !self.shared.is_up() => None,
            };
            match first {
                Some(op) => {
                    let mut ops = vec![op];
                    let mut bytes = 0;
                    while ops.len() < BATCH_OPS && bytes < BATCH_BYTES {
                        match self.ops.try_recv() {
                            Ok(op) => {
                                if let Op::Upload { id, .. } = &op {
                                    bytes += self.size_of(*id).await;
                                }
                                ops.push(op);
                            }
                            Err(_) => break,
                        }
                    }
                    if self.run_batch(ops).await {
                        return;
                    }
                }
                None if !self.shared.is_up() => self.probe().await,
                None => {
                    self.background_step().await;
                    last_background = Instant::now();
                }
            }
        }
    }

    async fn size_of(&self, id: QueueId) -> u64 {
        match self.shared.local.get(id).await {
            Ok(Some(message)) => message.envelope.size,
            _ => 0,
        }
    }

    fn background_due(&self) -> bool {
        self.shared.is_up()
            && self.quiet_until.is_none_or(|until| Instant::now() >= until)
            && (!self.pending.is_empty()
                || self.shared.marks.unreplicated_count() > 0
                || self.resync != Resync::Done)
    }

    /// One batch in one transaction. True when a `Close` was in it.
    async fn run_batch(&mut self, ops: Vec<Op>) -> bool {
        let mut closing = Vec::new();
        let mut work = Vec::new();
        for op in ops {
            match op {
                Op::Close(done) => closing.push(done),
                other => work.push(other),
            }
        }
        if !work.is_empty() {
            self.commit_batch(work).await;
        }
        let close = !closing.is_empty();
        for done in closing {
            let _ = done.send(());
        }
        close
    }

    async fn commit_batch(&mut self, work: Vec<Op>) {
        let writes: Vec<(QueueId, bool)> = work
            .iter()
            .filter_map(|op| match op {
                Op::Upload { id, .. } => Some((*id, true)),
                Op::Sync(id) => Some((*id, false)),
                Op::Close(_) => None,
            })
            .collect();
        let outcomes = if self.shared.is_up() {
            self.commit_writes(writes).await
        } else {
            let down = format!("database unavailable: {}", self.shared.last_error());
            writes
                .iter()
                .map(|(id, _)| (*id, Err(down.clone())))
                .collect()
        };
        let mut replicated = 0;
        for op in work {
            match op {
                Op::Upload { id, done } => {
                    let outcome = outcomes.get(&id).cloned().unwrap_or(Ok(()));
                    replicated += usize::from(outcome.is_ok());
                    match done {
                        // The store decides (mark or refuse); a dropped
                        // receiver (the store stopped waiting) is the
                        // store's timeout.
                        Some(done) => {
                            let _ = done.send(outcome);
                        }
                        None if outcome.is_err() => {
                            if let Err(err) = self.shared.marks.mark(id) {
                                tracing::error!(queue_id = %id, error = %err, "cluster: cannot mark the message unreplicated; the start-up pass will find it");
                            }
                        }
                        None => {}
                    }
                }
                Op::Sync(id) => {
                    if outcomes.get(&id).is_some_and(|o| o.is_err()) {
                        self.pending.insert(id);
                    }
                }
                Op::Close(_) => {}
            }
        }
        crate::metrics::get()
            .cluster_replicated
            .inc_by(replicated as u64);
    }

    /// Commit `writes` in one transaction; when the database refuses a row,
    /// again one message per transaction, so that only the refused ones
    /// fail (see the module doc). The outcome per message.
    async fn commit_writes(
        &mut self,
        writes: Vec<(QueueId, bool)>,
    ) -> HashMap<QueueId, Result<(), String>> {
        let mut outcomes = HashMap::new();
        match self.within_timeout(writes.clone()).await {
            Ok(()) => {
                for (id, _) in &writes {
                    self.forgive(*id);
                }
                outcomes.extend(writes.iter().map(|(id, _)| (*id, Ok(()))));
            }
            Err(WriteError::Down(why)) => {
                outcomes.extend(writes.iter().map(|(id, _)| (*id, Err(why.clone()))));
            }
            Err(WriteError::Refused(why)) => {
                tracing::warn!(messages = writes.len(), error = %why, "cluster: the database refused a row of a batch; writing its messages one by one");
                let mut down: Option<String> = None;
                for (id, whole) in writes {
                    if let Some(why) = &down {
                        outcomes.insert(id, Err(why.clone()));
                        continue;
                    }
                    let outcome = match self.within_timeout(vec![(id, whole)]).await {
                        Ok(()) => {
                            self.forgive(id);
                            Ok(())
                        }
                        Err(WriteError::Down(why)) => {
                            down = Some(why.clone());
                            Err(why)
                        }
                        Err(refused @ WriteError::Refused(_)) => {
                            tracing::error!(queue_id = %id, error = %refused.text(), "cluster: the database refuses this message's row; it stays on this node only, tried again in 5 minutes");
                            if self
                                .refused
                                .insert(id, Instant::now() + REFUSED_RETRY)
                                .is_none()
                            {
                                self.shared.refused.fetch_add(1, Ordering::AcqRel);
                            }
                            Err(refused.text())
                        }
                    };
                    // One message written twice in a batch: any failure counts.
                    let entry = outcomes.entry(id).or_insert(Ok(()));
                    if entry.is_ok() {
                        *entry = outcome;
                    }
                }
            }
        }
        outcomes
    }

    /// The database took the row of a message it refused before.
    fn forgive(&mut self, id: QueueId) {
        if self.refused.remove(&id).is_some() {
            self.shared.refused.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Bring the rows of `ids` in line with the local spool in one
    /// transaction, within `commit_timeout`; on failure the database is
    /// down. `(id, whole)`: whole = write the whole row (a new message, or
    /// a reconciliation: the row may be missing, and a written row version
    /// makes the commit wait for the standby), else only its state.
    async fn within_timeout(&mut self, writes: Vec<(QueueId, bool)>) -> Result<(), WriteError> {
        let limit = self.shared.config.commit_timeout;
        let result = match self.connection.as_mut() {
            None => Err(WriteError::Down("not connected".to_string())),
            Some(connection) => {
                let cancel = connection.client.cancel_token();
                let shared = self.shared.clone();
                let Connection { client, statements } = connection;
                let work = async {
                    let rows = local_rows(&shared, writes).await;
                    let tx = client.transaction().await?;
                    write_rows(&tx, statements, &shared, &rows).await?;
                    tx.commit().await?;
                    Ok::<(), ClusterError>(())
                };
                match tokio::time::timeout(limit, work).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) if is_refusal(&err) => Err(WriteError::Refused(err.to_string())),
                    Ok(Err(err)) => Err(WriteError::Down(err.to_string())),
                    Err(_) => {
                        // The server may go on waiting for the standby; the
                        // connection is dropped either way.
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(5),
                                cancel.cancel_query(NoTls),
                            )
                            .await;
                        });
                        Err(WriteError::Down(format!(
                            "no commit within {} (a synchronous standby missing?)",
                            humantime::format_duration(limit)
                        )))
                    }
                }
            }
        };
        match &result {
            // A refusal is an answer: the database is up, the connection
            // fine (the failed transaction was rolled back).
            Ok(()) | Err(WriteError::Refused(_)) => self.shared.set_up(),
            Err(WriteError::Down(err)) => {
                self.connection = None;
                self.next_probe = Instant::now() + PROBE_EVERY;
                self.shared.set_down(err.clone());
            }
        }
        result
    }

    /// The database is down: connect if needed and try one real write.
    async fn probe(&mut self) {
        self.next_probe = Instant::now() + PROBE_EVERY;
        if self.connection.is_none() {
            let limit = self.shared.config.commit_timeout;
            match tokio::time::timeout(limit, Connection::open(&self.shared.settings)).await {
                Ok(Ok(connection)) => self.connection = Some(connection),
                Ok(Err(err)) => return self.shared.set_down(err.to_string()),
                Err(_) => {
                    return self.shared.set_down(format!(
                        "cannot connect within {}",
                        humantime::format_duration(limit)
                    ))
                }
            }
        }
        let marked = self.reconcile_ids();
        if marked.is_empty() {
            self.heartbeat_probe().await;
        } else {
            self.reconcile(marked).await;
        }
    }

    /// A write that waits for the standby like any commit.
    async fn heartbeat_probe(&mut self) {
        let limit = self.shared.config.commit_timeout;
        let node = self.shared.config.node.clone();
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let cancel = connection.client.cancel_token();
        let outcome = tokio::time::timeout(
            limit,
            // Always a row written (also for a node never seen: its spool
            // name stays empty, so the start-up pass treats the database's
            // rows for it as not its spool's), so the commit waits for the
            // synchronous standby like any other.
            connection.client.execute(
                "INSERT INTO breakwater_nodes (node, spool_id, version) VALUES ($1, '', $2)
                 ON CONFLICT (node) DO UPDATE SET heartbeat_at = now()",
                &[&node, &env!("CARGO_PKG_VERSION")],
            ),
        )
        .await;
        match outcome {
            Ok(Ok(_)) => self.shared.set_up(),
            Ok(Err(err)) => {
                self.connection = None;
                self.shared.set_down(super::describe(&err));
            }
            Err(_) => {
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), cancel.cancel_query(NoTls))
                            .await;
                });
                self.connection = None;
                self.shared.set_down(format!(
                    "no commit within {} (a synchronous standby missing?)",
                    humantime::format_duration(limit)
                ));
            }
        }
    }

    /// Up to a chunk of the messages to reconcile: marked, then pending;
    /// not those the database refused a moment ago.
    fn reconcile_ids(&mut self) -> Vec<QueueId> {
        let now = Instant::now();
        let waiting = |id: &QueueId| self.refused.get(id).is_some_and(|until| *until > now);
        let mut ids: Vec<QueueId> = match self.shared.marks.unreplicated() {
            Ok(marked) => marked
                .into_iter()
                .filter(|id| !waiting(id))
                .take(RECONCILE_CHUNK)
                .collect(),
            Err(err) => {
                tracing::error!(error = %err, "cluster: cannot list the unreplicated marks");
                Vec::new()
            }
        };
        let room = RECONCILE_CHUNK.saturating_sub(ids.len());
        ids.extend(
            self.pending
                .iter()
                .filter(|id| !waiting(id))
                .take(room)
                .copied(),
        );
        ids.sort();
        ids.dedup();
        let all_refused = ids.is_empty()
            && (!self.pending.is_empty() || self.shared.marks.unreplicated_count() > 0);
        self.quiet_until = all_refused.then(|| now + PROBE_EVERY);
        ids
    }

    async fn reconcile(&mut self, ids: Vec<QueueId>) {
        let writes = ids.iter().map(|id| (*id, true)).collect();
        let outcomes = self.commit_writes(writes).await;
        let mut done = 0;
        for id in &ids {
            if outcomes.get(id).is_some_and(|o| o.is_ok()) {
                self.shared.marks.clear(*id);
                self.pending.remove(id);
                done += 1;
            }
        }
        if done > 0 {
            crate::metrics::get().cluster_replicated.inc_by(done as u64);
            tracing::info!(
                messages = done,
                still_unreplicated = self.shared.marks.unreplicated_count(),
                "cluster: reconciled messages with the database"
            );
        }
    }

    /// While up, between batches: reconcile, then the start-up pass.
    async fn background_step(&mut self) {
        let ids = self.reconcile_ids();
        if !ids.is_empty() {
            return self.reconcile(ids).await;
        }
        let step = self.resync_step().await;
        match step {
            Ok(next) => self.resync = next,
            Err(err) => {
                self.connection = None;
                self.next_probe = Instant::now() + PROBE_EVERY;
                self.shared.set_down(err);
            }
        }
    }

    /// One page of the start-up pass (see [`Resync`]).
    async fn resync_step(&mut self) -> Result<Resync, String> {
        let limit = self.shared.config.commit_timeout * 2;
        let shared = self.shared.clone();
        let resync = self.resync.clone();
        let pending = &mut self.pending;
        let Some(connection) = self.connection.as_mut() else {
            return Err("not connected".into());
        };
        let client = &connection.client;
        let step = async move {
            match resync {
                Resync::Start => {
                    resync_start(client, &shared).await?;
                    Ok(Resync::Upload(None))
                }
                Resync::Upload(after) => {
                    let (page, next) = shared.local.page(after, RESYNC_PAGE, &mut |_| true).await?;
                    let ids: Vec<String> = page.iter().map(|m| m.id.to_string()).collect();
                    let rows = client
                        .query(
                            "SELECT queue_id, state FROM breakwater_messages WHERE queue_id = ANY($1)",
                            &[&ids],
                        )
                        .await?;
                    let in_database: HashMap<String, serde_json::Value> = rows
                        .into_iter()
                        .map(|row| {
                            (
                                row.get::<_, String>(0),
                                row.get::<_, Json<serde_json::Value>>(1).0,
                            )
                        })
                        .collect();
                    let stale: Vec<QueueId> = page
                        .iter()
                        .filter(|m| {
                            in_database.get(&m.id.to_string())
                                != serde_json::to_value(&m.state).ok().as_ref()
                        })
                        .map(|m| m.id)
                        .collect();
                    if !stale.is_empty() {
                        tracing::info!(messages = stale.len(), "cluster: start-up pass: uploading messages the database lacks or has stale");
                    }
                    pending.extend(stale);
                    Ok(match next {
                        Some(cursor) => Resync::Upload(Some(cursor)),
                        None => Resync::Absent(String::new()),
                    })
                }
                Resync::Absent(after) => {
                    // Two nodes configured with one name would take each
                    // other's rows for finished mail: the row must still
                    // name this spool before anything is taken for gone.
                    let owner: Option<String> = client
                        .query_opt(
                            "SELECT spool_id FROM breakwater_nodes WHERE node = $1",
                            &[&shared.config.node],
                        )
                        .await?
                        .map(|row| row.get(0));
                    if owner.as_ref() != Some(&shared.marks.spool_id) {
                        tracing::error!(node = %shared.config.node, "cluster: another spool uses this node name (cluster.node must be unique); the start-up pass deletes nothing");
                        return Ok(Resync::Done);
                    }
                    // The database first, then the spool: a row seen here
                    // was acknowledged before, so the spool shows it unless
                    // it really left (and then its removal is queued anyway).
                    let rows = client
                        .query(
                            "SELECT queue_id FROM breakwater_messages
                             WHERE node = $1 AND NOT orphaned AND queue_id > $2
                             ORDER BY queue_id LIMIT 500",
                            &[&shared.config.node, &after],
                        )
                        .await?;
                    let mut last = None;
                    for row in &rows {
                        let text: String = row.get(0);
                        if let Ok(id) = text.parse::<QueueId>() {
                            if shared.local.get(id).await?.is_none() {
                                pending.insert(id);
                            }
                        }
                        last = Some(text);
                    }
                    Ok(match last {
                        Some(last) if rows.len() == 500 => Resync::Absent(last),
                        _ => {
                            tracing::info!(node = %shared.config.node, "cluster: start-up pass over the spool finished");
                            Resync::Done
                        }
                    })
                }
                Resync::Done => Ok::<Resync, ClusterError>(Resync::Done),
            }
        };
        match tokio::time::timeout(limit, step).await {
            Ok(Ok(next)) => Ok(next),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("start-up pass: no answer in time".into()),
        }
    }
}

/// The node's row against the spool's name: a spool that is not the one
/// the database knows (new disk, deleted directory) did not deliver the
/// node's rows it lacks, so those are kept as orphaned, never deleted.
async fn resync_start(client: &Client, shared: &Shared) -> Result<(), ClusterError> {
    let node = &shared.config.node;
    let spool_id = &shared.marks.spool_id;
    let known: Option<String> = client
        .query_opt(
            "SELECT spool_id FROM breakwater_nodes WHERE node = $1",
            &[node],
        )
        .await?
        .map(|row| row.get(0));
    if known.as_ref() != Some(spool_id) {
        let orphaned = client
            .execute(
                "UPDATE breakwater_messages SET orphaned = true WHERE node = $1 AND NOT orphaned",
                &[node],
            )
            .await?;
        if orphaned > 0 {
            tracing::warn!(node = %node, messages = orphaned, "cluster: this spool is not the one the database knew for this node; its messages there are kept as orphaned (not delivered by this node)");
        }
    }
    client
        .execute(
            "INSERT INTO breakwater_nodes (node, spool_id, version, started_at, heartbeat_at, spooled, unreplicated)
             VALUES ($1, $2, $3, now(), now(), $4, $5)
             ON CONFLICT (node) DO UPDATE SET spool_id = EXCLUDED.spool_id, version = EXCLUDED.version,
                 started_at = now(), heartbeat_at = now(), spooled = EXCLUDED.spooled,
                 unreplicated = EXCLUDED.unreplicated",
            &[
                node,
                spool_id,
                &env!("CARGO_PKG_VERSION"),
                &(shared.local.len() as i64),
                &(shared.marks.unreplicated_count() as i64),
            ],
        )
        .await?;
    Ok(())
}

/// What one message's row must become, read from the local spool.
enum Row {
    /// Not in the spool (finished, or withdrawn): no row.
    Gone(String),
    /// Its state only; the whole row when the database lacks it.
    State(QueueId, Json<crate::envelope::MessageState>),
    Whole(Box<WholeRow>),
}

struct WholeRow {
    key: String,
    message: crate::spool::SpooledMessage,
    body: Vec<u8>,
    digest: Vec<u8>,
    recipients: Vec<String>,
}

/// The rows for `writes`, one per message: every write reads the message
/// as it is now, so several writes of one message in a batch are one row
/// (the whole row if any of them asked for it). A message that cannot be
/// read locally is logged and left out; the start-up pass tries again.
async fn local_rows(shared: &Shared, writes: Vec<(QueueId, bool)>) -> Vec<Row> {
    let mut order: Vec<QueueId> = Vec::new();
    let mut whole: HashMap<QueueId, bool> = HashMap::new();
    for (id, want_whole) in writes {
        match whole.get_mut(&id) {
            Some(flag) => *flag |= want_whole,
            None => {
                order.push(id);
                whole.insert(id, want_whole);
            }
        }
    }
    let mut rows = Vec::with_capacity(order.len());
    for id in order {
        if let Some(row) = local_row(shared, id, whole[&id]).await {
            rows.push(row);
        }
    }
    rows
}

async fn local_row(shared: &Shared, id: QueueId, whole: bool) -> Option<Row> {
    let message = match shared.local.get(id).await {
        Ok(Some(message)) => message,
        Ok(None) => return Some(Row::Gone(id.to_string())),
        Err(err) => {
            tracing::error!(queue_id = %id, error = %err, "cluster: cannot read the message locally; not replicated");
            return None;
        }
    };
    if !whole {
        return Some(Row::State(id, Json(message.state)));
    }
    let body = match shared.local.read_body(id).await {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(queue_id = %id, error = %err, "cluster: cannot read the body locally; not replicated");
            return None;
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &body)
        .as_ref()
        .to_vec();
    let recipients = message
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_lowercase())
        .collect();
    Some(Row::Whole(Box::new(WholeRow {
        key: id.to_string(),
        message,
        body,
        digest,
        recipients,
    })))
}

/// Write the rows in one pipelined round: every statement is sent before
/// the first answer is awaited (tokio-postgres sends concurrent queries on
/// one connection in the order they are first polled, and each message has
/// one row, so no two statements of a message race). A state whose row is
/// missing (its upload failed earlier) is then written whole.
async fn write_rows(
    tx: &Transaction<'_>,
    statements: &Statements,
    shared: &Shared,
    rows: &[Row],
) -> Result<(), ClusterError> {
    let node = &shared.config.node;
    let written = futures_util::future::try_join_all(rows.iter().map(|row| async move {
        match row {
            Row::Gone(key) => tx.execute(&statements.delete, &[key, node]).await,
            Row::State(id, state) => {
                tx.execute(&statements.update_state, &[&id.to_string(), state])
                    .await
            }
            Row::Whole(row) => upsert(tx, statements, node, row).await,
        }
    }))
    .await?;
    for (row, count) in rows.iter().zip(written) {
        if let (Row::State(id, _), 0) = (row, count) {
            if let Some(Row::Whole(whole)) = local_row(shared, *id, true).await {
                upsert(tx, statements, node, &whole).await?;
            }
        }
    }
    Ok(())
}

async fn upsert(
    tx: &Transaction<'_>,
    statements: &Statements,
    node: &String,
    row: &WholeRow,
) -> Result<u64, tokio_postgres::Error> {
    let envelope = &row.message.envelope;
    tx.execute(
        &statements.upsert,
        &[
            &row.key,
            node,
            &(envelope.received_at_ms as f64),
            &envelope.sender,
            &(row.body.len() as i64),
            &Json(envelope),
            &Json(&row.message.state),
            &row.body,
            &row.digest,
            &row.recipients,
        ],
    )
    .await
}

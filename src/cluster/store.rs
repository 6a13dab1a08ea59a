//! `ReplicatedStore`: the spool of a cluster node. The node's own segment
//! store stays the first copy and the fallback; every new message, state
//! change and removal also goes to the database through the replicator.
//! What is where at the moment of `250`, per mode, is in docs/CLUSTER.md.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::replicator::{Op, Shared};
use crate::config::{OnUnavailable, Replicate};
use crate::envelope::{now_ms, Envelope, MessageState, QueueId};
use crate::spool::{
    CensusSnapshot, Maintenance, MessageBody, Shortage, SpoolError, SpoolStore, SpooledMessage,
    StateUpdate, Stats, StoredBody,
};

pub struct ReplicatedStore {
    pub(super) shared: Arc<Shared>,
    pub(super) ops: mpsc::UnboundedSender<Op>,
    /// Tells the heartbeat to stop.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
    /// The replicator and the heartbeat: awaited at close, so that nothing
    /// holds the local spool (and its lock) once `close` returns.
    pub(super) tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ReplicatedStore {
    fn send(&self, op: Op) {
        // Closed only after `close`; later writes are the local store's
        // to refuse, and the start-up pass catches anything else.
        let _ = self.ops.send(op);
    }

    /// Before-ack: wait for the commit; on failure follow `on_unavailable`.
    async fn replicate_before_ack(&self, id: QueueId) -> Result<(), SpoolError> {
        let config = &self.shared.config;
        // Not offered to delivery while the answer is open: a message that
        // ends with 451 must never have been delivered.
        let hold_until = now_ms() + 2 * config.commit_timeout.as_millis() as u64 + 1000;
        let _ = self.shared.local.park(id, hold_until).await;
        let outcome = if self.shared.is_up() {
            let (done, answer) = oneshot::channel();
            self.send(Op::Upload {
                id,
                done: Some(done),
            });
            match tokio::time::timeout(config.commit_timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err("the replicator stopped".to_string()),
                Err(_) => Err(format!(
                    "no commit within {}",
                    humantime::format_duration(config.commit_timeout)
                )),
            }
        } else {
            Err(format!(
                "database unavailable: {}",
                self.shared.last_error()
            ))
        };
        let result = match (outcome, config.on_unavailable) {
            (Ok(()), _) => Ok(()),
            (Err(reason), OnUnavailable::AcceptLocal) => match self.shared.marks.mark(id) {
                Ok(()) => {
                    tracing::warn!(queue_id = %id, reason = %reason, "cluster: accepted on the local copy only; marked unreplicated, uploaded when the database is back");
                    Ok(())
                }
                Err(err) => Err(self
                    .withdraw(id, format!("cannot mark unreplicated: {err}"))
                    .await),
            },
            (Err(reason), OnUnavailable::Tempfail) => Err(self.withdraw(id, reason).await),
        };
        if result.is_ok() {
            let _ = self.shared.local.park(id, now_ms()).await;
        }
        result
    }

    /// The message will not be acknowledged: take it out of the local
    /// spool, and out of the database should a cancelled commit have
    /// committed after all (the removal is queued behind the upload).
    async fn withdraw(&self, id: QueueId, reason: String) -> SpoolError {
        if let Err(err) = self
            .shared
            .local
            .remove(
                id,
                "not acknowledged: not committed to the cluster database",
            )
            .await
        {
            tracing::error!(queue_id = %id, error = %err, "cluster: cannot withdraw an unacknowledged message; it may be delivered although the client was told to retry");
        }
        self.send(Op::Sync(id));
        tracing::warn!(queue_id = %id, reason = %reason, "cluster: not committed to the database; answering 451");
        SpoolError::NotReplicated(reason)
    }
}

#[async_trait]
impl SpoolStore for ReplicatedStore {
    fn new_body(&self) -> MessageBody {
        self.shared.local.new_body()
    }

    async fn enqueue(&self, body: MessageBody, envelope: Envelope) -> Result<QueueId, SpoolError> {
        let id = self.shared.local.enqueue(body, envelope).await?;
        match self.shared.config.replicate {
            Replicate::AfterAck => {
                self.send(Op::Upload { id, done: None });
                Ok(id)
            }
            Replicate::BeforeAck => self.replicate_before_ack(id).await.map(|()| id),
        }
    }

    async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError> {
        self.shared.local.get(id).await
    }

    async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        self.shared.local.read_body(id).await
    }

    async fn open_body(&self, id: QueueId) -> Result<StoredBody, SpoolError> {
        self.shared.local.open_body(id).await
    }

    async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        self.shared.local.read_head(id, limit).await
    }

    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<QueueId>, SpoolError> {
        self.shared.local.due(now_ms, limit).await
    }

    async fn next_due_ms(&self) -> Result<Option<u64>, SpoolError> {
        self.shared.local.next_due_ms().await
    }

    async fn update_state(
        &self,
        id: QueueId,
        change: &mut (dyn for<'s> FnMut(&'s mut MessageState) + Send),
    ) -> Result<StateUpdate, SpoolError> {
        let update = self.shared.local.update_state(id, change).await?;
        if update == StateUpdate::Written {
            self.send(Op::Sync(id));
        }
        Ok(update)
    }

    async fn park(&self, id: QueueId, until_ms: u64) -> Result<bool, SpoolError> {
        self.shared.local.park(id, until_ms).await
    }

    async fn remove(&self, id: QueueId, reason: &str) -> Result<bool, SpoolError> {
        let removed = self.shared.local.remove(id, reason).await?;
        if removed {
            self.send(Op::Sync(id));
        }
        Ok(removed)
    }

    async fn held_upstreams(&self) -> Result<BTreeSet<String>, SpoolError> {
        self.shared.local.held_upstreams().await
    }

    async fn set_upstream_held(&self, upstream: &str, held: bool) -> Result<(), SpoolError> {
        self.shared.local.set_upstream_held(upstream, held).await
    }

    async fn list(&self) -> Result<Vec<SpooledMessage>, SpoolError> {
        self.shared.local.list().await
    }

    async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        keep: &mut (dyn for<'m> FnMut(&'m SpooledMessage) -> bool + Send),
    ) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
        self.shared.local.page(after, limit, keep).await
    }

    async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError> {
        self.shared.local.ids_for_recipient(address).await
    }

    fn len(&self) -> usize {
        self.shared.local.len()
    }

    fn scheduled(&self) -> usize {
        self.shared.local.scheduled()
    }

    fn check_space(&self, incoming: u64) -> Result<(), Shortage> {
        self.shared.local.check_space(incoming)
    }

    fn used_bytes(&self) -> u64 {
        self.shared.local.used_bytes()
    }

    fn free_bytes(&self) -> std::io::Result<u64> {
        self.shared.local.free_bytes()
    }

    async fn probe_writable(&self) -> Result<(), String> {
        self.shared.local.probe_writable().await
    }

    fn stats(&self) -> &Stats {
        self.shared.local.stats()
    }

    fn census(&self) -> CensusSnapshot {
        self.shared.local.census()
    }

    async fn maintain(&self) -> Result<Maintenance, SpoolError> {
        self.shared.local.maintain().await
    }

    async fn close(&self) {
        // Queued writes get one commit's time; what misses it is found by
        // the next start's pass over the spool.
        let (done, finished) = oneshot::channel();
        self.send(Op::Close(done));
        let limit = self.shared.config.commit_timeout * 2;
        let _ = tokio::time::timeout(limit, finished).await;
        let _ = self.closing.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for task in tasks {
            // The replicator has answered the close; what it still does is
            // not needed, and a heartbeat stuck on the network is dropped.
            let _ = tokio::time::timeout(limit, task).await;
        }
        self.shared.local.close().await;
    }
}

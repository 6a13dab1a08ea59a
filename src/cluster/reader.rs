//! Other nodes' mail, read from the database for the readers' view
//! (`spool::View`: the web mailbox, the admin list, show and raw).
//!
//! Which rows: those of other nodes, and this node's rows marked orphaned
//! (its earlier spool was lost; the mail is only in the database now).
//! This node's other rows are its own spool's, read locally; one it no
//! longer holds is finished, its deletion on the way.
//!
//! Why a connection of its own: a reader must not queue behind the
//! replicator's batches. Why calls fail at once for a while after one
//! failed: while the database is down every page would otherwise wait the
//! whole timeout on every call; it shows this node's mail instead, saying
//! so, and one call a second tries the database again.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Row};

use crate::envelope::{Envelope, MessageState, QueueId};
use crate::spool::{OtherNodes, SpoolError, SpooledMessage};

/// After a failure, calls fail at once for this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A row is another node's, or this node's from a spool it lost.
const THEIRS: &str = "(node <> $2 OR orphaned)";

pub struct DatabaseReader {
    node: String,
    settings: tokio_postgres::Config,
    /// Longest wait for a connection or an answer (`commit_timeout`).
    timeout: Duration,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    failed_at: std::sync::Mutex<Option<Instant>>,
}

fn database_error(what: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io(std::io::Error::other(format!("cluster database: {what}")))
}

impl DatabaseReader {
    pub fn new(node: String, settings: tokio_postgres::Config, timeout: Duration) -> Self {
        DatabaseReader {
            node,
            settings,
            timeout: timeout.max(Duration::from_millis(500)),
            client: tokio::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
        }
    }

    fn failed_recently(&self) -> bool {
        self.failed_at
            .lock()
            .expect("failed_at lock")
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    async fn client(&self) -> Result<Arc<Client>, SpoolError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        if self.failed_recently() {
            return Err(database_error("unavailable (failed a moment ago)"));
        }
        let connect = super::database::connect_checked(&self.settings);
        let client = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(client)) => Arc::new(client),
            Ok(Err(err)) => return Err(self.failed(err)),
            Err(_) => return Err(self.failed("no connection within the timeout")),
        };
        *slot = Some(client.clone());
        Ok(client)
    }

    fn failed(&self, why: impl std::fmt::Display) -> SpoolError {
        *self.failed_at.lock().expect("failed_at lock") = Some(Instant::now());
        database_error(why)
    }

    /// Run one query within the timeout; a failure or a late answer throws
    /// the connection away (its server side may still be busy).
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, SpoolError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, client.query(sql, params)).await;
        let error = match outcome {
            Ok(Ok(rows)) => {
                *self.failed_at.lock().expect("failed_at lock") = None;
                return Ok(rows);
            }
            Ok(Err(err)) => self.failed(err),
            Err(_) => self.failed("no answer within the timeout"),
        };
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
            *slot = None;
        }
        Err(error)
    }

    async fn one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, SpoolError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
}

fn queue_id(text: &str) -> Option<QueueId> {
    let id = QueueId::from_str(text).ok();
    if id.is_none() {
        tracing::warn!(
            queue_id = text,
            "cluster: a database row with an unreadable queue ID; skipped"
        );
    }
    id
}

fn message(row: &Row) -> Result<Option<SpooledMessage>, SpoolError> {
    let Some(id) = queue_id(row.get(0)) else {
        return Ok(None);
    };
    let envelope: Json<Envelope> = row.try_get(1).map_err(database_error)?;
    let state: Json<MessageState> = row.try_get(2).map_err(database_error)?;
    Ok(Some(SpooledMessage {
        id,
        envelope: envelope.0,
        state: state.0,
    }))
}

#[async_trait]
impl OtherNodes for DatabaseReader {
    async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError> {
        let sql = format!(
            "SELECT queue_id, envelope, state FROM breakwater_messages WHERE queue_id = $1 AND {THEIRS}"
        );
        match self.one(&sql, &[&id.to_string(), &self.node]).await? {
            Some(row) => message(&row),
            None => Ok(None),
        }
    }

    async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        let sql = format!(
            "SELECT body, body_sha256 FROM breakwater_messages WHERE queue_id = $1 AND {THEIRS}"
        );
        let row = self
            .one(&sql, &[&id.to_string(), &self.node])
            .await?
            .ok_or(SpoolError::NotFound(id))?;
        let body: Vec<u8> = row.try_get(0).map_err(database_error)?;
        let digest: Vec<u8> = row.try_get(1).map_err(database_error)?;
        let actual = ring::digest::digest(&ring::digest::SHA256, &body);
        if actual.as_ref() != digest.as_slice() {
            return Err(SpoolError::Corrupt(
                id,
                "the database's copy does not match its SHA-256".into(),
            ));
        }
        Ok(body)
    }

    async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        let sql = format!(
            "SELECT substring(body FROM 1 FOR $3) FROM breakwater_messages WHERE queue_id = $1 AND {THEIRS}"
        );
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let row = self
            .one(&sql, &[&id.to_string(), &self.node, &limit])
            .await?
            .ok_or(SpoolError::NotFound(id))?;
        row.try_get(0).map_err(database_error)
    }

    async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError> {
        let sql = "SELECT r.queue_id FROM breakwater_recipients r
            JOIN breakwater_messages m ON m.queue_id = r.queue_id
            WHERE r.address = $1 AND (m.node <> $2 OR m.orphaned)";
        let rows = self
            .query(sql, &[&address.to_lowercase(), &self.node])
            .await?;
        let mut ids: Vec<QueueId> = rows.iter().filter_map(|row| queue_id(row.get(0))).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
    ) -> Result<Vec<SpooledMessage>, SpoolError> {
        // Queue IDs are ULIDs: their text sorts as the IDs do, byte by byte
        // ("C" collation; migration 2 indexes it).
        let sql = format!(
            "SELECT queue_id, envelope, state FROM breakwater_messages
             WHERE queue_id COLLATE \"C\" > $1 AND {THEIRS}
             ORDER BY queue_id COLLATE \"C\" LIMIT $3"
        );
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let rows = self
            .query(&sql, &[&after, &self.node, &(limit as i64)])
            .await?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            page.extend(message(row)?);
        }
        Ok(page)
    }

    fn unavailable(&self) -> bool {
        self.failed_at.lock().expect("failed_at lock").is_some()
    }
}

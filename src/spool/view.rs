//! What people read: this node's spool, or every node's.
//!
//! Why two scopes: the stages that *act* on mail (delivery, delay notices,
//! drills, control actions) must see only what this node holds: its spool
//! is what it delivers from, and acting on another node's copy would send
//! or notify twice. The readers (the web mailbox, the admin list, show and
//! raw) must see the whole tenant's mail: with two MX nodes a user's
//! messages land on both. A [`View`] is the read-only half of the spool API
//! for one scope; [`Spool::this_node`] and [`Spool::everywhere`] make them.
//! In a cluster the rest comes from [`OtherNodes`] (the database); without
//! one both scopes are the same.
//!
//! Other nodes' mail is a best effort: when the database does not answer,
//! a view gives this node's mail alone and says so ([`View::is_partial`]),
//! rather than failing a mailbox because of a database outage.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Spool, SpoolError, SpooledMessage};
use crate::envelope::QueueId;

/// Messages held by the other nodes of a cluster (and those of this node's
/// earlier, lost spool), read from the shared store. Every call may fail:
/// the store is remote.
#[async_trait]
pub trait OtherNodes: Send + Sync + 'static {
    /// Another node's message; `None` when no other node holds it.
    async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError>;

    /// Its whole body, verified against its digest ([`SpoolError::Corrupt`]).
    async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError>;

    /// Up to `limit` bytes from its start, not verified.
    async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError>;

    /// Other nodes' messages with `address` among their recipients
    /// (case-insensitive), in queue-ID order.
    async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError>;

    /// Up to `limit` of their messages after `after`, in queue-ID order.
    async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
    ) -> Result<Vec<SpooledMessage>, SpoolError>;

    /// Did the last call fail (the store is unreachable or slow)?
    fn unavailable(&self) -> bool;
}

/// The read-only spool API over one scope (see the module doc).
#[derive(Clone)]
pub struct View {
    spool: Spool,
    others: Option<Arc<dyn OtherNodes>>,
}

/// Rows of other nodes read per round while a page is filled.
const OTHERS_CHUNK: usize = 200;

impl Spool {
    /// This node's mail only: for whatever acts on what it reads.
    pub fn this_node(&self) -> View {
        View {
            spool: self.clone(),
            others: None,
        }
    }

    /// Every node's mail: for readers (see the module doc).
    pub fn everywhere(&self) -> View {
        View {
            spool: self.clone(),
            others: self.others.clone(),
        }
    }
}

impl View {
    /// Does this view miss other nodes' mail right now (their store did not
    /// answer)? Always false for [`Spool::this_node`] and on a single node.
    pub fn is_partial(&self) -> bool {
        self.others.as_ref().is_some_and(|o| o.unavailable())
    }

    /// Is there more than this node to look at?
    pub fn spans_nodes(&self) -> bool {
        self.others.is_some()
    }

    /// Another node's answer, or what this node alone knows when their
    /// store failed (logged; [`View::is_partial`] says so).
    fn or_local<T>(result: Result<T, SpoolError>, local: T, what: &str) -> T {
        match result {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, call = what, "spool: other nodes' mail not readable; showing this node's");
                local
            }
        }
    }

    pub async fn get(&self, id: QueueId) -> Result<Option<SpooledMessage>, SpoolError> {
        let local = self.spool.get(id).await?;
        match (&local, &self.others) {
            (None, Some(others)) => Ok(View::or_local(others.get(id).await, None, "get")),
            _ => Ok(local),
        }
    }

    /// The whole message, verified ([`Spool::read_body`]); another node's
    /// from the shared store.
    pub async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        match (self.spool.read_body(id).await, &self.others) {
            (Err(SpoolError::NotFound(_)), Some(others)) => others.read_body(id).await,
            (result, _) => result,
        }
    }

    /// The first `limit` bytes, not verified ([`Spool::read_head`]).
    pub async fn read_head(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        match (self.spool.read_head(id, limit).await, &self.others) {
            (Err(SpoolError::NotFound(_)), Some(others)) => others.read_head(id, limit).await,
            (result, _) => result,
        }
    }

    /// IDs of the messages with `address` among their recipients
    /// (case-insensitive), in queue-ID order (oldest first).
    pub async fn ids_for_recipient(&self, address: &str) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = self.spool.ids_for_recipient(address).await?;
        if let Some(others) = &self.others {
            let theirs = View::or_local(
                others.ids_for_recipient(address).await,
                Vec::new(),
                "ids_for_recipient",
            );
            if !theirs.is_empty() {
                ids.extend(theirs);
                ids.sort_unstable();
                ids.dedup();
            }
        }
        Ok(ids)
    }

    /// [`Spool::page`] over the view: up to `limit` messages `keep` accepts
    /// after `after`, in queue-ID order, and the cursor of the next page.
    ///
    /// Each source is read up to some queue ID (this node's page says how
    /// far it got; the other nodes' rows are read in order); only messages
    /// up to the lower of the two positions are returned, the rest comes
    /// again on the next page, so nothing between them is ever skipped.
    pub async fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        mut keep: impl FnMut(&SpooledMessage) -> bool + Send,
    ) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
        let (mut found, local_next) = self.spool.page(after, limit, &mut keep).await?;
        let Some(others) = &self.others else {
            return Ok((found, local_next));
        };
        // How far the other nodes' rows were read, when they have more.
        let mut theirs_up_to = None;
        let mut cursor = after;
        let mut kept = 0;
        'read: loop {
            let rows = match others.page(cursor, OTHERS_CHUNK).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(error = %err, call = "page", "spool: other nodes' mail not readable; showing this node's");
                    break;
                }
            };
            let exhausted = rows.len() < OTHERS_CHUNK;
            for row in rows {
                // Past where this node's page stopped: not returnable now.
                if let Some(local_up_to) = local_next.filter(|up_to| row.id > *up_to) {
                    theirs_up_to = Some(local_up_to);
                    break 'read;
                }
                cursor = Some(row.id);
                if keep(&row) {
                    found.push(row);
                    kept += 1;
                    if kept == limit {
                        theirs_up_to = cursor;
                        break 'read;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let mut up_to = [local_next, theirs_up_to].into_iter().flatten().min();
        found.sort_unstable_by_key(|m| m.id);
        found.dedup_by_key(|m| m.id);
        if let Some(up_to) = up_to {
            found.retain(|m| m.id <= up_to);
        }
        if found.len() > limit {
            found.truncate(limit);
            up_to = found.last().map(|m| m.id);
        }
        Ok((found, up_to))
    }
}

//! The node's heartbeat row, and `breakwater cluster status`: every node
//! with its heartbeat and counts, and the database's replication state.

use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::Client;

use super::replicator::Shared;
use super::ClusterError;
use crate::spool::SpoolStore;

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub version: String,
    pub started_at: String,
    /// Seconds since the node last wrote its heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Messages in the node's own spool, as of its heartbeat.
    pub spooled: i64,
    /// Acknowledged messages the database does not hold yet, as of its heartbeat.
    pub unreplicated: i64,
    /// The node's messages in the database.
    pub in_database: i64,
    /// Of those, messages whose node lost its spool (kept, not delivered by it).
    pub orphaned: i64,
}

/// A standby as the primary sees it (`pg_stat_replication`).
#[derive(Debug, Serialize)]
pub struct DatabaseMember {
    pub name: String,
    pub address: String,
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
    pub replay_lag_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub schema_version: i32,
    /// False on a primary (a standby answering would say true).
    pub in_recovery: bool,
    pub synchronous_commit: String,
    pub synchronous_standby_names: String,
    pub standbys: Vec<DatabaseMember>,
    pub nodes: Vec<NodeStatus>,
}

pub(super) async fn read(client: &Client) -> Result<ClusterStatus, ClusterError> {
    let settings = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('synchronous_commit'),
                    current_setting('synchronous_standby_names')",
            &[],
        )
        .await?;
    let standbys = client
        .query(
            "SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local'),
                    coalesce(state, ''), coalesce(sync_state, ''),
                    extract(epoch FROM replay_lag)::float8
             FROM pg_stat_replication ORDER BY application_name",
            &[],
        )
        .await?
        .iter()
        .map(|row| DatabaseMember {
            name: row.get(0),
            address: row.get(1),
            state: row.get(2),
            sync_state: row.get(3),
            replay_lag_seconds: row.get(4),
        })
        .collect();
    let nodes = client
        .query(
            "SELECT n.node, n.version, to_char(n.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    extract(epoch FROM now() - n.heartbeat_at)::float8, n.spooled, n.unreplicated,
                    (SELECT count(*) FROM breakwater_messages m WHERE m.node = n.node),
                    (SELECT count(*) FROM breakwater_messages m WHERE m.node = n.node AND m.orphaned)
             FROM breakwater_nodes n ORDER BY n.node",
            &[],
        )
        .await?
        .iter()
        .map(|row| NodeStatus {
            node: row.get(0),
            version: row.get(1),
            started_at: row.get(2),
            heartbeat_age_seconds: row.get(3),
            spooled: row.get(4),
            unreplicated: row.get(5),
            in_database: row.get(6),
            orphaned: row.get(7),
        })
        .collect();
    Ok(ClusterStatus {
        schema_version: super::schema::version(client).await?,
        in_recovery: settings.get(0),
        synchronous_commit: settings.get(1),
        synchronous_standby_names: settings.get(2),
        standbys,
        nodes,
    })
}

/// Every `heartbeat_interval`: this node's row says it is alive, how much
/// it spools and how much of that the database lacks. Its own connection,
/// so a slow replication batch never delays it (and the other way round).
pub(super) async fn heartbeat(
    shared: Arc<Shared>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut client: Option<Client> = None;
    let mut ticker = tokio::time::interval(shared.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = closing.wait_for(|closed| *closed) => return,
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = tokio::time::timeout(
                shared.config.commit_timeout,
                super::database::connect(&shared.settings),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let Some(connected) = &client else { continue };
        let spooled = shared.local.len() as i64;
        let unreplicated = shared.marks.unreplicated_count() as i64;
        let outcome = tokio::time::timeout(
            shared.config.commit_timeout,
            connected.execute(
                "UPDATE breakwater_nodes SET heartbeat_at = now(), spooled = $2, unreplicated = $3, version = $4
                 WHERE node = $1",
                &[
                    &shared.config.node,
                    &spooled,
                    &unreplicated,
                    &env!("CARGO_PKG_VERSION"),
                ],
            ),
        )
        .await;
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cluster: heartbeat not written");
                client = None;
            }
            Err(_) => {
                tracing::debug!("cluster: heartbeat not committed in time");
                client = None;
            }
        }
    }
}

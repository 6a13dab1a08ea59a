//! Cluster mode: several Breakwater nodes on one PostgreSQL database, so
//! that a message acknowledged by a node survives the loss of that node.
//!
//! Why PostgreSQL and not a protocol of our own: synchronous streaming
//! replication (`synchronous_commit = on` with a synchronous standby)
//! already puts every commit on two machines before it returns, and
//! operators know how to run, fail over (Patroni, managed services) and
//! back it up. A node keeps its own segment spool as the first copy and the
//! fallback (`store`); the database gets every message, state change and
//! removal through one ordered writer per node (`replicator`). Without a
//! `[cluster]` section none of this runs: no database, same speed.
//!
//! Layout: `schema` (versioned migrations), `database` (connections),
//! `local_marks` (unreplicated marks and the spool's name, on local disk),
//! `replicator` (batches, up/down, reconciliation), `store` (the
//! `SpoolStore` the stages talk to), `reader` (other nodes' mail for the
//! readers' view), `status` (`breakwater cluster status`).
//! The contract — what is where at the moment of `250` — is in
//! docs/CLUSTER.md.

mod database;
mod local_marks;
mod reader;
mod replicator;
pub mod schema;
mod status;
mod store;

use std::sync::Arc;
use std::time::Duration;

pub use status::{ClusterStatus, DatabaseMember, NodeStatus};
pub use store::ReplicatedStore;

use crate::config::{ClusterConfig, Config};
use crate::spool::{OpenReport, SegmentStore, Spool, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Config(String),
    #[error("database: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Schema(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cluster state on local disk: {0}")]
    Local(#[from] std::io::Error),
    #[error("database: no answer within {0}")]
    Timeout(String),
}

/// A database error as an operator needs it: for an error the server sent,
/// its message, constraint and SQLSTATE (tokio-postgres' own text for
/// those is only "db error").
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {}", db.message(), db.code().code());
            if let Some(constraint) = db.constraint() {
                text.push_str(&format!(", constraint {constraint}"));
            }
            text.push(')');
            text
        }
        None => err.to_string(),
    }
}

/// What the rest of a cluster node asks of the cluster: is the database
/// taking commits, and how much acknowledged mail it still lacks. Holds
/// the replication weakly: a monitor that outlives the spool must not keep
/// the spool (and its lock) open.
#[derive(Clone)]
pub struct ClusterHandle {
    node: String,
    shared: std::sync::Weak<replicator::Shared>,
}

impl ClusterHandle {
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn database_up(&self) -> bool {
        self.shared.upgrade().is_some_and(|s| s.is_up())
    }

    pub fn unreplicated(&self) -> usize {
        self.shared
            .upgrade()
            .map_or(0, |s| s.marks.unreplicated_count())
    }

    /// `None` while every acknowledged message is in the database, else
    /// what is wrong (for the alert monitor).
    pub fn problem(&self) -> Option<String> {
        let shared = self.shared.upgrade()?;
        let unreplicated = shared.marks.unreplicated_count();
        if !shared.is_up() {
            Some(format!(
                "cluster database unavailable ({}); {unreplicated} acknowledged messages are on this node only",
                shared.last_error()
            ))
        } else if shared.refused() > 0 {
            Some(format!(
                "{unreplicated} acknowledged messages are on this node only; the database refuses the rows of {} of them (see the log for each queue ID and SQLSTATE; tried again every 5 minutes)",
                shared.refused()
            ))
        } else if unreplicated > 0 {
            Some(format!(
                "{unreplicated} acknowledged messages are on this node only; uploading"
            ))
        } else {
            None
        }
    }
}

/// Open the local spool and the replication to the database. The database
/// being unreachable is not an error here (the node starts and follows
/// `on_unavailable`); a database with the wrong schema is.
pub async fn open(
    config: &Config,
    cluster: &ClusterConfig,
) -> Result<(Spool, OpenReport, ClusterHandle), ClusterError> {
    let settings = database::settings(cluster)?;
    match tokio::time::timeout(
        cluster.commit_timeout.max(Duration::from_secs(1)),
        database::connect(&settings),
    )
    .await
    {
        Ok(Ok(client)) => schema::check(&client).await?,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "cluster: database unreachable at start; starting anyway (cluster.on_unavailable applies)")
        }
        Err(_) => tracing::error!(
            "cluster: database did not answer at start; starting anyway (cluster.on_unavailable applies)"
        ),
    }
    let (local, report) = SegmentStore::open(&config.spool)?;
    let marks = local_marks::LocalMarks::open(&config.spool.dir)?;
    let reader = reader::DatabaseReader::new(
        cluster.node.clone(),
        settings.clone(),
        cluster.commit_timeout,
    );
    let shared = Arc::new(replicator::Shared::new(
        cluster.clone(),
        settings,
        Arc::new(local),
        marks,
    ));
    let (ops, queue) = tokio::sync::mpsc::unbounded_channel();
    let mut replicator = replicator::Replicator::new(shared.clone(), queue);
    replicator.first_probe().await;
    tracing::info!(
        node = %cluster.node,
        database_up = shared.is_up(),
        unreplicated = shared.marks.unreplicated_count(),
        replicate = ?cluster.replicate,
        on_unavailable = ?cluster.on_unavailable,
        "cluster: node started"
    );
    let (closing, closed) = tokio::sync::watch::channel(false);
    let tasks = vec![
        tokio::spawn(replicator.run()),
        tokio::spawn(status::heartbeat(shared.clone(), closed)),
    ];
    let handle = ClusterHandle {
        node: cluster.node.clone(),
        shared: Arc::downgrade(&shared),
    };
    let store = ReplicatedStore {
        shared,
        ops,
        closing,
        tasks: std::sync::Mutex::new(tasks),
    };
    let spool = Spool::with_other_nodes(Arc::new(store), Arc::new(reader));
    Ok((spool, report, handle))
}

/// `breakwater cluster init`: create or migrate the schema; (from, to).
pub async fn init(cluster: &ClusterConfig) -> Result<(i32, i32), ClusterError> {
    let settings = database::settings(cluster)?;
    let mut client = connect_in_time(&settings, cluster.commit_timeout).await?;
    schema::migrate(&mut client).await
}

/// `breakwater cluster status`, read from the database.
pub async fn status(cluster: &ClusterConfig) -> Result<ClusterStatus, ClusterError> {
    let settings = database::settings(cluster)?;
    let client = connect_in_time(&settings, cluster.commit_timeout).await?;
    schema::check(&client).await?;
    status::read(&client).await
}

async fn connect_in_time(
    settings: &tokio_postgres::Config,
    limit: Duration,
) -> Result<tokio_postgres::Client, ClusterError> {
    let limit = limit.max(Duration::from_secs(3));
    tokio::time::timeout(limit, database::connect(settings))
        .await
        .map_err(|_| ClusterError::Timeout(humantime::format_duration(limit).to_string()))?
}

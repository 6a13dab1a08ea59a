//! The database schema, as numbered migrations applied in order by
//! `breakwater cluster init`. A node refuses a database whose schema is
//! newer than it knows (a newer release ran `init`) or older (run `init`).
//!
//! Why SQL text in the binary and not a migration crate: five statements
//! per version, applied in one transaction under an advisory lock, is all
//! a migration tool would do here.

use tokio_postgres::Client;

use super::ClusterError;

/// Migration N (1-based) is `MIGRATIONS[N - 1]`. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: nodes, messages (envelope, state, body), the recipient index.
    // Envelope and state are `json`, not `jsonb`: jsonb cannot hold U+0000,
    // and a client's EHLO name (kept in the envelope) may contain one; a
    // row the database refuses would stop the node's replication.
    "CREATE TABLE breakwater_nodes (
        node text PRIMARY KEY,
        spool_id text NOT NULL,
        version text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        spooled bigint NOT NULL DEFAULT 0,
        unreplicated bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE breakwater_messages (
        queue_id text PRIMARY KEY,
        node text NOT NULL,
        orphaned boolean NOT NULL DEFAULT false,
        received_at timestamptz NOT NULL,
        sender text NOT NULL,
        size bigint NOT NULL,
        envelope json NOT NULL,
        state json NOT NULL,
        body bytea NOT NULL,
        body_sha256 bytea NOT NULL,
        replicated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX breakwater_messages_node ON breakwater_messages (node, queue_id);
    CREATE TABLE breakwater_recipients (
        address text NOT NULL,
        queue_id text NOT NULL REFERENCES breakwater_messages (queue_id) ON DELETE CASCADE,
        PRIMARY KEY (address, queue_id)
    );
    CREATE INDEX breakwater_recipients_message ON breakwater_recipients (queue_id);",
    // 2: messages in queue-ID order for the readers' pages (a ULID's text
    // sorts as the ID only byte by byte, whatever the database's collation).
    "CREATE INDEX breakwater_messages_order ON breakwater_messages (queue_id COLLATE \"C\");",
];

/// The schema version this build reads and writes.
pub const CURRENT: i32 = MIGRATIONS.len() as i32;

/// Any number; the advisory lock that keeps two `init`s from racing.
const MIGRATION_LOCK: i64 = 0x6272_6b77_7472;

/// The database's schema version; 0 when Breakwater never ran `init` there.
pub async fn version(client: &Client) -> Result<i32, ClusterError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('breakwater_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM breakwater_schema",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Is the database's schema the one this build uses?
pub async fn check(client: &Client) -> Result<(), ClusterError> {
    match version(client).await? {
        v if v == CURRENT => Ok(()),
        v if v > CURRENT => Err(ClusterError::Schema(format!(
            "the database schema is version {v}, newer than this Breakwater knows ({CURRENT}); upgrade Breakwater on this node"
        ))),
        v => Err(ClusterError::Schema(format!(
            "the database schema is version {v}, this Breakwater needs {CURRENT}; run `breakwater cluster init`"
        ))),
    }
}

/// Bring the schema to [`CURRENT`]: (from, to) versions. Refuses a newer
/// schema, changes nothing when it is current.
pub async fn migrate(client: &mut Client) -> Result<(i32, i32), ClusterError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS breakwater_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let from: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM breakwater_schema",
            &[],
        )
        .await?
        .get(0);
    if from > CURRENT {
        return Err(ClusterError::Schema(format!(
            "the database schema is version {from}, newer than this Breakwater knows ({CURRENT}); nothing changed"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = index as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO breakwater_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((from, CURRENT))
}

//! Connections to the cluster's PostgreSQL database.
//!
//! Each task that talks to the database (the replicator, the heartbeat, a
//! CLI command) holds its own connection instead of sharing a pool: the
//! replicator's transactions must not queue behind a slow status query, and
//! a connection that timed out is thrown away whole (its server side may
//! still be waiting for a synchronous standby) rather than handed to the
//! next caller.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::ClusterError;
use crate::config::ClusterConfig;

/// The connection settings of `[cluster] database`, with the password from
/// `password_file` and a connect timeout.
pub fn settings(config: &ClusterConfig) -> Result<tokio_postgres::Config, ClusterError> {
    let mut settings: tokio_postgres::Config = config
        .database
        .parse()
        .map_err(|err| ClusterError::Config(format!("cluster.database: {err}")))?;
    if let Some(file) = &config.password_file {
        let text = std::fs::read_to_string(file).map_err(|err| {
            ClusterError::Config(format!(
                "cluster.password_file: cannot read {}: {err}",
                file.display()
            ))
        })?;
        let password = text.lines().next().unwrap_or("").trim();
        if password.is_empty() {
            return Err(ClusterError::Config(format!(
                "cluster.password_file: {} is empty",
                file.display()
            )));
        }
        settings.password(password);
    }
    if settings.get_connect_timeout().is_none() {
        settings.connect_timeout(config.commit_timeout.max(Duration::from_secs(1)));
    }
    settings.application_name(format!("breakwater {}", config.node));
    Ok(settings)
}

/// One new connection; its I/O runs on a task of its own, which ends when
/// the client is dropped or the server goes away.
pub async fn connect(settings: &tokio_postgres::Config) -> Result<Client, ClusterError> {
    let (client, connection) = settings.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "cluster: database connection ended");
        }
    });
    Ok(client)
}

/// Connect and check that the schema is the one this build uses.
pub async fn connect_checked(settings: &tokio_postgres::Config) -> Result<Client, ClusterError> {
    let client = connect(settings).await?;
    super::schema::check(&client).await?;
    Ok(client)
}

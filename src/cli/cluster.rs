//! `breakwater cluster init|status`: the cluster's database, straight
//! (not through a node's admin API: `init` runs before any node does, and
//! `status` must work while this node is down).

use std::process::ExitCode;

use clap::Subcommand;

use super::table::Columns;
use crate::config::{ClusterConfig, Config};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create the schema, or migrate it to this release's version (refuses
    /// a newer schema). Safe to run again and from several nodes at once.
    Init,
    /// Every node's heartbeat and counts, and the database's replication.
    Status,
}

pub fn run(config: &Config, command: ClusterCommand, json: bool) -> ExitCode {
    let Some(cluster) = &config.cluster else {
        eprintln!("breakwater: no [cluster] section in the configuration: this is a single node");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("breakwater: {err}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        ClusterCommand::Init => runtime.block_on(init(cluster, json)),
        ClusterCommand::Status => runtime.block_on(status(cluster, json)),
    }
}

async fn init(cluster: &ClusterConfig, json: bool) -> ExitCode {
    match crate::cluster::init(cluster).await {
        Ok((from, to)) => {
            if json {
                println!("{}", serde_json::json!({ "from": from, "to": to }));
            } else if from == to {
                println!("cluster schema: version {to}, already current");
            } else {
                println!("cluster schema: migrated from version {from} to {to}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("breakwater: cluster init: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn status(cluster: &ClusterConfig, json: bool) -> ExitCode {
    let status = match crate::cluster::status(cluster).await {
        Ok(status) => status,
        Err(err) => {
            eprintln!("breakwater: cluster status: {err}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string(&status).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!(
        "database: schema {}, {}, synchronous_commit = {}, synchronous_standby_names = '{}'",
        status.schema_version,
        if status.in_recovery {
            "a standby (read-only)"
        } else {
            "primary"
        },
        status.synchronous_commit,
        status.synchronous_standby_names
    );
    let mut standbys = Columns::new(&["STANDBY", "ADDRESS", "STATE", "SYNC", "REPLAY LAG"], &[]);
    for standby in &status.standbys {
        standbys.row(vec![
            standby.name.clone(),
            standby.address.clone(),
            standby.state.clone(),
            standby.sync_state.clone(),
            standby
                .replay_lag_seconds
                .map_or("-".into(), |lag| format!("{lag:.3}s")),
        ]);
    }
    if status.standbys.is_empty() {
        println!("standbys: none connected: commits are on one database machine only");
    } else {
        standbys.print();
    }
    let mut nodes = Columns::new(
        &[
            "NODE",
            "HEARTBEAT",
            "SPOOLED",
            "UNREPLICATED",
            "IN DATABASE",
            "ORPHANED",
            "VERSION",
        ],
        &[2, 3, 4, 5],
    );
    for node in &status.nodes {
        nodes.row(vec![
            node.node.clone(),
            format!("{:.0}s ago", node.heartbeat_age_seconds),
            node.spooled.to_string(),
            node.unreplicated.to_string(),
            node.in_database.to_string(),
            node.orphaned.to_string(),
            node.version.clone(),
        ]);
    }
    nodes.print();
    ExitCode::SUCCESS
}

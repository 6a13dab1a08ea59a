//! `[cluster]`: several Breakwater nodes sharing one PostgreSQL database.
//! Absent = a single node (segments + sled, no database), as before.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// When the database commit happens relative to the `250`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replicate {
    /// `250` only once the message is committed to the database (and so,
    /// with a synchronous standby, on two database machines).
    #[default]
    BeforeAck,
    /// `250` after the local fsync; the upload follows at once.
    AfterAck,
}

/// What a before-ack acceptance does when the database does not commit
/// within `commit_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnavailable {
    /// `250` on the local fsync; the message is marked unreplicated on
    /// disk, an alert is raised, and it is uploaded when the database is back.
    #[default]
    AcceptLocal,
    /// `451 4.3.0`: the sender keeps the message and retries (another MX).
    Tempfail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: unique in the cluster, stable across restarts.
    pub node: String,
    /// A libpq-style connection string or URL; several hosts with
    /// `target_session_attrs=read-write` reach whichever is the primary.
    pub database: String,
    /// The database password, alone in a file (0600), never in the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub replicate: Replicate,
    #[serde(default = "default_commit_timeout", with = "humantime_serde")]
    pub commit_timeout: Duration,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// How often this node writes its heartbeat row.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

fn default_commit_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}

impl ClusterConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        let node_ok = !self.node.is_empty()
            && self.node.len() <= 63
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !node_ok {
            return Err(invalid(
                "cluster.node",
                format!(
                    "{:?} is not a node name (1-63 letters, digits, '-', '_' or '.')",
                    self.node
                ),
            ));
        }
        if let Err(err) = self.database.parse::<tokio_postgres::Config>() {
            return Err(invalid(
                "cluster.database",
                format!("not a PostgreSQL connection string: {err}"),
            ));
        }
        super::nonzero_durations(
            invalid,
            &[
                ("cluster.commit_timeout", self.commit_timeout),
                ("cluster.heartbeat_interval", self.heartbeat_interval),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(cluster: &str) -> Result<Config, String> {
        let text = format!("hostname = \"mx2.example.com\"\n[cluster]\n{cluster}\n[[domain]]\nname = \"example.com\"\n");
        Config::parse(&text, Path::new("bw.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn cluster_keys_are_checked_and_named() {
        let ok = parse("node = \"mx2-tokyo-a\"\ndatabase = \"postgresql://breakwater@db1,db2/breakwater?target_session_attrs=read-write\"").unwrap();
        let cluster = ok.cluster.unwrap();
        assert_eq!(cluster.commit_timeout, std::time::Duration::from_secs(3));
        assert_eq!(cluster.replicate, super::Replicate::BeforeAck);
        assert_eq!(cluster.on_unavailable, super::OnUnavailable::AcceptLocal);
        let err = parse("node = \"mx 2\"\ndatabase = \"host=db1\"").unwrap_err();
        assert!(err.starts_with("bw.toml: key `cluster.node`"), "{err}");
        let err = parse("node = \"a\"\ndatabase = \"postgresql://db1:notaport/x\"").unwrap_err();
        assert!(err.contains("key `cluster.database`"), "{err}");
        let err =
            parse("node = \"a\"\ndatabase = \"host=db1\"\ncommit_timeout = \"0s\"").unwrap_err();
        assert!(err.contains("key `cluster.commit_timeout`"), "{err}");
        let err =
            parse("node = \"a\"\ndatabase = \"host=db1\"\non_unavailable = \"maybe\"").unwrap_err();
        assert!(err.contains("cluster.on_unavailable"), "{err}");
        let err = parse("database = \"host=db1\"").unwrap_err();
        assert!(err.contains("cluster"), "{err}");
    }
}

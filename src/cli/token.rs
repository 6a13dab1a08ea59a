//! `breakwater token`: create, list and revoke admin API tokens. Edits the
//! tokens file directly (under its lock); a running server sees the change
//! at its next request and raises it as a security event (audit + alert),
//! and the change itself goes into the audit log under the local user's
//! name (`api_client::record_local_change`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::api_tokens::{self, Role};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Refuse the token after this long (e.g. "30d", "12h"); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Also save it to [admin] cli_token_file for the local CLI.
        #[arg(long)]
        save: bool,
    },
    /// Every token: role, status, created, expiry, last use and from where.
    List,
    /// Refuse a token from now on (401); it stays listed as revoked.
    Revoke { name: String },
}

pub fn run(config: &Config, command: TokenCommand, json: bool) -> ExitCode {
    let file = &config.admin.tokens_file;
    let result = match command {
        TokenCommand::Create {
            name,
            role,
            expires,
            save,
        } => create(config, &name, role, expires, save, json),
        TokenCommand::List => list(config, json),
        TokenCommand::Revoke { name } => api_tokens::revoke(file, &name).map(|()| {
            if json {
                println!("{}", serde_json::json!({ "name": name, "revoked": true }));
            }
            eprintln!("token {name:?} revoked: every use now answers 401");
            super::api_client::record_local_change(config, "token:revoke", &name, "revoked");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("breakwater: {err}");
            ExitCode::FAILURE
        }
    }
}

fn create(
    config: &Config,
    name: &str,
    role: Role,
    expires: Option<Duration>,
    save: bool,
    json: bool,
) -> std::io::Result<()> {
    let token = api_tokens::create(&config.admin.tokens_file, name, role, expires)?;
    if save {
        api_tokens::write_private(&config.admin.cli_token_file, token.as_bytes())
            .map_err(|e| std::io::Error::other(format!("cannot save token: {e}")))?;
        eprintln!("saved to {}", config.admin.cli_token_file.display());
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "name": name, "role": role, "token": token })
        );
    } else {
        println!("{token}");
    }
    let until = expires.map_or(String::new(), |d| {
        format!(", expires in {}", humantime::format_duration(d))
    });
    eprintln!("token {name:?} ({role:?}{until}) created; it is shown only this once");
    super::api_client::record_local_change(
        config,
        "token:create",
        name,
        &format!("{role:?} token{until}").to_lowercase(),
    );
    Ok(())
}

fn list(config: &Config, json: bool) -> std::io::Result<()> {
    let tokens = api_tokens::list(&config.admin.tokens_file)?;
    let usage = api_tokens::load_usage(&config.admin.tokens_file);
    let now = crate::envelope::now_ms();
    if json {
        let rows: Vec<serde_json::Value> = tokens
            .iter()
            .map(|t| {
                let used = usage.get(&t.sha256);
                serde_json::json!({
                    "name": t.name,
                    "role": t.role,
                    "status": t.status(now),
                    "created_ms": t.created_ms,
                    "expires_ms": t.expires_ms,
                    "revoked_ms": t.revoked_ms,
                    "last_used_ms": used.map(|u| u.last_used_ms),
                    "last_address": used.map(|u| u.last_address.clone()),
                    "addresses": used.map(|u| u.addresses.keys().cloned().collect::<Vec<_>>()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let mut table = super::table::Columns::new(
        &[
            "NAME",
            "ROLE",
            "STATUS",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "FROM",
        ],
        &[],
    );
    for t in &tokens {
        let used = usage.get(&t.sha256);
        table.row(vec![
            t.name.clone(),
            format!("{:?}", t.role).to_lowercase(),
            t.status(now).to_string(),
            timestamp(t.created_ms),
            t.expires_ms.map_or("never".into(), timestamp),
            used.map_or("never".into(), |u| timestamp(u.last_used_ms)),
            used.map_or("-".into(), |u| u.last_address.clone()),
        ]);
    }
    table.print();
    Ok(())
}

/// UTC, to the minute.
fn timestamp(ms: u64) -> String {
    let format =
        time::format_description::parse_borrowed::<2>("[year]-[month]-[day] [hour]:[minute]Z");
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .zip(format.ok())
        .and_then(|(t, format)| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

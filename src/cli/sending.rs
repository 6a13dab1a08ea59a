//! `breakwater sending status|stop|resume`: the admins' switch for the mail
//! users write in the web reader (`[send]`), through the admin API.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::api_client::ApiClient;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum SendingCommand {
    /// The mode and whether sending is stopped.
    Status,
    /// Stop every user's sending at once (kept across restarts). Mail
    /// already queued is still delivered: hold it with `queue hold`.
    Stop,
    /// Let users send again (as `[send] mode` allows).
    Resume,
}

pub fn run(config: &Config, command: SendingCommand, json: bool) -> ExitCode {
    let client = match ApiClient::from_config(config) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("breakwater: {err}");
            return ExitCode::FAILURE;
        }
    };
    let answer = match command {
        SendingCommand::Status => client.get("/api/v1/sending"),
        SendingCommand::Stop => client.post("/api/v1/sending", &json!({ "stopped": true })),
        SendingCommand::Resume => client.post("/api/v1/sending", &json!({ "stopped": false })),
    };
    match answer {
        Ok(v) if json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            let state = if v["stopped"] == true {
                "stopped by an administrator"
            } else {
                "not stopped"
            };
            println!(
                "sending: mode {}, {state}",
                v["mode"].as_str().unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("breakwater: {err}");
            ExitCode::FAILURE
        }
    }
}

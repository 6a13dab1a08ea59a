//! `breakwater drill …`: rehearse an outage through the admin API of the
//! running server (the drill itself runs inside `serve`).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::api_client::ApiClient;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Hold the upstream (everything spools) and start the clock.
    Start {
        /// Default: the first domain's upstream.
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Finish by itself after this long, e.g. "30m".
        #[arg(long)]
        duration: Option<String>,
        /// Send a tagged probe message to this local address through our own listener.
        #[arg(long)]
        probe_to: Option<String>,
        /// Rehearse sending: write a message as a user would, from this
        /// address of ours (its domain needs a DKIM key; `[send] mode`
        /// must not be off) ...
        #[arg(long, requires = "send_probe_to")]
        send_probe_from: Option<String>,
        /// ... to this outside address you can read.
        #[arg(long, requires = "send_probe_from")]
        send_probe_to: Option<String>,
    },
    /// Elapsed time, mail spooled since the start, queue, probe visibility.
    Status,
    /// Release the upstream and measure the drain; prints the report.
    Finish,
    /// Finished drills.
    List,
    /// One drill report (Markdown).
    Show { id: String },
}

fn duration(seconds: &Value) -> String {
    seconds
        .as_u64()
        .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn run(config: &Config, command: DrillCommand, json: bool) -> ExitCode {
    let client = match ApiClient::from_config(config) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("breakwater: {err}");
            return ExitCode::FAILURE;
        }
    };
    let show: fn(&Value) = match &command {
        DrillCommand::Start { .. } => started,
        DrillCommand::Status => status,
        DrillCommand::Finish => finished,
        DrillCommand::List => list,
        DrillCommand::Show { .. } => |v| print!("{}", v["markdown"].as_str().unwrap_or("")),
    };
    finish(answer(&client, command).map(|v| {
        if json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
        } else {
            show(&v)
        }
    }))
}

fn started(d: &Value) {
    println!(
        "drill {} started: upstream {} is held; mail spools until `breakwater drill finish`",
        d["id"].as_str().unwrap_or("?"),
        d["upstream"].as_str().unwrap_or("?")
    );
    if let Some(probe) = d["probe_id"].as_str() {
        println!(
            "probe message {probe} accepted for {}",
            d["probe_to"].as_str().unwrap_or("?")
        );
    }
    for problem in d["problems"].as_array().into_iter().flatten() {
        println!("problem: {}", problem.as_str().unwrap_or(""));
    }
}

fn status(s: &Value) {
    let d = &s["drill"];
    println!("drill:               {}", d["id"].as_str().unwrap_or("?"));
    println!(
        "upstream (held):     {}",
        d["upstream"].as_str().unwrap_or("?")
    );
    println!("elapsed:             {}", duration(&s["elapsed_seconds"]));
    println!("spooled since start: {}", s["spooled_since_start"]);
    println!(
        "queue depth:         {} (max {})",
        s["queue_depth"], d["max_queue_depth"]
    );
    println!(
        "oldest message:      {}",
        duration(&s["oldest_message_age_seconds"])
    );
    if d["probe_id"].is_string() {
        let yes = |v: &Value| {
            if v.as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            }
        };
        println!("probe in spool:      {}", yes(&s["probe_in_spool"]));
        println!(
            "probe in mailbox:    {}",
            yes(&s["probe_visible_in_mailbox"])
        );
    }
}

fn finished(d: &Value) {
    let id = d["id"].as_str().unwrap_or("?");
    println!("drill {id} finished: upstream {} released; the report is completed when its mail has drained (`breakwater drill show {id}`)",
        d["upstream"].as_str().unwrap_or("?"));
}

fn list(v: &Value) {
    if let Some(id) = v["current"]["id"].as_str() {
        println!("running: {id}");
    }
    let mut table = super::table::Columns::new(
        &["DRILL", "UPSTREAM", "MESSAGES", "DRAIN", "PROBLEMS"],
        &[2, 3, 4],
    );
    for d in v["reports"].as_array().into_iter().flatten() {
        let drain = &d["drain"];
        table.row(vec![
            d["id"].as_str().unwrap_or("?").to_string(),
            d["upstream"].as_str().unwrap_or("?").to_string(),
            drain["messages"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
            drain["drain_ms"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            d["problems"].as_array().map_or(0, |p| p.len()).to_string(),
        ]);
    }
    table.print();
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("breakwater: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API's answer to a drill command, for `--json`.
fn answer(client: &ApiClient, command: DrillCommand) -> Result<Value, String> {
    match command {
        DrillCommand::Start {
            upstream,
            reason,
            duration,
            probe_to,
            send_probe_from,
            send_probe_to,
        } => client.post(
            "/api/v1/drills/start",
            &json!({
                "upstream": upstream,
                "reason": reason,
                "duration": duration,
                "probe_to": probe_to,
                "send_probe_from": send_probe_from,
                "send_probe_to": send_probe_to,
            }),
        ),
        DrillCommand::Status => client.get("/api/v1/drills/current"),
        DrillCommand::Finish => client.post("/api/v1/drills/finish", &json!({})),
        DrillCommand::List => client.get("/api/v1/drills"),
        DrillCommand::Show { id } => client.get(&format!("/api/v1/drills/{id}")),
    }
}

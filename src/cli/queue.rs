//! `breakwater queue …` and `breakwater upstream …`: Postfix's mailq /
//! postqueue / postsuper habits, over the admin API.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::api_client::ApiClient;
use crate::config::Config;

#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// queued | deferred | held | failed
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub sender: Option<String>,
    #[arg(long)]
    pub recipient: Option<String>,
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub upstream: Option<String>,
    /// e.g. 30m
    #[arg(long)]
    pub older_than: Option<String>,
    #[arg(long)]
    pub newer_than: Option<String>,
    /// Text in the Subject header.
    #[arg(long)]
    pub subject: Option<String>,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, &String)> {
        [
            ("status", &self.status),
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("domain", &self.domain),
            ("upstream", &self.upstream),
            ("older_than", &self.older_than),
            ("newer_than", &self.newer_than),
            ("subject", &self.subject),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect()
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List spooled messages (like mailq); --json for JSON lines.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one message.
    Show {
        id: String,
    },
    /// Print the raw message (audited).
    Cat {
        id: String,
    },
    /// Hold messages (no delivery until released).
    Hold(Targets),
    Release(Targets),
    /// Make messages due now.
    Retry(Targets),
    Delete(Targets),
    /// Return messages to their senders with a DSN and remove them.
    Bounce(Targets),
    /// Send messages via another route ("host:port[,host:port]").
    Requeue {
        #[arg(long)]
        route: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Counts by recipient domain and age (like qshape).
    Shape,
    /// Deliver deferred mail now (one upstream, or all).
    Flush {
        #[arg(long)]
        upstream: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Targets {
    /// Queue IDs; "-" reads them from standard input.
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Do not ask before a bulk (filter) action.
    #[arg(long)]
    pub yes: bool,
    /// Only count what would be affected.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Upstream state, since when, last error, queue depth.
    List,
    /// Stop delivering to an upstream (everything spools); survives restarts.
    Hold { name: String },
    /// Resume delivery and flush (also after the bounce guard held it).
    Release { name: String },
    /// Postfix's soft_bounce: while on, permanent refusals are retried, not
    /// bounced. Without an argument: show it. Lasts until restart.
    SoftBounce {
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
}

fn fail(message: String) -> ExitCode {
    eprintln!("breakwater: {message}");
    ExitCode::FAILURE
}

pub fn run_queue(config: &Config, command: QueueCommand) -> ExitCode {
    let client = match ApiClient::from_config(config) {
        Ok(client) => client,
        Err(err) => return fail(err),
    };
    let result = match command {
        QueueCommand::List { filter, json } => list(&client, &filter, json),
        QueueCommand::Show { id } => client
            .get(&format!("/api/v1/queue/{id}"))
            .map(|v| println!("{}", pretty(&v))),
        QueueCommand::Cat { id } => {
            client
                .get_raw(&format!("/api/v1/queue/{id}/raw"))
                .map(|body| {
                    let _ = std::io::stdout().write_all(&body);
                })
        }
        QueueCommand::Hold(t) => action(&client, "hold", t, None),
        QueueCommand::Release(t) => action(&client, "release", t, None),
        QueueCommand::Retry(t) => action(&client, "retry", t, None),
        QueueCommand::Delete(t) => action(&client, "delete", t, None),
        QueueCommand::Bounce(t) => action(&client, "bounce", t, None),
        QueueCommand::Requeue { route, targets } => {
            action(&client, "requeue", targets, Some(route))
        }
        QueueCommand::Shape => client.get("/api/v1/queue/shape").map(|v| print_shape(&v)),
        QueueCommand::Flush { upstream } => flush(&client, upstream),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

pub fn run_upstream(config: &Config, command: UpstreamCommand) -> ExitCode {
    let client = match ApiClient::from_config(config) {
        Ok(client) => client,
        Err(err) => return fail(err),
    };
    let result = match command {
        UpstreamCommand::List => client.get("/api/v1/upstreams").map(|v| {
            println!(
                "{:<40} {:<6} {:>6} {:>7}  LAST ERROR",
                "UPSTREAM", "STATE", "QUEUE", "PARKED"
            );
            for u in v["upstreams"].as_array().into_iter().flatten() {
                // Numbers as numbers: a JSON value ignores the width.
                let number = |key: &str| u[key].as_u64().unwrap_or(0);
                let detail = match u["bounce_guard"]["reply"].as_str() {
                    Some(reply) => format!("held by the bounce guard: {reply}"),
                    None => u["last_error"].as_str().unwrap_or("-").to_string(),
                };
                println!(
                    "{:<40} {:<6} {:>6} {:>7}  {}",
                    u["name"].as_str().unwrap_or(""),
                    u["state"].as_str().unwrap_or(""),
                    number("queue_depth"),
                    number("parked_messages"),
                    detail
                );
            }
        }),
        UpstreamCommand::SoftBounce { state: None } => client.get("/api/v1/soft-bounce").map(|v| {
            println!(
                "soft_bounce: {}",
                if v["soft_bounce"] == json!(true) {
                    "on"
                } else {
                    "off"
                }
            )
        }),
        UpstreamCommand::SoftBounce { state: Some(state) } => client
            .post("/api/v1/soft-bounce", &json!({ "on": state == "on" }))
            .map(|_| println!("soft_bounce: {state}")),
        UpstreamCommand::Hold { name } => client
            .post(
                &format!("/api/v1/upstreams/{}/hold", encode(&name)),
                &json!({}),
            )
            .map(|_| println!("{name}: held")),
        UpstreamCommand::Release { name } => client
            .post(
                &format!("/api/v1/upstreams/{}/release", encode(&name)),
                &json!({}),
            )
            .map(|_| println!("{name}: released")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

/// Percent-encode a path segment or query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn list(client: &ApiClient, filter: &FilterArgs, json_lines: bool) -> Result<(), String> {
    let mut query: Vec<String> = filter
        .pairs()
        .into_iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    query.push("limit=1000".into());
    let mut after: Option<String> = None;
    let mut count = 0;
    let mut bytes = 0u64;
    if !json_lines {
        println!(
            "{:<26} {:<8} {:>9} {:>8}  SENDER / RECIPIENTS",
            "QUEUE ID", "STATUS", "SIZE", "AGE"
        );
    }
    loop {
        let mut q = query.clone();
        if let Some(after) = &after {
            q.push(format!("after={after}"));
        }
        let page = client.get(&format!("/api/v1/queue?{}", q.join("&")))?;
        for m in page["messages"].as_array().into_iter().flatten() {
            count += 1;
            bytes += m["size"].as_u64().unwrap_or(0);
            if json_lines {
                println!("{m}");
                continue;
            }
            let sender = m["sender"].as_str().unwrap_or("");
            println!(
                "{:<26} {:<8} {:>9} {:>8}  <{}>",
                m["id"].as_str().unwrap_or(""),
                m["status"].as_str().unwrap_or(""),
                m["size"],
                humantime::format_duration(std::time::Duration::from_secs(
                    m["age_seconds"].as_u64().unwrap_or(0)
                ))
                .to_string(),
                sender
            );
            for r in m["recipients"].as_array().into_iter().flatten() {
                let mut line = format!(
                    "{:>56}  {} [{}",
                    "",
                    r["address"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or("")
                );
                let attempts = r["attempts"].as_u64().unwrap_or(0);
                if attempts > 0 {
                    line.push_str(&format!(", {attempts} attempts"));
                }
                line.push(']');
                if let Some(reply) = r["last_reply"].as_str() {
                    line.push_str(&format!(" ({reply})"));
                }
                println!("{line}");
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    if !json_lines {
        println!(
            "-- {count} messages, {} KiB in the spool (listed)",
            bytes / 1024
        );
    }
    Ok(())
}

fn action(
    client: &ApiClient,
    name: &str,
    targets: Targets,
    route: Option<String>,
) -> Result<(), String> {
    let mut ids = targets.ids.clone();
    if ids.iter().any(|id| id == "-") {
        ids.retain(|id| id != "-");
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| format!("reading IDs from stdin: {e}"))?;
            ids.extend(line.split_whitespace().map(str::to_string));
        }
    }
    let filter = targets.filter.to_json();
    let has_filter = filter.as_object().is_some_and(|o| !o.is_empty());
    let mut request = json!({ "action": name });
    match (has_filter, ids.is_empty()) {
        (true, false) => return Err("give queue IDs or filter options, not both".into()),
        (false, true) => {
            return Err("give queue IDs (or - to read them from stdin) or filter options".into())
        }
        (false, false) => request["ids"] = json!(ids),
        (true, true) => request["filter"] = filter,
    }
    if let Some(route) = route {
        request["route"] = json!(route);
    }
    if has_filter || targets.dry_run {
        let mut dry = request.clone();
        dry["dry_run"] = json!(true);
        let count = client.post("/api/v1/queue/actions", &dry)?["matched"]
            .as_u64()
            .unwrap_or(0);
        if targets.dry_run {
            println!("{name}: would affect {count} messages");
            return Ok(());
        }
        if !targets.yes {
            eprint!("{name} {count} messages? [y/N] ");
            let mut answer = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut answer)
                .map_err(|e| e.to_string())?;
            if !answer.trim().eq_ignore_ascii_case("y") {
                return Err("cancelled".into());
            }
        }
    }
    let result = client.post("/api/v1/queue/actions", &request)?;
    println!(
        "{name}: {} matched, {} done",
        result["matched"], result["done"]
    );
    for failure in result["failed"].as_array().into_iter().flatten() {
        eprintln!(
            "  {}: {}",
            failure["id"].as_str().unwrap_or(""),
            failure["error"].as_str().unwrap_or("")
        );
    }
    if result["failed"].as_array().is_some_and(|f| !f.is_empty()) {
        return Err("some messages were not changed".into());
    }
    Ok(())
}

fn print_shape(value: &Value) {
    let buckets: Vec<&str> = value["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str())
        .collect();
    print!("{:<32} {:>6}", "DOMAIN", "TOTAL");
    for b in &buckets {
        print!(" {b:>8}");
    }
    println!();
    let row = |name: &str, counts: &Value| {
        let counts: Vec<u64> = counts
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_u64().unwrap_or(0))
            .collect();
        print!("{name:<32} {:>6}", counts.iter().sum::<u64>());
        for c in counts {
            print!(" {c:>8}");
        }
        println!();
    };
    row("TOTAL", &value["total"]);
    for (domain, counts) in value["domains"].as_object().into_iter().flatten() {
        row(domain, counts);
    }
}

fn flush(client: &ApiClient, upstream: Option<String>) -> Result<(), String> {
    let names: Vec<String> = match upstream {
        Some(name) => vec![name],
        None => client.get("/api/v1/upstreams")?["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str().map(str::to_string))
            .collect(),
    };
    for name in names {
        let result = client.post(
            &format!("/api/v1/upstreams/{}/flush", encode(&name)),
            &json!({}),
        )?;
        println!("{name}: {} messages made due now", result["flushed"]);
    }
    Ok(())
}

//! `breakwater queue …` and `breakwater upstream …`: Postfix's mailq /
//! postqueue / postsuper habits, over the admin API.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::api_client::ApiClient;
use super::table::Columns;
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

pub fn run_queue(config: &Config, command: QueueCommand, json: bool) -> ExitCode {
    let client = match ApiClient::from_config(config) {
        Ok(client) => client,
        Err(err) => return fail(err),
    };
    let result = match command {
        QueueCommand::List { filter } => list(&client, &filter, json),
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
        QueueCommand::Hold(t) => action(&client, "hold", t, None, json),
        QueueCommand::Release(t) => action(&client, "release", t, None, json),
        QueueCommand::Retry(t) => action(&client, "retry", t, None, json),
        QueueCommand::Delete(t) => action(&client, "delete", t, None, json),
        QueueCommand::Bounce(t) => action(&client, "bounce", t, None, json),
        QueueCommand::Requeue { route, targets } => {
            action(&client, "requeue", targets, Some(route), json)
        }
        QueueCommand::Shape => client.get("/api/v1/queue/shape").map(|v| {
            if json {
                println!("{}", pretty(&v))
            } else {
                print_shape(&v)
            }
        }),
        QueueCommand::Flush { upstream } => flush(&client, upstream, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

pub fn run_upstream(config: &Config, command: UpstreamCommand, json: bool) -> ExitCode {
    let client = match ApiClient::from_config(config) {
        Ok(client) => client,
        Err(err) => return fail(err),
    };
    let result = match command {
        UpstreamCommand::List => client
            .get("/api/v1/upstreams")
            .map(|v| print_upstreams(&v, json)),
        UpstreamCommand::SoftBounce { state: None } => client.get("/api/v1/soft-bounce").map(|v| {
            say(
                json,
                &v,
                &format!("soft_bounce: {}", on_off(&v["soft_bounce"])),
            )
        }),
        UpstreamCommand::SoftBounce { state: Some(state) } => client
            .post("/api/v1/soft-bounce", &json!({ "on": state == "on" }))
            .map(|v| say(json, &v, &format!("soft_bounce: {state}"))),
        UpstreamCommand::Hold { name } => client
            .post(
                &format!("/api/v1/upstreams/{}/hold", encode(&name)),
                &json!({}),
            )
            .map(|v| say(json, &v, &format!("{name}: held"))),
        UpstreamCommand::Release { name } => client
            .post(
                &format!("/api/v1/upstreams/{}/release", encode(&name)),
                &json!({}),
            )
            .map(|v| say(json, &v, &format!("{name}: released"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

/// The API's answer with `--json`, else the sentence.
fn say(json: bool, answer: &Value, sentence: &str) {
    if json {
        println!("{}", pretty(answer));
    } else {
        println!("{sentence}");
    }
}

fn on_off(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "on"
    } else {
        "off"
    }
}

fn print_upstreams(answer: &Value, json: bool) {
    if json {
        println!("{}", pretty(answer));
        return;
    }
    let mut table = Columns::new(
        &["UPSTREAM", "STATE", "QUEUE", "PARKED", "LAST ERROR"],
        &[2, 3],
    );
    for u in answer["upstreams"].as_array().into_iter().flatten() {
        let number = |key: &str| u[key].as_u64().unwrap_or(0).to_string();
        let detail = match u["bounce_guard"]["reply"].as_str() {
            Some(reply) => format!("held by the bounce guard: {reply}"),
            None => u["last_error"].as_str().unwrap_or("-").to_string(),
        };
        table.row(vec![
            u["name"].as_str().unwrap_or("").to_string(),
            u["state"].as_str().unwrap_or("").to_string(),
            number("queue_depth"),
            number("parked_messages"),
            detail,
        ]);
    }
    table.print();
}

/// Age in at most two units ("45s", "12m", "3h12m", "2d4h"): short enough
/// for a fixed-width column, like mailq's arrival time.
fn compact_age(seconds: u64) -> String {
    let (d, h, m) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
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
        // Fixed widths, so pages of a long listing line up: queue IDs are
        // 26 characters, statuses at most 9, ages at most 6 (`compact_age`).
        println!(
            "{:<26} {:<9} {:>10} {:>6}  SENDER / RECIPIENTS",
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
                "{:<26} {:<9} {:>10} {:>6}  <{}>",
                m["id"].as_str().unwrap_or(""),
                m["status"].as_str().unwrap_or(""),
                m["size"].as_u64().unwrap_or(0),
                compact_age(m["age_seconds"].as_u64().unwrap_or(0)),
                sender
            );
            for r in m["recipients"].as_array().into_iter().flatten() {
                let mut line = format!(
                    "{:>55}  {} [{}",
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
    json: bool,
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
            let answer = json!({ "action": name, "dry_run": true, "matched": count });
            say(
                json,
                &answer,
                &format!("{name}: would affect {count} messages"),
            );
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
    let sentence = format!(
        "{name}: {} matched, {} done",
        result["matched"], result["done"]
    );
    say(json, &result, &sentence);
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
    let mut headers = vec!["DOMAIN", "TOTAL"];
    headers.extend(&buckets);
    let numeric: Vec<usize> = (1..headers.len()).collect();
    let mut table = Columns::new(&headers, &numeric);
    let mut row = |name: &str, counts: &Value| {
        let counts: Vec<u64> = counts
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_u64().unwrap_or(0))
            .collect();
        let mut cells = vec![name.to_string(), counts.iter().sum::<u64>().to_string()];
        cells.extend(counts.iter().map(u64::to_string));
        table.row(cells);
    };
    row("TOTAL", &value["total"]);
    for (domain, counts) in value["domains"].as_object().into_iter().flatten() {
        row(domain, counts);
    }
    table.print();
}

fn flush(client: &ApiClient, upstream: Option<String>, json: bool) -> Result<(), String> {
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
        let answer = json!({ "upstream": name, "flushed": result["flushed"] });
        let sentence = format!("{name}: {} messages made due now", result["flushed"]);
        say(json, &answer, &sentence);
    }
    Ok(())
}

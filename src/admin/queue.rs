//! Queue, upstream and audit endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AdminState, ApiError, Caller};
use crate::control::apply_action;
use crate::control::filter::{self, status_of, Filter, HEADER_SCAN};
use crate::envelope::{now_ms, QueueId};
use crate::spool::Destination;
use crate::spool::{SpooledMessage, View};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// qshape's buckets, in minutes.
const AGE_BUCKETS: [(u64, &str); 7] = [
    (5, "0-5m"),
    (10, "5-10m"),
    (20, "10-20m"),
    (40, "20-40m"),
    (80, "40-80m"),
    (160, "80-160m"),
    (u64::MAX, "160m+"),
];

fn parse_id(id: &str) -> Result<QueueId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a queue ID (26-character ULID)")))
}

/// The compact form used in lists.
fn summary(message: &SpooledMessage, state: &AdminState) -> Value {
    let env = &message.envelope;
    json!({
        "id": message.id.to_string(),
        "status": status_of(message),
        "arrived_ms": env.received_at_ms,
        "age_seconds": now_ms().saturating_sub(env.received_at_ms) / 1000,
        "size": env.size,
        "sender": env.sender,
        "recipients": env.recipients.iter().zip(&message.state.recipients).map(|(r, s)| json!({
            "address": r.address,
            "status": s.status,
            "attempts": s.attempts,
            "last_reply": s.last_reply,
        })).collect::<Vec<_>>(),
        "next_attempt_ms": message.state.next_attempt_ms,
        "upstreams": state.delivery.as_ref().map(|d| d.upstreams_of(message)).unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(flatten)]
    filter: Filter,
    after: Option<String>,
    limit: Option<usize>,
}

fn compile(filter: Filter) -> Result<filter::Compiled, ApiError> {
    filter.compile().map_err(ApiError::bad_request)
}

/// Messages matching `filter`, a page at a time, from `mail` (every node's
/// for a list, this node's for an action: see `spool::View`).
async fn select(
    state: &AdminState,
    mail: &View,
    filter: &filter::Compiled,
    after: Option<QueueId>,
    limit: usize,
) -> Result<(Vec<SpooledMessage>, Option<QueueId>), ApiError> {
    Ok(filter::select(mail, filter, state.delivery.as_ref(), after, limit).await?)
}

pub async fn list(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let after = query.after.as_deref().map(parse_id).transpose()?;
    let filter = compile(query.filter)?;
    let (page, next) = select(&state, &state.spool.everywhere(), &filter, after, limit).await?;
    Ok(Json(json!({
        "messages": page.iter().map(|m| summary(m, &state)).collect::<Vec<_>>(),
        "next": next.map(|id| id.to_string()),
    })))
}

pub async fn show(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let mail = state.spool.everywhere();
    let message = mail
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("message {id} is not in the spool")))?;
    let body = mail.read_head(id, HEADER_SCAN).await?;
    let mut out = summary(&message, &state);
    out["envelope"] = serde_json::to_value(&message.envelope).map_err(ApiError::internal)?;
    out["state"] = serde_json::to_value(&message.state).map_err(ApiError::internal)?;
    out["headers"] =
        Value::String(String::from_utf8_lossy(filter::header_section(&body)).into_owned());
    out["tls"] = serde_json::to_value(&message.envelope.client.tls).map_err(ApiError::internal)?;
    Ok(Json(out))
}

pub async fn raw(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let mail = state.spool.everywhere();
    if mail.get(id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "message {id} is not in the spool"
        )));
    }
    let body = mail.read_body(id).await?;
    // Reading someone's mail is an audited act.
    state
        .audit
        .record(&caller.name, &caller.ip, "download", &id.to_string(), "ok")
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], body).into_response())
}

pub async fn shape(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    // From the spool's census (kept as messages change): ages to the
    // minute, without listing the spool (7 s at a million messages).
    let census = state.spool.census();
    let now_minute = now_ms() / 60_000;
    let bucket = |minute: u64| {
        let age_min = now_minute.saturating_sub(minute);
        AGE_BUCKETS
            .iter()
            .position(|(limit, _)| age_min < *limit)
            .unwrap_or(6)
    };
    let mut rows: BTreeMap<String, [i64; 7]> = BTreeMap::new();
    let mut total = [0i64; 7];
    for (minute, count) in &census.by_minute {
        total[bucket(*minute)] += count;
    }
    for ((domain, minute), count) in &census.by_domain_minute {
        rows.entry(domain.clone()).or_default()[bucket(*minute)] += count;
    }
    Ok(Json(json!({
        "buckets": AGE_BUCKETS.iter().map(|(_, name)| *name).collect::<Vec<_>>(),
        "total": total,
        "domains": rows,
    })))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// hold | release | retry | delete | bounce | requeue
    action: String,
    #[serde(default)]
    ids: Vec<String>,
    filter: Option<Filter>,
    #[serde(default)]
    dry_run: bool,
    /// For requeue: "host:port[,host:port]".
    route: Option<String>,
}

const ACTIONS: [&str; 6] = ["hold", "release", "retry", "delete", "bounce", "requeue"];

pub async fn actions(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    body: Result<Json<ActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    caller.require_admin()?;
    if !ACTIONS.contains(&request.action.as_str()) {
        return Err(ApiError::bad_request(format!(
            "action {:?} is not one of {}",
            request.action,
            ACTIONS.join(", ")
        )));
    }
    if request.action == "requeue" {
        let route = request.route.as_deref().unwrap_or("");
        if route.is_empty()
            || route
                .split(',')
                .any(|p| crate::config::parse_host_port(p.trim()).is_none())
        {
            return Err(ApiError::bad_request(
                "requeue needs route = \"host:port[,host:port]\"",
            ));
        }
    }
    let ids: Vec<QueueId> = match (&request.filter, request.ids.is_empty()) {
        (Some(_), false) => return Err(ApiError::bad_request("give ids or a filter, not both")),
        (None, true) => return Err(ApiError::bad_request("give ids or a filter")),
        (None, false) => request
            .ids
            .iter()
            .map(|id| parse_id(id))
            .collect::<Result<_, _>>()?,
        (Some(filter), true) => {
            if filter.is_empty() {
                return Err(ApiError::bad_request(
                    "an empty filter would match every message; list the ids or narrow the filter",
                ));
            }
            let compiled = compile(filter.clone())?;
            let (all, _) = select(
                &state,
                &state.spool.this_node(),
                &compiled,
                None,
                usize::MAX,
            )
            .await?;
            all.into_iter().map(|m| m.id).collect()
        }
    };
    let target = match &request.filter {
        Some(filter) => format!(
            "filter {}",
            serde_json::to_string(filter).unwrap_or_default()
        ),
        None => ids
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(","),
    };
    if request.dry_run {
        return Ok(Json(
            json!({ "action": request.action, "dry_run": true, "matched": ids.len() }),
        ));
    }
    let mut done = 0;
    let mut failed = Vec::new();
    for id in &ids {
        let outcome = apply_action(
            &state.spool,
            state.delivery.as_ref(),
            &request.action,
            request.route.as_deref(),
            *id,
        )
        .await;
        match outcome {
            Ok(true) => done += 1,
            Ok(false) => failed.push(json!({"id": id.to_string(), "error": "not in the spool"})),
            Err(err) => failed.push(json!({"id": id.to_string(), "error": err})),
        }
    }
    let result = format!("matched={} done={done} failed={}", ids.len(), failed.len());
    state
        .audit
        .record(&caller.name, &caller.ip, &request.action, &target, &result)
        .map_err(ApiError::internal)?;
    tracing::info!(actor = %caller.name, action = %request.action, matched = ids.len(), done, "admin action");
    Ok(Json(
        json!({ "action": request.action, "matched": ids.len(), "done": done, "failed": failed }),
    ))
}

pub async fn upstreams(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let Some(delivery) = &state.delivery else {
        return Ok(Json(json!({ "upstreams": [] })));
    };
    let mut depth: BTreeMap<String, u64> = BTreeMap::new();
    for message in state.spool.list().await? {
        for name in delivery.upstreams_of(&message) {
            *depth.entry(name).or_default() += 1;
        }
    }
    let mut list: Vec<Value> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for status in delivery.status() {
        let mut value = serde_json::to_value(&status).map_err(ApiError::internal)?;
        value["queue_depth"] = json!(depth.get(&status.name).copied().unwrap_or(0));
        seen.insert(status.name.clone());
        list.push(value);
    }
    // Upstreams with mail waiting but no attempt yet (e.g. right after start).
    for (name, count) in depth {
        if !seen.contains(&name) {
            list.push(json!({"name": name, "state": "up", "queue_depth": count, "down_since_ms": null, "last_error": null, "consecutive_failures": 0, "parked_messages": 0}));
        }
    }
    Ok(Json(json!({ "upstreams": list })))
}

/// The delivery engine's handle, or the error for a spool-only node.
fn delivery_of(state: &AdminState) -> Result<&crate::delivery::DeliveryHandle, ApiError> {
    state
        .delivery
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("delivery is disabled"))
}

pub async fn upstream_action(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let delivery = delivery_of(&state)?;
    let result = match action.as_str() {
        "hold" => delivery
            .hold(&name)
            .await
            .map(|_| json!({"upstream": name, "state": "held"})),
        "release" => delivery
            .release(&name)
            .await
            .map(|_| json!({"upstream": name, "state": "released"})),
        "flush" => delivery
            .flush_upstream(&name)
            .await
            .map(|n| json!({"upstream": name, "flushed": n})),
        other => {
            return Err(ApiError::bad_request(format!(
                "upstream action {other:?} is not one of hold, release, flush"
            )))
        }
    }
    .map_err(ApiError::internal)?;
    state
        .audit
        .record(
            &caller.name,
            &caller.ip,
            &format!("upstream-{action}"),
            &name,
            "ok",
        )
        .map_err(ApiError::internal)?;
    Ok(Json(result))
}

/// `[send]`: the mode, and whether an admin stopped all sending.
pub async fn sending(State(state): State<Arc<AdminState>>, _caller: Caller) -> Json<Value> {
    Json(json!({
        "mode": state.outbox.mode(),
        "stopped": state.outbox.stopped(),
    }))
}

#[derive(Deserialize)]
pub struct SendingSwitch {
    stopped: bool,
}

/// Stop (or resume) every user's sending at once; durable, audited, and a
/// security event (an attacker turning it back on is the thing to see).
pub async fn set_sending(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    Json(body): Json<SendingSwitch>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    crate::fsutil::run_blocking(|| state.outbox.set_stopped(body.stopped))
        .map_err(ApiError::internal)?;
    let word = if body.stopped { "stopped" } else { "resumed" };
    state.security.raise(crate::security_events::SecurityEvent {
        kind: crate::security_events::EventKind::SendingSwitched,
        subject: "sending".into(),
        actor: caller.name.clone(),
        ip: caller.ip.clone(),
        detail: format!("all sending from the web reader {word}"),
    });
    Ok(Json(
        json!({ "mode": state.outbox.mode(), "stopped": body.stopped }),
    ))
}

/// Postfix's `soft_bounce`, switched at run time (until restart; the
/// config key `[delivery] soft_bounce` is the value at start).
pub async fn soft_bounce(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let delivery = delivery_of(&state)?;
    Ok(Json(json!({ "soft_bounce": delivery.soft_bounce() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftBounceBody {
    on: bool,
}

pub async fn set_soft_bounce(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    Json(body): Json<SoftBounceBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let delivery = delivery_of(&state)?;
    delivery.set_soft_bounce(body.on);
    let word = if body.on { "on" } else { "off" };
    state
        .audit
        .record(&caller.name, &caller.ip, "soft-bounce", word, "ok")
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "soft_bounce": body.on })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    since_ms: Option<u64>,
    limit: Option<usize>,
}

pub async fn audit(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let entries = state
        .audit
        .query(
            query.actor.as_deref(),
            query.action.as_deref(),
            query.since_ms,
            query.limit.unwrap_or(100).min(10_000),
        )
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "entries": entries })))
}

/// Gauges describing the spool, from the spool's running counts (no scan:
/// a scrape costs the same at a million messages as at ten).
pub async fn refresh_gauges(state: &AdminState) {
    let metrics = crate::metrics::get();
    let census = state.spool.census();
    for status in filter::STATUSES {
        metrics.set_queue(status, census.by_status.get(status).copied().unwrap_or(0));
    }
    metrics
        .spool_used_bytes
        .set(i64::try_from(state.spool.used_bytes()).unwrap_or(i64::MAX));
    if let Ok(free) = state.spool.free_bytes() {
        metrics
            .spool_free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    metrics.oldest_message_age.set(
        census
            .oldest_received_ms
            .map_or(0.0, |o| now_ms().saturating_sub(o) as f64 / 1000.0),
    );
    if let Some(delivery) = &state.delivery {
        let mut depth: BTreeMap<String, i64> = BTreeMap::new();
        for upstream in delivery.status() {
            metrics.set_upstream(&upstream.name, upstream.state == "up");
            // Upstreams with nothing queued read 0, not their last value.
            depth.insert(upstream.name, 0);
        }
        for (destinations, count) in &census.by_destinations {
            let mut names: Vec<String> = destinations
                .iter()
                .map(|destination| match destination {
                    Destination::Route(route) => route.clone(),
                    Destination::Domain(domain) => delivery.upstream_for(domain),
                })
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                *depth.entry(name).or_default() += count;
            }
        }
        for (name, count) in depth {
            metrics.set_upstream_depth(&name, count);
        }
    }
}

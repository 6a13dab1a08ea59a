//! Outage detection and alerts: notice a dead upstream before users do.
//!
//! The delivery engine only learns that an upstream is down when it has
//! mail to deliver; at 3 a.m. with an empty queue nobody would know. So the
//! monitor probes every statically configured upstream itself (connect,
//! read the greeting, QUIT) every `check_interval`. There is one verdict
//! on an upstream's health, the delivery circuit's (`delivery::upstream`):
//! `probe_failures` misses in a row declare the circuit down, a probe that
//! gets through while it is down brings it back, and the alert reports the
//! circuit's verdict the moment it changes. So `breakwater upstream list`,
//! the web banner, `breakwater_upstream_up` and the alerts never disagree.
//! (Only with delivery disabled are the probes a verdict of their own.) The
//! queue is watched too (depth, age of the oldest message).
//!
//! Each alert is a log line, a metric, and a notification to every
//! `[[alert]]` target: a webhook (JSON, or `{"text"}` for Slack, Teams and
//! Mattermost) or a mail sent through its own relay (it must not depend on
//! the upstream that just failed). Alerts repeat every `repeat` while they
//! last, and a recovery notice says how long it lasted and how big the
//! queue got.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{parse_host_port, Config};
use crate::delivery::DeliveryHandle;
use crate::envelope::now_ms;
use crate::smtp_client::{Dialer, TlsClients};
use crate::spool::Spool;

/// One notification, as sent to webhooks (JSON) and summarised in `text`.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// upstream-down | upstream-still-down | upstream-recovered |
    /// queue-depth | queue-depth-recovered | queue-age | queue-age-recovered |
    /// bounce-guard | bounce-guard-recovered |
    /// cluster-unreplicated | cluster-unreplicated-recovered
    pub event: String,
    /// The upstream name, or "queue".
    pub subject: String,
    /// Our host name (which Breakwater is speaking).
    pub host: String,
    pub since_ms: u64,
    pub duration_seconds: u64,
    pub queue_depth: usize,
    /// Largest queue seen while the alert lasted.
    pub max_queue_depth: usize,
    pub oldest_message_age_seconds: u64,
    pub detail: String,
    pub text: String,
}

struct Active {
    since_ms: u64,
    last_notified_ms: u64,
    max_depth: usize,
    detail: String,
}

/// What the monitor keeps between rounds.
#[derive(Default)]
struct Watch {
    /// Idle probes missed in a row per upstream, with the last error.
    misses: HashMap<String, (u32, String)>,
    active: HashMap<String, Active>,
}

/// For an upstream that went down: (user address, their notice webhook) of
/// every user whose mail goes there. Given by the composition root, which
/// knows the web accounts.
pub type UserNotices = Box<dyn Fn(&str) -> Vec<(String, String)> + Send + Sync>;

/// Rounds run every `check_interval` (with probes) and, without probing,
/// whenever the delivery circuit changes an upstream's verdict: the alert
/// follows the list, the banner and the gauge within milliseconds.
pub async fn run(
    config: Config,
    spool: Spool,
    delivery: Option<DeliveryHandle>,
    users: UserNotices,
    cluster: Option<crate::cluster::ClusterHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watch = Watch::default();
    let mut verdicts = delivery.as_ref().map(|d| d.verdict_changes());
    let mut next_probe = tokio::time::Instant::now() + config.alerts.check_interval;
    loop {
        let probe_now = tokio::select! {
            _ = tokio::time::sleep_until(next_probe) => true,
            _ = verdict_changed(&mut verdicts) => false,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if probe_now {
            next_probe = tokio::time::Instant::now() + config.alerts.check_interval;
        }
        let started = round(&config, &spool, delivery.as_ref(), &mut watch, probe_now).await;
        if let Some(cluster) = &cluster {
            let census = spool.census();
            let oldest = census
                .oldest_received_ms
                .map_or(0, |t| now_ms().saturating_sub(t));
            update(
                &config,
                &mut watch,
                "cluster",
                cluster.node(),
                cluster.problem(),
                spool.len(),
                oldest,
                "cluster-unreplicated",
            )
            .await;
        }
        for upstream in started {
            notify_users(&config, &users(&upstream), &upstream).await;
        }
    }
}

async fn verdict_changed(verdicts: &mut Option<watch::Receiver<u64>>) {
    if let Some(changes) = verdicts {
        if changes.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Tell the affected users where to read their mail (once per outage).
async fn notify_users(config: &Config, users: &[(String, String)], upstream: &str) {
    for (address, url) in users {
        let label = &config.web.upstream_label;
        let text = if config.web.public_url.is_empty() {
            format!("{label} is not accepting mail right now. Your mail is safe and kept by Breakwater; ask IT how to read it.")
        } else {
            format!("{label} is not accepting mail right now. Your mail is safe: read it at {} (sign in with your Breakwater password).", config.web.public_url)
        };
        let notice = serde_json::json!({
            "event": "user-outage-notice",
            "user": address,
            "upstream": upstream,
            "read_at": config.web.public_url,
            "text": text,
        });
        match crate::alert_channels::post_json(url.clone(), notice).await {
            Ok(()) => tracing::info!(user = %address, upstream, "outage notice sent to user"),
            Err(err) => {
                tracing::warn!(user = %address, error = %err, "outage notice to user failed")
            }
        }
    }
}

/// A statically routed upstream: its name as the delivery engine calls it,
/// one recipient domain routed there, its hosts.
struct Probed {
    name: String,
    domain: String,
    hosts: Vec<(String, u16)>,
}

fn probed_upstreams(config: &Config) -> Vec<Probed> {
    let mut out: Vec<Probed> = Vec::new();
    for domain in &config.domains {
        if domain.upstream == "mx" {
            continue;
        }
        let name = domain.upstream.replace(' ', "");
        if out.iter().any(|p| p.name == name) {
            continue;
        }
        let hosts = domain
            .upstream
            .split(',')
            .filter_map(|p| parse_host_port(p.trim()))
            .map(|(h, p)| (h.to_string(), p))
            .collect();
        out.push(Probed {
            name,
            domain: domain.name.clone(),
            hosts,
        });
    }
    out
}

/// At most 10 s per probe: with the defaults (15 s interval, 2 misses) a
/// silent upstream (packets dropped, or a greeting that never comes) is then
/// alerted within about 50 s, inside the 60 s target, even though delivery
/// itself waits `connect_timeout` (30 s).
fn probe_timeout(config: &Config) -> Duration {
    config.delivery.connect_timeout.min(Duration::from_secs(10))
}

/// The SMTP client for probes and alert mail: our host name, `timeout`
/// for connecting and for each command, the delivery trust roots.
fn dialer(config: &Config, timeout: Duration) -> Result<Dialer, String> {
    let tls = TlsClients::for_delivery(&config.delivery)?;
    Ok(Dialer::new(
        &config.hostname,
        timeout,
        timeout,
        std::sync::Arc::new(tls),
    ))
}

/// Can we reach any host of the upstream, be greeted with 220 and get an
/// answer to EHLO?
async fn probe(config: &Config, hosts: &[(String, u16)]) -> Result<(), String> {
    let timeout = probe_timeout(config);
    let dialer = dialer(config, timeout)?;
    let mut last = String::from("no host");
    for (host, port) in hosts {
        match tokio::time::timeout(timeout, dialer.connect_named(host, *port)).await {
            Ok(Ok(session)) => {
                session.quit().await;
                return Ok(());
            }
            Ok(Err(err)) => last = format!("{host}:{port}: {err}"),
            Err(_) => {
                last = format!(
                    "{host}:{port}: no greeting within {}",
                    humantime::format_duration(timeout)
                )
            }
        }
    }
    Err(last)
}

/// One look at everything; returns the upstreams whose outage just started.
async fn round(
    config: &Config,
    spool: &Spool,
    delivery: Option<&DeliveryHandle>,
    watch: &mut Watch,
    probe_now: bool,
) -> Vec<String> {
    let mut started = Vec::new();
    let now = now_ms();
    let depth = spool.len();
    let oldest_age_ms = spool
        .page(None, 1, |m| m.state.retain_until_ms.is_none())
        .await
        .ok()
        .and_then(|(page, _)| {
            page.first()
                .map(|m| now.saturating_sub(m.envelope.received_at_ms))
        })
        .unwrap_or(0);
    let threshold = config.alerts.probe_failures;
    let probes = probed_upstreams(config);
    if probe_now {
        // Idle probes are evidence for the circuit, not a verdict of their
        // own: with delivery running, the circuit decides and we report it.
        for upstream in &probes {
            match probe(config, &upstream.hosts).await {
                Ok(()) => {
                    watch.misses.remove(&upstream.name);
                    if let Some(delivery) = delivery {
                        delivery
                            .declare_reachable(&upstream.name, &upstream.domain)
                            .await;
                    }
                }
                Err(err) => {
                    let miss = watch.misses.entry(upstream.name.clone()).or_default();
                    miss.0 += 1;
                    miss.1 = err;
                    if miss.0 >= threshold {
                        if let Some(delivery) = delivery {
                            let reason = format!("{} probes in a row failed: {}", miss.0, miss.1);
                            delivery.declare_down(&upstream.name, &upstream.domain, &reason);
                        }
                    }
                }
            }
        }
    }
    let probe_reason = |name: &str| {
        watch
            .misses
            .get(name)
            .filter(|(count, _)| *count >= threshold)
            .map(|(count, err)| format!("{count} probes in a row failed: {err}"))
    };
    // (upstream, why it is down): the circuit's verdict when delivery runs
    // (what `upstream list`, the banner and the gauge show); only without a
    // delivery engine are the probes the verdict.
    let status = delivery.map(|d| d.status()).unwrap_or_default();
    let verdicts: Vec<(String, Option<String>)> = if delivery.is_some() {
        status
            .iter()
            .map(|s| {
                let down = s.down_since_ms.map(|_| {
                    probe_reason(&s.name).unwrap_or_else(|| {
                        format!(
                            "delivery marked it down: {}",
                            s.last_error.clone().unwrap_or_default()
                        )
                    })
                });
                (s.name.clone(), down)
            })
            .collect()
    } else {
        probes
            .iter()
            .map(|p| (p.name.clone(), probe_reason(&p.name)))
            .collect()
    };
    let guarded: Vec<(String, Option<crate::delivery::bounce_guard::Trip>)> = status
        .into_iter()
        .map(|s| (s.name, s.bounce_guard))
        .collect();
    for (name, down_reason) in verdicts {
        let key = format!("upstream:{name}");
        let was_down = watch.active.contains_key(&key);
        update(
            config,
            watch,
            &key,
            &name,
            down_reason,
            depth,
            oldest_age_ms,
            "upstream",
        )
        .await;
        if !was_down && watch.active.contains_key(&key) {
            started.push(name);
        }
    }
    // The bounce guard held an upstream: someone must look at its
    // connector before the held mail can go (or be bounced).
    for (name, trip) in guarded {
        let problem = trip.map(|trip| {
            format!(
                "upstream {name} refused {} recipients alike ({}); it is held and its mail kept, not bounced. Fix the connector, then `breakwater upstream release {name}` (or bounce those messages)",
                trip.recipients, trip.reply
            )
        });
        let key = format!("bounce-guard:{name}");
        if problem.is_some() || watch.active.contains_key(&key) {
            update(
                config,
                watch,
                &key,
                &name,
                problem,
                depth,
                oldest_age_ms,
                "bounce-guard",
            )
            .await;
        }
    }
    let limit = config.alerts.queue_depth;
    let deep =
        (limit > 0 && depth > limit).then(|| format!("{depth} messages waiting (limit {limit})"));
    update(
        config,
        watch,
        "queue-depth",
        "queue",
        deep,
        depth,
        oldest_age_ms,
        "queue-depth",
    )
    .await;
    let max_age = config.alerts.oldest_age.as_millis() as u64;
    let old = (max_age > 0 && oldest_age_ms > max_age).then(|| {
        format!(
            "the oldest message has waited {} (limit {})",
            humantime::format_duration(Duration::from_secs(oldest_age_ms / 1000)),
            humantime::format_duration(config.alerts.oldest_age)
        )
    });
    update(
        config,
        watch,
        "queue-age",
        "queue",
        old,
        depth,
        oldest_age_ms,
        "queue-age",
    )
    .await;
    let metrics = crate::metrics::get();
    for key in watch.active.keys() {
        metrics.alert_active(key, true);
    }
    started
}

#[allow(clippy::too_many_arguments)]
async fn update(
    config: &Config,
    watch: &mut Watch,
    key: &str,
    subject: &str,
    problem: Option<String>,
    depth: usize,
    oldest_age_ms: u64,
    event: &str,
) {
    let now = now_ms();
    let down_event = if event == "upstream" {
        "upstream-down"
    } else {
        event
    };
    let notice = |name: String, active: &Active, detail: &str| {
        let duration = now.saturating_sub(active.since_ms) / 1000;
        let text = match name.as_str() {
            "upstream-down" => format!("[{}] upstream {subject} is DOWN: {detail}. Mail is being spooled ({depth} waiting).", config.hostname),
            "upstream-still-down" => format!("[{}] upstream {subject} still DOWN after {}: {detail}. {depth} messages waiting.", config.hostname, humantime::format_duration(Duration::from_secs(duration))),
            "upstream-recovered" => format!("[{}] upstream {subject} RECOVERED after {}; the queue peaked at {} messages and is flushing.", config.hostname, humantime::format_duration(Duration::from_secs(duration)), active.max_depth),
            other if other.ends_with("-recovered") => format!("[{}] {other}: back to normal after {} ({depth} waiting).", config.hostname, humantime::format_duration(Duration::from_secs(duration))),
            other => format!("[{}] {other}: {detail}.", config.hostname),
        };
        Notice {
            event: name,
            subject: subject.to_string(),
            host: config.hostname.clone(),
            since_ms: active.since_ms,
            duration_seconds: duration,
            queue_depth: depth,
            max_queue_depth: active.max_depth,
            oldest_message_age_seconds: oldest_age_ms / 1000,
            detail: detail.to_string(),
            text,
        }
    };
    match (problem, watch.active.get_mut(key)) {
        (Some(detail), None) => {
            let active = Active {
                since_ms: now,
                last_notified_ms: now,
                max_depth: depth,
                detail: detail.clone(),
            };
            let n = notice(down_event.to_string(), &active, &detail);
            watch.active.insert(key.to_string(), active);
            send(config, &n).await;
        }
        (Some(detail), Some(active)) => {
            active.max_depth = active.max_depth.max(depth);
            active.detail = detail.clone();
            if now.saturating_sub(active.last_notified_ms)
                >= config.alerts.repeat.as_millis() as u64
            {
                active.last_notified_ms = now;
                let name = if event == "upstream" {
                    "upstream-still-down".to_string()
                } else {
                    event.to_string()
                };
                let n = notice(name, active, &detail);
                send(config, &n).await;
            }
        }
        (None, Some(_)) => {
            let active = watch.active.remove(key).expect("present");
            let name = if event == "upstream" {
                "upstream-recovered".to_string()
            } else {
                format!("{event}-recovered")
            };
            let n = notice(name, &active, &active.detail);
            crate::metrics::get().alert_active(key, false);
            send(config, &n).await;
        }
        (None, None) => {}
    }
}

/// Log, count, and deliver to every target (failures are logged, never fatal).
async fn send(config: &Config, notice: &Notice) {
    tracing::warn!(event = %notice.event, subject = %notice.subject, duration_s = notice.duration_seconds, queue = notice.queue_depth, detail = %notice.detail, "alert");
    crate::metrics::get().alert(&notice.event);
    let json = serde_json::to_value(notice).unwrap_or_default();
    crate::alert_channels::deliver(config, &notice.event, &notice.text, &json).await;
}

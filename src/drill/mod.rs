//! Failover drills: rehearse an outage on purpose and measure the recovery.
//!
//! Start = hold the upstream (everything spools, nothing is lost), note the
//! time and the queue, take the self-check, and optionally push a tagged
//! probe message through our own SMTP listener so the drill proves
//! intake → spool → web visibility. Finish = release the hold and watch the
//! drill's messages drain; the report (JSON + Markdown, and a page in the
//! web admin) records the timeline, counts, drain time and problems found.
//!
//! Sending is rehearsed too: with `send_probe_from` and `send_probe_to` the
//! drill writes a message through `sending::Outbox` as a user would (mode,
//! stop switch, DKIM key, limits all apply) to an outside address the
//! admin reads, and the report says whether it was delivered, while the
//! upstream is held, and how many messages users sent during the drill.
//! One drill at a time; its state is a file, so a restart does not forget it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accounts::Accounts;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::delivery::DeliveryHandle;
use crate::envelope::{now_ms, QueueId};
use crate::selfcheck::{self as check, Finding, Level, Mode};
use crate::sending::{Draft, Outbox};
use crate::smtp_client::{self, Dialer, Relay, TlsClients, TlsPolicy};
use crate::spool::Spool;

/// How long a finished drill waits for its messages to drain before the
/// report is written anyway (with what is still waiting).
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drill {
    pub id: String,
    pub upstream: String,
    pub reason: String,
    pub started_ms: u64,
    pub started_by: String,
    /// Auto-finish after this many seconds.
    #[serde(default)]
    pub duration_seconds: Option<u64>,
    #[serde(default)]
    pub probe_to: Option<String>,
    #[serde(default)]
    pub probe_id: Option<String>,
    /// The sending rehearsal: from one of our addresses to an outside one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_probe: Option<SendProbe>,
    /// Messages users sent from the web reader during the drill.
    #[serde(default)]
    pub sent_by_users: usize,
    #[serde(default)]
    pub queue_at_start: usize,
    #[serde(default)]
    pub max_queue_depth: usize,
    /// The self-check taken at start.
    #[serde(default)]
    pub self_check: Vec<Finding>,
    /// (ms since epoch, what happened)
    #[serde(default)]
    pub timeline: Vec<(u64, String)>,
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub finished_by: Option<String>,
    #[serde(default)]
    pub drain: Option<DrainReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendProbe {
    pub from: String,
    pub to: String,
    /// Its queue ID, once the outbox took it.
    #[serde(default)]
    pub queue_id: Option<String>,
    /// What became of it when the drain was watched: delivered, failed
    /// or waiting.
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainReport {
    /// Messages that arrived during the drill.
    pub messages: usize,
    pub delivered: usize,
    pub failed: usize,
    /// Still in the spool when the report was written.
    pub waiting: usize,
    /// From release to the last of them leaving the spool.
    pub drain_ms: Option<u64>,
    pub probe_delivered: bool,
}

/// What `drill status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub drill: Drill,
    pub elapsed_seconds: u64,
    pub spooled_since_start: usize,
    pub queue_depth: usize,
    pub oldest_message_age_seconds: u64,
    pub probe_in_spool: bool,
    pub probe_visible_in_mailbox: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub upstream: Option<String>,
    pub reason: Option<String>,
    /// e.g. "30m"
    pub duration: Option<String>,
    pub probe_to: Option<String>,
    /// Rehearse sending: one of our addresses (its domain needs a DKIM
    /// key) ...
    pub send_probe_from: Option<String>,
    /// ... to an outside address the admin reads.
    pub send_probe_to: Option<String>,
}

pub struct Drills {
    dir: PathBuf,
    config: Config,
    spool: Spool,
    delivery: Option<DeliveryHandle>,
    audit: Arc<AuditLog>,
    /// Our SMTP listener, for the probe message.
    smtp_addr: SocketAddr,
    /// The web reader's accounts: can the probe's recipient read it there?
    accounts: Accounts,
    /// Users' sending, rehearsed by the send probe.
    outbox: Arc<Outbox>,
    current: Mutex<Option<Drill>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Drills {
    pub fn open(
        config: &Config,
        spool: Spool,
        delivery: Option<DeliveryHandle>,
        audit: Arc<AuditLog>,
        smtp_addr: SocketAddr,
        outbox: Arc<Outbox>,
    ) -> std::io::Result<Arc<Drills>> {
        let dir = config.drill.reports_dir.clone();
        std::fs::create_dir_all(&dir)?;
        let current = std::fs::read(dir.join("current.json"))
            .ok()
            .and_then(|data| serde_json::from_slice::<Drill>(&data).ok());
        let drills = Arc::new(Drills {
            dir,
            config: config.clone(),
            spool,
            delivery,
            audit,
            smtp_addr,
            accounts: Accounts::new(&config.web.users_file),
            outbox,
            current: Mutex::new(current.clone()),
        });
        if let Some(drill) = current {
            tracing::warn!(drill = %drill.id, upstream = %drill.upstream, "a failover drill is in progress (from before the restart)");
            drills.clone().supervise(
                drill.id.clone(),
                drill.duration_seconds.map(|d| drill.started_ms + d * 1000),
            );
        }
        Ok(drills)
    }

    pub fn current(&self) -> Option<Drill> {
        self.current.lock().expect("drill lock").clone()
    }

    fn save_current(&self, drill: Option<&Drill>) -> Result<(), String> {
        let path = self.dir.join("current.json");
        match drill {
            Some(drill) => write_atomic(&path, &serde_json::to_vec_pretty(drill).map_err(err)?),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            },
        }
    }

    fn delivery(&self) -> Result<&DeliveryHandle, String> {
        self.delivery.as_ref().ok_or_else(|| {
            "delivery is disabled ([delivery] enabled = false): nothing to rehearse".to_string()
        })
    }

    pub async fn start(
        self: &Arc<Self>,
        actor: &str,
        ip: &str,
        request: StartRequest,
    ) -> Result<Drill, String> {
        let delivery = self.delivery()?;
        let send_probe = match (&request.send_probe_from, &request.send_probe_to) {
            (None, None) => None,
            (Some(from), Some(to)) => Some(SendProbe {
                from: from.trim().to_string(),
                to: to.trim().to_string(),
                queue_id: None,
                outcome: None,
            }),
            _ => return Err("send_probe_from and send_probe_to go together".into()),
        };
        let duration = request
            .duration
            .as_deref()
            .map(|d| humantime::parse_duration(d).map_err(|e| format!("duration {d:?}: {e}")))
            .transpose()?;
        let upstream = match request.upstream {
            Some(name) => name,
            None => {
                let first = self
                    .config
                    .domains
                    .first()
                    .ok_or("no [[domain]] configured")?;
                delivery.upstream_for(&first.name)
            }
        };
        let now = now_ms();
        let at = time::OffsetDateTime::now_utc();
        let id = format!(
            "drill-{:04}{:02}{:02}T{:02}{:02}{:02}-{:03}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        );
        let mut drill = Drill {
            id: id.clone(),
            upstream: upstream.clone(),
            reason: request.reason.unwrap_or_else(|| "failover drill".into()),
            started_ms: now,
            started_by: actor.to_string(),
            duration_seconds: duration.map(|d| d.as_secs().max(1)),
            probe_to: request.probe_to.clone(),
            probe_id: None,
            send_probe: send_probe.clone(),
            sent_by_users: 0,
            queue_at_start: self.spool.len(),
            max_queue_depth: self.spool.len(),
            self_check: Vec::new(),
            timeline: vec![(
                now,
                format!("drill started by {actor}: upstream {upstream} held"),
            )],
            problems: Vec::new(),
            finished_ms: None,
            finished_by: None,
            drain: None,
        };
        {
            let mut current = self.current.lock().expect("drill lock");
            if let Some(running) = current.as_ref() {
                return Err(format!(
                    "drill {} is already running; finish it first",
                    running.id
                ));
            }
            *current = Some(drill.clone());
        }
        if let Err(e) = delivery.hold(&upstream).await {
            *self.current.lock().expect("drill lock") = None;
            return Err(format!("cannot hold {upstream}: {e}"));
        }
        if let Some(to) = &request.probe_to {
            match self.send_probe(&id, to).await {
                Ok(queue_id) => {
                    drill.probe_id = Some(queue_id.clone());
                    drill.timeline.push((
                        now_ms(),
                        format!("probe message {queue_id} accepted for {to}"),
                    ));
                }
                Err(e) => {
                    drill
                        .problems
                        .push(format!("the probe message was not accepted: {e}"));
                    drill
                        .timeline
                        .push((now_ms(), format!("probe message failed: {e}")));
                }
            }
        }
        if let Some(probe) = &mut drill.send_probe {
            match self.send_through_outbox(&id, probe).await {
                Ok(queue_id) => {
                    drill.timeline.push((
                        now_ms(),
                        format!(
                            "sending probe {queue_id} queued from {} to {}",
                            probe.from, probe.to
                        ),
                    ));
                    probe.queue_id = Some(queue_id);
                }
                Err(e) => {
                    drill.problems.push(format!(
                        "users could not send: the sending probe was refused: {e}"
                    ));
                    drill
                        .timeline
                        .push((now_ms(), format!("sending probe refused: {e}")));
                }
            }
        }
        self.update(|d| {
            d.probe_id = drill.probe_id.clone();
            d.send_probe = drill.send_probe.clone();
            d.timeline = drill.timeline.clone();
            d.problems = drill.problems.clone();
        })?;
        self.audit_line(
            actor,
            ip,
            "drill-start",
            &format!("{id} upstream={upstream}"),
        );
        tracing::warn!(drill = %id, upstream = %upstream, actor, "failover drill started: upstream held");
        // The self-check can take a while (DNS, TLS): do it behind the start.
        let me = self.clone();
        let check_id = id.clone();
        tokio::spawn(async move {
            let findings = check::run(&me.config, &[], Mode::Secondary).await;
            let _ = me.update(|d| {
                if d.id == check_id {
                    for f in findings.iter().filter(|f| f.level == Level::Fail) {
                        d.problems.push(format!(
                            "self-check: {} {}: {}",
                            f.subject, f.check, f.detail
                        ));
                    }
                    d.self_check = findings;
                }
            });
        });
        self.clone()
            .supervise(id, duration.map(|d| now + d.as_millis() as u64));
        Ok(self.current().unwrap_or(drill))
    }

    /// While the drill runs: sample the queue depth; auto-finish at `until`.
    fn supervise(self: Arc<Self>, id: String, until: Option<u64>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let depth = self.spool.len();
                let Some(drill) = self.current().filter(|d| d.id == id) else {
                    return;
                };
                // Written only when the peak grows: not twice a second.
                if depth > drill.max_queue_depth {
                    let _ = self.update(|d| d.max_queue_depth = depth);
                }
                if until.is_some_and(|t| now_ms() >= t) {
                    if let Err(e) = self.finish("auto (duration elapsed)", "-").await {
                        tracing::error!(drill = %id, error = %e, "drill auto-finish failed");
                    }
                    return;
                }
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut Drill)) -> Result<(), String> {
        let mut current = self.current.lock().expect("drill lock");
        let drill = current.as_mut().ok_or("no drill is running")?;
        change(drill);
        self.save_current(Some(drill))
    }

    fn audit_line(&self, actor: &str, ip: &str, action: &str, target: &str) {
        if let Err(e) = self.audit.record(actor, ip, action, target, "ok") {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// The sending rehearsal: a message written as a user would, checked
    /// by the outbox like theirs (the drill counts as the outage).
    async fn send_through_outbox(&self, id: &str, probe: &SendProbe) -> Result<String, String> {
        let draft = Draft {
            from: probe.from.clone(),
            to: vec![probe.to.clone()],
            subject: format!("Breakwater failover drill {id}: sending"),
            text: format!(
                "This is a failover drill ({id}) of sending during an outage.\n\
                 It was written by Breakwater as a user would write one in the web\n\
                 reader, DKIM-signed for its domain. If it arrived, check that your\n\
                 mail system shows DKIM, SPF and DMARC as passed.\n"
            ),
            ..Draft::default()
        };
        let user = format!("drill:{id}");
        let sent = self
            .outbox
            .send(&user, std::slice::from_ref(&probe.from), true, draft)
            .await
            .map_err(|refusal| refusal.to_string())?;
        Ok(sent.queue_id.to_string())
    }

    /// A uniquely tagged message submitted to our own listener: the same
    /// path a sender's mail takes.
    async fn send_probe(&self, id: &str, to: &str) -> Result<String, String> {
        let host = &self.config.hostname;
        let from = format!("breakwater-drill@{host}");
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .map_err(err)?;
        let message = format!(
            "From: Breakwater drill <{from}>\r\nTo: <{to}>\r\nSubject: Breakwater failover drill {id}\r\nDate: {date}\r\nMessage-ID: <{id}.probe@{host}>\r\nX-Breakwater-Drill: {id}\r\n\r\nThis is a failover drill probe ({id}). If you can read this in the\r\nBreakwater web reader, intake, spooling and web access work.\r\n"
        );
        // Our own listener on loopback: cleartext is enough.
        let relay = Relay {
            host,
            addr: self.smtp_addr,
            policy: TlsPolicy::Never,
        };
        let limit = Duration::from_secs(30);
        let dialer = Dialer::new(
            host,
            limit,
            limit,
            Arc::new(TlsClients::new(None).map_err(err)?),
        );
        let reply =
            smtp_client::submit(&dialer, &relay, &from, to, message.as_bytes(), limit).await?;
        reply
            .rsplit(' ')
            .next()
            .filter(|id| id.parse::<QueueId>().is_ok())
            .map(str::to_string)
            .ok_or_else(|| "no queue ID in the 250 reply".to_string())
    }

    pub async fn status(&self) -> Result<Status, String> {
        let drill = self.current().ok_or("no drill is running")?;
        let now = now_ms();
        let (oldest, _) = self
            .spool
            .page(None, 1, |m| m.state.retain_until_ms.is_none())
            .await
            .map_err(err)?;
        let spooled_since_start = self.messages_since(drill.started_ms, u64::MAX).await?.len();
        let probe = drill
            .probe_id
            .as_deref()
            .and_then(|id| id.parse::<QueueId>().ok());
        let probe_in_spool = match probe {
            Some(id) => self.spool.get(id).await.ok().flatten().is_some(),
            None => false,
        };
        Ok(Status {
            elapsed_seconds: now.saturating_sub(drill.started_ms) / 1000,
            spooled_since_start,
            queue_depth: self.spool.len(),
            oldest_message_age_seconds: oldest
                .first()
                .map_or(0, |m| now.saturating_sub(m.envelope.received_at_ms) / 1000),
            probe_in_spool,
            probe_visible_in_mailbox: match (&drill.probe_to, probe) {
                (Some(to), Some(id)) => probe_in_spool && self.in_a_mailbox(to, id).await,
                _ => false,
            },
            drill,
        })
    }

    /// Messages received in [from, to] (queue IDs are time-ordered ULIDs).
    async fn messages_since(&self, from_ms: u64, to_ms: u64) -> Result<Vec<QueueId>, String> {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self
                .spool
                .page(after, 1000, |m| {
                    (from_ms..=to_ms).contains(&m.envelope.received_at_ms)
                })
                .await
                .map_err(err)?;
            ids.extend(page.iter().map(|m| m.id));
            match next {
                Some(n) => after = Some(n),
                None => return Ok(ids),
            }
        }
    }

    pub async fn finish(self: &Arc<Self>, actor: &str, ip: &str) -> Result<Drill, String> {
        let delivery = self.delivery()?;
        let now = now_ms();
        let drill = self.current().ok_or("no drill is running")?;
        let drill_messages = self.messages_since(drill.started_ms, now).await?;
        delivery
            .release(&drill.upstream)
            .await
            .map_err(|e| format!("cannot release {}: {e}", drill.upstream))?;
        let sent_by_users = {
            let outbox = self.outbox.clone();
            let since = drill.started_ms;
            crate::fsutil::run_blocking(move || outbox.sent_between(since, now))
                .map(|records| {
                    records
                        .iter()
                        .filter(|r| !r.user.starts_with("drill:"))
                        .count()
                })
                .unwrap_or(0)
        };
        self.update(|d| {
            d.sent_by_users = sent_by_users;
            d.finished_ms = Some(now);
            d.finished_by = Some(actor.to_string());
            d.timeline.push((
                now,
                format!(
                    "drill finished by {actor}: upstream {} released; {} messages to drain",
                    d.upstream,
                    drill_messages.len()
                ),
            ));
        })?;
        let finished = self.current().ok_or("no drill is running")?;
        // The report first: whoever sees the drill end (current gone) can
        // read its report right away.
        self.write_report(&finished)?;
        *self.current.lock().expect("drill lock") = None;
        self.save_current(None)?;
        self.audit_line(actor, ip, "drill-finish", &finished.id);
        tracing::warn!(drill = %finished.id, upstream = %finished.upstream, actor, "failover drill finished: upstream released");
        let me = self.clone();
        let report = finished.clone();
        tokio::spawn(async move { me.watch_drain(report, drill_messages).await });
        Ok(finished)
    }

    /// Would `to` see the message in the web reader: an enabled account
    /// owns the address and the message is in that address's mailbox?
    async fn in_a_mailbox(&self, to: &str, id: QueueId) -> bool {
        let owned = self
            .accounts
            .snapshot()
            .values()
            .any(|account| !account.disabled && account.owns(to));
        owned
            && self
                .spool
                .ids_for_recipient(to)
                .await
                .is_ok_and(|ids| ids.contains(&id))
    }

    /// Is the message still in the spool waiting for delivery (not kept
    /// after delivery by `[web] retain_delivered`)?
    async fn awaiting_delivery(&self, id: QueueId) -> bool {
        self.spool
            .get(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|m| m.state.retain_until_ms.is_none())
    }

    /// What became of one of the drill's messages.
    async fn outcome(&self, id: QueueId) -> &'static str {
        match self.spool.removal_reason(id).as_deref() {
            Some("delivered") => "delivered",
            Some("bounced") => "failed",
            Some(_) => "other",
            None => match self.spool.get(id).await.ok().flatten() {
                // Kept by [web] retain_delivered or [send] keep_sent: done;
                // kept_sent mail may also have failed.
                Some(m) if m.state.retain_until_ms.is_some() => {
                    let failed = m
                        .state
                        .recipients
                        .iter()
                        .any(|r| r.status == crate::envelope::RecipientStatus::Failed);
                    if failed {
                        "failed"
                    } else {
                        "delivered"
                    }
                }
                _ => "waiting",
            },
        }
    }

    /// Follow the drill's messages until they have all left the spool.
    async fn watch_drain(&self, mut drill: Drill, ids: Vec<QueueId>) {
        let released = drill.finished_ms.unwrap_or_else(now_ms);
        let probe = drill
            .probe_id
            .as_deref()
            .and_then(|id| id.parse::<QueueId>().ok());
        let mut drain = DrainReport {
            messages: ids.len(),
            ..DrainReport::default()
        };
        let deadline = std::time::Instant::now() + DRAIN_LIMIT;
        loop {
            let mut waiting = Vec::new();
            for id in &ids {
                if self.awaiting_delivery(*id).await {
                    waiting.push(*id);
                }
            }
            if waiting.is_empty() || std::time::Instant::now() >= deadline {
                drain.waiting = waiting.len();
                if waiting.is_empty() {
                    drain.drain_ms = Some(now_ms().saturating_sub(released));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &ids {
            *counts.entry(self.outcome(*id).await).or_default() += 1;
        }
        drain.delivered = counts.get("delivered").copied().unwrap_or(0);
        drain.failed = counts.get("failed").copied().unwrap_or(0);
        drain.probe_delivered = match probe {
            Some(id) => self.outcome(id).await == "delivered",
            None => false,
        };
        let now = now_ms();
        match drain.drain_ms {
            Some(ms) => drill.timeline.push((
                now,
                format!(
                    "all {} messages left the spool {:.1} s after the release",
                    ids.len(),
                    ms as f64 / 1000.0
                ),
            )),
            None => {
                drill.problems.push(format!(
                    "{} messages were still waiting {} after the release",
                    drain.waiting,
                    humantime::format_duration(DRAIN_LIMIT)
                ));
                drill.timeline.push((now, "drain watch gave up".into()));
            }
        }
        if drain.failed > 0 {
            drill.problems.push(format!(
                "{} messages bounced during the drain",
                drain.failed
            ));
        }
        let send_probe_id = drill
            .send_probe
            .as_ref()
            .and_then(|p| p.queue_id.as_deref())
            .and_then(|id| id.parse::<QueueId>().ok());
        if let Some(id) = send_probe_id {
            let outcome = self.outcome(id).await;
            if outcome != "delivered" {
                drill.problems.push(format!(
                    "the sending probe was not delivered ({outcome}): users' mail may not get out"
                ));
            }
            if let Some(probe) = &mut drill.send_probe {
                probe.outcome = Some(outcome.to_string());
            }
        }
        if drill.probe_id.is_some() && !drain.probe_delivered {
            drill
                .problems
                .push("the probe message was not confirmed delivered".into());
        }
        drill.drain = Some(drain);
        if let Err(e) = self.write_report(&drill) {
            tracing::error!(drill = %drill.id, error = %e, "cannot write the drill report");
        }
        tracing::info!(drill = %drill.id, drain_ms = ?drill.drain.as_ref().and_then(|d| d.drain_ms), "drill report written");
    }

    fn write_report(&self, drill: &Drill) -> Result<(), String> {
        write_atomic(
            &self.dir.join(format!("{}.json", drill.id)),
            &serde_json::to_vec_pretty(drill).map_err(err)?,
        )?;
        write_atomic(
            &self.dir.join(format!("{}.md", drill.id)),
            markdown(drill).as_bytes(),
        )
    }

    /// Finished drills, newest first.
    pub fn list(&self) -> Vec<Drill> {
        let mut list: Vec<Drill> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && p.file_stem().is_some_and(|s| s != "current")
            })
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|data| serde_json::from_slice::<Drill>(&data).ok())
            .collect();
        list.sort_by_key(|d| std::cmp::Reverse(d.started_ms));
        list
    }

    pub fn report(&self, id: &str) -> Option<Drill> {
        if !id.starts_with("drill-") || id.contains(['/', '\\', '.']) {
            return None;
        }
        let data = std::fs::read(self.dir.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    crate::fsutil::write_atomic(path, data, None).map_err(|e| format!("{}: {e}", path.display()))
}

fn stamp(ms: u64) -> String {
    crate::envelope::rfc3339_ms(ms)
}

/// The human report (CLI `drill show`, and saved next to the JSON).
pub fn markdown(drill: &Drill) -> String {
    let mut out = format!("# Failover drill {}\n\n", drill.id);
    out.push_str(&format!(
        "- Upstream: `{}`\n- Reason: {}\n- Started: {} by {}\n",
        drill.upstream,
        drill.reason,
        stamp(drill.started_ms),
        drill.started_by
    ));
    if let Some(end) = drill.finished_ms {
        out.push_str(&format!(
            "- Finished: {} by {} (held for {})\n",
            stamp(end),
            drill.finished_by.as_deref().unwrap_or("?"),
            humantime::format_duration(Duration::from_secs(
                end.saturating_sub(drill.started_ms) / 1000
            ))
        ));
    }
    out.push_str(&format!(
        "- Queue: {} at start, {} at most\n",
        drill.queue_at_start, drill.max_queue_depth
    ));
    match &drill.drain {
        Some(d) => out.push_str(&format!(
            "- Drain: {} messages, {} delivered, {} failed, {} still waiting; drain time {}\n- Probe delivered: {}\n",
            d.messages,
            d.delivered,
            d.failed,
            d.waiting,
            d.drain_ms.map_or("not finished".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            if drill.probe_id.is_none() { "no probe sent" } else if d.probe_delivered { "yes" } else { "NO" }
        )),
        None if drill.finished_ms.is_some() => out.push_str("- Drain: in progress\n"),
        None => out.push_str("- Drain: the drill is still running\n"),
    }
    if let Some(probe) = &drill.send_probe {
        out.push_str(&format!(
            "- Sending probe: from {} to {}: {}\n",
            probe.from,
            probe.to,
            match (&probe.queue_id, &probe.outcome) {
                (None, _) => "REFUSED (see problems)".to_string(),
                (Some(id), None) => format!("queued as {id}"),
                (Some(id), Some(outcome)) => format!("{outcome} (queue ID {id})"),
            }
        ));
    }
    out.push_str(&format!(
        "- Sent by users from the web reader during the drill: {}\n",
        drill.sent_by_users
    ));
    out.push_str("\n## Problems found\n\n");
    if drill.problems.is_empty() {
        out.push_str("None.\n");
    }
    for p in &drill.problems {
        out.push_str(&format!("- {p}\n"));
    }
    out.push_str("\n## Timeline\n\n");
    for (ms, what) in &drill.timeline {
        out.push_str(&format!("- {} {what}\n", stamp(*ms)));
    }
    out.push_str("\n## Self-check at start\n\n");
    if drill.self_check.is_empty() {
        out.push_str("(not available)\n");
    } else {
        out.push_str("```\n");
        out.push_str(&check::table(&drill.self_check));
        out.push_str("```\n");
    }
    out
}

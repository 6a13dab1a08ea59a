//! Accept loop: connection limits up front, one task per session, and a
//! graceful drain on shutdown.
//!
//! Limits are enforced before any SMTP is spoken, with a 421 so that a
//! well-behaved sender retries later instead of bouncing: a global semaphore
//! (`max_connections`), live counts per client IP (`max_connections_per_ip`)
//! and per /24 or /64 (`[limits] max_connections_per_network`), and the
//! connection rates of `[limits]`. DNS block lists are asked next, in the
//! session's own task so a slow DNSBL never holds up the accept loop.
//! On shutdown the listeners close first, idle sessions are told 421, and
//! sessions in the middle of a message get `shutdown_grace` to finish.
//!
//! Two kinds of exhaustion are planned for rather than discovered:
//! - *slots*: past 80 % of `max_connections` the listener declares stress
//!   and every idle session switches to the short `stress_timeout`, so a
//!   crowd of slow or silent clients (slowloris) drains within seconds and
//!   senders with mail get the slots (Postfix does the same);
//! - *file descriptors*: `max_connections` is lowered at start-up to what
//!   the open-file limit allows after a reserve for the spool, index,
//!   delivery and web, and one spare descriptor is kept so that even at
//!   EMFILE a client is told `421` instead of being left hanging in the
//!   kernel's backlog.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::session::{Session, SessionEnd};
use super::SmtpContext;
use crate::envelope::TlsInfo;
use crate::policy::limits::Event;

pub struct SmtpServer {
    listeners: Vec<TcpListener>,
    ctx: Arc<SmtpContext>,
    /// `max_connections` fitted to the fd limit, settled at bind so that
    /// "ready" is logged only after the limit has been raised.
    max_sessions: usize,
}

/// Connection pressure, shared with every session.
pub struct Stress {
    tx: watch::Sender<bool>,
}

impl Default for Stress {
    fn default() -> Self {
        Stress {
            tx: watch::Sender::new(false),
        }
    }
}

impl Stress {
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub fn is_on(&self) -> bool {
        *self.tx.borrow()
    }

    /// On at 80 % of the slots in use, off again at 50 % (hysteresis, so
    /// sessions are not re-timed on every connection).
    fn update(&self, in_use: usize, max: usize) {
        let on = *self.tx.borrow();
        if !on && in_use * 5 >= max * 4 {
            self.tx.send_replace(true);
            tracing::warn!(
                in_use,
                max,
                "smtp: connection slots nearly exhausted: stress mode on (short command timeout)"
            );
        } else if on && in_use * 2 <= max {
            self.tx.send_replace(false);
            tracing::info!(in_use, max, "smtp: stress mode off");
        }
    }
}

/// Descriptors kept back from sessions: spool segments and large bodies,
/// the sled index, listeners, web and admin connections, logs.
const FD_RESERVE: usize = 128;

/// How many sessions the open-file limit allows. The soft limit is first
/// raised to the hard one (as Go and nginx do); if that is still short of
/// `max_connections` plus the reserve, fewer sessions are allowed and the
/// log says so — refusing with 421 beats failing inside a session.
fn fd_budget(configured: usize, delivery_connections: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return configured;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let available = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let reserve = FD_RESERVE + delivery_connections;
    let allowed = available.saturating_sub(reserve).max(1);
    if allowed < configured {
        tracing::warn!(
            configured,
            allowed,
            open_file_limit = available,
            "smtp: max_connections lowered to fit the open-file limit (raise LimitNOFILE / ulimit -n)"
        );
        allowed
    } else {
        configured
    }
}

/// A session's places in the connection limits (global slot, per-IP and
/// per-network counts), given back as soon as the session has said its last
/// word: the session releases them *before* flushing `221` (or a closing
/// `421`), because a client such as `smtp-source -s 50` opens its next
/// connection the moment it reads 221 — released when the task ended, the
/// slot was still taken and that connection got `421 Too many connections`.
/// The task releases them too when it ends any other way.
#[derive(Clone)]
pub(crate) struct SlotRelease(Arc<Mutex<Option<Box<dyn Send>>>>);

impl SlotRelease {
    fn new(guards: Box<dyn Send>) -> SlotRelease {
        SlotRelease(Arc::new(Mutex::new(Some(guards))))
    }

    pub(crate) fn release(&self) {
        let guards = self.0.lock().expect("slot lock").take();
        drop(guards);
    }
}

/// At most one log line per second per kind of refusal at connect, with
/// how many were not logged: a flood must not become a log flood, and an
/// operator must still see who is refused.
struct RefusalLog {
    last: Mutex<HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl RefusalLog {
    fn new() -> RefusalLog {
        RefusalLog {
            last: Mutex::new(HashMap::new()),
        }
    }

    fn refused(&self, kind: &'static str, client: SocketAddr) {
        crate::metrics::get().rejected(kind);
        let mut last = self.last.lock().expect("refusal log lock");
        let now = std::time::Instant::now();
        let entry = last
            .entry(kind)
            .or_insert((now - std::time::Duration::from_secs(2), 0));
        if now.duration_since(entry.0) >= std::time::Duration::from_secs(1) {
            tracing::warn!(%client, limit = kind, not_logged = entry.1, "smtp: connection refused with 421");
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }
}

/// How many refusals may be answering at once; past that a refused client
/// gets its 421 only if the socket takes it at once (no task, no wait).
const MAX_REFUSING: usize = 256;

/// Live connection count per client address.
#[derive(Default)]
struct PerIpCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct PerIpGuard {
    counts: Arc<PerIpCounts>,
    ip: IpAddr,
}

impl PerIpCounts {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PerIpGuard> {
        let mut counts = self.counts.lock().expect("per-ip lock");
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().expect("per-ip lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl SmtpServer {
    pub async fn bind(ctx: SmtpContext) -> std::io::Result<SmtpServer> {
        let mut listeners = Vec::new();
        for addr in &ctx.config.listen {
            let listener = TcpListener::bind(addr).await.map_err(|err| {
                std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"))
            })?;
            listeners.push(listener);
        }
        let max_sessions = fd_budget(ctx.config.max_connections, ctx.delivery_connections);
        Ok(SmtpServer {
            listeners,
            ctx: Arc::new(ctx),
            max_sessions,
        })
    }

    /// The bound addresses (with the real port when the config said port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serve until `shutdown` turns true, then drain sessions.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let max = self.max_sessions;
        let slots = Arc::new(Semaphore::new(max));
        let per_ip = Arc::new(PerIpCounts::default());
        let per_network = Arc::new(PerIpCounts::default());
        let mut loops = Vec::new();
        for listener in self.listeners {
            loops.push(tokio::spawn(accept_loop(
                listener,
                self.ctx.clone(),
                slots.clone(),
                per_ip.clone(),
                per_network.clone(),
                max,
                shutdown.clone(),
            )));
        }
        for task in loops {
            let _ = task.await;
        }
        let grace = self.ctx.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, slots.acquire_many(max as u32)).await;
        if drained.is_err() {
            tracing::warn!(?grace, "smtp: sessions still running after the shutdown grace period; closing them (their messages were not acknowledged)");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<SmtpContext>,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIpCounts>,
    per_network: Arc<PerIpCounts>,
    max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut spare_fd = std::fs::File::open("/dev/null").ok();
    let refusals = RefusalLog::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let answer_refused =
        |stream: TcpStream, text: &'static str| match refusing.clone().try_acquire_owned() {
            Ok(permit) => {
                let hostname = ctx.hostname.clone();
                tokio::spawn(async move {
                    refuse(stream, hostname, text).await;
                    drop(permit);
                });
            }
            Err(_) => refuse_now_with(stream, &ctx.hostname, text),
        };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) if is_fd_exhaustion(&err) => {
                crate::metrics::get().rejected("fd_exhausted");
                tracing::error!(error = %err, "smtp: out of file descriptors; refusing connections with 421");
                // Free the spare, take the waiting client, tell it 421,
                // and take the spare back.
                drop(spare_fd.take());
                if let Ok((stream, _)) = listener.accept().await {
                    refuse_now(stream, &ctx.hostname);
                }
                if spare_fd.is_none() {
                    spare_fd = std::fs::File::open("/dev/null").ok();
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "smtp: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        crate::metrics::get().connections.inc();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refused("max_connections", peer);
            answer_refused(stream, "4.3.2 Too many connections, try again later");
            continue;
        };
        let Some(ip_slot) = per_ip.try_acquire(peer.ip(), ctx.config.max_connections_per_ip) else {
            refusals.refused("max_connections_per_ip", peer);
            answer_refused(stream, "4.7.0 Too many connections from your address");
            continue;
        };
        let allow_listed = ctx.checks.limits.is_allowed(peer.ip());
        let network_slot = if allow_listed {
            None
        } else {
            let network = crate::policy::limits::network_of(peer.ip());
            let Some(network_slot) =
                per_network.try_acquire(network, ctx.checks.limits.max_connections_per_network)
            else {
                refusals.refused("max_connections_per_network", peer);
                answer_refused(stream, "4.7.1 Too many connections from your network");
                continue;
            };
            if ctx
                .checks
                .limits
                .check(peer.ip(), Event::Connection)
                .is_err()
            {
                refusals.refused("connection_rate", peer);
                answer_refused(
                    stream,
                    "4.7.1 Too many connections from your address; try again later",
                );
                continue;
            }
            Some(network_slot)
        };
        ctx.stress.update(max - slots.available_permits(), max);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let slots = slots.clone();
        let release = SlotRelease::new(Box::new((slot, ip_slot, network_slot)));
        tokio::spawn(async move {
            let session_slots = release.clone();
            if let Err(err) = handle_connection(
                ctx.clone(),
                stream,
                peer,
                allow_listed,
                shutdown,
                session_slots,
            )
            .await
            {
                tracing::debug!(client = %peer, error = %err, "smtp: session ended with I/O error");
            }
            release.release();
            ctx.stress.update(max - slots.available_permits(), max);
        });
    }
}

fn is_fd_exhaustion(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// 421 without a task: the descriptor must be closed again at once.
fn refuse_now(stream: TcpStream, hostname: &str) {
    refuse_now_with(
        stream,
        hostname,
        "4.3.2 Too many open files, try again later",
    );
}

fn refuse_now_with(stream: TcpStream, hostname: &str, text: &str) {
    let line = format!("421 {text} ({hostname})\r\n");
    let _ = stream.try_write(line.as_bytes());
}

async fn refuse(mut stream: TcpStream, hostname: String, text: &'static str) {
    let line = format!("421 {text} ({hostname})\r\n");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn handle_connection(
    ctx: Arc<SmtpContext>,
    stream: TcpStream,
    peer: SocketAddr,
    allow_listed: bool,
    shutdown: watch::Receiver<bool>,
    slots: SlotRelease,
) -> std::io::Result<()> {
    let mut session = Session::new(ctx.clone(), stream, peer, None, shutdown.clone());
    session.allow_listed = allow_listed;
    session.slots = Some(slots.clone());
    if !allow_listed && !ctx.checks.dnsbls.is_empty() {
        if let Some((zone, answer)) = ctx.checks.dnsbls.listed(peer.ip()).await {
            crate::metrics::get().rejected("dnsbl");
            tracing::info!(client = %peer, zone, %answer, "smtp: client listed in DNSBL; refusing");
            session.blocked = Some(format!(
                "Service unavailable; client [{}] blocked using {zone}",
                peer.ip()
            ));
        }
    }
    session.greet().await?;
    let stream = match session.run().await? {
        SessionEnd::Closed => return Ok(()),
        SessionEnd::StartTls(stream) => stream,
    };
    let Some(acceptor) = ctx.tls.acceptor() else {
        return Ok(());
    };
    let handshake = tokio::time::timeout(ctx.config.command_timeout, acceptor.accept(stream)).await;
    let tls_stream = match handshake {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(err)) => {
            tracing::info!(client = %peer, error = %err, "smtp: TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            tracing::info!(client = %peer, "smtp: TLS handshake timed out");
            return Ok(());
        }
    };
    let (_, connection) = tls_stream.get_ref();
    let info = TlsInfo {
        version: connection
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace('_', "."),
        cipher: connection
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown")
            .to_string(),
    };
    // RFC 3207 4.2: the session starts over — no HELO, no transaction.
    let mut session = Session::new(ctx, tls_stream, peer, Some(info), shutdown);
    session.allow_listed = allow_listed;
    session.slots = Some(slots);
    session.run().await?;
    Ok(())
}

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
}

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
        Ok(SmtpServer {
            listeners,
            ctx: Arc::new(ctx),
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
        let max = self.ctx.config.max_connections;
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
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "smtp: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        crate::metrics::get().connections.inc();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "smtp: connection limit reached");
            tokio::spawn(refuse(
                stream,
                ctx.hostname.clone(),
                "4.3.2 Too many connections, try again later",
            ));
            continue;
        };
        let Some(ip_slot) = per_ip.try_acquire(peer.ip(), ctx.config.max_connections_per_ip) else {
            tracing::warn!(client = %peer, "smtp: per-IP connection limit reached");
            tokio::spawn(refuse(
                stream,
                ctx.hostname.clone(),
                "4.7.0 Too many connections from your address",
            ));
            continue;
        };
        let allow_listed = ctx.limits.is_allowed(peer.ip());
        let network_slot = if allow_listed {
            None
        } else {
            let network = crate::policy::limits::network_of(peer.ip());
            let Some(network_slot) =
                per_network.try_acquire(network, ctx.limits.max_connections_per_network)
            else {
                tracing::warn!(client = %peer, limit = "max_connections_per_network", "smtp: connection refused: limit reached");
                tokio::spawn(refuse(
                    stream,
                    ctx.hostname.clone(),
                    "4.7.1 Too many connections from your network",
                ));
                continue;
            };
            if let Err(limit) = ctx.limits.check(peer.ip(), Event::Connection) {
                crate::metrics::get().rejected("rate_limited");
                tracing::warn!(client = %peer, limit, "smtp: connection refused: rate limit");
                tokio::spawn(refuse(
                    stream,
                    ctx.hostname.clone(),
                    "4.7.1 Too many connections from your address; try again later",
                ));
                continue;
            }
            Some(network_slot)
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = handle_connection(ctx, stream, peer, allow_listed, shutdown).await {
                tracing::debug!(client = %peer, error = %err, "smtp: session ended with I/O error");
            }
            drop(network_slot);
            drop(ip_slot);
            drop(slot);
        });
    }
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
) -> std::io::Result<()> {
    let mut session = Session::new(ctx.clone(), stream, peer, None, shutdown.clone());
    session.allow_listed = allow_listed;
    if !allow_listed && !ctx.dnsbls.is_empty() {
        if let Some((zone, answer)) = ctx.dnsbls.listed(peer.ip()).await {
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
    session.run().await?;
    Ok(())
}

//! Delivery's use of the one SMTP client (`smtp_client`): one transaction
//! per message per upstream, with per-recipient results, over pooled
//! connections.
//!
//! Connections are pooled per (address, TLS policy) and reused for the next
//! message to the same upstream: with one connection per message the TCP and
//! TLS handshakes dominate the cost of relaying small messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_proto::EXT_REQUIRE_TLS;

use super::route::Target;
use crate::config::{DeliveryConfig, UpstreamTls};
pub use crate::smtp_client::SessionFailure;
use crate::smtp_client::{
    Dialer, Reply, Session, TlsClients, TlsPolicy, Transaction as Wire, TransactionError,
};

/// The result for one recipient of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Outcome {
        match reply {
            Reply::Accepted(text) => Outcome::Delivered(text),
            Reply::Transient(text) => Outcome::Deferred(text),
            Reply::Permanent(text) => Outcome::Failed(text),
        }
    }
}

/// A throttling reply ("too many connections/messages", 421) that should slow
/// the whole upstream down rather than just this message.
pub fn is_throttle(reply: &str) -> bool {
    let lower = reply.to_ascii_lowercase();
    reply.starts_with("421")
        || (reply.starts_with("4")
            && (lower.contains("too many")
                || lower.contains("rate limit")
                || lower.contains("throttl")))
}

/// Connections are only reused for the same address, the same TLS demands
/// and the same login (none, or the smart host's).
type PoolKey = (SocketAddr, TlsPolicy, bool);

pub struct Transport {
    dialer: Dialer,
    data_timeout: Duration,
    idle: Duration,
    reuse_check_timeout: Duration,
    pool: Mutex<HashMap<PoolKey, Vec<(Instant, Session)>>>,
    max_idle_per_target: usize,
}

/// What is being delivered in one transaction.
pub struct Transaction<'a> {
    pub envelope: &'a crate::envelope::Envelope,
    /// (index in the envelope, address)
    pub recipients: Vec<(usize, &'a crate::envelope::Recipient)>,
    /// Header fields added in front of the stored message (whole CRLF
    /// lines, none starting with "."), sent before `body` without a copy.
    pub prefix: &'a [u8],
    pub body: &'a [u8],
    /// The rest of a large message, still in its file.
    pub tail: Option<&'a crate::smtp_client::FileTail>,
    pub tls: UpstreamTls,
}

impl Transaction<'_> {
    /// The TLS the upstream must give: the domain's setting, raised to
    /// verified when the sender asked for REQUIRETLS (RFC 8689).
    /// An MTA-STS `enforce` policy for the target's domain raises it too.
    fn policy(&self, target: &Target) -> TlsPolicy {
        if self.envelope.requiretls || target.mta_sts {
            TlsPolicy::Verified
        } else {
            policy_for(self.tls)
        }
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            envelope: self.envelope,
            recipients: self.recipients.clone(),
            prefix: self.prefix,
            body: self.body,
            tail: self.tail,
        }
    }
}

/// What happened in one attempt against one target.
pub struct AttemptReport {
    pub outcomes: Vec<(usize, Outcome)>,
    pub tls: Option<String>,
}

/// A domain's `tls` setting as the SMTP client's policy.
fn policy_for(tls: UpstreamTls) -> TlsPolicy {
    match tls {
        UpstreamTls::Required => TlsPolicy::Verified,
        UpstreamTls::Opportunistic => TlsPolicy::Opportunistic,
        UpstreamTls::None => TlsPolicy::Never,
    }
}

/// Answers per recipient, as delivery outcomes.
fn outcomes(answers: Vec<(usize, Reply)>) -> Vec<(usize, Outcome)> {
    answers.into_iter().map(|(i, r)| (i, r.into())).collect()
}

impl Transport {
    pub fn new(config: &DeliveryConfig, helo_name: &str) -> Result<Transport, String> {
        let tls = TlsClients::for_delivery(config)?;
        Ok(Transport {
            dialer: Dialer::new(
                helo_name,
                config.connect_timeout,
                config.command_timeout,
                Arc::new(tls),
            ),
            data_timeout: config.data_timeout,
            idle: config.connection_idle,
            reuse_check_timeout: config.connect_timeout.min(Duration::from_secs(10)),
            pool: Mutex::new(HashMap::new()),
            max_idle_per_target: config.per_upstream,
        })
    }

    /// Run one transaction against one target, reusing a pooled connection
    /// when there is one.
    pub async fn deliver(
        &self,
        target: &Target,
        tx: &Transaction<'_>,
    ) -> Result<AttemptReport, SessionFailure> {
        let key = (target.addr, tx.policy(target), target.login.is_some());
        let wire = tx.wire();
        // A pooled session was opened for another message: when it lacks
        // REQUIRETLS, ask a fresh one (the upstream may offer it by now).
        let pooled = self
            .take_checked(&key)
            .await
            .filter(|session| !tx.envelope.requiretls || session.offers(EXT_REQUIRE_TLS));
        if let Some(mut session) = pooled {
            match session.transaction(&wire, self.data_timeout).await {
                Ok(answers) => {
                    let tls = session.tls.clone();
                    self.put_idle(key, session);
                    return Ok(AttemptReport {
                        outcomes: outcomes(answers),
                        tls,
                    });
                }
                // A pooled connection the server has since closed: not the
                // upstream's fault; start over on a fresh one.
                Err(TransactionError::BeforeMail(_)) => {}
                Err(TransactionError::Broken(answers)) => {
                    return Ok(AttemptReport {
                        outcomes: outcomes(answers),
                        tls: session.tls,
                    });
                }
            }
        }
        let mut session = self.dialer.open(&target.host, target.addr, key.1).await?;
        if let Some(login) = &target.login {
            session
                .authenticate(&login.username, &login.password)
                .await
                .map_err(SessionFailure::Broken)?;
        }
        match session.transaction(&wire, self.data_timeout).await {
            Ok(answers) => {
                let tls = session.tls.clone();
                self.put_idle(key, session);
                Ok(AttemptReport {
                    outcomes: outcomes(answers),
                    tls,
                })
            }
            Err(TransactionError::BeforeMail(why)) => Err(SessionFailure::Broken(why)),
            Err(TransactionError::Broken(answers)) => Ok(AttemptReport {
                outcomes: outcomes(answers),
                tls: session.tls,
            }),
        }
    }

    /// Connect + EHLO (+ STARTTLS) + QUIT: is the upstream taking connections?
    pub async fn probe(&self, target: &Target, tls: UpstreamTls) -> Result<(), SessionFailure> {
        let policy = match target.mta_sts {
            true => TlsPolicy::Verified,
            false => policy_for(tls),
        };
        self.dialer.probe(&target.host, target.addr, policy).await
    }

    /// A pooled connection that still answers `RSET` within the reuse
    /// check's short timeout (Postfix checks a cached connection the same
    /// way): one that went silent when the upstream did costs seconds, not
    /// `command_timeout`, and is dropped.
    async fn take_checked(&self, key: &PoolKey) -> Option<Session> {
        while let Some(mut session) = self.take_idle(key) {
            let answer =
                tokio::time::timeout(self.reuse_check_timeout, session.command("RSET\r\n")).await;
            if matches!(answer, Ok(Ok(ref reply)) if reply.code == 250) {
                return Some(session);
            }
            tracing::info!(target = %key.0, "delivery: pooled connection did not answer RSET; dropped");
        }
        None
    }

    /// Forget every pooled connection (the upstream was declared down or
    /// came back: connections from before are not to be trusted).
    pub fn clear_pool(&self) {
        self.pool.lock().expect("pool lock").clear();
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Session> {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.get_mut(key)?;
        while let Some((since, session)) = idle.pop() {
            if since.elapsed() < self.idle {
                return Some(session);
            }
        }
        None
    }

    fn put_idle(&self, key: PoolKey, session: Session) {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.entry(key).or_default();
        idle.retain(|(since, _)| since.elapsed() < self.idle);
        if idle.len() < self.max_idle_per_target {
            idle.push((Instant::now(), session));
        }
    }
}

//! INTAKE: the inbound SMTP server (RFC 5321 + ESMTP extensions).
//!
//! - `listener`: accepts connections under a global semaphore and a per-IP
//!   cap, and drains sessions on shutdown (the mini-redis shape);
//! - `session`: one task per connection — line reading, pipelined replies,
//!   timeouts, the error budget, and dispatch to one file per verb
//!   (`ehlo`, `mail`, `rcpt`, `data`, `starttls`);
//! - `body`: DATA/BDAT framing and the smuggling/line/loop checks;
//! - `tls`: the STARTTLS certificate.
//!
//! The session talks to the rest of the program through a few narrow
//! doors: the [`policy`](crate::policy) (client limits and DNSBLs at
//! connect, rates at MAIL, the recipient decision — list or callout — at
//! RCPT), the [`trust`](crate::trust) checks (SPF at MAIL, DKIM/DMARC and the
//! lure score at end of data), and the [`Spool`](crate::spool::Spool). A 250
//! after data is sent only once the spool says the message is on disk.

pub mod body;
mod data;
mod ehlo;
pub mod listener;
mod mail;
mod rcpt;
mod session;
mod starttls;

use std::sync::{Arc, RwLock};

use crate::config::SmtpConfig;
use crate::policy::RecipientPolicy;
use crate::spool::Spool;

pub use listener::SmtpServer;

/// What every session shares. Cheap to clone (all handles).
#[derive(Clone)]
pub struct SmtpContext {
    pub hostname: String,
    pub config: Arc<SmtpConfig>,
    pub spool: Spool,
    pub policy: Arc<RwLock<Arc<RecipientPolicy>>>,
    pub tls: crate::tls::TlsHandle,
    /// What intake checks on clients and their mail.
    pub checks: IntakeChecks,
    /// Is an upstream down or a drill running right now? Set once the
    /// delivery side exists; lures score higher during an outage.
    pub outage: Arc<std::sync::OnceLock<OutageProbe>>,
    /// Connection pressure (see `listener`).
    pub stress: Arc<listener::Stress>,
    /// Upstream connections delivery may hold open, kept out of the
    /// descriptor budget for sessions.
    pub delivery_connections: usize,
}

pub type OutageProbe = Box<dyn Fn() -> bool + Send + Sync>;

/// The checks intake runs (policy and trust), built once at start-up.
#[derive(Clone)]
pub struct IntakeChecks {
    pub trust: Arc<crate::config::TrustConfig>,
    /// Outage-lure scoring at intake (`[trust] lure_scoring`).
    pub lure: Option<Arc<crate::trust::lure::LureContext>>,
    /// SPF/DKIM/DMARC/ARC (`[trust] authenticate`).
    pub auth: Option<Arc<crate::trust::auth::Authenticator>>,
    /// Present when some domain has `verify_recipients = "callout"`.
    pub callout: Option<Arc<crate::policy::callout::Callout>>,
    /// Rates and connection caps per address and per network.
    pub limits: Arc<crate::policy::limits::ClientLimits>,
    pub dnsbls: Arc<crate::policy::dnsbl::Dnsbls>,
}

impl SmtpContext {
    fn policy(&self) -> Arc<RecipientPolicy> {
        self.policy.read().expect("policy lock").clone()
    }

    fn in_outage(&self) -> bool {
        self.outage.get().is_some_and(|probe| probe())
    }
}

//! The composition root: opens the spool, builds the policy and TLS, binds the
//! listeners, and runs them until told to stop. `breakwater serve` and the
//! integration tests both start Breakwater through [`Server::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::delivery::{DeliveryEngine, DeliveryError, DeliveryHandle};
use crate::drill::Drills;
use crate::policy::RecipientPolicy;
use crate::smtp::{IntakeChecks, SmtpContext, SmtpServer};
use crate::spool::Spool;
use crate::tls::{self, TlsHandle};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot open spool {dir}: {source}")]
    Spool {
        dir: PathBuf,
        source: crate::spool::SpoolError,
    },
    #[error("{0}")]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("{0}")]
    Trust(String),
    #[error("{0}")]
    Dkim(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A running Breakwater.
pub struct Server {
    pub smtp_addrs: Vec<SocketAddr>,
    /// The admin API address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The web reader's address, when enabled.
    pub web_addr: Option<SocketAddr>,
    pub spool: Spool,
    policy: Arc<RwLock<Arc<RecipientPolicy>>>,
    tls: TlsHandle,
    config: Config,
    shutdown: watch::Sender<bool>,
    smtp_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    web_task: Option<JoinHandle<()>>,
    delivery: Option<DeliveryEngine>,
    /// Spool upkeep (compaction), stopped before the spool closes.
    maintenance: JoinHandle<()>,
    security: Arc<crate::security_events::SecurityEvents>,
}

impl Server {
    /// Start every stage, in the order mail flows: spool, intake, delivery,
    /// then the services that steer and watch them (audit, drills, admin
    /// API, web reader, outage monitor, certificate watcher).
    pub async fn start(config: Config) -> Result<Server, StartError> {
        // A bad DKIM key stops the start with its config key named, not
        // the first message a user sends.
        let dkim_keys = crate::dkim::load_configured(&config).map_err(StartError::Dkim)?;
        let tls = TlsHandle::new(load_tls(&config)?);
        let policy = Arc::new(RwLock::new(Arc::new(RecipientPolicy::load(&config)?)));
        let (spool, cluster) = open_spool(&config).await?;
        let outage = Arc::new(std::sync::OnceLock::new());
        let smtp = SmtpServer::bind(smtp_context(&config, &spool, &policy, &tls, &outage)?).await?;
        let smtp_addrs = smtp.local_addrs();
        for addr in &smtp_addrs {
            tracing::info!(%addr, "smtp listening");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let delivery = start_delivery(&config, &spool, &shutdown_rx).await?;
        let handle = delivery.as_ref().map(|engine| engine.handle().clone());
        // One audit log for the admin API and the web pages: one hash chain.
        let audit = Arc::new(crate::audit::AuditLog::open(
            &config.admin.audit_log,
            config.admin.audit_max_bytes,
            config.admin.audit_keep,
        )?);
        let security = crate::security_events::SecurityEvents::new(&config, audit.clone());
        tokio::spawn(crate::security_events::watch(
            security.clone(),
            config.clone(),
            shutdown_rx.clone(),
        ));
        let outbox = Arc::new(crate::sending::Outbox::new(
            &config,
            spool.clone(),
            dkim_keys,
        ));
        let drills = Drills::open(
            &config,
            spool.clone(),
            handle.clone(),
            audit.clone(),
            smtp_addrs[0],
            outbox.clone(),
        )?;
        let _ = outage.set(outage_probe(handle.clone(), drills.clone()));
        // /readyz reports the SMTP listeners down once their accept loops end.
        let (smtp_up, smtp_up_rx) = watch::channel(true);
        let admin = crate::admin::AdminState {
            outbox: outbox.clone(),
            spool: spool.clone(),
            delivery: handle.clone(),
            tokens: crate::api_tokens::TokenStore::new(&config.admin.tokens_file),
            audit: audit.clone(),
            security: security.clone(),
            drills: drills.clone(),
            smtp_ready: smtp_up_rx,
        };
        let (admin_addr, admin_task) = start_admin(&config, admin, &shutdown_rx).await?;
        // CLI changes made while no server answered on the admin socket.
        tokio::spawn(crate::local_changes::record_pending_until(
            config.admin.audit_log.clone(),
            audit.clone(),
            config.admin.audit_verify_interval,
            shutdown_rx.clone(),
        ));
        let web = crate::web::WebState::new(
            config.web.clone(),
            spool.clone(),
            handle.clone(),
            audit,
            security.clone(),
            Some(drills),
            &config.web.search_index_dir(&config.spool),
        );
        let web = web.with_outbox(outbox);
        let (web_addr, web_task) = start_web(&config, web, &shutdown_rx).await?;
        if config.alerts.enabled {
            tokio::spawn(crate::monitor::run(
                config.clone(),
                spool.clone(),
                handle.clone(),
                user_notices(&config, handle),
                cluster.clone(),
                shutdown_rx.clone(),
            ));
        }
        if config.smtp.tls_cert.exists() {
            tokio::spawn(watch_certificate(
                config.clone(),
                tls.clone(),
                shutdown_rx.clone(),
            ));
        }
        let maintenance = tokio::spawn({
            let (spool, every, stop) = (
                spool.clone(),
                config.spool.compact_interval,
                shutdown_rx.clone(),
            );
            async move { spool.maintain_until(every, stop).await }
        });
        let smtp_task = tokio::spawn(async move {
            smtp.run(shutdown_rx).await;
            let _ = smtp_up.send(false);
        });
        Ok(Server {
            smtp_addrs,
            admin_addr,
            web_addr,
            spool,
            policy,
            tls,
            config,
            shutdown,
            smtp_task,
            admin_task,
            web_task,
            delivery,
            maintenance,
            security,
        })
    }

    /// SIGHUP: re-read recipient lists and the certificate without dropping
    /// connections. On any error the old state stays in force.
    pub fn reload(&self, config: &Config) {
        let waiting = self.config.restart_needed(config);
        self.security.raise(crate::security_events::SecurityEvent {
            kind: crate::security_events::EventKind::ConfigReloaded,
            subject: "configuration".into(),
            actor: "SIGHUP".into(),
            ip: "local".into(),
            detail: if waiting.is_empty() {
                "recipient lists and certificate re-read".into()
            } else {
                format!("re-read; waiting for a restart: {}", waiting.join(", "))
            },
        });
        if !waiting.is_empty() {
            tracing::warn!(
                settings = %waiting.join(", "),
                "reload: these settings changed but take effect only after a restart"
            );
        }
        match RecipientPolicy::load(config) {
            Ok(policy) => {
                *self.policy.write().expect("policy lock") = Arc::new(policy);
                tracing::info!(
                    domains = config.domains.len(),
                    "reload: recipient policy reloaded"
                );
            }
            Err(err) => {
                tracing::error!(error = %err, "reload: keeping the previous recipient policy")
            }
        }
        match load_tls(config) {
            Ok(Some(acceptor)) => {
                self.tls.replace(acceptor);
                tracing::info!("reload: TLS certificate reloaded");
            }
            Ok(None) => {}
            Err(err) => {
                tracing::error!(error = %err, "reload: keeping the previous TLS certificate")
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The delivery engine's handle (hold/release upstreams, status), when enabled.
    pub fn delivery(&self) -> Option<&DeliveryHandle> {
        self.delivery.as_ref().map(DeliveryEngine::handle)
    }

    /// Stop accepting, let sessions finish (bounded by `shutdown_grace`),
    /// then flush and close the spool.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.smtp_task.await;
        if let Some(admin) = self.admin_task {
            let _ = admin.await;
        }
        if let Some(web) = self.web_task {
            let _ = web.await;
        }
        if let Some(delivery) = self.delivery {
            delivery.join(self.config.smtp.shutdown_grace).await;
        }
        let _ = self.maintenance.await;
        self.spool.close().await;
        tracing::info!("shutdown complete");
    }
}

/// The spool, opened and recovered (the start-up log line says what it
/// found); in cluster mode the local spool behind the replication to the
/// database.
async fn open_spool(
    config: &Config,
) -> Result<(Spool, Option<crate::cluster::ClusterHandle>), StartError> {
    let (spool, report, cluster) = match &config.cluster {
        None => {
            let (spool, report) =
                Spool::open(&config.spool).map_err(|source| StartError::Spool {
                    dir: config.spool.dir.clone(),
                    source,
                })?;
            (spool, report, None)
        }
        Some(cluster) => {
            let (spool, report, handle) = crate::cluster::open(config, cluster).await?;
            (spool, report, Some(handle))
        }
    };
    tracing::info!(
        messages = report.messages,
        segments = report.segments,
        records_replayed = report.records,
        from_checkpoint = report.from_checkpoint,
        dir = %config.spool.dir.display(),
        "spool open"
    );
    crate::metrics::get()
        .spool_min_free_bytes
        .set(i64::try_from(config.spool.min_free.as_u64()).unwrap_or(i64::MAX));
    Ok((spool, cluster))
}

/// What intake needs: its settings, the spool, the recipient policy, TLS
/// and the checks it runs (authentication, lure score, callouts, rate
/// limits, DNSBLs). `outage` is filled in once delivery and the drills
/// exist (the banner and lure scoring ask whether an outage is on).
fn smtp_context(
    config: &Config,
    spool: &Spool,
    policy: &Arc<RwLock<Arc<RecipientPolicy>>>,
    tls: &TlsHandle,
    outage: &Arc<std::sync::OnceLock<crate::smtp::OutageProbe>>,
) -> Result<SmtpContext, StartError> {
    let auth = if config.trust.authenticate {
        Some(Arc::new(
            crate::trust::auth::Authenticator::new(config).map_err(StartError::Trust)?,
        ))
    } else {
        None
    };
    let uses_callout = config
        .domains
        .iter()
        .any(|d| d.verify_recipients == crate::config::RecipientCheck::Callout);
    let callout = uses_callout.then(|| {
        Arc::new(crate::policy::callout::Callout::open(
            &config.callout,
            &config.hostname,
        ))
    });
    let dnsbl_resolver = if config.dnsbls.is_empty() {
        None
    } else {
        Some(crate::dns::build_resolver(&config.dns).map_err(StartError::Trust)?)
    };
    Ok(SmtpContext {
        hostname: config.hostname.clone(),
        config: Arc::new(config.smtp.clone()),
        spool: spool.clone(),
        policy: policy.clone(),
        tls: tls.clone(),
        checks: IntakeChecks {
            lure: config.trust.lure_scoring.then(|| {
                Arc::new(crate::trust::lure::LureContext {
                    own_domains: config.domains.iter().map(|d| d.name.clone()).collect(),
                    recent_domains: config.trust.recent_domains.clone(),
                })
            }),
            auth,
            trust: Arc::new(config.trust.clone()),
            callout,
            limits: Arc::new(crate::policy::limits::ClientLimits::new(&config.limits)),
            dnsbls: Arc::new(crate::policy::dnsbl::Dnsbls::new(
                config.dnsbls.clone(),
                dnsbl_resolver,
                config.trust.dns_timeout,
            )),
        },
        outage: outage.clone(),
        stress: Default::default(),
        delivery_connections: if config.delivery.enabled {
            config.delivery.concurrency
        } else {
            0
        },
    })
}

async fn start_delivery(
    config: &Config,
    spool: &Spool,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<DeliveryEngine>, StartError> {
    if !config.delivery.enabled {
        tracing::warn!("delivery disabled: messages stay in the spool");
        return Ok(None);
    }
    Ok(Some(
        DeliveryEngine::start(config, spool.clone(), shutdown.clone()).await?,
    ))
}

/// Is an outage on, as intake sees it: a drill running, or an upstream
/// not up?
fn outage_probe(delivery: Option<DeliveryHandle>, drills: Arc<Drills>) -> crate::smtp::OutageProbe {
    Box::new(move || {
        drills.current().is_some()
            || delivery
                .as_ref()
                .is_some_and(|d| d.status().iter().any(|u| u.state != "up"))
    })
}

type Started = (Option<SocketAddr>, Option<JoinHandle<()>>);

async fn start_admin(
    config: &Config,
    state: crate::admin::AdminState,
    shutdown: &watch::Receiver<bool>,
) -> Result<Started, StartError> {
    if !config.admin.enabled {
        return Ok((None, None));
    }
    let (addr, task) =
        crate::admin::serve(&config.admin, Arc::new(state), shutdown.clone()).await?;
    tracing::info!(%addr, "admin listening");
    Ok((Some(addr), Some(task)))
}

async fn start_web(
    config: &Config,
    state: crate::web::WebState,
    shutdown: &watch::Receiver<bool>,
) -> Result<Started, StartError> {
    if !config.web.enabled {
        return Ok((None, None));
    }
    let (addr, task) = crate::web::serve(Arc::new(state), shutdown.clone()).await?;
    tracing::info!(%addr, https = config.web.tls_cert.is_some(), "web listening");
    Ok((Some(addr), Some(task)))
}

/// For the monitor: the users whose mail goes to an upstream that just
/// went down, with their notice webhook (from the web accounts).
fn user_notices(config: &Config, delivery: Option<DeliveryHandle>) -> crate::monitor::UserNotices {
    let accounts = crate::accounts::Accounts::new(&config.web.users_file);
    Box::new(move |upstream| {
        let Some(router) = &delivery else {
            return Vec::new();
        };
        accounts
            .snapshot()
            .values()
            .filter(|a| !a.disabled)
            .filter_map(|a| {
                let url = a.notify_webhook.clone()?;
                a.addresses()
                    .filter_map(|addr| addr.rsplit_once('@'))
                    .any(|(_, domain)| router.upstream_for(domain) == upstream)
                    .then(|| (a.address.clone(), url))
            })
            .collect()
    })
}

/// Certificate files replaced by certbot/lego are picked up without a
/// SIGHUP; a certificate close to expiry is logged daily and exported as
/// `breakwater_tls_certificate_expiry_seconds`.
async fn watch_certificate(config: Config, tls: TlsHandle, mut shutdown: watch::Receiver<bool>) {
    let smtp = &config.smtp;
    let stamp = || {
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(&smtp.tls_cert), modified(&smtp.tls_key))
    };
    let mut last = stamp();
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        if let Ok(expiry) = tls::not_after(&smtp.tls_cert) {
            let left = (expiry - time::OffsetDateTime::now_utc()).whole_seconds();
            crate::metrics::get().tls_expiry_seconds.set(left as f64);
            let day = std::time::Duration::from_secs(86_400);
            if left < 14 * 86_400 && last_warning.is_none_or(|t| t.elapsed() >= day) {
                tracing::warn!(cert = %smtp.tls_cert.display(), days_left = left / 86_400, "TLS certificate expires within 14 days");
                last_warning = Some(std::time::Instant::now());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(smtp.tls_reload_check) => {}
            _ = shutdown.changed() => return,
        }
        let now = stamp();
        if now != last {
            last = now;
            match tls::load_acceptor(&smtp.tls_cert, &smtp.tls_key) {
                Ok(acceptor) => {
                    tls.replace(acceptor);
                    tracing::info!(cert = %smtp.tls_cert.display(), "TLS certificate changed on disk; reloaded");
                }
                // Half-written renewal (key and cert not matching yet): try again next time.
                Err(err) => {
                    tracing::warn!(error = %err, "TLS certificate changed but does not load yet; keeping the previous one")
                }
            }
        }
    }
}

fn load_tls(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, tls::TlsError> {
    let smtp = &config.smtp;
    if smtp.tls_generate_if_missing
        && tls::ensure_dev_certificate(&smtp.tls_cert, &smtp.tls_key, &config.hostname)?
    {
        tracing::warn!(cert = %smtp.tls_cert.display(), "generated a self-signed development certificate; install a real one for production");
    }
    if !smtp.tls_cert.exists() && !smtp.tls_key.exists() {
        tracing::warn!("no TLS certificate configured: STARTTLS will not be offered");
        return Ok(None);
    }
    tls::load_acceptor(&smtp.tls_cert, &smtp.tls_key).map(Some)
}

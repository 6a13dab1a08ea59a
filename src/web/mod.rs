//! WEB: the reader end users open during an outage, and the admin pages.
//!
//! Server-rendered HTML (maud), one small script and one stylesheet embedded
//! in the binary: it must work with no CDN, no cloud login and no fonts from
//! anywhere. It only reads and steers the spool through the Spool API and the
//! delivery handle, like the admin API does.
//!
//! Security posture, because outages are when phishing peaks:
//! - local accounts (argon2id), TOTP required for admins and enrolled at
//!   their first sign-in, recovery codes (`account`), lockouts (`session`);
//! - "confirm it's you" before destructive or account-changing actions (`reauth`);
//! - sessions are server-side; cookies `HttpOnly; SameSite=Strict` (+`Secure`);
//! - every POST carries the session's CSRF token, and cross-site fetches
//!   (`Sec-Fetch-Site: cross-site`) are refused outright;
//! - every message ID is checked against the signed-in user on every request
//!   (a foreign ID answers 404, exactly like a missing one);
//! - a strict CSP on every page; mail HTML is sanitised (ammonia) and shown
//!   in a sandboxed frame whose own CSP is `default-src 'none'` (`render`);
//! - sign-ins, failures, lockouts, views, downloads and admin actions go to
//!   the shared, hash-chained audit log.

// Handlers return `Result<_, Response>` so an early error page is one `?`
// away; the large Err is built at most once per request.
#![allow(clippy::result_large_err)]

mod account;
mod admin_pages;
mod compose;
pub mod i18n;
mod login;
mod mailbox;
mod pages;
mod reauth;
mod redirect;
pub mod render;
mod search;
mod sent;
pub mod session;
mod summaries;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accounts::totp::SecondFactor;
use crate::accounts::{Account, Accounts};
use crate::audit::AuditLog;
use crate::config::WebConfig;
use crate::delivery::DeliveryHandle;
use crate::spool::Spool;
use i18n::Lang;
use session::{Session, Sessions, Throttle};

/// Everything the handlers share.
pub struct WebState {
    pub config: WebConfig,
    pub spool: Spool,
    pub delivery: Option<DeliveryHandle>,
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub second_factor: SecondFactor,
    pub audit: Arc<AuditLog>,
    /// Lockouts, sprays and admin sign-ins from new addresses are raised here.
    pub security: Arc<crate::security_events::SecurityEvents>,
    /// Failover drills (banner, admin pages), when the server runs them.
    pub drills: Option<Arc<crate::drill::Drills>>,
    /// Users' own mail during an outage (`[send]`); None: no sending.
    pub outbox: Option<Arc<crate::sending::Outbox>>,
    summaries: summaries::SummaryCache,
    /// The mailbox search index; None when it could not be opened (searches
    /// then scan the mailbox).
    search: Option<Arc<search::SearchIndex>>,
    offset: time::UtcOffset,
}

impl WebState {
    /// What the reader shows: every node's mail in a cluster, this node's
    /// otherwise (`spool::View`).
    pub fn mail(&self) -> crate::spool::View {
        self.spool.everywhere()
    }

    pub fn new(
        config: WebConfig,
        spool: Spool,
        delivery: Option<DeliveryHandle>,
        audit: Arc<AuditLog>,
        security: Arc<crate::security_events::SecurityEvents>,
        drills: Option<Arc<crate::drill::Drills>>,
        search_dir: &std::path::Path,
    ) -> WebState {
        // Without the web reader nobody searches: no index, no follower.
        let search = match config
            .enabled
            .then(|| search::SearchIndex::open(search_dir))
        {
            None => None,
            Some(Ok(index)) => Some(Arc::new(index)),
            Some(Err(err)) => {
                tracing::error!(dir = %search_dir.display(), error = %err, "web: no search index; searches scan each mailbox");
                None
            }
        };
        WebState {
            search,
            accounts: Accounts::new(&config.users_file),
            sessions: Sessions::new(
                config.session_idle,
                config.session_max,
                config.reauth_window,
            ),
            throttle: Throttle::new(
                config.lockout_failures,
                config.lockout_ip_failures,
                config.lockout_window,
                config.lockout_duration,
            ),
            second_factor: SecondFactor::new(),
            summaries: summaries::SummaryCache::default(),
            offset: crate::config::parse_utc_offset(&config.utc_offset)
                .unwrap_or(time::UtcOffset::UTC),
            config,
            spool,
            delivery,
            audit,
            security,
            drills,
            outbox: None,
        }
    }

    /// Let users send (`[send] mode` decides when).
    pub fn with_outbox(mut self, outbox: Arc<crate::sending::Outbox>) -> WebState {
        self.outbox = Some(outbox);
        self
    }

    /// `[web] admin_networks`: may admin pages and admin sign-ins come
    /// from `ip`? (Always, when no networks are set.)
    pub fn admin_network_allows(&self, ip: &str) -> bool {
        let networks = &self.config.admin_networks;
        networks.is_empty()
            || ip
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| networks.iter().any(|net| net.contains(&ip)))
    }

    /// Write an audit line; a failure is logged, never shown to the user.
    fn audit(&self, actor: &str, ip: &str, action: &str, target: &str, result: &str) {
        if let Err(err) = self.audit.record(actor, ip, action, target, result) {
            tracing::error!(error = %err, action, "web: cannot write the audit log");
        }
    }
}

type Shared = Arc<WebState>;

/// The route table (a test walks it to check that each one needs a session).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/login"),
    ("post", "/login"),
    ("get", "/login/totp"),
    ("post", "/login/totp"),
    ("get", "/login/enrol"),
    ("post", "/login/enrol"),
    ("post", "/logout"),
    ("get", "/account"),
    ("post", "/account/totp"),
    ("post", "/account/totp/confirm"),
    ("post", "/account/recovery-codes"),
    ("get", "/lang/{code}"),
    ("get", "/static/app.css"),
    ("get", "/static/app.js"),
    ("get", "/mail"),
    ("get", "/mail/compose"),
    ("post", "/mail/send"),
    ("get", "/mail/sent"),
    ("get", "/mail/{id}"),
    ("get", "/mail/{id}/body"),
    ("get", "/mail/{id}/part/{index}"),
    ("get", "/mail/{id}/source"),
    ("get", "/admin"),
    ("get", "/admin/message/{id}"),
    ("post", "/admin/message/{id}/action"),
    ("get", "/admin/upstreams"),
    ("post", "/admin/upstreams/{name}/action"),
    ("post", "/admin/sending"),
    ("get", "/admin/audit"),
    ("get", "/admin/sessions"),
    ("get", "/admin/drills"),
    ("get", "/admin/drills/{id}"),
    ("post", "/admin/sessions/revoke"),
];

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/mail") }))
        .route("/login", get(login::form).post(login::submit))
        .route(
            "/login/totp",
            get(login::totp_form).post(login::totp_submit),
        )
        .route(
            "/login/enrol",
            get(account::first_form).post(account::first_submit),
        )
        .route("/logout", post(login::logout))
        .route("/account", get(account::security_page))
        .route("/account/totp", post(account::start_enrolment))
        .route("/account/totp/confirm", post(account::confirm_enrolment))
        .route("/account/recovery-codes", post(account::new_recovery_codes))
        .route("/lang/{code}", get(pages::switch_language))
        .route("/static/app.css", get(pages::stylesheet))
        .route("/static/app.js", get(pages::script))
        .route("/mail", get(mailbox::list))
        .route("/mail/compose", get(compose::form))
        .route(
            "/mail/send",
            // Room for `[send] max_message_size` of attachments (checked
            // again as they arrive) and the form's text.
            post(compose::send).layer(axum::extract::DefaultBodyLimit::max(
                state
                    .outbox
                    .as_ref()
                    .map_or(0, |o| o.config().max_message_size.as_u64() as usize)
                    + 1024 * 1024,
            )),
        )
        .route("/mail/sent", get(sent::list))
        .route("/mail/{id}", get(mailbox::show))
        .route("/mail/{id}/body", get(mailbox::body_frame))
        .route("/mail/{id}/part/{index}", get(mailbox::download))
        .route("/mail/{id}/source", get(mailbox::source))
        .route("/admin", get(admin_pages::spool))
        .route("/admin/message/{id}", get(admin_pages::message))
        .route(
            "/admin/message/{id}/action",
            post(admin_pages::message_action),
        )
        .route("/admin/upstreams", get(admin_pages::upstreams))
        .route(
            "/admin/upstreams/{name}/action",
            post(admin_pages::upstream_action),
        )
        .route("/admin/sending", post(admin_pages::sending_action))
        .route("/admin/audit", get(admin_pages::audit))
        .route("/admin/sessions", get(admin_pages::sessions))
        .route("/admin/drills", get(admin_pages::drills))
        .route("/admin/drills/{id}", get(admin_pages::drill_report))
        .route("/admin/sessions/revoke", post(admin_pages::revoke_session))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every response gets unless the handler set its own (the mail
/// frame sets a stricter CSP and allows being framed by our own pages).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let defaults: [(header::HeaderName, &str); 5] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Bind the web listener and serve (HTTPS when `[web] tls_cert` is set)
/// until `shutdown` turns true.
pub async fn serve(
    state: Shared,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let config = &state.config;
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {} (web): {e}", config.listen),
        )
    })?;
    let addr = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::load_acceptor_for_http(cert, key)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        ),
        _ => None,
    };
    let max_connections = config.max_connections;
    let follower = state.search.as_ref().map(|index| {
        tokio::spawn(search::follow(
            index.clone(),
            state.spool.clone(),
            shutdown.clone(),
        ))
    });
    let app = router(state);
    let listener = tokio::spawn(crate::http_listener::serve(
        "web",
        listener,
        tls,
        app,
        max_connections,
        shutdown,
    ));
    // Done when both are: the follower's last commit (and its index
    // writer's lock) belongs to this run, not to the next start.
    let task = tokio::spawn(async move {
        let _ = listener.await;
        if let Some(follower) = follower {
            let _ = follower.await;
        }
    });
    Ok((addr, task))
}

/// The client's address for lockouts and the audit log. Behind a reverse
/// proxy listed in `[web] trusted_proxies`, the last address that proxy
/// appended to `X-Forwarded-For`; otherwise the TCP peer. (Without this, every
/// user would share the proxy's address and one attacker could lock them all.)
fn client_ip(parts: &Parts, config: &WebConfig) -> String {
    let Some(peer) = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return "unknown".to_string();
    };
    if config.trusted_proxies.contains(&peer) {
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
            .next_back();
        if let Some(ip) = forwarded {
            return ip.to_string();
        }
    }
    peer.to_string()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn language(headers: &HeaderMap, config: &WebConfig) -> Lang {
    cookie(headers, i18n::LANG_COOKIE)
        .and_then(Lang::from_code)
        .or_else(|| {
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(Lang::from_accept_language)
        })
        .or_else(|| Lang::from_code(&config.default_language))
        .unwrap_or(Lang::En)
}

/// Who is asking, before sign-in: language and address.
pub struct Visitor {
    pub lang: Lang,
    pub ip: String,
    pub user_agent: String,
}

impl FromRequestParts<Shared> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        Ok(Visitor {
            lang: language(&parts.headers, &state.config),
            ip: client_ip(parts, &state.config),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        })
    }
}

/// A signed-in user with a full (password + second factor where required) session.
pub struct Viewer {
    pub account: Account,
    pub session: Session,
    pub lang: Lang,
    pub ip: String,
    /// The request comes from `[web] admin_networks` (or none are set).
    pub from_admin_network: bool,
}

impl Viewer {
    pub fn require_admin(&self) -> Result<(), Response> {
        if self.account.admin && self.from_admin_network {
            Ok(())
        } else if self.account.admin {
            Err(pages::error_page(
                self.lang,
                StatusCode::FORBIDDEN,
                "error.admin_network",
            ))
        } else {
            Err(pages::error_page(
                self.lang,
                StatusCode::FORBIDDEN,
                "error.forbidden",
            ))
        }
    }
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        let lang = language(&parts.headers, &state.config);
        match signed_in(state, &parts.headers) {
            Some((session, account)) => {
                let ip = client_ip(parts, &state.config);
                Ok(Viewer {
                    account,
                    session,
                    lang,
                    from_admin_network: state.admin_network_allows(&ip),
                    ip,
                })
            }
            _ if parts.method == Method::GET => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/mail", |p| p.as_str())
                    .to_string();
                let target = format!("/login?next={}", pages::url_encode(&next));
                Err(Redirect::to(&target).into_response())
            }
            _ => Err(pages::error_page(
                lang,
                StatusCode::UNAUTHORIZED,
                "error.csrf",
            )),
        }
    }
}

/// The full session in the request's cookie and its account, if both are
/// still good (not expired, revoked, disabled or older than a password change).
fn signed_in(state: &WebState, headers: &HeaderMap) -> Option<(Session, Account)> {
    let session = cookie(headers, session::COOKIE)
        .and_then(|id| state.sessions.touch(id))
        .filter(|s| s.full)?;
    let account = state
        .accounts
        .get(&session.user)
        .filter(|a| !a.disabled && session.created_ms >= a.sessions_valid_after_ms)?;
    Some((session, account))
}

/// CSRF defence for every POST: the session's token in the form, and no
/// cross-site fetch at all.
fn check_csrf(headers: &HeaderMap, expected: &str, given: &str) -> bool {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    !cross_site && crate::secrets::same_secret(expected, given)
}

fn set_cookie(config: &WebConfig, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if config.cookies_secure() {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).expect("cookie is ASCII")
}

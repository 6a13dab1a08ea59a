//! ADMIN: the operator's side of the spool — a JSON HTTP API (axum) on its
//! own address, the Prometheus endpoint, health checks, and the audit log.
//!
//! Everything goes through the Spool API and the delivery handle, so the
//! admin side can never do to a message what the engine itself could not.
//! Routes are listed in `docs/openapi.yaml`; a test keeps the two in step.
//!
//! Auth: `Authorization: Bearer <token>`; `viewer` may GET, `admin` may also
//! POST. `/healthz`, `/readyz` and `/metrics` need no token (the admin port
//! listens on loopback by default; put it behind your monitoring network).
//! On the local Unix socket (`[admin] socket`) the kernel's peer
//! credentials stand in for the token: see `local`.

mod drill;
mod local;
mod queue;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api_tokens::{Role, TokenStore};
use crate::config::AdminConfig;
use crate::delivery::DeliveryHandle;
use crate::spool::Spool;

/// Everything the handlers share.
pub struct AdminState {
    pub spool: Spool,
    pub delivery: Option<DeliveryHandle>,
    pub tokens: TokenStore,
    pub audit: Arc<crate::audit::AuditLog>,
    /// Token first uses, new addresses and refused tokens are raised here.
    pub security: Arc<crate::security_events::SecurityEvents>,
    pub drills: Arc<crate::drill::Drills>,
    /// Users' mail during an outage: the stop switch.
    pub outbox: Arc<crate::sending::Outbox>,
    /// True while the SMTP accept loops run (for /readyz).
    pub smtp_ready: watch::Receiver<bool>,
}

/// An API error with its status and a clear message.
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::spool::SpoolError> for ApiError {
    fn from(err: crate::spool::SpoolError) -> ApiError {
        ApiError::internal(err)
    }
}

/// The authenticated caller.
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub ip: String,
    /// Came in over the local socket (root or the service user).
    pub local: bool,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} is a viewer token; this needs an admin token",
                    self.name
                ),
            ))
        }
    }
}

impl FromRequestParts<Arc<AdminState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Caller, ApiError> {
        // Admitted by `local::gate` before any handler runs.
        if let Some(peer) = parts.extensions.get::<crate::http_listener::LocalPeer>() {
            return Ok(local::caller(peer));
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string());
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token (Authorization: Bearer …)".into(),
                )
            })?;
        use crate::api_tokens::{Novelty, Verdict};
        use crate::security_events::{EventKind, SecurityEvent};
        let event = |kind, name: &str, detail: String| SecurityEvent {
            kind,
            subject: name.to_string(),
            actor: format!("token {name}"),
            ip: ip.clone(),
            detail,
        };
        match state.tokens.check(token.trim(), &ip) {
            Verdict::Valid {
                name,
                role,
                novelty,
            } => {
                match novelty {
                    Some(Novelty::FirstUse) => state.security.raise(event(
                        EventKind::TokenFirstUse,
                        &name,
                        format!("{} {}", parts.method, parts.uri.path()),
                    )),
                    Some(Novelty::NewAddress) => state.security.raise(event(
                        EventKind::TokenNewAddress,
                        &name,
                        format!("{} {}", parts.method, parts.uri.path()),
                    )),
                    None => {}
                }
                Ok(Caller {
                    name,
                    role,
                    ip,
                    local: false,
                })
            }
            Verdict::Refused { name, why } => {
                state.security.raise_at_most_every(
                    &format!("token-refused:{name}:{ip}"),
                    std::time::Duration::from_secs(600),
                    event(
                        EventKind::TokenRefused,
                        &name,
                        format!(
                            "{why} token presented for {} {}",
                            parts.method,
                            parts.uri.path()
                        ),
                    ),
                );
                Err(ApiError(
                    StatusCode::UNAUTHORIZED,
                    format!("token {name:?} is {why}"),
                ))
            }
            Verdict::Unknown => Err(ApiError(StatusCode::UNAUTHORIZED, "unknown token".into())),
        }
    }
}

/// The route table; `docs/openapi.yaml` must list every one of these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/queue"),
    ("get", "/api/v1/queue/shape"),
    ("get", "/api/v1/queue/{id}"),
    ("get", "/api/v1/queue/{id}/raw"),
    ("post", "/api/v1/queue/actions"),
    ("get", "/api/v1/upstreams"),
    ("post", "/api/v1/upstreams/{name}/{action}"),
    ("get", "/api/v1/soft-bounce"),
    ("post", "/api/v1/soft-bounce"),
    ("get", "/api/v1/audit"),
    ("post", "/api/v1/drills/start"),
    ("get", "/api/v1/drills/current"),
    ("post", "/api/v1/drills/finish"),
    ("get", "/api/v1/drills"),
    ("get", "/api/v1/drills/{id}"),
    ("post", "/api/v1/local-changes"),
    ("get", "/api/v1/sending"),
    ("post", "/api/v1/sending"),
];

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/queue", get(queue::list))
        .route("/api/v1/queue/shape", get(queue::shape))
        .route("/api/v1/queue/{id}", get(queue::show))
        .route("/api/v1/queue/{id}/raw", get(queue::raw))
        .route("/api/v1/queue/actions", post(queue::actions))
        .route("/api/v1/upstreams", get(queue::upstreams))
        .route(
            "/api/v1/upstreams/{name}/{action}",
            post(queue::upstream_action),
        )
        .route(
            "/api/v1/soft-bounce",
            get(queue::soft_bounce).post(queue::set_soft_bounce),
        )
        .route("/api/v1/audit", get(queue::audit))
        .route("/api/v1/drills/start", post(drill::start))
        .route("/api/v1/drills/current", get(drill::status))
        .route("/api/v1/drills/finish", post(drill::finish))
        .route("/api/v1/drills", get(drill::list))
        .route("/api/v1/drills/{id}", get(drill::show))
        .route("/api/v1/local-changes", post(local::record_change))
        .route(
            "/api/v1/sending",
            get(queue::sending).post(queue::set_sending),
        )
        .with_state(state)
}

/// Bind the admin listener (and the local socket, if configured) and
/// serve until `shutdown` turns true; the socket file is removed after.
pub async fn serve(
    config: &AdminConfig,
    state: Arc<AdminState>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {} (admin): {e}", config.listen),
        )
    })?;
    let addr = listener.local_addr()?;
    let local = match config.socket_path() {
        Some(path) => {
            let socket = local::bind(path)?;
            tracing::info!(path = %path.display(), "admin socket listening");
            let app = router(state.clone()).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                local::gate,
            ));
            let served = tokio::spawn(crate::http_listener::serve(
                "admin-socket",
                socket,
                None,
                app,
                config.max_connections,
                shutdown.clone(),
            ));
            Some((path.to_path_buf(), served))
        }
        None => None,
    };
    let network = tokio::spawn(crate::http_listener::serve(
        "admin",
        listener,
        None,
        router(state),
        config.max_connections,
        shutdown,
    ));
    let task = tokio::spawn(async move {
        let _ = network.await;
        if let Some((path, served)) = local {
            let _ = served.await;
            let _ = std::fs::remove_file(path);
        }
    });
    Ok((addr, task))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let listening = *state.smtp_ready.borrow();
    let probe = state.spool.probe_writable().await;
    match (listening, probe) {
        (true, Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "smtp listeners not up\n").into_response(),
        (_, Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("spool not writable: {err}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let metrics = crate::metrics::get();
    queue::refresh_gauges(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

//! The admin API on a local Unix socket, as Postfix's `postqueue` talks
//! to the master: `breakwater queue list`, `drill start` or `upstream
//! hold` work on the server right after installation, with no token.
//!
//! Who may use it is decided twice: the file system (the socket is mode
//! 0660, owned by the user `serve` runs as) and the kernel's word on the
//! peer (`SO_PEERCRED`), which a client cannot forge: root and the service
//! user get the admin role, named `local:<user>` in the audit log; anyone
//! else who got through the file permissions (a member of the socket's
//! group) is refused with 403, and that is a security event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::net::UnixListener;

use super::{AdminState, ApiError, Caller};
use crate::http_listener::LocalPeer;
use crate::local_changes::{user_name, LocalChange};
use crate::security_events::{EventKind, SecurityEvent};

/// Bind the socket at `path`: a socket file left by a server that died is
/// replaced, one a live server answers on is not, anything else there is
/// an error naming the path.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let named = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {} (admin socket): {e}", path.display()),
        )
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(named(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something that is not a socket is in the way",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(named(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another server answers on it",
            )));
        }
        std::fs::remove_file(path).map_err(named)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir_durable(dir).map_err(named)?;
    }
    let listener = UnixListener::bind(path).map_err(named)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(named)?;
    Ok(listener)
}

/// May this peer use the socket? Root, and the user this server runs as.
fn allowed(peer: &LocalPeer) -> bool {
    peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw()
}

/// Middleware on every route of the socket's router (health and metrics
/// too): a refused peer gets 403 and nothing else.
pub async fn gate(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let Some(peer) = request.extensions().get::<LocalPeer>().copied() else {
        return next.run(request).await;
    };
    if allowed(&peer) {
        return next.run(request).await;
    }
    let who = user_name(peer.uid);
    let service = user_name(nix::unistd::geteuid().as_raw());
    state.security.raise_at_most_every(
        &format!("local-refused:{}", peer.uid),
        Duration::from_secs(600),
        SecurityEvent {
            kind: EventKind::LocalAccessRefused,
            subject: who.clone(),
            actor: format!("local:{who}"),
            ip: "local".into(),
            detail: format!(
                "uid {} (pid {}) tried {} {} on the admin socket",
                peer.uid,
                peer.pid.map_or("?".into(), |p| p.to_string()),
                request.method(),
                request.uri().path()
            ),
        },
    );
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": format!(
            "local user {who} (uid {}) may not use the admin socket: only root and {service}, the user breakwater runs as",
            peer.uid
        ) })),
    )
        .into_response()
}

/// The caller behind an admitted local peer.
pub fn caller(peer: &LocalPeer) -> Caller {
    Caller {
        name: format!("local:{}", user_name(peer.uid)),
        role: crate::api_tokens::Role::Admin,
        ip: "local".into(),
        local: true,
    }
}

/// `POST /api/v1/local-changes`: the CLI reports an account or token
/// change it made, and the server records it in the audit log under the
/// peer's name (the only writer of the hash chain). Local peers only: a
/// token holder elsewhere has not touched this machine's files.
pub async fn record_change(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    Json(change): Json<LocalChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !caller.local {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "local changes are reported over the admin socket only".into(),
        ));
    }
    change.check().map_err(ApiError::bad_request)?;
    let entry = state
        .audit
        .record(
            &caller.name,
            &caller.ip,
            &change.action,
            &change.target,
            &change.result,
        )
        .map_err(ApiError::internal)?;
    tracing::info!(actor = %caller.name, action = %change.action, target = %change.target, "audit: local change recorded");
    Ok(Json(json!({ "recorded": true, "ts_ms": entry.ts_ms })))
}

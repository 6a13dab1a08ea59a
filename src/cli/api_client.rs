//! The CLI's way to the running server (as `postqueue` talks to the master
//! instead of touching queue files): the admin API, over the local socket
//! `[admin] socket` when the CLI runs on the server (no token: the kernel
//! vouches for who is asking), or over HTTP with `BREAKWATER_TOKEN` or the
//! token file written by `breakwater token create --save`. A token in the
//! environment wins: it is the operator saying which identity to use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::local_changes::LocalChange;

/// How long one request may take, end to end.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

pub struct ApiClient {
    route: Route,
}

enum Route {
    Socket(PathBuf),
    Network {
        base: String,
        token: String,
        agent: ureq::Agent,
    },
}

impl ApiClient {
    pub fn from_config(config: &Config) -> Result<ApiClient, String> {
        let from_env = std::env::var("BREAKWATER_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if from_env.is_none() {
            if let Some(socket) = socket_to_try(config) {
                return Ok(ApiClient::over_socket(socket));
            }
        }
        let token = match from_env {
            Some(token) => token,
            None => std::fs::read_to_string(&config.admin.cli_token_file)
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    let socket = config.admin.socket_path().map_or(String::new(), |p| {
                        format!("no admin socket at {} (is `breakwater serve` running on this machine?) and ", p.display())
                    });
                    format!(
                        "{socket}no API token: set BREAKWATER_TOKEN or run `breakwater token create --name NAME --role admin --save` ({}: {e})",
                        config.admin.cli_token_file.display()
                    )
                })?,
        };
        let mut addr = config.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // One connection per request: the CLI makes few, and a connection
            // the server closed after an early 4xx must never be reused.
            .max_idle_connections(0)
            .timeout_global(Some(REQUEST_LIMIT))
            .build()
            .into();
        Ok(ApiClient {
            route: Route::Network {
                base: format!("http://{addr}"),
                token,
                agent,
            },
        })
    }

    pub fn over_socket(path: &Path) -> ApiClient {
        ApiClient {
            route: Route::Socket(path.to_path_buf()),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.call("GET", path, None)?;
        parse(status, &body)
    }

    pub fn get_raw(&self, path: &str) -> Result<Vec<u8>, String> {
        let (status, body) = self.call("GET", path, None)?;
        if status != 200 {
            return Err(describe(status, &String::from_utf8_lossy(&body)));
        }
        Ok(body)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let (status, answer) = self.call("POST", path, Some(body))?;
        parse(status, &answer)
    }

    /// One request: (status, body).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), String> {
        match &self.route {
            Route::Socket(socket) => over_unix_socket(socket, method, path, body),
            Route::Network { base, token, agent } => {
                let url = format!("{base}{path}");
                let bearer = format!("Bearer {token}");
                let sent = match body {
                    Some(body) => agent
                        .post(&url)
                        .header("Authorization", &bearer)
                        .send_json(body),
                    None => agent.get(&url).header("Authorization", &bearer).call(),
                };
                let mut response = sent.map_err(|e| {
                    format!("cannot reach the admin API at {base}: {e} (is `breakwater serve` running with [admin] enabled?)")
                })?;
                let status = response.status().as_u16();
                let body = response
                    .body_mut()
                    .read_to_vec()
                    .map_err(|e| e.to_string())?;
                Ok((status, body))
            }
        }
    }
}

/// The admin socket, if there is one to try: it exists, or this user may
/// not even look (then connecting says "permission denied", which is the
/// answer this user needs, not "no token").
fn socket_to_try(config: &Config) -> Option<&Path> {
    config
        .admin
        .socket_path()
        .filter(|path| path.try_exists().unwrap_or(true))
}

/// HTTP/1.1 over the Unix socket, with hyper on a throwaway runtime (ureq
/// speaks TCP only; the CLI makes a handful of requests per run).
fn over_unix_socket(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the CLI's I/O runtime: {e}"))?;
    let shown = socket.display();
    runtime.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "{shown}: permission denied: the admin socket is for root and the user breakwater runs as (sudo?), or use an API token (BREAKWATER_TOKEN)"
            ),
            _ => format!("no server answers on the admin socket {shown}: {e} (is `breakwater serve` running?)"),
        })?;
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let payload = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(payload)))
                .expect("a well-formed request");
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body.to_vec()))
        };
        match tokio::time::timeout(REQUEST_LIMIT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(format!("the admin socket {shown} broke off: {err}")),
            Err(_) => Err(format!("no answer on the admin socket {shown} within {REQUEST_LIMIT:?}")),
        }
    })
}

fn parse(status: u16, body: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Err(describe(status, &text));
    }
    serde_json::from_str(&text).map_err(|e| format!("bad answer from the server: {e}"))
}

fn describe(status: u16, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    match status {
        401 => format!("the server refused the token (401): {message}"),
        403 => format!("not allowed (403): {message}"),
        _ => format!("server answered {status}: {message}"),
    }
}

/// Put a change this CLI made to the accounts or tokens into the audit
/// log: through the server on the local socket, which records it under
/// this user's name; when no server takes it, into the pending file the
/// server records at its next start. Says so on stderr when it is pending,
/// and loudly when it could be neither.
pub fn record_local_change(config: &Config, action: &str, target: &str, result: &str) {
    let change = LocalChange::new(action, target, result);
    let told = match socket_to_try(config) {
        Some(socket) => serde_json::to_value(&change)
            .map_err(|e| e.to_string())
            .and_then(|body| ApiClient::over_socket(socket).post("/api/v1/local-changes", &body)),
        None => Err("the server is not running (no admin socket)".into()),
    };
    let Err(why) = told else { return };
    match crate::local_changes::append_pending(&config.admin.audit_log, &change) {
        Ok(pending) => eprintln!(
            "note: {why}; the change is kept in {} and goes into the audit log when `breakwater serve` next starts",
            pending.display()
        ),
        Err(err) => eprintln!(
            "breakwater: WARNING: this change is not in the audit log: {why}, and {}: {err}",
            crate::local_changes::pending_path(&config.admin.audit_log).display()
        ),
    }
}

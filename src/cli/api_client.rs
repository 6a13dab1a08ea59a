//! The CLI's way to the running server: the admin HTTP API, found from the
//! configuration, authenticated with `BREAKWATER_TOKEN` or the token file
//! written by `breakwater token create --save` (as `postqueue` talks to the
//! master instead of touching queue files).

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn from_config(config: &Config) -> Result<ApiClient, String> {
        let mut addr = config.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let token = match std::env::var("BREAKWATER_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
            _ => std::fs::read_to_string(&config.admin.cli_token_file)
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    format!(
                        "no API token: set BREAKWATER_TOKEN or run `breakwater token create --name NAME --role admin --save` ({}: {e})",
                        config.admin.cli_token_file.display()
                    )
                })?,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // One connection per request: the CLI makes few, and a connection
            // the server closed after an early 4xx must never be reused.
            .max_idle_connections(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(ApiClient {
            base: format!("http://{addr}"),
            token,
            agent,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(response)
    }

    pub fn get_raw(&self, path: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(describe(status, &String::from_utf8_lossy(&body)));
        }
        Ok(body)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(response)
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, String> {
        let mut response = response.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(describe(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| format!("bad answer from the server: {e}"))
    }

    fn unreachable(&self, err: ureq::Error) -> String {
        format!("cannot reach the admin API at {}: {err} (is `breakwater serve` running with [admin] enabled?)", self.base)
    }
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

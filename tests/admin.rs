//! The admin API over real HTTP against the real server with a populated
//! spool, the `breakwater queue` CLI against a live binary, metrics and the
//! audit chain.

mod common;

use std::time::Duration;

use breakwater::api_tokens::{self as auth, Role};
use breakwater::server::Server;
use common::*;
use serde_json::{json, Value};

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            base: format!("http://{}", server.admin_addr.expect("admin enabled")),
            // A fresh connection per request: after an early error response
            // (401/403 before the body is read) the server may close the
            // connection, and reusing it would race with that close.
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_idle_connections(0)
                .build()
                .into(),
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let mut response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .send_json(&body)
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// A server with 12 messages: 10 to example.com (one with subject "invoice"),
/// 2 to listed.example; delivery disabled so they stay.
fn populated() -> (Fixture, tokio::runtime::Runtime, Server, String, String) {
    let fixture = Fixture::new();
    let admin = auth::create(&fixture.config.admin.tokens_file, "ops", Role::Admin, None).unwrap();
    let viewer =
        auth::create(&fixture.config.admin.tokens_file, "noc", Role::Viewer, None).unwrap();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO admin.test", 250);
    for i in 0..10 {
        let subject = if i == 3 {
            "Your invoice 42".to_string()
        } else {
            format!("message {i}")
        };
        let r = c.send_mail(
            &format!("s{i}@remote.test"),
            &[&format!("u{i}@example.com")],
            format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
        );
        assert_eq!(r.code, 250);
    }
    for i in 0..2 {
        let r = c.send_mail(
            "x@remote.test",
            &["alice@listed.example"],
            format!("Subject: listed {i}\r\n\r\nbody\r\n").as_bytes(),
        );
        assert_eq!(r.code, 250);
    }
    (fixture, rt, server, admin, viewer)
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn auth_roles_and_errors() {
    let (_f, rt, server, admin, viewer) = populated();
    let api = Api::new(&server);
    assert_eq!(api.get("/api/v1/queue", None).0, 401);
    assert_eq!(api.get("/api/v1/queue", Some("bw_nonsense")).0, 401);
    assert_eq!(api.get("/api/v1/queue", Some(&viewer)).0, 200);
    let (status, body) = api.post(
        "/api/v1/queue/actions",
        &viewer,
        json!({"action": "delete", "filter": {"domain": "example.com"}}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(server.spool.len(), 12, "viewer deleted mail");
    // Bad input is a 400 with a message that says what is wrong.
    let (status, body) = api.get("/api/v1/queue/not-an-id", Some(&viewer));
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("not a queue ID"),
        "{body}"
    );
    let (status, _) = api.get(
        &format!(
            "/api/v1/queue/{}",
            breakwater::envelope::QueueId::generate()
        ),
        Some(&viewer),
    );
    assert_eq!(status, 404);
    let (status, body) = api.get("/api/v1/queue?status=lost", Some(&viewer));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("status"), "{body}");
    let (status, body) = api.get("/api/v1/queue?older_than=soon", Some(&viewer));
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.get("/api/v1/queue?bogus=1", Some(&viewer));
    assert_eq!(status, 400);
    let (status, body) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "explode", "ids": []}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "delete", "filter": {}}),
    );
    assert_eq!(
        status, 400,
        "empty filter must not match everything: {body}"
    );
    // Health needs no token.
    assert_eq!(api.get("/healthz", None).0, 200);
    assert_eq!(api.get("/readyz", None).0, 200);
    rt.block_on(server.shutdown());
}

#[test]
fn list_filters_pagination_show_raw_and_shape() {
    let (_f, rt, server, _admin, viewer) = populated();
    let api = Api::new(&server);
    let v = Some(viewer.as_str());
    let (_, all) = api.get("/api/v1/queue?limit=1000", v);
    assert_eq!(ids(&all).len(), 12);
    assert!(all["next"].is_null());
    // Pages of 5: stable and complete even while new mail arrives.
    let (_, first) = api.get("/api/v1/queue?limit=5", v);
    let mut seen = ids(&first);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO late.test", 250);
    assert_eq!(
        c.send_mail(
            "late@remote.test",
            &["late@example.com"],
            b"Subject: late\r\n\r\nx\r\n"
        )
        .code,
        250
    );
    let mut next = first["next"].as_str().map(str::to_string);
    while let Some(cursor) = next {
        let (_, page) = api.get(&format!("/api/v1/queue?limit=5&after={cursor}"), v);
        seen.extend(ids(&page));
        next = page["next"].as_str().map(str::to_string);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no duplicates across pages");
    assert_eq!(seen.len(), 13, "the late message appears on a later page");
    assert_eq!(seen, sorted, "oldest first");

    assert_eq!(
        ids(&api.get("/api/v1/queue?domain=listed.example", v).1).len(),
        2
    );
    assert_eq!(
        ids(&api.get("/api/v1/queue?recipient=U3@EXAMPLE.COM", v).1).len(),
        1
    );
    assert_eq!(
        ids(&api.get("/api/v1/queue?sender=x@remote.test", v).1).len(),
        2
    );
    assert_eq!(ids(&api.get("/api/v1/queue?subject=INVOICE", v).1).len(), 1);
    assert_eq!(ids(&api.get("/api/v1/queue?status=queued", v).1).len(), 13);
    assert_eq!(ids(&api.get("/api/v1/queue?status=held", v).1).len(), 0);
    assert_eq!(ids(&api.get("/api/v1/queue?older_than=1h", v).1).len(), 0);
    assert_eq!(ids(&api.get("/api/v1/queue?newer_than=1h", v).1).len(), 13);

    let id = &ids(&api.get("/api/v1/queue?subject=invoice", v).1)[0];
    let (status, shown) = api.get(&format!("/api/v1/queue/{id}"), v);
    assert_eq!(status, 200);
    assert_eq!(shown["envelope"]["sender"], "s3@remote.test");
    assert!(shown["headers"]
        .as_str()
        .unwrap()
        .contains("Subject: Your invoice 42"));
    assert_eq!(shown["state"]["recipients"][0]["status"], "queued");
    let (status, raw) = api.get(&format!("/api/v1/queue/{id}/raw"), v);
    assert_eq!(status, 200);
    assert!(raw.as_str().unwrap().starts_with("Received: "));

    let (_, shape) = api.get("/api/v1/queue/shape", v);
    assert_eq!(shape["buckets"][0], "0-5m");
    assert_eq!(shape["total"][0], 13);
    assert_eq!(shape["domains"]["example.com"][0], 11);
    assert_eq!(shape["domains"]["listed.example"][0], 2);

    // The raw download was audited.
    let (_, audit) = api.get("/api/v1/audit?action=download", v);
    assert_eq!(audit["entries"][0]["actor"], "noc");
    assert_eq!(audit["entries"][0]["target"], id.as_str());
    rt.block_on(server.shutdown());
}

#[test]
fn bulk_actions_with_dry_run_and_audit_chain() {
    let (fixture, rt, server, admin, _viewer) = populated();
    let api = Api::new(&server);
    let hold_listed =
        json!({"action": "hold", "filter": {"domain": "listed.example"}, "dry_run": true});
    let (status, dry) = api.post("/api/v1/queue/actions", &admin, hold_listed);
    assert_eq!((status, dry["matched"].as_u64()), (200, Some(2)));
    assert_eq!(
        ids(&api.get("/api/v1/queue?status=held", Some(&admin)).1).len(),
        0,
        "dry run changed nothing"
    );
    let (_, done) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "hold", "filter": {"domain": "listed.example"}}),
    );
    assert_eq!(done["done"], 2);
    let held = ids(&api.get("/api/v1/queue?status=held", Some(&admin)).1);
    assert_eq!(held.len(), 2);
    let (_, done) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "release", "ids": [held[0]]}),
    );
    assert_eq!(done["done"], 1);
    assert_eq!(
        ids(&api.get("/api/v1/queue?status=held", Some(&admin)).1).len(),
        1
    );
    let victims = ids(&api.get("/api/v1/queue?subject=invoice", Some(&admin)).1);
    let (_, done) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "delete", "ids": victims}),
    );
    assert_eq!(done["done"], 1);
    assert_eq!(server.spool.len(), 11);
    let (_, done) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "retry", "ids": [breakwater::envelope::QueueId::generate().to_string()]}),
    );
    assert_eq!(done["failed"][0]["error"], "not in the spool");
    let (_, done) = api.post("/api/v1/queue/actions", &admin, json!({"action": "requeue", "route": "127.0.0.1:2599", "filter": {"domain": "listed.example"}}));
    assert_eq!(done["done"], 2);
    let requeued = ids(&api
        .get("/api/v1/queue?domain=listed.example", Some(&admin))
        .1);
    let (_, shown) = api.get(&format!("/api/v1/queue/{}", requeued[0]), Some(&admin));
    assert_eq!(shown["state"]["route"], "127.0.0.1:2599");
    let (status, _) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "requeue", "route": "nowhere", "ids": requeued}),
    );
    assert_eq!(status, 400);

    let (_, audit) = api.get("/api/v1/audit?actor=ops", Some(&admin));
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["hold", "release", "delete", "retry", "requeue"]);
    rt.block_on(server.shutdown());

    let log = &fixture.config.admin.audit_log;
    let text = std::fs::read_to_string(log).unwrap();
    // The five actions, and the token's first use (a security event).
    assert_eq!(breakwater::audit::verify(log).unwrap(), 6, "{text}");
    assert!(text.contains("\"security:token-first-use\""), "{text}");
    std::fs::write(log, text.replacen("\"hold\"", "\"noop\"", 1)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["audit", "verify", "--file"])
        .arg(log)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chain broken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_move_when_mail_flows() {
    let (_f, rt, server, _admin, _viewer) = populated();
    let api = Api::new(&server);
    let scrape = || api.get("/metrics", None).1.as_str().unwrap().to_string();
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let before = scrape();
    assert!(
        before.contains("# TYPE breakwater_messages_accepted counter"),
        "{before}"
    );
    assert_eq!(
        value(&before, "breakwater_queue_messages{status=\"queued\"}"),
        12.0
    );
    let accepted = value(&before, "breakwater_messages_accepted_total");
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO m.test", 250);
    assert_eq!(
        c.send_mail(
            "m@remote.test",
            &["m@example.com"],
            b"Subject: m\r\n\r\nx\r\n"
        )
        .code,
        250
    );
    c.expect("MAIL FROM:<m@remote.test>", 250);
    c.expect("RCPT TO:<m@elsewhere.test>", 550);
    let after = scrape();
    // Counters are process-wide (other tests in this binary add to them): they must grow.
    assert!(
        value(&after, "breakwater_messages_accepted_total") >= accepted + 1.0,
        "{after}"
    );
    assert!(
        value(
            &after,
            "breakwater_messages_rejected_total{reason=\"relay_denied\"}"
        ) >= 1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "breakwater_queue_messages{status=\"queued\"}"),
        13.0
    );
    assert!(
        value(&after, "breakwater_spool_fsync_seconds_count") > 0.0,
        "{after}"
    );
    assert!(
        value(&after, "breakwater_smtp_acceptance_seconds_count") > 0.0,
        "{after}"
    );
    assert!(after.contains("breakwater_queue_oldest_message_age_seconds"));
    rt.block_on(server.shutdown());
}

#[test]
fn openapi_documents_every_route() {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    for (method, path) in breakwater::admin::ROUTES {
        let at = spec
            .find(&format!("  {path}:\n"))
            .unwrap_or_else(|| panic!("{path} missing from docs/openapi.yaml"));
        let section = &spec[at..];
        let end = section[1..].find("\n  /").map_or(section.len(), |e| e + 1);
        assert!(
            section[..end].contains(&format!("    {method}:")),
            "{method} {path} missing from docs/openapi.yaml"
        );
    }
    // And nothing documented that does not exist.
    let documented = spec
        .lines()
        .filter(|l| l.starts_with("  /") && l.ends_with(':'))
        .count();
    let paths: std::collections::BTreeSet<&str> =
        breakwater::admin::ROUTES.iter().map(|(_, p)| *p).collect();
    assert_eq!(documented, paths.len());
}

#[test]
fn queue_cli_against_a_live_server() {
    let mut fixture = Fixture::new();
    fixture.config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let config_path = fixture.write_config();
    let bin = env!("CARGO_BIN_EXE_breakwater");
    let run = |args: &[&str], stdin: Option<&str>, env_token: Option<&str>| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .arg("--config")
            .arg(&config_path)
            .env_remove("BREAKWATER_TOKEN");
        if let Some(token) = env_token {
            cmd.env("BREAKWATER_TOKEN", token);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No server yet: a clear error.
    let (ok, _, err) = run(&["queue", "list"], None, Some("bw_x"));
    assert!(!ok && err.contains("cannot reach the admin API"), "{err}");
    let (ok, token, err) = run(
        &[
            "token", "create", "--name", "ops", "--role", "admin", "--save",
        ],
        None,
        None,
    );
    assert!(ok, "{err}");
    assert!(token.trim().starts_with("bw_"));

    let server = BinaryServer::start(&config_path);
    let admin_addr = server
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("admin listening addr=")
                .nth(1)
                .map(|a| a.trim().to_string())
        })
        .expect("admin address in log");
    // The CLI finds the API from the config: point the config at the real port.
    let mut live = fixture.config.clone();
    live.admin.listen = admin_addr.parse().unwrap();
    std::fs::write(&config_path, live.to_toml()).unwrap();

    let mut c = RawClient::greeted(server.addr);
    c.expect("EHLO cli.test", 250);
    let mut queued = Vec::new();
    for i in 0..3 {
        let r = c.send_mail(
            "s@remote.test",
            &[&format!("u{i}@example.com")],
            format!("Subject: cli {i}\r\n\r\nx\r\n").as_bytes(),
        );
        queued.push(queue_id(&r).to_string());
    }
    let (ok, table, err) = run(&["queue", "list"], None, None);
    assert!(ok, "{err}");
    assert!(
        table.contains(&queued[0])
            && table.contains("u2@example.com")
            && table.contains("3 messages"),
        "{table}"
    );
    let (ok, lines, _) = run(&["queue", "list", "--json"], None, None);
    assert!(ok);
    assert_eq!(lines.lines().count(), 3);
    assert!(lines
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_ok()));
    // Bulk from stdin.
    let (ok, out, err) = run(
        &["queue", "hold", "-"],
        Some(&format!("{}\n{}\n", queued[0], queued[1])),
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("2 matched, 2 done"), "{out}");
    let (_, held, _) = run(&["queue", "list", "--status", "held", "--json"], None, None);
    assert_eq!(held.lines().count(), 2);
    // Filter actions ask first; --dry-run only counts; --yes goes ahead.
    let (ok, out, _) = run(
        &["queue", "release", "--status", "held", "--dry-run"],
        None,
        None,
    );
    assert!(ok && out.contains("would affect 2"), "{out}");
    let (ok, _, err) = run(
        &["queue", "delete", "--domain", "example.com"],
        Some("n\n"),
        None,
    );
    assert!(!ok && err.contains("cancelled"), "{err}");
    let (ok, out, err) = run(
        &["queue", "delete", "--domain", "example.com", "--yes"],
        None,
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("3 matched, 3 done"), "{out}");
    let (ok, out, _) = run(&["queue", "shape"], None, None);
    assert!(ok && out.contains("TOTAL"), "{out}");
    // Right-aligned numbers: every line of the table is equally wide.
    let widths: Vec<usize> = out.lines().map(|l| l.chars().count()).collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "{out}");
    // --json everywhere: the shape, an action's result, a dry run.
    let (ok, out, _) = run(&["queue", "shape", "--json"], None, None);
    assert!(ok, "{out}");
    assert!(
        serde_json::from_str::<Value>(&out).unwrap()["total"].is_array(),
        "{out}"
    );
    let (ok, out, err) = run(
        &[
            "--json",
            "queue",
            "retry",
            "--domain",
            "example.com",
            "--dry-run",
        ],
        None,
        None,
    );
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["dry_run"], true, "{out}");
    assert_eq!(answer["matched"], 0, "{out}");
    // A wrong token is refused clearly.
    let (ok, _, err) = run(&["queue", "list"], None, Some("bw_wrong"));
    assert!(!ok && err.contains("refused the token"), "{err}");
    drop(server);
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn upstream_hold_release_flush_and_bounce_over_the_api() {
    use common::sink::{Script, Sink};
    let mut fixture = Fixture::new();
    let admin = auth::create(&fixture.config.admin.tokens_file, "ops", Role::Admin, None).unwrap();
    let viewer =
        auth::create(&fixture.config.admin.tokens_file, "noc", Role::Viewer, None).unwrap();
    let rt = common::runtime();
    let sink = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    fixture.config.delivery.enabled = true;
    for domain in &mut fixture.config.domains {
        domain.upstream = sink.addr.to_string();
        domain.tls = breakwater::config::UpstreamTls::None;
    }
    let server = rt.block_on(fixture.start());
    let api = Api::new(&server);
    let name = sink.addr.to_string();
    let path = |action: &str| format!("/api/v1/upstreams/{}/{action}", name.replace(':', "%3A"));
    assert_eq!(api.post(&path("hold"), &viewer, json!({})).0, 403);
    let (status, body) = api.post(&path("hold"), &admin, json!({}));
    assert_eq!(status, 200, "{body}");
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO up.test", 250);
    for i in 0..2 {
        let r = c.send_mail(
            "bob@listed.example",
            &[&format!("u{i}@example.com")],
            format!("Subject: held {i}\r\n\r\nx\r\n").as_bytes(),
        );
        assert_eq!(r.code, 250);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.delivered().is_empty());
    let (_, ups) = api.get("/api/v1/upstreams", Some(&viewer));
    let up = ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name.as_str())
        .cloned()
        .expect("upstream listed");
    assert_eq!(up["state"], "held");
    assert_eq!(up["queue_depth"], 2);
    // Bounce one: a DSN goes to its sender (whose domain routes to the same,
    // held, upstream), the message leaves the spool.
    let first = ids(&api
        .get("/api/v1/queue?recipient=u0@example.com", Some(&admin))
        .1);
    let (_, done) = api.post(
        "/api/v1/queue/actions",
        &admin,
        json!({"action": "bounce", "ids": first}),
    );
    assert_eq!(done["done"], 1, "{done}");
    let (_, listed) = api.get("/api/v1/queue", Some(&admin));
    assert_eq!(
        ids(&listed).len(),
        2,
        "original removed, DSN queued: {listed}"
    );
    assert!(listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["sender"] == "" && m["recipients"][0]["address"] == "bob@listed.example"));
    // Release: everything goes out, the DSN included.
    let (status, _) = api.post(&path("release"), &admin, json!({}));
    assert_eq!(status, 200);
    assert!(wait_for(Duration::from_secs(10), || server
        .spool
        .is_empty()));
    let delivered = sink.delivered();
    assert_eq!(delivered.len(), 2);
    assert!(delivered
        .iter()
        .any(|d| d.mail_line.starts_with("MAIL FROM:<>")
            && String::from_utf8_lossy(&d.data).contains("returned by the administrator")));
    let (status, body) = api.post(&path("flush"), &admin, json!({}));
    assert_eq!((status, body["flushed"].as_u64()), (200, Some(0)));
    assert_eq!(api.post(&path("explode"), &admin, json!({})).0, 400);
    // soft_bounce: readable by a viewer, switched only by an admin, audited.
    assert_eq!(
        api.get("/api/v1/soft-bounce", Some(&viewer)),
        (200, json!({"soft_bounce": false}))
    );
    assert_eq!(
        api.post("/api/v1/soft-bounce", &viewer, json!({"on": true}))
            .0,
        403
    );
    assert_eq!(
        api.post("/api/v1/soft-bounce", &admin, json!({"on": "yes"}))
            .0
            / 100,
        4
    );
    assert_eq!(
        api.post("/api/v1/soft-bounce", &admin, json!({"on": true})),
        (200, json!({"soft_bounce": true}))
    );
    assert!(server.delivery().unwrap().soft_bounce());
    assert_eq!(
        api.get("/api/v1/soft-bounce", Some(&admin)).1,
        json!({"soft_bounce": true})
    );
    let (_, audit) = api.get("/api/v1/audit?actor=ops", Some(&admin));
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "upstream-hold",
            "bounce",
            "upstream-release",
            "upstream-flush",
            "soft-bounce"
        ]
    );
    rt.block_on(server.shutdown());
}

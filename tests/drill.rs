//! A full failover drill against the real server, a scripted upstream and
//! the real `breakwater drill` CLI: start → mail spools and the probe is
//! visible in the web mailbox → finish → drained → report.

mod common;

use std::process::Command;
use std::time::Duration;

use breakwater::api_tokens::{self as auth, Role};
use breakwater::config::UpstreamTls;
use common::dns::{TestDns, Zone};
use common::sink::{Script, Sink};
use common::web::*;
use common::*;
use serde_json::{json, Value};

struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let response = match method {
            "GET" => self.agent.get(&url).header("Authorization", &auth).call(),
            _ => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body.unwrap_or(json!({}))),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn cli(config: &std::path::Path, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .arg("--config")
        .arg(config)
        .arg("drill")
        .args(args)
        .env("BREAKWATER_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Start the server with an admin API token; the config written for the
/// CLI (which finds the running server through it) and an API client.
fn start_with_admin_token(
    rt: &tokio::runtime::Runtime,
    fixture: &mut Fixture,
) -> (breakwater::server::Server, std::path::PathBuf, Api) {
    let token = auth::create(
        &fixture.config.admin.tokens_file,
        "drill-test",
        Role::Admin,
        None,
    )
    .unwrap();
    let server = rt.block_on(fixture.start());
    fixture.config.admin.listen = server.admin_addr.unwrap();
    let config = fixture.write_config();
    let api = Api {
        base: format!("http://{}", server.admin_addr.unwrap()),
        token,
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .build()
            .into(),
    };
    (server, config, api)
}

#[test]
fn failover_drill_end_to_end() {
    let rt = common::runtime();
    let (upstream, dns) = rt.block_on(async {
        (
            Sink::start("127.0.0.1:0", Script::default()).await,
            TestDns::start(Zone::default()).await,
        )
    });
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.domains.truncate(1);
    fixture.config.dns.nameservers = vec![dns.addr];
    let users = fixture.config.web.users_file.clone();
    add_user(&users, "alice@example.com", &[], false, false);
    let admin_secret = add_user(&users, "admin@example.com", &[], true, true).unwrap();
    let (server, config, api) = start_with_admin_token(&rt, &mut fixture);
    let token = api.token.clone();
    assert_eq!(api.call("GET", "/api/v1/drills/current", None).0, 404);

    // Start, with a probe to a user who has a web account.
    let (ok, out) = cli(
        &config,
        &token,
        &[
            "start",
            "--probe-to",
            "alice@example.com",
            "--reason",
            "quarterly rehearsal",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("started") && out.contains("probe message"),
        "{out}"
    );
    let (status, again) = api.call("POST", "/api/v1/drills/start", Some(json!({})));
    assert_eq!(status, 409, "one drill at a time: {again}");
    for i in 0..5 {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO drill.test", 250);
        assert_eq!(
            c.send_mail(
                "s@remote.test",
                &[&format!("user{i}@example.com")],
                format!("Subject: m{i}\r\n\r\nx\r\n").as_bytes()
            )
            .code,
            250
        );
    }
    let (status, s) = api.call("GET", "/api/v1/drills/current", None);
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["spooled_since_start"], 6, "5 messages + the probe: {s}");
    assert_eq!(s["probe_in_spool"], true);
    assert_eq!(s["probe_visible_in_mailbox"], true);
    assert_eq!(s["drill"]["reason"], "quarterly rehearsal");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        upstream.delivered().is_empty(),
        "nothing is delivered while the drill holds the upstream"
    );
    let (_, out) = cli(&config, &token, &["status"]);
    assert!(
        out.contains("probe in mailbox:    yes") && out.contains("spooled since start: 6"),
        "{out}"
    );
    // The user sees the banner and the probe in the web reader.
    let mut alice = WebClient::new(server.web_addr.unwrap());
    alice.login_fully("alice@example.com", None);
    let mailbox = alice.get("/mail").text();
    assert!(
        mailbox.contains("failover drill is in progress"),
        "{mailbox}"
    );
    assert!(
        mailbox.contains("Breakwater failover drill drill-"),
        "{mailbox}"
    );

    // Finish: released, drained, report.
    let id = s["drill"]["id"].as_str().unwrap().to_string();
    let (ok, out) = cli(&config, &token, &["finish"]);
    assert!(ok, "{out}");
    assert!(
        wait_for(Duration::from_secs(15), || upstream.delivered().len() == 6),
        "drained: {}",
        upstream.delivered().len()
    );
    let mut report = Value::Null;
    assert!(
        wait_for(Duration::from_secs(10), || {
            report = api.call("GET", &format!("/api/v1/drills/{id}"), None).1;
            report["drain"].is_object()
        }),
        "{report}"
    );
    let drain = &report["drain"];
    assert_eq!(drain["messages"], 6, "{report}");
    assert_eq!(drain["delivered"], 6, "{report}");
    assert_eq!(drain["failed"], 0);
    assert_eq!(drain["waiting"], 0);
    assert_eq!(drain["probe_delivered"], true);
    let drain_ms = drain["drain_ms"].as_u64().expect("drain time");
    println!(
        "drill drain: {} messages in {drain_ms} ms",
        drain["messages"]
    );
    assert!(drain_ms < 15_000, "{drain_ms}");
    assert!(report["max_queue_depth"].as_u64().unwrap() >= 6, "{report}");
    assert!(
        report["self_check"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "self-check taken at start: {report}"
    );
    let markdown = report["markdown"].as_str().unwrap();
    assert!(
        markdown.contains("6 messages, 6 delivered, 0 failed")
            && markdown.contains("Probe delivered: yes"),
        "{markdown}"
    );
    let (_, out) = cli(&config, &token, &["list"]);
    assert!(out.contains(&id), "{out}");
    let (_, out) = cli(&config, &token, &["show", &id]);
    assert!(out.contains(&format!("# Failover drill {id}")), "{out}");
    assert!(
        !alice
            .get("/mail")
            .text()
            .contains("failover drill is in progress"),
        "banner gone"
    );
    // The web admin shows the report.
    let mut admin = WebClient::new(server.web_addr.unwrap());
    admin.login_fully("admin@example.com", Some(&admin_secret));
    let page = admin.get(&format!("/admin/drills/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("6 delivered"), "{}", page.text());
    assert!(admin.get("/admin/drills").text().contains(&id));
    assert_eq!(admin.get("/admin/drills/..%2Fcurrent").status, 404);

    // Auto-finish after --duration.
    let (status, d) = api.call(
        "POST",
        "/api/v1/drills/start",
        Some(json!({"duration": "1s"})),
    );
    assert_eq!(status, 200, "{d}");
    assert!(wait_for(Duration::from_secs(10), || api
        .call("GET", "/api/v1/drills/current", None)
        .0
        == 404));
    let auto = api
        .call(
            "GET",
            &format!("/api/v1/drills/{}", d["id"].as_str().unwrap()),
            None,
        )
        .1;
    assert_eq!(auto["finished_by"], "auto (duration elapsed)", "{auto}");
    let audit = std::fs::read_to_string(&fixture.config.admin.audit_log).unwrap();
    assert!(
        audit.contains("\"action\":\"drill-start\"")
            && audit.contains("\"action\":\"drill-finish\"")
    );
    rt.block_on(server.shutdown());
}

/// A drill rehearses sending: `[send] mode = "outage"` opens while the
/// drill holds the upstream (and not before); the drill's sending probe,
/// written through the outbox as a user's message would be, reaches an
/// outside MX DKIM-signed while the upstream is held; the report says it
/// was delivered and counts what users sent. With sending stopped, the
/// probe is refused and the report names the problem.
#[test]
fn a_drill_rehearses_sending() {
    let rt = common::runtime();
    let mut zone = Zone::default();
    zone.with_mx("remote.test", &[(10, "mx.remote.test")])
        .with_host("mx.remote.test", "127.0.0.1");
    let (upstream, remote_mx, dns) = rt.block_on(async {
        (
            Sink::start("127.0.0.1:0", Script::default()).await,
            Sink::start("127.0.0.1:0", Script::default()).await,
            TestDns::start(zone).await,
        )
    });
    let mut fixture = Fixture::new();
    fixture.with_dkim_key(breakwater::dkim::Algorithm::Ed25519);
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.mx_port = remote_mx.addr.port();
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.domains.truncate(1);
    fixture.config.dns.nameservers = vec![dns.addr];
    fixture.config.send.mode = breakwater::config::SendMode::Outage;
    let users = fixture.config.web.users_file.clone();
    add_user(&users, "alice@example.com", &[], false, false);
    let (server, config, api) = start_with_admin_token(&rt, &mut fixture);
    let token = api.token.clone();
    let mut alice = WebClient::new(server.web_addr.unwrap());
    alice.login_fully("alice@example.com", None);
    assert_eq!(
        alice.get("/mail/compose").status,
        403,
        "no outage, no drill: not yet"
    );

    let (ok, out) = cli(
        &config,
        &token,
        &[
            "start",
            "--send-probe-from",
            "it@example.com",
            "--send-probe-to",
            "you@remote.test",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        wait_for(Duration::from_secs(15), || remote_mx.delivered().len() == 1),
        "the sending probe at the outside MX"
    );
    let probe = remote_mx.delivered()[0].clone();
    assert_eq!(probe.rcpts(), ["you@remote.test"]);
    let text = String::from_utf8_lossy(&probe.data).into_owned();
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(text.contains("failover drill"), "{text}");
    assert!(upstream.delivered().is_empty(), "the upstream is held");
    // During the drill users may send (mode "outage").
    let done = alice.compose_and_send(
        "alice@example.com",
        "partner@remote.test",
        "during the drill",
        "hello",
    );
    assert_eq!(done.status, 200, "{}", done.text());
    let (_, current) = api.call("GET", "/api/v1/drills/current", None);
    let id = current["drill"]["id"].as_str().unwrap().to_string();
    let (ok, out) = cli(&config, &token, &["finish"]);
    assert!(ok, "{out}");
    let mut report = Value::Null;
    assert!(
        wait_for(Duration::from_secs(15), || {
            report = api.call("GET", &format!("/api/v1/drills/{id}"), None).1;
            report["drain"].is_object()
        }),
        "{report}"
    );
    assert_eq!(report["send_probe"]["outcome"], "delivered", "{report}");
    assert_eq!(report["sent_by_users"], 1, "{report}");
    assert!(
        !report["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .contains("sending probe")
            || p.as_str().unwrap().contains("users could not send")),
        "{report}"
    );
    let (ok, markdown) = cli(&config, &token, &["show", &id]);
    assert!(ok, "{markdown}");
    assert!(
        markdown.contains("Sending probe: from it@example.com to you@remote.test: delivered"),
        "{markdown}"
    );

    // Sending stopped by an admin: the rehearsal finds out.
    let (status, _) = api.call("POST", "/api/v1/sending", Some(json!({ "stopped": true })));
    assert_eq!(status, 200);
    let (status, started) = api.call(
        "POST",
        "/api/v1/drills/start",
        Some(json!({ "send_probe_from": "it@example.com", "send_probe_to": "you@remote.test" })),
    );
    assert_eq!(status, 200, "{started}");
    assert!(
        started["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("stopped all sending")),
        "{started}"
    );
    assert!(started["send_probe"]["queue_id"].is_null(), "{started}");
    assert_eq!(api.call("POST", "/api/v1/drills/finish", None).0, 200);
}

//! Security events against a running server and the real CLI: each step of
//! an admin-plane takeover (a token minted, used from a new address, a new
//! admin, MFA removed, the audit log edited, a change made while the server
//! was stopped) is an audit entry and a notification to loopback webhooks
//! (JSON and text, in Japanese) within a second; revoked and expired tokens
//! answer 401.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use breakwater::config::WebhookFormat;
use common::webhook::{events, webhook_receiver, webhook_target, Received};
use common::*;
use serde_json::Value;

/// GET `path` on the admin API from `source` (a loopback address) with a
/// bearer token: (status, body).
fn get_from(
    rt: &tokio::runtime::Runtime,
    source: &str,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> (u16, String) {
    let mut stream = tcp_from(rt, addr, source);
    stream.set_nonblocking(false).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The JSON notices of `event` about `subject` so far.
fn notices(got: &Received, event: &str, subject: &str) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .filter(|v| v["event"] == event && v["subject"] == subject)
        .collect()
}

/// Wait at most a second after `since` for one notice of `event` about
/// `subject`; return it.
fn alerted_within_a_second(got: &Received, event: &str, subject: &str) -> Value {
    assert!(
        wait_for(Duration::from_secs(1), || !notices(got, event, subject)
            .is_empty()),
        "no {event} notice for {subject} within a second: {:?}",
        events(got)
    );
    notices(got, event, subject).remove(0)
}

fn cli(config: &std::path::Path, args: &[&str], stdin: &str) -> String {
    let out = run_cli(config, args, stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "breakwater {args:?}: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn audit_actions(fixture: &Fixture) -> Vec<(String, String)> {
    std::fs::read_to_string(&fixture.config.admin.audit_log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn each_step_of_an_admin_plane_takeover_is_audited_and_alerted_at_once() {
    let (json_url, json_hook) = webhook_receiver();
    let (text_url, text_hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.alerts.language = "ja".into();
    fixture.config.admin.audit_verify_interval = Duration::from_millis(500);
    fixture.config.alert_targets = vec![
        webhook_target(&json_url, WebhookFormat::Json),
        webhook_target(&text_url, WebhookFormat::Text),
    ];
    let config = fixture.write_config();
    // What exists before the first start is the baseline: no events.
    let ops = cli(
        &config,
        &["token", "create", "--name", "ops", "--role", "admin"],
        "",
    );
    let ops = ops.trim().to_string();
    cli(
        &config,
        &["user", "add", "alice@example.com", "--password-stdin"],
        "correct horse battery\n",
    );
    let (rt, server) = start_in_process(&fixture);
    let admin = server.admin_addr.unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(events(&json_hook).is_empty(), "{:?}", events(&json_hook));

    // A token's first use, then its first use from another address.
    let (status, _) = get_from(&rt, "127.0.0.1", admin, "/api/v1/queue", &ops);
    assert_eq!(status, 200);
    let first = alerted_within_a_second(&json_hook, "token-first-use", "ops");
    assert_eq!(first["ip"], "127.0.0.1");
    assert_eq!(first["kind"], "security");
    get_from(&rt, "127.0.0.1", admin, "/api/v1/queue", &ops);
    get_from(&rt, "127.0.0.2", admin, "/api/v1/queue", &ops);
    let moved = alerted_within_a_second(&json_hook, "token-new-address", "ops");
    assert_eq!(moved["ip"], "127.0.0.2");
    get_from(&rt, "127.0.0.2", admin, "/api/v1/queue", &ops);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        notices(&json_hook, "token-new-address", "ops").len(),
        1,
        "known addresses are quiet"
    );
    assert_eq!(notices(&json_hook, "token-first-use", "ops").len(), 1);

    // A token minted with the CLI, then revoked: 401 with the reason, and
    // the refused use is an event too.
    let mint = cli(
        &config,
        &["token", "create", "--name", "mint", "--role", "admin"],
        "",
    );
    let mint = mint.trim().to_string();
    let created = alerted_within_a_second(&json_hook, "token-created", "mint");
    assert!(
        created["detail"].as_str().unwrap().contains("admin"),
        "{created}"
    );
    assert_eq!(
        get_from(&rt, "127.0.0.1", admin, "/api/v1/queue", &mint).0,
        200
    );
    cli(&config, &["token", "revoke", "mint"], "");
    alerted_within_a_second(&json_hook, "token-revoked", "mint");
    let (status, body) = get_from(&rt, "127.0.0.1", admin, "/api/v1/queue", &mint);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    alerted_within_a_second(&json_hook, "token-refused", "mint");
    // Expired: refused the same way.
    let brief = cli(
        &config,
        &[
            "token",
            "create",
            "--name",
            "brief",
            "--role",
            "viewer",
            "--expires",
            "1s",
        ],
        "",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = get_from(&rt, "127.0.0.1", admin, "/api/v1/queue", brief.trim());
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");

    // `token list` shows status, last use and where from.
    let listed: Value =
        serde_json::from_str(&cli(&config, &["--json", "token", "list"], "")).unwrap();
    let row = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("ops")["status"], "active");
    assert_eq!(row("ops")["last_address"], "127.0.0.2");
    assert_eq!(row("ops")["addresses"].as_array().unwrap().len(), 2);
    assert_eq!(row("mint")["status"], "revoked");
    assert_eq!(row("brief")["status"], "expired");
    let table = cli(&config, &["token", "list"], "");
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");

    // A new admin; MFA enrolled and removed on another account.
    cli(
        &config,
        &[
            "user",
            "add",
            "boss@example.com",
            "--admin",
            "--password-stdin",
        ],
        "another long password\n",
    );
    let boss = alerted_within_a_second(&json_hook, "admin-created", "boss@example.com");
    assert!(
        boss["text"]
            .as_str()
            .unwrap()
            .contains("管理者アカウントが作成されました"),
        "{boss}"
    );
    cli(&config, &["user", "totp-setup", "alice@example.com"], "");
    alerted_within_a_second(&json_hook, "totp-enrolled", "alice@example.com");
    cli(&config, &["user", "totp-remove", "alice@example.com"], "");
    alerted_within_a_second(&json_hook, "totp-removed", "alice@example.com");

    // A configuration reload.
    server.reload(&fixture.config);
    alerted_within_a_second(&json_hook, "config-reloaded", "configuration");

    // The text webhook got the same events, in Japanese.
    let texts: Vec<String> = text_hook
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("二要素認証 (TOTP) が削除されました")
                && t.contains("alice@example.com")),
        "{texts:?}"
    );

    // Every event is in the audit log, and the chain verifies.
    let actions = audit_actions(&fixture);
    for (action, target) in [
        ("security:token-first-use", "ops"),
        ("security:token-new-address", "ops"),
        ("security:token-created", "mint"),
        ("security:token-revoked", "mint"),
        ("security:token-refused", "mint"),
        ("security:admin-created", "boss@example.com"),
        ("security:totp-enrolled", "alice@example.com"),
        ("security:totp-removed", "alice@example.com"),
        ("security:config-reloaded", "configuration"),
    ] {
        assert!(
            actions.iter().any(|(a, t)| a == action && t == target),
            "{action} {target} not audited: {actions:?}"
        );
    }
    cli(&config, &["audit", "verify"], "");

    // The last audit line edited: a hash chain alone cannot see it, the
    // running server (which knows what it wrote last) can.
    let log = std::fs::read_to_string(&fixture.config.admin.audit_log).unwrap();
    let last = log.trim_end().rfind('\n').unwrap() + 1;
    let edited = format!(
        "{}{}",
        &log[..last],
        log[last..].replacen("configuration", "nothing-here", 1)
    );
    std::fs::write(&fixture.config.admin.audit_log, edited).unwrap();
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || events(&json_hook)
            .iter()
            .any(|e| e == "audit-chain-broken")),
        "{:?}",
        events(&json_hook)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    rt.block_on(server.shutdown());

    // A change made while the server was stopped is raised at the next start.
    cli(
        &config,
        &[
            "user",
            "add",
            "night@example.com",
            "--admin",
            "--password-stdin",
        ],
        "made while nobody watched\n",
    );
    let (rt, server) = start_in_process(&fixture);
    alerted_within_a_second(&json_hook, "admin-created", "night@example.com");
    assert_eq!(
        notices(&json_hook, "admin-created", "boss@example.com").len(),
        1,
        "changes seen before are not raised again after a restart"
    );
    rt.block_on(server.shutdown());
}

/// The web side: an admin's sign-in from an address not seen for that
/// account (also behind a trusted proxy), a lockout, and failures spread
/// over many accounts (password spraying) are security events too.
#[test]
fn admin_sign_ins_from_new_addresses_lockouts_and_sprays_are_alerted() {
    use common::web::{add_user, WebClient};
    let (url, hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.web.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    fixture.config.web.spray_failures = 8;
    fixture.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    let users = fixture.config.web.users_file.clone();
    let secret = add_user(&users, "admin@example.com", &[], true, true).unwrap();
    add_user(&users, "bob@example.com", &[], false, false);
    let (rt, server) = start_in_process(&fixture);
    let web = server.web_addr.unwrap();

    // Three sign-ins need three TOTP codes (each is single-use, and the
    // server takes one step of skew either way): the previous, the
    // current and the next step's, in that order, all within one step.
    let into_step = breakwater::envelope::now_ms() / 1000 % 30;
    if into_step > 25 {
        std::thread::sleep(Duration::from_secs(31 - into_step));
    }
    let step = breakwater::envelope::now_ms() / 1000 / 30;
    let sign_in = |client: &mut WebClient, step: u64| {
        let answer = client.login("admin@example.com", common::web::PASSWORD);
        assert!(
            answer.location().starts_with("/login/totp"),
            "{}",
            answer.text()
        );
        let form = client.get(answer.location());
        let code = breakwater::accounts::totp::totp_for(&secret, "admin@example.com")
            .unwrap()
            .generate(step * 30);
        let done = client.post(
            "/login/totp",
            &[("code", &code), ("csrf", &form.csrf()), ("next", "/mail")],
        );
        assert_eq!(done.status, 303, "{}", done.text());
    };

    // First sign-in ever: a new address. The same address again: quiet.
    sign_in(&mut WebClient::new(web), step - 1);
    let first = alerted_within_a_second(&hook, "admin-sign-in-new-address", "admin@example.com");
    assert_eq!(first["ip"], "127.0.0.1");
    sign_in(&mut WebClient::new(web), step);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        notices(&hook, "admin-sign-in-new-address", "admin@example.com").len(),
        1
    );
    // Through the trusted proxy from elsewhere.
    let mut remote = WebClient::new(web);
    remote
        .headers
        .push(("X-Forwarded-For".into(), "198.51.100.7".into()));
    sign_in(&mut remote, step + 1);
    assert!(
        wait_for(Duration::from_secs(1), || notices(
            &hook,
            "admin-sign-in-new-address",
            "admin@example.com"
        )
        .iter()
        .any(|n| n["ip"] == "198.51.100.7")),
        "{:?}",
        notices(&hook, "admin-sign-in-new-address", "admin@example.com")
    );

    // Five bad passwords lock bob out; more failures on other accounts
    // make it a spray (8 in the window).
    let mut guess = WebClient::new(web);
    for _ in 0..5 {
        assert_eq!(guess.login("bob@example.com", "wrong password").status, 401);
    }
    let locked = alerted_within_a_second(&hook, "account-locked", "bob@example.com");
    assert!(
        locked["detail"].as_str().unwrap().contains("account"),
        "{locked}"
    );
    assert!(notices(&hook, "sign-in-spray", "web sign-in").is_empty());
    for n in 0..4 {
        guess.login(&format!("user{n}@example.com"), "Winter2026!");
    }
    let spray = alerted_within_a_second(&hook, "sign-in-spray", "web sign-in");
    assert!(
        spray["detail"].as_str().unwrap().contains("more than 8"),
        "{spray}"
    );
    let actions: Vec<String> = audit_actions(&fixture)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    for action in [
        "security:admin-sign-in-new-address",
        "security:account-locked",
        "security:sign-in-spray",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    rt.block_on(server.shutdown());
}

/// `[web] admin_networks` with a trusted proxy: an admin signs in and uses
/// the admin pages only from those networks; from elsewhere the right
/// password is answered like a wrong one (no oracle), audited and alerted;
/// an admin session that moves outside loses the admin pages; users are
/// not affected.
#[test]
fn admin_networks_keep_admin_sign_ins_and_pages_inside() {
    use common::web::{add_user, WebClient, PASSWORD};
    let (url, hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.web.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    fixture.config.web.admin_networks = vec!["10.0.0.0/8".parse().unwrap()];
    fixture.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    let users = fixture.config.web.users_file.clone();
    let secret = add_user(&users, "admin@example.com", &[], true, true).unwrap();
    add_user(&users, "bob@example.com", &[], false, false);
    let (rt, server) = start_in_process(&fixture);
    let web = server.web_addr.unwrap();
    let from = |ip: &str| {
        let mut client = WebClient::new(web);
        client.headers.push(("X-Forwarded-For".into(), ip.into()));
        client
    };

    // Outside: the right password is refused like a wrong one.
    let mut outside = from("198.51.100.7");
    let refused = outside.login("admin@example.com", PASSWORD);
    let wrong = from("198.51.100.7").login("admin@example.com", "not the password");
    assert_eq!(refused.status, 401);
    assert_eq!(wrong.status, 401);
    // The same words as for a wrong password, and no TOTP step.
    let words = "The address or password is not right.";
    assert!(
        refused.text().contains(words) && wrong.text().contains(words),
        "{}",
        refused.text()
    );
    assert!(
        !refused.text().contains("/login/totp"),
        "{}",
        refused.text()
    );
    let event = alerted_within_a_second(&hook, "admin-sign-in-refused", "admin@example.com");
    assert_eq!(event["ip"], "198.51.100.7");
    // A user from outside is not affected.
    from("198.51.100.7").login_fully("bob@example.com", None);

    // Inside: sign-in and admin pages work; the same session seen from
    // outside gets no admin page.
    let mut inside = from("10.1.2.3");
    inside.login_fully("admin@example.com", Some(&secret));
    assert_eq!(inside.get("/admin").status, 200);
    inside.headers = vec![("X-Forwarded-For".into(), "198.51.100.7".into())];
    let page = inside.get("/admin");
    assert_eq!(page.status, 403);
    assert!(
        page.text().contains("administrators' networks"),
        "{}",
        page.text()
    );
    let actions: Vec<(String, String)> = audit_actions(&fixture);
    assert!(
        actions
            .iter()
            .any(|(a, t)| a == "web-login-refused" && t == "admin@example.com"),
        "{actions:?}"
    );
    rt.block_on(server.shutdown());
}

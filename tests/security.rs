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

/// The local admin socket with a service that runs as its own user
/// (`nobody` here, as `breakwater` in production): root and the service
/// user use the CLI with no token at all, their actions audited under
/// their names; a third user who gets past the socket's file permissions
/// (by being in its group) is refused by peer credentials, loudly; one
/// who does not is stopped by the file system. `breakwater user` changes
/// reach the audit log through the server, or, while it is down, at its
/// next start. Needs root to switch users (CI runs as root).
#[test]
fn the_admin_socket_serves_root_and_the_service_user_and_refuses_the_rest() {
    use std::process::Command;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching local users needs root");
        return;
    }
    let (url, hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    fixture.config.admin.audit_verify_interval = Duration::from_millis(300);
    let served_config = fixture.write_config();
    // The CLI's copy where every local user may read it (the data
    // directory below is the service's own).
    let cli_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        cli_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cli_config = fixture.config.clone();
    for domain in &mut cli_config.domains {
        if let Some(list) = &domain.recipients {
            let copy = cli_dir.path().join(list.file_name().unwrap());
            std::fs::copy(list, &copy).unwrap();
            domain.recipients = Some(copy);
        }
    }
    let config = cli_dir.path().join("breakwater.toml");
    std::fs::write(&config, cli_config.to_toml()).unwrap();
    let socket = fixture.config.admin.socket.clone();
    // The service's data directory, as a package would set it up.
    let dir = fixture.path();
    let status = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    // `as_user("daemon", "nogroup", …)`: the CLI as another local user.
    let as_user = |user: &str, group: &str, args: &[&str], stdin: &str| {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"))
            .arg("--clear-groups")
            .arg(server_binary())
            .env_remove("BREAKWATER_TOKEN");
        let out = run_command(command, &config, args, stdin);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let serve_as_nobody = || {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(server_binary())
            .arg("serve")
            .arg("--config")
            .arg(&served_config);
        BinaryServer::spawn(command)
    };
    let audit = || -> Vec<Value> {
        std::fs::read_to_string(&fixture.config.admin.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let audited = |actor: &str, action: &str| {
        audit()
            .into_iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
    };

    let server = serve_as_nobody();
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).expect("the admin socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 65534, "owned by the service user");
    assert!(!fixture.config.admin.cli_token_file.exists());

    // Root, right after installation: no token anywhere.
    let (ok, out) = as_user("root", "root", &["queue", "list"], "");
    assert!(ok, "{out}");
    assert!(out.contains("0 messages"), "{out}");
    let (ok, out) = as_user("root", "root", &["upstream", "hold", "mx"], "");
    assert!(ok, "{out}");
    let held = audited("local:root", "upstream-hold")
        .unwrap_or_else(|| panic!("upstream hold by local:root not audited: {:?}", audit()));
    assert_eq!(held["ip"], "local");
    // The service user too, audited under its own name.
    let (ok, out) = as_user("nobody", "nogroup", &["upstream", "list"], "");
    assert!(ok && out.contains("held"), "{out}");
    let (ok, out) = as_user("nobody", "nogroup", &["upstream", "release", "mx"], "");
    assert!(ok, "{out}");
    assert!(
        audited("local:nobody", "upstream-release").is_some(),
        "{:?}",
        audit()
    );

    // A third user in the socket's group: past the file permissions, but
    // not past the peer credentials; refused, and a security event.
    let (ok, out) = as_user("daemon", "nogroup", &["queue", "list"], "");
    assert!(!ok, "{out}");
    assert!(
        out.contains("403") && out.contains("local user daemon") && out.contains("nobody"),
        "{out}"
    );
    let refused = alerted_within_a_second(&hook, "local-access-refused", "daemon");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("/api/v1/queue"),
        "{refused}"
    );
    // Not even health or metrics for it.
    let (ok, out) = as_user("daemon", "nogroup", &["upstream", "list"], "");
    assert!(!ok && out.contains("403"), "{out}");
    // Outside the group: the file system says no, and the CLI says why.
    let (ok, out) = as_user("daemon", "daemon", &["queue", "list"], "");
    assert!(!ok, "{out}");
    assert!(out.contains("permission denied"), "{out}");

    // An account change by root while the server runs: recorded by the
    // server under root's name; the file stays the service's own (it
    // would not be readable to it otherwise).
    let (ok, out) = as_user(
        "root",
        "root",
        &[
            "user",
            "add",
            "carol@example.com",
            "--admin",
            "--password-stdin",
        ],
        "a long enough password\n",
    );
    assert!(ok, "{out}");
    assert!(!out.contains("note:"), "{out}");
    let added = audited("local:root", "user:add")
        .unwrap_or_else(|| panic!("user add not audited: {:?}", audit()));
    assert_eq!(added["target"], "carol@example.com");
    assert_eq!(added["result"], "added as admin");
    assert_eq!(
        std::fs::metadata(&fixture.config.web.users_file)
            .unwrap()
            .uid(),
        65534
    );
    alerted_within_a_second(&hook, "admin-created", "carol@example.com");
    let (ok, out) = as_user("nobody", "nogroup", &["user", "list"], "");
    assert!(ok && out.contains("carol@example.com"), "{out}");
    // A token minted by root is audited the same way.
    let (ok, out) = as_user(
        "root",
        "root",
        &["token", "create", "--name", "ci", "--role", "viewer"],
        "",
    );
    assert!(ok, "{out}");
    assert_eq!(
        audited("local:root", "token:create").unwrap()["target"],
        "ci"
    );
    assert!(server.terminate(Duration::from_secs(15)).success());
    assert!(!socket.exists(), "the socket is removed at a clean stop");

    // The server is down: the change is kept pending and recorded at the
    // next start, with when it was made.
    let (ok, out) = as_user(
        "root",
        "root",
        &["user", "passwd", "carol@example.com", "--password-stdin"],
        "another long password\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("next starts"), "{out}");
    let pending = breakwater::local_changes::pending_path(&fixture.config.admin.audit_log);
    assert!(pending.exists());
    assert!(audited("local:root", "user:passwd").is_none());
    let server = serve_as_nobody();
    assert!(
        wait_for(Duration::from_secs(2), || audited(
            "local:root",
            "user:passwd"
        )
        .is_some()),
        "{:?}",
        audit()
    );
    let passwd = audited("local:root", "user:passwd").unwrap();
    assert!(
        passwd["result"]
            .as_str()
            .unwrap()
            .contains("while the server was not running"),
        "{passwd}"
    );
    assert!(wait_for(Duration::from_secs(1), || !pending.exists()));
    // Recorded once, and the chain holds.
    assert_eq!(
        audit()
            .iter()
            .filter(|e| e["action"] == "user:passwd")
            .count(),
        1
    );
    let (ok, out) = as_user("root", "root", &["audit", "verify"], "");
    assert!(ok, "{out}");
    drop(server);
}

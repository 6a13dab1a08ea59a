//! The web reader over real HTTP against the real server and spool: auth on
//! every route, CSRF, IDOR, lockout, TOTP, session expiry, rendering,
//! attachments, admin actions and the audit trail.

mod common;

use std::time::Duration;

use breakwater::server::Server;
use common::web::*;
use common::*;

struct World {
    fixture: Fixture,
    _rt: tokio::runtime::Runtime,
    server: Server,
    alice_jp: String,
    alice_html: String,
    bob_msg: String,
    alias_msg: String,
    admin_secret: String,
}

fn send(server: &Server, to: &str, body: &[u8]) -> String {
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO web.test", 250);
    let reply = c.send_mail("sender@example.org", &[to], body);
    assert_eq!(reply.code, 250, "{reply:?}");
    queue_id(&reply).to_string()
}

fn world_with(adjust: impl FnOnce(&mut Fixture)) -> World {
    let mut fixture = Fixture::new();
    adjust(&mut fixture);
    let users = fixture.config.web.users_file.clone();
    add_user(
        &users,
        "alice@example.com",
        &["sales@example.com"],
        false,
        false,
    );
    add_user(&users, "bob@example.com", &[], false, false);
    let admin_secret = add_user(&users, "admin@example.com", &[], true, true).expect("secret");
    let (rt, server) = start_in_process(&fixture);
    let alice_jp = send(
        &server,
        "alice@example.com",
        &iso2022jp_message("alice@example.com"),
    );
    let alice_html = send(
        &server,
        "alice@example.com",
        &hostile_html_message("alice@example.com", "http://127.0.0.1:9/pixel.gif"),
    );
    let bob_msg = send(
        &server,
        "bob@example.com",
        &plain_message("bob@example.com", "Bob's private payroll", "salary details"),
    );
    let alias_msg = send(
        &server,
        "sales@example.com",
        &plain_message("sales@example.com", "Order 7781", "please ship the widgets"),
    );
    World {
        fixture,
        _rt: rt,
        server,
        alice_jp,
        alice_html,
        bob_msg,
        alias_msg,
        admin_secret,
    }
}

fn world() -> World {
    world_with(|_| {})
}

impl World {
    fn client(&self) -> WebClient {
        WebClient::new(self.server.web_addr.expect("web enabled"))
    }
    fn audit(&self) -> String {
        std::fs::read_to_string(&self.fixture.config.admin.audit_log).unwrap_or_default()
    }
}

#[test]
fn every_route_needs_a_session() {
    let w = world();
    let mut anon = w.client();
    let public = [
        "/",
        "/login",
        "/login/totp",
        "/login/enrol",
        "/lang/{code}",
        "/static/app.css",
        "/static/app.js",
    ];
    for (method, route) in breakwater::web::ROUTES {
        let path = route
            .replace("{id}", &w.alice_jp)
            .replace("{index}", "0")
            .replace("{name}", "mx")
            .replace("{code}", "ja");
        if public.contains(route) {
            continue;
        }
        let page = match *method {
            "get" => anon.get(&path),
            _ => anon.post(&path, &[("csrf", "x"), ("action", "hold"), ("handle", "x")]),
        };
        if *method == "get" {
            assert_eq!(page.status, 303, "GET {path}");
            assert!(
                page.location().starts_with("/login?next="),
                "GET {path} -> {}",
                page.location()
            );
        } else {
            assert!(
                page.status == 401 || page.status == 403,
                "POST {path} -> {}",
                page.status
            );
        }
    }
    // The message is untouched by the anonymous POSTs.
    let id = w.alice_jp.parse().unwrap();
    assert!(!held(&w.server, id));
    // A plain user gets 403 on every admin page.
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    for path in [
        "/admin",
        "/admin/upstreams",
        "/admin/audit",
        "/admin/sessions",
    ] {
        assert_eq!(alice.get(path).status, 403, "{path}");
    }
    let csrf = alice.get("/mail").csrf();
    let page = alice.post(
        &format!("/admin/message/{}/action", w.alice_jp),
        &[("csrf", &csrf), ("action", "delete")],
    );
    assert_eq!(page.status, 403);
    assert!(
        common::block(w.server.spool.get(id)).unwrap().is_some(),
        "a user cannot delete"
    );
}

#[test]
fn users_see_only_their_own_mail() {
    let w = world();
    let mut alice = w.client();
    let answer = alice.login("alice@example.com", PASSWORD);
    assert_eq!(answer.status, 303);
    let cookie = answer
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("bw_session="))
        .expect("session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP test server: no Secure flag by default"
    );
    let list = alice.get("/mail").text();
    assert!(
        list.contains("障害のお知らせ"),
        "ISO-2022-JP subject decoded: {list}"
    );
    assert!(list.contains("Order 7781"), "mail to the alias is listed");
    assert!(!list.contains("payroll"), "bob's mail must not be listed");
    // IDOR: bob's message by ID, on every message route → 404 like a missing one.
    for suffix in ["", "/body", "/part/0", "/source"] {
        let page = alice.get(&format!("/mail/{}{suffix}", w.bob_msg));
        assert_eq!(page.status, 404, "/mail/{{bob}}{suffix}");
        assert!(!page.text().contains("salary"));
    }
    assert_eq!(alice.get("/mail/01ARZ3NDEKTSV4RRFFQ69G5FAV").status, 404);
    assert_eq!(alice.get("/mail/not-an-id").status, 404);
    // Her own messages open; the Japanese body is decoded.
    let view = alice.get(&format!("/mail/{}", w.alice_jp)).text();
    assert!(view.contains("本日の会議は中止です。"), "{view}");
    assert!(view.contains("山田"), "{view}");
    assert_eq!(alice.get(&format!("/mail/{}", w.alias_msg)).status, 200);
    // Search: body text, subject, sender; never other users' mail.
    assert!(alice.get("/mail?q=widgets").text().contains("Order 7781"));
    assert!(
        alice
            .get("/mail?q=%E4%BC%9A%E8%AD%B0")
            .text()
            .contains("障害のお知らせ"),
        "search in Japanese body text"
    );
    let none = alice.get("/mail?q=salary").text();
    assert!(
        !none.contains("payroll") && none.contains("0 messages"),
        "{none}"
    );
    let audit = w.audit();
    assert!(audit.contains("\"action\":\"web-login\""), "{audit}");
    assert!(audit.contains("\"action\":\"web-mailbox\""));
    assert!(audit.contains(&format!(
        "\"action\":\"web-message-view\",\"target\":\"{}\"",
        w.alice_jp
    )));
}

#[test]
fn csrf_is_enforced_on_every_post() {
    let w = world();
    let mut admin = w.client();
    admin.login_fully("admin@example.com", Some(&w.admin_secret));
    let csrf = admin.get("/mail").csrf();
    let path = format!("/admin/message/{}/action", w.alice_jp);
    let id = w.alice_jp.parse().unwrap();
    assert_eq!(
        admin.post(&path, &[("action", "hold")]).status,
        403,
        "no token"
    );
    assert_eq!(
        admin
            .post(&path, &[("action", "hold"), ("csrf", "0000")])
            .status,
        403,
        "wrong token"
    );
    let cross = admin.post_with(
        &path,
        &[("action", "hold"), ("csrf", &csrf)],
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(cross.status, 403, "cross-site fetch");
    assert!(!held(&w.server, id));
    assert_eq!(admin.post("/logout", &[("csrf", "nope")]).status, 403);
    // The login form itself: without the double-submit cookie it is refused.
    let mut fresh = w.client();
    let page = fresh.post(
        "/login",
        &[
            ("address", "alice@example.com"),
            ("password", PASSWORD),
            ("csrf", "x"),
        ],
    );
    assert_eq!(page.status, 403);
    assert!(!fresh.cookies.contains_key("bw_session"));
    // With the token it works.
    let ok = admin.post(&path, &[("action", "hold"), ("csrf", &csrf)]);
    assert_eq!(ok.status, 303);
    assert!(held(&w.server, id));
}

#[test]
fn repeated_failures_lock_the_account() {
    let w = world();
    let mut attacker = w.client();
    for i in 0..5 {
        let page = attacker.login("bob@example.com", &format!("wrong password {i}"));
        assert_eq!(page.status, 401, "attempt {i}");
        assert!(page.text().contains("not right"), "clear message");
    }
    // Locked now, even with the right password.
    let page = attacker.login("bob@example.com", PASSWORD);
    assert_eq!(page.status, 429);
    assert!(page.text().contains("minutes"), "{}", page.text());
    assert!(!attacker.cookies.contains_key("bw_session"));
    // Another account from another client is unaffected.
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    // Unknown accounts answer exactly like a wrong password.
    let unknown = w.client().login("nobody@example.com", PASSWORD);
    assert_eq!(unknown.status, 401);
    let audit = w.audit();
    assert!(audit.contains("\"action\":\"web-login-failed\""));
    assert!(audit.contains("\"action\":\"web-lockout\""));
    assert!(audit.contains("\"action\":\"web-login-blocked\""));
}

#[test]
fn admins_need_totp_and_codes_are_single_use() {
    let w = world();
    let users = w.fixture.config.web.users_file.clone();
    // An admin without TOTP gets no session before enrolling one.
    add_user(&users, "newadmin@example.com", &[], true, false);
    let mut c = w.client();
    let page = c.login("newadmin@example.com", PASSWORD);
    assert_eq!(page.status, 303);
    assert!(
        page.location().starts_with("/login/enrol"),
        "{}",
        page.location()
    );
    assert_eq!(
        c.get("/mail").status,
        303,
        "enrolment pending is not signed in"
    );
    // Password alone leads to the TOTP step, not to a session.
    let mut admin = w.client();
    let step = admin.login("admin@example.com", PASSWORD);
    assert_eq!(step.status, 303);
    assert!(step.location().starts_with("/login/totp"));
    assert_eq!(
        admin.get("/mail").status,
        303,
        "pending session is not signed in"
    );
    let form = admin.get("/login/totp");
    let wrong = admin.post("/login/totp", &[("code", "000000"), ("csrf", &form.csrf())]);
    assert_eq!(wrong.status, 401);
    let code = totp_code(&w.admin_secret, "admin@example.com");
    let ok = admin.post(
        "/login/totp",
        &[("code", &code), ("csrf", &form.csrf()), ("next", "/admin")],
    );
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location(), "/admin");
    assert_eq!(admin.get("/admin").status, 200);
    // The same code cannot be used again (replay).
    let mut replay = w.client();
    replay.login("admin@example.com", PASSWORD);
    let form = replay.get("/login/totp");
    let again = replay.post("/login/totp", &[("code", &code), ("csrf", &form.csrf())]);
    assert_eq!(again.status, 401);
    // Sessions page lists the admin's session; revoking it signs that browser out.
    let sessions = admin.get("/admin/sessions");
    let text = sessions.text();
    assert!(text.contains("admin@example.com"));
    let start = text.find("name=\"handle\" value=\"").unwrap() + 21;
    let handle = &text[start..start + 16];
    let page = admin.post(
        "/admin/sessions/revoke",
        &[("csrf", &sessions.csrf()), ("handle", handle)],
    );
    assert_eq!(page.status, 303);
    assert_eq!(admin.get("/admin").status, 303, "revoked");
}

#[test]
fn sessions_expire_and_end_on_disable_or_password_change() {
    let w = world_with(|f| f.config.web.session_idle = Duration::from_millis(1500));
    let users = w.fixture.config.web.users_file.clone();
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    std::thread::sleep(Duration::from_millis(1800));
    let page = alice.get("/mail");
    assert_eq!(page.status, 303, "idle session expired");
    // Disabling ends a live session at once (the users file is re-read within 1 s).
    alice.login_fully("alice@example.com", None);
    breakwater::accounts::update(&users, "alice@example.com", |a| {
        a.disabled = true;
        Ok(())
    })
    .unwrap();
    assert!(wait_for(Duration::from_secs(3), || alice
        .get("/mail")
        .status
        == 303));
    assert_eq!(
        alice.login("alice@example.com", PASSWORD).status,
        401,
        "disabled account cannot sign in"
    );
    // A password change (the one `breakwater user passwd` makes) ends
    // existing sessions, and only the new password signs in.
    let mut bob = w.client();
    bob.login_fully("bob@example.com", None);
    std::thread::sleep(Duration::from_millis(5));
    let new_password = "a-new-long-password-2026";
    breakwater::accounts::change_password(&users, "bob@example.com", new_password).unwrap();
    assert!(wait_for(Duration::from_secs(3), || bob.get("/mail").status == 303));
    assert_eq!(
        w.client().login("bob@example.com", PASSWORD).status,
        401,
        "the old password still works"
    );
    let mut again = w.client();
    assert_eq!(again.login("bob@example.com", new_password).status, 303);
    assert_eq!(again.get("/mail").status, 200, "the new password signs in");
}

#[test]
fn html_is_sanitised_framed_and_remote_images_blocked() {
    let w = world();
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let view = alice.get(&format!("/mail/{}", w.alice_html));
    let csp = view
        .header("content-security-policy")
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline"),
        "no inline script or style in app pages: {csp}"
    );
    let text = view.text();
    assert!(
        text.contains("sandbox=\"allow-popups allow-popups-to-escape-sandbox\""),
        "{text}"
    );
    assert!(!text.contains("allow-scripts") && !text.contains("allow-same-origin"));
    assert!(
        text.contains("Remote images blocked to protect your privacy: 1."),
        "{text}"
    );
    let frame = alice.get(&format!("/mail/{}/body", w.alice_html));
    let csp = frame.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; img-src data:;"),
        "{csp}"
    );
    assert!(csp.contains("sandbox"), "{csp}");
    let html = frame.text().to_lowercase();
    let html = html[html.find("<body>").expect("body")..].to_string();
    for bad in [
        "<script",
        "onerror",
        "onbegin",
        "javascript:",
        "<iframe",
        "<form",
        "<object",
        "<embed",
        "<meta",
        "<base",
        "127.0.0.1:9",
        "position",
    ] {
        assert!(!html.contains(bad), "{bad} survived in {html}");
    }
    assert!(html.contains("data:image/png;base64,"), "cid image inlined");
    assert!(html.contains("rel=\"noopener noreferrer\"") && html.contains("target=\"_blank\""));
    // Asking for remote images: the pixel URL appears and the frame CSP allows it.
    let frame = alice.get(&format!("/mail/{}/body?images=1", w.alice_html));
    assert!(frame.text().contains("http://127.0.0.1:9/pixel.gif"));
    assert!(frame
        .header("content-security-policy")
        .unwrap()
        .contains("img-src data: https: http:"));
    assert!(w.audit().contains("\"action\":\"web-remote-images\""));
}

#[test]
fn attachments_download_with_safe_names_and_types() {
    let w = world();
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let view = alice.get(&format!("/mail/{}", w.alice_html)).text();
    assert!(view.contains("請求書.pdf"), "{view}");
    // Links by file name (the inline cid image is not listed, but keeps its index).
    let link = |name: &str| {
        let at = view
            .find(&format!("download=\"{name}\""))
            .unwrap_or_else(|| panic!("{name} in {view}"));
        let start = view[..at].rfind("href=\"").unwrap() + 6;
        view[start..start + view[start..].find('"').unwrap()].to_string()
    };
    let pdf = alice.get(&link("請求書.pdf"));
    assert_eq!(pdf.status, 200);
    assert_eq!(pdf.header("content-type"), Some("application/pdf"));
    let disposition = pdf.header("content-disposition").unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{disposition}"
    );
    assert!(
        disposition.contains("filename*=UTF-8''%E8%AB%8B%E6%B1%82%E6%9B%B8.pdf"),
        "path stripped: {disposition}"
    );
    assert!(!disposition.contains(".."), "{disposition}");
    assert_eq!(pdf.body, b"%PDF-1.4\n");
    assert_eq!(pdf.header("x-content-type-options"), Some("nosniff"));
    // The HTML attachment with a quote-injection name: one header, sandboxed.
    let evil_link = view[view.find("/part/").unwrap()..].to_string();
    assert!(evil_link.contains("evil"), "{evil_link}");
    let evil = alice.get(&link("evil x=.html"));
    let disposition = evil.header("content-disposition").unwrap();
    assert_eq!(disposition.matches("filename=").count(), 1, "{disposition}");
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert_eq!(
        evil.header("content-security-policy"),
        Some("default-src 'none'; sandbox")
    );
    assert_eq!(
        alice.get(&format!("/mail/{}/part/9", w.alice_html)).status,
        404
    );
    assert_eq!(
        alice
            .get(&format!("/mail/{}/part/..%2F..%2Fetc", w.alice_html))
            .status,
        404
    );
    let source = alice.get(&format!("/mail/{}/source", w.alice_jp));
    assert_eq!(
        source.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(source.text().contains("Subject: =?ISO-2022-JP?B?"));
    let audit = w.audit();
    assert!(audit.contains("\"action\":\"web-attachment-download\""));
    assert!(audit.contains("\"action\":\"web-source-view\""));
}

#[test]
fn admin_pages_steer_the_spool_and_are_audited() {
    let w = world();
    let mut admin = w.client();
    admin.login_fully("admin@example.com", Some(&w.admin_secret));
    let list = admin.get("/admin?recipient=bob%40example.com").text();
    assert!(
        list.contains(&w.bob_msg) && !list.contains(&w.alice_jp),
        "filter by recipient"
    );
    let detail = admin.get(&format!("/admin/message/{}", w.bob_msg));
    assert!(detail.text().contains("bob@example.com"));
    let csrf = detail.csrf();
    let id = w.bob_msg.parse().unwrap();
    let action = format!("/admin/message/{}/action", w.bob_msg);
    assert_eq!(
        admin
            .post(&action, &[("csrf", &csrf), ("action", "hold")])
            .status,
        303
    );
    assert!(held(&w.server, id));
    assert!(admin.get("/admin?status=held").text().contains(&w.bob_msg));
    assert_eq!(
        admin
            .post(&action, &[("csrf", &csrf), ("action", "release")])
            .status,
        303
    );
    assert!(!held(&w.server, id));
    // Reading someone else's mail as admin is possible and audited as such.
    let view = admin.get(&format!("/mail/{}", w.bob_msg));
    assert!(view.text().contains("salary details"));
    assert_eq!(
        admin
            .post(&action, &[("csrf", &csrf), ("action", "delete")])
            .status,
        303
    );
    assert!(common::block(w.server.spool.get(id)).unwrap().is_none());
    let audit_page = admin.get("/admin/audit?action=web-admin-hold").text();
    assert!(audit_page.contains(&w.bob_msg), "{audit_page}");
    let audit = w.audit();
    assert!(audit.contains(&format!(
        "\"action\":\"web-admin-message-view\",\"target\":\"{}\"",
        w.bob_msg
    )));
    assert!(audit.contains("\"action\":\"web-admin-delete\""));
    // The audit chain stays intact across the web and admin writers.
    breakwater::audit::verify(&w.fixture.config.admin.audit_log).expect("chain intact");
}

#[test]
fn language_follows_the_browser_and_the_switch() {
    let w = world();
    let mut c = w.client();
    c.headers
        .push(("Accept-Language".into(), "ja-JP,ja;q=0.9,en;q=0.5".into()));
    let login = c.get("/login").text();
    assert!(
        login.contains("lang=\"ja\"") && login.contains("サインイン"),
        "{login}"
    );
    c.login_fully("alice@example.com", None);
    assert!(c.get("/mail").text().contains("受信箱"));
    let switch = c.get("/lang/en?next=/mail");
    assert_eq!(switch.status, 303);
    assert_eq!(switch.location(), "/mail");
    let page = c.get("/mail").text();
    assert!(
        page.contains("lang=\"en\"") && page.contains("Mailbox"),
        "{page}"
    );
    // The switch never redirects off-site.
    assert_eq!(c.get("/lang/ja?next=//evil.example/").location(), "/mail");
    assert_eq!(
        c.get("/lang/ja?next=https://evil.example/").location(),
        "/mail"
    );
}

#[test]
fn delivered_mail_stays_readable_for_the_retention_time() {
    let rt = common::runtime();
    let sink = rt.block_on(common::sink::Sink::start(
        "127.0.0.1:0",
        common::sink::Script::default(),
    ));
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.domains[0].upstream = sink.addr.to_string();
    fixture.config.domains[0].tls = breakwater::config::UpstreamTls::None;
    fixture.config.web.retain_delivered = Duration::from_secs(3);
    add_user(
        &fixture.config.web.users_file,
        "alice@example.com",
        &[],
        false,
        false,
    );
    let server = rt.block_on(fixture.start());
    let id = send(
        &server,
        "alice@example.com",
        &plain_message("alice@example.com", "Kept after delivery", "retained body"),
    );
    let qid: breakwater::envelope::QueueId = id.parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || sink.delivered().len() == 1),
        "delivered upstream"
    );
    // Delivered, yet still readable, marked delivered.
    assert!(wait_for(Duration::from_secs(5), || common::block(
        server.spool.get(qid)
    )
    .unwrap()
    .is_some_and(|m| m.state.retain_until_ms.is_some())));
    let mut alice = WebClient::new(server.web_addr.unwrap());
    alice.login_fully("alice@example.com", None);
    let list = alice.get("/mail").text();
    assert!(
        list.contains("Kept after delivery") && list.contains("badge delivered"),
        "{list}"
    );
    assert!(alice
        .get(&format!("/mail/{id}"))
        .text()
        .contains("retained body"));
    // Then purged, and never delivered twice.
    assert!(
        wait_for(Duration::from_secs(10), || common::block(
            server.spool.get(qid)
        )
        .unwrap()
        .is_none()),
        "purged after the retention time"
    );
    assert_eq!(sink.delivered().len(), 1, "delivered exactly once");
    assert_eq!(alice.get(&format!("/mail/{id}")).status, 404);
    rt.block_on(server.shutdown());
}

#[test]
fn ip_lockout_uses_forwarded_address_only_from_trusted_proxies() {
    // Behind a trusted proxy: lockouts apply to the real client address.
    let w = world_with(|f| {
        f.config.web.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        f.config.web.lockout_ip_failures = 3;
    });
    let mut attacker = w.client();
    attacker
        .headers
        .push(("X-Forwarded-For".into(), "127.0.0.2".into()));
    for user in ["a@example.com", "b@example.com", "c@example.com"] {
        assert_eq!(attacker.login(user, "guess guess guess").status, 401);
    }
    assert_eq!(
        attacker.login("alice@example.com", PASSWORD).status,
        429,
        "address blocked"
    );
    assert!(
        w.audit().contains("\"ip\":\"127.0.0.2\""),
        "audit names the client, not the proxy"
    );
    let mut neighbour = w.client();
    neighbour
        .headers
        .push(("X-Forwarded-For".into(), "127.0.0.3".into()));
    assert_eq!(
        neighbour.login("alice@example.com", PASSWORD).status,
        303,
        "other clients unaffected"
    );

    // Without trusted proxies the header is ignored: it cannot dodge the lock.
    let w = world_with(|f| f.config.web.lockout_ip_failures = 3);
    for (i, user) in ["a@example.com", "b@example.com", "c@example.com"]
        .iter()
        .enumerate()
    {
        let mut c = w.client();
        c.headers
            .push(("X-Forwarded-For".into(), format!("127.0.0.{}", i + 10)));
        assert_eq!(c.login(user, "guess guess guess").status, 401);
    }
    let mut c = w.client();
    c.headers
        .push(("X-Forwarded-For".into(), "127.0.0.99".into()));
    assert_eq!(c.login("alice@example.com", PASSWORD).status, 429);
}

/// Every place that answers with a redirect built from `next` — the
/// language switch, the sign-in form when already signed in, the password
/// step and the TOTP step — sends hostile targets to `/mail` and keeps our
/// own routes (rebuilt). `%09` is a tab after decoding: browsers drop it and
/// would follow `/\t/evil.example` to `//evil.example`.
#[test]
fn no_redirect_site_leaves_the_site() {
    let w = world();
    const HOSTILE: &[&str] = &[
        "/%09/evil.example",
        "/%0a/evil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "/%20/evil.example",
        "https://evil.example/",
    ];
    let check = |location: &str, what: &str| {
        assert!(
            location == "/mail" || location == "/login/totp?next=/mail",
            "{what}: redirected to {location:?}"
        );
        assert!(!location.contains("evil"), "{what}: {location:?}");
    };
    let mut c = w.client();
    for next in HOSTILE {
        let page = c.get(&format!("/lang/en?next={next}"));
        assert_eq!(page.status, 303);
        check(page.location(), &format!("lang switch {next}"));
        // The sign-in form reflects only a validated target.
        let form = c.get(&format!("/login?next={next}"));
        assert!(!form.text().contains("evil"), "login form {next}");
    }
    // Password step, then the TOTP step that carries next along (one admin
    // sign-in: a TOTP code is single-use).
    {
        let next = HOSTILE[0];
        let decoded: String = form_decode(next);
        let mut admin = w.client();
        let form = admin.get("/login");
        let step = admin.post(
            "/login",
            &[
                ("address", "admin@example.com"),
                ("password", PASSWORD),
                ("csrf", &form.csrf()),
                ("next", &decoded),
            ],
        );
        assert_eq!(step.status, 303);
        check(step.location(), &format!("password step {next}"));
        let totp = admin.get(step.location());
        assert!(!totp.text().contains("evil"), "totp form {next}");
        let code = totp_code(&w.admin_secret, "admin@example.com");
        let done = admin.post(
            "/login/totp",
            &[("code", &code), ("csrf", &totp.csrf()), ("next", &decoded)],
        );
        assert_eq!(done.status, 303, "{}", done.text());
        check(done.location(), &format!("totp step {next}"));
        // Signed in: the sign-in form redirects straight to next.
        let again = admin.get(&format!("/login?next={next}"));
        assert_eq!(again.status, 303);
        check(again.location(), &format!("signed-in login form {next}"));
        // A good target survives, rebuilt.
        let good = admin.get("/login?next=%2Fadmin%2Faudit");
        assert_eq!(good.location(), "/admin/audit");
    }
    // Users without TOTP: the password step redirects straight to next.
    for next in HOSTILE {
        let mut alice = w.client();
        let form = alice.get("/login");
        let done = alice.post(
            "/login",
            &[
                ("address", "alice@example.com"),
                ("password", PASSWORD),
                ("csrf", &form.csrf()),
                ("next", &form_decode(next)),
            ],
        );
        assert_eq!(done.status, 303);
        check(done.location(), &format!("password step {next}"));
    }
}

fn form_decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A phishing warning is only as good as the headers it shows: the reader
/// shows what a strict parser sees (no subject from `Sub ject:` or a stray
/// continuation; a military-zone Date does not hide the Subject), flags the
/// malformed lines, and decodes the JIS X 0213 charset labels.
#[test]
fn the_reader_shows_headers_as_a_strict_parser_reads_them() {
    let w = world();
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let view = |alice: &mut WebClient, raw: &[u8]| {
        let id = send(&w.server, "alice@example.com", raw);
        alice.get(&format!("/mail/{id}")).text()
    };
    let heading = |page: &str| {
        let start = page.find("<h1>").map_or(0, |at| at + 4);
        let end = page[start..]
            .find("</h1>")
            .map_or(page.len(), |at| start + at);
        page[start..end].to_string()
    };
    let page = view(
        &mut alice,
        b"From: it@example.org\r\nSub ject: Your password expires\r\n\r\nbody\r\n",
    );
    let h1 = heading(&page);
    assert!(
        !h1.contains("password"),
        "malformed name shown as the subject: {h1}"
    );
    assert!(page.contains("Malformed header lines"), "not flagged");
    assert!(
        page.contains("Sub ject: Your password expires"),
        "line not shown"
    );
    let page = view(
        &mut alice,
        b" Subject: stray\r\nFrom: it@example.org\r\n\r\nbody\r\n",
    );
    let h1 = heading(&page);
    assert!(!h1.contains("stray"), "{h1}");
    let page = view(
        &mut alice,
        b"From: it@example.org\r\nDate: Tue, 1 Dec 2026 14:53:31 A\r\nSubject: Kept after the date\r\n\r\nbody\r\n",
    );
    assert!(page.contains("<h1>Kept after the date</h1>"), "{page}");
    assert!(!page.contains("Malformed header lines"));
    // Shift_JISX0213: 日本語 in the subject and the body.
    let mut raw = b"From: a@example.jp\r\nSubject: =?Shift_JISX0213?B?k/qWe4zq?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=Shift_JISX0213\r\n\r\n".to_vec();
    raw.extend_from_slice(b"\x93\xfa\x96\x7b\x8c\xea\r\n");
    let page = view(&mut alice, &raw);
    assert!(page.contains("<h1>日本語</h1>"), "{page}");
    assert!(page.matches("日本語").count() >= 2, "body decoded too");
}

/// `[web] max_connections`: at the cap a new connection waits in the
/// backlog (it is not served) until an open one closes.
#[test]
fn web_connections_are_capped_and_served_again_when_one_closes() {
    use std::io::{Read, Write};
    let mut fixture = Fixture::new();
    fixture.config.web.max_connections = 3;
    let (_rt, server) = start_in_process(&fixture);
    let addr = server.web_addr.expect("web enabled");
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut late = std::net::TcpStream::connect(addr).unwrap();
    late.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    late.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = late.read(&mut buf);
    assert!(
        early.is_err(),
        "a fourth connection was served past max_connections = 3: {:?}",
        early.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    drop(idle);
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = late.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
}

/// Is the spooled message `id` on hold (it must still be spooled)?
fn held(server: &breakwater::server::Server, id: breakwater::envelope::QueueId) -> bool {
    common::block(server.spool.get(id))
        .unwrap()
        .expect("still spooled")
        .state
        .held
}

/// Search is answered by the persistent index once it has caught up with
/// the spool: a new message is found within seconds of arriving (the
/// spool's feed), by a word's beginning and by Japanese character pairs,
/// but not by a piece inside a word (which only the slow scan would find:
/// that is how this test knows the index answered); a removed message is
/// gone; and an index deleted while the server was down is built again
/// from the spool at the next start.
#[test]
fn mailbox_search_is_answered_by_an_index_that_follows_the_spool() {
    let World {
        fixture,
        _rt: rt,
        server,
        ..
    } = world();
    let web = server.web_addr.unwrap();
    let signed_in = || {
        let mut alice = WebClient::new(web);
        assert_eq!(alice.login("alice@example.com", PASSWORD).status, 303);
        alice
    };
    let mut alice = signed_in();
    assert!(
        wait_for(Duration::from_secs(20), || !alice
            .get("/mail?q=widgets")
            .text()
            .contains("search-building")),
        "the index never caught up"
    );
    let invoice = send(
        &server,
        "alice@example.com",
        &plain_message(
            "alice@example.com",
            "Invoice 2026-03",
            "請求書を添付します。ご確認ください。",
        ),
    );
    assert!(
        wait_for(Duration::from_secs(10), || alice
            .get("/mail?q=invo")
            .text()
            .contains("Invoice 2026-03")),
        "a new message is searchable within seconds"
    );
    let found = alice.get("/mail?q=%E8%AB%8B%E6%B1%82%E6%9B%B8").text(); // 請求書
    assert!(
        found.contains("Invoice 2026-03") && found.contains("1 message"),
        "{found}"
    );
    let inside = alice.get("/mail?q=voice").text();
    assert!(
        !inside.contains("Invoice 2026-03") && !inside.contains("search-building"),
        "answered by the index, not by a substring scan: {inside}"
    );
    assert!(alice.get("/mail?q=widgets").text().contains("Order 7781"));
    let id: breakwater::envelope::QueueId = invoice.parse().unwrap();
    assert!(rt.block_on(server.spool.remove(id, "deleted")).unwrap());
    assert!(!alice.get("/mail?q=invo").text().contains("Invoice 2026-03"));
    rt.block_on(server.shutdown());

    let search_dir = fixture.config.spool.dir.join("search");
    assert!(
        search_dir.join("meta.json").exists(),
        "the index is persisted"
    );
    std::fs::remove_dir_all(&search_dir).unwrap();
    let (rt, server) = start_in_process(&fixture);
    let mut alice = WebClient::new(server.web_addr.unwrap());
    assert_eq!(alice.login("alice@example.com", PASSWORD).status, 303);
    assert!(
        wait_for(Duration::from_secs(20), || !alice
            .get("/mail?q=widgets")
            .text()
            .contains("search-building")),
        "the index was never rebuilt"
    );
    assert!(alice.get("/mail?q=widgets").text().contains("Order 7781"));
    assert!(alice
        .get("/mail?q=%E4%BC%9A%E8%AD%B0") // 会議
        .text()
        .contains("障害のお知らせ"));
    assert!(!alice.get("/mail?q=invo").text().contains("Invoice 2026-03"));
    rt.block_on(server.shutdown());
}

/// The text between `start` and the next `end` after it, for each occurrence.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Vec<&'a str> {
    text.split(start)
        .skip(1)
        .filter_map(|rest| rest.split_once(end).map(|(inside, _)| inside))
        .collect()
}

fn otpauth_secret(page: &str) -> String {
    let uri = between(page, "href=\"otpauth://", "\"")
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no otpauth URI in {page}"))
        .replace("&amp;", "&");
    between(&format!("{uri}&"), "secret=", "&")[0].to_string()
}

fn stored_account(w: &World, address: &str) -> breakwater::accounts::Account {
    breakwater::accounts::list(&w.fixture.config.web.users_file)
        .unwrap()
        .into_iter()
        .find(|a| a.address == address)
        .unwrap()
}

#[test]
fn an_admin_enrols_at_first_sign_in_and_recovery_codes_work_once() {
    let w = world();
    let users = w.fixture.config.web.users_file.clone();
    add_user(&users, "newadmin@example.com", &[], true, false);
    // The server's watcher sees the new admin before anyone signs in (it
    // looks every 250 ms): otherwise account and authenticator are first
    // seen together, as one new admin, and there is no enrolment event.
    assert!(wait_for(Duration::from_secs(2), || w.audit().contains(
        "\"action\":\"security:admin-created\",\"target\":\"newadmin@example.com\""
    )));
    let mut c = w.client();
    let step = c.login("newadmin@example.com", PASSWORD);
    assert_eq!(step.status, 303);
    let page = c.get(step.location());
    assert_eq!(page.status, 200);
    let text = page.text();
    assert!(text.contains("<svg"), "QR code drawn by the server: {text}");
    let secret = otpauth_secret(&text);
    assert!(text.contains(&secret), "key shown for typing by hand");
    // A wrong code changes nothing.
    let wrong = c.post(
        "/login/enrol",
        &[("code", "000000"), ("csrf", &page.csrf())],
    );
    assert_eq!(wrong.status, 401);
    assert!(stored_account(&w, "newadmin@example.com")
        .totp_secret
        .is_none());
    assert_eq!(c.get("/mail").status, 303);
    // The current code from the shown secret enrols it and signs in.
    let code = totp_code(&secret, "newadmin@example.com");
    let done = c.post(
        "/login/enrol",
        &[("code", &code), ("csrf", &page.csrf()), ("next", "/admin")],
    );
    assert_eq!(done.status, 200, "{}", done.text());
    let codes: Vec<String> = between(&done.text(), "<li><code>", "</code>")
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(codes.len(), 10, "{}", done.text());
    let stored = stored_account(&w, "newadmin@example.com");
    assert_eq!(stored.totp_secret.as_deref(), Some(secret.as_str()));
    assert_eq!(stored.recovery_codes.len(), 10);
    assert!(
        codes.iter().all(|code| !stored
            .recovery_codes
            .iter()
            .any(|h| h.contains(code.as_str()))),
        "only hashes are stored"
    );
    assert_eq!(c.get("/admin").status, 200, "signed in after enrolment");
    // The next sign-in asks for the code; a recovery code stands in once.
    let mut phone_lost = w.client();
    let step = phone_lost.login("newadmin@example.com", PASSWORD);
    assert!(step.location().starts_with("/login/totp"));
    let form = phone_lost.get(step.location());
    let used = phone_lost.post(
        "/login/totp",
        &[("code", &codes[4].to_uppercase()), ("csrf", &form.csrf())],
    );
    assert_eq!(used.status, 303, "{}", used.text());
    assert_eq!(phone_lost.get("/mail").status, 200);
    assert_eq!(
        stored_account(&w, "newadmin@example.com")
            .recovery_codes
            .len(),
        9
    );
    let mut again = w.client();
    again.login("newadmin@example.com", PASSWORD);
    let form = again.get("/login/totp");
    let replay = again.post(
        "/login/totp",
        &[("code", &codes[4]), ("csrf", &form.csrf())],
    );
    assert_eq!(replay.status, 401, "a recovery code works once");
    let audit = w.audit();
    assert!(audit.contains("ok (password + recovery code)"), "{audit}");
    assert!(audit.contains("\"action\":\"web-totp-enrolled\""));
    // Both are security events at once, naming who did it and from where.
    for event in ["totp-enrolled", "recovery-code-used"] {
        let line = format!(
            "\"actor\":\"newadmin@example.com\",\"ip\":\"127.0.0.1\",\"action\":\"security:{event}\""
        );
        assert!(
            wait_for(Duration::from_secs(1), || w.audit().contains(&line)),
            "{event}: {}",
            w.audit()
        );
    }
}

#[test]
fn destructive_and_account_changes_ask_to_confirm_it_is_you() {
    let w = world_with(|f| f.config.web.reauth_window = Duration::from_millis(1500));
    let mut admin = w.client();
    admin.login_fully("admin@example.com", Some(&w.admin_secret));
    let detail = admin.get(&format!("/admin/message/{}", w.bob_msg));
    let csrf = detail.csrf();
    let action = format!("/admin/message/{}/action", w.bob_msg);
    let id = w.bob_msg.parse().unwrap();
    let still_spooled = || common::block(w.server.spool.get(id)).unwrap().is_some();
    let open_sessions = |admin: &mut common::web::WebClient| {
        admin
            .get("/admin/sessions")
            .text()
            .matches("name=\"handle\"")
            .count()
    };
    // Within the window after signing in: no question (hold never asks).
    assert_eq!(
        admin
            .post(&action, &[("csrf", &csrf), ("action", "hold")])
            .status,
        303
    );
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(
        admin
            .post(&action, &[("csrf", &csrf), ("action", "release")])
            .status,
        303,
        "undoable actions never ask"
    );
    // After it, delete shows the challenge and does nothing.
    let challenge = admin.post(&action, &[("csrf", &csrf), ("action", "delete")]);
    assert_eq!(challenge.status, 403);
    assert!(
        challenge.text().contains("name=\"reauth_password\""),
        "{}",
        challenge.text()
    );
    assert!(
        challenge.text().contains(&format!("action=\"{action}\"")),
        "re-posts to the action"
    );
    assert!(still_spooled(), "not deleted");
    let wrong = admin.post(
        &action,
        &[
            ("csrf", &csrf),
            ("action", "delete"),
            ("reauth_password", "not the password"),
        ],
    );
    assert_eq!(wrong.status, 401);
    assert!(still_spooled(), "not deleted");
    let right = admin.post(
        &action,
        &[
            ("csrf", &csrf),
            ("action", "delete"),
            ("reauth_password", PASSWORD),
        ],
    );
    assert_eq!(right.status, 303, "{}", right.text());
    assert!(!still_spooled(), "deleted once confirmed");
    // The confirmation lasts the window: a second destructive action goes through.
    let alias_action = format!("/admin/message/{}/action", w.alias_msg);
    assert_eq!(
        admin
            .post(&alias_action, &[("csrf", &csrf), ("action", "bounce")])
            .status,
        303
    );
    // Revoking a session and new recovery codes ask again after the window.
    std::thread::sleep(Duration::from_millis(1700));
    let mut other = w.client();
    other.login_fully("alice@example.com", None);
    let sessions = admin.get("/admin/sessions").text();
    let alice_row = sessions
        .split("alice@example.com")
        .nth(1)
        .expect("alice's session listed");
    let handle = between(alice_row, "name=\"handle\" value=\"", "\"")[0].to_string();
    let challenge = admin.post(
        "/admin/sessions/revoke",
        &[("csrf", &csrf), ("handle", &handle)],
    );
    assert_eq!(challenge.status, 403);
    assert_eq!(open_sessions(&mut admin), 2);
    let codes = admin.post("/account/recovery-codes", &[("csrf", &csrf)]);
    assert_eq!(codes.status, 403, "new recovery codes ask too");
    let done = admin.post(
        "/admin/sessions/revoke",
        &[
            ("csrf", &csrf),
            ("handle", &handle),
            ("reauth_password", PASSWORD),
        ],
    );
    assert_eq!(done.status, 303);
    assert_eq!(open_sessions(&mut admin), 1);
    let audit = w.audit();
    assert!(
        audit.contains("\"action\":\"web-reauth-failed\""),
        "{audit}"
    );
    assert!(audit.contains("\"action\":\"web-reauth\""), "{audit}");
}

/// The world with `[send] mode = "always"` and a DKIM key for example.com.
fn world_that_sends(algorithm: breakwater::dkim::Algorithm) -> World {
    world_that_sends_with(algorithm, |_| {})
}

/// `[send] mode = "always"` with a DKIM key for example.com, then `adjust`.
fn world_that_sends_with(
    algorithm: breakwater::dkim::Algorithm,
    adjust: impl FnOnce(&mut Fixture),
) -> World {
    world_with(|f| {
        f.with_dkim_key(algorithm);
        f.config.send.mode = breakwater::config::SendMode::Always;
        adjust(f);
    })
}

/// `[send]` in the web reader: a user answers a message sent to one of her
/// aliases (From preset to it, threading and quoting filled in), the reply
/// is DKIM-signed and queued for To, Cc and Bcc (no Bcc header); a forged
/// From, a missing CSRF token, someone else's message (also for an admin)
/// and sending when it is off are refused; each send and refusal is audited.
#[test]
fn a_user_replies_from_the_web_reader_and_forgeries_are_refused() {
    let w = world_that_sends(breakwater::dkim::Algorithm::Ed25519);
    let original = send(
        &w.server,
        "sales@example.com",
        b"From: Customer <buyer@remote.test>\r\nTo: sales@example.com\r\nCc: other@remote.test\r\nSubject: =?UTF-8?B?5rOo5paH44Gu56K66KqN?=\r\nMessage-ID: <order-42@remote.test>\r\nDate: Thu, 03 Dec 2026 09:00:00 +0900\r\n\r\nPlease confirm order 42.\r\n",
    );
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let page = alice.get(&format!("/mail/{original}"));
    assert!(
        page.text()
            .contains(&format!("/mail/compose?reply={original}")),
        "{}",
        page.text()
    );
    let form = alice.get(&format!("/mail/compose?reply={original}&all=1"));
    assert_eq!(form.status, 200, "{}", form.text());
    let html = form.text();
    assert!(html.contains("Re: 注文の確認"), "{html}");
    assert!(
        html.contains("<option value=\"sales@example.com\" selected>"),
        "answers from the alias it came to: {html}"
    );
    assert!(html.contains("value=\"buyer@remote.test\""), "{html}");
    assert!(
        html.contains("value=\"other@remote.test\""),
        "reply all: {html}"
    );
    assert!(
        html.contains("&gt; Please confirm order 42."),
        "quoted: {html}"
    );
    let value =
        |name: &str| between(&html, &format!("name=\"{name}\" value=\""), "\"")[0].to_string();
    assert_eq!(value("in_reply_to"), "order-42@remote.test");
    let csrf = form.csrf();
    let fields = |from: &str| {
        vec![
            ("csrf".to_string(), csrf.clone()),
            ("from".to_string(), from.to_string()),
            ("to".to_string(), "buyer@remote.test".to_string()),
            ("cc".to_string(), "other@remote.test".to_string()),
            ("bcc".to_string(), "boss@example.com".to_string()),
            ("subject".to_string(), "Re: 注文の確認".to_string()),
            (
                "text".to_string(),
                "確認しました。\n> Please confirm order 42.".to_string(),
            ),
            ("in_reply_to".to_string(), value("in_reply_to")),
            ("references".to_string(), value("references")),
        ]
    };
    let post = |client: &mut common::web::WebClient, fields: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        client.post("/mail/send", &pairs)
    };
    let done = post(&mut alice, &fields("sales@example.com"));
    assert_eq!(done.status, 200, "{}", done.text());
    let queue_id = between(&done.text(), "queue ID ", ")")[0].to_string();
    let id = queue_id.parse().unwrap();
    let queued = common::block(w.server.spool.get(id)).unwrap().unwrap();
    assert_eq!(queued.envelope.sender, "sales@example.com");
    assert_eq!(queued.envelope.recipients.len(), 3);
    let raw = common::block(w.server.spool.read_body(id)).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(
        text.contains("In-Reply-To: <order-42@remote.test>"),
        "{text}"
    );
    assert!(!text.contains("boss@example.com"), "no Bcc header: {text}");

    // A crafted form with someone else's address: refused, nothing queued.
    let before = w.server.spool.len();
    let forged = post(&mut alice, &fields("ceo@example.com"));
    assert_eq!(forged.status, 403);
    assert!(
        forged.text().contains("not one of your addresses"),
        "{}",
        forged.text()
    );
    let mut no_csrf = fields("sales@example.com");
    no_csrf[0].1 = "wrong".into();
    assert_eq!(post(&mut alice, &no_csrf).status, 403);
    assert_eq!(w.server.spool.len(), before);
    // Bob cannot answer Alice's mail; an admin reads it but cannot forward it.
    let mut bob = w.client();
    bob.login_fully("bob@example.com", None);
    assert_eq!(
        bob.get(&format!("/mail/compose?reply={original}")).status,
        404
    );
    let mut admin = w.client();
    admin.login_fully("admin@example.com", Some(&w.admin_secret));
    assert_eq!(admin.get(&format!("/mail/{original}")).status, 200);
    assert_eq!(
        admin
            .get(&format!("/mail/compose?forward={original}"))
            .status,
        404
    );
    let audit = w.audit();
    assert!(audit.contains("\"action\":\"web-send\""), "{audit}");
    assert!(audit.contains("\"action\":\"web-send-refused\""), "{audit}");
    assert!(audit.contains("Message-ID <"), "{audit}");

    // The admins' switch (CLI over the admin socket): everyone stops at
    // once, loudly; resuming lets Alice send again.
    let config = w.fixture.write_config();
    let cli = |args: &[&str]| {
        let out = run_cli(&config, args, "");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(cli(&["sending", "stop"]).contains("stopped by an administrator"));
    let stopped = post(&mut alice, &fields("sales@example.com"));
    assert_eq!(stopped.status, 403);
    assert!(
        stopped.text().contains("stopped all sending"),
        "{}",
        stopped.text()
    );
    assert!(alice
        .get("/mail/compose")
        .text()
        .contains("stopped all sending"));
    assert!(wait_for(Duration::from_secs(1), || w
        .audit()
        .contains("\"action\":\"security:sending-switched\"")));
    assert!(cli(&["sending", "status"]).contains("stopped"));
    assert!(cli(&["sending", "resume"]).contains("not stopped"));
    assert_eq!(post(&mut alice, &fields("sales@example.com")).status, 200);
}

#[test]
fn without_send_mode_there_is_no_compose_page() {
    let w = world_with(|_| {});
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let page = alice.get(&format!("/mail/{}", w.alias_msg));
    assert!(!page.text().contains("/mail/compose"), "{}", page.text());
    let form = alice.get("/mail/compose");
    assert_eq!(form.status, 403);
    assert!(form.text().contains("not turned it on"), "{}", form.text());
}

/// Forward: the original's text is quoted under a header block and its
/// attachments go along (fetched again with the user's own access).
#[test]
fn a_forward_carries_the_original_attachments() {
    let w = world_that_sends(breakwater::dkim::Algorithm::Rsa);
    let original = send(
        &w.server,
        "alice@example.com",
        b"From: Supplier <s@remote.test>\r\nTo: alice@example.com\r\nSubject: Invoice\r\nMessage-ID: <inv-9@remote.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe invoice is attached.\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice-9.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgaW52b2ljZQ==\r\n--b1--\r\n",
    );
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let form = alice.get(&format!("/mail/compose?forward={original}"));
    assert_eq!(form.status, 200, "{}", form.text());
    let html = form.text();
    assert!(html.contains("value=\"Fwd: Invoice\""), "{html}");
    assert!(html.contains("Forwarded message"), "{html}");
    assert!(
        html.contains(&format!("name=\"forward\" value=\"{original}\"")),
        "{html}"
    );
    let done = alice.post(
        "/mail/send",
        &[
            ("csrf", &form.csrf()),
            ("from", "alice@example.com"),
            ("to", "accounts@remote.test"),
            ("subject", "Fwd: Invoice"),
            ("text", "Please pay this one."),
            ("forward", &original),
        ],
    );
    assert_eq!(done.status, 200, "{}", done.text());
    let id = between(&done.text(), "queue ID ", ")")[0].parse().unwrap();
    let raw = common::block(w.server.spool.read_body(id)).unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let attachment = parsed.attachment(0).expect("the invoice goes along");
    use mail_parser::MimeHeaders;
    assert_eq!(attachment.attachment_name(), Some("invoice-9.pdf"));
    assert_eq!(attachment.contents(), b"%PDF-1.4 invoice");
    assert_eq!(
        attachment.content_type().map(|c| c.ctype()),
        Some("application")
    );
}

/// What stands between one phished password and a spam cannon, over real
/// HTTP: `require_totp` (no authenticator, no code, a wrong code: refused;
/// the right one once per session), the hourly limit (429 with the wait,
/// in Japanese too, and a `sending-limit-reached` security event), an
/// oversized upload (413 before it is all read, nothing queued), the CSRF
/// token on the multipart form, a subject whose encoded word hides a line
/// break (stays one header), and a disabled account.
#[test]
fn sending_limits_hold_over_real_http() {
    let w = world_that_sends_with(breakwater::dkim::Algorithm::Ed25519, |f| {
        f.config.send.max_per_hour = 2;
        f.config.send.max_message_size = bytesize::ByteSize::kib(64);
        f.config.send.require_totp = true;
    });
    let users = w.fixture.config.web.users_file.clone();
    let secret = add_user(&users, "carol@example.com", &[], false, true).unwrap();
    let fields = |csrf: &str, code: &str, subject: &str| {
        vec![
            ("csrf".to_string(), csrf.to_string()),
            ("from".to_string(), "carol@example.com".to_string()),
            ("to".to_string(), "partner@remote.test".to_string()),
            ("subject".to_string(), subject.to_string()),
            ("text".to_string(), "hello".to_string()),
            ("send_code".to_string(), code.to_string()),
        ]
    };
    let post = |client: &mut common::web::WebClient,
                fields: &[(String, String)],
                files: &[(&str, &str, &str, &[u8])]| {
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        client.post_multipart("/mail/send", &pairs, files)
    };

    // Alice has no authenticator: she cannot send at all.
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    let csrf = alice.get("/mail/compose").csrf();
    let before = w.server.spool.len();
    let refused = post(&mut alice, &fields(&csrf, "", "hi"), &[]);
    assert_eq!(refused.status, 403);
    assert!(
        refused.text().contains("set up an authenticator app"),
        "{}",
        refused.text()
    );

    let mut carol = w.client();
    carol.login_fully("carol@example.com", Some(&secret));
    let form = carol.get("/mail/compose");
    assert!(
        form.text().contains("name=\"send_code\""),
        "{}",
        form.text()
    );
    let csrf = form.csrf();
    let no_code = post(&mut carol, &fields(&csrf, "", "hi"), &[]);
    assert_eq!(no_code.status, 403);
    assert!(
        no_code.text().contains("Enter the code"),
        "{}",
        no_code.text()
    );
    let wrong = post(&mut carol, &fields(&csrf, "000000", "hi"), &[]);
    assert_eq!(wrong.status, 403);
    assert!(wrong.text().contains("not right"), "{}", wrong.text());
    assert_eq!(w.server.spool.len(), before, "nothing queued so far");
    // The CSRF token is checked on the multipart form too. (The sign-in
    // spent this window's code, and a code is good once: the next one.)
    let next_window = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    let code = breakwater::accounts::totp::totp_for(&secret, "carol@example.com")
        .unwrap()
        .generate(next_window);
    assert_eq!(
        post(&mut carol, &fields("forged", &code, "hi"), &[]).status,
        403
    );
    // Too large: refused as it arrives, nothing queued.
    let big = vec![b'x'; 80 * 1024];
    let oversized = post(
        &mut carol,
        &fields(&csrf, &code, "big"),
        &[("attachment", "big.bin", "application/octet-stream", &big)],
    );
    assert_eq!(oversized.status, 413, "{}", oversized.text());
    assert!(oversized.text().contains("at most"), "{}", oversized.text());
    assert_eq!(w.server.spool.len(), before);
    // The right code: sent; a subject whose encoded word hides a CR LF
    // and a Bcc stays one header line.
    let hidden = "=?UTF-8?B?aGkNCkJjYzogdmljdGltQHJlbW90ZS50ZXN0?=";
    let first = post(&mut carol, &fields(&csrf, &code, hidden), &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    let id = between(&first.text(), "queue ID ", ")")[0].parse().unwrap();
    let raw = common::block(w.server.spool.read_body(id)).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "{text}"
    );
    let queued = common::block(w.server.spool.get(id)).unwrap().unwrap();
    assert!(!queued
        .envelope
        .recipients
        .iter()
        .any(|r| r.address.contains("victim")));
    // Once per session: the second send needs no code.
    let second = post(&mut carol, &fields(&csrf, "", "second"), &[]);
    assert_eq!(second.status, 200, "{}", second.text());
    // Two an hour: the third waits, told how long, in her language.
    carol.headers.push(("Accept-Language".into(), "ja".into()));
    let third = post(&mut carol, &fields(&csrf, "", "third"), &[]);
    assert_eq!(third.status, 429);
    assert!(
        third.text().contains("1 時間に 2 通まで"),
        "{}",
        third.text()
    );
    assert!(wait_for(Duration::from_secs(2), || w
        .audit()
        .contains("\"action\":\"security:sending-limit-reached\"")));
    // The Sent page lists both.
    let sent = carol.get("/mail/sent").text();
    assert!(
        sent.contains("second") && sent.contains("partner@remote.test"),
        "{sent}"
    );
    // Disabled: the session ends (a POST without one is 401), nothing
    // more is sent.
    breakwater::accounts::update(&users, "carol@example.com", |a| {
        a.disabled = true;
        Ok(())
    })
    .unwrap();
    let queued_now = w.server.spool.len();
    assert!(wait_for(Duration::from_secs(3), || post(
        &mut carol,
        &fields(&csrf, "", "after"),
        &[]
    )
    .status
        == 401));
    assert_eq!(w.server.spool.len(), queued_now);
}

/// The admins' switch in the web admin: stop is one click; resume asks
/// "confirm it's you" (a stolen admin cookie alone cannot turn sending
/// back on); both audited as security events; a user sees the stop.
#[test]
fn an_admin_stops_and_resumes_sending_in_the_web_admin() {
    let w = world_that_sends_with(breakwater::dkim::Algorithm::Ed25519, |f| {
        f.config.web.reauth_window = Duration::from_millis(1);
    });
    let mut admin = w.client();
    admin.login_fully("admin@example.com", Some(&w.admin_secret));
    let page = admin.get("/admin/upstreams");
    assert!(
        page.text().contains("value=\"stop_sending\""),
        "{}",
        page.text()
    );
    let csrf = page.csrf();
    let stopped = admin.post(
        "/admin/sending",
        &[("csrf", &csrf), ("action", "stop_sending")],
    );
    assert_eq!(stopped.status, 303, "{}", stopped.text());
    let mut alice = w.client();
    alice.login_fully("alice@example.com", None);
    assert!(alice
        .get("/mail/compose")
        .text()
        .contains("stopped all sending"));
    assert!(admin
        .get("/admin/upstreams")
        .text()
        .contains("value=\"resume_sending\""));
    // Resume: the cookie alone is not enough.
    let challenged = admin.post(
        "/admin/sending",
        &[("csrf", &csrf), ("action", "resume_sending")],
    );
    assert_eq!(challenged.status, 403);
    assert!(
        challenged.text().contains("reauth_password"),
        "{}",
        challenged.text()
    );
    assert!(alice
        .get("/mail/compose")
        .text()
        .contains("stopped all sending"));
    let resumed = admin.post(
        "/admin/sending",
        &[
            ("csrf", &csrf),
            ("action", "resume_sending"),
            ("reauth_password", PASSWORD),
        ],
    );
    assert_eq!(resumed.status, 303, "{}", resumed.text());
    assert_eq!(alice.get("/mail/compose").status, 200);
    let audit = w.audit();
    for action in [
        "web-sending-stop",
        "web-sending-resume",
        "security:sending-switched",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action}: {audit}"
        );
    }
}

/// Every POST route of `web::ROUTES`, signed in as an admin (the most any
/// session can do), with a wrong CSRF token: the CSRF refusal, whatever
/// else the form holds. A new POST route is covered by being listed.
#[test]
fn every_post_route_refuses_a_wrong_csrf_token() {
    let w = world_that_sends(breakwater::dkim::Algorithm::Ed25519);
    let mut admin = w.client();
    admin.login_fully("admin@example.com", Some(&w.admin_secret));
    let before = w.server.spool.len();
    for (method, route) in breakwater::web::ROUTES {
        if *method != "post" {
            continue;
        }
        let path = route
            .replace("{id}", &w.alice_jp)
            .replace("{name}", "mx:example.com");
        let fields = [
            ("csrf", "0000"),
            ("action", "stop_sending"),
            ("handle", "x"),
            ("from", "admin@example.com"),
            ("to", "x@remote.test"),
            ("address", "admin@example.com"),
            ("password", PASSWORD),
            ("code", "000000"),
        ];
        let page = admin.post(&path, &fields);
        if ["/login/totp", "/login/enrol"].contains(&path.as_str()) {
            // The second sign-in step takes a half-signed-in session only;
            // without one it sends the visitor back to the start.
            assert_eq!(page.status, 303, "POST {path}");
            assert_eq!(page.location(), "/login", "POST {path}");
            continue;
        }
        assert_eq!(page.status, 403, "POST {path}: {}", page.text());
        assert!(
            page.text().contains("form expired"),
            "POST {path}: {}",
            page.text()
        );
        if path == "/mail/send" {
            let files: [(&str, &str, &str, &[u8]); 1] =
                [("attachment", "a.txt", "text/plain", b"x")];
            let page = admin.post_multipart(&path, &fields, &files);
            assert_eq!(page.status, 403, "multipart POST {path}");
        }
    }
    assert_eq!(w.server.spool.len(), before, "nothing queued");
    assert!(admin.get("/mail").status == 200, "still signed in");
}

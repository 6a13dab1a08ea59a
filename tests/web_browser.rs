//! The web reader in real headless Chromium (Debian's /usr/bin/chromium,
//! driven by playwright-core from tests/browser): TOTP sign-in, the outage
//! banner for a real upstream failure, ISO-2022-JP rendering, hostile HTML
//! with no script running and no remote fetch, an attachment download, and
//! an admin hold/release. Screenshots go to target/browser-screenshots.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use breakwater::config::UpstreamTls;
use common::web::*;
use common::*;

/// A loopback "tracking" server: counts every connection it gets.
fn tracking_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.read(&mut buf);
        }
    });
    (host, hits)
}

/// tests/browser, with playwright-core and Chromium checked to be there.
fn browser_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (scripts/test does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: apt-get install chromium (scripts/test does)"
    );
    browser_dir
}

/// Run one script of tests/browser; its output is printed and returned.
fn run_script(script: &str, envs: &[(&str, String)]) -> String {
    let browser_dir = browser_dir();
    let output = Command::new("node")
        .arg(browser_dir.join(script))
        .current_dir(&browser_dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    stdout
}

#[test]
fn an_admin_enrols_an_authenticator_and_uses_a_recovery_code_in_chromium() {
    let mut fixture = Fixture::new();
    fixture.config.web.reauth_window = Duration::from_secs(2);
    let users = fixture.config.web.users_file.clone();
    add_user(&users, "first@example.com", &[], true, false);
    let (_rt, server) = start_in_process(&fixture);
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    run_script(
        "enrol.mjs",
        &[
            ("BW_BASE", format!("http://{}", server.web_addr.unwrap())),
            ("BW_SCREENSHOTS", shots.display().to_string()),
            ("BW_PASSWORD", PASSWORD.to_string()),
            ("BW_NEW_ADMIN", "first@example.com".to_string()),
            ("BW_REAUTH_MS", "2000".to_string()),
        ],
    );
    let account = breakwater::accounts::list(&users)
        .unwrap()
        .into_iter()
        .find(|a| a.address == "first@example.com")
        .unwrap();
    assert!(account.totp_secret.is_some(), "enrolled");
    assert_eq!(account.recovery_codes.len(), 10, "the regenerated set");
    let audit = std::fs::read_to_string(&fixture.config.admin.audit_log).unwrap();
    for action in [
        "web-totp-enrolled",
        "web-reauth-failed",
        "web-reauth",
        "web-recovery-codes",
        "security:totp-enrolled",
        "security:recovery-code-used",
        "security:recovery-codes-regenerated",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action} audited"
        );
    }
}

#[test]
fn web_reader_end_to_end_in_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // An upstream that refuses connections: the engine marks it down.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_upstream = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.down_after_failures = 1;
    fixture.config.delivery.retry = vec![Duration::from_secs(3600).into()];
    fixture.config.delivery.probe_interval = Duration::from_secs(3600);
    fixture.config.domains[0].upstream = dead_upstream;
    fixture.config.domains[0].tls = UpstreamTls::None;
    let users = fixture.config.web.users_file.clone();
    add_user(&users, "alice@example.com", &[], false, false);
    add_user(&users, "bob@example.com", &[], false, false);
    let admin_secret = add_user(&users, "admin@example.com", &[], true, true).unwrap();
    let (_rt, server) = start_in_process(&fixture);
    let (pixel_host, pixel_hits) = tracking_server();
    let pixel_url = format!("http://{pixel_host}/pixel.gif");
    let send = |to: &str, body: &[u8]| {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO browser.test", 250);
        let reply = c.send_mail("sender@example.org", &[to], body);
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    };
    send("alice@example.com", &iso2022jp_message("alice@example.com"));
    let html_id = send(
        "alice@example.com",
        &hostile_html_message("alice@example.com", &pixel_url),
    );
    let foreign_id = send(
        "bob@example.com",
        &plain_message("bob@example.com", "Bob only", "private"),
    );
    let delivery = server.delivery().expect("delivery on");
    assert!(
        wait_for(Duration::from_secs(15), || delivery
            .status()
            .iter()
            .any(|s| s.state == "down")),
        "upstream marked down: {:?}",
        delivery.status()
    );
    let payload = fixture.path().join("payload.html");
    std::fs::write(&payload, hostile_html(&pixel_url)).unwrap();
    let shots = root.join("target/browser-screenshots");
    run_script(
        "e2e.mjs",
        &[
            ("BW_BASE", format!("http://{}", server.web_addr.unwrap())),
            ("BW_SCREENSHOTS", shots.display().to_string()),
            ("BW_PIXEL_HOST", pixel_host.clone()),
            ("BW_PASSWORD", PASSWORD.to_string()),
            ("BW_ADMIN", "admin@example.com".to_string()),
            ("BW_ADMIN_SECRET", admin_secret.clone()),
            ("BW_USER", "alice@example.com".to_string()),
            ("BW_HTML_ID", html_id.to_string()),
            ("BW_FOREIGN_ID", foreign_id.to_string()),
            ("BW_PAYLOAD_FILE", payload.display().to_string()),
        ],
    );
    // The positive control fetched nothing either (setContent has no network for
    // these payloads), so every hit would have come from the reader.
    assert_eq!(
        pixel_hits.load(Ordering::SeqCst),
        0,
        "the tracking host was contacted"
    );
    assert!(
        !common::block(server.spool.get(foreign_id))
            .unwrap()
            .unwrap()
            .state
            .held,
        "released again"
    );
    let audit = std::fs::read_to_string(&fixture.config.admin.audit_log).unwrap();
    for action in [
        "web-login",
        "web-admin-hold",
        "web-admin-release",
        "web-attachment-download",
        "web-message-view",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action} audited"
        );
    }
    for shot in [
        "01-admin-mailbox-banner-ja.png",
        "04-hostile-html-message.png",
        "05-mailbox-phone.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} taken");
    }
}

/// Sending in Chromium on a phone, in Japanese: reply to a spooled message
/// with an attachment while the mail host is down; the outside MX (by DNS
/// MX on loopback) receives it with the file; the Sent page shows the
/// recipient delivered and the copy waiting for the mail host.
#[test]
fn a_user_replies_with_an_attachment_in_chromium() {
    let rt = common::runtime();
    let mut zone = common::dns::Zone::default();
    zone.with_mx("remote.test", &[(10, "mx.remote.test")])
        .with_host("mx.remote.test", "127.0.0.1");
    let (remote_mx, dns) = rt.block_on(async {
        (
            common::sink::Sink::start("127.0.0.1:0", common::sink::Script::default()).await,
            common::dns::TestDns::start(zone).await,
        )
    });
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_upstream = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut fixture = Fixture::new();
    fixture.with_dkim_key(breakwater::dkim::Algorithm::Ed25519);
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.down_after_failures = 1;
    fixture.config.delivery.retry = vec![Duration::from_millis(500).into()];
    fixture.config.delivery.mx_port = remote_mx.addr.port();
    fixture.config.dns.nameservers = vec![dns.addr];
    fixture.config.domains[0].upstream = dead_upstream;
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.send.mode = breakwater::config::SendMode::Outage;
    add_user(
        &fixture.config.web.users_file,
        "alice@example.com",
        &[],
        false,
        false,
    );
    let server = rt.block_on(fixture.start());
    let original = {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO browser.test", 250);
        let reply = c.send_mail(
            "tanaka@remote.test",
            &["alice@example.com"],
            "From: =?UTF-8?B?55Sw5Lit?= <tanaka@remote.test>\r\nTo: alice@example.com\r\nSubject: =?UTF-8?B?6LOH5paZ44Gu44GK6aGY44GE?=\r\nMessage-ID: <ask-1@remote.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n資料をお送りいただけますか。\r\n"
                .as_bytes(),
        );
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    };
    let delivery = server.delivery().expect("delivery on");
    assert!(
        wait_for(Duration::from_secs(15), || delivery
            .status()
            .iter()
            .any(|s| s.state == "down")),
        "the mail host marked down: {:?}",
        delivery.status()
    );
    let attachment = fixture.path().join("見積書.pdf");
    std::fs::write(&attachment, b"%PDF-1.4 quote for tanaka").unwrap();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    run_script(
        "send.mjs",
        &[
            ("BW_BASE", format!("http://{}", server.web_addr.unwrap())),
            ("BW_SCREENSHOTS", shots.display().to_string()),
            ("BW_PASSWORD", PASSWORD.to_string()),
            ("BW_USER", "alice@example.com".to_string()),
            ("BW_MESSAGE_ID", original.to_string()),
            ("BW_REPLY_TO", "tanaka@remote.test".to_string()),
            ("BW_ATTACHMENT", attachment.display().to_string()),
        ],
    );
    let arrived = remote_mx.delivered();
    assert_eq!(arrived.len(), 1, "one reply at the outside MX");
    let parsed = mail_parser::MessageParser::default()
        .parse(&arrived[0].data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Re: 資料のお願い"));
    assert_eq!(parsed.in_reply_to().as_text(), Some("ask-1@remote.test"));
    use mail_parser::MimeHeaders;
    let file = parsed.attachment(0).expect("the attachment");
    assert_eq!(file.attachment_name(), Some("見積書.pdf"));
    assert_eq!(file.contents(), b"%PDF-1.4 quote for tanaka");
    assert!(parsed.body_text(0).unwrap().contains("資料を添付します"));
    for shot in [
        "10-compose-reply-phone-ja.png",
        "11-sent-phone-ja.png",
        "12-sent-desktop-ja.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} taken");
    }
}

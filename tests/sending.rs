//! Sending during an outage, end to end: the real binary, a loopback DNS
//! server (the remote domain's MX and our DKIM record), a loopback MX sink
//! for the remote domain and a loopback upstream that is down, then back.
//! A user answers a spooled message in the web reader (real HTTP,
//! multipart with an attachment); the remote MX receives it DKIM-signed
//! (verified by mail-auth against the loopback DNS), threaded, in
//! Japanese; the Sent view shows each recipient's status; after the
//! upstream recovers the sender's copy lands in their mailbox there.
//! And `[send] relay`: a smart host that wants AUTH after STARTTLS.

mod common;

use std::time::{Duration, Instant};

use breakwater::config::{Config, UpstreamTls};
use common::dns::{TestDns, Zone};
use common::sink::{Delivered, Script, Sink};
use common::web::*;
use common::*;

struct World {
    fixture: Fixture,
    rt: tokio::runtime::Runtime,
    upstream: Sink,
    remote_mx: Sink,
    dns: TestDns,
}

/// Sinks, DNS with the DKIM record of `example.com` (selector bw1), the
/// config for a server that delivers to them; `adjust` finishes it.
fn world(adjust: impl FnOnce(&mut Config, &World)) -> World {
    let rt = common::runtime();
    let mut fixture = Fixture::new();
    let key_path = fixture.with_dkim_key(breakwater::dkim::Algorithm::Rsa);
    let key = breakwater::dkim::load(&key_path, "example.com", "bw1").unwrap();
    let mut zone = Zone::default();
    zone.with_mx("remote.test", &[(10, "mx.remote.test")])
        .with_host("mx.remote.test", "127.0.0.1")
        .with_txt("bw1._domainkey.example.com", &key.dns_record());
    let (upstream, remote_mx, dns) = rt.block_on(async {
        (
            Sink::start("127.0.0.1:0", Script::default()).await,
            Sink::start("127.0.0.1:0", Script::default()).await,
            TestDns::start(zone).await,
        )
    });
    let mut world = World {
        fixture,
        rt,
        upstream,
        remote_mx,
        dns,
    };
    let mut config = world.fixture.config.clone();
    config.delivery.enabled = true;
    config.delivery.retry = vec![Duration::from_millis(300).into()];
    config.delivery.probe_interval = Duration::from_millis(300);
    config.delivery.down_after_failures = 2;
    config.delivery.connect_timeout = Duration::from_secs(2);
    config.delivery.mx_port = world.remote_mx.addr.port();
    config.dns.nameservers = vec![world.dns.addr];
    config.domains[0].upstream = world.upstream.addr.to_string();
    config.domains[0].tls = UpstreamTls::None;
    config.send.copy_to_mailbox = true;
    add_user(
        &config.web.users_file,
        "alice@example.com",
        &["sales@example.com"],
        false,
        false,
    );
    adjust(&mut config, &world);
    world.fixture.config = config;
    world
}

fn wait_for_mail(sink: &Sink, count: usize, what: &str) -> Vec<Delivered> {
    assert!(
        wait_for(Duration::from_secs(20), || sink.delivered().len() >= count),
        "{what}: {} of {count} arrived",
        sink.delivered().len()
    );
    sink.delivered()
}

fn header<'a>(message: &'a mail_parser::Message<'a>, name: &'a str) -> Option<&'a str> {
    message.header_raw(name).map(str::trim)
}

/// `[send] mode = "outage"` with a real dead upstream, the real binary,
/// a reply with an attachment through the web reader, the remote MX
/// receiving it DKIM-signed, and the sender's copy after the recovery.
#[test]
fn a_reply_during_a_real_outage_reaches_the_remote_mx_signed_and_the_copy_follows_the_recovery() {
    let web_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut w = world(|config, _| {
        config.send.mode = breakwater::config::SendMode::Outage;
        config.web.listen = format!("127.0.0.1:{web_port}").parse().unwrap();
        add_user(
            &config.web.users_file,
            "colleague@example.com",
            &[],
            false,
            false,
        );
    });
    // The mail host is down from the start.
    w.upstream.stop();
    let config_path = w.fixture.write_config();
    let server = BinaryServer::start(&config_path);
    let original = {
        let mut client = RawClient::greeted(server.addr);
        client.expect("EHLO remote.test", 250);
        let reply = client.send_mail(
            "buyer@remote.test",
            &["sales@example.com"],
            b"From: =?UTF-8?B?5bGx55Sw?= <buyer@remote.test>\r\nTo: sales@example.com\r\nSubject: =?UTF-8?B?5rOo5paH44Gu56K66KqN?=\r\nMessage-ID: <order-7@remote.test>\r\nReferences: <order-6@remote.test>\r\nDate: Thu, 03 Dec 2026 09:00:00 +0900\r\n\r\nPlease confirm order 7.\r\n",
        );
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    };
    let mut alice = WebClient::new(format!("127.0.0.1:{web_port}").parse().unwrap());
    alice.login_fully("alice@example.com", None);
    // Until delivery has seen the mail host fail, it is not an outage.
    let compose = format!("/mail/compose?reply={original}");
    let mut form = alice.get(&compose);
    let started = Instant::now();
    while form.status != 200 && started.elapsed() < Duration::from_secs(20) {
        assert_eq!(form.status, 403, "{}", form.text());
        std::thread::sleep(Duration::from_millis(200));
        form = alice.get(&compose);
    }
    assert_eq!(form.status, 200, "an outage by now: {}", form.text());
    let html = form.text();
    assert!(html.contains("enctype=\"multipart/form-data\""), "{html}");
    let value = |name: &str| {
        html.split(&format!("name=\"{name}\" value=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    };
    let (csrf, in_reply_to, references) = (form.csrf(), value("in_reply_to"), value("references"));
    assert_eq!(in_reply_to, "order-7@remote.test");
    let done = alice.post_multipart(
        "/mail/send",
        &[
            ("csrf", &csrf),
            ("from", "sales@example.com"),
            ("to", "buyer@remote.test"),
            ("cc", "colleague@example.com"),
            ("subject", "Re: 注文の確認"),
            (
                "text",
                "山田様\n注文 7 を承りました。議事録を添付します。\n",
            ),
            ("in_reply_to", &in_reply_to),
            ("references", &references),
        ],
        &[(
            "attachment",
            "議事録.txt",
            "text/plain",
            "会議の議事録です。\n".as_bytes(),
        )],
    );
    assert_eq!(done.status, 200, "{}", done.text());

    // The remote MX has it: signed, threaded, in Japanese, with the file.
    let arrived = wait_for_mail(&w.remote_mx, 1, "the reply at the remote MX");
    assert_eq!(arrived[0].rcpts(), ["buyer@remote.test"]);
    assert!(arrived[0].mail_line.contains("<sales@example.com>"));
    let raw = arrived[0].data.clone();
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some("Re: 注文の確認"));
    assert_eq!(parsed.in_reply_to().as_text(), Some("order-7@remote.test"));
    assert_eq!(
        parsed.references().as_text_list().unwrap(),
        ["order-6@remote.test", "order-7@remote.test"]
    );
    assert!(parsed.body_text(0).unwrap().contains("注文 7 を承りました"));
    use mail_parser::MimeHeaders;
    let attachment = parsed.attachment(0).expect("the attachment");
    assert_eq!(attachment.attachment_name(), Some("議事録.txt"));
    assert_eq!(attachment.contents(), "会議の議事録です。\n".as_bytes());
    assert_eq!(
        header(&parsed, "X-Breakwater-Sent-During-Outage"),
        Some("yes")
    );
    let message_id = parsed.message_id().unwrap().to_string();
    assert!(message_id.ends_with("@mx2.test.example"), "{message_id}");
    let resolver = breakwater::dns::build_resolver(&w.fixture.config.dns).unwrap();
    let verifier = mail_auth::MessageAuthenticator(resolver);
    let signed = mail_auth::AuthenticatedMessage::parse(&raw).unwrap();
    let results = w.rt.block_on(verifier.verify_dkim(&signed));
    assert!(
        results
            .iter()
            .any(|r| r.result() == &mail_auth::DkimResult::Pass),
        "DKIM at the remote MX: {:?}",
        results.iter().map(|r| r.result()).collect::<Vec<_>>()
    );

    // Sent: delivered to the buyer; the copy waits for the mail host.
    // (The sink has the message a moment before the spool records it.)
    let mut sent = alice.get("/mail/sent").text();
    let started = Instant::now();
    while !sent.contains("badge delivered") && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        sent = alice.get("/mail/sent").text();
    }
    assert!(sent.contains("buyer@remote.test"), "{sent}");
    assert!(sent.contains("Re: 注文の確認"), "{sent}");
    assert!(sent.contains("badge delivered"), "{sent}");
    assert!(sent.contains("class=\"meta copy\""), "{sent}");
    assert!(w.upstream.delivered().is_empty());
    // A colleague in our own domain reads it at once in the web reader,
    // while the mail host is still down.
    let mut colleague = WebClient::new(format!("127.0.0.1:{web_port}").parse().unwrap());
    colleague.login_fully("colleague@example.com", None);
    let mailbox = colleague.get("/mail").text();
    assert!(mailbox.contains("Re: 注文の確認"), "{mailbox}");

    // The mail host is back: the buyer's message and the sender's copy
    // reach it.
    w.rt.block_on(w.upstream.resume());
    let upstream = wait_for_mail(
        &w.upstream,
        3,
        "the original, the reply to the colleague and the copy upstream",
    );
    let with_reply: Vec<&Delivered> = upstream
        .iter()
        .filter(|d| String::from_utf8_lossy(&d.data).contains(&message_id))
        .collect();
    assert!(with_reply
        .iter()
        .any(|d| d.rcpts() == ["colleague@example.com"]));
    let copy = with_reply
        .iter()
        .find(|d| d.rcpts() == ["alice@example.com"])
        .expect("the copy upstream");
    assert_eq!(copy.rcpts(), ["alice@example.com"]);
    let copied = mail_parser::MessageParser::default()
        .parse(&copy.data)
        .unwrap();
    assert_eq!(
        header(&copied, "X-Breakwater-Sent-During-Outage"),
        Some("yes")
    );
    assert_eq!(copied.subject(), Some("Re: 注文の確認"));
    assert!(upstream.iter().any(|d| String::from_utf8_lossy(&d.data)
        .contains("order-7@remote.test")
        && d.rcpts() == ["sales@example.com"]));
    let audit = std::fs::read_to_string(&w.fixture.config.admin.audit_log).unwrap();
    assert!(audit.contains("\"action\":\"web-send\""), "{audit}");
    assert!(audit.contains("1 attachments"), "{audit}");
    server.terminate(Duration::from_secs(20));
}

/// `[send] relay` with `relay_username`: users' mail to other domains goes
/// to the smart host, which gets STARTTLS (verified) and then AUTH; mail
/// for our own domains does not go there. A wrong password and a smart
/// host without TLS leave the message deferred, the password unsent.
#[test]
fn through_a_smart_host_users_mail_authenticates_after_starttls() {
    let ca = tempfile::NamedTempFile::new().unwrap();
    let acceptor = common::sink::test_tls(ca.path());
    let w = world(|config, _| {
        config.send.mode = breakwater::config::SendMode::Always;
        config.delivery.extra_ca_file = Some(ca.path().to_path_buf());
        // Each message on a new session, so each one authenticates.
        config.delivery.connection_idle = Duration::from_millis(1);
    });
    let relay = w.rt.block_on(Sink::start(
        "127.0.0.1:0",
        Script {
            tls: Some(acceptor.clone()),
            auth: Some(("bw-relay".into(), "s3cret pass".into())),
            ..Script::default()
        },
    ));
    let mut fixture = w.fixture;
    let password_file = fixture.path().join("relay.password");
    std::fs::write(&password_file, "s3cret pass\n").unwrap();
    fixture.config.send.relay = format!("127.0.0.1:{}", relay.addr.port());
    fixture.config.send.relay_username = "bw-relay".into();
    fixture.config.send.relay_password_file = Some(password_file);
    let server = w.rt.block_on(fixture.start());
    let mut alice = WebClient::new(server.web_addr.unwrap());
    alice.login_fully("alice@example.com", None);
    let mut send = |to: &str, subject: &str| {
        let done = alice.compose_and_send("alice@example.com", to, subject, "hello");
        assert_eq!(done.status, 200, "{}", done.text());
        sent_queue_id(&done)
    };
    send(
        "partner@remote.test, colleague@example.com",
        "via the relay",
    );
    let relayed = wait_for_mail(&relay, 1, "at the smart host");
    assert_eq!(relayed[0].rcpts(), ["partner@remote.test"]);
    assert!(relayed[0].tls, "STARTTLS before AUTH");
    assert_eq!(relayed[0].authenticated.as_deref(), Some("bw-relay"));
    assert!(w.remote_mx.delivered().is_empty(), "not by MX");
    // Ours, and the sender's copy, go to the mail host as usual.
    let upstream = wait_for_mail(&w.upstream, 2, "ours and the copy upstream");
    let mut ours: Vec<String> = upstream.iter().flat_map(|d| d.rcpts()).collect();
    ours.sort();
    assert_eq!(ours, ["alice@example.com", "colleague@example.com"]);

    // The smart host no longer takes the password: deferred, with why.
    relay.set(|s| s.auth = Some(("bw-relay".into(), "rotated".into())));
    let refused = send("second@remote.test", "wrong password");
    let deferred_with = |id, what: &str| {
        let started = Instant::now();
        loop {
            let message = common::block(server.spool.get(id)).unwrap().unwrap();
            let reply = message.state.recipients[0]
                .last_reply
                .clone()
                .unwrap_or_default();
            if reply.contains(what) {
                assert_eq!(
                    message.state.recipients[0].status,
                    breakwater::envelope::RecipientStatus::Deferred
                );
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}: {reply:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    deferred_with(refused, "AUTH as bw-relay");
    // A smart host without STARTTLS never gets the password.
    relay.set(|s| s.tls = None);
    let cleartext = send("third@remote.test", "no TLS");
    deferred_with(cleartext, "TLS required");
    assert_eq!(relay.delivered().len(), 1, "nothing more got through");
    drop(server);
}

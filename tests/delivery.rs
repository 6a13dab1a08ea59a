//! The delivery engine against real SMTP upstreams on loopback: a scripted
//! sink (tests/common/sink.rs), a loopback DNS server, and Postfix's
//! smtp-sink.

mod common;

use std::time::{Duration, Instant};

use breakwater::config::{Config, DomainConfig, UpstreamTls};
use breakwater::server::Server;
use common::dns::{TestDns, Zone};
use common::sink::{Script, Sink};
use common::*;
use mail_parser::MimeHeaders;

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    fixture: Fixture,
    rt: tokio::runtime::Runtime,
    /// The upstream for example.com (static route).
    upstream: Sink,
    /// Where MX-routed mail goes (DSNs to remote.test, MX test domains).
    mx_sink: Sink,
    /// The upstream for listed.example: no CHUNKING.
    data_only: Option<Sink>,
    dns: TestDns,
}

fn base_zone() -> Zone {
    let mut zone = Zone::default();
    zone.with_mx("remote.test", &[(10, "mx.remote.test")])
        .with_host("mx.remote.test", "127.0.0.1");
    zone
}

fn setup(zone: Zone, tweak: impl FnOnce(&mut Config, &Setup)) -> (Setup, Server) {
    let rt = common::runtime();
    let (upstream, mx_sink, data_only, dns) = rt.block_on(async {
        (
            Sink::start("127.0.0.1:0", Script::default()).await,
            Sink::start("127.0.0.1:0", Script::default()).await,
            Sink::start(
                "127.0.0.1:0",
                Script {
                    chunking: false,
                    ..Script::default()
                },
            )
            .await,
            TestDns::start(zone).await,
        )
    });
    let mut setup = Setup {
        fixture: Fixture::new(),
        rt,
        upstream,
        mx_sink,
        data_only: Some(data_only),
        dns,
    };
    let mut config = setup.fixture.config.clone();
    config.delivery.enabled = true;
    config.delivery.retry = vec![Duration::from_millis(200).into()];
    config.delivery.probe_interval = Duration::from_millis(300);
    config.delivery.down_after_failures = 2;
    config.delivery.connect_timeout = Duration::from_secs(2);
    config.delivery.command_timeout = Duration::from_secs(5);
    config.delivery.mx_port = setup.mx_sink.addr.port();
    config.dns.nameservers = vec![setup.dns.addr];
    config.domains[0].upstream = setup.upstream.addr.to_string();
    config.domains[0].tls = UpstreamTls::None;
    config.domains[1].upstream = setup.data_only.as_ref().unwrap().addr.to_string();
    config.domains[1].tls = UpstreamTls::None;
    for name in ["mxroute.test", "selfmx.test", "loop.test", "nullmx.test"] {
        config.domains.push(DomainConfig {
            tls: UpstreamTls::None,
            ..DomainConfig::new(name, "mx")
        });
    }
    tweak(&mut config, &setup);
    setup.fixture.config = config;
    let server = setup.rt.block_on(setup.fixture.start());
    (setup, server)
}

fn submit(server: &Server, from: &str, to: &[&str], body: &[u8]) -> breakwater::envelope::QueueId {
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    let reply = c.send_mail(from, to, body);
    assert_eq!(reply.code, 250, "{reply:?}");
    queue_id(&reply)
}

fn wait_empty(server: &Server) {
    assert!(
        wait_for(WAIT, || server.spool.is_empty()),
        "spool not drained: {:?}",
        common::block(server.spool.list()).unwrap()
    );
}

fn dsn_report(data: &[u8]) -> String {
    let message = mail_parser::MessageParser::default()
        .parse(data)
        .expect("DSN parses");
    let ct = message.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(
        message.parts.len(),
        4,
        "root + text + delivery-status + original"
    );
    let status = message
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .expect("delivery-status part");
    String::from_utf8_lossy(status.contents()).into_owned()
}

#[test]
fn delivers_the_spooled_bytes_exactly_with_bdat_and_data() {
    let (s, server) = setup(base_zone(), |_, _| {});
    let delivery = server.delivery().unwrap();
    let upstream = delivery.upstream_for("example.com");
    common::block(delivery.hold(&upstream)).unwrap();
    let body = b"Subject: exact\r\n\r\nline\r\n.leading dot\r\n..two\r\nlast line\r\n";
    let id = submit(&server, "s@remote.test", &["ok@example.com"], body);
    let spooled = common::block(server.spool.read_body(id)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.upstream.delivered().is_empty(),
        "held upstream received mail"
    );
    common::block(delivery.release(&upstream)).unwrap();
    wait_empty(&server);
    let got = s.upstream.delivered();
    assert_eq!(got.len(), 1);
    assert!(got[0].bdat, "CHUNKING offered, BDAT used");
    assert_eq!(got[0].data, spooled, "BDAT delivery is byte-for-byte");
    assert_eq!(got[0].rcpts(), ["ok@example.com"]);
    assert!(got[0].mail_line.contains("SIZE="), "{}", got[0].mail_line);
    assert!(
        got[0].pipelined,
        "PIPELINING offered: MAIL, RCPT and a small BDAT in one write"
    );

    // Without CHUNKING (the second domain's upstream): DATA with
    // dot-stuffing, still exactly the spooled bytes.
    let plain = s.data_only.as_ref().unwrap();
    let upstream = delivery.upstream_for(LISTED_DOMAIN);
    common::block(delivery.hold(&upstream)).unwrap();
    let id = submit(&server, "s@remote.test", &["alice@listed.example"], body);
    let spooled = common::block(server.spool.read_body(id)).unwrap();
    common::block(delivery.release(&upstream)).unwrap();
    wait_empty(&server);
    let got = plain.delivered();
    assert_eq!(got.len(), 1);
    assert!(!got[0].bdat);
    assert_eq!(
        got[0].data, spooled,
        "DATA delivery is byte-for-byte (no doubled CRLF)"
    );
    assert!(got[0].pipelined, "MAIL, RCPT and DATA in one write");
    s.rt.block_on(server.shutdown());
}

#[test]
fn per_recipient_outcomes_retry_and_dsn() {
    let (s, server) = setup(base_zone(), |_, _| {});
    s.upstream
        .rcpt_reply("busy@example.com", "450 4.2.1 mailbox busy");
    s.upstream
        .rcpt_reply("gone@example.com", "550 5.1.1 no such user");
    submit(
        &server,
        "s@remote.test",
        &["ok@example.com", "busy@example.com", "gone@example.com"],
        b"Subject: mixed\r\n\r\nhello\r\n",
    );
    assert!(
        wait_for(WAIT, || !s.mx_sink.delivered().is_empty()),
        "no DSN"
    );
    let first = s.upstream.delivered();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].rcpts(),
        ["ok@example.com"],
        "one transaction, only the accepted recipient"
    );
    // The deferred recipient is retried (retry = 200ms) until it is accepted.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!server.spool.is_empty(), "busy@ still waiting");
    let waiting = common::block(server.spool.list()).unwrap();
    let history = &waiting[0].state.history;
    assert!(history.len() >= 4, "attempt history kept: {history:?}");
    assert!(
        history
            .iter()
            .any(|a| a.recipient == 2 && a.outcome == "bounced" && a.reply.contains("5.1.1")),
        "{history:?}"
    );
    let busy_state = &waiting[0].state.recipients[1];
    assert!(busy_state.attempts >= 2, "{busy_state:?}");
    assert!(
        busy_state.last_reply.as_deref().unwrap().contains("4.2.1"),
        "{busy_state:?}"
    );
    s.upstream.set(|script| {
        script.rcpt.remove("busy@example.com");
    });
    wait_empty(&server);
    let all = s.upstream.delivered();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].rcpts(), ["busy@example.com"]);

    let dsns = s.mx_sink.delivered();
    assert_eq!(dsns.len(), 1, "exactly one DSN");
    assert!(
        dsns[0].mail_line.starts_with("MAIL FROM:<>"),
        "DSN from the null sender: {}",
        dsns[0].mail_line
    );
    assert_eq!(dsns[0].rcpts(), ["s@remote.test"]);
    let report = dsn_report(&dsns[0].data);
    assert!(
        report.contains("Final-Recipient: rfc822; gone@example.com"),
        "{report}"
    );
    assert!(
        report.contains("Action: failed") && report.contains("Status: 5.1.1"),
        "{report}"
    );
    assert!(
        !report.contains("busy@example.com") && !report.contains("ok@example.com"),
        "{report}"
    );
    s.rt.block_on(server.shutdown());
}

#[test]
fn null_sender_is_never_bounced_and_notify_never_is_honoured() {
    let (s, server) = setup(base_zone(), |_, _| {});
    s.upstream
        .rcpt_reply("gone@example.com", "550 5.1.1 no such user");
    submit(
        &server,
        "",
        &["gone@example.com"],
        b"Subject: bounce of a bounce\r\n\r\nx\r\n",
    );
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<gone@example.com> NOTIFY=NEVER", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: never\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    wait_empty(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.mx_sink.delivered().is_empty(), "no DSN may be sent");
    s.rt.block_on(server.shutdown());
}

#[test]
fn deferred_mail_expires_into_a_dsn() {
    let (s, server) = setup(base_zone(), |config, _| {
        config.delivery.max_age = Duration::from_millis(800)
    });
    s.upstream
        .rcpt_reply("busy@example.com", "451 4.3.0 try later");
    submit(
        &server,
        "s@remote.test",
        &["busy@example.com"],
        b"Subject: old\r\n\r\nx\r\n",
    );
    wait_empty(&server);
    assert!(wait_for(WAIT, || !s.mx_sink.delivered().is_empty()));
    let report = dsn_report(&s.mx_sink.delivered()[0].data);
    assert!(report.contains("Status: 4.4.7"), "{report}");
    assert!(
        report.contains("last error: 451 4.3.0 try later"),
        "{report}"
    );
    s.rt.block_on(server.shutdown());
}

#[test]
fn mx_order_fallback_self_mx_and_null_mx() {
    let mut zone = base_zone();
    zone
        // The best MX refuses connections (nothing on 127.0.0.2); the next takes it.
        .with_mx(
            "mxroute.test",
            &[(10, "mx1.mxroute.test"), (20, "mx2.mxroute.test")],
        )
        .with_host("mx1.mxroute.test", "127.0.0.2")
        .with_host("mx2.mxroute.test", "127.0.0.1")
        // We are the secondary: only the primary may be used.
        .with_mx(
            "selfmx.test",
            &[(20, "mx2.test.example"), (10, "primary.selfmx.test")],
        )
        .with_host("primary.selfmx.test", "127.0.0.1")
        .with_host("mx2.test.example", "127.0.0.9")
        // We are the best MX: the mail would loop.
        .with_mx(
            "loop.test",
            &[(10, "mx2.test.example"), (20, "other.loop.test")],
        )
        .with_host("other.loop.test", "127.0.0.1")
        // RFC 7505 null MX.
        .with_mx("nullmx.test", &[(0, ".")]);
    let (s, server) = setup(zone, |_, _| {});
    submit(
        &server,
        "s@remote.test",
        &["a@mxroute.test"],
        b"Subject: fallback\r\n\r\nx\r\n",
    );
    submit(
        &server,
        "s@remote.test",
        &["b@selfmx.test"],
        b"Subject: secondary\r\n\r\nx\r\n",
    );
    submit(
        &server,
        "s@remote.test",
        &["c@loop.test"],
        b"Subject: loop\r\n\r\nx\r\n",
    );
    submit(
        &server,
        "s@remote.test",
        &["d@nullmx.test"],
        b"Subject: nullmx\r\n\r\nx\r\n",
    );
    wait_empty(&server);
    assert!(wait_for(WAIT, || s.mx_sink.delivered().len() == 4));
    let got = s.mx_sink.delivered();
    let to: Vec<Vec<String>> = got.iter().map(|d| d.rcpts()).collect();
    assert!(to.contains(&vec!["a@mxroute.test".to_string()]), "{to:?}");
    assert!(to.contains(&vec!["b@selfmx.test".to_string()]), "{to:?}");
    let reports: Vec<String> = got
        .iter()
        .filter(|d| d.rcpts() == ["s@remote.test"])
        .map(|d| dsn_report(&d.data))
        .collect();
    assert_eq!(reports.len(), 2, "{to:?}");
    assert!(
        reports.iter().any(|r| r.contains("c@loop.test")
            && r.contains("Status: 5.4.6")
            && r.contains("loops back to myself")),
        "{reports:?}"
    );
    assert!(
        reports
            .iter()
            .any(|r| r.contains("d@nullmx.test") && r.contains("Status: 5.1.10")),
        "{reports:?}"
    );
    s.rt.block_on(server.shutdown());
}

#[test]
fn tls_required_never_sends_in_clear_and_verifies_the_certificate() {
    let (s, server) = setup(base_zone(), |config, setup| {
        config.domains[0].tls = UpstreamTls::Required;
        config.delivery.extra_ca_file = Some(setup.fixture.path().join("upstream-ca.pem"));
        std::fs::write(setup.fixture.path().join("upstream-ca.pem"), b"").unwrap();
    });
    submit(
        &server,
        "s@remote.test",
        &["ok@example.com"],
        b"Subject: secret\r\n\r\nx\r\n",
    );
    assert!(
        wait_for(WAIT, || *s.upstream.connections.lock().unwrap() >= 2),
        "retried"
    );
    assert!(
        s.upstream.delivered().is_empty(),
        "sent in clear to a plaintext upstream"
    );
    let state = &common::block(server.spool.list()).unwrap()[0]
        .state
        .recipients[0];
    assert!(
        state
            .last_reply
            .as_deref()
            .unwrap()
            .contains("TLS required"),
        "{state:?}"
    );
    s.rt.block_on(server.shutdown());

    // Now the upstream offers STARTTLS with a certificate from our extra CA.
    let ca = s.fixture.path().join("upstream-ca.pem");
    let acceptor = common::sink::test_tls(&ca);
    s.upstream.set(|script| script.tls = Some(acceptor));
    let server = s.rt.block_on(s.fixture.start());
    wait_empty(&server);
    let got = s.upstream.delivered();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered over TLS");
    s.rt.block_on(server.shutdown());
}

#[test]
fn requiretls_needs_verified_tls_and_a_requiretls_upstream() {
    let (s, server) = setup(base_zone(), |config, setup| {
        config.domains[0].tls = UpstreamTls::Opportunistic;
        config.delivery.extra_ca_file = Some(setup.fixture.path().join("upstream-ca.pem"));
        std::fs::write(setup.fixture.path().join("upstream-ca.pem"), b"").unwrap();
    });
    s.rt.block_on(server.shutdown());
    let acceptor = common::sink::test_tls(&s.fixture.path().join("upstream-ca.pem"));
    s.upstream.set(|script| script.tls = Some(acceptor));
    let server = s.rt.block_on(s.fixture.start());
    let send_requiretls = |server: &Server, rcpt: &str| {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO client.test", 250);
        assert_eq!(c.cmd("STARTTLS").code, 220);
        let mut c = c.start_tls(&s.fixture.config.smtp.tls_cert);
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<s@remote.test> REQUIRETLS", 250);
        c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        c.expect("DATA", 354);
        c.send(b"Subject: requiretls\r\n\r\nx\r\n.\r\n");
        assert_eq!(c.reply().code, 250);
    };
    // Upstream without REQUIRETLS: must not be delivered; fails with 5.7.30.
    send_requiretls(&server, "first@example.com");
    wait_empty(&server);
    assert!(s.upstream.delivered().is_empty());
    assert!(wait_for(WAIT, || !s.mx_sink.delivered().is_empty()));
    assert!(dsn_report(&s.mx_sink.delivered()[0].data).contains("5.7.30"));
    // Upstream with REQUIRETLS: delivered, and the requirement is passed on.
    s.upstream.set(|script| script.requiretls = true);
    send_requiretls(&server, "second@example.com");
    wait_empty(&server);
    let got = s.upstream.delivered();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].tls && got[0].mail_line.contains("REQUIRETLS"),
        "{:?}",
        got[0].mail_line
    );
    s.rt.block_on(server.shutdown());
}

#[test]
fn down_upstream_is_probed_and_flushed_within_seconds_of_recovery() {
    let (mut s, server) = setup(base_zone(), |_, _| {});
    s.upstream.stop();
    for i in 0..5 {
        submit(
            &server,
            "s@remote.test",
            &[&format!("u{i}@example.com")],
            format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
        );
    }
    let delivery = server.delivery().unwrap();
    let name = delivery.upstream_for("example.com");
    assert!(
        wait_for(WAIT, || delivery
            .status()
            .iter()
            .any(|u| u.name == name && u.state == "down")),
        "{:?}",
        delivery.status()
    );
    // Parked, not retried one by one: attempts stop growing while down.
    std::thread::sleep(Duration::from_millis(300));
    let attempts: u32 = common::block(server.spool.list())
        .unwrap()
        .iter()
        .map(|m| m.state.recipients[0].attempts)
        .sum();
    std::thread::sleep(Duration::from_millis(1000));
    let later: u32 = common::block(server.spool.list())
        .unwrap()
        .iter()
        .map(|m| m.state.recipients[0].attempts)
        .sum();
    assert_eq!(
        attempts, later,
        "messages kept being attempted while the upstream was down"
    );

    let back = Instant::now();
    s.rt.block_on(s.upstream.resume());
    assert!(
        wait_for(Duration::from_secs(10), || s.upstream.delivered().len()
            == 5),
        "not flushed"
    );
    let took = back.elapsed();
    eprintln!("auto-flush: 5 messages delivered {took:?} after the upstream came back");
    assert!(took < Duration::from_secs(5), "flush took {took:?}");
    wait_empty(&server);
    assert!(delivery
        .status()
        .iter()
        .any(|u| u.name == name && u.state == "up"));
    s.rt.block_on(server.shutdown());
}

#[test]
fn held_upstream_stays_held_across_restart_until_released() {
    let (s, server) = setup(base_zone(), |_, _| {});
    let name = server.delivery().unwrap().upstream_for("example.com");
    common::block(server.delivery().unwrap().hold(&name)).unwrap();
    for i in 0..3 {
        submit(
            &server,
            "s@remote.test",
            &["ok@example.com"],
            format!("Subject: held {i}\r\n\r\nx\r\n").as_bytes(),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    s.rt.block_on(server.shutdown());
    let server = s.rt.block_on(s.fixture.start());
    let delivery = server.delivery().unwrap();
    assert!(
        delivery
            .status()
            .iter()
            .any(|u| u.name == name && u.state == "held"),
        "{:?}",
        delivery.status()
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        s.upstream.delivered().is_empty(),
        "a held upstream received mail"
    );
    assert_eq!(server.spool.len(), 3);
    common::block(delivery.release(&name)).unwrap();
    wait_empty(&server);
    assert_eq!(s.upstream.delivered().len(), 3);
    s.rt.block_on(server.shutdown());
}

#[test]
fn broken_sessions_defer_and_retry() {
    let (s, server) = setup(base_zone(), |_, _| {});
    s.upstream.set(|script| script.drop_mid_data = true);
    submit(
        &server,
        "s@remote.test",
        &["ok@example.com"],
        b"Subject: dropped\r\n\r\nsome data here\r\n",
    );
    assert!(wait_for(WAIT, || *s.upstream.connections.lock().unwrap() >= 2));
    assert!(s.upstream.delivered().is_empty());
    let state = &common::block(server.spool.list()).unwrap()[0]
        .state
        .recipients[0];
    assert!(
        state.last_reply.as_deref().unwrap().contains("4.4.2"),
        "{state:?}"
    );
    s.upstream.set(|script| script.drop_mid_data = false);
    wait_empty(&server);
    assert_eq!(s.upstream.delivered().len(), 1);
    s.rt.block_on(server.shutdown());
}

#[test]
fn relays_to_postfix_smtp_sink() {
    let sink_bin = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Postfix's smtp-sink (apt-get install postfix)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (s, server) = setup(base_zone(), |config, _| {
        config.domains[0].upstream = format!("127.0.0.1:{port}");
    });
    let dump = s.fixture.path().join("sink-dump");
    std::fs::create_dir_all(&dump).unwrap();
    let mut child = std::process::Command::new(sink_bin)
        .args(["-u", "nobody", "-d"])
        .arg(format!("{}/%M.", dump.display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg("100")
        .spawn()
        .unwrap();
    let _ = std::fs::set_permissions(&dump, std::os::unix::fs::PermissionsExt::from_mode(0o777));
    for i in 0..20 {
        submit(
            &server,
            "s@remote.test",
            &["ok@example.com"],
            format!("Subject: pf {i}\r\n\r\nx\r\n").as_bytes(),
        );
    }
    wait_empty(&server);
    let files = std::fs::read_dir(&dump).unwrap().count();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(files, 20, "smtp-sink received every message");
    s.rt.block_on(server.shutdown());
}

#[test]
fn throttling_reply_pauses_the_upstream_and_halves_its_connections() {
    let (s, server) = setup(base_zone(), |config, _| {
        config.delivery.retry = vec![Duration::from_secs(2).into()];
    });
    s.upstream
        .rcpt_reply("a@example.com", "421 4.7.0 Too many connections, slow down");
    submit(
        &server,
        "s@remote.test",
        &["a@example.com"],
        b"Subject: a\r\n\r\nx\r\n",
    );
    let delivery = server.delivery().unwrap();
    let name = delivery.upstream_for("example.com");
    let throttled = || {
        delivery
            .status()
            .into_iter()
            .find(|u| u.name == name)
            .filter(|u| u.throttled_until_ms.is_some())
    };
    assert!(
        wait_for(WAIT, || throttled().is_some()),
        "{:?}",
        delivery.status()
    );
    assert_eq!(
        throttled().unwrap().connections_allowed,
        5,
        "half of per_upstream = 10"
    );
    // Other mail for the same upstream waits out the pause too.
    submit(
        &server,
        "s@remote.test",
        &["b@example.com"],
        b"Subject: b\r\n\r\nx\r\n",
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        s.upstream.delivered().is_empty(),
        "delivered during the pause"
    );
    s.upstream.set(|script| {
        script.rcpt.clear();
    });
    wait_empty(&server);
    assert_eq!(s.upstream.delivered().len(), 2);
    // Connections grow back one per good attempt.
    let after = delivery
        .status()
        .into_iter()
        .find(|u| u.name == name)
        .unwrap();
    assert!(after.connections_allowed > 5, "{after:?}");
    s.rt.block_on(server.shutdown());
}

/// A quoted local part is data, never ESMTP parameters: the upstream's MAIL
/// and RCPT lines and the DSN's RCPT line carry it quoted, exactly, and
/// nothing after the path but the parameters we add.
#[test]
fn quoted_local_parts_are_relayed_quoted_and_cannot_inject_parameters() {
    let (s, server) = setup(base_zone(), |_, _| {});
    s.upstream
        .rcpt_reply("gone@example.com", "550 5.1.1 no such user");
    let sender = "\"a@b> RET=FULL NOTIFY=x \"@remote.test";
    submit(
        &server,
        sender,
        &["\"john smith\"@example.com", "gone@example.com"],
        b"Subject: quoted\r\n\r\nhello\r\n",
    );
    assert!(
        wait_for(WAIT, || !s.mx_sink.delivered().is_empty()),
        "no DSN"
    );
    let got = s.upstream.delivered();
    assert_eq!(got.len(), 1);
    let expected_mail = format!("MAIL FROM:<{sender}>");
    assert!(
        got[0].mail_line.starts_with(&expected_mail),
        "{}",
        got[0].mail_line
    );
    let params = &got[0].mail_line[expected_mail.len()..];
    assert!(
        !params.contains("RET=") && !params.contains("NOTIFY"),
        "parameters after the path: {params:?}"
    );
    assert_eq!(got[0].rcpt_lines.len(), 1, "{:?}", got[0].rcpt_lines);
    assert!(
        got[0].rcpt_lines[0].starts_with("RCPT TO:<\"john smith\"@example.com>"),
        "{:?}",
        got[0].rcpt_lines
    );
    let dsn = &s.mx_sink.delivered()[0];
    assert!(
        dsn.mail_line.starts_with("MAIL FROM:<>"),
        "{}",
        dsn.mail_line
    );
    assert_eq!(dsn.rcpt_lines.len(), 1);
    let rest = dsn.rcpt_lines[0]
        .strip_prefix(&format!("RCPT TO:<{sender}>"))
        .unwrap_or_else(|| panic!("DSN RCPT line {:?}", dsn.rcpt_lines[0]));
    assert!(
        !rest.contains("RET=") && !rest.contains("NOTIFY=x"),
        "{rest:?}"
    );
    let report = String::from_utf8_lossy(&dsn.data);
    assert!(report.contains(&format!("To: <{sender}>")), "{report}");
    s.rt.block_on(server.shutdown());
}

/// An operator's action during a delivery attempt wins deterministically:
/// a hold made while the upstream is answering stays held after the
/// attempt records its (deferred) outcome; a retry made then is not undone
/// by the attempt's backoff; a bounce waits for the attempt and never
/// bounces a recipient the attempt delivered. Each step acts only once the
/// sink has the message's data in hand (the attempt is in flight).
#[test]
fn operator_actions_during_an_attempt_win_deterministically() {
    let (s, server) = setup(base_zone(), |config, _| {
        config.delivery.retry = vec![Duration::from_secs(3600).into()];
    });
    let started = s.upstream.script.lock().unwrap().data_started.clone();
    s.upstream.set(|script| {
        script.data_reply = "451 4.3.0 try later".into();
        script.data_delay = Duration::from_millis(1500);
    });
    let delivery = server.delivery().unwrap();
    let attempts = |id| {
        common::block(server.spool.get(id))
            .unwrap()
            .map_or(0, |m| m.state.recipients[0].attempts)
    };
    // Each step waits for *its* message to reach the end of data (by its
    // subject): a count would be fooled by an earlier message whose session
    // broke after its data on a slow machine and went to the next MX.
    let seen = s.upstream.script.lock().unwrap().data_seen.clone();
    let in_flight = |subject: &str| {
        let needle = format!("Subject: {subject}\r\n");
        assert!(
            wait_for(WAIT, || seen.lock().unwrap().iter().any(|data| data
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()))),
            "the attempt for {subject:?} never reached the end of data"
        );
    };

    // Hold during the attempt.
    let held = submit(
        &server,
        "s@remote.test",
        &["h@example.com"],
        b"Subject: h\r\n\r\nh\r\n",
    );
    in_flight("h");
    let done = s.rt.block_on(breakwater::control::apply_action(
        &server.spool,
        Some(delivery),
        "hold",
        None,
        held,
    ));
    assert_eq!(done, Ok(true));
    assert!(wait_for(WAIT, || attempts(held) == 1), "attempt recorded");
    let state = common::block(server.spool.get(held))
        .unwrap()
        .unwrap()
        .state;
    assert!(
        state.held,
        "the hold made during the attempt was lost: {state:?}"
    );
    assert!(
        state.recipients[0]
            .last_reply
            .as_deref()
            .unwrap()
            .contains("4.3.0"),
        "the attempt's outcome was lost: {state:?}"
    );

    // Retry during the attempt: tried again at once, not in an hour.
    let retried = submit(
        &server,
        "s@remote.test",
        &["r@example.com"],
        b"Subject: r\r\n\r\nr\r\n",
    );
    in_flight("r");
    let retried_at = breakwater::envelope::now_ms();
    let done = s.rt.block_on(breakwater::control::apply_action(
        &server.spool,
        Some(delivery),
        "retry",
        None,
        retried,
    ));
    assert_eq!(done, Ok(true));
    assert!(
        wait_for(Duration::from_secs(10), || attempts(retried) >= 2),
        "the retry made during the attempt was undone by its backoff (retry at {retried_at}, {} DATA starts): {:?}",
        started.load(std::sync::atomic::Ordering::SeqCst),
        common::block(server.spool.get(retried)).unwrap().map(|m| m.state)
    );
    s.rt.block_on(breakwater::control::apply_action(
        &server.spool,
        Some(delivery),
        "hold",
        None,
        retried,
    ))
    .unwrap();

    // Bounce during an attempt that delivers: no DSN, delivered once.
    s.upstream.set(|script| {
        script.data_reply = "250 2.0.0 Ok".into();
    });
    let bounced = submit(
        &server,
        "s@remote.test",
        &["b@example.com"],
        b"Subject: b\r\n\r\nb\r\n",
    );
    in_flight("b");
    let outcome =
        s.rt.block_on(delivery.bounce(bounced, "returned by the administrator"));
    assert!(matches!(outcome, Ok(false)), "{outcome:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.upstream
            .delivered()
            .iter()
            .filter(|d| d.rcpts() == ["b@example.com"])
            .count(),
        1
    );
    assert!(
        s.mx_sink.delivered().is_empty(),
        "a delivered recipient was also bounced"
    );
    s.rt.block_on(server.shutdown());
}

/// An outage that looks like most do: the upstream stops answering on the
/// connections it has (TCP stays open, no replies) and takes no new ones;
/// later it is back. The message caught on the pooled connection is not
/// left waiting out `command_timeout` (60 s here): the reused connection is
/// checked with RSET first, and attempts under way when the upstream comes
/// back are abandoned and retried. Every message is delivered within seconds
/// of the recovery.
#[test]
fn nothing_stays_stuck_on_a_connection_that_went_silent() {
    let (mut s, server) = setup(base_zone(), |config, _| {
        config.delivery.command_timeout = Duration::from_secs(60);
        config.delivery.connect_timeout = Duration::from_secs(1);
        config.delivery.connection_idle = Duration::from_secs(300);
        config.delivery.down_after_failures = 1;
        config.delivery.probe_interval = Duration::from_millis(300);
        config.delivery.retry = vec![Duration::from_secs(120).into()];
    });
    // One delivery leaves a connection in the pool.
    submit(
        &server,
        "s@remote.test",
        &["first@example.com"],
        b"Subject: 1\r\n\r\n1\r\n",
    );
    assert!(wait_for(WAIT, || s.upstream.delivered().len() == 1));
    // The outage: open connections go silent, new ones are refused.
    s.upstream.set(|script| script.stall = true);
    s.upstream.stop();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(
            &server,
            "s@remote.test",
            &[&format!("during{i}@example.com")],
            b"Subject: during\r\n\r\nx\r\n",
        ));
    }
    let delivery = server.delivery().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || delivery
            .status()
            .iter()
            .any(|u| u.state == "down")),
        "the upstream is declared down: {:?}",
        delivery.status()
    );
    std::thread::sleep(Duration::from_secs(2));
    // Back.
    s.upstream.set(|script| script.stall = false);
    s.rt.block_on(s.upstream.resume());
    let recovered = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || server.spool.is_empty()),
        "still queued {:?} after recovery: {:?}",
        recovered.elapsed(),
        common::block(server.spool.list())
            .unwrap()
            .iter()
            .map(|m| (m.id, m.state.history.clone()))
            .collect::<Vec<_>>()
    );
    let delivered: Vec<String> = s
        .upstream
        .delivered()
        .iter()
        .flat_map(|d| d.rcpts())
        .collect();
    for i in 0..5 {
        assert!(
            delivered.contains(&format!("during{i}@example.com")),
            "{delivered:?}"
        );
    }
    s.rt.block_on(server.shutdown());
}

/// A message deferred for days no longer pins the spool: while mail flows
/// past it, compaction copies it forward and the segments behind it are
/// reclaimed; when the upstream finally takes it, it gets exactly the bytes
/// that were spooled, once.
#[test]
fn a_long_deferred_message_is_compacted_forward_and_delivered_byte_for_byte() {
    let (s, server) = setup(base_zone(), |config, _| {
        config.spool.segment_size = 16 * 1024;
        config.spool.compact_interval = Duration::from_millis(50);
        config.delivery.retry = vec![Duration::from_secs(600).into()];
    });
    s.upstream
        .rcpt_reply("late@example.com", "451 4.2.0 mailbox busy, try later");
    let mut body = b"Subject: late\r\n\r\n".to_vec();
    for line in 0..60 {
        body.extend(format!("line {line}: .dots. and 8bit \u{3042}\r\n").as_bytes());
    }
    let late = submit(&server, "s@remote.test", &["late@example.com"], &body);
    let segments_dir = server.config().spool.dir.join("segments");
    let segments = || {
        let mut names: Vec<String> = std::fs::read_dir(&segments_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".seg"))
            .collect();
        names.sort();
        names
    };
    let first = segments()[0].clone(); // the segment `late` is in
    let spooled = common::block(server.spool.read_body(late)).unwrap();
    assert!(wait_for(WAIT, || common::block(server.spool.get(late))
        .unwrap()
        .is_some_and(|m| m.state.recipients[0].attempts >= 1)));
    let filler = "x".repeat(70) + "\r\n";
    let filler = format!("Subject: f\r\n\r\n{}", filler.repeat(20));
    for i in 0..60 {
        submit(
            &server,
            "s@remote.test",
            &[&format!("ok{i}@example.com")],
            filler.as_bytes(),
        );
    }
    assert!(wait_for(WAIT, || server.spool.len() == 1));
    assert!(
        wait_for(Duration::from_secs(10), || segments().len() <= 2
            && !segments().contains(&first)),
        "pinned segments reclaimed: {:?}",
        segments()
    );
    assert_eq!(
        common::block(server.spool.read_body(late)).unwrap(),
        spooled
    );

    s.upstream.set(|script| script.rcpt.clear());
    let delivery = server.delivery().unwrap();
    common::block(delivery.flush_upstream(&delivery.upstream_for("example.com"))).unwrap();
    wait_empty(&server);
    let got: Vec<_> = s
        .upstream
        .delivered()
        .into_iter()
        .filter(|d| d.rcpts() == ["late@example.com"])
        .collect();
    assert_eq!(got.len(), 1, "delivered once");
    assert!(got[0].data == spooled, "byte for byte after compaction");
    s.rt.block_on(server.shutdown());
}

/// A large message (its body in its own file) is streamed from that file,
/// in chunks, exactly: with BDAT, and with DATA where every line starts
/// with a dot so that a line beginning on a chunk boundary must be stuffed
/// and a line crossing one must not be.
#[test]
fn large_bodies_are_streamed_from_the_spool_byte_for_byte() {
    let (s, server) = setup(base_zone(), |config, _| {
        config.spool.large_message_threshold = 64 * 1024;
    });
    // 64-byte lines: every chunk boundary of the tail is a line start.
    let line = format!(".{}\r\n", "d".repeat(61));
    let body = format!("Subject: streamed\r\n\r\n{}", line.repeat(50_000));
    let mut spooled_copies = Vec::new();
    for (domain, rcpt) in [
        ("example.com", "big@example.com"),
        (LISTED_DOMAIN, "alice@listed.example"),
    ] {
        let delivery = server.delivery().unwrap();
        let upstream = delivery.upstream_for(domain);
        common::block(delivery.hold(&upstream)).unwrap();
        // `submit` sends raw bytes: stuff them as a client must.
        let wire = body.replace("\r\n.", "\r\n..");
        let id = submit(&server, "s@remote.test", &[rcpt], wire.as_bytes());
        let spooled = common::block(server.spool.read_body(id)).unwrap();
        assert!(
            common::without_trace_header(&spooled) == body.as_bytes(),
            "spooled with its leading dots"
        );
        let large_file = server.config().spool.dir.join(format!("large/{id}.eml"));
        assert!(
            large_file.exists(),
            "{} holds the body",
            large_file.display()
        );
        spooled_copies.push(spooled);
        common::block(delivery.release(&upstream)).unwrap();
        wait_empty(&server);
    }
    let bdat = s.upstream.delivered();
    let data = s.data_only.as_ref().unwrap().delivered();
    assert!(bdat[0].bdat && !data[0].bdat);
    for (got, spooled) in [&bdat[0], &data[0]].into_iter().zip(&spooled_copies) {
        assert!(
            got.data == *spooled,
            "{} of {} bytes, intact: {}",
            got.data.len(),
            spooled.len(),
            got.data == *spooled
        );
    }
    s.rt.block_on(server.shutdown());
}

/// A connector that starts refusing everything alike after an outage (here
/// `550 5.7.51`, Exchange Online's attribution refusal) must not bounce the
/// backlog: the bounce guard trips after `bounce_guard_failures` alike
/// refusals outnumbering the acceptances since, holds the upstream, keeps
/// the rest deferred; released once fixed, everything is delivered.
#[test]
fn an_upstream_refusing_everything_alike_is_held_not_mass_bounced() {
    const FAILURES: usize = 5;
    let (s, server) = setup(base_zone(), |config, _| {
        config.delivery.bounce_guard_failures = FAILURES as u32;
        config.delivery.per_upstream = 3;
        // Nothing is retried by its schedule in this test: after the
        // release, only the release's flush can deliver the held mail.
        config.delivery.retry = vec![Duration::from_secs(3600).into()];
    });
    let delivery = server.delivery().unwrap().clone();
    let upstream = delivery.upstream_for("example.com");
    for i in 0..10 {
        let rcpt = format!("first{i}@example.com");
        submit(
            &server,
            "s@remote.test",
            &[&rcpt],
            b"Subject: ok\r\n\r\nx\r\n",
        );
    }
    wait_empty(&server);
    assert_eq!(s.upstream.delivered().len(), 10);

    s.upstream.set(|script| {
        script.data_reply = "550 5.7.51 TenantInboundAttribution; Rejecting the message".into()
    });
    const BACKLOG: usize = 40;
    for i in 0..BACKLOG {
        let rcpt = format!("backlog{i}@example.com");
        submit(
            &server,
            "s@remote.test",
            &[&rcpt],
            b"Subject: b\r\n\r\nx\r\n",
        );
    }
    let status = || {
        delivery
            .status()
            .into_iter()
            .find(|u| u.name == upstream)
            .unwrap()
    };
    assert!(
        wait_for(WAIT, || status().bounce_guard.is_some()),
        "guard never tripped: {:?}",
        status()
    );
    let held = status();
    assert_eq!(held.state, "held");
    let trip = held.bounce_guard.unwrap();
    assert!(trip.reply.contains("5.7.51"), "{trip:?}");
    // Let anything still in flight come back, then count.
    std::thread::sleep(Duration::from_millis(1500));
    let dsns = s.mx_sink.delivered().len();
    assert_eq!(dsns, FAILURES - 1, "bounced before the guard tripped");
    let spooled = common::block(server.spool.list()).unwrap();
    assert_eq!(spooled.len(), BACKLOG - (FAILURES - 1));
    for message in &spooled {
        let rcpt = &message.state.recipients[0];
        assert!(!rcpt.status.is_final(), "{:?}", message.state);
        if rcpt.attempts > 0 {
            let reply = rcpt.last_reply.as_deref().unwrap_or("");
            assert!(
                reply.contains("bounce guard") && reply.contains("5.7.51"),
                "{reply}"
            );
        }
    }
    // The hold is durable (it survives a restart like an operator's).
    let holds = common::block(server.spool.held_upstreams()).unwrap();
    assert!(holds.contains(&upstream), "{holds:?}");

    // The connector is fixed; the operator releases the upstream.
    s.upstream
        .set(|script| script.data_reply = "250 2.0.0 Ok".into());
    s.rt.block_on(delivery.release(&upstream)).unwrap();
    wait_empty(&server);
    assert_eq!(s.upstream.delivered().len(), 10 + BACKLOG - (FAILURES - 1));
    assert_eq!(
        s.mx_sink.delivered().len(),
        dsns,
        "no bounce after the trip"
    );
    assert!(status().bounce_guard.is_none());
    s.rt.block_on(server.shutdown());
}

/// `soft_bounce` (Postfix's emergency switch), switched at run time: while
/// on, a permanent refusal is retried, never bounced; switched off, the
/// next refusal bounces as usual.
#[test]
fn soft_bounce_keeps_permanent_refusals_deferred_while_it_is_on() {
    let (s, server) = setup(base_zone(), |_, _| {});
    let delivery = server.delivery().unwrap().clone();
    delivery.set_soft_bounce(true);
    s.upstream
        .set(|script| script.data_reply = "554 5.7.1 relay access denied".into());
    let id = submit(
        &server,
        "s@remote.test",
        &["soft@example.com"],
        b"Subject: s\r\n\r\nx\r\n",
    );
    let attempts = || {
        common::block(server.spool.get(id)).unwrap().map(|m| {
            (
                m.state.recipients[0].attempts,
                m.state.recipients[0].last_reply.clone(),
            )
        })
    };
    assert!(
        wait_for(WAIT, || attempts().is_some_and(|(n, _)| n >= 2)),
        "retried while soft_bounce is on: {:?}",
        attempts()
    );
    let (_, reply) = attempts().unwrap();
    assert!(reply.unwrap().contains("soft_bounce"));
    assert!(s.mx_sink.delivered().is_empty(), "nothing bounced");
    delivery.set_soft_bounce(false);
    wait_empty(&server);
    assert_eq!(s.mx_sink.delivered().len(), 1, "bounced once it is off");
    s.rt.block_on(server.shutdown());
}

/// `delay_warning` (Postfix's delay_warning_time): mail waiting for an
/// upstream that is not taking it (here held, so it is not even attempted,
/// as during an outage) gets one RFC 3464 "delayed" notice per recipient
/// whose sender asked for NOTIFY=DELAY or gave no NOTIFY; NOTIFY=FAILURE
/// and `<>` get none; the message stays spooled and is delivered later.
#[test]
fn delayed_mail_gets_one_delay_notice_and_is_still_delivered() {
    let (s, server) = setup(base_zone(), |config, _| {
        config.delivery.delay_warning = Duration::from_millis(800);
    });
    let delivery = server.delivery().unwrap().clone();
    let upstream = delivery.upstream_for("example.com");
    common::block(delivery.hold(&upstream)).unwrap();
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<asked@example.com> NOTIFY=DELAY,FAILURE", 250);
    c.expect("RCPT TO:<failure-only@example.com> NOTIFY=FAILURE", 250);
    c.expect("RCPT TO:<default@example.com>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: waiting\r\nMessage-ID: <w1@remote.test>\r\n\r\nbody line\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    submit(
        &server,
        "",
        &["null@example.com"],
        b"Subject: from <>\r\n\r\nx\r\n",
    );

    assert!(
        wait_for(WAIT, || !s.mx_sink.delivered().is_empty()),
        "no delay notice"
    );
    // Several more sweep rounds: still exactly one.
    std::thread::sleep(Duration::from_millis(1500));
    let notices = s.mx_sink.delivered();
    assert_eq!(
        notices.len(),
        1,
        "one notice, to the one sender that may get it"
    );
    assert!(
        notices[0].mail_line.starts_with("MAIL FROM:<> "),
        "{}",
        notices[0].mail_line
    );
    assert_eq!(notices[0].rcpts(), ["s@remote.test"]);
    let message = mail_parser::MessageParser::default()
        .parse(&notices[0].data)
        .unwrap();
    assert_eq!(
        message.subject(),
        Some("Delayed Mail (still being retried)")
    );
    let status = dsn_report(&notices[0].data);
    let per_recipient: Vec<&str> = status
        .split("\r\n\r\n")
        .skip(1)
        .filter(|f| !f.trim().is_empty())
        .collect();
    assert_eq!(per_recipient.len(), 2, "{status}");
    for (field, who) in per_recipient
        .iter()
        .zip(["asked@example.com", "default@example.com"])
    {
        assert!(
            field.contains(&format!("Final-Recipient: rfc822; {who}")),
            "{field}"
        );
        assert!(field.contains("Action: delayed"), "{field}");
        assert!(field.contains("Status: 4."), "{field}");
        assert!(field.contains("Will-Retry-Until: "), "{field}");
    }
    assert!(!status.contains("failure-only@"), "{status}");
    // Only the headers go back with a delay notice.
    let text = String::from_utf8_lossy(&notices[0].data);
    assert!(text.contains("text/rfc822-headers") && text.contains("Message-ID: <w1@remote.test>"));
    assert!(!text.contains("body line"), "the body is not returned");
    assert_eq!(
        server.spool.len(),
        2,
        "both held messages are still spooled (the notice went)"
    );

    common::block(delivery.release(&upstream)).unwrap();
    wait_empty(&server);
    assert_eq!(s.upstream.delivered().len(), 2);
    assert_eq!(s.mx_sink.delivered().len(), 1, "no other notice");
    s.rt.block_on(server.shutdown());
}

/// Exchange Online's inbound connectors recognise us by IPv4 address only
/// (`SenderIPAddresses`). With `[delivery] ipv4_only` an upstream whose name
/// has only an IPv6 address is never tried over IPv6: the mail waits with a
/// reason that says why. Without it the same mail goes over IPv6 (::1), so
/// the test shows the setting is what keeps it off IPv6.
#[test]
fn ipv4_only_never_delivers_over_ipv6() {
    let side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for ipv4_only in [false, true] {
        let v6_sink = side.block_on(Sink::start("[::1]:0", Script::default()));
        let port = v6_sink.addr.port();
        let mut zone = Zone::default();
        zone.with_ipv6_host("v6only.up.test", "::1");
        let (_setup, server) = setup(zone, |config, _| {
            config.domains[0].upstream = format!("v6only.up.test:{port}");
            config.delivery.ipv4_only = ipv4_only;
        });
        let id = submit(
            &server,
            "s@remote.test",
            &["user@example.com"],
            b"Subject: v6\r\n\r\nx\r\n",
        );
        if ipv4_only {
            assert!(
                wait_for(WAIT, || common::block(server.spool.get(id))
                    .ok()
                    .flatten()
                    .and_then(|m| m.state.recipients[0].last_reply.clone())
                    .is_some_and(|r| r.contains("no IPv4 address"))),
                "{:?}",
                common::block(server.spool.get(id))
            );
            std::thread::sleep(Duration::from_millis(500));
            assert!(v6_sink.delivered().is_empty(), "delivered over IPv6");
        } else {
            wait_empty(&server);
            assert_eq!(v6_sink.delivered().len(), 1);
        }
        common::block(server.shutdown());
    }
}

/// An upstream that requires a client certificate (Exchange Online with a
/// `TlsSenderCertificateName` connector): without `[delivery] client_cert`
/// the handshake is refused and nothing is sent; with it, the mail goes.
#[test]
fn a_configured_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let client_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let client_ca = ca_params.self_signed(&client_ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params =
        rcgen::CertificateParams::new(vec!["mx2.test.example".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params
        .signed_by(&client_key, &client_ca, &client_ca_key)
        .unwrap();
    let (s, server) = setup(base_zone(), |config, setup| {
        config.domains[0].tls = UpstreamTls::Required;
        let ca = setup.fixture.path().join("upstream-ca.pem");
        let acceptor = common::sink::test_tls_requiring_client_cert(&ca, &client_ca.pem());
        setup.upstream.set(|script| script.tls = Some(acceptor));
        config.delivery.extra_ca_file = Some(ca);
    });
    submit(
        &server,
        "s@remote.test",
        &["ok@example.com"],
        b"Subject: cert\r\n\r\nx\r\n",
    );
    assert!(
        wait_for(WAIT, || *s.upstream.connections.lock().unwrap() >= 2),
        "retried"
    );
    assert!(
        s.upstream.delivered().is_empty(),
        "delivered without a client certificate"
    );
    s.rt.block_on(server.shutdown());

    let cert_path = s.fixture.path().join("client.pem");
    let key_path = s.fixture.path().join("client.key");
    std::fs::write(&cert_path, client.pem()).unwrap();
    std::fs::write(&key_path, client_key.serialize_pem()).unwrap();
    let mut fixture_config = s.fixture.config.clone();
    fixture_config.delivery.client_cert = Some(cert_path.clone());
    fixture_config.delivery.client_key = Some(key_path.clone());
    let server =
        s.rt.block_on(breakwater::server::Server::start(fixture_config.clone()))
            .expect("starts with the client certificate");
    wait_empty(&server);
    let got = s.upstream.delivered();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered over TLS");
    s.rt.block_on(server.shutdown());

    // A key that is not PEM is a configuration error naming the key.
    std::fs::write(&key_path, "not a key").unwrap();
    let path = s.fixture.path().join("bad.toml");
    std::fs::write(&path, fixture_config.to_toml()).unwrap();
    let err = breakwater::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("delivery.client_key") && err.contains("client.key"),
        "{err}"
    );
}

/// MTA-STS on MX routes (RFC 8461 5), against a loopback DNS server and a
/// loopback HTTPS server with a test CA: an `enforce` policy sends mail only
/// to the MX hosts it lists (here the less preferred one), over TLS verified
/// for that name; a listed host without STARTTLS and a policy listing none
/// of the MX hosts keep the mail deferred, never sent in cleartext or
/// elsewhere; a `testing` policy and a policy host that never answers
/// change nothing; one fetch serves a domain's later messages (cache).
#[test]
fn mx_delivery_honours_the_recipient_domains_mta_sts_policy() {
    let domains = ["enforce", "cleartext", "unlisted", "testing", "slow"];
    let mut zone = base_zone();
    zone.with_mx(
        "enforce.test",
        &[(10, "mx1.enforce.test"), (20, "mx2.enforce.test")],
    )
    .with_host("mx1.enforce.test", "127.0.0.1")
    .with_host("mx2.enforce.test", "127.0.0.2");
    for d in &domains[1..] {
        zone.with_mx(&format!("{d}.test"), &[(10, &format!("mx.{d}.test"))])
            .with_host(&format!("mx.{d}.test"), "127.0.0.1");
    }
    for d in domains {
        zone.with_txt(&format!("_mta-sts.{d}.test"), "v=STSv1; id=20261202")
            .with_host(&format!("mta-sts.{d}.test"), "127.0.0.1");
    }
    let policy = |mode: &str, mx: &str| {
        Some(format!(
            "version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"
        ))
    };
    let policies = std::collections::HashMap::from([
        (
            "mta-sts.enforce.test".to_string(),
            policy("enforce", "mx2.enforce.test"),
        ),
        (
            "mta-sts.cleartext.test".to_string(),
            policy("enforce", "*.cleartext.test"),
        ),
        (
            "mta-sts.unlisted.test".to_string(),
            policy("enforce", "mx.elsewhere.test"),
        ),
        (
            "mta-sts.testing.test".to_string(),
            policy("testing", "mx.elsewhere.test"),
        ),
        ("mta-sts.slow.test".to_string(), None),
    ]);
    let mut started = None;
    let (s, server) = setup(zone, |config, setup| {
        let bundle = setup.fixture.path().join("sts-ca.pem");
        let names: Vec<String> = domains
            .iter()
            .map(|d| format!("mta-sts.{d}.test"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let https = common::https::acceptor(&names, 30, &bundle);
        let mx2_tls = common::https::acceptor(&["mx2.enforce.test"], 30, &bundle);
        let (policy_server, mx2) = setup.rt.block_on(async {
            (
                common::https::PolicyServer::start(https, policies).await,
                Sink::start(
                    &format!("127.0.0.2:{}", setup.mx_sink.addr.port()),
                    Script {
                        tls: Some(mx2_tls),
                        ..Script::default()
                    },
                )
                .await,
            )
        });
        config.delivery.extra_ca_file = Some(bundle);
        config.delivery.mta_sts_port = policy_server.addr.port();
        for d in domains {
            config.domains.push(DomainConfig {
                tls: UpstreamTls::Opportunistic,
                ..DomainConfig::new(&format!("{d}.test"), "mx")
            });
        }
        started = Some((policy_server, mx2));
    });
    let (policy_server, mx2) = started.unwrap();
    for d in domains {
        submit(
            &server,
            "s@remote.test",
            &[&format!("user@{d}.test")],
            b"Subject: sts\r\n\r\nx\r\n",
        );
    }
    let rcpts =
        |sink: &Sink| -> Vec<String> { sink.delivered().iter().flat_map(|d| d.rcpts()).collect() };
    // The slow policy host costs one fetch time limit (10 s), then no policy.
    assert!(
        wait_for(Duration::from_secs(30), || rcpts(&s.mx_sink).len() == 2
            && rcpts(&mx2).len() == 1),
        "cleartext MX got {:?}, mx2 got {:?}",
        rcpts(&s.mx_sink),
        rcpts(&mx2)
    );
    let mut cleartext = rcpts(&s.mx_sink);
    cleartext.sort();
    assert_eq!(cleartext, ["user@slow.test", "user@testing.test"]);
    assert_eq!(rcpts(&mx2), ["user@enforce.test"]);
    assert!(mx2.delivered()[0].tls, "enforce: delivered over TLS");

    // The two the policies forbid stay deferred, and say why.
    assert!(wait_for(WAIT, || server.spool.len() == 2));
    let waiting = common::block(server.spool.list()).unwrap();
    let reply_for = |rcpt: &str| {
        waiting
            .iter()
            .find(|m| m.envelope.recipients[0].address == rcpt)
            .and_then(|m| m.state.recipients[0].last_reply.clone())
            .unwrap_or_else(|| panic!("{rcpt} not waiting: {waiting:?}"))
    };
    let no_tls = reply_for("user@cleartext.test");
    assert!(
        no_tls.contains("MTA-STS") && no_tls.contains("TLS"),
        "{no_tls}"
    );
    let unlisted = reply_for("user@unlisted.test");
    assert!(
        unlisted.contains("4.7.5") && unlisted.contains("lists none"),
        "{unlisted}"
    );

    // Cached: more mail to enforce.test, no second fetch.
    for n in 0..3 {
        submit(
            &server,
            "s@remote.test",
            &[&format!("more{n}@enforce.test")],
            b"Subject: sts\r\n\r\nx\r\n",
        );
    }
    assert!(
        wait_for(WAIT, || rcpts(&mx2).len() == 4),
        "{:?}",
        rcpts(&mx2)
    );
    assert_eq!(policy_server.fetches("mta-sts.enforce.test"), 1);
    assert_eq!(rcpts(&s.mx_sink).len(), 2, "nothing else in cleartext");
    s.rt.block_on(server.shutdown());
}

/// `Server::shutdown` leaves no task holding the spool: with the upstream
/// down (so its probe loop runs), the same spool opens again in the same
/// process, and the mail is delivered once the upstream is back. The probe
/// used to loop until the upstream answered, holding the spool and its lock.
#[test]
fn a_shutdown_while_the_upstream_is_down_releases_the_spool() {
    let rt = common::runtime();
    let mut upstream = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    upstream.stop();
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.retry = vec![Duration::from_millis(200).into()];
    fixture.config.delivery.probe_interval = Duration::from_millis(200);
    fixture.config.delivery.down_after_failures = 1;
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    let server = rt.block_on(fixture.start());
    let mut client = RawClient::greeted(server.smtp_addrs[0]);
    client.expect("EHLO client.test", 250);
    let reply = client.send_mail(
        "a@outside.test",
        &["b@example.com"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let delivery = server.delivery().unwrap().clone();
    assert!(
        wait_for(Duration::from_secs(10), || delivery
            .status()
            .iter()
            .any(|u| u.state == "down")),
        "the upstream never went down"
    );
    drop(delivery);
    rt.block_on(server.shutdown());
    let server = rt
        .block_on(Server::start(fixture.config.clone()))
        .expect("the spool opens again after shutdown");
    rt.block_on(upstream.resume());
    assert!(
        wait_for(Duration::from_secs(15), || upstream.delivered().len() == 1),
        "not delivered after the restart"
    );
    rt.block_on(server.shutdown());
}

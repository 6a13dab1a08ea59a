//! Inbound trust end to end against the real server and a loopback DNS
//! server: SPF/DKIM/DMARC/ARC verdicts and the Authentication-Results header
//! (forged copies removed), per-domain DMARC and SPF enforcement, DNS
//! timeouts, the lure score fed by DMARC and the outage state, recipient
//! callouts with their cache and fallbacks, `recipients sync`, rate limits
//! per IP and per network, DNSBL and tarpitting.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use breakwater::config::{
    CalloutFallback, DmarcMode, DnsErrorPolicy, DnsblConfig, DomainConfig, RecipientCheck, SpfMode,
    UpstreamTls,
};
use common::dns::{TestDns, Zone};
use common::sink::{Script, Sink};
use common::*;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

fn message(from: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: <someone@enforced.example>\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{}@test>\r\n\r\n{body}\r\n",
        fastrand::u64(..)
    )
}

struct Signer {
    pkcs8: Vec<u8>,
}

impl Signer {
    fn new(zone: &mut Zone) -> Signer {
        let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
        let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
        zone.with_txt(
            "s1._domainkey.signed.test",
            &format!("v=DKIM1; k=ed25519; p={public}"),
        );
        Signer { pkcs8 }
    }

    /// An ARC set (as a forwarding list would add) over `message`.
    fn arc_seal(&self, rt: &tokio::runtime::Runtime, dns: &TestDns, message: &str) -> String {
        use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
        let config = breakwater::config::DnsConfig {
            nameservers: vec![dns.addr],
        };
        let authenticator = MessageAuthenticator(breakwater::dns::build_resolver(&config).unwrap());
        let parsed = AuthenticatedMessage::parse(message.as_bytes()).unwrap();
        let (arc, dkim) = rt.block_on(async {
            (
                authenticator.verify_arc(&parsed).await,
                authenticator.verify_dkim(&parsed).await,
            )
        });
        assert!(arc.can_be_sealed());
        let results = AuthenticationResults::new("lists.signed.test")
            .with_dkim_results(&dkim, "sales@signed.test")
            .with_arc_result(&arc, "127.0.0.1".parse().unwrap());
        let key = Ed25519Key::from_pkcs8_der(&self.pkcs8).unwrap();
        let set = mail_auth::arc::ArcSealer::from_key(key)
            .domain("signed.test")
            .selector("s1")
            .headers(["From", "To", "Subject", "DKIM-Signature"])
            .seal(&parsed, &results, &arc)
            .unwrap();
        format!("{}{message}", set.to_header())
    }

    fn sign(&self, message: &str) -> String {
        let key = Ed25519Key::from_pkcs8_der(&self.pkcs8).unwrap();
        let signature = DkimSigner::from_key(key)
            .domain("signed.test")
            .selector("s1")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(message.as_bytes())
            .unwrap();
        format!("{}{message}", signature.to_header())
    }
}

fn zone() -> Zone {
    let mut zone = Zone::default();
    zone.with_txt("signed.test", "v=spf1 ip4:127.0.0.1 -all")
        .with_txt("_dmarc.signed.test", "v=DMARC1; p=reject")
        .with_txt("rejectme.test", "v=spf1 ip4:192.0.2.1 -all")
        .with_txt("_dmarc.rejectme.test", "v=DMARC1; p=reject")
        .with_txt("quarantine.test", "v=spf1 ip4:192.0.2.1 -all")
        .with_txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine")
        .with_txt("soft.test", "v=spf1 ~all")
        .with_txt("other.test", "v=spf1 ip4:127.0.0.1 -all");
    zone.silent.insert("slow.test".into());
    zone
}

fn trust_fixture(dns: &TestDns, upstream: &Sink) -> Fixture {
    let mut fixture = Fixture::new();
    let config = &mut fixture.config;
    config.dns.nameservers = vec![dns.addr];
    config.trust.authenticate = true;
    config.trust.dns_timeout = Duration::from_secs(1);
    config.delivery.enabled = true;
    let to_sink = |name: &str| DomainConfig {
        tls: UpstreamTls::None,
        ..DomainConfig::new(name, &upstream.addr.to_string())
    };
    config.domains = vec![
        DomainConfig {
            dmarc: DmarcMode::Enforce,
            ..to_sink("enforced.example")
        },
        to_sink("tagged.example"),
        DomainConfig {
            spf: SpfMode::Reject,
            ..to_sink("spfstrict.example")
        },
    ];
    fixture
}

fn stored_auth(
    server: &breakwater::server::Server,
    reply: &Reply,
) -> breakwater::trust::auth::AuthVerdict {
    let id = queue_id(reply);
    common::block(server.spool.get(id))
        .unwrap()
        .expect("spooled")
        .envelope
        .auth
        .expect("authenticated")
}

fn send(server: &breakwater::server::Server, from: &str, to: &[&str], raw: &str) -> Reply {
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    c.send_mail(from, to, raw.as_bytes())
}

#[test]
fn authentication_results_dmarc_enforcement_and_forged_results() {
    let rt = runtime();
    let mut zone = zone();
    let signer = Signer::new(&mut zone);
    let dns = rt.block_on(TestDns::start(zone));
    let upstream = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    let fixture = trust_fixture(&dns, &upstream);
    let server = rt.block_on(fixture.start());

    // 1. Signed, SPF-aligned, with a forged copy of our own results and a
    // genuine one from another host.
    let body = message(
        "Sales <sales@signed.test>",
        "Quarterly report",
        "Numbers attached.",
    );
    let forged = format!(
        "Authentication-Results: (spoofed) MX2.test.example;\r\n\tdmarc=pass header.from=bank.example\r\nAuthentication-Results: upstream.other; spf=pass\r\n{}",
        signer.sign(&body)
    );
    let reply = send(
        &server,
        "bounce@signed.test",
        &["a@enforced.example"],
        &forged,
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let auth = stored_auth(&server, &reply);
    assert_eq!(
        (auth.spf.as_str(), auth.dkim_pass, auth.dmarc.as_str()),
        ("pass", true, "pass"),
        "{auth:?}"
    );
    assert!(auth.results.starts_with("mx2.test.example;"), "{auth:?}");
    assert!(auth.results.contains("dkim=pass"), "{auth:?}");
    assert!(auth.results.contains("dmarc=pass"), "{auth:?}");
    // The HELO identity (client.test, no SPF record) is checked too.
    assert!(
        auth.results.contains("spf=none") && auth.results.contains("smtp.helo=client.test"),
        "{auth:?}"
    );
    assert!(wait_for(Duration::from_secs(15), || !upstream
        .delivered()
        .is_empty()));
    let delivered = String::from_utf8(upstream.delivered()[0].data.clone()).unwrap();
    assert!(
        delivered.starts_with("Authentication-Results: mx2.test.example;"),
        "ours on top: {delivered}"
    );
    assert_eq!(
        delivered.matches("mx2.test.example;").count(),
        1,
        "the forged copy is gone: {delivered}"
    );
    assert!(!delivered.contains("header.from=bank.example"));
    assert!(delivered.contains("Authentication-Results: upstream.other; spf=pass"));

    // DNS answers are cached: the same sender again asks nothing new (the
    // test zone's TTL is 60 s), and each question was asked at least once.
    let questions = [
        "signed.test TXT",
        "_dmarc.signed.test TXT",
        "s1._domainkey.signed.test TXT",
    ];
    let before: Vec<usize> = questions.iter().map(|q| dns.asked(q)).collect();
    assert!(before.iter().all(|&n| n >= 1), "{before:?}");
    let reply = send(
        &server,
        "bounce@signed.test",
        &["a@enforced.example"],
        &signer.sign(&body),
    );
    assert_eq!(stored_auth(&server, &reply).dmarc, "pass");
    let after: Vec<usize> = questions.iter().map(|q| dns.asked(q)).collect();
    assert_eq!(before, after, "answered from the cache: {questions:?}");

    // 1b. An ARC-sealed message (a mailing list hop) is verified: arc=pass.
    let sealed = signer.arc_seal(
        &rt,
        &dns,
        &signer.sign(&message(
            "Sales <sales@signed.test>",
            "Via list",
            "Forwarded.",
        )),
    );
    let reply = send(
        &server,
        "bounce@signed.test",
        &["a@tagged.example"],
        &sealed,
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let auth = stored_auth(&server, &reply);
    assert!(auth.results.contains("\tarc=pass"), "{auth:?}");
    let broken = sealed.replace("Forwarded.", "Altered.");
    let reply = send(
        &server,
        "bounce@signed.test",
        &["a@tagged.example"],
        &broken,
    );
    let auth = stored_auth(&server, &reply);
    assert!(
        auth.results.contains("\tarc=") && !auth.results.contains("\tarc=pass"),
        "{auth:?}"
    );

    // 2. DKIM is what makes DMARC pass when SPF is not aligned: the same
    // signed message from another envelope domain passes, tampered it fails
    // and p=reject is enforced for the enforcing domain only.
    let signed = signer.sign(&message("Sales <sales@signed.test>", "Invoice", "Pay 100."));
    let reply = send(&server, "list@other.test", &["a@enforced.example"], &signed);
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(stored_auth(&server, &reply).dmarc, "pass");
    let tampered = signed.replace("Pay 100.", "Pay 9999.");
    let reply = send(
        &server,
        "list@other.test",
        &["a@enforced.example"],
        &tampered,
    );
    assert_eq!((reply.code, &reply.text[..5]), (550, "5.7.1"), "{reply:?}");
    assert!(reply.text.contains("signed.test"), "{reply:?}");
    let reply = send(&server, "list@other.test", &["a@tagged.example"], &tampered);
    assert_eq!(reply.code, 250, "tag mode only records: {reply:?}");
    let auth = stored_auth(&server, &reply);
    assert_eq!(
        (auth.dkim_pass, auth.dmarc.as_str()),
        (false, "fail"),
        "{auth:?}"
    );
    // mail-auth reports a body-hash mismatch as "neutral" (RFC 6376 6.3 leaves it open).
    assert!(
        auth.results.contains("body hash did not verify"),
        "{auth:?}"
    );

    // 3. Unsigned spoof of a p=reject domain; p=quarantine is flagged.
    let spoof = message("Bank <alerts@rejectme.test>", "Hello", "Hi.");
    let reply = send(&server, "x@rejectme.test", &["a@enforced.example"], &spoof);
    assert_eq!(reply.code, 550, "{reply:?}");
    let quarantine = message("Q <q@quarantine.test>", "Hello", "Hi.");
    let reply = send(
        &server,
        "q@quarantine.test",
        &["a@enforced.example"],
        &quarantine,
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let auth = stored_auth(&server, &reply);
    assert!(
        auth.quarantined && auth.dmarc == "fail" && auth.dmarc_policy == "quarantine",
        "{auth:?}"
    );
    let reply = send(
        &server,
        "q@quarantine.test",
        &["a@tagged.example"],
        &quarantine,
    );
    assert!(!stored_auth(&server, &reply).quarantined);

    // 4. SPF -all: rejected at RCPT for the domain that asks for it, per
    // recipient; softfail is only recorded.
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<x@rejectme.test>", 250);
    let r = c.cmd("RCPT TO:<a@spfstrict.example>");
    assert_eq!((r.code, &r.text[..6]), (550, "5.7.23"), "{r:?}");
    c.expect("RCPT TO:<a@tagged.example>", 250);
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<x@soft.test>", 250);
    c.expect("RCPT TO:<a@spfstrict.example>", 250);
    c.cmd("QUIT");
    let reply = send(
        &server,
        "x@soft.test",
        &["a@tagged.example"],
        &message("<x@soft.test>", "s", "b"),
    );
    let auth = stored_auth(&server, &reply);
    assert_eq!(
        (auth.spf.as_str(), auth.dmarc.as_str()),
        ("softfail", "none"),
        "{auth:?}"
    );

    // 5. DNS timeouts never lose a message (on_dns_error = accept).
    let started = Instant::now();
    let reply = send(
        &server,
        "x@slow.test",
        &["a@enforced.example"],
        &message("<x@slow.test>", "s", "b"),
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let auth = stored_auth(&server, &reply);
    assert_eq!(
        (auth.spf.as_str(), auth.dmarc.as_str()),
        ("temperror", "temperror"),
        "{auth:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by dns_timeout"
    );

    // 6. Lure score uses DMARC and the outage state: hold the upstream (an
    // outage as the product sees it) and send an outage-themed spoof.
    common::block(server.delivery().unwrap().hold(&upstream.addr.to_string())).unwrap();
    let lure = message(
        "Microsoft 365 Support <support@rejectme.test>",
        "Verify your password to restore your mailbox",
        "Your Outlook mailbox is suspended. Verify your password now.",
    );
    let reply = send(&server, "x@rejectme.test", &["a@tagged.example"], &lure);
    let id = queue_id(&reply);
    let verdict = common::block(server.spool.get(id))
        .unwrap()
        .unwrap()
        .envelope
        .lure
        .unwrap();
    for reason in ["dmarc-fail", "during-outage", "brand-words"] {
        assert!(
            verdict.reasons.iter().any(|r| r == reason),
            "{reason}: {verdict:?}"
        );
    }
    assert!(verdict.is_flagged(), "{verdict:?}");
    rt.block_on(server.shutdown());

    // 7. on_dns_error = tempfail: 451 at MAIL, nothing spooled.
    let mut fixture = trust_fixture(&dns, &upstream);
    fixture.config.trust.on_dns_error = DnsErrorPolicy::Tempfail;
    let server = rt.block_on(fixture.start());
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    let r = c.cmd("MAIL FROM:<x@slow.test>");
    assert_eq!((r.code, &r.text[..5]), (451, "4.4.3"), "{r:?}");
    c.expect("MAIL FROM:<x@signed.test>", 250);
    rt.block_on(server.shutdown());
}

#[test]
fn recipient_callout_cache_and_fallbacks() {
    let rt = runtime();
    let mut upstream = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    upstream.rcpt_reply("nobody@verified.example", "550 5.1.1 no such user");
    upstream.rcpt_reply("busy@verified.example", "450 4.2.1 try later");
    let mut fixture = Fixture::new();
    let list = fixture.path().join("strict.txt");
    std::fs::write(&list, "listed@strict.example\n").unwrap();
    let callout_domain = |name: &str, fallback| DomainConfig {
        verify_recipients: RecipientCheck::Callout,
        callout_fallback: fallback,
        tls: UpstreamTls::None,
        ..DomainConfig::new(name, &upstream.addr.to_string())
    };
    fixture.config.domains = vec![
        callout_domain("verified.example", CalloutFallback::Accept),
        DomainConfig {
            recipients: Some(list),
            ..callout_domain("strict.example", CalloutFallback::Tempfail)
        },
        callout_domain("temp.example", CalloutFallback::Tempfail),
    ];
    fixture.config.callout.retry_after = Duration::from_millis(200);
    let server = rt.block_on(fixture.start());
    let counter = upstream.connections.clone();
    let connections = || *counter.lock().unwrap();
    let rcpt_at = |addr: std::net::SocketAddr, to: &str| {
        let mut c = RawClient::greeted(addr);
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<s@sender.test>", 250);
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        c.cmd("QUIT");
        r
    };
    // Known and unknown, each asked once, then answered from the cache.
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "Known@verified.example").code,
        250
    );
    assert_eq!(connections(), 1);
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "known@verified.example").code,
        250
    );
    let r = rcpt_at(server.smtp_addrs[0], "nobody@verified.example");
    assert_eq!((r.code, &r.text[..5]), (550, "5.1.1"), "{r:?}");
    assert_eq!(connections(), 2);
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "nobody@verified.example").code,
        550
    );
    assert_eq!(connections(), 2, "negative answer cached");
    // A 4xx from the upstream says nothing: fallback (accept), not cached.
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "busy@verified.example").code,
        250
    );
    std::thread::sleep(Duration::from_millis(300));

    // Upstream down: cache, then static list, then the fallback.
    upstream.stop();
    let started = Instant::now();
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "new@verified.example").code,
        250,
        "fallback accept"
    );
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "known@verified.example").code,
        250
    );
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "nobody@verified.example").code,
        550
    );
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "listed@strict.example").code,
        250,
        "static list"
    );
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "unlisted@strict.example").code,
        550,
        "static list"
    );
    let r = rcpt_at(server.smtp_addrs[0], "anyone@temp.example");
    assert_eq!((r.code, &r.text[..5]), (451, "4.4.3"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    rt.block_on(server.shutdown());

    // The cache survives a restart (the upstream is still down, so only
    // the cache can know that nobody@ does not exist).
    let server = rt.block_on(fixture.start());
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "nobody@verified.example").code,
        550
    );
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "known@verified.example").code,
        250
    );
    rt.block_on(server.shutdown());

    // Back up: new addresses are asked again.
    rt.block_on(upstream.resume());
    let server = rt.block_on(fixture.start());
    let before = connections();
    assert_eq!(
        rcpt_at(server.smtp_addrs[0], "fresh@verified.example").code,
        250
    );
    assert_eq!(connections(), before + 1);
    rt.block_on(server.shutdown());
}

#[test]
fn recipients_sync_writes_the_list_from_an_export() {
    let mut fixture = Fixture::new();
    let list = fixture.path().join("listed.txt");
    fixture.config.domains[1].recipients = Some(list.clone());
    let config = fixture.write_config();
    let export = fixture.path().join("users.csv");
    std::fs::write(
        &export,
        "Display name,User principal name,Proxy addresses\n\
         Alice,alice@listed.example,SMTP:alice@listed.example+smtp:al@listed.example\n\
         Dave,dave@listed.example,SMTP:dave@listed.example\n\
         Eve,eve@elsewhere.example,\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let dry = run(&["recipients", "sync", "--dry-run", export.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        out.contains("listed.example: 3 addresses (2 added, 1 removed)"),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(&list).unwrap().contains("bob"),
        "dry run wrote nothing"
    );
    let done = run(&["recipients", "sync", export.to_str().unwrap()]);
    assert!(done.status.success(), "{done:?}");
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(
        text.contains("al@listed.example\nalice@listed.example\ndave@listed.example\n"),
        "{text}"
    );
    assert!(!text.contains("bob") && !text.contains("eve"), "{text}");
    // An export without the domain is refused rather than emptying the list.
    std::fs::write(&export, "User principal name\neve@elsewhere.example\n").unwrap();
    let refused = run(&[
        "recipients",
        "sync",
        "--domain",
        "listed.example",
        export.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no address at this domain"));
    assert_eq!(std::fs::read_to_string(&list).unwrap(), text);
    // The server uses the new list after a reload.
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@sender.test>", 250);
    c.expect("RCPT TO:<dave@listed.example>", 250);
    c.expect("RCPT TO:<bob@listed.example>", 550);
    rt.block_on(server.shutdown());
}

#[test]
fn rate_limits_per_address_and_network_with_allow_list() {
    let mut fixture = Fixture::new();
    let limits = &mut fixture.config.limits;
    limits.allow = vec!["127.0.0.4/32".parse().unwrap()];
    limits.messages_per_minute = 3;
    limits.network_messages_per_minute = 5;
    limits.recipients_per_minute = 4;
    limits.connections_per_minute = 1000;
    limits.network_connections_per_minute = 1000;
    let config = fixture.write_config();
    let server = BinaryServer::start(&config);
    let rt = runtime();
    let addr = server.addr;
    let session = |source: &str| {
        let mut c = RawClient::connect_from(&rt, addr, source);
        assert_eq!(c.reply().code, 220);
        c.expect("EHLO client.test", 250);
        c
    };
    let mails = |c: &mut RawClient, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let r = c.cmd("MAIL FROM:<s@sender.test>");
                c.cmd("RSET");
                r.code
            })
            .collect()
    };
    let mut a = session("127.0.0.2");
    assert_eq!(mails(&mut a, 4), [250, 250, 250, 451], "per-IP limit");
    let r = a.cmd("MAIL FROM:<s@sender.test>");
    assert_eq!(&r.text[..5], "4.7.1", "{r:?}");
    let mut b = session("127.0.0.3");
    assert_eq!(mails(&mut b, 3), [250, 250, 451], "same /24: network limit");
    let mut allowed = session("127.0.0.4");
    assert_eq!(mails(&mut allowed, 10), [250; 10], "allow-listed");
    // Recipients per minute, counted per RCPT, on another /24.
    let mut c = session("127.0.1.2");
    c.expect("MAIL FROM:<s@sender.test>", 250);
    let codes: Vec<u16> = (0..5)
        .map(|n| c.cmd(&format!("RCPT TO:<user{n}@{DOMAIN}>")).code)
        .collect();
    assert_eq!(codes, [250, 250, 250, 250, 451], "recipients_per_minute");
    drop((a, b, allowed, c));
    assert!(
        wait_for(Duration::from_secs(5), || {
            let log = server.log_text();
            log.contains("messages_per_minute")
                && log.contains("network_messages_per_minute")
                && log.contains("recipients_per_minute")
        }),
        "limits named in the log: {}",
        server.log_text()
    );
}

#[test]
fn connection_limits_dnsbl_and_tarpit() {
    let rt = runtime();
    let mut zone = Zone::default();
    zone.with_host("2.0.0.127.bl.test", "127.0.0.2");
    let dns = rt.block_on(TestDns::start(zone));
    let mut fixture = Fixture::new();
    fixture.config.dns.nameservers = vec![dns.addr];
    fixture.config.dnsbls = vec![DnsblConfig {
        zone: "bl.test".into(),
        answers: vec![],
    }];
    let limits = &mut fixture.config.limits;
    limits.allow = vec!["127.0.0.9/32".parse().unwrap()];
    limits.connections_per_minute = 2;
    limits.max_connections_per_network = 4;
    limits.tarpit_after = 2;
    limits.tarpit_delay = Duration::from_millis(700);
    let server = rt.block_on(fixture.start());
    let addr = server.smtp_addrs[0];

    // Listed: 554 greeting, 503 to everything but QUIT.
    let mut listed = RawClient::connect_from(&rt, addr, "127.0.0.2");
    let greeting = listed.reply();
    assert_eq!(greeting.code, 554, "{greeting:?}");
    assert!(greeting.text.contains("bl.test"), "{greeting:?}");
    assert_eq!(listed.cmd("EHLO client.test").code, 503);
    assert_eq!(listed.cmd("MAIL FROM:<a@b.test>").code, 503);
    assert_eq!(listed.cmd("QUIT").code, 221);
    assert!(listed.is_closed());
    // Not listed: normal service.
    let mut fine = RawClient::connect_from(&rt, addr, "127.0.0.3");
    assert_eq!(fine.reply().code, 220);
    fine.expect("EHLO client.test", 250);

    // Tarpit: after two rejected recipients every reply waits.
    fine.expect("MAIL FROM:<a@sender.test>", 250);
    fine.expect("RCPT TO:<x@not-ours.test>", 550);
    fine.expect("RCPT TO:<y@not-ours.test>", 550);
    let started = Instant::now();
    fine.expect("RCPT TO:<z@not-ours.test>", 550);
    assert!(started.elapsed() >= Duration::from_millis(700), "tarpitted");
    // The allow-listed client is never tarpitted.
    let mut trusted = RawClient::connect_from(&rt, addr, "127.0.0.9");
    assert_eq!(trusted.reply().code, 220);
    trusted.expect("EHLO client.test", 250);
    trusted.expect("MAIL FROM:<a@sender.test>", 250);
    for n in 0..4 {
        trusted.expect(&format!("RCPT TO:<u{n}@not-ours.test>"), 550);
    }
    let started = Instant::now();
    trusted.expect("RCPT TO:<w@not-ours.test>", 550);
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "not tarpitted"
    );

    // Connection rate per address: .5 gets two, the third is told 421
    // (the /24 has 3 of its 4 connections open: .3 and .5 twice).
    let mut first = RawClient::connect_from(&rt, addr, "127.0.0.5");
    assert_eq!(first.reply().code, 220);
    let mut second = RawClient::connect_from(&rt, addr, "127.0.0.5");
    assert_eq!(second.reply().code, 220);
    let mut third = RawClient::connect_from(&rt, addr, "127.0.0.5");
    let r = third.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.1"), "{r:?}");
    assert!(r.text.contains("your address"), "{r:?}");
    assert_eq!(first.cmd("QUIT").code, 221);
    assert_eq!(second.cmd("QUIT").code, 221);
    assert!(first.is_closed() && second.is_closed());
    std::thread::sleep(Duration::from_millis(200));
    // Concurrent connections per /24: .3 is open; .6, .7, .8 fill the
    // network's 4; .10 is refused; the allow-listed .9 is not.
    let mut held = Vec::new();
    for source in ["127.0.0.6", "127.0.0.7", "127.0.0.8"] {
        let mut c = RawClient::connect_from(&rt, addr, source);
        assert_eq!(c.reply().code, 220, "{source}");
        held.push(c);
    }
    let mut tenth = RawClient::connect_from(&rt, addr, "127.0.0.10");
    let r = tenth.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.1"), "{r:?}");
    assert!(r.text.contains("network"), "{r:?}");
    let mut trusted_again = RawClient::connect_from(&rt, addr, "127.0.0.9");
    assert_eq!(trusted_again.reply().code, 220);
    drop(fine);
    rt.block_on(server.shutdown());
}

/// A server whose `[dns] nameservers` is `udp`, which never answers, with a
/// working loopback DNS (`zone()`) kept for a later phase.
fn dead_resolver_fixture(
    udp: &std::net::UdpSocket,
) -> (tokio::runtime::Runtime, Sink, TestDns, Fixture) {
    let rt = common::runtime();
    let upstream = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    let dns = rt.block_on(TestDns::start(zone()));
    let mut fixture = trust_fixture(&dns, &upstream);
    fixture.config.dns.nameservers = vec![udp.local_addr().unwrap()];
    fixture.config.delivery.enabled = false;
    (rt, upstream, dns, fixture)
}

/// A resolver that swallows every query (UDP and TCP), as in a large cloud
/// outage that takes DNS along: the first messages each wait out
/// `dns_timeout`, then the resolver is declared down and the checks are
/// skipped as temperror at once, so intake goes on at full speed and every
/// message is accepted. A sender domain whose own name servers are silent
/// does not turn the checks off for everyone (the probe asks the root).
#[test]
fn a_dead_resolver_is_noticed_once_not_paid_for_per_message() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in tcp.incoming().flatten() {
            held.push(stream); // accepted, never answered
        }
    });
    let (rt, upstream, dns, fixture) = dead_resolver_fixture(&udp);
    let server = rt.block_on(fixture.start());
    let mut skipped = 0;
    let mut waited = 0;
    let mut late = Vec::new();
    for i in 0..16 {
        let started = Instant::now();
        let reply = send(
            &server,
            "x@signed.test",
            &["a@tagged.example"],
            &message("<x@signed.test>", &format!("m{i}"), "b"),
        );
        assert_eq!(reply.code, 250, "message {i}: {reply:?}");
        let auth = stored_auth(&server, &reply);
        assert_eq!(auth.spf, "temperror", "{auth:?}");
        if auth.results.contains("check skipped") {
            skipped += 1;
            late.push(started.elapsed());
        } else {
            waited += 1;
        }
    }
    assert!(waited <= 4, "{waited} messages paid the DNS budget");
    assert!(skipped >= 12, "only {skipped} skipped");
    // The message during which the resolver was declared down may have
    // waited at MAIL; none after it waits for DNS at all.
    assert!(
        late.iter().skip(1).all(|t| *t < Duration::from_millis(900)),
        "a skipped check still waited: {late:?}"
    );
    rt.block_on(server.shutdown());

    // A working resolver, a sender domain that never answers: still checked.
    let fixture = trust_fixture(&dns, &upstream);
    let server = rt.block_on(fixture.start());
    for i in 0..5 {
        let reply = send(
            &server,
            "x@slow.test",
            &["a@tagged.example"],
            &message("<x@slow.test>", &format!("s{i}"), "b"),
        );
        assert_eq!(reply.code, 250);
    }
    std::thread::sleep(Duration::from_secs(3)); // the probe has had its answer
    let reply = send(
        &server,
        "x@signed.test",
        &["a@tagged.example"],
        &message("<x@signed.test>", "after", "b"),
    );
    let auth = stored_auth(&server, &reply);
    assert_eq!(
        auth.spf, "pass",
        "checks were turned off by one silent domain: {auth:?}"
    );

    // Now that working resolver dies, after its root NS answer (six-day TTL)
    // is in a cache: the probe must not be answered by a cache.
    dns.zone.lock().unwrap().mute = true;
    let mut paid = 0;
    for i in 0..10 {
        let started = Instant::now();
        let reply = send(
            &server,
            "x@signed.test",
            &["a@tagged.example"],
            &message("<x@signed.test>", &format!("dead{i}"), "b"),
        );
        assert_eq!(reply.code, 250);
        if started.elapsed() >= Duration::from_millis(900) {
            paid += 1;
        }
    }
    assert!(
        paid <= 3,
        "{paid} of 10 messages waited for a resolver that had died after a cached probe"
    );
    rt.block_on(server.shutdown());
}

/// The first wave: twenty sessions whose first messages all start waiting
/// on a dead resolver at once (no check has timed out yet to trip the
/// circuit). A slow check starts the probe, and the resolver found dead ends
/// every waiting check: none waits out its budget at MAIL and again at the
/// end of data.
#[test]
fn a_dead_resolver_ends_the_checks_already_waiting_on_it() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (rt, _upstream, _dns, mut fixture) = dead_resolver_fixture(&udp);
    // A realistic budget: each check would wait this long on its own.
    fixture.config.trust.dns_timeout = Duration::from_secs(10);
    let server = rt.block_on(fixture.start());
    let addr = server.smtp_addrs[0];
    let started = Instant::now();
    let sessions: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RawClient::greeted(addr);
                c.expect("EHLO wave.test", 250);
                let reply = c.send_mail(
                    "x@signed.test",
                    &["a@tagged.example"],
                    message("<x@signed.test>", &format!("w{i}"), "b").as_bytes(),
                );
                (reply.code, started.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = sessions.into_iter().map(|s| s.join().unwrap()).collect();
    assert!(results.iter().all(|(code, _)| *code == 250), "{results:?}");
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
    // SUSPECT_AFTER (0.5 s) + PROBE_TIMEOUT (1 s), with room for a slow machine;
    // the old behaviour was 2 x dns_timeout = 20 s for the whole wave.
    assert!(
        slowest < Duration::from_secs(4),
        "the first wave waited {slowest:?} for a dead resolver"
    );
    drop(udp);
    rt.block_on(server.shutdown());
}

//! `breakwater check` (the real binary) against a loopback DNS server with
//! good and broken deployments, test upstreams with a valid, an expired and
//! a wrong-name certificate and one without STARTTLS, and our own listener.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use breakwater::config::{DomainConfig, UpstreamTls};
use common::dns::{TestDns, Zone};
use common::sink::{Script, Sink};
use common::*;
use serde_json::Value;

const HOST: &str = "mx2.test.example";

/// MX (primary 10, us 20), SPF with one include, DMARC p=reject.
fn good_domain(zone: &mut Zone, name: &str) {
    let primary = format!("primary.{name}");
    zone.with_mx(name, &[(10, &primary), (20, HOST)])
        .with_host(&primary, "127.0.0.1")
        .with_txt(
            name,
            &format!("v=spf1 ip4:127.0.0.1 include:_spf.{name} -all"),
        )
        .with_txt(name, "google-site-verification=abc")
        .with_txt(&format!("_spf.{name}"), "v=spf1 ip4:127.0.0.2 -all")
        .with_txt(
            &format!("_dmarc.{name}"),
            "v=DMARC1; p=reject; rua=mailto:d@example.com",
        )
        .with_txt(
            &format!("_smtp._tls.{name}"),
            "v=TLSRPTv1; rua=mailto:tlsrpt@example.com",
        );
}

fn check(config: &std::path::Path, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if args.contains(&"--json") {
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["exit_code"], code);
        (code, v["findings"].as_array().unwrap().clone(), text)
    } else {
        (code, Vec::new(), text)
    }
}

/// The level of `check` for `subject` (first match).
fn level(findings: &[Value], subject: &str, check: &str) -> String {
    findings
        .iter()
        .filter(|f| f["subject"] == subject && f["check"] == check)
        .map(|f| f["level"].as_str().unwrap().to_string())
        .max_by_key(|l| match l.as_str() {
            "fail" => 2,
            "warn" => 1,
            _ => 0,
        })
        .unwrap_or_else(|| panic!("no {check} finding for {subject}: {findings:#?}"))
}

#[test]
fn self_check_reports_good_and_broken_deployments() {
    let rt = common::runtime();
    let mut fixture = Fixture::new();
    let bundle = fixture.path().join("test-ca.pem");
    let mut zone = Zone::default();
    // Our name's address is DNS data only (nothing connects to it); the
    // listener itself is on loopback, where the address cannot be compared.
    zone.with_host(HOST, "192.0.2.10")
        .with_ptr("192.0.2.10", HOST);
    for name in [
        "good.test",
        "ttl.test",
        "nodmarc.test",
        "expired.test",
        "wrongname.test",
        "plain.test",
    ] {
        good_domain(&mut zone, name);
    }
    zone.mx_ttl.insert("ttl.test".into(), 86_400);
    zone.txt.remove("_dmarc.nodmarc.test");
    good_domain(&mut zone, "order.test");
    zone.with_mx("order.test", &[(5, HOST), (10, "primary.order.test")]);
    good_domain(&mut zone, "nomx.test");
    zone.mx.remove("nomx.test");
    good_domain(&mut zone, "cname.test");
    zone.with_mx("cname.test", &[(10, "alias.cname.test"), (20, HOST)])
        .with_cname("alias.cname.test", "primary.good.test");
    good_domain(&mut zone, "twospf.test");
    zone.with_txt("twospf.test", "v=spf1 -all");
    good_domain(&mut zone, "spf11.test");
    let eleven: String = (1..=11).map(|i| format!(" a:h{i}.spf11.test")).collect();
    zone.txt
        .insert("spf11.test".into(), vec![format!("v=spf1{eleven} -all")]);
    zone.with_host("upstream.test", "127.0.0.1")
        .with_host("other.test", "127.0.0.1");

    let (dns, sinks) = rt.block_on(async {
        let tls = |names: &[&str], days| Script {
            tls: Some(common::https::acceptor(names, days, &bundle)),
            ..Script::default()
        };
        let mut sinks = HashMap::new();
        sinks.insert(
            "ok",
            Sink::start("127.0.0.1:0", tls(&["upstream.test"], 90)).await,
        );
        sinks.insert(
            "expired",
            Sink::start("127.0.0.1:0", tls(&["upstream.test"], -30)).await,
        );
        sinks.insert(
            "wrongname",
            Sink::start("127.0.0.1:0", tls(&["other.test"], 90)).await,
        );
        sinks.insert("plain", Sink::start("127.0.0.1:0", Script::default()).await);
        (TestDns::start(zone).await, sinks)
    });
    // Our own listener, with a certificate for our host name in the bundle.
    breakwater::tls::write_self_signed(
        &[HOST.to_string()],
        &fixture.config.smtp.tls_cert,
        &fixture.config.smtp.tls_key,
        90,
    )
    .unwrap();
    let mut pem = std::fs::read_to_string(&bundle).unwrap();
    pem.push_str(&std::fs::read_to_string(&fixture.config.smtp.tls_cert).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let server = rt.block_on(fixture.start());
    fixture.config.smtp.listen = vec![server.smtp_addrs[0]];
    fixture.config.dns.nameservers = vec![dns.addr];
    fixture.config.delivery.extra_ca_file = Some(bundle.clone());
    let upstream = |sink: &str| format!("upstream.test:{}", sinks[sink].addr.port());
    fixture.config.domains = [
        ("good.test", "ok"),
        ("ttl.test", "ok"),
        ("nodmarc.test", "ok"),
        ("order.test", "ok"),
        ("nomx.test", "ok"),
        ("cname.test", "ok"),
        ("twospf.test", "ok"),
        ("spf11.test", "ok"),
        ("expired.test", "expired"),
        ("wrongname.test", "wrongname"),
        ("plain.test", "plain"),
    ]
    .iter()
    .map(|(name, sink)| DomainConfig {
        tls: if *sink == "plain" {
            UpstreamTls::Opportunistic
        } else {
            UpstreamTls::Required
        },
        ..DomainConfig::new(name, &upstream(sink))
    })
    .collect();
    let config = fixture.write_config();

    // A good deployment: every check passes, exit 0, readable table.
    let (code, findings, _) = check(&config, &["good.test", "--json"]);
    assert!(
        findings.iter().all(|f| f["level"] == "pass"),
        "{findings:#?}"
    );
    assert_eq!(code, 0);
    for c in ["mx", "mx-order", "mx-resolves", "mx-ttl", "spf", "dmarc"] {
        assert_eq!(level(&findings, "good.test", c), "pass", "{c}");
    }
    assert_eq!(level(&findings, "host", "hostname"), "pass");
    assert_eq!(level(&findings, "host", "ptr"), "pass");
    assert_eq!(level(&findings, "listener", "starttls"), "pass");
    assert_eq!(level(&findings, "listener", "certificate"), "pass");
    let good_upstream = format!("good.test → {}", upstream("ok"));
    assert_eq!(level(&findings, &good_upstream, "upstream-tls"), "pass");
    let detail = findings
        .iter()
        .find(|f| f["subject"] == good_upstream.as_str() && f["check"] == "upstream-tls")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("89 days left") || detail.contains("90 days left"),
        "{detail}"
    );
    let (code, _, table) = check(&config, &["good.test"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("mx-order") && table.contains("0 failures"),
        "{table}"
    );

    // Warnings only: exit 1.
    let (code, findings, _) = check(&config, &["ttl.test", "nodmarc.test", "--json"]);
    assert_eq!(level(&findings, "ttl.test", "mx-ttl"), "warn");
    assert_eq!(level(&findings, "nodmarc.test", "dmarc"), "warn");
    assert_eq!(code, 1, "{findings:#?}");

    // Everything: each broken deployment is named, exit 2.
    let (code, findings, _) = check(&config, &["--json"]);
    assert_eq!(code, 2);
    assert_eq!(level(&findings, "order.test", "mx-order"), "fail");
    assert_eq!(level(&findings, "nomx.test", "mx"), "fail");
    assert_eq!(level(&findings, "cname.test", "mx-cname"), "fail");
    assert_eq!(level(&findings, "twospf.test", "spf"), "fail");
    assert_eq!(level(&findings, "spf11.test", "spf"), "fail");
    let spf11 = findings
        .iter()
        .find(|f| f["subject"] == "spf11.test" && f["check"] == "spf")
        .unwrap();
    assert!(
        spf11["detail"].as_str().unwrap().contains("11 DNS lookups"),
        "{spf11}"
    );
    assert!(spf11["fix"].is_string());
    assert_eq!(
        level(&findings, "good.test", "spf"),
        "pass",
        "other domains unaffected"
    );
    assert_eq!(
        level(
            &findings,
            &format!("expired.test → {}", upstream("expired")),
            "upstream-tls"
        ),
        "fail"
    );
    assert_eq!(
        level(
            &findings,
            &format!("wrongname.test → {}", upstream("wrongname")),
            "upstream-tls"
        ),
        "fail"
    );
    let plain = format!("plain.test → {}", upstream("plain"));
    assert_eq!(
        level(&findings, &plain, "upstream-tls"),
        "warn",
        "no STARTTLS, opportunistic"
    );
    assert_eq!(level(&findings, &plain, "upstream-extensions"), "pass");
    let expired = findings
        .iter()
        .find(|f| {
            f["subject"] == format!("expired.test → {}", upstream("expired")).as_str()
                && f["check"] == "upstream-tls"
        })
        .unwrap();
    assert!(
        expired["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("expired"),
        "{expired}"
    );

    // Gateway mode: an extra MX besides us is a warning; us alone passes.
    let (_, findings, _) = check(&config, &["good.test", "--gateway", "--json"]);
    assert_eq!(level(&findings, "good.test", "mx-order"), "warn");
    rt.block_on(server.shutdown());
    drop(sinks);
}

/// MTA-STS: `check` fetches each domain's policy over verified HTTPS and
/// fails when an enforce policy leaves our MX name out (senders that honour
/// it would skip Breakwater), warns for testing mode, and fails on a broken,
/// oversized or unanswered policy; TLS-RPT's absence is a warning.
#[test]
fn mta_sts_policies_that_leave_breakwater_out_are_found() {
    let rt = common::runtime();
    let mut fixture = Fixture::new();
    let bundle = fixture.path().join("policy-ca.pem");
    let domains = [
        "good",
        "missing",
        "testing",
        "badsyntax",
        "big",
        "slow",
        "nofile",
        "nopolicy",
    ];
    let mut zone = Zone::default();
    zone.with_host(HOST, "192.0.2.10")
        .with_ptr("192.0.2.10", HOST);
    for d in domains {
        let name = format!("{d}.test");
        good_domain(&mut zone, &name);
        if d != "nopolicy" {
            zone.with_txt(&format!("_mta-sts.{name}"), "v=STSv1; id=20261202a")
                .with_host(&format!("mta-sts.{name}"), "127.0.0.1");
        }
    }
    zone.txt.remove("_smtp._tls.nopolicy.test");
    let policy = |mode: &str, mx: &[&str]| {
        let lines: String = mx.iter().map(|m| format!("mx: {m}\r\n")).collect();
        Some(format!(
            "version: STSv1\r\nmode: {mode}\r\n{lines}max_age: 604800\r\n"
        ))
    };
    let mut policies = HashMap::new();
    policies.insert(
        "mta-sts.good.test".to_string(),
        policy("enforce", &["primary.good.test", "*.test.example"]),
    );
    policies.insert(
        "mta-sts.missing.test".to_string(),
        policy("enforce", &["primary.missing.test"]),
    );
    policies.insert(
        "mta-sts.testing.test".to_string(),
        policy("testing", &["primary.testing.test"]),
    );
    policies.insert(
        "mta-sts.badsyntax.test".to_string(),
        Some(
            "version: STSv1\r\nmode: strict\r\nmx: mx2.test.example\r\nmax_age: 604800\r\n".into(),
        ),
    );
    policies.insert(
        "mta-sts.big.test".to_string(),
        Some(format!(
            "{}{}",
            policy("enforce", &[HOST]).unwrap(),
            "# padding\r\n".repeat(8000)
        )),
    );
    policies.insert("mta-sts.slow.test".to_string(), None);
    let names: Vec<String> = domains
        .iter()
        .map(|d| format!("mta-sts.{d}.test"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let https = common::https::acceptor(&names, 90, &bundle);
    let (dns, policy_server) = rt.block_on(async {
        (
            TestDns::start(zone).await,
            common::https::PolicyServer::start(https, policies).await,
        )
    });
    let https_addr = policy_server.addr;
    // Our listener, with a self-signed certificate nobody can verify.
    let server = rt.block_on(fixture.start());
    fixture.config.smtp.listen = vec![server.smtp_addrs[0]];
    fixture.config.dns.nameservers = vec![dns.addr];
    fixture.config.delivery.extra_ca_file = Some(bundle);
    fixture.config.domains = domains
        .iter()
        .map(|d| DomainConfig::new(&format!("{d}.test"), "127.0.0.1:9"))
        .collect();
    let config = fixture.write_config();
    let args: Vec<String> = domains
        .iter()
        .map(|d| format!("{d}.test"))
        .chain([
            "--json".to_string(),
            "--mta-sts-port".to_string(),
            https_addr.port().to_string(),
        ])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let (code, findings, _) = check(&config, &args);
    assert_eq!(code, 2);
    // (domain, check, level, words its detail must hold)
    for (domain, check, want, words) in [
        ("good.test", "mta-sts", "pass", "lists mx2.test.example"),
        ("good.test", "tls-rpt", "pass", ""),
        (
            "missing.test",
            "mta-sts",
            "fail",
            "does not list mx2.test.example",
        ),
        ("testing.test", "mta-sts", "warn", "testing mode"),
        ("badsyntax.test", "mta-sts", "fail", "mode \"strict\""),
        ("big.test", "mta-sts", "fail", "larger than 64 KiB"),
        ("slow.test", "mta-sts", "fail", "no complete answer within"),
        ("nofile.test", "mta-sts", "fail", "HTTP 404"),
        ("nopolicy.test", "mta-sts", "pass", "no MTA-STS policy"),
        ("nopolicy.test", "tls-rpt", "warn", "no TLS-RPT record"),
    ] {
        let finding = findings
            .iter()
            .find(|f| f["subject"] == domain && f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} finding for {domain}: {findings:#?}"));
        let detail = finding["detail"].as_str().unwrap();
        assert_eq!(finding["level"], want, "{domain} {check}: {detail}");
        assert!(detail.contains(words), "{domain} {check}: {detail}");
    }
    // good.test's enforce policy lists us: senders that honour it verify our
    // certificate, so an unverifiable one is a failure, not a warning.
    assert_eq!(level(&findings, "listener", "starttls"), "fail");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // The check remembers each domain's id, policy and MX set in the spool:
    // a policy or MX set that changed while the id stayed is a warning
    // (senders keep their cached copy for up to max_age).
    let port = https_addr.port().to_string();
    let again = || {
        let (_, findings, _) = check(&config, &["good.test", "--json", "--mta-sts-port", &port]);
        findings
            .iter()
            .find(|f| f["subject"] == "good.test" && f["check"] == "mta-sts-id")
            .map(|f| f["detail"].as_str().unwrap().to_string())
    };
    assert_eq!(again(), None, "nothing changed since the first run");
    policy_server.policies.lock().unwrap().insert(
        "mta-sts.good.test".to_string(),
        policy("enforce", &["primary.good.test", HOST, "*.test.example"]),
    );
    let changed = again().expect("a policy edited under the same id is found");
    assert!(changed.contains("policy file changed"), "{changed}");
    assert_eq!(again(), None, "remembered: warned once per change");
    dns.zone.lock().unwrap().with_mx(
        "good.test",
        &[(10, "primary.good.test"), (20, HOST), (30, "mx3.good.test")],
    );
    let moved = again().expect("an MX set changed under the same id is found");
    assert!(moved.contains("MX records changed"), "{moved}");
    assert!(moved.contains("mx3.good.test"), "{moved}");
    rt.block_on(server.shutdown());
}

/// DKIM for sending during an outage: `dkim keygen` writes a private key
/// (0600) and prints its record; a message signed with the key verifies
/// (mail-auth, against the record in a loopback DNS); `check` passes the
/// domain whose record is the key on disk and fails the one publishing
/// another key or none; `check-config` names a broken key by its config key.
#[test]
fn dkim_keys_are_made_published_verified_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let rt = common::runtime();
    let mut fixture = Fixture::new();
    let keygen = |domain: &str, algorithm: &str, out: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["--json", "dkim", "keygen", "--domain", domain])
            .args(["--selector", "bw1", "--algorithm", algorithm, "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let mut records = HashMap::new();
    for (domain, algorithm) in [
        ("signed.test", "rsa"),
        ("ed.test", "ed25519"),
        ("stale.test", "rsa"),
        ("unpublished.test", "ed25519"),
        ("other.test", "rsa"),
    ] {
        let out = fixture.path().join(format!("dkim-{domain}.key"));
        let made = keygen(domain, algorithm, &out);
        assert!(made.status.success(), "{made:?}");
        let answer: Value = serde_json::from_slice(&made.stdout).unwrap();
        assert_eq!(answer["dns_name"], format!("bw1._domainkey.{domain}."));
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        records.insert(domain, answer["dns_txt"].as_str().unwrap().to_string());
    }
    // An existing key is not replaced by accident.
    let again = keygen(
        "signed.test",
        "rsa",
        &fixture.path().join("dkim-signed.test.key"),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    // The human output: the zone line, split into strings DNS can carry.
    let text = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args([
            "dkim",
            "keygen",
            "--domain",
            "x.test",
            "--selector",
            "s1",
            "--out",
        ])
        .arg(fixture.path().join("x.key"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("s1._domainkey.x.test. IN TXT ( \"v=DKIM1; k=rsa; p="),
        "{text}"
    );
    assert!(text.contains("dkim_selector = \"s1\""), "{text}");

    let mut zone = Zone::default();
    for domain in ["signed.test", "ed.test", "stale.test", "unpublished.test"] {
        good_domain(&mut zone, domain);
    }
    zone.with_txt("bw1._domainkey.signed.test", &records["signed.test"])
        .with_txt("bw1._domainkey.ed.test", &records["ed.test"])
        .with_txt("bw1._domainkey.stale.test", &records["other.test"]);
    // Users' mail leaves from our host name's address: signed.test's SPF
    // (ip4:127.0.0.1) authorises it, ed.test's does not.
    zone.with_host(HOST, "127.0.0.1");
    zone.txt
        .insert("ed.test".into(), vec!["v=spf1 ip4:192.0.2.99 -all".into()]);
    let dns = rt.block_on(TestDns::start(zone));
    fixture.config.dns.nameservers = vec![dns.addr];
    fixture.config.domains = ["signed.test", "ed.test", "stale.test", "unpublished.test"]
        .iter()
        .map(|name| DomainConfig {
            dkim_selector: "bw1".into(),
            dkim_key: Some(fixture.path().join(format!("dkim-{name}.key"))),
            ..DomainConfig::new(name, "127.0.0.1:1")
        })
        .collect();
    let config = fixture.write_config();

    // Signed with the key, verified by mail-auth against the published record.
    let resolver = breakwater::dns::build_resolver(&fixture.config.dns).unwrap();
    let verifier = mail_auth::MessageAuthenticator(resolver);
    for domain in ["signed.test", "ed.test", "stale.test"] {
        let key = breakwater::dkim::load(
            &fixture.path().join(format!("dkim-{domain}.key")),
            domain,
            "bw1",
        )
        .unwrap();
        let body = format!(
            "From: =?UTF-8?B?5bGx55Sw?= <taro@{domain}>\r\nTo: customer@remote.test\r\nSubject: =?UTF-8?B?6KaL56mN44KC44KK?=\r\nDate: Thu, 03 Dec 2026 10:00:00 +0900\r\nMessage-ID: <1@{domain}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nお見積もりをお送りします。\r\n"
        );
        let signed = format!("{}{body}", key.sign(body.as_bytes()).unwrap());
        let message = mail_auth::AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
        let results = rt.block_on(verifier.verify_dkim(&message));
        let passed = results
            .iter()
            .any(|r| r.result() == &mail_auth::DkimResult::Pass);
        assert_eq!(
            passed,
            domain != "stale.test",
            "{domain}: {:?}",
            results.iter().map(|r| r.result()).collect::<Vec<_>>()
        );
        // A changed body no longer verifies.
        if domain == "signed.test" {
            let tampered = signed.replace("お見積もり", "ご請求書");
            let message = mail_auth::AuthenticatedMessage::parse(tampered.as_bytes()).unwrap();
            let results = rt.block_on(verifier.verify_dkim(&message));
            assert!(results
                .iter()
                .all(|r| r.result() != &mail_auth::DkimResult::Pass));
        }
    }

    // `check` compares each published record with the key on disk.
    let domains = ["signed.test", "ed.test", "stale.test", "unpublished.test"];
    let mut args: Vec<&str> = domains.to_vec();
    args.push("--json");
    let (_, findings, _) = check(&config, &args);
    let dkim = |domain: &str| {
        findings
            .iter()
            .find(|f| f["subject"] == domain && f["check"] == "dkim")
            .unwrap_or_else(|| panic!("no dkim finding for {domain}: {findings:#?}"))
            .clone()
    };
    assert_eq!(
        dkim("signed.test")["level"],
        "pass",
        "{}",
        dkim("signed.test")
    );
    assert_eq!(dkim("ed.test")["level"], "pass", "{}", dkim("ed.test"));
    let stale = dkim("stale.test");
    assert_eq!(stale["level"], "fail");
    assert!(
        stale["detail"].as_str().unwrap().contains("different key"),
        "{stale}"
    );
    assert!(
        stale["fix"]
            .as_str()
            .unwrap()
            .contains(&records["stale.test"][..40]),
        "the fix is the record to publish: {stale}"
    );
    let spf_send = |domain: &str| {
        findings
            .iter()
            .find(|f| f["subject"] == domain && f["check"] == "spf-send")
            .unwrap_or_else(|| panic!("no spf-send finding for {domain}: {findings:#?}"))
            .clone()
    };
    assert_eq!(
        spf_send("signed.test")["level"],
        "pass",
        "{}",
        spf_send("signed.test")
    );
    let unauthorised = spf_send("ed.test");
    assert_eq!(unauthorised["level"], "fail", "{unauthorised}");
    assert!(
        unauthorised["fix"]
            .as_str()
            .unwrap()
            .contains("ip4:127.0.0.1"),
        "{unauthorised}"
    );
    let missing = dkim("unpublished.test");
    assert_eq!(missing["level"], "fail");
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("no DKIM record"),
        "{missing}"
    );

    // check-config (and serve) refuse a broken key, naming it.
    let check_config = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .arg("--config")
            .arg(config)
            .arg("check-config")
            .output()
            .unwrap()
    };
    assert!(check_config(&config).status.success());
    std::fs::write(fixture.path().join("dkim-ed.test.key"), "garbage").unwrap();
    let refused = check_config(&config);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("domain[1].dkim_key") && err.contains("dkim-ed.test.key"),
        "{err}"
    );
    fixture.config.domains[0].dkim_selector = String::new();
    let config = fixture.write_config();
    let refused = check_config(&config);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("domain[0].dkim_selector"),
        "{refused:?}"
    );
}

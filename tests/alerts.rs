//! Outage alerts: a real upstream (scripted sink) goes away and comes back;
//! a loopback webhook receiver and a loopback mail relay get the down,
//! repeat and recovery notices with the right content and timing.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use breakwater::config::{AlertKind, AlertTarget, UpstreamTls, WebhookFormat};
use common::sink::{Script, Sink};
use common::webhook::{events, wait_for_event, webhook_receiver, webhook_target};
use common::*;

#[test]
fn upstream_outage_is_alerted_repeated_and_recovered() {
    let rt = common::runtime();
    let (mut upstream, relay) = rt.block_on(async {
        (
            Sink::start("127.0.0.1:0", Script::default()).await,
            Sink::start("127.0.0.1:0", Script::default()).await,
        )
    });
    let (json_url, json_hook) = webhook_receiver();
    let (text_url, text_hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.alerts.enabled = true;
    fixture.config.alerts.check_interval = Duration::from_millis(200);
    fixture.config.alerts.probe_failures = 2;
    fixture.config.alerts.repeat = Duration::from_millis(1500);
    fixture.config.alerts.queue_depth = 2;
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.connect_timeout = Duration::from_secs(1);
    fixture.config.delivery.retry = vec![Duration::from_secs(3600).into()];
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.domains.truncate(1);
    fixture.config.alert_targets = vec![
        webhook_target(&json_url, WebhookFormat::Json),
        webhook_target(&text_url, WebhookFormat::Text),
        AlertTarget {
            kind: AlertKind::Mail,
            url: None,
            format: WebhookFormat::Json,
            to: Some("oncall@other.test".into()),
            route: Some(relay.addr.to_string()),
        },
    ];
    // A user who wants to be told where to read mail during an outage.
    let (user_url, user_hook) = webhook_receiver();
    fixture.config.web.public_url = "https://mx2.test.example:8443/".into();
    common::web::add_user(
        &fixture.config.web.users_file,
        "alice@example.com",
        &[],
        false,
        false,
    );
    common::web::add_user(
        &fixture.config.web.users_file,
        "bob@example.com",
        &[],
        false,
        false,
    );
    breakwater::accounts::update(&fixture.config.web.users_file, "alice@example.com", |a| {
        a.notify_webhook = Some(user_url.clone());
        Ok(())
    })
    .unwrap();
    let server = rt.block_on(fixture.start());
    let name = upstream.addr.to_string();

    // Healthy: a few rounds, no alert.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        events(&json_hook).is_empty(),
        "{:?}",
        json_hook.lock().unwrap()
    );

    // The upstream dies: down within a few probe rounds.
    upstream.stop();
    let died = Instant::now();
    wait_for_event(&json_hook, "upstream-down", Duration::from_secs(10));
    let (at, down) = json_hook
        .lock()
        .unwrap()
        .iter()
        .find(|(_, v)| v["event"] == "upstream-down")
        .cloned()
        .unwrap();
    assert!(
        at.duration_since(died) < Duration::from_secs(5),
        "alerted after {:?}",
        at.duration_since(died)
    );
    assert_eq!(down["subject"], name.as_str());
    assert_eq!(down["host"], "mx2.test.example");
    assert!(
        down["detail"]
            .as_str()
            .unwrap()
            .contains("probes in a row failed"),
        "{down}"
    );
    // The user with a notice webhook is told where to read mail, once.
    assert!(wait_for(Duration::from_secs(5), || !user_hook
        .lock()
        .unwrap()
        .is_empty()));
    let notice = user_hook.lock().unwrap()[0].1.clone();
    assert_eq!(notice["event"], "user-outage-notice");
    assert_eq!(notice["user"], "alice@example.com");
    assert!(
        notice["text"]
            .as_str()
            .unwrap()
            .contains("https://mx2.test.example:8443/"),
        "{notice}"
    );
    // Mail piles up while it is down: the queue-depth alert fires too.
    for i in 0..3 {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO alerts.test", 250);
        assert_eq!(
            c.send_mail(
                "s@remote.test",
                &["user@example.com"],
                format!("Subject: {i}\r\n\r\nx\r\n").as_bytes()
            )
            .code,
            250
        );
    }
    assert!(wait_for(Duration::from_secs(10), || events(&json_hook)
        .contains(&"queue-depth".to_string())));
    // Still down: repeated.
    wait_for_event(&json_hook, "upstream-still-down", Duration::from_secs(10));
    // Back: recovery with the outage's duration and the queue it built.
    rt.block_on(upstream.resume());
    wait_for_event(&json_hook, "upstream-recovered", Duration::from_secs(10));
    let recovered = json_hook
        .lock()
        .unwrap()
        .iter()
        .find(|(_, v)| v["event"] == "upstream-recovered")
        .cloned()
        .unwrap()
        .1;
    assert!(
        recovered["duration_seconds"].as_u64().unwrap() >= 1,
        "{recovered}"
    );
    assert!(
        recovered["max_queue_depth"].as_u64().unwrap() >= 3,
        "{recovered}"
    );
    // The mail drains once it is back, and the queue alert clears.
    assert!(
        wait_for(Duration::from_secs(15), || upstream.delivered().len() == 3),
        "delivered {}",
        upstream.delivered().len()
    );
    assert!(wait_for(Duration::from_secs(10), || events(&json_hook)
        .contains(&"queue-depth-recovered".to_string())));

    assert_eq!(
        user_hook.lock().unwrap().len(),
        1,
        "one notice per outage, not per repeat"
    );
    // Slack/Teams-style receiver got {"text": …} lines.
    let texts: Vec<String> = text_hook
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&format!("upstream {name} is DOWN"))),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.contains("RECOVERED")), "{texts:?}");
    // The mail alerts went through their own relay.
    let mails = relay.delivered();
    assert!(
        mails
            .iter()
            .any(|m| String::from_utf8_lossy(&m.data).contains("is DOWN")),
        "{} mails",
        mails.len()
    );
    assert!(mails
        .iter()
        .all(|m| m.rcpts() == vec!["oncall@other.test".to_string()]));
    // Metrics count them.
    let metrics = breakwater::metrics::get().render();
    assert!(
        metrics.contains("breakwater_alerts_total{event=\"upstream-down\"}"),
        "{metrics}"
    );
    rt.block_on(server.shutdown());
}

#[test]
fn silent_upstream_is_alerted_by_the_probe_timeout() {
    // Accepts connections but never greets: the probe must time out, not hang.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let (url, hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.alerts.enabled = true;
    fixture.config.alerts.check_interval = Duration::from_millis(200);
    fixture.config.delivery.connect_timeout = Duration::from_millis(500);
    fixture.config.domains[0].upstream = addr.to_string();
    fixture.config.domains.truncate(1);
    fixture.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    let (rt, server) = start_in_process(&fixture);
    let started = Instant::now();
    assert!(wait_for(Duration::from_secs(10), || events(&hook)
        .contains(&"upstream-down".to_string())));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let detail = hook.lock().unwrap()[0].1["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("no greeting within"), "{detail}");
    rt.block_on(server.shutdown());
}

/// The bounce guard holding an upstream is an alert with the upstream's
/// reply in it, and releasing the upstream ends it.
#[test]
fn a_bounce_guard_trip_is_alerted_with_the_reply_and_ends_at_release() {
    let rt = common::runtime();
    let upstream = rt.block_on(Sink::start(
        "127.0.0.1:0",
        Script {
            data_reply: "550 5.7.51 TenantInboundAttribution; Rejecting".into(),
            ..Script::default()
        },
    ));
    let (url, hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.alerts.enabled = true;
    fixture.config.alerts.check_interval = Duration::from_millis(200);
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.bounce_guard_failures = 3;
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.domains.truncate(1);
    fixture.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    let server = rt.block_on(fixture.start());
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO client.test", 250);
    for i in 0..6 {
        // The null sender: no DSNs to route anywhere in this test.
        let reply = c.send_mail(
            "",
            &[&format!("u{i}@example.com")],
            b"Subject: g\r\n\r\nx\r\n",
        );
        assert_eq!(reply.code, 250);
    }
    wait_for_event(&hook, "bounce-guard", Duration::from_secs(15));
    let alert = hook
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .find(|v| v["event"] == "bounce-guard")
        .unwrap();
    let detail = alert["detail"].as_str().unwrap();
    assert!(
        detail.contains("550 5.7.51 TenantInboundAttribution"),
        "{detail}"
    );
    assert!(detail.contains("upstream release"), "{detail}");
    assert_eq!(alert["subject"], upstream.addr.to_string());
    let delivery = server.delivery().unwrap().clone();
    upstream.set(|script| script.data_reply = "250 2.0.0 Ok".into());
    rt.block_on(delivery.release(&upstream.addr.to_string()))
        .unwrap();
    wait_for_event(&hook, "bounce-guard-recovered", Duration::from_secs(15));
    assert!(wait_for(Duration::from_secs(15), || server
        .spool
        .is_empty()));
    rt.block_on(server.shutdown());
}

/// One verdict on an upstream's health. With an empty queue (nothing for
/// delivery to fail on) and an upstream that refuses connections, the alert,
/// `breakwater upstream list`, `breakwater_upstream_up` and the web banner
/// turn to "down" together, stay there, and turn back together when it
/// answers again. (Before, the monitor alerted after two probes while the
/// list, the gauge and the banner said "up" until deliveries had failed.)
#[test]
fn the_alert_the_list_the_gauge_and_the_banner_give_one_verdict() {
    let refusing = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = refusing.local_addr().unwrap();
    drop(refusing);
    let name = addr.to_string();
    let (url, hook) = webhook_receiver();
    let mut fixture = Fixture::new();
    fixture.config.alerts.enabled = true;
    fixture.config.alerts.check_interval = Duration::from_millis(200);
    fixture.config.alerts.probe_failures = 2;
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.connect_timeout = Duration::from_secs(1);
    fixture.config.delivery.probe_interval = Duration::from_millis(200);
    fixture.config.domains[0].upstream = name.clone();
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.domains.truncate(1);
    fixture.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    common::web::add_user(
        &fixture.config.web.users_file,
        "alice@example.com",
        &[],
        false,
        false,
    );
    let token = breakwater::api_tokens::create(
        &fixture.config.admin.tokens_file,
        "ops",
        breakwater::api_tokens::Role::Viewer,
        None,
    )
    .unwrap();
    breakwater::api_tokens::write_private(&fixture.config.admin.cli_token_file, token.as_bytes())
        .unwrap();
    let (rt, server) = start_in_process(&fixture);
    // The CLI finds the in-process server's admin API through its config.
    let mut live = fixture.config.clone();
    live.admin.listen = server.admin_addr.unwrap();
    let config_path = fixture.path().join("live.toml");
    std::fs::write(&config_path, live.to_toml()).unwrap();
    let mut web = common::web::WebClient::new(server.web_addr.unwrap());
    web.login_fully("alice@example.com", None);
    let metrics_url = format!("http://{}/metrics", server.admin_addr.unwrap());

    // Each source's word, "up" or "down".
    let alert = || {
        let events = events(&hook);
        let last = events.iter().rev().find(|e| e.starts_with("upstream-"));
        match last.map(String::as_str) {
            Some("upstream-down") | Some("upstream-still-down") => "down",
            _ => "up",
        }
    };
    let list = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["upstream", "list", "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The table lines up: the state sits under its header.
        let header = text.lines().next().unwrap_or_default();
        let row = text
            .lines()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
        let column = header.find("STATE").expect("STATE column");
        let state = row[column..].split_whitespace().next().unwrap_or_default();
        match state {
            "up" => "up",
            "down" => "down",
            other => panic!("state {other:?} not under STATE:\n{text}"),
        }
    };
    let gauge = || {
        let text = ureq::get(&metrics_url)
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        let line = format!("breakwater_upstream_up{{upstream=\"{name}\"}} ");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in /metrics"));
        if value.trim() == "1" {
            "up"
        } else {
            "down"
        }
    };
    let mut banner = || {
        if web.get("/mail").text().contains("is not accepting mail") {
            "down"
        } else {
            "up"
        }
    };
    let mut read = move || [alert(), list(), gauge(), banner()];
    // Sample all four until they all read `want`; note when each first did,
    // and fail if one goes back once it got there.
    let watch = |read: &mut dyn FnMut() -> [&'static str; 4], want: &str, limit: Duration| {
        let started = Instant::now();
        let mut first: [Option<Instant>; 4] = [None; 4];
        while started.elapsed() < limit {
            let words = read();
            let now = Instant::now();
            for (i, word) in words.iter().enumerate() {
                match first[i] {
                    None if *word == want => first[i] = Some(now),
                    Some(at) => assert_eq!(
                        *word, want,
                        "source {i} (alert, list, gauge, banner) went back {:?} after reading {want}",
                        now - at
                    ),
                    None => {}
                }
            }
            if first.iter().all(Option::is_some) {
                return first.iter().map(|t| t.unwrap()).collect::<Vec<Instant>>();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("not all {want} within {limit:?}: alert, list, gauge, banner = {first:?}");
    };
    let spread = |times: &[Instant]| {
        let earliest = times.iter().min().unwrap();
        times.iter().map(|t| *t - *earliest).max().unwrap()
    };

    // Healthy at first? No: it refuses from the start, so "up" (not known
    // to be down) first, then down on the idle probes' evidence.
    let down = watch(&mut read, "down", Duration::from_secs(15));
    assert!(spread(&down) < Duration::from_secs(1), "down at {:?}", down);
    // It stays down (and consistent) for a few more rounds.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_millis(800) {
        assert_eq!(read(), ["down"; 4]);
    }
    // Back: all four say "up" again together.
    let sink = rt.block_on(Sink::start(&name, Script::default()));
    let up = watch(&mut read, "up", Duration::from_secs(15));
    assert!(spread(&up) < Duration::from_secs(1), "up at {:?}", up);
    assert!(events(&hook).contains(&"upstream-recovered".to_string()));
    drop(sink);
    rt.block_on(server.shutdown());
}

//! The real `breakwater` binary: kill -9 crash recovery, index loss and
//! corruption, SIGHUP reload, SIGTERM drain, and `check-config`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater::spool::Spool;
use common::ledger::*;
use common::*;

/// Every 250 is in the spool byte-for-byte; nothing refused is.
fn verify_spool(fixture: &Fixture, ledger: &HashMap<String, Sent>) -> (usize, Option<String>) {
    let audit = audit_spool(&fixture.config.spool, ledger);
    audit.assert_clean();
    (audit.acked, audit.index_rebuilt)
}

#[test]
fn kill_9_never_loses_an_acknowledged_message() {
    let mut fixture = Fixture::new();
    fixture.config.spool.segment_size = 512 * 1024;
    fixture.config.spool.large_message_threshold = 100_000;
    let config_path = fixture.write_config();
    let seed = printed_seed("crash test");
    let mut rng = Rng(seed);

    let mut server = BinaryServer::start(&config_path);
    let addr = Arc::new(Mutex::new(server.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::new()));
    let clients = spawn_clients(4, &addr, &stop, &ledger, seed);

    let kills = 6;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        server.kill9();
        server = BinaryServer::start(&config_path);
        *addr.lock().unwrap() = server.addr;
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    server.kill9();

    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    let (acked, _) = verify_spool(&fixture, &ledger);
    let rejected = ledger
        .values()
        .filter(|s| matches!(s.outcome, Outcome::Rejected(_)))
        .count();
    let unknown = ledger
        .values()
        .filter(|s| matches!(s.outcome, Outcome::Unknown))
        .count();
    eprintln!("crash test: kills={kills} sent={} acked={acked} rejected={rejected} in-flight-at-kill={unknown}", ledger.len());
    assert!(acked >= 100, "too little traffic to mean anything: {acked}");
    assert!(rejected > 0, "the refused-message check never ran");

    // Lose the index entirely: rebuilt from the segments.
    std::fs::remove_dir_all(fixture.config.spool.dir.join("index")).unwrap();
    let (again, rebuilt) = verify_spool(&fixture, &ledger);
    assert_eq!(again, acked);
    assert!(rebuilt.is_some(), "a missing index must be rebuilt");

    // A stale index (an older copy) is detected and rebuilt.
    let index_dir = fixture.config.spool.dir.join("index");
    let stale = fixture.path().join("stale-index");
    copy_dir(&index_dir, &stale);
    let server = BinaryServer::start(&config_path);
    let mut c = RawClient::greeted(server.addr);
    c.expect("EHLO late.test", 250);
    let mut ledger = ledger;
    for i in 0..5 {
        let token = format!("late-{i}");
        let body = message_body(&token, 1000, false);
        let reply = c.send_mail("late@remote.test", &["user@example.com"], &body);
        assert_eq!(reply.code, 250);
        ledger.insert(
            token,
            Sent {
                body,
                outcome: Outcome::Acked(queue_id(&reply)),
            },
        );
    }
    server.kill9();
    std::fs::remove_dir_all(&index_dir).unwrap();
    copy_dir(&stale, &index_dir);
    let (with_late, rebuilt) = verify_spool(&fixture, &ledger);
    assert_eq!(with_late, acked + 5);
    assert!(rebuilt.is_some(), "a stale index must be noticed");

    // A corrupted index (garbage over sled's files) is rebuilt too, and the
    // real binary starts on it.
    for entry in walk(&index_dir) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5u8; len.max(64)]).unwrap();
    }
    let server = BinaryServer::start(&config_path);
    let mut c = RawClient::greeted(server.addr);
    c.expect("NOOP", 250);
    assert!(
        server.log_text().contains("rebuil"),
        "corrupt index not rebuilt: {}",
        server.log_text()
    );
    server.kill9();
    let (after_corruption, _) = verify_spool(&fixture, &ledger);
    assert_eq!(after_corruption, acked + 5);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn sighup_reloads_recipient_lists_without_dropping_connections() {
    let fixture = Fixture::new();
    let config_path = fixture.write_config();
    let server = BinaryServer::start(&config_path);
    let mut c = RawClient::greeted(server.addr);
    c.expect("EHLO hup.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<carol@listed.example>", 550);
    std::fs::write(
        fixture.path().join("listed.txt"),
        "alice@listed.example\ncarol@listed.example\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || server
            .log_text()
            .contains("recipient policy reloaded")),
        "{}",
        server.log_text()
    );
    // Same connection, same transaction: still alive, new list in force.
    c.expect("RCPT TO:<carol@listed.example>", 250);
    c.expect("RCPT TO:<bob@listed.example>", 550);
    c.expect("DATA", 354);
    c.send(b"Subject: after reload\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    // A setting read only at start is named in the reload log.
    let mut changed = fixture.config.clone();
    changed.smtp.max_connections = 77;
    std::fs::write(&config_path, changed.to_toml()).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || server.log_text().contains(
            "take effect only after a restart settings=smtp.max_connections"
        )),
        "{}",
        server.log_text()
    );
    // A broken config on reload keeps the old policy in force.
    std::fs::write(&config_path, "hostname = [broken\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(10), || server
        .log_text()
        .contains("configuration invalid")));
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<carol@listed.example>", 250);
}

#[test]
fn sigterm_drains_sessions_and_exits_cleanly() {
    let fixture = Fixture::new();
    let config_path = fixture.write_config();
    let mut server = BinaryServer::start(&config_path);
    let mut idle = RawClient::greeted(server.addr);
    idle.expect("EHLO idle.test", 250);
    let mut busy = RawClient::greeted(server.addr);
    busy.expect("EHLO busy.test", 250);
    busy.expect("MAIL FROM:<s@remote.test>", 250);
    busy.expect("RCPT TO:<a@example.com>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: in flight during shutdown\r\n\r\n");
    server.signal(libc::SIGTERM);
    // The idle session is told to go away.
    let r = idle.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.3.2"), "{r:?}");
    // The session in DATA may finish its message and gets a real 250.
    std::thread::sleep(Duration::from_millis(200));
    busy.send(b"body\r\n.\r\n");
    let r = busy
        .try_reply()
        .unwrap_or_else(|e| panic!("{e}: {}", server.log_text()));
    assert_eq!(r.code, 250, "{r:?}");
    let id = queue_id(&r);
    busy.send(b"QUIT\r\n");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "still accepting after shutdown"
    );
    // The clean exit left its checkpoint, and the index it describes agrees
    // with a full replay of the segments too (the first open consumed it).
    let checkpoint = fixture.config.spool.dir.join("clean-shutdown");
    assert!(
        checkpoint.exists(),
        "SIGTERM writes the clean-shutdown checkpoint"
    );
    let (spool, report) = Spool::open(&fixture.config.spool).unwrap();
    assert!(report.from_checkpoint, "{report:?}");
    assert!(common::block(spool.get(id)).unwrap().is_some());
    drop(spool);
    assert!(!checkpoint.exists(), "a checkpoint is used once");
    let (spool, report) = Spool::open(&fixture.config.spool).unwrap();
    assert!(
        report.index_rebuilt.is_none() && !report.from_checkpoint,
        "clean shutdown leaves a consistent index: {report:?}"
    );
    assert!(common::block(spool.get(id)).unwrap().is_some());
}

#[test]
fn check_config_reports_file_key_and_problem() {
    let fixture = Fixture::new();
    let good = fixture.write_config();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("max_recipients = 100") && printed.contains("name = \"example.com\""),
        "{printed}"
    );

    let cases = [
        (
            "[smtp]\nmax_recipients = -1\n[[domain]]\nname = \"example.com\"\n",
            "smtp.max_recipients",
        ),
        (
            "[smtp]\nlisten = [\"not an address\"]\n[[domain]]\nname = \"example.com\"\n",
            "smtp.listen",
        ),
        (
            "[[domain]]\nname = \"example.com\"\ntls = \"sometimes\"\n",
            "domain[0].tls",
        ),
        (
            "[[domain]]\nname = \"example.com\"\nrecipients = \"/nonexistent/list.txt\"\n",
            "domain[0].recipients",
        ),
        (
            "[spool]\ndirectory = \"x\"\n[[domain]]\nname = \"example.com\"\n",
            "spool",
        ),
        (
            "[smtp]\ncommand_timeout = \"soon\"\n[[domain]]\nname = \"example.com\"\n",
            "smtp.command_timeout",
        ),
    ];
    for (text, key) in cases {
        let path = fixture.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.toml") && err.contains(key),
            "{text} -> {err}"
        );
    }
    // BREAKWATER_CONFIG names the file when --config is absent.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .arg("check-config")
        .env("BREAKWATER_CONFIG", fixture.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/breakwater.toml", "config/docker.toml"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["check-config", "--config", file])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kill_9_during_delivery_delivers_everything_after_restart() {
    use common::sink::{Script, Sink};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut sink = rt.block_on(Sink::start(
        "127.0.0.1:0",
        Script {
            data_delay: Duration::from_millis(100),
            ..Script::default()
        },
    ));
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.retry = vec![Duration::from_millis(200).into()];
    fixture.config.delivery.concurrency = 4;
    fixture.config.domains[0].upstream = sink.addr.to_string();
    fixture.config.domains[0].tls = breakwater::config::UpstreamTls::None;
    let config_path = fixture.write_config();
    let server = BinaryServer::start(&config_path);
    let mut c = RawClient::greeted(server.addr);
    c.expect("EHLO kill.test", 250);
    let total = 60;
    // Queue everything while the upstream is down, then let it come back
    // and kill Breakwater in the middle of the flush.
    sink.stop();
    for i in 0..total {
        let reply = c.send_mail(
            "s@remote.test",
            &["user@example.com"],
            format!("Subject: kill-{i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
        assert_eq!(reply.code, 250);
    }
    rt.block_on(sink.resume());
    assert!(wait_for(Duration::from_secs(20), || sink.delivered().len() >= 10));
    server.kill9();
    let delivered_before_kill = sink.delivered().len();
    let mut server = BinaryServer::start(&config_path);
    let tokens = |sink: &Sink| -> std::collections::HashMap<String, usize> {
        let mut seen = std::collections::HashMap::new();
        for d in sink.delivered() {
            *seen
                .entry(token_of(without_trace_header(&d.data)))
                .or_insert(0) += 1;
        }
        seen
    };
    assert!(
        wait_for(Duration::from_secs(30), || tokens(&sink).len() == total),
        "after restart only {} of {total} delivered",
        tokens(&sink).len()
    );
    let seen = tokens(&sink);
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("kill -9 during delivery: {delivered_before_kill} delivered before the kill, {total} unique after restart, {duplicates} duplicates");
    // Removal follows each delivery immediately; give the last ones a moment.
    std::thread::sleep(Duration::from_secs(1));
    server.signal(libc::SIGTERM);
    let _ = server.child.wait();
    let (spool, _) = Spool::open(&fixture.config.spool).unwrap();
    assert!(
        spool.is_empty(),
        "spool not empty: {:?}",
        common::block(spool.list()).unwrap().len()
    );
}

/// `kill -9` while the server compacts the spool, again and again: after
/// every crash each message that was live is there with its exact bytes and
/// each removed one stays removed; compaction picks up where it stopped and
/// the pinned segments end up reclaimed.
#[test]
fn kill_9_during_compaction_loses_nothing_and_resurrects_nothing() {
    let mut fixture = Fixture::new();
    fixture.config.spool.segment_size = 32 * 1024;
    fixture.config.spool.large_message_threshold = 20_000;
    fixture.config.spool.compact_interval = Duration::from_millis(10);
    let config_path = fixture.write_config();
    let seed = printed_seed("compaction crash test");
    let mut rng = Rng(seed);

    // 1,200 messages over ~60 segments; every fourth stays (plus a few
    // large ones), so every segment is sparse and pinned.
    let rt = common::runtime();
    let mut live: HashMap<breakwater::envelope::QueueId, Vec<u8>> = HashMap::new();
    let mut removed = Vec::new();
    rt.block_on(async {
        let (spool, _) = Spool::open(&fixture.config.spool).unwrap();
        for i in 0..1200usize {
            let size = if i % 200 == 7 { 30_000 } else { 1200 };
            let content: Vec<u8> = format!("Subject: m{i}\r\n\r\n")
                .into_bytes()
                .into_iter()
                .chain((0..size).map(|j| b'a' + ((i + j) % 26) as u8))
                .collect();
            let mut body = spool.new_body();
            body.write(&content).unwrap();
            let id = spool
                .enqueue(
                    body,
                    breakwater::envelope::Envelope::local("s@remote.test", "a@example.com", "t"),
                )
                .await
                .unwrap();
            if i % 4 == 0 || size > 1200 {
                live.insert(id, content);
            } else {
                removed.push(id);
            }
        }
        for id in &removed {
            spool.remove(*id, "delivered").await.unwrap();
        }
        spool.close().await;
    });
    let segments = |fixture: &Fixture| {
        std::fs::read_dir(fixture.config.spool.dir.join("segments"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|ext| ext == "seg")
            })
            .count()
    };
    let pinned = segments(&fixture);
    assert!(pinned >= 40, "{pinned} segments");

    let check = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let (spool, _) = Spool::open(&fixture.config.spool).unwrap();
            assert_eq!(spool.len(), live.len(), "seed {seed}");
            for (id, content) in &live {
                let body = spool.read_body(*id).await.unwrap_or_else(|err| {
                    panic!("{id} unreadable after a crash ({err}); seed {seed}")
                });
                assert!(body == *content, "{id} changed; seed {seed}");
            }
            for id in &removed {
                assert!(
                    spool.get(*id).await.unwrap().is_none(),
                    "{id} resurrected; seed {seed}"
                );
            }
            spool.close().await;
        })
    };
    let mut progress = vec![pinned];
    for _ in 0..8 {
        let server = BinaryServer::start(&config_path);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        server.kill9();
        check(&rt);
        progress.push(segments(&fixture));
    }
    let interrupted = progress.windows(2).filter(|w| w[1] < w[0]).count();
    eprintln!("segments after each crash: {progress:?}");
    assert!(
        interrupted >= 2,
        "compaction should span several of the killed runs: {progress:?}"
    );
    // Left alone, it finishes: the live mail takes what it needs, not the
    // pinned segments' worth.
    let server = BinaryServer::start(&config_path);
    // Bodies over the large threshold live in large/, not in segments.
    let live_bytes: usize = live
        .values()
        .map(|c| if c.len() > 20_000 { 600 } else { c.len() + 600 })
        .sum();
    let on_disk = |fixture: &Fixture| -> u64 {
        std::fs::read_dir(fixture.config.spool.dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let bound = (live_bytes as f64 * 1.3) as u64 + 2 * 32 * 1024;
    assert!(
        wait_for(Duration::from_secs(30), || on_disk(&fixture) <= bound),
        "compaction finishes: {} bytes in {} segments for {live_bytes} live",
        on_disk(&fixture),
        segments(&fixture)
    );
    server.terminate(Duration::from_secs(20));
    check(&rt);
}

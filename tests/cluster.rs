//! Cluster mode on real PostgreSQL (issue "Cluster 1/2"): a primary and a
//! synchronous standby started by the tests (tests/common/postgres.rs), the
//! real `breakwater` binary as nodes, mail over real SMTP on loopback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use breakwater::config::{ClusterConfig, OnUnavailable, Replicate, WebhookFormat};
use common::postgres::Postgres;
use common::webhook::{wait_for_event, webhook_receiver, webhook_target};
use common::{queue_id, run_cli, wait_for, without_trace_header, BinaryServer, Fixture, RawClient};

fn node_config(node: &str, database: String, on_unavailable: OnUnavailable) -> ClusterConfig {
    ClusterConfig {
        node: node.into(),
        database,
        password_file: None,
        replicate: Replicate::BeforeAck,
        commit_timeout: Duration::from_secs(1),
        on_unavailable,
        heartbeat_interval: Duration::from_millis(500),
    }
}

/// A primary with one synchronous standby, both streaming.
fn database_pair() -> (Postgres, Postgres) {
    let primary = Postgres::primary();
    let standby = Postgres::standby_of(&primary);
    primary.wait_for_sync_standbys(1);
    (primary, standby)
}

fn message(node: &str, n: usize) -> Vec<u8> {
    // Varied sizes, 8-bit text, a line that needs dot-stuffing.
    let filler = "日本語の本文 and some ASCII.\r\n".repeat(1 + n * 37 % 200);
    format!(
        "From: sender{n}@outside.test\r\nTo: user{n}@example.com\r\nSubject: cluster {node} {n}\r\n\
         Message-ID: <{node}-{n}@outside.test>\r\n\r\n{filler}\r\n..a dot-stuffed line\r\nend {n}\r\n"
    )
    .into_bytes()
}

/// What the receiving side stores for `sent` (dot-unstuffed).
fn as_stored(sent: &[u8]) -> Vec<u8> {
    String::from_utf8(sent.to_vec())
        .unwrap()
        .replace("\r\n..a dot", "\r\n.a dot")
        .into_bytes()
}

/// One message in its own session: the final reply.
fn send(addr: std::net::SocketAddr, node: &str, n: usize) -> common::Reply {
    let mut client = RawClient::greeted(addr);
    client.expect("EHLO client.test", 250);
    let reply = client.send_mail(
        &format!("sender{n}@outside.test"),
        &[&format!("user{n}@example.com")],
        &message(node, n),
    );
    let _ = client.cmd("QUIT");
    reply
}

/// One message in its own session, for senders that outlive the server:
/// the final (code, text), or `None` once the connection fails.
fn try_send(addr: std::net::SocketAddr, node: &str, n: usize) -> Option<(u16, String)> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let mut writer = stream.try_clone().ok()?;
    let mut reader = BufReader::new(stream);
    let mut reply = || -> Option<(u16, String)> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3)?.parse().ok()?;
                return Some((code, line.get(4..).unwrap_or("").trim_end().to_string()));
            }
        }
    };
    reply()?;
    let mut body = message(node, n);
    body.extend_from_slice(b".\r\n");
    for (command, want) in [
        (b"EHLO client.test\r\n".to_vec(), 250),
        (
            format!("MAIL FROM:<sender{n}@outside.test>\r\n").into_bytes(),
            250,
        ),
        (
            format!("RCPT TO:<user{n}@example.com>\r\n").into_bytes(),
            250,
        ),
        (b"DATA\r\n".to_vec(), 354),
    ] {
        writer.write_all(&command).ok()?;
        let (code, text) = reply()?;
        if code != want {
            return Some((code, text));
        }
    }
    writer.write_all(&body).ok()?;
    let last = reply()?;
    let _ = writer.write_all(b"QUIT\r\n");
    Some(last)
}

/// The node's messages in a database: queue ID → SHA-256 of the body
/// without our trace header (digests, so a failure prints short).
fn stored(db: &Postgres, node: &str) -> BTreeMap<String, String> {
    db.bodies(&format!("WHERE node = '{node}'"))
        .into_iter()
        .map(|(id, body)| (id, digest(without_trace_header(&body))))
        .collect()
}

fn digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every acknowledged message is in `db`, byte for byte. It may hold more:
/// a message committed whose 250 never reached the client (the node died
/// in between) is a duplicate when the client sends it again, not a loss.
fn assert_holds(db: &Postgres, node: &str, acked: &BTreeMap<String, String>, what: &str) {
    let stored = stored(db, node);
    let missing: Vec<&String> = acked
        .keys()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    let differ: Vec<&String> = acked
        .iter()
        .filter(|(id, sum)| stored.get(*id).is_some_and(|s| s != *sum))
        .map(|(id, _)| id)
        .collect();
    assert!(
        missing.is_empty() && differ.is_empty(),
        "{what}: {} acknowledged, {} stored; missing {missing:?}; different bytes {differ:?}",
        acked.len(),
        stored.len()
    );
}

fn unreplicated_marks(spool: &Path) -> BTreeSet<String> {
    std::fs::read_dir(spool.join("cluster/unreplicated"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn cli_ok(config: &Path, args: &[&str]) -> String {
    let out = run_cli(config, args, "");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Before-ack with `tempfail`: a 250 means the message was committed on
/// the primary and flushed on the synchronous standby. Shown the hard
/// way: the primary is killed the moment the last 250 is in and the
/// standby promoted; it holds every acknowledged message byte for byte.
/// The node then reconnects through its multi-host connection string;
/// killed with its spool deleted, its mail is all in the database, and a
/// node back on an empty spool keeps it there (orphaned), deleting nothing.
#[test]
fn acknowledged_mail_outlives_the_primary_and_its_own_node() {
    let (mut primary, standby) = database_pair();
    let mut fixture = Fixture::new();
    let database = format!(
        "postgresql://breakwater@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    fixture.config.cluster = Some(node_config("mx-a", database, OnUnavailable::Tempfail));
    let config = fixture.write_config();

    let first = cli_ok(&config, &["cluster", "init"]);
    assert!(first.contains("migrated from version 0 to 2"), "{first}");
    let again = cli_ok(&config, &["cluster", "init"]);
    assert!(again.contains("already current"), "{again}");

    let node = BinaryServer::start(&config);
    let addr = node.addr;
    // Three senders at once, so acceptances share commits.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let n = t * 10 + i;
                        let reply = send(addr, "mx-a", n);
                        assert_eq!(reply.code, 250, "message {n}: {reply:?}");
                        (
                            queue_id(&reply).to_string(),
                            digest(&as_stored(&message("mx-a", n))),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        acked.extend(thread.join().unwrap());
    }
    primary.kill9();
    standby.promote_alone();
    assert_eq!(
        stored(&standby, "mx-a"),
        acked,
        "the promoted standby differs"
    );

    // The node finds the new primary by itself (target_session_attrs),
    // and is killed under load with its disk: three senders keep going
    // (retrying each 451 while it reconnects) when the kill comes.
    let after_failover = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|t| {
            let (acked, stop) = (after_failover.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 1000 * (t + 1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match try_send(addr, "mx-a", n) {
                        Some((250, text)) => {
                            let id = text.rsplit(' ').next().unwrap().to_string();
                            acked
                                .lock()
                                .unwrap()
                                .insert(id, digest(&as_stored(&message("mx-a", n))));
                            n += 1;
                        }
                        Some((451, _)) => std::thread::sleep(Duration::from_millis(100)),
                        Some(other) => panic!("message {n}: {other:?}"),
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(30), || after_failover
            .lock()
            .unwrap()
            .len()
            >= 30),
        "fewer than 30 acknowledged by the new primary in 30 s; log: {}",
        node.log_text()
    );
    node.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    acked.extend(after_failover.lock().unwrap().clone());
    std::fs::remove_dir_all(&fixture.config.spool.dir).unwrap();
    assert_holds(
        &standby,
        "mx-a",
        &acked,
        "after the node and its disk were lost",
    );
    let acked = stored(&standby, "mx-a");

    // Back on an empty spool: nothing is taken for delivered.
    let node = BinaryServer::start(&config);
    let orphaned = || {
        standby.query("SELECT count(*) FROM breakwater_messages WHERE node = 'mx-a' AND orphaned")
            [0][0]
            .parse::<usize>()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(20), || orphaned() == acked.len()),
        "orphaned {} of {}; log: {}",
        orphaned(),
        acked.len(),
        node.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stored(&standby, "mx-a"),
        acked,
        "rows deleted after the restart"
    );
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&config, &["--json", "cluster", "status"])).unwrap();
    let me = &status["nodes"][0];
    assert_eq!(me["node"], "mx-a", "{status}");
    assert_eq!(me["in_database"], acked.len() as u64, "{status}");
    assert_eq!(me["orphaned"], acked.len() as u64, "{status}");
    assert_eq!(status["in_recovery"], false, "{status}");
    let text = cli_ok(&config, &["cluster", "status"]);
    assert!(text.contains("mx-a") && text.contains("ORPHANED"), "{text}");
    assert!(text.contains("standbys: none connected"), "{text}");
    node.terminate(Duration::from_secs(20));
}

/// A stopped synchronous standby: commits hang. `tempfail` answers 451
/// (the sender retries; the withdrawn message is neither delivered nor
/// left in the database); `accept-local` answers 250, marks the message
/// unreplicated on disk and alerts; when the standby is back, the marked
/// mail is uploaded and the alert ends. Nothing lost, nothing twice.
#[test]
fn a_missing_standby_means_451_or_250_marked_unreplicated() {
    let (primary, mut standby) = database_pair();
    let (url, hooks) = webhook_receiver();

    let mut strict = Fixture::new();
    strict.config.cluster = Some(node_config("mx-t", primary.url(), OnUnavailable::Tempfail));
    let strict_config = strict.write_config();
    cli_ok(&strict_config, &["cluster", "init"]);

    let mut lenient = Fixture::new();
    lenient.config.cluster = Some(node_config(
        "mx-l",
        primary.url(),
        OnUnavailable::AcceptLocal,
    ));
    lenient.config.alerts.enabled = true;
    lenient.config.alerts.check_interval = Duration::from_millis(300);
    lenient.config.alert_targets = vec![webhook_target(&url, WebhookFormat::Json)];
    let lenient_config = lenient.write_config();

    let t = BinaryServer::start(&strict_config);
    let l = BinaryServer::start(&lenient_config);
    let mut acked_t = BTreeMap::new();
    let mut acked_l = BTreeMap::new();
    for n in 0..3 {
        let reply = send(t.addr, "mx-t", n);
        assert_eq!(reply.code, 250, "{reply:?}");
        acked_t.insert(
            queue_id(&reply).to_string(),
            digest(&as_stored(&message("mx-t", n))),
        );
        let reply = send(l.addr, "mx-l", n);
        assert_eq!(reply.code, 250, "{reply:?}");
        acked_l.insert(
            queue_id(&reply).to_string(),
            digest(&as_stored(&message("mx-l", n))),
        );
    }
    assert!(unreplicated_marks(&lenient.config.spool.dir).is_empty());

    standby.stop();
    for n in 10..12 {
        let started = Instant::now();
        let reply = send(t.addr, "mx-t", n);
        assert_eq!(reply.code, 451, "tempfail without a standby: {reply:?}");
        assert!(reply.text.starts_with("4.3.0"), "{reply:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let mut marked = BTreeSet::new();
    for n in 10..13 {
        let reply = send(l.addr, "mx-l", n);
        assert_eq!(reply.code, 250, "accept-local without a standby: {reply:?}");
        let id = queue_id(&reply).to_string();
        // The mark is on disk by the time of the 250.
        assert!(
            unreplicated_marks(&lenient.config.spool.dir).contains(&id),
            "no unreplicated mark for {id} at its 250"
        );
        marked.insert(id.clone());
        acked_l.insert(id, digest(&as_stored(&message("mx-l", n))));
    }
    assert_eq!(unreplicated_marks(&lenient.config.spool.dir), marked);
    wait_for_event(&hooks, "cluster-unreplicated", Duration::from_secs(10));

    standby.start();
    primary.wait_for_sync_standbys(1);
    assert!(
        wait_for(Duration::from_secs(20), || unreplicated_marks(
            &lenient.config.spool.dir
        )
        .is_empty()),
        "still marked: {:?}; log: {}",
        unreplicated_marks(&lenient.config.spool.dir),
        l.log_text()
    );
    wait_for_event(
        &hooks,
        "cluster-unreplicated-recovered",
        Duration::from_secs(10),
    );
    assert_eq!(stored(&standby, "mx-l"), acked_l);
    // The withdrawn messages' cancelled commits reached the primary (and
    // then the standby); the node deletes them once it can.
    assert!(
        wait_for(Duration::from_secs(20), || stored(&primary, "mx-t")
            == acked_t),
        "mx-t rows: {:?}, acknowledged: {:?}",
        stored(&primary, "mx-t").keys().collect::<Vec<_>>(),
        acked_t.keys().collect::<Vec<_>>()
    );
    assert!(
        wait_for(Duration::from_secs(10), || stored(&standby, "mx-t")
            == acked_t),
        "the standby still has withdrawn mail"
    );
    // …and its own spool holds only what it acknowledged.
    let spooled =
        || primary.query("SELECT spooled FROM breakwater_nodes WHERE node = 'mx-t'")[0][0].clone();
    assert!(
        wait_for(Duration::from_secs(10), || spooled() == "3"),
        "mx-t spools {}",
        spooled()
    );

    // A database whose schema is newer than this build: refused.
    t.kill9();
    l.kill9();
    primary.query("INSERT INTO breakwater_schema (version) VALUES (99)");
    let out = run_cli(&strict_config, &["cluster", "init"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("version 99, newer than this Breakwater knows"),
        "{err}"
    );
    let out = run_cli(&strict_config, &["serve"], "");
    assert!(!out.status.success(), "serve started on a newer schema");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 99"), "{err}");
}

/// State changes and removals reach the database through the same
/// ordered writer: deferred attempts show there while the upstream is
/// down, and delivered mail leaves it. A restart's pass over the spool
/// repairs what the database missed: a deleted row comes back byte for
/// byte, a wrong state is corrected, and a row of this node whose message
/// the spool does not hold (finished while the write was lost) goes.
#[test]
fn delivery_outcomes_reach_the_database_and_a_restart_repairs_it() {
    use common::sink::{Script, Sink};
    let (primary, _standby) = database_pair();
    let rt = common::runtime();
    let mut upstream = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    upstream.stop();
    let mut fixture = Fixture::new();
    let mut cluster = node_config("mx-d", primary.url(), OnUnavailable::Tempfail);
    cluster.heartbeat_interval = Duration::from_millis(200);
    fixture.config.cluster = Some(cluster);
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.retry = vec![Duration::from_millis(300).into()];
    fixture.config.delivery.probe_interval = Duration::from_millis(300);
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = breakwater::config::UpstreamTls::None;
    let config = fixture.write_config();
    cli_ok(&config, &["cluster", "init"]);

    let server = BinaryServer::start(&config);
    let mut acked = BTreeMap::new();
    for n in 0..3 {
        let reply = send(server.addr, "mx-d", n);
        assert_eq!(reply.code, 250, "{reply:?}");
        acked.insert(
            queue_id(&reply).to_string(),
            digest(&as_stored(&message("mx-d", n))),
        );
    }
    let deferred = || {
        primary.query(
            "SELECT count(*) FROM breakwater_messages WHERE node = 'mx-d'
             AND state->'recipients'->0->>'status' = 'deferred'
             AND (state->'recipients'->0->>'attempts')::int >= 1",
        )[0][0]
            .clone()
    };
    assert!(
        wait_for(Duration::from_secs(15), || deferred() == "3"),
        "deferred in the database: {}",
        deferred()
    );

    // A restart repairs what the database missed.
    assert!(server.terminate(Duration::from_secs(20)).success());
    let victims: Vec<&String> = acked.keys().take(2).collect();
    primary.query(&format!(
        "DELETE FROM breakwater_messages WHERE queue_id = '{}'",
        victims[0]
    ));
    primary.query(&format!(
        "UPDATE breakwater_messages SET state = '{{\"next_attempt_ms\": 0, \"recipients\": []}}' WHERE queue_id = '{}'",
        victims[1]
    ));
    let stray = breakwater::envelope::QueueId::generate().to_string();
    primary.query(&format!(
        "INSERT INTO breakwater_messages (queue_id, node, received_at, sender, size, envelope, state, body, body_sha256)
         SELECT '{stray}', node, received_at, sender, size, envelope, state, body, body_sha256
         FROM breakwater_messages WHERE queue_id = '{}'",
        victims[1]
    ));
    let server = BinaryServer::start(&config);
    let repaired = || {
        let rows = stored(&primary, "mx-d");
        let bad_state = primary.query(
            "SELECT count(*) FROM breakwater_messages WHERE node = 'mx-d'
             AND json_array_length(state->'recipients') = 0",
        )[0][0]
            .clone();
        rows == acked && bad_state == "0"
    };
    assert!(
        wait_for(Duration::from_secs(15), repaired),
        "not repaired: {:?} vs {:?}",
        stored(&primary, "mx-d").keys().collect::<Vec<_>>(),
        acked.keys().collect::<Vec<_>>()
    );

    // The upstream is back: delivered mail leaves the database.
    rt.block_on(upstream.resume());
    let left = || {
        primary.query("SELECT count(*) FROM breakwater_messages WHERE node = 'mx-d'")[0][0].clone()
    };
    assert!(
        wait_for(Duration::from_secs(20), || left() == "0"),
        "{} rows left after delivery",
        left()
    );
    assert_eq!(upstream.delivered().len(), 3);
    assert!(server.terminate(Duration::from_secs(20)).success());
}

/// `replicate = "after-ack"`: the 250 does not wait for the database, even
/// with the standby gone; the failed upload leaves a mark, and the message
/// reaches the database once the standby is back. A password file that is
/// empty is named in the error.
#[test]
fn after_ack_answers_at_once_and_uploads_later() {
    let (primary, mut standby) = database_pair();
    let mut fixture = Fixture::new();
    let mut cluster = node_config("mx-x", primary.url(), OnUnavailable::AcceptLocal);
    cluster.replicate = Replicate::AfterAck;
    fixture.config.cluster = Some(cluster.clone());
    let config = fixture.write_config();
    cli_ok(&config, &["cluster", "init"]);
    let node = BinaryServer::start(&config);

    standby.stop();
    let mut acked = BTreeMap::new();
    for n in 0..3 {
        let started = Instant::now();
        let reply = send(node.addr, "mx-x", n);
        assert_eq!(reply.code, 250, "{reply:?}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "after-ack waited {:?} (commit_timeout is 1 s)",
            started.elapsed()
        );
        acked.insert(
            queue_id(&reply).to_string(),
            digest(&as_stored(&message("mx-x", n))),
        );
    }
    let spool = &fixture.config.spool.dir;
    assert!(
        wait_for(Duration::from_secs(10), || unreplicated_marks(spool).len()
            == 3),
        "marks: {:?}",
        unreplicated_marks(spool)
    );
    standby.start();
    primary.wait_for_sync_standbys(1);
    assert!(
        wait_for(Duration::from_secs(20), || unreplicated_marks(spool)
            .is_empty()
            && stored(&standby, "mx-x") == acked),
        "marks {:?}; log: {}",
        unreplicated_marks(spool),
        node.log_text()
    );
    node.terminate(Duration::from_secs(20));

    let password = fixture.path().join("db.password");
    std::fs::write(&password, "\n").unwrap();
    cluster.password_file = Some(password);
    fixture.config.cluster = Some(cluster);
    let config = fixture.write_config();
    let out = run_cli(&config, &["cluster", "init"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.password_file") && err.contains("is empty"),
        "{err}"
    );
}

/// A hostile client's EHLO name with a NUL byte goes into the envelope the
/// database stores. It must not make the commit fail (PostgreSQL's jsonb
/// cannot hold U+0000): that would take the node's replication down for
/// everyone, each retry failing on the same row.
#[test]
fn a_nul_in_the_ehlo_name_does_not_stop_replication() {
    let (primary, _standby) = database_pair();
    let mut fixture = Fixture::new();
    fixture.config.cluster = Some(node_config("mx-n", primary.url(), OnUnavailable::Tempfail));
    let config = fixture.write_config();
    cli_ok(&config, &["cluster", "init"]);
    let node = BinaryServer::start(&config);
    let mut client = RawClient::greeted(node.addr);
    client.send(b"EHLO bad\0name.test\r\n");
    let ehlo = client.reply();
    if ehlo.code == 250 {
        let reply = client.send_mail(
            "a@outside.test",
            &["b@example.com"],
            b"Subject: nul\r\n\r\nx\r\n",
        );
        assert_eq!(reply.code, 250, "{reply:?}; log: {}", node.log_text());
    }
    let reply = send(node.addr, "mx-n", 1);
    assert_eq!(
        reply.code,
        250,
        "after the NUL: {reply:?}; log: {}",
        node.log_text()
    );
    node.terminate(Duration::from_secs(20));
}

/// The readers' view spans the cluster: node B's web reader (real HTTP)
/// lists, shows, searches and serves the source of the mail node A
/// accepted, Japanese text decoded, and its admin API lists, shows and
/// downloads it byte for byte. With the database gone, B shows its own mail
/// and says the rest cannot be shown, instead of failing the page.
#[test]
fn a_node_reads_the_mail_another_node_accepted() {
    use breakwater::api_tokens::{self as tokens, Role};
    use common::web::{add_user, iso2022jp_message, plain_message, WebClient};

    let (mut primary, standby) = database_pair();
    let database = format!(
        "postgresql://breakwater@127.0.0.1:{}/postgres",
        primary.port
    );
    let node = |name: &str| {
        let mut fixture = Fixture::new();
        fixture.config.cluster = Some(node_config(name, database.clone(), OnUnavailable::Tempfail));
        // Accounts are still per node: alice has one on each.
        add_user(
            &fixture.config.web.users_file,
            "alice@example.com",
            &[],
            false,
            false,
        );
        fixture
    };
    let (a, b) = (node("mx-a"), node("mx-b"));
    cli_ok(&a.write_config(), &["cluster", "init"]);
    let token = tokens::create(&b.config.admin.tokens_file, "ops", Role::Admin, None).unwrap();
    let rt = common::runtime();
    let node_a = rt.block_on(a.start());
    let node_b = rt.block_on(b.start());

    let deliver = |addr: std::net::SocketAddr, body: &[u8]| {
        let mut client = RawClient::greeted(addr);
        client.expect("EHLO client.test", 250);
        let reply = client.send_mail("yamada@example.jp", &["alice@example.com"], body);
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    };
    let japanese = deliver(
        node_a.smtp_addrs[0],
        &iso2022jp_message("alice@example.com"),
    );
    let plain = deliver(
        node_a.smtp_addrs[0],
        &plain_message("alice@example.com", "Quarterly invoice", "numbers inside"),
    );
    let local = deliver(
        node_b.smtp_addrs[0],
        &plain_message("alice@example.com", "Held on B", "B's own"),
    );

    let mut alice = WebClient::new(node_b.web_addr.unwrap());
    alice.login_fully("alice@example.com", None);
    let mailbox = alice.get("/mail").text();
    for subject in ["障害のお知らせ", "Quarterly invoice", "Held on B"] {
        assert!(
            mailbox.contains(subject),
            "{subject} missing on B: {mailbox}"
        );
    }
    assert!(!mailbox.contains("class=\"note partial\""), "{mailbox}");
    let view = alice.get(&format!("/mail/{japanese}"));
    assert_eq!(view.status, 200);
    assert!(
        view.text().contains("本日の会議は中止です。"),
        "{}",
        view.text()
    );
    let found = alice.get("/mail?q=invoice").text();
    assert!(
        found.contains("Quarterly invoice") && !found.contains("Held on B"),
        "{found}"
    );
    let found = alice.get("/mail?q=%E9%9A%9C%E5%AE%B3").text(); // 障害
    assert!(found.contains("障害のお知らせ"), "{found}");

    // What A holds, byte for byte, through B's admin API and web source.
    let on_a = rt
        .block_on(node_a.spool.read_body(plain))
        .expect("A holds its message");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let admin = |path: &str| {
        let mut response = agent
            .get(format!("http://{}{path}", node_b.admin_addr.unwrap()))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_vec().unwrap(),
        )
    };
    let (status, raw) = admin(&format!("/api/v1/queue/{plain}/raw"));
    assert_eq!(status, 200);
    assert_eq!(raw, on_a, "B's admin API serves A's bytes");
    let source = alice.get(&format!("/mail/{plain}/source"));
    assert_eq!(source.status, 200);
    assert!(
        source.text().contains("numbers inside"),
        "{}",
        source.text()
    );
    let (status, shown) = admin(&format!("/api/v1/queue/{japanese}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&shown));
    let listed = |query: &str| -> Vec<String> {
        let (status, page) = admin(&format!("/api/v1/queue?{query}"));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&page));
        let page: serde_json::Value = serde_json::from_slice(&page).unwrap();
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut all = vec![japanese.to_string(), plain.to_string(), local.to_string()];
    all.sort();
    assert_eq!(listed("limit=100"), all);
    // Pages of one across both sources: each message once, in order.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let (_, page) = admin(&format!("/api/v1/queue?limit=1{after}"));
        let page: serde_json::Value = serde_json::from_slice(&page).unwrap();
        paged.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
        assert!(paged.len() <= all.len(), "{paged:?}");
    }
    assert_eq!(paged, all);
    assert_eq!(listed("subject=invoice"), vec![plain.to_string()]);
    assert_eq!(
        listed("recipient=ALICE@example.com&limit=2").len(),
        2,
        "a recipient filter pages across nodes too"
    );
    // A's own view is this node's spool plus B's: the same three.
    assert_eq!(
        rt.block_on(
            node_a
                .spool
                .everywhere()
                .ids_for_recipient("alice@example.com")
        )
        .unwrap()
        .len(),
        3
    );

    // The database gone: B's page still comes, with its own mail and a note.
    primary.stop();
    drop(standby);
    let started = Instant::now();
    let mailbox = alice.get("/mail");
    assert_eq!(mailbox.status, 200);
    let text = mailbox.text();
    assert!(
        text.contains("Held on B") && !text.contains("Quarterly invoice"),
        "{text}"
    );
    assert!(text.contains("class=\"note partial\""), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    rt.block_on(async {
        node_a.shutdown().await;
        node_b.shutdown().await;
    });
}

/// A row the database refuses (here a CHECK constraint an operator added;
/// in life a value a column cannot hold) fails its own message only: the
/// others of its batch commit, the node stays up and the senders around
/// it all get 250. With `tempfail` the refused message gets 451; with
/// `accept-local` 250, marked unreplicated, and uploaded once the database
/// takes it (here after the constraint is dropped and the node restarted).
#[test]
fn a_row_the_database_refuses_fails_only_its_own_message() {
    let (primary, _standby) = database_pair();
    let database = format!(
        "postgresql://breakwater@127.0.0.1:{}/postgres",
        primary.port
    );
    let mut fixture = Fixture::new();
    fixture.config.cluster = Some(node_config(
        "mx-a",
        database.clone(),
        OnUnavailable::Tempfail,
    ));
    let config = fixture.write_config();
    cli_ok(&config, &["cluster", "init"]);
    primary.query(
        "ALTER TABLE breakwater_messages ADD CONSTRAINT no_poison CHECK (sender <> 'poison@outside.test')",
    );
    let node = BinaryServer::start(&config);
    let addr = node.addr;
    let poison = |addr: std::net::SocketAddr| {
        let mut client = RawClient::greeted(addr);
        client.expect("EHLO client.test", 250);
        let reply = client.send_mail(
            "poison@outside.test",
            &["user1@example.com"],
            b"Subject: refused\r\n\r\nthe database will not take this\r\n",
        );
        let _ = client.cmd("QUIT");
        reply
    };
    // Four senders around the refused message, all through the same
    // batches (some share its batch, the rest follow it at once).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut replies = Vec::new();
                let mut n = 100 * (t + 1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && replies.len() < 200 {
                    replies.push((n, send(addr, "mx-a", n)));
                    n += 1;
                }
                replies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = poison(addr);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for sender in senders {
        for (n, reply) in sender.join().unwrap() {
            assert_eq!(
                reply.code, 250,
                "message {n} next to the refused one: {reply:?}"
            );
            acked.insert(
                queue_id(&reply).to_string(),
                digest(&as_stored(&message("mx-a", n))),
            );
        }
    }
    assert!(acked.len() >= 8, "only {} sent", acked.len());
    assert_eq!(refused.code, 451, "{refused:?}");
    assert!(
        refused.text.contains("not committed") || refused.text.contains("try again"),
        "{refused:?}"
    );
    assert_eq!(
        stored(&primary, "mx-a"),
        acked,
        "the database holds exactly the others"
    );
    let log = node.log_text();
    assert!(
        log.contains("refuses this message's row") && log.contains("no_poison"),
        "{log}"
    );
    assert!(
        !log.contains("database unavailable"),
        "the node went down: {log}"
    );
    node.terminate(Duration::from_secs(20));

    // accept-local: 250, marked, and uploaded once the database takes it.
    fixture.config.cluster = Some(node_config("mx-a", database, OnUnavailable::AcceptLocal));
    let config = fixture.write_config();
    let node = BinaryServer::start(&config);
    let accepted = poison(node.addr);
    assert_eq!(accepted.code, 250, "{accepted:?}");
    let id = queue_id(&accepted).to_string();
    assert_eq!(
        unreplicated_marks(&fixture.config.spool.dir),
        BTreeSet::from([id.clone()])
    );
    // The node row's count is refreshed by the heartbeat, so it may lag the mark.
    let mut status = serde_json::Value::Null;
    let counted = wait_for(Duration::from_secs(10), || {
        status = serde_json::from_str(&cli_ok(&config, &["--json", "cluster", "status"])).unwrap();
        status["nodes"][0]["unreplicated"] == 1
    });
    assert!(
        counted,
        "the node's row does not count the refused message: {status}"
    );
    assert_eq!(
        send(node.addr, "mx-a", 999).code,
        250,
        "the node is still up"
    );
    node.terminate(Duration::from_secs(20));
    primary.query("ALTER TABLE breakwater_messages DROP CONSTRAINT no_poison");
    let node = BinaryServer::start(&config);
    assert!(
        wait_for(Duration::from_secs(20), || unreplicated_marks(
            &fixture.config.spool.dir
        )
        .is_empty()),
        "still marked; log: {}",
        node.log_text()
    );
    let rows = primary.query(&format!(
        "SELECT sender FROM breakwater_messages WHERE queue_id = '{id}'"
    ));
    assert_eq!(rows, vec![vec!["poison@outside.test".to_string()]]);
    node.terminate(Duration::from_secs(20));
}

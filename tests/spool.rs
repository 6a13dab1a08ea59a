//! The spool through its public API, on a real directory: state replay,
//! reclamation, torn tails, on-disk corruption, large bodies.

use std::path::Path;

use breakwater::config::SpoolConfig;
use breakwater::envelope::{
    now_ms, ClientInfo, Envelope, MessageState, QueueId, Recipient, RecipientStatus,
};
use breakwater::spool::{SegmentStore, Spool, SpoolError};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.join("spool"),
        segment_size: 4096,
        large_message_threshold: 64 * 1024,
        ..SpoolConfig::default()
    }
}

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "s@remote.test".into(),
        recipients: rcpts
            .iter()
            .map(|r| Recipient {
                address: r.to_string(),
                orcpt: None,
                notify: 0,
            })
            .collect(),
        dsn_ret: None,
        dsn_envid: None,
        smtputf8: false,
        body_8bitmime: false,
        requiretls: false,
        client: ClientInfo {
            ip: "127.0.0.1".parse().unwrap(),
            helo: "t".into(),
            tls: None,
        },
        received_at_ms: now_ms(),
        size: 0,
        lure: None,
        auth: None,
        sent_by: None,
    }
}

async fn put(spool: &Spool, content: &[u8], rcpts: &[&str]) -> QueueId {
    let mut body = spool.new_body();
    body.write(content).unwrap();
    spool.enqueue(body, envelope(rcpts)).await.unwrap()
}

/// `count` small messages for a@example.com, Subject 0, 1, …, in order.
async fn put_numbered(spool: &Spool, count: usize) -> Vec<QueueId> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let content = format!("Subject: {i}\r\n\r\nx\r\n");
        ids.push(put(spool, content.as_bytes(), &["a@example.com"]).await);
    }
    ids
}

/// What a crash leaves: no clean-shutdown checkpoint, so the next open
/// replays the segments and verifies the index against them.
fn as_after_a_crash(dir: &Path) {
    let checkpoint = dir.join("spool/clean-shutdown");
    assert!(checkpoint.exists(), "a clean close writes the checkpoint");
    std::fs::remove_file(checkpoint).unwrap();
}

/// What a crash can cost the index on top: the changes of the last moment
/// before it, here the entries of `lost`. The index watermark is then at
/// most the segment of the earliest lost one (it moves only past changes
/// that are durable in sled), so it is set back as the crash would have.
fn as_after_a_crash_losing(dir: &Path, lost: &[QueueId]) {
    as_after_a_crash(dir);
    let db = sled::open(dir.join("spool/index")).unwrap();
    let messages = db.open_tree("messages").unwrap();
    let mut earliest = u64::MAX;
    for id in lost {
        let raw = messages.remove(id.to_bytes()).unwrap().expect("entry");
        let entry: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        earliest = earliest.min(entry["location"]["segment"].as_u64().unwrap());
    }
    let watermark = db
        .get("durable-below")
        .unwrap()
        .map(|raw| u64::from_le_bytes(raw.as_ref().try_into().unwrap()))
        .expect("an index watermark");
    db.insert("durable-below", &watermark.min(earliest).to_le_bytes())
        .unwrap();
    db.flush().unwrap();
}

/// The segment files (not their digests), oldest first.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("spool/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn state_updates_and_removals_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    let a = put(
        &spool,
        b"Subject: a\r\n\r\na\r\n",
        &["x@example.com", "y@example.com"],
    )
    .await;
    let b = put(&spool, b"Subject: b\r\n\r\nb\r\n", &["x@example.com"]).await;
    assert_eq!(spool.due(now_ms(), 10).await.unwrap().len(), 2);

    let mut state = spool.get(a).await.unwrap().unwrap().state;
    state.recipients[0].status = RecipientStatus::Delivered;
    state.recipients[1].status = RecipientStatus::Deferred;
    state.recipients[1].attempts = 1;
    state.recipients[1].last_reply = Some("451 4.3.0 try later".into());
    state.next_attempt_ms = now_ms() + 3_600_000;
    spool.set_state(a, state.clone()).await.unwrap();
    assert_eq!(
        spool.due(now_ms(), 10).await.unwrap(),
        vec![b],
        "a is not due for an hour"
    );
    assert!(spool.next_due_ms().await.unwrap().is_some());
    assert!(spool.remove(b, "delivered").await.unwrap());
    assert!(!spool.remove(b, "again").await.unwrap());
    assert!(matches!(
        spool.read_body(b).await,
        Err(SpoolError::NotFound(_))
    ));
    spool.close().await;
    drop(spool);

    let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
    assert!(report.index_rebuilt.is_none(), "{report:?}");
    assert!(report.from_checkpoint, "{report:?}");
    assert_eq!(spool.len(), 1);
    assert_eq!(spool.get(a).await.unwrap().unwrap().state, state);
    spool.close().await;
    drop(spool);

    // Replaying the files alone (no index) gives the same state; the
    // checkpoint left by the clean close is not used with a fresh index.
    std::fs::remove_dir_all(tmp.path().join("spool/index")).unwrap();
    let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
    assert!(!report.from_checkpoint, "{report:?}");
    assert!(report.index_rebuilt.is_some());
    assert_eq!(spool.get(a).await.unwrap().unwrap().state, state);
    assert!(
        spool.get(b).await.unwrap().is_none(),
        "a removed message must stay removed"
    );
    assert_eq!(spool.for_recipient("X@example.com").await.unwrap().len(), 1);
    assert_eq!(spool.due(u64::MAX, 10).await.unwrap(), vec![a]);
    spool.close().await;
    drop(spool);
}

#[tokio::test]
async fn finished_segments_are_reclaimed_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    let filler = vec![b'x'; 1500];
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(put(&spool, &filler, &["x@example.com"]).await);
    }
    let before = segment_files(tmp.path());
    assert!(
        before.len() >= 4,
        "segments roll at segment_size: {before:?}"
    );
    // The oldest message pins every later segment (in-order reclamation).
    for id in &ids[1..] {
        spool.remove(*id, "delivered").await.unwrap();
    }
    assert!(
        before.iter().all(|f| f.exists()),
        "nothing reclaimed while the oldest message lives"
    );
    spool.remove(ids[0], "delivered").await.unwrap();
    let after = segment_files(tmp.path());
    assert!(after.len() <= 2, "finished segments deleted: {after:?}");
    assert!(!before[0].exists());
    spool.close().await;
    drop(spool);
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    assert!(spool.is_empty());
    spool.close().await;
    drop(spool);
}

#[tokio::test]
async fn torn_tail_is_cut_and_acknowledged_messages_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 1 << 20;
    let (spool, _) = Spool::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            put(
                &spool,
                format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
                &["x@example.com"],
            )
            .await,
        );
    }
    spool.close().await;
    drop(spool);
    let newest = segment_files(tmp.path()).pop().unwrap();
    let good_len = std::fs::metadata(&newest).unwrap().len();
    // A crash mid-append: half of a record copied from the start of the file.
    let head = std::fs::read(&newest).unwrap();
    let mut torn = head.clone();
    torn.extend_from_slice(&head[..60]);
    std::fs::write(&newest, &torn).unwrap();
    let (spool, _) = Spool::open(&cfg).unwrap();
    assert_eq!(spool.len(), 10);
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        good_len,
        "torn tail cut"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            spool.read_body(*id).await.unwrap(),
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes()
        );
    }
    spool.close().await;
    drop(spool);

    // Damage in the middle of the newest segment is not a torn tail: the
    // records after it are kept, nothing is cut.
    // (The reopen above started a fresh, empty segment; take it away so the
    // damaged one is the newest again, as after a crash.)
    for file in segment_files(tmp.path()) {
        if file != newest && std::fs::metadata(&file).unwrap().len() == 0 {
            std::fs::remove_file(file).unwrap();
        }
    }
    let mut data = std::fs::read(&newest).unwrap();
    let third = data.windows(7).position(|w| w == b"body 2\r").unwrap();
    data[third] ^= 0xff;
    std::fs::write(&newest, &data).unwrap();
    std::fs::remove_dir_all(tmp.path().join("spool/index")).unwrap();
    let (spool, _) = Spool::open(&cfg).unwrap();
    assert_eq!(spool.len(), 9);
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), good_len);
    assert!(spool.get(ids[9]).await.unwrap().is_some());
    // And a second process cannot open a spool in use.
    assert!(matches!(Spool::open(&cfg), Err(SpoolError::Locked(_))));
    spool.close().await;
    drop(spool);
}

#[tokio::test]
async fn corruption_in_a_sealed_segment_is_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 2048;
    let (spool, _) = Spool::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            put(
                &spool,
                format!("Subject: {i}\r\n\r\n{}\r\n", "z".repeat(1000)).as_bytes(),
                &["x@example.com"],
            )
            .await,
        );
    }
    spool.close().await;
    drop(spool);
    let first = segment_files(tmp.path()).remove(0);
    let mut data = std::fs::read(&first).unwrap();
    // Flip a byte in the last body of the first (sealed) segment.
    let at = data.len() - 10;
    data[at] ^= 0xff;
    std::fs::write(&first, &data).unwrap();
    let (spool, _) = Spool::open(&cfg).unwrap();
    let mut damaged = Vec::new();
    for id in &ids {
        if matches!(spool.read_body(*id).await, Err(SpoolError::Corrupt(..))) {
            damaged.push(id);
        }
    }
    assert_eq!(
        damaged.len(),
        1,
        "exactly the damaged body fails its checksum"
    );
    spool.close().await;
    drop(spool);

    // Destroy the header of the first record: the scan resynchronises on the
    // next intact record instead of giving up on the segment.
    let mut data = std::fs::read(&first).unwrap();
    data[0..4].copy_from_slice(b"XXXX");
    std::fs::write(&first, &data).unwrap();
    std::fs::remove_dir_all(tmp.path().join("spool/index")).unwrap();
    let (spool, _) = Spool::open(&cfg).unwrap();
    assert_eq!(
        spool.len(),
        5,
        "only the record with the broken header is lost"
    );
    spool.close().await;
    drop(spool);
}

#[tokio::test]
async fn large_bodies_live_in_their_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (spool, _) = Spool::open(&cfg).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut body = spool.new_body();
    for chunk in big.chunks(10_000) {
        body.write(chunk).unwrap();
    }
    assert!(
        std::fs::read_dir(tmp.path().join("spool/tmp"))
            .unwrap()
            .count()
            == 1,
        "spilled while receiving"
    );
    let id = spool
        .enqueue(body, envelope(&["x@example.com"]))
        .await
        .unwrap();
    let large = tmp.path().join(format!("spool/large/{id}.eml"));
    assert!(large.exists());
    assert_eq!(spool.read_body(id).await.unwrap(), big);
    assert_eq!(
        spool.get(id).await.unwrap().unwrap().envelope.size,
        big.len() as u64
    );
    // List views read only the head, from the large file and from a segment.
    assert_eq!(spool.read_head(id, 1000).await.unwrap(), &big[..1000]);
    let small = put(
        &spool,
        b"Subject: small\r\n\r\nbody\r\n",
        &["x@example.com"],
    )
    .await;
    assert_eq!(spool.read_head(small, 9).await.unwrap(), b"Subject: ");
    assert_eq!(spool.read_head(small, 1 << 20).await.unwrap().len(), 24);
    // An abandoned body leaves nothing behind.
    let mut abandoned = spool.new_body();
    abandoned.write(&big).unwrap();
    drop(abandoned);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("spool/tmp"))
            .unwrap()
            .count(),
        0
    );
    spool.close().await;
    drop(spool);

    // An orphan large file (crash between rename and record) is cleaned up.
    as_after_a_crash(tmp.path());
    std::fs::write(
        tmp.path()
            .join(format!("spool/large/{}.eml", QueueId::generate())),
        b"orphan",
    )
    .unwrap();
    let (spool, _) = Spool::open(&cfg).unwrap();
    assert_eq!(
        std::fs::read_dir(tmp.path().join("spool/large"))
            .unwrap()
            .count(),
        1
    );
    // Space accounting (counted from the files at open) follows the large
    // file out.
    let used = spool.used_bytes();
    assert!(used >= big.len() as u64, "{used}");
    assert!(spool.remove(id, "delivered").await.unwrap());
    assert!(!large.exists());
    // (The remove record itself adds a few hundred bytes.)
    let after = spool.used_bytes();
    assert!(after + big.len() as u64 <= used + 1024, "{used} -> {after}");
    spool.close().await;
    drop(spool);
}

#[tokio::test]
async fn concurrent_enqueues_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 64 << 20;
    let (spool, _) = Spool::open(&cfg).unwrap();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                put(
                    &spool,
                    format!("Subject: {t}-{i}\r\n\r\n{}\r\n", "q".repeat(2000)).as_bytes(),
                    &["x@example.com"],
                )
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(spool.len(), 1000);
    let fsyncs = spool
        .stats()
        .fsyncs
        .load(std::sync::atomic::Ordering::Relaxed);
    let records = spool
        .stats()
        .fsync_records
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        records, 1000,
        "every record made durable by a counted fsync"
    );
    // 50 writers at once: a batch holds several records on average. One
    // fsync per message (no batching) would be 1000.
    assert!(
        fsyncs <= 500,
        "group commit batches appends: {fsyncs} fsyncs for 1000 messages"
    );
    let _ = MessageState::new_for(&envelope(&["x@example.com"]));
    spool.close().await;
    drop(spool);
}

/// A message must count as live in its segment from the moment its record
/// is durable, not from when `enqueue` gets to run again. Here the session's
/// `enqueue` is polled once (its record goes to the writer and is fsync'd)
/// and then left waiting, as a busy worker thread leaves a woken task, while
/// another message arrives (in a new segment) and is delivered and removed.
/// That removal runs reclamation; the first segment must survive it. The
/// 30-minute chaos soak lost three acknowledged messages this way when the
/// count was raised only after the index insert.
#[tokio::test]
async fn a_segment_is_not_reclaimed_while_its_enqueue_is_still_returning() {
    use std::future::Future;
    use std::task::Poll;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    // Every batch starts a new segment.
    cfg.segment_size = 64;
    let (spool, _) = Spool::open(&cfg).unwrap();

    let mut body = spool.new_body();
    body.write(b"Subject: slow session\r\n\r\nkept\r\n")
        .unwrap();
    let session = spool.clone();
    let mut slow =
        Box::pin(async move { session.enqueue(body, envelope(&["x@example.com"])).await });
    std::future::poll_fn(|cx| {
        assert!(slow.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    // Give the writer time to make it durable and signal the (unpolled) task.
    let first_segment = tmp.path().join("spool/segments/0000000000000001.seg");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&first_segment).map_or(0, |m| m.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "writer never wrote");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let other = put(
        &spool,
        b"Subject: fast\r\n\r\ndelivered\r\n",
        &["y@example.com"],
    )
    .await;
    assert!(spool.remove(other, "delivered").await.unwrap());

    let id = slow.await.unwrap();
    assert!(
        first_segment.exists(),
        "segment of a live message was reclaimed"
    );
    assert_eq!(
        spool.read_body(id).await.unwrap(),
        b"Subject: slow session\r\n\r\nkept\r\n"
    );
    spool.close().await;
    drop(spool);
    let (spool, _) = Spool::open(&cfg).unwrap();
    assert!(
        spool.get(id).await.unwrap().is_some(),
        "message gone after reopen"
    );
}

/// A clean close and reopen verifies the index without rebuilding or
/// repairing anything, even with parked, held and retained messages (the
/// old check compared the volatile parking time and counted retained
/// messages differently, so nearly every restart rebuilt the whole index).
/// After a crash that cost the index some entries, only those are written.
#[tokio::test]
async fn clean_restart_needs_no_rebuild_and_a_crash_repairs_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    let ids = put_numbered(&spool, 60).await;
    for (i, id) in ids.iter().enumerate() {
        match i % 4 {
            0 => {
                spool.park(*id, u64::MAX / 2).await.unwrap();
            }
            1 => {
                spool.update_state(*id, |s| s.held = true).await.unwrap();
            }
            2 => {
                spool
                    .update_state(*id, |s| {
                        s.recipients[0].status = RecipientStatus::Delivered;
                        s.retain_until_ms = Some(now_ms() + 3_600_000);
                        s.next_attempt_ms = now_ms() + 3_600_000;
                    })
                    .await
                    .unwrap();
                spool.park(*id, now_ms() + 60_000).await.unwrap();
            }
            _ => {}
        }
    }
    let scheduled = spool.scheduled();
    spool.close().await;
    drop(spool);

    // Once from the clean-shutdown checkpoint, once by replaying the
    // segments as after a crash: the same spool, and the index needs nothing.
    for from_checkpoint in [true, false] {
        if !from_checkpoint {
            as_after_a_crash(tmp.path());
        }
        let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
        assert_eq!(report.from_checkpoint, from_checkpoint, "{report:?}");
        assert!(report.index_rebuilt.is_none(), "{report:?}");
        assert_eq!(report.index_repairs, 0);
        assert_eq!(spool.len(), 60);
        assert_eq!(
            spool.scheduled(),
            scheduled,
            "held ones stay out of the schedule"
        );
        // Parking is forgotten at a restart: the parked ones are due again.
        let due = spool.due(now_ms(), 100).await.unwrap();
        assert!(due.contains(&ids[0]) && due.contains(&ids[3]), "{due:?}");
        assert!(!due.contains(&ids[1]), "held");
        assert!(!due.contains(&ids[2]), "retained until later");
        spool.close().await;
        drop(spool);
    }

    // Lose two messages from the index (as a crash between an append and the
    // index's next flush can): only those two are written back.
    as_after_a_crash_losing(tmp.path(), &[ids[5], ids[6]]);
    let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
    assert_eq!(report.index_repairs, 2, "{report:?}");
    assert!(spool.get(ids[5]).await.unwrap().is_some());
    assert_eq!(
        spool.for_recipient("a@example.com").await.unwrap().len(),
        60
    );
    spool.close().await;
}

/// An acknowledged message whose index insert failed is still scheduled,
/// readable and listed, and is written to the index once sled works again.
#[tokio::test]
async fn a_message_whose_index_insert_failed_is_still_delivered_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = SegmentStore::open(&config(tmp.path())).unwrap();
    let store = std::sync::Arc::new(store);
    let spool = Spool::new(store.clone());
    store.fail_index_inserts(1);
    let id = put(&spool, b"Subject: lost?\r\n\r\nx\r\n", &["a@example.com"]).await;
    assert_eq!(
        spool.due(now_ms(), 10).await.unwrap(),
        [id],
        "scheduled for delivery"
    );
    assert!(spool.get(id).await.unwrap().is_some());
    assert!(spool.read_body(id).await.is_ok());
    assert_eq!(
        spool.ids_for_recipient("a@example.com").await.unwrap(),
        [id]
    );
    assert_eq!(spool.list().await.unwrap().len(), 1);
    spool.close().await;
    drop((spool, store));
    let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
    assert!(
        report.index_rebuilt.is_none(),
        "written after all: {report:?}"
    );
    assert!(spool.get(id).await.unwrap().is_some());
    spool.close().await;
}

/// A record-shaped run of bytes inside a message body (what any sender can
/// send: CRCs are public) is never applied by recovery, whether the record
/// carrying it is torn (its header intact: recovery never looks inside its
/// claimed length) or its header is damaged (recovery resynchronises only on
/// headers with this spool's MAC). The damaged bytes are kept in quarantine.
#[tokio::test]
async fn records_hidden_in_a_message_body_are_never_replayed() {
    let forged_id = QueueId::generate();
    let forged_record = |magic: &[u8; 4], extra: &[u8]| {
        let mut forged_env = envelope(&["victim@evil.example"]);
        forged_env.sender = "attacker@evil.example".into();
        let state = MessageState::new_for(&forged_env);
        let meta = serde_json::to_vec(&serde_json::json!({
            "id": forged_id,
            "envelope": forged_env,
            "state": state,
        }))
        .unwrap();
        let body = b"Subject: forged\r\n\r\nforged\r\n";
        let mut header = Vec::new();
        header.extend_from_slice(magic);
        header.extend_from_slice(&[1, 0, 0, 0]);
        header.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(&meta).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(extra); // a guessed MAC for version 2
        [header, meta, body.to_vec()].concat()
    };
    let mut carrier = b"Subject: innocent\r\n\r\n".to_vec();
    carrier.extend_from_slice(&forged_record(b"BWR1", b""));
    carrier.extend_from_slice(&forged_record(b"BWR2", &[0x55; 16]));
    carrier.extend_from_slice(&vec![b'x'; 2000]);
    carrier.extend_from_slice(b"\r\n");

    for damage in ["torn", "header"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.segment_size = 1 << 20;
        let (spool, _) = Spool::open(&cfg).unwrap();
        let before = put(&spool, b"Subject: a\r\n\r\na\r\n", &["a@example.com"]).await;
        let carrier_id = put(&spool, &carrier, &["b@example.com"]).await;
        let after = put(&spool, b"Subject: c\r\n\r\nc\r\n", &["c@example.com"]).await;
        spool.close().await;
        drop(spool);
        let segment = segment_files(tmp.path()).pop().unwrap();
        let mut data = std::fs::read(&segment).unwrap();
        let victim = memchr::memmem::find(&data, b"victim@evil.example").expect("forged record");
        let inner = memchr::memmem::rfind(&data[..victim], b"BWR1").unwrap();
        // The carrier's own header is the last record magic before its body.
        let carrier_at = memchr::memmem::rfind(&data[..inner], b"BWR").unwrap();
        match damage {
            "torn" => {
                // Cut inside the carrier, after both forged records.
                data.truncate(inner + 1200);
            }
            _ => data[carrier_at + 9] ^= 0xff, // meta_len, under the header CRC
        }
        std::fs::write(&segment, &data).unwrap();
        // Damage is found by a replay: at the start after a crash (a clean
        // start trusts its checkpoint and finds damage when reading).
        as_after_a_crash(tmp.path());
        let (spool, _) = Spool::open(&cfg).unwrap();
        assert!(
            spool.get(forged_id).await.unwrap().is_none(),
            "{damage}: forged record applied"
        );
        assert!(spool
            .for_recipient("victim@evil.example")
            .await
            .unwrap()
            .is_empty());
        assert!(spool.get(before).await.unwrap().is_some(), "{damage}");
        assert!(
            spool.get(carrier_id).await.unwrap().is_none(),
            "{damage}: damaged record dropped"
        );
        if damage == "header" {
            assert!(
                spool.get(after).await.unwrap().is_some(),
                "the intact record after the damage is kept"
            );
        }
        let quarantined = std::fs::read_dir(tmp.path().join("spool/quarantine"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(quarantined >= 1, "{damage}: damaged bytes not kept");
        spool.close().await;
    }
}

// The store contract (src/spool/store.rs, "The Spool API" in
// docs/ARCHITECTURE.md), checked through `Spool::new(store)`: a cluster
// store gets its own opener and must pass the same checks.

/// Opens the store under test in `dir` (today: the segment store).
fn open_store(dir: &Path) -> Spool {
    let (store, _) = SegmentStore::open(&config(dir)).unwrap();
    Spool::new(std::sync::Arc::new(store))
}

/// Close the spool and open the store again from what is durable.
async fn reopen(spool: Spool, dir: &Path) -> Spool {
    spool.close().await;
    drop(spool);
    open_store(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_changes_of_one_message_are_atomic_and_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_store(tmp.path());
    let id = put(&spool, b"Subject: c\r\n\r\nx\r\n", &["a@example.com"]).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            spool
                .update_state(id, |state| state.recipients[0].attempts += 1)
                .await
                .unwrap()
                .expect("spooled")
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let attempts =
        |m: Option<breakwater::spool::SpooledMessage>| m.unwrap().state.recipients[0].attempts;
    assert_eq!(attempts(spool.get(id).await.unwrap()), 50, "no change lost");
    let spool = reopen(spool, tmp.path()).await;
    assert_eq!(
        attempts(spool.get(id).await.unwrap()),
        50,
        "every change durable"
    );
    spool.close().await;
}

#[tokio::test]
async fn contract_an_unchanged_state_writes_nothing_and_a_missing_message_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_store(tmp.path());
    let id = put(&spool, b"Subject: u\r\n\r\nx\r\n", &["a@example.com"]).await;
    let records = || {
        spool
            .stats()
            .fsync_records
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = records();
    assert_eq!(
        spool.update_state(id, |s| s.held).await.unwrap(),
        Some(false)
    );
    assert_eq!(records(), before, "nothing written for an unchanged state");
    let stranger = QueueId::generate();
    assert_eq!(spool.update_state(stranger, |_| ()).await.unwrap(), None);
    assert!(spool.get(stranger).await.unwrap().is_none());
    assert!(matches!(
        spool
            .set_state(
                stranger,
                MessageState::new_for(&envelope(&["x@example.com"]))
            )
            .await,
        Err(SpoolError::NotFound(_))
    ));
    spool.close().await;
}

#[tokio::test]
async fn contract_a_removal_is_final_and_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_store(tmp.path());
    let id = put(&spool, b"Subject: r\r\n\r\nx\r\n", &["a@example.com"]).await;
    let kept = put(&spool, b"Subject: k\r\n\r\nx\r\n", &["a@example.com"]).await;
    assert!(spool.remove(id, "delivered").await.unwrap());
    assert!(
        !spool.remove(id, "delivered").await.unwrap(),
        "already gone"
    );
    assert_eq!(spool.removal_reason(id).as_deref(), Some("delivered"));
    assert!(spool.get(id).await.unwrap().is_none());
    assert!(matches!(
        spool.read_body(id).await,
        Err(SpoolError::NotFound(_))
    ));
    let spool = reopen(spool, tmp.path()).await;
    assert!(spool.get(id).await.unwrap().is_none(), "never comes back");
    assert_eq!(
        spool.ids_for_recipient("A@example.com").await.unwrap(),
        [kept]
    );
    spool.close().await;
}

#[tokio::test]
async fn contract_parking_is_forgotten_at_restart_and_holds_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_store(tmp.path());
    let id = put(&spool, b"Subject: p\r\n\r\nx\r\n", &["a@example.com"]).await;
    assert_eq!(spool.due(now_ms(), 10).await.unwrap(), [id]);
    assert!(spool.park(id, now_ms() + 3_600_000).await.unwrap());
    assert!(spool.due(now_ms(), 10).await.unwrap().is_empty());
    spool
        .set_upstream_held("tenant.example:25", true)
        .await
        .unwrap();
    let spool = reopen(spool, tmp.path()).await;
    assert_eq!(
        spool.due(now_ms(), 10).await.unwrap(),
        [id],
        "a park is not durable: due again after a restart"
    );
    assert!(spool
        .held_upstreams()
        .await
        .unwrap()
        .contains("tenant.example:25"));
    spool.close().await;
}

#[tokio::test]
async fn contract_paging_is_stable_while_mail_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_store(tmp.path());
    let ids = put_numbered(&spool, 5).await;
    let (first, cursor) = spool.page(None, 3, |_| true).await.unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..3]);
    let late = put(&spool, b"Subject: late\r\n\r\nx\r\n", &["a@example.com"]).await;
    let (rest, end) = spool.page(cursor, 10, |_| true).await.unwrap();
    let mut expected = ids[3..].to_vec();
    expected.push(late);
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), expected);
    assert!(end.is_none());
    let (odd, _) = spool
        .page(None, 10, |m| m.id == ids[1] || m.id == late)
        .await
        .unwrap();
    assert_eq!(odd.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[1], late]);
    spool.close().await;
}

/// One long-deferred message no longer pins every segment after it:
/// compaction copies it (and a large one) forward with their state, the
/// segments behind go, the bodies read back byte for byte, also after a
/// restart, and nothing removed comes back. A spool whose segments are all
/// live is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_frees_segments_pinned_by_a_deferred_message() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (spool, _) = Spool::open(&cfg).unwrap();
    let mut stuck_body = b"Subject: stuck\r\n\r\n".to_vec();
    stuck_body.extend((0..1500u32).map(|i| b'a' + (i % 26) as u8));
    let stuck = put(&spool, &stuck_body, &["late@example.com"]).await;
    let big: Vec<u8> = (0..100_000u32).map(|i| b'A' + (i % 26) as u8).collect();
    let large = put(&spool, &big, &["late@example.com"]).await;
    spool
        .update_state(stuck, |state| {
            state.recipients[0].attempts = 3;
            state.recipients[0].last_reply = Some("451 4.7.1 try later".into());
        })
        .await
        .unwrap();
    let filler = vec![b'x'; 1500];
    let mut fillers = Vec::new();
    for _ in 0..40 {
        fillers.push(put(&spool, &filler, &["x@example.com"]).await);
    }
    assert_eq!(
        spool.maintain().await.unwrap().messages_moved,
        0,
        "nothing to compact while every segment is live"
    );
    for id in &fillers {
        spool.remove(*id, "delivered").await.unwrap();
    }
    let pinned = segment_files(tmp.path());
    assert!(pinned.len() >= 10, "{pinned:?}");
    assert!(
        pinned.iter().all(|f| f.exists()),
        "in-order reclamation alone frees nothing"
    );
    let state_before = spool.get(stuck).await.unwrap().unwrap().state;

    let mut moved = 0;
    for _ in 0..100 {
        let done = spool.maintain().await.unwrap();
        if done == Default::default() {
            break;
        }
        moved += done.messages_moved;
    }
    assert_eq!(moved, 2, "the two live messages were copied once each");
    let left = segment_files(tmp.path());
    assert!(left.len() <= 2, "pinned segments reclaimed: {left:?}");
    assert!(!pinned[0].exists());
    let on_disk: u64 = left.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(on_disk < 8192, "{on_disk} bytes of segments for 2 messages");
    assert_eq!(spool.read_body(stuck).await.unwrap(), stuck_body);
    assert_eq!(spool.read_body(large).await.unwrap(), big);
    assert_eq!(spool.get(stuck).await.unwrap().unwrap().state, state_before);
    spool.close().await;
    drop(spool);

    as_after_a_crash(tmp.path());
    let (spool, report) = Spool::open(&cfg).unwrap();
    assert_eq!(
        report.index_rebuilt, None,
        "the index's new locations are the ones replay finds"
    );
    assert_eq!(spool.len(), 2);
    assert_eq!(spool.read_body(stuck).await.unwrap(), stuck_body);
    assert_eq!(spool.read_body(large).await.unwrap(), big);
    assert_eq!(spool.get(stuck).await.unwrap().unwrap().state, state_before);
    for id in &fillers {
        assert!(spool.get(*id).await.unwrap().is_none(), "resurrected {id}");
    }
    spool.close().await;
    drop(spool);
}

/// Compaction racing state changes and removals of the very messages it
/// copies: no change is lost and no removed message comes back, before and
/// after a restart (each copy is made under its message's lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_changes_and_removals_loses_neither() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (spool, _) = Spool::open(&cfg).unwrap();
    let ids = put_numbered(&spool, 240).await;
    for id in ids.iter().skip(1).step_by(2) {
        spool.remove(*id, "delivered").await.unwrap();
    }
    let live: Vec<QueueId> = ids.iter().step_by(2).copied().collect();
    let (kept, doomed) = live.split_at(90);
    // Each round's changes are in flight (waiting on their fsync) while a
    // compaction pass reads the same messages' states.
    let mut moved = 0;
    for round in 0..ROUNDS {
        let updates = futures_util::future::join_all(
            kept.iter()
                .map(|id| spool.update_state(*id, |state| state.recipients[0].attempts += 1)),
        );
        let removals = futures_util::future::join_all(
            doomed
                .iter()
                .filter(|_| round == 2)
                .map(|id| spool.remove(*id, "delivered")),
        );
        let (updated, removed, compacted) = tokio::join!(updates, removals, spool.maintain());
        for result in updated {
            result.unwrap();
        }
        for result in removed {
            result.unwrap();
        }
        moved += compacted.unwrap().messages_moved;
    }
    assert!(moved > 0, "compaction ran while the changes did");
    let gone: Vec<QueueId> = doomed
        .iter()
        .chain(ids.iter().skip(1).step_by(2))
        .copied()
        .collect();
    check_after_races(&spool, kept, &gone).await;
    let spool = reopen(spool, tmp.path()).await;
    check_after_races(&spool, kept, &gone).await;
    spool.close().await;
}

const ROUNDS: u32 = 20;

async fn check_after_races(spool: &Spool, kept: &[QueueId], gone: &[QueueId]) {
    for id in kept {
        let message = spool.get(*id).await.unwrap().expect("kept message");
        assert_eq!(message.state.recipients[0].attempts, ROUNDS, "{id}");
    }
    for id in gone {
        assert!(spool.get(*id).await.unwrap().is_none(), "resurrected {id}");
    }
    assert_eq!(spool.len(), kept.len());
}

/// The running counts behind `/metrics` equal a count of the whole spool
/// after every kind of change: arrivals, holds, retries, a route override,
/// a recipient delivered or failed, retention, removals, compaction and a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_matches_a_full_count_after_every_kind_of_change() {
    use breakwater::spool::Census;
    async fn assert_census(spool: &Spool, step: &str) {
        let list = spool.list().await.unwrap();
        let counted = Census::of(list.iter().map(|m| (&m.envelope, &m.state))).snapshot();
        assert_eq!(spool.census(), counted, "after {step}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let rcpts: &[&str] = match i % 3 {
            0 => &["a@one.test"],
            1 => &["a@one.test", "b@two.test"],
            _ => &["c@Two.Test", "d@two.test"],
        };
        ids.push(
            put(
                &spool,
                format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
                rcpts,
            )
            .await,
        );
    }
    assert_census(&spool, "arrivals").await;
    assert_eq!(spool.census().by_status.get("queued"), Some(&40));
    type Change = (&'static str, fn(&mut MessageState));
    let changes: [Change; 6] = [
        ("a hold", |s| s.held = true),
        ("a retry", |s| s.recipients[0].attempts += 1),
        ("a route override", |s| {
            s.route = Some("127.0.0.1:2525".into())
        }),
        ("a delivered recipient", |s| {
            s.recipients[0].status = RecipientStatus::Delivered
        }),
        ("a failed recipient", |s| {
            let last = s.recipients.len() - 1;
            s.recipients[last].status = RecipientStatus::Failed
        }),
        ("retention", |s| {
            for r in &mut s.recipients {
                r.status = RecipientStatus::Delivered;
            }
            s.retain_until_ms = Some(now_ms() + 60_000)
        }),
    ];
    for (n, (step, change)) in changes.iter().enumerate() {
        for id in ids.iter().skip(n).step_by(6) {
            spool.update_state(*id, change).await.unwrap();
        }
        assert_census(&spool, step).await;
    }
    for id in ids.iter().step_by(4) {
        spool.remove(*id, "delivered").await.unwrap();
    }
    assert_census(&spool, "removals").await;
    while spool.maintain().await.unwrap() != Default::default() {}
    assert_census(&spool, "compaction").await;
    let spool = reopen(spool, tmp.path()).await;
    assert_census(&spool, "a restart from the checkpoint").await;
    spool.close().await;
    drop(spool);
    as_after_a_crash(tmp.path());
    let spool = open_store(tmp.path());
    assert_census(&spool, "a restart with replay").await;
    spool.close().await;
}

/// An enqueue abandoned while the writer commits its record (a session cut
/// at the shutdown deadline) leaves a durable message the index never got:
/// the close must then write no checkpoint, so that the next start replays
/// the segments and finds it. With the checkpoint written anyway, the
/// message was in the segments but invisible (never delivered) until a
/// later crash.
#[tokio::test]
async fn a_change_abandoned_half_way_means_the_next_start_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    let kept = put(&spool, b"Subject: kept\r\n\r\nx\r\n", &["a@example.com"]).await;
    let mut body = spool.new_body();
    body.write(b"Subject: abandoned\r\n\r\nx\r\n").unwrap();
    let abandoned = body.id();
    // Polled once: the record goes to the writer, then the caller is gone.
    use futures_util::FutureExt;
    let enqueue = spool.enqueue(body, envelope(&["a@example.com"]));
    assert!(
        enqueue.now_or_never().is_none(),
        "still waiting for its fsync"
    );
    spool.close().await;
    drop(spool);
    assert!(
        !tmp.path().join("spool/clean-shutdown").exists(),
        "no checkpoint after an abandoned change"
    );
    let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
    assert!(!report.from_checkpoint);
    assert!(spool.get(kept).await.unwrap().is_some());
    assert!(
        spool.get(abandoned).await.unwrap().is_some(),
        "the durable record is found by the replay"
    );
    assert_eq!(spool.due(now_ms(), 10).await.unwrap().len(), 2);
    spool.close().await;
}

/// Segments are deleted only below the index watermark, and a change
/// abandoned half-way stops the watermark: the segments of messages removed
/// afterwards stay (their removals might not be in the index if the process
/// crashed now) until the next start has compared them with the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_abandoned_change_finished_segments_wait_for_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_size = 64; // a segment per batch
    let (spool, _) = Spool::open(&cfg).unwrap();
    // Within the watermark's first second: it is still at segment 1.
    let mut removed = Vec::new();
    for i in 0..5 {
        let content = format!("Subject: {i}\r\n\r\nx\r\n");
        removed.push(put(&spool, content.as_bytes(), &["b@example.com"]).await);
    }
    let mut body = spool.new_body();
    body.write(b"Subject: abandoned\r\n\r\nx\r\n").unwrap();
    let abandoned = body.id();
    use futures_util::FutureExt;
    assert!(spool
        .enqueue(body, envelope(&["a@example.com"]))
        .now_or_never()
        .is_none());
    let before = segment_files(tmp.path());
    for id in &removed {
        assert!(spool.remove(*id, "delivered").await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    spool.maintain().await.unwrap();
    let after = segment_files(tmp.path());
    assert!(
        before.iter().all(|file| after.contains(file)),
        "finished segments deleted while the watermark is stopped: {before:?} -> {after:?}"
    );
    spool.close().await;
    drop(spool);

    let (spool, report) = Spool::open(&cfg).unwrap();
    assert!(!report.from_checkpoint);
    assert!(spool.get(abandoned).await.unwrap().is_some());
    for id in &removed {
        assert!(spool.get(*id).await.unwrap().is_none());
    }
    let left = segment_files(tmp.path());
    assert!(
        before[..5].iter().all(|file| !left.contains(file)),
        "the finished segments go once compared: {before:?} -> {left:?}"
    );
    spool.close().await;
}

/// The issue's scale test, in bounded time: 100,000 small messages for
/// 1,000 recipients through the spool API. A clean stop and start resumes
/// from the checkpoint (nothing replayed, nothing repaired, the same
/// census, schedule and bodies); after a crash (no checkpoint) the replay
/// finds the one index entry deliberately dropped, and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_restart_without_replay_and_a_crash_repairs_a_dropped_entry() {
    const MESSAGES: usize = 100_000;
    const AT_ONCE: usize = 64;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_size: 8 << 20,
        ..config(tmp.path())
    };
    let (spool, _) = Spool::open(&cfg).unwrap();
    let started = std::time::Instant::now();
    let mut ids = Vec::with_capacity(MESSAGES);
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(AT_ONCE) {
        let batch = chunk.iter().map(|&i| {
            let spool = spool.clone();
            async move {
                let rcpt = format!("user{}@example.com", i % 1000);
                let content = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(200 + i % 300));
                put(&spool, content.as_bytes(), &[&rcpt]).await
            }
        });
        ids.extend(futures_util::future::join_all(batch).await);
    }
    let filled = started.elapsed();
    // A few kinds of state: held, retried later, finished and retained.
    for (i, id) in ids.iter().enumerate().step_by(97) {
        spool
            .update_state(*id, |s| match i % 3 {
                0 => s.held = true,
                1 => s.next_attempt_ms = now_ms() + 3_600_000,
                _ => {
                    s.recipients[0].status = RecipientStatus::Delivered;
                    s.retain_until_ms = Some(now_ms() + 3_600_000);
                }
            })
            .await
            .unwrap();
    }
    for id in ids.iter().skip(5).step_by(101) {
        assert!(spool.remove(*id, "delivered").await.unwrap());
    }
    let census = spool.census();
    let scheduled = spool.scheduled();
    let live = spool.len();
    let due_now = spool.due(now_ms(), MESSAGES).await.unwrap().len();
    spool.close().await;
    drop(spool);

    let reopened = std::time::Instant::now();
    let (spool, report) = Spool::open(&cfg).unwrap();
    let from_checkpoint = reopened.elapsed();
    assert!(report.from_checkpoint, "{report:?}");
    assert_eq!(report.records, 0, "nothing replayed: {report:?}");
    assert_eq!(report.index_repairs, 0);
    assert_eq!(spool.len(), live);
    assert_eq!(spool.census(), census);
    assert_eq!(spool.scheduled(), scheduled);
    assert_eq!(spool.due(now_ms(), MESSAGES).await.unwrap().len(), due_now);
    for i in (0..MESSAGES).step_by(997) {
        let body = spool.read_body(ids[i]).await;
        if i % 101 == 5 {
            assert!(matches!(body, Err(SpoolError::NotFound(_))), "removed {i}");
        } else {
            let expected = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(200 + i % 300));
            assert!(body.unwrap().ends_with(expected.as_bytes()), "message {i}");
        }
    }
    spool.close().await;
    drop(spool);

    // A crash: no checkpoint, and the index lost a change of the last
    // moment. Only the entries from the index watermark on are compared.
    let dropped = ids[MESSAGES - 345];
    as_after_a_crash_losing(tmp.path(), &[dropped]);
    let replayed = std::time::Instant::now();
    let (spool, report) = Spool::open(&cfg).unwrap();
    let by_replay = replayed.elapsed();
    assert!(!report.from_checkpoint);
    assert_eq!(report.index_repairs, 1, "{report:?}");
    assert!(
        report.index_compared > 0 && report.index_compared < MESSAGES / 4,
        "only the tail is compared: {report:?}"
    );
    assert_eq!(spool.len(), live);
    assert_eq!(spool.census(), census);
    assert_eq!(spool.scheduled(), scheduled);
    assert!(spool.get(dropped).await.unwrap().is_some());
    assert!(spool
        .ids_for_recipient("user655@example.com")
        .await
        .unwrap()
        .contains(&dropped));
    spool.close().await;
    drop(spool);

    // An index without a watermark (written by an older version, or
    // restored) is compared whole, and an old entry it lacks is found.
    as_after_a_crash(tmp.path());
    let old = ids[12_345];
    {
        let db = sled::open(tmp.path().join("spool/index")).unwrap();
        assert!(db.remove("durable-below").unwrap().is_some());
        let messages = db.open_tree("messages").unwrap();
        assert!(messages.remove(old.to_bytes()).unwrap().is_some());
        db.flush().unwrap();
    }
    let (spool, report) = Spool::open(&cfg).unwrap();
    assert_eq!(report.index_repairs, 1, "{report:?}");
    assert_eq!(report.index_compared, live, "{report:?}");
    assert!(spool
        .ids_for_recipient("user345@example.com")
        .await
        .unwrap()
        .contains(&old));
    eprintln!(
        "{MESSAGES} messages: filled in {filled:?}; open from the checkpoint {from_checkpoint:?}, by replay {by_replay:?}"
    );
    spool.close().await;
}

/// Crash recovery takes finished segments from their digests (headers and
/// metadata only) and ends where reading every segment ends; a digest that
/// is damaged, stale or missing is not used, and the segment is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_restart_replays_finished_segments_from_their_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_size: 64 * 1024,
        ..config(tmp.path())
    };
    let content = |i: usize| {
        format!(
            "Subject: {i}\r\n\r\n{}\r\n",
            "y".repeat(4000 + i * 13 % 4000)
        )
        .into_bytes()
    };
    let (spool, _) = Spool::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..400 {
        let rcpt = format!("user{}@example.com", i % 7);
        ids.push(put(&spool, &content(i), &[&rcpt]).await);
    }
    for (i, id) in ids.iter().enumerate().step_by(9) {
        spool
            .update_state(*id, |s| s.next_attempt_ms = now_ms() + 60_000 + i as u64)
            .await
            .unwrap();
    }
    for id in ids.iter().skip(3).step_by(11) {
        assert!(spool.remove(*id, "delivered").await.unwrap());
    }
    let census = spool.census();
    let scheduled = spool.scheduled();
    let live = spool.len();
    spool.close().await;
    drop(spool);
    let segments = segment_files(tmp.path());
    assert!(segments.len() > 20, "{} segments", segments.len());

    let digests = |dir: &Path| -> Vec<std::path::PathBuf> {
        segment_files(dir)
            .iter()
            .map(|seg| seg.with_extension("digest"))
            .filter(|digest| digest.exists())
            .collect()
    };
    let check = |spool: &Spool| {
        assert_eq!(spool.len(), live);
        assert_eq!(spool.census(), census);
        assert_eq!(spool.scheduled(), scheduled);
    };
    // The segments got their digests as they were finished (the last one
    // at close), except where one would not be much smaller than the
    // segment (the one holding only the state and remove records).
    let finished_with_digest = |dir: &Path| {
        let mut segments = segment_files(dir);
        segments.pop(); // the newest is read whole
        segments
            .iter()
            .filter(|seg| seg.with_extension("digest").exists())
            .count()
    };
    let with_digest = finished_with_digest(tmp.path());
    assert!(
        with_digest >= segments.len() - 2,
        "{with_digest} of {}",
        segments.len()
    );
    as_after_a_crash(tmp.path());
    let (spool, report) = Spool::open(&cfg).unwrap();
    assert!(!report.from_checkpoint);
    assert_eq!(report.segments_from_digest, with_digest, "{report:?}");
    check(&spool);
    bodies_are_intact(&spool, &ids, content).await;
    spool.close().await;
    drop(spool);

    // Without digests every segment is read, to the same result, and the
    // reading leaves digests for the next time.
    as_after_a_crash(tmp.path());
    for digest in digests(tmp.path()) {
        std::fs::remove_file(digest).unwrap();
    }
    let (spool, report) = Spool::open(&cfg).unwrap();
    assert_eq!(report.segments_from_digest, 0, "{report:?}");
    check(&spool);
    bodies_are_intact(&spool, &ids, content).await;
    spool.close().await;
    drop(spool);
    assert_eq!(finished_with_digest(tmp.path()), with_digest);
    let segments = segment_files(tmp.path());

    // A damaged digest, and one that describes another segment, are not used.
    as_after_a_crash(tmp.path());
    let damaged = segments[3].with_extension("digest");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::copy(
        segments[5].with_extension("digest"),
        segments[6].with_extension("digest"),
    )
    .unwrap();
    let (spool, report) = Spool::open(&cfg).unwrap();
    assert_eq!(report.segments_from_digest, with_digest - 2, "{report:?}");
    check(&spool);
    bodies_are_intact(&spool, &ids, content).await;
    spool.close().await;
}

/// Every one of `ids` reads back as `content(i)`, except every 11th from
/// the 4th on (removed).
async fn bodies_are_intact(spool: &Spool, ids: &[QueueId], content: impl Fn(usize) -> Vec<u8>) {
    for (i, id) in ids.iter().enumerate() {
        let body = spool.read_body(*id).await;
        if i % 11 == 3 {
            assert!(matches!(body, Err(SpoolError::NotFound(_))), "removed {i}");
        } else {
            assert_eq!(body.unwrap(), content(i), "message {i}");
        }
    }
}

/// A start while an earlier handle on the index still holds sled's file
/// lock (sled lets go a moment after its last `Db` is dropped) waits for it
/// and resumes from the checkpoint; it used to take the lock failure for a
/// broken index, delete it and rebuild it from the segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_the_index_lock_instead_of_rebuilding_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(tmp.path())).unwrap();
    let ids = put_numbered(&spool, 20).await;
    spool.close().await;
    drop(spool);

    let held = sled::open(tmp.path().join("spool/index")).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(800));
        drop(held);
    });
    let (spool, report) = Spool::open(&config(tmp.path())).unwrap();
    holder.join().unwrap();
    assert!(report.from_checkpoint, "{report:?}");
    assert_eq!(report.index_rebuilt, None, "{report:?}");
    assert_eq!(spool.len(), ids.len());
    for id in &ids {
        assert!(spool.get(*id).await.unwrap().is_some());
    }
    spool.close().await;
}

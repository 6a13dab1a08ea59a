//! Resource exhaustion: a full disk, the open-file limit, a slowloris crowd
//! and a 50 MB message. Each must degrade with a clear SMTP reply, never a
//! crash, and never lose a message that was acknowledged.
//!
//! The disk tests mount a small tmpfs, so they need root (CI runs as root);
//! run as another user they say so and skip.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use breakwater::config::UpstreamTls;
use breakwater::server::Server;
use common::sink::{Script, Sink};
use common::*;

/// A tmpfs of `size_mb` mounted for the life of the value.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(under: &Path, size_mb: u32) -> Option<SmallDisk> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a small file system needs root");
            return None;
        }
        let mount = under.join("small-disk");
        std::fs::create_dir_all(&mount).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m")])
            .arg("tmpfs")
            .arg(&mount)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed: {status:?}");
        Some(SmallDisk { mount })
    }

    fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mount)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

fn message(token: &str, size: usize) -> Vec<u8> {
    let mut body = format!("Subject: {token}\r\n\r\n").into_bytes();
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n",
        );
    }
    body
}

/// MAIL, RCPT, DATA and the body; the reply to MAIL when it is not 250,
/// else the final reply.
fn try_send(addr: SocketAddr, token: &str, size: usize) -> Reply {
    let mut c = RawClient::greeted(addr);
    c.expect("EHLO disk.test", 250);
    let r = c.cmd("MAIL FROM:<s@remote.test>");
    if r.code != 250 {
        return r;
    }
    c.expect(&format!("RCPT TO:<{token}@{DOMAIN}>"), 250);
    c.expect("DATA", 354);
    c.send(&message(token, size));
    c.send(b".\r\n");
    c.reply()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn full_disk_refuses_with_452_keeps_every_acked_message_and_recovers() {
    let fixture = Fixture::new();
    let Some(disk) = SmallDisk::mount(fixture.path(), 24) else {
        return;
    };
    let rt = common::runtime();
    let sink = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    let mut config = fixture.config.clone();
    config.spool.dir = disk.mount.join("spool");
    config.spool.min_free = bytesize::ByteSize::mb(8);
    config.spool.segment_size = 256 * 1024;
    config.spool.large_message_threshold = 64 * 1024;
    config.delivery.enabled = true;
    config.delivery.retry = vec![Duration::from_millis(200).into()];
    config.delivery.probe_interval = Duration::from_millis(300);
    config.domains[0].upstream = sink.addr.to_string();
    config.domains[0].tls = UpstreamTls::None;
    let server = rt.block_on(Server::start(config)).expect("server starts");
    let addr = server.smtp_addrs[0];
    let delivery = server.delivery().expect("delivery on");
    let upstream = delivery.upstream_for(DOMAIN);
    common::block(delivery.hold(&upstream)).unwrap();

    // Fill the disk with 300 kB messages until intake refuses at MAIL.
    let mut acked = Vec::new();
    let refusal = loop {
        assert!(
            acked.len() < 200,
            "never refused: the floor is not enforced"
        );
        let token = format!("fill{}", acked.len());
        let r = try_send(addr, &token, 300_000);
        if r.code == 250 {
            acked.push(token);
        } else {
            break r;
        }
    };
    assert_eq!(refusal.code, 452, "{refusal:?}");
    assert!(refusal.text.starts_with("4.3.1"), "{refusal:?}");
    assert!(acked.len() >= 10, "only {} messages fit", acked.len());
    assert!(
        disk.free() >= 7 * 1024 * 1024,
        "floor crossed: {}",
        disk.free()
    );
    // A declared SIZE larger than the room left is refused up front too,
    // and a message that would cross the floor is refused at end of data.
    let spool = disk.mount.join("spool");
    assert_eq!(server.spool.len(), acked.len());
    assert_eq!(
        files_in(&spool.join("tmp")),
        0,
        "half-written body left behind"
    );
    assert_eq!(files_in(&spool.join("large")), acked.len());

    // Delivery goes on while intake is refused, frees the space, and intake
    // comes back by itself.
    common::block(delivery.release(&upstream)).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || server.spool.is_empty()),
        "spool did not drain: {} left",
        server.spool.len()
    );
    let after = try_send(addr, "after", 300_000);
    assert_eq!(after.code, 250, "intake did not resume: {after:?}");
    assert!(wait_for(Duration::from_secs(30), || server
        .spool
        .is_empty()));
    let delivered: Vec<String> = sink
        .delivered()
        .iter()
        .map(|d| d.rcpts()[0].split('@').next().unwrap().to_string())
        .collect();
    for token in acked.iter().chain(std::iter::once(&"after".to_string())) {
        let copies = delivered.iter().filter(|t| *t == token).count();
        assert_eq!(copies, 1, "{token} delivered {copies} times");
    }
    rt.block_on(server.shutdown());
}

/// An in-process server whose spool is on `disk`, with the given floor.
fn start_on(
    fixture: &mut Fixture,
    disk: &SmallDisk,
    min_free: bytesize::ByteSize,
) -> (tokio::runtime::Runtime, Server) {
    fixture.config.spool.dir = disk.mount.join("spool");
    fixture.config.spool.min_free = min_free;
    fixture.config.spool.large_message_threshold = 64 * 1024;
    start_in_process(fixture)
}

#[test]
fn declared_size_and_real_size_are_held_to_the_floor() {
    let mut fixture = Fixture::new();
    let Some(disk) = SmallDisk::mount(fixture.path(), 16) else {
        return;
    };
    let (rt, server) = start_on(&mut fixture, &disk, bytesize::ByteSize::mb(10));
    let addr = server.smtp_addrs[0];
    let room = disk.free() - 10 * 1024 * 1024;
    assert!(room > 3 * 1024 * 1024, "room {room}");

    // SIZE= beyond the room: refused at MAIL, before any data is sent.
    let mut c = RawClient::greeted(addr);
    c.expect("EHLO size.test", 250);
    let r = c.cmd(&format!(
        "MAIL FROM:<s@remote.test> SIZE={}",
        room + 1024 * 1024
    ));
    assert_eq!((r.code, &r.text[..5]), (452, "4.3.1"), "{r:?}");
    // A small declared size passes MAIL...
    c.expect("MAIL FROM:<s@remote.test> SIZE=1000", 250);
    c.expect(&format!("RCPT TO:<liar@{DOMAIN}>"), 250);
    c.expect("DATA", 354);
    // ...but the real message would cross the floor: 452 at end of data.
    c.send(&message("liar", (room + 512 * 1024) as usize));
    c.send(b".\r\n");
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (452, "4.3.1"), "{r:?}");
    assert_eq!(server.spool.len(), 0);
    assert_eq!(files_in(&disk.mount.join("spool/tmp")), 0);
    // The session is still usable and a message that fits is taken.
    let r = c.send_mail(
        "s@remote.test",
        &[&format!("fits@{DOMAIN}")],
        &message("fits", 1000),
    );
    assert_eq!(r.code, 250, "{r:?}");
    rt.block_on(server.shutdown());
}

#[test]
fn a_write_that_hits_enospc_gets_452_and_leaves_nothing_behind() {
    let mut fixture = Fixture::new();
    let Some(disk) = SmallDisk::mount(fixture.path(), 16) else {
        return;
    };
    // No floor: the file system itself runs out mid-message.
    let (rt, server) = start_on(&mut fixture, &disk, bytesize::ByteSize::b(0));
    let addr = server.smtp_addrs[0];
    let before = try_send(addr, "before", 2000);
    assert_eq!(before.code, 250);
    // Leave ~256 kB, then send 1 MB.
    let filler_path = disk.mount.join("filler");
    {
        let mut filler = std::fs::File::create(&filler_path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while disk.free() > 256 * 1024 {
            if filler.write_all(&block).is_err() {
                break;
            }
        }
        filler.sync_all().ok();
    }
    let r = try_send(addr, "nospace", 1024 * 1024);
    assert_eq!((r.code, &r.text[..5]), (452, "4.3.1"), "{r:?}");
    assert_eq!(files_in(&disk.mount.join("spool/tmp")), 0);
    assert_eq!(server.spool.len(), 1);
    std::fs::remove_file(&filler_path).unwrap();
    let r = try_send(addr, "again", 1024 * 1024);
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(server.spool.len(), 2);
    rt.block_on(server.shutdown());
    // Both acknowledged messages are intact after a restart.
    let (spool, report) = breakwater::spool::Spool::open(&fixture.config.spool).unwrap();
    assert_eq!(report.messages, 2, "{report:?}");
    for message in common::block(spool.list()).unwrap() {
        common::block(spool.read_body(message.id)).expect("body intact");
    }
}

#[test]
fn spool_quota_refuses_with_452() {
    let mut fixture = Fixture::new();
    fixture.config.spool.max_bytes = Some(bytesize::ByteSize::kb(600));
    fixture.config.spool.large_message_threshold = 64 * 1024;
    let (rt, server) = start_in_process(&fixture);
    let addr = server.smtp_addrs[0];
    assert_eq!(try_send(addr, "q1", 250_000).code, 250);
    assert_eq!(try_send(addr, "q2", 250_000).code, 250);
    // 500 kB used: a third one would pass 600 kB.
    let r = try_send(addr, "q3", 250_000);
    assert_eq!((r.code, &r.text[..5]), (452, "4.3.1"), "{r:?}");
    assert_eq!(server.spool.len(), 2);
    rt.block_on(server.shutdown());
}

/// Peak and current resident set of a process, in kB (VmHWM, VmRSS).
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn a_50_mb_message_is_streamed_not_held_in_memory() {
    let fixture = Fixture::new();
    let config_path = fixture.write_config();
    let server = BinaryServer::start(&config_path);
    // Warm up the paths a message takes, then measure from there.
    assert_eq!(try_send(server.addr, "warm", 200_000).code, 250);
    // Reset the peak (VmHWM) to the current RSS (Linux clear_refs "5").
    let pid = server.child.id();
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let (_, rss_before) = memory_kb(pid);
    let size = 50 * 1024 * 1024;
    let mut c = RawClient::greeted(server.addr);
    c.expect("EHLO big.test", 250);
    c.expect(&format!("MAIL FROM:<s@remote.test> SIZE={size}"), 250);
    c.expect(&format!("RCPT TO:<big@{DOMAIN}>"), 250);
    c.expect("DATA", 354);
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n";
    let mut chunk = b"Subject: big\r\n\r\n".to_vec();
    while chunk.len() < 1024 * 1024 - line.len() {
        chunk.extend_from_slice(line);
    }
    let mut sent = 0;
    while sent + chunk.len() < size - 1024 {
        c.send(&chunk);
        sent += chunk.len();
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    let (peak, rss_after) = memory_kb(server.child.id());
    let extra_kb = peak.saturating_sub(rss_before);
    println!(
        "50 MB message: sent {sent} bytes; RSS before {rss_before} kB, peak {peak} kB (+{extra_kb} kB), after {rss_after} kB"
    );
    assert!(
        extra_kb < 16 * 1024,
        "a {sent}-byte message raised peak RSS by {extra_kb} kB"
    );
}

#[test]
fn at_ulimit_256_extra_connections_get_421_not_a_crash() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.max_connections_per_ip = 10_000;
    let config_path = fixture.write_config();
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(format!(
        "ulimit -n 256 && exec {} serve --config {}",
        env!("CARGO_BIN_EXE_breakwater"),
        config_path.display()
    ));
    let server = BinaryServer::spawn(command);
    assert!(
        wait_for(Duration::from_secs(5), || server
            .log_text()
            .contains("max_connections lowered")),
        "{}",
        server.log_text()
    );
    let mut clients = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for _ in 0..400 {
        let stream = std::net::TcpStream::connect(server.addr).expect("connect");
        let mut c = RawClient::from_stream(stream);
        let r = c.try_reply().expect("every connection gets an answer");
        match r.code {
            220 => greeted += 1,
            421 => refused += 1,
            other => panic!("unexpected {other}: {r:?}"),
        }
        clients.push(c);
    }
    println!("ulimit -n 256: {greeted} sessions, {refused} refused with 421");
    assert!(greeted >= 64, "only {greeted} sessions at ulimit 256");
    assert!(refused >= 400 - 256, "{refused} refused");
    // The server is alive and the held sessions still work.
    clients[0].expect("EHLO still.test", 250);
    drop(clients);
    std::thread::sleep(Duration::from_millis(300));
    let r = try_send(server.addr, "after", 2000);
    assert_eq!(r.code, 250, "{r:?}");
}

/// The budget above keeps `max_connections` inside the fd limit, so EMFILE
/// at accept should not happen — unless something else takes descriptors.
/// Here the running server's limit is cut (prlimit) to a few above what it
/// has open: the connections past it must get `421` through the spare
/// descriptor, not hang in the backlog or crash the server, and intake must
/// come back when the limit does.
#[test]
fn at_emfile_the_spare_descriptor_answers_421() {
    let fixture = Fixture::new();
    let config_path = fixture.write_config();
    let server = BinaryServer::start(&config_path);
    let pid = server.child.id() as libc::pid_t;
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64
    };
    let mut original = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into a valid struct.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut original) };
    assert_eq!(rc, 0);
    let set_limit = |limit: u64| {
        let new = libc::rlimit {
            rlim_cur: limit,
            rlim_max: original.rlim_max,
        };
        // SAFETY: prlimit on our own child with a valid struct.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    let before = open_fds();
    set_limit(before + 4);
    let (mut greeted, mut refused) = (0, 0);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let stream = std::net::TcpStream::connect(server.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut c = RawClient::from_stream(stream);
        let r = c.try_reply().expect("every connection gets an answer");
        match r.code {
            220 => greeted += 1,
            421 => {
                assert!(r.text.contains("Too many open files"), "{r:?}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
        clients.push(c);
    }
    println!(
        "fd limit {} (had {before} open): {greeted} sessions, {refused} refused with 421",
        before + 4
    );
    assert!(
        refused >= 10,
        "only {refused} of 20 refused at the fd limit"
    );
    assert!(server.log_text().contains("out of file descriptors"));
    set_limit(original.rlim_cur);
    drop(clients);
    std::thread::sleep(Duration::from_millis(300));
    let r = try_send(server.addr, "after-emfile", 2000);
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn a_slowloris_crowd_of_1000_does_not_stop_real_mail() {
    let fixture = Fixture::new();
    let config_path = fixture.write_config();
    let server = BinaryServer::start(&config_path);
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let send_batch = |n: usize, tag: &str| -> Duration {
        let started = Instant::now();
        let mut done = 0;
        while done < n {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "real mail starved"
            );
            let Ok(stream) = std::net::TcpStream::connect(addr) else {
                continue;
            };
            let mut c = RawClient::from_stream(stream);
            match c.try_reply() {
                Ok(r) if r.code == 220 => {}
                // Refused at a full house: a real MTA retries later.
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            c.expect("EHLO real.test", 250);
            let r = c.send_mail(
                "s@remote.test",
                &[&format!("{tag}{done}@{DOMAIN}")],
                &message(tag, 4000),
            );
            assert_eq!(r.code, 250, "{r:?}");
            c.send(b"QUIT\r\n");
            done += 1;
        }
        started.elapsed()
    };
    let quiet = send_batch(50, "quiet");

    // 1000 connections from 25 addresses (40 each, under the per-IP cap),
    // each sending "EHLO" a byte every 2 s.
    let crowd_started = Instant::now();
    let mut crowd = Vec::new();
    for i in 0..1000 {
        let source = format!("127.0.{}.2", 10 + i / 40);
        let stream = tcp_from(&rt, addr, &source);
        stream.set_nonblocking(true).unwrap();
        crowd.push((stream, 0usize, Vec::new()));
    }
    let (_, rss_crowd) = memory_kb(server.child.id());
    let busy = send_batch(50, "busy");

    // Trickle for 25 s: under stress, idle lines are cut at 10 s.
    let line = b"EHLO slow.test\r\n";
    let mut last_tick = Instant::now() - Duration::from_secs(3);
    while crowd_started.elapsed() < Duration::from_secs(25) {
        if last_tick.elapsed() >= Duration::from_secs(2) {
            last_tick = Instant::now();
            for (stream, sent, _) in crowd.iter_mut() {
                if *sent < line.len() - 2
                    && std::io::Write::write(stream, &line[*sent..*sent + 1]).is_ok()
                {
                    *sent += 1;
                }
            }
        }
        for (stream, _, got) in crowd.iter_mut() {
            let mut buf = [0u8; 512];
            while let Ok(n) = std::io::Read::read(stream, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let timed_out = crowd
        .iter()
        .filter(|(_, _, got)| String::from_utf8_lossy(got).contains("421 4.4.2"))
        .count();
    let greeted = crowd
        .iter()
        .filter(|(_, _, got)| got.starts_with(b"220 "))
        .count();
    let (peak, _) = memory_kb(server.child.id());
    println!(
        "slowloris: {greeted}/1000 greeted, {timed_out} cut by the stress timeout; \
         50 messages took {quiet:?} quiet, {busy:?} with the crowd; \
         server RSS {rss_crowd} kB with the crowd, peak {peak} kB"
    );
    assert!(greeted >= 990, "{greeted} greeted");
    assert!(
        timed_out >= 400,
        "stress mode did not cut idle sessions: {timed_out}"
    );
    assert!(server.log_text().contains("stress mode on"));
    assert!(peak < 300 * 1024, "peak RSS {peak} kB");
    drop(crowd);
    let r = try_send(addr, "after", 2000);
    assert_eq!(r.code, 250);
}

/// Delivery streams large bodies from the spool instead of holding them:
/// 20 messages of 50 MB in flight at once (the upstream sits on each end of
/// data for a while) raise the server's peak RSS by far less than one
/// message each, and every one arrives whole (byte-for-byte streaming is
/// checked in tests/delivery.rs).
#[test]
fn twenty_50_mb_messages_in_flight_are_streamed_not_held_in_memory() {
    const COUNT: usize = 20;
    const SIZE: usize = 50 * 1024 * 1024;
    let rt = common::runtime();
    let sink = rt.block_on(Sink::start(
        "127.0.0.1:0",
        Script {
            keep_data: false,
            data_delay: Duration::from_secs(4),
            ..Script::default()
        },
    ));
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.delivery.concurrency = COUNT;
    fixture.config.delivery.per_upstream = COUNT;
    fixture.config.domains[0].upstream = sink.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    let server = BinaryServer::start(&fixture.write_config());
    assert_eq!(try_send(server.addr, "warm", 200_000).code, 250);
    assert!(wait_for(Duration::from_secs(10), || sink.delivered().len() == 1));
    let pid = server.child.id();
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let (_, rss_before) = memory_kb(pid);

    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n";
    let chunk: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 13_000)
        .collect();
    let senders: Vec<_> = (0..COUNT)
        .map(|i| {
            let (addr, chunk) = (server.addr, chunk.clone());
            std::thread::spawn(move || {
                let mut c = RawClient::greeted(addr);
                c.expect("EHLO big.test", 250);
                c.expect(&format!("MAIL FROM:<s@remote.test> SIZE={SIZE}"), 250);
                c.expect(&format!("RCPT TO:<big{i}@{DOMAIN}>"), 250);
                c.expect("DATA", 354);
                let head = format!("Subject: big {i}\r\n\r\n").into_bytes();
                c.send(&head);
                let mut sent = head.len();
                while sent + chunk.len() < SIZE {
                    c.send(&chunk);
                    sent += chunk.len();
                }
                c.send(b".\r\n");
                let r = c.reply();
                assert_eq!(r.code, 250, "{r:?}");
                sent
            })
        })
        .collect();
    let sent: Vec<usize> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        wait_for(Duration::from_secs(120), || sink.delivered().len()
            == COUNT + 1),
        "{} of {COUNT} delivered",
        sink.delivered().len() - 1
    );
    let (peak, rss_after) = memory_kb(pid);
    let extra_mb = peak.saturating_sub(rss_before) / 1024;
    println!(
        "{COUNT} x 50 MB delivered: RSS before {rss_before} kB, peak {peak} kB (+{extra_mb} MB), after {rss_after} kB"
    );
    for delivered in sink.delivered().iter().skip(1) {
        let stored_len = delivered.data_len;
        // Our Received header comes first; the client's bytes follow.
        assert!(
            sent.iter()
                .any(|len| stored_len > *len && stored_len < len + 2048),
            "length {stored_len}"
        );
    }
    assert!(
        peak / 1024 <= 300 && extra_mb < 150,
        "{COUNT} messages of 50 MB in flight: peak RSS {} MB (+{extra_mb} MB)",
        peak / 1024
    );
    drop(server);
}

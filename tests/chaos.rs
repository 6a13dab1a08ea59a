//! Chaos soak: the real binary under steady mail from many clients (plain
//! pipelined DATA, STARTTLS, BDAT; small to 1.5 MB) while, at random, it is
//! `kill -9`ed or SIGTERMed and restarted, its certificate is rotated
//! (SIGHUP), the upstream refuses connections, tempfails recipients, drops
//! the connection mid-DATA or stalls, and an operator holds and releases the
//! upstream through the admin API.
//!
//! At the end everything drains and the ledger is checked: every message
//! acknowledged with 250 reached the upstream byte-for-byte (duplicates are
//! counted: a crash between the upstream's 250 and our own record makes
//! delivery at-least-once), or — for recipients the upstream refuses
//! permanently — came back in a valid DSN. Nothing refused was delivered.
//! The last line printed is `acked=N delivered=N dup=N bounced=N lost=0`.
//!
//! Duration: `CHAOS_SECONDS` (default 120; `bench/chaos.sh --minutes 60`
//! for the long run recorded in docs/RELIABILITY.md).

mod common;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater::config::UpstreamTls;
use common::sink::{Delivered, Script, Sink};
use common::*;

fn digest(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Acked,
    Refused,
    /// The connection broke before the final reply.
    Unknown,
}

struct Sent {
    len: usize,
    digest: u64,
    recipients: Vec<String>,
    outcome: Outcome,
}

type Ledger = Arc<Mutex<HashMap<String, Sent>>>;

#[derive(Clone, Copy)]
enum Mode {
    Pipelined,
    StartTls,
    Bdat,
}

fn body_for(token: &str, size: usize) -> Vec<u8> {
    let mut body = format!(
        "From: chaos <chaos@example.com>\r\nSubject: {token}\r\nMessage-ID: <{token}@chaos.test>\r\n\r\n"
    )
    .into_bytes();
    let lines: [&[u8]; 3] = [
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit 0123456789\r\n",
        b".a line that starts with a dot (dot-stuffing)\r\n",
        b"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e 8bit text\r\n",
    ];
    let mut i = 0;
    while body.len() < size {
        body.extend_from_slice(lines[i % 3]);
        i += 1;
    }
    body
}

fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

struct Shared {
    addr: Mutex<SocketAddr>,
    cert: PathBuf,
    stop: AtomicBool,
    ledger: Ledger,
    sent: AtomicUsize,
}

fn client(id: usize, mode: Mode, shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng(seed);
    let mut n = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let target = *shared.addr.lock().unwrap();
        let result = (|| -> std::io::Result<()> {
            let mut c = open_session(target, mode, &shared.cert)?;
            for _ in 0..10 {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                n += 1;
                let token = format!("c{id}m{n}");
                let size = match rng.below(40) {
                    0 => 200_000 + rng.below(1_300_000) as usize,
                    1..=8 => 20_000 + rng.below(40_000) as usize,
                    _ => 300 + rng.below(5_000) as usize,
                };
                let mut recipients = vec![format!("ok.{token}@{DOMAIN}")];
                match rng.below(10) {
                    0 => recipients.push(format!("perm.{token}@{DOMAIN}")),
                    1 | 2 => recipients.push(format!("temp.{token}@{DOMAIN}")),
                    3 => recipients.push(format!("ok2.{token}@{DOMAIN}")),
                    _ => {}
                }
                let body = body_for(&token, size);
                shared.ledger.lock().unwrap().insert(
                    token.clone(),
                    Sent {
                        len: body.len(),
                        digest: digest(&body),
                        recipients: recipients.clone(),
                        outcome: Outcome::Unknown,
                    },
                );
                shared.sent.fetch_add(1, Ordering::Relaxed);
                let (outcome, accepted) = send_one(&mut c, mode, &recipients, &body)?;
                let mut ledger = shared.ledger.lock().unwrap();
                let sent = ledger.get_mut(&token).unwrap();
                sent.outcome = outcome;
                // Only recipients the server took are owed a delivery.
                if outcome == Outcome::Acked {
                    sent.recipients = accepted;
                }
                drop(ledger);
                std::thread::sleep(Duration::from_millis(rng.below(40)));
            }
            c.stream.write_all(b"QUIT\r\n")?;
            Ok(())
        })();
        if result.is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Connect, EHLO, and for `StartTls` upgrade and EHLO again.
fn open_session(target: SocketAddr, mode: Mode, cert: &Path) -> std::io::Result<RawClient> {
    let stream = std::net::TcpStream::connect(target)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut c = RawClient::from_stream(stream);
    if c.try_reply()?.code != 220 {
        return Err(std::io::Error::other("no greeting"));
    }
    c.stream.write_all(b"EHLO chaos.test\r\n")?;
    c.try_reply()?;
    if let Mode::StartTls = mode {
        c.stream.write_all(b"STARTTLS\r\n")?;
        if c.try_reply()?.code != 220 {
            return Err(std::io::Error::other("no STARTTLS"));
        }
        // The handshake fails while a rotation is half done (the client
        // already trusts the new certificate, the server has not reloaded):
        // that is a failed connection, tried again. start_tls panics only on
        // a certificate file it cannot parse, mid-write.
        c = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.start_tls(cert)))
            .map_err(|_| std::io::Error::other("TLS setup failed"))?;
        c.stream.write_all(b"EHLO chaos.test\r\n")?;
        c.try_reply()?;
    }
    Ok(c)
}

/// One transaction: the outcome and the recipients the server accepted;
/// Err when the connection broke (outcome unknown).
fn send_one(
    c: &mut RawClient,
    mode: Mode,
    recipients: &[String],
    body: &[u8],
) -> std::io::Result<(Outcome, Vec<String>)> {
    let mut head = b"MAIL FROM:<chaos@example.com>\r\n".to_vec();
    for r in recipients {
        head.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
    }
    let mut accepted = Vec::new();
    let last = match mode {
        Mode::Bdat => {
            head.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
            head.extend_from_slice(body);
            c.stream.write_all(&head)?;
            let _mail = c.try_reply()?;
            for r in recipients {
                if c.try_reply()?.code == 250 {
                    accepted.push(r.clone());
                }
            }
            c.try_reply()?
        }
        Mode::Pipelined | Mode::StartTls => {
            head.extend_from_slice(b"DATA\r\n");
            c.stream.write_all(&head)?;
            let _mail = c.try_reply()?;
            for r in recipients {
                if c.try_reply()?.code == 250 {
                    accepted.push(r.clone());
                }
            }
            if c.try_reply()?.code != 354 {
                return Ok((Outcome::Refused, accepted));
            }
            let mut wire = dot_stuff(body);
            wire.extend_from_slice(b".\r\n");
            c.stream.write_all(&wire)?;
            c.try_reply()?
        }
    };
    let outcome = if last.code == 250 {
        Outcome::Acked
    } else {
        Outcome::Refused
    };
    Ok((outcome, accepted))
}

/// The running binary plus what is needed to steer it.
struct Target {
    server: Option<BinaryServer>,
    config_path: PathBuf,
    token: String,
}

impl Target {
    fn start(&mut self, shared: &Shared) {
        let server = BinaryServer::start(&self.config_path);
        *shared.addr.lock().unwrap() = server.addr;
        self.server = Some(server);
    }

    fn admin(&self) -> String {
        let log = self.server.as_ref().unwrap().log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("admin listening"))
            .expect("admin address in log");
        let addr = line
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        format!("http://{addr}")
    }

    fn api(&self, method: &str, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.admin());
        let auth = format!("Bearer {}", self.token);
        let result = if method == "POST" {
            ureq::post(&url).header("Authorization", &auth).send_empty()
        } else {
            ureq::get(&url).header("Authorization", &auth).call()
        };
        match result {
            Ok(mut response) => Ok(response.body_mut().read_to_string().unwrap_or_default()),
            Err(err) => Err(err.to_string()),
        }
    }
}

fn rotate_certificate(cert: &Path, key: &Path) {
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "mx2.test.example".to_string(),
    ])
    .unwrap();
    // Key first, then the certificate, each by rename: a reader never sees
    // a half-written file.
    let key_tmp = key.with_extension("new");
    std::fs::write(&key_tmp, generated.key_pair.serialize_pem()).unwrap();
    std::fs::rename(&key_tmp, key).unwrap();
    let cert_tmp = cert.with_extension("new");
    std::fs::write(&cert_tmp, generated.cert.pem()).unwrap();
    std::fs::rename(&cert_tmp, cert).unwrap();
}

#[derive(Default)]
struct Received {
    /// (token, recipient) → copies delivered intact.
    copies: HashMap<(String, String), usize>,
    /// (token, recipient) → DSNs received for it.
    bounced: HashMap<(String, String), usize>,
    corrupt: Vec<String>,
    bad_dsn: Vec<String>,
}

impl Received {
    fn absorb(&mut self, batch: Vec<Delivered>, ledger: &Ledger) {
        let ledger = ledger.lock().unwrap();
        for d in batch {
            let rcpts = d.rcpts();
            if rcpts.iter().any(|r| r == "chaos@example.com") {
                self.absorb_dsn(&d.data);
                continue;
            }
            let Some(token) = subject_of(&d.data) else {
                self.corrupt.push("message without a subject".into());
                continue;
            };
            let intact = ledger.get(&token).is_some_and(|sent| {
                d.data.len() >= sent.len
                    && digest(&d.data[d.data.len() - sent.len..]) == sent.digest
            });
            if !intact {
                self.corrupt.push(token.clone());
                continue;
            }
            for r in rcpts {
                *self.copies.entry((token.clone(), r)).or_default() += 1;
            }
        }
    }

    fn absorb_dsn(&mut self, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let valid = text.contains("multipart/report")
            && text.contains("report-type=delivery-status")
            && text.contains("Action: failed")
            && text.contains("Status: 5.");
        let failed: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Final-Recipient: rfc822;"))
            .map(|r| r.trim().to_ascii_lowercase())
            .collect();
        if !valid || failed.is_empty() {
            self.bad_dsn.push(text.chars().take(300).collect());
            return;
        }
        for r in failed {
            let token = r
                .strip_prefix("perm.")
                .or_else(|| r.strip_prefix("temp."))
                .and_then(|r| r.split('@').next())
                .unwrap_or("")
                .to_string();
            *self.bounced.entry((token, r)).or_default() += 1;
        }
    }
}

fn subject_of(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&data[..data.len().min(8192)]);
    let start = text.find("\nSubject: ")? + 10;
    Some(text[start..].split("\r\n").next()?.to_string())
}

#[test]
fn chaos_soak_loses_nothing() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("chaos: {seconds} s, CHAOS_SEED={seed}");
    let rt = common::runtime();
    let mut sink = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    let base_rules = |script: &mut Script| {
        script.rcpt_prefix = vec![("perm.".into(), "550 5.1.1 no such user (chaos)".into())];
    };
    sink.set(base_rules);

    let mut fixture = Fixture::new();
    {
        let c = &mut fixture.config;
        c.delivery.enabled = true;
        c.delivery.retry = vec![
            Duration::from_millis(300).into(),
            Duration::from_secs(1).into(),
            Duration::from_secs(2).into(),
        ];
        c.delivery.probe_interval = Duration::from_millis(500);
        c.delivery.down_after_failures = 2;
        c.delivery.connect_timeout = Duration::from_secs(2);
        c.delivery.command_timeout = Duration::from_secs(5);
        c.delivery.data_timeout = Duration::from_secs(4);
        c.smtp.shutdown_grace = Duration::from_secs(5);
        c.smtp.max_connections_per_ip = 200;
        c.domains[0].upstream = sink.addr.to_string();
        c.domains[0].tls = UpstreamTls::None;
    }
    rotate_certificate(&fixture.config.smtp.tls_cert, &fixture.config.smtp.tls_key);
    let config_path = fixture.write_config();
    let token = {
        let out = std::process::Command::new(server_binary())
            .args(["--config"])
            .arg(&config_path)
            .args(["token", "create", "--name", "chaos", "--role", "admin"])
            .output()
            .expect("token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };

    let shared = Arc::new(Shared {
        addr: Mutex::new("127.0.0.1:9".parse().unwrap()),
        cert: fixture.config.smtp.tls_cert.clone(),
        stop: AtomicBool::new(false),
        ledger: Arc::default(),
        sent: AtomicUsize::new(0),
    });
    let mut target = Target {
        server: None,
        config_path: config_path.clone(),
        token,
    };
    target.start(&shared);
    // A static route's upstream is named by its configured host list.
    let upstream = sink.addr.to_string();

    let modes = [Mode::Pipelined, Mode::StartTls, Mode::Bdat];
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let shared = shared.clone();
            let mode = modes[i % 3];
            let seed = seed.wrapping_add(i as u64 * 7919) | 1;
            std::thread::spawn(move || client(i, mode, shared, seed))
        })
        .collect();

    // The chaos monkey.
    let mut rng = Rng(seed);
    let mut received = Received::default();
    let mut events: HashMap<&str, usize> = HashMap::new();
    let started = Instant::now();
    // Events are dealt from a shuffled deck, so even a short run sees each.
    let mut deck: Vec<u64> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
        received.absorb(
            std::mem::take(&mut *sink.received.lock().unwrap()),
            &shared.ledger,
        );
        if deck.is_empty() {
            deck = (0..9).collect();
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let event = match deck.pop().unwrap() {
            0 => {
                target.server.take().unwrap().kill9();
                target.start(&shared);
                "kill -9"
            }
            1 => {
                let server = target.server.take().unwrap();
                server.terminate(Duration::from_secs(20));
                target.start(&shared);
                "sigterm"
            }
            2 => {
                sink.stop();
                std::thread::sleep(Duration::from_millis(500 + rng.below(3000)));
                rt.block_on(sink.resume());
                "upstream refuses"
            }
            3 => {
                sink.set(|s| s.drop_mid_data = true);
                std::thread::sleep(Duration::from_millis(500 + rng.below(2000)));
                sink.set(|s| s.drop_mid_data = false);
                "upstream drops mid-DATA"
            }
            4 => {
                let delay = if rng.below(2) == 0 { 1 } else { 6 };
                sink.set(|s| s.data_delay = Duration::from_secs(delay));
                std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
                sink.set(|s| s.data_delay = Duration::ZERO);
                "upstream stalls"
            }
            5 => {
                sink.set(|s| {
                    s.rcpt_prefix
                        .push(("temp.".into(), "451 4.2.1 try later (chaos)".into()))
                });
                std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
                sink.set(base_rules);
                "upstream tempfails"
            }
            6 => {
                let hold = target.api("POST", &format!("/api/v1/upstreams/{upstream}/hold"));
                std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
                let release = target.api("POST", &format!("/api/v1/upstreams/{upstream}/release"));
                assert!(hold.is_ok() && release.is_ok(), "{hold:?} {release:?}");
                "hold/release"
            }
            7 => {
                rotate_certificate(&fixture.config.smtp.tls_cert, &fixture.config.smtp.tls_key);
                target.server.as_ref().unwrap().signal(libc::SIGHUP);
                "certificate rotated + SIGHUP"
            }
            _ => "quiet",
        };
        *events.entry(event).or_default() += 1;
    }

    // Stop the load, heal everything, let it drain.
    shared.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    sink.set(|s| {
        s.drop_mid_data = false;
        s.data_delay = Duration::ZERO;
    });
    sink.set(base_rules);
    let _ = target.api("POST", &format!("/api/v1/upstreams/{upstream}/release"));
    let drained = wait_for(Duration::from_secs(120), || {
        target
            .api("GET", "/api/v1/queue?limit=1")
            .is_ok_and(|body| !body.contains("\"id\""))
    });
    let left = target.api("GET", "/api/v1/queue?limit=20");
    let server = target.server.take().unwrap();
    assert!(
        drained,
        "spool did not drain; still queued: {left:?}\nlog: {}",
        server.log_text()
    );
    // Give DSN deliveries queued last a moment, then stop cleanly.
    std::thread::sleep(Duration::from_millis(500));
    server.terminate(Duration::from_secs(20));
    received.absorb(
        std::mem::take(&mut *sink.received.lock().unwrap()),
        &shared.ledger,
    );
    let (spool, _) = breakwater::spool::Spool::open(&fixture.config.spool).unwrap();
    assert!(
        spool.is_empty(),
        "spool not empty: {:?}",
        common::block(spool.list()).unwrap()
    );

    // The ledger.
    let ledger = shared.ledger.lock().unwrap();
    let (mut acked, mut refused, mut unknown) = (0, 0, 0);
    // Per message: delivered (every deliverable recipient got a copy),
    // bounced (a permanently refused recipient came back in a DSN), lost
    // (some recipient has neither). Dups are extra copies, per recipient.
    let (mut delivered, mut dup, mut bounced, mut lost) = (0, 0, 0, 0);
    let (mut rcpt_delivered, mut rcpt_bounced) = (0, 0);
    let mut refused_but_delivered = Vec::new();
    let mut lost_examples = Vec::new();
    for (token, sent) in ledger.iter() {
        match sent.outcome {
            Outcome::Acked => acked += 1,
            Outcome::Refused => refused += 1,
            Outcome::Unknown => unknown += 1,
        }
        let (mut got, mut dsn, mut missing) = (false, false, false);
        for r in &sent.recipients {
            let key = (token.clone(), r.to_ascii_lowercase());
            let copies = received.copies.get(&key).copied().unwrap_or(0);
            let dsns = received.bounced.get(&key).copied().unwrap_or(0);
            match sent.outcome {
                Outcome::Acked if r.starts_with("perm.") => {
                    if dsns > 0 && copies == 0 {
                        dsn = true;
                        rcpt_bounced += 1;
                    } else {
                        missing = true;
                        lost_examples.push(format!("{r}: {copies} copies, {dsns} DSNs"));
                    }
                }
                Outcome::Acked => {
                    if copies >= 1 && dsns == 0 {
                        got = true;
                        rcpt_delivered += 1;
                        dup += copies - 1;
                    } else {
                        missing = true;
                        lost_examples.push(format!("{r}: {copies} copies, {dsns} DSNs"));
                    }
                }
                Outcome::Refused if copies > 0 => refused_but_delivered.push(r.clone()),
                _ => {}
            }
        }
        if sent.outcome == Outcome::Acked {
            lost += usize::from(missing);
            delivered += usize::from(got && !missing);
            bounced += usize::from(dsn && !missing);
        }
    }
    let mut events: Vec<_> = events.into_iter().collect();
    events.sort();
    println!("chaos events: {events:?}");
    println!(
        "messages: sent={} acked={acked} refused={refused} unknown(connection broke)={unknown}; corrupt={} bad_dsn={} refused_but_delivered={}",
        ledger.len(),
        received.corrupt.len(),
        received.bad_dsn.len(),
        refused_but_delivered.len()
    );
    println!("recipients: delivered={rcpt_delivered} bounced={rcpt_bounced}; messages delivered = every deliverable recipient has a copy, bounced = a refused recipient came back in a DSN (a message can be both)");
    println!("acked={acked} delivered={delivered} dup={dup} bounced={bounced} lost={lost}");
    assert!(acked >= 50, "too little traffic to mean anything: {acked}");
    assert_eq!(
        lost,
        0,
        "lost: {:?}",
        &lost_examples[..lost_examples.len().min(10)]
    );
    assert!(
        received.corrupt.is_empty(),
        "corrupt: {:?}",
        received.corrupt
    );
    assert!(
        received.bad_dsn.is_empty(),
        "bad DSN: {:?}",
        received.bad_dsn
    );
    assert!(
        refused_but_delivered.is_empty(),
        "refused yet delivered: {refused_but_delivered:?}"
    );
}

//! A ledger of what clients sent and what the server answered, and the
//! check that the spool agrees with it: shared by the `kill -9` test
//! (tests/binary.rs) and the power-loss test (tests/power_loss.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater::config::SpoolConfig;
use breakwater::envelope::QueueId;
use breakwater::spool::Spool;

use super::{queue_id, without_trace_header, RawClient, Rng};

#[derive(Debug, Clone)]
pub enum Outcome {
    Acked(QueueId),
    Rejected(u16),
    /// The connection broke before a reply: the server may or may not have it.
    Unknown,
}

pub struct Sent {
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

pub type Ledger = Arc<Mutex<HashMap<String, Sent>>>;

pub fn message_body(token: &str, size: usize, bad: bool) -> Vec<u8> {
    let mut body =
        format!("Subject: {token}\r\nMessage-ID: <{token}@crash.test>\r\n\r\n").into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 ....\r\n";
    while body.len() < size {
        body.extend_from_slice(line);
    }
    if bad {
        body.extend_from_slice(b"bare\nline\r\n");
    }
    body
}

/// One client: sends messages over reused connections until `stop`,
/// recording what the server answered for each. About one message in ten
/// is above `large_message_threshold` (100 KB in these tests) and one in ten
/// has a bare LF, which the default policy refuses.
pub fn client_loop(
    id: usize,
    addr: Arc<Mutex<std::net::SocketAddr>>,
    stop: Arc<AtomicBool>,
    ledger: Ledger,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let target = *addr.lock().unwrap();
        let Ok(stream) = std::net::TcpStream::connect(target) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut c = RawClient::from_stream(stream);
        let ok = (|| -> std::io::Result<()> {
            if c.try_reply()?.code != 220 {
                return Err(std::io::Error::other("no greeting"));
            }
            c.send(b"EHLO crash.test\r\n");
            c.try_reply()?;
            for _ in 0..20 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                n += 1;
                let token = format!("crash-{id}-{n}");
                let size = match rng.below(10) {
                    0 => 200_000, // above the large-message threshold: own file
                    1..=3 => 20_000,
                    _ => 500 + rng.below(4000) as usize,
                };
                let bad = rng.below(10) == 0;
                let body = message_body(&token, size, bad);
                ledger.lock().unwrap().insert(
                    token.clone(),
                    Sent {
                        body: body.clone(),
                        outcome: Outcome::Unknown,
                    },
                );
                let mut wire =
                    b"MAIL FROM:<load@remote.test>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
                        .to_vec();
                wire.extend_from_slice(&body);
                wire.extend_from_slice(b".\r\n");
                std::io::Write::write_all(&mut c.stream, &wire)?;
                let codes = [
                    c.try_reply()?.code,
                    c.try_reply()?.code,
                    c.try_reply()?.code,
                ];
                if codes != [250, 250, 354] {
                    return Err(std::io::Error::other(format!("unexpected {codes:?}")));
                }
                let reply = c.try_reply()?;
                let outcome = if reply.code == 250 {
                    Outcome::Acked(queue_id(&reply))
                } else {
                    Outcome::Rejected(reply.code)
                };
                ledger.lock().unwrap().get_mut(&token).unwrap().outcome = outcome;
            }
            c.send(b"QUIT\r\n");
            Ok(())
        })();
        if ok.is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `count` client threads running [`client_loop`] against whatever address
/// `addr` holds (the test swaps it at each restart) until `stop`.
pub fn spawn_clients(
    count: usize,
    addr: &Arc<Mutex<std::net::SocketAddr>>,
    stop: &Arc<AtomicBool>,
    ledger: &Ledger,
    seed: u64,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..count)
        .map(|i| {
            let (addr, stop, ledger) = (addr.clone(), stop.clone(), ledger.clone());
            let seed = seed.wrapping_add(i as u64 * 7919) | 1;
            std::thread::spawn(move || client_loop(i, addr, stop, ledger, seed))
        })
        .collect()
}

pub fn token_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.find("Subject: ") {
        Some(start) => text[start + 9..].split("\r\n").next().unwrap().to_string(),
        None => String::from("(no subject)"),
    }
}

/// What the spool holds, compared with the ledger.
#[derive(Debug, Default)]
pub struct Audit {
    pub acked: usize,
    /// Messages in the spool (after its recovery ran).
    pub stored: usize,
    pub index_rebuilt: Option<String>,
    /// Everything that contradicts the ledger, one line each.
    pub problems: Vec<String>,
}

impl Audit {
    pub fn assert_clean(&self) {
        assert!(
            self.problems.is_empty(),
            "{} problem(s):\n{}",
            self.problems.len(),
            self.problems.join("\n")
        );
    }
}

/// Open the spool as the server would at start (recovery included) and check:
/// every 250 is there byte-for-byte; everything there was sent, byte-for-byte,
/// and none of it was refused.
pub fn audit_spool(config: &SpoolConfig, ledger: &HashMap<String, Sent>) -> Audit {
    let mut audit = Audit::default();
    let (spool, report) = match Spool::open(config) {
        Ok(opened) => opened,
        Err(err) => {
            audit.problems.push(format!("spool does not open: {err}"));
            return audit;
        }
    };
    audit.index_rebuilt = report.index_rebuilt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let messages = rt.block_on(spool.list()).expect("list");
    let mut by_id: HashMap<QueueId, Vec<u8>> = HashMap::new();
    for m in &messages {
        match rt.block_on(spool.read_body(m.id)) {
            Ok(body) => {
                by_id.insert(m.id, body);
            }
            Err(err) => audit.problems.push(format!(
                "{} is listed but its body is unreadable: {err}",
                m.id
            )),
        }
    }
    audit.stored = by_id.len();
    for (token, sent) in ledger {
        if let Outcome::Acked(id) = sent.outcome {
            audit.acked += 1;
            match by_id.get(&id) {
                None => audit
                    .problems
                    .push(format!("acknowledged message {token} ({id}) lost")),
                Some(stored) if without_trace_header(stored) != &sent.body[..] => audit
                    .problems
                    .push(format!("acknowledged message {token} ({id}) altered")),
                Some(_) => {}
            }
        }
    }
    for (id, body) in &by_id {
        let body = without_trace_header(body);
        let token = token_of(body);
        match ledger.get(&token) {
            None => audit
                .problems
                .push(format!("spool holds {id} ({token}), which was never sent")),
            Some(sent) if sent.body != body => audit
                .problems
                .push(format!("spool holds {id} ({token}) but not as it was sent")),
            Some(Sent {
                outcome: Outcome::Rejected(code),
                ..
            }) => audit.problems.push(format!(
                "{token} was refused with {code} but is in the spool as {id}"
            )),
            Some(_) => {}
        }
    }
    rt.block_on(spool.close());
    audit
}

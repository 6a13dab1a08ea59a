//! A load generator for `bench/scale.sh`: many messages of mixed sizes to
//! many recipients, which `smtp-source` cannot do (it sends one size to one
//! recipient per run).
//!
//! ```text
//! cargo run --release --example smtp_load -- ADDR MESSAGES [SESSIONS]
//! cargo run --release --example smtp_load -- --bytes MESSAGES
//! ```
//!
//! `--bytes` prints how many bytes of message content a run of MESSAGES
//! sends (the end-of-data dot not counted), to compare the spool's size with.
//!
//! Message `i` goes to `heavy@example.com` when `i % 50 == 0` (20,000 of a
//! million), else to one of `user0..user9999@example.com`. Sizes: 90 % of
//! 2–8 KiB, 9 % of 8–50 KiB, 1 % of 50–100 KiB (a mean near 8 KiB, so a
//! million fit on the bench disk). Each session sends up to 100 messages per
//! connection. Prints the acceptance rate of every 5 % of the run, then the
//! total; exits non-zero if any message was refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PER_CONNECTION: usize = 100;

fn recipient(i: usize) -> String {
    if i.is_multiple_of(50) {
        "heavy@example.com".to_string()
    } else {
        format!("user{}@example.com", (i * 7919) % 10_000)
    }
}

fn size(i: usize) -> usize {
    let roll = (i * 2_654_435_761) % 1000;
    let spread = (i * 40_503) % 1000;
    match roll {
        0..=899 => 2048 + spread * 6 * 1024 / 1000,
        900..=989 => 8192 + spread * 42 * 1024 / 1000,
        _ => 51_200 + spread * 50 * 1024 / 1000,
    }
}

fn message(i: usize) -> Vec<u8> {
    let mut out = format!(
        "From: <load@bench.test>\r\nTo: <{}>\r\nSubject: load message {i} 負荷試験\r\nMessage-ID: <{i}@bench.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        recipient(i)
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while out.len() < size(i) {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

async fn reply(reader: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<u16> {
    loop {
        line.clear();
        if reader.read_line(line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

async fn expect(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    send: &[u8],
    want: u16,
) -> std::io::Result<bool> {
    if !send.is_empty() {
        reader.get_mut().write_all(send).await?;
    }
    let code = reply(reader, line).await?;
    if code != want {
        eprintln!(
            "unexpected reply {:?} to {:?}",
            line.trim_end(),
            String::from_utf8_lossy(&send[..send.len().min(40)])
        );
    }
    Ok(code == want)
}

async fn session(
    addr: String,
    next: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    total: usize,
) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        if next.load(Ordering::Relaxed) >= total {
            return Ok(());
        }
        let mut reader = BufReader::new(TcpStream::connect(&addr).await?);
        expect(&mut reader, &mut line, b"", 220).await?;
        expect(&mut reader, &mut line, b"EHLO load.bench.test\r\n", 250).await?;
        for _ in 0..PER_CONNECTION {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                break;
            }
            let envelope = format!(
                "MAIL FROM:<load@bench.test>\r\nRCPT TO:<{}>\r\nDATA\r\n",
                recipient(i)
            );
            // Not pipelined: one command, one reply (as smtp-source does).
            let mut ok = true;
            for (command, want) in envelope.split_inclusive("\r\n").zip([250, 250, 354]) {
                ok &= expect(&mut reader, &mut line, command.as_bytes(), want).await?;
            }
            ok = ok && expect(&mut reader, &mut line, &message(i), 250).await?;
            if ok {
                done.fetch_add(1, Ordering::Relaxed);
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
                expect(&mut reader, &mut line, b"RSET\r\n", 250).await?;
            }
        }
        expect(&mut reader, &mut line, b"QUIT\r\n", 221).await?;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--bytes") {
        let total: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let bytes: usize = (0..total).map(|i| message(i).len() - 3).sum();
        println!("{bytes}");
        return;
    }
    let (Some(addr), Some(total)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: smtp_load ADDR MESSAGES [SESSIONS]");
        std::process::exit(2);
    };
    let sessions: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(40);
    let (next, done, refused) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            tokio::spawn(session(
                addr.clone(),
                next.clone(),
                done.clone(),
                refused.clone(),
                total,
            ))
        })
        .collect();
    let step = (total / 20).max(1);
    let (mut mark, mut mark_at) = (0, Instant::now());
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now_done = done.load(Ordering::Relaxed);
        if now_done >= mark + step {
            let rate = (now_done - mark) as f64 / mark_at.elapsed().as_secs_f64();
            println!("progress {now_done} rate {rate:.0}");
            (mark, mark_at) = (now_done, Instant::now());
        }
    }
    for task in tasks {
        if let Ok(Err(err)) = task.await {
            eprintln!("session failed: {err}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (done, refused) = (
        done.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "total {done} refused {refused} seconds {elapsed:.1} rate {:.0}",
        done as f64 / elapsed
    );
    if refused > 0 || done < total {
        std::process::exit(1);
    }
}

//! The session state machine as a client sees it: the input is everything a
//! client sends on one connection (any mix of commands, pipelining, DATA,
//! BDAT chunks, STARTTLS, garbage), written to the real server over
//! loopback. The server must answer with well-formed replies, close the
//! connection once the client has gone, and never panic (a panic in any
//! session task aborts the process, which libFuzzer reports).
#![no_main]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use breakwater::config::Config;
use breakwater::server::Server;
use libfuzzer_sys::fuzz_target;

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            std::process::abort();
        }));
        let dir = std::env::temp_dir().join(format!("breakwater-fuzz-session-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let text = format!(
            r#"
hostname = "mx.fuzz.test"
[smtp]
listen = ["127.0.0.1:0"]
tls_cert = "{d}/cert.pem"
tls_key = "{d}/key.pem"
max_message_size = 100000
max_recipients = 5
command_timeout = "5s"
data_timeout = "5s"
[spool]
dir = "{d}/spool"
min_free = 0
[delivery]
enabled = false
[trust]
authenticate = false
[admin]
listen = "127.0.0.1:0"
tokens_file = "{d}/tokens.json"
cli_token_file = "{d}/admin.token"
audit_log = "{d}/audit.log"
[web]
listen = "127.0.0.1:0"
users_file = "{d}/users.json"
[callout]
cache_file = "{d}/callout.tsv"
[drill]
reports_dir = "{d}/drills"
[[domain]]
name = "example.com"
upstream = "127.0.0.1:9"
"#
        );
        let config = Config::parse(&text, std::path::Path::new("fuzz.toml")).expect("config");
        let runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ));
        let server = runtime.block_on(Server::start(config)).expect("server");
        let addr = server.smtp_addrs[0];
        Box::leak(Box::new(server));
        addr
    })
}

fuzz_target!(|data: &[u8]| {
    let mut stream = std::net::TcpStream::connect(server()).expect("server accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close early (too many errors); the rest is then unsent.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut replies = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => replies.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            // libFuzzer's timeout alarm (SIGALRM) interrupts blocking reads.
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => panic!("session still open 10 s after the client left: {err}"),
        }
    }
    // After STARTTLS the rest is TLS records, not reply lines.
    let plain = before_tls(&replies);
    for line in plain.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "reply line without CRLF: {line:?}");
        assert!(
            line.len() >= 5
                && line[..3].iter().all(u8::is_ascii_digit)
                && (b'2'..=b'5').contains(&line[0])
                && (line[3] == b' ' || line[3] == b'-'),
            "malformed reply line: {:?}",
            String::from_utf8_lossy(line)
        );
    }
});

/// Replies up to and including "220 2.0.0 Ready to start TLS" (later
/// bytes belong to the handshake).
fn before_tls(replies: &[u8]) -> &[u8] {
    let marker = b"Ready to start TLS\r\n";
    match replies.windows(marker.len()).position(|w| w == marker) {
        Some(at) => &replies[..at + marker.len()],
        None => replies,
    }
}

//! A loopback webhook receiver for alert tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wait_for;

use serde_json::Value;

/// Webhook bodies received, with their arrival time.
pub type Received = Arc<Mutex<Vec<(Instant, Value)>>>;

/// A loopback HTTP server that records each POST body with its arrival time.
pub fn webhook_receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            if let Ok(value) = serde_json::from_slice(&body) {
                store.lock().unwrap().push((Instant::now(), value));
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

/// Wait up to `limit` for a notice of `event`; fail showing what came.
pub fn wait_for_event(got: &Received, event: &str, limit: Duration) {
    assert!(
        wait_for(limit, || events(got).iter().any(|e| e == event)),
        "no {event} notice: {:?}",
        events(got)
    );
}

pub fn events(got: &Received) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// An `[[alert]]` webhook target for `url`.
pub fn webhook_target(
    url: &str,
    format: breakwater::config::WebhookFormat,
) -> breakwater::config::AlertTarget {
    breakwater::config::AlertTarget {
        kind: breakwater::config::AlertKind::Webhook,
        url: Some(url.to_string()),
        format,
        to: None,
        route: None,
    }
}

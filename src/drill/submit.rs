//! A minimal SMTP submission for the messages Breakwater writes itself
//! (mail alerts through their relay, the drill's probe through our own
//! listener): no pipelining, no TLS, no AUTH; the text is dot-stuffed here.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::check::read_reply;

/// Send `message` (CRLF lines) from `from` to `to`; returns the lines of
/// the final 250 reply (where the queue ID is).
pub async fn submit(
    addr: SocketAddr,
    helo: &str,
    from: &str,
    to: &str,
    message: &str,
    limit: Duration,
) -> Result<Vec<String>, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let expect = |code: u16| {
            move |(got, lines): (u16, Vec<String>)| {
                if got == code {
                    Ok(lines)
                } else {
                    Err(format!("expected {code}, got {got} {}", lines.join(" ")))
                }
            }
        };
        read_reply(&mut reader).await.and_then(expect(220))?;
        for (command, code) in [
            (format!("EHLO {helo}\r\n"), 250),
            (format!("MAIL FROM:{}\r\n", path(from)?), 250),
            (format!("RCPT TO:{}\r\n", path(to)?), 250),
            ("DATA\r\n".to_string(), 354),
        ] {
            reader
                .get_mut()
                .write_all(command.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_reply(&mut reader).await.and_then(expect(code))?;
        }
        let stuffed = message.replace("\r\n.", "\r\n..");
        reader
            .get_mut()
            .write_all(format!("{stuffed}.\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let lines = read_reply(&mut reader).await.and_then(expect(250))?;
        let _ = reader.get_mut().write_all(b"QUIT\r\n").await;
        Ok(lines)
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| {
        format!(
            "{addr} did not answer within {}",
            humantime::format_duration(limit)
        )
    })?
}

fn path(address: &str) -> Result<String, String> {
    crate::address::path(address).map_err(|e| format!("{address:?}: {e}"))
}

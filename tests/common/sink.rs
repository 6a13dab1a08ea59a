//! A scriptable upstream SMTP server for delivery tests: per-recipient
//! replies, DATA/BDAT, STARTTLS with a test certificate, REQUIRETLS, and
//! faults (refuse connections, drop mid-DATA, stall).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Delivered {
    pub mail_line: String,
    pub rcpt_lines: Vec<String>,
    /// Empty when the script does not keep data (`keep_data`).
    pub data: Vec<u8>,
    pub data_len: usize,
    pub data_crc: u32,
    pub bdat: bool,
    pub tls: bool,
    /// The client's RCPT commands had already arrived when its MAIL was
    /// read (RFC 2920 pipelining).
    pub pipelined: bool,
    /// The user the session authenticated as (`Script::auth`).
    pub authenticated: Option<String>,
}

/// The transaction being received in one session.
#[derive(Default)]
struct Txn {
    mail_line: String,
    rcpt_lines: Vec<String>,
    pipelined: bool,
    authenticated: Option<String>,
}

impl Delivered {
    pub fn rcpts(&self) -> Vec<String> {
        self.rcpt_lines
            .iter()
            .map(|l| {
                l.split('<')
                    .nth(1)
                    .and_then(|r| r.split('>').next())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct Script {
    /// Lower-cased recipient → reply line for RCPT (default 250).
    pub rcpt: HashMap<String, String>,
    /// Recipients starting with a prefix → reply line (after `rcpt`).
    pub rcpt_prefix: Vec<(String, String)>,
    pub data_reply: String,
    pub chunking: bool,
    pub requiretls: bool,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Close the connection after reading part of the message data.
    pub drop_mid_data: bool,
    /// Wait this long before answering the end of data.
    pub data_delay: Duration,
    /// How many messages have reached the end of data (counted before
    /// `data_delay`): a test can act while an attempt is in flight.
    pub data_started: Arc<std::sync::atomic::AtomicUsize>,
    /// The data of every message that reached the end of data, in order
    /// (with `data_started`): tells a test *which* message is in flight.
    pub data_seen: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Go silent: every session (open ones at their next command, new ones
    /// at the banner) stops answering for good while its TCP connection
    /// stays open, as an upstream that hangs in an outage.
    pub stall: bool,
    /// Keep each message's data (else only its length and CRC-32, for
    /// tests that move gigabytes).
    pub keep_data: bool,
    /// A smart host: AUTH PLAIN offered after STARTTLS, this (user,
    /// password) required before MAIL.
    pub auth: Option<(String, String)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            rcpt: HashMap::new(),
            rcpt_prefix: Vec::new(),
            data_reply: "250 2.0.0 Ok: queued".into(),
            chunking: true,
            requiretls: false,
            tls: None,
            drop_mid_data: false,
            data_delay: Duration::ZERO,
            data_started: Arc::default(),
            data_seen: Arc::default(),
            stall: false,
            keep_data: true,
            auth: None,
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Delivered>>>,
    pub script: Arc<Mutex<Script>>,
    pub connections: Arc<Mutex<usize>>,
    /// Tells the accept loop to close its listener, and hears that it has.
    serving: Option<(watch::Sender<bool>, std::sync::mpsc::Receiver<()>)>,
    /// While stopped: a socket bound to `addr` but not listening, so
    /// connections are refused *and* the port cannot be handed to another
    /// test's `bind(0)` (which once took it, and the "refused" upstream's
    /// mail went to a stranger's sink).
    reserved: Option<TcpSocket>,
}

impl Sink {
    pub async fn start(bind: &str, script: Script) -> Sink {
        let listener = TcpListener::bind(bind).await.expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let mut sink = Sink {
            addr,
            received: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            connections: Arc::default(),
            serving: None,
            reserved: None,
        };
        sink.serve(listener);
        sink
    }

    fn serve(&mut self, listener: TcpListener) {
        let (received, script, connections) = (
            self.received.clone(),
            self.script.clone(),
            self.connections.clone(),
        );
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop_rx.changed() => break,
                };
                let Ok((stream, _)) = accepted else { break };
                *connections.lock().unwrap() += 1;
                let (received, script) = (received.clone(), script.clone());
                tokio::spawn(async move {
                    let _ = session(stream, received, script).await;
                });
            }
            drop(listener);
            let _ = closed_tx.send(());
        });
        self.serving = Some((stop_tx, closed_rx));
    }

    /// Stop listening: connections are refused until `resume`, and the
    /// port stays this sink's. Call from outside the runtime (it waits for
    /// the accept loop to close its listener).
    pub fn stop(&mut self) {
        let Some((stop, closed)) = self.serving.take() else {
            return;
        };
        let _ = stop.send(true);
        closed
            .recv_timeout(Duration::from_secs(10))
            .expect("the sink's accept loop closes its listener");
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("socket");
        // Open sessions still hold the port; SO_REUSEADDR lets a
        // non-listening socket share it with them.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(self.addr)
            .expect("keep the sink's port while stopped");
        self.reserved = Some(socket);
    }

    pub async fn resume(&mut self) {
        let listener = match self.reserved.take() {
            Some(socket) => socket.listen(1024).expect("listen again"),
            None => TcpListener::bind(self.addr).await.expect("rebind sink"),
        };
        self.serve(listener);
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.received.lock().unwrap().clone()
    }

    /// Answer RCPT for `address` with `reply` (e.g. "550 5.1.1 no such user").
    pub fn rcpt_reply(&self, address: &str, reply: &str) {
        self.set(|script| {
            script
                .rcpt
                .insert(address.to_ascii_lowercase(), reply.to_string());
        });
    }

    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Without waiting: a sink may be dropped inside the runtime.
        if let Some((stop, _)) = self.serving.take() {
            let _ = stop.send(true);
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn session(
    stream: tokio::net::TcpStream,
    received: Arc<Mutex<Vec<Delivered>>>,
    script: Arc<Mutex<Script>>,
) -> std::io::Result<()> {
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    let mut tls = false;
    if script.lock().unwrap().stall {
        return silent(io).await;
    }
    io.get_mut()
        .write_all(b"220 sink.test ESMTP test sink\r\n")
        .await?;
    let mut txn = Txn::default();
    let mut bdat_data = Vec::new();
    let mut authenticated: Option<String> = None;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let script_now = script.lock().unwrap().clone();
        if script_now.stall {
            return silent(io).await;
        }
        let reply: String = if upper.starts_with("EHLO") {
            let mut caps = vec![
                "250-sink.test",
                "250-PIPELINING",
                "250-SIZE 100000000",
                "250-8BITMIME",
                "250-SMTPUTF8",
                "250-DSN",
                "250-ENHANCEDSTATUSCODES",
            ];
            if script_now.chunking {
                caps.push("250-CHUNKING");
            }
            if script_now.tls.is_some() && !tls {
                caps.push("250-STARTTLS");
            }
            if script_now.requiretls && tls {
                caps.push("250-REQUIRETLS");
            }
            if script_now.auth.is_some() && tls {
                caps.push("250-AUTH PLAIN");
            }
            caps.push("250 HELP");
            caps.join("\r\n") + "\r\n"
        } else if upper.starts_with("STARTTLS") {
            let Some(acceptor) = script_now.tls.clone() else {
                io.get_mut().write_all(b"502 5.5.1 no TLS\r\n").await?;
                continue;
            };
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            let inner = io.into_inner();
            let tls_stream = acceptor.accept(inner).await?;
            io = BufReader::new(Box::new(tls_stream));
            tls = true;
            continue;
        } else if upper.starts_with("AUTH PLAIN") && script_now.auth.is_some() && tls {
            let mut response = line.trim_end()[10..].trim().to_string();
            if response.is_empty() {
                io.get_mut().write_all(b"334 \r\n").await?;
                let mut next = String::new();
                io.read_line(&mut next).await?;
                response = next.trim().to_string();
            }
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(response.as_bytes())
                .unwrap_or_default();
            let fields: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            let (user, password) = script_now.auth.clone().unwrap();
            if fields.len() == 3 && fields[1] == user.as_bytes() && fields[2] == password.as_bytes()
            {
                authenticated = Some(user);
                "235 2.7.0 Authentication successful\r\n".into()
            } else {
                "535 5.7.8 Authentication credentials invalid\r\n".into()
            }
        } else if upper.starts_with("MAIL") && script_now.auth.is_some() && authenticated.is_none()
        {
            "530 5.7.0 Authentication required\r\n".into()
        } else if upper.starts_with("MAIL") {
            txn = Txn {
                mail_line: line.trim_end().to_string(),
                rcpt_lines: Vec::new(),
                pipelined: !io.buffer().is_empty(),
                authenticated: authenticated.clone(),
            };
            bdat_data.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT") {
            let addr = line
                .split('<')
                .nth(1)
                .and_then(|r| r.split('>').next())
                .unwrap_or("")
                .to_ascii_lowercase();
            let reply = script_now
                .rcpt
                .get(&addr)
                .cloned()
                .or_else(|| {
                    script_now
                        .rcpt_prefix
                        .iter()
                        .find(|(prefix, _)| addr.starts_with(prefix.as_str()))
                        .map(|(_, reply)| reply.clone())
                })
                .unwrap_or_else(|| "250 2.1.5 ok".into());
            if reply.starts_with('2') {
                txn.rcpt_lines.push(line.trim_end().to_string());
            }
            reply + "\r\n"
        } else if upper.starts_with("DATA") && txn.rcpt_lines.is_empty() {
            "554 5.5.1 no valid recipients\r\n".into()
        } else if upper.starts_with("DATA") {
            io.get_mut().write_all(b"354 go\r\n").await?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if io.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                if script_now.drop_mid_data && data.len() > 10 {
                    return Ok(());
                }
                // RFC 5321 4.5.2: a leading period is removed (a client
                // that forgot to stuff one loses it, as with a real server).
                let l = if l.starts_with(b".") {
                    l[1..].to_vec()
                } else {
                    l
                };
                data.extend_from_slice(&l);
            }
            finish(&received, &script_now, &txn, data, false, tls).await
        } else if upper.starts_with("BDAT") {
            let mut words = upper.split_whitespace().skip(1);
            let size: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0u8; size];
            if script_now.drop_mid_data {
                let _ = io.read(&mut chunk[..size.min(10)]).await;
                return Ok(());
            }
            io.read_exact(&mut chunk).await?;
            bdat_data.extend_from_slice(&chunk);
            if last && txn.rcpt_lines.is_empty() {
                bdat_data.clear();
                "554 5.5.1 no valid recipients\r\n".into()
            } else if last {
                let data = std::mem::take(&mut bdat_data);
                finish(&received, &script_now, &txn, data, true, tls).await
            } else {
                "250 2.0.0 chunk ok\r\n".into()
            }
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.2 what\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

async fn finish(
    received: &Arc<Mutex<Vec<Delivered>>>,
    script: &Script,
    txn: &Txn,
    data: Vec<u8>,
    bdat: bool,
    tls: bool,
) -> String {
    let (data_len, data_crc) = (data.len(), crc32fast::hash(&data));
    let data = if script.keep_data { data } else { Vec::new() };
    if script.keep_data {
        script.data_seen.lock().unwrap().push(data.clone());
    }
    script
        .data_started
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(script.data_delay).await;
    if script.data_reply.starts_with('2') {
        received.lock().unwrap().push(Delivered {
            mail_line: txn.mail_line.clone(),
            rcpt_lines: txn.rcpt_lines.clone(),
            data,
            data_len,
            data_crc,
            bdat,
            tls,
            pipelined: txn.pipelined,
            authenticated: txn.authenticated.clone(),
        });
    }
    format!("{}\r\n", script.data_reply)
}

/// A TLS acceptor for "localhost" and 127.0.0.1 with its CA PEM written to `ca_path`.
pub fn test_tls(ca_path: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    test_tls_with(ca_path, None)
}

/// Like [`test_tls`], but the handshake fails unless the client presents a
/// certificate issued by the CA in `client_ca_pem` (an Exchange Online
/// connector that identifies the sending gateway by its certificate).
#[allow(dead_code)]
pub fn test_tls_requiring_client_cert(
    ca_path: &std::path::Path,
    client_ca_pem: &str,
) -> tokio_rustls::TlsAcceptor {
    test_tls_with(ca_path, Some(client_ca_pem))
}

fn test_tls_with(
    ca_path: &std::path::Path,
    client_ca_pem: Option<&str>,
) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    std::fs::write(ca_path, cert.cert.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
    };
    let config = builder
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Read and discard until the peer closes; never answer.
async fn silent(mut io: BufReader<Box<dyn Io>>) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while io.read(&mut buf).await? > 0 {}
    Ok(())
}

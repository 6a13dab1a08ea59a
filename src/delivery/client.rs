//! The outbound SMTP client: one transaction per message per upstream, with
//! per-recipient results, built on mail-send's low-level calls (its
//! high-level `send()` stops at the first refused recipient).
//!
//! Connections are pooled per (address, TLS mode) and reused for the next
//! message to the same upstream: with one connection per message the TCP and
//! TLS handshakes dominate the cost of relaying small messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mail_send::SmtpClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use smtp_proto::{
    EhloResponse, Response, EXT_8BIT_MIME, EXT_CHUNKING, EXT_DSN, EXT_REQUIRE_TLS, EXT_SIZE,
    EXT_SMTP_UTF8, EXT_START_TLS,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::route::Target;
use crate::config::{DeliveryConfig, UpstreamTls};
use crate::envelope::{
    DsnRet, Envelope, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS,
};

/// The result for one recipient of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

/// The attempt did not get as far as per-recipient answers.
#[derive(Debug, Clone)]
pub enum SessionFailure {
    /// Could not connect or was not greeted: counts against upstream health.
    Unreachable(String),
    /// Connected, but the session broke or policy (TLS) forbade sending.
    Broken(String),
}

/// A throttling reply ("too many connections/messages", 421) that should slow
/// the whole upstream down rather than just this message.
pub fn is_throttle(reply: &str) -> bool {
    let lower = reply.to_ascii_lowercase();
    reply.starts_with("421")
        || (reply.starts_with("4")
            && (lower.contains("too many")
                || lower.contains("rate limit")
                || lower.contains("throttl")))
}

/// Connections are only reused for the same address and the same TLS demands.
type PoolKey = (SocketAddr, UpstreamTls, bool);

pub struct Transport {
    helo_name: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
    idle: Duration,
    reuse_check_timeout: Duration,
    verified: TlsConnector,
    unverified: TlsConnector,
    pool: Mutex<HashMap<PoolKey, Vec<(Instant, Connection)>>>,
    max_idle_per_target: usize,
}

struct Connection {
    client: SmtpClient<ClientStream>,
    capabilities: u32,
    max_size: usize,
    tls: Option<String>,
}

/// What is being delivered in one transaction.
pub struct Transaction<'a> {
    pub envelope: &'a Envelope,
    /// (index in the envelope, address)
    pub recipients: Vec<(usize, &'a crate::envelope::Recipient)>,
    /// Header fields added in front of the stored message (whole CRLF
    /// lines, none starting with "."), sent before `body` without a copy.
    pub prefix: &'a [u8],
    pub body: &'a [u8],
    pub tls: UpstreamTls,
}

impl Transaction<'_> {
    /// The message's size on the wire (before dot-stuffing), for SIZE= and BDAT.
    pub fn wire_len(&self) -> usize {
        self.prefix.len() + self.body.len()
    }
}

/// What happened in one attempt against one target.
pub struct AttemptReport {
    pub outcomes: Vec<(usize, Outcome)>,
    pub tls: Option<String>,
}

impl Transport {
    pub fn new(config: &DeliveryConfig, helo_name: &str) -> Result<Transport, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(file) = &config.extra_ca_file {
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth();
        Ok(Transport {
            helo_name: helo_name.to_string(),
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            data_timeout: config.data_timeout,
            idle: config.connection_idle,
            reuse_check_timeout: config.connect_timeout.min(Duration::from_secs(10)),
            verified: TlsConnector::from(Arc::new(verified)),
            unverified: TlsConnector::from(Arc::new(unverified)),
            pool: Mutex::new(HashMap::new()),
            max_idle_per_target: config.per_upstream,
        })
    }

    /// Run one transaction against one target, reusing a pooled connection
    /// when there is one.
    pub async fn deliver(
        &self,
        target: &Target,
        tx: &Transaction<'_>,
    ) -> Result<AttemptReport, SessionFailure> {
        let need_verified = tx.tls == UpstreamTls::Required || tx.envelope.requiretls;
        let key = (target.addr, tx.tls, need_verified);
        if let Some(mut connection) = self.take_checked(&key).await {
            match self.transaction(&mut connection, tx).await {
                Ok(outcomes) => {
                    let tls = connection.tls.clone();
                    self.put_idle(key, connection);
                    return Ok(AttemptReport { outcomes, tls });
                }
                // A pooled connection the server has since closed: not the
                // upstream's fault; start over on a fresh one.
                Err(TransactionError::BeforeMail(_)) => {}
                Err(TransactionError::Broken(outcomes)) => {
                    return Ok(AttemptReport {
                        outcomes,
                        tls: connection.tls,
                    });
                }
            }
        }
        let mut connection = self.connect(target, tx.tls, need_verified).await?;
        if tx.envelope.requiretls && connection.capabilities & EXT_REQUIRE_TLS == 0 {
            let reply = format!("5.7.30 REQUIRETLS not supported by {}", target.host);
            return Ok(AttemptReport {
                outcomes: tx
                    .recipients
                    .iter()
                    .map(|(i, _)| (*i, Outcome::Failed(reply.clone())))
                    .collect(),
                tls: connection.tls,
            });
        }
        match self.transaction(&mut connection, tx).await {
            Ok(outcomes) => {
                let tls = connection.tls.clone();
                self.put_idle(key, connection);
                Ok(AttemptReport { outcomes, tls })
            }
            Err(TransactionError::BeforeMail(why)) => Err(SessionFailure::Broken(why)),
            Err(TransactionError::Broken(outcomes)) => Ok(AttemptReport {
                outcomes,
                tls: connection.tls,
            }),
        }
    }

    /// Connect + EHLO (+ STARTTLS) + QUIT: is the upstream taking connections?
    pub async fn probe(&self, target: &Target, tls: UpstreamTls) -> Result<(), SessionFailure> {
        let connection = self
            .connect(target, tls, tls == UpstreamTls::Required)
            .await?;
        let mut client = connection.client;
        let _ = tokio::time::timeout(Duration::from_secs(5), client.cmd(b"QUIT\r\n")).await;
        Ok(())
    }

    async fn connect(
        &self,
        target: &Target,
        tls: UpstreamTls,
        need_verified: bool,
    ) -> Result<Connection, SessionFailure> {
        let unreachable = |why: String| {
            SessionFailure::Unreachable(format!("{}[{}]: {why}", target.host, target.addr))
        };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target.addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut client = SmtpClient {
            stream: ClientStream::Plain(tcp),
            timeout: self.command_timeout,
        };
        let greeting = client
            .read()
            .await
            .map_err(|e| unreachable(format!("greeting: {e}")))?;
        if greeting.code != 220 {
            return Err(unreachable(format!("greeting: {}", reply_text(&greeting))));
        }
        let broken = |why: String| {
            SessionFailure::Broken(format!("{}[{}]: {why}", target.host, target.addr))
        };
        let mut ehlo = client
            .ehlo(&self.helo_name)
            .await
            .map_err(|e| broken(format!("EHLO: {e}")))?;
        let mut tls_info = None;
        let offers_tls = ehlo.has_capability(EXT_START_TLS);
        if tls != UpstreamTls::None && offers_tls {
            let reply = client
                .cmd(b"STARTTLS\r\n")
                .await
                .map_err(|e| broken(format!("STARTTLS: {e}")))?;
            if reply.code != 220 {
                if need_verified {
                    return Err(broken(format!("STARTTLS refused: {}", reply_text(&reply))));
                }
            } else {
                let ClientStream::Plain(tcp) = client.stream else {
                    unreachable!("a fresh connection is plain");
                };
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| broken(format!("TLS name: {e}")))?;
                let connector = if need_verified {
                    &self.verified
                } else {
                    &self.unverified
                };
                let stream =
                    tokio::time::timeout(self.command_timeout, connector.connect(name, tcp))
                        .await
                        .map_err(|_| broken("TLS handshake timed out".into()))?
                        .map_err(|e| broken(format!("TLS handshake: {e}")))?;
                let (_, session) = stream.get_ref();
                tls_info = Some(format!(
                    "{} {}{}",
                    session
                        .protocol_version()
                        .and_then(|v| v.as_str())
                        .unwrap_or("TLS"),
                    session
                        .negotiated_cipher_suite()
                        .and_then(|c| c.suite().as_str())
                        .unwrap_or("?"),
                    if need_verified {
                        " verified"
                    } else {
                        " unverified"
                    }
                ));
                client = SmtpClient {
                    stream: ClientStream::Tls(Box::new(stream)),
                    timeout: self.command_timeout,
                };
                ehlo = client
                    .ehlo(&self.helo_name)
                    .await
                    .map_err(|e| broken(format!("EHLO after STARTTLS: {e}")))?;
            }
        }
        if need_verified && tls_info.is_none() {
            // Never fall back to cleartext when TLS is required.
            return Err(broken("4.7.5 TLS required but STARTTLS not offered".into()));
        }
        Ok(Connection {
            capabilities: ehlo.capabilities,
            max_size: ehlo_size(&ehlo),
            client,
            tls: tls_info,
        })
    }

    async fn transaction(
        &self,
        connection: &mut Connection,
        tx: &Transaction<'_>,
    ) -> Result<Vec<(usize, Outcome)>, TransactionError> {
        let caps = connection.capabilities;
        let client = &mut connection.client;
        let env = tx.envelope;
        let all_deferred = |why: &str| {
            tx.recipients
                .iter()
                .map(|(i, _)| (*i, Outcome::Deferred(why.to_string())))
                .collect::<Vec<_>>()
        };

        if caps & EXT_SIZE != 0 && connection.max_size > 0 && tx.wire_len() > connection.max_size {
            let why = format!(
                "5.3.4 message size {} exceeds upstream limit {}",
                tx.wire_len(),
                connection.max_size
            );
            return Ok(tx
                .recipients
                .iter()
                .map(|(i, _)| (*i, Outcome::Failed(why.clone())))
                .collect());
        }
        let non_ascii =
            !env.sender.is_ascii() || tx.recipients.iter().any(|(_, r)| !r.address.is_ascii());
        if non_ascii && caps & EXT_SMTP_UTF8 == 0 {
            let why =
                "5.6.7 upstream does not support SMTPUTF8 for non-ASCII addresses".to_string();
            return Ok(tx
                .recipients
                .iter()
                .map(|(i, _)| (*i, Outcome::Failed(why.clone())))
                .collect());
        }

        // Addresses go on the wire only through `address::path`: a quoted local
        // part stays quoted, and one that cannot be represented is not sent.
        let reverse_path = match crate::address::path(&env.sender) {
            Ok(path) => path,
            Err(why) => {
                let why = format!("5.1.7 sender address cannot be relayed: {why}");
                return Ok(tx
                    .recipients
                    .iter()
                    .map(|(i, _)| (*i, Outcome::Failed(why.clone())))
                    .collect());
            }
        };
        let mut mail = format!("MAIL FROM:{reverse_path}");
        if caps & EXT_SIZE != 0 {
            mail.push_str(&format!(" SIZE={}", tx.wire_len()));
        }
        if env.body_8bitmime && caps & EXT_8BIT_MIME != 0 {
            mail.push_str(" BODY=8BITMIME");
        }
        if non_ascii {
            mail.push_str(" SMTPUTF8");
        }
        if env.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        if caps & EXT_DSN != 0 {
            match env.dsn_ret {
                Some(DsnRet::Full) => mail.push_str(" RET=FULL"),
                Some(DsnRet::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &env.dsn_envid {
                mail.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        mail.push_str("\r\n");
        let reply = client
            .cmd(mail.as_bytes())
            .await
            .map_err(|e| TransactionError::BeforeMail(format!("MAIL FROM: {e}")))?;
        if !(200..300).contains(&reply.code) {
            let text = reply_text(&reply);
            let _ = client.cmd(b"RSET\r\n").await;
            return Ok(tx
                .recipients
                .iter()
                .map(|(i, _)| (*i, classify(reply.code, &text)))
                .collect());
        }

        let mut outcomes = Vec::with_capacity(tx.recipients.len());
        let mut accepted = Vec::new();
        for (index, rcpt) in &tx.recipients {
            let forward_path = match crate::address::path(&rcpt.address) {
                Ok(path) => path,
                Err(why) => {
                    let why = format!("5.1.3 recipient address cannot be relayed: {why}");
                    outcomes.push((*index, Outcome::Failed(why)));
                    continue;
                }
            };
            let mut line = format!("RCPT TO:{forward_path}");
            if caps & EXT_DSN != 0 {
                if rcpt.notify != 0 {
                    let mut words = Vec::new();
                    if rcpt.notify & NOTIFY_NEVER != 0 {
                        words.push("NEVER");
                    } else {
                        for (flag, word) in [
                            (NOTIFY_SUCCESS, "SUCCESS"),
                            (NOTIFY_FAILURE, "FAILURE"),
                            (NOTIFY_DELAY, "DELAY"),
                        ] {
                            if rcpt.notify & flag != 0 {
                                words.push(word);
                            }
                        }
                    }
                    line.push_str(&format!(" NOTIFY={}", words.join(",")));
                }
                if let Some(orcpt) = &rcpt.orcpt {
                    if let Some((kind, addr)) = orcpt.split_once(';') {
                        line.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
                    }
                }
            }
            line.push_str("\r\n");
            match client.cmd(line.as_bytes()).await {
                Ok(reply) if (200..300).contains(&reply.code) => accepted.push(*index),
                Ok(reply) => outcomes.push((*index, classify(reply.code, &reply_text(&reply)))),
                Err(e) => {
                    let why = format!("4.4.2 connection lost at RCPT: {e}");
                    return Err(TransactionError::Broken(all_deferred(&why)));
                }
            }
        }
        if accepted.is_empty() {
            let _ = client.cmd(b"RSET\r\n").await;
            return Ok(outcomes);
        }

        let final_reply = if caps & EXT_CHUNKING != 0 {
            tokio::time::timeout(self.data_timeout, async {
                client
                    .stream
                    .write_all(format!("BDAT {} LAST\r\n", tx.wire_len()).as_bytes())
                    .await?;
                client.stream.write_all(tx.prefix).await?;
                client.stream.write_all(tx.body).await?;
                client.stream.flush().await?;
                client
                    .read()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
            .await
        } else {
            tokio::time::timeout(self.data_timeout, async {
                let go = client
                    .cmd(b"DATA\r\n")
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                if go.code != 354 {
                    return Ok(go);
                }
                // write_message appends CRLF.CRLF itself; the spooled message
                // already ends with CRLF, so strip it to deliver the exact bytes.
                let body = tx.body.strip_suffix(b"\r\n").unwrap_or(tx.body);
                client.stream.write_all(tx.prefix).await?;
                // write_message stuffs a dot only after a line break, so the
                // body's first line (after the prefix's CRLF, or the start of
                // the data) gets its stuffing dot here.
                if body.first() == Some(&b'.') {
                    client.stream.write_all(b".").await?;
                }
                client.write_message(body).await?;
                client
                    .read()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
            .await
        };
        let reply = match final_reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                let why = format!("4.4.2 connection lost during data: {e}");
                outcomes.extend(
                    accepted
                        .iter()
                        .map(|i| (*i, Outcome::Deferred(why.clone()))),
                );
                return Err(TransactionError::Broken(outcomes));
            }
            Err(_) => {
                let why = "4.4.2 timeout during data".to_string();
                outcomes.extend(
                    accepted
                        .iter()
                        .map(|i| (*i, Outcome::Deferred(why.clone()))),
                );
                return Err(TransactionError::Broken(outcomes));
            }
        };
        let text = reply_text(&reply);
        let outcome = if (200..300).contains(&reply.code) {
            Outcome::Delivered(text)
        } else {
            classify(reply.code, &text)
        };
        outcomes.extend(accepted.into_iter().map(|i| (i, outcome.clone())));
        outcomes.sort_by_key(|(i, _)| *i);
        Ok(outcomes)
    }

    /// A pooled connection that still answers `RSET` within the reuse
    /// check's short timeout (Postfix checks a cached connection the same
    /// way): one that went silent when the upstream did costs seconds, not
    /// `command_timeout`, and is dropped.
    async fn take_checked(&self, key: &PoolKey) -> Option<Connection> {
        while let Some(mut connection) = self.take_idle(key) {
            let answer =
                tokio::time::timeout(self.reuse_check_timeout, connection.client.cmd(b"RSET\r\n"))
                    .await;
            if matches!(answer, Ok(Ok(ref reply)) if reply.code == 250) {
                return Some(connection);
            }
            tracing::info!(target = %key.0, "delivery: pooled connection did not answer RSET; dropped");
        }
        None
    }

    /// Forget every pooled connection (the upstream was declared down or
    /// came back: connections from before are not to be trusted).
    pub fn clear_pool(&self) {
        self.pool.lock().expect("pool lock").clear();
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Connection> {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.get_mut(key)?;
        while let Some((since, connection)) = idle.pop() {
            if since.elapsed() < self.idle {
                return Some(connection);
            }
        }
        None
    }

    fn put_idle(&self, key: PoolKey, connection: Connection) {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.entry(key).or_default();
        idle.retain(|(since, _)| since.elapsed() < self.idle);
        if idle.len() < self.max_idle_per_target {
            idle.push((Instant::now(), connection));
        }
    }
}

enum TransactionError {
    /// Failed before the server saw a transaction (e.g. stale pooled connection).
    BeforeMail(String),
    /// The session broke mid-transaction; outcomes so far plus deferrals.
    Broken(Vec<(usize, Outcome)>),
}

fn classify(code: u16, text: &str) -> Outcome {
    if (500..600).contains(&code) {
        Outcome::Failed(text.to_string())
    } else {
        Outcome::Deferred(text.to_string())
    }
}

fn reply_text(reply: &Response<String>) -> String {
    let message = reply.message.replace('\n', " ");
    if reply.esc[0] != 0 {
        format!(
            "{} {}.{}.{} {}",
            reply.code, reply.esc[0], reply.esc[1], reply.esc[2], message
        )
    } else {
        format!("{} {}", reply.code, message)
    }
}

fn ehlo_size(ehlo: &EhloResponse<String>) -> usize {
    ehlo.size
}

/// RFC 3461 4: xtext encoding for ENVID/ORCPT values.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// Opportunistic TLS (RFC 7435): encrypt, without authenticating the server,
/// but still check the handshake signatures properly.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain or TLS connection behind one type, so one `SmtpClient` type can
/// live in the pool either way.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

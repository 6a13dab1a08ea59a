//! The one outbound SMTP client, for every part of Breakwater that talks
//! SMTP to another server: delivery (through its connection pool), recipient
//! callouts, upstream probes (delivery's circuit and the alert monitor), the
//! deployment self-check, alert mail and the drill's probe message.
//!
//! Why one: connect and command timeouts, the STARTTLS policy (never /
//! opportunistic / verified, never a silent fall back to cleartext when TLS
//! is demanded), the trust roots (webpki plus `[delivery] extra_ca_file`),
//! how addresses go on the wire (`address::path`) and how replies are
//! written in logs were five times written and five times different.
//!
//! Built on mail-send's low-level calls (`SmtpClient::cmd`, `read`, `ehlo`,
//! `write_message`): its high-level `send()` stops at the first refused
//! recipient, and delivery needs an answer per recipient.
//!
//! Shared service: imports `config` (types), `envelope` and `address`, no stage.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mail_send::SmtpClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use smtp_proto::{
    EhloResponse, Response, EXT_8BIT_MIME, EXT_CHUNKING, EXT_DSN, EXT_ENHANCED_STATUS_CODES,
    EXT_PIPELINING, EXT_REQUIRE_TLS, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::envelope::{
    DsnRet, Envelope, Recipient, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS,
};

/// What STARTTLS must achieve before mail may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// Stay in cleartext (tests, a loopback relay).
    Never,
    /// Encrypt when offered, without authenticating the server (RFC 7435);
    /// cleartext when STARTTLS is not offered or refused.
    Opportunistic,
    /// A certificate valid for the host name, or no session at all.
    Verified,
}

/// The connection did not get as far as a transaction.
#[derive(Debug, Clone)]
pub enum SessionFailure {
    /// Could not connect or was not greeted: counts against upstream health.
    Unreachable(String),
    /// Connected, but the session broke or policy (TLS) forbade sending.
    Broken(String),
}

impl std::fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionFailure::Unreachable(why) | SessionFailure::Broken(why) => f.write_str(why),
        }
    }
}

/// The rustls client configurations: one that verifies (webpki roots plus
/// an operator's extra CA file) and one that only encrypts.
pub struct TlsClients {
    verified: TlsConnector,
    unverified: TlsConnector,
}

impl TlsClients {
    /// The verifying TLS client (same roots) for the few non-SMTP fetches
    /// Breakwater makes, e.g. an MTA-STS policy (`mta_sts`).
    pub fn verified_connector(&self) -> TlsConnector {
        self.verified.clone()
    }
}

/// A certificate and key we present when a server asks for one during
/// STARTTLS (Exchange Online's `TlsSenderCertificateName` connectors
/// identify the sending gateway by it).
pub struct ClientIdentity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl TlsClients {
    pub fn new(extra_ca_file: Option<&Path>) -> Result<TlsClients, String> {
        TlsClients::with_identity(extra_ca_file, None)
    }

    /// Delivery's TLS clients: `[delivery] extra_ca_file`, and the client
    /// certificate of `client_cert`/`client_key` when configured.
    pub fn for_delivery(config: &crate::config::DeliveryConfig) -> Result<TlsClients, String> {
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            _ => None,
        };
        TlsClients::with_identity(config.extra_ca_file.as_deref(), identity)
    }

    pub fn with_identity(
        extra_ca_file: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
    ) -> Result<TlsClients, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(file) = extra_ca_file {
            let certs = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        let identity = match identity {
            Some(identity) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_file_iter(identity.cert)
                        .and_then(|certs| certs.collect::<Result<_, _>>())
                        .map_err(|e| format!("{}: {e}", identity.cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "{}: no certificate in the file",
                        identity.cert.display()
                    ));
                }
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(identity.key)
                    .map_err(|e| format!("{}: {e}", identity.key.display()))?;
                Some((chain, key))
            }
            None => None,
        };
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)));
        let (verified, unverified) = match identity {
            Some((chain, key)) => {
                let mismatch = |e: rustls::Error| format!("client certificate and key: {e}");
                (
                    verified
                        .with_client_auth_cert(chain.clone(), key.clone_key())
                        .map_err(mismatch)?,
                    unverified
                        .with_client_auth_cert(chain, key)
                        .map_err(mismatch)?,
                )
            }
            None => (
                verified.with_no_client_auth(),
                unverified.with_no_client_auth(),
            ),
        };
        Ok(TlsClients {
            verified: TlsConnector::from(Arc::new(verified)),
            unverified: TlsConnector::from(Arc::new(unverified)),
        })
    }
}

/// How to open sessions: our EHLO name, the timeouts, the TLS clients.
#[derive(Clone)]
pub struct Dialer {
    helo: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    tls: Arc<TlsClients>,
}

/// An open SMTP session, greeted and past EHLO (and STARTTLS if it was done).
pub struct Session {
    pub client: SmtpClient<ClientStream>,
    pub ehlo: EhloResponse<String>,
    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384 verified", or None in cleartext.
    pub tls: Option<String>,
    /// The name the certificate must carry (and replies name).
    host: String,
    /// "host[address]", for replies and logs.
    peer: String,
}

/// Why STARTTLS did not give an encrypted session.
#[derive(Debug, Clone)]
pub enum StartTlsError {
    NotOffered,
    Refused(String),
    /// The handshake failed (for a verified one: the certificate).
    Handshake(String),
    /// The session broke around it.
    Broken(String),
}

impl std::fmt::Display for StartTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartTlsError::NotOffered => f.write_str("STARTTLS not offered"),
            StartTlsError::Refused(reply) => write!(f, "STARTTLS refused: {reply}"),
            StartTlsError::Handshake(why) => write!(f, "TLS handshake: {why}"),
            StartTlsError::Broken(why) => f.write_str(why),
        }
    }
}

impl Dialer {
    pub fn new(
        helo: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
        tls: Arc<TlsClients>,
    ) -> Dialer {
        Dialer {
            helo: helo.to_string(),
            connect_timeout,
            command_timeout,
            tls,
        }
    }

    /// TCP connect, the 220 greeting and EHLO; no TLS yet. `host` is the
    /// name the certificate must carry (and what replies are tagged with).
    pub async fn connect(&self, host: &str, addr: SocketAddr) -> Result<Session, SessionFailure> {
        let peer = format!("{host}[{addr}]");
        let unreachable = |why: String| SessionFailure::Unreachable(format!("{peer}: {why}"));
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
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
        let ehlo = client
            .ehlo(&self.helo)
            .await
            .map_err(|e| SessionFailure::Broken(format!("{peer}: EHLO: {e}")))?;
        Ok(Session {
            client,
            ehlo,
            tls: None,
            host: host.to_string(),
            peer,
        })
    }

    /// Like [`Dialer::connect`] for a `host` name and port: every address
    /// it resolves to is tried in turn.
    pub async fn connect_named(&self, host: &str, port: u16) -> Result<Session, SessionFailure> {
        let addrs =
            tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| SessionFailure::Unreachable(format!("{host}: name lookup timed out")))?
                .map_err(|e| SessionFailure::Unreachable(format!("{host}: {e}")))?;
        let mut last = SessionFailure::Unreachable(format!("{host}: no address"));
        for addr in addrs {
            match self.connect(host, addr).await {
                Ok(session) => return Ok(session),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// A session that meets `policy`: connect, then STARTTLS as it demands.
    /// A verified policy never ends in cleartext.
    pub async fn open(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: TlsPolicy,
    ) -> Result<Session, SessionFailure> {
        let session = self.connect(host, addr).await?;
        if policy == TlsPolicy::Never {
            return Ok(session);
        }
        let peer = session.peer.clone();
        let broken = |why: String| SessionFailure::Broken(format!("{peer}: {why}"));
        match session.starttls(self, policy == TlsPolicy::Verified).await {
            Ok(session) => Ok(session),
            Err((Some(plain), StartTlsError::NotOffered | StartTlsError::Refused(_)))
                if policy == TlsPolicy::Opportunistic =>
            {
                Ok(plain)
            }
            Err((_, StartTlsError::NotOffered)) => Err(broken(
                // Never fall back to cleartext when TLS is required.
                "4.7.5 TLS required but STARTTLS not offered".into(),
            )),
            Err((_, err)) => Err(broken(err.to_string())),
        }
    }

    /// Connect + EHLO (+ STARTTLS as `policy` demands) + QUIT: is the
    /// server taking connections?
    pub async fn probe(
        &self,
        host: &str,
        addr: SocketAddr,
        policy: TlsPolicy,
    ) -> Result<(), SessionFailure> {
        self.open(host, addr, policy).await?.quit().await;
        Ok(())
    }
}

impl Session {
    /// Does the server offer this extension (`smtp_proto::EXT_*`)?
    pub fn offers(&self, extension: u32) -> bool {
        self.ehlo.has_capability(extension)
    }

    /// The extensions offered, by name (for the self-check's report).
    pub fn extension_names(&self) -> Vec<&'static str> {
        [
            (EXT_START_TLS, "STARTTLS"),
            (EXT_SIZE, "SIZE"),
            (EXT_CHUNKING, "CHUNKING"),
            (EXT_PIPELINING, "PIPELINING"),
            (EXT_8BIT_MIME, "8BITMIME"),
            (EXT_SMTP_UTF8, "SMTPUTF8"),
            (EXT_DSN, "DSN"),
            (EXT_ENHANCED_STATUS_CODES, "ENHANCEDSTATUSCODES"),
            (EXT_REQUIRE_TLS, "REQUIRETLS"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.offers(*bit))
        .map(|(_, name)| name)
        .collect()
    }

    /// The SIZE limit the server announced (0 = none).
    pub fn max_size(&self) -> usize {
        self.ehlo.size
    }

    /// STARTTLS, the handshake (verifying the certificate against the host
    /// name when `verified`) and EHLO again. On failure the session comes
    /// back too when it is still usable in cleartext (not offered, refused).
    pub async fn starttls(
        mut self,
        dialer: &Dialer,
        verified: bool,
    ) -> Result<Session, (Option<Session>, StartTlsError)> {
        if !self.offers(EXT_START_TLS) {
            return Err((Some(self), StartTlsError::NotOffered));
        }
        let reply = match self.client.cmd(b"STARTTLS\r\n").await {
            Ok(reply) => reply,
            Err(e) => return Err((None, StartTlsError::Broken(format!("STARTTLS: {e}")))),
        };
        if reply.code != 220 {
            return Err((Some(self), StartTlsError::Refused(reply_text(&reply))));
        }
        let ClientStream::Plain(tcp) = self.client.stream else {
            return Err((None, StartTlsError::Broken("STARTTLS twice".into())));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| (None, StartTlsError::Handshake(format!("TLS name: {e}"))))?;
        let connector = if verified {
            &dialer.tls.verified
        } else {
            &dialer.tls.unverified
        };
        let stream = tokio::time::timeout(dialer.command_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| (None, StartTlsError::Handshake("timed out".into())))?
            .map_err(|e| (None, StartTlsError::Handshake(e.to_string())))?;
        let (_, tls) = stream.get_ref();
        let description = format!(
            "{} {}{}",
            tls.protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS"),
            tls.negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("?"),
            if verified { " verified" } else { " unverified" }
        );
        let mut client = SmtpClient {
            stream: ClientStream::Tls(Box::new(stream)),
            timeout: dialer.command_timeout,
        };
        let ehlo = client.ehlo(&dialer.helo).await.map_err(|e| {
            (
                None,
                StartTlsError::Broken(format!("EHLO after STARTTLS: {e}")),
            )
        })?;
        Ok(Session {
            client,
            ehlo,
            tls: Some(description),
            host: self.host,
            peer: self.peer,
        })
    }

    /// Days until the server's certificate expires (None in cleartext or
    /// when it cannot be read).
    pub fn certificate_days_left(&self) -> Option<i64> {
        let ClientStream::Tls(stream) = &self.client.stream else {
            return None;
        };
        let der = stream.get_ref().1.peer_certificates()?.first()?;
        let params = rcgen::CertificateParams::from_ca_cert_der(der).ok()?;
        Some((params.not_after - time::OffsetDateTime::now_utc()).whole_days())
    }

    /// One command; the reply, or why there was none.
    pub async fn command(&mut self, line: &str) -> Result<Response<String>, String> {
        self.client
            .cmd(line.as_bytes())
            .await
            .map_err(|e| e.to_string())
    }

    /// SMTP AUTH (RFC 4954) with the strongest mechanism both sides know
    /// (mail-send picks it from the EHLO reply). Only over TLS: a password
    /// never goes out in cleartext.
    pub async fn authenticate(&mut self, username: &str, password: &str) -> Result<(), String> {
        if self.tls.is_none() {
            return Err(format!(
                "{}: 5.7.11 not sending a password over a connection without TLS",
                self.peer
            ));
        }
        let credentials = mail_send::Credentials::new(username, password);
        self.client
            .authenticate(&credentials, &self.ehlo)
            .await
            .map(|_| ())
            .map_err(|e| format!("{}: AUTH as {username}: {e}", self.peer))
    }

    /// Say goodbye, briefly: a server that does not answer QUIT costs 5 s.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.cmd(b"QUIT\r\n")).await;
    }

    /// Run one mail transaction: MAIL (with SIZE, BODY, SMTPUTF8,
    /// REQUIRETLS and DSN parameters as the envelope and the server allow),
    /// one RCPT per recipient, then BDAT (when offered) or DATA. Returns one
    /// answer per recipient, by its index in `tx.recipients`.
    pub async fn transaction(
        &mut self,
        tx: &Transaction<'_>,
        data_timeout: Duration,
    ) -> Result<Vec<(usize, Reply)>, TransactionError> {
        let caps = self.ehlo.capabilities;
        let max_size = self.ehlo.size;
        let client = &mut self.client;
        let env = tx.envelope;
        let every = |reply: Reply| {
            tx.recipients
                .iter()
                .map(|(i, _)| (*i, reply.clone()))
                .collect::<Vec<_>>()
        };

        if caps & EXT_SIZE != 0 && max_size > 0 && tx.wire_len() > max_size {
            let why = format!(
                "5.3.4 message size {} exceeds upstream limit {max_size}",
                tx.wire_len()
            );
            return Ok(every(Reply::Permanent(why)));
        }
        let non_ascii =
            !env.sender.is_ascii() || tx.recipients.iter().any(|(_, r)| !r.address.is_ascii());
        if non_ascii && caps & EXT_SMTP_UTF8 == 0 {
            let why = "5.6.7 upstream does not support SMTPUTF8 for non-ASCII addresses";
            return Ok(every(Reply::Permanent(why.into())));
        }
        if env.requiretls && (self.tls.is_none() || caps & EXT_REQUIRE_TLS == 0) {
            let why = format!("5.7.30 REQUIRETLS not supported by {}", self.host);
            return Ok(every(Reply::Permanent(why)));
        }

        // Addresses go on the wire only through `address::path`: a quoted local
        // part stays quoted, and one that cannot be represented is not sent.
        let reverse_path = match crate::address::path(&env.sender) {
            Ok(path) => path,
            Err(why) => {
                let why = format!("5.1.7 sender address cannot be relayed: {why}");
                return Ok(every(Reply::Permanent(why)));
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

        let mut answers = Vec::with_capacity(tx.recipients.len());
        let mut rcpt_lines = Vec::with_capacity(tx.recipients.len());
        for (index, rcpt) in &tx.recipients {
            match crate::address::path(&rcpt.address) {
                Ok(forward_path) => {
                    let mut line = format!("RCPT TO:{forward_path}");
                    if caps & EXT_DSN != 0 {
                        push_dsn_parameters(&mut line, rcpt);
                    }
                    line.push_str("\r\n");
                    rcpt_lines.push((*index, line));
                }
                Err(why) => {
                    let why = format!("5.1.3 recipient address cannot be relayed: {why}");
                    answers.push((*index, Reply::Permanent(why)));
                }
            }
        }

        // RFC 2920: with PIPELINING, MAIL and every RCPT go out in one
        // write, followed by DATA, or by a small message's whole BDAT
        // (RFC 3030 allows BDAT in a pipeline): one round trip per message
        // instead of two plus one per recipient. A large body waits for the
        // recipients' answers, so a refused message costs no upload.
        let pipelining = caps & EXT_PIPELINING != 0;
        let chunking = caps & EXT_CHUNKING != 0;
        let data_step = if !pipelining {
            DataStep::AfterAnswers
        } else if !chunking {
            DataStep::DataInBatch
        } else if tx.wire_len() <= PIPELINED_BODY_MAX {
            DataStep::BodyInBatch
        } else {
            DataStep::AfterAnswers
        };
        // The answer to a pipelined DATA (354) or BDAT (the final reply).
        let mut data_reply = None;
        let (mail_reply, rcpt_replies) = if pipelining {
            let mut batch = mail.into_bytes();
            for (_, line) in &rcpt_lines {
                batch.extend_from_slice(line.as_bytes());
            }
            match data_step {
                DataStep::DataInBatch => batch.extend_from_slice(b"DATA\r\n"),
                DataStep::BodyInBatch => batch.extend_from_slice(bdat_command(tx).as_bytes()),
                DataStep::AfterAnswers => {}
            }
            let body = (data_step == DataStep::BodyInBatch).then_some(tx);
            write_batch(client, &batch, body)
                .await
                .map_err(|e| TransactionError::BeforeMail(format!("MAIL FROM: {e}")))?;
            // All answers at once: `read` would drop the bytes of any
            // answer that arrived in the same segment as the first.
            let expected = 1 + rcpt_lines.len() + usize::from(data_step != DataStep::AfterAnswers);
            let limit = match data_step {
                DataStep::BodyInBatch => data_timeout,
                _ => client.timeout,
            };
            // The commands are out: a session that breaks now defers
            // every recipient (the message may have arrived: a duplicate
            // is possible, a loss is not).
            let during = match data_step {
                DataStep::BodyInBatch => "during data",
                _ => "at MAIL/RCPT",
            };
            let lost = |why: String| {
                TransactionError::Broken(every(Reply::Transient(format!(
                    "4.4.2 connection lost {during}: {why}"
                ))))
            };
            let mut replies = match tokio::time::timeout(limit, client.read_many(expected)).await {
                Ok(Ok(replies)) if replies.len() == expected => replies.into_iter(),
                Ok(Ok(_)) => return Err(lost("short pipelined answer".into())),
                Ok(Err(e)) => return Err(lost(e.to_string())),
                Err(_) => return Err(lost("timed out".into())),
            };
            let mail_reply = replies.next().expect("counted");
            let rcpt_replies: Vec<_> = rcpt_lines
                .iter()
                .map(|(index, _)| (*index, replies.next().expect("counted")))
                .collect();
            data_reply = replies.next();
            (mail_reply, rcpt_replies)
        } else {
            let mail_reply = client
                .cmd(mail.as_bytes())
                .await
                .map_err(|e| TransactionError::BeforeMail(format!("MAIL FROM: {e}")))?;
            let mut replies = Vec::with_capacity(rcpt_lines.len());
            if (200..300).contains(&mail_reply.code) {
                for (index, line) in &rcpt_lines {
                    match client.cmd(line.as_bytes()).await {
                        Ok(reply) => replies.push((*index, reply)),
                        Err(e) => {
                            let why = format!("4.4.2 connection lost at RCPT: {e}");
                            return Err(TransactionError::Broken(every(Reply::Transient(why))));
                        }
                    }
                }
            }
            (mail_reply, replies)
        };

        let mut accepted = Vec::new();
        if (200..300).contains(&mail_reply.code) {
            for (index, reply) in rcpt_replies {
                if (200..300).contains(&reply.code) {
                    accepted.push(index);
                } else {
                    answers.push((index, Reply::classify(&reply)));
                }
            }
        }
        if accepted.is_empty() {
            // Nothing to send. A server that still said 354 to a pipelined
            // DATA gets an empty end of data, then everything is reset.
            if data_reply.as_ref().is_some_and(|reply| reply.code == 354) {
                let _ = client.stream.write_all(b".\r\n").await;
                let _ = client.read().await;
            }
            let _ = client.cmd(b"RSET\r\n").await;
            if !(200..300).contains(&mail_reply.code) {
                return Ok(every(Reply::classify(&mail_reply)));
            }
            return Ok(answers);
        }

        let final_reply = tokio::time::timeout(data_timeout, async {
            match (data_step, data_reply) {
                (DataStep::BodyInBatch, Some(reply)) => return Ok(reply),
                (DataStep::DataInBatch, Some(go)) => {
                    if go.code != 354 {
                        return Ok(go);
                    }
                    write_data_body(client, tx).await?;
                }
                // Not reached: `expected` counted the DATA or BDAT answer.
                (DataStep::BodyInBatch | DataStep::DataInBatch, None) => {
                    return Err(std::io::Error::other("no answer to the pipelined data"));
                }
                (DataStep::AfterAnswers, _) if chunking => {
                    write_batch(client, bdat_command(tx).as_bytes(), Some(tx)).await?
                }
                (DataStep::AfterAnswers, _) => {
                    let go = client
                        .cmd(b"DATA\r\n")
                        .await
                        .map_err(std::io::Error::other)?;
                    if go.code != 354 {
                        return Ok(go);
                    }
                    write_data_body(client, tx).await?;
                }
            }
            client.read().await.map_err(std::io::Error::other)
        })
        .await;
        let lost = |why: String| {
            let mut answers = answers.clone();
            answers.extend(accepted.iter().map(|i| (*i, Reply::Transient(why.clone()))));
            TransactionError::Broken(answers)
        };
        let reply = match final_reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(lost(format!("4.4.2 connection lost during data: {e}"))),
            Err(_) => return Err(lost("4.4.2 timeout during data".to_string())),
        };
        let answer = Reply::classify(&reply);
        answers.extend(accepted.into_iter().map(|i| (i, answer.clone())));
        answers.sort_by_key(|(i, _)| *i);
        Ok(answers)
    }
}

/// Messages up to this size travel in the same write as MAIL and RCPT
/// when the server pipelines and takes BDAT.
const PIPELINED_BODY_MAX: usize = 128 * 1024;

/// When the message itself goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataStep {
    /// `DATA` in the pipelined batch; the body after its 354.
    DataInBatch,
    /// `BDAT <size> LAST` and the body in the pipelined batch.
    BodyInBatch,
    /// After MAIL and RCPT were answered (no PIPELINING, or a large body).
    AfterAnswers,
}

/// The one BDAT chunk that carries the whole message.
fn bdat_command(tx: &Transaction<'_>) -> String {
    format!("BDAT {} LAST\r\n", tx.wire_len())
}

/// Write `commands`, then (when given, after a BDAT command) the message's
/// prefix, body and tail; flush.
async fn write_batch(
    client: &mut SmtpClient<ClientStream>,
    commands: &[u8],
    body: Option<&Transaction<'_>>,
) -> std::io::Result<()> {
    client.stream.write_all(commands).await?;
    if let Some(tx) = body {
        client.stream.write_all(tx.prefix).await?;
        client.stream.write_all(tx.body).await?;
        if let Some(tail) = tx.tail {
            let mut chunk = Vec::new();
            let mut offset = 0;
            while tail.read_chunk(&mut offset, &mut chunk)? {
                client.stream.write_all(&chunk).await?;
            }
        }
    }
    client.stream.flush().await
}

/// The message after DATA's 354: dot-stuffed (RFC 5321 4.5.2), then the
/// end of data, so that the server stores exactly the spooled bytes.
async fn write_data_body(
    client: &mut SmtpClient<ClientStream>,
    tx: &Transaction<'_>,
) -> std::io::Result<()> {
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 8);
    stuffer.stuff(tx.prefix, &mut out);
    stuffer.stuff(tx.body, &mut out);
    client.stream.write_all(&out).await?;
    if let Some(tail) = tx.tail {
        let mut chunk = Vec::new();
        let mut offset = 0;
        while tail.read_chunk(&mut offset, &mut chunk)? {
            out.clear();
            stuffer.stuff(&chunk, &mut out);
            client.stream.write_all(&out).await?;
        }
    }
    let end: &[u8] = if stuffer.after_crlf() {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    client.stream.write_all(end).await?;
    client.stream.flush().await
}

/// How much of a file tail is read and sent at a time.
const STREAM_CHUNK: usize = 256 * 1024;

/// DATA transparency across chunks: a line that starts with "." gets one
/// more (a line starts after any LF, as mail-send's `write_message` has it).
struct DotStuffer {
    line_start: bool,
    /// The last two bytes seen, for the end of data.
    last: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            last: [0, 0],
        }
    }
}

impl DotStuffer {
    fn stuff(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(&[a, b]) = chunk.get(chunk.len().saturating_sub(2)..) {
            self.last = [a, b];
        } else if let Some(&b) = chunk.first() {
            self.last = [self.last[1], b];
        }
        while !chunk.is_empty() {
            if self.line_start && chunk[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', chunk) {
                Some(at) => {
                    out.extend_from_slice(&chunk[..=at]);
                    chunk = &chunk[at + 1..];
                    self.line_start = true;
                }
                None => {
                    out.extend_from_slice(chunk);
                    self.line_start = false;
                    chunk = &[];
                }
            }
        }
    }

    fn after_crlf(&self) -> bool {
        self.last == *b"\r\n"
    }
}

/// RFC 3461 NOTIFY and ORCPT on a RCPT line.
fn push_dsn_parameters(line: &mut String, rcpt: &Recipient) {
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

/// The rest of a large message, left in its spool file and read as it is
/// sent, so a 50 MB body in flight costs a chunk of memory, not 50 MB.
pub struct FileTail {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

impl FileTail {
    /// The next chunk after `*sent` bytes of the tail into `chunk`; false
    /// when all was read. A file shorter than promised is an error (the
    /// message would go out truncated).
    fn read_chunk(&self, sent: &mut u64, chunk: &mut Vec<u8>) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let want = (self.len - *sent).min(STREAM_CHUNK as u64) as usize;
        if want == 0 {
            return Ok(false);
        }
        chunk.resize(want, 0);
        let at = self.offset + *sent;
        crate::fsutil::run_blocking(|| self.file.read_exact_at(chunk, at))?;
        *sent += want as u64;
        Ok(true)
    }
}

/// What is sent in one transaction.
pub struct Transaction<'a> {
    pub envelope: &'a Envelope,
    /// (index, recipient): the index comes back with the recipient's answer.
    pub recipients: Vec<(usize, &'a Recipient)>,
    /// Header fields added in front of the stored message (whole CRLF
    /// lines, none starting with "."), sent before `body` without a copy.
    pub prefix: &'a [u8],
    /// The message (with `tail`, if any), ending with CRLF.
    pub body: &'a [u8],
    /// The rest of the message, still in its file.
    pub tail: Option<&'a FileTail>,
}

impl Transaction<'_> {
    /// The message's size on the wire (before dot-stuffing), for SIZE= and BDAT.
    pub fn wire_len(&self) -> usize {
        self.prefix.len() + self.body.len() + self.tail.map_or(0, |t| t.len as usize)
    }
}

/// The server's answer for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 2xx: the server took the message for this recipient.
    Accepted(String),
    /// 4xx, or no answer: try again later.
    Transient(String),
    /// 5xx: do not try again.
    Permanent(String),
}

impl Reply {
    fn classify(reply: &Response<String>) -> Reply {
        let text = reply_text(reply);
        match reply.code {
            200..=299 => Reply::Accepted(text),
            500..=599 => Reply::Permanent(text),
            _ => Reply::Transient(text),
        }
    }
}

pub enum TransactionError {
    /// Failed before the server saw a transaction (e.g. a stale pooled
    /// connection): nothing was sent, start over on a fresh one.
    BeforeMail(String),
    /// The session broke mid-transaction: answers so far, the rest transient.
    Broken(Vec<(usize, Reply)>),
}

/// A reply as logs and DSNs show it: "550 5.1.1 no such user".
pub fn reply_text(reply: &Response<String>) -> String {
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

/// Where `submit` sends: the host name (for TLS), its address, the policy.
pub struct Relay<'a> {
    pub host: &'a str,
    pub addr: SocketAddr,
    pub policy: TlsPolicy,
}

/// Send one message Breakwater wrote itself (an alert, the drill's probe)
/// to one recipient through `relay`, within `limit`: the final reply
/// ("250 2.0.0 Ok: queued as …"), or why it was not accepted.
pub async fn submit(
    dialer: &Dialer,
    relay: &Relay<'_>,
    from: &str,
    to: &str,
    message: &[u8],
    limit: Duration,
) -> Result<String, String> {
    let exchange = async {
        let mut session = dialer
            .open(relay.host, relay.addr, relay.policy)
            .await
            .map_err(|e| e.to_string())?;
        let envelope = Envelope::local(from, to, &dialer.helo);
        let tx = Transaction {
            envelope: &envelope,
            recipients: vec![(0, &envelope.recipients[0])],
            prefix: b"",
            body: message,
            tail: None,
        };
        let answers = match session.transaction(&tx, limit).await {
            Ok(answers) => answers,
            Err(TransactionError::BeforeMail(why)) => return Err(why),
            Err(TransactionError::Broken(answers)) => answers,
        };
        session.quit().await;
        match answers.into_iter().next() {
            Some((_, Reply::Accepted(text))) => Ok(text),
            Some((_, Reply::Transient(text) | Reply::Permanent(text))) => Err(text),
            None => Err("no answer".into()),
        }
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| {
        format!(
            "{} did not answer within {}",
            relay.addr,
            humantime::format_duration(limit)
        )
    })?
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
/// live in delivery's pool either way.
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

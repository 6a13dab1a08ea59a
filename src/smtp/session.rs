//! One SMTP session: reads command lines, answers them, and hands verbs to
//! their own files. Generic over the stream so the same code serves the
//! plain connection and, after STARTTLS, the TLS one.
//!
//! Pipelining (RFC 2920) falls out of one rule: replies are buffered and
//! flushed only when no complete command is waiting in the input buffer, i.e.
//! just before the session would block on a read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::body::BodyDecoder;
use super::SmtpContext;
use crate::config::BareLfPolicy;
use crate::envelope::{DsnRet, Recipient, TlsInfo};
use crate::spool::MessageBody;

/// RFC 5321 4.5.3.1.4.
pub(crate) const MAX_COMMAND_LINE: usize = 512;
/// MAIL/RCPT may be longer: RFC 3461 allows +500 octets for ORCPT/NOTIFY,
/// RFC 1870 and 6531 add a few more.
pub(crate) const MAX_PARAM_COMMAND_LINE: usize = 1024;
/// Slowest acceptable message data after the first `data_timeout`, in
/// bytes per second (Postfix `smtpd_min_data_rate`).
const MIN_DATA_RATE: u64 = 500;

pub(crate) struct Session<S> {
    pub(crate) ctx: Arc<SmtpContext>,
    pub(crate) stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    pub(crate) peer: SocketAddr,
    pub(crate) helo: Option<String>,
    pub(crate) esmtp: bool,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) tx: Option<Transaction>,
    errors: u32,
    /// NOOP/RSET/VRFY/HELP since the last accepted message (see
    /// `junk_command_limit`; like Postfix, delivering mail resets it).
    pub(crate) junk_commands: u32,
    shutdown: watch::Receiver<bool>,
    /// A line longer than allowed is being skipped up to its LF.
    skipping_long_line: bool,
    /// Refused at connect (DNSBL): every command but QUIT gets this (RFC 5321 3.1).
    pub(crate) blocked: Option<String>,
    /// Exempt from rate limits and tarpitting (`[limits] allow`).
    pub(crate) allow_listed: bool,
    /// Turns true while the listener is short of connection slots.
    stress: watch::Receiver<bool>,
    /// When message data started and how much has arrived since, for the
    /// minimum data rate.
    data_progress: Option<(Instant, u64)>,
    /// The connection's places in the listener's limits, given back before
    /// the last reply is flushed (see `listener::SlotRelease`).
    pub(crate) slots: Option<super::listener::SlotRelease>,
}

/// The mail transaction between MAIL and end of data.
pub(crate) struct Transaction {
    pub sender: String,
    pub dsn_ret: Option<DsnRet>,
    pub dsn_envid: Option<String>,
    pub smtputf8: bool,
    pub body_8bitmime: bool,
    pub requiretls: bool,
    pub recipients: Vec<Recipient>,
    /// Set once BDAT has started; DATA is then refused.
    pub bdat: Option<BdatState>,
    /// SPF for this MAIL FROM, when `[trust] authenticate` is on.
    pub spf: Option<crate::trust::auth::SpfCheck>,
}

pub(crate) struct BdatState {
    pub body: MessageBody,
    pub decoder: BodyDecoder,
}

/// What the session loop should do after a command.
pub(crate) enum Flow {
    Continue,
    Quit,
    StartTls,
}

pub(crate) enum SessionEnd<S> {
    Closed,
    /// 220 was sent for STARTTLS; the caller performs the handshake.
    StartTls(S),
}

enum Input {
    Line(Vec<u8>),
    TooLong,
    Eof,
    Timeout,
    Shutdown,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn new(
        ctx: Arc<SmtpContext>,
        stream: S,
        peer: SocketAddr,
        tls: Option<TlsInfo>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Session {
            stress: ctx.stress.subscribe(),
            ctx,
            stream,
            rbuf: Vec::with_capacity(16 * 1024),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            peer,
            helo: None,
            esmtp: false,
            tls,
            tx: None,
            errors: 0,
            junk_commands: 0,
            shutdown,
            skipping_long_line: false,
            blocked: None,
            allow_listed: false,
            data_progress: None,
            slots: None,
        }
    }

    pub(crate) async fn greet(&mut self) -> std::io::Result<()> {
        if let Some(why) = self.blocked.clone() {
            self.reply(554, "5.7.1", &why);
        } else {
            let banner = format!("{} ESMTP Breakwater", self.ctx.hostname);
            self.reply(220, "", &banner);
        }
        self.flush().await
    }

    pub(crate) async fn run(mut self) -> std::io::Result<SessionEnd<S>> {
        loop {
            let line = match self.next_input().await? {
                Input::Line(line) => line,
                Input::TooLong => {
                    self.error_reply(500, "5.5.2", "Line too long");
                    if self.too_many_errors() {
                        return self.close_with(421, "4.7.0", "Too many errors").await;
                    }
                    continue;
                }
                Input::Eof => {
                    tracing::debug!(client = %self.peer, "disconnect without QUIT");
                    return Ok(SessionEnd::Closed);
                }
                Input::Timeout => {
                    tracing::info!(client = %self.peer, "timeout waiting for command");
                    return self.close_with(421, "4.4.2", "Timeout exceeded").await;
                }
                Input::Shutdown => {
                    return self.close_with(421, "4.3.2", "Service shutting down").await;
                }
            };
            match self.command(&line).await? {
                Flow::Continue => {
                    if self.too_many_errors() {
                        return self.close_with(421, "4.7.0", "Too many errors").await;
                    }
                }
                Flow::Quit => {
                    self.release_slots();
                    self.flush().await?;
                    let _ = self.stream.shutdown().await;
                    return Ok(SessionEnd::Closed);
                }
                Flow::StartTls => {
                    self.flush().await?;
                    let pipelined = self.rbuf.len() - self.rpos;
                    if pipelined > 0 {
                        // CVE-2011-0411 class: anything sent after STARTTLS
                        // before the handshake must not be read as a command.
                        tracing::warn!(client = %self.peer, bytes = pipelined, "discarding data pipelined after STARTTLS");
                    }
                    return Ok(SessionEnd::StartTls(self.stream));
                }
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        if !line.ends_with(b"\r\n") && self.ctx.config.bare_lf == BareLfPolicy::Reject {
            self.error_reply(500, "5.5.2", "Command lines must end with CRLF");
            return Ok(Flow::Continue);
        }
        let verb_allows_params = line.len() >= 4
            && (line[..4].eq_ignore_ascii_case(b"MAIL") || line[..4].eq_ignore_ascii_case(b"RCPT"));
        if line.len() > MAX_COMMAND_LINE && !verb_allows_params {
            self.error_reply(500, "5.5.2", "Line too long");
            return Ok(Flow::Continue);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(err) => {
                self.parse_error(err);
                return Ok(Flow::Continue);
            }
        };
        if let Some(why) = self.blocked.clone() {
            if matches!(request, Request::Quit) {
                self.reply(221, "2.0.0", "Bye");
                return Ok(Flow::Quit);
            }
            self.error_reply(503, "5.7.1", &why);
            return Ok(Flow::Continue);
        }
        match request {
            Request::Ehlo { host } => self.cmd_ehlo(host, true),
            Request::Helo { host } => self.cmd_ehlo(host, false),
            Request::Lhlo { .. } => self.error_reply(500, "5.5.1", "LHLO is for LMTP"),
            Request::Mail { from } => self.cmd_mail(from).await,
            Request::Rcpt { to } => self.cmd_rcpt(to).await,
            Request::Data => return self.cmd_data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.cmd_bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.count_junk_command();
                self.tx = None;
                self.reply(250, "2.0.0", "Ok");
            }
            Request::Noop { .. } => {
                self.count_junk_command();
                self.reply(250, "2.0.0", "Ok")
            }
            Request::Quit => {
                self.reply(221, "2.0.0", "Bye");
                return Ok(Flow::Quit);
            }
            Request::Vrfy { .. } => {
                self.count_junk_command();
                self.reply(
                    252,
                    "2.5.2",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                )
            }
            Request::Help { .. } => {
                self.count_junk_command();
                self.reply(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS VRFY HELP",
                )
            }
            Request::StartTls => return Ok(self.cmd_starttls()),
            Request::Auth { .. } => self.error_reply(
                502,
                "5.5.1",
                "AUTH not supported: this is an MX, not a submission server",
            ),
            Request::Expn { .. } => self.error_reply(502, "5.5.1", "EXPN not supported"),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error_reply(502, "5.5.1", "Command not implemented")
            }
        }
        Ok(Flow::Continue)
    }

    fn parse_error(&mut self, err: smtp_proto::Error) {
        use smtp_proto::Error as E;
        match err {
            E::UnknownCommand => self.error_reply(500, "5.5.2", "Command unrecognized"),
            E::InvalidSenderAddress => self.error_reply(553, "5.1.7", "Bad sender address syntax"),
            E::InvalidRecipientAddress => {
                self.error_reply(553, "5.1.3", "Bad recipient address syntax")
            }
            E::SyntaxError { syntax } => {
                self.error_reply(501, "5.5.4", &format!("Syntax: {syntax}"))
            }
            E::InvalidParameter { param } => {
                self.error_reply(501, "5.5.4", &format!("Invalid parameter {param}"))
            }
            E::UnsupportedParameter { param } => {
                self.error_reply(555, "5.5.4", &format!("Unsupported parameter {param}"))
            }
            E::NeedsMoreData { .. } | E::ResponseTooLong | E::InvalidResponse { .. } => {
                self.error_reply(500, "5.5.2", "Syntax error")
            }
        }
    }

    // ---- replies -------------------------------------------------------

    pub(crate) fn reply(&mut self, code: u16, status: &str, text: &str) {
        let line = if status.is_empty() {
            format!("{code} {text}\r\n")
        } else {
            format!("{code} {status} {text}\r\n")
        };
        self.wbuf.extend_from_slice(line.as_bytes());
    }

    /// A 4xx/5xx reply that counts against the session's error budget.
    pub(crate) fn error_reply(&mut self, code: u16, status: &str, text: &str) {
        self.errors += 1;
        self.reply(code, status, text);
    }

    pub(crate) fn reply_lines(&mut self, code: u16, lines: &[String]) {
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.wbuf
                .extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
        }
    }

    /// Commands that move no mail are free up to the limit, then each one
    /// spends the error budget like a bad command.
    fn count_junk_command(&mut self) {
        self.junk_commands = self.junk_commands.saturating_add(1);
        if self.junk_commands > self.ctx.config.junk_command_limit {
            self.errors += 1;
        }
    }

    fn too_many_errors(&self) -> bool {
        self.errors > self.ctx.config.max_errors
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            let limits = &self.ctx.checks.limits;
            if limits.tarpit_after > 0 && self.errors >= limits.tarpit_after && !self.allow_listed {
                // Postfix smtpd_error_sleep_time: a dictionary attack pays
                // in time for every rejected guess.
                tokio::time::sleep(limits.tarpit_delay).await;
            }
            // A client that sends commands but never reads the replies
            // would otherwise park this write forever once its receive
            // window is full.
            let write = async {
                self.stream.write_all(&self.wbuf).await?;
                self.stream.flush().await
            };
            match tokio::time::timeout(self.ctx.config.command_timeout, write).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "client does not read its replies",
                    ))
                }
            }
            self.wbuf.clear();
        }
        Ok(())
    }

    fn release_slots(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }

    async fn close_with(
        mut self,
        code: u16,
        status: &str,
        text: &str,
    ) -> std::io::Result<SessionEnd<S>> {
        let text = format!("{} {text}", self.ctx.hostname);
        self.reply(code, status, &text);
        self.release_slots();
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        Ok(SessionEnd::Closed)
    }

    // ---- input ---------------------------------------------------------

    async fn next_input(&mut self) -> std::io::Result<Input> {
        // The timeout covers the whole line, from the moment we wait for it.
        let line_started = Instant::now();
        loop {
            let pending = &self.rbuf[self.rpos..];
            if let Some(pos) = memchr::memchr(b'\n', pending) {
                let line = pending[..=pos].to_vec();
                self.rpos += pos + 1;
                if std::mem::take(&mut self.skipping_long_line) {
                    return Ok(Input::TooLong);
                }
                if line.len() > MAX_PARAM_COMMAND_LINE {
                    return Ok(Input::TooLong);
                }
                return Ok(Input::Line(line));
            }
            if pending.len() > MAX_PARAM_COMMAND_LINE {
                // Keep memory bounded: drop what we have of the line and
                // answer once its end arrives.
                self.skipping_long_line = true;
                self.rbuf.clear();
                self.rpos = 0;
            }
            self.flush().await?;
            let config = &self.ctx.config;
            let timeout = if *self.stress.borrow_and_update() {
                config.stress_timeout.min(config.command_timeout)
            } else {
                config.command_timeout
            };
            let deadline = tokio::time::Instant::from_std(line_started + timeout);
            let mut shutdown = self.shutdown.clone();
            if *shutdown.borrow() {
                return Ok(Input::Shutdown);
            }
            tokio::select! {
                read = tokio::time::timeout_at(deadline, read_more(&mut self.stream, &mut self.rbuf, &mut self.rpos)) => match read {
                    Err(_) => return Ok(Input::Timeout),
                    Ok(Ok(0)) => return Ok(Input::Eof),
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(err),
                },
                _ = shutdown.changed() => return Ok(Input::Shutdown),
                // Stress began or ended: go round and re-time this wait.
                _ = self.stress.changed() => {}
            }
        }
    }

    /// Bytes already received but not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.rpos += n;
    }

    /// Read more message data (after flushing replies), with the DATA timeout.
    /// Returns false at end of stream or timeout.
    pub(crate) async fn fill_data(&mut self) -> std::io::Result<bool> {
        self.flush().await?;
        let timeout: Duration = self.ctx.config.data_timeout;
        let mut deadline = Instant::now() + timeout;
        if let Some((started, received)) = self.data_progress {
            let earned = Duration::from_secs(received / MIN_DATA_RATE);
            deadline = deadline.min(started + timeout + earned);
        }
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline),
            read_more(&mut self.stream, &mut self.rbuf, &mut self.rpos),
        )
        .await
        {
            Err(_) => {
                tracing::info!(client = %self.peer, "timeout while receiving message data");
                self.reply(421, "4.4.2", "Timeout exceeded while receiving data");
                let _ = self.flush().await;
                Ok(false)
            }
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                if let Some((_, received)) = &mut self.data_progress {
                    *received += n as u64;
                }
                Ok(true)
            }
            Ok(Err(err)) => Err(err),
        }
    }

    /// Message data starts (DATA, or the first BDAT chunk) or ends.
    pub(crate) fn track_data(&mut self, started: bool) {
        self.data_progress = started.then(|| (Instant::now(), 0));
    }
}

/// Read into the buffer, first reclaiming the consumed prefix.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    pos: &mut usize,
) -> std::io::Result<usize> {
    if *pos == buf.len() {
        buf.clear();
        *pos = 0;
    } else if *pos > 64 * 1024 {
        buf.drain(..*pos);
        *pos = 0;
    }
    if buf.capacity() - buf.len() < 8 * 1024 {
        buf.reserve(64 * 1024);
    }
    stream.read_buf(buf).await
}

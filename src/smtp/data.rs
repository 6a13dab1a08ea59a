//! DATA and BDAT: stream the message into a spool body, check it, make it
//! durable, and only then answer 250.

use time::format_description::well_known::Rfc2822;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{BodyDecoder, BodyProblem, Framing};
use super::ehlo::printable;
use super::session::{BdatState, Flow, Session, Transaction};
use crate::config::{DmarcMode, DnsErrorPolicy};
use crate::envelope::{now_ms, ClientInfo, Envelope};
use crate::spool::MessageBody;
use crate::trust::auth::AuthVerdict;

/// For a message too large to verify, enough of it for the header section.
const HEADER_PREFIX: u64 = 256 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn cmd_data(&mut self) -> std::io::Result<Flow> {
        match &self.tx {
            None => {
                self.error_reply(503, "5.5.1", "Need MAIL command first");
                return Ok(Flow::Continue);
            }
            Some(tx) if tx.bdat.is_some() => {
                self.error_reply(503, "5.5.1", "DATA not allowed after BDAT");
                return Ok(Flow::Continue);
            }
            Some(tx) if tx.recipients.is_empty() => {
                self.error_reply(554, "5.5.1", "No valid recipients");
                return Ok(Flow::Continue);
            }
            Some(_) => {}
        }
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>");
        let (mut body, mut decoder) = self.start_body(Framing::Dot);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut write_error = None;
        loop {
            let (used, done) = decoder.feed(self.buffered(), &mut out);
            self.consume(used);
            if !out.is_empty() && write_error.is_none() {
                write_error = body.write(&out).err();
            }
            out.clear();
            if done {
                break;
            }
            if !self.fill_data().await? {
                // Client gone or timed out mid-message: nothing was accepted.
                self.tx = None;
                return Ok(Flow::Quit);
            }
        }
        let tx = self.tx.take().expect("transaction checked above");
        self.finish_message(tx, body, decoder.problem(), write_error)
            .await;
        Ok(Flow::Continue)
    }

    pub(crate) async fn cmd_bdat(&mut self, size: usize, last: bool) -> std::io::Result<Flow> {
        let ready = matches!(&self.tx, Some(tx) if !tx.recipients.is_empty());
        if !ready {
            // The chunk is on its way regardless; read past it to stay in sync.
            if !self.discard(size).await? {
                return Ok(Flow::Quit);
            }
            if self.tx.is_none() {
                self.error_reply(503, "5.5.1", "Need MAIL command first");
            } else {
                self.error_reply(554, "5.5.1", "No valid recipients");
            }
            return Ok(Flow::Continue);
        }
        let mut state = match self.tx.as_mut().and_then(|tx| tx.bdat.take()) {
            Some(state) => state,
            None => {
                let (body, decoder) = self.start_body(Framing::Chunks);
                BdatState { body, decoder }
            }
        };
        let mut out = Vec::with_capacity(64 * 1024);
        let mut write_error = None;
        let mut remaining = size;
        while remaining > 0 {
            if self.buffered().is_empty() && !self.fill_data().await? {
                self.tx = None;
                return Ok(Flow::Quit);
            }
            let take = remaining.min(self.buffered().len());
            let (used, _) = state.decoder.feed(&self.buffered()[..take], &mut out);
            debug_assert_eq!(used, take);
            self.consume(take);
            remaining -= take;
            if !out.is_empty() && write_error.is_none() {
                write_error = state.body.write(&out).err();
            }
            out.clear();
        }
        if last {
            state.decoder.finish_chunks(&mut out);
            if !out.is_empty() && write_error.is_none() {
                write_error = state.body.write(&out).err();
            }
            let tx = self.tx.take().expect("transaction checked above");
            let problem = state.decoder.problem();
            self.finish_message(tx, state.body, problem, write_error)
                .await;
        } else if let Some(problem) = state.decoder.problem() {
            // Refuse early; the client has to start again after RSET.
            let tx = self.tx.take().expect("transaction checked above");
            self.finish_message(tx, state.body, Some(problem), write_error)
                .await;
        } else if let Some(err) = write_error {
            self.tx = None;
            self.track_data(false);
            tracing::error!(queue_id = %state.body.id(), error = %err, "message not stored: write failed");
            self.storage_error_reply(crate::spool::is_storage_full(&err));
        } else {
            self.reply(250, "2.0.0", &format!("{size} octets received"));
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = Some(state);
            }
        }
        Ok(Flow::Continue)
    }

    /// Read and drop `n` bytes of chunk data. False if the client went away.
    async fn discard(&mut self, mut n: usize) -> std::io::Result<bool> {
        while n > 0 {
            if self.buffered().is_empty() && !self.fill_data().await? {
                return Ok(false);
            }
            let take = n.min(self.buffered().len());
            self.consume(take);
            n -= take;
        }
        Ok(true)
    }

    fn start_body(&mut self, framing: Framing) -> (MessageBody, BodyDecoder) {
        self.track_data(true);
        let config = &self.ctx.config;
        let decoder = BodyDecoder::new(
            framing,
            config.bare_lf,
            config.max_message_size,
            config.max_received_headers,
        );
        let mut body = self.ctx.spool.new_body();
        let header = self.received_header(&body);
        // A failure here surfaces again on the next write and at commit.
        let _ = body.write(header.as_bytes());
        (body, decoder)
    }

    async fn finish_message(
        &mut self,
        tx: Transaction,
        body: MessageBody,
        problem: Option<BodyProblem>,
        write_error: Option<std::io::Error>,
    ) {
        self.track_data(false);
        let id = body.id();
        let rejected = match problem {
            Some(BodyProblem::BareLineEnding) => Some((
                550,
                "5.5.2",
                "Message contains bare CR or LF line endings; use CRLF (RFC 5321 2.3.8)",
                "bare line ending",
            )),
            Some(BodyProblem::NulByte) => {
                Some((550, "5.6.0", "Message contains NUL characters", "NUL byte"))
            }
            Some(BodyProblem::LineTooLong) => Some((
                550,
                "5.5.2",
                "Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)",
                "line too long",
            )),
            Some(BodyProblem::TooBig) => Some((
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
                "too big",
            )),
            Some(BodyProblem::TooManyHops) => Some((
                554,
                "5.4.6",
                "Too many hops: mail loop detected",
                "too many Received headers",
            )),
            None => None,
        };
        if let Some((code, status, text, reason)) = rejected {
            crate::metrics::get().rejected(&reason.replace(' ', "_").to_lowercase());
            tracing::info!(queue_id = %id, client = %self.peer, from = %tx.sender, reason, "message rejected");
            self.error_reply(code, status, text);
            return;
        }
        if let Some(err) = write_error {
            tracing::error!(queue_id = %id, error = %err, "message not stored: write failed");
            self.storage_error_reply(crate::spool::is_storage_full(&err));
            return;
        }
        // The floor is checked again with the real size: a client that
        // declared no SIZE must not take the last of the disk.
        if let Err(shortage) = self.ctx.spool.check_space(body.len()) {
            crate::metrics::get().rejected("insufficient_storage");
            tracing::warn!(queue_id = %id, client = %self.peer, %shortage, "message not stored: insufficient storage");
            self.storage_error_reply(true);
            return;
        }
        let nrcpt = tx.recipients.len();
        let size = body.len();
        let sender = tx.sender.clone();
        let mut auth = self.authenticate(&tx, &body).await;
        if let Some(verdict) = &mut auth {
            if let Some((code, status, text)) = self.apply_auth_policy(&tx, verdict) {
                tracing::info!(queue_id = %id, client = %self.peer, from = %tx.sender, dmarc = %verdict.dmarc, policy = %verdict.dmarc_policy, header_from = %verdict.from_domain, "message rejected: {text}");
                self.error_reply(code, status, &text);
                return;
            }
        }
        // Scored from memory only: a spilled (large) body is not read back.
        let lure = match (&self.ctx.checks.lure, body.in_memory()) {
            // A heuristic must never cost a message: a bug in it (hostile
            // input) leaves the message unscored instead of failing intake.
            (Some(context), Some(raw)) => {
                let signals = crate::trust::lure::Signals {
                    envelope_sender: &sender,
                    auth: auth.as_ref(),
                    outage: self.ctx.in_outage(),
                };
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::trust::lure::score_with(raw, context, &signals)
                }))
                .map_err(|_| tracing::error!(queue_id = %id, "lure scoring panicked; message accepted unscored"))
                .ok()
            }
            _ => None,
        };
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            dsn_ret: tx.dsn_ret,
            dsn_envid: tx.dsn_envid,
            smtputf8: tx.smtputf8,
            body_8bitmime: tx.body_8bitmime,
            requiretls: tx.requiretls,
            client: ClientInfo {
                ip: self.peer.ip(),
                helo: self.helo.clone().unwrap_or_default(),
                tls: self.tls.clone(),
            },
            received_at_ms: now_ms(),
            size: 0,
            lure,
            auth,
            sent_by: None,
        };
        let started = std::time::Instant::now();
        match self.ctx.spool.enqueue(body, envelope).await {
            Ok(id) => {
                let metrics = crate::metrics::get();
                metrics.accepted.inc();
                metrics.accepted_bytes.inc_by(size);
                metrics
                    .acceptance_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(queue_id = %id, client = %self.peer, from = %sender, nrcpt, tls = self.tls.is_some(), "queued");
                self.reply(250, "2.0.0", &format!("Ok: queued as {id}"));
                self.junk_commands = 0;
            }
            Err(err) => {
                crate::metrics::get().rejected("spool_error");
                tracing::error!(queue_id = %id, error = %err, "message not stored: spool error");
                let full = matches!(&err, crate::spool::SpoolError::Io(io) if crate::spool::is_storage_full(io));
                self.storage_error_reply(full);
            }
        }
    }

    /// The message could not be stored: 452 4.3.1 when the disk or quota is
    /// full (RFC 3463), 451 4.3.0 for any other local error. Either way the
    /// client keeps the message and retries; nothing was acknowledged.
    fn storage_error_reply(&mut self, full: bool) {
        if full {
            self.reply(452, "4.3.1", "Insufficient system storage; try again later");
        } else {
            self.error_reply(
                451,
                "4.3.0",
                "Local error while storing the message; try again later",
            );
        }
    }

    /// SPF (taken at MAIL), DKIM, ARC and DMARC for the received message.
    async fn authenticate(&self, tx: &Transaction, body: &MessageBody) -> Option<AuthVerdict> {
        let authenticator = self.ctx.checks.auth.as_ref()?;
        let spf = tx.spf.as_ref()?;
        let limit = self.ctx.checks.trust.max_verify_size;
        let whole = body.len() <= limit;
        let read_back;
        let raw = match body.in_memory() {
            Some(raw) => raw,
            None => {
                read_back = body
                    .read_prefix(if whole { limit } else { HEADER_PREFIX })
                    .map_err(|err| tracing::warn!(queue_id = %body.id(), error = %err, "cannot read the message back for DKIM; not verified"))
                    .ok()?;
                &read_back
            }
        };
        let helo = self.helo.as_deref().unwrap_or("");
        Some(
            authenticator
                .verify(raw, whole, spf, self.peer.ip(), helo, &tx.sender)
                .await,
        )
    }

    /// What the per-domain policy makes of a verdict: `Some(reply)` refuses
    /// the message; a p=quarantine failure is flagged. The strictest
    /// recipient domain decides, since p=reject is the From domain owner's
    /// own instruction.
    fn apply_auth_policy(
        &self,
        tx: &Transaction,
        verdict: &mut AuthVerdict,
    ) -> Option<(u16, &'static str, String)> {
        let policy = self.ctx.policy();
        let enforce = tx
            .recipients
            .iter()
            .any(|r| policy.dmarc_mode(r.domain()) == DmarcMode::Enforce);
        if enforce && verdict.dmarc_failed() && verdict.dmarc_policy == "reject" {
            crate::metrics::get().rejected("dmarc_reject");
            return Some((
                550,
                "5.7.1",
                format!(
                    "Message rejected: it fails DMARC and the policy of {} is reject",
                    verdict.from_domain
                ),
            ));
        }
        if enforce && verdict.dmarc_failed() && verdict.dmarc_policy == "quarantine" {
            verdict.quarantined = true;
        }
        if verdict.is_temp_error() && self.ctx.checks.trust.on_dns_error == DnsErrorPolicy::Tempfail
        {
            crate::metrics::get().rejected("auth_temperror");
            return Some((
                451,
                "4.4.3",
                "Temporary DNS failure checking the message's authentication; try again later"
                    .into(),
            ));
        }
        None
    }

    /// RFC 5321 4.4 trace header, with RFC 3848 protocol names.
    fn received_header(&self, body: &MessageBody) -> String {
        let tx = self.tx.as_ref();
        let smtputf8 = tx.is_some_and(|tx| tx.smtputf8);
        let protocol = match (self.esmtp, self.tls.is_some(), smtputf8) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "UTF8SMTP",
            (true, true, true) => "UTF8SMTPS",
        };
        let helo = printable(self.helo.as_deref().unwrap_or("unknown"));
        let mut header = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (Breakwater) with {protocol} id {}",
            self.peer.ip(),
            self.ctx.hostname,
            body.id()
        );
        if let Some(tls) = &self.tls {
            header.push_str(&format!(
                "\r\n\t(using {} with cipher {})",
                tls.version, tls.cipher
            ));
        }
        // Name the recipient only when there is exactly one (privacy, as Postfix).
        if let Some([rcpt]) = tx.map(|tx| tx.recipients.as_slice()) {
            header.push_str(&format!(
                "\r\n\tfor {}",
                printable(&crate::address::path(&rcpt.address).unwrap_or_default())
            ));
        }
        let date = time::OffsetDateTime::now_utc()
            .format(&Rfc2822)
            .unwrap_or_default();
        header.push_str(&format!(";\r\n\t{date}\r\n"));
        header
    }
}

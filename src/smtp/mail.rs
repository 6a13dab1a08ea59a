//! MAIL FROM: start a transaction. The reverse-path is not policed here
//! (bounces from `<>` must get through); size and TLS requirements, spool
//! space (452 4.3.1 below `min_free`), the client's message rate, and the SPF check (its verdict is used at RCPT,
//! per recipient domain, and in DMARC at end of data) are.

use smtp_proto::{
    MailFrom, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{Session, Transaction};
use crate::config::DnsErrorPolicy;
use crate::envelope::DsnRet;
use crate::policy::limits::Event;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn cmd_mail(&mut self, from: MailFrom<String>) {
        if self.helo.is_none() {
            return self.error_reply(503, "5.5.1", "Send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.error_reply(503, "5.5.1", "Nested MAIL command");
        }
        let has_params = from.flags != 0 || from.size != 0 || from.env_id.is_some();
        if has_params && !self.esmtp {
            return self.error_reply(555, "5.5.4", "MAIL parameters need EHLO");
        }
        if from.size as u64 > self.ctx.config.max_message_size {
            return self.error_reply(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
        }
        // Not the client's fault, so not counted as an error (no tarpit).
        if let Err(shortage) = self.ctx.spool.check_space(from.size as u64) {
            crate::metrics::get().rejected("insufficient_storage");
            tracing::warn!(client = %self.peer, %shortage, "mail deferred: insufficient storage");
            self.reply(452, "4.3.1", "Insufficient system storage; try again later");
            return;
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error_reply(555, "5.5.4", "BODY=BINARYMIME is not supported");
        }
        if from.flags & MAIL_REQUIRETLS != 0 && self.tls.is_none() {
            return self.error_reply(530, "5.7.10", "REQUIRETLS needs a TLS session");
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self.error_reply(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8");
        }
        // RFC 5321 4.1.2: a reverse-path is `<>` or a mailbox with a domain;
        // kept in wire form (quoted local part) so it can be relayed as sent.
        let sender = match crate::address::canonical(&from.address, smtputf8) {
            Ok(sender) => sender,
            Err(why) => {
                tracing::info!(client = %self.peer, from = ?from.address, %why, "mail refused: bad sender address");
                return self.error_reply(
                    553,
                    "5.1.7",
                    &format!("Bad sender address syntax: {why}"),
                );
            }
        };
        if let Err(limit) = self.ctx.checks.limits.check(self.peer.ip(), Event::Message) {
            crate::metrics::get().rejected("rate_limited");
            tracing::info!(client = %self.peer, limit, "mail refused: rate limit");
            return self.error_reply(
                451,
                "4.7.1",
                "Too much mail from your address; slow down and try again later",
            );
        }
        let spf = match &self.ctx.checks.auth {
            Some(auth) => {
                let helo = self.helo.clone().unwrap_or_default();
                Some(auth.check_spf(self.peer.ip(), &helo, &sender).await)
            }
            None => None,
        };
        if spf.as_ref().is_some_and(|spf| spf.is_temp_error())
            && self.ctx.checks.trust.on_dns_error == DnsErrorPolicy::Tempfail
        {
            tracing::info!(client = %self.peer, from = %sender, "mail deferred: SPF temperror");
            return self.error_reply(
                451,
                "4.4.3",
                "Temporary DNS failure checking SPF; try again later",
            );
        }
        let dsn_ret = if from.flags & MAIL_RET_FULL != 0 {
            Some(DsnRet::Full)
        } else if from.flags & MAIL_RET_HDRS != 0 {
            Some(DsnRet::Hdrs)
        } else {
            None
        };
        self.tx = Some(Transaction {
            sender,
            dsn_ret,
            dsn_envid: from.env_id,
            smtputf8,
            body_8bitmime: from.flags & MAIL_BODY_8BITMIME != 0,
            requiretls: from.flags & MAIL_REQUIRETLS != 0,
            recipients: Vec::new(),
            bdat: None,
            spf,
        });
        self.reply(250, "2.1.0", "Sender OK");
    }
}

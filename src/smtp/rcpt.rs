//! RCPT TO: the relay decision, made here and only here (no backscatter).

use smtp_proto::{
    RcptTo, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Session;
use crate::envelope::{Recipient, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use crate::policy::RcptVerdict;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn cmd_rcpt(&mut self, to: RcptTo<String>) {
        let max_recipients = self.ctx.config.max_recipients;
        let Some(tx) = &self.tx else {
            return self.error_reply(503, "5.5.1", "Need MAIL command first");
        };
        if tx.bdat.is_some() {
            return self.error_reply(503, "5.5.1", "RCPT not allowed during BDAT");
        }
        if tx.recipients.len() >= max_recipients {
            return self.error_reply(452, "4.5.3", "Too many recipients");
        }
        if (to.flags != 0 || to.orcpt.is_some()) && !self.esmtp {
            return self.error_reply(555, "5.5.4", "RCPT parameters need EHLO");
        }
        if !tx.smtputf8 && !to.address.is_ascii() {
            return self.error_reply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8");
        }
        let verdict = if to.address.is_empty() {
            RcptVerdict::BadSyntax("empty address")
        } else {
            self.ctx.policy().check(&to.address)
        };
        let address = match verdict {
            RcptVerdict::Accept(address) => address,
            RcptVerdict::RelayDenied(why) => {
                crate::metrics::get().rejected("relay_denied");
                tracing::info!(client = %self.peer, rcpt = %to.address, reason = why, "rcpt rejected: relay denied");
                return self.error_reply(550, "5.7.1", &format!("<{}>: {why}", to.address));
            }
            RcptVerdict::UnknownUser => {
                crate::metrics::get().rejected("unknown_user");
                tracing::info!(client = %self.peer, rcpt = %to.address, "rcpt rejected: unknown user");
                return self.error_reply(
                    550,
                    "5.1.1",
                    &format!("<{}>: Recipient address rejected: User unknown", to.address),
                );
            }
            RcptVerdict::BadSyntax(why) => {
                return self.error_reply(553, "5.1.3", &format!("Bad recipient address: {why}"));
            }
        };
        let mut notify = 0;
        for (flag, ours) in [
            (RCPT_NOTIFY_SUCCESS, NOTIFY_SUCCESS),
            (RCPT_NOTIFY_FAILURE, NOTIFY_FAILURE),
            (RCPT_NOTIFY_DELAY, NOTIFY_DELAY),
            (RCPT_NOTIFY_NEVER, NOTIFY_NEVER),
        ] {
            if to.flags & flag != 0 {
                notify |= ours;
            }
        }
        let tx = self.tx.as_mut().expect("checked above");
        // Duplicates are accepted but stored once, as Postfix's cleanup does.
        if !tx
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&address))
        {
            tx.recipients.push(Recipient {
                address,
                // The parser keeps only the address; RFC 3461 DSNs want the type too.
                orcpt: to.orcpt.map(|addr| format!("rfc822;{addr}")),
                notify,
            });
        }
        self.reply(250, "2.1.5", "Recipient OK");
    }
}

//! RCPT TO: the relay decision, made here and only here (no backscatter):
//! the domain and recipient list or callout, the client's recipient rate,
//! and the SPF verdict for domains that reject SPF failures.

use smtp_proto::{
    RcptTo, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Session;
use crate::config::SpfMode;
use crate::envelope::{Recipient, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use crate::policy::limits::Event;
use crate::policy::{CalloutDecision, RcptVerdict};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn cmd_rcpt(&mut self, to: RcptTo<String>) {
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
        if let Err(limit) = self
            .ctx
            .checks
            .limits
            .check(self.peer.ip(), Event::Recipient)
        {
            crate::metrics::get().rejected("rate_limited");
            tracing::info!(client = %self.peer, rcpt = %to.address, limit, "rcpt refused: rate limit");
            return self.error_reply(
                451,
                "4.7.1",
                "Too many recipients from your address; slow down and try again later",
            );
        }
        let policy = self.ctx.policy();
        let verdict = if to.address.is_empty() {
            RcptVerdict::BadSyntax("empty address")
        } else if let Err(why) = crate::address::canonical(&to.address, tx.smtputf8) {
            tracing::info!(client = %self.peer, rcpt = ?to.address, %why, "rcpt refused: bad address");
            return self.error_reply(
                553,
                "5.1.3",
                &format!("Bad recipient address syntax: {why}"),
            );
        } else {
            policy.check(&to.address)
        };
        let address = match verdict {
            RcptVerdict::Accept(address) => address,
            RcptVerdict::Callout(request) => {
                let answer = match &self.ctx.checks.callout {
                    Some(callout) => callout.verify(&request.address, &request.upstream).await,
                    None => crate::policy::callout::Answer::Unavailable("no callout".into()),
                };
                match request.decide(&answer) {
                    CalloutDecision::Accept => request.address,
                    CalloutDecision::UnknownUser => {
                        crate::metrics::get().rejected("unknown_user");
                        tracing::info!(client = %self.peer, rcpt = %to.address, ?answer, "rcpt rejected: unknown user (callout)");
                        return self.error_reply(
                            550,
                            "5.1.1",
                            &format!("<{}>: Recipient address rejected: User unknown", to.address),
                        );
                    }
                    CalloutDecision::TryLater => {
                        tracing::info!(client = %self.peer, rcpt = %to.address, ?answer, "rcpt deferred: recipient cannot be verified now");
                        return self.error_reply(
                            451,
                            "4.4.3",
                            &format!(
                                "<{}>: Recipient cannot be verified now; try again later",
                                to.address
                            ),
                        );
                    }
                }
            }
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
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let spf_failed = self
            .tx
            .as_ref()
            .and_then(|tx| tx.spf.as_ref())
            .is_some_and(|spf| spf.is_fail());
        if spf_failed && policy.spf_mode(domain) == SpfMode::Reject {
            crate::metrics::get().rejected("spf_fail");
            tracing::info!(client = %self.peer, rcpt = %address, "rcpt rejected: SPF fail");
            // RFC 7372: 5.7.23 SPF validation failed.
            return self.error_reply(
                550,
                "5.7.23",
                "SPF validation failed: the sending domain does not authorize your address",
            );
        }
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

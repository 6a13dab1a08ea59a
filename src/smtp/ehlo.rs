//! EHLO / HELO: greet, reset any transaction, advertise extensions.

use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Session;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn cmd_ehlo(&mut self, host: String, extended: bool) {
        // RFC 5321 4.1.4: EHLO/HELO also resets the transaction.
        self.tx = None;
        self.esmtp = extended;
        let greeting = format!(
            "{} Hello {} [{}]",
            self.ctx.hostname,
            printable(&host),
            self.peer.ip()
        );
        self.helo = Some(host);
        if !extended {
            self.reply(250, "", &greeting);
            return;
        }
        let mut lines = vec![
            greeting,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if self.tls.is_none() && self.ctx.tls.acceptor().is_some() {
            lines.push("STARTTLS".to_string());
        }
        if self.tls.is_some() {
            // RFC 8689 3: offered only over TLS.
            lines.push("REQUIRETLS".to_string());
        }
        lines.push("HELP".to_string());
        self.reply_lines(250, &lines);
    }
}

/// Client-supplied text made safe for replies and trace headers.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .take(255)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

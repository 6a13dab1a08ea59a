//! STARTTLS (RFC 3207). The handshake itself happens in the listener, which
//! owns the stream; here we only decide whether to answer 220.

use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{Flow, Session};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn cmd_starttls(&mut self) -> Flow {
        if self.tls.is_some() {
            self.error_reply(503, "5.5.1", "TLS already active");
            return Flow::Continue;
        }
        if self.ctx.tls.acceptor().is_none() {
            self.error_reply(454, "4.7.0", "TLS not available");
            return Flow::Continue;
        }
        self.reply(220, "2.0.0", "Ready to start TLS");
        Flow::StartTls
    }
}

//! The one door to mail-parser for the stages that read message content
//! (the web reader and the lure scorer).
//!
//! Why a guard: our `mail_render` fuzz target made mail-parser 0.11.9 panic
//! on malformed nested MIME (`debug_assert!(false, "Invalid part ID…")` in
//! its `parsers/message.rs`). That assertion exists only in builds with debug
//! assertions — a release build carries on — but the next parser bug may be
//! a real panic. Mail is written by strangers, so a parser bug must
//! cost only the rendering of that one message — the web worker, the admin
//! page listing it, or the SMTP session scoring it must carry on. A message
//! the parser cannot handle is treated like one it cannot parse at all: the
//! caller shows or scores it as undecodable, and the raw bytes stay intact in
//! the spool and are still delivered.

use mail_parser::{Message, MessageParser};

/// Parse `raw`; `None` if mail-parser rejects it or panics on it.
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    match std::panic::catch_unwind(|| MessageParser::default().parse(raw)) {
        Ok(message) => message,
        Err(_) => {
            tracing::warn!(
                bytes = raw.len(),
                "mail-parser panicked on a message; showing it as undecodable"
            );
            None
        }
    }
}

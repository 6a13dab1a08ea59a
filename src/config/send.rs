//! `[send]`: mail users write in the web reader during an outage (reply,
//! forward, new message). Off unless an operator turns it on.

use serde::{Deserialize, Serialize};

use super::{nonzero, ConfigError, Invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// Nobody sends through Breakwater.
    #[default]
    Off,
    /// Only while an upstream is down or held, or a drill runs.
    Outage,
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendConfig {
    pub mode: SendMode,
    /// Messages a user may send in any hour.
    pub max_per_hour: u32,
    /// To + Cc + Bcc of one message.
    pub max_recipients: u32,
    /// The whole message as sent, attachments included.
    pub max_message_size: bytesize::ByteSize,
    /// "" = other domains by their MX (with the `[delivery]` TLS policy);
    /// "host:port" = through this outbound smart host (STARTTLS required,
    /// AUTH when `relay_username` is set).
    pub relay: String,
    pub relay_username: String,
    /// The relay password, alone in a file (0600), never in the config.
    pub relay_password_file: Option<std::path::PathBuf>,
    /// After the upstream is back, a copy of each sent message goes to
    /// the sender's own mailbox there (`X-Breakwater-Sent-During-Outage:
    /// yes`), so the thread is complete in Outlook.
    pub copy_to_mailbox: bool,
    /// A current TOTP code at the first send of each session.
    pub require_totp: bool,
    /// How long users' sent mail stays in the spool after its last
    /// recipient is done (delivered or failed), for the Sent page.
    #[serde(with = "humantime_serde")]
    pub keep_sent: std::time::Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            mode: SendMode::Off,
            max_per_hour: 30,
            max_recipients: 20,
            max_message_size: bytesize::ByteSize::mib(10),
            relay: String::new(),
            relay_username: String::new(),
            relay_password_file: None,
            copy_to_mailbox: true,
            require_totp: false,
            keep_sent: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl SendConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
        if !self.relay.is_empty() && super::parse_host_port(&self.relay).is_none() {
            return Err(invalid(
                "send.relay",
                format!("{:?} is not \"host:port\"", self.relay),
            ));
        }
        if !self.relay_username.is_empty() {
            if self.relay.is_empty() {
                return Err(invalid(
                    "send.relay_username",
                    "is set but send.relay is empty".into(),
                ));
            }
            if self.relay_password_file.is_none() {
                return Err(invalid(
                    "send.relay_password_file",
                    "is needed with send.relay_username (a file holding only the password)".into(),
                ));
            }
        }
        nonzero(
            invalid,
            &[
                ("send.max_per_hour", u64::from(self.max_per_hour)),
                ("send.max_recipients", u64::from(self.max_recipients)),
                ("send.max_message_size", self.max_message_size.as_u64()),
            ],
        )
    }
}

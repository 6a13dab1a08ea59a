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
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            mode: SendMode::Off,
            max_per_hour: 30,
            max_recipients: 20,
            max_message_size: bytesize::ByteSize::mib(10),
        }
    }
}

impl SendConfig {
    pub(super) fn validate(&self, invalid: &Invalid) -> Result<(), ConfigError> {
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

//! TRUST: what a message claims versus what it is. Reads a message, writes
//! a verdict; the SMTP stage decides what a verdict means for the
//! transaction (per-domain policy), this stage never rejects by itself.
//!
//! - [`auth`]: SPF, DKIM, ARC and DMARC via mail-auth, as an RFC 8601
//!   `Authentication-Results` header added on delivery; forged copies of our
//!   own results are removed.
//! - [`lure`]: outage-themed phishing score, stored with the message,
//!   shown in the web reader, added as `X-Breakwater-Lure` on delivery.

pub mod auth;
pub mod lure;

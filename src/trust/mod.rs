//! TRUST: what a message claims versus what it is. Reads a message, writes
//! a verdict; never rejects or deletes by itself.
//!
//! - [`lure`]: outage-themed phishing score, stored with the message,
//!   shown in the web reader, added as `X-Breakwater-Lure` on delivery.
//!
//! (SPF/DKIM/DMARC results are the next part of this stage.)

pub mod lure;

//! DRILL: rehearsing and watching for the outage Breakwater exists for.
//!
//! - [`check`]: the deployment self-check (`breakwater check`): MX order and
//!   TTLs, our host name and PTR, SPF and DMARC, upstream and listener TLS.
//! - [`alerts`]: the outage monitor inside `serve`: active upstream probes,
//!   queue thresholds, webhook and mail notifications with repeats and
//!   recovery notices.

pub mod alerts;
pub mod check;

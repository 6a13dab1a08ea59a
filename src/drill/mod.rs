//! DRILL: rehearsing and watching for the outage Breakwater exists for.
//!
//! - [`check`]: the deployment self-check (`breakwater check`): MX order and
//!   TTLs, our host name and PTR, SPF and DMARC, upstream and listener TLS.
//! - [`alerts`]: the outage monitor inside `serve`: active upstream probes,
//!   queue thresholds, webhook and mail notifications with repeats and
//!   recovery notices.
//! - [`drills`]: failover drills (hold → spool → probe → release → drain
//!   report), steered through the admin API and shown in the web admin.

pub mod alerts;
pub mod check;
pub mod drills;
mod submit;

//! DRILL: rehearsing and watching for the outage Breakwater exists for.
//!
//! - [`check`]: the deployment self-check (`breakwater check`): MX order and
//!   TTLs, our host name and PTR, SPF and DMARC, upstream and listener TLS.

pub mod check;

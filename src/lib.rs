//! Breakwater: a mail-continuity relay. It stands as a secondary (or gateway)
//! MX in front of the real mail host and makes sure inbound mail is never
//! bounced, lost or stalled unseen while that host is down.
//!
//! The modules follow the data: **SMTP intake → policy → spool → delivery →
//! upstream**, with the spool as the hub every other part talks to.
//!
//! - [`config`]: the operator's TOML, validated with errors that name file and key.
//! - [`envelope`]: the small shared types (queue ID, envelope, delivery state).
//! - [`smtp`]: INTAKE — the inbound SMTP server; answers 250 only after the
//!   spool has the message on disk.
//! - [`policy`]: who may send to whom: configured domains, recipient lists and
//!   callouts, client rate limits, DNSBLs; never an open relay.
//! - [`dns`]: the one resolver configuration every stage shares.
//! - [`spool`]: THE HUB — fsync'd segment files (truth) + sled index (derived).
//! - [`delivery`]: DELIVERY — routes (static/MX), the SMTP client, per-recipient
//!   retries, upstream circuit + auto-flush, holds, DSNs.
//! - [`admin`]: the admin HTTP API (queue inspection and actions, upstreams,
//!   queue shape, health, metrics) with bearer tokens and a hash-chained audit log.
//! - [`web`]: the web reader for users (their spooled mail) and admins.
//! - [`trust`]: verdicts about a message (SPF/DKIM/ARC/DMARC, outage-lure score).
//! - [`drill`]: the deployment self-check, failover drills and the outage
//!   alert monitor.
//! - [`mime`]: the guarded entry to mail-parser (a parser panic costs only
//!   the rendering of that one message).
//! - [`metrics`]: Prometheus counters/histograms shared by the stages.
//! - [`server`]: wires the stages together for `serve` and for tests.
//! - [`cli`]: the `breakwater` command line; `main.rs` only calls into it.
//! - [`logging`]: tracing setup, text or JSON, one line per message event.

pub mod accounts;
pub mod address;
pub mod admin;
pub mod alert_channels;
pub mod api_tokens;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod drill;
pub mod envelope;
pub mod fsutil;
pub mod heap;
pub mod http_listener;
pub mod local_changes;
pub mod logging;
pub mod metrics;
pub mod mime;
pub mod monitor;
pub mod mta_sts;
pub mod policy;
pub mod secrets;
pub mod security_events;
pub mod selfcheck;
pub mod sending;
pub mod server;
pub mod smtp;
pub mod smtp_client;
pub mod spool;
pub mod tls;
pub mod trust;
pub mod verdict;
pub mod web;

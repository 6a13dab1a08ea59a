//! Prometheus metrics, shared by every stage (a cross-cutting concern, so
//! one process-wide registry like the `metrics` crate's global recorder).
//!
//! Counters and histograms are updated where things happen; gauges that
//! describe the spool (depth by status, oldest age, upstream state) are
//! computed when `/metrics` is scraped, from the spool and delivery engine.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    pub accepted: Counter,
    pub accepted_bytes: Counter,
    pub rejected: Family<Labels, Counter>,
    pub delivery_attempts: Family<Labels, Counter>,
    pub fsync_seconds: Histogram,
    pub acceptance_seconds: Histogram,
    pub queue_messages: Family<Labels, Gauge>,
    pub oldest_message_age: Gauge<f64, AtomicU64>,
    pub upstream_up: Family<Labels, Gauge>,
    pub upstream_queue: Family<Labels, Gauge>,
    pub tls_expiry_seconds: Gauge<f64, AtomicU64>,
    pub spool_used_bytes: Gauge,
    pub spool_free_bytes: Gauge,
    pub spool_min_free_bytes: Gauge,
    pub alerts: Family<Labels, Counter>,
    pub security_events: Family<Labels, Counter>,
    pub alerts_active: Family<Labels, Gauge>,
    /// Warnings of the HTML parser under the sanitiser (e.g. "foster
    /// parenting not implemented" for mis-nested tables): counted, not
    /// logged, since any sender could otherwise add log lines per view.
    pub html_parser_warnings: Counter,
    pub compacted_messages: Counter,
    pub bounce_guard_trips: Counter,
    /// Cluster mode: 1 while this node's last database commit succeeded.
    pub cluster_database_up: Gauge,
    /// Cluster mode: messages this node acknowledged that the database
    /// does not hold yet (marked on local disk, uploaded when it is back).
    pub cluster_unreplicated: Gauge,
    /// Cluster mode: messages committed to the database before their 250.
    pub cluster_replicated: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("breakwater");
        let metrics = Metrics {
            connections: Counter::default(),
            accepted: Counter::default(),
            accepted_bytes: Counter::default(),
            rejected: Family::default(),
            delivery_attempts: Family::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            acceptance_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            queue_messages: Family::default(),
            oldest_message_age: Gauge::default(),
            upstream_up: Family::default(),
            upstream_queue: Family::default(),
            tls_expiry_seconds: Gauge::default(),
            spool_used_bytes: Gauge::default(),
            spool_free_bytes: Gauge::default(),
            spool_min_free_bytes: Gauge::default(),
            alerts: Family::default(),
            security_events: Family::default(),
            alerts_active: Family::default(),
            html_parser_warnings: Counter::default(),
            compacted_messages: Counter::default(),
            bounce_guard_trips: Counter::default(),
            cluster_database_up: Gauge::default(),
            cluster_unreplicated: Gauge::default(),
            cluster_replicated: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "smtp_connections",
            "SMTP connections accepted",
            metrics.connections.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages acknowledged with 250",
            metrics.accepted.clone(),
        );
        registry.register(
            "messages_accepted_bytes",
            "Bytes of acknowledged messages",
            metrics.accepted_bytes.clone(),
        );
        registry.register(
            "messages_rejected",
            "Messages or recipients refused, by reason",
            metrics.rejected.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts per recipient, by outcome",
            metrics.delivery_attempts.clone(),
        );
        registry.register(
            "spool_fsync_seconds",
            "Time of one group-commit write + fdatasync",
            metrics.fsync_seconds.clone(),
        );
        registry.register(
            "smtp_acceptance_seconds",
            "From end of data to the 250 (durable spooling)",
            metrics.acceptance_seconds.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the spool by status",
            metrics.queue_messages.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest spooled message",
            metrics.oldest_message_age.clone(),
        );
        registry.register(
            "upstream_up",
            "1 when the upstream takes connections, 0 when down or held",
            metrics.upstream_up.clone(),
        );
        registry.register(
            "upstream_queue_messages",
            "Spooled messages with a recipient pending for the upstream",
            metrics.upstream_queue.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the SMTP listener's certificate expires",
            metrics.tls_expiry_seconds.clone(),
        );
        registry.register(
            "spool_used_bytes",
            "Bytes of spool files on disk (segments and large bodies)",
            metrics.spool_used_bytes.clone(),
        );
        registry.register(
            "spool_free_bytes",
            "Free bytes on the spool's file system",
            metrics.spool_free_bytes.clone(),
        );
        registry.register(
            "spool_min_free_bytes",
            "spool.min_free: below this free space, mail is refused with 452",
            metrics.spool_min_free_bytes.clone(),
        );
        registry.register(
            "cluster_database_up",
            "Cluster mode: 1 while this node's database commits succeed",
            metrics.cluster_database_up.clone(),
        );
        registry.register(
            "cluster_unreplicated_messages",
            "Cluster mode: acknowledged messages the database does not hold yet",
            metrics.cluster_unreplicated.clone(),
        );
        registry.register(
            "cluster_replicated",
            "Cluster mode: messages committed to the database (acceptance and reconciliation)",
            metrics.cluster_replicated.clone(),
        );
        registry.register(
            "alerts",
            "Alert notifications raised, by event",
            metrics.alerts.clone(),
        );
        registry.register(
            "security_events",
            "Security events (token, admin account, MFA, audit chain, configuration), by event",
            metrics.security_events.clone(),
        );
        registry.register(
            "alert_active",
            "1 while an alert (upstream down, queue depth, queue age) lasts",
            metrics.alerts_active.clone(),
        );
        registry.register(
            "spool_compacted_messages",
            "Live messages copied forward by segment compaction so their old segment could go",
            metrics.compacted_messages.clone(),
        );
        registry.register(
            "bounce_guard_trips",
            "Upstreams held by the bounce guard (the same permanent reply for many recipients)",
            metrics.bounce_guard_trips.clone(),
        );
        registry.register(
            "html_parser_warnings",
            "Warnings of the HTML parser under the web reader's sanitiser (not logged)",
            metrics.html_parser_warnings.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.get_or_create(&label("reason", reason)).inc();
    }

    pub fn alert(&self, event: &str) {
        self.alerts.get_or_create(&label("event", event)).inc();
    }

    pub fn security_event(&self, event: &str) {
        self.security_events
            .get_or_create(&label("event", event))
            .inc();
    }

    pub fn alert_active(&self, key: &str, active: bool) {
        self.alerts_active
            .get_or_create(&label("alert", key))
            .set(i64::from(active));
    }

    pub fn delivery(&self, outcome: &str) {
        self.delivery_attempts
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    pub fn set_queue(&self, status: &str, count: i64) {
        self.queue_messages
            .get_or_create(&label("status", status))
            .set(count);
    }

    pub fn set_upstream(&self, name: &str, up: bool) {
        self.upstream_up
            .get_or_create(&label("upstream", name))
            .set(i64::from(up));
    }

    pub fn set_upstream_depth(&self, name: &str, count: i64) {
        self.upstream_queue
            .get_or_create(&label("upstream", name))
            .set(count);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

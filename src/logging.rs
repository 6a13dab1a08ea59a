//! Logging: one line per event, keyed by `queue_id` for message events, so
//! `grep QUEUEID` tells a message's story as Postfix's mail log does.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Targets whose events are counted, never written: html5ever's tree
/// builder warns once per parse of mis-nested markup that any sender can put
/// in a message.
const COUNTED_NOT_LOGGED: &str = "html5ever";

fn counted_not_logged(target: &str) -> bool {
    target.starts_with(COUNTED_NOT_LOGGED)
}

/// Install the global subscriber. `RUST_LOG` overrides the default `info`.
pub fn init(format: LogFormat) {
    let _ = subscriber(format, std::io::stderr).try_init();
}

fn subscriber<W>(format: LogFormat, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let quiet = filter_fn(|meta| !counted_not_logged(meta.target()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(quiet).with_filter(filter))
        .with(ParserWarnings.with_filter(filter_fn(|meta| {
            counted_not_logged(meta.target()) && *meta.level() <= tracing::Level::WARN
        })))
}

/// Counts what [`COUNTED_NOT_LOGGED`] keeps out of the log.
struct ParserWarnings;

impl<S: tracing::Subscriber> Layer<S> for ParserWarnings {
    fn on_event(
        &self,
        _event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        crate::metrics::get().html_parser_warnings.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn html_parser_warnings_are_counted_not_logged() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = subscriber(LogFormat::Text, move || sink.clone());
        let before = crate::metrics::get().html_parser_warnings.get();
        tracing::subscriber::with_default(subscriber, || {
            // What tracing-log makes of html5ever's `log::warn!`.
            tracing::warn!(target: "html5ever::tree_builder", "foster parenting not implemented");
            tracing::info!("spool: something worth logging");
        });
        let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(!logged.contains("foster"), "{logged}");
        assert!(logged.contains("worth logging"), "{logged}");
        assert!(crate::metrics::get().html_parser_warnings.get() > before);
    }
}

//! The runner's log: a minimal `tracing` subscriber that writes each event to stderr as one
//! level-prefixed line (`WARN: disk almost full`), the log-line format the host reads back from a
//! child's stderr and logs under the plugin's name.
//!
//! A library plugin's log events reach the runner through the host-services log function (see
//! `loader::dynamic`), which emits them as `tracing` events; this subscriber turns them into lines.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Writes events at or above a level to stderr, one line each.
#[derive(Debug)]
pub(crate) struct StderrLog {
    max: LevelFilter,
    next_span: AtomicU64,
}

impl StderrLog {
    /// A subscriber recording up to `level` (`off`, `error`, `warn`, `info`, `debug`, `trace`;
    /// anything else is `info`).
    pub(crate) fn new(level: &str) -> StderrLog {
        let max = match level {
            "off" => LevelFilter::OFF,
            "error" => LevelFilter::ERROR,
            "warn" => LevelFilter::WARN,
            "debug" => LevelFilter::DEBUG,
            "trace" => LevelFilter::TRACE,
            _ => LevelFilter::INFO,
        };
        StderrLog {
            max,
            next_span: AtomicU64::new(1),
        }
    }
}

/// The prefix of a line at `level`.
fn prefix(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Collects an event's message and its other fields (except `plugin`, the instance name, which
/// the host adds itself).
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if field.name() != "plugin" {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else if field.name() != "plugin" {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

/// An event's message followed by its fields.
fn render(event: &Event<'_>) -> String {
    let mut fields = Fields::default();
    event.record(&mut fields);
    fields.message.push_str(&fields.rest);
    fields.message
}

/// `LEVEL: text`, one line per line of `text` (each with the prefix), newline-terminated.
pub(crate) fn format_lines(level: Level, text: &str) -> String {
    let prefix = prefix(level);
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let _ = writeln!(out, "{prefix}: {line}");
    }
    out
}

impl Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let text = format_lines(*event.metadata().level(), &render(event));
        // One write per event, so lines of concurrent events do not interleave.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_carries_the_level() {
        assert_eq!(format_lines(Level::WARN, "disk full"), "WARN: disk full\n");
        assert_eq!(
            format_lines(Level::ERROR, "panicked\r\n  at x.rs"),
            "ERROR: panicked\nERROR:   at x.rs\n"
        );
    }

    #[test]
    fn the_level_filter_follows_the_host() {
        let log = StderrLog::new("warn");
        assert_eq!(log.max_level_hint(), Some(LevelFilter::WARN));
        assert_eq!(StderrLog::new("nonsense").max, LevelFilter::INFO);
        assert_eq!(StderrLog::new("off").max, LevelFilter::OFF);
    }

    #[test]
    fn fields_other_than_the_plugin_name_follow_the_message() {
        let dispatch = tracing::Dispatch::new(Capture(std::sync::Mutex::new(None)));
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(plugin = "p", plugin_target = "kv", "stored {}", 3);
        });
        let captured = dispatch
            .downcast_ref::<Capture>()
            .and_then(|c| c.0.lock().unwrap().clone())
            .unwrap();
        assert_eq!(captured, "stored 3 plugin_target=kv");
    }

    /// Records the message (with fields) of the last event, as `StderrLog` would print it.
    struct Capture(std::sync::Mutex<Option<String>>);

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            *self.0.lock().unwrap() = Some(render(event));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

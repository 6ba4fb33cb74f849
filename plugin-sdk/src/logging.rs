//! Plugin log lines reach the host's log.
//!
//! A cdylib has its own copies of the `tracing` and `log` globals, so the host's subscriber never
//! sees a plugin's events. The first instance the host creates installs, in the library, a `tracing`
//! subscriber, a `log` logger and a panic hook that forward every line through the host-services
//! vtable, where the host tags it with the plugin's name.
//!
//! Which instance a line belongs to: while the SDK polls a call of an instance it marks that
//! instance current on the thread (see [`host_link`]); lines from elsewhere (a task the plugin
//! spawned, a thread of its own) go to the most recently created live instance of the library.
//!
//! This module knows instances only as [`HostLink`]s: it depends on `host_link`, never on `export`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Once, Weak};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span;

use crate::abi::{BW_LOG_DEBUG, BW_LOG_ERROR, BW_LOG_INFO, BW_LOG_TRACE, BW_LOG_WARN};
use crate::host_link::{self, HostLink};

/// Live instances of this library, newest last: where lines without a current instance go.
static INSTANCES: Mutex<Vec<Weak<HostLink>>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Registers an instance's link and, the first time, installs the forwarding subscriber, logger and
/// panic hook in this library.
pub(crate) fn install(link: &Arc<HostLink>) {
    if let Ok(mut instances) = INSTANCES.lock() {
        instances.retain(|w| w.strong_count() > 0);
        instances.push(Arc::downgrade(link));
    }
    let max_level = link.max_level();
    INSTALL.call_once(|| {
        let max = match max_level {
            0 => LevelFilter::OFF,
            BW_LOG_ERROR => LevelFilter::ERROR,
            BW_LOG_WARN => LevelFilter::WARN,
            BW_LOG_INFO => LevelFilter::INFO,
            BW_LOG_DEBUG => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        };
        // Another subscriber may already be set if the plugin set one itself: then that one wins.
        let _ = tracing::subscriber::set_global_default(HostSubscriber { max });
        if log::set_logger(&HostLogger).is_ok() {
            log::set_max_level(match max_level {
                0 => log::LevelFilter::Off,
                BW_LOG_ERROR => log::LevelFilter::Error,
                BW_LOG_WARN => log::LevelFilter::Warn,
                BW_LOG_INFO => log::LevelFilter::Info,
                BW_LOG_DEBUG => log::LevelFilter::Debug,
                _ => log::LevelFilter::Trace,
            });
        }
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = crate::PluginError::from_panic(info.payload());
            emit(BW_LOG_ERROR, "panic", &format!("{message}{location}"));
        }));
    });
}

/// Forgets an instance that is being freed.
pub(crate) fn uninstall(link: &Arc<HostLink>) {
    if let Ok(mut instances) = INSTANCES.lock() {
        instances.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(link)));
    }
}

/// Sends one line to the current instance's host, or to the newest live instance.
fn emit(level: u32, target: &str, message: &str) {
    let sent = host_link::with_current(|current| match current {
        Some(link) => {
            link.log(level, target, message);
            true
        }
        None => false,
    });
    if !sent {
        let newest = INSTANCES
            .lock()
            .ok()
            .and_then(|instances| instances.iter().rev().find_map(Weak::upgrade));
        if let Some(link) = newest {
            link.log(level, target, message);
        }
    }
}

/// The library's `tracing` subscriber: forwards events at or above the host's level to the host,
/// and keeps no spans (they would reach the host as nothing anyway: a line carries its event's
/// fields only).
///
/// Not `tracing_subscriber`'s registry and layers: the registry's span storage allocated and
/// zeroed tens of KiB per library at its first instance, a twentieth of a plugin's start-up with
/// a thousand plugins, for spans nobody read.
struct HostSubscriber {
    max: LevelFilter,
}

impl tracing::Subscriber for HostSubscriber {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        // Not `is_event()`: `tracing::enabled!` asks with a callsite that is neither event nor
        // span (a hint), and must hear yes for a level that is on.
        !metadata.is_span() && *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        // Never asked for: `enabled` turns every span down. An id is still owed.
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => BW_LOG_ERROR,
            tracing::Level::WARN => BW_LOG_WARN,
            tracing::Level::INFO => BW_LOG_INFO,
            tracing::Level::DEBUG => BW_LOG_DEBUG,
            tracing::Level::TRACE => BW_LOG_TRACE,
        };
        let mut line = Line(String::new());
        event.record(&mut line);
        emit(level, event.metadata().target(), &line.0);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// Formats an event as `message key=value ...`.
struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.push_message(format_args!("{value}"));
        } else {
            self.push_field(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.push_message(format_args!("{value:?}"));
        } else {
            self.push_field(field.name(), format_args!("{value:?}"));
        }
    }
}

impl Line {
    fn push_message(&mut self, message: std::fmt::Arguments<'_>) {
        let fields = std::mem::take(&mut self.0);
        let _ = write!(self.0, "{message}");
        if !fields.is_empty() {
            self.0.push(' ');
            self.0.push_str(&fields);
        }
    }

    fn push_field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{name}={value}");
    }
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => BW_LOG_ERROR,
            log::Level::Warn => BW_LOG_WARN,
            log::Level::Info => BW_LOG_INFO,
            log::Level::Debug => BW_LOG_DEBUG,
            log::Level::Trace => BW_LOG_TRACE,
        };
        emit(level, record.target(), &record.args().to_string());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    /// The levels the host asked for are on, for events and for `enabled!`; the others, and
    /// spans, are off.
    #[test]
    fn the_host_level_decides_and_spans_are_off() {
        let subscriber = HostSubscriber {
            max: LevelFilter::INFO,
        };
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(Level::INFO));
            assert!(tracing::enabled!(Level::ERROR));
            assert!(!tracing::enabled!(Level::DEBUG));
            assert!(tracing::event_enabled!(Level::WARN));
            assert!(!tracing::event_enabled!(Level::TRACE));
            assert!(!tracing::span_enabled!(Level::ERROR));
            assert!(tracing::info_span!("off").is_disabled());
        });
        let off = HostSubscriber {
            max: LevelFilter::OFF,
        };
        tracing::subscriber::with_default(off, || {
            assert!(!tracing::enabled!(Level::ERROR));
            assert!(!tracing::event_enabled!(Level::ERROR));
        });
    }
}

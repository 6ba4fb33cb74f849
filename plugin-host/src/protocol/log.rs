//! Plugin logs: the `log` notification a plugin sends, the level rule for lines a plugin writes
//! to stderr, and [`LogSink`], the plugin side's handle for sending `log` notifications.

#[cfg(test)]
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::outbox::Outbox;

/// The level of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Normal operation (the level of an unprefixed stderr line).
    Info,
    /// Detail for debugging.
    Debug,
    /// Very fine detail.
    Trace,
}

impl LogLevel {
    /// `"error"`, `"warn"`, `"info"`, `"debug"` or `"trace"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    /// The level a stderr prefix word names, in any case: `ERROR` (also `CRITICAL`, `FATAL`),
    /// `WARN` (also `WARNING`), `INFO`, `DEBUG`, `TRACE`.
    pub fn from_word(word: &str) -> Option<LogLevel> {
        const WORDS: [(&str, LogLevel); 8] = [
            ("error", LogLevel::Error),
            ("critical", LogLevel::Error),
            ("fatal", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("warning", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|&(_, level)| level)
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log record from a plugin: the params of a `log` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its level.
    pub level: LogLevel,
    /// The message.
    pub message: String,
    /// Structured fields, if any (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

impl LogRecord {
    /// A record without fields.
    pub fn new(level: LogLevel, message: impl Into<String>) -> LogRecord {
        LogRecord {
            level,
            message: message.into(),
            fields: None,
        }
    }
}

impl std::fmt::Display for LogRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.level.as_str().to_uppercase(),
            self.message
        )?;
        if let Some(fields) = &self.fields {
            for (k, v) in fields {
                write!(f, " {k}={v}")?;
            }
        }
        Ok(())
    }
}

/// Splits a line a plugin wrote to stderr into its level and message, by the rule of
/// `docs/protocol.md`: a line that starts with a level word (any case, see
/// [`LogLevel::from_word`]) followed by `:` has that level, and its message is the rest with
/// leading spaces removed; any other line is [`LogLevel::Info`] and kept whole. A trailing `\r` is
/// dropped. Python's default logging format (`WARNING:root:message`) is recognised.
pub fn parse_stderr_line(line: &str) -> (LogLevel, &str) {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some((word, rest)) = line.split_once(':')
        && word.len() <= 8
        && let Some(level) = LogLevel::from_word(word)
    {
        return (level, rest.trim_start_matches(' '));
    }
    (LogLevel::Info, line)
}

/// The plugin side's handle for sending `log` notifications to the host, from any thread,
/// without waiting. Get one from [`Server::log_sink`](super::Server::log_sink); once the
/// connection is closed, records are dropped.
#[cfg(test)]
#[derive(Clone)]
pub struct LogSink {
    pub(super) outbox: Arc<Outbox>,
}

#[cfg(test)]
impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

#[cfg(test)]
impl LogSink {
    /// Sends `record` as a `log` notification.
    pub fn send(&self, record: &LogRecord) {
        self.outbox.notify("log", record);
    }

    /// Sends a record of this level and message.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.send(&LogRecord::new(level, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_prefixes() {
        let cases = [
            ("ERROR: boom", LogLevel::Error, "boom"),
            ("error:boom", LogLevel::Error, "boom"),
            ("CRITICAL:root:down", LogLevel::Error, "root:down"),
            ("WARN: slow", LogLevel::Warn, "slow"),
            ("WARNING:root:slow", LogLevel::Warn, "root:slow"),
            ("INFO: up\r", LogLevel::Info, "up"),
            ("DEBUG:   x", LogLevel::Debug, "x"),
            ("Trace: y", LogLevel::Trace, "y"),
            ("plain words", LogLevel::Info, "plain words"),
            ("ERRORS: not a level", LogLevel::Info, "ERRORS: not a level"),
            (" ERROR: indented", LogLevel::Info, " ERROR: indented"),
            ("http://x", LogLevel::Info, "http://x"),
            ("", LogLevel::Info, ""),
        ];
        for (line, level, message) in cases {
            assert_eq!(parse_stderr_line(line), (level, message), "{line:?}");
        }
    }

    #[test]
    fn python_logging_and_tracebacks() {
        assert_eq!(
            parse_stderr_line("ERROR: disk full"),
            (LogLevel::Error, "disk full")
        );
        assert_eq!(
            parse_stderr_line("warning:root:slow"),
            (LogLevel::Warn, "root:slow")
        );
        assert_eq!(
            parse_stderr_line("Traceback (most recent call last):"),
            (LogLevel::Info, "Traceback (most recent call last):")
        );
    }

    #[test]
    fn records_read_and_print() {
        let record: LogRecord =
            serde_json::from_str(r#"{"level":"warn","message":"slow query","fields":{"ms":1200}}"#)
                .unwrap();
        assert_eq!(record.level, LogLevel::Warn);
        assert_eq!(record.to_string(), "WARN: slow query ms=1200");
        assert!(serde_json::from_str::<LogRecord>(r#"{"level":"loud","message":""}"#).is_err());
        let plain = serde_json::to_string(&LogRecord::new(LogLevel::Info, "hi")).unwrap();
        assert_eq!(plain, r#"{"level":"info","message":"hi"}"#);
    }
}

//! A child's log stream: its stderr, read line by line with a bounded line length, each line
//! logged at the level its prefix names (`docs/protocol.md`, [`parse_stderr_line`]) and tagged
//! with the plugin's name. `log` notifications from the protocol go through [`log_line`] too.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::protocol::LogLevel;
use crate::protocol::log::parse_stderr_line;

/// The longest stderr line kept; the rest of a longer line is dropped and the line marked.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// What a truncated line ends with.
const TRUNCATED: &str = " …[line truncated]";

/// Logs one plugin log line in the host's log at `level`, tagged `plugin = name`.
pub(crate) fn log_line(plugin: &str, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
    }
}

/// The last line a child wrote to its log, kept to explain a failed start.
pub(crate) type LastLine = Arc<Mutex<Option<String>>>;

/// Reads the child's log stream until it ends, logging every line under `plugin` and keeping the
/// last non-empty one in `last`.
pub(crate) async fn forward<R: AsyncRead + Unpin>(plugin: &str, stream: R, last: LastLine) {
    read_lines(stream, MAX_LINE, |line| {
        let (level, message) = parse_stderr_line(line);
        log_line(plugin, level, message);
        if !line.trim().is_empty() {
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(line.to_owned());
        }
    })
    .await;
}

/// Calls `on_line` with each line of `stream` (without its `\n`, invalid UTF-8 replaced), at most
/// `max` bytes of it; a longer line is cut there and marked. Never buffers more than `max` bytes
/// of a line. Stops at the end of the stream or on a read error.
async fn read_lines<R: AsyncRead + Unpin>(stream: R, max: usize, mut on_line: impl FnMut(&str)) {
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut line: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut emit = |line: &mut Vec<u8>, truncated: &mut bool| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if *truncated {
            text.push_str(TRUNCATED);
        }
        on_line(&text);
        line.clear();
        *truncated = false;
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (chunk, used, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max.saturating_sub(line.len());
        if chunk.len() > room {
            truncated = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if end {
            emit(&mut line, &mut truncated);
        }
    }
    if !line.is_empty() || truncated {
        emit(&mut line, &mut truncated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, max, |l| out.push(l.to_owned())).await;
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_last_unterminated_one() {
        assert_eq!(
            lines(b"INFO: a\n\nWARN: b\r\ntail", 100).await,
            ["INFO: a", "", "WARN: b\r", "tail"]
        );
        assert!(lines(b"", 100).await.is_empty());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_marked_and_the_next_line_is_intact() {
        let mut input = vec![b'x'; 40_000];
        input.extend_from_slice(b"\nnext\n");
        let out = lines(&input, 10).await;
        assert_eq!(out, [format!("xxxxxxxxxx{TRUNCATED}"), "next".to_owned()]);
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(lines(b"a\xffb\nok\n", 100).await, ["a\u{fffd}b", "ok"]);
    }

    #[tokio::test]
    async fn the_last_non_empty_line_is_kept() {
        let last = LastLine::default();
        forward("p", &b"ERROR: first\nsecond\n\n"[..], last.clone()).await;
        assert_eq!(last.lock().unwrap().as_deref(), Some("second"));
    }
}

//! The log's writer: standard error, with every secret redacted.
//!
//! `tracing_subscriber`'s formatter writes each event with one `write_all` of the whole line, so
//! redacting each write sees whole values. Secrets are the values the environment put into plugin
//! configs ([`Config::secrets`](crate::config::Config::secrets), registered with
//! [`backworks_plugin_host::redact`]); plugin log lines pass through here too, since they reach
//! the host's `tracing`.

use std::io::Write;

use backworks_plugin_host::redact;
use tracing_subscriber::fmt::MakeWriter;

/// Makes [`RedactingWriter`]s over standard error.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

/// Writes to standard error with secrets replaced by `[redacted]`.
#[derive(Debug)]
pub struct RedactingWriter(std::io::Stderr);

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> RedactingWriter {
        RedactingWriter(std::io::stderr())
    }
}

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

//! The wire protocol between the host and a plugin running in a child process (version
//! [`PROTOCOL_VERSION`]), specified in `docs/protocol.md`.
//!
//! One JSON-RPC 2.0 message per line over the child's stdin (host → plugin) and stdout
//! (plugin → host); the child's stderr is its log stream. The host asks `getmanifest`, checks the
//! answer with [`Manifest::check`], sends `init`, and then any number of `handle`,
//! `before_request`, `after_response` and `health_check` calls, many in flight at once, and at
//! last `shutdown`.
//!
//! This module is public for one purpose: driving a plugin over a connection you open yourself (a
//! socket, a container's stdio) with [`Client`], the same host side [`ProcessPlugin`] uses for the
//! children it spawns, and checking a peer's version ([`check_version`]). Everything else in it —
//! the framing, the messages, the writer's queue, the routing of answers by id, and the plugin
//! side (`serve`, used by the runner in `process/child.rs`) — is the crate's own.
//!
//! - [`Client`]: the host side: calls by id over any reader/writer pair, `closed()` with a
//!   [`CloseReason`] when the connection dies; [`Manifest`] and [`Features`] are the plugin's
//!   answer to `getmanifest`, [`LogRecord`] a `log` notification.
//!
//! ```no_run
//! use backworks_plugin_host::protocol::Client;
//! use backworks_plugin_sdk::Request;
//!
//! # async fn run(
//! #     stdout: tokio::io::DuplexStream,
//! #     stdin: tokio::io::DuplexStream,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! // `stdout` and `stdin`: the child's pipes, or any AsyncRead and AsyncWrite.
//! let client = Client::new(stdout, stdin, 64 << 20, |record| eprintln!("{record}"));
//! let manifest = client.manifest().await?;
//! manifest.check()?;
//! client.init("report", serde_json::json!({})).await?;
//! let response = client.handle(&Request::new("GET", "/report")).await?;
//! println!("{}", response.status);
//! # Ok(()) }
//! ```
//!
//! [`ProcessPlugin`]: crate::ProcessPlugin

mod client;
mod frame;
mod http;
pub(crate) mod log;
mod message;
mod outbox;
mod routing;
mod serve;
mod spin;

#[cfg(test)]
mod end_to_end;

pub use client::{Client, ClientError, DEFAULT_MAX_OUTBOUND};
pub use log::{LogLevel, LogRecord};
pub use message::{Features, Manifest};
pub use routing::CloseReason;
pub(crate) use serve::serve;
pub(crate) use spin::{DEFAULT_SPIN, SpinRead};

/// The protocol version this host and plugin side speak, `MAJOR.MINOR`. A peer is compatible when
/// its major equals ours; minors only add optional members and methods.
pub const PROTOCOL_VERSION: &str = "1.0";

/// Checks a peer's protocol version against [`PROTOCOL_VERSION`]: compatible when the majors are
/// equal (`"1.3"` is fine for a host speaking `"1.0"`, `"2.0"` is not). The version is
/// `MAJOR[.MINOR[.PATCH]]`, numbers only, optionally followed by a `-pre-release` tag, which is
/// ignored. The error says what was found and what was expected.
///
/// ```
/// use backworks_plugin_host::protocol::check_version;
/// assert!(check_version("1.0").is_ok());
/// assert!(check_version("1.7").is_ok());
/// assert_eq!(
///     check_version("2.0").unwrap_err().to_string(),
///     "plugin speaks protocol 2.0; this host speaks 1.0 (the major versions must be equal)"
/// );
/// ```
pub fn check_version(theirs: &str) -> Result<(), VersionError> {
    let ours = major(PROTOCOL_VERSION).unwrap_or(0);
    match major(theirs) {
        Some(major) if major == ours => Ok(()),
        Some(_) => Err(VersionError::Incompatible {
            found: theirs.to_owned(),
        }),
        None => Err(VersionError::Invalid {
            found: theirs.to_owned(),
        }),
    }
}

/// Why a peer's protocol version is refused: it says what was found and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Another major version.
    #[error(
        "plugin speaks protocol {found}; this host speaks {PROTOCOL_VERSION} (the major versions \
         must be equal)"
    )]
    Incompatible {
        /// The version the plugin speaks.
        found: String,
    },
    /// Not a version.
    #[error(
        "invalid protocol version {found:?}: expected MAJOR.MINOR, e.g. \"{PROTOCOL_VERSION}\""
    )]
    Invalid {
        /// What the plugin sent.
        found: String,
    },
}

/// The major of `MAJOR[.MINOR[.PATCH]][-pre]`, if the version is well formed.
fn major(version: &str) -> Option<u64> {
    let release = version
        .split_once('-')
        .map_or(version, |(release, _)| release);
    let mut parts = release.split('.');
    let major = parts.next()?;
    let mut count = 1;
    for part in parts {
        count += 1;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    if count > 3 || major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    major.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_compatible() {
        for v in ["1", "1.0", "1.9", "1.0.3", "1.2-beta.1"] {
            assert_eq!(check_version(v), Ok(()), "{v}");
        }
    }

    #[test]
    fn other_majors_and_garbage_are_refused_with_what_was_found() {
        let err = check_version("0.9").unwrap_err().to_string();
        assert!(err.contains("protocol 0.9") && err.contains("1.0"), "{err}");
        for v in ["", "x", "1.", ".1", "1.a", "1.0.0.0", "v1.0", " 1.0"] {
            let err = check_version(v).unwrap_err().to_string();
            assert!(err.starts_with("invalid protocol version"), "{v}: {err}");
        }
    }
}

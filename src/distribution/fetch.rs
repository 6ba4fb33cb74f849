//! Reading a package or an index file from a local path or an http(s) URL, with timeouts and a
//! size cap.

use std::path::PathBuf;
use std::time::Duration;

use super::error::DistError;

/// The largest download (a package or an index file) accepted.
pub const MAX_DOWNLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Connecting may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole download may take this long.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Where bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

impl Source {
    /// A URL when `text` starts with `http://` or `https://`, else a path.
    pub fn parse(text: &str) -> Source {
        if is_url(text) {
            Source::Url(text.to_owned())
        } else {
            Source::File(PathBuf::from(text))
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Url(url) => f.write_str(url),
        }
    }
}

pub(crate) fn is_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Reads files and URLs; one HTTP agent (connection pool) for a whole command.
#[derive(Debug)]
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

impl Fetcher {
    /// A fetcher with this module's timeouts; https through rustls with the `ring` provider and
    /// Mozilla's root certificates.
    pub fn new() -> Fetcher {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(TIMEOUT))
            .user_agent(concat!("backworks/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher {
            agent: config.new_agent(),
        }
    }

    /// The bytes at `source`; `Ok(None)` when it does not exist (no file, 404 or 410).
    pub fn get(&self, source: &Source) -> Result<Option<Vec<u8>>, DistError> {
        match source {
            Source::File(path) => match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(DistError::io(path, e)),
                Ok(meta) if meta.len() > MAX_DOWNLOAD_BYTES => Err(DistError::Download {
                    url: path.display().to_string(),
                    reason: format!("{} bytes, more than {MAX_DOWNLOAD_BYTES}", meta.len()),
                }),
                Ok(_) => std::fs::read(path)
                    .map(Some)
                    .map_err(|e| DistError::io(path, e)),
            },
            Source::Url(url) => self.download(url),
        }
    }

    fn download(&self, url: &str) -> Result<Option<Vec<u8>>, DistError> {
        let failed = |reason: String| DistError::Download {
            url: url.to_owned(),
            reason,
        };
        let mut response = match self.agent.get(url).call() {
            Ok(response) => response,
            Err(ureq::Error::StatusCode(404 | 410)) => return Ok(None),
            Err(ureq::Error::StatusCode(status)) => {
                return Err(failed(format!("answered {status}")));
            }
            Err(e) => return Err(failed(error_chain(&e))),
        };
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_DOWNLOAD_BYTES)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    failed(format!("more than {MAX_DOWNLOAD_BYTES} bytes"))
                }
                e => failed(error_chain(&e)),
            })?;
        Ok(Some(body))
    }
}

/// An error with its causes: reqwest's own message rarely says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

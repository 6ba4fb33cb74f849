//! `DistError`: why a package could not be packed, fetched, checked, installed or recorded.

use std::path::PathBuf;

use backworks_plugin_host::SignatureError;

/// Why a distribution step failed. Every message names the package, file, URL or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A download failed or was refused (status, size cap, timeout).
    #[error("{url}: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The package file is not an archive this host accepts (links, devices, `..`, absolute paths,
    /// duplicates, oversized entries, not a gzip'd tar).
    #[error("{package}: refused archive: {reason}")]
    Archive {
        /// The package (file or URL).
        package: String,
        /// Why.
        reason: String,
    },
    /// The package's manifest is missing or breaks a rule.
    #[error("{package}: {reason}")]
    Manifest {
        /// The package (file or URL).
        package: String,
        /// Why.
        reason: String,
    },
    /// A SHA-256 does not match the one expected.
    #[error("{what}: bad hash: expected sha256 {expected}, found {found}")]
    Hash {
        /// What was hashed: the package, or a file in it.
        what: String,
        /// The hash expected (index line, `--sha256`, manifest).
        expected: String,
        /// The hash of the bytes.
        found: String,
    },
    /// The manifest's signature is missing, untrusted or bad.
    #[error("{package}: {verdict}")]
    Signature {
        /// The package (file or URL).
        package: String,
        /// The signature check's verdict (boxed: it is large, and rare).
        verdict: Box<SignatureError>,
    },
    /// The package was built for another target.
    #[error("{package}: built for target `{found}`, this host is `{expected}`")]
    Target {
        /// The package (file or URL).
        package: String,
        /// The package's target.
        found: String,
        /// This host's.
        expected: String,
    },
    /// The plugin in the package cannot be loaded by this host (ABI, SDK).
    #[error("{package}: incompatible with this host: {reason}")]
    Incompatible {
        /// The package (file or URL).
        package: String,
        /// Why.
        reason: String,
    },
    /// No version of a plugin in the index satisfies what was asked.
    #[error("{reason}")]
    NoVersion {
        /// The plugin's name.
        name: String,
        /// What was asked and what the index holds.
        reason: String,
    },
    /// An index file could not be read or is malformed.
    #[error("index {location}: {reason}")]
    Index {
        /// The index file (path or URL).
        location: String,
        /// Why.
        reason: String,
    },
    /// The lock file could not be read or is malformed.
    #[error("{}: {reason}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Signing failed (packing).
    #[error("cannot sign {what}: {reason}")]
    Sign {
        /// What was being signed.
        what: String,
        /// Why.
        reason: String,
    },
}

impl DistError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DistError {
        DistError::Io {
            path: path.into(),
            error: source,
        }
    }
}

//! Plugin distribution: signed packages, a static index, installing them and the lock file.
//!
//! - `manifest`: `backworks-package.json`, what a package says it holds (pure data and its rules);
//! - `archive`: writing a package (a gzip'd tar) and reading one from untrusted bytes, refusing
//!   links, devices, `..`, absolute paths, duplicates and oversized entries;
//! - `pack`: building a package from a library or script, signed as it is packed;
//! - `index`: the index (one file of JSON lines per plugin name, cargo-index layout), choosing a
//!   version for a requirement, publishing into an index folder;
//! - `fetch`: reading a package or index file from a path or an http(s) URL, with a size cap and
//!   timeouts;
//! - `install`: checking a downloaded package (hash, signature, files, target, compatibility) and
//!   unpacking it atomically under a content-addressed folder;
//! - `lock`: `backworks.lock`, the installed version of each plugin, written atomically.
//!
//! The format of packages, index and lock file is documented in `docs/packages.md`.

mod archive;
mod error;
mod fetch;
mod index;
mod install;
mod lock;
mod manifest;
mod pack;

pub use archive::{MAX_ENTRIES, MAX_ENTRY_BYTES, MAX_UNPACKED_BYTES, read_package};
pub use error::DistError;
pub use fetch::{Fetcher, MAX_DOWNLOAD_BYTES, Source};
pub use index::{IndexLine, IndexLocation, index_path, publish, read_lines as read_index, select};
pub use install::{Installed, Verified as VerifiedPackage, install_package, verify_package};
pub use lock::{LOCK_FILE, Lock, LockEntry};
pub use manifest::{
    MANIFEST_FILE, MANIFEST_SIGNATURE, Manifest, PackageKind, TARGET_ANY, host_target,
};
pub use pack::{PackOptions, pack};

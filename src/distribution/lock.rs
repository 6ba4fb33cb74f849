//! `backworks.lock`: which version of each plugin is installed, from where, signed by whom.
//! JSON, next to the config file, written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DistError;
use super::index::write_atomically;
use super::manifest::PackageKind;

/// The lock file's name, next to the config file.
pub const LOCK_FILE: &str = "backworks.lock";
/// The lock format this host writes and reads.
const LOCK_FORMAT: u32 = 1;

/// The lock file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// The format (1).
    pub format: u32,
    /// One entry per installed plugin, sorted by name.
    pub plugins: Vec<LockEntry>,
}

/// One installed plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The plugin's name.
    pub name: String,
    /// The version installed.
    pub version: String,
    /// Library or command.
    pub kind: PackageKind,
    /// Where the package came from: a file, a URL, or `index URL_OR_DIR`.
    pub source: String,
    /// The package file's SHA-256.
    pub sha256: String,
    /// The key id of the manifest's signature.
    pub key_id: String,
    /// The folder it is unpacked in, relative to the config's folder when inside it.
    pub path: PathBuf,
    /// The library or script in that folder.
    pub entry: String,
    /// A command package's argv, with its own files as installed paths relative to `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

impl Lock {
    /// The lock file of the config at `config`: `backworks.lock` in its folder.
    pub fn path_for(config_dir: &Path) -> PathBuf {
        config_dir.join(LOCK_FILE)
    }

    /// Reads the lock file at `path`; an empty lock when there is none.
    pub fn read(path: &Path) -> Result<Lock, DistError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock {
                    format: LOCK_FORMAT,
                    plugins: Vec::new(),
                });
            }
            Err(e) => return Err(DistError::io(path, e)),
        };
        let lock: Lock = serde_json::from_slice(&bytes).map_err(|e| DistError::Lock {
            path: path.to_owned(),
            reason: format!("not a lock file: {e}"),
        })?;
        if lock.format != LOCK_FORMAT {
            return Err(DistError::Lock {
                path: path.to_owned(),
                reason: format!(
                    "lock format {} is not supported (this host reads {LOCK_FORMAT})",
                    lock.format
                ),
            });
        }
        Ok(lock)
    }

    /// Writes it to `path` atomically (a temporary file, synced, renamed).
    pub fn write(&self, path: &Path) -> Result<(), DistError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a lock serializes");
        bytes.push(b'\n');
        write_atomically(path, &bytes)
    }

    /// The entry of plugin `name`.
    pub fn get(&self, name: &str) -> Option<&LockEntry> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Records `entry`, replacing the one of the same name; returns the one replaced.
    pub fn insert(&mut self, entry: LockEntry) -> Option<LockEntry> {
        self.format = LOCK_FORMAT;
        let old = self.remove(&entry.name);
        self.plugins.push(entry);
        self.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        old
    }

    /// Forgets plugin `name`; returns its entry.
    pub fn remove(&mut self, name: &str) -> Option<LockEntry> {
        let at = self.plugins.iter().position(|p| p.name == name)?;
        Some(self.plugins.remove(at))
    }
}

impl LockEntry {
    /// The folder it is installed in, resolved against the config's folder.
    pub fn folder(&self, config_dir: &Path) -> PathBuf {
        config_dir.join(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, version: &str) -> LockEntry {
        LockEntry {
            name: name.into(),
            version: version.into(),
            kind: PackageKind::Library,
            source: "index https://example.invalid/index".into(),
            sha256: "0".repeat(64),
            key_id: "0123456789ABCDEF".into(),
            path: format!("plugins/{name}-{version}-0000000000000000").into(),
            entry: format!("lib{name}.so"),
            command: None,
        }
    }

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = Lock::path_for(dir.path());
        let mut lock = Lock::read(&path).unwrap();
        assert!(lock.plugins.is_empty());
        lock.insert(entry("b", "1.0.0"));
        lock.insert(entry("a", "1.0.0"));
        let old = lock.insert(entry("b", "1.1.0")).unwrap();
        assert_eq!(old.version, "1.0.0");
        lock.write(&path).unwrap();
        let again = Lock::read(&path).unwrap();
        assert_eq!(again, lock);
        assert_eq!(
            again
                .plugins
                .iter()
                .map(|p| &p.name[..])
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        std::fs::write(&path, "{\"format\": 9, \"plugins\": []}").unwrap();
        let err = Lock::read(&path).unwrap_err().to_string();
        assert!(err.contains("lock format 9 is not supported"), "{err}");
    }
}

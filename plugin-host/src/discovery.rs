//! Finding plugin files in folders. Discovery only lists files: it never opens a library.

use std::path::{Path, PathBuf};

use crate::HostError;

/// The file extension of shared libraries on this platform (`so`, `dylib` or `dll`).
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// A folder to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanDir {
    /// The folder.
    pub path: PathBuf,
    /// Whether to descend into sub-folders.
    pub recursive: bool,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Library files, sorted, each once.
    pub files: Vec<PathBuf>,
    /// Folders that could not be read. A missing folder is not an error: it is skipped.
    pub errors: Vec<HostError>,
}

/// Lists the library files (by [`LIBRARY_EXTENSION`]) in `dirs`, without loading any of them.
///
/// ```
/// use backworks_plugin_host::{discover, ScanDir};
/// let found = discover(&[ScanDir { path: "no/such/dir".into(), recursive: false }]);
/// assert!(found.files.is_empty() && found.errors.is_empty());
/// ```
pub fn discover(dirs: &[ScanDir]) -> Discovered {
    let mut found = Discovered::default();
    for dir in dirs {
        scan(&dir.path, dir.recursive, &mut found);
    }
    found.files.sort();
    found.files.dedup();
    found
}

fn scan(dir: &Path, recursive: bool, found: &mut Discovered) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(source) => {
            found.errors.push(HostError::Io {
                path: dir.to_owned(),
                source,
            });
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(source) => {
                found.errors.push(HostError::Io {
                    path: dir.to_owned(),
                    source,
                });
                continue;
            }
        };
        let path = entry.path();
        // Follows symlinks, as an operator linking a build output into plugins/ expects.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                if recursive {
                    scan(&path, true, found);
                }
            }
            Ok(meta) if meta.is_file() && is_library(&path) => found.files.push(path),
            Ok(_) => {}
            Err(source) => found.errors.push(HostError::Io { path, source }),
        }
    }
}

/// Whether `path` has this platform's library extension.
pub fn is_library(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case(LIBRARY_EXTENSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libraries_only_and_recurses_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let lib = |p: &str| format!("{p}.{LIBRARY_EXTENSION}");
        std::fs::write(dir.path().join(lib("b")), b"").unwrap();
        std::fs::write(dir.path().join(lib("a")), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join(lib("c")), b"").unwrap();

        let flat = discover(&[ScanDir {
            path: dir.path().into(),
            recursive: false,
        }]);
        let names: Vec<_> = flat
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![lib("a"), lib("b")]);

        let deep = discover(&[ScanDir {
            path: dir.path().into(),
            recursive: true,
        }]);
        assert_eq!(deep.files.len(), 3);
        assert!(deep.files[2].ends_with(Path::new("sub").join(lib("c"))));
    }
}

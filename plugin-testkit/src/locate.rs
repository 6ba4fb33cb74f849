//! Finding the library `cargo test` built for the crate under test: `built_library!()`.

use std::path::{Path, PathBuf};

/// Why the plugin library of the crate under test was not found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No library file of that name in any of the places cargo puts it.
    #[error(
        "the plugin library `{file}` was not built: looked in {}. \
         Check that Cargo.toml's [lib] has crate-type = [\"cdylib\", \"rlib\"] (\"cdylib\" makes \
         the library the host loads; \"rlib\" lets cargo build it for the tests), that the test \
         is an integration test under tests/ (cargo builds the library before those), and that \
         `{lib}` is the [lib] name (pass it as built_library!(\"name\") when it differs from the \
         package name)",
        searched.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
    )]
    NotBuilt {
        /// The file name looked for (`libmy_plugin.so`).
        file: String,
        /// The library name.
        lib: String,
        /// The folders searched.
        searched: Vec<PathBuf>,
    },
    /// The library found is older than the crate's last build: left from an earlier one.
    #[error(
        "`{}` is left from an earlier build: the crate was rebuilt without making its plugin \
         library. Check that Cargo.toml's [lib] has crate-type = [\"cdylib\", \"rlib\"]",
        path.display()
    )]
    Stale {
        /// The library found.
        path: PathBuf,
    },
}

/// The file name of library `lib` on this platform: `libmy_plugin.so`, `libmy_plugin.dylib`,
/// `my_plugin.dll`.
pub fn library_file_name(lib: &str) -> String {
    let lib = lib.replace('-', "_");
    format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// The folders cargo puts the libraries of this build in, best first: the `deps` folder of the
/// running test executable (where `cargo test` writes the library it builds), its profile
/// folder (`target/<profile>`, where `cargo build` copies it), then
/// `$CARGO_TARGET_DIR/<profile>` and `<manifest_dir>/target/<profile>`.
fn candidate_dirs(manifest_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut profile = "debug".to_owned();
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        // A test executable lives in target/<profile>/deps.
        dirs.push(deps.to_owned());
        if let Some(profile_dir) = deps.parent() {
            dirs.push(profile_dir.to_owned());
            if let Some(name) = profile_dir.file_name().and_then(|n| n.to_str()) {
                profile = name.to_owned();
            }
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(target).join(&profile));
    }
    if let Some(manifest) = manifest_dir {
        dirs.push(manifest.join("target").join(&profile));
    }
    dirs.dedup();
    dirs
}

/// Whether the library at `path` is older than the newest rlib of the same crate beside it (by
/// more than a second): the crate was rebuilt without making the library, so what is there is
/// left from an earlier build (`crate-type` lost `"cdylib"`).
fn stale(path: &Path, lib: &str) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let (Some(dir), Some(built)) = (path.parent(), modified(path)) else {
        return false;
    };
    let prefix = format!("lib{lib}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".rlib")
        })
        .filter_map(|e| modified(&e.path()))
        .any(|rlib| {
            rlib.duration_since(built)
                .is_ok_and(|d| d > std::time::Duration::from_secs(1))
        })
}

/// Finds library `lib` (the `[lib]` name; dashes are read as underscores) as built for the running
/// test executable. `manifest_dir` is the crate's folder, a last place to look.
///
/// [`built_library!`](crate::built_library) calls this with the calling crate's names.
pub fn find_built_library(lib: &str, manifest_dir: Option<&Path>) -> Result<PathBuf, LocateError> {
    let file = library_file_name(lib);
    let lib = lib.replace('-', "_");
    let searched = candidate_dirs(manifest_dir);
    let found = searched
        .iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file());
    match found {
        Some(path) if stale(&path, &lib) => Err(LocateError::Stale { path }),
        Some(path) => Ok(path),
        None => Err(LocateError::NotBuilt {
            file,
            lib,
            searched,
        }),
    }
}

/// The path of the plugin library (`cdylib`) of the crate whose test calls it, as `cargo test`
/// built it: `lib<crate>.so` (`.dylib`, `.dll`) in `target/<profile>/deps` (or
/// `target/<profile>`), found next to the running test executable, so `CARGO_TARGET_DIR` and
/// `--release` are honoured.
///
/// `built_library!()` takes the library name from the package name (dashes become
/// underscores); `built_library!("name")` names the `[lib]` explicitly. Panics with what to fix
/// when the library is not there (most often: `crate-type` lacks `"cdylib"`) or is left from an
/// earlier build; [`find_built_library`] is the same as a `Result`.
///
/// ```no_run
/// let lib: std::path::PathBuf = backworks_plugin_testkit::built_library!();
/// ```
#[macro_export]
macro_rules! built_library {
    () => {
        $crate::built_library!(env!("CARGO_PKG_NAME"))
    };
    ($lib:expr) => {
        match $crate::find_built_library(
            $lib,
            Some(::std::path::Path::new(env!("CARGO_MANIFEST_DIR"))),
        ) {
            Ok(path) => path,
            Err(error) => panic!("{error}"),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_platform_and_read_dashes_as_underscores() {
        let name = library_file_name("my-plugin");
        assert!(name.contains("my_plugin"), "{name}");
        assert!(name.ends_with(std::env::consts::DLL_SUFFIX), "{name}");
    }

    #[test]
    fn a_missing_library_says_what_to_fix_and_where_it_looked() {
        let error = find_built_library("surely-not-built-here", Some(Path::new("/nowhere")))
            .unwrap_err()
            .to_string();
        for needle in [
            "surely_not_built_here",
            "crate-type = [\"cdylib\", \"rlib\"]",
            "/nowhere/target/",
            "built_library!(\"name\")",
        ] {
            assert!(error.contains(needle), "{needle} missing from: {error}");
        }
    }

    #[test]
    fn the_test_executables_deps_then_profile_folders_are_searched_first() {
        let exe = std::env::current_exe().unwrap();
        let dirs = candidate_dirs(None);
        assert_eq!(dirs[0], exe.parent().unwrap());
        assert_eq!(dirs[1], exe.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn a_library_older_than_its_crates_rlib_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join(library_file_name("p"));
        let rlib = dir.path().join("libp-0123abcd.rlib");
        let at = |secs| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let write = |path: &Path, when| {
            let file = std::fs::File::create(path).unwrap();
            file.set_modified(at(when)).unwrap();
        };
        write(&so, 1_000);
        write(&rlib, 1_000);
        assert!(!stale(&so, "p"));
        write(&rlib, 1_100);
        assert!(stale(&so, "p"));
        assert!(!stale(&so, "other"));
    }
}

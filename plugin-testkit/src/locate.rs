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

/// The folders cargo puts the libraries of this build in, best first: the profile folder of the
/// running test executable (`target/<profile>/deps/..`), its `deps`, then
/// `$CARGO_TARGET_DIR/<profile>` and `<manifest_dir>/target/<profile>`.
fn candidate_dirs(manifest_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut profile = "debug".to_owned();
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        // A test executable lives in target/<profile>/deps (an example's in .../examples).
        if let Some(profile_dir) = deps.parent() {
            dirs.push(profile_dir.to_owned());
            if let Some(name) = profile_dir.file_name().and_then(|n| n.to_str()) {
                profile = name.to_owned();
            }
        }
        dirs.push(deps.to_owned());
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

/// Finds library `lib` (the `[lib]` name; dashes are read as underscores) as built for the running
/// test executable. `manifest_dir` is the crate's folder, a last place to look.
///
/// [`built_library!`](crate::built_library) calls this with the calling crate's names.
pub fn find_built_library(lib: &str, manifest_dir: Option<&Path>) -> Result<PathBuf, LocateError> {
    let file = library_file_name(lib);
    let searched = candidate_dirs(manifest_dir);
    searched
        .iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
        .ok_or_else(|| LocateError::NotBuilt {
            file,
            lib: lib.replace('-', "_"),
            searched,
        })
}

/// The path of the plugin library (`cdylib`) of the crate whose test calls it, as `cargo test`
/// built it: `target/<profile>/lib<crate>.so` (`.dylib`, `.dll`), found next to the running test
/// executable, so `CARGO_TARGET_DIR` and `--release` are honoured.
///
/// `built_library!()` takes the library name from the package name (dashes become
/// underscores); `built_library!("name")` names the `[lib]` explicitly. Panics with what to fix
/// when the library is not there (most often: `crate-type` lacks `"cdylib"`).
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
    fn the_test_executables_profile_folder_is_searched_first() {
        let exe = std::env::current_exe().unwrap();
        let dirs = candidate_dirs(None);
        assert_eq!(dirs[0], exe.parent().unwrap().parent().unwrap());
    }
}

//! Finding an external plugin's library file on disk.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use super::checked::{Config, PluginConfig, PluginDir, PluginKind};

/// How deep a recursive plugin directory is searched.
const MAX_DEPTH: usize = 16;

impl Config {
    /// Finds the library file of an external plugin.
    ///
    /// - an absolute path is used as is;
    /// - a relative path with a directory part (`./plugins/libx.so`, `lib/libx.so`) is
    ///   relative to [`Config::base_dir`];
    /// - a bare file name (`libx.so`) is looked up in each of [`Config::plugin_dirs`] in
    ///   order (recursive ones breadth first, entries sorted by name, symbolic links to
    ///   directories not followed), then in `base_dir`.
    ///
    /// Returns the first existing regular file (symbolic links followed). On failure,
    /// returns every place tried, in order, for the error message; a recursive directory
    /// appears as `dir/**/name`. A built-in plugin has no file: `Err` with an empty list.
    pub fn resolve_plugin_path(&self, plugin: &PluginConfig) -> Result<PathBuf, Vec<PathBuf>> {
        let PluginKind::External { path } = &plugin.kind else {
            return Err(Vec::new());
        };
        let candidate = if path.is_absolute() {
            Some(path.clone())
        } else if path.components().count() > 1 {
            Some(self.base_dir.join(path))
        } else {
            None
        };
        if let Some(candidate) = candidate {
            return if candidate.is_file() {
                Ok(candidate)
            } else {
                Err(vec![candidate])
            };
        }
        let mut tried = Vec::new();
        for dir in &self.plugin_dirs {
            if let Some(found) = search_dir(dir, path, &mut tried) {
                return Ok(found);
            }
        }
        let fallback = self.base_dir.join(path);
        if fallback.is_file() {
            return Ok(fallback);
        }
        tried.push(fallback);
        Err(tried)
    }
}

fn search_dir(dir: &PluginDir, name: &Path, tried: &mut Vec<PathBuf>) -> Option<PathBuf> {
    let direct = dir.path.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    if !dir.recursive {
        tried.push(direct);
        return None;
    }
    tried.push(dir.path.join("**").join(name));
    let mut queue: VecDeque<(PathBuf, usize)> = subdirectories(&dir.path)
        .into_iter()
        .map(|d| (d, 1))
        .collect();
    while let Some((current, depth)) = queue.pop_front() {
        let candidate = current.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
        if depth < MAX_DEPTH {
            queue.extend(subdirectories(&current).into_iter().map(|d| (d, depth + 1)));
        }
    }
    None
}

/// The real (not symlinked) subdirectories of `dir`, sorted; unreadable ones are skipped.
fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::checked::ServerConfig;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"\x7fELF").unwrap();
    }

    fn config(base: &Path, dirs: &[(&str, bool)]) -> Config {
        Config {
            source: base.join("backworks.yaml"),
            base_dir: base.to_path_buf(),
            server: ServerConfig::default(),
            plugin_dirs: dirs
                .iter()
                .map(|(d, recursive)| PluginDir {
                    path: base.join(d),
                    recursive: *recursive,
                })
                .collect(),
            plugins: vec![],
            endpoints: vec![],
            health: Default::default(),
            trust: Default::default(),
            secrets: Default::default(),
            reload: Default::default(),
            marketplace: Default::default(),
        }
    }

    fn external(path: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig {
            name: "p".into(),
            kind: PluginKind::External { path: path.into() },
            enabled: true,
            config: serde_json::Value::Null,
            config_map: Default::default(),
            before_request: None,
            after_response: None,
            observe: false,
            observe_queue: 1024,
            order: 0,
            important: false,
            policy: Default::default(),
            isolation: Default::default(),
            workers: None,
        }
    }

    #[test]
    fn absolute_and_relative_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        touch(&base.join("lib/libx.so"));
        let c = config(base, &[("plugins", false)]);

        let abs = base.join("lib/libx.so");
        assert_eq!(c.resolve_plugin_path(&external(&abs)), Ok(abs.clone()));
        assert_eq!(
            c.resolve_plugin_path(&external("./lib/libx.so")),
            Ok(base.join("./lib/libx.so"))
        );
        assert_eq!(c.resolve_plugin_path(&external("lib/libx.so")), Ok(abs));
        assert_eq!(
            c.resolve_plugin_path(&external("lib/liby.so")),
            Err(vec![base.join("lib/liby.so")])
        );
        let missing = base.join("nope/libx.so");
        assert_eq!(
            c.resolve_plugin_path(&external(&missing)),
            Err(vec![missing])
        );
    }

    #[test]
    fn bare_names_search_dirs_in_order_then_base_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        touch(&base.join("second/libx.so"));
        touch(&base.join("first/libx.so"));
        touch(&base.join("libbase.so"));
        touch(&base.join("deep/a/b/libdeep.so"));
        touch(&base.join("deep/z/libdeep.so"));
        let c = config(base, &[("first", false), ("second", false), ("deep", true)]);

        assert_eq!(
            c.resolve_plugin_path(&external("libx.so")),
            Ok(base.join("first/libx.so"))
        );
        assert_eq!(
            c.resolve_plugin_path(&external("libbase.so")),
            Ok(base.join("libbase.so"))
        );
        // Breadth first: deep/z (depth 1) before deep/a/b (depth 2).
        assert_eq!(
            c.resolve_plugin_path(&external("libdeep.so")),
            Ok(base.join("deep/z/libdeep.so"))
        );
        assert_eq!(
            c.resolve_plugin_path(&external("libnone.so")),
            Err(vec![
                base.join("first/libnone.so"),
                base.join("second/libnone.so"),
                base.join("deep/**/libnone.so"),
                base.join("libnone.so"),
            ])
        );
    }

    #[test]
    fn non_recursive_dirs_do_not_descend_and_dirs_are_not_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        touch(&base.join("plugins/sub/libx.so"));
        fs::create_dir_all(base.join("plugins/libdir.so")).unwrap();
        let c = config(base, &[("plugins", false)]);
        assert!(c.resolve_plugin_path(&external("libx.so")).is_err());
        assert_eq!(
            c.resolve_plugin_path(&external("libdir.so")),
            Err(vec![base.join("plugins/libdir.so"), base.join("libdir.so")])
        );
    }

    #[test]
    fn builtin_has_no_file() {
        let c = config(Path::new("."), &[]);
        let mut p = external("x");
        p.kind = PluginKind::Builtin;
        assert_eq!(c.resolve_plugin_path(&p), Err(vec![]));
    }
}

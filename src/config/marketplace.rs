//! `type: marketplace` plugins and the `marketplace:` section.
//!
//! A marketplace plugin names a semver requirement (`version: "^1.2"`) instead of a library path.
//! Validation (pure) checks what is written; [`resolve`], run by [`super::load`], reads the lock
//! file next to the config (`backworks.lock`, written by `backworks plugin install|update`) and
//! turns each marketplace plugin into the library or command installed for it, so the server,
//! `validate` and a reload see an ordinary plugin, and `plugin update` + `backworks reload` serve
//! the new version.

use std::path::Path;

use serde::Deserialize;

use super::checked::{Config, PluginKind};
use super::error::{ConfigError, ConfigErrorKind};
use super::interpolate::{Expanded, Interpolator};
use super::model::{RawPlugin, Text};
use crate::distribution::{IndexLocation, Lock, PackageKind};

const INVALID: ConfigErrorKind = ConfigErrorKind::Invalid;

/// `marketplace:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMarketplace {
    pub index: Option<Text>,
}

/// `marketplace:`: where `backworks plugin install NAME` and `plugin update` look plugins up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketplaceConfig {
    /// `marketplace.index`: a folder (relative to the config's folder) or an `http(s)://` URL.
    pub index: Option<IndexLocation>,
}

/// Checks `marketplace:`.
pub(super) fn settings(
    ip: &Interpolator<'_>,
    raw: Option<&RawMarketplace>,
    base_dir: &Path,
) -> Result<MarketplaceConfig, ConfigError> {
    let Some(index) = raw.and_then(|m| m.index.as_ref()) else {
        return Ok(MarketplaceConfig::default());
    };
    let index = ip.text(index)?;
    let value = index.value.trim();
    if value.is_empty() {
        return Err(ip.error(INVALID, index.at, "`marketplace.index` is empty"));
    }
    let location = match IndexLocation::parse(value) {
        IndexLocation::Url(url) => {
            if let Err(e) = url.parse::<ureq::http::Uri>() {
                let message = format!("`marketplace.index` {} is not a URL: {e}", index.quoted());
                return Err(ip.error(INVALID, index.at, message));
            }
            IndexLocation::Url(url)
        }
        IndexLocation::Dir(_) if value.contains("://") => {
            let message = format!(
                "`marketplace.index` {} is neither a folder nor an http(s) URL",
                index.quoted()
            );
            return Err(ip.error(INVALID, index.at, message));
        }
        IndexLocation::Dir(dir) => IndexLocation::Dir(base_dir.join(dir)),
    };
    Ok(MarketplaceConfig {
        index: Some(location),
    })
}

/// The kind of a plugin written `type: marketplace` (at `kind`): a `version:` requirement, no
/// `path` and no `command`.
pub(super) fn kind(
    ip: &Interpolator<'_>,
    name: &str,
    kind: &Expanded,
    path: Option<Expanded>,
    raw: &RawPlugin,
) -> Result<PluginKind, ConfigError> {
    if let Some(path) = path {
        let message = format!(
            "plugin `{name}` is `type: marketplace` and cannot have a `path`: its library is the \
             version installed for it (`backworks plugin install {name}`)"
        );
        return Err(ip.error(INVALID, path.at, message));
    }
    if let Some(command) = &raw.command {
        let message = format!(
            "plugin `{name}` is `type: marketplace` and cannot have a `command`: it comes from \
             its package"
        );
        return Err(ip.error(INVALID, command.referenced, message));
    }
    let Some(version) = &raw.version else {
        let message = format!(
            "plugin `{name}` is `type: marketplace` but has no `version` requirement \
             (e.g. `version: \"^1.2\"`)"
        );
        return Err(ip.error(INVALID, kind.at, message));
    };
    let version = ip.text(version)?;
    let requirement = semver::VersionReq::parse(version.value.trim()).map_err(|e| {
        let message = format!(
            "`version` of plugin `{name}` {} is not a semver requirement (e.g. `^1.2`, \
             `>=1.0, <2`): {e}",
            version.quoted()
        );
        ip.error(INVALID, version.at, message)
    })?;
    Ok(PluginKind::Marketplace {
        version: requirement,
        line: version.at.line(),
        column: version.at.column(),
    })
}

/// `version:` belongs to `type: marketplace` only.
pub(super) fn stray_version(
    ip: &Interpolator<'_>,
    name: &str,
    kind: &PluginKind,
    raw: &RawPlugin,
) -> Result<(), ConfigError> {
    match (&raw.version, kind) {
        (Some(version), kind) if !matches!(kind, PluginKind::Marketplace { .. }) => {
            let message = format!(
                "plugin `{name}` sets `version`, which only applies to `type: marketplace`"
            );
            Err(ip.error(INVALID, version.referenced, message))
        }
        _ => Ok(()),
    }
}

/// Turns every `type: marketplace` plugin of `config` into the library or command that
/// `backworks.lock` (next to the config file) records for it. A plugin not in the lock file, or
/// locked at a version outside its requirement, is an error at its `version:` that says which
/// command fixes it. A command package runs under process isolation.
pub fn resolve(config: &mut Config) -> Result<(), ConfigError> {
    if !config
        .plugins
        .iter()
        .any(|p| matches!(p.kind, PluginKind::Marketplace { .. }))
    {
        return Ok(());
    }
    let lock_path = Lock::path_for(&config.base_dir);
    let lock = Lock::read(&lock_path)
        .map_err(|e| ConfigError::new(ConfigErrorKind::Io, &config.source, 0, 0, e.to_string()))?;
    for plugin in &mut config.plugins {
        let PluginKind::Marketplace {
            version,
            line,
            column,
        } = &plugin.kind
        else {
            continue;
        };
        let name = &plugin.name;
        let error =
            |message: String| ConfigError::new(INVALID, &config.source, *line, *column, message);
        let Some(entry) = lock.get(name) else {
            return Err(error(format!(
                "plugin `{name}` (`type: marketplace`, version `{version}`) is not installed: \
                 {} has no entry for it; run `backworks plugin install {name}@{version}`",
                lock_path.display()
            )));
        };
        let locked = semver::Version::parse(&entry.version).map_err(|e| {
            error(format!(
                "{}: plugin `{name}` is locked at version `{}`, which is not semver: {e}",
                lock_path.display(),
                entry.version
            ))
        })?;
        if !version.matches(&locked) {
            return Err(error(format!(
                "plugin `{name}` requires version `{version}`, but {} has {locked} installed; \
                 run `backworks plugin update {name}`",
                lock_path.display()
            )));
        }
        let folder = entry.folder(&config.base_dir);
        plugin.kind = match entry.kind {
            PackageKind::Library => PluginKind::External {
                path: folder.join(&entry.entry),
            },
            PackageKind::Command => {
                let dir = folder.to_string_lossy();
                let argv = entry
                    .command
                    .iter()
                    .flatten()
                    .map(|arg| arg.replace("{dir}", &dir))
                    .collect();
                if matches!(
                    plugin.isolation,
                    backworks_plugin_host::Isolation::InProcess
                ) {
                    plugin.isolation =
                        backworks_plugin_host::Isolation::Process(Default::default());
                }
                PluginKind::Command { argv }
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_str_with_env;
    use crate::distribution::LockEntry;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str_with_env(text, Path::new("b.yaml"), &|_| None)
    }

    fn error(text: &str) -> String {
        let err = parse(text).unwrap_err();
        err.to_string().strip_prefix("b.yaml:").unwrap().to_owned()
    }

    #[test]
    fn marketplace_plugins_are_checked() {
        let c =
            parse("plugins:\n  hello:\n    type: marketplace\n    version: \"^1.2\"\n").unwrap();
        assert_eq!(
            c.plugins[0].kind,
            PluginKind::Marketplace {
                version: "^1.2".parse().unwrap(),
                line: 4,
                column: 14
            }
        );
        assert_eq!(
            error("plugins:\n  h:\n    type: marketplace\n"),
            "3:11: plugin `h` is `type: marketplace` but has no `version` requirement \
             (e.g. `version: \"^1.2\"`)"
        );
        assert_eq!(
            error("plugins:\n  h: {type: marketplace, version: one}\n"),
            "2:35: `version` of plugin `h` `one` is not a semver requirement (e.g. `^1.2`, \
             `>=1.0, <2`): unexpected character 'o' while parsing major version number"
        );
        assert!(
            error("plugins:\n  h: {type: marketplace, version: \"1\", path: libh.so}\n")
                .starts_with("2:46: plugin `h` is `type: marketplace` and cannot have a `path`")
        );
        assert!(
            error("plugins:\n  h: {type: marketplace, version: \"1\", command: [x]}\n")
                .contains("cannot have a `command`")
        );
        assert_eq!(
            error("plugins:\n  h: {path: libh.so, version: \"1\"}\n"),
            "2:31: plugin `h` sets `version`, which only applies to `type: marketplace`"
        );
    }

    #[test]
    fn the_index_setting_is_checked() {
        let c = parse("marketplace: {index: \"https://example.invalid/index\"}\n").unwrap();
        assert_eq!(
            c.marketplace.index,
            Some(IndexLocation::Url("https://example.invalid/index".into()))
        );
        let c = parse("marketplace: {index: idx}\n").unwrap();
        assert_eq!(
            c.marketplace.index,
            Some(IndexLocation::Dir("./idx".into()))
        );
        assert_eq!(
            error("marketplace: {index: \"ftp://x\"}\n"),
            "1:22: `marketplace.index` `ftp://x` is neither a folder nor an http(s) URL"
        );
        assert_eq!(
            error("marketplace: {index: \"\"}\n"),
            "1:22: `marketplace.index` is empty"
        );
        assert!(error("marketplace: {url: x}\n").contains("unknown field `url`"));
    }

    fn entry(version: &str, kind: PackageKind) -> LockEntry {
        LockEntry {
            name: "hello".into(),
            version: version.into(),
            kind,
            source: "test".into(),
            sha256: "0".repeat(64),
            key_id: "0".repeat(16),
            path: format!("plugins/hello-{version}-0000000000000000").into(),
            entry: "libhello.so".into(),
            command: Some(vec!["python3".into(), "{dir}/hello.py".into()]),
        }
    }

    #[test]
    fn resolution_through_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("backworks.yaml");
        let yaml = "plugins:\n  hello:\n    type: marketplace\n    version: \"^1.2\"\n";
        let config = || {
            let mut c = parse_str_with_env(yaml, &source, &|_| None).unwrap();
            c.base_dir = dir.path().to_path_buf();
            c
        };
        let message = |c: &mut Config| resolve(c).unwrap_err().to_string();
        let shown = message(&mut config());
        assert!(
            shown.contains(
                ":4:14: plugin `hello` (`type: marketplace`, version `^1.2`) is not \
                 installed"
            ) && shown.ends_with("run `backworks plugin install hello@^1.2`"),
            "{shown}"
        );
        let lock_path = Lock::path_for(dir.path());
        let mut lock = Lock::default();
        lock.insert(entry("2.0.0", PackageKind::Library));
        lock.write(&lock_path).unwrap();
        let shown = message(&mut config());
        assert!(
            shown.contains("requires version `^1.2`, but")
                && shown.ends_with("has 2.0.0 installed; run `backworks plugin update hello`"),
            "{shown}"
        );
        lock.insert(entry("1.3.0", PackageKind::Library));
        lock.write(&lock_path).unwrap();
        let mut c = config();
        resolve(&mut c).unwrap();
        assert_eq!(
            c.plugins[0].kind,
            PluginKind::External {
                path: dir
                    .path()
                    .join("plugins/hello-1.3.0-0000000000000000/libhello.so")
            }
        );
        // A script package runs as a command, in a child process.
        lock.insert(entry("1.3.0", PackageKind::Command));
        lock.write(&lock_path).unwrap();
        let mut c = config();
        resolve(&mut c).unwrap();
        let folder = dir.path().join("plugins/hello-1.3.0-0000000000000000");
        assert_eq!(
            c.plugins[0].kind,
            PluginKind::Command {
                argv: vec!["python3".into(), format!("{}/hello.py", folder.display())]
            }
        );
        assert!(matches!(
            c.plugins[0].isolation,
            backworks_plugin_host::Isolation::Process(_)
        ));
        std::fs::write(&lock_path, "not json").unwrap();
        assert!(message(&mut config()).contains("not a lock file"));
    }
}

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

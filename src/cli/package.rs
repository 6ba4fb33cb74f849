//! `plugin pack|publish|install|update|remove`: signed packages, an index, and `backworks.lock`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::config::{Config, PluginKind};
use crate::distribution::{
    Fetcher, IndexLocation, Lock, LockEntry, PackOptions, Source, VerifiedPackage, host_target,
    install_package, pack as pack_package, publish as publish_package, select, verify_package,
};

/// `plugin pack FILE`: writes `OUT/NAME-VERSION-TARGET.bwpkg`, signed with `secret`.
pub fn pack(
    file: &Path,
    options: &PackOptions,
    secret: &Path,
    out_dir: &Path,
) -> anyhow::Result<i32> {
    let key = super::sign::secret_key(secret)?;
    let (path, manifest) = pack_package(file, options, &key, out_dir)?;
    println!(
        "{}: plugin `{}` {} ({:?}, {}), {} files, manifest signed",
        path.display(),
        manifest.name,
        manifest.version,
        manifest.kind,
        manifest.target,
        manifest.files.len()
    );
    Ok(0)
}

/// `plugin publish PKG --index DIR [--url-base URL]`.
pub fn publish(package: &Path, index: &Path, url_base: Option<&str>) -> anyhow::Result<i32> {
    let line = publish_package(package, index, url_base)?;
    println!(
        "published `{}` {} ({}) in {}: {}",
        line.name,
        line.version,
        line.target,
        index.display(),
        line.url
    );
    Ok(0)
}

/// What install, update and remove work on: the config (marketplace plugins unresolved), its lock
/// file and the index.
struct Context {
    config: Config,
    config_path: PathBuf,
    lock_path: PathBuf,
    lock: Lock,
    index: Option<IndexLocation>,
}

impl Context {
    fn open(config_path: &Path, index: Option<&str>) -> anyhow::Result<Context> {
        let config = crate::config::load_unresolved(config_path)?;
        let lock_path = Lock::path_for(&config.base_dir);
        let lock = Lock::read(&lock_path)?;
        let index = index
            .map(IndexLocation::parse)
            .or_else(|| config.marketplace.index.clone());
        Ok(Context {
            config,
            config_path: config_path.to_owned(),
            lock_path,
            lock,
            index,
        })
    }

    fn index(&self) -> anyhow::Result<&IndexLocation> {
        self.index.as_ref().with_context(|| {
            format!(
                "no index: give `--index URL_OR_DIR` or set `marketplace.index` in {}",
                self.config_path.display()
            )
        })
    }

    /// The `version:` requirement the config gives plugin `name`, if it is a marketplace plugin.
    fn requirement(&self, name: &str) -> Option<&semver::VersionReq> {
        match &self.config.plugin(name)?.kind {
            PluginKind::Marketplace { version, .. } => Some(version),
            _ => None,
        }
    }

    fn plugins_dir(&self) -> anyhow::Result<&Path> {
        self.config
            .plugin_dirs
            .first()
            .map(|d| d.path.as_path())
            .with_context(|| {
                format!(
                    "{}: `plugin_dirs` is empty: no folder to install plugins into",
                    self.config_path.display()
                )
            })
    }

    /// Verifies `bytes` with the config's trusted keys, unpacks it, records it in the lock file,
    /// and deletes the folder of the version it replaces.
    fn install(
        &mut self,
        bytes: &[u8],
        shown: &str,
        source: String,
        sha256: Option<&str>,
        expect: (Option<&str>, Option<&str>),
    ) -> anyhow::Result<()> {
        let trusted = &self.config.trust.signatures.keys;
        if trusted.is_empty() {
            bail!(
                "{}: `trust.keys` is empty: `plugin install` only installs packages signed by a \
                 trusted key; add the publisher's public key there",
                self.config_path.display()
            );
        }
        let package = verify_package(bytes, shown, sha256, trusted, expect)?;
        let installed = install_package(&package, self.plugins_dir()?)?;
        let entry = self.lock_entry(&package, &installed.folder, source);
        let name = entry.name.clone();
        let (version, path, key_id) = (
            entry.version.clone(),
            entry.path.clone(),
            entry.key_id.clone(),
        );
        let old = self.lock.insert(entry);
        self.lock.write(&self.lock_path)?;
        println!(
            "installed `{name}` {version} (signed by key {key_id}) in {}{}; recorded in {}",
            path.display(),
            if installed.existed {
                " (already unpacked)"
            } else {
                ""
            },
            self.lock_path.display()
        );
        if let Some(old) = old.filter(|o| o.path != path) {
            remove_folder(&old, &self.config)?;
            println!(
                "replaced {} (a running server keeps serving it until `backworks reload`)",
                old.version
            );
        }
        Ok(())
    }

    fn lock_entry(&self, package: &VerifiedPackage, folder: &Path, source: String) -> LockEntry {
        let m = &package.manifest;
        let path = folder
            .strip_prefix(&self.config.base_dir)
            .map_or_else(|_| folder.to_path_buf(), Path::to_path_buf);
        LockEntry {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.kind,
            source,
            sha256: package.sha256.clone(),
            key_id: package.key_id.to_string(),
            path,
            entry: m.entry.clone(),
            command: m.command.as_ref().map(|argv| {
                argv.iter()
                    .map(|arg| match m.files.contains_key(arg) {
                        true => format!("{{dir}}/{arg}"),
                        false => arg.clone(),
                    })
                    .collect()
            }),
        }
    }

    /// Installs the newest version in the index of `name` that meets `requirement` and this
    /// host; `None` when the lock file already has it.
    fn install_from_index(
        &mut self,
        fetcher: &Fetcher,
        name: &str,
        requirement: Option<&semver::VersionReq>,
    ) -> anyhow::Result<Option<String>> {
        let index = self.index()?.clone();
        let lines = crate::distribution::read_index(fetcher, &index, name)?;
        let line = select(&lines, name, requirement, &host_target())?;
        if self
            .lock
            .get(name)
            .is_some_and(|e| e.version == line.version && e.sha256 == line.sha256)
        {
            return Ok(None);
        }
        let source = index.package(line);
        let bytes = fetcher
            .get(&source)?
            .with_context(|| format!("{source}: not found (named by the index for `{name}`)"))?;
        self.install(
            &bytes,
            &source.to_string(),
            format!("index {index}"),
            Some(&line.sha256),
            (Some(name), Some(&line.version)),
        )?;
        Ok(Some(line.version.clone()))
    }
}

/// `plugin install [SOURCE]`: a package file, an http(s) URL, or `NAME[@REQ]` from the index;
/// without SOURCE, every `type: marketplace` plugin of the config that the lock file lacks.
pub fn install(
    source: Option<&str>,
    config: &Path,
    index: Option<&str>,
    sha256: Option<&str>,
) -> anyhow::Result<i32> {
    let mut cx = Context::open(config, index)?;
    let fetcher = Fetcher::new();
    let Some(source) = source else {
        let missing: Vec<(String, semver::VersionReq)> = cx
            .config
            .plugins
            .iter()
            .filter_map(|p| match &p.kind {
                PluginKind::Marketplace { version, .. } if cx.lock.get(&p.name).is_none() => {
                    Some((p.name.clone(), version.clone()))
                }
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            println!("every `type: marketplace` plugin is installed");
        }
        for (name, requirement) in missing {
            cx.install_from_index(&fetcher, &name, Some(&requirement))?;
        }
        return Ok(0);
    };
    let as_path = Path::new(source);
    let direct = match Source::parse(source) {
        url @ Source::Url(_) => Some(url),
        file if as_path.exists() || source.ends_with(".bwpkg") => Some(file),
        _ => None,
    };
    if let Some(direct) = direct {
        let bytes = fetcher
            .get(&direct)?
            .with_context(|| format!("{direct}: not found"))?;
        let shown = direct.to_string();
        let recorded = match &direct {
            Source::File(path) => std::path::absolute(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string(),
            Source::Url(url) => url.clone(),
        };
        cx.install(&bytes, &shown, recorded, sha256, (None, None))?;
        return Ok(0);
    }
    if sha256.is_some() {
        bail!("`--sha256` is for a package file or URL; the index gives each version's hash");
    }
    let (name, requirement) = match source.split_once('@') {
        Some((name, req)) => {
            let req = semver::VersionReq::parse(req)
                .with_context(|| format!("`{req}` in `{source}` is not a semver requirement"))?;
            (name, Some(req))
        }
        None => (source, None),
    };
    let requirement = requirement.or_else(|| cx.requirement(name).cloned());
    if cx
        .install_from_index(&fetcher, name, requirement.as_ref())?
        .is_none()
    {
        println!("`{name}` is already installed at the version chosen");
    }
    Ok(0)
}

/// `plugin update [NAME]`: the newest version in the index that this host loads and the
/// config's `version:` allows, for NAME or every plugin of the lock file.
pub fn update(name: Option<&str>, config: &Path, index: Option<&str>) -> anyhow::Result<i32> {
    let mut cx = Context::open(config, index)?;
    let fetcher = Fetcher::new();
    let names: Vec<String> = match name {
        Some(name) => {
            if cx.lock.get(name).is_none() {
                bail!(
                    "`{name}` is not installed ({} has no entry for it); use `backworks plugin \
                     install {name}`",
                    cx.lock_path.display()
                );
            }
            vec![name.to_owned()]
        }
        None => cx.lock.plugins.iter().map(|p| p.name.clone()).collect(),
    };
    for name in names {
        let requirement = cx.requirement(&name).cloned();
        if cx
            .install_from_index(&fetcher, &name, requirement.as_ref())?
            .is_none()
        {
            let version = cx.lock.get(&name).map(|e| e.version.clone());
            println!("`{name}` {} is up to date", version.unwrap_or_default());
        }
    }
    Ok(0)
}

/// `plugin remove NAME [--force]`: deletes its folder and its lock entry; refused while the
/// config still names it, unless `force`.
pub fn remove(name: &str, config: &Path, force: bool) -> anyhow::Result<i32> {
    let mut cx = Context::open(config, None)?;
    if let Some(plugin) = cx.config.plugin(name)
        && matches!(plugin.kind, PluginKind::Marketplace { .. })
        && !force
    {
        bail!(
            "{} still names plugin `{name}` (`type: marketplace`): remove it from the config \
             first, or use `--force` (the server would then refuse to start)",
            cx.config_path.display()
        );
    }
    let Some(entry) = cx.lock.remove(name) else {
        bail!(
            "`{name}` is not installed ({} has no entry for it)",
            cx.lock_path.display()
        );
    };
    cx.lock.write(&cx.lock_path)?;
    remove_folder(&entry, &cx.config)?;
    println!(
        "removed `{name}` {} ({})",
        entry.version,
        entry.path.display()
    );
    Ok(0)
}

/// Deletes an installed folder: only one named as `install` names them (`NAME-VERSION-HASH`),
/// directly inside one of the config's `plugin_dirs`, so a hand-edited lock file cannot make this
/// delete anything else.
fn remove_folder(entry: &LockEntry, config: &Config) -> anyhow::Result<()> {
    let folder = entry.folder(&config.base_dir);
    let named = folder
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{}-{}-", entry.name, entry.version)));
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let parent = folder.parent().map(real);
    let in_plugin_dir = config
        .plugin_dirs
        .iter()
        .any(|d| parent.as_deref() == Some(real(&d.path).as_path()));
    if !named || !in_plugin_dir {
        bail!(
            "{}: not a folder `plugin install` made for `{}` {} in `plugin_dirs`; left in place",
            folder.display(),
            entry.name,
            entry.version
        );
    }
    match std::fs::remove_dir_all(&folder) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", folder.display())),
    }
}

//! Building a package from a plugin library or script, signed as it is packed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backworks_plugin_host::{
    Binding, PluginHost, PluginSource, ProcessSettings, metadata_from_bytes, sha256_hex,
};

use super::archive;
use super::error::DistError;
use super::manifest::{
    FORMAT, MANIFEST_FILE, MANIFEST_SIGNATURE, Manifest, PackageKind, TARGET_ANY, check_name,
    host_target,
};

/// What `plugin pack` was given besides the plugin file and the key.
#[derive(Debug, Default)]
pub struct PackOptions {
    /// The README to include (default: a short one made from the plugin's metadata).
    pub readme: Option<PathBuf>,
    /// The config schema (JSON Schema) to include as `schema.json`.
    pub schema: Option<PathBuf>,
    /// The target triple (default: this host's for a library, `any` for a script).
    pub target: Option<String>,
    /// A script's plugin name (a library's comes from its metadata).
    pub name: Option<String>,
    /// A script's version.
    pub version: Option<String>,
    /// A script's command line; default `python3 SCRIPT` for `.py`, else `SCRIPT`.
    pub command: Option<Vec<String>>,
    /// More files to ship beside the plugin (a script's modules), each under its file name.
    pub include: Vec<PathBuf>,
}

/// Packs the library or script at `entry` into `out_dir/NAME-VERSION-TARGET.bwpkg`, signing the
/// manifest (and a library itself, as `plugin sign` does) with `key`. Returns the package's path
/// and its manifest.
pub fn pack(
    entry: &Path,
    options: &PackOptions,
    key: &minisign::SecretKey,
    out_dir: &Path,
) -> Result<(PathBuf, Manifest), DistError> {
    let bytes = std::fs::read(entry).map_err(|e| DistError::io(entry, e))?;
    let file_name = entry
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| DistError::Manifest {
            package: entry.display().to_string(),
            reason: "the file name is not UTF-8".into(),
        })?
        .to_owned();
    let invalid = |reason: String| DistError::Manifest {
        package: entry.display().to_string(),
        reason,
    };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifest = match metadata_from_bytes(entry, &bytes) {
        Ok(meta) => {
            if options.name.is_some() || options.version.is_some() || options.command.is_some() {
                return Err(invalid(
                    "a library's name and version come from its metadata; \
                     `--name`, `--version` and `--command` are for scripts"
                        .into(),
                ));
            }
            let signature = sign(
                key,
                &bytes,
                &meta.name,
                &meta.version,
                &entry.display().to_string(),
            )?;
            files.insert(format!("{file_name}.minisig"), signature.into_bytes());
            Manifest {
                format: FORMAT,
                name: meta.name,
                version: meta.version,
                kind: PackageKind::Library,
                entry: file_name.clone(),
                target: options.target.clone().unwrap_or_else(host_target),
                abi: Some(format!("{}.{}", meta.abi_major, meta.abi_minor)),
                sdk: Some(meta.sdk_version),
                command: None,
                description: meta.description,
                files: BTreeMap::new(),
            }
        }
        Err(not_a_library) => {
            let (Some(name), Some(version)) = (&options.name, &options.version) else {
                return Err(invalid(format!(
                    "not a plugin library ({not_a_library}); to pack a script give its \
                     `--name` and `--version`"
                )));
            };
            let command = options.command.clone().unwrap_or_else(|| {
                if file_name.ends_with(".py") {
                    vec!["python3".to_owned(), file_name.clone()]
                } else {
                    vec![file_name.clone()]
                }
            });
            Manifest {
                format: FORMAT,
                name: name.clone(),
                version: version.clone(),
                kind: PackageKind::Command,
                entry: file_name.clone(),
                target: options
                    .target
                    .clone()
                    .unwrap_or_else(|| TARGET_ANY.to_owned()),
                abi: None,
                sdk: None,
                command: Some(command),
                description: String::new(),
                files: BTreeMap::new(),
            }
        }
    };
    check_name(&manifest.name).map_err(&invalid)?;
    let readme = match &options.readme {
        Some(path) => std::fs::read(path).map_err(|e| DistError::io(path, e))?,
        None => default_readme(&manifest).into_bytes(),
    };
    files.insert("README.md".to_owned(), readme);
    let declared = || declared_schema(entry, &manifest, &options.include);
    if let Some(schema) = schema_file(options.schema.as_deref(), declared)? {
        files.insert("schema.json".to_owned(), schema);
    }
    for extra in &options.include {
        let name = extra
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| invalid(format!("{}: not a file name", extra.display())))?;
        let content = std::fs::read(extra).map_err(|e| DistError::io(extra, e))?;
        if files.insert(name.to_owned(), content).is_some() || name == file_name {
            return Err(invalid(format!("`{name}` is in the package twice")));
        }
    }
    files.insert(file_name.clone(), bytes);
    manifest.files = files
        .iter()
        .map(|(path, content)| (path.clone(), sha256_hex(content)))
        .collect();
    manifest.check().map_err(&invalid)?;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let signature = sign(
        key,
        &manifest_bytes,
        &manifest.name,
        &manifest.version,
        MANIFEST_FILE,
    )?;
    files.insert(MANIFEST_FILE.to_owned(), manifest_bytes);
    files.insert(MANIFEST_SIGNATURE.to_owned(), signature.into_bytes());
    let executable: Vec<&str> = match manifest.kind {
        PackageKind::Command => vec![file_name.as_str()],
        PackageKind::Library => vec![],
    };
    let package = archive::write(&files, &executable);
    std::fs::create_dir_all(out_dir).map_err(|e| DistError::io(out_dir, e))?;
    let out = out_dir.join(manifest.file_name());
    std::fs::write(&out, package).map_err(|e| DistError::io(&out, e))?;
    Ok((out, manifest))
}

/// The config schema to include: the file given (checked to be JSON), or else the one the plugin
/// declares (`declared`). The one place the schema enters a package.
fn schema_file(
    path: Option<&Path>,
    declared: impl FnOnce() -> Result<Option<serde_json::Value>, DistError>,
) -> Result<Option<Vec<u8>>, DistError> {
    let Some(path) = path else {
        return Ok(declared()?
            .map(|schema| serde_json::to_vec_pretty(&schema).expect("a JSON value serializes")));
    };
    let bytes = std::fs::read(path).map_err(|e| DistError::io(path, e))?;
    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| DistError::Manifest {
        package: path.display().to_string(),
        reason: format!("the config schema is not JSON: {e}"),
    })?;
    Ok(Some(bytes))
}

/// The config schema the plugin at `entry` declares, read as `validate` reads it, without
/// starting the plugin: from a library's metadata or its `config_schema` entry (called in a
/// throwaway child process, never in this one), or from a script's manifest (the script run from
/// a scratch folder holding it and the `include`d files, as it will be installed). A plugin whose
/// schema cannot be read (one built for another host, say) is packed without one, with a warning.
fn declared_schema(
    entry: &Path,
    manifest: &Manifest,
    include: &[PathBuf],
) -> Result<Option<serde_json::Value>, DistError> {
    let scratch = tempfile::tempdir().map_err(|e| DistError::io(Path::new("(temp dir)"), e))?;
    let source = match manifest.kind {
        PackageKind::Library => PluginSource::Library(entry.to_owned()),
        PackageKind::Command => {
            for file in include.iter().map(PathBuf::as_path).chain([entry]) {
                let to = scratch.path().join(file.file_name().unwrap_or_default());
                std::fs::copy(file, &to).map_err(|e| DistError::io(file, e))?;
            }
            // The manifest's command names the script by its file name: run the scratch copy.
            let mut argv = manifest.command.clone().unwrap_or_default();
            for arg in &mut argv {
                if *arg == manifest.entry {
                    *arg = scratch.path().join(&manifest.entry).display().to_string();
                }
            }
            PluginSource::Command(argv)
        }
    };
    let host = PluginHost::new();
    let settings = ProcessSettings {
        handshake_timeout: SCHEMA_TIMEOUT,
        ..ProcessSettings::default()
    };
    let described = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DistError::io(Path::new("(tokio runtime)"), e))?
        .block_on(host.describe_config_schema(&manifest.name, &source, &settings));
    match described {
        Ok(schema) => Ok(schema),
        Err(error) => {
            eprintln!(
                "warning: {}: cannot read the plugin's config schema ({error}); packing it \
                 without one (give it with --schema FILE)",
                entry.display()
            );
            Ok(None)
        }
    }
}

/// How long a child may take to report a plugin's config schema.
const SCHEMA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn default_readme(manifest: &Manifest) -> String {
    format!(
        "# {} {}\n\n{}\n",
        manifest.name,
        manifest.version,
        if manifest.description.is_empty() {
            "A Backworks plugin."
        } else {
            &manifest.description
        }
    )
}

/// A minisign signature of `bytes` whose trusted comment binds `name`, `version` and the bytes'
/// SHA-256, the form the host verifies (`backworks-plugin name=… version=… sha256=…`).
fn sign(
    key: &minisign::SecretKey,
    bytes: &[u8],
    name: &str,
    version: &str,
    what: &str,
) -> Result<String, DistError> {
    let binding = Binding {
        name: name.to_owned(),
        version: version.to_owned(),
        configured_as: None,
    };
    let comment = binding.comment(bytes);
    let untrusted = format!("signature of {name} {version} by backworks plugin pack");
    minisign::sign(None, key, bytes, Some(&comment), Some(&untrusted))
        .map(|s| s.to_string())
        .map_err(|e| DistError::Sign {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

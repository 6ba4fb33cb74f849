//! Checking a package before anything of it is written (hash, signature, files, target,
//! compatibility), then unpacking it atomically under a content-addressed folder.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use backworks_plugin_host::{
    Binding, KeyId, SignatureError, TrustedIds, TrustedKeys, metadata_from_bytes, sha256_hex,
    verify_signature,
};

use super::error::DistError;
use super::index::compatible;
use super::manifest::{
    MANIFEST_FILE, MANIFEST_SIGNATURE, Manifest, PackageKind, TARGET_ANY, host_target,
};

/// A package whose every check passed, held in memory.
#[derive(Debug)]
pub struct Verified {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its files (manifest and signature included), path → content.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The package file's SHA-256.
    pub sha256: String,
    /// The key that signed its manifest.
    pub key_id: KeyId,
}

/// Where a package was unpacked.
#[derive(Debug)]
pub struct Installed {
    /// The content-addressed folder: `NAME-VERSION-SHA256[..16]`.
    pub folder: PathBuf,
    /// Whether it was there already (the same package installed before).
    pub existed: bool,
}

/// Checks the package `bytes` (named `package` in errors), in this order: its SHA-256 against
/// `expected_sha256`; the archive (see [`super::read_package`]); the manifest and its rules; the
/// manifest's signature by one of `trusted` (always required); each file's SHA-256 against the
/// manifest, and no file the manifest does not list; the plugin's name (and version) against
/// `expect`; the target against this host's; a library's metadata against the manifest and its
/// ABI and SDK against this host.
pub fn verify_package(
    bytes: &[u8],
    package: &str,
    expected_sha256: Option<&str>,
    trusted: &TrustedKeys,
    expect: (Option<&str>, Option<&str>),
) -> Result<Verified, DistError> {
    let sha256 = sha256_hex(bytes);
    if let Some(expected) = expected_sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(DistError::Hash {
            what: package.to_owned(),
            expected: expected.to_ascii_lowercase(),
            found: sha256,
        });
    }
    let files = super::read_package(bytes, package)?;
    let invalid = |reason: String| DistError::Manifest {
        package: package.to_owned(),
        reason,
    };
    let manifest_bytes = files
        .get(MANIFEST_FILE)
        .ok_or_else(|| invalid(format!("not a Backworks package: no {MANIFEST_FILE}")))?;
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| invalid(format!("{MANIFEST_FILE}: {e}")))?;
    manifest.check().map_err(&invalid)?;
    let manifest_path = PathBuf::from(format!("{package}/{MANIFEST_FILE}"));
    let signed = |verdict: SignatureError| DistError::Signature {
        package: package.to_owned(),
        verdict: Box::new(verdict),
    };
    let signature = files
        .get(MANIFEST_SIGNATURE)
        .and_then(|s| std::str::from_utf8(s).ok())
        .ok_or_else(|| {
            signed(SignatureError::Missing {
                path: manifest_path.clone(),
                signature: PathBuf::from(format!("{package}/{MANIFEST_SIGNATURE}")),
                trusted: TrustedIds(trusted.ids()),
            })
        })?;
    let binding = Binding {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        configured_as: None,
    };
    let verified = verify_signature(&manifest_path, manifest_bytes, signature, trusted, &binding)
        .map_err(signed)?;
    for (path, content) in &files {
        if path == MANIFEST_FILE || path == MANIFEST_SIGNATURE {
            continue;
        }
        let Some(expected) = manifest.files.get(path) else {
            return Err(invalid(format!(
                "holds `{path}`, which its manifest does not list"
            )));
        };
        let found = sha256_hex(content);
        if &found != expected {
            return Err(DistError::Hash {
                what: format!("{package}: {path}"),
                expected: expected.clone(),
                found,
            });
        }
    }
    if let Some(missing) = manifest.files.keys().find(|p| !files.contains_key(*p)) {
        return Err(invalid(format!(
            "its manifest lists `{missing}`, which it does not hold"
        )));
    }
    let (name, version) = expect;
    if let Some(name) = name.filter(|n| *n != manifest.name) {
        return Err(invalid(format!(
            "holds plugin `{}`, expected `{name}`",
            manifest.name
        )));
    }
    if let Some(version) = version.filter(|v| *v != manifest.version) {
        return Err(invalid(format!(
            "holds version {} of `{}`, the index says {version}",
            manifest.version, manifest.name
        )));
    }
    let host = host_target();
    if manifest.target != host && manifest.target != TARGET_ANY {
        return Err(DistError::Target {
            package: package.to_owned(),
            found: manifest.target.clone(),
            expected: host,
        });
    }
    if manifest.kind == PackageKind::Library {
        check_library(&manifest, &files[&manifest.entry], package)?;
    }
    Ok(Verified {
        manifest,
        files,
        sha256,
        key_id: verified.key_id,
    })
}

/// A library's own metadata must say what its manifest says, and this host must load it.
fn check_library(manifest: &Manifest, library: &[u8], package: &str) -> Result<(), DistError> {
    let path = PathBuf::from(format!("{package}/{}", manifest.entry));
    let meta = metadata_from_bytes(&path, library).map_err(|e| DistError::Manifest {
        package: package.to_owned(),
        reason: e.to_string(),
    })?;
    let abi = format!("{}.{}", meta.abi_major, meta.abi_minor);
    let said = (
        manifest.name.as_str(),
        manifest.version.as_str(),
        manifest.abi.as_deref(),
        manifest.sdk.as_deref(),
    );
    let is = (
        meta.name.as_str(),
        meta.version.as_str(),
        Some(abi.as_str()),
        Some(meta.sdk_version.as_str()),
    );
    if said != is {
        return Err(DistError::Manifest {
            package: package.to_owned(),
            reason: format!(
                "its manifest says plugin `{}` {} (ABI {}, SDK {}), its library says `{}` {} \
                 (ABI {abi}, SDK {})",
                said.0,
                said.1,
                said.2.unwrap_or("?"),
                said.3.unwrap_or("?"),
                meta.name,
                meta.version,
                meta.sdk_version
            ),
        });
    }
    compatible(Some(&abi), Some(&meta.sdk_version)).map_err(|reason| DistError::Incompatible {
        package: package.to_owned(),
        reason,
    })
}

/// Unpacks `package` into `plugins_dir/NAME-VERSION-SHA256[..16]/`: into a temporary folder in
/// `plugins_dir` first, every file synced, then renamed, so a crash or a refusal leaves no
/// half-installed plugin (at most a `.install-*` folder, never a plugin's).
pub fn install_package(package: &Verified, plugins_dir: &Path) -> Result<Installed, DistError> {
    let m = &package.manifest;
    let folder = plugins_dir.join(format!(
        "{}-{}-{}",
        m.name,
        m.version,
        &package.sha256[..16]
    ));
    if folder.is_dir() {
        return Ok(Installed {
            folder,
            existed: true,
        });
    }
    std::fs::create_dir_all(plugins_dir).map_err(|e| DistError::io(plugins_dir, e))?;
    let temp = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(plugins_dir)
        .map_err(|e| DistError::io(plugins_dir, e))?;
    for (path, content) in &package.files {
        let dest = temp.path().join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DistError::io(parent, e))?;
        }
        let executable = m.kind == PackageKind::Command && *path == m.entry;
        write_file(&dest, content, executable)?;
    }
    set_mode(temp.path(), 0o755)?;
    sync_dir(temp.path())?;
    std::fs::rename(temp.path(), &folder).map_err(|e| DistError::io(&folder, e))?;
    // Renamed: nothing left for the guard to delete.
    let _ = temp.keep();
    sync_dir(plugins_dir)?;
    Ok(Installed {
        folder,
        existed: false,
    })
}

fn write_file(path: &Path, content: &[u8], executable: bool) -> Result<(), DistError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if executable { 0o755 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = executable;
    let mut file = options.open(path).map_err(|e| DistError::io(path, e))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(|e| DistError::io(path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DistError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| DistError::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), DistError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DistError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::manifest::FORMAT;

    fn package(files: &[(&str, &[u8])]) -> Verified {
        let files: BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|(p, c)| ((*p).to_owned(), c.to_vec()))
            .collect();
        Verified {
            manifest: Manifest {
                format: FORMAT,
                name: "s".into(),
                version: "1.0.0".into(),
                kind: PackageKind::Command,
                entry: "s.py".into(),
                target: TARGET_ANY.into(),
                abi: None,
                sdk: None,
                command: Some(vec!["python3".into(), "s.py".into()]),
                description: String::new(),
                files: files
                    .iter()
                    .map(|(p, c)| (p.clone(), sha256_hex(c)))
                    .collect(),
            },
            files,
            sha256: "ab".repeat(32),
            key_id: KeyId(1),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn unpacks_into_a_content_addressed_folder_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = package(&[("s.py", b"print()"), ("lib/m.py", b"x = 1")]);
        let first = install_package(&p, dir.path()).unwrap();
        assert!(!first.existed);
        assert_eq!(names(dir.path()), ["s-1.0.0-abababababababab"]);
        assert_eq!(
            std::fs::read(first.folder.join("lib/m.py")).unwrap(),
            b"x = 1"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&first.folder.join("s.py")), 0o755);
            assert_eq!(mode(&first.folder.join("lib/m.py")), 0o644);
            assert_eq!(mode(&first.folder), 0o755);
        }
        let again = install_package(&p, dir.path()).unwrap();
        assert!(again.existed);
        assert_eq!(again.folder, first.folder);
    }

    #[test]
    fn a_failure_while_unpacking_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // `a` is written as a file, then `a/b` needs `a` to be a folder: the unpacking fails
        // half-way.
        let p = package(&[("a", b"1"), ("a/b", b"2"), ("s.py", b"")]);
        let err = install_package(&p, dir.path()).unwrap_err();
        assert!(matches!(err, DistError::Io { .. }), "{err}");
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }
}

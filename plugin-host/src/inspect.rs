//! Reading a plugin file's metadata and judging its compatibility without running any of its code.
//!
//! The metadata comes from a section of the file (see `backworks_plugin_sdk::metadata`), read with
//! the `object` crate as plain bytes: the library is never mapped for execution, so none of its
//! constructors run. `plugin inspect` and `plugin list` rely on that.

use std::path::{Path, PathBuf};

use backworks_plugin_sdk::abi::{ABI_MAJOR, METADATA_SECTION, METADATA_SECTION_MACHO};
use backworks_plugin_sdk::{PluginMetadata, SDK_VERSION, metadata};
use object::{Object, ObjectSection};

use crate::HostError;

/// What inspection learnt about a file.
#[derive(Debug)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// Its metadata.
    pub metadata: PluginMetadata,
    /// `Ok` when this host can load it in its own process, else why not.
    pub compatibility: Result<(), HostError>,
}

impl Inspection {
    /// Whether the plugin can run under `isolation: process`: it is compatible, or it was refused
    /// in process only because it was built with `panic = "abort"`
    /// ([`HostError::PanicAbort`]).
    pub fn runs_in_child(&self) -> bool {
        matches!(
            self.compatibility,
            Ok(()) | Err(HostError::PanicAbort { .. })
        )
    }
}

/// Reads the metadata of the plugin file at `path` and checks it against this host.
///
/// An `Err` means the file is not a readable plugin at all (not a library, no or bad metadata); an
/// incompatible plugin is an `Ok` whose `compatibility` says why.
pub fn inspect(path: &Path) -> Result<Inspection, HostError> {
    let metadata = read_metadata(path)?;
    let compatibility = check_compatibility(path, &metadata);
    Ok(Inspection {
        path: path.to_owned(),
        metadata,
        compatibility,
    })
}

/// Reads and parses the metadata section of the file at `path`.
pub fn read_metadata(path: &Path) -> Result<PluginMetadata, HostError> {
    let data = std::fs::read(path).map_err(|source| HostError::Io {
        path: path.to_owned(),
        source,
    })?;
    metadata_from_bytes(path, &data)
}

/// Parses the metadata section of a plugin file already read into `data` (`path` names it in
/// errors): what the loader and the signature check use, so the bytes read are the bytes judged.
pub fn metadata_from_bytes(path: &Path, data: &[u8]) -> Result<PluginMetadata, HostError> {
    metadata_from(path, data)
}

/// [`metadata_from_bytes`] of an open file, reading only the parts it needs (headers, section
/// table, the metadata section). The file's offset moves.
pub(crate) fn metadata_from_file(
    path: &Path,
    file: &std::fs::File,
) -> Result<PluginMetadata, HostError> {
    metadata_from(path, &object::read::ReadCache::new(file))
}

fn metadata_from<'data, R: object::ReadRef<'data>>(
    path: &Path,
    data: R,
) -> Result<PluginMetadata, HostError> {
    let file = object::File::parse(data).map_err(|e| HostError::NotALibrary {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let macho_name = METADATA_SECTION_MACHO
        .split_once(',')
        .map_or(METADATA_SECTION_MACHO, |(_, s)| s);
    let section = file
        .section_by_name(METADATA_SECTION)
        .or_else(|| file.section_by_name(macho_name))
        .or_else(|| file.section_by_name(".bwmeta"))
        .ok_or_else(|| HostError::NoMetadata {
            path: path.to_owned(),
            section: METADATA_SECTION,
        })?;
    let bytes = section.data().map_err(|e| HostError::NotALibrary {
        path: path.to_owned(),
        reason: format!("cannot read section `{METADATA_SECTION}`: {e}"),
    })?;
    metadata::parse(bytes).map_err(|source| HostError::BadMetadata {
        path: path.to_owned(),
        source,
    })
}

/// The SDK versions this host loads plugins of, as a semver requirement (`^0.1`, `^1`).
pub fn supported_sdk() -> String {
    let host =
        semver::Version::parse(SDK_VERSION).unwrap_or_else(|_| semver::Version::new(0, 0, 0));
    if host.major == 0 {
        format!("^0.{}", host.minor)
    } else {
        format!("^{}", host.major)
    }
}

/// Checks a plugin's metadata against this host: ABI major, SDK semver family, panic strategy.
///
/// The ABI minor does not matter: fields are only appended, and each side reads the other's size.
/// The SDK must be of the host's semver family (same major, or same minor below 1.0): within it,
/// an older or a newer plugin SDK is accepted. A plugin built with `panic = "abort"` is refused:
/// a panic in it would end the host's process (see [`check_child_compatibility`]).
pub fn check_compatibility(path: &Path, meta: &PluginMetadata) -> Result<(), HostError> {
    check_child_compatibility(path, meta)?;
    if !meta.panic_unwind {
        return Err(HostError::PanicAbort {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// [`check_compatibility`] for a plugin that runs in a child process of its own
/// (`isolation: process`): the same checks but the panic strategy. A panic in a plugin built with
/// `panic = "abort"` ends only its child, which the host answers as a crash and restarts.
pub fn check_child_compatibility(path: &Path, meta: &PluginMetadata) -> Result<(), HostError> {
    if meta.abi_major != ABI_MAJOR {
        return Err(HostError::AbiMismatch {
            path: path.to_owned(),
            expected_major: ABI_MAJOR,
            found_major: meta.abi_major,
            found_minor: meta.abi_minor,
        });
    }
    let expected = supported_sdk();
    let compatible = match (
        semver::Version::parse(&meta.sdk_version),
        semver::Version::parse(SDK_VERSION),
    ) {
        (Ok(mut plugin), Ok(host)) => {
            // Pre-release tags do not change the family (Nushell's rule).
            plugin.pre = semver::Prerelease::EMPTY;
            plugin.major == host.major && (host.major > 0 || plugin.minor == host.minor)
        }
        _ => false,
    };
    if !compatible {
        return Err(HostError::SdkMismatch {
            path: path.to_owned(),
            expected,
            found: meta.sdk_version.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(abi: (u16, u16), sdk: &str) -> PluginMetadata {
        PluginMetadata {
            abi_major: abi.0,
            abi_minor: abi.1,
            sdk_version: sdk.into(),
            name: "p".into(),
            version: "1.0.0".into(),
            description: String::new(),
            panic_unwind: true,
            hooks: None,
            config_schema: None,
        }
    }

    #[test]
    fn compatibility_rules() {
        let p = Path::new("p.so");
        assert!(check_compatibility(p, &meta((ABI_MAJOR, 0), SDK_VERSION)).is_ok());
        assert!(check_compatibility(p, &meta((ABI_MAJOR, 9), SDK_VERSION)).is_ok());
        let err = check_compatibility(p, &meta((ABI_MAJOR + 1, 0), SDK_VERSION)).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("plugin ABI {}.0 is incompatible", ABI_MAJOR + 1)),
            "{err}"
        );
        let err = check_compatibility(p, &meta((ABI_MAJOR, 0), "99.0.0")).unwrap_err();
        assert!(matches!(&err, HostError::SdkMismatch { found, .. } if found == "99.0.0"));
        assert!(err.to_string().contains(&supported_sdk()), "{err}");
        assert!(check_compatibility(p, &meta((ABI_MAJOR, 0), "not-semver")).is_err());
        let mut abort = meta((ABI_MAJOR, 0), SDK_VERSION);
        abort.panic_unwind = false;
        assert!(matches!(
            check_compatibility(p, &abort),
            Err(HostError::PanicAbort { .. })
        ));
        // In a child of its own, a panic = "abort" plugin is fine; the other rules still hold.
        assert!(check_child_compatibility(p, &abort).is_ok());
        abort.sdk_version = "99.0.0".into();
        assert!(matches!(
            check_child_compatibility(p, &abort),
            Err(HostError::SdkMismatch { .. })
        ));
    }

    #[test]
    fn random_bytes_and_text_are_not_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.so");
        std::fs::write(&junk, b"this is not an ELF file at all").unwrap();
        assert!(matches!(inspect(&junk), Err(HostError::NotALibrary { .. })));
        let missing = dir.path().join("missing.so");
        assert!(matches!(inspect(&missing), Err(HostError::Io { .. })));
    }
}

//! Reading a plugin file's metadata and judging its compatibility without running any of its code.
//!
//! The metadata comes from a section of the file (see `backworks_plugin_sdk::metadata`), read with
//! the `object` crate as plain bytes: the library is never mapped for execution, so none of its
//! constructors run. `plugin inspect` and `plugin list` rely on that.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use backworks_plugin_sdk::abi::{ABI_MAJOR, METADATA_SECTION, METADATA_SECTION_MACHO};
use backworks_plugin_sdk::{PluginMetadata, SDK_VERSION, metadata};
use object::elf::{FileHeader32, FileHeader64};
use object::read::StringTable;
use object::read::elf::{FileHeader, SectionHeader, SectionTable};
use object::{Endianness, FileKind, Object, ObjectSection};

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
///
/// Only the parts it needs are read (headers, section table, the metadata section), not the whole
/// file.
pub fn read_metadata(path: &Path) -> Result<PluginMetadata, HostError> {
    let io = |source| HostError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.is_dir() {
        return Err(io(std::io::ErrorKind::IsADirectory.into()));
    }
    metadata_from_file(path, &file)
}

/// Parses the metadata section of a plugin file already read into `data` (`path` names it in
/// errors): what the signature check and the loader use when they hold every byte, so the bytes
/// read are the bytes judged. It finds what [`inspect()`](fn@crate::inspect), which reads a file
/// in parts, finds in the same file.
pub fn metadata_from_bytes(path: &Path, data: &[u8]) -> Result<PluginMetadata, HostError> {
    metadata_from(path, data)
}

/// [`metadata_from_bytes`] of an open file, reading only the parts it needs (headers, section
/// table, the metadata section) at their offsets: the file's own offset does not move, so many
/// threads may read one file at once. What the loader uses on a private copy when no check needs
/// all of it.
pub(crate) fn metadata_from_file(
    path: &Path,
    file: &std::fs::File,
) -> Result<PluginMetadata, HostError> {
    metadata_from(path, &object::read::ReadCache::new(At { file, at: 0 }))
}

/// A read position of its own in a shared file: reads at an offset (`pread`), never through the
/// file's offset, which every clone of its descriptor shares.
struct At<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl std::io::Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for At<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let at = match to {
            std::io::SeekFrom::Start(at) => Some(at),
            std::io::SeekFrom::End(by) => self.file.metadata()?.len().checked_add_signed(by),
            std::io::SeekFrom::Current(by) => self.at.checked_add_signed(by),
        };
        self.at = at.ok_or_else(|| std::io::Error::other("seek before the start of the file"))?;
        Ok(self.at)
    }
}

fn metadata_from<'data, R: object::ReadRef<'data>>(
    path: &Path,
    data: R,
) -> Result<PluginMetadata, HostError> {
    let not_a_library = |e: object::read::Error| HostError::NotALibrary {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let section = match object::FileKind::parse(data).map_err(not_a_library)? {
        FileKind::Elf64 => elf_section::<FileHeader64<Endianness>, R>(data),
        FileKind::Elf32 => elf_section::<FileHeader32<Endianness>, R>(data),
        _ => any_section(data).map_err(|e| e.to_string()),
    }
    .map_err(|reason| HostError::NotALibrary {
        path: path.to_owned(),
        reason,
    })?;
    let section = section.ok_or_else(|| HostError::NoMetadata {
        path: path.to_owned(),
        section: METADATA_SECTION,
    })?;
    let bytes = section.map_err(|e| HostError::NotALibrary {
        path: path.to_owned(),
        reason: format!("cannot read section `{METADATA_SECTION}`: {e}"),
    })?;
    metadata::parse(bytes).map_err(|source| HostError::BadMetadata {
        path: path.to_owned(),
        source,
    })
}

/// The names the metadata section may have, in the order they are looked for: the ELF name, the
/// Mach-O section name (without its segment), and the short name of a PE object.
fn section_names() -> [&'static str; 3] {
    let macho = METADATA_SECTION_MACHO
        .split_once(',')
        .map_or(METADATA_SECTION_MACHO, |(_, s)| s);
    [METADATA_SECTION, macho, ".bwmeta"]
}

/// A metadata section found in a file: its bytes, or why they could not be read.
type Section<'data> = Option<Result<&'data [u8], &'static str>>;

/// The metadata section of an ELF file, from its header and section table only.
///
/// `object::File::parse` would also parse the symbol tables (a quarter of a Rust plugin file, read
/// or paged in for nothing): a tenth of a load's CPU at start-up with many plugins.
///
/// It judges a file as `object::File::parse` did, from memory or through reads alike: no section
/// table is no metadata; a section table not aligned for its entries, or a names index outside
/// it, is no library; names that cannot be read are none (no metadata).
fn elf_section<'data, Elf: FileHeader, R: object::ReadRef<'data>>(
    data: R,
) -> Result<Section<'data>, String> {
    let text = |e: object::read::Error| e.to_string();
    let header = Elf::parse(data).map_err(text)?;
    let endian = header.endian().map_err(text)?;
    let headers = header.section_headers(endian, data).map_err(text)?;
    if headers.is_empty() {
        return Ok(None);
    }
    // Read from memory, the table must be aligned; read into a buffer of its own, it need not:
    // both ways judge it as memory does.
    let at: u64 = header.e_shoff(endian).into();
    if !at.is_multiple_of(align_of::<Elf::SectionHeader>() as u64) {
        return Err("Invalid ELF section header offset/size/alignment".into());
    }
    let names = headers
        .get(header.shstrndx(endian, data).map_err(text)? as usize)
        .ok_or("Invalid ELF e_shstrndx")?;
    let size: u64 = names.sh_size(endian).into();
    if size > MAX_SECTION_NAMES {
        return Err(format!(
            "its section names take {size} bytes, more than the {MAX_SECTION_NAMES} read"
        ));
    }
    // The section names read at once, and looked up in memory: through a `ReadCache`,
    // `header.sections` would read each name with a read of its own.
    let names = names.data(endian, data).unwrap_or(&[]);
    let sections =
        SectionTable::<Elf, &[u8]>::new(headers, StringTable::new(names, 0, names.len() as u64));
    Ok(section_names().into_iter().find_map(|name| {
        let (_, section) = sections.section_by_name(endian, name.as_bytes())?;
        Some(prefix(data, section.file_range(endian)))
    }))
}

/// The metadata section of any other object file `object` reads (Mach-O, PE).
fn any_section<'data, R: object::ReadRef<'data>>(data: R) -> object::read::Result<Section<'data>> {
    let file = object::File::parse(data)?;
    Ok(section_names()
        .into_iter()
        .find_map(|name| file.section_by_name(name))
        .map(|section| prefix(data, section.file_range())))
}

/// The most bytes of section names read (a plugin's are well under a KiB).
const MAX_SECTION_NAMES: u64 = 1024 * 1024;

/// The most bytes of a metadata section read: [`metadata::parse`] reads at most
/// [`metadata::MAX_LEN`] bytes of entries, the last of which may run past it by a value's length;
/// twice that covers it. A hostile file's huge section costs no more than this.
const MAX_SECTION_READ: u64 = 2 * metadata::MAX_LEN as u64;

/// The first bytes of the section at `range` (offset and size in the file; `None`: it takes no
/// room there), up to [`MAX_SECTION_READ`]; the whole range must lie in the file.
fn prefix<'data, R: object::ReadRef<'data>>(
    data: R,
    range: Option<(u64, u64)>,
) -> Result<&'data [u8], &'static str> {
    let Some((offset, size)) = range else {
        return Ok(&[]);
    };
    let len = data.len().map_err(|()| "the file's length is unknown")?;
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err("it runs past the end of the file");
    }
    data.read_bytes_at(offset, size.min(MAX_SECTION_READ))
        .map_err(|()| "it cannot be read")
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

    /// Reads through `At` keep positions of their own: two of them over one descriptor (as
    /// threads reading one kept copy have) do not move each other or the file's offset.
    #[test]
    fn reads_at_a_position_of_their_own_leave_the_file_offset_alone() {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..=255u8).collect();
        std::io::Write::write_all(&mut file, &content).unwrap();
        file.seek(SeekFrom::Start(7)).unwrap();
        let (mut a, mut b) = (At { file: &file, at: 0 }, At { file: &file, at: 0 });
        let mut buf = [0; 4];
        a.seek(SeekFrom::Start(10)).unwrap();
        b.seek(SeekFrom::End(-4)).unwrap();
        a.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [10, 11, 12, 13]);
        b.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [252, 253, 254, 255]);
        a.seek(SeekFrom::Current(-2)).unwrap();
        a.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [12, 13, 14, 15]);
        assert_eq!(b.read(&mut buf).unwrap(), 0, "at the end");
        assert!(a.seek(SeekFrom::Current(-100)).is_err());
        assert_eq!(
            file.stream_position().unwrap(),
            7,
            "the file's offset did not move"
        );
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

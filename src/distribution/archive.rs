//! A package's bytes: a gzip'd tar of plain files. Writing one deterministically, and reading one
//! from untrusted bytes into memory, refusing anything but plain files and folders with safe names.

use std::collections::BTreeMap;
use std::io::Read as _;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tar::EntryType;

use super::error::DistError;
use super::manifest::check_path;

/// The largest file a package may hold.
pub const MAX_ENTRY_BYTES: u64 = 128 * 1024 * 1024;
/// The most a package may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;
/// The most entries a package may hold.
pub const MAX_ENTRIES: usize = 1024;

/// Writes `files` (path → content) as a gzip'd tar: sorted, mtime 0, owner 0, mode 0644 (0755 for
/// the paths in `executable`), so the same files make the same bytes.
pub(crate) fn write(files: &BTreeMap<String, Vec<u8>>, executable: &[&str]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(if executable.contains(&path.as_str()) {
            0o755
        } else {
            0o644
        });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(EntryType::Regular);
        // Paths were checked by `check_path`: relative, no `..`; writing to a Vec cannot fail.
        builder
            .append_data(&mut header, path, content.as_slice())
            .expect("writing a tar into memory");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("writing a tar into memory")
}

/// Reads a package from untrusted `bytes` into memory: path → content. `package` names it in
/// errors. Refuses, naming the entry: links (symbolic or hard), devices, fifos and any other
/// special entry; absolute paths, `..`, names that are not UTF-8; duplicates; an entry over
/// [`MAX_ENTRY_BYTES`], a total over [`MAX_UNPACKED_BYTES`] or more than [`MAX_ENTRIES`] entries.
/// Folder entries are accepted and dropped (files carry their folders in their paths).
pub fn read_package(bytes: &[u8], package: &str) -> Result<BTreeMap<String, Vec<u8>>, DistError> {
    let refuse = |reason: String| DistError::Archive {
        package: package.to_owned(),
        reason,
    };
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("not a gzip'd tar: {e}")))?;
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for (count, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| refuse(format!("not a gzip'd tar: {e}")))?;
        if count >= MAX_ENTRIES {
            return Err(refuse(format!("more than {MAX_ENTRIES} entries")));
        }
        let raw = entry.path_bytes();
        let Ok(name) = std::str::from_utf8(&raw) else {
            return Err(refuse(format!(
                "entry `{}` has a name that is not UTF-8",
                String::from_utf8_lossy(&raw).escape_default()
            )));
        };
        let name = name.to_owned();
        let shown = name.escape_default().to_string();
        let kind = entry.header().entry_type();
        let what = match kind {
            EntryType::Regular | EntryType::Continuous => None,
            EntryType::Directory => None,
            EntryType::Symlink => Some("a symbolic link"),
            EntryType::Link => Some("a hard link"),
            EntryType::Char => Some("a character device"),
            EntryType::Block => Some("a block device"),
            EntryType::Fifo => Some("a fifo"),
            _ => Some("a special entry"),
        };
        if let Some(what) = what {
            return Err(refuse(format!("entry `{shown}` is {what}")));
        }
        let path = name.strip_prefix("./").unwrap_or(&name);
        let path = if kind == EntryType::Directory {
            path.trim_end_matches('/')
        } else {
            path
        };
        if kind == EntryType::Directory && path.is_empty() {
            continue;
        }
        check_path(path).map_err(|e| refuse(format!("entry {e}")))?;
        if kind == EntryType::Directory {
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_ENTRY_BYTES {
            return Err(refuse(format!(
                "entry `{shown}` is {size} bytes, more than {MAX_ENTRY_BYTES}"
            )));
        }
        total = total.saturating_add(size);
        if total > MAX_UNPACKED_BYTES {
            return Err(refuse(format!(
                "entries add up to more than {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut content)
            .map_err(|e| refuse(format!("entry `{shown}` cannot be read: {e}")))?;
        if files.insert(path.to_owned(), content).is_some() {
            return Err(refuse(format!("entry `{shown}` appears twice")));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_entry(name: &[u8], kind: EntryType, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let files: BTreeMap<String, Vec<u8>> = [
            ("a".to_owned(), b"1".to_vec()),
            ("d/b".to_owned(), vec![0; 10_000]),
        ]
        .into();
        let bytes = write(&files, &["a"]);
        assert_eq!(write(&files, &["a"]), bytes, "deterministic");
        assert_eq!(read_package(&bytes, "p").unwrap(), files);
    }

    #[test]
    fn refusals() {
        for (name, kind, why) in [
            (&b"../x"[..], EntryType::Regular, "traversal"),
            (b"a/../../x", EntryType::Regular, "traversal"),
            (b"/etc/x", EntryType::Regular, "absolute"),
            (b"l", EntryType::Symlink, "symbolic link"),
            (b"h", EntryType::Link, "hard link"),
            (b"c", EntryType::Char, "character device"),
            (b"b", EntryType::Block, "block device"),
            (b"f", EntryType::Fifo, "fifo"),
            (b"\xff", EntryType::Regular, "not UTF-8"),
        ] {
            let err = read_package(&raw_entry(name, kind, b"x"), "p.bwpkg").unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.starts_with("p.bwpkg: refused archive: ") && shown.contains(why),
                "{shown}"
            );
        }
        let err = read_package(b"not gzip", "p").unwrap_err().to_string();
        assert!(err.contains("not a gzip'd tar"), "{err}");
    }

    #[test]
    fn duplicates_are_refused() {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for _ in 0..2 {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            builder.append_data(&mut header, "a", &b"x"[..]).unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let err = read_package(&bytes, "p").unwrap_err().to_string();
        assert!(err.contains("entry `a` appears twice"), "{err}");
    }

    #[test]
    fn folders_and_dot_slash_are_accepted() {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(EntryType::Directory);
        dir.set_size(0);
        dir.set_mode(0o755);
        builder.append_data(&mut dir, "./", &b""[..]).unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(1);
        file.set_mode(0o644);
        builder.append_data(&mut file, "./a", &b"x"[..]).unwrap();
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let files = read_package(&bytes, "p").unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["a"]);
    }
}

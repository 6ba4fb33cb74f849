//! Who may have written a plugin file: the checks made before its bytes are read for loading.
//!
//! The rules are ssh's `StrictModes`, applied to a library the host is about to run:
//!
//! - the file is a regular file (a symlink is followed and its target checked);
//! - it is owned by the user the host runs as, or by root;
//! - it is neither group- nor world-writable;
//! - the directory it is in, and the directory the configured path (a symlink) is in, are not
//!   world-writable — a sticky directory such as `/tmp` included: the sticky bit stops others
//!   from replacing *this* file, but anyone may plant another one next to it, and a plugin
//!   folder has no reason to be shared that way.
//!
//! [`FileChecks::Relaxed`] keeps only the first rule, for development. The owner and mode that
//! decide are those of the descriptor the bytes are then read from ([`open_checked`]), so a file
//! swapped between the check and the read is checked as what is read.

use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::HostError;

/// How strictly a plugin file is checked before it is loaded (`trust.file_checks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileChecks {
    /// Regular file, owned by the host's user or root, not group- or world-writable, in a
    /// directory that is not world-writable. The default.
    #[default]
    Strict,
    /// Only "a regular file": for development, where builds land in shared or loose folders.
    Relaxed,
}

impl FileChecks {
    /// The setting as written in `backworks.yaml`: `strict` or `relaxed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileChecks::Strict => "strict",
            FileChecks::Relaxed => "relaxed",
        }
    }
}

impl std::str::FromStr for FileChecks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(FileChecks::Strict),
            "relaxed" => Ok(FileChecks::Relaxed),
            other => Err(format!(
                "unknown file checks `{other}`: expected `strict` or `relaxed`"
            )),
        }
    }
}

fn refused(path: &Path, problem: String) -> HostError {
    HostError::FileRefused {
        path: path.to_owned(),
        problem,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Resolves `path` (symlinks followed) and checks the directories involved; returns the target.
fn resolve(path: &Path, checks: FileChecks) -> Result<PathBuf, HostError> {
    let target = path.canonicalize().map_err(io(path))?;
    if checks == FileChecks::Strict {
        // The folder the configured name lives in: whoever can write it can swap the name.
        let named_in = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .and_then(|dir| dir.canonicalize().ok());
        let target_in = target.parent().map(Path::to_owned);
        for dir in [named_in, target_in].into_iter().flatten() {
            let meta = std::fs::metadata(&dir).map_err(io(&dir))?;
            check_directory(path, &dir, &meta)?;
        }
    }
    Ok(target)
}

fn check_directory(path: &Path, dir: &Path, meta: &Metadata) -> Result<(), HostError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        let sticky = if mode & 0o1000 != 0 { ", sticky" } else { "" };
        return Err(refused(
            path,
            format!(
                "its directory {} is world-writable (mode {mode:04o}{sticky})",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Checks the file's own status: regular, owner, mode.
fn check_status(
    path: &Path,
    target: &Path,
    meta: &Metadata,
    checks: FileChecks,
) -> Result<(), HostError> {
    // What the message says first when the configured name is a symlink.
    let via = if target != path {
        format!("symlink to {}: ", target.display())
    } else {
        String::new()
    };
    if !meta.file_type().is_file() {
        return Err(refused(
            path,
            format!("{via}not a regular file (mode {:06o})", meta.mode()),
        ));
    }
    if checks == FileChecks::Relaxed {
        return Ok(());
    }
    let mode = meta.mode() & 0o7777;
    let uid = meta.uid();
    let host_uid = nix::unistd::geteuid().as_raw();
    if uid != host_uid && uid != 0 {
        let name = user_name(uid)
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        return Err(refused(
            path,
            format!(
                "{via}owned by uid {uid}{name}, not by the host's user (uid {host_uid}) or root"
            ),
        ));
    }
    let writable = if mode & 0o002 != 0 {
        Some("world-writable")
    } else if mode & 0o020 != 0 {
        Some("group-writable")
    } else {
        None
    };
    if let Some(writable) = writable {
        return Err(refused(path, format!("{via}mode {mode:04o} is {writable}")));
    }
    Ok(())
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The verdict of the file checks on `path`, without reading or opening it for loading: for
/// `validate`, `plugin list` and `plugin inspect`.
pub fn check_file(path: &Path, checks: FileChecks) -> Result<(), HostError> {
    let target = resolve(path, checks)?;
    let meta = std::fs::metadata(&target).map_err(io(path))?;
    check_status(path, &target, &meta, checks)
}

/// Checks `path` and opens the file the checks were made on, for reading its bytes once.
///
/// The target is opened without following a further symlink and without blocking (a FIFO
/// planted in its place fails the regular-file check rather than hanging the host); the owner and
/// mode checked are those of the open descriptor.
pub(crate) fn open_checked(path: &Path, checks: FileChecks) -> Result<File, HostError> {
    let target = resolve(path, checks)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&target)
        .map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    check_status(path, &target, &meta, checks)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn modes_decide_under_strict_and_not_under_relaxed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libp.so");
        std::fs::write(&file, b"bytes").unwrap();
        chmod(&file, 0o644);
        check_file(&file, FileChecks::Strict).unwrap();
        for (mode, word) in [(0o666, "world-writable"), (0o664, "group-writable")] {
            chmod(&file, mode);
            let err = check_file(&file, FileChecks::Strict)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("mode {mode:04o} is {word}")), "{err}");
            assert!(err.starts_with(&file.display().to_string()), "{err}");
            check_file(&file, FileChecks::Relaxed).unwrap();
        }
        chmod(&file, 0o644);
        chmod(dir.path(), 0o1777);
        let err = check_file(&file, FileChecks::Strict)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is world-writable (mode 1777, sticky)"),
            "{err}"
        );
        check_file(&file, FileChecks::Relaxed).unwrap();
        chmod(dir.path(), 0o700);
        let err = check_file(dir.path(), FileChecks::Relaxed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("real.so");
        std::fs::write(&file, b"bytes").unwrap();
        chmod(&file, 0o646);
        let link = dir.path().join("link.so");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = check_file(&link, FileChecks::Strict)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symlink to"), "{err}");
        assert!(err.contains("mode 0646 is world-writable"), "{err}");
        chmod(&file, 0o600);
        check_file(&link, FileChecks::Strict).unwrap();
        assert_eq!("relaxed".parse(), Ok(FileChecks::Relaxed));
        assert!("lax".parse::<FileChecks>().is_err());
    }
}

//! Private, immutable copies of checked library bytes: what `dlopen` actually maps.
//!
//! The bytes read (and checked) from a plugin file are written once into a **sealed `memfd`**
//! (`memfd_create` + `F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: nobody, this
//! process included, can change them any more) and the library is opened through
//! `/proc/self/fd/N`. Replacing, truncating or deleting the original file afterwards changes
//! nothing that runs: the mapping is of the copy.
//!
//! Where a `memfd` cannot be mapped executable (a hardened kernel, an LSM), the copy is a file in
//! a fresh `0700` directory under a unique name in the temporary directory (`TMPDIR`), made
//! read-only, opened read-only, then unlinked with its directory: only this process's descriptor
//! reaches it. Which store is in force is decided once per process by a probe (create a memfd, map
//! it `PROT_EXEC`), logged, and shown in `/proc/PID/maps` (`/memfd:backworks-…` or
//! `…/backworks-copy-…/….so (deleted)`). `BACKWORKS_PRIVATE_COPY=memfd|directory` forces one.
//!
//! Copies are kept by the SHA-256 of their content for the life of the process (libraries are
//! never unloaded anyway): files with identical bytes share one copy, one inode, and so one
//! `dlopen` handle and one mapping, however many plugin instances are made from them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use sha2::{Digest, Sha256};

/// The environment variable that forces a store: `memfd` or `directory`.
pub const STORE_ENV: &str = "BACKWORKS_PRIVATE_COPY";

/// Where private copies live in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A sealed anonymous file (`memfd_create`).
    Memfd,
    /// A read-only file in a private `0700` directory of the temporary directory, unlinked once
    /// opened.
    Directory,
}

impl Store {
    /// `memfd` or `directory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Memfd => "memfd",
            Store::Directory => "directory",
        }
    }
}

/// A SHA-256 digest.
pub(crate) type Sha256Digest = [u8; 32];

/// The SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

pub(crate) use crate::trust::hex;

/// One private copy: an open descriptor of immutable bytes, kept for the life of the process.
#[derive(Debug)]
pub(crate) struct PrivateCopy {
    fd: OwnedFd,
    sha256: Sha256Digest,
    store: Store,
}

impl PrivateCopy {
    /// The path `dlopen` opens: this process's descriptor of the copy.
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The path a child process of this one reads the copy from.
    pub(crate) fn path_for_children(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// The content's SHA-256.
    pub(crate) fn sha256(&self) -> &Sha256Digest {
        &self.sha256
    }

    /// Where it lives.
    pub(crate) fn store(&self) -> Store {
        self.store
    }
}

/// The store in force in this process: forced by [`STORE_ENV`], else memfd where a memfd can be
/// mapped executable.
pub fn store() -> Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    *STORE.get_or_init(|| {
        let store = match std::env::var(STORE_ENV).as_deref() {
            Ok("directory") => Store::Directory,
            Ok("memfd") => Store::Memfd,
            _ if memfd_can_execute() => Store::Memfd,
            _ => Store::Directory,
        };
        tracing::debug!(
            store = store.as_str(),
            "plugin libraries load from private copies"
        );
        store
    })
}

/// The private copy of `bytes`, whose SHA-256 is `digest` (computed once by the caller, which
/// read the bytes): the one already made for the same content, or a new one.
pub(crate) fn copy_of(bytes: &[u8], digest: &Sha256Digest) -> std::io::Result<Arc<PrivateCopy>> {
    static COPIES: OnceLock<Mutex<HashMap<Sha256Digest, Arc<PrivateCopy>>>> = OnceLock::new();
    debug_assert_eq!(&sha256(bytes), digest, "the digest is of these bytes");
    let digest = *digest;
    let copies = COPIES.get_or_init(Mutex::default);
    // Held while a copy is written, so two loads of one content make one copy.
    let mut copies = copies.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(copy) = copies.get(&digest) {
        return Ok(copy.clone());
    }
    let store = store();
    let fd = match store {
        Store::Memfd => sealed_memfd(bytes, &digest)?,
        Store::Directory => private_file(&std::env::temp_dir(), bytes, &digest)?,
    };
    let copy = Arc::new(PrivateCopy {
        fd,
        sha256: digest,
        store,
    });
    copies.insert(digest, copy.clone());
    Ok(copy)
}

/// The name a copy shows in `/proc/PID/maps`: the first 16 hex digits of its hash.
fn short_name(digest: &Sha256Digest) -> String {
    format!("backworks-{}", &hex(digest)[..16])
}

fn memfd(name: &str) -> std::io::Result<OwnedFd> {
    // MFD_EXEC (Linux 6.3) asks for an executable memfd where `vm.memfd_noexec` would otherwise
    // make it non-executable; older kernels reject the unknown flag, then it is not needed.
    const MFD_EXEC: MFdFlags = MFdFlags::from_bits_retain(0x0010);
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    match memfd_create(name, flags | MFD_EXEC) {
        Err(nix::Error::EINVAL) => memfd_create(name, flags).map_err(Into::into),
        other => other.map_err(Into::into),
    }
}

/// Writes `bytes` into a new memfd and seals it against every change.
fn sealed_memfd(bytes: &[u8], digest: &Sha256Digest) -> std::io::Result<OwnedFd> {
    let fd = memfd(&short_name(digest))?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file.into())
}

/// Writes `bytes` to a read-only file in a fresh `0700` directory under `base`, opens it
/// read-only, and removes both names: the returned descriptor is the only way to it.
fn private_file(base: &Path, bytes: &[u8], digest: &Sha256Digest) -> std::io::Result<OwnedFd> {
    let dir = unique_dir(base)?;
    let path = dir.join(format!("{}.so", short_name(digest)));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o500)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        file.write_all(bytes)?;
        drop(file);
        File::open(&path)
    })();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    Ok(written?.into())
}

/// Creates a new directory `backworks-copy-<pid>-<n>` with mode `0700` under `base`; a name taken
/// by someone else is skipped, never reused.
fn unique_dir(base: &Path) -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!(
            "backworks-copy-{}-{nanos:x}-{n}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether a memfd can be mapped executable here: create one, write a page, map it `PROT_EXEC`.
fn memfd_can_execute() -> bool {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    let probe = (|| -> std::io::Result<bool> {
        let fd = sealed_memfd(&[0u8; 4096], &[0; 32])?;
        let len = std::num::NonZeroUsize::new(4096).expect("non-zero");
        // SAFETY: a fresh private read+exec mapping of our own sealed 4 KiB memfd at an address the
        // kernel picks; nothing runs or reads it, and it is unmapped right below.
        let mapped = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_EXEC,
                MapFlags::MAP_PRIVATE,
                &fd,
                0,
            )
        };
        match mapped {
            Ok(address) => {
                // SAFETY: `address` is the mapping of `len` bytes made just above, used by nothing.
                let _ = unsafe { munmap(address, len.get()) };
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    })();
    probe.unwrap_or(false)
}

/// Reads all of `file`, which is the library's only read: the bytes checked are the bytes copied.
pub(crate) fn read_all(mut file: File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_memfd_copy_is_sealed() {
        let fd = sealed_memfd(b"library bytes", &sha256(b"library bytes")).unwrap();
        let seals = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS).unwrap();
        let seals = SealFlag::from_bits_truncate(seals);
        assert!(
            seals
                .contains(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL)
        );
        let mut file = File::from(fd);
        assert!(
            file.write_all(b"x").is_err(),
            "a sealed copy cannot be written"
        );
        assert!(file.set_len(1).is_err(), "nor truncated");
    }

    /// The fallback where a memfd cannot be executed: a private directory, removed at once.
    #[test]
    fn the_directory_fallback_leaves_only_a_read_only_descriptor() {
        let base = tempfile::tempdir().unwrap();
        let bytes = b"\x7fELF not really".to_vec();
        let digest = sha256(&bytes);
        let fd = private_file(base.path(), &bytes, &digest).unwrap();
        // Both names are gone: nothing in the file system reaches the copy.
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
        let mut file = File::from(fd);
        let meta = file.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o500);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        let link = link.to_string_lossy().into_owned();
        assert!(link.contains("/backworks-copy-"), "{link}");
        assert!(
            link.ends_with(&format!("{}.so (deleted)", short_name(&digest))),
            "{link}"
        );
        assert!(file.write_all(b"x").is_err(), "opened read-only");
        // Its bytes are the bytes given, read back through the descriptor as dlopen would.
        let again = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(again, bytes);
        let mut read = Vec::new();
        file.read_to_end(&mut read).unwrap();
        assert_eq!(read, bytes);
    }

    #[test]
    fn identical_bytes_share_one_copy() {
        let copy = |bytes: &[u8]| copy_of(bytes, &sha256(bytes)).unwrap();
        let a = copy(b"same content");
        let b = copy(b"same content");
        let c = copy(b"other content");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(hex(a.sha256()).len(), 64);
        assert_eq!(std::fs::read(a.proc_path()).unwrap(), b"same content");
    }
}

//! Private, immutable copies of plugin libraries: what is checked, and what `dlopen` maps.
//!
//! A plugin file's bytes are copied **once**, by the kernel (no pass through this process's
//! memory), into a **sealed `memfd`** (`memfd_create` + `F_SEAL_WRITE | F_SEAL_SHRINK |
//! F_SEAL_GROW | F_SEAL_SEAL`, or `F_SEAL_FUTURE_WRITE` where the kernel keeps refusing
//! `F_SEAL_WRITE` as busy, see `seal`: nobody, this process included, can change them any more). Every
//! check then reads the copy, not the file (the parts it needs with `pread`, or all of it mapped
//! read-only when a signature or a hash needs every byte: a sealed memfd cannot change under
//! either), and the library is opened through `/proc/self/fd/N`: what runs is exactly what was
//! checked, and replacing, truncating or deleting the original file afterwards changes nothing
//! that runs.
//!
//! Where a `memfd` cannot be mapped executable (a hardened kernel, an LSM), the copy is a file in
//! a fresh `0700` directory under a unique name in the temporary directory (`TMPDIR`), made
//! read-only, opened read-only, then unlinked with its directory: only this process's descriptor
//! reaches it. A check that needs all of its bytes reads them into memory (it is not sealed, so it
//! is not mapped); the others read its parts. Which store is in force is
//! decided once per process by a probe (create a memfd, map it `PROT_EXEC`), logged, and shown in
//! `/proc/PID/maps` (`/memfd:backworks-<file name>` or `…/backworks-copy-…/<file name> (deleted)`).
//! `BACKWORKS_PRIVATE_COPY=memfd|directory` forces one, and copies (no leases, below).
//!
//! **A file nobody writes is not copied** where the kernel grants a read lease on it (the usual
//! case: a file of this process's user on a local file system, see `lease`): it is checked and
//! opened in place, like an unchangeable file, and made independent of the file only if a write
//! to it begins, while the writer waits ([`Store::Leased`]). Its checks read it in parts, or into
//! memory when they need all of it; besides `dlopen`, only its kept view maps it (for comparing
//! identical files), and a detach replaces that mapping too.
//!
//! A file the kernel forbids anyone to change is not copied at all: one with the immutable
//! attribute (`chattr +i`) or fs-verity. It is checked and opened through the descriptor the file
//! checks opened, as a copy would be ([`Store::Unchangeable`]). The copy is most of what a load
//! costs (the kernel allocates and fills a page of shared memory per 4 KiB), so a deployment that
//! marks its plugin files immutable starts many plugins several times faster. What it trusts
//! instead: only someone holding `CAP_LINUX_IMMUTABLE` can lift the attribute, and changing such
//! a file while it is loaded then takes that deliberate step first.
//!
//! Copies are kept for the life of the process (libraries are never unloaded anyway), and files
//! with identical bytes share one copy, one inode, and so one `dlopen` handle and one mapping,
//! however many plugin instances are made from them. A file whose length and first and last
//! pages match a kept copy's is read whole and compared with the kept copies that also declare
//! its name and version (see `Key`): an equal one is used and nothing is copied, which makes the
//! thousandth copy of one plugin file cheap (a read and a comparison, no new pages of shared
//! memory, no `dlopen`). The SHA-256 of a copy is computed only when something needs it, at most
//! once: a signature check, a plugin child, `LoadedLibrary::sha256`.

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Seek, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use sha2::{Digest, Sha256};

use super::lease::{InUse, Lease};

/// The environment variable that forces a store: `memfd` or `directory`; either also turns
/// leases off, so every library not unchangeable is copied.
pub const STORE_ENV: &str = "BACKWORKS_PRIVATE_COPY";

/// Where a library's private copy lives: where this process makes copies ([`store`]), or, for a
/// file the kernel forbids anyone to change, the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A sealed anonymous file (`memfd_create`).
    Memfd,
    /// A read-only file in a private `0700` directory of the temporary directory, unlinked once
    /// opened.
    Directory,
    /// No copy: the file itself, through the descriptor its checks opened, because it is
    /// immutable (`chattr +i`) or has fs-verity, which no write, truncation or rename can get
    /// past; see docs/operations.md.
    Unchangeable,
    /// No copy while nobody writes the file: the file itself, under a read lease, made
    /// independent of it when a write begins (see `lease`).
    Leased,
}

impl Store {
    /// `memfd`, `directory`, `unchangeable` or `leased`.
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Memfd => "memfd",
            Store::Directory => "directory",
            Store::Unchangeable => "unchangeable",
            Store::Leased => "leased",
        }
    }
}

/// `FS_IOC_GETFLAGS`, `_IOR('f', 1, long)`: an inode's attribute flags (the kernel writes an `int`).
const FS_IOC_GETFLAGS: nix::libc::c_ulong = 0x8008_6601;
/// The immutable attribute (`chattr +i`).
const FS_IMMUTABLE_FL: nix::libc::c_int = 0x0000_0010;
/// fs-verity.
const FS_VERITY_FL: nix::libc::c_int = 0x0010_0000;

/// Whether the kernel forbids anyone to change the open file `file`: it carries the immutable
/// attribute (`FS_IMMUTABLE_FL`, set by `chattr +i`: no write, truncation, rename or unlink,
/// whoever asks, until someone holding `CAP_LINUX_IMMUTABLE` removes it) or fs-verity
/// (`FS_VERITY_FL`: read-only for good). A read-only mount is not enough: the same file may be
/// writable through another mount of its file system.
fn unchangeable(file: &File) -> bool {
    let mut flags: nix::libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS on a descriptor we own writes one `int` into `flags`, which lives
    // across the call; a file system without the ioctl fails it and writes nothing.
    let status = unsafe { nix::libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
    status == 0 && flags & (FS_IMMUTABLE_FL | FS_VERITY_FL) != 0
}

/// A SHA-256 digest.
pub(crate) type Sha256Digest = [u8; 32];

/// The SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

pub(crate) use crate::trust::hex;

/// One private copy: an open descriptor of immutable bytes.
#[derive(Debug)]
pub(crate) struct PrivateCopy {
    file: Backing,
    len: usize,
    store: Store,
    /// Computed the first time something needs it, from the copy's bytes.
    sha256: OnceLock<Sha256Digest>,
    /// A read-only mapping kept as long as the copy, made the first time a file is compared with
    /// it (a memfd copy only): many files compared with one kept copy map it once.
    view: OnceLock<Mapping>,
}

/// What a copy's bytes are read from.
#[derive(Debug)]
enum Backing {
    /// A copy, or an unchangeable file: a descriptor of bytes that never change.
    Fixed(File),
    /// The file itself under a read lease: read during a use of the lease, which a write waits
    /// for.
    Leased(Arc<Lease>),
}

/// A copy's descriptor, lent for reads (during a use of a leased file's lease).
pub(crate) struct CopyFile<'a> {
    file: &'a File,
    _use: Option<InUse<'a>>,
}

impl std::ops::Deref for CopyFile<'_> {
    type Target = File;

    fn deref(&self) -> &File {
        self.file
    }
}

impl PrivateCopy {
    /// The file under `lease`, in place.
    fn leased(lease: Arc<Lease>) -> std::io::Result<PrivateCopy> {
        let len = {
            let used = lease.enter();
            usize::try_from(lease.file(&used).metadata()?.len()).map_err(std::io::Error::other)?
        };
        Ok(PrivateCopy {
            file: Backing::Leased(lease),
            len,
            store: Store::Leased,
            sha256: OnceLock::new(),
            view: OnceLock::new(),
        })
    }

    /// A new copy of everything `file` holds from its start, in the store in force: read once,
    /// copied by the kernel (`copy_file_range`, else `sendfile`). `name`, the library's file
    /// name, names the copy in `/proc/PID/maps`.
    ///
    /// A file the kernel forbids anyone to change (immutable or fs-verity, see [`Store::Unchangeable`])
    /// is not copied: it already is what a copy makes it, and `dlopen` maps it through this very
    /// descriptor, saving the copy's time (most of a load) and memory. `fixed` says whether
    /// [`unchangeable`] found the file so (asked by the caller, who may have read it since).
    fn of_file(mut file: File, name: &str, fixed: bool) -> std::io::Result<PrivateCopy> {
        if fixed {
            let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
            return Ok(PrivateCopy {
                file: Backing::Fixed(file),
                len,
                store: Store::Unchangeable,
                sha256: OnceLock::new(),
                view: OnceLock::new(),
            });
        }
        file.seek(std::io::SeekFrom::Start(0))?;
        PrivateCopy::write(name, |copy| std::io::copy(&mut file, copy).map(drop))
    }

    /// A new copy of `bytes`, in the store in force.
    pub(crate) fn of_bytes(bytes: &[u8], name: &str) -> std::io::Result<PrivateCopy> {
        PrivateCopy::write(name, |copy| copy.write_all(bytes))
    }

    fn write(
        name: &str,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> std::io::Result<PrivateCopy> {
        let (store, file) = (store(), stored_file(name, fill)?);
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        Ok(PrivateCopy {
            file: Backing::Fixed(file),
            len,
            store,
            sha256: OnceLock::new(),
            view: OnceLock::new(),
        })
    }

    /// The copy's bytes, to check: a read-only mapping of a sealed memfd or of an unchangeable
    /// file (neither can change under it), or read into memory: the directory store's file
    /// (which is not sealed), a leased file (whose lease ends at a write).
    pub(crate) fn bytes(&self) -> std::io::Result<Bytes> {
        let Some(len) = NonZeroUsize::new(self.len) else {
            return Ok(Bytes::Read(Vec::new()));
        };
        let file = self.file();
        if self.is_broken() {
            return Err(written());
        }
        if matches!(self.store, Store::Directory | Store::Leased) {
            let mut bytes = vec![0; self.len];
            file.read_exact_at(&mut bytes, 0)?;
            return Ok(Bytes::Read(bytes));
        }
        map(&file, len).map(Bytes::Mapped)
    }

    /// The copy's bytes through its kept mapping ([`view`](Self::view)) when it has one to keep,
    /// else as [`bytes`](Self::bytes) gives them.
    fn kept_bytes(self: &Arc<Self>) -> std::io::Result<Bytes> {
        match self.view()? {
            Some(_) => Ok(Bytes::View(self.clone())),
            None => self.bytes(),
        }
    }

    /// The kept mapping of a non-empty memfd copy, unchangeable file or leased file, made on the
    /// first call; `None` for a copy that has none (empty, or in the directory store, which is
    /// not sealed).
    fn view(&self) -> std::io::Result<Option<&[u8]>> {
        let Some(len) = NonZeroUsize::new(self.len).filter(|_| self.store != Store::Directory)
        else {
            return Ok(None);
        };
        if self.view.get().is_none() {
            // Two threads may map at once: the mapping not kept is unmapped when dropped. A
            // leased file is mapped during a use of its lease (see `map`), and the lease is told
            // where the kept one is before that use ends: a detach replaces only what it knows.
            let file = self.file();
            if self.is_broken() {
                return Err(written());
            }
            let mapping = map(&file, len)?;
            let (address, len) = (mapping.address.as_ptr() as usize, mapping.len.get());
            if self.view.set(mapping).is_ok()
                && let Backing::Leased(lease) = &self.file
            {
                lease.mapped_view(address, len);
            }
            drop(file);
        }
        Ok(self.view.get().map(Mapping::as_slice))
    }

    /// The SHA-256 of the content: computed from `bytes`, which must be the copy's own (as
    /// [`bytes`](Self::bytes) gave them), unless it was already.
    pub(crate) fn sha256_of(&self, bytes: &[u8]) -> &Sha256Digest {
        debug_assert_eq!(bytes.len(), self.len, "the bytes are the copy's");
        self.sha256.get_or_init(|| sha256(bytes))
    }

    /// Records the SHA-256 of the content, computed by the caller from the bytes it was made of.
    pub(crate) fn set_sha256(&self, digest: Sha256Digest) {
        let _ = self.sha256.set(digest);
    }

    /// The SHA-256 of the content, if something computed it already.
    pub(crate) fn known_sha256(&self) -> Option<&Sha256Digest> {
        self.sha256.get()
    }

    /// The SHA-256 of the content, reading the copy the first time.
    pub(crate) fn sha256(&self) -> std::io::Result<&Sha256Digest> {
        match self.sha256.get() {
            Some(digest) => Ok(digest),
            None => Ok(self.sha256_of(&self.bytes()?)),
        }
    }

    /// Opens the copy as a library with `open`, given the path `dlopen` opens (this process's
    /// descriptor of the copy), then gives `handle` the library to learn its `dlopen` handle. A
    /// leased file stays as it is meanwhile; opened in place, it is checked to be a library of
    /// its own and its writable data is made private ([`Lease::opened`]). The second result is
    /// that step's (the library is open either way, and must not be closed: its constructors
    /// ran).
    pub(crate) fn open_library<L, E>(
        &self,
        open: impl FnOnce(&Path) -> Result<L, E>,
        handle: impl FnOnce(L) -> (L, *mut c_void),
        fail: impl FnOnce(std::io::Error) -> E,
    ) -> Result<(L, std::io::Result<()>), E> {
        let file = self.file();
        if self.is_broken() {
            return Err(fail(written()));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let library = open(&path)?;
        match (&self.file, &file._use) {
            (Backing::Leased(lease), Some(used)) if lease.in_place(used) => {
                let (library, raw) = handle(library);
                Ok((library, lease.opened(raw, &path)))
            }
            (Backing::Fixed(fixed), _) if self.store == Store::Unchangeable => {
                super::lease::opened_unchangeable(fixed);
                Ok((library, Ok(())))
            }
            _ => Ok((library, Ok(()))),
        }
    }

    /// Whether the copy can no longer be read (a leased file written, and no copy of it could
    /// be made): kept copies like it are not compared with, and it is not opened again.
    pub(crate) fn is_broken(&self) -> bool {
        matches!(&self.file, Backing::Leased(lease) if lease.broken())
    }

    /// This process's path of the copy's descriptor.
    #[cfg(test)]
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file().as_raw_fd()))
    }

    /// The path a child process of this one reads the copy from.
    pub(crate) fn path_for_children(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file().as_raw_fd()
        ))
    }

    /// Its descriptor, to read parts of it (with `pread`-style reads: its offset is nobody's).
    /// What it holds never changes while lent: a sealed memfd, an unchangeable file, the
    /// directory store's unlinked read-only file, which only this descriptor reaches, or a file
    /// whose lease a write waits for until this is dropped.
    pub(crate) fn file(&self) -> CopyFile<'_> {
        match &self.file {
            Backing::Fixed(file) => CopyFile { file, _use: None },
            Backing::Leased(lease) => {
                let used = lease.enter();
                CopyFile {
                    file: lease.file(&used),
                    _use: Some(used),
                }
            }
        }
    }

    /// How many bytes it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Where it lives.
    /// Where it lives: for a leased file once a write began, the store its sealed copy went to.
    pub(crate) fn store(&self) -> Store {
        match &self.file {
            Backing::Leased(lease) if lease.written() => store(),
            _ => self.store,
        }
    }
}

/// The error for a leased file written while loaded, whose sealed copy could not be made.
fn written() -> std::io::Error {
    std::io::Error::other(
        "the plugin file was written while loaded, and no copy of what it held could be made",
    )
}

/// A copy's bytes, borrowed for its checks.
pub(crate) enum Bytes {
    /// Mapped read-only.
    Mapped(Mapping),
    /// Read into memory.
    Read(Vec<u8>),
    /// Through the copy's kept mapping (see `PrivateCopy::view`), which it has.
    View(Arc<PrivateCopy>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(mapping) => mapping.as_slice(),
            Bytes::Read(bytes) => bytes,
            Bytes::View(copy) => copy.view.get().map_or(&[], Mapping::as_slice),
        }
    }
}

/// A read-only mapping of a sealed copy, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    address: NonNull<c_void>,
    len: NonZeroUsize,
}

// SAFETY: a mapping is a range of read-only memory that nothing writes (the memfd behind it is
// sealed, the file unchangeable, or leased and the mapping made anonymous before a write; see
// `map`) and that stays mapped until the one owner drops it: reading it from any thread, or
// dropping it on another, is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `address` is `len` readable bytes of a sealed memfd, an unchangeable file or a
        // leased file (see `map`), mapped until `self` is dropped, which the borrow of `self`
        // outlasts; nothing can write them.
        unsafe { std::slice::from_raw_parts(self.address.as_ptr().cast(), self.len.get()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `PrivateCopy::bytes`, unmapped once, here; the slices lent
        // out borrow the `Bytes` that owns it, so none outlives it.
        let _ = unsafe { munmap(self.address, self.len.get()) };
    }
}

/// What finds the kept copies a new one may equal without comparing all of it: its length, its
/// first and last pages (where an ELF file keeps its headers, build id and section table) and the
/// identity its metadata declares. Copies with equal keys are compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    len: usize,
    ends: u64,
    identity: String,
}

/// A new read-only mapping of the first `len` bytes of `file`, a copy's (as
/// [`PrivateCopy::file`] lends it: a memfd, an unchangeable file, or a leased file during a use
/// of its lease).
fn map(file: &CopyFile<'_>, len: NonZeroUsize) -> std::io::Result<Mapping> {
    // SAFETY: a fresh shared read-only mapping of `len` bytes of a descriptor we own, at an
    // address the kernel picks; `Mapping` unmaps it once. A memfd copy is sealed against writes,
    // shrinking and growing (`sealed_memfd`); an unchangeable file refuses them to everyone
    // (`unchangeable`). A leased file is mapped during a use of its lease: a write waits until a
    // detach, which waits for that use, has replaced every readable mapping of the file, this
    // one included, by anonymous memory with the same bytes at the same address
    // (`lease::detach`). So the bytes read through it never change and never go away while it
    // is mapped.
    let address = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            file.as_fd(),
            0,
        )
    }?;
    Ok(Mapping { address, len })
}

/// The length and first and last pages of a key, which a file can be probed for before it is read
/// whole.
type Probe = (usize, u64);

const PAGE: usize = 4096;

impl Key {
    fn of(bytes: &[u8], identity: &str) -> Key {
        let last = bytes.len().saturating_sub(PAGE);
        Key {
            len: bytes.len(),
            ends: ends(&bytes[..bytes.len().min(PAGE)], &bytes[last..]),
            identity: identity.to_owned(),
        }
    }

    fn probe(&self) -> Probe {
        (self.len, self.ends)
    }
}

/// A hash of a content's first and last pages.
fn ends(first: &[u8], last: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    first.hash(&mut hasher);
    last.hash(&mut hasher);
    hasher.finish()
}

/// The copies kept for the life of the process, by key, and the probes of their keys.
#[derive(Default)]
struct Kept {
    copies: HashMap<Key, Vec<Arc<PrivateCopy>>>,
    probes: HashSet<Probe>,
}

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    static KEPT: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl Kept {
    /// A copy kept under `key` whose bytes are `bytes`.
    fn equal(&self, key: &Key, bytes: &[u8]) -> std::io::Result<Option<Arc<PrivateCopy>>> {
        for other in self.copies.get(key).into_iter().flatten() {
            if other.is_broken() {
                continue;
            }
            if *other.kept_bytes()? == *bytes {
                return Ok(Some(other.clone()));
            }
        }
        Ok(None)
    }
}

/// A file's private copy, as [`copy_of`] made or found it.
pub(crate) enum Copied {
    /// A kept copy whose bytes equal what the file held: nothing was copied.
    Kept(Arc<PrivateCopy>),
    /// A new copy, to check and then [`keep`](Copied::keep), with the hash of its first and last
    /// pages when they were read before it was made (an unchangeable file, probed as a candidate
    /// for a kept copy): part of its [`Key`].
    Fresh(PrivateCopy, Option<u64>),
}

impl std::ops::Deref for Copied {
    type Target = PrivateCopy;

    fn deref(&self) -> &PrivateCopy {
        match self {
            Copied::Kept(copy) => copy,
            Copied::Fresh(copy, _) => copy,
        }
    }
}

impl Copied {
    /// The copy's bytes, all of them, to check: a kept copy's through its kept mapping, a fresh
    /// one's as [`PrivateCopy::bytes`] gives them. Asked for only by a check that reads them all
    /// (a signature, a child's hash): the metadata is read in parts ([`PrivateCopy::file`]).
    pub(crate) fn bytes(&self) -> std::io::Result<Bytes> {
        match self {
            Copied::Kept(copy) => copy.kept_bytes(),
            Copied::Fresh(copy, _) => copy.bytes(),
        }
    }

    /// The copy to load, once its checks passed: a kept one as it is; a fresh one, whose
    /// metadata declares `identity` (name and version), kept from now on, unless a copy with the
    /// same bytes was kept meanwhile (then that one, and this one dropped). `bytes` are its
    /// bytes when the caller has them ([`bytes`](Self::bytes)), else they are read only if a
    /// kept copy may equal them.
    pub(crate) fn keep(
        self,
        bytes: Option<&[u8]>,
        identity: &str,
    ) -> std::io::Result<Arc<PrivateCopy>> {
        match self {
            Copied::Kept(copy) => Ok(copy),
            Copied::Fresh(copy, ends) => keep(copy, ends, bytes, identity),
        }
    }
}

/// The private copy of `file` (opened and checked by the caller), to check.
///
/// A kept copy is the copy when it holds exactly what the file holds: one with the file's length,
/// first and last pages, and the identity `identity` reads from the file (its declared name and
/// version, from a few small reads), compared with the file chunk by chunk. So a plugin file
/// copied many times costs one copy, and a read and a comparison per file, and two plugins that
/// differ cost no more than the probe. Otherwise, when `in_place` (a load in this process) and
/// the kernel grants a read lease on it, the file itself is the copy ([`Store::Leased`]); else
/// the kernel copies the file into a new copy. `name`, the library's file name, names a new copy
/// in `/proc/PID/maps`.
pub(crate) fn copy_of(
    file: File,
    name: &str,
    in_place: bool,
    identity: impl FnOnce(&File) -> Option<String>,
) -> std::io::Result<Copied> {
    // Asked before the probe: a file unchangeable then is unchangeable since, so what the probe
    // read is what the copy (the file itself) holds. (One that became so after it is copied.)
    let fixed = unchangeable(&file);
    let ends = match kept_equal_to(&file, identity)? {
        Ok(copy) => return Ok(Copied::Kept(copy)),
        Err(ends) => ends,
    };
    // A file leased only now may have changed since the probe: its ends are read again.
    let file = match in_place && !fixed && leases_allowed() {
        true => match Lease::take(file, name) {
            Ok(lease) => return Ok(Copied::Fresh(PrivateCopy::leased(lease)?, None)),
            Err(file) => file,
        },
        false => file,
    };
    let copy = PrivateCopy::of_file(file, name, fixed)?;
    Ok(Copied::Fresh(copy, ends.filter(|_| fixed)))
}

/// A new file in the store in force, filled by `fill`, then made unchangeable. `name`, the
/// library's file name, names it in `/proc/PID/maps`.
fn stored_file(
    name: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<File> {
    match store() {
        Store::Directory => private_file(&std::env::temp_dir(), &label(name), fill),
        // (`store()` never answers `Unchangeable` or `Leased`: those are files, not places for
        // copies.)
        Store::Memfd | Store::Unchangeable | Store::Leased => sealed_memfd(&label(name), fill),
    }
}

/// A copy of everything `file` holds, in the store in force (see [`store`]): what a leased
/// file's library reads from once a write to the file begins.
/// Read at offsets of its own (`pread`): the descriptor's position may be another reader's.
pub(crate) fn sealed_copy_of(file: &File, name: &str) -> std::io::Result<File> {
    stored_file(name, |copy| {
        let mut chunk = vec![0; 256 * 1024];
        let mut at = 0;
        loop {
            let n = file.read_at(&mut chunk, at)?;
            if n == 0 {
                return Ok(());
            }
            copy.write_all(&chunk[..n])?;
            at += n as u64;
        }
    })
}

/// Whether files may be loaded in place under a lease: unless [`STORE_ENV`] asks for copies.
fn leases_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        !matches!(
            std::env::var(STORE_ENV).as_deref(),
            Ok("memfd" | "directory")
        )
    })
}

/// The hash of the first and last pages of `file`, which holds `len` bytes (`None` when it holds
/// fewer by now).
fn ends_of_file(file: &File, len: usize) -> std::io::Result<Option<u64>> {
    let end = len.min(PAGE);
    let (mut first, mut last) = ([0; PAGE], [0; PAGE]);
    let (first, last) = (&mut first[..end], &mut last[..end]);
    let read = file
        .read_exact_at(first, 0)
        .and_then(|()| file.read_exact_at(last, (len - end) as u64));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        other => other.map(|()| Some(ends(first, last))),
    }
}

/// A kept copy holding exactly what `file` holds (see [`copy_of`]), or else the hash of the file's
/// first and last pages, if it was read.
fn kept_equal_to(
    file: &File,
    identity: impl FnOnce(&File) -> Option<String>,
) -> std::io::Result<Result<Arc<PrivateCopy>, Option<u64>>> {
    let Ok(len) = usize::try_from(file.metadata()?.len()) else {
        return Ok(Err(None));
    };
    let Some(ends) = ends_of_file(file, len)? else {
        return Ok(Err(None));
    };
    if !kept().probes.contains(&(len, ends)) {
        return Ok(Err(Some(ends)));
    }
    let Some(identity) = identity(file) else {
        return Ok(Err(Some(ends)));
    };
    let key = Key {
        len,
        ends,
        identity,
    };
    // Compared without the lock held.
    let candidates = kept().copies.get(&key).cloned().unwrap_or_default();
    for candidate in candidates.iter().filter(|c| !c.is_broken()) {
        if holds_exactly(file, &candidate.kept_bytes()?)? {
            return Ok(Ok(candidate.clone()));
        }
    }
    Ok(Err(Some(ends)))
}

/// Whether `file` holds exactly `bytes`, read a chunk at a time from its start.
pub(crate) fn holds_exactly(file: &File, bytes: &[u8]) -> std::io::Result<bool> {
    let mut chunk = vec![0; 64 * 1024];
    let mut at = 0;
    loop {
        let want = chunk.len().min(bytes.len() - at).max(1);
        let n = file.read_at(&mut chunk[..want], at as u64)?;
        if n == 0 || at == bytes.len() {
            return Ok(n == 0 && at == bytes.len());
        }
        if chunk[..n] != bytes[at..at + n] {
            return Ok(false);
        }
        at += n;
    }
}

/// The copy to load for `copy`, whose metadata declares `identity` (name and version): a kept
/// copy with the same bytes, which `copy` is then dropped for, or `copy` itself, kept from now
/// on. So files with identical content share one copy, whatever their names and whenever they
/// are loaded. `bytes` are `copy`'s bytes (as it gave them) if the caller has them; else its
/// first and last pages are read (unless `ends` is their hash already), and the rest only when a
/// kept copy has the same key.
fn keep(
    copy: PrivateCopy,
    ends: Option<u64>,
    bytes: Option<&[u8]>,
    identity: &str,
) -> std::io::Result<Arc<PrivateCopy>> {
    let key = match bytes {
        Some(bytes) => Key::of(bytes, identity),
        None => Key {
            len: copy.len,
            ends: match ends {
                Some(ends) => ends,
                None => ends_of_file(&copy.file(), copy.len)?
                    .ok_or_else(|| std::io::Error::other("a private copy shrank"))?,
            },
            identity: identity.to_owned(),
        },
    };
    let mut kept = kept();
    if kept.copies.contains_key(&key) {
        let read;
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => {
                read = copy.bytes()?;
                &read
            }
        };
        if let Some(other) = kept.equal(&key, bytes)? {
            return Ok(other);
        }
    }
    let copy = Arc::new(copy);
    kept.probes.insert(key.probe());
    kept.copies.entry(key).or_default().push(copy.clone());
    Ok(copy)
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

/// The name a copy shows in `/proc/PID/maps`: `backworks-` and the library's file name, cut to
/// fit a memfd's name.
fn label(name: &str) -> String {
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("backworks-{}", &name[..end])
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

/// A new memfd filled by `fill`, then sealed against every change.
fn sealed_memfd(
    name: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<File> {
    let mut file = File::from(memfd(name)?);
    fill(&mut file)?;
    seal(&file)?;
    Ok(file)
}

/// How long to wait before each new try of `F_SEAL_WRITE` refused with `EBUSY`.
const SEAL_RETRIES: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(50),
];

/// Seals a filled memfd against every change: writes, resizing, more seals.
///
/// `F_SEAL_WRITE` first waits (~150 ms) for pages of the file that the kernel still holds a
/// reference to (page migration, a write in flight), and is refused with `EBUSY` if one is still
/// held then: seen on a loaded 2-core machine, in a process plugin's child. It is tried again
/// after a pause, then `F_SEAL_FUTURE_WRITE` (Linux 5.1) is used instead: it does not wait,
/// refuses every write and every new writable mapping the same way, and differs only in letting
/// a shared writable mapping made before it keep writing. Nothing maps a copy shared and writable
/// (the memfd is this process's, close-on-exec, and only ever filled with `write`), so for a copy
/// the two are the same.
fn seal(file: &File) -> std::io::Result<()> {
    let rest = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    let mut pauses = SEAL_RETRIES.iter();
    loop {
        match fcntl(
            file.as_fd(),
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE | rest),
        ) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EBUSY) => match pauses.next() {
                Some(pause) => std::thread::sleep(*pause),
                None => break,
            },
            Err(error) => return Err(error.into()),
        }
    }
    tracing::debug!("F_SEAL_WRITE stayed busy; sealing a private copy with F_SEAL_FUTURE_WRITE");
    seal_future_writes(file)
}

/// The seals of [`seal`]'s fallback.
fn seal_future_writes(file: &File) -> std::io::Result<()> {
    let seals = SealFlag::F_SEAL_FUTURE_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(())
}

/// A read-only file `name` in a fresh `0700` directory under `base`, filled by `fill`, opened
/// read-only, and both names removed: the returned descriptor is the only way to it.
fn private_file(
    base: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<File> {
    let dir = unique_dir(base)?;
    let path = dir.join(name);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o500)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        fill(&mut file)?;
        drop(file);
        File::open(&path)
    })();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    written
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
    let probe = (|| -> std::io::Result<bool> {
        let fd = sealed_memfd("backworks-probe", |f| f.write_all(&[0u8; 4096]))?;
        let len = NonZeroUsize::new(4096).expect("non-zero");
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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The private copy of the file at `path`, as a load makes it.
    fn of_path(path: &Path) -> PrivateCopy {
        let file = File::open(path).unwrap();
        let fixed = unchangeable(&file);
        PrivateCopy::of_file(file, "libp.so", fixed).unwrap()
    }

    #[test]
    fn a_memfd_copy_is_sealed() {
        let mut file = sealed_memfd("t", |f| f.write_all(b"library bytes")).unwrap();
        let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap();
        let seals = SealFlag::from_bits_truncate(seals);
        assert!(
            seals
                .contains(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL)
        );
        assert!(
            file.write_all(b"x").is_err(),
            "a sealed copy cannot be written"
        );
        assert!(file.set_len(1).is_err(), "nor truncated");
    }

    /// The seals used when `F_SEAL_WRITE` stays busy keep the copy as unchangeable: no write,
    /// no resize, no writable shared mapping, no seal removed.
    #[test]
    fn a_copy_sealed_against_future_writes_cannot_change_either() {
        let mut file = File::from(memfd("t").unwrap());
        file.write_all(b"library bytes").unwrap();
        seal_future_writes(&file).unwrap();
        let seals =
            SealFlag::from_bits_truncate(fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap());
        assert!(seals.contains(SealFlag::F_SEAL_FUTURE_WRITE | SealFlag::F_SEAL_SEAL));
        assert!(file.write_all(b"x").is_err(), "cannot be written");
        assert!(file.set_len(1).is_err(), "nor truncated");
        assert!(file.set_len(100).is_err(), "nor grown");
        // SAFETY: a fresh mapping of a file this test owns, unmapped if it is made at all.
        let shared = unsafe {
            mmap(
                None,
                NonZeroUsize::new(13).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file.as_fd(),
                0,
            )
        };
        if let Ok(addr) = shared {
            // SAFETY: the mapping made just above.
            unsafe { munmap(addr, 13).unwrap() };
            panic!("a writable shared mapping was made");
        }
        let more = fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE));
        assert!(more.is_err(), "and no seal can be added or removed");
        let mut bytes = vec![0; 13];
        file.read_exact_at(&mut bytes, 0).unwrap();
        assert_eq!(bytes, b"library bytes");
    }

    /// The fallback where a memfd cannot be executed: a private directory, removed at once.
    #[test]
    fn the_directory_fallback_leaves_only_a_read_only_descriptor() {
        let base = tempfile::tempdir().unwrap();
        let bytes = b"\x7fELF not really".to_vec();
        let mut file =
            private_file(base.path(), &label("libp.so"), |f| f.write_all(&bytes)).unwrap();
        // Both names are gone: nothing in the file system reaches the copy.
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
        let meta = file.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o500);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        let link = link.to_string_lossy().into_owned();
        assert!(link.contains("/backworks-copy-"), "{link}");
        assert!(link.ends_with("/backworks-libp.so (deleted)"), "{link}");
        assert!(file.write_all(b"x").is_err(), "opened read-only");
        // Its bytes are the bytes given, read back through the descriptor as dlopen would.
        let again = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(again, bytes);
        let mut read = Vec::new();
        file.read_to_end(&mut read).unwrap();
        assert_eq!(read, bytes);
    }

    #[test]
    fn a_copy_of_a_file_holds_its_bytes_and_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libp.so");
        let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let copy = of_path(&path);
        // The file changes after the copy was made: the copy does not.
        std::fs::write(&path, b"other").unwrap();
        assert_eq!(&*copy.bytes().unwrap(), &content[..]);
        assert_eq!(std::fs::read(copy.proc_path()).unwrap(), content);
        assert_eq!(copy.sha256().unwrap(), &sha256(&content));
        let empty = PrivateCopy::of_bytes(b"", "empty.so").unwrap();
        assert!(empty.bytes().unwrap().is_empty());
    }

    /// An immutable file is used in place: no copy, its own inode, the bytes it holds; a file
    /// that is not immutable is copied. (Setting the attribute needs `CAP_LINUX_IMMUTABLE`; a
    /// process without it checks the copying half only, and says so.)
    #[test]
    fn an_immutable_file_is_loaded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libp.so");
        std::fs::write(&path, b"immutable library bytes").unwrap();
        let mutable = of_path(&path);
        assert_ne!(mutable.store(), Store::Unchangeable);
        let Some(_attribute) = Immutable::set(&path) else {
            eprintln!("no CAP_LINUX_IMMUTABLE here: the in-place half of this test did not run");
            return;
        };
        assert!(std::fs::write(&path, b"x").is_err(), "the kernel refuses");
        let file = File::open(&path).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
        let copy = {
            let fixed = unchangeable(&file);
            PrivateCopy::of_file(file, "libp.so", fixed).unwrap()
        };
        assert_eq!(copy.store(), Store::Unchangeable);
        assert_eq!(&*copy.bytes().unwrap(), b"immutable library bytes");
        let through = std::fs::metadata(copy.proc_path()).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&through),
            inode,
            "the file itself"
        );

        // Its own copy: a reload's comparison has nothing to compare it with, so a moved stamp
        // (the attribute lifted) counts as a change, and an equal one as none.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let stat = std::fs::metadata(&path).ok();
        let origin = super::super::Origin::new(&path, stat.as_ref(), later, Arc::new(copy));
        assert!(!origin.changed());
        // File times tick coarsely: let one pass, so lifting the attribute moves the stamp.
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(_attribute);
        assert!(origin.changed(), "the attribute lifted");
    }

    /// The immutable attribute on a file, lifted on drop (else the temporary folder could not be
    /// removed).
    struct Immutable(PathBuf);

    impl Immutable {
        /// `FS_IOC_SETFLAGS`, `_IOW('f', 2, long)`.
        const SETFLAGS: nix::libc::c_ulong = 0x4008_6602;

        fn set(path: &Path) -> Option<Immutable> {
            Immutable::flag(path, true).then(|| Immutable(path.to_owned()))
        }

        fn flag(path: &Path, on: bool) -> bool {
            let Ok(file) = File::open(path) else {
                return false;
            };
            let mut flags: nix::libc::c_int = 0;
            // SAFETY: FS_IOC_GETFLAGS and FS_IOC_SETFLAGS on a descriptor we own read or write
            // one `int`, `flags`, which lives across both calls.
            unsafe {
                if nix::libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) != 0 {
                    return false;
                }
                flags = if on {
                    flags | FS_IMMUTABLE_FL
                } else {
                    flags & !FS_IMMUTABLE_FL
                };
                nix::libc::ioctl(file.as_raw_fd(), Self::SETFLAGS as _, &flags) == 0
            }
        }
    }

    impl Drop for Immutable {
        fn drop(&mut self) {
            Immutable::flag(&self.0, false);
        }
    }

    #[test]
    fn identical_bytes_share_one_copy() {
        // With the bytes the caller read, or without (read only to compare with a kept copy).
        let copy = |bytes: &[u8], read: bool| {
            let new = PrivateCopy::of_bytes(bytes, "t.so").unwrap();
            let seen = new.bytes().unwrap().to_vec();
            keep(new, None, read.then_some(&seen[..]), "t 1.0.0").unwrap()
        };
        // Same length and same first and last pages, different in the middle.
        let mut long = vec![7u8; 3 * 4096];
        let a = copy(&long, true);
        let b = copy(&long, false);
        long[5000] = 8;
        let c = copy(&long, false);
        let d = copy(b"same content", false);
        let e = copy(b"same content", true);
        let f = copy(b"other content", false);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&d, &e));
        assert!(!Arc::ptr_eq(&d, &f));
        assert_eq!(Key::of(&long, "t"), Key::of(&vec![7u8; 3 * 4096], "t"));
        assert!(
            [&a, &c, &d, &f].iter().all(|c| c.known_sha256().is_none()),
            "told apart by their bytes, not hashed"
        );
        assert_eq!(hex(d.sha256().unwrap()).len(), 64);
        assert_eq!(std::fs::read(d.proc_path()).unwrap(), b"same content");
    }

    /// A file with a kept copy's bytes is found before it is copied, whatever its name; one that
    /// differs anywhere, is longer or shorter, or declares another identity, gets a copy of its own.
    #[test]
    fn a_file_equal_to_a_kept_copy_is_not_copied_again() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..5 * 4096u32).map(|i| (i % 253) as u8).collect();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            File::open(path).unwrap()
        };
        let load = |f: File, identity: &'static str| {
            let copied = copy_of(f, "lib.so", false, |_| Some(identity.to_owned())).unwrap();
            let fresh = matches!(copied, Copied::Fresh(..));
            let bytes = copied.bytes().unwrap();
            let mut read = vec![0; copied.len()];
            copied.file().read_exact_at(&mut read, 0).unwrap();
            assert_eq!(read, &*bytes, "the bytes are the copy's");
            (copied.keep(None, identity).unwrap(), fresh)
        };
        let (first, fresh) = load(file("a.so", &content), "p 1");
        assert!(fresh);
        let (second, fresh) = load(file("b.so", &content), "p 1");
        assert!(Arc::ptr_eq(&first, &second) && !fresh);
        let mut changed = content.clone();
        changed[3 * 4096] ^= 1;
        let (third, fresh) = load(file("c.so", &changed), "p 1");
        assert!(!Arc::ptr_eq(&first, &third) && fresh);
        assert_eq!(std::fs::read(third.proc_path()).unwrap(), changed);
        let (fourth, fresh) = load(file("d.so", &content), "q 1");
        assert!(!Arc::ptr_eq(&first, &fourth) && fresh, "another identity");
        let (_, fresh) = load(file("e.so", &content[..4 * 4096]), "p 1");
        assert!(fresh, "shorter");
        // The file's offset does not matter: the copy holds it from its start.
        let mut moved = file("f.so", &changed[..4097]);
        moved.seek(std::io::SeekFrom::Start(100)).unwrap();
        let (sixth, _) = load(moved, "p 1");
        assert_eq!(std::fs::read(sixth.proc_path()).unwrap(), &changed[..4097]);
        assert!(holds_exactly(&file("g.so", &content), &content).unwrap());
        assert!(!holds_exactly(&file("h.so", &content), &content[..100]).unwrap());
        assert!(!holds_exactly(&file("i.so", &content[..100]), &content).unwrap());
        assert!(holds_exactly(&file("j.so", b""), b"").unwrap());
    }
}

//! Plugin files loaded **in place**, held unchanged by a read lease, and let go of at the first
//! write.
//!
//! A private copy (`private_copy`) makes what runs independent of the file, but it costs a page
//! of shared memory allocated and filled per 4 KiB of library at every load: most of what a load
//! costs, and a second copy in memory of every distinct library. So where the kernel grants it,
//! a library is not copied. Its file is opened once (by the file checks), a **read lease**
//! (`F_SETLEASE`, `F_RDLCK`) is taken on that descriptor, and `dlopen` maps the file itself.
//!
//! What the lease gives: while it is held, nobody can open the file for writing or truncate it
//! without the kernel first telling this process (a signal to one thread of ours, the lease
//! watcher) and holding the writer in its `open` until the lease is released (or, at the latest,
//! `/proc/sys/fs/lease-break-time` seconds, 45 by default, later). Renaming or deleting the file
//! needs no lease break: that never changes the bytes mapped. In that window the watcher makes
//! the library independent of the file ([`Lease::detach`]):
//! - it copies the file, still as it was checked, into a sealed copy in the store in force (as a
//!   load without a lease would have);
//! - it replaces every readable mapping of the file in this process, each in one step at the same
//!   address with the same protection: code and constants by the same range of the sealed copy
//!   (an `mmap` over it: never memory made executable after being written, which hardened
//!   systems refuse), RELRO (relocated, so no longer what the file holds) by anonymous memory
//!   holding its bytes (`mremap` over it). A thread running that code waits on the address
//!   space's lock for that instant, then finds the same bytes;
//! - it puts the sealed copy in place of the file under the descriptor the library was opened
//!   through (`dup3`), so every later reader of `/proc/self/fd/N` (a hash, a plugin child, another
//!   load of the same bytes, a backtrace's symbolizer) reads the copy; that closes the file's
//!   last descriptor here and with it the lease, and the writer goes on.
//!
//! The library's writable data (its `.data`, the part of its last page before `.bss`) is made
//! anonymous right after `dlopen`, before any instance of the plugin exists
//! ([`Lease::opened`]): a truncation discards even the copied-on-write pages of a private file
//! mapping, and pages that plugin threads write could not be copied later without losing a
//! write. (A constructor that starts a thread which writes the library's data at that very
//! moment could lose that write; no Rust plugin does.) What stays mapped from the file until a
//! write comes is read-only.
//!
//! No lease, then a copy as before: a file not owned by this process's user (without
//! `CAP_LEASE`), a file open for writing somewhere, a file system other than ext2/3/4, XFS,
//! btrfs, f2fs, tmpfs and overlayfs (on NFS, FUSE or 9p another machine or a server could write
//! without a lease break), a lease-break time under 10 s (the writer would not wait long enough
//! to be sure), `SIGIO` ignored in this process, a library with a segment that cannot be read,
//! is writable and executable, or writable and sharing a page with another segment, an inode
//! loaded in place before (the dynamic loader would hand back that library for new bytes at the
//! same inode), relocations in the code (`DT_TEXTREL`: the code would not be what the file holds),
//! or `BACKWORKS_PRIVATE_COPY` set.
//!
//! The watcher waits for `SIGIO` with `sigwait`; an embedder that relies on `SIGIO` for
//! descriptors of its own (`O_ASYNC`) should set `BACKWORKS_PRIVATE_COPY=memfd`, as the watcher
//! could take a signal meant for them.

use std::ffi::{CStr, c_void};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

use nix::libc;
use nix::sys::signal::{SigSet, Signal};

/// The signal a lease break sends, to the watcher thread only (`F_SETOWN_EX`, `F_OWNER_TID`),
/// where it is blocked and waited for.
const SIGNAL: Signal = Signal::SIGIO;

/// `fcntl` commands and types of Linux's `<fcntl.h>` that the `libc` crate does not have
/// (the same on every Linux architecture).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex`: whom `F_SETOWN_EX` sends a file's signals to.
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// A file held unchanged by a read lease, and the library loaded from it. One per inode.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The plugin file, opened read-only by the file checks: the lease is on this descriptor.
    /// After a detach, the descriptor (the same number) holds the sealed copy instead.
    file: File,
    /// The file's device and inode, as `stat` gives them.
    id: (u64, u64),
    /// The library's file name, for logs.
    name: String,
    /// Where the library's parts go, from its program headers.
    layout: Layout,
    state: Mutex<State>,
    changed: Condvar,
    /// Addresses known to map the file, to find its mappings by: the library's first page once
    /// opened, the kept views of it.
    anchors: Mutex<Anchors>,
}

#[derive(Debug, Default)]
struct State {
    /// Readers of the file: loads between reading and opening it, hashes.
    users: usize,
    /// A detach is running: new readers wait for it to finish.
    detaching: bool,
    /// The lease is held (false once released, or before it was granted).
    held: bool,
    /// The descriptor holds the sealed copy now, not the file.
    detached: bool,
    /// A write began and no sealed copy could be made: the descriptor still reaches the file,
    /// which is no longer what was checked.
    broken: bool,
}

#[derive(Debug, Default, Clone)]
struct Anchors {
    /// The library's load address (`l_addr`), once opened in place.
    base: Option<usize>,
    /// Kept read-only views of the file: address and length.
    views: Vec<(usize, usize)>,
}

/// What the program headers say about where a library's parts go, relative to its load address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Layout {
    /// The file-backed parts of the writable segments that stay writable after relocation.
    data: Vec<Part>,
    /// The range the loader makes read-only after relocating it (RELRO), page-aligned.
    relro: Option<(usize, usize)>,
    /// The first page of the first segment.
    first: usize,
    /// The end of the last segment's last page: the library spans `first..end`.
    end: usize,
}

/// A range of a loaded library, relative to its load address, and its protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    start: usize,
    len: usize,
    prot: libc::c_int,
}

/// A use of a leased file: while any is alive, a detach waits, so the file still holds what was
/// checked.
pub(crate) struct InUse<'a>(&'a Lease);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.users -= 1;
        self.0.changed.notify_all();
    }
}

/// Why a file was copied rather than loaded in place, for the debug log.
fn copied(name: &str, why: &str) {
    tracing::debug!(library = name, "copied, not loaded in place: {why}");
}

impl Lease {
    /// A read lease on `file` (opened read-only and checked by the caller), or the file back
    /// when none can be had (see the module's docs). A live lease on the same inode is shared.
    /// `name` names the library in logs.
    pub(crate) fn take(file: File, name: &str) -> Result<Arc<Lease>, File> {
        let Some(watcher) = watcher() else {
            copied(
                name,
                "the lease-break time is under 10 s, SIGIO is ignored in this process, or the \
                 lease watcher could not start",
            );
            return Err(file);
        };
        let Ok(meta) = file.metadata() else {
            return Err(file);
        };
        if !local_file_system(&file) {
            copied(
                name,
                "not on a local file system where every write breaks a lease",
            );
            return Err(file);
        }
        let id = (meta.dev(), meta.ino());
        let mut leases = leases();
        if loaded_in_place().contains(&id) {
            copied(name, "a library was loaded in place from this inode before");
            return Err(file);
        }
        let live = leases.iter().filter_map(Weak::upgrade).find(|lease| {
            let state = lease.state();
            lease.id == id && state.held && !state.detaching
        });
        if let Some(lease) = live {
            return Ok(lease);
        }
        let fd = file.as_raw_fd();
        let owner = OwnerEx {
            kind: F_OWNER_TID,
            pid: watcher,
        };
        // SAFETY: fcntl on a descriptor we own, with an `f_owner_ex` that lives across the call
        // (read, not kept) and plain integer arguments. The owner is set before the lease: a
        // lease taken first would send its signal to the whole process, where SIGIO's default
        // action ends it. A failure of any leaves the file as it was, then copied.
        let granted = unsafe {
            libc::fcntl(fd, F_SETOWN_EX, &raw const owner) == 0
                && libc::fcntl(fd, F_SETSIG, SIGNAL as libc::c_int) == 0
                && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
        };
        if !granted {
            copied(
                name,
                &format!("no lease: {}", std::io::Error::last_os_error()),
            );
            return Err(file);
        }
        // A break that came as the lease was taken: give it up (nothing of it is read or
        // published yet), and copy. Once published below (under the registry's lock, which the
        // watcher takes to find leases), a break is the watcher's.
        if lease_state(fd) != Some(libc::F_RDLCK) {
            unlock(fd);
            copied(name, "a write began as the lease was taken");
            return Err(file);
        }
        // Read under the lease: the file holds from now on what the layout describes.
        let Some(layout) = layout(&file) else {
            unlock(fd);
            copied(
                name,
                "a segment cannot be read, is writable and executable, or is writable and \
                 shares a page with another",
            );
            return Err(file);
        };
        let lease = Arc::new(Lease {
            file,
            id,
            name: name.to_owned(),
            layout,
            state: Mutex::new(State {
                held: true,
                ..State::default()
            }),
            changed: Condvar::new(),
            anchors: Mutex::default(),
        });
        if leases.len() >= 64 && leases.len().is_power_of_two() {
            leases.retain(|l| l.strong_count() > 0);
        }
        leases.push(Arc::downgrade(&lease));
        Ok(lease)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a use of the file: until it ends, no detach starts (one running is waited for).
    pub(crate) fn enter(&self) -> InUse<'_> {
        let mut state = self.state();
        while state.detaching {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.users += 1;
        InUse(self)
    }

    /// What to read the library's bytes from, during a use: the file while the lease holds it,
    /// the sealed copy once a write began (the same descriptor).
    pub(crate) fn file<'a>(&'a self, _use: &InUse<'a>) -> &'a File {
        &self.file
    }

    /// Whether the descriptor still reaches the file itself (no write has begun).
    pub(crate) fn in_place(&self, _use: &InUse<'_>) -> bool {
        !self.written()
    }

    /// Whether a write began (the library reads its sealed copy now, or, broken, nothing), as
    /// last known: without waiting for a detach that is running.
    pub(crate) fn written(&self) -> bool {
        let state = self.state();
        state.detached || state.broken
    }

    /// Whether a write began and no sealed copy could be made: nothing is to read the file
    /// any more (see [`State::broken`]).
    pub(crate) fn broken(&self) -> bool {
        self.state().broken
    }

    /// Records that a kept view of the file, `len` bytes, is mapped at `address` (during a use,
    /// once it is the one kept).
    pub(crate) fn mapped_view(&self, address: usize, len: usize) {
        self.anchors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .push((address, len));
    }

    /// Called, during the same use, once `dlopen` of `path` (this descriptor's
    /// `/proc/self/fd/N`, while [`in_place`](Self::in_place)) handed back `handle`: checks that
    /// it is a library opened from that path, not one the dynamic loader had loaded from the
    /// same inode before, and makes its writable data anonymous memory, the first time. From
    /// then on only read-only parts of the library are mapped from the file.
    pub(crate) fn opened(&self, handle: *mut c_void, path: &Path) -> std::io::Result<()> {
        loaded_in_place().insert(self.id);
        let map = link_map(handle)?;
        // SAFETY: `l_name` of a link map the dynamic loader keeps for an open library: a
        // NUL-terminated string of it, or null.
        let name = (!map.l_name.is_null()).then(|| unsafe { CStr::from_ptr(map.l_name) });
        if name.is_none_or(|name| name.to_bytes() != path.as_os_str().as_encoded_bytes()) {
            return Err(std::io::Error::other(format!(
                "the dynamic loader handed back a library it had loaded from this inode before \
                 ({})",
                name.map_or("no name".into(), CStr::to_string_lossy)
            )));
        }
        let base = map.l_addr;
        let mut anchors = self.anchors.lock().unwrap_or_else(|e| e.into_inner());
        if anchors.base == Some(base) {
            return Ok(());
        }
        // Known from now on, even if what follows fails (the library stays open, refused): a
        // detach finds it by this address.
        anchors.base = Some(base);
        for part in &self.layout.data {
            // SAFETY: `part` is a writable segment of the library just opened (from its program
            // headers, checked in `layout` to share no page with another segment), at its load
            // address. No instance of the plugin exists yet, so no thread of it writes there
            // while it is copied; the bytes stay the same.
            unsafe { make_anonymous(base + part.start, part.len, part.prot) }?;
        }
        Ok(())
    }

    /// A write to the file began (its lease is breaking): make the library independent of the
    /// file, put a sealed copy in its place, then let the writer in. See the module's docs.
    fn detach(&self) {
        {
            let mut state = self.state();
            if !state.held || state.detaching {
                return;
            }
            state.detaching = true;
            while state.users > 0 {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
        /// Ends the detach however it ends: a panic of ours leaves the lease broken, not
        /// detaching for ever (every use would wait).
        struct Ending<'a>(&'a Lease);
        impl Drop for Ending<'_> {
            fn drop(&mut self) {
                let mut state = self.0.state();
                if state.detaching {
                    state.detaching = false;
                    state.held = false;
                    state.broken = true;
                }
                self.0.changed.notify_all();
            }
        }
        let _ending = Ending(self);
        let copy = super::private_copy::sealed_copy_of(&self.file, &self.name);
        let anchors = self
            .anchors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let relro = anchors
            .base
            .zip(self.layout.relro)
            .map(|(base, (a, b))| (base + a, base + b));
        // Only the ranges the host mapped: the library's span, then its views.
        let mut owned: Vec<(usize, usize)> = anchors
            .base
            .map(|base| (base + self.layout.first, base + self.layout.end))
            .into_iter()
            .collect();
        let page = page_size();
        owned.extend(
            anchors
                .views
                .iter()
                .map(|&(a, len)| (a, (a + len + page - 1) & !(page - 1))),
        );
        let mappings = detach_mappings(&owned, relro, copy.as_ref().ok());
        // The sealed copy takes the file's place under its descriptor: that closes the file's
        // last descriptor here, and the lease with it.
        let replaced = copy.as_ref().is_ok_and(|copy| {
            // SAFETY: dup3 of two descriptors we own; the target is this lease's, whose number
            // stays valid (now for the copy) as long as `self.file` owns it.
            unsafe { libc::dup3(copy.as_raw_fd(), self.file.as_raw_fd(), libc::O_CLOEXEC) >= 0 }
        });
        if !replaced {
            unlock(self.file.as_raw_fd());
        }
        let complete = mappings.as_ref().is_ok_and(|(_, failed)| failed.is_empty());
        {
            let mut state = self.state();
            state.held = false;
            state.detaching = false;
            state.detached = replaced;
            state.broken = !(replaced && complete);
        }
        self.changed.notify_all();
        match (&mappings, replaced && complete) {
            (Ok((n, _)), true) => tracing::info!(
                library = %self.name,
                mappings = n,
                "a plugin file loaded in place is being written: the library now runs from memory of its own"
            ),
            _ => tracing::error!(
                library = %self.name,
                mappings = ?mappings,
                copy = ?copy.as_ref().err(),
                "a plugin file loaded in place is being written, and the library could not be \
                 made independent of it"
            ),
        }
    }
}

/// Gives up the lease on `fd`.
fn unlock(fd: libc::c_int) {
    // SAFETY: fcntl with integer arguments on a descriptor the caller owns.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
}

/// The lease held on `fd` now: `F_RDLCK`, or `F_UNLCK` when none or when it is breaking.
fn lease_state(fd: libc::c_int) -> Option<libc::c_int> {
    // SAFETY: fcntl with integer arguments on a descriptor the caller owns.
    let state = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
    (state >= 0).then_some(state)
}

/// Whether `file` is on a local file system where every write to it goes through this kernel's
/// `open` or `truncate`, which break leases: not NFS, FUSE (virtiofs, sshfs), 9p, SMB or Ceph,
/// where a server or another machine may write without a break.
fn local_file_system(file: &File) -> bool {
    const LOCAL: [i64; 6] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // XFS
        0x9123_683E, // btrfs
        0xF2F5_2010, // f2fs
        0x0102_1994, // tmpfs
        0x794C_7630, // overlayfs (a container's image and its writable layer)
    ];
    nix::sys::statfs::fstatfs(file).is_ok_and(|fs| {
        // `f_type`'s width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let kind = fs.filesystem_type().0 as i64;
        LOCAL.contains(&kind)
    })
}

/// The inodes a library was loaded from in place, under a lease or unchangeable: never again
/// under a lease (the dynamic loader matches an open library by inode, and would hand back the
/// old one for new bytes).
fn loaded_in_place() -> MutexGuard<'static, std::collections::HashSet<(u64, u64)>> {
    static IN_PLACE: OnceLock<Mutex<std::collections::HashSet<(u64, u64)>>> = OnceLock::new();
    IN_PLACE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Records that the library of the unchangeable file `file` was opened in place.
pub(crate) fn opened_unchangeable(file: &File) {
    if let Ok(meta) = file.metadata() {
        loaded_in_place().insert((meta.dev(), meta.ino()));
    }
}

fn leases() -> MutexGuard<'static, Vec<Weak<Lease>>> {
    static LEASES: OnceLock<Mutex<Vec<Weak<Lease>>>> = OnceLock::new();
    LEASES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The shortest lease-break time leases are taken under: how long a writer waits at most for a
/// detach, which takes milliseconds per library (1,000 libraries written at once are detached one
/// after the other).
const MIN_BREAK_SECONDS: u64 = 10;

/// The watcher thread's id, started the first time: it waits for lease breaks and detaches the
/// libraries whose files are being written. `None` where leases are not to be taken: the
/// lease-break time is under [`MIN_BREAK_SECONDS`], `SIGIO` is ignored in this process (a break's
/// signal would be discarded), or the thread could not start.
fn watcher() -> Option<libc::pid_t> {
    static WATCHER: OnceLock<Option<libc::pid_t>> = OnceLock::new();
    *WATCHER.get_or_init(|| {
        let break_time = std::fs::read_to_string("/proc/sys/fs/lease-break-time")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if break_time.is_some_and(|s| s < MIN_BREAK_SECONDS) {
            return None;
        }
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: reads the current action for SIGIO into `old` (a null new action changes nothing).
        let read =
            unsafe { libc::sigaction(SIGNAL as libc::c_int, std::ptr::null(), old.as_mut_ptr()) };
        // SAFETY: sigaction succeeded, so it filled `old`.
        if read != 0 || unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("backworks-lease".into())
            .spawn(move || {
                let mut set = SigSet::empty();
                set.add(SIGNAL);
                if set.thread_block().is_err() {
                    let _ = tx.send(None);
                    return;
                }
                let _ = tx.send(Some(nix::unistd::gettid().as_raw()));
                loop {
                    if set.wait().is_ok() {
                        // A bug of ours must not end the thread: every later break would wait
                        // out its lease-break time, and then change a library that runs.
                        let _ = std::panic::catch_unwind(|| {
                            breaking().iter().for_each(|lease| lease.detach());
                        });
                    }
                }
            });
        spawned.ok().and_then(|_| rx.recv().ok().flatten())
    })
}

/// The leases being broken now.
fn breaking() -> Vec<Arc<Lease>> {
    let live: Vec<Arc<Lease>> = leases().iter().filter_map(Weak::upgrade).collect();
    live.into_iter()
        .filter(|lease| {
            lease.state().held && lease_state(lease.file.as_raw_fd()) != Some(libc::F_RDLCK)
        })
        .collect()
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const DT_TEXTREL: usize = 22;
const DT_FLAGS: usize = 30;
const DF_TEXTREL: usize = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Where `file`'s parts go, from its ELF program headers (a 64-bit library of this machine's
/// byte order): the file-backed parts of its writable segments that stay writable once the
/// dynamic loader has mapped and relocated them (not RELRO), with their protection; its RELRO;
/// its first page. `None` when they cannot be read, or a segment cannot be read, is writable and
/// executable (its copy would have to be made executable after being written), or is writable
/// and shares a page with another segment: no lease then.
fn layout(file: &File) -> Option<Layout> {
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).ok()?;
    let native = if cfg!(target_endian = "little") { 1 } else { 2 };
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != native {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| {
        usize::try_from(u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())).ok()
    };
    let (phoff, entsize, count) = (
        u64_at(&header, 32)?,
        usize::from(u16_at(&header, 54)),
        usize::from(u16_at(&header, 56)),
    );
    if entsize < 56 || count > 256 {
        return None;
    }
    let mut table = vec![0u8; entsize * count];
    file.read_exact_at(&mut table, phoff as u64).ok()?;
    let page = page_size();
    let down = |a: usize| a & !(page - 1);
    let up = |a: usize| a.checked_add(page - 1).map(down);
    let (mut loads, mut relro) = (Vec::new(), None);
    for entry in table.chunks_exact(entsize) {
        let (kind, flags) = (u32_at(entry, 0), u32_at(entry, 4));
        let (vaddr, filesz, memsz) = (u64_at(entry, 16)?, u64_at(entry, 32)?, u64_at(entry, 40)?);
        match kind {
            PT_LOAD => loads.push((vaddr, filesz, memsz, flags)),
            PT_GNU_RELRO => relro = Some((down(vaddr), down(vaddr.checked_add(memsz)?))),
            // Relocations in the code (`DT_TEXTREL`, or `DF_TEXTREL` in `DT_FLAGS`) would make the
            // code differ from the file, which a detach maps it back from.
            PT_DYNAMIC => {
                let mut dynamic = vec![0u8; filesz.min(64 * 1024) & !15];
                file.read_exact_at(&mut dynamic, u64_at(entry, 8)? as u64)
                    .ok()?;
                let textrel = dynamic.chunks_exact(16).any(|d| {
                    let (tag, value) = (u64_at(d, 0), u64_at(d, 8));
                    tag == Some(DT_TEXTREL)
                        || (tag == Some(DT_FLAGS) && value.is_some_and(|v| v & DF_TEXTREL != 0))
                });
                if textrel {
                    return None;
                }
            }
            _ => {}
        }
    }
    let first = down(loads.iter().map(|l| l.0).min()?);
    let end = loads
        .iter()
        .map(|&(v, _, m, _)| v.checked_add(m).and_then(up))
        .collect::<Option<Vec<usize>>>()?
        .into_iter()
        .max()?;
    let mut data = Vec::new();
    for (i, &(vaddr, filesz, _, flags)) in loads.iter().enumerate() {
        if flags & PF_R == 0 || flags & (PF_W | PF_X) == PF_W | PF_X {
            return None;
        }
        if flags & PF_W == 0 {
            continue;
        }
        // The file-backed part: from the segment's first page to the page holding its last file
        // byte; a segment of `.bss` only still has its first page from the file when it starts
        // within a page (the loader clears the rest of that page).
        let (start, end) = (down(vaddr), up(vaddr.checked_add(filesz)?)?);
        let shares = loads.iter().enumerate().any(|(j, &(v, _, m, _))| {
            j != i
                && v.checked_add(m)
                    .and_then(up)
                    .is_none_or(|e| down(v) < end && start < e)
        });
        if shares {
            return None;
        }
        let (r0, r1) = relro
            .map(|(a, b): (usize, usize)| (a.clamp(start, end), b.clamp(start, end)))
            .unwrap_or((start, start));
        // RELRO is read-only once the library is relocated: nothing writes it after `dlopen`, so
        // a detach copies it with the code.
        let writable = libc::PROT_READ | libc::PROT_WRITE;
        for (a, b) in [(start, r0), (r1.max(start), end)] {
            if a < b {
                data.push(Part {
                    start: a,
                    len: b - a,
                    prot: writable,
                });
            }
        }
    }
    Some(Layout {
        data,
        relro,
        first,
        end,
    })
}

/// The start of glibc's `struct link_map`, the fields read.
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const libc::c_char,
}

/// The link map of the library of the `dlopen` handle `handle`.
fn link_map<'a>(handle: *mut c_void) -> std::io::Result<&'a LinkMap> {
    let mut map: *const LinkMap = std::ptr::null();
    // SAFETY: `handle` is an open library's handle (the library outlives this call, and is
    // never unloaded); RTLD_DI_LINKMAP writes a pointer to its `struct link_map`, whose first
    // fields are the load address and the name, into `map`.
    let status = unsafe { libc::dlinfo(handle, libc::RTLD_DI_LINKMAP, (&raw mut map).cast()) };
    if status != 0 || map.is_null() {
        return Err(std::io::Error::other("dlinfo gave no link map"));
    }
    // SAFETY: a link map the dynamic loader keeps as long as the library, which is never
    // unloaded.
    Ok(unsafe { &*map })
}

/// Replaces `len` bytes of mapped memory at `address` (page-aligned) with anonymous memory holding
/// the same bytes, protected by `prot`, at the same address.
///
/// # Safety
/// The range must be mapped and readable, and nothing may write it until this returns (a write
/// in between would be lost); code may run from it meanwhile.
unsafe fn make_anonymous(address: usize, len: usize, prot: libc::c_int) -> std::io::Result<()> {
    let fail = |what: &str| {
        let e = std::io::Error::last_os_error();
        std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
    let scratch = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if scratch == libc::MAP_FAILED {
        return Err(fail("mmap"));
    }
    // SAFETY: `scratch` is `len` fresh writable bytes; `address` is `len` readable bytes (the
    // caller's promise), which nothing writes meanwhile; they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(address as *const u8, scratch.cast::<u8>(), len) };
    // SAFETY: `scratch` is our own mapping of `len` bytes (made read-write: left so when that is
    // what is asked, which saves the other cores a TLB flush). Then it is moved over the range at
    // `address`, which the kernel unmaps and replaces in one step under the address space's lock.
    let moved = unsafe {
        (prot == libc::PROT_READ | libc::PROT_WRITE || libc::mprotect(scratch, len, prot) == 0)
            && libc::mremap(
                scratch,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                address as *mut c_void,
            ) != libc::MAP_FAILED
    };
    if !moved {
        let error = fail("mremap");
        // SAFETY: the scratch mapping, not moved, is ours alone.
        unsafe { libc::munmap(scratch, len) };
        return Err(error);
    }
    Ok(())
}

/// Replaces `len` bytes of mapped memory at `address` by the same range of `copy` at `offset`,
/// mapped with `prot` (shared when `shared`), at the same address, in one step.
///
/// # Safety
/// `copy` must hold, at `offset`, exactly the `len` bytes now mapped at `address`, and nothing may
/// write them; code may run from them meanwhile.
unsafe fn map_over(
    address: usize,
    len: usize,
    prot: libc::c_int,
    shared: bool,
    copy: &File,
    offset: u64,
) -> std::io::Result<()> {
    let flags = libc::MAP_FIXED
        | if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    // SAFETY: maps the sealed copy over the range at `address`, which the kernel unmaps and
    // replaces in one step under the address space's lock; the bytes are the same (the caller's
    // promise).
    let mapped = unsafe {
        libc::mmap(
            address as *mut c_void,
            len,
            prot,
            flags,
            copy.as_raw_fd(),
            offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `copy` holds at `offset` exactly the `len` readable bytes mapped at `address` (a
/// mapping's last page reads zeros past the end of its file, and so must the memory).
///
/// # Safety
/// The range must be mapped and readable.
unsafe fn holds_at(copy: &File, offset: u64, address: usize, len: usize) -> bool {
    // SAFETY: the caller's promise.
    let mapped = unsafe { std::slice::from_raw_parts(address as *const u8, len) };
    let mut chunk = vec![0; 64 * 1024];
    let mut at = 0;
    while at < len {
        let want = chunk.len().min(len - at);
        let Ok(n) = copy.read_at(&mut chunk[..want], offset + at as u64) else {
            return false;
        };
        if n == 0 {
            return mapped[at..].iter().all(|&b| b == 0);
        }
        if chunk[..n] != mapped[at..at + n] {
            return false;
        }
        at += n;
    }
    true
}

/// One line of `/proc/self/maps`.
struct Line<'a> {
    start: usize,
    end: usize,
    perms: &'a [u8],
    offset: u64,
    dev: &'a str,
    inode: u64,
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, offset, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let (start, end) = range.split_once('-')?;
    Some(Line {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        perms: perms.as_bytes(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev,
        inode: inode.parse().ok()?,
    })
}

/// Makes every readable mapping of the file within the `owned` ranges (the library's span, its
/// views: what the host mapped) independent of it (see [`Lease::detach`]): how many there were,
/// and the errors of those that could not be. The file is identified by the device and inode
/// `/proc/self/maps` shows at the first owned range (on btrfs and overlayfs they differ from
/// `stat`'s); a mapping of another file, or outside those ranges, is never touched. Code and
/// constants are mapped over from `copy` where it holds their bytes; RELRO, and everything when
/// there is no copy, is copied into anonymous memory.
fn detach_mappings(
    owned: &[(usize, usize)],
    relro: Option<(usize, usize)>,
    copy: Option<&File>,
) -> std::io::Result<(usize, Vec<std::io::Error>)> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let lines: Vec<Line> = maps.lines().filter_map(parse_line).collect();
    let Some((dev, inode)) = owned.first().and_then(|&(a, _)| {
        lines
            .iter()
            .find(|l| l.start <= a && a < l.end && l.inode != 0)
            .map(|l| (l.dev, l.inode))
    }) else {
        return Ok((0, Vec::new()));
    };
    let (mut count, mut failed) = (0, Vec::new());
    let ours = |l: &&Line| {
        l.dev == dev && l.inode == inode && owned.iter().any(|&(a, b)| a <= l.start && l.end <= b)
    };
    for line in lines.iter().filter(ours) {
        let perm = |i: usize, c: u8| line.perms.get(i) == Some(&c);
        if !perm(0, b'r') {
            continue;
        }
        let (address, len) = (line.start, line.end - line.start);
        let prot = libc::PROT_READ
            | if perm(1, b'w') { libc::PROT_WRITE } else { 0 }
            | if perm(2, b'x') { libc::PROT_EXEC } else { 0 };
        let relocated = relro.is_some_and(|(a, b)| address < b && a < line.end);
        // A readable mapping of the file, in a range the host mapped, listed just now. Its
        // writable data was made anonymous when the library was opened, so what is left is
        // read-only (code, constants, RELRO, the kept views), which nothing writes. Code is what
        // the file holds (a library with relocations in its code gets no lease): mapped from the
        // copy even where a breakpoint (a uprobe, a debugger's) changed a page, which would
        // otherwise be copied without the probe behind it.
        let over = copy.filter(|copy| {
            !relocated
                && prot & libc::PROT_WRITE == 0
                && (prot & libc::PROT_EXEC != 0
                    // SAFETY: `address` is `len` readable bytes, mapped (listed just now).
                    || unsafe { holds_at(copy, line.offset, address, len) })
        });
        let replaced = match over {
            // SAFETY: `copy` holds the mapped bytes at that offset (compared, or code as the
            // file holds it), and they are read-only.
            Some(copy) => unsafe { map_over(address, len, prot, perm(3, b's'), copy, line.offset) },
            // SAFETY: readable, and nothing writes it (above; a writable mapping left here would
            // be a library whose data could not be made private at its load, which refused it).
            None => unsafe { make_anonymous(address, len, prot) },
        };
        match replaced {
            Ok(()) => count += 1,
            Err(e) => failed.push(e),
        }
    }
    Ok((count, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding an ELF64 header of this machine's byte order, the program headers
    /// `(type, flags, vaddr, filesz, memsz)` (each segment's file offset half its address, so
    /// that reading one for the other is seen), then `rest`.
    fn elf(headers: &[(u32, u32, usize, usize, usize)], rest: &[u8]) -> tempfile::NamedTempFile {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = if cfg!(target_endian = "little") { 1 } else { 2 };
        bytes[32..40].copy_from_slice(&64u64.to_ne_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_ne_bytes());
        bytes[56..58].copy_from_slice(&(headers.len() as u16).to_ne_bytes());
        for &(kind, flags, vaddr, filesz, memsz) in headers {
            let mut entry = vec![0u8; 56];
            entry[0..4].copy_from_slice(&kind.to_ne_bytes());
            entry[4..8].copy_from_slice(&flags.to_ne_bytes());
            entry[8..16].copy_from_slice(&(vaddr as u64 / 2).to_ne_bytes());
            entry[16..24].copy_from_slice(&(vaddr as u64).to_ne_bytes());
            entry[32..40].copy_from_slice(&(filesz as u64).to_ne_bytes());
            entry[40..48].copy_from_slice(&(memsz as u64).to_ne_bytes());
            bytes.extend(entry);
        }
        bytes.extend(rest);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    fn layout_of(headers: &[(u32, u32, usize, usize, usize)]) -> Option<Layout> {
        layout(&File::open(elf(headers, &[]).path()).unwrap())
    }

    const R: u32 = PF_R;
    const RX: u32 = PF_R | PF_X;
    const RW: u32 = PF_R | PF_W;
    const RW_: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;

    #[test]
    fn writable_data_outside_relro_is_what_is_made_private() {
        let page = page_size();
        // hello's shape: text, then a writable segment whose start is RELRO, then .data + .bss.
        let layout = layout_of(&[
            (PT_LOAD, R, 0, 0x438dc, 0x438dc),
            (PT_LOAD, RX, 0x448dc, 0xa79f4, 0xa79f4),
            (PT_LOAD, RW, 0xed2d0, 0x69e8, 0x6d30),
            (PT_LOAD, RW, 0xf4cb8, 0xb80, 0xc90),
            (PT_GNU_RELRO, R, 0xed2d0, 0x69e8, 0x6d30),
        ])
        .unwrap();
        assert_eq!(layout.first, 0);
        assert_eq!(
            layout.relro,
            Some((0xed2d0 & !(page - 1), (0xed2d0 + 0x6d30) & !(page - 1)))
        );
        let start = 0xf4cb8 & !(page - 1);
        let end = (0xf4cb8 + 0xb80 + page - 1) & !(page - 1);
        assert_eq!(
            layout.data,
            vec![Part {
                start,
                len: end - start,
                prot: RW_
            }]
        );
    }

    #[test]
    fn a_bss_only_segment_starting_within_a_page_has_that_page_from_the_file() {
        let page = page_size();
        let layout = layout_of(&[
            (PT_LOAD, RX, 0, 0x1000, 0x1000),
            (PT_LOAD, RW, 3 * page + 0x10, 0, 0x2000),
        ])
        .unwrap();
        assert_eq!(
            layout.data,
            vec![Part {
                start: 3 * page,
                len: page,
                prot: RW_
            }]
        );
        // Starting on a page boundary, it has nothing from the file.
        let aligned = layout_of(&[
            (PT_LOAD, RX, 0, 0x1000, 0x1000),
            (PT_LOAD, RW, 3 * page, 0, 0x2000),
        ])
        .unwrap();
        assert!(aligned.data.is_empty());
    }

    #[test]
    fn libraries_whose_parts_cannot_be_made_private_safely_get_no_lease() {
        let page = page_size();
        // Writable data sharing a page with code.
        assert!(
            layout_of(&[
                (PT_LOAD, RX, 0, 0x1010, 0x1010),
                (PT_LOAD, RW, 0x1010, 0x10, 0x10)
            ])
            .is_none()
        );
        // Writable and executable.
        assert!(layout_of(&[(PT_LOAD, PF_R | PF_W | PF_X, 0, 0x1000, 0x1000)]).is_none());
        // Execute-only: its pages cannot be read to compare or copy.
        assert!(layout_of(&[(PT_LOAD, PF_X, 0, 0x1000, 0x1000)]).is_none());
        // Not a library of this machine's kind.
        let text = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(text.path(), vec![b'x'; 200]).unwrap();
        assert!(layout(&File::open(text.path()).unwrap()).is_none());
        // Relocations in the code, either way of saying so.
        // (The dynamic section at its file offset, right after the headers; zeros where its
        // address would be.)
        for (tag, value) in [(DT_TEXTREL, 0), (DT_FLAGS, DF_TEXTREL)] {
            let at = 64 + 56 * 2;
            let mut rest = Vec::new();
            for word in [tag, value, 0, 0] {
                rest.extend((word as u64).to_ne_bytes());
            }
            rest.resize(2 * at + 64, 0);
            let headers = [
                (PT_LOAD, RX, 0, 0x1000, 0x1000),
                (PT_DYNAMIC, RW, 2 * at, 32, 32),
            ];
            let file = elf(&headers, &rest);
            assert!(layout(&File::open(file.path()).unwrap()).is_none());
            let plain = elf(&headers, &vec![0; 2 * at + 64]);
            assert!(layout(&File::open(plain.path()).unwrap()).is_some());
        }
        // Separate pages are fine.
        assert!(
            layout_of(&[
                (PT_LOAD, RX, 0, 0x1000, 0x1000),
                (PT_LOAD, RW, 2 * page, 0x10, 0x10)
            ])
            .is_some()
        );
    }

    #[test]
    fn maps_lines_are_read_with_their_offsets() {
        let line = parse_line(
            "7f3e7d477000-7f3e7d478000 r-xp 00001000 fe:00 10027165                   /tmp/t.so",
        )
        .unwrap();
        assert_eq!((line.start, line.end), (0x7f3e7d477000, 0x7f3e7d478000));
        assert_eq!((line.perms, line.offset), (&b"r-xp"[..], 0x1000));
        assert_eq!((line.dev, line.inode), ("fe:00", 10027165));
        let anonymous = parse_line("7ffd6f4ad000-7ffd6f4ce000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anonymous.inode, 0);
    }
}

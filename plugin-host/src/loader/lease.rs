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
//! the library independent of the file (`detach`):
//! - every mapping of the file that can be read is replaced by anonymous memory holding the same
//!   bytes, with the same protection, at the same address, in one `mremap` each (a thread running
//!   that code waits on the address space's lock for that instant, then finds the same bytes);
//! - a sealed copy is made of what the file still holds (what was checked and loaded), and every
//!   later read of the library's "copy" (a hash, a plugin child, another load of the same bytes)
//!   reads that;
//! - then the lease is released and the writer goes on.
//!
//! The library's writable data (its `.data`, the part of its last page before `.bss`) is made
//! anonymous right after `dlopen`, before any instance of the plugin exists
//! ([`Lease::opened`]): a truncation discards even the copied-on-write pages of a private file
//! mapping, and pages that plugin threads write could not be copied later without losing a
//! write. What stays mapped from the file until a write comes is read-only: code, constants,
//! and the relocated data the loader made read-only (RELRO), which nothing writes after
//! `dlopen` and a detach copies with the code.
//!
//! No lease, then a copy as before: a file not owned by this process's user (without
//! `CAP_LEASE`), a file open for writing somewhere, a file system without leases
//! (`/proc/sys/fs/leases-enable` 0, NFS, FUSE), a lease-break time under 10 s (the writer would
//! not wait long enough to be sure), `SIGIO` ignored in this process, a library whose writable
//! segment shares a page with another segment, an inode loaded in place before (the dynamic
//! loader would hand back that library for new bytes at the same inode), or
//! `BACKWORKS_PRIVATE_COPY` set.
//!
//! The watcher waits for `SIGIO` with `sigwait`; an embedder that relies on `SIGIO` for
//! descriptors of its own (`O_ASYNC`) should set `BACKWORKS_PRIVATE_COPY=memfd`, as the watcher
//! could take a signal meant for them.

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock, Weak};

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

/// A file held unchanged by a read lease, and the library loaded from it.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The plugin file, opened read-only by the file checks; the lease is on this descriptor,
    /// and it stays open for the life of the lease (and the process, once loaded).
    file: File,
    /// The file's device and inode.
    id: (u64, u64),
    /// The library's file name, for logs.
    name: String,
    /// The writable parts of the library, relative to its load address (see [`Lease::opened`]).
    data: Vec<Part>,
    state: Mutex<State>,
    changed: Condvar,
    /// After a write began: a sealed copy of what the file held until then.
    frozen: OnceLock<File>,
    /// The library's writable data made anonymous, once.
    data_private: Once,
}

#[derive(Debug, Default)]
struct State {
    /// Readers of the file: loads between reading and opening it, hashes.
    users: usize,
    /// A detach is running: new readers wait for it to finish.
    detaching: bool,
    /// The lease is held (false once released, or before it was granted).
    held: bool,
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

impl Lease {
    /// A read lease on `file` (opened read-only and checked by the caller), or the file back
    /// when none can be had (see the module's docs). `name` names the library in logs.
    pub(crate) fn take(file: File, name: &str) -> std::io::Result<Result<Arc<Lease>, File>> {
        let copy = |why: &str| {
            tracing::debug!(library = name, "copied, not loaded in place: {why}");
        };
        let Some(watcher) = watcher() else {
            copy(
                "the lease-break time is under 10 s, SIGIO is ignored in this process, or the \
                 lease watcher could not start",
            );
            return Ok(Err(file));
        };
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        if loaded_in_place().contains(&id) {
            copy("a library was loaded in place from this inode before");
            return Ok(Err(file));
        }
        let Some(data) = data_parts(&file) else {
            copy("its program headers are unreadable, or a writable segment shares a page");
            return Ok(Err(file));
        };
        let fd = file.as_raw_fd();
        let owner = OwnerEx {
            kind: F_OWNER_TID,
            pid: watcher,
        };
        // SAFETY: fcntl on a descriptor we own, with an `f_owner_ex` that lives across the call
        // (read, not kept) and plain integer arguments. The first two only say where a lease
        // break's signal goes; a failure of any leaves the file as it was, then copied.
        let granted = unsafe {
            libc::fcntl(fd, F_SETOWN_EX, &raw const owner) == 0
                && libc::fcntl(fd, F_SETSIG, SIGNAL as libc::c_int) == 0
                && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
        };
        if !granted {
            copy(&format!("no lease: {}", std::io::Error::last_os_error()));
            return Ok(Err(file));
        }
        let lease = Arc::new(Lease {
            file,
            id,
            name: name.to_owned(),
            data,
            state: Mutex::new(State {
                held: true,
                ..State::default()
            }),
            changed: Condvar::new(),
            frozen: OnceLock::new(),
            data_private: Once::new(),
        });
        register(&lease);
        // A break that came before the watcher could find the lease went unanswered: give
        // this one up (nothing of it is loaded yet), and copy.
        if lease_state(fd) != Some(libc::F_RDLCK) {
            copy("a write began as the lease was taken");
            let file = lease.file.try_clone()?;
            lease.release();
            return Ok(Err(file));
        }
        Ok(Ok(lease))
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
    /// the sealed copy made when a write began.
    pub(crate) fn file<'a>(&'a self, _use: &InUse<'a>) -> &'a File {
        self.frozen.get().unwrap_or(&self.file)
    }

    /// Whether the file itself is still what is read (no write has begun).
    pub(crate) fn in_place(&self, _use: &InUse<'_>) -> bool {
        self.frozen.get().is_none()
    }

    /// Called, during the same use, once `dlopen` opened the file itself (not the sealed copy)
    /// and handed back `library`: makes the library's writable data anonymous memory, the first
    /// time. Until a write begins, only the code and constants stay mapped from the file.
    pub(crate) fn opened(&self, library: *mut c_void) -> std::io::Result<()> {
        loaded_in_place().insert(self.id);
        let mut result = Ok(());
        self.data_private.call_once(|| {
            result = load_address(library).and_then(|base| {
                self.data.iter().try_for_each(|part| {
                    // SAFETY: `part` is a writable segment of the library just opened (from its
                    // program headers, checked in `data_parts` to share no page with another
                    // segment), at its load address. No instance of the plugin exists yet, so no
                    // thread of it writes there while it is copied; the bytes stay the same.
                    unsafe { make_anonymous(base + part.start, part.len, part.prot) }
                })
            });
        });
        result
    }

    /// Gives the lease up.
    fn release(&self) {
        let mut state = self.state();
        if state.held {
            // SAFETY: fcntl with integer arguments on the descriptor this lease owns.
            unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
            state.held = false;
        }
    }

    /// A write to the file began (its lease is breaking): make the library independent of the
    /// file, keep a sealed copy of what it holds, then let the writer in. See the module's docs.
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
        let mappings = detach_mappings(self.id);
        let copy = super::private_copy::sealed_copy_of(&self.file, &self.name);
        match (&mappings, &copy) {
            (Ok(n), Ok(_)) => tracing::info!(
                library = %self.name,
                mappings = n,
                "a plugin file loaded in place is being written: the library now runs from memory of its own"
            ),
            _ => tracing::error!(
                library = %self.name,
                mappings = ?mappings.as_ref().err(),
                copy = ?copy.as_ref().err(),
                "a plugin file loaded in place is being written, and the library could not be made independent of it"
            ),
        }
        if let Ok(copy) = copy {
            let _ = self.frozen.set(copy);
        }
        self.release();
        self.state().detaching = false;
        self.changed.notify_all();
    }
}

/// The lease held on `fd` now: `F_RDLCK`, or `F_UNLCK` when none or when it is breaking.
fn lease_state(fd: libc::c_int) -> Option<libc::c_int> {
    // SAFETY: fcntl with integer arguments on a descriptor the caller owns.
    let state = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
    (state >= 0).then_some(state)
}

/// The inodes a library was loaded from in place: never again in place (the dynamic loader
/// matches an open library by inode, and would hand back the old one for new bytes).
fn loaded_in_place() -> MutexGuard<'static, std::collections::HashSet<(u64, u64)>> {
    static IN_PLACE: OnceLock<Mutex<std::collections::HashSet<(u64, u64)>>> = OnceLock::new();
    IN_PLACE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn leases() -> MutexGuard<'static, Vec<Weak<Lease>>> {
    static LEASES: OnceLock<Mutex<Vec<Weak<Lease>>>> = OnceLock::new();
    LEASES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn register(lease: &Arc<Lease>) {
    let mut leases = leases();
    if leases.len() >= 64 && leases.len().is_power_of_two() {
        leases.retain(|l| l.strong_count() > 0);
    }
    leases.push(Arc::downgrade(lease));
}

/// The shortest lease-break time leases are taken under: how long a writer waits at most for a
/// detach, which takes milliseconds per library (1,000 libraries written at once are detached one
/// after the other).
const MIN_BREAK_SECONDS: u64 = 10;

/// The watcher thread's id, started the first time: it waits for lease breaks and detaches the
/// libraries whose files are being written. `None` where leases are not to be taken: the
/// lease-break time is under [`MIN_BREAK_SECONDS`], `SIGIO` is ignored in this process (the kernel
/// would drop the signal), or the thread could not start.
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
                        breaking().iter().for_each(|lease| lease.detach());
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
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The file-backed parts of `file`'s writable segments that stay writable once the dynamic loader
/// has mapped and relocated them (not RELRO), relative to the load address, with their
/// protection: from the ELF program headers (a 64-bit library of this machine's byte order).
/// `None` when they cannot be read or a writable segment shares a page with another segment: no
/// lease then.
fn data_parts(file: &File) -> Option<Vec<Part>> {
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
            _ => {}
        }
    }
    let mut parts = Vec::new();
    for (i, &(vaddr, filesz, _, flags)) in loads.iter().enumerate() {
        if flags & PF_W == 0 || filesz == 0 {
            continue;
        }
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
        let writable = libc::PROT_READ
            | libc::PROT_WRITE
            | if flags & PF_X != 0 {
                libc::PROT_EXEC
            } else {
                0
            };
        let (r0, r1) = relro
            .map(|(a, b)| (a.clamp(start, end), b.clamp(start, end)))
            .unwrap_or((start, start));
        // RELRO is read-only once the library is relocated: nothing writes it after `dlopen`, so
        // a detach copies it with the code.
        for (a, b, prot) in [(start, r0, writable), (r1.max(start), end, writable)] {
            if a < b {
                parts.push(Part {
                    start: a,
                    len: b - a,
                    prot,
                });
            }
        }
    }
    Some(parts)
}

/// The address the library of the `dlopen` handle `handle` was loaded at (`l_addr` of its link
/// map).
fn load_address(handle: *mut c_void) -> std::io::Result<usize> {
    /// The first field of glibc's `struct link_map`, the only one read.
    #[repr(C)]
    struct LinkMap {
        l_addr: usize,
    }
    let mut map: *const LinkMap = std::ptr::null();
    // SAFETY: `handle` is an open library's handle (the library outlives this call);
    // RTLD_DI_LINKMAP writes a pointer to its `struct link_map`, whose first field is the load
    // address, into `map`.
    let status = unsafe { libc::dlinfo(handle, libc::RTLD_DI_LINKMAP, (&raw mut map).cast()) };
    if status != 0 || map.is_null() {
        return Err(std::io::Error::other("dlinfo gave no link map"));
    }
    // SAFETY: a link map the dynamic loader keeps for the open library.
    Ok(unsafe { (*map).l_addr })
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

/// Makes every readable mapping of the file `id` in this process anonymous (see [`detach`]);
/// how many there were.
///
/// [`detach`]: Lease::detach
fn detach_mappings(id: (u64, u64)) -> std::io::Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let (major, minor) = (libc::major(id.0), libc::minor(id.0));
    let mut ranges = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let same_dev = dev.split_once(':').is_some_and(|(a, b)| {
            u32::from_str_radix(a, 16) == Ok(major) && u32::from_str_radix(b, 16) == Ok(minor)
        });
        if !same_dev || inode.parse::<u64>() != Ok(id.1) || !perms.starts_with('r') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let perms = perms.as_bytes();
        let prot = libc::PROT_READ
            | if perms.get(1) == Some(&b'w') {
                libc::PROT_WRITE
            } else {
                0
            }
            | if perms.get(2) == Some(&b'x') {
                libc::PROT_EXEC
            } else {
                0
            };
        ranges.push((start, end - start, prot));
    }
    for &(start, len, prot) in &ranges {
        // SAFETY: a readable mapping of the library's file, listed just now. Its writable data
        // was made anonymous when it was opened, so what is left is read-only (code, constants,
        // RELRO, the host's kept view of the file for comparisons), which nothing writes.
        unsafe { make_anonymous(start, len, prot) }?;
    }
    Ok(ranges.len())
}

//! Closing the file descriptors a plugin child inherited, before the plugin's code runs.
//!
//! Everything the host opens itself is close-on-exec (Rust's standard library and tokio open
//! every descriptor that way), but the host may hold descriptors it inherited *without* that flag:
//! a socket from its supervisor, a file a wrapper script opened. A plugin child would inherit
//! them in turn, and an untrusted plugin could read or write them. The runner closes every
//! descriptor above stderr first thing, before it loads a library or `exec`s a command.
//!
//! This lives in the loader because it is the child-side half of loading a plugin, and because
//! closing a raw descriptor is `unsafe`: the crate keeps `unsafe` in the ABI, export and loader
//! modules only.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Closes every open descriptor above 2 (stdin, stdout and stderr stay) and returns how many it
/// closed.
///
/// # Contract
/// Only for the first moments of a plugin child process (`__plugin-child`), before any code of
/// this process opened a descriptor of its own: every descriptor above 2 at that point came from
/// the parent across `exec`, and no value in this process owns it. Calling it later would close
/// descriptors that live values still use.
pub(crate) fn close_inherited_fds() -> io::Result<usize> {
    // Read the whole list first: the directory's own descriptor is in it, and closing it while
    // iterating would end the iteration. It is closed when `read_dir` is dropped, so closing it
    // again below fails with `EBADF`, which is ignored.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &RawFd| fd > 2)
        .collect();
    let mut closed = 0;
    for fd in fds {
        // `fcntl(F_GETFD)` tells an open descriptor from the directory's own, already closed one.
        if nix::fcntl::fcntl(
            // SAFETY: the borrow lives for this call only; `fcntl(F_GETFD)` on a closed
            // descriptor fails with `EBADF` and does nothing else.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_err()
        {
            continue;
        }
        // SAFETY: per this function's contract, `fd` was inherited across `exec` and nothing in
        // this process owns it, so taking ownership (and closing it on drop) cannot close a
        // descriptor that a live value still uses.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        closed += 1;
    }
    Ok(closed)
}

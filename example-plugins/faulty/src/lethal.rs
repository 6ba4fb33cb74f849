//! The behaviours that end or wedge the process (for process-isolation tests), and the memory hog.
//! Each logs an error line first, so a supervisor's log shows what was meant to happen.

use std::sync::{Mutex, PoisonError};

use backworks_plugin_sdk::tracing;
use nix::sys::signal::{Signal, raise};

/// One MiB, the hog's allocation step.
const MIB: usize = 1024 * 1024;

/// The status `crash_on_init` exits with.
pub const CRASH_ON_INIT_STATUS: i32 = 3;

/// Raises `SIGSEGV` until the process dies.
///
/// The Rust runtime installs a `SIGSEGV` handler (to report stack overflows) which, for a signal
/// that is not a guard-page hit, restores the default action and returns: the first `raise` only
/// disarms it, the second kills. Should something else ignore the signal, the process aborts.
pub(crate) fn segfault() -> ! {
    tracing::error!("faulty: raising SIGSEGV");
    for _ in 0..3 {
        let _ = raise(Signal::SIGSEGV);
    }
    tracing::error!("faulty: SIGSEGV did not end the process; aborting instead");
    std::process::abort()
}

/// Aborts the process (`SIGABRT`).
pub(crate) fn abort() -> ! {
    tracing::error!("faulty: aborting");
    std::process::abort()
}

/// Exits the process with `code`, in the middle of a call.
pub(crate) fn exit(code: i32) -> ! {
    tracing::error!("faulty: exiting with status {code}");
    std::process::exit(code)
}

/// Exits the process with [`CRASH_ON_INIT_STATUS`] from `initialize`.
pub(crate) fn exit_in_initialize() -> ! {
    tracing::error!("faulty: crash_on_init, exiting with status {CRASH_ON_INIT_STATUS}");
    std::process::exit(CRASH_ON_INIT_STATUS)
}

/// Busy-loops on the calling thread forever, never yielding.
pub(crate) fn spin() -> ! {
    tracing::error!("faulty: spinning forever");
    let mut turns = 0u64;
    loop {
        turns = std::hint::black_box(turns.wrapping_add(1));
    }
}

/// Allocates `mb` more MiB in 1 MiB steps, writing every byte so the pages are really used, and
/// keeps them in `hoard`. Returns the MiB now held. An allocation refused (past `RLIMIT_AS`) ends
/// the process through the allocation-error handler (`memory allocation of 1048576 bytes failed`,
/// then abort).
pub(crate) fn hog(hoard: &Mutex<Vec<Vec<u8>>>, mb: usize) -> usize {
    let mut hoard = hoard.lock().unwrap_or_else(PoisonError::into_inner);
    hoard.reserve(mb);
    for _ in 0..mb {
        hoard.push(vec![0xA5; MIB]);
    }
    hoard.len()
}

/// Leaves a daemon behind, as a careless plugin might: `setsid -f` forks a process into a new
/// session (out of the plugin's process group) whose parent exits at once, so it is orphaned; it
/// appends its pid to `pid_file` and sleeps for ten minutes.
pub(crate) fn spawn_daemon(pid_file: &str) -> std::io::Result<()> {
    tracing::error!("faulty: leaving a setsid daemon behind");
    let status = std::process::Command::new("setsid")
        .args([
            "-f",
            "sh",
            "-c",
            r#"echo $$ >> "$0"; exec sleep 600"#,
            pid_file,
        ])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("setsid -f: {status}")))
    }
}

//! The plugin side's link to the host: the host's services of one instance, and which instance
//! the current thread is working for.
//!
//! [`export`](crate::export) makes a [`HostLink`] for each instance and marks it current while it
//! polls a call of that instance; [`logging`](crate::logging) sends a log line to the current link
//! (or to the newest live one). Both depend on this module and it on neither, so the dependencies
//! point one way: `export` → `logging` → `host_link` → `abi`.

use std::cell::Cell;
use std::sync::RwLock;

use crate::abi::{BwHostServices, BwStr};

/// The host's services for one instance, shared with every call and log line of that instance.
pub(crate) struct HostLink {
    /// Null once the instance is freed: the host's struct may then be gone.
    services: RwLock<*const BwHostServices>,
    max_level: u32,
}

// SAFETY: the host promises its services struct is thread-safe and stays valid until
// `instance_free` returns; `instance_free` nulls the pointer under the write lock first (`detach`),
// and every read happens under the read lock, so no thread uses it after that.
unsafe impl Send for HostLink {}
// SAFETY: as above.
unsafe impl Sync for HostLink {}

impl HostLink {
    /// A link to `services`, which records lines up to `max_level`.
    ///
    /// # Safety
    /// `services` must point to the host's services of one instance, valid, unchanged and usable
    /// from any thread until [`HostLink::detach`] is called (the ABI's promise until `instance_free`
    /// returns).
    pub(crate) unsafe fn new(services: *const BwHostServices, max_level: u32) -> HostLink {
        HostLink {
            services: RwLock::new(services),
            max_level,
        }
    }

    /// Most verbose `BW_LOG_*` level the host records.
    pub(crate) fn max_level(&self) -> u32 {
        self.max_level
    }

    /// Forgets the host's services, which may be gone after this: later lines are dropped.
    pub(crate) fn detach(&self) {
        if let Ok(mut services) = self.services.write() {
            *services = std::ptr::null();
        }
    }

    /// Hands one log line to the host; dropped if the instance is gone or the host has no logger.
    pub(crate) fn log(&self, level: u32, target: &str, message: &str) {
        if level > self.max_level {
            return;
        }
        let Ok(services) = self.services.read() else {
            return;
        };
        if services.is_null() {
            return;
        }
        // SAFETY: not null, so `detach` has not run and the host keeps the struct valid (`new`'s
        // contract). Two v1.0 fields are read in place: an older host's struct is smaller than
        // ours, so no reference to the whole struct is made.
        let (log, ctx) = unsafe { ((**services).log, (**services).ctx) };
        if let Some(log) = log {
            // SAFETY: the host's logger is thread-safe, never unwinds, and only borrows the strings
            // for the duration of the call.
            unsafe {
                log(
                    ctx,
                    level,
                    BwStr::new(target.as_bytes()),
                    BwStr::new(message.as_bytes()),
                )
            };
        }
    }
}

thread_local! {
    /// The link of the instance whose call is being polled on this thread (null when none).
    static CURRENT: Cell<*const HostLink> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `link` as this thread's current link, and restores the previous one when `f`
/// returns or unwinds.
#[inline(always)]
pub(crate) fn as_current<R>(link: &HostLink, f: impl FnOnce() -> R) -> R {
    /// Puts the previous current link back when dropped.
    struct Restore(*const HostLink);

    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }

    let _restore = Restore(CURRENT.with(|c| c.replace(link)));
    f()
}

/// Runs `f` with the link of the instance whose call this thread is polling, if any.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&HostLink>) -> R) -> R {
    let current = CURRENT.with(Cell::get);
    // SAFETY: `CURRENT` is only non-null inside `as_current`, which sets it to a link that outlives
    // `f` (the borrow it takes) and restores the previous value before it returns, also when `f`
    // unwinds.
    f(unsafe { current.as_ref() })
}

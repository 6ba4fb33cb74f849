//! The plugin library's own tokio runtime, which costs no thread until the plugin waits.
//!
//! Every cdylib links its own copy of tokio, whose thread-locals know nothing of the host's
//! runtime, so a host `Handle` could never be used here: each library has a runtime of its own,
//! [`LIBRARY`], shared by every instance of the library. It comes in two steps:
//!
//! 1. **The context**, built by the first call into the library: a current-thread runtime with its
//!    timer and I/O drivers and no thread. Every call's first poll runs on the host's thread inside
//!    it, so a plugin can create timers and sockets at once; a handler that never waits finishes
//!    there, and the library never starts a thread.
//! 2. **The threads**, started once, by the first task: a pending call the host starts, or a task
//!    the plugin spawned during an inline poll. With `workers` 1 (the default), one thread drives
//!    the context's runtime and runs every task on it. With `workers` N > 1, a multi-thread runtime
//!    of N workers runs the tasks, and the one thread still drives the timers and sockets that first
//!    polls created in the context (N + 1 threads in all).
//!
//! Why not a multi-thread runtime from the start: tokio starts its workers when it builds one, and
//! a future's timers and sockets belong to the runtime whose context created them, so the runtime
//! of the first poll must be the one whose drivers run later. A current-thread runtime is the only
//! tokio runtime that can be built without a thread and driven later by one.
//!
//! `workers` is the largest any instance of the library asked for (the host's
//! `BwHostServices::workers`, capped at [`MAX_WORKERS`]) when the threads start; later requests do
//! not change a started runtime.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::runtime::{Builder, Handle, Runtime, RuntimeMetrics};

use crate::PluginError;
use crate::abi::MAX_WORKERS;

/// Threads that run a library's waiting calls when no instance asks for a number.
pub(crate) const DEFAULT_WORKERS: u32 = 1;

/// The name of the threads of a plugin library's runtime (at most 15 bytes, Linux's limit).
const THREAD_NAME: &str = "bw-plugin-rt";

/// This library's runtime.
pub(crate) static LIBRARY: LazyRuntime = LazyRuntime::new(THREAD_NAME);

/// A runtime whose context is built on first use and whose threads start with its first task.
pub(crate) struct LazyRuntime {
    thread_name: &'static str,
    /// The current-thread runtime every first poll runs in; see the module docs.
    context: OnceLock<Result<Runtime, String>>,
    /// The context's metrics, kept: asking the runtime for them clones its handle, two
    /// reference-count updates that every call would pay.
    metrics: OnceLock<RuntimeMetrics>,
    /// Started with the first task; holds the pool when there is one.
    threads: OnceLock<Result<Threads, String>>,
    /// The largest number of workers an instance asked for; 0 while none did.
    requested: AtomicU32,
}

/// What runs the tasks once the threads have started.
enum Threads {
    /// One thread drives the context's runtime and runs every task on it.
    Driver,
    /// A multi-thread runtime runs the tasks; one more thread drives the context's runtime.
    Pool(Runtime),
}

impl LazyRuntime {
    /// A runtime that has not been built; its threads will carry `thread_name`.
    pub(crate) const fn new(thread_name: &'static str) -> LazyRuntime {
        LazyRuntime {
            thread_name,
            context: OnceLock::new(),
            metrics: OnceLock::new(),
            threads: OnceLock::new(),
            requested: AtomicU32::new(0),
        }
    }

    /// Records that an instance wants `workers` threads (0: no preference; capped at
    /// [`MAX_WORKERS`]). Takes effect if the threads have not started yet.
    pub(crate) fn request_workers(&self, workers: u32) {
        if workers > 0 {
            self.requested
                .fetch_max(workers.min(MAX_WORKERS), Ordering::Relaxed);
        }
    }

    /// The largest number of workers an instance asked for so far (0: none).
    #[cfg(test)]
    pub(crate) fn requested(&self) -> u32 {
        self.requested.load(Ordering::Relaxed)
    }

    /// The runtime every first poll runs in, built now if it was not: no thread is started.
    pub(crate) fn context(&self) -> Result<&Runtime, PluginError> {
        self.context
            .get_or_init(|| {
                Builder::new_current_thread()
                    // Names its blocking threads (`spawn_blocking`) too.
                    .thread_name(self.thread_name)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot build the plugin's tokio runtime: {e}"))
            })
            .as_ref()
            .map_err(|e| PluginError::Internal(e.clone()))
    }

    /// The context's runtime if a call has built it; never builds it.
    pub(crate) fn built(&self) -> Option<&Runtime> {
        self.context.get().and_then(|built| built.as_ref().ok())
    }

    /// Starts the threads if an inline poll left tasks behind (the plugin spawned some), which
    /// would otherwise never run. One atomic load once the threads run, or while nothing was built.
    pub(crate) fn run_leftover_tasks(&'static self) {
        if self.threads.get().is_some() {
            return;
        }
        if let Some(context) = self.built()
            && self
                .metrics
                .get_or_init(|| context.metrics())
                .num_alive_tasks()
                > 0
        {
            // An error here is the next task's to report: `spawner` returns it.
            let _ = self.threads();
        }
    }

    /// Where tasks are spawned: the runtime that runs them on its threads, which this starts if
    /// they have not started.
    pub(crate) fn spawner(&'static self) -> Result<&'static Handle, PluginError> {
        let context = self.context()?;
        Ok(match self.threads()? {
            Threads::Driver => context.handle(),
            Threads::Pool(pool) => pool.handle(),
        })
    }

    /// The threads, started on the first call: exactly once, however many callers race here.
    fn threads(&'static self) -> Result<&'static Threads, PluginError> {
        self.threads
            .get_or_init(|| self.start())
            .as_ref()
            .map_err(|e| PluginError::Internal(e.clone()))
    }

    fn start(&'static self) -> Result<Threads, String> {
        let context = self.context().map_err(|e| e.to_string())?;
        let workers = match self.requested.load(Ordering::Relaxed) {
            0 => DEFAULT_WORKERS,
            n => n,
        };
        let threads = if workers == 1 {
            Threads::Driver
        } else {
            let pool = Builder::new_multi_thread()
                .worker_threads(workers as usize)
                .thread_name(self.thread_name)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the plugin's {workers} runtime workers: {e}"))?;
            Threads::Pool(pool)
        };
        std::thread::Builder::new()
            .name(self.thread_name.to_owned())
            .spawn(move || context.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("cannot start the plugin's runtime thread: {e}"))?;
        Ok(threads)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Barrier};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::*;

    /// The threads of this process named `name`, from `/proc/self/task` (a count, not a timing).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("read /proc/self/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    /// A runtime of its own for one test, with threads named `name` (distinct per test).
    fn fresh(name: &'static str) -> &'static LazyRuntime {
        Box::leak(Box::new(LazyRuntime::new(name)))
    }

    /// Polls `future` once inside `runtime`'s context, as a call's first poll on a host thread.
    fn first_poll<F: Future>(
        runtime: &LazyRuntime,
        future: &mut std::pin::Pin<Box<F>>,
    ) -> Poll<F::Output> {
        let _context = runtime.context().expect("context").enter();
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_call_that_never_waits_starts_no_thread() {
        let runtime = fresh("bw-test-ready");
        for _ in 0..100 {
            let mut ready = Box::pin(async {
                // Touches the timer driver, which needs the context, and finishes without waiting.
                let _unused = tokio::time::sleep(Duration::from_secs(1));
                7
            });
            assert_eq!(first_poll(runtime, &mut ready), Poll::Ready(7));
            runtime.run_leftover_tasks();
        }
        assert!(runtime.built().is_some());
        assert_eq!(threads_named("bw-test-ready"), 0);
    }

    #[test]
    fn many_first_calls_pending_at_once_start_one_thread_and_all_complete() {
        const CALLS: usize = 32;
        let runtime = fresh("bw-test-race");
        let barrier = Arc::new(Barrier::new(CALLS));
        let (sender, receiver) = mpsc::channel();
        let callers: Vec<_> = (0..CALLS)
            .map(|i| {
                let (barrier, sender) = (barrier.clone(), sender.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut call = Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        i
                    });
                    assert!(first_poll(runtime, &mut call).is_pending());
                    runtime.spawner().expect("threads").spawn(async move {
                        let _ = sender.send(call.await);
                    });
                })
            })
            .collect();
        drop(sender);
        for caller in callers {
            caller.join().expect("caller");
        }
        let mut done: Vec<usize> = (0..CALLS)
            .map(|_| {
                receiver
                    .recv_timeout(Duration::from_secs(60))
                    .expect("a call completes")
            })
            .collect();
        done.sort_unstable();
        assert_eq!(done, (0..CALLS).collect::<Vec<_>>());
        assert_eq!(threads_named("bw-test-race"), 1);
    }

    #[test]
    fn a_task_spawned_by_an_inline_poll_runs() {
        let runtime = fresh("bw-test-spawn");
        let (sender, receiver) = mpsc::channel();
        let mut spawns = Box::pin(async move {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = sender.send("ran");
            });
        });
        assert!(first_poll(runtime, &mut spawns).is_ready());
        assert_eq!(
            threads_named("bw-test-spawn"),
            0,
            "not started by the poll itself"
        );
        runtime.run_leftover_tasks();
        assert_eq!(receiver.recv_timeout(Duration::from_secs(60)), Ok("ran"));
        assert_eq!(threads_named("bw-test-spawn"), 1);
    }

    #[test]
    fn more_workers_run_tasks_on_a_pool_with_the_first_polls_timers_still_driven() {
        let runtime = fresh("bw-test-pool");
        runtime.request_workers(2);
        runtime.request_workers(3);
        runtime.request_workers(1);
        assert_eq!(threads_named("bw-test-pool"), 0);
        let mut call = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            tokio::runtime::Handle::current().runtime_flavor()
        });
        assert!(first_poll(runtime, &mut call).is_pending());
        let (sender, receiver) = mpsc::channel();
        runtime.spawner().expect("threads").spawn(async move {
            let _ = sender.send(call.await);
        });
        let flavor = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the call completes");
        assert_eq!(flavor, tokio::runtime::RuntimeFlavor::MultiThread);
        // Three workers and the thread that drives the first poll's timer.
        assert_eq!(threads_named("bw-test-pool"), 4);
    }

    #[test]
    fn requests_above_the_cap_are_capped() {
        let runtime = LazyRuntime::new("bw-test-cap");
        runtime.request_workers(0);
        assert_eq!(runtime.requested.load(Ordering::Relaxed), 0);
        runtime.request_workers(u32::MAX);
        assert_eq!(runtime.requested.load(Ordering::Relaxed), MAX_WORKERS);
    }
}

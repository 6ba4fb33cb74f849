//! Driving a plugin method's future through the ABI's ready-or-pending protocol.
//!
//! The fast path is the point of this module: a call whose future finishes on its first poll (most
//! do) costs the plugin method's own future and nothing else. That poll runs inline on the host's
//! thread, inside the library's runtime context, with the instance's [`HostLink`] current for log
//! lines, and takes no reference count and no allocation of its own. Only a call that waits is boxed
//! into a [`TaskCell`], together with what its future borrows (the plugin value, a hook's request).
//!
//! A task's future is dropped before its completion is called, and `task_cancel` drops it before it
//! returns: a future that borrows the request of a `handle_lent` call (ABI 1.2) never outlives the
//! host's lease. So the task's runtime side and the host's handle share the future behind a lock,
//! which a poll holds while it runs; cancelling waits for a poll in progress (on the library's own
//! threads; polls do not block) and drops the future itself.

use std::cell::Cell;
use std::ffi::c_void;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Instance;
use super::output::{Outcome, write_output};
use crate::abi::{BW_OUT_PENDING, BW_PENDING, BW_READY, BwCompletion, BwOutput};
use crate::host_link::{self, HostLink};
use crate::{PluginError, Request};

/// A plugin method's future with its borrows erased; see [`drive`] for who keeps them alive.
pub(super) type CallFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A pending call as the task sees it.
type TaskFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

thread_local! {
    /// Whether this thread has the library's runtime as its current one for good (see
    /// [`in_runtime`]).
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the library's runtime current on this thread.
///
/// Entering a runtime and leaving it again costs two reference-count updates of its handle on every
/// call, so on a thread that has no runtime of this library's tokio current, the runtime is entered
/// once and for good. That changes nothing for the host: a library has its own copy of tokio, whose
/// thread-locals nothing but this library reads. Where this library shares its tokio with its caller
/// (a plugin linked into a test or host binary and called through its vtable) and the thread
/// already runs a runtime of that tokio, the library's runtime is entered for the call only.
fn in_runtime<R>(runtime: &tokio::runtime::Runtime, f: impl FnOnce() -> R) -> R {
    if ENTERED.with(Cell::get) {
        return f();
    }
    if tokio::runtime::Handle::try_current().is_err() {
        std::mem::forget(runtime.enter());
        ENTERED.with(|e| e.set(true));
        return f();
    }
    let _context = runtime.enter();
    f()
}

/// Polls `future` once with `link` current; a panic becomes [`PluginError::Panic`].
fn poll_as<T>(
    link: &HostLink,
    future: &mut CallFuture<T>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, PluginError>> {
    let result = host_link::as_current(link, || {
        catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)))
    });
    match result {
        Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(payload) => Poll::Ready(Err(PluginError::from_panic(payload.as_ref()))),
    }
}

/// A copied request a hook's future borrows, on the heap so that its address never changes.
pub(super) struct HeldRequest(NonNull<Request>);

// SAFETY: a unique owner of a `Request`, which is `Send`.
unsafe impl Send for HeldRequest {}

impl HeldRequest {
    /// Moves `request` to the heap.
    pub(super) fn new(request: Request) -> HeldRequest {
        HeldRequest(NonNull::from(Box::leak(Box::new(request))))
    }

    /// The request, for a future that [`drive`] keeps no longer than this value.
    ///
    /// # Safety
    /// The reference must not be used after this value is dropped.
    pub(super) unsafe fn get(&self) -> &'static Request {
        // SAFETY: the pointer came from `Box::leak` and is freed only in `drop`; the caller keeps
        // the reference no longer than that.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for HeldRequest {
    fn drop(&mut self) {
        // SAFETY: leaked in `new`, freed once, here; no future borrowing it is alive any more.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// A call that did not finish on its first poll, with everything its future borrows.
struct Pending<P, T> {
    // Fields drop in declaration order: the future before the values it borrows.
    future: CallFuture<T>,
    map: fn(T) -> Outcome,
    link: Arc<HostLink>,
    _request: Option<HeldRequest>,
    _plugin: Arc<P>,
}

impl<P, T> Future for Pending<P, T> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        poll_as(&this.link, &mut this.future, cx).map(|result| match result {
            Ok(value) => (this.map)(value),
            Err(panic) => Outcome::Error(panic),
        })
    }
}

/// A call that did not finish on its first poll: what the host's task handle points to (an
/// `Arc` of it, from `Arc::into_raw`, given back to `task_cancel`), shared with the runtime task
/// that polls it once started.
struct TaskCell {
    state: Mutex<TaskState>,
    /// The runtime task, once started: aborted by `task_cancel`, which would otherwise leave it
    /// waiting for a wake-up that the dropped future no longer sends.
    abort: OnceLock<tokio::task::AbortHandle>,
}

enum TaskState {
    /// Made by [`drive`]; not started.
    Pending(TaskFuture),
    /// Started; polled by a task on the library's runtime. (Fields drop in declaration order: the
    /// future, and what it borrows, before the completion reports.)
    Running {
        future: TaskFuture,
        completion: Completion,
    },
    /// Completed or cancelled: the future is gone.
    Over,
}

impl TaskCell {
    /// The state; waits for a poll in progress.
    fn lock(&self) -> MutexGuard<'_, TaskState> {
        // A poll catches the plugin's panics; a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The runtime side of a started task: polls the future under the cell's lock, drops it when it is
/// done, then completes.
struct RunTask(Arc<TaskCell>);

impl Future for RunTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock();
        let TaskState::Running { future, .. } = &mut *state else {
            return Poll::Ready(());
        };
        let Poll::Ready(outcome) = future.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        let TaskState::Running { future, completion } =
            std::mem::replace(&mut *state, TaskState::Over)
        else {
            unreachable!("matched above");
        };
        // The future, and the lent request it may borrow, go before the completion reports.
        drop(future);
        drop(state);
        completion.complete(outcome);
        Poll::Ready(())
    }
}

/// Polls `future` once, inline, in the library's runtime; writes its outcome (through `map`), or a
/// pending task, to `out`.
///
/// # Safety
/// `out` must be valid for the call. `future` may borrow only the plugin value of `this` (the value
/// inside `this.plugin`'s `Arc`) and `*request`. If the call is pending, both are moved into the task
/// with the future and dropped after it; otherwise the future is dropped before this returns.
pub(super) unsafe fn drive<P: Send + Sync + 'static, T: 'static>(
    this: &Instance<P>,
    out: *mut BwOutput,
    future: CallFuture<T>,
    request: Option<HeldRequest>,
    map: fn(T) -> Outcome,
) -> i32 {
    // SAFETY: the host passes a valid, exclusive output for the duration of the call.
    let out = unsafe { &mut *out };
    let runtime = match crate::runtime::LIBRARY.context() {
        Ok(runtime) => runtime,
        Err(error) => {
            drop(future);
            write_output(out, Outcome::Error(error));
            return BW_READY;
        }
    };
    let mut future = Some(future);
    let first = in_runtime(runtime, || {
        let Some(polled) = future.as_mut() else {
            return Poll::Pending;
        };
        let first = poll_as(&this.host, polled, &mut Context::from_waker(Waker::noop()));
        if first.is_ready() {
            // Dropping a future may touch its timers or sockets: do it inside the runtime.
            future = None;
        }
        first
    });
    // A task the plugin spawned while it was polled runs on threads that may not have started.
    crate::runtime::LIBRARY.run_leftover_tasks();
    match (first, future) {
        (Poll::Ready(result), _) => {
            // The future went first: it may borrow `request`.
            drop(request);
            write_output(
                out,
                match result {
                    Ok(value) => map(value),
                    Err(panic) => Outcome::Error(panic),
                },
            );
            BW_READY
        }
        (Poll::Pending, Some(future)) => {
            let pending: TaskFuture = Box::pin(Pending {
                future,
                map,
                link: this.host.clone(),
                _request: request,
                _plugin: this.plugin.clone(),
            });
            *out = BwOutput::empty();
            out.kind = BW_OUT_PENDING;
            let cell = Arc::new(TaskCell {
                state: Mutex::new(TaskState::Pending(pending)),
                abort: OnceLock::new(),
            });
            out.task = Arc::into_raw(cell).cast_mut().cast();
            BW_PENDING
        }
        (Poll::Pending, None) => unreachable!("a future is only taken once it is ready"),
    }
}

/// Runs a synchronous plugin method inline, as [`drive`] polls a future the first time: in the
/// library's runtime, with the instance's link current; writes its outcome (through `map`) to
/// `out`. A panic becomes [`PluginError::Panic`].
///
/// # Safety
/// `out` must be valid for the call.
pub(super) unsafe fn now<P, T>(
    this: &Instance<P>,
    out: *mut BwOutput,
    call: impl FnOnce() -> T,
    map: impl FnOnce(T) -> Outcome,
) -> i32 {
    // SAFETY: the host passes a valid, exclusive output for the duration of the call.
    let out = unsafe { &mut *out };
    let outcome = match crate::runtime::LIBRARY.context() {
        Ok(runtime) => {
            let result = in_runtime(runtime, || {
                host_link::as_current(&this.host, || catch_unwind(AssertUnwindSafe(call)))
            });
            // As in `drive`: a task the method spawned may find no thread running yet.
            crate::runtime::LIBRARY.run_leftover_tasks();
            match result {
                Ok(value) => map(value),
                Err(payload) => Outcome::Error(PluginError::from_panic(payload.as_ref())),
            }
        }
        Err(error) => Outcome::Error(error),
    };
    write_output(out, outcome);
    BW_READY
}

/// Completes a started task exactly once: with its outcome, or as cancelled when dropped unfinished.
struct Completion(Option<BwCompletion>);

// SAFETY: the host's completion may be called from any thread (ABI rule); the context pointer is the
// host's to interpret.
unsafe impl Send for Completion {}

impl Completion {
    fn complete(mut self, outcome: Outcome) {
        if let Some(completion) = self.0.take() {
            let mut output = BwOutput::empty();
            write_output(&mut output, outcome);
            if let Some(complete) = completion.complete {
                // SAFETY: called exactly once (the option is taken) with an output the host now owns.
                unsafe { complete(completion.ctx, &mut output) };
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.0.is_some() {
            Completion(self.0.take()).complete(Outcome::Error(PluginError::Cancelled));
        }
    }
}

/// The vtable's `task_start`: spawns a pending call's task on the library's runtime, which calls
/// `completion` exactly once. Returns the handle for `task_cancel` (the task itself).
///
/// # Safety
/// `task` must be the `task` of a pending output that [`drive`] wrote, not yet passed to
/// [`task_cancel`]. `completion.complete`, if set, must be callable from any thread with
/// `completion.ctx`. (A task started twice reports an error to the second completion.)
pub(super) unsafe extern "C" fn task_start(
    task: *mut c_void,
    completion: BwCompletion,
) -> *mut c_void {
    let completion = Completion(Some(completion));
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `task` came from `Arc::into_raw` in `drive`; the host holds that reference until
        // it passes the handle to `task_cancel`, so the cell is alive here. One more reference is
        // taken for the runtime task.
        let cell = unsafe {
            Arc::increment_strong_count(task.cast::<TaskCell>());
            Arc::from_raw(task.cast::<TaskCell>())
        };
        let mut state = cell.lock();
        if !matches!(*state, TaskState::Pending(_)) {
            return Err(completion);
        }
        let TaskState::Pending(future) = std::mem::replace(&mut *state, TaskState::Over) else {
            unreachable!("matched above");
        };
        // The first task starts the runtime's threads.
        let runtime = match crate::runtime::LIBRARY.spawner() {
            Ok(runtime) => runtime,
            Err(error) => {
                drop(state);
                // Dropping a future may touch its timers or sockets: as in `task_cancel`.
                let _context = crate::runtime::LIBRARY.built().map(|rt| rt.enter());
                drop(future);
                completion.complete(Outcome::Error(error));
                return Ok(());
            }
        };
        *state = TaskState::Running { future, completion };
        drop(state);
        let handle = runtime.spawn(RunTask(cell.clone()));
        let _ = cell.abort.set(handle.abort_handle());
        Ok(())
    }));
    match result {
        Ok(Ok(())) => {}
        // A task started twice: report it to this second completion rather than hang.
        Ok(Err(completion)) => completion.complete(Outcome::Error(PluginError::Internal(
            "task started twice".to_owned(),
        ))),
        // The completion was moved into the closure and dropped during unwinding, which reported
        // the task as cancelled.
        Err(_) => {}
    }
    task
}

/// The vtable's `task_cancel`: frees a task handle. A task still running is stopped: its future is
/// dropped before this returns (after a poll in progress on another thread, if any, has ended),
/// then its completion reports it cancelled. A never-started task's future is dropped.
///
/// # Safety
/// `handle` must be null, a handle [`task_start`] returned, or the `task` of a pending output that
/// [`drive`] wrote and no one started; it must be passed here exactly once and not used afterwards.
pub(super) unsafe extern "C" fn task_cancel(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `handle` is the host's reference from `Arc::into_raw` in `drive`, passed here
        // exactly once.
        let cell = unsafe { Arc::from_raw(handle.cast::<TaskCell>()) };
        let taken = std::mem::replace(&mut *cell.lock(), TaskState::Over);
        if let Some(abort) = cell.abort.get() {
            abort.abort();
        }
        let completion = {
            // Dropping a future may touch its timers or sockets: do it inside the runtime.
            let _context = crate::runtime::LIBRARY.built().map(|rt| rt.enter());
            match taken {
                TaskState::Pending(future) => {
                    drop(future);
                    None
                }
                TaskState::Running { future, completion } => {
                    drop(future);
                    Some(completion)
                }
                TaskState::Over => None,
            }
        };
        // Reported once the future is gone; a completion dropped unreported reports the same.
        if let Some(completion) = completion {
            completion.complete(Outcome::Error(PluginError::Cancelled));
        }
    }));
}

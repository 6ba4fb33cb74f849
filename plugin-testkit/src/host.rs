//! `TestHost`: one plugin started through the real host, called from plain `#[test]` functions.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backworks_plugin_host::sdk::{Hooks, PluginMetadata};
use backworks_plugin_host::{
    CallError, Health, HookAction, HostError, Plugin, PluginHost, Request, Response, inspect,
};

use crate::subject::{Source, Subject};

/// The instance name a plugin under test runs as when its metadata gives none.
const FALLBACK_NAME: &str = "plugin-under-test";

/// A plugin started through the real host — [`PluginHost`], its loader (file checks, metadata,
/// ABI checks) and its call guard — for a test to call.
///
/// The calls are synchronous: the test host owns a tokio runtime, so plain `#[test]` functions
/// work (and so do `#[tokio::test]` ones: the calls then run on a thread of their own). Every
/// call has a deadline (10 s unless [`TestHostBuilder::deadline`] says otherwise): a plugin that
/// hangs fails the call with [`CallError::Timeout`] instead of hanging the test.
///
/// ```no_run
/// use backworks_plugin_testkit::{TestHost, built_library};
/// use backworks_plugin_testkit::sdk::{Request, serde_json::json};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let host = TestHost::library(built_library!())
///     .config(json!({"greeting": "Hi"}))
///     .start()?;
/// let response = host.call(Request::new("GET", "/hello/ana"))?;
/// assert_eq!(response.status, 200);
/// host.shutdown()?;
/// # Ok(()) }
/// ```
pub struct TestHost {
    runtime: Arc<TestRuntime>,
    host: Arc<PluginHost>,
    plugin: Arc<dyn Plugin>,
    name: String,
    deadline: Duration,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("plugin", self.plugin.info())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// How to start a [`TestHost`]: made by [`TestHost::library`] or [`TestHost::command`].
#[derive(Debug, Clone)]
#[must_use = "call .start() to start the plugin"]
pub struct TestHostBuilder {
    subject: Subject,
    config: serde_json::Value,
}

impl TestHost {
    /// A plugin library (`.so`, `.dylib`, `.dll`), loaded in this process by default.
    pub fn library(path: impl AsRef<Path>) -> TestHostBuilder {
        TestHostBuilder {
            subject: Subject::library(path.as_ref()),
            config: serde_json::Value::Null,
        }
    }

    /// A plugin program speaking the wire protocol (`TestHost::command("python3", ["plugin.py"])`),
    /// run in a child process.
    pub fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> TestHostBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let text = |s: &OsStr| s.to_string_lossy().into_owned();
        TestHostBuilder {
            subject: Subject::command(
                text(program.as_ref()),
                args.into_iter().map(|a| text(a.as_ref())).collect(),
            ),
            config: serde_json::Value::Null,
        }
    }

    /// Starts `subject` as the host would, on `runtime`: load (or spawn), check, initialize with
    /// `config`.
    pub(crate) fn start_on(
        runtime: Arc<TestRuntime>,
        subject: &Subject,
        config: serde_json::Value,
    ) -> Result<TestHost, HostError> {
        let (name, hooks) = identity(subject);
        let spec = subject.spec(&name, config, hooks)?;
        let host = Arc::new(PluginHost::new());
        let deadline = subject.deadline;
        let started = {
            let host = host.clone();
            block_on(&runtime, async move {
                tokio::time::timeout(deadline, host.start(&spec)).await
            })
        };
        let plugin = match started {
            Ok(Ok(plugin)) => plugin,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(HostError::Start {
                    plugin: name,
                    source: CallError::Timeout(format!(
                        "initialize did not finish within {}",
                        crate::report::seconds(deadline)
                    )),
                });
            }
        };
        Ok(TestHost {
            runtime,
            host,
            plugin,
            name,
            deadline,
            shut_down: AtomicBool::new(false),
        })
    }

    /// Runs `future` to its end on the test host's runtime, within the deadline.
    fn within<T: Send>(
        &self,
        future: impl Future<Output = Result<T, CallError>> + Send,
    ) -> Result<T, CallError> {
        let deadline = self.deadline;
        block_on(self.runtime(), async move {
            match tokio::time::timeout(deadline, future).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Timeout(format!(
                    "no answer within {}",
                    crate::report::seconds(deadline)
                ))),
            }
        })
    }

    /// Sends `request` to the plugin's endpoint handler and waits for its response.
    pub fn call(&self, request: Request) -> Result<Response, CallError> {
        self.within(self.plugin.handle(request))
    }

    /// Calls the plugin's `before_request` hook.
    pub fn before_request(&self, request: &Request) -> Result<HookAction, CallError> {
        self.within(self.plugin.before_request(request))
    }

    /// Calls the plugin's `after_response` hook: the response the plugin makes of `response`.
    pub fn after_response(
        &self,
        request: &Request,
        response: Response,
    ) -> Result<Response, CallError> {
        self.within(async move { self.plugin.after_response(request, &response).await })
    }

    /// Asks the plugin for its health; a plugin that does not answer within the deadline is
    /// reported [`Health::Unhealthy`].
    pub fn health(&self) -> Health {
        self.within(async { Ok(self.plugin.health_check().await) })
            .unwrap_or_else(|error| Health::Unhealthy(error.to_string()))
    }

    /// Shuts the plugin down; no call should follow. Also done when the test host is dropped.
    pub fn shutdown(&self) -> Result<(), CallError> {
        self.shut_down.store(true, Ordering::SeqCst);
        self.within(self.plugin.shutdown())
    }

    /// The plugin's metadata: from its file's metadata section, or a command's manifest.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.plugin.info().metadata
    }

    /// The plugin behind the host's call guard, for async tests that `.await` its calls
    /// themselves (any tokio runtime will do). No deadline applies but the guard's.
    pub fn plugin(&self) -> Arc<dyn Plugin> {
        self.plugin.clone()
    }

    /// The pid of the plugin's child process, when it runs in one.
    pub fn child_pid(&self) -> Option<u32> {
        self.host
            .statuses()
            .into_iter()
            .find(|s| s.name == self.name)
            .and_then(|s| s.supervision)
            .and_then(|s| s.pid)
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Records that the plugin was shut down by other means (the battery's `shutdown` check).
    pub(crate) fn mark_shut_down(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn runtime(&self) -> &TestRuntime {
        &self.runtime
    }
}

impl Drop for TestHost {
    /// Shuts the plugin down unless that was done (within the deadline); a child process ends
    /// with its plugin, dropped after this.
    fn drop(&mut self) {
        if !self.shut_down.swap(true, Ordering::SeqCst) {
            let (host, deadline) = (self.host.clone(), self.deadline);
            block_on(&self.runtime, async move {
                let _ = tokio::time::timeout(deadline, host.shutdown()).await;
            });
        }
    }
}

/// The tokio runtime of a test host or a battery. Dropped without waiting for its tasks, which
/// is allowed in async contexts too (a test host dropped in a `#[tokio::test]`).
#[derive(Debug)]
pub(crate) struct TestRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for TestRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl TestHostBuilder {
    /// The config handed to `initialize` (JSON, as `backworks.yaml`'s `config:` becomes). Default
    /// `null`, as for a plugin entry without one.
    pub fn config(mut self, config: serde_json::Value) -> TestHostBuilder {
        self.config = config;
        self
    }

    /// Runs the library in a child process, as `isolation: process` does. The child is the
    /// `backworks` executable (see [`runner`](Self::runner)).
    pub fn isolated(mut self) -> TestHostBuilder {
        self.subject.isolated = true;
        self
    }

    /// The `backworks` executable that runs children. Default: `$BACKWORKS_BIN`, else
    /// `backworks` on `PATH`; a command plugin without either is started directly.
    pub fn runner(mut self, backworks: impl Into<PathBuf>) -> TestHostBuilder {
        self.subject.runner = Some(backworks.into());
        self
    }

    /// The most any one call may take (default 10 s).
    pub fn deadline(mut self, deadline: Duration) -> TestHostBuilder {
        self.subject.deadline = deadline;
        self
    }

    /// Loads (or spawns), checks and initializes the plugin.
    pub fn start(self) -> Result<TestHost, HostError> {
        TestHost::start_on(new_runtime(), &self.subject, self.config)
    }
}

/// The runtime a test host (or a battery) runs its calls on.
pub(crate) fn new_runtime() -> Arc<TestRuntime> {
    Arc::new(TestRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backworks-testkit")
            .enable_all()
            .build()
            .expect("the testkit cannot start a tokio runtime"),
    )))
}

/// Runs `future` on `runtime` to its end; from inside another runtime (a `#[tokio::test]`), on a
/// thread of its own, since a runtime cannot be blocked on from within one.
pub(crate) fn block_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The instance name and the hooks to subscribe to: a library's from its metadata section (read,
/// never run), a command's are known only from its manifest.
fn identity(subject: &Subject) -> (String, Hooks) {
    match &subject.source {
        Source::Library(path) => match inspect(path) {
            Ok(inspection) if !inspection.metadata.name.is_empty() => (
                inspection.metadata.name.clone(),
                inspection.metadata.hooks.unwrap_or(Hooks::NONE),
            ),
            _ => (FALLBACK_NAME.to_owned(), Hooks::NONE),
        },
        Source::Command(_) => (FALLBACK_NAME.to_owned(), Hooks::NONE),
    }
}

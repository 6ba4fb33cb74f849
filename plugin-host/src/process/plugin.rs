//! [`ProcessPlugin`]: a plugin running in a supervised child process, behind the host's
//! [`Plugin`] trait like any other.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backworks_plugin_sdk::{Health, HookAction, PluginMetadata, Request, Response};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::live::{Live, start_child};
use super::restart::format_duration;
use super::spawn::Launch;
use super::status::{ChildState, Containment, SupervisionSnapshot};
use super::supervisor::{Shared, Slot, supervise};
use crate::CallError;
use crate::HostError;
use crate::LoadPolicy;
use crate::lifecycle::Lifecycle;
use crate::loader::{ChildCopy, Origin, Runs};
use crate::plugin::PluginSource;
use crate::plugin::{Plugin, PluginInfo, PluginKind};
use crate::policy::ProcessSettings;
use crate::protocol::ClientError;

/// How long a child has to exit on its own after `shutdown` before its group is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Unhealthy health-check answers in a row after which the child is restarted.
const UNHEALTHY_LIMIT: u32 = 3;

/// A plugin running in a child process, supervised: crashes cost the calls in flight (502), the
/// child is restarted with backoff, and a crash loop ends in [`PluginState::Error`] with every
/// call answered 503.
///
/// Create it with [`ProcessPlugin::start`], which starts the child and reads its manifest; then
/// [`initialize`](Plugin::initialize) it once, which sends `init` and starts the supervision. A
/// restarted child is initialized with that same config by the supervisor.
///
/// [`PluginState::Error`]: crate::PluginState::Error
pub struct ProcessPlugin {
    info: PluginInfo,
    /// The library file the child runs a copy of, when it runs one.
    origin: Option<Origin>,
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ProcessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPlugin")
            .field("info", &self.info)
            .field("supervision", &self.supervision())
            .finish_non_exhaustive()
    }
}

impl ProcessPlugin {
    /// Starts plugin `name` from `source` in a child process and reads its manifest (within
    /// `settings.handshake_timeout`). A library is checked first under the default
    /// [`LoadPolicy`], as for loading in process ([`start_checked`](Self::start_checked)); a
    /// command is run as configured. Crashes and restarts are recorded on `lifecycle`.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(
        name: &str,
        source: &PluginSource,
        settings: &ProcessSettings,
        lifecycle: Arc<Lifecycle>,
    ) -> Result<ProcessPlugin, HostError> {
        Self::start_checked(name, source, settings, lifecycle, &LoadPolicy::default()).await
    }

    /// [`start`](Self::start) with a library checked under `policy`: its file is checked and read
    /// once in the host, the bytes verified and kept in a private copy, and the child (at every
    /// restart too) loads exactly those bytes from that copy, checking their hash.
    pub async fn start_checked(
        name: &str,
        source: &PluginSource,
        settings: &ProcessSettings,
        lifecycle: Arc<Lifecycle>,
        policy: &LoadPolicy,
    ) -> Result<ProcessPlugin, HostError> {
        let checked = match source {
            PluginSource::Library(path) => {
                let (path, policy) = (path.clone(), policy.clone());
                let checked = tokio::task::spawn_blocking(move || {
                    crate::loader::check_and_copy(&path, &policy, Runs::InChild)
                })
                .await
                .map_err(|e| HostError::Thread {
                    plugin: name.to_owned(),
                    what: "file check",
                    reason: e.to_string(),
                })?;
                Some(checked?)
            }
            _ => None,
        };
        let mut launch =
            Launch::new(name, source, settings).map_err(|source| HostError::Spawn {
                plugin: name.to_owned(),
                command: match &settings.runner {
                    Some(runner) => runner.join(" "),
                    None => "the plugin runner".to_owned(),
                },
                source,
            })?;
        let (file_metadata, origin) = match checked {
            Some((metadata, origin)) => {
                launch.read_copy(&ChildCopy::of(origin.copy()));
                (Some(metadata), Some(origin))
            }
            None => (None, None),
        };
        let command_line = launch.command_line();
        let live = start_child(name, &launch, settings, None)
            .await
            .map_err(|e| e.into_host_error(name))?;
        tracing::info!(
            plugin = name,
            pid = live.pid,
            runner_pid = live.runner_pid,
            containment = launch.containment.as_str(),
            "plugin child started; its descendants are contained by {}",
            match launch.containment {
                Containment::Subreaper => "a subreaper runner",
                Containment::ProcessGroup => "its process group only",
            }
        );
        let shared = Arc::new(Shared::new(name, launch, settings.clone(), lifecycle));
        shared.begin(live.clone());
        let manifest = &live.manifest;
        let metadata = file_metadata.unwrap_or_else(|| PluginMetadata {
            abi_major: 0,
            abi_minor: 0,
            sdk_version: String::new(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            panic_unwind: true,
            hooks: Some(manifest.features.hooks()),
            config_schema: None,
        });
        Ok(ProcessPlugin {
            info: PluginInfo {
                name: name.to_owned(),
                kind: PluginKind::Process(command_line),
                metadata,
                // The child reports it: a library's runner from its vtable or metadata, a command
                // from its own manifest.
                config_schema: manifest.config_schema.clone().map(Arc::new),
            },
            origin,
            shared,
            supervisor: Mutex::new(None),
        })
    }

    /// The library file the child runs a copy of, when it runs one.
    pub(crate) fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// The supervision counters and the child's state, for the admin API.
    pub fn supervision(&self) -> SupervisionSnapshot {
        let (state, live) = match self.shared.slot() {
            Slot::Starting(live) => (ChildState::Starting, Some(live)),
            Slot::Running(live) => (ChildState::Running, Some(live)),
            Slot::Restarting => (ChildState::Restarting, None),
            Slot::GaveUp(_) => (ChildState::GaveUp, None),
            Slot::Stopped => (ChildState::Stopped, None),
        };
        SupervisionSnapshot {
            state,
            pid: live.as_ref().map(|live| live.pid),
            runner_pid: live
                .as_ref()
                .filter(|live| live.runner_pid != live.pid)
                .map(|live| live.runner_pid),
            containment: self.shared.launch.containment,
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            crashes: self.shared.crashes.load(Ordering::Relaxed),
            last_crash: self
                .shared
                .last_crash
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Runs one call on the live child. If the call is dropped before it finishes (a timeout),
    /// the child is probed; if its connection dies, the call answers 502 with why the child died.
    async fn call<T, F>(&self, call: impl FnOnce(Arc<Live>) -> F) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, ClientError>>,
    {
        let live = self.shared.live()?;
        let mut abandoned = Abandoned {
            shared: &self.shared,
            live: &live,
            armed: true,
        };
        let result = call(live.clone()).await;
        abandoned.armed = false;
        match result {
            Ok(value) => Ok(value),
            Err(ClientError::Closed(reason)) => {
                Err(CallError::Crashed(live.crash_detail(&reason).await))
            }
            Err(error @ ClientError::Overloaded(_)) => {
                // The child is not reading its input: find out whether it reads at all.
                probe(&self.shared, &live);
                Err(error.into())
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// Armed while a call waits for its answer: dropped armed (the caller gave up, typically at its
/// deadline), it has the child probed, so one that stopped answering is found and restarted.
struct Abandoned<'a> {
    shared: &'a Arc<Shared>,
    live: &'a Arc<Live>,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            probe(self.shared, self.live);
        }
    }
}

/// Sends the child a health check in the background, unless one is running; a child that does
/// not answer within the probe deadline is killed (and restarted by the supervisor). So is one
/// whose input is full (the check cannot even be sent) and that reads none of it within the
/// deadline.
fn probe(shared: &Arc<Shared>, live: &Arc<Live>) {
    if live.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        live.probing.store(false, Ordering::Release);
        return;
    };
    let (live, deadline) = (live.clone(), shared.probe_timeout());
    runtime.spawn(async move {
        let read_before = live.client.bytes_written();
        // Any answer, even an error, shows the child is alive.
        let call = live
            .client
            .call("health_check", Value::Object(Default::default()));
        match tokio::time::timeout(deadline, call).await {
            Err(_) => live.kill(unresponsive(deadline)),
            Ok(Err(ClientError::Overloaded(_))) => {
                tokio::time::sleep(deadline).await;
                if live.client.bytes_written() == read_before {
                    live.kill(format!(
                        "unresponsive: read none of its input within {}",
                        format_duration(deadline)
                    ));
                }
            }
            Ok(_) => {}
        }
        live.probing.store(false, Ordering::Release);
    });
}

fn unresponsive(deadline: Duration) -> String {
    format!(
        "unresponsive: no answer to a health check within {}",
        format_duration(deadline)
    )
}

impl Drop for ProcessPlugin {
    fn drop(&mut self) {
        if let Some(live) = self.shared.stop() {
            live.kill_quietly();
        }
        if let Some(task) = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[async_trait]
impl Plugin for ProcessPlugin {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Sends `init` (within the handshake timeout) and starts supervising the child. A failure
    /// kills the child.
    async fn initialize(&self, config: &Value) -> Result<(), CallError> {
        let Some(live) = self.shared.starting() else {
            return Err(CallError::Unavailable(
                "a process plugin is initialized once, after it started".into(),
            ));
        };
        let timeout = self.shared.settings.handshake_timeout;
        let init = live.client.init(&self.shared.name, config.clone());
        let result = match tokio::time::timeout(timeout, init).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(live.failed_handshake(error).await),
            Err(_) => {
                live.kill_quietly();
                Err(CallError::Timeout(format!(
                    "no answer to `init` within {}",
                    format_duration(timeout)
                )))
            }
        };
        if let Err(error) = result {
            self.shared.stop();
            return Err(error);
        }
        let _ = self.shared.config.set(config.clone());
        if !self.shared.set_slot(Slot::Running(live.clone())) {
            live.kill_quietly();
            return Err(CallError::Unavailable(format!(
                "plugin `{}` was stopped",
                self.shared.name
            )));
        }
        let task = tokio::spawn(supervise(self.shared.clone(), live));
        *self.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    async fn handle(&self, request: Request) -> Result<Response, CallError> {
        self.call(|live| async move { live.client.handle(&request).await })
            .await
    }

    async fn before_request(&self, request: &Request) -> Result<HookAction, CallError> {
        self.call(|live| async move { live.client.before_request(request).await })
            .await
    }

    async fn after_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<Response, CallError> {
        self.call(|live| async move { live.client.after_response(request, response).await })
            .await
    }

    /// Asks the child within the probe deadline. No answer kills it (it restarts); an
    /// `unhealthy` answer `UNHEALTHY_LIMIT` times in a row restarts it too.
    async fn health_check(&self) -> Health {
        let live = match self.shared.live() {
            Ok(live) => live,
            Err(error) => return Health::Unhealthy(error.message().to_owned()),
        };
        let deadline = self.shared.probe_timeout();
        let answer = if live.manifest.features.health_check {
            tokio::time::timeout(deadline, live.client.health_check()).await
        } else {
            // It does not report its health; any answer shows it is alive.
            let call = live
                .client
                .call("health_check", Value::Object(Default::default()));
            tokio::time::timeout(deadline, call)
                .await
                .map(|answer| match answer {
                    Err(error @ (ClientError::Closed(_) | ClientError::Overloaded(_))) => {
                        Err(error)
                    }
                    _ => Ok(Health::Healthy),
                })
        };
        let health = match answer {
            Err(_) => {
                let reason = unresponsive(deadline);
                live.kill(reason.clone());
                return Health::Unhealthy(reason);
            }
            Ok(Err(ClientError::Closed(reason))) => {
                return Health::Unhealthy(live.crash_detail(&reason).await);
            }
            Ok(Err(error @ ClientError::Overloaded(_))) => {
                probe(&self.shared, &live);
                return Health::Unhealthy(error.to_string());
            }
            Ok(Err(error)) => Health::Unhealthy(error.to_string()),
            Ok(Ok(health)) => health,
        };
        if let Health::Unhealthy(why) = &health {
            let streak = live.unhealthy.fetch_add(1, Ordering::AcqRel) + 1;
            if streak >= UNHEALTHY_LIMIT {
                live.kill(format!("unhealthy {streak} times in a row: {why}"));
            }
        } else {
            live.unhealthy.store(0, Ordering::Release);
        }
        health
    }

    /// Sends `shutdown`, closes the child's input, gives it `SHUTDOWN_GRACE` (two seconds) to exit, then
    /// kills its process group. No restart follows.
    async fn shutdown(&self) -> Result<(), CallError> {
        let Some(live) = self.shared.stop() else {
            return Ok(());
        };
        let timeout = self.shared.settings.handshake_timeout;
        let answer = tokio::time::timeout(timeout, live.client.shutdown()).await;
        live.client.close();
        live.wait_exit(SHUTDOWN_GRACE).await;
        live.kill_quietly();
        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(CallError::Timeout(format!(
                "no answer to `shutdown` within {}",
                format_duration(timeout)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use serde_json::json;

    use super::*;
    use crate::lifecycle::{EventKind, PluginState};
    use crate::policy::RestartPolicy;
    use backworks_plugin_sdk::PluginError;

    /// The protocol-speaking test double, `tests/fixtures/process/fake.py` (standard library
    /// only): `sys.argv[1]` may be `v2` (claims protocol 2.0); request paths choose what it does.
    const FAKE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/process/fake.py"
    );

    fn settings() -> ProcessSettings {
        ProcessSettings {
            // `env -- COMMAND`: runs the command without the `__plugin-child` set-up, which needs
            // an executable that calls `child_main_if_requested` (the test harness does not).
            runner: Some(vec!["env".into()]),
            restart: RestartPolicy {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
                max_restarts: 5,
                window: Duration::from_secs(600),
            },
            ..ProcessSettings::default()
        }
    }

    fn fake(args: &[&str]) -> PluginSource {
        let mut argv = vec!["python3".to_owned(), FAKE.to_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        PluginSource::Command(argv)
    }

    async fn started(settings: ProcessSettings, config: Value) -> (ProcessPlugin, Arc<Lifecycle>) {
        let lifecycle = Arc::new(Lifecycle::new("p", PluginState::Loading));
        let plugin = ProcessPlugin::start("p", &fake(&[]), &settings, lifecycle.clone())
            .await
            .unwrap();
        plugin.initialize(&config).await.unwrap();
        (plugin, lifecycle)
    }

    /// Waits (up to a generous deadline, never asserting speed) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let wait = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .is_err()
        {
            panic!("timed out waiting until {what}");
        }
    }

    fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    fn events(lifecycle: &Lifecycle, kind: EventKind) -> Vec<String> {
        lifecycle
            .history()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }

    #[tokio::test]
    async fn serves_calls_through_the_child() {
        let (plugin, _) = started(settings(), Value::Null).await;
        assert_eq!(plugin.info().kind.as_str(), "process");
        assert_eq!(plugin.info().metadata.name, "fake");
        assert_eq!(plugin.info().metadata.description, "test double");

        let mut request = Request::new("POST", "/echo");
        request.body = (0..=255u8).collect();
        let response = plugin.handle(request).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, (0..=255u8).collect::<Vec<_>>());
        assert_eq!(response.headers.get("x-path"), Some("/echo"));
        assert_eq!(
            plugin.handle(get("/missing")).await,
            Err(PluginError::NotFound("no such thing".into()).into())
        );
        // Hooks the manifest does not list pass through without a round trip.
        assert_eq!(
            plugin.before_request(&get("/x")).await,
            Ok(HookAction::Continue)
        );
        assert_eq!(plugin.health_check().await, Health::Healthy);

        let snapshot = plugin.supervision();
        assert_eq!(snapshot.state, ChildState::Running);
        assert!(snapshot.pid.is_some());
        assert_eq!((snapshot.restarts, snapshot.crashes), (0, 0));
    }

    #[tokio::test]
    async fn a_crash_answers_502_with_the_signal_and_the_child_restarts() {
        let (plugin, lifecycle) = started(settings(), Value::Null).await;
        let first_pid = plugin.supervision().pid.unwrap();
        let error = plugin.handle(get("/segv")).await.unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(
            matches!(&error, CallError::Crashed(m) if m.starts_with("child exited with signal 11 (SIGSEGV)")),
            "{error}"
        );
        eventually("the child is restarted", || {
            plugin.supervision().state == ChildState::Running && plugin.supervision().restarts == 1
        })
        .await;
        let snapshot = plugin.supervision();
        assert_ne!(snapshot.pid, Some(first_pid));
        assert_eq!(snapshot.crashes, 1);
        assert!(snapshot.last_crash.unwrap().contains("SIGSEGV"));
        assert_eq!(plugin.handle(get("/again")).await.unwrap().status, 200);
        assert_eq!(
            lifecycle.state(),
            PluginState::Loading,
            "the registry owns the state"
        );
        let crashed = events(&lifecycle, EventKind::Crashed);
        assert_eq!(crashed.len(), 1);
        assert!(
            crashed[0].contains(&format!("(pid {first_pid})")),
            "{crashed:?}"
        );
        assert_eq!(events(&lifecycle, EventKind::Restarted).len(), 1);
    }

    #[tokio::test]
    async fn calls_while_the_child_is_down_answer_503_at_once() {
        let mut settings = settings();
        settings.restart.initial_backoff = Duration::from_secs(3600);
        settings.restart.max_backoff = Duration::from_secs(3600);
        let (plugin, _) = started(settings, Value::Null).await;
        let error = plugin.handle(get("/exit")).await.unwrap_err();
        assert_eq!(
            error,
            CallError::Crashed("child exited with status 1".into())
        );
        assert_eq!(plugin.supervision().state, ChildState::Restarting);
        let error = plugin.handle(get("/echo")).await.unwrap_err();
        assert_eq!(error.status(), 503);
        assert_eq!(error.to_string(), "unavailable: plugin `p` is restarting");
        assert_eq!(
            plugin.health_check().await,
            Health::Unhealthy("plugin `p` is restarting".into())
        );
    }

    #[tokio::test]
    async fn a_crash_loop_gives_up_and_answers_503() {
        let mut settings = settings();
        settings.restart.max_restarts = 3;
        let (plugin, lifecycle) = started(settings, json!({"die_after_init": true})).await;
        eventually("the supervisor gives up", || {
            plugin.supervision().state == ChildState::GaveUp
        })
        .await;
        let reason = "crashed 3 times in 600s; not restarting";
        assert_eq!(lifecycle.state(), PluginState::Error(reason.into()));
        assert_eq!(events(&lifecycle, EventKind::GaveUp), [reason]);
        let snapshot = plugin.supervision();
        assert_eq!((snapshot.crashes, snapshot.restarts), (3, 2));
        assert_eq!(
            snapshot.last_crash.as_deref(),
            Some("child exited with status 3")
        );
        let error = plugin.handle(get("/echo")).await.unwrap_err();
        assert_eq!(error.status(), 503);
        assert_eq!(
            error.to_string(),
            format!("unavailable: plugin `p` {reason}")
        );
    }

    #[tokio::test]
    async fn garbage_on_stdout_is_a_crash() {
        let (plugin, lifecycle) = started(settings(), Value::Null).await;
        let error = plugin.handle(get("/garbage")).await.unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(
            error
                .to_string()
                .starts_with("plugin crashed: protocol violation: "),
            "{error}"
        );
        eventually("the child is restarted", || {
            plugin.supervision().restarts == 1
        })
        .await;
        assert!(events(&lifecycle, EventKind::Crashed)[0].contains("protocol violation"));
    }

    #[tokio::test]
    async fn a_frozen_child_is_killed_when_a_call_is_abandoned() {
        let mut settings = settings();
        settings.handshake_timeout = Duration::from_secs(5);
        let (plugin, lifecycle) = started(settings, Value::Null).await;
        // The caller's deadline (the call guard's, in the server) drops the call.
        let call = tokio::time::timeout(Duration::from_millis(300), plugin.handle(get("/freeze")));
        assert!(call.await.is_err());
        eventually("the child is killed and restarted", || {
            plugin.supervision().restarts == 1
        })
        .await;
        assert_eq!(
            plugin.supervision().last_crash.as_deref(),
            Some("unresponsive: no answer to a health check within 5s")
        );
        assert_eq!(events(&lifecycle, EventKind::Crashed).len(), 1);
        assert_eq!(plugin.handle(get("/echo")).await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn an_abandoned_call_on_a_live_child_does_not_restart_it() {
        let (plugin, _) = started(settings(), Value::Null).await;
        let call = tokio::time::timeout(Duration::from_millis(100), plugin.handle(get("/hang")));
        assert!(call.await.is_err());
        let Slot::Running(live) = plugin.shared.slot() else {
            panic!("not running")
        };
        eventually("the probe is answered", || {
            !live.probing.load(Ordering::Acquire)
        })
        .await;
        assert_eq!(plugin.supervision().crashes, 0);
        assert_eq!(plugin.handle(get("/echo")).await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn unhealthy_three_times_in_a_row_restarts_the_child() {
        let (plugin, lifecycle) = started(settings(), Value::Null).await;
        assert_eq!(plugin.handle(get("/sick")).await.unwrap().status, 204);
        for _ in 0..UNHEALTHY_LIMIT {
            assert_eq!(
                plugin.health_check().await,
                Health::Unhealthy("sick".into())
            );
        }
        eventually("the child is restarted", || {
            plugin.supervision().restarts == 1
        })
        .await;
        assert_eq!(
            events(&lifecycle, EventKind::Crashed)[0],
            format!(
                "unhealthy 3 times in a row: sick (pid {})",
                lifecycle_pid(&lifecycle)
            )
        );
        assert_eq!(plugin.health_check().await, Health::Healthy);
    }

    /// The pid named in the first crash event.
    fn lifecycle_pid(lifecycle: &Lifecycle) -> String {
        let crashed = &events(lifecycle, EventKind::Crashed)[0];
        crashed
            .rsplit_once("(pid ")
            .map(|(_, pid)| pid.trim_end_matches(')').to_owned())
            .unwrap()
    }

    #[tokio::test]
    async fn a_child_that_never_answers_the_handshake_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut settings = settings();
        settings.handshake_timeout = Duration::from_millis(500);
        let script = format!("echo $$ > {}; exec sleep 600", pid_file.display());
        let source = PluginSource::Command(vec!["sh".into(), "-c".into(), script]);
        let lifecycle = Arc::new(Lifecycle::new("p", PluginState::Loading));
        let error = ProcessPlugin::start("p", &source, &settings, lifecycle)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "plugin `p` failed to start: timed out: no answer to the handshake within 500ms"
        );
        // On a loaded machine the group may be killed before `sh` wrote its pid: then there is
        // no child left to look for.
        let pid = std::fs::read_to_string(&pid_file).ok();
        if let Some(pid) = pid.and_then(|pid| pid.trim().parse::<i32>().ok()) {
            eventually("the child is gone", || {
                !super::super::spawn::tests::alive(pid)
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_child_that_dies_before_the_handshake_is_explained_by_its_last_log_line() {
        let source = PluginSource::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo 'ERROR: cannot open report.py' >&2; exit 2".into(),
        ]);
        let lifecycle = Arc::new(Lifecycle::new("p", PluginState::Loading));
        let error = ProcessPlugin::start("p", &source, &settings(), lifecycle)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "plugin `p` failed to start: plugin crashed: child exited with status 2 during the \
             handshake; last log line: ERROR: cannot open report.py"
        );
    }

    #[tokio::test]
    async fn an_incompatible_protocol_is_refused() {
        let lifecycle = Arc::new(Lifecycle::new("p", PluginState::Loading));
        let error = ProcessPlugin::start("p", &fake(&["v2"]), &settings(), lifecycle)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "plugin `p` failed to start: plugin speaks protocol 2.0; this host speaks 1.0 (the \
             major versions must be equal)"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_the_child_for_good() {
        let (plugin, lifecycle) = started(settings(), Value::Null).await;
        let pid = plugin.supervision().pid.unwrap() as i32;
        plugin.shutdown().await.unwrap();
        assert_eq!(plugin.supervision().state, ChildState::Stopped);
        eventually("the child is gone", || {
            !super::super::spawn::tests::alive(pid)
        })
        .await;
        let error = plugin.handle(get("/echo")).await.unwrap_err();
        assert_eq!(error.to_string(), "unavailable: plugin `p` is stopped");
        assert!(events(&lifecycle, EventKind::Crashed).is_empty());
    }

    #[tokio::test]
    async fn dropping_the_plugin_kills_the_child() {
        let (plugin, _) = started(settings(), Value::Null).await;
        let pid = plugin.supervision().pid.unwrap() as i32;
        drop(plugin);
        eventually("the child is gone", || {
            !super::super::spawn::tests::alive(pid)
        })
        .await;
    }

    #[tokio::test]
    async fn stderr_lines_reach_the_host_log_at_their_level_with_the_plugin_name() {
        let lines = Arc::new(StdMutex::new(Vec::new()));
        let _guard = tracing::subscriber::set_default(Capture(lines.clone()));
        let (plugin, _) = started(settings(), Value::Null).await;
        plugin.handle(get("/logged")).await.unwrap();
        let wanted = (
            tracing::Level::WARN,
            "p".to_owned(),
            "echoing /logged".to_owned(),
        );
        eventually("the log line arrives", || {
            lines.lock().unwrap().contains(&wanted)
        })
        .await;
    }

    /// Records `(level, plugin, message)` of every event with a `plugin` field.
    struct Capture(Arc<StdMutex<Vec<(tracing::Level, String, String)>>>);

    #[derive(Default)]
    struct Fields {
        plugin: String,
        message: String,
    }

    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == "plugin" {
                self.plugin = value.to_owned();
            }
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let level = *event.metadata().level();
            self.0
                .lock()
                .unwrap()
                .push((level, fields.plugin, fields.message));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}

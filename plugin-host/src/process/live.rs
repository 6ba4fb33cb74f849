//! One live child: starting it and its handshake, its protocol client, process group and exit,
//! and the one-line description of its death that calls in flight answer 502 with.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::exit::Exit;
use super::reaper::children_of;
use super::restart::format_duration;
use super::spawn::{GroupGuard, Launch, spawn};
use super::status::Containment;
use super::stderr::{self, LastLine};
use crate::policy::ProcessSettings;
use crate::protocol::{
    Client, ClientError, CloseReason, LogRecord, Manifest, SpinRead, VersionError,
};
use crate::{CallError, HostError};

/// How long a dead child has to report its exit status before the crash is described without it.
pub(crate) const EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long the log stream of a child that failed its handshake may take to end, so its last line
/// can explain the failure.
const LOG_WAIT: Duration = Duration::from_millis(500);

/// One running child.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) client: Client,
    /// The plugin process's pid (the runner's, until the handshake shows the plugin runs).
    pub(crate) pid: u32,
    /// The runner's pid: the host's child.
    pub(crate) runner_pid: u32,
    pub(crate) manifest: Manifest,
    group: Arc<GroupGuard>,
    exit: watch::Receiver<Option<Exit>>,
    /// Why it died, once the supervisor knows; calls that lost their answer wait for it.
    crash: watch::Sender<Option<String>>,
    /// Why the host killed it, if it did (unresponsive, unhealthy).
    kill_reason: Mutex<Option<String>>,
    last_line: LastLine,
    forwarder: Mutex<Option<JoinHandle<()>>>,
    /// A liveness probe is running.
    pub(crate) probing: AtomicBool,
    /// Unhealthy health-check answers in a row.
    pub(crate) unhealthy: AtomicU32,
}

impl Live {
    /// Kills the child's process group; `reason` becomes the crash detail.
    pub(crate) fn kill(&self, reason: String) {
        let mut slot = self.kill_reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.group.0.kill();
    }

    /// Kills the process group without a reason (shutdown, failed start).
    pub(crate) fn kill_quietly(&self) {
        self.group.0.kill();
    }

    /// Resolves once the child has exited.
    pub(crate) async fn exited(&self) {
        let mut exit = self.exit.clone();
        let _ = exit.wait_for(Option::is_some).await;
    }

    /// Waits up to `limit` for the child to exit.
    pub(crate) async fn wait_exit(&self, limit: Duration) -> Option<Exit> {
        let mut exit = self.exit.clone();
        let waited = tokio::time::timeout(limit, exit.wait_for(Option::is_some)).await;
        waited.ok().and_then(|r| r.ok().and_then(|e| *e))
    }

    /// Tells the calls waiting in [`crash_detail`](Live::crash_detail) why the child died.
    pub(crate) fn publish_crash(&self, detail: &str) {
        self.crash.send_replace(Some(detail.to_owned()));
    }

    /// Why the child died, for a call whose connection closed with `reason`: the supervisor's
    /// description once it has one (quickly: it needs at most the exit status).
    pub(crate) async fn crash_detail(&self, reason: &CloseReason) -> String {
        let mut crash = self.crash.subscribe();
        let waited = tokio::time::timeout(EXIT_WAIT * 2, crash.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(detail)) => detail.clone().unwrap_or_default(),
            _ => reason.to_string(),
        }
    }

    /// Describes the death of a child whose connection closed with `reason`, killing what is left.
    pub(crate) async fn describe_death(&self, reason: &CloseReason) -> String {
        let killed = self
            .kill_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(killed) = killed {
            return killed;
        }
        match reason {
            CloseReason::Violation(_) => {
                self.group.0.kill();
                reason.to_string()
            }
            _ => match self.wait_exit(EXIT_WAIT).await {
                Some(exit) => exit.to_string(),
                None => {
                    self.group.0.kill();
                    format!("{reason} without exiting; killed")
                }
            },
        }
    }

    /// The last line the child logged, once its log stream ended (waits up to [`LOG_WAIT`]).
    async fn last_log_line(&self) -> Option<String> {
        let forwarder = self
            .forwarder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(forwarder) = forwarder {
            let _ = tokio::time::timeout(LOG_WAIT, forwarder).await;
        }
        self.last_line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The runner could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin speaks another major version of the protocol.
    #[error(transparent)]
    Protocol(#[from] VersionError),
    /// The handshake failed: the child died, broke the protocol, refused `init` or did not
    /// answer in time.
    #[error(transparent)]
    Handshake(#[from] CallError),
}

impl StartError {
    /// The host's error for plugin `plugin` that failed to start this way.
    pub(crate) fn into_host_error(self, plugin: &str) -> HostError {
        let plugin = plugin.to_owned();
        match self {
            StartError::Spawn { command, source } => HostError::Spawn {
                plugin,
                command,
                source,
            },
            StartError::Protocol(source) => HostError::ProtocolMismatch { plugin, source },
            StartError::Handshake(source) => HostError::Start { plugin, source },
        }
    }
}

/// Starts a child and runs the handshake: `getmanifest`, the version check, and `init` with
/// `config` when given, all within the handshake timeout. A child that fails is killed.
pub(crate) async fn start_child(
    name: &str,
    launch: &Launch,
    settings: &ProcessSettings,
    config: Option<&Value>,
) -> Result<Arc<Live>, StartError> {
    let spawned = spawn(launch).await.map_err(|source| StartError::Spawn {
        command: launch.command_line().join(" "),
        source,
    })?;
    let last_line = LastLine::default();
    let forwarder = tokio::spawn({
        let (name, last) = (name.to_owned(), last_line.clone());
        async move { stderr::forward(&name, spawned.log, last).await }
    });
    let log_name = name.to_owned();
    let client = Client::with_outbound_limit(
        SpinRead::new(spawned.channel.reader, settings.spin),
        spawned.channel.writer,
        settings.max_frame,
        settings.max_outbound,
        move |record: LogRecord| log_record(&log_name, record),
    );
    let mut live = Live {
        client,
        pid: spawned.pid,
        runner_pid: spawned.pid,
        manifest: Manifest {
            protocol: String::new(),
            name: String::new(),
            version: String::new(),
            description: String::new(),
            features: Default::default(),
            config_schema: None,
        },
        group: spawned.group,
        exit: spawned.exit,
        crash: watch::Sender::new(None),
        kill_reason: Mutex::new(None),
        last_line,
        forwarder: Mutex::new(Some(forwarder)),
        probing: AtomicBool::new(false),
        unhealthy: AtomicU32::new(0),
    };
    let timeout = settings.handshake_timeout;
    let handshake = async {
        let manifest = live.client.manifest().await?;
        if let Err(mismatch) = manifest.check() {
            return Ok(Err(mismatch));
        }
        if let Some(config) = config {
            live.client.init(name, config.clone()).await?;
        }
        Ok::<_, ClientError>(Ok(manifest))
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(Err(mismatch))) => {
            live.kill_quietly();
            Err(mismatch.into())
        }
        Ok(Ok(Ok(manifest))) => {
            live.manifest = manifest;
            if launch.containment == Containment::Subreaper {
                // The plugin process answered, so it runs: the runner's first child (orphans it
                // adopts later come after it).
                let runner = nix::unistd::Pid::from_raw(live.runner_pid as i32);
                if let Some(first) = children_of(runner).first() {
                    live.pid = first.as_raw() as u32;
                }
            }
            Ok(Arc::new(live))
        }
        Ok(Err(error)) => Err(live.failed_handshake(error).await.into()),
        Err(_) => {
            live.kill_quietly();
            let detail = format!(
                "no answer to the handshake within {}",
                format_duration(timeout)
            );
            Err(CallError::Timeout(live.with_last_line(detail).await).into())
        }
    }
}

impl Live {
    /// The error of a handshake that failed with `error`; the child is killed.
    pub(crate) async fn failed_handshake(&self, error: ClientError) -> CallError {
        match error {
            ClientError::Closed(reason) => {
                let death = self.describe_death(&reason).await;
                let detail = format!("{death} during the handshake");
                CallError::Crashed(self.with_last_line(detail).await)
            }
            other => {
                self.kill_quietly();
                other.into()
            }
        }
    }

    /// `detail`, followed by the child's last log line if it wrote one.
    async fn with_last_line(&self, detail: String) -> String {
        match self.last_log_line().await {
            Some(line) => format!("{detail}; last log line: {line}"),
            None => detail,
        }
    }
}

/// Logs a `log` notification of plugin `name`.
fn log_record(name: &str, record: LogRecord) {
    let LogRecord {
        level,
        message,
        fields,
    } = record;
    match fields {
        Some(fields) if !fields.is_empty() => {
            let mut line = message;
            for (k, v) in fields {
                line.push_str(&format!(" {k}={v}"));
            }
            stderr::log_line(name, level, &line);
        }
        _ => stderr::log_line(name, level, &message),
    }
}

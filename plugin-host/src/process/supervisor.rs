//! Supervision of one process-isolated plugin: noticing its child's death, telling waiting calls
//! why, and restarting it with backoff until the crash-loop limit.
//!
//! [`Shared`] is what the [`ProcessPlugin`](super::ProcessPlugin) and the supervisor task share:
//! the current child ([`Slot`]), the counters, and the config a restarted child is initialized
//! with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use super::live::{EXIT_WAIT, Live, StartError, start_child};
use super::restart::{Decision, RestartTracker};
use super::spawn::Launch;
use crate::CallError;
use crate::lifecycle::{EventKind, Lifecycle, PluginState};
use crate::policy::ProcessSettings;
use crate::protocol::CloseReason;

/// Where the plugin's child stands.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// Started and past `getmanifest`; waiting for `initialize`.
    Starting(Arc<Live>),
    /// Serving.
    Running(Arc<Live>),
    /// Crashed; a new child is on its way.
    Restarting,
    /// Crashed too often; the reason.
    GaveUp(String),
    /// Shut down, or failed to initialize.
    Stopped,
}

/// What the plugin and its supervisor share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) launch: Launch,
    pub(crate) settings: ProcessSettings,
    pub(crate) lifecycle: Arc<Lifecycle>,
    slot: RwLock<Slot>,
    /// The config of the first `initialize`, for restarted children.
    pub(crate) config: OnceLock<Value>,
    pub(crate) restarts: AtomicU64,
    pub(crate) crashes: AtomicU64,
    pub(crate) last_crash: Mutex<Option<String>>,
    stop: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new(
        name: &str,
        launch: Launch,
        settings: ProcessSettings,
        lifecycle: Arc<Lifecycle>,
    ) -> Shared {
        Shared {
            name: name.to_owned(),
            launch,
            settings,
            lifecycle,
            slot: RwLock::new(Slot::Stopped),
            config: OnceLock::new(),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            last_crash: Mutex::new(None),
            stop: watch::Sender::new(false),
        }
    }

    pub(crate) fn slot(&self) -> Slot {
        self.slot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The running child, or the 503 a call answers while there is none.
    pub(crate) fn live(&self) -> Result<Arc<Live>, CallError> {
        let name = &self.name;
        match &*self.slot.read().unwrap_or_else(|e| e.into_inner()) {
            Slot::Running(live) => Ok(live.clone()),
            Slot::Starting(_) => Err(CallError::Unavailable(format!(
                "plugin `{name}` is starting"
            ))),
            Slot::Restarting => Err(CallError::Unavailable(format!(
                "plugin `{name}` is restarting"
            ))),
            Slot::GaveUp(reason) => {
                Err(CallError::Unavailable(format!("plugin `{name}` {reason}")))
            }
            Slot::Stopped => Err(CallError::Unavailable(format!(
                "plugin `{name}` is stopped"
            ))),
        }
    }

    /// Moves to `slot` unless the plugin was stopped; returns whether it did.
    pub(crate) fn set_slot(&self, slot: Slot) -> bool {
        let mut current = self.slot.write().unwrap_or_else(|e| e.into_inner());
        if matches!(*current, Slot::Stopped) {
            return false;
        }
        *current = slot;
        true
    }

    /// Holds `live`, started and waiting for `initialize`.
    pub(crate) fn begin(&self, live: Arc<Live>) {
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = Slot::Starting(live);
    }

    /// The child waiting for `initialize`, if there is one.
    pub(crate) fn starting(&self) -> Option<Arc<Live>> {
        match &*self.slot.read().unwrap_or_else(|e| e.into_inner()) {
            Slot::Starting(live) => Some(live.clone()),
            _ => None,
        }
    }

    /// Marks the plugin stopped (no more restarts) and returns the child that was running.
    pub(crate) fn stop(&self) -> Option<Arc<Live>> {
        self.stop.send_replace(true);
        let previous = std::mem::replace(
            &mut *self.slot.write().unwrap_or_else(|e| e.into_inner()),
            Slot::Stopped,
        );
        match previous {
            Slot::Running(live) | Slot::Starting(live) => Some(live),
            _ => None,
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// The liveness-probe deadline: the handshake timeout, at most 5 s.
    pub(crate) fn probe_timeout(&self) -> Duration {
        self.settings.handshake_timeout.min(Duration::from_secs(5))
    }

    /// Records a crash: counters, last crash, lifecycle event.
    fn record_crash(&self, detail: &str, pid: Option<u32>) {
        self.crashes.fetch_add(1, Ordering::Relaxed);
        *self.last_crash.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail.to_owned());
        let detail = match pid {
            Some(pid) => format!("{detail} (pid {pid})"),
            None => detail.to_owned(),
        };
        self.lifecycle.record(EventKind::Crashed, detail);
    }
}

/// Resolves once the plugin is stopped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Watches the running child and restarts it after each crash, until the plugin stops or gives
/// up. Runs as a task from the plugin's `initialize` on.
pub(crate) async fn supervise(shared: Arc<Shared>, mut live: Arc<Live>) {
    let mut tracker = RestartTracker::new(shared.settings.restart.clone());
    let mut stop = shared.stop.subscribe();
    loop {
        let reason = tokio::select! {
            reason = live.client.closed() => reason,
            // The child exited. Its output normally ends with it; if something outside its group
            // keeps it open, close the connection, so that the calls in flight end too.
            _ = live.exited() => {
                match tokio::time::timeout(EXIT_WAIT, live.client.closed()).await {
                    Ok(reason) => reason,
                    Err(_) => {
                        live.client.close();
                        CloseReason::Eof
                    }
                }
            }
            _ = stopped(&mut stop) => return,
        };
        if shared.stopping() {
            return;
        }
        let detail = live.describe_death(&reason).await;
        shared.set_slot(Slot::Restarting);
        live.publish_crash(&detail);
        live.kill_quietly();
        shared.record_crash(&detail, Some(live.pid));
        live = loop {
            let after = match tracker.on_crash(Instant::now()) {
                Decision::Restart { after } => after,
                Decision::GiveUp(reason) => {
                    if shared.set_slot(Slot::GaveUp(reason.clone())) {
                        shared
                            .lifecycle
                            .set_state(PluginState::Error(reason.clone()));
                        shared.lifecycle.record(EventKind::GaveUp, reason);
                    }
                    return;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                _ = stopped(&mut stop) => return,
            }
            let started = tokio::select! {
                started = start_child(
                    &shared.name,
                    &shared.launch,
                    &shared.settings,
                    shared.config.get(),
                ) => started,
                _ = stopped(&mut stop) => return,
            };
            match started {
                Ok(new) => {
                    if !shared.set_slot(Slot::Running(new.clone())) {
                        new.kill_quietly();
                        return;
                    }
                    let restarts = shared.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                    shared.lifecycle.record(
                        EventKind::Restarted,
                        format!("child restarted (pid {}, restart #{restarts})", new.pid),
                    );
                    break new;
                }
                Err(StartError::Handshake(CallError::Crashed(detail))) => {
                    shared.record_crash(&detail, None)
                }
                Err(error) => shared.record_crash(&error.to_string(), None),
            }
        };
    }
}

//! One plugin's lifecycle as the operator sees it: its state, its last health report, and a short
//! history of what happened to it (loaded, failed, breaker opened, crashed, restarted, ...).
//!
//! Every event is also logged with the plugin's name. A [`Lifecycle`] is shared: the registry,
//! the call guard, the health monitor and a process supervisor all report into the same one.

use std::collections::VecDeque;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use backworks_plugin_sdk::Health;

/// How many events each plugin keeps.
pub const HISTORY_LEN: usize = 32;

/// Where a plugin's lifecycle stands.
///
/// ```text
/// Discovered ─▶ Loading ─▶ Loaded ─▶ Active ─▶ Stopped
///                  │          │         │
///                  └──────────┴─────────┴──▶ Error(reason)        Disabled (by config)
/// ```
///
/// A process-isolated plugin goes from Active to Error when it crashes more often than its
/// restart policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// Known (configured or found on disk), not loaded.
    Discovered,
    /// Being loaded and checked.
    Loading,
    /// Loaded; its instance exists but `initialize` has not finished.
    Loaded,
    /// Initialized and serving.
    Active,
    /// Failed to load or initialize, or gave up restarting; the reason.
    Error(String),
    /// Turned off in the config.
    Disabled,
    /// Shut down.
    Stopped,
}

impl PluginState {
    /// `"active"`, `"error"`, ...
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginState::Discovered => "discovered",
            PluginState::Loading => "loading",
            PluginState::Loaded => "loaded",
            PluginState::Active => "active",
            PluginState::Error(_) => "error",
            PluginState::Disabled => "disabled",
            PluginState::Stopped => "stopped",
        }
    }
}

/// What happened to a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The plugin's code was loaded (library opened, builtin created, child spawned).
    Loaded,
    /// `initialize` succeeded; the plugin is Active.
    Initialized,
    /// Loading or initializing failed.
    Failed,
    /// Turned off in the config.
    Disabled,
    /// The circuit breaker opened: calls are refused.
    BreakerOpened,
    /// The breaker's cool-down ended: probe calls go through.
    BreakerHalfOpen,
    /// The breaker closed again.
    BreakerClosed,
    /// A health check gave a different answer than the one before.
    HealthChanged,
    /// A call was still running past its deadline.
    TimedOut,
    /// The plugin's child process died.
    Crashed,
    /// The plugin's child process was started again.
    Restarted,
    /// The plugin crashed too often and is no longer restarted.
    GaveUp,
    /// `shutdown` ran.
    ShutDown,
}

impl EventKind {
    /// `"breaker_opened"`, `"crashed"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Loaded => "loaded",
            EventKind::Initialized => "initialized",
            EventKind::Failed => "failed",
            EventKind::Disabled => "disabled",
            EventKind::BreakerOpened => "breaker_opened",
            EventKind::BreakerHalfOpen => "breaker_half_open",
            EventKind::BreakerClosed => "breaker_closed",
            EventKind::HealthChanged => "health_changed",
            EventKind::TimedOut => "timed_out",
            EventKind::Crashed => "crashed",
            EventKind::Restarted => "restarted",
            EventKind::GaveUp => "gave_up",
            EventKind::ShutDown => "shut_down",
        }
    }

    fn is_trouble(self) -> bool {
        matches!(
            self,
            EventKind::Failed
                | EventKind::BreakerOpened
                | EventKind::TimedOut
                | EventKind::Crashed
                | EventKind::GaveUp
        )
    }
}

/// One entry of a plugin's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// Details for the operator (a reason, a new health, an exit status).
    pub detail: String,
}

/// One plugin's state, health and recent history; shared by everything that reports on it.
#[derive(Debug)]
pub struct Lifecycle {
    name: String,
    state: RwLock<PluginState>,
    health: RwLock<Option<Health>>,
    history: Mutex<VecDeque<LifecycleEvent>>,
}

impl Lifecycle {
    /// A plugin named `name` in `state`, with no history.
    pub fn new(name: &str, state: PluginState) -> Lifecycle {
        Lifecycle {
            name: name.to_owned(),
            state: RwLock::new(state),
            health: RwLock::new(None),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> PluginState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves to `state`. Does not record an event: callers record the event that caused it.
    pub(crate) fn set_state(&self, state: PluginState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The last health report, if any.
    pub fn health(&self) -> Option<Health> {
        self.health
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores a health report; records [`EventKind::HealthChanged`] when it differs from the last.
    pub fn set_health(&self, health: Health) {
        let previous = {
            let mut slot = self.health.write().unwrap_or_else(|e| e.into_inner());
            slot.replace(health.clone())
        };
        if previous.as_ref() != Some(&health) {
            let from = previous.as_ref().map_or("unknown", Health::as_str);
            let detail = match health.message() {
                "" => format!("{from} -> {}", health.as_str()),
                why => format!("{from} -> {}: {why}", health.as_str()),
            };
            self.record(EventKind::HealthChanged, detail);
        }
    }

    /// Logs an event with the plugin's name and keeps it in the history (the oldest goes when the
    /// history is full).
    pub(crate) fn record(&self, kind: EventKind, detail: impl Into<String>) {
        let detail = detail.into();
        if kind.is_trouble() {
            tracing::warn!(plugin = self.name, event = kind.as_str(), "{detail}");
        } else {
            tracing::info!(plugin = self.name, event = kind.as_str(), "{detail}");
        }
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(LifecycleEvent {
            at: SystemTime::now(),
            kind,
            detail,
        });
    }

    /// The recent history, oldest first.
    pub fn history(&self) -> Vec<LifecycleEvent> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_ordered() {
        let life = Lifecycle::new("p", PluginState::Loading);
        for i in 0..HISTORY_LEN + 3 {
            life.record(EventKind::Restarted, format!("#{i}"));
        }
        let history = life.history();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].detail, "#3");
        assert_eq!(
            history.last().unwrap().detail,
            format!("#{}", HISTORY_LEN + 2)
        );
    }

    #[test]
    fn health_changes_are_events_and_repeats_are_not() {
        let life = Lifecycle::new("p", PluginState::Active);
        life.set_health(Health::Healthy);
        life.set_health(Health::Healthy);
        life.set_health(Health::Unhealthy("disk full".into()));
        let details: Vec<_> = life.history().into_iter().map(|e| e.detail).collect();
        assert_eq!(
            details,
            ["unknown -> healthy", "healthy -> unhealthy: disk full"]
        );
        assert_eq!(life.health(), Some(Health::Unhealthy("disk full".into())));
    }
}

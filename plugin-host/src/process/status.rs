//! What the admin API shows of a process plugin's supervision.

use serde::Serialize;

/// Where a process plugin's child stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Started; not initialized yet.
    Starting,
    /// Serving calls.
    Running,
    /// Crashed; waiting for the backoff or the new child's handshake. Calls answer 503.
    Restarting,
    /// Crashed too often and is no longer restarted. Calls answer 503.
    GaveUp,
    /// Shut down (or failed to initialize).
    Stopped,
}

impl ChildState {
    /// `"starting"`, `"running"`, `"restarting"`, `"gave_up"` or `"stopped"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Running => "running",
            ChildState::Restarting => "restarting",
            ChildState::GaveUp => "gave_up",
            ChildState::Stopped => "stopped",
        }
    }
}

/// A process plugin's supervision at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupervisionSnapshot {
    /// The child's state.
    pub state: ChildState,
    /// The running child's pid.
    pub pid: Option<u32>,
    /// Children started after a crash (successful restarts).
    pub restarts: u64,
    /// Crashes, including restarts that failed their handshake and children killed for not
    /// answering or for being unhealthy.
    pub crashes: u64,
    /// Why the child last died.
    pub last_crash: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_for_the_admin_api() {
        let snapshot = SupervisionSnapshot {
            state: ChildState::GaveUp,
            pid: None,
            restarts: 4,
            crashes: 5,
            last_crash: Some("child exited with signal 11 (SIGSEGV)".into()),
        };
        assert_eq!(
            serde_json::to_value(&snapshot).unwrap(),
            serde_json::json!({
                "state": "gave_up",
                "pid": null,
                "restarts": 4,
                "crashes": 5,
                "last_crash": "child exited with signal 11 (SIGSEGV)",
            })
        );
        assert_eq!(ChildState::Restarting.as_str(), "restarting");
    }
}

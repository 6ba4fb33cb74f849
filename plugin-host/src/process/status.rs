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

/// How a process plugin's descendants are ended with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Containment {
    /// The host's supervising runner sits between the host and the plugin process as a child
    /// subreaper: every descendant, even one that left the process group, is killed when the
    /// plugin process ends, is stopped, or the host dies.
    Subreaper,
    /// A runner of the embedder's own: its process group is killed; a descendant that left the
    /// group is not reached.
    ProcessGroup,
}

impl Containment {
    /// `"subreaper"` or `"process_group"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::Subreaper => "subreaper",
            Containment::ProcessGroup => "process_group",
        }
    }
}

/// A process plugin's supervision at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupervisionSnapshot {
    /// The child's state.
    pub state: ChildState,
    /// The running plugin process's pid.
    pub pid: Option<u32>,
    /// The pid of the runner above it (the host's child), when that is another process.
    pub runner_pid: Option<u32>,
    /// How the plugin's descendants are ended with it.
    pub containment: Containment,
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
            runner_pid: None,
            containment: Containment::Subreaper,
            restarts: 4,
            crashes: 5,
            last_crash: Some("child exited with signal 11 (SIGSEGV)".into()),
        };
        assert_eq!(
            serde_json::to_value(&snapshot).unwrap(),
            serde_json::json!({
                "state": "gave_up",
                "pid": null,
                "runner_pid": null,
                "containment": "subreaper",
                "restarts": 4,
                "crashes": 5,
                "last_crash": "child exited with signal 11 (SIGSEGV)",
            })
        );
        assert_eq!(ChildState::Restarting.as_str(), "restarting");
    }
}

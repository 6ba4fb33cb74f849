//! What the process-isolation tests share about a plugin's child: its pid and restarts in the
//! admin API, the fixture scripts that run as one, and whether a process is gone.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::observe::{FaultServer, PATIENCE, admin};
use crate::support::root;

/// Settings that make a crash test quick: restarts after 50 ms, and no breaker, which would
/// otherwise refuse calls after failures and hide crashes from the counts.
pub(crate) const QUICK_RESTART: &str = "    breaker: { enabled: false }\n    \
                                        restart: { initial_backoff_ms: 50, max_backoff_ms: 200 }\n";

/// What the tests read of a process plugin's child.
impl FaultServer {
    /// The pid of plugin `name`'s running child.
    pub(crate) async fn pid(&self, name: &str) -> u32 {
        let entry = self.plugin(name).await;
        assert_eq!(entry[admin::PROCESS]["state"], "running", "{entry}");
        entry[admin::PROCESS]["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no pid for {name}: {entry}"))
    }

    /// Waits until plugin `name`'s child is running again after at least `restarts` restarts, and
    /// returns the plugin's entry.
    pub(crate) async fn restarted(&self, name: &str, restarts: u64) -> Value {
        self.poll_until(
            &format!("{name} to be restarted {restarts} time(s)"),
            || async move {
                let entry = self.plugin(name).await;
                let process = &entry[admin::PROCESS];
                (process["state"] == "running" && process["restarts"].as_u64() >= Some(restarts))
                    .then_some(entry)
            },
        )
        .await
    }
}

/// `python3 <fixture> [args]` as a YAML flow list (absolute path: the child runs in the config's
/// folder, a temporary directory).
pub(crate) fn python(script: PathBuf, args: &[&str]) -> String {
    let mut argv = vec!["python3".to_owned(), script.display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    // A JSON array is a YAML flow sequence.
    serde_json::to_string(&argv).expect("argv as JSON")
}

/// A script of `tests/fixtures/process/`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/process").join(name)
}

/// Whether process `pid` is gone: not in `/proc`, or a zombie nobody reaped yet (pid 1 of a
/// container may not reap).
pub(crate) fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
    }
}

/// Waits until every one of `pids` is [`gone`]; panics naming `what` and the survivors after
/// [`PATIENCE`].
pub(crate) async fn wait_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| !gone(pid)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still running {alive:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (`-STOP`, `-9`) to `pid` with `kill`.
pub(crate) fn signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

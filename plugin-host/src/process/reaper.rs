//! The supervising runner: the process between the host and a plugin, which makes sure that no
//! process the plugin starts outlives it.
//!
//! A plugin can leave its process group (`setsid`) and its parent (a double fork), so neither
//! killing the group nor the parent-death signal reaches everything it started. The runner is a
//! **child subreaper** (`PR_SET_CHILD_SUBREAPER`): every orphan among the plugin's descendants is
//! reparented to it rather than to init, wherever it moved to. It forks the plugin process (the
//! library server, or the `exec`ed command, with stdin, stdout and stderr passed straight through,
//! so the protocol never goes through the runner), reaps the orphans it adopts while the plugin
//! runs, and ends everything when
//!
//! - the plugin process exits (a crash, or the end of its input),
//! - the host tells it to stop (`SIGTERM`, `SIGINT` or `SIGHUP`), or
//! - the host dies, even by `SIGKILL` (its parent-death signal is `SIGTERM`, which it catches).
//!
//! Ending everything is a loop: `SIGKILL` every child it has, reap one, look again, until
//! `waitpid` says it has no children left. The orphans of a child killed in one round are its
//! children in the next, so the loop reaches the whole tree. Then the runner ends as the plugin
//! process ended: with its exit status, or by the signal that killed it (re-raised on itself, with
//! core dumps off), so the host reads `SIGSEGV` or `SIGABRT` as if the plugin were its child.
//!
//! No plugin code runs in the runner, and it is single-threaded: it checks that before it forks,
//! so the forked plugin process may do anything a fresh process may.
//!
//! What it cannot guarantee: a plugin that kills its runner (`kill -9` of its parent, same user)
//! takes this protection down. The plugin process itself then dies by its parent-death signal and
//! the host kills what is left in the process group, but a descendant that left the group by then
//! survives.

use std::fs;

use super::child::{SetupError, system};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, getpid};

/// Signals the runner waits for instead of dying of them: a child's exit, and stop requests
/// (`SIGTERM` is also its parent-death signal).
fn watched() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set
}

/// Blocks the signals the runner waits for, so that they wait for it. First thing, before the
/// parent-death signal is armed.
pub(super) fn block_signals() -> Result<(), SetupError> {
    watched().thread_block().map_err(system("block signals"))
}

/// Makes this process the subreaper of everything it starts.
pub(super) fn become_subreaper() -> Result<(), SetupError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(system("become a child subreaper"))
}

/// Forks the plugin process, which runs `plugin` (given the runner's pid) and exits with what it
/// returns; waits for it, and ends every descendant. Returns the exit code the runner exits with,
/// unless it ends itself by the plugin's signal.
pub(super) fn contain(plugin: impl FnOnce(Pid) -> i32) -> i32 {
    if let Err(reason) = single_threaded() {
        eprintln!("ERROR: plugin runner: {reason}");
        return super::child::EXIT_SETUP;
    }
    let runner = getpid();
    // SAFETY: this process is single-threaded (checked just above): no lock can be held by a
    // thread that does not exist in the child, so the child may run any code, as a fresh process.
    match unsafe { nix::unistd::fork() } {
        Err(error) => {
            eprintln!("ERROR: plugin runner: cannot fork the plugin process: {error}");
            super::child::EXIT_SETUP
        }
        Ok(ForkResult::Child) => {
            // The plugin process takes signals as any process does.
            let _ = watched().thread_unblock();
            std::process::exit(plugin(runner));
        }
        Ok(ForkResult::Parent { child }) => {
            let status = wait_for(child);
            let status = end_descendants(runner, child, status);
            end_as(status)
        }
    }
}

/// Refuses to fork from a process with more than one thread.
fn single_threaded() -> Result<(), SetupError> {
    let status = fs::read_to_string("/proc/self/status").map_err(SetupError::Status)?;
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .map(str::trim);
    match threads {
        Some("1") => Ok(()),
        Some(n) => Err(SetupError::Threads(n.to_owned())),
        None => Err(SetupError::Threads("an unknown number of".to_owned())),
    }
}

/// How the plugin process ended, if the runner saw it.
type PluginExit = Option<WaitStatus>;

/// Reaps orphans until the plugin process exits (its status) or the runner is told to stop
/// (`None`).
fn wait_for(plugin: Pid) -> PluginExit {
    let signals = watched();
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) if status.pid() == Some(plugin) => return Some(status),
                // An adopted orphan, reaped.
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return None,
            }
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(_) => return None,
        }
    }
}

/// Kills and reaps every child until none is left, however many times the tree must be walked;
/// returns how the plugin process ended (it may end only now).
fn end_descendants(runner: Pid, plugin: Pid, mut exit: PluginExit) -> PluginExit {
    loop {
        let children = children_of(runner);
        for &child in &children {
            let _ = kill(child, Signal::SIGKILL);
        }
        // Blocking only when a child was killed this round: it will end. Otherwise look again
        // after a moment, so that a child the listing missed cannot hang the runner.
        let flags = children.is_empty().then_some(WaitPidFlag::WNOHANG);
        match waitpid(None, flags) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Ok(status) => {
                if status.pid() == Some(plugin) && exit.is_none() {
                    exit = Some(status);
                }
            }
            Err(Errno::EINTR) => {}
            // ECHILD: nothing left.
            Err(_) => return exit,
        }
    }
}

/// The pids of `parent`'s children, oldest first: the `children` files of its threads in
/// `/proc` where the kernel has them (`CONFIG_PROC_CHILDREN`), else a scan of every process's
/// parent.
pub(crate) fn children_of(parent: Pid) -> Vec<Pid> {
    let main = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"));
    if let Ok(main) = main {
        let mut listed = main;
        // A runner has one thread; another process's children may hang off any of its threads.
        for task in fs::read_dir(format!("/proc/{parent}/task"))
            .into_iter()
            .flatten()
        {
            let Ok(task) = task else { continue };
            if task.file_name().to_str() != Some(&parent.to_string()) {
                let more = fs::read_to_string(task.path().join("children")).unwrap_or_default();
                listed.push(' ');
                listed.push_str(&more);
            }
        }
        return listed
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok().map(Pid::from_raw))
            .collect();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// The parent pid in `/proc/<pid>/stat` (the second field after the command name).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Ends the runner as the plugin process ended: its exit code, or its signal re-raised. A runner
/// stopped before the plugin process ended reports `SIGKILL`, which is what ended it.
fn end_as(exit: PluginExit) -> i32 {
    match exit {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, signal, _)) => raise_on_self(signal),
        _ => raise_on_self(Signal::SIGKILL),
    }
}

/// Dies of `signal`; returns the shell's `128 + signal` only if the signal does not end a process.
fn raise_on_self(signal: Signal) -> i32 {
    // The plugin's core, if any, is the plugin's: the runner writes none of its own.
    let _ = nix::sys::prctl::set_dumpable(false);
    // SAFETY: restoring the default disposition installs no handler; the runner is
    // single-threaded and about to end.
    let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(signal);
    let _ = only.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    128 + signal as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_listed_by_parent() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = getpid();
        let child = Pid::from_raw(sleeper.id() as i32);
        assert!(children_of(me).contains(&child));
        assert_eq!(parent_of(child.as_raw()), Some(me.as_raw()));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(!children_of(me).contains(&child));
    }

    #[test]
    fn a_test_process_is_not_single_threaded() {
        // The test harness runs each test on a thread of its own: the runner's check sees it.
        let error = single_threaded().unwrap_err().to_string();
        assert!(error.contains("threads; it must fork from one"), "{error}");
    }
}

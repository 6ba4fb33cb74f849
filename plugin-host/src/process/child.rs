//! The child side of process isolation: the runner an executable becomes when it is started as
//! `<exe> __plugin-child …`.
//!
//! The runner is two processes. The first, the **supervising runner** ([`super::reaper`]), runs no
//! plugin code: it closes every file descriptor it inherited above stderr (the host's own are
//! close-on-exec, but the host may hold some it inherited without that flag), arms its
//! parent-death signal (`SIGTERM`, which it catches), checks that the host it was started by is
//! still there (it may have died before the request), and becomes the child subreaper of
//! everything below it. Then it forks the **plugin process**, which asks for `SIGKILL` when the
//! runner dies, applies the resource limits, and:
//!
//! - `<exe> __plugin-child -- PROGRAM ARGS…` replaces itself with the program (`exec`; the
//!   parent-death signal and the limits carry over), which speaks the protocol on stdin/stdout;
//! - `<exe> __plugin-child LIBRARY` loads the plugin library and serves it over the socket the host
//!   passed as fd 0. Its stdout is joined to stderr, so whatever the plugin prints is a log line and
//!   can never corrupt the protocol; its log events are written to stderr as level-prefixed lines.
//!
//! Both inherit the runner's stdin, stdout and stderr: the protocol goes straight between the host
//! and the plugin process. When the plugin process ends, or the host says stop or dies, the
//! supervising runner kills every process left below it and ends as the plugin process ended.
//!
//! The host passes the rest through the environment ([`env`]), which holds nothing else of the
//! host's but what the plugin's `env` setting names.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

use super::child_log::StderrLog;
use super::reaper;
use crate::policy::ResourceLimits;

/// The first argument that turns an executable into the runner.
pub const CHILD_ARG: &str = "__plugin-child";

/// Separates the runner's arguments from a command to `exec`.
pub(crate) const COMMAND_SEPARATOR: &str = "--";

/// Exit status of a runner that could not set the child up (parent gone, limits refused).
pub(super) const EXIT_SETUP: i32 = 70;
/// Exit status of a runner that could not `exec` the command (as the shell's "not found").
const EXIT_EXEC: i32 = 127;

/// The environment variables the host sets for the runner.
pub(crate) mod env {
    /// The host's pid: the runner exits if its parent is another process.
    pub(crate) const PARENT_PID: &str = "BACKWORKS_PLUGIN_PARENT_PID";
    /// The plugin's instance name.
    pub(crate) const NAME: &str = "BACKWORKS_PLUGIN_NAME";
    /// Resource limits: `memory_bytes=N,cpu_seconds=N,open_files=N`, each optional.
    pub(crate) const LIMITS: &str = "BACKWORKS_PLUGIN_LIMITS";
    /// The largest protocol frame, in bytes.
    pub(crate) const MAX_FRAME: &str = "BACKWORKS_PLUGIN_MAX_FRAME";
    /// How long the runner keeps polling for the next call after one arrived, in microseconds
    /// (0: not at all).
    pub(crate) const SPIN_US: &str = "BACKWORKS_PLUGIN_SPIN_US";
    /// The most verbose log level the host records: `off`, `error`, … `trace`.
    pub(crate) const LOG_LEVEL: &str = "BACKWORKS_PLUGIN_LOG";
}

/// Runs the plugin child and exits if this process was started as one (`argv[1]` is
/// `__plugin-child`); returns at once otherwise.
///
/// Call it first thing in `main` of any executable that starts process-isolated plugins without a
/// configured runner ([`ProcessSettings::runner`](crate::ProcessSettings::runner)): the host
/// starts children as `current_exe() __plugin-child …`. Nothing may run before it in a child: the
/// runner closes every descriptor above stderr it finds open, as inherited.
///
/// ```no_run
/// backworks_plugin_host::child_main_if_requested();
/// // … the program itself …
/// ```
pub fn child_main_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(CHILD_ARG)) {
        return;
    }
    let code = run(args.collect());
    std::process::exit(code);
}

/// What the runner was asked to run.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Library(PathBuf),
    Command(Vec<OsString>),
}

fn parse_target(args: Vec<OsString>) -> Result<Target, String> {
    match args.split_first() {
        Some((first, rest)) if first == COMMAND_SEPARATOR && !rest.is_empty() => {
            Ok(Target::Command(rest.to_vec()))
        }
        Some((library, [])) if library != COMMAND_SEPARATOR => Ok(Target::Library(library.into())),
        _ => Err(format!(
            "usage: {CHILD_ARG} LIBRARY | {CHILD_ARG} {COMMAND_SEPARATOR} PROGRAM [ARGS…]"
        )),
    }
}

fn run(args: Vec<OsString>) -> i32 {
    let target = match parse_target(args) {
        Ok(target) => target,
        Err(usage) => {
            eprintln!("ERROR: {usage}");
            return EXIT_SETUP;
        }
    };
    if let Err(reason) = set_up_runner() {
        eprintln!("ERROR: plugin child set-up failed: {reason}");
        return EXIT_SETUP;
    }
    reaper::contain(move |runner| run_plugin(target, runner))
}

/// The supervising runner: inherited descriptors closed, its signals blocked (to be waited for),
/// parent-death signal, parent check, subreaper, no core dumps.
fn set_up_runner() -> Result<(), String> {
    // First, before this process opens anything of its own (see `close_inherited_fds`).
    crate::loader::close_inherited_fds()
        .map_err(|e| format!("cannot close inherited file descriptors: {e}"))?;
    // Blocked before it is armed: the parent-death signal waits for the runner to take it.
    reaper::block_signals()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if let Ok(expected) = std::env::var(env::PARENT_PID) {
        let parent = getppid().as_raw().to_string();
        if parent != expected {
            return Err(format!(
                "the host (pid {expected}) is gone; parent is now pid {parent}"
            ));
        }
    }
    reaper::become_subreaper()?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("cannot turn core dumps off: {e}"))
}

/// The plugin process: set up, then `exec` the command or serve the library.
fn run_plugin(target: Target, runner: Pid) -> i32 {
    if let Err(reason) = set_up_plugin(runner) {
        eprintln!("ERROR: plugin child set-up failed: {reason}");
        return EXIT_SETUP;
    }
    match target {
        Target::Command(argv) => {
            let error = Command::new(&argv[0])
                .args(&argv[1..])
                .env_remove(env::PARENT_PID)
                .env_remove(env::LIMITS)
                .exec();
            eprintln!("ERROR: cannot run `{}`: {error}", argv[0].to_string_lossy());
            EXIT_EXEC
        }
        Target::Library(path) => serve_library(path),
    }
}

/// The plugin process: parent-death signal (its parent is the runner), parent check, resource
/// limits.
fn set_up_plugin(runner: Pid) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if getppid() != runner {
        return Err(format!("the runner (pid {runner}) is gone"));
    }
    let limits = parse_limits(&std::env::var(env::LIMITS).unwrap_or_default())?;
    apply_limits(&limits)
}

/// Reads `memory_bytes=N,cpu_seconds=N,open_files=N` (any subset, any order).
fn parse_limits(text: &str) -> Result<ResourceLimits, String> {
    let mut limits = ResourceLimits::default();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("invalid limit `{item}`: expected KEY=NUMBER"))?;
        let value: u64 = value
            .parse()
            .map_err(|_| format!("invalid limit `{item}`: not a number"))?;
        let slot = match key {
            "memory_bytes" => &mut limits.memory_bytes,
            "cpu_seconds" => &mut limits.cpu_seconds,
            "open_files" => &mut limits.open_files,
            _ => return Err(format!("unknown limit `{key}`")),
        };
        *slot = Some(value);
    }
    Ok(limits)
}

/// Applies each limit that is set, never above the inherited hard limit, and turns core dumps off.
/// The CPU limit's hard value is one second above the soft one: `SIGXCPU` first, `SIGKILL` if the
/// plugin ignores it.
fn apply_limits(limits: &ResourceLimits) -> Result<(), String> {
    let wanted = [
        (Resource::RLIMIT_AS, "memory", limits.memory_bytes, 0),
        (Resource::RLIMIT_CPU, "CPU time", limits.cpu_seconds, 1),
        (Resource::RLIMIT_NOFILE, "open files", limits.open_files, 0),
    ];
    for (resource, what, value, slack) in wanted {
        let Some(value) = value else { continue };
        let (_, hard) =
            getrlimit(resource).map_err(|e| format!("cannot read the {what} limit: {e}"))?;
        let soft = value.min(hard);
        let new_hard = value.saturating_add(slack).min(hard);
        setrlimit(resource, soft, new_hard)
            .map_err(|e| format!("cannot limit {what} to {value}: {e}"))?;
    }
    // A crashing plugin must not litter core files where it runs (nor take the time to write
    // them): lowering a limit is always allowed.
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| format!("cannot turn core dumps off: {e}"))?;
    Ok(())
}

/// The number in environment variable `name`, if it is set and parses.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// Loads the library and serves it on fd 0 until the host closes it.
fn serve_library(path: PathBuf) -> i32 {
    let name = std::env::var(env::NAME).unwrap_or_else(|_| "plugin".to_owned());
    let level = std::env::var(env::LOG_LEVEL).unwrap_or_default();
    // Only fails if a subscriber is set already, which then keeps logging.
    let _ = tracing::subscriber::set_global_default(StderrLog::new(&level));
    let defaults = crate::policy::ProcessSettings::default();
    let max_frame = env_number(env::MAX_FRAME).unwrap_or(defaults.max_frame);
    let spin = env_number(env::SPIN_US).map_or(defaults.spin, Duration::from_micros);
    let plugin = match crate::loader::load_in_child(&path)
        .and_then(|library| crate::DynamicPlugin::new(library, &name))
    {
        Ok(plugin) => Arc::new(plugin),
        Err(error) => {
            tracing::error!("{error}");
            return 1;
        }
    };
    // One thread for the protocol: a round trip costs about a quarter of what it costs with a
    // multi-thread runtime, whose cross-thread wake-ups dominate. The plugin's own async work
    // runs on the SDK's runtime in the library; only code that blocks its calling thread holds
    // the protocol up, and a child that stops answering is restarted by the host.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the runtime: {error}");
            return 1;
        }
    };
    let result = runtime.block_on(async move {
        let socket = std::io::stdin().as_fd().try_clone_to_owned()?;
        let socket = std::os::unix::net::UnixStream::from(socket);
        socket.set_nonblocking(true)?;
        let (reader, writer) = tokio::net::UnixStream::from_std(socket)?.into_split();
        let reader = crate::protocol::SpinRead::new(reader, spin);
        crate::protocol::serve(plugin, reader, writer, max_frame).await
    });
    match result {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!("protocol: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target(os(&["/p/libx.so"])),
            Ok(Target::Library("/p/libx.so".into()))
        );
        assert_eq!(
            parse_target(os(&["--", "python3", "x.py"])),
            Ok(Target::Command(os(&["python3", "x.py"])))
        );
        for bad in [&[][..], &["--"], &["a", "b"]] {
            let err = parse_target(os(bad)).unwrap_err();
            assert!(err.starts_with("usage: __plugin-child"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn limits_round_trip_through_the_environment_text() {
        let limits = ResourceLimits {
            memory_bytes: Some(256 << 20),
            cpu_seconds: Some(5),
            open_files: None,
        };
        let text = super::super::spawn::encode_limits(&limits);
        assert_eq!(parse_limits(&text), Ok(limits));
        assert_eq!(parse_limits(""), Ok(ResourceLimits::default()));
        assert_eq!(
            parse_limits("open_files=x"),
            Err("invalid limit `open_files=x`: not a number".into())
        );
        assert_eq!(parse_limits("stack=1"), Err("unknown limit `stack`".into()));
        assert_eq!(
            parse_limits("memory_bytes"),
            Err("invalid limit `memory_bytes`: expected KEY=NUMBER".into())
        );
    }

    #[test]
    fn unset_limits_change_nothing() {
        let before = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        apply_limits(&ResourceLimits::default()).unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), before);
    }
}

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
//! - `<exe> __plugin-child --config-schema LIBRARY` loads the library the same way, writes its
//!   config schema (the vtable's `config_schema`; no instance is created) on stdout and exits:
//!   how `validate` reads a Rust plugin's schema without running its code in the host;
//! - `<exe> __plugin-child LIBRARY` loads the plugin library and serves it over the socket the host
//!   passed as fd 0. It loads the bytes the host checked: it reads the host's private copy named
//!   by `BACKWORKS_PLUGIN_COPY`, refuses them unless their SHA-256 is `BACKWORKS_PLUGIN_SHA256`,
//!   and opens a private copy of its own, so a file replaced meanwhile never runs here. Its
//!   stdout is joined to stderr, so whatever the plugin prints is a log line and can never
//!   corrupt the protocol; its log events are written to stderr as level-prefixed lines.
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
    /// Where the runner reads the library's bytes: the host's private copy
    /// (`/proc/<host pid>/fd/<n>`).
    pub(crate) const COPY: &str = "BACKWORKS_PLUGIN_COPY";
    /// The hex SHA-256 of the bytes the host checked; the runner loads nothing else.
    pub(crate) const SHA256: &str = "BACKWORKS_PLUGIN_SHA256";
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
    /// `--config-schema LIBRARY`: print the library's config schema.
    Schema(PathBuf),
}

/// Why the runner or the plugin process could not be set up. Printed on stderr (which the host
/// logs) before the runner exits with [`EXIT_SETUP`].
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    /// The runner's arguments are not a library or `--` and a command.
    #[error(
        "usage: {CHILD_ARG} LIBRARY | {CHILD_ARG} {COMMAND_SEPARATOR} PROGRAM [ARGS…] | {CHILD_ARG} {} LIBRARY",
        crate::describe::SCHEMA_ARG
    )]
    Usage,
    /// Inherited descriptors could not be listed or closed.
    #[error("cannot close inherited file descriptors: {0}")]
    InheritedFds(std::io::Error),
    /// A system call of the set-up failed.
    #[error("cannot {what}: {source}")]
    System {
        /// What the set-up tried.
        what: String,
        /// The error.
        source: nix::Error,
    },
    /// The runner's parent is not the host that started it: the host died meanwhile.
    #[error("the host (pid {expected}) is gone; parent is now pid {found}")]
    HostGone {
        /// The host's pid.
        expected: String,
        /// The parent's pid now.
        found: String,
    },
    /// The plugin process's parent is not its runner any more.
    #[error("the runner (pid {0}) is gone")]
    RunnerGone(Pid),
    /// The resource limits the host passed do not read.
    #[error("invalid limit `{item}`: {why}")]
    Limit {
        /// The item as written.
        item: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The host passed a limit this runner does not know.
    #[error("unknown limit `{0}`")]
    UnknownLimit(String),
    /// The runner's thread count could not be read.
    #[error("cannot read /proc/self/status: {0}")]
    Status(std::io::Error),
    /// The runner has more than one thread, so it may not fork.
    #[error("has {0} threads; it must fork from one")]
    Threads(String),
}

/// `what` failed with `source`.
pub(super) fn system(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::System { what, source }
}

fn parse_target(args: Vec<OsString>) -> Result<Target, SetupError> {
    match args.split_first() {
        Some((first, rest)) if first == COMMAND_SEPARATOR && !rest.is_empty() => {
            Ok(Target::Command(rest.to_vec()))
        }
        Some((first, [library])) if first == crate::describe::SCHEMA_ARG => {
            Ok(Target::Schema(library.into()))
        }
        Some((library, [])) if library != COMMAND_SEPARATOR => Ok(Target::Library(library.into())),
        _ => Err(SetupError::Usage),
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
fn set_up_runner() -> Result<(), SetupError> {
    // First, before this process opens anything of its own (see `close_inherited_fds`).
    crate::loader::close_inherited_fds().map_err(SetupError::InheritedFds)?;
    // Blocked before it is armed: the parent-death signal waits for the runner to take it.
    reaper::block_signals()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(system("set the parent-death signal"))?;
    if let Ok(expected) = std::env::var(env::PARENT_PID) {
        let found = getppid().as_raw().to_string();
        if found != expected {
            return Err(SetupError::HostGone { expected, found });
        }
    }
    reaper::become_subreaper()?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(system("turn core dumps off"))
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
        Target::Schema(path) => crate::describe::print_config_schema(&path),
    }
}

/// The plugin process: parent-death signal (its parent is the runner), parent check, resource
/// limits.
fn set_up_plugin(runner: Pid) -> Result<(), SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(system("set the parent-death signal"))?;
    if getppid() != runner {
        return Err(SetupError::RunnerGone(runner));
    }
    let limits = parse_limits(&std::env::var(env::LIMITS).unwrap_or_default())?;
    apply_limits(&limits)
}

/// Reads `memory_bytes=N,cpu_seconds=N,open_files=N` (any subset, any order).
fn parse_limits(text: &str) -> Result<ResourceLimits, SetupError> {
    let mut limits = ResourceLimits::default();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let invalid = |why| SetupError::Limit {
            item: item.to_owned(),
            why,
        };
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| invalid("expected KEY=NUMBER"))?;
        let value: u64 = value.parse().map_err(|_| invalid("not a number"))?;
        let slot = match key {
            "memory_bytes" => &mut limits.memory_bytes,
            "cpu_seconds" => &mut limits.cpu_seconds,
            "open_files" => &mut limits.open_files,
            _ => return Err(SetupError::UnknownLimit(key.to_owned())),
        };
        *slot = Some(value);
    }
    Ok(limits)
}

/// Applies each limit that is set, never above the inherited hard limit, and turns core dumps off.
/// The CPU limit's hard value is one second above the soft one: `SIGXCPU` first, `SIGKILL` if the
/// plugin ignores it.
fn apply_limits(limits: &ResourceLimits) -> Result<(), SetupError> {
    let wanted = [
        (Resource::RLIMIT_AS, "memory", limits.memory_bytes, 0),
        (Resource::RLIMIT_CPU, "CPU time", limits.cpu_seconds, 1),
        (Resource::RLIMIT_NOFILE, "open files", limits.open_files, 0),
    ];
    for (resource, what, value, slack) in wanted {
        let Some(value) = value else { continue };
        let (_, hard) = getrlimit(resource).map_err(system(format!("read the {what} limit")))?;
        let soft = value.min(hard);
        let new_hard = value.saturating_add(slack).min(hard);
        setrlimit(resource, soft, new_hard).map_err(system(format!("limit {what} to {value}")))?;
    }
    // A crashing plugin must not litter core files where it runs (nor take the time to write
    // them): lowering a limit is always allowed.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(system("turn core dumps off"))?;
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
    // The host's checked copy and its hash; a runner started by hand reads the file itself.
    let copy = match (std::env::var_os(env::COPY), std::env::var(env::SHA256)) {
        (Some(source), Ok(sha256)) => Some(crate::loader::ChildCopy {
            source: source.into(),
            sha256,
        }),
        _ => None,
    };
    let plugin = match crate::loader::load_in_child(&path, copy.as_ref())
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
            parse_target(os(&["/p/libx.so"])).ok(),
            Some(Target::Library("/p/libx.so".into()))
        );
        assert_eq!(
            parse_target(os(&["--", "python3", "x.py"])).ok(),
            Some(Target::Command(os(&["python3", "x.py"])))
        );
        assert_eq!(
            parse_target(os(&["--config-schema", "/p/libx.so"])).ok(),
            Some(Target::Schema("/p/libx.so".into()))
        );
        for bad in [&[][..], &["--"], &["a", "b"]] {
            let err = parse_target(os(bad)).unwrap_err().to_string();
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
        let parse_limits = |text: &str| parse_limits(text).map_err(|e| e.to_string());
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

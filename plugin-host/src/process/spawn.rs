//! Starting a plugin's child process, killing its process group, and learning how it ended.
//!
//! Every child is started through the runner (`<exe> __plugin-child`, see [`super::child`]), which
//! sets the parent-death signal and the resource limits before any plugin code runs, then either
//! serves a library or `exec`s the configured command. The child is the leader of its own process
//! group, so killing the group takes anything it started with it.
//!
//! **One thread per child.** `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
//! exits, not the process. Tokio's blocking-pool threads come and go, so a child forked from one
//! of them would be killed when that thread retires. Each child is therefore forked by a dedicated
//! thread that then waits for it and lives exactly as long as it: the signal fires only when the
//! child is gone already, or when the whole host dies (even by `SIGKILL`), which is the point.
//!
//! The waiting thread notices the exit without reaping (`waitid(WNOWAIT)`), kills what is left of
//! the group while the leader's pid still reserves the group id, and only then reaps. A kill asked
//! for later finds the group marked reaped and does nothing, so a recycled group id is never hit.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

use super::child::{CHILD_ARG, COMMAND_SEPARATOR, env};
use super::exit::Exit;
use super::status::Containment;
use crate::loader::ChildCopy;
use crate::plugin::PluginSource;
use crate::policy::{ChildEnv, ProcessSettings, ResourceLimits};

/// What to start: the runner's argv and how the protocol reaches the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    /// Program and arguments.
    pub(crate) argv: Vec<OsString>,
    /// The runner's own settings, set on top of `child_env`.
    pub(crate) env: Vec<(&'static str, String)>,
    /// The plugin's environment: nothing of the host's but what this names.
    pub(crate) child_env: ChildEnv,
    /// The child's working directory.
    pub(crate) working_dir: Option<PathBuf>,
    /// How the protocol travels.
    pub(crate) transport: Transport,
    /// How the child's descendants are ended with it.
    pub(crate) containment: Containment,
}

/// How the protocol travels between host and child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A command: the protocol on its stdin and stdout (two pipes), as `docs/protocol.md` says.
    StdioPipes,
    /// A library in the runner: both directions on one socket on the child's fd 0, and the child's
    /// stdout joined to its stderr, so a plugin that prints cannot corrupt the protocol.
    SocketOnStdin,
}

impl Launch {
    /// The launch of plugin `name` from `source` with `settings`.
    pub(crate) fn new(
        name: &str,
        source: &PluginSource,
        settings: &ProcessSettings,
    ) -> io::Result<Launch> {
        // The host's own runner contains what the plugin starts; another runner is trusted with
        // nothing but its process group.
        let containment = match &settings.runner {
            None => Containment::Subreaper,
            Some(runner) if runner.iter().any(|arg| arg == CHILD_ARG) => Containment::Subreaper,
            Some(_) => Containment::ProcessGroup,
        };
        let mut argv: Vec<OsString> = match &settings.runner {
            Some(runner) if !runner.is_empty() => {
                let mut argv: Vec<OsString> = runner.iter().map(OsString::from).collect();
                // A relative program path would be looked up in the child's working directory.
                if runner[0].contains('/') {
                    argv[0] = std::path::absolute(&runner[0])?.into();
                }
                argv
            }
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the runner command is empty",
                ));
            }
            None => vec![std::env::current_exe()?.into(), CHILD_ARG.into()],
        };
        let transport = match source {
            PluginSource::Library(path) => {
                // The host checked this file; the child, in its own working directory, must load
                // the same one.
                argv.push(std::path::absolute(path)?.into());
                Transport::SocketOnStdin
            }
            PluginSource::Command(command) if !command.is_empty() => {
                argv.push(COMMAND_SEPARATOR.into());
                argv.extend(command.iter().map(OsString::from));
                Transport::StdioPipes
            }
            PluginSource::Command(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the plugin command is empty",
                ));
            }
            PluginSource::Builtin(builtin) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("built-in plugin `{builtin}` cannot run in a child process"),
                ));
            }
        };
        Ok(Launch {
            argv,
            env: vec![
                (env::PARENT_PID, std::process::id().to_string()),
                (env::NAME, name.to_owned()),
                (env::LIMITS, encode_limits(&settings.limits)),
                (env::MAX_FRAME, settings.max_frame.to_string()),
                (env::SPIN_US, settings.spin.as_micros().to_string()),
                (env::LOG_LEVEL, max_log_level().to_owned()),
            ],
            child_env: settings.env.clone(),
            working_dir: settings.working_dir.clone(),
            transport,
            containment,
        })
    }

    /// Tells the runner to load the host's private copy of the library (see
    /// [`crate::loader::load_in_child`]) rather than to read the configured file again.
    pub(crate) fn read_copy(&mut self, copy: &ChildCopy) {
        self.env
            .push((env::COPY, copy.source.to_string_lossy().into_owned()));
        self.env.push((env::SHA256, copy.sha256.clone()));
    }

    /// The command line, for the plugin's info and messages.
    pub(crate) fn command_line(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

/// The most verbose level the host records, for the child's own filter.
fn max_log_level() -> &'static str {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => "off",
        LevelFilter::ERROR => "error",
        LevelFilter::WARN => "warn",
        LevelFilter::INFO => "info",
        LevelFilter::DEBUG => "debug",
        _ => "trace",
    }
}

/// `memory_bytes=…,cpu_seconds=…,open_files=…` with the limits that are set.
pub(crate) fn encode_limits(limits: &ResourceLimits) -> String {
    [
        ("memory_bytes", limits.memory_bytes),
        ("cpu_seconds", limits.cpu_seconds),
        ("open_files", limits.open_files),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
    .collect::<Vec<_>>()
    .join(",")
}

/// A child (the runner) and its process group. Killing it after the runner was reaped does
/// nothing.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    pgid: Pid,
    reaped: Mutex<bool>,
    containment: Containment,
}

impl ProcessGroup {
    /// Ends the child and everything it started, unless the runner was reaped already: the
    /// supervising runner is told to stop (`SIGTERM`, and `SIGCONT` in case it was stopped), and
    /// kills every descendant before it exits; any other runner's group gets `SIGKILL`.
    pub(crate) fn kill(&self) {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if !*reaped {
            match self.containment {
                Containment::Subreaper => {
                    let _ = kill(self.pgid, Signal::SIGTERM);
                    let _ = kill(self.pgid, Signal::SIGCONT);
                }
                Containment::ProcessGroup => {
                    let _ = killpg(self.pgid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// The protocol's two directions, as the client takes them.
pub(crate) struct Channel {
    /// Plugin → host.
    pub(crate) reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Host → plugin.
    pub(crate) writer: Box<dyn AsyncWrite + Send + Unpin>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

/// A started child: its pid, protocol channel, log stream, group and exit.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The child's pid (also its process group id).
    pub(crate) pid: u32,
    /// The protocol channel.
    pub(crate) channel: Channel,
    /// The child's stderr (and, for a library, its stdout).
    pub(crate) log: pipe::Receiver,
    /// The child's process group; killed when the last holder drops it.
    pub(crate) group: Arc<GroupGuard>,
    /// How the child ended, once it has and was reaped.
    pub(crate) exit: watch::Receiver<Option<Exit>>,
}

/// Owns a process group: kills it when dropped.
#[derive(Debug)]
pub(crate) struct GroupGuard(pub(crate) Arc<ProcessGroup>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// The child's ends, as the forking thread hands them over.
enum RawIo {
    Pipes { stdin: OwnedFd, stdout: OwnedFd },
    Socket(std::os::unix::net::UnixStream),
}

struct Started {
    pid: u32,
    io: RawIo,
    log: OwnedFd,
    group: Arc<ProcessGroup>,
}

/// Starts the child on a thread of its own (see the module docs) and returns it once it runs.
pub(crate) async fn spawn(launch: &Launch) -> io::Result<Spawned> {
    let (started_tx, started_rx) = oneshot::channel::<io::Result<Started>>();
    let (exit_tx, exit_rx) = watch::channel(None);
    let launch = launch.clone();
    std::thread::Builder::new()
        .name("plugin-child".into())
        .spawn(move || fork_and_wait(launch, started_tx, exit_tx))?;
    let started = started_rx
        .await
        .map_err(|_| io::Error::other("the thread starting the child ended"))??;
    let group = Arc::new(GroupGuard(started.group));
    let channel = match started.io {
        RawIo::Pipes { stdin, stdout } => Channel {
            reader: Box::new(pipe::Receiver::from_owned_fd(stdout)?),
            writer: Box::new(pipe::Sender::from_owned_fd(stdin)?),
        },
        RawIo::Socket(socket) => {
            socket.set_nonblocking(true)?;
            let (reader, writer) = tokio::net::UnixStream::from_std(socket)?.into_split();
            Channel {
                reader: Box::new(reader),
                writer: Box::new(writer),
            }
        }
    };
    Ok(Spawned {
        pid: started.pid,
        channel,
        log: pipe::Receiver::from_owned_fd(started.log)?,
        group,
        exit: exit_rx,
    })
}

/// Runs on the child's own thread: forks it, hands its ends over, waits for it to exit.
fn fork_and_wait(
    launch: Launch,
    started: oneshot::Sender<io::Result<Started>>,
    exit: watch::Sender<Option<Exit>>,
) {
    let (mut child, io, log) = match start(&launch) {
        Ok(parts) => parts,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let pid = child.id();
    let group = Arc::new(ProcessGroup {
        pgid: Pid::from_raw(pid as i32),
        reaped: Mutex::new(false),
        containment: launch.containment,
    });
    let handed = started.send(Ok(Started {
        pid,
        io,
        log,
        group: group.clone(),
    }));
    if handed.is_err() {
        // Nobody wants the child any more.
        group.kill();
    }
    // Wait for the exit without reaping: the zombie keeps the group id reserved while we kill
    // whatever the child left behind in its group (nothing, unless a supervising runner was
    // killed before it could end its descendants).
    while let Err(Errno::EINTR) = waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    ) {}
    let status = {
        let mut reaped = group.reaped.lock().unwrap_or_else(|e| e.into_inner());
        let _ = killpg(group.pgid, Signal::SIGKILL);
        let status = child.wait();
        *reaped = true;
        status
    };
    exit.send_replace(Some(status.map_or(Exit::Unknown, Exit::from)));
}

/// Forks the runner with its stdio wired for `launch.transport`.
fn start(launch: &Launch) -> io::Result<(std::process::Child, RawIo, OwnedFd)> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut command = Command::new(program);
    command.args(args).process_group(0).env_clear();
    for (key, value) in launch.child_env.resolve(|name| std::env::var(name).ok()) {
        command.env(key, value);
    }
    for (key, value) in &launch.env {
        command.env(key, value);
    }
    if let Some(dir) = &launch.working_dir {
        command.current_dir(dir);
    }
    let (log_reader, log_writer) = io::pipe()?;
    let host_end = match launch.transport {
        Transport::StdioPipes => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log_writer);
            None
        }
        Transport::SocketOnStdin => {
            let (host, child) = std::os::unix::net::UnixStream::pair()?;
            command
                .stdin(OwnedFd::from(child))
                .stdout(log_writer.try_clone()?)
                .stderr(log_writer);
            Some(host)
        }
    };
    let mut child = command.spawn()?;
    // `command` still holds the child's ends of the pipes and the socket: drop them so that the
    // child's exit closes the streams.
    drop(command);
    let io = match host_end {
        Some(socket) => RawIo::Socket(socket),
        None => match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => RawIo::Pipes {
                stdin: stdin.into(),
                stdout: stdout.into(),
            },
            _ => return Err(io::Error::other("child without piped stdio")),
        },
    };
    Ok((child, io, log_reader.into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn settings() -> ProcessSettings {
        ProcessSettings {
            runner: Some(vec!["env".into()]),
            limits: ResourceLimits {
                memory_bytes: Some(1 << 30),
                cpu_seconds: None,
                open_files: Some(64),
            },
            ..ProcessSettings::default()
        }
    }

    #[test]
    fn a_library_goes_last_and_a_command_after_the_separator() {
        let lib = Launch::new(
            "p",
            &PluginSource::Library("/x/libp.so".into()),
            &ProcessSettings::default(),
        )
        .unwrap();
        let argv = lib.command_line();
        assert_eq!(argv[1..], [CHILD_ARG, "/x/libp.so"]);
        let relative = Launch::new(
            "p",
            &PluginSource::Library("plugins/libp.so".into()),
            &ProcessSettings::default(),
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative.argv[2],
            OsString::from(cwd.join("plugins/libp.so"))
        );
        assert_eq!(lib.transport, Transport::SocketOnStdin);

        let cmd = Launch::new(
            "p",
            &PluginSource::Command(vec!["python3".into(), "x.py".into()]),
            &settings(),
        )
        .unwrap();
        assert_eq!(cmd.command_line(), ["env", "--", "python3", "x.py"]);
        assert_eq!(cmd.transport, Transport::StdioPipes);
        let limits = cmd.env.iter().find(|(k, _)| *k == env::LIMITS).unwrap();
        assert_eq!(limits.1, "memory_bytes=1073741824,open_files=64");
        let parent = cmd.env.iter().find(|(k, _)| *k == env::PARENT_PID).unwrap();
        assert_eq!(parent.1, std::process::id().to_string());
    }

    #[test]
    fn empty_commands_and_builtins_are_refused() {
        let err = Launch::new("p", &PluginSource::Command(vec![]), &settings()).unwrap_err();
        assert_eq!(err.to_string(), "the plugin command is empty");
        let err = Launch::new("p", &PluginSource::Builtin("b".into()), &settings()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "built-in plugin `b` cannot run in a child process"
        );
    }

    #[tokio::test]
    async fn a_child_runs_in_its_own_group_and_its_exit_is_collected() {
        let launch = Launch::new(
            "p",
            &PluginSource::Command(vec![
                "sh".into(),
                "-c".into(),
                "echo to-log >&2; read line; echo \"got $line\"; exit 3".into(),
            ]),
            &settings(),
        )
        .unwrap();
        let mut child = spawn(&launch).await.unwrap();
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(child.pid as i32))).unwrap();
        assert_eq!(
            pgid.as_raw() as u32,
            child.pid,
            "the child leads its own group"
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        child.channel.writer.write_all(b"hello\n").await.unwrap();
        let mut out = String::new();
        child.channel.reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "got hello\n");
        let mut log = String::new();
        child.log.read_to_string(&mut log).await.unwrap();
        assert_eq!(log, "to-log\n");
        let exit = *child.exit.wait_for(Option::is_some).await.unwrap();
        assert_eq!(exit, Some(Exit::Code(3)));
    }

    #[tokio::test]
    async fn a_child_gets_a_clean_environment_and_what_its_settings_name() {
        let mut settings = settings();
        settings.env = ChildEnv {
            pass: vec!["CARGO_PKG_NAME".into()],
            set: vec![("MODE".into(), "fast".into())],
        };
        let launch = Launch::new(
            "p",
            &PluginSource::Command(vec!["sh".into(), "-c".into(), "env >&2".into()]),
            &settings,
        )
        .unwrap();
        let mut child = spawn(&launch).await.unwrap();
        let mut log = String::new();
        use tokio::io::AsyncReadExt;
        child.log.read_to_string(&mut log).await.unwrap();
        let names: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, _)| n)
            .collect();
        assert!(log.lines().any(|l| l == "MODE=fast"), "{log}");
        assert!(
            log.lines()
                .any(|l| l == "CARGO_PKG_NAME=backworks-plugin-host"),
            "{log}"
        );
        // Cargo sets this one for the test process; nobody passed it on.
        assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
        assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{log}");
        assert!(
            names.contains(&env::NAME),
            "the runner's own settings: {log}"
        );
    }

    #[tokio::test]
    async fn dropping_the_guard_kills_the_whole_group() {
        let launch = Launch::new(
            "p",
            &PluginSource::Command(vec![
                "sh".into(),
                "-c".into(),
                // A grandchild in the same group, then wait forever.
                "sleep 600 & echo $! >&2; exec sleep 600".into(),
            ]),
            &settings(),
        )
        .unwrap();
        let mut child = spawn(&launch).await.unwrap();
        let mut log = tokio::io::BufReader::new(child.log);
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        log.read_line(&mut line).await.unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        drop(child.group);
        let exit = *child.exit.wait_for(Option::is_some).await.unwrap();
        assert_eq!(
            exit,
            Some(Exit::Signal {
                signal: 9,
                core_dumped: false
            })
        );
        // The grandchild got the same SIGKILL; once its parent is gone, init reaps it.
        let gone = async {
            while alive(grandchild) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), gone)
            .await
            .expect("the grandchild was killed with the group");
    }

    /// Whether `pid` runs (a zombie waiting for its reaper does not).
    pub(crate) fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name, which is in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => false,
        }
    }
}

//! Process isolation: a plugin runs in a supervised child process and is called over the wire
//! protocol ([`crate::protocol`]), so a crash, an abort, a hang or a memory hog in it costs only
//! its own calls.
//!
//! - [`ProcessPlugin`] is the host side, behind the same [`Plugin`](crate::Plugin) trait as an
//!   in-process plugin. It starts the child, runs the handshake (`getmanifest`, version check,
//!   `init`), and supervises it: when the child dies, calls in flight answer 502 at once with
//!   why (`child exited with signal 11 (SIGSEGV)`), calls arriving while it is down answer 503,
//!   and it is restarted after an exponential backoff until it crashes
//!   [`RestartPolicy::max_restarts`](crate::policy::RestartPolicy) times within the window; then
//!   the plugin is marked [`PluginState::Error`](crate::PluginState::Error) and answers 503.
//!   A child that stops answering (a call abandoned at its deadline, then no answer to a health
//!   check) or reports itself unhealthy three times in a row is killed and restarted.
//! - [`child_main_if_requested`] is the child side: call it first thing in `main` of the
//!   executable that runs plugins (by default the host's own executable, started as
//!   `<exe> __plugin-child …`). It sets the parent-death signal and the resource limits, then
//!   serves a plugin library or `exec`s a command.
//!
//! No process a plugin starts outlives it: the runner is a child subreaper that kills every
//! descendant (one that left the process group with `setsid` included) when the plugin process
//! ends, when the plugin is shut down, restarted or dropped, and when the host dies, even by
//! `SIGKILL` (its parent-death signal, `PR_SET_PDEATHSIG`, is one it catches); see the `reaper`
//! module. Children start with a clean environment
//! ([`ProcessSettings::env`](crate::policy::ProcessSettings::env)), and the host holds at most
//! [`ProcessSettings::max_outbound`](crate::policy::ProcessSettings::max_outbound) bytes for a
//! child that does not read its input. The child's stderr is its log: each line reaches the
//! host's log at the level its prefix names, tagged `plugin = "<name>"`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backworks_plugin_host::{
//!     Lifecycle, Plugin, PluginSource, PluginState, ProcessPlugin, ProcessSettings,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let lifecycle = Arc::new(Lifecycle::new("report", PluginState::Loading));
//! let source = PluginSource::Command(vec!["python3".into(), "plugins/report.py".into()]);
//! let plugin =
//!     ProcessPlugin::start("report", &source, &ProcessSettings::default(), lifecycle).await?;
//! plugin.initialize(&serde_json::json!({})).await?;
//! println!("{:?}", plugin.supervision());
//! # Ok(()) }
//! ```

mod child;
mod child_log;
mod exit;
mod live;
mod plugin;
mod reaper;
mod restart;
mod spawn;
mod status;
mod stderr;
mod supervisor;

pub(crate) use child::env;
pub use child::{CHILD_ARG, child_main_if_requested};
pub use plugin::ProcessPlugin;
pub use status::{ChildState, Containment, SupervisionSnapshot};

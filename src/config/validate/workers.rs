//! A plugin's `workers:`: how many threads its library's own async runtime runs waiting calls on.

use std::num::NonZeroU32;

use backworks_plugin_host::Isolation;
use backworks_plugin_sdk::abi::MAX_WORKERS;

use super::{INVALID, integer};
use crate::config::checked::PluginKind;
use crate::config::error::ConfigError;
use crate::config::interpolate::Interpolator;
use crate::config::model::RawPlugin;

/// `workers: N` (1 to [`MAX_WORKERS`]) of a library plugin run in process; `None` when absent.
/// `kind` and `isolation` are the plugin's, checked already.
pub(super) fn workers(
    ip: &Interpolator<'_>,
    n: &str,
    raw: &RawPlugin,
    kind: &PluginKind,
    isolation: &Isolation,
) -> Result<Option<NonZeroU32>, ConfigError> {
    let Some(written) = &raw.workers else {
        return Ok(None);
    };
    let expected = format!("a whole number of threads from 1 to {MAX_WORKERS}");
    let what = format!("`workers` of plugin `{n}`");
    let count: u32 = integer(ip, written, &what, &expected)?;
    let Some(count) = NonZeroU32::new(count).filter(|c| c.get() <= MAX_WORKERS) else {
        let message = format!("{what} must be {expected}, found `{count}`");
        return Err(ip.error(INVALID, written.referenced, message));
    };
    let refused = match (kind, isolation) {
        (PluginKind::Builtin, _) => Some("a built-in, which runs on the host's own threads"),
        (PluginKind::Command { .. }, _) => Some("a `command`, whose program runs its own threads"),
        (_, Isolation::Process(_)) => Some(
            "isolated (`isolation: process`), and a plugin child runs its library with the \
             default of one thread",
        ),
        _ => None,
    };
    if let Some(why) = refused {
        let message = format!(
            "plugin `{n}` sets `workers`, which applies to a library run in process; it is {why}"
        );
        return Err(ip.error(INVALID, written.referenced, message));
    }
    Ok(Some(count))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{error, parse};

    #[test]
    fn absent_is_the_plugins_default_and_a_count_is_read() {
        let c =
            parse("plugins:\n  a: {path: liba.so}\n  b: {path: libb.so, workers: 4}\n").unwrap();
        assert_eq!(c.plugins[0].workers, None);
        assert_eq!(c.plugins[1].workers.map(|w| w.get()), Some(4));
        let c = parse("plugins:\n  a: {path: liba.so, workers: \"${N:-64}\"}\n").unwrap();
        assert_eq!(c.plugins[0].workers.map(|w| w.get()), Some(64));
    }

    #[test]
    fn zero_too_many_and_not_a_number_are_refused_where_written() {
        assert_eq!(
            error("plugins:\n  p: {path: l.so, workers: 0}\n"),
            "2:28: `workers` of plugin `p` must be a whole number of threads from 1 to 64, found `0`"
        );
        assert_eq!(
            error("plugins:\n  p:\n    path: l.so\n    workers: 65\n"),
            "4:14: `workers` of plugin `p` must be a whole number of threads from 1 to 64, found `65`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, workers: 99999999999}\n"),
            "2:28: `workers` of plugin `p` must be a whole number of threads from 1 to 64, found \
             `99999999999`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, workers: -1}\n"),
            "2:28: `workers` of plugin `p` must be a whole number of threads from 1 to 64, found `-1`"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, workers: two}\n"),
            "2:28: `workers` of plugin `p` must be a whole number of threads from 1 to 64, found `two`"
        );
    }

    #[test]
    fn plugins_without_a_library_runtime_in_process_refuse_it() {
        assert_eq!(
            error("plugins:\n  p: {workers: 2}\n"),
            "2:16: plugin `p` sets `workers`, which applies to a library run in process; it is a \
             built-in, which runs on the host's own threads"
        );
        assert_eq!(
            error("plugins:\n  p: {command: [x], workers: 2}\n"),
            "2:30: plugin `p` sets `workers`, which applies to a library run in process; it is a \
             `command`, whose program runs its own threads"
        );
        assert_eq!(
            error("plugins:\n  p: {path: l.so, isolation: process, workers: 2}\n"),
            "2:48: plugin `p` sets `workers`, which applies to a library run in process; it is \
             isolated (`isolation: process`), and a plugin child runs its library with the \
             default of one thread"
        );
    }
}

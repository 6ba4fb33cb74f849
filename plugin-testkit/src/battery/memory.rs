//! The `memory` check: no growth of the plugin process's resident memory over many calls.
//!
//! The measure is the resident set (`VmRSS` of `/proc/<pid>/status`) of the process the plugin
//! runs in: this one for a library in process, the child for an isolated library or a command.
//! After a warm-up (caches, pools, the runtime's threads reach their size), the same number of
//! calls is made in each of several rounds; a plugin that keeps something per call grows in
//! every round, while the noise of a process doing other things (other tests of the same
//! binary) comes and goes. So the check fails only when the *smallest* growth of a round is over
//! a bound, and the bound is generous: 1 MiB plus 256 bytes per call.

use std::sync::Arc;
use std::time::Duration;

use backworks_plugin_host::Plugin;

use super::calls::{Probe, within};
use super::explain::{Verdict, judge};
use crate::report::Check;

/// Rounds measured after the warm-up.
const ROUNDS: usize = 3;
/// Growth a round may show whatever the number of calls.
const BASE_ALLOWANCE: u64 = 1024 * 1024;
/// Growth a round may show per call.
const PER_CALL_ALLOWANCE: u64 = 256;

/// The resident anonymous memory of process `pid` (`RssAnon`: the heap and stacks, not the
/// pages of mapped files such as libraries), or its whole resident set on kernels without it, in
/// bytes (Linux); `None` where it cannot be read.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::to_owned))
    };
    let value = field("RssAnon:").or_else(|| field("VmRSS:"))?;
    let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The bound on a round's growth for `calls` calls.
pub(crate) fn allowance(calls: usize) -> u64 {
    BASE_ALLOWANCE + PER_CALL_ALLOWANCE * calls as u64
}

/// Whether the growths of the rounds show a leak: the smallest one is over the bound.
pub(crate) fn leaks(growths: &[u64], calls: usize) -> bool {
    growths.iter().min().is_some_and(|&g| g > allowance(calls))
}

/// `memory`: `calls` probe calls per round, in `pid` (the process the plugin runs in; `None`
/// when it is not known).
pub(crate) async fn memory(
    plugin: Arc<dyn Plugin>,
    deadline: Duration,
    probe: &Probe,
    calls: usize,
    pid: impl Fn() -> Option<u32>,
    place: &str,
) -> Check {
    if pid().and_then(resident_bytes).is_none() {
        return Check::skip(
            "memory",
            "the process's resident memory cannot be read here (/proc is Linux's)",
        );
    }
    let mut growths = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let before = pid().and_then(resident_bytes);
        for _ in 0..calls {
            let outcome = within(deadline, probe.call_once(plugin.clone())).await;
            if let Verdict::Wrong(why) = judge(&probe.describe(), outcome.as_ref().copied()) {
                return Check::fail(
                    "memory",
                    format!("a call of the memory check failed: {why}"),
                );
            }
        }
        let after = pid().and_then(resident_bytes);
        let (Some(before), Some(after)) = (before, after) else {
            return Check::fail(
                "memory",
                "the plugin's process went away during the memory check (it crashed or exited)",
            );
        };
        // Round 0 warms up.
        if round > 0 {
            growths.push(after.saturating_sub(before));
        }
    }
    let smallest = growths.iter().copied().min().unwrap_or(0);
    let kib = |b: u64| b.div_ceil(1024);
    if leaks(&growths, calls) {
        Check::fail(
            "memory",
            format!(
                "memory grows with every call: the resident memory {place} grew by at least {} \
                 KiB in each of {ROUNDS} rounds of {calls} {} calls (about {} bytes a call; allowed {} \
                 KiB a round). Something is kept per call: a leak (a Box::leak, mem::forget, a \
                 C buffer never freed) or a cache or log without a bound",
                kib(smallest),
                probe.describe(),
                smallest / calls.max(1) as u64,
                kib(allowance(calls)),
            ),
        )
    } else {
        Check::pass(
            "memory",
            format!(
                "the resident memory {place} grew by {} KiB at most in the quietest of \
                 {ROUNDS} rounds of {calls} {} calls (allowed {} KiB)",
                kib(smallest),
                probe.describe(),
                kib(allowance(calls)),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_processs_resident_memory() {
        let bytes = resident_bytes(std::process::id()).expect("Linux has /proc");
        assert!(bytes > 64 * 1024, "{bytes}");
        assert_eq!(resident_bytes(u32::MAX), None);
    }

    #[test]
    fn only_growth_in_every_round_is_a_leak() {
        let calls = 1000;
        let bound = allowance(calls);
        // Noise in one round, quiet in another: no leak.
        assert!(!leaks(&[50 * bound, 0, 10 * bound], calls));
        // Growth over the bound in every round: a leak.
        assert!(leaks(&[bound + 1, 2 * bound, 3 * bound], calls));
        assert!(!leaks(&[bound, bound, bound], calls));
    }
}

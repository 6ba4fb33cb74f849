//! When a crashed child is started again: exponential backoff and the crash-loop limit of a
//! [`RestartPolicy`], as a pure state machine with the clock passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::policy::RestartPolicy;

/// What to do after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start the child again after this delay.
    Restart {
        /// How long to wait first.
        after: Duration,
    },
    /// Too many crashes in the window: stop restarting. The reason, for the lifecycle state.
    GiveUp(String),
}

/// Counts crashes within the policy's window and decides on each new one.
///
/// The delay is `initial_backoff × 2^(n − 1)` for the n-th crash within the window, capped at
/// `max_backoff`; a child that stays up for a whole window starts again from `initial_backoff`.
/// The `max_restarts`-th crash within the window gives up.
#[derive(Debug)]
pub(crate) struct RestartTracker {
    policy: RestartPolicy,
    crashes: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no crashes yet.
    pub(crate) fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            crashes: VecDeque::new(),
        }
    }

    /// Records a crash at `now` and decides what follows.
    pub(crate) fn on_crash(&mut self, now: Instant) -> Decision {
        while let Some(&first) = self.crashes.front() {
            if now.saturating_duration_since(first) >= self.policy.window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        self.crashes.push_back(now);
        let count = self.crashes.len() as u32;
        if count >= self.policy.max_restarts.max(1) {
            let times = if count == 1 { "once" } else { "times" };
            let count = if count == 1 {
                String::new()
            } else {
                format!("{count} ")
            };
            return Decision::GiveUp(format!(
                "crashed {count}{times} in {}; not restarting",
                format_duration(self.policy.window)
            ));
        }
        let doublings = (count - 1).min(31);
        let after = self
            .policy
            .initial_backoff
            .checked_mul(1 << doublings)
            .unwrap_or(self.policy.max_backoff)
            .min(self.policy.max_backoff);
        Decision::Restart { after }
    }
}

/// `60s`, `1.5s`, `250ms`: how a window or delay reads in a message.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::new(policy());
        let decisions: Vec<_> = (0..5).map(|i| tracker.on_crash(t0 + ms(i))).collect();
        assert_eq!(
            decisions,
            [
                Decision::Restart { after: ms(100) },
                Decision::Restart { after: ms(200) },
                Decision::Restart { after: ms(400) },
                Decision::Restart { after: ms(500) },
                Decision::GiveUp("crashed 5 times in 60s; not restarting".into()),
            ]
        );
    }

    #[test]
    fn crashes_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::new(policy());
        for i in 0..4 {
            tracker.on_crash(t0 + ms(i));
        }
        // A minute later the earlier crashes no longer count: back to the first delay.
        assert_eq!(
            tracker.on_crash(t0 + Duration::from_secs(61)),
            Decision::Restart { after: ms(100) }
        );
        // Only crashes inside the window add up.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(
            tracker.on_crash(later),
            Decision::Restart { after: ms(100) }
        );
        assert_eq!(
            tracker.on_crash(later + ms(1)),
            Decision::Restart { after: ms(200) }
        );
    }

    #[test]
    fn a_limit_of_one_gives_up_on_the_first_crash_and_zero_means_one() {
        for max_restarts in [0, 1] {
            let mut tracker = RestartTracker::new(RestartPolicy {
                max_restarts,
                window: Duration::from_millis(1500),
                ..policy()
            });
            assert_eq!(
                tracker.on_crash(Instant::now()),
                Decision::GiveUp("crashed once in 1.5s; not restarting".into())
            );
        }
    }

    #[test]
    fn huge_backoffs_saturate_at_the_cap() {
        let mut tracker = RestartTracker::new(RestartPolicy {
            initial_backoff: Duration::from_secs(u64::MAX / 4),
            max_backoff: Duration::from_secs(30),
            max_restarts: 100,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for i in 0..40 {
            assert_eq!(
                tracker.on_crash(t0 + ms(i)),
                Decision::Restart {
                    after: Duration::from_secs(30)
                }
            );
        }
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(ms(250)), "250ms");
        assert_eq!(format_duration(ms(1500)), "1.5s");
    }
}

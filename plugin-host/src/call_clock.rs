//! The clock calls are timed with: time since a fixed origin, read from the TSC.
//!
//! Every guarded call reads the clock twice (admitted, settled), and every endpoint request once
//! more around its calls. `quanta::Instant::now` reads the TSC too, but first looks at a
//! per-thread override (for mocking) and the global clock's `OnceCell`, and `elapsed` then goes
//! through `Instant` arithmetic: ~77 instructions a read on the host path. A [`CallClock`] keeps
//! its own copy of the calibrated clock and the raw count at its origin, so a read is the counter
//! read, one subtraction and one scaling multiply.

use std::sync::OnceLock;
use std::time::Duration;

/// The process's calibrated clock: made (and calibrated, once) by the first [`CallClock`].
/// Making a `quanta::Clock` checks the CPU's counter each time (`cpuid`, a VM exit on most
/// hypervisors), which 1,000 plugins loading at once should not each pay.
fn shared() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Time since this clock was made, cheap to read on the call path. Readings of one clock never
/// go backwards by more than the counter's skew between cores (a reading before the origin is
/// zero); readings of two clocks are not comparable.
///
/// Aligned to 128 bytes (two cache lines, what adjacent-line prefetch pulls in together): it
/// is read on every call and never written, and it sits in structures whose counters every
/// worker writes on every call. Sharing a line with them, each read would wait for the line to
/// come back from the core that wrote a counter last.
#[derive(Clone, Debug)]
#[repr(align(128))]
pub struct CallClock {
    clock: quanta::Clock,
    origin: u64,
}

impl CallClock {
    /// A clock whose origin is now.
    pub fn new() -> CallClock {
        let clock = shared().clone();
        let origin = clock.raw();
        CallClock { clock, origin }
    }

    /// The time since this clock's origin.
    #[inline]
    pub fn now(&self) -> Duration {
        self.clock.delta(self.origin, self.clock.raw())
    }
}

impl Default for CallClock {
    fn default() -> CallClock {
        CallClock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_wall_clock() {
        let clock = CallClock::new();
        let wall = std::time::Instant::now();
        let first = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let second = clock.now();
        let walled = wall.elapsed();
        assert!(second >= first);
        // The clock is calibrated against the OS clock: 20 ms of sleep reads as 20 ms or more,
        // and not more than the wall clock saw around it (plus calibration's error).
        assert!(
            second - first >= Duration::from_millis(19),
            "{:?}",
            second - first
        );
        assert!(
            second <= walled + Duration::from_millis(5),
            "{second:?} against {walled:?}"
        );
    }
}

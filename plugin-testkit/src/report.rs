//! What a conformance run found: one [`Check`] per property, each passed, failed or skipped, with
//! an explanation written for the plugin's author.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The plugin did what the check asks.
    Pass,
    /// It did not; the check's detail says what happened and what to do about it.
    Fail,
    /// Not run: nothing to check (no endpoint declared, not on this platform) or an earlier
    /// check failed; the detail says which.
    Skip,
}

impl Outcome {
    /// `✓`, `✗` or `–`.
    pub fn symbol(self) -> &'static str {
        match self {
            Outcome::Pass => "✓",
            Outcome::Fail => "✗",
            Outcome::Skip => "–",
        }
    }
}

/// One check of the battery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's name: `metadata`, `initialize`, `bad config`, `endpoint GET /hello/ana`,
    /// `hook before_request`, `hook after_response`, `health`, `concurrency`, `cancellation`,
    /// `hostile input`, `memory`, `shutdown`.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What was seen; on a failure, what it means and what to do about it.
    pub detail: String,
}

impl Check {
    pub(crate) fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Outcome::Pass, detail)
    }

    pub(crate) fn fail(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Outcome::Fail, detail)
    }

    pub(crate) fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Outcome::Skip, detail)
    }

    fn new(name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome,
            detail: detail.into(),
        }
    }
}

/// The result of [`Conformance::run`](crate::Conformance::run): every check, in the order run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The plugin checked: the library's path or the command line.
    pub plugin: String,
    /// Whether it ran in a child process.
    pub isolated: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed (skipped ones do not count against it).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }

    /// The check named `name` (`"health"`, `"endpoint GET /x"`), if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Panics, listing each failed check with its explanation, unless every check passed or was
    /// skipped. The message is the whole report, so `cargo test` shows what to fix.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.passed() {
            let failed = self.failures().count();
            panic!(
                "the plugin failed {failed} conformance check{}:\n{self}",
                if failed == 1 { "" } else { "s" }
            );
        }
    }

    /// `n passed, n failed, n skipped`.
    pub fn summary(&self) -> String {
        let count = |o| self.checks.iter().filter(|c| c.outcome == o).count();
        format!(
            "{} passed, {} failed, {} skipped",
            count(Outcome::Pass),
            count(Outcome::Fail),
            count(Outcome::Skip)
        )
    }
}

impl fmt::Display for Report {
    /// One line per check (`✓ name: detail`), then the summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let where_ = if self.isolated {
            ", in a child process"
        } else {
            ""
        };
        writeln!(f, "conformance of {}{where_}", self.plugin)?;
        for check in &self.checks {
            writeln!(
                f,
                "{} {}: {}",
                check.outcome.symbol(),
                check.name,
                check.detail
            )?;
        }
        write!(f, "{}", self.summary())
    }
}

/// `1.5 s`, `250 ms`.
pub(crate) fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        format!("{} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Check>) -> Report {
        Report {
            plugin: "libp.so".into(),
            isolated: false,
            checks,
        }
    }

    #[test]
    fn skipped_checks_do_not_fail_a_report() {
        let report = report(vec![
            Check::pass("metadata", "p 1.0.0"),
            Check::skip("memory", "not on this platform"),
        ]);
        assert!(report.passed());
        report.assert_passed();
        assert_eq!(report.summary(), "1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn a_failure_panics_with_every_line_of_the_report() {
        let report = report(vec![
            Check::pass("metadata", "p 1.0.0"),
            Check::fail("health", "reports unhealthy: disk full"),
        ]);
        let panic = std::panic::catch_unwind(|| report.assert_passed()).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("the plugin failed 1 conformance check:\n"));
        assert!(message.contains("✓ metadata: p 1.0.0"), "{message}");
        assert!(
            message.contains("✗ health: reports unhealthy: disk full"),
            "{message}"
        );
        assert!(
            message.ends_with("1 passed, 1 failed, 0 skipped"),
            "{message}"
        );
    }

    #[test]
    fn serializes_outcomes_in_lower_case() {
        let json = serde_json::to_value(report(vec![Check::skip("memory", "x")])).unwrap();
        assert_eq!(json["checks"][0]["outcome"], "skip");
        assert_eq!(json["isolated"], false);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_millis(250)), "250 ms");
        assert_eq!(seconds(Duration::from_secs(10)), "10 s");
    }
}

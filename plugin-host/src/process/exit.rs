//! How a child ended, as the messages say it: `child exited with signal 11 (SIGSEGV)`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// A signal ended it.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// Its status could not be collected (someone else reaped it).
    Unknown,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal {
                signal,
                core_dumped: status.core_dumped(),
            },
            (None, None) => Exit::Unknown,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "child exited with status {code}"),
            Exit::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "child exited with signal {signal}")?;
                if let Ok(sig) = Signal::try_from(signal) {
                    write!(f, " ({})", sig.as_str())?;
                }
                if core_dumped {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
            Exit::Unknown => write!(f, "child exited (status unknown)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_like_the_shell_would_say_them() {
        assert_eq!(Exit::Code(1).to_string(), "child exited with status 1");
        let segv = Exit::Signal {
            signal: 11,
            core_dumped: false,
        };
        assert_eq!(segv.to_string(), "child exited with signal 11 (SIGSEGV)");
        let abrt = Exit::Signal {
            signal: 6,
            core_dumped: true,
        };
        assert_eq!(
            abrt.to_string(),
            "child exited with signal 6 (SIGABRT), core dumped"
        );
    }
}

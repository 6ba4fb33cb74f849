//! The one error type of the configuration module.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, MessageFormatter as _, UserMessageFormatter};

/// What went wrong while loading a configuration file.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The file could not be read (missing, unreadable, not UTF-8). Line and column are 0.
    Io,
    /// The text is not valid YAML, or does not have the expected shape: an unknown field, a
    /// value of the wrong type, a duplicate key.
    Parse,
    /// A `${VAR}` reference could not be expanded: the variable is not set and has no
    /// default, or the reference itself is malformed.
    Interpolation,
    /// The document is well formed but breaks a rule: an unknown plugin is referenced, a
    /// path has bad syntax, two endpoints claim the same route...
    Invalid,
}

/// An error in a configuration file, with the place it points at.
///
/// `Display` renders it the way compilers do: `backworks.yaml:12:5: endpoint `hello` names
/// unknown plugin `helo``, or `backworks.yaml: cannot read file: ...` when no position is
/// known. The message never contains the value of an environment variable: interpolation
/// errors name the variable, and values that came from interpolation are quoted as written
/// in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", position(.file, *.line, *.column))]
pub struct ConfigError {
    kind: ConfigErrorKind,
    file: PathBuf,
    line: u64,
    column: u64,
    message: String,
}

impl ConfigError {
    /// Builds an error at `line`:`column` (1-based; 0 when unknown) of `file`.
    ///
    /// Control characters in `message` are escaped, so a hostile file cannot forge log lines.
    pub fn new(
        kind: ConfigErrorKind,
        file: impl Into<PathBuf>,
        line: u64,
        column: u64,
        message: impl AsRef<str>,
    ) -> Self {
        Self {
            kind,
            file: file.into(),
            line,
            column,
            message: escape_controls(message.as_ref()),
        }
    }

    /// Builds an error pointing at a location recorded by the YAML parser.
    pub(crate) fn at(
        kind: ConfigErrorKind,
        file: &Path,
        location: Location,
        message: impl AsRef<str>,
    ) -> Self {
        Self::new(kind, file, location.line(), location.column(), message)
    }

    /// Converts a parse error of `serde-saphyr`, keeping its position but not its snippet.
    pub(crate) fn from_yaml(file: &Path, error: &serde_saphyr::Error) -> Self {
        let inner = error.without_snippet();
        let (line, column) = inner
            .location()
            .or_else(|| error.location())
            .map_or((0, 0), |l| (l.line(), l.column()));
        let message = UserMessageFormatter.format_message(inner);
        Self::new(ConfigErrorKind::Parse, file, line, column, message)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The configuration file the error is in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The 1-based line the error points at, or 0 when unknown.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The 1-based column (in characters) the error points at, or 0 when unknown.
    pub fn column(&self) -> u64 {
        self.column
    }

    /// The message alone, without the position prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn position(file: &Path, line: u64, column: u64) -> Position<'_> {
    Position { file, line, column }
}

/// `file:line:column`, or just `file` when the position is unknown.
struct Position<'a> {
    file: &'a Path,
    line: u64,
    column: u64,
}

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        Ok(())
    }
}

fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_line_and_column() {
        let e = ConfigError::new(
            ConfigErrorKind::Invalid,
            "backworks.yaml",
            12,
            5,
            "endpoint `hello` names unknown plugin `helo`",
        );
        assert_eq!(
            e.to_string(),
            "backworks.yaml:12:5: endpoint `hello` names unknown plugin `helo`"
        );
        assert_eq!(e.kind(), ConfigErrorKind::Invalid);
        assert_eq!((e.line(), e.column()), (12, 5));
        assert_eq!(e.file(), Path::new("backworks.yaml"));
    }

    #[test]
    fn display_without_position() {
        let e = ConfigError::new(ConfigErrorKind::Io, "/etc/b.yaml", 0, 0, "cannot read");
        assert_eq!(e.to_string(), "/etc/b.yaml: cannot read");
    }

    #[test]
    fn control_characters_are_escaped() {
        let e = ConfigError::new(ConfigErrorKind::Invalid, "b.yaml", 1, 1, "a\nb\u{1b}[31m");
        assert_eq!(e.message(), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn yaml_errors_keep_position_and_drop_snippet() {
        let err = serde_saphyr::from_str::<u16>("\n  [1, 2").unwrap_err();
        let e = ConfigError::from_yaml(Path::new("b.yaml"), &err);
        assert_eq!(e.kind(), ConfigErrorKind::Parse);
        assert_eq!(e.line(), 2);
        assert!(e.column() > 0);
        assert!(!e.message().contains('\n'), "{}", e.message());
        assert!(!e.message().contains("line"), "{}", e.message());
    }
}

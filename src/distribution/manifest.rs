//! `backworks-package.json`: what a package holds, pinned by hash. Pure data and its rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest's file name inside a package.
pub const MANIFEST_FILE: &str = "backworks-package.json";
/// The manifest's minisign signature inside a package.
pub const MANIFEST_SIGNATURE: &str = "backworks-package.json.minisig";
/// The target of a package that runs anywhere (a script).
pub const TARGET_ANY: &str = "any";
/// The manifest format this host writes and reads.
pub const FORMAT: u32 = 1;

/// What kind of plugin a package holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    /// A plugin library (`.so`), loaded in process or under process isolation.
    Library,
    /// A program speaking the wire protocol (a Python script), always process-isolated.
    Command,
}

/// The manifest of a package. Every file of the package but the manifest and its signature is
/// listed in `files` with its SHA-256, so the manifest's signature covers the whole package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format (`FORMAT`, currently 1).
    pub format: u32,
    /// The plugin's name.
    pub name: String,
    /// The plugin's version (semver).
    pub version: String,
    /// Library or command.
    pub kind: PackageKind,
    /// The library or the script, a path in `files`.
    pub entry: String,
    /// The target triple it was built for, or [`TARGET_ANY`].
    pub target: String,
    /// The plugin's ABI, `major.minor` (libraries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// The SDK version it was built with (libraries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    /// How to run a command package: argv, where an element naming a file of the package is
    /// replaced by that file's installed path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// One line about the plugin.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Every other file of the package: path → SHA-256 (lower-case hex).
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// Checks the rules a manifest read from an untrusted package must follow; the error says
    /// which field breaks which rule.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this host reads format {FORMAT})",
                self.format
            ));
        }
        check_name(&self.name)?;
        semver::Version::parse(&self.version)
            .map_err(|e| format!("manifest `version` `{}` is not semver: {e}", self.version))?;
        if self.target.is_empty() || self.target.contains(char::is_whitespace) {
            return Err(format!(
                "manifest `target` `{}` is not a target",
                self.target
            ));
        }
        for (path, hash) in &self.files {
            check_path(path).map_err(|e| format!("manifest `files`: {e}"))?;
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!(
                    "manifest `files`: `{path}` has sha256 `{hash}`, expected 64 hex digits"
                ));
            }
            if path == MANIFEST_FILE || path == MANIFEST_SIGNATURE {
                return Err(format!("manifest `files` lists `{path}`"));
            }
        }
        if !self.files.contains_key(&self.entry) {
            return Err(format!(
                "manifest `entry` `{}` is not one of its `files`",
                self.entry
            ));
        }
        match self.kind {
            PackageKind::Library if self.abi.is_none() || self.sdk.is_none() => {
                Err("manifest of a library must give `abi` and `sdk`".to_owned())
            }
            PackageKind::Command if self.command.as_ref().is_none_or(Vec::is_empty) => {
                Err("manifest of a command must give its `command`".to_owned())
            }
            _ => Ok(()),
        }
    }

    /// The package's file name: `NAME-VERSION-TARGET.bwpkg`.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}.bwpkg", self.name, self.version, self.target)
    }
}

/// A plugin name as the config accepts it: letters, digits, `_`, `.`, `-`; not starting with `.`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(format!(
            "plugin name `{name}` is not valid: 1 to 64 letters, digits, `_`, `.` and `-`, \
             not starting with `.`"
        ));
    }
    Ok(())
}

/// A path inside a package: relative, `/`-separated, no `.`, `..` or empty component, no `\`.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    let bad = if path.is_empty() {
        Some("is empty")
    } else if path.starts_with('/') {
        Some("is an absolute path")
    } else if path.contains('\\') || path.contains('\0') {
        Some("holds a `\\` or a NUL")
    } else if path.split('/').any(|c| c == "..") {
        Some("holds a `..` component (path traversal)")
    } else if path.split('/').any(|c| c.is_empty() || c == ".") {
        Some("holds an empty or `.` component")
    } else if path.chars().any(char::is_control) {
        Some("holds a control character")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!("path `{}` {why}", path.escape_default())),
        None => Ok(()),
    }
}

/// This host's target triple, as `rustc` names it (`x86_64-unknown-linux-gnu`).
pub fn host_target() -> String {
    let arch = std::env::consts::ARCH;
    let rest = if cfg!(target_os = "linux") {
        if cfg!(target_env = "musl") {
            "unknown-linux-musl"
        } else {
            "unknown-linux-gnu"
        }
    } else if cfg!(target_os = "macos") {
        "apple-darwin"
    } else if cfg!(target_os = "windows") {
        if cfg!(target_env = "gnu") {
            "pc-windows-gnu"
        } else {
            "pc-windows-msvc"
        }
    } else {
        std::env::consts::OS
    };
    format!("{arch}-{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            name: "hello".into(),
            version: "1.2.0".into(),
            kind: PackageKind::Library,
            entry: "libhello.so".into(),
            target: host_target(),
            abi: Some("1.0".into()),
            sdk: Some("0.1.0".into()),
            command: None,
            description: String::new(),
            files: [("libhello.so".to_owned(), "a".repeat(64))].into(),
        }
    }

    #[test]
    fn paths_inside_a_package() {
        for good in ["a", "lib/x.so", "README.md", ".hidden"] {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "traversal"),
            ("a/../../x", "traversal"),
            ("a//b", "empty"),
            ("./a", "`.`"),
            ("a\\b", "`\\`"),
        ] {
            let err = check_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn manifest_rules() {
        assert_eq!(manifest().check(), Ok(()));
        let mut m = manifest();
        m.version = "one".into();
        assert!(m.check().unwrap_err().contains("`version` `one`"));
        let mut m = manifest();
        m.entry = "other.so".into();
        assert!(m.check().unwrap_err().contains("`entry` `other.so`"));
        let mut m = manifest();
        m.files.insert("../x".into(), "b".repeat(64));
        assert!(m.check().unwrap_err().contains("traversal"));
        let mut m = manifest();
        m.files.insert("y".into(), "XYZ".into());
        assert!(m.check().unwrap_err().contains("64 hex digits"));
        let mut m = manifest();
        m.abi = None;
        assert!(m.check().unwrap_err().contains("`abi` and `sdk`"));
        let mut m = manifest();
        m.name = "a b".into();
        assert!(m.check().unwrap_err().contains("not valid"));
        assert_eq!(
            manifest().file_name(),
            format!("hello-1.2.0-{}.bwpkg", host_target())
        );
    }

    #[test]
    fn unknown_manifest_fields_are_refused() {
        let mut value = serde_json::to_value(manifest()).unwrap();
        value["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Manifest>(value).is_err());
    }
}

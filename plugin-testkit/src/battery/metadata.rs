//! The `metadata` check: what a plugin says of itself, judged as the host judges it — a library's
//! from its file, read without running it; a command's from its manifest once it started.

use std::path::Path;

use backworks_plugin_host::sdk::PluginMetadata;
use backworks_plugin_host::{inspect, supported_sdk};

use super::explain;
use crate::report::Check;

/// `metadata` of a library: read from its file without running it, judged as the host
/// judges it.
pub(super) fn library(path: &Path, isolated: bool) -> (Check, Option<PluginMetadata>) {
    let inspection = match inspect(path) {
        Ok(inspection) => inspection,
        Err(error) => {
            return (
                Check::fail("metadata", format!("{error}{}", explain::advice(&error))),
                None,
            );
        }
    };
    let meta = inspection.metadata.clone();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if let Err(error) = &inspection.compatibility {
        if isolated && inspection.runs_in_child() {
            notes.push("built with panic = \"abort\": a panic ends its child process");
        } else {
            problems.push(format!("{error}{}", explain::advice(error)));
        }
    }
    problems.extend(identity_problems(&meta));
    if problems.is_empty() {
        let mut detail = describe_metadata(&meta);
        for note in notes {
            detail.push_str("; ");
            detail.push_str(note);
        }
        (Check::pass("metadata", detail), Some(meta))
    } else {
        (Check::fail("metadata", problems.join("; ")), Some(meta))
    }
}

/// What is wrong with a plugin's name and version, whatever its kind.
fn identity_problems(meta: &PluginMetadata) -> Vec<String> {
    let mut problems = Vec::new();
    if meta.name.trim().is_empty() {
        problems.push("the plugin's name is empty: export_plugin!'s `name = \"...\"`".to_owned());
    }
    if semver::Version::parse(&meta.version).is_err() {
        problems.push(format!(
            "the plugin's version `{}` is not a semantic version (1.2.3): the host orders \
             versions for updates; in Rust use version = env!(\"CARGO_PKG_VERSION\")",
            meta.version
        ));
    }
    problems
}

/// `metadata` of a command: its manifest, judged once it started.
pub(super) fn manifest(meta: &PluginMetadata) -> Check {
    let problems = identity_problems(meta);
    if problems.is_empty() {
        let hooks = match meta.hooks {
            Some(h) if !h.is_empty() => h.names().collect::<Vec<_>>().join(", "),
            _ => "none".to_owned(),
        };
        Check::pass(
            "metadata",
            format!("manifest: {} {}, hooks: {hooks}", meta.name, meta.version),
        )
    } else {
        Check::fail("metadata", problems.join("; "))
    }
}

/// `hello 0.1.0, ABI 1.0, SDK 0.1.0 (this host loads ^0.1), panic = unwind, hooks: none`.
fn describe_metadata(meta: &PluginMetadata) -> String {
    let hooks = match meta.hooks {
        None => "not declared".to_owned(),
        Some(h) if h.is_empty() => "none".to_owned(),
        Some(h) => h.names().collect::<Vec<_>>().join(", "),
    };
    format!(
        "{} {}, ABI {}.{}, SDK {} (this host loads {}), panic = {}, hooks: {hooks}",
        meta.name,
        meta.version,
        meta.abi_major,
        meta.abi_minor,
        meta.sdk_version,
        supported_sdk(),
        if meta.panic_unwind { "unwind" } else { "abort" },
    )
}

#[cfg(test)]
mod tests {
    use backworks_plugin_host::sdk::Hooks;

    use super::*;

    fn meta(name: &str, version: &str) -> PluginMetadata {
        PluginMetadata {
            abi_major: 1,
            abi_minor: 0,
            sdk_version: "0.1.0".into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
            panic_unwind: true,
            hooks: Some(Hooks::BEFORE_REQUEST),
            config_schema: None,
        }
    }

    #[test]
    fn a_version_that_is_not_semver_and_an_empty_name_are_named() {
        assert!(identity_problems(&meta("p", "1.2.3")).is_empty());
        let problems = identity_problems(&meta(" ", "v1"));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("`v1` is not a semantic version"));
    }

    #[test]
    fn metadata_reads_as_one_line() {
        let line = describe_metadata(&meta("p", "1.2.3"));
        assert!(line.starts_with("p 1.2.3, ABI 1.0, SDK 0.1.0"), "{line}");
        assert!(
            line.ends_with("panic = unwind, hooks: before_request"),
            "{line}"
        );
    }
}

//! The one error type of the host library.

use std::path::PathBuf;

use backworks_plugin_sdk::metadata::MetadataError;

use crate::CallError;

/// Why a plugin could not be discovered, inspected, loaded or started. Every variant names the file
/// or the plugin, and what was expected and found where that applies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a shared library of a format the host reads (random bytes, truncated file).
    #[error("{}: not a shared library: {reason}", path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What the object-file reader said.
        reason: String,
    },
    /// The library has no Backworks metadata section: it is not a Backworks plugin.
    #[error(
        "{}: not a Backworks plugin: no `{section}` metadata section (was it built with export_plugin!?)",
        path.display()
    )]
    NoMetadata {
        /// The file.
        path: PathBuf,
        /// The section looked for.
        section: &'static str,
    },
    /// The metadata section could not be read.
    #[error("{}: invalid plugin metadata: {source}", path.display())]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: MetadataError,
    },
    /// The plugin was built for another ABI major version.
    #[error("{}: plugin ABI {found_major}.{found_minor} is incompatible: this host loads ABI {expected_major}.x", path.display())]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// The host's ABI major.
        expected_major: u16,
        /// The plugin's ABI major.
        found_major: u16,
        /// The plugin's ABI minor.
        found_minor: u16,
    },
    /// The plugin was built with an SDK this host cannot load.
    #[error("{}: plugin built with backworks-plugin-sdk {found}; this host loads plugins built with SDK {expected}", path.display())]
    SdkMismatch {
        /// The file.
        path: PathBuf,
        /// The versions the host accepts, as a semver requirement.
        expected: String,
        /// The plugin's SDK version.
        found: String,
    },
    /// The operator subscribed the plugin to a hook it does not implement.
    #[error(
        "plugin `{plugin}` is listed for hooks it does not implement: `hooks:` lists {listed}, the plugin declares {}",
        if declared.is_empty() { "none".to_owned() } else { declared.clone() }
    )]
    HooksNotImplemented {
        /// The plugin.
        plugin: String,
        /// The hooks the config lists that the plugin does not declare, comma-separated.
        listed: String,
        /// The hooks the plugin declares, comma-separated.
        declared: String,
    },
    /// The plugin was built with `panic = "abort"`: a panic in it would end the host process.
    #[error(
        "{}: plugin built with panic = \"abort\"; a panic would abort the host, so it is not loaded in process (build it with panic = \"unwind\", or run it with `isolation: process`)",
        path.display()
    )]
    PanicAbort {
        /// The file.
        path: PathBuf,
    },
    /// The dynamic loader refused the library.
    #[error("{}: cannot load library: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        source: libloading::Error,
    },
    /// The library does not export the plugin entry symbol.
    #[error("{}: library has metadata but does not export `{symbol}`", path.display())]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
    },
    /// The exported vtable does not start with the Backworks magic.
    #[error("{}: wrong magic in `backworks_plugin`: expected {expected:#018x}, found {found:#018x}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic expected.
        expected: u64,
        /// The magic found.
        found: u64,
    },
    /// The exported vtable is smaller than the version it claims needs.
    #[error("{}: plugin vtable is {found} bytes, ABI {major}.{minor} needs at least {expected}", path.display())]
    VtableTooSmall {
        /// The file.
        path: PathBuf,
        /// The plugin's ABI major.
        major: u16,
        /// The plugin's ABI minor.
        minor: u16,
        /// The smallest size accepted.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// A function the host needs is null in the vtable.
    #[error("{}: plugin vtable has no `{function}` function", path.display())]
    MissingFunction {
        /// The file.
        path: PathBuf,
        /// The function.
        function: &'static str,
    },
    /// The vtable's metadata differs from the file's metadata section.
    #[error("{}: metadata in the vtable ({vtable}) differs from the metadata section ({section})", path.display())]
    MetadataMismatch {
        /// The file.
        path: PathBuf,
        /// Name and version from the section.
        section: String,
        /// Name and version from the vtable.
        vtable: String,
    },
    /// The plugin failed to create its instance or to initialize: its own error, or the host's
    /// (a timeout, a crash of its child).
    #[error("plugin `{plugin}` failed to start: {source}")]
    Start {
        /// The plugin's name.
        plugin: String,
        /// Why.
        source: CallError,
    },
    /// The plugin's config does not match the JSON Schema the plugin declares: checked before
    /// `initialize`, which is not called.
    #[error(
        "plugin `{plugin}` failed to start: its config does not match its schema: {}",
        violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    ConfigInvalid {
        /// The plugin's name.
        plugin: String,
        /// Every violation: the JSON pointer of the offending value and the schema's reason.
        violations: Vec<crate::ConfigViolation>,
    },
    /// The config schema the plugin declares cannot be used: not JSON, not a JSON Schema, or its
    /// `config_schema` function failed.
    #[error("plugin `{plugin}` failed to start: its config schema cannot be used: {reason}")]
    BadSchema {
        /// The plugin's name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A process-isolated plugin's runner could not be started.
    #[error("plugin `{plugin}` failed to start: cannot start `{command}`: {source}")]
    Spawn {
        /// The plugin's name.
        plugin: String,
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A process-isolated plugin speaks another major version of the wire protocol.
    #[error("plugin `{plugin}` failed to start: {source}")]
    ProtocolMismatch {
        /// The plugin's name.
        plugin: String,
        /// The versions.
        source: crate::protocol::VersionError,
    },
    /// A `command` plugin asked to run in process; it can only run in a child.
    #[error("plugin `{plugin}` failed to start: a `command` plugin needs `isolation: process`")]
    IsolationRequired {
        /// The plugin's name.
        plugin: String,
    },
    /// A thread the host ran a blocking step on (loading a library, reading a file) failed.
    #[error("plugin `{plugin}` failed to start: the {what} thread failed: {reason}")]
    Thread {
        /// The plugin's name.
        plugin: String,
        /// What the thread did.
        what: &'static str,
        /// Why it failed (it panicked or was cancelled).
        reason: String,
    },
    /// Two plugins were given the same name.
    #[error("two plugins are named `{name}`")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A built-in plugin that this host does not have.
    #[error("no built-in plugin named `{name}` (built-ins: {available})")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The built-ins registered, comma-separated.
        available: String,
    },
    /// The plugin file failed the file checks (`trust.file_checks`): who may have written it.
    #[error("{}: refused by the file checks: {problem}", path.display())]
    FileRefused {
        /// The file as configured.
        path: PathBuf,
        /// What was found: the mode, the owner, the directory, the file type.
        problem: String,
    },
    /// The verifier of the load policy (a signature check) refused the file's bytes.
    #[error("{}: refused: {reason}", path.display())]
    Unverified {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private copy a library is loaded from could not be made.
    #[error("{}: cannot make the private copy to load from ({store}): {source}", path.display())]
    PrivateCopy {
        /// The file.
        path: PathBuf,
        /// Where copies live: `memfd` or `directory`.
        store: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A plugin child read other bytes than the host checked.
    #[error("{}: the bytes read have SHA-256 {found}, the host checked {expected}", path.display())]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The hash the host checked.
        expected: String,
        /// The hash of what was read.
        found: String,
    },
    /// The library's signature is missing or not acceptable and signatures are required.
    #[error("plugin `{plugin}` refused: {source}")]
    Signature {
        /// The plugin's name.
        plugin: String,
        /// The verdict on its signature (boxed: it is the largest error).
        source: Box<crate::SignatureError>,
    },
}

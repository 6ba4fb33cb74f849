//! Plugin metadata that the host reads from the library file without running it.
//!
//! [`export_plugin!`](crate::export_plugin) writes the metadata into a section of its own
//! ([`METADATA_SECTION`](crate::abi::METADATA_SECTION) on ELF). The format is text, so a C plugin can
//! write it with string literals (see `BW_PLUGIN_METADATA` in the C header):
//!
//! ```text
//! BWMETA1 \0 key=value \0 key=value \0 ... \0 \0
//! ```
//!
//! (without the spaces). It starts with [`MAGIC`], then `key=value` entries each ended by a NUL byte,
//! then an empty entry. Keys a reader does not know are ignored, so new keys can be added. Version 1
//! keys: `abi` (`MAJOR.MINOR`), `sdk` (the SDK's semver), `name`, `version` (semver), `description`,
//! `panic` (`unwind` or `abort`), `hooks` (the hooks the plugin implements, comma-separated:
//! `before_request`, `after_response`; empty for none). A plugin without a `hooks` key (built before
//! the key existed) has not declared its hooks, and the host cannot check its `hooks:` list.
//! `config_schema` (optional) is the JSON Schema of the plugin's config, as JSON text: how a C
//! plugin declares one (`BW_PLUGIN_METADATA_SCHEMA` in the header). A Rust plugin's schema is
//! derived at run time, so it comes through the vtable's `config_schema` entry instead.
//!
//! [`parse`] reads untrusted bytes: it is bounded ([`MAX_LEN`], [`MAX_VALUE_LEN`]), never panics,
//! and has a fuzz-style property test.

use std::fmt;

/// The first bytes of the metadata, with its format version.
pub const MAGIC: &[u8] = b"BWMETA1\0";
/// Longest metadata accepted, in bytes.
pub const MAX_LEN: usize = 64 * 1024;
/// Longest value accepted, in bytes: room for a config schema of a few hundred fields.
pub const MAX_VALUE_LEN: usize = 32 * 1024;

/// A plugin's metadata, as read from its library file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMetadata {
    /// ABI major version the plugin was built for.
    pub abi_major: u16,
    /// ABI minor version the plugin was built for.
    pub abi_minor: u16,
    /// Version of `backworks-plugin-sdk` the plugin was built with.
    pub sdk_version: String,
    /// The plugin's name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line about the plugin (may be empty).
    pub description: String,
    /// Whether the plugin was built with `panic = "unwind"` (a `panic = "abort"` plugin would take the
    /// whole process down on a panic, so the host refuses to load it in process).
    pub panic_unwind: bool,
    /// The hooks the plugin implements; `None` when its metadata does not say (a library built
    /// before the `hooks` key existed).
    pub hooks: Option<Hooks>,
    /// The JSON Schema of the plugin's config, as JSON text, when the metadata carries one (the
    /// `config_schema` key; C plugins). Not checked here: the host parses and compiles it.
    pub config_schema: Option<String>,
}

/// The hooks a plugin implements, declared in its metadata so that the host can check an
/// operator's `hooks:` list against them without running the plugin.
///
/// A Rust plugin declares them with [`BackworksPlugin::HOOKS`](crate::BackworksPlugin::HOOKS):
///
/// ```
/// use backworks_plugin_sdk::Hooks;
/// const BOTH: Hooks = Hooks::BEFORE_REQUEST.and(Hooks::AFTER_RESPONSE);
/// assert!(BOTH.before_request() && BOTH.after_response());
/// assert_eq!(BOTH.to_string(), "before_request,after_response");
/// assert_eq!("after_response".parse::<Hooks>(), Ok(Hooks::AFTER_RESPONSE));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Hooks(u8);

impl Hooks {
    /// No hooks.
    pub const NONE: Hooks = Hooks(0);
    /// `before_request`.
    pub const BEFORE_REQUEST: Hooks = Hooks(1);
    /// `after_response`.
    pub const AFTER_RESPONSE: Hooks = Hooks(2);
    /// Every hook.
    pub const ALL: Hooks = Hooks(3);

    /// Both sets of hooks.
    pub const fn and(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Whether `before_request` is among them.
    pub const fn before_request(self) -> bool {
        self.0 & Self::BEFORE_REQUEST.0 != 0
    }

    /// Whether `after_response` is among them.
    pub const fn after_response(self) -> bool {
        self.0 & Self::AFTER_RESPONSE.0 != 0
    }

    /// Whether there are none.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names, in the order of the hook points: `before_request`, `after_response`.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (self.before_request(), "before_request"),
            (self.after_response(), "after_response"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }

    /// The metadata value: the names joined by commas (a `const`, for `export_plugin!`).
    pub const fn metadata_value(self) -> &'static str {
        match self.0 {
            1 => "before_request",
            2 => "after_response",
            3 => "before_request,after_response",
            _ => "",
        }
    }
}

impl fmt::Display for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metadata_value())
    }
}

impl std::str::FromStr for Hooks {
    type Err = UnknownHook;

    /// Reads a comma-separated list of hook names (the metadata value); an empty string is none.
    fn from_str(s: &str) -> Result<Hooks, UnknownHook> {
        let mut hooks = Hooks::NONE;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            hooks = hooks.and(match name {
                "before_request" => Hooks::BEFORE_REQUEST,
                "after_response" => Hooks::AFTER_RESPONSE,
                other => return Err(UnknownHook(other.to_owned())),
            });
        }
        Ok(hooks)
    }
}

/// A hook name that is not `before_request` or `after_response`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hook `{0}` (expected `before_request` or `after_response`)")]
pub struct UnknownHook(pub String);

/// Why metadata bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// The bytes do not start with [`MAGIC`].
    BadMagic,
    /// The bytes end before the closing empty entry.
    Truncated,
    /// More than [`MAX_LEN`] bytes, or a value longer than [`MAX_VALUE_LEN`].
    TooLong,
    /// An entry without `=`, or not UTF-8.
    BadEntry(String),
    /// A required key is absent.
    Missing(&'static str),
    /// A value does not have the expected form.
    BadValue {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::BadMagic => write!(f, "metadata does not start with \"BWMETA1\""),
            MetadataError::Truncated => write!(f, "metadata is truncated"),
            MetadataError::TooLong => write!(f, "metadata is longer than allowed"),
            MetadataError::BadEntry(e) => write!(f, "malformed metadata entry {e:?}"),
            MetadataError::Missing(k) => write!(f, "metadata has no `{k}`"),
            MetadataError::BadValue { key, value } => {
                write!(f, "metadata `{key}` has an invalid value {value:?}")
            }
        }
    }
}

impl std::error::Error for MetadataError {}

/// Reads metadata bytes (the content of the metadata section, possibly followed by padding).
pub fn parse(bytes: &[u8]) -> Result<PluginMetadata, MetadataError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(MetadataError::BadMagic)?;
    let (mut abi, mut sdk, mut name, mut version, mut description, mut panic, mut hooks) =
        (None, None, None, None, None, None, None);
    let mut config_schema = None;
    let mut pos = 0;
    loop {
        if MAGIC.len() + pos > MAX_LEN {
            return Err(MetadataError::TooLong);
        }
        let end = rest[pos..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(MetadataError::Truncated)?;
        let entry = &rest[pos..pos + end];
        pos += end + 1;
        if entry.is_empty() {
            break;
        }
        let entry = std::str::from_utf8(entry)
            .map_err(|_| MetadataError::BadEntry(String::from_utf8_lossy(entry).into_owned()))?;
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| MetadataError::BadEntry(entry.to_owned()))?;
        if value.len() > MAX_VALUE_LEN {
            return Err(MetadataError::TooLong);
        }
        let slot = match key {
            "abi" => &mut abi,
            "sdk" => &mut sdk,
            "name" => &mut name,
            "version" => &mut version,
            "description" => &mut description,
            "panic" => &mut panic,
            "hooks" => &mut hooks,
            "config_schema" => &mut config_schema,
            _ => continue,
        };
        *slot = Some(value.to_owned());
    }
    let abi = abi.ok_or(MetadataError::Missing("abi"))?;
    let (abi_major, abi_minor) = abi
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or(MetadataError::BadValue {
            key: "abi",
            value: abi.clone(),
        })?;
    let name = name.ok_or(MetadataError::Missing("name"))?;
    if name.is_empty() {
        return Err(MetadataError::BadValue {
            key: "name",
            value: name,
        });
    }
    let panic_unwind = match panic.as_deref() {
        None | Some("unwind") => true,
        Some("abort") => false,
        Some(other) => {
            return Err(MetadataError::BadValue {
                key: "panic",
                value: other.to_owned(),
            });
        }
    };
    let hooks = match hooks {
        None => None,
        Some(value) => Some(value.parse().map_err(|_| MetadataError::BadValue {
            key: "hooks",
            value: value.clone(),
        })?),
    };
    Ok(PluginMetadata {
        abi_major,
        abi_minor,
        sdk_version: sdk.ok_or(MetadataError::Missing("sdk"))?,
        name,
        version: version.ok_or(MetadataError::Missing("version"))?,
        description: description.unwrap_or_default(),
        panic_unwind,
        hooks,
        config_schema,
    })
}

/// The entries [`encode`] writes, in order, as `(key, value)`; `value` is `None` for the ABI, which
/// is written from [`ABI_MAJOR`](crate::abi::ABI_MAJOR) and [`ABI_MINOR`](crate::abi::ABI_MINOR).
const fn entries<'a>(
    name: &'a str,
    version: &'a str,
    description: &'a str,
    panic_unwind: bool,
    hooks: Hooks,
) -> [(&'static str, &'a str); 6] {
    [
        ("sdk=", crate::SDK_VERSION),
        ("name=", name),
        ("version=", version),
        ("description=", description),
        ("panic=", if panic_unwind { "unwind" } else { "abort" }),
        ("hooks=", hooks.metadata_value()),
    ]
}

const fn digits(mut n: u16) -> usize {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

/// Length of the metadata [`encode`] writes. Used by `export_plugin!` at compile time.
pub const fn encoded_len(
    name: &str,
    version: &str,
    description: &str,
    panic_unwind: bool,
    hooks: Hooks,
) -> usize {
    let abi = crate::abi::ABI_MAJOR;
    let minor = crate::abi::ABI_MINOR;
    let mut len = MAGIC.len() + "abi=".len() + digits(abi) + 1 + digits(minor) + 1;
    let entries = entries(name, version, description, panic_unwind, hooks);
    let mut i = 0;
    while i < entries.len() {
        len += entries[i].0.len() + entries[i].1.len() + 1;
        i += 1;
    }
    len + 1
}

const fn put(out: &mut [u8], mut at: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i] != 0,
            "plugin metadata values must not contain NUL bytes"
        );
        out[at] = bytes[i];
        at += 1;
        i += 1;
    }
    at
}

const fn put_number(out: &mut [u8], at: usize, n: u16) -> usize {
    let width = digits(n);
    let mut i = 0;
    let mut rest = n;
    while i < width {
        out[at + width - 1 - i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        i += 1;
    }
    at + width
}

/// Writes the metadata of a plugin. `N` must be [`encoded_len`] of the same arguments; a NUL byte in
/// a value is a compile-time error when this runs in a `static` initializer.
pub const fn encode<const N: usize>(
    name: &str,
    version: &str,
    description: &str,
    panic_unwind: bool,
    hooks: Hooks,
) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < MAGIC.len() {
        out[at] = MAGIC[i];
        at += 1;
        i += 1;
    }
    at = put(&mut out, at, b"abi=");
    at = put_number(&mut out, at, crate::abi::ABI_MAJOR);
    at = put(&mut out, at, b".");
    at = put_number(&mut out, at, crate::abi::ABI_MINOR);
    at += 1;
    let entries = entries(name, version, description, panic_unwind, hooks);
    let mut e = 0;
    while e < entries.len() {
        at = put(&mut out, at, entries[e].0.as_bytes());
        at = put(&mut out, at, entries[e].1.as_bytes());
        at += 1;
        e += 1;
    }
    assert!(at + 1 == N, "metadata length does not match encoded_len");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOKS: Hooks = Hooks::AFTER_RESPONSE;
    const LEN: usize = encoded_len("hello", "1.2.3", "says hello", true, HOOKS);
    static META: [u8; LEN] = encode("hello", "1.2.3", "says hello", true, HOOKS);

    #[test]
    fn round_trip() {
        let meta = parse(&META).unwrap();
        assert_eq!(meta.name, "hello");
        assert_eq!(meta.version, "1.2.3");
        assert_eq!(meta.description, "says hello");
        assert_eq!(meta.sdk_version, crate::SDK_VERSION);
        assert_eq!(
            (meta.abi_major, meta.abi_minor),
            (crate::abi::ABI_MAJOR, crate::abi::ABI_MINOR)
        );
        assert!(meta.panic_unwind);
        assert_eq!(meta.hooks, Some(Hooks::AFTER_RESPONSE));
    }

    #[test]
    fn hooks_round_trip_and_absent_hooks_are_undeclared() {
        for hooks in [
            Hooks::NONE,
            Hooks::BEFORE_REQUEST,
            Hooks::AFTER_RESPONSE,
            Hooks::ALL,
        ] {
            assert_eq!(hooks.to_string().parse::<Hooks>(), Ok(hooks));
        }
        assert_eq!("".parse::<Hooks>(), Ok(Hooks::NONE));
        assert_eq!(
            "before_request, nope".parse::<Hooks>(),
            Err(UnknownHook("nope".to_owned()))
        );
        let raw = b"BWMETA1\0abi=1.0\0sdk=0.1.0\0name=c\0version=0.0.1\0\0";
        assert_eq!(parse(raw).unwrap().hooks, None);
        let raw = b"BWMETA1\0abi=1.0\0sdk=0.1.0\0name=c\0version=0.0.1\0hooks=\0\0";
        assert_eq!(parse(raw).unwrap().hooks, Some(Hooks::NONE));
        let raw = b"BWMETA1\0abi=1.0\0sdk=0.1.0\0name=c\0version=0.0.1\0hooks=observe\0\0";
        assert!(matches!(
            parse(raw),
            Err(MetadataError::BadValue { key: "hooks", .. })
        ));
    }

    #[test]
    fn a_config_schema_key_is_read_as_text() {
        let raw = b"BWMETA1\0abi=1.1\0sdk=0.1.0\0name=c\0version=0.0.1\0config_schema={\"type\":\"object\"}\0\0";
        assert_eq!(
            parse(raw).unwrap().config_schema.as_deref(),
            Some(r#"{"type":"object"}"#)
        );
        assert_eq!(parse(&META).unwrap().config_schema, None);
        let mut long =
            b"BWMETA1\0abi=1.1\0sdk=0.1.0\0name=c\0version=0.0.1\0config_schema=".to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_VALUE_LEN + 1));
        long.extend_from_slice(b"\0\0");
        assert_eq!(parse(&long), Err(MetadataError::TooLong));
    }

    #[test]
    fn padding_after_the_end_is_ignored() {
        let mut padded = META.to_vec();
        padded.extend_from_slice(&[0; 13]);
        assert_eq!(parse(&padded).unwrap().name, "hello");
    }

    #[test]
    fn c_style_literal_parses_and_unknown_keys_are_skipped() {
        let raw = b"BWMETA1\0abi=1.0\0sdk=0.1.0\0future=yes\0name=c\0version=0.0.1\0\0";
        let meta = parse(raw).unwrap();
        assert_eq!(meta.name, "c");
        assert_eq!(meta.description, "");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(parse(b"ELF"), Err(MetadataError::BadMagic));
        assert_eq!(parse(b"BWMETA1\0abi=1.0\0"), Err(MetadataError::Truncated));
        assert_eq!(
            parse(b"BWMETA1\0abi=x\0name=a\0\0"),
            Err(MetadataError::BadValue {
                key: "abi",
                value: "x".into()
            })
        );
        assert_eq!(
            parse(b"BWMETA1\0abi=1.0\0sdk=1.0.0\0version=1.0.0\0\0"),
            Err(MetadataError::Missing("name"))
        );
        assert!(matches!(
            parse(b"BWMETA1\0novalue\0\0"),
            Err(MetadataError::BadEntry(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix and many mutations of a valid encoding.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for cut in 0..=META.len() {
            let _ = parse(&META[..cut]);
        }
        for _ in 0..20_000 {
            let mut bytes = META.to_vec();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let _ = parse(&bytes);
        }
        let long = [b'a'; MAX_LEN * 2];
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&long);
        assert_eq!(parse(&big), Err(MetadataError::Truncated));
    }
}

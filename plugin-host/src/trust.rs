//! Trusted keys and what a signature of a plugin file must say: the data half of signature
//! checking (no I/O). [`crate::signature`] does the verifying.
//!
//! Keys are minisign public keys (`RWQ…`, 42 bytes in base64: algorithm, key id, Ed25519 key),
//! known by their key id, printed the way the `minisign` command prints it: 16 hex digits.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The prefix of the trusted comment that binds a signature to one plugin build.
pub const BINDING_PREFIX: &str = "backworks-plugin";

/// A minisign key id: 8 bytes, read little-endian and shown as 16 upper-case hex digits, as
/// `minisign` prints it (`minisign public key 5D1C83DD0E0B4B47`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl KeyId {
    fn from_bytes(bytes: &[u8]) -> Option<KeyId> {
        Some(KeyId(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)))
    }

    /// The key id of a signature or public key's binary form (after the 2-byte algorithm tag).
    pub(crate) fn of_base64_line(line: &str) -> Option<KeyId> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .ok()?;
        KeyId::from_bytes(bytes.get(2..10)?)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// Why a key or a key id does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key id that is not up to 16 hex digits.
    #[error("`{0}` is not a key id: expected up to 16 hex digits")]
    BadId(String),
    /// Text that is not a minisign public key.
    #[error("not a minisign public key ({0}): expected the `RWQ…` line of a .pub file")]
    NotAKey(String),
}

impl FromStr for KeyId {
    type Err = KeyError;

    /// Hex digits, any case, leading zeros optional (`minisign` prints them without).
    fn from_str(s: &str) -> Result<KeyId, KeyError> {
        let s = s.trim();
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::BadId(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(KeyId)
            .map_err(|_| KeyError::BadId(s.to_owned()))
    }
}

/// One trusted public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    id: KeyId,
    text: String,
    pub(crate) key: minisign_verify::PublicKey,
}

impl TrustedKey {
    /// Parses a minisign public key: the base64 line of a `minisign.pub` file (`RWQ…`), or the
    /// whole file (its untrusted comment line is skipped).
    pub fn parse(text: &str) -> Result<TrustedKey, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or_default();
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| KeyError::NotAKey(e.to_string()))?;
        let id = KeyId::of_base64_line(line)
            .ok_or_else(|| KeyError::NotAKey("no key id in it".to_owned()))?;
        Ok(TrustedKey {
            id,
            text: line.to_owned(),
            key,
        })
    }

    /// Its key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key as written (base64).
    pub fn as_base64(&self) -> &str {
        &self.text
    }
}

/// The public keys whose signatures are accepted, several so that keys can be rotated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys(Vec<TrustedKey>);

impl TrustedKeys {
    /// A set of keys; a second key with an id already present is ignored.
    pub fn new(keys: impl IntoIterator<Item = TrustedKey>) -> TrustedKeys {
        let mut out: Vec<TrustedKey> = Vec::new();
        for key in keys {
            if !out.iter().any(|k| k.id == key.id) {
                out.push(key);
            }
        }
        TrustedKeys(out)
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: KeyId) -> Option<&TrustedKey> {
        self.0.iter().find(|k| k.id == id)
    }

    /// Every trusted key.
    pub fn iter(&self) -> impl Iterator<Item = &TrustedKey> {
        self.0.iter()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The trusted key ids for messages: `A1…, B2…`, or `none`.
    pub fn ids(&self) -> String {
        if self.0.is_empty() {
            return "none".to_owned();
        }
        self.0
            .iter()
            .map(|k| k.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the host does about plugin signatures: the keys it trusts, and whether a library without a
/// valid signature by one of them is refused (`require_signatures`) or loaded with a warning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The trusted keys.
    pub keys: TrustedKeys,
    /// Refuse to load a library whose signature is not valid.
    pub require_signatures: bool,
}

/// The plugin build a signature must be about: the name and version the file's metadata gives
/// (the code that would run), and, when it is loaded for a config entry, that entry's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The plugin's name in the file's metadata.
    pub name: String,
    /// The plugin's version in the file's metadata.
    pub version: String,
    /// The name of the config entry it is loaded for. A signature says which plugin a build is;
    /// a validly signed build of another plugin put in this one's place is refused.
    pub configured_as: Option<String>,
}

impl Binding {
    /// The trusted comment a signature of `bytes` as this plugin must carry:
    /// `backworks-plugin name=hello version=0.1.0 sha256=…`.
    pub fn comment(&self, bytes: &[u8]) -> String {
        self.comment_for_sha256(&sha256_hex(bytes))
    }

    /// [`comment`](Self::comment) for bytes whose SHA-256 (lower-case hex) is known already.
    pub(crate) fn comment_for_sha256(&self, sha256: &str) -> String {
        format!(
            "{BINDING_PREFIX} name={} version={} sha256={sha256}",
            self.name, self.version
        )
    }
}

/// What a binding trusted comment says; `None` fields were absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SignedBinding {
    pub name: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
}

impl SignedBinding {
    /// Parses `backworks-plugin key=value …` (other keys, such as a timestamp, are ignored);
    /// `None` when the comment does not start with the prefix.
    pub fn parse(comment: &str) -> Option<SignedBinding> {
        let mut words = comment.split_ascii_whitespace();
        if words.next() != Some(BINDING_PREFIX) {
            return None;
        }
        let mut out = SignedBinding::default();
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let slot = match key {
                "name" => &mut out.name,
                "version" => &mut out.version,
                "sha256" => &mut out.sha256,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        Some(out)
    }

    /// `hello 0.1.0`, with `?` for a missing part.
    pub fn identity(&self) -> String {
        format!(
            "`{}` {}",
            self.name.as_deref().unwrap_or("?"),
            self.version.as_deref().unwrap_or("?")
        )
    }
}

/// The SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes).into())
}

/// A SHA-256 digest as lower-case hex.
pub(crate) fn hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_parse_with_or_without_leading_zeros() {
        assert_eq!("0A".parse::<KeyId>(), Ok(KeyId(10)));
        assert_eq!("000000000000000a".parse::<KeyId>(), Ok(KeyId(10)));
        assert_eq!(KeyId(10).to_string(), "000000000000000A");
        assert!("xyz".parse::<KeyId>().is_err());
        assert!("12345678901234567".parse::<KeyId>().is_err());
    }

    #[test]
    fn binding_comment_round_trips() {
        let b = Binding {
            name: "hello".into(),
            version: "0.1.0".into(),
            configured_as: None,
        };
        let comment = b.comment(b"abc");
        assert_eq!(
            comment,
            "backworks-plugin name=hello version=0.1.0 \
             sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let parsed = SignedBinding::parse(&format!("{comment} timestamp=1")).unwrap();
        assert_eq!(parsed.name.as_deref(), Some("hello"));
        assert_eq!(parsed.identity(), "`hello` 0.1.0");
        assert!(SignedBinding::parse("timestamp:1 file:x.so").is_none());
    }

    #[test]
    fn keys_parse_from_a_line_or_a_pub_file() {
        let line = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let key = TrustedKey::parse(line).unwrap();
        let file = format!("untrusted comment: minisign public key\n{line}\n");
        assert_eq!(TrustedKey::parse(&file).unwrap(), key);
        assert_eq!(key.id().to_string(), "E7620F1842B4E81F");
        assert!(TrustedKey::parse("RWQ").is_err());
        let keys = TrustedKeys::new([key.clone(), key]);
        assert_eq!(keys.ids(), "E7620F1842B4E81F");
        assert_eq!(TrustedKeys::default().ids(), "none");
    }
}

//! Verifying a plugin file's minisign signature, before any of its code runs.
//!
//! A plugin's signature is a minisign signature file beside it (`libhello.so.minisig`), made by
//! `backworks plugin sign` or by `minisign -S`. It is accepted when all of these hold:
//!
//! 1. it is a well-formed, prehashed minisign signature;
//! 2. its key id is one of the trusted keys ([`TrustedKeys`]);
//! 3. that key's Ed25519 signature covers these very bytes and the trusted comment;
//! 4. the trusted comment binds the build: `backworks-plugin name=… version=… sha256=…`, with the
//!    SHA-256 of these bytes and the name and version of the file's metadata (and of the config
//!    entry it is loaded for), so that a signed file cannot be passed off as another plugin, and
//!    the version that runs is the one signed: an older signed build still verifies (nothing
//!    refuses a rollback), but its version shows in the verdict and on the admin API.
//!
//! [`verify`] is pure: it takes the bytes, so the caller verifies exactly the bytes it loads.
//! [`check`] adds the reading of the signature file beside a library and the metadata of the
//! bytes; [`check_library`] applies a [`TrustPolicy`] for the loader, with the SHA-256 the loader
//! computed when it read the bytes (each file is hashed once).
//!
//! The expensive part is minisign's own hash of the bytes (BLAKE2b-512, which prehashed `ED`
//! signatures sign) and two Ed25519 checks. Their outcome depends only on the bytes, the signature
//! file's text and the key, so a successful check is remembered for the life of the process by
//! the bytes' SHA-256 (the hash the binding already relies on), the signature text and the key:
//! identical files (a plugin configured under several names, a reload of an unchanged file) are
//! verified once. Everything else (reading the `.minisig`, the metadata, the binding, the key being
//! trusted now) is checked every time.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::HostError;
use crate::trust::{Binding, KeyId, SignedBinding, TrustPolicy, TrustedKey, TrustedKeys, hex};

/// What a valid signature said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The key that signed.
    pub key_id: KeyId,
    /// The plugin name signed.
    pub name: String,
    /// The plugin version signed.
    pub version: String,
    /// The SHA-256 of the file signed (and verified), hex.
    pub sha256: String,
}

/// The keys trusted, for messages: `keys trusted: A, B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedIds(pub String);

impl fmt::Display for TrustedIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "keys trusted: {}", self.0)
    }
}

fn found(id: &Option<KeyId>) -> String {
    id.map_or_else(|| "none".to_owned(), |id| id.to_string())
}

/// Why a plugin file's signature is not accepted. Every message names the file, the key id found
/// in the signature (or `none`) and the keys trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No signature file beside the library.
    #[error(
        "{}: signature missing: no {} (key id found: none; {trusted})",
        path.display(), signature.display()
    )]
    Missing {
        /// The library.
        path: PathBuf,
        /// The signature file looked for.
        signature: PathBuf,
        /// The keys trusted.
        trusted: TrustedIds,
    },
    /// The signature file is not a minisign signature this host reads.
    #[error(
        "{}: malformed signature {}: {reason} (key id found: {}; {trusted})",
        path.display(), signature.display(), found(key_id)
    )]
    Malformed {
        /// The library.
        path: PathBuf,
        /// The signature file.
        signature: PathBuf,
        /// What is wrong.
        reason: String,
        /// The key id, when that much could be read.
        key_id: Option<KeyId>,
        /// The keys trusted.
        trusted: TrustedIds,
    },
    /// Signed by a key that is not trusted.
    #[error("{}: signed by untrusted key {key_id} ({trusted})", path.display())]
    UntrustedKey {
        /// The library.
        path: PathBuf,
        /// The key id found.
        key_id: KeyId,
        /// The keys trusted.
        trusted: TrustedIds,
    },
    /// The signature does not verify: the file, the trusted comment or the signature was changed.
    #[error(
        "{}: bad signature: key {key_id} did not sign these bytes with this trusted comment \
         (the file or its signature was altered) ({trusted})",
        path.display()
    )]
    Bad {
        /// The library.
        path: PathBuf,
        /// The key id found.
        key_id: KeyId,
        /// The keys trusted.
        trusted: TrustedIds,
    },
    /// The signature is about another file: its trusted comment names another SHA-256.
    #[error(
        "{}: signature of another file: it was made for sha256 {signed}, this file's sha256 is \
         {actual} (key id found: {key_id}; {trusted})",
        path.display()
    )]
    OtherFile {
        /// The library.
        path: PathBuf,
        /// The key id found.
        key_id: KeyId,
        /// The SHA-256 the trusted comment names.
        signed: String,
        /// The SHA-256 of the bytes checked.
        actual: String,
        /// The keys trusted.
        trusted: TrustedIds,
    },
    /// A valid signature whose trusted comment does not bind the plugin (e.g. plain `minisign -S`).
    #[error(
        "{}: signature by key {key_id} is valid but does not bind the plugin: its trusted comment \
         is `{comment}`, expected `{expected}` (sign with `backworks plugin sign`, or with \
         `minisign -S -t '{expected}'`) ({trusted})",
        path.display()
    )]
    Unbound {
        /// The library.
        path: PathBuf,
        /// The key id found.
        key_id: KeyId,
        /// The trusted comment found.
        comment: String,
        /// The trusted comment expected.
        expected: String,
        /// The keys trusted.
        trusted: TrustedIds,
    },
    /// The signature is for this file but another plugin name or version than expected.
    #[error(
        "{}: signed as plugin {signed}, but {expected} (key id found: {key_id}; {trusted})",
        path.display()
    )]
    BindingMismatch {
        /// The library.
        path: PathBuf,
        /// The key id found.
        key_id: KeyId,
        /// The name and version signed.
        signed: String,
        /// What was expected instead, and where from.
        expected: String,
        /// The keys trusted.
        trusted: TrustedIds,
    },
}

impl SignatureError {
    /// A short verdict: `missing`, `malformed`, `untrusted key …`, `bad`, `another file's`,
    /// `not bound to the plugin`, `name/version mismatch`.
    pub fn verdict(&self) -> String {
        match self {
            SignatureError::Missing { .. } => "missing".into(),
            SignatureError::Malformed { .. } => "malformed".into(),
            SignatureError::UntrustedKey { key_id, .. } => format!("untrusted key {key_id}"),
            SignatureError::Bad { .. } => "bad".into(),
            SignatureError::OtherFile { .. } => "of another file".into(),
            SignatureError::Unbound { .. } => "not bound to the plugin".into(),
            SignatureError::BindingMismatch { .. } => "name/version mismatch".into(),
        }
    }
}

/// The signature file of a library: `libhello.so` → `libhello.so.minisig`.
pub fn signature_path(library: &Path) -> PathBuf {
    let mut name = library.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Verifies `signature_text` (the content of a `.minisig` file) over `file_bytes`, the content of
/// the library at `path` (named in errors), against the `trusted` keys and the build `expect`ed.
pub fn verify(
    path: &Path,
    file_bytes: &[u8],
    signature_text: &str,
    trusted: &TrustedKeys,
    expect: &Binding,
) -> Result<Verified, SignatureError> {
    let digest = sha256(file_bytes);
    verify_hashed(path, file_bytes, &digest, signature_text, trusted, expect)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Signatures whose Ed25519 checks passed in this process: (SHA-256 of the bytes, signature text,
/// key). Libraries are never unloaded, so this grows no faster than what is loaded.
type VerifiedBefore = HashSet<([u8; 32], String, String)>;

fn verified_before() -> std::sync::MutexGuard<'static, VerifiedBefore> {
    static VERIFIED: OnceLock<Mutex<VerifiedBefore>> = OnceLock::new();
    VERIFIED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// minisign's check of `signature` (the `.minisig` whose text is `signature_text`) over `bytes`
/// by `key`, skipped when the same check passed before for bytes of the same SHA-256 `digest`.
fn minisign_check(
    key: &TrustedKey,
    bytes: &[u8],
    digest: &[u8; 32],
    signature_text: &str,
    signature: &minisign_verify::Signature,
) -> Result<(), minisign_verify::Error> {
    let remembered = (
        *digest,
        signature_text.to_owned(),
        key.as_base64().to_owned(),
    );
    if verified_before().contains(&remembered) {
        return Ok(());
    }
    key.key.verify(bytes, signature, false)?;
    verified_before().insert(remembered);
    Ok(())
}

/// [`verify`] of bytes whose SHA-256 is `digest`, computed by the caller when it read them.
pub(crate) fn verify_hashed(
    path: &Path,
    file_bytes: &[u8],
    digest: &[u8; 32],
    signature_text: &str,
    trusted: &TrustedKeys,
    expect: &Binding,
) -> Result<Verified, SignatureError> {
    let ids = TrustedIds(trusted.ids());
    let path = path.to_path_buf();
    let sig_line = signature_text.lines().nth(1).unwrap_or_default();
    let found_id = KeyId::of_base64_line(sig_line);
    let signature = minisign_verify::Signature::decode(signature_text).map_err(|e| {
        SignatureError::Malformed {
            signature: signature_path(&path),
            path: path.clone(),
            reason: format!("not a minisign signature ({e})"),
            key_id: found_id,
            trusted: ids.clone(),
        }
    })?;
    let key_id = found_id.ok_or_else(|| SignatureError::Malformed {
        signature: signature_path(&path),
        path: path.clone(),
        reason: "no key id".into(),
        key_id: None,
        trusted: ids.clone(),
    })?;
    let key = trusted
        .get(key_id)
        .ok_or_else(|| SignatureError::UntrustedKey {
            path: path.clone(),
            key_id,
            trusted: ids.clone(),
        })?;
    // Shown in messages: control characters escaped, so a hostile file cannot forge log lines.
    let comment: String = signature
        .trusted_comment()
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    let signed = SignedBinding::parse(signature.trusted_comment());
    let actual = hex(digest);
    let other_file = |signed_hash: &str| SignatureError::OtherFile {
        path: path.clone(),
        key_id,
        signed: signed_hash.to_owned(),
        actual: actual.clone(),
        trusted: ids.clone(),
    };
    match minisign_check(key, file_bytes, digest, signature_text, &signature) {
        Ok(()) => {}
        Err(minisign_verify::Error::UnexpectedAlgorithm) => {
            return Err(SignatureError::Malformed {
                signature: signature_path(&path),
                path: path.clone(),
                reason: "a legacy (not prehashed) signature; sign again with minisign 0.8 or later"
                    .into(),
                key_id: Some(key_id),
                trusted: ids,
            });
        }
        Err(_) => {
            // The comment is not authenticated here; it only picks the more helpful message.
            return Err(match signed.as_ref().and_then(|s| s.sha256.as_deref()) {
                Some(hash) if hash != actual => other_file(hash),
                _ => SignatureError::Bad {
                    path,
                    key_id,
                    trusted: ids,
                },
            });
        }
    }
    let expected_comment = expect.comment_for_sha256(&actual);
    let Some(signed) = signed.filter(|s| s.sha256.is_some()) else {
        return Err(SignatureError::Unbound {
            path,
            key_id,
            comment,
            expected: expected_comment,
            trusted: ids,
        });
    };
    let signed_hash = signed.sha256.clone().unwrap_or_default();
    if signed_hash != actual {
        return Err(other_file(&signed_hash));
    }
    let mismatch = |expected: String| SignatureError::BindingMismatch {
        path: path.clone(),
        key_id,
        signed: signed.identity(),
        expected,
        trusted: ids.clone(),
    };
    if signed.name.as_deref() != Some(&expect.name)
        || signed.version.as_deref() != Some(&expect.version)
    {
        return Err(mismatch(format!(
            "the file is plugin `{}` {}",
            expect.name, expect.version
        )));
    }
    if let Some(configured) = &expect.configured_as
        && signed.name.as_deref() != Some(configured)
    {
        return Err(mismatch(format!(
            "the config loads it as plugin `{configured}`"
        )));
    }
    Ok(Verified {
        key_id,
        name: expect.name.clone(),
        version: expect.version.clone(),
        sha256: actual,
    })
}

/// The signature verdict on one library file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid signature by a trusted key, bound to this build.
    Valid(Verified),
    /// No signature file, and none is required.
    NotRequired,
    /// The signature is missing (when required) or not acceptable.
    Invalid(SignatureError),
}

impl Verdict {
    /// `valid (key id …)`, `not required`, `missing`, `untrusted key …`, `bad`, …
    pub fn label(&self) -> String {
        match self {
            Verdict::Valid(v) => format!("valid (key id {})", v.key_id),
            Verdict::NotRequired => "not required".into(),
            Verdict::Invalid(e) => e.verdict(),
        }
    }
}

/// The verdict on the library at `path` whose content is `bytes`: reads its signature file
/// (`<path>.minisig`) and the plugin name and version from the bytes' metadata, then [`verify`]s.
/// `configured_as` is the config entry the file is loaded for, if any.
///
/// A file without a signature is [`Verdict::NotRequired`] unless `policy.require_signatures`;
/// a signature that is present is always checked.
pub fn check(
    path: &Path,
    bytes: &[u8],
    policy: &TrustPolicy,
    configured_as: Option<&str>,
) -> Verdict {
    check_hashed(path, bytes, &sha256(bytes), policy, configured_as)
}

/// [`check`] of bytes whose SHA-256 is `digest`.
fn check_hashed(
    path: &Path,
    bytes: &[u8],
    digest: &[u8; 32],
    policy: &TrustPolicy,
    configured_as: Option<&str>,
) -> Verdict {
    let trusted = TrustedIds(policy.keys.ids());
    let signature = signature_path(path);
    let text = match std::fs::read(&signature) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if policy.require_signatures {
                Verdict::Invalid(SignatureError::Missing {
                    path: path.to_path_buf(),
                    signature,
                    trusted,
                })
            } else {
                Verdict::NotRequired
            };
        }
        Err(e) => {
            return Verdict::Invalid(SignatureError::Malformed {
                path: path.to_path_buf(),
                signature,
                reason: format!("cannot read it: {e}"),
                key_id: None,
                trusted,
            });
        }
    };
    let Ok(text) = String::from_utf8(text) else {
        return Verdict::Invalid(SignatureError::Malformed {
            path: path.to_path_buf(),
            signature,
            reason: "not UTF-8 text".into(),
            key_id: None,
            trusted,
        });
    };
    let metadata = match crate::inspect::metadata_from_bytes(path, bytes) {
        Ok(metadata) => metadata,
        Err(e) => {
            return Verdict::Invalid(SignatureError::Malformed {
                path: path.to_path_buf(),
                signature,
                reason: format!("cannot tell which plugin it should be for: {e}"),
                key_id: None,
                trusted,
            });
        }
    };
    let expect = Binding {
        name: metadata.name,
        version: metadata.version,
        configured_as: configured_as.map(str::to_owned),
    };
    match verify_hashed(path, bytes, digest, &text, &policy.keys, &expect) {
        Ok(verified) => Verdict::Valid(verified),
        Err(e) => Verdict::Invalid(e),
    }
}

/// The loader's check, called with the bytes it is about to load and their SHA-256 (`sha256`,
/// computed once as they were read), before any of their code runs: `Ok(Some)` for a valid
/// signature, `Ok(None)` when there is none and none is required, and [`HostError::Signature`]
/// when `policy.require_signatures` and the verdict is not valid. When signatures are not required
/// a failing signature is logged as a warning and the plugin loads.
pub fn check_library(
    path: &Path,
    bytes: &[u8],
    sha256: &[u8; 32],
    policy: &TrustPolicy,
    plugin: &str,
) -> Result<Option<Verified>, HostError> {
    debug_assert_eq!(&self::sha256(bytes), sha256, "the digest is of these bytes");
    match check_hashed(path, bytes, sha256, policy, Some(plugin)) {
        Verdict::Valid(verified) => Ok(Some(verified)),
        Verdict::NotRequired => Ok(None),
        Verdict::Invalid(source) if policy.require_signatures => Err(HostError::Signature {
            plugin: plugin.to_owned(),
            source: Box::new(source),
        }),
        Verdict::Invalid(error) => {
            tracing::warn!(
                plugin,
                "signature not valid (signatures not required): {error}"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::sha256_hex;

    struct Signer {
        pair: minisign::KeyPair,
    }

    impl Signer {
        fn new() -> Signer {
            Signer {
                pair: minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
            }
        }

        fn key(&self) -> TrustedKey {
            TrustedKey::parse(&self.pair.pk.to_base64()).unwrap()
        }

        fn sign(&self, bytes: &[u8], comment: &str) -> String {
            minisign::sign(None, &self.pair.sk, bytes, Some(comment), None)
                .unwrap()
                .into_string()
        }
    }

    fn hello() -> Binding {
        Binding {
            name: "hello".into(),
            version: "0.1.0".into(),
            configured_as: Some("hello".into()),
        }
    }

    const FILE: &[u8] = b"the bytes of a plugin";
    const PATH: &str = "plugins/libhello.so";

    fn run(sig: &str, keys: &TrustedKeys, expect: &Binding) -> Result<Verified, SignatureError> {
        verify(Path::new(PATH), FILE, sig, keys, expect)
    }

    /// A cheap fuzz of the untrusted inputs (the `.minisig` text, its trusted comment, public key
    /// lines): every prefix and thousands of mutations of a valid signature are refused or
    /// accepted, never a panic. (Whether a mutation verifies is not asserted: a change to a
    /// base64 character's unused bits decodes to the same bytes, and the key is new each run.)
    #[test]
    fn arbitrary_signature_texts_never_panic() {
        let signer = Signer::new();
        let keys = TrustedKeys::new([signer.key()]);
        let good = signer.sign(FILE, &hello().comment(FILE));
        for cut in 0..=good.len() {
            if good.is_char_boundary(cut) {
                let _ = run(&good[..cut], &keys, &hello());
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Mutations after the untrusted comment line, keeping the line breaks.
        let covered = good.find('\n').map_or(0, |i| i + 1);
        for _ in 0..5_000 {
            let mut bytes = good.clone().into_bytes();
            for _ in 0..3 {
                let at = covered + (next() as usize) % (bytes.len() - covered);
                let byte = (next() >> 32) as u8;
                if bytes[at] != b'\n' && byte != b'\n' {
                    bytes[at] = byte;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = run(&text, &keys, &hello());
            let _ = crate::trust::SignedBinding::parse(&text);
            let _ = TrustedKey::parse(&text);
        }
    }

    #[test]
    fn a_bound_signature_by_a_trusted_key_is_valid() {
        let signer = Signer::new();
        let keys = TrustedKeys::new([Signer::new().key(), signer.key()]);
        let sig = signer.sign(FILE, &hello().comment(FILE));
        let verified = run(&sig, &keys, &hello()).unwrap();
        assert_eq!(verified.key_id, signer.key().id());
        assert_eq!(verified.sha256, sha256_hex(FILE));
    }

    #[test]
    fn each_failure_has_its_own_error_naming_file_key_and_trusted_keys() {
        let signer = Signer::new();
        let keys = TrustedKeys::new([signer.key()]);
        let id = signer.key().id().to_string();
        let good = signer.sign(FILE, &hello().comment(FILE));
        let check = |result: Result<Verified, SignatureError>, label: &str, text: &str| {
            let err = result.unwrap_err();
            assert_eq!(err.verdict(), label, "{err}");
            let message = err.to_string();
            assert!(message.starts_with(PATH), "{message}");
            assert!(message.contains(text), "{message}");
            assert!(
                message.contains(&format!("keys trusted: {id}")),
                "{message}"
            );
        };
        check(
            run("junk", &keys, &hello()),
            "malformed",
            "malformed signature",
        );
        let stranger = Signer::new();
        let foreign = stranger.sign(FILE, &hello().comment(FILE));
        let stranger_id = stranger.key().id().to_string();
        check(
            run(&foreign, &keys, &hello()),
            &format!("untrusted key {stranger_id}"),
            &format!("signed by untrusted key {stranger_id}"),
        );
        // A flipped bit in the trusted comment.
        let tampered = good.replace("version=0.1.0", "version=0.1.1");
        check(run(&tampered, &keys, &hello()), "bad", "bad signature");
        // Another build's signature put beside this file.
        let other = signer.sign(b"another build", &hello().comment(b"another build"));
        check(
            run(&other, &keys, &hello()),
            "of another file",
            &format!("this file's sha256 is {}", sha256_hex(FILE)),
        );
        // Plain `minisign -S`: valid, but no binding.
        let plain = signer.sign(FILE, "timestamp:1 file:libhello.so");
        check(
            run(&plain, &keys, &hello()),
            "not bound to the plugin",
            "`timestamp:1 file:libhello.so`",
        );
        // A signed build of plugin `kv-store` loaded for the entry `hello`.
        let kv = Binding {
            name: "kv-store".into(),
            version: "0.1.0".into(),
            configured_as: None,
        };
        let sig = signer.sign(FILE, &kv.comment(FILE));
        let mut expect = kv.clone();
        expect.configured_as = Some("hello".into());
        check(
            run(&sig, &keys, &expect),
            "name/version mismatch",
            "signed as plugin `kv-store` 0.1.0, but the config loads it as plugin `hello`",
        );
        // A signature of version 0.1.0 on a file whose metadata says 0.2.0.
        let mut newer = hello();
        newer.version = "0.2.0".into();
        check(
            run(&good, &keys, &newer),
            "name/version mismatch",
            "but the file is plugin `hello` 0.2.0",
        );
    }

    /// A signature that verified is remembered by the bytes' hash, the signature text and the
    /// key; a failure is not, and everything else is judged again on each check.
    #[test]
    fn a_verified_signature_is_remembered_for_identical_bytes_only() {
        let signer = Signer::new();
        let keys = TrustedKeys::new([signer.key()]);
        let bytes = b"bytes remembered by this test only";
        let sig = signer.sign(bytes, &hello().comment(bytes));
        let remembered = (
            sha256(bytes),
            sig.clone(),
            signer.key().as_base64().to_owned(),
        );
        assert!(!verified_before().contains(&remembered));
        let path = Path::new(PATH);
        verify(path, bytes, &sig, &keys, &hello()).unwrap();
        assert!(verified_before().contains(&remembered));
        // Identical bytes again: valid, and still bound, trusted and named.
        let again = verify(path, bytes, &sig, &keys, &hello()).unwrap();
        assert_eq!(again.sha256, sha256_hex(bytes));
        let mut kv = hello();
        kv.configured_as = Some("kv".into());
        let err = verify(path, bytes, &sig, &keys, &kv).unwrap_err();
        assert_eq!(err.verdict(), "name/version mismatch");
        let others = TrustedKeys::new([Signer::new().key()]);
        let err = verify(path, bytes, &sig, &others, &hello()).unwrap_err();
        assert!(err.verdict().starts_with("untrusted key"), "{err}");
        // Other bytes under the same signature: checked, refused, not remembered.
        let other = b"bytes remembered by this test only!";
        let err = verify(path, other, &sig, &keys, &hello()).unwrap_err();
        assert_eq!(err.verdict(), "of another file");
        assert!(
            !verified_before()
                .iter()
                .any(|(digest, text, _)| *digest == sha256(other) && *text == sig)
        );
    }

    #[test]
    fn check_reads_the_signature_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, FILE).unwrap();
        let policy = TrustPolicy {
            keys: TrustedKeys::new([Signer::new().key()]),
            require_signatures: false,
        };
        assert_eq!(check(&lib, FILE, &policy, None), Verdict::NotRequired);
        let digest = sha256(FILE);
        assert_eq!(
            check_library(&lib, FILE, &digest, &policy, "x").unwrap(),
            None
        );
        let required = TrustPolicy {
            require_signatures: true,
            ..policy
        };
        let verdict = check(&lib, FILE, &required, None);
        assert_eq!(verdict.label(), "missing");
        let err = check_library(&lib, FILE, &digest, &required, "x").unwrap_err();
        assert!(
            err.to_string().starts_with("plugin `x` refused: ")
                && err.to_string().contains("libx.so.minisig"),
            "{err}"
        );
        // Present but the file is not a plugin: malformed, not a panic.
        std::fs::write(signature_path(&lib), "untrusted comment: x\n").unwrap();
        assert_eq!(check(&lib, FILE, &required, None).label(), "malformed");
    }
}

//! Start-up's fast paths: many files loaded on every core (`load_checked_all`), each with its own
//! file checks and signature verdict, naming its own file; one SHA-256 per file shared by the
//! signature check and the private copy; identical files verified once, still each checked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backworks_plugin_host::{
    FileChecks, HostError, LoadPolicy, TrustPolicy, TrustedKey, TrustedKeys, Verifier,
    check_library, load_checked, load_checked_all, sha256_hex, signature_path,
};

use crate::support::{backworks, rust_plugin};

/// A folder with a key pair (made by `backworks plugin keygen`) and plugin files signed with it
/// (`backworks plugin sign`).
struct Signed {
    dir: tempfile::TempDir,
    key: TrustedKey,
}

impl Signed {
    fn new() -> Signed {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = (dir.path().join("k.pub"), dir.path().join("k.key"));
        let out = backworks(&[
            "plugin",
            "keygen",
            "-W",
            "-p",
            public.to_str().unwrap(),
            "-s",
            secret.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let key = TrustedKey::parse(&std::fs::read_to_string(&public).unwrap()).unwrap();
        Signed { dir, key }
    }

    /// Writes `bytes` to `name` (mode 0644) and signs it unless `signed` is false.
    fn file(&self, name: &str, bytes: &[u8], signed: bool) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        if signed {
            let secret = self.dir.path().join("k.key");
            let out = backworks(&[
                "plugin",
                "sign",
                path.to_str().unwrap(),
                "-s",
                secret.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{out:?}");
        }
        path
    }

    /// Strict file checks, signatures required, every file loaded as plugin `hello`.
    fn policy(&self) -> LoadPolicy {
        let trust = Arc::new(TrustPolicy {
            keys: TrustedKeys::new([self.key.clone()]),
            require_signatures: true,
        });
        let verify: Verifier = Arc::new(move |path: &Path, bytes: &[u8], sha256: &[u8; 32]| {
            check_library(path, bytes, sha256, &trust, "hello").map(|_| ())
        });
        LoadPolicy {
            file_checks: FileChecks::Strict,
            verify: Some(verify),
        }
    }
}

fn hello_bytes(trailer: &[u8]) -> Vec<u8> {
    let mut bytes = std::fs::read(rust_plugin("hello")).unwrap();
    bytes.extend_from_slice(trailer);
    bytes
}

/// What a refusal says, checked to name its own file.
fn refusal(
    result: &Result<Arc<backworks_plugin_host::LoadedLibrary>, HostError>,
    file: &Path,
) -> String {
    let err = match result {
        Ok(library) => panic!(
            "{} loaded, but must be refused: {library:?}",
            file.display()
        ),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&file.display().to_string()), "{err}");
    err
}

/// Files checked on several threads at once each get the verdict they would get alone, in the
/// order given, and name themselves: a bad one stops nothing else.
#[test]
fn parallel_loading_gives_each_file_its_own_verdict() {
    let signed = Signed::new();
    let good = hello_bytes(b"good");
    let a = signed.file("a.so", &good, true);
    let writable = signed.file("writable.so", &hello_bytes(b"writable"), true);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Another build's valid signature put beside this one.
    let swapped = signed.file("swapped.so", &hello_bytes(b"swapped"), false);
    std::fs::copy(signature_path(&a), signature_path(&swapped)).unwrap();
    let unsigned = signed.file("unsigned.so", &hello_bytes(b"unsigned"), false);
    let junk = signed.file("junk.so", b"not a library at all", false);
    std::fs::write(
        signature_path(&junk),
        "untrusted comment: not a signature\n",
    )
    .unwrap();
    let b = signed.file("b.so", &hello_bytes(b"b"), true);

    let policy = signed.policy();
    let order = [&a, &writable, &swapped, &unsigned, &junk, &b];
    for reversed in [false, true] {
        let mut files: Vec<(PathBuf, LoadPolicy)> = order
            .iter()
            .map(|p| ((*p).clone(), policy.clone()))
            .collect();
        if reversed {
            files.reverse();
        }
        let results = load_checked_all(&files);
        assert_eq!(results.len(), files.len());
        for ((path, _), result) in files.iter().zip(&results) {
            let name = path.file_name().unwrap().to_str().unwrap();
            match name {
                "a.so" | "b.so" => {
                    let library = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(library.path(), path.as_path());
                    assert_eq!(library.sha256(), sha256_hex(&std::fs::read(path).unwrap()));
                }
                "writable.so" => {
                    let err = refusal(result, path);
                    assert!(err.contains("mode 0666 is world-writable"), "{err}");
                }
                "swapped.so" => {
                    let err = refusal(result, path);
                    assert!(err.contains("signature of another file"), "{err}");
                    assert!(
                        err.contains(&sha256_hex(&std::fs::read(path).unwrap())),
                        "{err}"
                    );
                }
                "unsigned.so" => {
                    let err = refusal(result, path);
                    assert!(err.contains("signature missing"), "{err}");
                }
                "junk.so" => {
                    let err = refusal(result, path);
                    assert!(err.contains("malformed signature"), "{err}");
                }
                other => unreachable!("{other}"),
            }
        }
    }
}

/// Identical files share one hash's worth of verification, but each name is still checked on
/// its own: its mode, its own signature file, the plugin it is loaded as.
#[test]
fn identical_files_are_verified_once_and_each_still_checked() {
    let signed = Signed::new();
    let bytes = hello_bytes(b"identical");
    let first = signed.file("first.so", &bytes, true);
    let second = signed.file("second.so", &bytes, true);
    let unsigned = signed.file("unsigned.so", &bytes, false);
    let writable = signed.file("writable.so", &bytes, true);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o664)).unwrap();
    // A valid signature of these very bytes, but as another plugin than the config loads it as.
    let renamed = signed.file("renamed.so", &bytes, true);

    let policy = signed.policy();
    let one = load_checked(&first, &policy).unwrap();
    let results =
        load_checked_all(&[&second, &unsigned, &writable].map(|p| (p.clone(), policy.clone())));
    let two = results[0].as_ref().unwrap();
    assert_eq!(one.sha256(), two.sha256(), "one content");
    assert!(refusal(&results[1], &unsigned).contains("signature missing"));
    assert!(refusal(&results[2], &writable).contains("mode 0664 is group-writable"));

    let trust = Arc::new(TrustPolicy {
        keys: TrustedKeys::new([signed.key.clone()]),
        require_signatures: true,
    });
    let as_kv: Verifier = Arc::new(move |path: &Path, bytes: &[u8], sha256: &[u8; 32]| {
        check_library(path, bytes, sha256, &trust, "kv").map(|_| ())
    });
    let kv_policy = LoadPolicy {
        file_checks: FileChecks::Strict,
        verify: Some(as_kv),
    };
    let err = refusal(&load_checked(&renamed, &kv_policy), &renamed);
    assert!(err.contains("the config loads it as plugin `kv`"), "{err}");
    // A key no longer trusted is refused, however often its signature verified before.
    let stranger = Signed::new();
    let err = refusal(&load_checked(&second, &stranger.policy()), &second);
    assert!(err.contains("signed by untrusted key"), "{err}");
}

/// The file changes right after it was read: what the verifier saw, the hash it was given, and
/// what is loaded are the bytes read, not the file's new content.
#[test]
fn a_file_changed_after_its_read_loads_the_bytes_checked() {
    let signed = Signed::new();
    let original = hello_bytes(b"original");
    let file = signed.file("plugin.so", &original, true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = signed.policy().verify.unwrap();
    let (target, record) = (file.clone(), seen.clone());
    let verify: Verifier = Arc::new(move |path: &Path, bytes: &[u8], sha256: &[u8; 32]| {
        record.lock().unwrap().push((sha256_hex(bytes), *sha256));
        // Another build copied over the file while it is being checked.
        std::fs::copy(rust_plugin("kv_store"), &target).unwrap();
        inner(path, bytes, sha256)
    });
    let library = load_checked(
        &file,
        &LoadPolicy {
            file_checks: FileChecks::Strict,
            verify: Some(verify),
        },
    )
    .unwrap();
    let seen = seen.lock().unwrap();
    let (bytes_hash, given) = &seen[0];
    assert_eq!(
        bytes_hash,
        &sha256_hex(&original),
        "the verifier saw the bytes read"
    );
    assert_eq!(
        &given.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        bytes_hash,
        "the hash given is of those bytes"
    );
    assert_eq!(
        library.sha256(),
        sha256_hex(&original),
        "and they are loaded"
    );
    assert_eq!(library.metadata().name, "hello");
    // The file on disk is kv-store now; loading it again is judged on its new bytes: another
    // file's content with no signature of its own.
    let err = refusal(&load_checked(&file, &signed.policy()), &file);
    assert!(err.contains("signature of another file"), "{err}");
}

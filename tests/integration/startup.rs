//! Start-up's fast paths: many files loaded on every core (`load_checked_all`), each with its own
//! file checks and signature verdict, naming its own file; the checks made on the private copy,
//! hashed only when a signature needs it; identical files verified once, still each checked; and
//! `backworks serve` starting many plugins at once, each recorded in config order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// A config of many plugins for `backworks serve`: `n` copies of `hello` (each its own file,
/// distinct content), with, in the middle, a plugin whose config fails its schema (`hello` with a
/// number for a greeting), a disabled one and one whose file is missing; `important` marks the
/// failing one important.
fn many_plugins(dir: &Path, n: usize, important: bool) -> String {
    let hello = std::fs::read(rust_plugin("hello")).unwrap();
    let mut yaml = String::from("plugins:\n");
    for i in 0..n {
        let file = dir.join(format!("libp{i}.so"));
        let mut bytes = hello.clone();
        bytes.extend_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(&file, bytes).unwrap();
        yaml.push_str(&format!("  p{i}:\n    path: {}\n", file.display()));
        if i == n / 2 {
            yaml.push_str(&format!(
                "  broken:\n    path: {}\n    important: {important}\n    \
                 config: {{ greeting: 42 }}\n  \
                 off:\n    path: {}\n    enabled: false\n  \
                 gone:\n    path: {}\n",
                file.display(),
                file.display(),
                dir.join("missing.so").display()
            ));
        }
    }
    yaml.push_str("endpoints:\n  hello: { path: \"/hello/{name}\", plugin: p0 }\n");
    yaml
}

/// Many plugins started at once: each failure recorded with its own state and reason, the
/// others active, every record in config order; the schema violation logged at its place.
#[tokio::test]
async fn many_plugins_start_at_once_each_with_its_own_record_in_config_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = 24;
    let server = crate::support::Server::start(&many_plugins(dir.path(), n, false));
    let answer = crate::support::client()
        .get(server.url("/hello/world"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let listed = crate::support::get_json(server.admin_url("/_backworks/plugins")).await;
    let plugins = listed["plugins"].as_array().unwrap();
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut expected: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for (offset, name) in ["broken", "off", "gone"].into_iter().enumerate() {
        expected.insert(n / 2 + 1 + offset, name.to_owned());
    }
    assert_eq!(names, expected, "records in config order");
    let state = |name: &str| {
        let plugin = plugins.iter().find(|p| p["name"] == name).unwrap();
        (
            plugin["state"].as_str().unwrap().to_owned(),
            plugin["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    let active = plugins.iter().filter(|p| p["state"] == "active").count();
    assert_eq!(active, n);
    let (broken, why) = state("broken");
    assert_eq!(broken, "error");
    assert!(why.contains("/greeting"), "{why}");
    assert_eq!(state("off").0, "disabled");
    let (gone, why) = state("gone");
    assert_eq!(gone, "error");
    assert!(why.contains("plugin file not found"), "{why}");
    let logs = server.logs();
    assert!(
        logs.contains(r#"backworks.yaml:"#)
            && logs.contains(r#": plugin "broken": config field /greeting: 42 is not of types"#),
        "the violation at its place in the file: {logs}"
    );
}

/// The same config with the failing plugin important: start-up stops, naming it (and not the
/// missing plugin after it, which is not important), though every other plugin started.
#[test]
fn an_important_failure_among_many_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = crate::support::serve_until_exit(&many_plugins(dir.path(), 24, true));
    assert!(!status.success());
    assert_eq!(
        stderr.matches("cannot start").count(),
        1,
        "one reason to stop: {stderr}"
    );
    assert!(
        stderr.contains("important plugin `broken` cannot start")
            && stderr.contains(r#"plugin "broken": config field /greeting: 42"#)
            && stderr.contains("backworks.yaml:"),
        "{stderr}"
    );
}

/// Identical files load as one library, but each plugin entry is its own instance: two key-value
/// stores from byte-identical files under different names keep apart what they store (one serves
/// `PUT`, the other `GET`, of the same path), and the host maps one of the files (in place,
/// under a lease) once.
#[tokio::test]
async fn identical_files_share_one_library_and_keep_their_instances_apart() {
    let dir = tempfile::tempdir().unwrap();
    let kv = std::fs::read(rust_plugin("kv_store")).unwrap();
    for name in ["libkv_a.so", "libkv_b.so"] {
        let path = dir.path().join(name);
        std::fs::write(&path, &kv).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let yaml = format!(
        "plugin_dirs: [\"{}\"]\n\
         plugins:\n  a: {{ path: libkv_a.so }}\n  b: {{ path: libkv_b.so }}\n\
         endpoints:\n  \
         get: {{ path: \"/kv/{{key}}\", methods: [GET], plugin: a }}\n  \
         put: {{ path: \"/kv/{{key}}\", methods: [PUT], plugin: b }}\n",
        dir.path().display()
    );
    let server = crate::support::Server::start(&yaml);
    let http = crate::support::client();
    let put = http
        .put(server.url("/kv/colour"))
        .body("blue")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "b stores: {}", put.status());
    let get = http.get(server.url("/kv/colour")).send().await.unwrap();
    assert_eq!(get.status(), 404, "a is a store of its own");

    // One library mapped: the first file loaded, itself.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let libraries: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|name| name.contains("libkv_"))
        .collect();
    assert_eq!(
        libraries.len(),
        1,
        "one library of the two files: {libraries:?}"
    );
    let library = libraries.first().unwrap();
    if crate::support::leases_work(dir.path()) {
        assert!(
            library.starts_with(&*dir.path().to_string_lossy()),
            "{library}"
        );
    } else {
        assert!(library.starts_with("/memfd:backworks-libkv_"), "{library}");
    }
}

/// A plugin file marked immutable (`chattr +i`) is loaded in place, with no private copy, even
/// where copies are asked for (`BACKWORKS_PRIVATE_COPY=memfd`): the server maps the file itself,
/// and serves from it. (Needs `CAP_LINUX_IMMUTABLE` to mark the file; without it, the test says
/// so and checks that a plain file is copied then.)
#[tokio::test]
async fn an_immutable_plugin_file_is_loaded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libimmutable_hello.so");
    std::fs::copy(rust_plugin("hello"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    /// Lifts the attribute however the test ends (else the folder could not be removed).
    struct Unmark<'a>(&'a Path);
    impl Drop for Unmark<'_> {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        }
    }
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    let _unmark = Unmark(&path);
    let yaml = format!(
        "plugins:\n  hello: {{ path: \"{}\" }}\n\
         endpoints:\n  hello: {{ path: \"/hello/{{name}}\", plugin: hello }}\n",
        path.display()
    );
    let server =
        crate::support::Server::start_with_env(&yaml, &[("BACKWORKS_PRIVATE_COPY", "memfd")]);
    let answer = crate::support::client()
        .get(server.url("/hello/ana"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let mapped = |name: &str| maps.lines().any(|line| line.ends_with(name));
    let in_place = mapped(&path.display().to_string());
    let copied = maps.contains("backworks-libimmutable_hello.so");
    if immutable {
        assert!(in_place && !copied, "mapped in place, not copied: {maps}");
    } else {
        eprintln!("chattr +i failed here: only the copying half of this test ran");
        assert!(copied && !in_place, "copied: {maps}");
    }
}

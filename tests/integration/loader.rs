//! Loading and inspecting plugin files: every broken fixture rejected with its own error; metadata read without running the library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backworks_plugin_host::{
    CallError, DynamicPlugin, HostError, Inspection, LoadedLibrary, Plugin, inspect, load_library,
};
use backworks_plugin_sdk::abi::{ABI_MAGIC, ABI_MAJOR, ABI_MINOR, ENTRY_SYMBOL, METADATA_SECTION};
use backworks_plugin_sdk::{PluginError, Request, Response, SDK_VERSION};
use serde_json::{Value, json};

use crate::support::{c_fixture, c_plugin, rust_plugin};

/// The environment variable `constructor_marker.c`'s constructor reads: the file it creates.
const MARKER_VAR: &str = "BACKWORKS_MARKER";
/// Set by [`load_runs_the_constructor`] for its child process: the library [`load_child_entry`] loads.
const LOAD_CHILD_VAR: &str = "BACKWORKS_LOAD_CHILD";

// ---- helpers -------------------------------------------------------------------------------------

/// `load_library(path)`, which must fail.
fn load_err(path: &Path) -> HostError {
    match load_library(path) {
        Ok(library) => panic!(
            "{} loaded, but must be refused: {library:?}",
            path.display()
        ),
        Err(err) => err,
    }
}

/// `load_library(path)`, which must succeed.
fn load_ok(path: &Path) -> Arc<LoadedLibrary> {
    load_library(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// `inspect(path)`, which must read the metadata.
fn inspect_ok(path: &Path) -> Inspection {
    inspect(path).unwrap_or_else(|e| panic!("inspecting {}: {e}", path.display()))
}

/// Asserts that the message of `err` names the file and contains every one of `words`.
fn assert_message(err: &HostError, path: &Path, words: &[&str]) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the message does not name the file {}: {message}",
        path.display()
    );
    for word in words {
        assert!(
            message.contains(word),
            "the message lacks {word:?}: {message}"
        );
    }
}

/// A new instance named `name` of the plugin in `library`, initialized with `config`.
async fn started(library: &Path, name: &str, config: Value) -> DynamicPlugin {
    let plugin = DynamicPlugin::new(load_ok(library), name)
        .unwrap_or_else(|e| panic!("creating an instance of {}: {e}", library.display()));
    plugin
        .initialize(&config)
        .await
        .unwrap_or_else(|e| panic!("initializing {} with {config}: {e}", library.display()));
    plugin
}

/// `GET path` with the endpoint parameters `params`.
fn get(path: &str, params: &[(&str, &str)]) -> Request {
    let mut request = Request::new("GET", path);
    request.params = params
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    request
}

/// The response body as JSON.
fn body_json(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "the body is not JSON ({e}): {}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

/// `n` pseudo-random bytes (xorshift64, fixed seed: the same bytes every run).
fn pseudo_random_bytes(n: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

// ---- 1. every broken C fixture refused with its own error ----------------------------------------

/// Every fixture in `tests/fixtures/c/` and the test that covers it; a new fixture without
/// a test fails [`every_broken_fixture_is_covered`].
const BROKEN_FIXTURES: &[(&str, &str)] = &[
    ("wrong_magic", "wrong_magic_is_bad_magic"),
    (
        "wrong_abi_major",
        "wrong_abi_major_is_refused_by_inspection",
    ),
    ("newer_sdk", "newer_sdk_is_refused_by_inspection"),
    ("no_metadata", "no_metadata_section_is_no_metadata"),
    ("not_a_plugin", "plain_library_is_no_metadata"),
    ("missing_symbol", "missing_entry_symbol_is_missing_symbol"),
    ("short_vtable", "short_vtable_is_vtable_too_small"),
    ("panic_abort", "panic_abort_is_refused_by_inspection"),
    ("constructor_marker", "load_runs_the_constructor"),
    (
        "bad_utf8_header",
        "a_header_that_is_not_utf8_is_an_invalid_response",
    ),
];

#[test]
fn every_broken_fixture_is_covered() {
    let dir = crate::support::root().join("tests/fixtures/c");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .map(|p| {
            p.file_stem()
                .expect("file stem")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut covered: Vec<String> = BROKEN_FIXTURES
        .iter()
        .map(|(f, _)| (*f).to_owned())
        .collect();
    covered.sort();
    assert_eq!(
        found, covered,
        "every broken fixture needs a test in tests/integration/loader.rs"
    );
}

#[test]
fn wrong_magic_is_bad_magic() {
    let path = c_fixture("wrong_magic");
    // Only the vtable is wrong: the metadata is that of a compatible plugin.
    let inspection = inspect_ok(&path);
    assert_eq!(inspection.metadata.name, "broken-wrong-magic");
    assert!(
        inspection.compatibility.is_ok(),
        "{:?}",
        inspection.compatibility
    );

    let err = load_err(&path);
    let HostError::BadMagic {
        expected, found, ..
    } = &err
    else {
        panic!("expected BadMagic, got {err:?}");
    };
    assert_eq!(*expected, ABI_MAGIC);
    assert_eq!(*found, 0xdead_beef_dead_beef);
    assert_message(
        &err,
        &path,
        &[
            "wrong magic in `backworks_plugin`",
            "expected 0x4e4947554c505742",
            "found 0xdeadbeefdeadbeef",
        ],
    );
}

#[test]
fn wrong_abi_major_is_refused_by_inspection() {
    let path = c_fixture("wrong_abi_major");
    // The metadata alone says it: inspection, which never loads the file, already refuses it.
    let inspection = inspect_ok(&path);
    assert_eq!(inspection.metadata.name, "broken-wrong-abi-major");
    assert_eq!(
        (inspection.metadata.abi_major, inspection.metadata.abi_minor),
        (2, 0)
    );
    let err = inspection
        .compatibility
        .expect_err("ABI 2.0 must be incompatible");
    let HostError::AbiMismatch {
        expected_major,
        found_major,
        found_minor,
        ..
    } = &err
    else {
        panic!("expected AbiMismatch, got {err:?}");
    };
    assert_eq!(
        (*expected_major, *found_major, *found_minor),
        (ABI_MAJOR, 2, 0)
    );
    assert_message(
        &err,
        &path,
        &["plugin ABI 2.0 is incompatible", "this host loads ABI 1.x"],
    );

    let err = load_err(&path);
    assert!(
        matches!(err, HostError::AbiMismatch { found_major: 2, .. }),
        "{err:?}"
    );
    assert_message(&err, &path, &["plugin ABI 2.0", "ABI 1.x"]);
}

#[test]
fn newer_sdk_is_refused_by_inspection() {
    let path = c_fixture("newer_sdk");
    let inspection = inspect_ok(&path);
    assert_eq!(inspection.metadata.sdk_version, "1.0.0");
    let err = inspection
        .compatibility
        .expect_err("SDK 1.0.0 must be incompatible");
    let HostError::SdkMismatch {
        expected, found, ..
    } = &err
    else {
        panic!("expected SdkMismatch, got {err:?}");
    };
    assert_eq!(found, "1.0.0");
    assert_eq!(expected, "^0.1");
    assert_message(&err, &path, &["backworks-plugin-sdk 1.0.0", "SDK ^0.1"]);

    let err = load_err(&path);
    assert!(
        matches!(&err, HostError::SdkMismatch { found, .. } if found == "1.0.0"),
        "{err:?}"
    );
    assert_message(&err, &path, &["1.0.0", "^0.1"]);
}

#[test]
fn no_metadata_section_is_no_metadata() {
    // The vtable is valid and its metadata bytes too, but not in the section: no inspection.
    let path = c_fixture("no_metadata");
    for err in [
        inspect(&path).expect_err("no metadata section"),
        load_err(&path),
    ] {
        let HostError::NoMetadata { section, .. } = &err else {
            panic!("expected NoMetadata, got {err:?}");
        };
        assert_eq!(*section, METADATA_SECTION);
        assert_message(
            &err,
            &path,
            &[
                "not a Backworks plugin",
                "no `.backworks_meta` metadata section",
            ],
        );
    }
}

#[test]
fn plain_library_is_no_metadata() {
    let path = c_fixture("not_a_plugin");
    for err in [
        inspect(&path).expect_err("a plain library"),
        load_err(&path),
    ] {
        assert!(
            matches!(
                err,
                HostError::NoMetadata {
                    section: METADATA_SECTION,
                    ..
                }
            ),
            "expected NoMetadata, got {err:?}"
        );
        assert_message(
            &err,
            &path,
            &["not a Backworks plugin", "`.backworks_meta`"],
        );
    }
}

#[test]
fn missing_entry_symbol_is_missing_symbol() {
    let path = c_fixture("missing_symbol");
    let inspection = inspect_ok(&path);
    assert_eq!(inspection.metadata.name, "broken-missing-symbol");
    assert!(
        inspection.compatibility.is_ok(),
        "{:?}",
        inspection.compatibility
    );

    let err = load_err(&path);
    let HostError::MissingSymbol { symbol, .. } = &err else {
        panic!("expected MissingSymbol, got {err:?}");
    };
    assert_eq!(*symbol, ENTRY_SYMBOL);
    assert_message(
        &err,
        &path,
        &["has metadata but does not export `backworks_plugin`"],
    );
}

#[test]
fn short_vtable_is_vtable_too_small() {
    let path = c_fixture("short_vtable");
    assert!(inspect_ok(&path).compatibility.is_ok());

    let err = load_err(&path);
    let HostError::VtableTooSmall {
        major,
        minor,
        expected,
        found,
        ..
    } = &err
    else {
        panic!("expected VtableTooSmall, got {err:?}");
    };
    assert_eq!((*major, *minor), (ABI_MAJOR, ABI_MINOR));
    assert_eq!((*expected, *found), (112, 96));
    assert_message(
        &err,
        &path,
        &["plugin vtable is 96 bytes", "ABI 1.4 needs at least 112"],
    );
}

#[test]
fn panic_abort_is_refused_by_inspection() {
    let path = c_fixture("panic_abort");
    let inspection = inspect_ok(&path);
    assert!(!inspection.metadata.panic_unwind);
    let err = inspection
        .compatibility
        .expect_err("panic=abort must be incompatible");
    assert!(
        matches!(err, HostError::PanicAbort { .. }),
        "expected PanicAbort, got {err:?}"
    );
    assert_message(
        &err,
        &path,
        &[r#"panic = "abort""#, r#"build it with panic = "unwind""#],
    );

    let err = load_err(&path);
    assert!(
        matches!(err, HostError::PanicAbort { .. }),
        "expected PanicAbort, got {err:?}"
    );
    assert_message(&err, &path, &[r#"panic = "abort""#]);
}

// ---- 2. files that are no library at all ---------------------------------------------------------

#[test]
fn junk_files_fail_in_inspection_and_are_never_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let random = dir.path().join("librandom.so");
    std::fs::write(&random, pseudo_random_bytes(4096)).expect("write random bytes");
    let empty = dir.path().join("libempty.so");
    std::fs::write(&empty, b"").expect("write empty file");
    let truncated = dir.path().join("libtruncated.so");
    let hello = std::fs::read(rust_plugin("hello")).expect("read libhello");
    std::fs::write(&truncated, &hello[..1000]).expect("write truncated copy");

    for path in [&random, &empty, &truncated] {
        let inspected = inspect(path).expect_err("junk has no metadata");
        let loaded = load_err(path);
        for err in [&inspected, &loaded] {
            assert!(
                matches!(
                    err,
                    HostError::NotALibrary { .. } | HostError::NoMetadata { .. }
                ),
                "{}: expected NotALibrary or NoMetadata, got {err:?}",
                path.display()
            );
            assert_message(err, path, &[]);
        }
        // `load` stopped where inspection did, before `dlopen` (which would say `Open`).
        assert_eq!(
            std::mem::discriminant(&inspected),
            std::mem::discriminant(&loaded),
            "{}: inspect said {inspected}, load said {loaded}",
            path.display()
        );
    }
}

/// The file offset of the ELF64 section header of `hello`'s metadata section (read by hand, as a
/// hostile file's author would edit it).
fn metadata_section_header(elf: &[u8]) -> usize {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (table, size, count) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let names = u64_at(table + u16_at(0x3e) * size + 0x18);
    (0..count)
        .map(|i| table + i * size)
        .find(|&header| {
            let name =
                names + u32::from_le_bytes(elf[header..header + 4].try_into().unwrap()) as usize;
            elf[name..].starts_with(METADATA_SECTION.as_bytes())
                && elf[name + METADATA_SECTION.len()] == 0
        })
        .expect("hello has a metadata section")
}

/// A metadata section that claims bytes past the end of the file is refused by name; one that
/// claims far more than metadata can hold is read only as far as metadata goes, and its metadata
/// is what it was (nothing in it changed).
#[test]
fn a_metadata_section_past_the_file_is_refused_and_an_oversized_one_still_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = std::fs::read(rust_plugin("hello")).expect("read libhello");
    let header = metadata_section_header(&hello);
    let offset = u64::from_le_bytes(hello[header + 0x18..header + 0x20].try_into().unwrap());
    let with_size = |size: u64| {
        let mut elf = hello.clone();
        elf[header + 0x20..header + 0x28].copy_from_slice(&size.to_le_bytes());
        elf
    };

    let outside = dir.path().join("liboutside.so");
    std::fs::write(&outside, with_size(hello.len() as u64)).expect("write");
    for err in [
        inspect(&outside).expect_err("past the end"),
        load_err(&outside),
    ] {
        assert!(matches!(err, HostError::NotALibrary { .. }), "{err:?}");
        assert_message(&err, &outside, &["cannot read section `.backworks_meta`"]);
    }

    let huge = dir.path().join("libhuge.so");
    let size = hello.len() as u64 - offset;
    assert!(size > 4 * 64 * 1024, "the section lies early in the file");
    std::fs::write(&huge, with_size(size)).expect("write");
    assert_eq!(inspect_ok(&huge).metadata.name, "hello");
    assert_eq!(load_ok(&huge).metadata().name, "hello");
}

/// Section tables out of the ordinary are judged alike whether the file is read in parts (inspect,
/// a load without a signature) or held whole (a signature check, `plugin sign`): none is no
/// metadata; one not aligned for its entries is no library (as `dlopen` never reads it, the
/// file would run, but it is not what a linker writes). A folder is an I/O error.
#[test]
fn odd_section_tables_are_judged_alike_in_parts_and_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = std::fs::read(rust_plugin("hello")).expect("read libhello");
    let u64_at = |elf: &[u8], at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let judged = |name: &str, elf: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, elf).expect("write");
        let whole = backworks_plugin_host::metadata_from_bytes(&path, elf).expect_err("refused");
        let (inspected, loaded) = (inspect(&path).expect_err("refused"), load_err(&path));
        for err in [&inspected, &loaded] {
            assert_eq!(
                std::mem::discriminant(err),
                std::mem::discriminant(&whole),
                "{name}: {err} in parts, {whole} whole"
            );
        }
        whole
    };

    // No section table at all (`e_shoff`, `e_shnum`, `e_shstrndx` zero), as `sstrip` leaves.
    let mut none = hello.clone();
    none[0x28..0x30].fill(0);
    none[0x3c..0x40].fill(0);
    let err = judged("libnone.so", &none);
    assert!(matches!(err, HostError::NoMetadata { .. }), "{err:?}");

    // The same table moved to an offset that is 4 bytes off its alignment.
    let (table, size) = (
        u64_at(&hello, 0x28) as usize,
        64 * usize::from(u16::from_le_bytes([hello[0x3c], hello[0x3d]])),
    );
    let mut odd = hello.clone();
    odd.resize(odd.len().next_multiple_of(8) + 4, 0);
    let at = odd.len() as u64;
    odd.extend_from_slice(&hello[table..table + size]);
    odd[0x28..0x30].copy_from_slice(&at.to_le_bytes());
    let err = judged("libodd.so", &odd);
    assert!(matches!(err, HostError::NotALibrary { .. }), "{err:?}");

    // The names index outside the table.
    let mut index = hello.clone();
    index[0x3e..0x40].copy_from_slice(&u16::MAX.to_le_bytes());
    let err = judged("libindex.so", &index);
    assert!(matches!(err, HostError::NotALibrary { .. }), "{err:?}");

    let folder = dir.path().join("libfolder.so");
    std::fs::create_dir(&folder).expect("mkdir");
    assert!(matches!(inspect(&folder), Err(HostError::Io { .. })));
}

// ---- 3. inspection never runs the library's code -------------------------------------------------

#[test]
fn inspect_cli_never_runs_the_constructor() {
    let path = c_fixture("constructor_marker");
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let output = Command::new(env!("CARGO_BIN_EXE_backworks"))
        .args(["plugin", "inspect"])
        .arg(&path)
        .arg("--json")
        .env(MARKER_VAR, &marker)
        .env("NO_COLOR", "1")
        .output()
        .expect("run backworks plugin inspect");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "plugin inspect failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("plugin inspect --json printed no JSON ({e}):\n{stdout}"));
    assert_eq!(report["name"], "broken-constructor-marker", "{report}");
    assert_eq!(report["version"], "0.1.0", "{report}");
    assert_eq!(report["compatible"], true, "{report}");
    assert!(
        !marker.exists(),
        "inspection ran the library's constructor: {} exists",
        marker.display()
    );
}

/// The positive control of [`inspect_cli_never_runs_the_constructor`]: the same file with the same
/// variable, loaded (in a child process, the only safe place to set the variable) — the marker
/// appears, so its absence above means the constructor did not run, not that it cannot run.
#[test]
fn load_runs_the_constructor() {
    let path = c_fixture("constructor_marker");
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let output = Command::new(std::env::current_exe().expect("test executable"))
        .args(["--exact", "loader::load_child_entry", "--nocapture"])
        .env(LOAD_CHILD_VAR, &path)
        .env(MARKER_VAR, &marker)
        .output()
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("child: load refused after dlopen"),
        "the child did not load:\n{stdout}\n{stderr}"
    );
    assert!(
        marker.exists(),
        "loading did not run the constructor: {} is missing\n{stdout}\n{stderr}",
        marker.display()
    );
}

/// Run only as the child of [`load_runs_the_constructor`] (returns at once otherwise): inspects the
/// library (no marker yet), then loads it (marker), and shows that `load` refuses the file only after
/// `dlopen` ran its constructor — this fixture is compatible, so `load` opens it.
#[test]
fn load_child_entry() {
    let Some(path) = std::env::var_os(LOAD_CHILD_VAR).map(PathBuf::from) else {
        return;
    };
    let marker = PathBuf::from(std::env::var_os(MARKER_VAR).expect("BACKWORKS_MARKER is set"));
    assert!(
        !marker.exists(),
        "{} exists before anything ran",
        marker.display()
    );

    let inspection = inspect_ok(&path);
    assert!(
        inspection.compatibility.is_ok(),
        "{:?}",
        inspection.compatibility
    );
    assert!(!marker.exists(), "inspection ran the constructor");

    let err = load_err(&path);
    assert!(
        matches!(
            err,
            HostError::MissingSymbol {
                symbol: ENTRY_SYMBOL,
                ..
            }
        ),
        "expected MissingSymbol, got {err:?}"
    );
    assert!(marker.exists(), "dlopen did not run the constructor");
    println!("child: load refused after dlopen: {err}");
}

// ---- 4. metadata of real plugins, read without loading -------------------------------------------

#[test]
fn rust_plugin_metadata_is_read_from_the_file() {
    let path = rust_plugin("hello");
    let inspection = inspect_ok(&path);
    let meta = &inspection.metadata;
    assert_eq!(inspection.path, path);
    assert_eq!(meta.name, "hello");
    assert_eq!(meta.version, "0.1.0");
    assert_eq!(meta.sdk_version, SDK_VERSION);
    assert_eq!((meta.abi_major, meta.abi_minor), (ABI_MAJOR, ABI_MINOR));
    assert_eq!((meta.abi_major, meta.abi_minor), (1, 4));
    assert!(meta.panic_unwind);
    assert!(meta.description.contains("greets"), "{}", meta.description);
    assert!(
        inspection.compatibility.is_ok(),
        "{:?}",
        inspection.compatibility
    );
}

#[test]
fn c_plugin_metadata_is_read_from_the_file() {
    let path = c_plugin("hello");
    let inspection = inspect_ok(&path);
    let meta = &inspection.metadata;
    assert_eq!(meta.name, "c-hello");
    assert_eq!(meta.version, "0.1.0");
    assert_eq!(meta.sdk_version, SDK_VERSION);
    assert_eq!((meta.abi_major, meta.abi_minor), (1, 4));
    assert!(meta.panic_unwind);
    assert!(
        inspection.compatibility.is_ok(),
        "{:?}",
        inspection.compatibility
    );
}

/// The C header's helpers (`BW_STR_INIT` in static initializers, `bw_str_eq`,
/// `bw_str_eq_ignore_case`, `bw_header_get`, `BW_HOST_SERVICES_SIZE_V1_0`), checked by a C program
/// built with warnings as errors and run: as C11, and as C++17 too where a C++ compiler is
/// installed (the header promises both).
#[test]
fn the_c_header_helpers_work() {
    let root = crate::support::root();
    let src = root.join("tests/fixtures/c-helpers/helpers.c");
    let out = tempfile::tempdir().unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut builds = vec![(cc, vec!["-std=c11"])];
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    if Command::new(&cxx).arg("--version").output().is_ok() {
        builds.push((cxx, vec!["-x", "c++", "-std=c++17"]));
    } else {
        eprintln!("no C++ compiler `{cxx}`: the header's helpers are checked as C only");
    }
    for (index, (compiler, flags)) in builds.into_iter().enumerate() {
        let exe = out.path().join(format!("helpers{index}"));
        let built = Command::new(&compiler)
            .args(&flags)
            .args(["-Wall", "-Wextra", "-Werror", "-I"])
            .arg(root.join("plugin-sdk/include"))
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{compiler}` (install gcc): {e}"));
        assert!(
            built.status.success(),
            "{compiler} {flags:?}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let ran = Command::new(&exe).output().unwrap();
        assert!(
            ran.status.success(),
            "{compiler} {flags:?}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
}

// ---- 5. calls through the ABI --------------------------------------------------------------------

#[tokio::test]
async fn c_hello_answers_through_the_abi() {
    let path = c_plugin("hello");
    let library = load_ok(&path);
    assert_eq!(library.metadata().name, "c-hello");
    assert_eq!(library.path(), path);
    let plugin = started(&path, "x", Value::Null).await;
    assert_eq!(plugin.info().name, "x");
    assert_eq!(plugin.info().metadata.name, "c-hello");

    let response = plugin
        .handle(get("/greet/c", &[]))
        .await
        .expect("c-hello handles");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.headers.get("content-type"),
        Some("application/json")
    );
    let text = String::from_utf8_lossy(&response.body);
    assert!(text.contains("Hello from C"), "{text}");
    assert!(text.contains("/greet/c"), "{text}");
    assert_eq!(
        body_json(&response),
        json!({ "message": "Hello from C", "path": "/greet/c" })
    );

    // Its after_response answers with a copy made by the header's `bw_respond`: the same status,
    // headers in order and body, also when there are none.
    let mut headers = backworks_plugin_sdk::Headers::new();
    headers.insert("x-one", "1");
    headers.insert("x-two", "");
    let given = Response {
        status: 418,
        headers,
        body: b"short and stout".to_vec(),
    };
    let copied = plugin
        .after_response(&get("/greet/c", &[]), &given)
        .await
        .expect("c-hello copies the response");
    assert_eq!(copied, given);
    let empty = Response {
        status: 204,
        headers: backworks_plugin_sdk::Headers::new(),
        body: Vec::new(),
    };
    assert_eq!(
        plugin.after_response(&get("/", &[]), &empty).await.unwrap(),
        empty
    );
}

#[tokio::test]
async fn a_header_that_is_not_utf8_is_an_invalid_response() {
    let plugin = started(&c_fixture("bad_utf8_header"), "garbage", Value::Null).await;
    let err = plugin
        .handle(get("/anything", &[]))
        .await
        .expect_err("a header value of bytes FF FE must be refused, not passed on lossily");
    let CallError::InvalidResponse(message) = &err else {
        panic!("expected an invalid response, got {err:?}");
    };
    assert!(message.contains("`garbage`"), "names the plugin: {message}");
    assert!(message.contains("x-garbage"), "names the header: {message}");
    assert!(message.contains("not UTF-8"), "says why: {message}");
    assert_eq!(err.status(), 502);
    assert_eq!(err.kind(), "invalid_response");
    // The plugin stays usable: its other answers are fine.
    assert_eq!(
        plugin.health_check().await,
        backworks_plugin_sdk::Health::Healthy
    );
}

#[tokio::test]
async fn rust_hello_answers_through_the_abi() {
    let plugin = started(&rust_plugin("hello"), "x", Value::Null).await;
    let response = plugin
        .handle(get("/hello/ana", &[("name", "ana")]))
        .await
        .expect("hello handles");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, br#"{"message":"Hello, ana!"}"#);
    assert_eq!(body_json(&response), json!({ "message": "Hello, ana!" }));
}

#[tokio::test]
async fn rust_hello_config_error_is_a_config_error() {
    let plugin = DynamicPlugin::new(load_ok(&rust_plugin("hello")), "x").expect("instance");
    let err = plugin
        .initialize(&json!({ "greeting": 5 }))
        .await
        .expect_err("a number is no greeting");
    let CallError::Plugin(PluginError::Config(message)) = &err else {
        panic!("expected PluginError::Config, got {err:?}");
    };
    assert!(message.contains("invalid type"), "{message}");
    // The failed config changed nothing: the default greeting still answers.
    let response = plugin
        .handle(get("/hello/ana", &[("name", "ana")]))
        .await
        .expect("handle");
    assert_eq!(response.body, br#"{"message":"Hello, ana!"}"#);
}

#[tokio::test]
async fn panics_arrive_as_errors_and_the_plugin_keeps_serving() {
    let plugin = started(&rust_plugin("broken_panic"), "x", Value::Null).await;

    let err = plugin
        .handle(get("/x/panic", &[]))
        .await
        .expect_err("/x/panic panics");
    let CallError::Plugin(PluginError::Panic(message)) = &err else {
        panic!("expected PluginError::Panic, got {err:?}");
    };
    assert!(message.contains("handle exploded"), "{message}");

    // After an await, on the plugin's own runtime.
    let err = plugin
        .handle(get("/x/panic-later", &[]))
        .await
        .expect_err("/x/panic-later panics");
    let CallError::Plugin(PluginError::Panic(message)) = &err else {
        panic!("expected PluginError::Panic, got {err:?}");
    };
    assert!(message.contains("handle exploded"), "{message}");

    let response = plugin
        .handle(get("/x/ok", &[]))
        .await
        .expect("/x/ok after the panics");
    assert_eq!(response.status, 200);
    assert_eq!(body_json(&response), json!({ "ok": true }));
}

#[tokio::test]
async fn async_plugin_sleeps_on_its_own_runtime() {
    let plugin = started(&rust_plugin("async_clock"), "x", Value::Null).await;
    let started_at = Instant::now();
    let response = plugin
        .handle(get("/sleep/50", &[("ms", "50")]))
        .await
        .expect("/sleep/50");
    assert!(
        started_at.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started_at.elapsed()
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body, br#"{"slept_ms":50}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_calls_overlap() {
    let plugin = Arc::new(started(&rust_plugin("async_clock"), "x", Value::Null).await);
    let started_at = Instant::now();
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let plugin = plugin.clone();
            tokio::spawn(async move { plugin.handle(get("/sleep/100", &[("ms", "100")])).await })
        })
        .collect();
    for call in calls {
        let response = call.await.expect("task").expect("/sleep/100");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, br#"{"slept_ms":100}"#);
    }
    // One after another they would take 20 s; the bound is only a sanity check.
    let elapsed = started_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "200 concurrent 100 ms sleeps took {elapsed:?}"
    );
}

#[tokio::test]
async fn dropping_a_pending_call_cancels_it() {
    let plugin = started(&rust_plugin("async_clock"), "x", Value::Null).await;
    for _ in 0..10 {
        let started_at = Instant::now();
        let call = plugin.handle(get("/sleep/5000", &[("ms", "5000")]));
        let outcome = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(
            outcome.is_err(),
            "a 5 s sleep finished within 50 ms: {outcome:?}"
        );
        let elapsed = started_at.elapsed();
        assert!(
            elapsed < Duration::from_secs(2),
            "dropping the call took {elapsed:?}"
        );
    }
    let response = plugin
        .handle(get("/sleep/1", &[("ms", "1")]))
        .await
        .expect("the plugin serves after cancelled calls");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, br#"{"slept_ms":1}"#);
}

// ---- 6. instances are independent ----------------------------------------------------------------

#[tokio::test]
async fn two_instances_of_one_library_keep_their_own_config() {
    let path = rust_plugin("hello");
    let library = load_ok(&path);
    let hi = DynamicPlugin::new(library.clone(), "hi").expect("instance hi");
    let hey = DynamicPlugin::new(library, "hey").expect("instance hey");
    hi.initialize(&json!({ "greeting": "Hi" }))
        .await
        .expect("initialize hi");
    hey.initialize(&json!({ "greeting": "Hey" }))
        .await
        .expect("initialize hey");
    // A second load of the same file: one more instance, still its own state.
    let other = started(&path, "default", Value::Null).await;

    for (plugin, expected) in [
        (&hi, "Hi, ana!"),
        (&hey, "Hey, ana!"),
        (&other, "Hello, ana!"),
        (&hi, "Hi, ana!"),
    ] {
        let response = plugin
            .handle(get("/hello/ana", &[("name", "ana")]))
            .await
            .expect("hello handles");
        assert_eq!(
            body_json(&response),
            json!({ "message": expected }),
            "instance {}",
            plugin.info().name
        );
    }
}

// ---- in place, under a lease -------------------------------------------------------------------

/// A copy of the hello plugin in a file of its own (the test's to write), in `dir`, renamed
/// `own` in its metadata: bytes of its own, which no other test's load shares.
fn own_hello(dir: &Path, own: &str) -> PathBuf {
    assert_eq!(own.len(), "hello".len());
    let mut bytes = std::fs::read(rust_plugin("hello")).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"name=hello\0")
        .expect("hello's metadata names it");
    bytes[at + 5..at + 10].copy_from_slice(own.as_bytes());
    let path = dir.join(format!("lib{own}.so"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The lines of this process's maps that map the file at `path` (by device and inode).
fn mappings_of(path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    let dev = format!(
        "{:02x}:{:02x}",
        nix::libc::major(meta.dev()),
        nix::libc::minor(meta.dev())
    );
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3) == Some(&dev.as_str())
                && fields.get(4) == Some(&meta.ino().to_string().as_str())
        })
        .map(str::to_owned)
        .collect()
}

/// Loaded in place, a library keeps serving the bytes that were checked when its file is written
/// over (the writer waits while the host makes the library's mappings its own memory, the view it
/// compares identical files with included); the file loaded again then runs its new bytes, from a
/// copy (the dynamic loader would hand back the old library for the same inode), and an identical
/// file still finds the library.
#[tokio::test]
async fn a_library_loaded_in_place_runs_what_was_checked_after_its_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = own_hello(dir.path(), "ownrw");
    let original = std::fs::read(&path).unwrap();
    let library = load_ok(&path);
    if !crate::support::leases_work(dir.path()) {
        assert_ne!(library.store(), backworks_plugin_host::CopyStore::Leased);
        return;
    }
    assert_eq!(library.store(), backworks_plugin_host::CopyStore::Leased);
    let mapped = mappings_of(&path);
    assert!(!mapped.is_empty(), "the file itself is mapped");
    assert!(
        mapped
            .iter()
            .all(|line| !line.split_whitespace().nth(1).unwrap().contains('w')),
        "no writable data mapped from the file: {mapped:?}"
    );
    // A file with the same bytes shares the library: compared with it through a kept view.
    let twin = dir.path().join("libtwin.so");
    std::fs::write(&twin, &original).unwrap();
    assert_eq!(load_ok(&twin).sha256(), library.sha256());
    assert!(
        mappings_of(&path).iter().any(|line| line.contains("r--s")),
        "the view of the file is mapped: {:?}",
        mappings_of(&path)
    );
    let plugin = DynamicPlugin::new(library.clone(), "own").unwrap();
    plugin.initialize(&Value::Null).await.unwrap();
    let hello = |name: &'static str| {
        let plugin = &plugin;
        async move {
            let response = plugin
                .handle(get("/hello/x", &[("name", name)]))
                .await
                .unwrap();
            body_json(&response)
        }
    };
    assert_eq!(hello("ana").await, json!({ "message": "Hello, ana!" }));

    // Written over in place (`cp`: truncated, then other bytes), from another thread: its `open`
    // waits for the host.
    let kv = rust_plugin("kv_store");
    let target = path.clone();
    std::thread::spawn(move || std::fs::copy(kv, target).unwrap())
        .join()
        .unwrap();
    assert_eq!(hello("bo").await, json!({ "message": "Hello, bo!" }));
    assert_eq!(
        mappings_of(&path),
        Vec::<String>::new(),
        "nothing of the file is mapped"
    );
    assert_eq!(
        library.sha256(),
        backworks_plugin_host::sha256_hex(&original),
        "the library's bytes are still the ones loaded"
    );

    let again = load_ok(&path);
    assert_eq!(again.metadata().name, "kv-store", "the new bytes run");
    assert_ne!(again.store(), backworks_plugin_host::CopyStore::Leased);
    // Another file with the first bytes is still compared with the library's, and shares it.
    let triplet = dir.path().join("libtriplet.so");
    std::fs::write(&triplet, &original).unwrap();
    let third = load_ok(&triplet);
    assert_eq!(third.sha256(), library.sha256());
    // The library now reads from the sealed copy made at the write, not from the file.
    assert_ne!(library.store(), backworks_plugin_host::CopyStore::Leased);
    assert_eq!(
        mappings_of(&path),
        Vec::<String>::new(),
        "still nothing of the file is mapped"
    );
    // And the first library still answers.
    assert_eq!(hello("cy").await, json!({ "message": "Hello, cy!" }));
}

/// A file someone holds open for writing gets no lease (the kernel refuses it): it is copied.
#[test]
fn a_file_open_for_writing_elsewhere_is_copied_not_leased() {
    let dir = tempfile::tempdir().unwrap();
    let path = own_hello(dir.path(), "ownwr");
    let _writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let library = load_ok(&path);
    assert_ne!(library.store(), backworks_plugin_host::CopyStore::Leased);
    assert!(
        mappings_of(&path).is_empty(),
        "the file itself is not mapped"
    );
}

//! Loading plugin libraries: check the file, read it once, check the bytes, copy them privately,
//! open the copy, check the vtable, then create instances.
//!
//! The order is the point. [`load_checked`] checks who may have written the file
//! ([`FileChecks`]), reads its bytes **once**, hands them to the policy's verifier (a signature
//! check), reads the metadata section from those bytes *without* mapping them for execution, and
//! refuses an incompatible plugin before `dlopen` runs any of its constructors. Then it writes the
//! same bytes into a private, immutable copy (a sealed `memfd`, see `private_copy`) and opens
//! *that* (`RTLD_NOW | RTLD_LOCAL`): what runs is exactly what was checked, and replacing,
//! truncating or deleting the original file later changes nothing. It reads the exported vtable as
//! plain data and checks its magic, ABI major, size and functions before calling any of them.
//! Identical bytes share one copy, so one `dlopen` handle.
//!
//! A library is never unloaded: code of it may still run (a cancelled task winding down on the
//! plugin's runtime threads, a thread the plugin started), and unmapping it under them would crash
//! the host. Each [`LoadedLibrary`] leaks its handle on drop; hot reload loads new copies.

mod call;
mod dynamic;
mod file_checks;
mod inherited_fds;
mod lease;
mod origin;
mod parallel;
mod private_copy;

use std::mem::{ManuallyDrop, offset_of};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backworks_plugin_sdk::PluginMetadata;
use backworks_plugin_sdk::abi::{
    ABI_MAGIC, ABI_MAJOR, BW_OUT_DONE, BW_OUT_SCHEMA, BwPluginVTable, ENTRY_SYMBOL,
    ENTRY_SYMBOL_NUL, VTABLE_SIZE_V1_0, VTABLE_SIZE_V1_1, VTABLE_SIZE_V1_2, VTABLE_SIZE_V1_3,
};

pub use dynamic::DynamicPlugin;
pub use file_checks::{FileChecks, check_file};
pub(crate) use inherited_fds::close_inherited_fds;
pub use origin::FileStamp;
pub(crate) use origin::Origin;
pub use parallel::load_checked_all;
pub(crate) use private_copy::PrivateCopy;
pub use private_copy::{STORE_ENV as PRIVATE_COPY_ENV, Store as CopyStore, store as copy_store};

use crate::HostError;
use crate::inspect::{
    check_child_compatibility, check_compatibility, metadata_from_bytes, metadata_from_file,
};

/// A check of a plugin file's bytes, run after they are read and before anything of them is
/// parsed or mapped: a signature verifier. Gets the file as configured, its bytes and their
/// SHA-256 (computed once, as they were read); an `Err` refuses the plugin.
pub type Verifier = Arc<dyn Fn(&Path, &[u8], &[u8; 32]) -> Result<(), HostError> + Send + Sync>;

/// What a plugin file must pass before it is loaded.
#[derive(Clone, Default)]
pub struct LoadPolicy {
    /// Who may have written the file (`trust.file_checks`). Strict by default.
    pub file_checks: FileChecks,
    /// Run on the bytes read, before any is parsed or mapped; `None` checks nothing more.
    pub verify: Option<Verifier>,
}

impl std::fmt::Debug for LoadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadPolicy")
            .field("file_checks", &self.file_checks)
            .field("verify", &self.verify.as_ref().map(|_| "<verifier>"))
            .finish()
    }
}

/// An opened, checked plugin library. Stays mapped for the life of the process.
pub struct LoadedLibrary {
    metadata: PluginMetadata,
    vtable: &'static BwPluginVTable,
    origin: Origin,
    _library: ManuallyDrop<libloading::Library>,
}

impl std::fmt::Debug for LoadedLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLibrary")
            .field("path", &self.origin.path())
            .field("metadata", &self.metadata)
            // Only when known: formatting never reads and hashes the library.
            .field("sha256", &self.copy().known_sha256().map(private_copy::hex))
            .finish_non_exhaustive()
    }
}

impl LoadedLibrary {
    /// The file it was loaded from (as configured; what runs is its private copy).
    pub fn path(&self) -> &Path {
        self.origin.path()
    }

    /// The file it was loaded from and its private copy.
    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    fn copy(&self) -> &PrivateCopy {
        self.origin.copy()
    }

    /// Its metadata.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// Its checked vtable.
    pub fn vtable(&self) -> &'static BwPluginVTable {
        self.vtable
    }

    /// The SHA-256 of the bytes loaded, in hex: equal for files with identical content.
    /// Computed on the first call unless the load needed it (a signature check), from the
    /// private copy; if that copy cannot be read, the reason instead.
    pub fn sha256(&self) -> String {
        self.copy().sha256().map_or_else(
            |e| format!("(private copy unreadable: {e})"),
            private_copy::hex,
        )
    }

    /// Where its private copy lives.
    pub fn store(&self) -> CopyStore {
        self.copy().store()
    }

    /// The JSON Schema of the plugin's config, when it declares one: what the vtable's
    /// `config_schema` entry writes (ABI 1.1; it creates no instance), or else the metadata's
    /// `config_schema` key (a C plugin's). `plugin` names the plugin in errors: a schema that is
    /// not JSON, or an entry that fails or panics, is [`HostError::BadSchema`].
    pub fn config_schema(&self, plugin: &str) -> Result<Option<serde_json::Value>, HostError> {
        let bad = |reason: String| HostError::BadSchema {
            plugin: plugin.to_owned(),
            reason,
        };
        let Some(entry) = self.vtable.config_schema else {
            return self
                .metadata
                .config_schema
                .as_deref()
                .map(|text| crate::config_schema::parse_schema(plugin, text))
                .transpose();
        };
        let mut out = call::Output::empty();
        // SAFETY: `config_schema` of a checked vtable (present only when the plugin's vtable is
        // large enough to have it, see `check_vtable`); it needs no instance, and `out` is a
        // valid zeroed output the plugin fills and `Output` releases once.
        unsafe { entry(&raw mut out.raw) };
        match out.raw.kind {
            BW_OUT_DONE => Ok(self
                .metadata
                .config_schema
                .as_deref()
                .map(|text| crate::config_schema::parse_schema(plugin, text))
                .transpose()?),
            BW_OUT_SCHEMA => crate::config_schema::parse_schema(plugin, &out.message()).map(Some),
            _ => Err(bad(format!(
                "its `config_schema` function failed: {}",
                out.unexpected("config_schema")
            ))),
        }
    }
}

/// The smallest vtable of ABI `major.0`: every function of v1.0 present.
const MIN_VTABLE_SIZE: usize = offset_of!(BwPluginVTable, task_cancel) + size_of::<usize>();
const _: () = assert!(MIN_VTABLE_SIZE == VTABLE_SIZE_V1_0);

/// Checks and opens the plugin library at `path` under the default [`LoadPolicy`] (strict file
/// checks, no verifier).
pub fn load(path: &Path) -> Result<Arc<LoadedLibrary>, HostError> {
    load_checked(path, &LoadPolicy::default())
}

/// Checks the plugin file at `path` under `policy` and opens a private copy of exactly the bytes
/// checked, to run in this process.
pub fn load_checked(path: &Path, policy: &LoadPolicy) -> Result<Arc<LoadedLibrary>, HostError> {
    let (metadata, origin) = check_and_copy(path, policy, Runs::InProcess)?;
    open_checked(origin, metadata)
}

/// Where a checked library will run, which decides the compatibility rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runs {
    /// In the host.
    InProcess,
    /// In a plugin child (`isolation: process`), where `panic = "abort"` is accepted.
    InChild,
}

/// The one path from a file to bytes that may run: file checks, one read (the kernel's copy of
/// the file into its private copy, or, when a kept copy holds the same bytes, a read of the file
/// that finds it: see [`private_copy::copy_of`]), then the verifier, metadata and
/// compatibility on the copy's bytes, and the copy kept (or an identical one kept before).
pub(crate) fn check_and_copy(
    path: &Path,
    policy: &LoadPolicy,
    runs: Runs,
) -> Result<(PluginMetadata, Origin), HostError> {
    let file = file_checks::open_checked(path, policy.file_checks)?;
    let (read_at, stat) = (std::time::SystemTime::now(), file.metadata().ok());
    let in_place = runs == Runs::InProcess;
    let copy = private_copy::copy_of(file, &file_name(path), in_place, |file| {
        metadata_from_file(path, file).ok().map(|m| identity(&m))
    })
    .map_err(copy_error(path))?;
    // All the copy's bytes only when a check reads them all; the one hash of them, when
    // something needs it: the verifier's binding, the child's check of what it loads. Else the
    // metadata is read in parts and nothing is mapped (a mapping of the whole file, its page
    // faults and its unmapping, which interrupts the other cores to flush their TLBs, were a
    // tenth of a load at start-up with many plugins).
    let whole = match (&policy.verify, runs) {
        (None, Runs::InProcess) => None,
        _ => Some(copy.bytes().map_err(copy_error(path))?),
    };
    if let Some(bytes) = &whole {
        if let Some(verify) = &policy.verify {
            verify(path, bytes, copy.sha256_of(bytes))?;
        }
        if runs == Runs::InChild {
            copy.sha256_of(bytes);
        }
    }
    let metadata = match &whole {
        Some(bytes) => metadata_from_bytes(path, bytes)?,
        None => metadata_from_file(path, &copy.file())?,
    };
    check_runs(path, &metadata, runs)?;
    let copy = copy
        .keep(whole.as_deref(), &identity(&metadata))
        .map_err(copy_error(path))?;
    Ok((metadata, Origin::new(path, stat.as_ref(), read_at, copy)))
}

fn checked_metadata(path: &Path, bytes: &[u8], runs: Runs) -> Result<PluginMetadata, HostError> {
    let metadata = metadata_from_bytes(path, bytes)?;
    check_runs(path, &metadata, runs)?;
    Ok(metadata)
}

/// Whether a plugin whose metadata is `metadata` can run where `runs` says.
fn check_runs(path: &Path, metadata: &PluginMetadata, runs: Runs) -> Result<(), HostError> {
    match runs {
        Runs::InProcess => check_compatibility(path, metadata),
        Runs::InChild => check_child_compatibility(path, metadata),
    }
}

/// The name and version a library's metadata declares: part of what finds an identical copy.
fn identity(metadata: &PluginMetadata) -> String {
    format!("{} {}", metadata.name, metadata.version)
}

/// The file name of `path`, which names its private copy.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "library".into(), |n| n.to_string_lossy().into_owned())
}

fn copy_error(path: &Path) -> impl Fn(std::io::Error) -> HostError + '_ {
    move |source| HostError::PrivateCopy {
        path: path.to_owned(),
        store: private_copy::store().as_str(),
        source,
    }
}

/// What the host tells a plugin child about the library to load: where to read the host's
/// private copy, and the hash of the bytes the host checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildCopy {
    /// `/proc/<host pid>/fd/<n>`: the host's copy, readable by its children.
    pub(crate) source: PathBuf,
    /// Hex SHA-256 of the checked bytes.
    pub(crate) sha256: String,
}

impl ChildCopy {
    /// How a child of this process reaches `copy`. (Its hash was taken when it was checked to
    /// run in a child; a copy that could not be read has none the child would accept.)
    pub(crate) fn of(copy: &PrivateCopy) -> ChildCopy {
        ChildCopy {
            source: copy.path_for_children(),
            sha256: copy
                .sha256()
                .map_or_else(|_| String::new(), private_copy::hex),
        }
    }
}

/// [`load`] in a plugin child (the runner of `isolation: process`), where a library built with
/// `panic = "abort"` is accepted: a panic ends only the child.
///
/// With `from`, the child reads the host's private copy (once), refuses bytes whose hash is not
/// the one the host checked, and loads a private copy of its own: a file replaced since the host
/// checked it never reaches the child, not even at a restart. Without (a runner started by hand),
/// it reads `path` once and loads a private copy of that.
pub(crate) fn load_in_child(
    path: &Path,
    from: Option<&ChildCopy>,
) -> Result<Arc<LoadedLibrary>, HostError> {
    let source = from.map_or(path, |c| c.source.as_path());
    let bytes = std::fs::read(source).map_err(|source| HostError::Io {
        path: path.to_owned(),
        source,
    })?;
    let digest = private_copy::sha256(&bytes);
    if let Some(expected) = from {
        let found = private_copy::hex(&digest);
        if found != expected.sha256 {
            return Err(HostError::HashMismatch {
                path: path.to_owned(),
                expected: expected.sha256.clone(),
                found,
            });
        }
    }
    let metadata = checked_metadata(path, &bytes, Runs::InChild)?;
    let copy = PrivateCopy::of_bytes(&bytes, &file_name(path)).map_err(copy_error(path))?;
    copy.set_sha256(digest);
    let copy = private_copy::Copied::Fresh(copy, None)
        .keep(Some(&bytes), &identity(&metadata))
        .map_err(copy_error(path))?;
    // What the child loads is the host's copy, not a file of its own: nothing to watch.
    let copy = Origin::new(path, None, std::time::SystemTime::now(), copy);
    open_checked(copy, metadata)
}

/// Opens the private copy of a library whose metadata passed the checks and checks its vtable.
fn open_checked(origin: Origin, metadata: PluginMetadata) -> Result<Arc<LoadedLibrary>, HostError> {
    let path = origin.path();
    let (library, private) = origin.copy().open_library(
        |copy| open(path, copy),
        |library| {
            let handle = library.into_raw();
            // SAFETY: the handle `into_raw` just gave up, taken back once; it stays open.
            (
                unsafe { libloading::os::unix::Library::from_raw(handle) },
                handle,
            )
        },
        copy_error(path),
    )?;
    // Never closed, even when refused below: its constructors ran, and may have left code of
    // it to run (a thread-local destructor, a thread).
    let library = ManuallyDrop::new(libloading::Library::from(library));
    private.map_err(copy_error(path))?;
    // SAFETY: the symbol is declared as a static `BwPluginVTable` by every Backworks plugin; we only
    // take its address here and read it field by field below, after checking magic and size.
    let symbol = unsafe { library.get::<*const BwPluginVTable>(ENTRY_SYMBOL_NUL) };
    let address: *const BwPluginVTable = match symbol {
        // A `Symbol<*const T>` derefs to the symbol's address, i.e. a pointer to the static.
        Ok(symbol) => *symbol,
        Err(_) => {
            return Err(HostError::MissingSymbol {
                path: path.to_owned(),
                symbol: ENTRY_SYMBOL,
            });
        }
    };
    let vtable = check_vtable(path, address, &metadata)?;
    Ok(Arc::new(LoadedLibrary {
        metadata,
        vtable,
        origin,
        _library: library,
    }))
}

/// Opens the library at `copy` (its private copy); errors name `path`, the file as configured.
fn open(path: &Path, copy: &Path) -> Result<libloading::os::unix::Library, HostError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: opening a library runs its initialisers. We only get here for bytes that passed the
    // file checks and the verifier and whose metadata says they are a compatible Backworks plugin,
    // and `copy` holds exactly those bytes, immutable; RTLD_NOW resolves every symbol now, so a
    // missing one fails here rather than in the middle of a request.
    unsafe { Library::open(Some(copy), RTLD_NOW | RTLD_LOCAL) }.map_err(|source| HostError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Reads the vtable at `address` and checks it before anything in it is called.
fn check_vtable(
    path: &Path,
    address: *const BwPluginVTable,
    metadata: &PluginMetadata,
) -> Result<&'static BwPluginVTable, HostError> {
    if address.is_null() || !address.is_aligned() {
        return Err(HostError::MissingSymbol {
            path: path.to_owned(),
            symbol: ENTRY_SYMBOL,
        });
    }
    // SAFETY: the first 16 bytes (magic, size, versions) are the same in every ABI version, and the
    // symbol is at least that large in anything that claims to be a plugin. Read as plain integers.
    let (magic, size, major, minor) = unsafe {
        (
            (&raw const (*address).magic).read(),
            (&raw const (*address).size).read(),
            (&raw const (*address).abi_major).read(),
            (&raw const (*address).abi_minor).read(),
        )
    };
    if magic != ABI_MAGIC {
        return Err(HostError::BadMagic {
            path: path.to_owned(),
            expected: ABI_MAGIC,
            found: magic,
        });
    }
    if major != ABI_MAJOR {
        return Err(HostError::AbiMismatch {
            path: path.to_owned(),
            expected_major: ABI_MAJOR,
            found_major: major,
            found_minor: minor,
        });
    }
    if (size as usize) < MIN_VTABLE_SIZE {
        return Err(HostError::VtableTooSmall {
            path: path.to_owned(),
            major,
            minor,
            expected: MIN_VTABLE_SIZE,
            found: size as usize,
        });
    }
    let vtable: &'static BwPluginVTable = if size as usize >= size_of::<BwPluginVTable>() {
        // SAFETY: the magic, major version and size say this is a v1.x vtable at least as large
        // as ours; the library stays mapped forever (it is never unloaded), so the reference is
        // 'static.
        unsafe { &*address }
    } else {
        // A plugin of an older minor: its vtable ends before the entries appended since. Copy the
        // fields it has into a vtable of ours whose later entries are null, so that the host
        // reads one type and never past the plugin's static. Leaked like the library it points
        // into, which is never unloaded either (one small copy per load of such a plugin).
        // Whole entries only: the largest older vtable that fits in `size`.
        let known = [VTABLE_SIZE_V1_3, VTABLE_SIZE_V1_2, VTABLE_SIZE_V1_1]
            .into_iter()
            .find(|&known| size as usize >= known)
            .unwrap_or(VTABLE_SIZE_V1_0);
        let mut copy = std::mem::MaybeUninit::<BwPluginVTable>::zeroed();
        // SAFETY: the plugin's static is `size` bytes, at least `known` (checked above), readable
        // as plain data; the copy takes exactly the fields of that older vtable, whole, into the
        // same layout.
        unsafe {
            std::ptr::copy_nonoverlapping(
                address.cast::<u8>(),
                copy.as_mut_ptr().cast::<u8>(),
                known,
            )
        };
        // SAFETY: those fields are the plugin's own values; the rest is zero, which is `None` for
        // every entry appended since (all `Option<extern "C" fn>`).
        Box::leak(Box::new(unsafe { copy.assume_init() }))
    };
    let functions = [
        ("instance_new", vtable.instance_new.is_some()),
        ("instance_free", vtable.instance_free.is_some()),
        ("initialize", vtable.initialize.is_some()),
        ("handle", vtable.handle.is_some()),
        ("before_request", vtable.before_request.is_some()),
        ("after_response", vtable.after_response.is_some()),
        ("health_check", vtable.health_check.is_some()),
        ("shutdown", vtable.shutdown.is_some()),
        ("task_start", vtable.task_start.is_some()),
        ("task_cancel", vtable.task_cancel.is_some()),
    ];
    if let Some((function, _)) = functions.iter().find(|(_, present)| !present) {
        return Err(HostError::MissingFunction {
            path: path.to_owned(),
            function,
        });
    }
    // SAFETY: the plugin promises `metadata` points at its own immutable metadata bytes, which live as
    // long as the (never unloaded) library.
    let embedded = unsafe { vtable.metadata.as_bytes() };
    let same = backworks_plugin_sdk::metadata::parse(embedded)
        .map(|m| m.name == metadata.name && m.version == metadata.version);
    if !matches!(same, Ok(true)) {
        let vtable_says = backworks_plugin_sdk::metadata::parse(embedded)
            .map(|m| format!("{} {}", m.name, m.version))
            .unwrap_or_else(|e| e.to_string());
        return Err(HostError::MetadataMismatch {
            path: path.to_owned(),
            section: format!("{} {}", metadata.name, metadata.version),
            vtable: vtable_says,
        });
    }
    Ok(vtable)
}

#[cfg(test)]
mod tests {
    use backworks_plugin_sdk::abi::{VTABLE_SIZE_V1_0, VTABLE_SIZE_V1_1, VTABLE_SIZE_V1_2};
    use backworks_plugin_sdk::metadata::{Hooks, encode, encoded_len};
    use backworks_plugin_sdk::prelude::*;

    use super::*;

    /// A plugin that fills every entry of the current vtable.
    #[derive(Default)]
    struct Every;

    #[async_trait]
    impl BackworksPlugin for Every {
        const HANDLE_SYNC: bool = true;
        const HOOKS_SYNC: bool = true;

        fn handle_sync(&self, _request: LentRequest<'_>) -> PluginResult<Response> {
            Ok(Response::new(200))
        }
    }

    const META_LEN: usize = encoded_len("every", "1.0.0", "", true, Hooks::ALL);
    static META: [u8; META_LEN] = encode("every", "1.0.0", "", true, Hooks::ALL);

    /// A vtable that says it is of an older minor is read only up to its size: the entries
    /// appended since are null however the bytes past it read (here: the current vtable's own
    /// entries, all set).
    #[test]
    fn an_older_minors_vtable_is_read_only_up_to_its_size() {
        let metadata = backworks_plugin_sdk::metadata::parse(&META).expect("metadata");
        let sizes = [
            VTABLE_SIZE_V1_0,
            VTABLE_SIZE_V1_1,
            VTABLE_SIZE_V1_2,
            VTABLE_SIZE_V1_3,
            size_of::<BwPluginVTable>(),
        ];
        for (minor, size) in sizes.into_iter().enumerate() {
            let mut vtable = backworks_plugin_sdk::export::vtable::<Every>(&META);
            vtable.size = size as u32;
            vtable.abi_minor = minor as u16;
            let vtable: &'static BwPluginVTable = Box::leak(Box::new(vtable));
            let read = check_vtable(Path::new("libevery.so"), vtable, &metadata).expect("checked");
            let present = [
                read.config_schema.is_some(),
                read.handle_lent.is_some(),
                read.before_request_now.is_some() && read.after_response_now.is_some(),
                read.handle_now.is_some(),
            ];
            let expected: Vec<bool> = (1..=4).map(|appended_in| minor >= appended_in).collect();
            assert_eq!(
                present.to_vec(),
                expected,
                "a vtable of ABI 1.{minor}, {size} bytes"
            );
        }
    }
}

//! Loading plugin libraries: check the file, open it, check the vtable, then create instances.
//!
//! The order is the point. [`load`] reads the file's metadata *without* mapping it for execution
//! and refuses an incompatible plugin before `dlopen` runs any of its constructors; then it opens the
//! library (`RTLD_NOW | RTLD_LOCAL`), reads the exported vtable as plain data and checks its magic,
//! ABI major, size and functions before calling any of them.
//!
//! A library is never unloaded: code of it may still run (a cancelled task winding down on the
//! plugin's runtime threads, a thread the plugin started), and unmapping it under them would crash
//! the host. Each [`LoadedLibrary`] leaks its handle on drop; hot reload loads new copies.

mod call;
mod dynamic;
mod inherited_fds;

use std::mem::{ManuallyDrop, offset_of};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backworks_plugin_sdk::PluginMetadata;
use backworks_plugin_sdk::abi::{
    ABI_MAGIC, ABI_MAJOR, BwPluginVTable, ENTRY_SYMBOL, ENTRY_SYMBOL_NUL,
};

pub use dynamic::DynamicPlugin;
pub(crate) use inherited_fds::close_inherited_fds;

use crate::HostError;
use crate::inspect::{check_child_compatibility, check_compatibility, read_metadata};

/// An opened, checked plugin library. Stays mapped for the life of the process.
pub struct LoadedLibrary {
    path: PathBuf,
    metadata: PluginMetadata,
    vtable: &'static BwPluginVTable,
    _library: ManuallyDrop<libloading::Library>,
}

impl std::fmt::Debug for LoadedLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLibrary")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl LoadedLibrary {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its metadata.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// Its checked vtable.
    pub fn vtable(&self) -> &'static BwPluginVTable {
        self.vtable
    }
}

/// The smallest vtable of ABI `major.0`: every function of v1.0 present.
const MIN_VTABLE_SIZE: usize = offset_of!(BwPluginVTable, task_cancel) + size_of::<usize>();

/// Checks and opens the plugin library at `path`, to run in this process.
pub fn load(path: &Path) -> Result<Arc<LoadedLibrary>, HostError> {
    let metadata = read_metadata(path)?;
    check_compatibility(path, &metadata)?;
    open_checked(path, metadata)
}

/// [`load`] in a plugin child (the runner of `isolation: process`), where a library built with
/// `panic = "abort"` is accepted: a panic ends only the child.
pub(crate) fn load_in_child(path: &Path) -> Result<Arc<LoadedLibrary>, HostError> {
    let metadata = read_metadata(path)?;
    check_child_compatibility(path, &metadata)?;
    open_checked(path, metadata)
}

/// Opens a library whose metadata passed the checks and checks its vtable.
fn open_checked(path: &Path, metadata: PluginMetadata) -> Result<Arc<LoadedLibrary>, HostError> {
    let library = open(path)?;
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
        path: path.to_owned(),
        metadata,
        vtable,
        _library: ManuallyDrop::new(library),
    }))
}

fn open(path: &Path) -> Result<libloading::Library, HostError> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: opening a library runs its initialisers. We only get here for a file whose metadata
        // says it is a compatible Backworks plugin; RTLD_NOW resolves every symbol now, so a missing
        // one fails here rather than in the middle of a request.
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map(Into::into)
            .map_err(|source| HostError::Open {
                path: path.to_owned(),
                source,
            })
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above; Windows resolves imports at load time.
        unsafe { libloading::Library::new(path) }.map_err(|source| HostError::Open {
            path: path.to_owned(),
            source,
        })
    }
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
    // SAFETY: the magic, major version and size say this is a v1.x vtable at least as large as ours;
    // the library stays mapped forever (it is never unloaded), so the reference is 'static.
    let vtable: &'static BwPluginVTable = unsafe { &*address };
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

//! Loading many plugin files at once, as at start-up: [`load_checked_all`].
//!
//! A load is CPU work per file and independent of the others: the kernel's copy of the file into
//! its private copy, and for a signed one SHA-256 (the signature binding) and minisign's BLAKE2b
//! and Ed25519 checks. So the files are shared among one thread per available core. Each file
//! goes through exactly the path [`load_checked`] takes alone (its own file checks, one read,
//! its own verifier, its own metadata and compatibility checks, its private copy, `dlopen`);
//! only the order in which files are worked on changes. `dlopen` itself takes the dynamic
//! loader's lock, so the opens queue there while other threads copy and hash.
//! (`PluginHost`, which `serve` uses, bounds its loads to one per core the same way.)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{LoadPolicy, LoadedLibrary, load_checked};
use crate::HostError;

/// [`load_checked`] of every `(file, policy)` in `files`, on one thread per available core (at
/// most one per file). The results are in the order of `files`, each the one its own file would
/// have had alone: one file refused does not stop the others.
pub fn load_checked_all(
    files: &[(PathBuf, LoadPolicy)],
) -> Vec<Result<Arc<LoadedLibrary>, HostError>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(files.len());
    if threads <= 1 {
        return files
            .iter()
            .map(|(path, policy)| load_checked(path, policy))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((path, policy)) = files.get(i) else {
                return done;
            };
            done.push((i, load_checked(path, policy)));
        }
    };
    let mut results: Vec<Option<Result<Arc<LoadedLibrary>, HostError>>> =
        (0..files.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = work();
        for worker in workers {
            // A panic in a worker is a bug of the host's own code (plugin code does not run
            // here beyond its initialisers, whose panics cannot unwind out of `dlopen`).
            done.extend(
                worker
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        for (i, result) in done {
            results[i] = Some(result);
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every index is taken by exactly one worker"))
        .collect()
}

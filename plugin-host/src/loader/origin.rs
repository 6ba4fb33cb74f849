//! Where a loaded library came from: the file as it stood when it was read, and the private copy
//! made of it. What tells a reload whether the file now holds other bytes than what runs, without
//! reading and hashing every library file at start-up.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::private_copy::PrivateCopy;

/// A file's identity and last change as `stat` gives them. Any write to the file changes its
/// `ctime`, which no one can set back; replacing it (a rename over it) changes its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// How long before a load a file must have last changed for its stamp to prove it unchanged
/// later. File times come from a coarse clock (a few milliseconds a tick): a write in the same
/// tick as the last change before the read would leave the stamp as it was. A file this old
/// cannot have had such a write after it was read.
const SETTLED: Duration = Duration::from_secs(1);

/// The file a library's private copy was made from, as it stood just before it was read.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    path: PathBuf,
    /// `None` when it cannot prove the file unchanged: the file had changed less than
    /// [`SETTLED`] before it was read, or could not be `stat`ed.
    stamp: Option<Stamp>,
    copy: Arc<PrivateCopy>,
}

impl Origin {
    /// The origin of `copy`, made from the file at `path` whose metadata (from the descriptor it
    /// was read through, taken before the read) is `metadata`, read at `read_at`.
    pub(crate) fn new(
        path: &Path,
        metadata: Option<&std::fs::Metadata>,
        read_at: SystemTime,
        copy: Arc<PrivateCopy>,
    ) -> Origin {
        let stamp = metadata.map(Stamp::of).filter(|stamp| {
            let changed = SystemTime::UNIX_EPOCH
                + Duration::new(stamp.ctime.0.max(0) as u64, stamp.ctime.1.max(0) as u32);
            changed + SETTLED < read_at
        });
        Origin {
            path: path.to_owned(),
            stamp,
            copy,
        }
    }

    /// The file as configured.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The private copy made of it.
    pub(crate) fn copy(&self) -> &Arc<PrivateCopy> {
        &self.copy
    }

    /// Whether the file at its path now holds other bytes than the copy (or cannot be read): a
    /// `stat` when the file is as it was, else a read of the file compared with the copy. A file
    /// written with the same bytes, or touched, has not changed. Blocking.
    pub(crate) fn changed(&self) -> bool {
        let Ok(metadata) = std::fs::metadata(&self.path) else {
            return true;
        };
        if self.stamp == Some(Stamp::of(&metadata)) {
            return false;
        }
        if metadata.len() != self.copy.len() as u64 {
            return true;
        }
        match (std::fs::read(&self.path), self.copy.bytes()) {
            (Ok(now), Ok(copy)) => now[..] != copy[..],
            _ => true,
        }
    }
}

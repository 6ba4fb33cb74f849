//! Where a loaded library came from: the file as it stood when it was read, and the private copy
//! made of it. What tells a reload whether the file now holds other bytes than what runs, without
//! reading and hashing every library file at start-up.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::private_copy::{PrivateCopy, Store, holds_exactly};

/// A file's identity and last change, as `stat` gives them: its device and inode, its length, and
/// its modification and change times. Any write to a file changes its change time (`ctime`),
/// which no one can set back, and replacing it (a rename over it) changes its inode; so two
/// equal stamps of one path mean the file was not written, truncated or replaced between the two
/// `stat`s — provided the first was [settled](FileStamp::settled_at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of a file whose metadata (from `stat` or `fstat`) is `metadata`.
    pub fn of(metadata: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the file had last changed over a second before `at`, the moment its stamp was
    /// taken: only then does an equal stamp later prove it unchanged. File times come from a
    /// coarse clock (a few milliseconds a tick), so a write in the same tick as the change before
    /// would leave the stamp as it was; a change that old cannot share a tick with a later write.
    pub fn settled_at(&self, at: SystemTime) -> bool {
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(self.ctime.0).unwrap_or(0),
                u32::try_from(self.ctime.1).unwrap_or(0),
            );
        changed + SETTLED < at
    }
}

/// See [`FileStamp::settled_at`].
const SETTLED: Duration = Duration::from_secs(1);

/// The file a library's private copy was made from, as it stood just before it was read.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    path: PathBuf,
    /// `None` when it cannot prove the file unchanged: the file was not settled when it was read
    /// ([`FileStamp::settled_at`]), or could not be `stat`ed.
    stamp: Option<FileStamp>,
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
        let stamp = metadata
            .map(FileStamp::of)
            .filter(|stamp| stamp.settled_at(read_at));
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
    /// written with the same bytes, or touched, has not changed; an unchangeable file loaded in
    /// place (which is its own copy) has, once its stamp moved. Blocking.
    pub(crate) fn changed(&self) -> bool {
        let Ok(metadata) = std::fs::metadata(&self.path) else {
            return true;
        };
        if self.stamp == Some(FileStamp::of(&metadata)) {
            return false;
        }
        // An unchangeable file is its own copy: comparing the two proves nothing. Its stamp
        // changed, so someone lifted the attribute (or replaced the file): load it again.
        if metadata.len() != self.copy.len() as u64 || self.copy.store() == Store::Unchangeable {
            return true;
        }
        let holds_copy = std::fs::File::open(&self.path).and_then(|file| {
            let copy = self.copy.bytes()?;
            holds_exactly(&file, &copy)
        });
        !holds_copy.unwrap_or(false)
    }
}

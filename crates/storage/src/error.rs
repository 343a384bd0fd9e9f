//! What can go wrong, worded for the operator who reads it in a log at 3 a.m.

use std::io;
use std::path::{Path, PathBuf};

/// Shorthand for results of this crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// An error from the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The operating system refused an operation (permissions, missing or full disk, a path
    /// that is not a directory...). `path` is the file or directory involved.
    #[error("write-ahead log I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The log holds damage that is not a torn tail: records after it may have been
    /// acknowledged, so recovery refuses to guess and changes nothing on disk.
    #[error(
        "corrupt write-ahead log: {} at byte {offset}: {reason}; refusing to start. \
         Records after this point may have been acknowledged, so nothing was truncated or \
         deleted. Restore this replica's log directory from a backup, or move the directory \
         aside and let the replica rejoin with an empty log so its peers re-replicate it",
        file.display()
    )]
    Corrupt {
        /// The segment file holding the damage.
        file: PathBuf,
        /// Byte offset of the first bad record (or 0 for a missing or misnamed segment).
        offset: u64,
        /// What was found there.
        reason: String,
    },

    /// A record longer than the format can describe.
    #[error("write-ahead log record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload a record can hold.
        max: usize,
    },

    /// An earlier write or fsync failed. After a failed fsync the kernel may already have
    /// dropped the dirty pages, so retrying could report durability that is not there
    /// (PostgreSQL's "fsyncgate"); the only safe way on is to restart and recover from disk.
    #[error(
        "write-ahead log in {} is unusable after an earlier I/O failure; restart the process \
         to recover from what is on disk",
        dir.display()
    )]
    Poisoned {
        /// The log's directory.
        dir: PathBuf,
    },
}

impl WalError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
        move |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

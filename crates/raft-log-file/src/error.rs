//! Errors of the log store.

use std::path::PathBuf;

/// Why the log store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed. After a failed sync the store refuses all further writes: the
    /// kernel may have dropped the dirty pages, so retrying could report lost data as durable.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checksum or format check failed in a file, at a byte offset.
    #[error("corrupt log: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process (or another handle in this one) has the directory open.
    #[error("{} is locked by another process; one process per data directory", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier write or sync failed; the store accepts no more writes.
    #[error("the log store failed earlier and accepts no more writes: {0}")]
    Failed(String),
    /// The caller broke the API contract (for example, appended with a gap).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The result type of the log store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Errors of the snapshot store.

use std::path::PathBuf;

use raftline_core::SnapshotError;

/// Why the snapshot store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
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
    /// A file does not match its size or checksum.
    #[error("corrupt snapshot {}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An [`Options`](crate::Options) value is out of range.
    #[error("invalid options: {0}")]
    Options(&'static str),
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

impl From<Error> for SnapshotError {
    fn from(e: Error) -> SnapshotError {
        match e {
            Error::Corrupt { path, reason } => {
                SnapshotError::Corrupt(format!("{}: {reason}", path.display()))
            }
            e => SnapshotError::io(e),
        }
    }
}

/// The result type of the snapshot store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! File helpers whose errors name the path, and a path removed unless kept.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[cfg(test)]
thread_local! {
    /// The file operations made on this thread, for tests of their order.
    pub(crate) static TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records `op` on `path` (only in unit tests).
fn trace(op: &str, path: &Path) {
    #[cfg(test)]
    TRACE.with(|t| {
        let name = path.file_name().map_or("?".into(), |n| n.to_string_lossy());
        t.borrow_mut().push(format!("{op} {name}"));
    });
    let _ = (op, path);
}

/// Makes `file`'s data durable (skipped when `sync` is off).
pub(crate) fn sync_file(file: &File, path: &Path, sync: bool) -> Result<()> {
    trace("fdatasync", path);
    if sync {
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", path, e))?;
    }
    Ok(())
}

/// Makes the creations, renames and removals in `dir` durable (skipped when `sync` is off).
pub(crate) fn sync_dir(dir: &Path, sync: bool) -> Result<()> {
    trace("fsync", Path::new("dir"));
    if sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(())
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    trace("rename to", to);
    std::fs::rename(from, to).map_err(|e| Error::io("rename to", to, e))
}

pub(crate) fn remove(path: &Path) -> Result<()> {
    trace("remove", path);
    std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
}

/// A file that is removed when this is dropped, unless [`keep`](Self::keep) was called.
#[derive(Debug)]
pub(crate) struct TempPath(Option<PathBuf>);

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> TempPath {
        TempPath(Some(path))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a TempPath holds its path until dropped or kept")
    }

    /// Keeps the file: it is no longer removed.
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: a leftover is removed by the next `open` anyway.
            let _ = std::fs::remove_file(path);
        }
    }
}

//! Every file operation the store makes goes through [`Io`], so that tests can record them
//! and rebuild the states a crash may leave on disk (see the crash tests).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// One recorded file operation. Paths are file names relative to the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new, empty file.
    Create(String),
    /// `data` written at `offset`.
    Write {
        /// The file.
        file: String,
        /// The byte offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The file's length set.
    SetLen(String, u64),
    /// The file's data made durable (fdatasync).
    Sync(String),
    /// The directory made durable: creations and removals before it are durable.
    SyncDir,
    /// The file removed.
    Remove(String),
}

/// A shared list of recorded operations; it can also make syncs fail, to test fail-stop.
#[derive(Clone, Debug, Default)]
pub struct Recorder(Arc<Mutex<Vec<Op>>>, Arc<Mutex<Option<usize>>>);

impl Recorder {
    /// Makes every sync fail with an I/O error once `n` more syncs have succeeded.
    pub fn fail_syncs_after(&self, n: usize) {
        *self.1.lock() = Some(n);
    }

    /// Whether the next sync must fail (counting it down otherwise).
    fn sync_fails(&self) -> bool {
        match &mut *self.1.lock() {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    /// Every operation recorded so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.0.lock().clone()
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    fn push(&self, op: Op) {
        self.0.lock().push(op);
    }
}

/// The file-system access of one store.
#[derive(Clone, Debug)]
pub(crate) struct Io {
    pub(crate) dir: PathBuf,
    recorder: Option<Recorder>,
    /// When false, syncs are skipped (for simulations that model process crashes only).
    sync: bool,
}

/// An open file and its name.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) file: File,
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

impl Io {
    pub(crate) fn new(dir: &Path, recorder: Option<Recorder>, sync: bool) -> Io {
        Io {
            dir: dir.to_path_buf(),
            recorder,
            sync,
        }
    }

    fn record(&self, op: impl FnOnce() -> Op) {
        if let Some(r) = &self.recorder {
            r.push(op());
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn create(&self, name: &str) -> Result<Handle> {
        let path = self.path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        self.record(|| Op::Create(name.to_string()));
        Ok(Handle {
            file,
            name: name.to_string(),
            path,
        })
    }

    pub(crate) fn open(&self, name: &str) -> Result<Handle> {
        let path = self.path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(Handle {
            file,
            name: name.to_string(),
            path,
        })
    }

    pub(crate) fn write_at(&self, h: &Handle, offset: u64, data: &[u8]) -> Result<()> {
        h.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", &h.path, e))?;
        self.record(|| Op::Write {
            file: h.name.clone(),
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    pub(crate) fn set_len(&self, h: &Handle, len: u64) -> Result<()> {
        h.file
            .set_len(len)
            .map_err(|e| Error::io("preallocate", &h.path, e))?;
        self.record(|| Op::SetLen(h.name.clone(), len));
        Ok(())
    }

    pub(crate) fn sync(&self, h: &Handle) -> Result<()> {
        if self.recorder.as_ref().is_some_and(Recorder::sync_fails) {
            let injected = std::io::Error::other("injected sync failure");
            return Err(Error::io("fdatasync", &h.path, injected));
        }
        if self.sync {
            h.file
                .sync_data()
                .map_err(|e| Error::io("fdatasync", &h.path, e))?;
        }
        self.record(|| Op::Sync(h.name.clone()));
        Ok(())
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        if self.sync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        }
        self.record(|| Op::SyncDir);
        Ok(())
    }

    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        self.record(|| Op::Remove(name.to_string()));
        Ok(())
    }
}

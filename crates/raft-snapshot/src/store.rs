//! [`FileSnapshotStore`]: recovery at open, installing a snapshot, reading and receiving.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::io::AllowStdIo;
use parking_lot::Mutex;
use raftline_core::driver::{SnapshotSource, SnapshotStore, SnapshotWriter};
use raftline_core::SnapshotError;
use raftline_proto::SnapshotMeta;

use crate::error::{Error, Result};
use crate::files::{self, TempPath};
use crate::format::{self, Key};
use crate::writer::FileSnapshotWriter;

/// How to open a snapshot directory.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sync files and the directory (fdatasync, fsync). Turn off only for tests that model
    /// process crashes, not machine crashes.
    pub sync: bool,
    /// The buffer between a [`FileSnapshotWriter`] and its file: the state machine's writes
    /// reach the file in pieces of this size. At least 1.
    pub write_buffer_bytes: usize,
    /// The buffer of readers returned by [`SnapshotStore::open`], and the piece size in which
    /// a received snapshot is read to check its checksum. At least 1.
    pub read_buffer_bytes: usize,
    /// While a snapshot is received, every this many bytes written start a background
    /// fdatasync of the partial copy, so that the final sync before install has little left
    /// to flush. At least 1.
    pub flush_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: true,
            write_buffer_bytes: 1 << 20,
            read_buffer_bytes: 1 << 20,
            flush_bytes: 64 << 20,
        }
    }
}

/// What [`FileSnapshotStore::open`] found and cleaned up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Snapshots ignored because their metadata file failed a check (checksum, format, name,
    /// data file missing or of the wrong size): the metadata file and the reason. Their files
    /// were removed; an older complete snapshot, if any, became the latest.
    pub rejected: Vec<(PathBuf, String)>,
    /// Every file removed: leftovers of interrupted writes (temporary files, partial received
    /// copies, data without valid metadata) and snapshots older than the latest.
    pub removed: Vec<PathBuf>,
}

/// A [`SnapshotStore`] in one directory. Cloning gives another handle to the same store.
///
/// One store per directory: two stores (or processes) on the same directory would remove
/// each other's files.
#[derive(Clone, Debug)]
pub struct FileSnapshotStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    latest: Mutex<Option<SnapshotMeta>>,
    /// Held while a snapshot is installed, so that installs happen one at a time.
    install: Mutex<()>,
    partial: Mutex<Option<Partial>>,
    /// Makes temporary and partial file names unique.
    seq: AtomicU64,
    recovery: RecoveryReport,
}

/// The partial copy of a snapshot being received.
#[derive(Debug)]
struct Partial {
    meta: SnapshotMeta,
    file: File,
    /// Removes the file if the copy is abandoned.
    temp: TempPath,
    /// The CRC-32C of bytes `0..written`, while every chunk so far was written in order
    /// (then the install needs no second read of the copy to check it).
    crc: u32,
    written: u64,
    in_order: bool,
    /// Bytes written since the last background flush started.
    unflushed: u64,
    /// The background flush in progress, if any.
    flushing: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Partial {
    /// Starts a background fdatasync once `flush_bytes` were written since the last one
    /// (and the last one is done).
    fn maybe_flush(&mut self, flush_bytes: u64) {
        if self.unflushed < flush_bytes || self.flushing.as_ref().is_some_and(|f| !f.is_finished())
        {
            return;
        }
        if let Some(done) = self.flushing.take() {
            // An error shows again in the final sync, which is checked.
            let _ = done.join();
        }
        let Ok(file) = self.file.try_clone() else {
            return;
        };
        self.unflushed = 0;
        self.flushing = std::thread::Builder::new()
            .name("raft-snapshot-flush".into())
            .spawn(move || file.sync_data())
            .ok();
    }

    /// Waits for the background flush.
    fn wait_flush(&mut self) {
        if let Some(done) = self.flushing.take() {
            let _ = done.join();
        }
    }
}

impl FileSnapshotStore {
    /// Opens the store in `dir`, creating the directory (and syncing its parent) if needed.
    ///
    /// The newest snapshot whose metadata checks out and whose data file has the recorded
    /// size becomes the latest. Everything else the store owns is removed: temporary files,
    /// partial received copies, data files without valid metadata, rejected and older
    /// snapshots. [`recovery`](Self::recovery) says what was rejected and removed. Files
    /// with other names are left alone. The data's checksum is not recomputed here (that
    /// would read every byte); it was checked before the snapshot was installed.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<FileSnapshotStore> {
        if options.write_buffer_bytes == 0 || options.read_buffer_bytes == 0 {
            return Err(Error::Options("buffer sizes must be at least 1 byte"));
        }
        if options.flush_bytes == 0 {
            return Err(Error::Options("flush_bytes must be at least 1 byte"));
        }
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            // Make the new directory's entry durable too.
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => {
                    files::sync_dir(parent, options.sync)?
                }
                _ => files::sync_dir(Path::new("."), options.sync)?,
            }
        }
        let (latest, recovery) = recover(&dir, options.sync)?;
        Ok(FileSnapshotStore {
            inner: Arc::new(Inner {
                dir,
                options,
                latest: Mutex::new(latest),
                install: Mutex::new(()),
                partial: Mutex::new(None),
                seq: AtomicU64::new(0),
                recovery,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What [`open`](Self::open) rejected and removed.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The data file of the latest snapshot, if any. It stays in place until a newer
    /// snapshot is installed.
    pub fn latest_path(&self) -> Option<PathBuf> {
        let latest = self.inner.latest.lock();
        latest
            .as_ref()
            .map(|m| self.inner.path(&format::data_name(format::key(m))))
    }
}

impl Inner {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a snapshot at `key` would be newer than the latest.
    fn is_newer(&self, key: Key) -> bool {
        self.latest
            .lock()
            .as_ref()
            .is_none_or(|l| key > format::key(l))
    }

    /// Opens the data of `meta` if it is the latest snapshot. The check and the open happen
    /// under the lock an install updates the latest under before removing older files, so
    /// the file opened is the one checked.
    fn open_latest(&self, meta: &SnapshotMeta) -> Result<File, SnapshotError> {
        let latest = self.latest.lock();
        match &*latest {
            Some(l) if format::same(l, meta) => {
                let path = self.path(&format::data_name(format::key(l)));
                File::open(&path).map_err(|e| Error::io("open", path, e).into())
            }
            _ => Err(SnapshotError::NotFound(meta.last_index)),
        }
    }

    /// Makes the synced data file `data` the snapshot `meta` and the latest, unless the
    /// latest is at or after it (then `data` is removed and the latest is returned).
    ///
    /// The order, each step durable before the next:
    /// 1. rename `data` to `<key>.snap`, fsync the directory;
    /// 2. write `<key>.meta.tmp`, fdatasync it, rename it to `<key>.meta`, fsync the directory
    ///    (the snapshot now exists for [`recover`]);
    /// 3. make it the latest in memory, then remove the older snapshot's metadata and then
    ///    its data (a failure there is ignored: the next open removes them).
    pub(crate) fn install(&self, meta: SnapshotMeta, data: TempPath) -> Result<SnapshotMeta> {
        let _installing = self.install.lock();
        let key = format::key(&meta);
        let old = self.latest.lock().clone();
        if let Some(old) = old.as_ref().filter(|l| format::key(l) >= key) {
            return Ok(old.clone());
        }
        let sync = self.options.sync;

        let data_path = self.path(&format::data_name(key));
        files::rename(data.path(), &data_path)?;
        data.keep();
        let data = TempPath::new(data_path);
        files::sync_dir(&self.dir, sync)?;

        let meta_temp = TempPath::new(self.path(&format::meta_temp_name(key)));
        let mut file =
            File::create(meta_temp.path()).map_err(|e| Error::io("create", meta_temp.path(), e))?;
        std::io::Write::write_all(&mut file, &format::encode_meta(&meta))
            .map_err(|e| Error::io("write", meta_temp.path(), e))?;
        files::sync_file(&file, meta_temp.path(), sync)?;
        files::rename(meta_temp.path(), &self.path(&format::meta_name(key)))?;
        meta_temp.keep();
        files::sync_dir(&self.dir, sync)?;
        data.keep();

        *self.latest.lock() = Some(meta.clone());
        if let Some(old) = old {
            let old = format::key(&old);
            let _ = files::remove(&self.path(&format::meta_name(old)));
            let _ = files::remove(&self.path(&format::data_name(old)));
        }
        Ok(meta)
    }
}

/// Finds the latest complete snapshot in `dir` and removes everything else the store owns.
fn recover(dir: &Path, sync: bool) -> Result<(Option<SnapshotMeta>, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    let (mut metas, mut datas, mut leftovers) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list directory", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if format::is_leftover(&name) {
            leftovers.push(name);
        } else if let Some(key) = format::parse_name(&name, ".meta") {
            metas.insert(key);
        } else if let Some(key) = format::parse_name(&name, ".snap") {
            datas.insert(key);
        }
    }

    let mut latest: Option<SnapshotMeta> = None;
    // Newest first: the first that checks out is the latest; the rest go.
    for &key in metas.iter().rev() {
        let path = dir.join(format::meta_name(key));
        if latest.is_none() {
            match load_meta(dir, key)? {
                Ok(meta) => {
                    latest = Some(meta);
                    continue;
                }
                Err(reason) => report.rejected.push((path.clone(), reason)),
            }
        }
        files::remove(&path)?;
        report.removed.push(path);
    }
    let latest_key = latest.as_ref().map(format::key);
    let stale = datas.into_iter().filter(|&k| Some(k) != latest_key);
    let stale = stale.map(format::data_name).chain(leftovers);
    for name in stale {
        let path = dir.join(name);
        files::remove(&path)?;
        report.removed.push(path);
    }
    files::sync_dir(dir, sync)?;
    Ok((latest, report))
}

/// Reads and checks the metadata of snapshot `key`: `Ok(Err(reason))` if it does not check
/// out, `Err` if it could not be read at all.
fn load_meta(dir: &Path, key: Key) -> Result<Result<SnapshotMeta, String>> {
    let path = dir.join(format::meta_name(key));
    let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let meta = match format::decode_meta(&bytes) {
        Ok(meta) => meta,
        Err(reason) => return Ok(Err(reason)),
    };
    if format::key(&meta) != key {
        return Ok(Err(format!(
            "names index {} term {} but the file's name says index {} term {}",
            meta.last_index.0, meta.last_term.0, key.0 .0, key.1 .0
        )));
    }
    let data = dir.join(format::data_name(key));
    match std::fs::metadata(&data) {
        Ok(m) if m.len() == meta.size_bytes => Ok(Ok(meta)),
        Ok(m) => Ok(Err(format!(
            "data file {} has {} bytes, expected {}",
            data.display(),
            m.len(),
            meta.size_bytes
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Ok(Err(format!("data file {} is missing", data.display())))
        }
        Err(e) => Err(Error::io("stat", data, e)),
    }
}

/// Runs `work` on a short-lived thread of its own and waits for it without blocking the
/// executor: for fsyncs and checksums over whole snapshots.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, SnapshotError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("raft-snapshot".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(SnapshotError::io)?;
    let result = rx
        .await
        .map_err(|_| SnapshotError::io("the snapshot thread panicked"))?;
    Ok(result?)
}

/// Reads from `offset` until `buf` is full or the file ends; returns how much was read.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// Syncs a received copy and checks its size and whole checksum against `meta`: from the
/// running checksum when every chunk came in order, else by reading it `buffer_bytes` at a
/// time.
fn verify(partial: &mut Partial, buffer_bytes: usize, sync: bool) -> Result<()> {
    partial.wait_flush();
    let (path, meta) = (partial.temp.path(), &partial.meta);
    files::sync_file(&partial.file, path, sync)?;
    let corrupt = |reason| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let len = partial
        .file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if len != meta.size_bytes {
        return Err(corrupt(format!(
            "received {len} bytes, expected {}",
            meta.size_bytes
        )));
    }
    if partial.in_order && partial.written == len {
        if partial.crc != meta.checksum {
            return Err(corrupt(format!(
                "checksum {:#010x}, expected {:#010x}",
                partial.crc, meta.checksum
            )));
        }
        return Ok(());
    }
    let (mut buf, mut crc, mut offset) = (vec![0; buffer_bytes], 0, 0);
    loop {
        let n = read_at(&partial.file, &mut buf, offset).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        offset += n as u64;
    }
    if crc != meta.checksum {
        return Err(corrupt(format!(
            "checksum {crc:#010x}, expected {:#010x}",
            meta.checksum
        )));
    }
    Ok(())
}

#[async_trait]
impl SnapshotStore for FileSnapshotStore {
    fn latest(&self) -> Option<SnapshotMeta> {
        self.inner.latest.lock().clone()
    }

    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        let temp = TempPath::new(
            self.inner
                .path(&format::write_temp_name(self.inner.next_seq())),
        );
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp.path())
            .map_err(|e| Error::io("create", temp.path(), e))?;
        let out = BufWriter::with_capacity(self.inner.options.write_buffer_bytes, file);
        Ok(Box::new(FileSnapshotWriter::new(
            self.inner.clone(),
            out,
            temp,
        )))
    }

    async fn open(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Box<SnapshotSource<'static>>, SnapshotError> {
        let file = self.inner.open_latest(meta)?;
        let reader = BufReader::with_capacity(self.inner.options.read_buffer_bytes, file);
        Ok(Box::new(AllowStdIo::new(reader)))
    }

    /// Reads from the latest snapshot only ([`SnapshotError::NotFound`] for any other).
    /// At or past the end, the chunk is empty.
    async fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SnapshotError> {
        let mut file = self.inner.open_latest(meta)?;
        let len = meta.size_bytes.saturating_sub(offset).min(len as u64);
        // A file of our own: seek and read into spare capacity (no zero-fill of the buffer).
        let mut buf = Vec::with_capacity(len as usize);
        file.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| (&mut file).take(len).read_to_end(&mut buf))
            .map_err(|e| {
                let path = self.inner.path(&format::data_name(format::key(meta)));
                Error::io("read", path, e)
            })?;
        Ok(buf.into())
    }

    /// Writes into `<index>-<term>-<checksum>-<n>.partial`, created (and any partial copy
    /// of another snapshot removed) at the first chunk of `meta`. A chunk may rewrite bytes
    /// already written (a resend); one reaching past `meta.size_bytes` is refused as
    /// [`SnapshotError::Corrupt`].
    async fn write_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|end| end > meta.size_bytes) {
            return Err(SnapshotError::Corrupt(format!(
                "chunk of {} bytes at offset {offset} reaches past the snapshot's {} bytes",
                data.len(),
                meta.size_bytes
            )));
        }
        let mut slot = self.inner.partial.lock();
        if !slot.as_ref().is_some_and(|p| format::same(&p.meta, meta)) {
            *slot = None; // removes the old partial copy
            let name = format::partial_name(meta, self.inner.next_seq());
            let temp = TempPath::new(self.inner.path(&name));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(temp.path())
                .map_err(|e| Error::io("create", temp.path(), e))?;
            *slot = Some(Partial {
                meta: meta.clone(),
                file,
                temp,
                crc: 0,
                written: 0,
                in_order: true,
                unflushed: 0,
                flushing: None,
            });
        }
        let partial = slot.as_mut().expect("set above");
        partial
            .file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", partial.temp.path(), e))?;
        if offset == partial.written {
            partial.crc = crc32c::crc32c_append(partial.crc, data);
            partial.written += data.len() as u64;
        } else {
            // A resend over bytes already written: check by reading the copy at the end.
            partial.in_order = false;
        }
        partial.unflushed += data.len() as u64;
        if self.inner.options.sync {
            partial.maybe_flush(self.inner.options.flush_bytes);
        }
        Ok(())
    }

    /// If the latest snapshot is at or after `meta`'s index and term, the partial copy (if
    /// any) is discarded and this returns `Ok`: the latest already covers it. Otherwise
    /// [`SnapshotError::NotFound`] if no chunk of `meta` was written.
    async fn finish_received(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let partial = self
            .inner
            .partial
            .lock()
            .take_if(|p| format::same(&p.meta, meta));
        if !self.inner.is_newer(format::key(meta)) {
            return Ok(());
        }
        let partial = partial.ok_or(SnapshotError::NotFound(meta.last_index))?;
        let inner = self.inner.clone();
        run_blocking(move || {
            let mut partial = partial;
            let options = &inner.options;
            verify(&mut partial, options.read_buffer_bytes, options.sync)?;
            let Partial {
                meta, file, temp, ..
            } = partial;
            drop(file);
            inner.install(meta, temp).map(drop)
        })
        .await
    }
}

/// Makes a writer's synced data the snapshot `meta` (see [`Inner::install`]), on a thread of
/// its own.
pub(crate) async fn finish_written(
    inner: Arc<Inner>,
    work: impl FnOnce() -> Result<(SnapshotMeta, TempPath)> + Send + 'static,
) -> Result<SnapshotMeta, SnapshotError> {
    run_blocking(move || {
        let (meta, data) = work()?;
        inner.install(meta, data)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::TRACE;
    use raftline_proto::{LogIndex, Term};

    /// The install order the crate docs promise: data renamed and the directory synced
    /// before the metadata is written; the metadata synced, renamed and the directory
    /// synced before the older snapshot goes, metadata first.
    #[test]
    fn install_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSnapshotStore::open(dir.path(), Options::default()).unwrap();
        let inner = &store.inner;
        let install = |index: u64| {
            let data = TempPath::new(inner.path(&format::write_temp_name(index)));
            std::fs::write(data.path(), b"data").unwrap();
            let meta = SnapshotMeta {
                last_index: LogIndex(index),
                last_term: Term(1),
                size_bytes: 4,
                checksum: crc32c::crc32c(b"data"),
                ..Default::default()
            };
            inner.install(meta, data).unwrap();
            TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()))
        };
        install(1);
        let stem = |i: u64| format!("{i:020}-{:020}", 1);
        assert_eq!(
            install(2),
            [
                format!("rename to {}.snap", stem(2)),
                "fsync dir".into(),
                format!("fdatasync {}.meta.tmp", stem(2)),
                format!("rename to {}.meta", stem(2)),
                "fsync dir".into(),
                format!("remove {}.meta", stem(1)),
                format!("remove {}.snap", stem(1)),
            ]
        );
    }
}

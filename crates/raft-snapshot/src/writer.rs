//! [`FileSnapshotWriter`]: a snapshot streamed by a state machine.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::io::AsyncWrite;
use raftline_core::driver::SnapshotWriter;
use raftline_core::SnapshotError;
use raftline_proto::{LogIndex, Membership, SnapshotMeta, Term};

use crate::error::Error;
use crate::files::{self, TempPath};
use crate::store::{self, Inner};

/// A snapshot being written, returned by
/// [`FileSnapshotStore::begin`](raftline_core::driver::SnapshotStore::begin).
///
/// Writes go through a buffer of [`Options::write_buffer_bytes`](crate::Options) to a
/// temporary file (`write-<n>.tmp`), inline: they block the calling task only as long as a
/// buffered file write does. The size and CRC-32C are computed on the way, so
/// [`finish`](SnapshotWriter::finish) need not read the data again. Dropped without
/// `finish`, the writer removes its temporary file.
#[derive(Debug)]
pub struct FileSnapshotWriter {
    store: Arc<Inner>,
    out: BufWriter<File>,
    temp: TempPath,
    size: u64,
    checksum: u32,
}

impl FileSnapshotWriter {
    pub(crate) fn new(store: Arc<Inner>, out: BufWriter<File>, temp: TempPath) -> Self {
        FileSnapshotWriter {
            store,
            out,
            temp,
            size: 0,
            checksum: 0,
        }
    }

    /// Adds the file's name to an I/O error.
    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("write {}: {e}", self.temp.path().display()),
        )
    }
}

impl AsyncWrite for FileSnapshotWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = this.out.write(buf).map_err(|e| this.named(e))?;
        this.checksum = crc32c::crc32c_append(this.checksum, &buf[..n]);
        this.size += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Poll::Ready(this.out.flush().map_err(|e| this.named(e)))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[async_trait]
impl SnapshotWriter for FileSnapshotWriter {
    /// Flushes and fdatasyncs the data and installs it (see the [crate] docs for the order),
    /// on a thread of its own. If the store already holds a snapshot at or after
    /// (`last_index`, `last_term`), the new data is removed and the stored latest snapshot's
    /// metadata is returned instead.
    async fn finish(
        self: Box<Self>,
        last_index: LogIndex,
        last_term: Term,
        membership: Membership,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let FileSnapshotWriter {
            store,
            out,
            temp,
            size,
            checksum,
        } = *self;
        let sync = store.options.sync;
        store::finish_written(store, move || {
            let file = out
                .into_inner()
                .map_err(|e| Error::io("write", temp.path(), e.into_error()))?;
            files::sync_file(&file, temp.path(), sync)?;
            let meta = SnapshotMeta {
                last_index,
                last_term,
                membership,
                size_bytes: size,
                checksum,
            };
            Ok((meta, temp))
        })
        .await
    }
}

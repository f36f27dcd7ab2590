//! An in-memory [`SnapshotStore`] for tests of the driver and of state machines.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::io::{AsyncWrite, Cursor};
use parking_lot::Mutex;
use raftline_proto::{LogIndex, Membership, SnapshotMeta, Term};

use crate::driver::{SnapshotSource, SnapshotStore, SnapshotWriter};
use crate::SnapshotError;

#[derive(Default)]
struct Inner {
    latest: Option<(SnapshotMeta, Bytes)>,
    partial: Option<(SnapshotMeta, Vec<u8>)>,
}

/// Snapshots kept in memory. Cloning shares the store, so a test can keep a handle on what a
/// node holds across a simulated restart (the partial copy of a received snapshot is lost
/// by [`restart`](Self::restart), as a crash would lose it).
#[derive(Clone, Default)]
pub struct MemSnapshotStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemSnapshotStore {
    /// An empty store.
    pub fn new() -> MemSnapshotStore {
        MemSnapshotStore::default()
    }

    /// Forgets the partial copy of a snapshot being received, as a crash would.
    pub fn restart(&self) {
        self.inner.lock().partial = None;
    }

    /// The newest snapshot's data.
    pub fn latest_data(&self) -> Option<Bytes> {
        self.inner.lock().latest.as_ref().map(|(_, d)| d.clone())
    }

    fn keep(&self, meta: SnapshotMeta, data: Bytes) {
        let mut inner = self.inner.lock();
        if inner
            .latest
            .as_ref()
            .is_none_or(|(m, _)| m.last_index < meta.last_index)
        {
            inner.latest = Some((meta, data));
        }
    }
}

#[async_trait]
impl SnapshotStore for MemSnapshotStore {
    fn latest(&self) -> Option<SnapshotMeta> {
        self.inner.lock().latest.as_ref().map(|(m, _)| m.clone())
    }

    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        Ok(Box::new(MemSnapshotWriter {
            store: self.clone(),
            data: Vec::new(),
        }))
    }

    async fn open(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Box<SnapshotSource<'static>>, SnapshotError> {
        match &self.inner.lock().latest {
            Some((m, data)) if m == meta => Ok(Box::new(Cursor::new(data.clone()))),
            _ => Err(SnapshotError::NotFound(meta.last_index)),
        }
    }

    async fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SnapshotError> {
        match &self.inner.lock().latest {
            Some((m, data)) if m == meta => {
                let start = (offset as usize).min(data.len());
                let end = (start + len).min(data.len());
                Ok(data.slice(start..end))
            }
            _ => Err(SnapshotError::NotFound(meta.last_index)),
        }
    }

    async fn write_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError> {
        let mut inner = self.inner.lock();
        if inner.partial.as_ref().is_none_or(|(m, _)| m != meta) {
            inner.partial = Some((meta.clone(), Vec::new()));
        }
        let (_, buf) = inner.partial.as_mut().expect("set above");
        let at = offset as usize;
        if buf.len() < at + data.len() {
            buf.resize(at + data.len(), 0);
        }
        buf[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    async fn finish_received(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let partial = self.inner.lock().partial.take();
        let Some((m, data)) = partial.filter(|(m, _)| m == meta) else {
            return Err(SnapshotError::NotFound(meta.last_index));
        };
        if !data_matches(&m, &data) {
            return Err(SnapshotError::Corrupt(format!(
                "received snapshot at {} does not match its checksum",
                m.last_index
            )));
        }
        self.keep(m, Bytes::from(data));
        Ok(())
    }
}

/// Whether `data` is the whole snapshot `meta` describes: its size and its CRC-32C. The
/// simulators and the transcript harness verify received snapshots with it too.
pub fn data_matches(meta: &SnapshotMeta, data: &[u8]) -> bool {
    data.len() as u64 == meta.size_bytes && crc32c::crc32c(data) == meta.checksum
}

/// Collects a state machine's snapshot in memory.
struct MemSnapshotWriter {
    store: MemSnapshotStore,
    data: Vec<u8>,
}

impl AsyncWrite for MemSnapshotWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().data.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl SnapshotWriter for MemSnapshotWriter {
    async fn finish(
        self: Box<Self>,
        last_index: LogIndex,
        last_term: Term,
        membership: Membership,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let meta = SnapshotMeta {
            last_index,
            last_term,
            membership,
            size_bytes: self.data.len() as u64,
            checksum: crc32c::crc32c(&self.data),
        };
        self.store.keep(meta.clone(), Bytes::from(self.data));
        Ok(meta)
    }
}

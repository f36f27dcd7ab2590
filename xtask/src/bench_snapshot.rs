//! `cargo xtask bench snapshot`: the transfer rate of a large snapshot (1 GiB by default)
//! from a leader to a follower on loopback, beside the physical limit measured in the same
//! run: a plain copy of the same bytes from the same file through a loopback TCP socket into
//! a file on the same file system.
//!
//! # The raft transfer
//!
//! Three members of the membership {1, 2, 3} run in this process on one Tokio runtime, each
//! with the production pieces: raftline-core's async driver, a [`LogFile`], a
//! [`FileSnapshotStore`] (both with sync on) and a [`TcpTransport`] on 127.0.0.1. The state
//! machine is an opaque blob ([`Blob`]): its snapshot is `--bytes` of deterministic
//! pseudo-random (incompressible) data, streamed in 1 MiB buffers, framed by a small header
//! and a CRC-32C trailer that its restore checks while streaming the data through; it never
//! holds the data in memory.
//!
//! Every run starts a fresh cluster:
//! 1. nodes 1 and 3 start (a majority of 3); node 1 campaigns and leads; a few commands are
//!    committed;
//! 2. node 1 takes a snapshot on request and compacts its whole log behind it
//!    (`snapshot_trailing_entries: 0`);
//! 3. node 2 starts with an empty log and store. Node 1 can only bring it up with the
//!    snapshot, and sends it in chunks of `snapshot_chunk_bytes_max` with
//!    `snapshot_chunks_inflight_max` in flight (raftline-core's defaults: 1 MiB, 16).
//!
//! Nodes 2 and 3 get an election timeout of days, so that node 1, which alone holds the
//! snapshot, stays the leader throughout.
//!
//! The snapshot store on each node is wrapped in [`TimedStore`], which times every chunk read
//! (leader) and write (follower) and the follower's `finish_received` (fdatasync of the copy,
//! a re-read to check its CRC-32C, the renames and directory fsyncs that install it). The
//! **transfer** runs from the leader's first chunk read to the end of `finish_received`: the
//! copy is then durable and verified, the counterpart of the plain copy's end. The time from
//! starting node 2 to its status counting the snapshot as installed (connecting, the first
//! heartbeat that shows the leader a follower to catch up, the transfer, and the state
//! machine's restore, which streams the data once more) is reported beside it.
//!
//! # The plain copy
//!
//! One thread `pread`s the leader's snapshot file in pieces of the chunk size and writes them
//! into a loopback TCP socket (TCP_NODELAY, as the transport); another fills a buffer of the
//! chunk size from the socket, writes it to a new file in the same directory tree, and
//! fdatasyncs it at the end. Its rate is from the first read to the end of the fdatasync.
//!
//! # The page cache
//!
//! On this project's VMs the virtio balloon reports free memory to the host (free page
//! reporting): memory left free for about 2 s goes back to the host, and the next write into
//! it costs a host fault per page. Writing 1 GiB into the page cache then takes ~2.3 s
//! instead of ~0.2 s, and which of the two a measurement gets depends on what the machine
//! freed in the seconds before, so either side of the comparison would vary tenfold at
//! random. Before each measurement the benchmark therefore writes and deletes a scratch file
//! of 1.25x the snapshot ([`warm_up`]), so that the measurement starts on memory the host
//! still backs (`--cold` skips it). This is imperfect: a measurement that lasts much longer
//! than ~2 s outlives the warm memory, and the allocator does not always hand it out first;
//! the breakdown gives each side's time per GiB inside its file writes, which shows which
//! kind of memory a run met.
//!
//! # Output
//!
//! Both measurements run in each of `--runs` runs (their order alternating run by run); the
//! table gives the median, minimum and maximum of the per-run rates and the raft transfer's
//! median as a percentage of the plain copy's (target: at least 70%). A breakdown per run
//! says where the time went: the phases of the transfer, the medians of a chunk's path
//! (leader read, on to the follower's write, the write, back to the leader as an
//! acknowledgement), and the CPU time the process used meanwhile, by thread.
//!
//! Everything happens in a fresh directory under `--dir` (default: `bench-snapshot` in the
//! target directory), removed at the end; the free space must hold two copies of the
//! snapshot. `--timeout` bounds the whole benchmark.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::stream::{BoxStream, Fuse};
use futures::StreamExt;
use raftline_core::driver::{
    DriverConfig, Node, NodeError, NodeHandle, NodeStatus, SnapshotSink, SnapshotSource,
    SnapshotStore, SnapshotWriter, StateMachine,
};
use raftline_core::{Config, SnapshotError};
use raftline_log::LogFile;
use raftline_proto::{LogIndex, Membership, NodeId, SnapshotMeta};
use raftline_snapshot::FileSnapshotStore;
use raftline_tcp::{TcpTransport, TransportConfig};

use crate::cluster::{proc_cpu_secs, target_dir};
use crate::machine::{cpu_model, file_system_of, mem_total, utc_now};

/// Options of `cargo xtask bench snapshot`.
#[derive(Args)]
pub struct SnapshotArgs {
    /// Bytes of state machine data in the snapshot: a number of bytes, or with a binary unit
    /// (`64MiB`, `1GiB`, `512KiB`; `K`, `M`, `G` mean the same) [default: 1GiB; with
    /// --quick: 64MiB].
    #[arg(long, value_parser = parse_size, conflicts_with = "mib")]
    bytes: Option<u64>,
    /// The same in MiB.
    #[arg(long)]
    mib: Option<u64>,
    /// Measurements of each kind (plain copy, raft transfer), one fresh cluster per run
    /// [default: 3; with --quick: 1].
    #[arg(long)]
    runs: Option<usize>,
    /// A smoke run for CI: 64 MiB, one run (unless --bytes, --mib or --runs say otherwise).
    #[arg(long)]
    quick: bool,
    /// Skip the page-cache warm-up before each measurement (see the header's `page cache`
    /// line): measure with whatever memory the hypervisor happens to back.
    #[arg(long)]
    cold: bool,
    /// Bound on the whole benchmark, in seconds: past it the benchmark fails with a message.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// The directory to work in (a fresh subdirectory is made and removed) [default:
    /// `bench-snapshot` in the cargo target directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One raft tick (the heartbeat interval), in milliseconds; raft-kv's default is 100.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// raftline-core's `snapshot_chunk_bytes_max` in KiB, also the plain copy's piece size
    /// [default: raftline-core's, 1024].
    #[arg(long)]
    chunk_kib: Option<usize>,
    /// raftline-core's `snapshot_chunks_inflight_max` [default: raftline-core's, 16].
    #[arg(long)]
    chunks_inflight: Option<usize>,
}

/// The raft transfer's median rate must be at least this fraction of the plain copy's.
const TARGET_OF_PLAIN: f64 = 0.70;
/// The snapshot's data size by default and with `--quick`.
const DEFAULT_BYTES: u64 = 1 << 30;
const QUICK_BYTES: u64 = 64 << 20;
/// Free space beyond two copies of the snapshot (the logs, the metadata, some slack).
const SPACE_MARGIN: u64 = 256 << 20;
/// The logs hold a handful of entries: small segments keep their preallocation small.
const LOG_SEGMENT_BYTES: u64 = 1 << 20;
/// Commands committed before the snapshot is taken.
const COMMANDS: usize = 8;
/// The cluster id every transport is configured with.
const CLUSTER_ID: u64 = 0x5eed_b10b;
/// After `--timeout`, the clean path gets this long to report before a watchdog ends the
/// process (a task stuck in a blocking call cannot be cancelled).
const WATCHDOG_GRACE: Duration = Duration::from_secs(15);

/// The leader, the follower that receives the snapshot, the follower that is there from the
/// start.
const LEADER: u64 = 1;
const RECEIVER: u64 = 2;
const BYSTANDER: u64 = 3;

/// Runs the benchmark and prints its report. Returns false if something failed.
pub fn run(args: SnapshotArgs) -> bool {
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("bench snapshot: {why}");
            return false;
        }
    };
    match run_all(&settings) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("bench snapshot failed: {why}");
            false
        }
    }
}

/// The effective settings.
struct Settings {
    /// Bytes of state machine data (the snapshot has [`Blob::FRAMING`] more).
    data_bytes: u64,
    runs: usize,
    quick: bool,
    /// Warm the page cache before each measurement (not `--cold`).
    warm: bool,
    timeout: Duration,
    base: PathBuf,
    tick: Duration,
    chunk_bytes: usize,
    chunks_inflight: usize,
}

impl Settings {
    fn from_args(a: SnapshotArgs) -> Result<Settings, String> {
        let data_bytes = match (a.bytes, a.mib) {
            (Some(b), _) => b,
            (None, Some(m)) => m
                .checked_mul(1 << 20)
                .ok_or_else(|| format!("--mib {m} is too large"))?,
            (None, None) if a.quick => QUICK_BYTES,
            (None, None) => DEFAULT_BYTES,
        };
        if data_bytes == 0 {
            return Err("the snapshot needs at least one byte of data".into());
        }
        let defaults = Config::new(NodeId(LEADER));
        let chunk_bytes = match a.chunk_kib {
            Some(0) => return Err("--chunk-kib must be at least 1".into()),
            Some(k) => k << 10,
            None => defaults.snapshot_chunk_bytes_max,
        };
        let chunks_inflight = match a.chunks_inflight {
            Some(0) => return Err("--chunks-inflight must be at least 1".into()),
            Some(n) => n,
            None => defaults.snapshot_chunks_inflight_max,
        };
        if !(a.timeout.is_finite() && a.timeout > 0.0) {
            return Err("--timeout must be a positive number of seconds".into());
        }
        Ok(Settings {
            data_bytes,
            runs: a.runs.unwrap_or(if a.quick { 1 } else { 3 }).max(1),
            quick: a.quick,
            warm: !a.cold,
            timeout: Duration::from_secs_f64(a.timeout),
            base: a.dir.unwrap_or_else(|| target_dir().join("bench-snapshot")),
            tick: Duration::from_millis(a.tick_ms.max(1)),
            chunk_bytes,
            chunks_inflight,
        })
    }

    /// The size of the snapshot file: the data and the blob's framing.
    fn snapshot_bytes(&self) -> u64 {
        self.data_bytes + Blob::FRAMING
    }
}

fn run_all(s: &Settings) -> Result<(), String> {
    let deadline = Instant::now() + s.timeout;
    std::fs::create_dir_all(&s.base).map_err(|e| format!("create {}: {e}", s.base.display()))?;
    check_free_space(&s.base, 2 * s.snapshot_bytes() + SPACE_MARGIN)?;
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&s.base)
        .map_err(|e| format!("temporary directory in {}: {e}", s.base.display()))?;
    start_watchdog(s.timeout, work.path().to_path_buf());
    print_header(s, work.path());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let mut runs = Vec::new();
    let mut failure = None;
    for i in 0..s.runs {
        let dir = work.path().join(format!("run-{}", i + 1));
        // Alternate the order, so that neither always runs on a disk the other just wrote to.
        let plain_first = i % 2 == 0;
        let result = runtime.block_on(one_run(s, &dir, plain_first, deadline));
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(run) => {
                print_run_line(i + 1, s.runs, &run);
                runs.push(run);
            }
            Err(why) => {
                failure = Some(format!("run {}: {why}", i + 1));
                break;
            }
        }
    }
    // A member stuck in a blocking call must not hold up the report.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if !runs.is_empty() {
        print_breakdown(&runs);
        print_summary(s, &runs);
    }
    match failure {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Refuses to start unless `dir`'s file system has `needed` bytes free.
fn check_free_space(dir: &Path, needed: u64) -> Result<(), String> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < needed {
        return Err(format!(
            "{} has {} free; this benchmark needs {} (two copies of the snapshot and a margin). \
             Free some space, pass a smaller --bytes, or pick another --dir",
            dir.display(),
            fmt_size(free),
            fmt_size(needed)
        ));
    }
    Ok(())
}

/// Ends the process if the benchmark is still running `WATCHDOG_GRACE` after its timeout
/// (the clean path reports a timeout by itself unless something blocks it).
fn start_watchdog(timeout: Duration, work_dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(timeout + WATCHDOG_GRACE);
            eprintln!(
                "bench snapshot failed: still running {} s after the --timeout of {} s; giving up",
                WATCHDOG_GRACE.as_secs(),
                timeout.as_secs_f64()
            );
            let _ = std::fs::remove_dir_all(&work_dir);
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        eprintln!("warning: no watchdog thread ({e}); relying on --timeout alone");
    }
}

// ---------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------

/// What one run measured.
struct Run {
    plain_first: bool,
    /// Taking node 1's snapshot (generating and writing the data, fdatasync, install).
    snapshot_took: Duration,
    plain: PlainTimes,
    raft: RaftTimes,
}

async fn one_run(
    s: &Settings,
    dir: &Path,
    plain_first: bool,
    deadline: Instant,
) -> Result<Run, String> {
    let (leader, bystander) = start_led_pair(s, dir, deadline).await?;
    for _ in 0..COMMANDS {
        within(
            deadline,
            "a proposal",
            leader.handle.propose(Bytes::from_static(b"+1")),
        )
        .await?
        .map_err(|e| format!("proposal: {e}"))?;
    }

    let t0 = Instant::now();
    let meta = within(deadline, "node 1's snapshot", leader.handle.snapshot())
        .await?
        .map_err(|e| format!("node 1's snapshot: {e}"))?;
    let snapshot_took = t0.elapsed();
    if meta.size_bytes != s.snapshot_bytes() {
        return Err(format!(
            "node 1's snapshot holds {} bytes, expected {}",
            meta.size_bytes,
            s.snapshot_bytes()
        ));
    }
    // The log must be compacted behind the snapshot, or node 2 would get entries instead.
    status_reaches(
        &leader,
        deadline,
        || "node 1 to compact its log behind the snapshot".to_string(),
        |st| st.first_index > meta.last_index,
    )
    .await?;
    let source = leader
        .snapshots
        .latest_path()
        .ok_or("node 1's store names no latest snapshot")?;

    let plain = || async {
        warm_up(s, dir, deadline).await?;
        plain_copy(&source, dir, s.chunk_bytes, deadline).await
    };
    let raft = || async {
        warm_up(s, dir, deadline).await?;
        transfer(s, dir, &leader, &bystander, &meta, deadline).await
    };
    let (plain, raft) = if plain_first {
        let plain = plain().await?;
        (plain, raft().await?)
    } else {
        let raft = raft().await?;
        (plain().await?, raft)
    };

    leader.stop().await?;
    bystander.stop().await?;
    Ok(Run {
        plain_first,
        snapshot_took,
        plain,
        raft,
    })
}

/// Starts node 1 and the bystander, linked, and has node 1 lead.
async fn start_led_pair(
    s: &Settings,
    dir: &Path,
    deadline: Instant,
) -> Result<(Member, Member), String> {
    let leader = Member::start(LEADER, dir, s).await?;
    let bystander = Member::start(BYSTANDER, dir, s).await?;
    link(&leader, &bystander);
    leader.handle.campaign().await.map_err(|e| e.to_string())?;
    let lead = || "node 1 to lead".to_string();
    status_reaches(&leader, deadline, lead, |st| st.is_leader).await?;
    status_reaches(&bystander, deadline, lead, |st| {
        st.leader == Some(NodeId(LEADER))
    })
    .await?;
    Ok((leader, bystander))
}

/// What the raft transfer measured.
struct RaftTimes {
    bytes: u64,
    /// Just before node 2's transport started.
    start: Instant,
    /// The leader's first chunk read (start of the call).
    first_read: Instant,
    /// The follower's first chunk write (start) and last one (end).
    first_write: Instant,
    last_write_end: Instant,
    /// The follower's `finish_received`: fdatasync, CRC re-read, install.
    finish: (Instant, Instant),
    /// The follower's state machine restore.
    restore: (Instant, Instant),
    /// When node 2's status first counted the snapshot installed.
    installed: Instant,
    leader_reads: u64,
    leader_read_busy: Duration,
    follower_writes: u64,
    follower_write_busy: Duration,
    /// The path of a chunk and its acknowledgement.
    path: ChunkPath,
    /// From the leader's status: transfers started and resumed, chunks sent.
    transfers_started: u64,
    transfers_resumed: u64,
    chunks_sent: u64,
    /// Messages the leader's transport lost during the transfer ([`lost`]).
    leader_dropped: u64,
    cpu: CpuUse,
}

impl RaftTimes {
    /// First chunk read to the follower's copy durable and verified.
    fn transfer(&self) -> Duration {
        self.finish.1 - self.first_read
    }

    /// Node 2 started to node 2 installed (restore included).
    fn to_installed(&self) -> Duration {
        self.installed - self.start
    }
}

/// Where a chunk's time goes, medians over the chunks of one transfer.
struct ChunkPath {
    /// The leader's read of a chunk.
    read: Duration,
    /// End of the leader's read to the start of the follower's write of the same chunk: the
    /// chunk's checksum, the transport (encode, send, receive, decode), the core's check,
    /// and waiting in the follower's queues.
    forward: Duration,
    /// The follower's write.
    write: Duration,
    /// End of the follower's write of chunk k to the start of the leader's read of chunk
    /// k + window, which the acknowledgement of chunk k lets out: the acknowledgement waits
    /// for the follower's log persist, crosses the transport, and the leader's driver acts.
    back: Duration,
    /// Chunks in flight at most.
    window: usize,
}

impl ChunkPath {
    /// From the leader's chunk reads and the follower's chunk writes (offset, start, end);
    /// `None` without chunks.
    fn of(
        reads: &[(u64, Instant, Instant)],
        writes: &[(u64, Instant, Instant)],
        window: usize,
    ) -> Option<ChunkPath> {
        // The first write of each offset (a resent chunk is written again).
        let mut written = BTreeMap::new();
        for &(offset, start, end) in writes {
            written.entry(offset).or_insert((start, end));
        }
        let mut read = Vec::new();
        let mut forward = Vec::new();
        let mut write = Vec::new();
        let mut back = Vec::new();
        for (k, &(offset, start, end)) in reads.iter().enumerate() {
            read.push(end - start);
            let Some(&(w_start, w_end)) = written.get(&offset) else {
                continue;
            };
            forward.push(w_start.saturating_duration_since(end));
            write.push(w_end - w_start);
            if let Some(&(_, next_start, _)) = reads.get(k + window) {
                back.push(next_start.saturating_duration_since(w_end));
            }
        }
        Some(ChunkPath {
            read: median_duration(&mut read)?,
            forward: median_duration(&mut forward)?,
            write: median_duration(&mut write)?,
            back: median_duration(&mut back).unwrap_or_default(),
            window,
        })
    }

    /// One turn of the window: a chunk read, carried, written, acknowledged.
    fn cycle(&self) -> Duration {
        self.read + self.forward + self.write + self.back
    }
}

fn median_duration(values: &mut [Duration]) -> Option<Duration> {
    values.sort();
    values.get(values.len() / 2).copied()
}

/// Starts node 2 empty and waits until node 1 has brought it up with the snapshot.
async fn transfer(
    s: &Settings,
    dir: &Path,
    leader: &Member,
    bystander: &Member,
    meta: &SnapshotMeta,
    deadline: Instant,
) -> Result<RaftTimes, String> {
    leader.times().clear();
    let leader_before = leader.status().snapshots;
    let dropped_before = lost(&leader.transport);
    let cpu_before = CpuSample::now();
    let start = Instant::now();
    let receiver = Member::start(RECEIVER, dir, s).await?;
    link(bystander, &receiver);
    link(leader, &receiver);
    let chunks = meta.size_bytes.div_ceil(s.chunk_bytes as u64);
    wait_installed(&receiver, chunks, deadline).await?;
    let installed = Instant::now();
    let cpu = CpuSample::now().since(&cpu_before);

    let leader_after = leader.status().snapshots;
    let (lt, ft) = (leader.times().clone(), receiver.times().clone());
    let (written, restored, restore) = {
        let (l, r) = (leader.blob(), receiver.blob());
        (l.written, r.restored, r.restore)
    };
    if restored.is_none() || restored != written {
        return Err(format!(
            "node 2 restored (data bytes, crc32c) {restored:?}, node 1 wrote {written:?}"
        ));
    }
    let missing = |what: &str| format!("no {what} was timed");
    let times = RaftTimes {
        bytes: meta.size_bytes,
        start,
        first_read: lt
            .first_read
            .ok_or_else(|| missing("chunk read on node 1"))?,
        first_write: ft
            .first_write
            .ok_or_else(|| missing("chunk write on node 2"))?,
        last_write_end: ft
            .last_write_end
            .ok_or_else(|| missing("chunk write on node 2"))?,
        finish: ft
            .finish
            .ok_or_else(|| missing("finish_received on node 2"))?,
        restore: restore.ok_or_else(|| missing("restore on node 2"))?,
        installed,
        path: ChunkPath::of(&lt.chunk_reads, &ft.chunk_writes, s.chunks_inflight)
            .ok_or_else(|| missing("chunk"))?,
        leader_reads: lt.reads,
        leader_read_busy: lt.read_busy,
        follower_writes: ft.writes,
        follower_write_busy: ft.write_busy,
        transfers_started: leader_after.transfers_started - leader_before.transfers_started,
        transfers_resumed: leader_after.transfers_resumed - leader_before.transfers_resumed,
        chunks_sent: leader_after.chunks_sent - leader_before.chunks_sent,
        leader_dropped: lost(&leader.transport) - dropped_before,
        cpu,
    };
    receiver.stop().await?;
    Ok(times)
}

/// Waits until node 2 has installed the snapshot of `chunks` chunks; fails if it rejects it.
async fn wait_installed(receiver: &Member, chunks: u64, deadline: Instant) -> Result<(), String> {
    let what = || {
        let st = receiver.status().snapshots;
        format!(
            "node 2 to install the snapshot ({} of {chunks} chunks received)",
            st.chunks_received
        )
    };
    let st = status_reaches(receiver, deadline, what, |st| {
        st.snapshots.installed > 0 || st.snapshots.rejected > 0
    })
    .await?;
    if st.snapshots.rejected > 0 {
        return Err("node 2 rejected the received snapshot".into());
    }
    Ok(())
}

/// Messages a transport lost: dropped for a full queue, oversized, or with a connection.
/// (Messages to node 2 before it is linked are dropped as unroutable: not counted here.)
fn lost(transport: &TcpTransport) -> u64 {
    let stats = transport.stats();
    stats.dropped_queue_full + stats.dropped_oversized + stats.dropped_in_flight
}

/// Waits until `condition` holds of `member`'s status, which its driver publishes at every
/// change (`NodeHandle::watch`: no polling), and returns that status. Fails past `deadline`
/// naming `what`, or when the member stops first.
async fn status_reaches(
    member: &Member,
    deadline: Instant,
    what: impl Fn() -> String,
    condition: impl FnMut(&NodeStatus) -> bool,
) -> Result<NodeStatus, String> {
    let mut watch = member.handle.watch();
    match tokio::time::timeout_at(deadline.into(), watch.wait_for(condition)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!(
            "node {} stopped while waiting for {}: {e}",
            member.id,
            what()
        )),
        Err(_) => Err(format!("--timeout reached while waiting for {}", what())),
    }
}

/// Awaits `fut`, failing at `deadline` with a message naming `what`.
async fn within<T>(
    deadline: Instant,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout_at(deadline.into(), fut)
        .await
        .map_err(|_| format!("--timeout reached while waiting for {what}"))
}

// ---------------------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------------------

/// One running member: the driver's task, its handle, its transport, its stores.
struct Member {
    id: NodeId,
    handle: NodeHandle<()>,
    transport: TcpTransport,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
    snapshots: FileSnapshotStore,
    times: Arc<Mutex<StoreTimes>>,
    blob: Arc<Mutex<BlobEvents>>,
}

impl Member {
    /// Opens the member's log and snapshot store under `dir/node-<id>`, starts its transport
    /// on a free loopback port (peers are added by [`link`]) and its driver.
    async fn start(id: u64, dir: &Path, s: &Settings) -> Result<Member, String> {
        let node = NodeId(id);
        let dir = dir.join(format!("node-{id}"));
        let log = LogFile::open(
            dir.join("log"),
            raftline_log::Options {
                membership: Membership::with_voters([LEADER, RECEIVER, BYSTANDER].map(NodeId)),
                segment_bytes_max: LOG_SEGMENT_BYTES,
                ..raftline_log::Options::default()
            },
        )
        .map_err(|e| format!("node {id}: open the log: {e}"))?;
        let snapshots =
            FileSnapshotStore::open(dir.join("snap"), raftline_snapshot::Options::default())
                .map_err(|e| format!("node {id}: open the snapshot store: {e}"))?;
        let listen = "127.0.0.1:0".parse().expect("a socket address");
        let (transport, inbound) =
            TcpTransport::start(TransportConfig::new(node, CLUSTER_ID, listen))
                .await
                .map_err(|e| format!("node {id}: start the transport: {e}"))?;

        let mut config = Config::new(node);
        config.snapshot_chunk_bytes_max = s.chunk_bytes;
        config.snapshot_chunks_inflight_max = s.chunks_inflight;
        if id != LEADER {
            // Never campaign: only node 1 holds the snapshot, so only it may lead. (The
            // leader keeps the default: its election timeout also paces its stall detection.)
            config.election_ticks = 10_000_000;
        }
        let driver = DriverConfig {
            snapshot_entries: 0,
            snapshot_trailing_entries: 0,
            ..DriverConfig::default()
        };
        let times = Arc::new(Mutex::new(StoreTimes::default()));
        let blob_events = Arc::new(Mutex::new(BlobEvents::default()));
        let blob = Blob {
            data_bytes: s.data_bytes,
            seed: 0x5eed_0000 + id,
            applied: 0,
            events: Arc::clone(&blob_events),
        };
        let store = TimedStore {
            inner: snapshots.clone(),
            times: Arc::clone(&times),
        };
        let (driver_node, handle) = Node::new(config, driver, log, blob, store, transport.clone())
            .await
            .map_err(|e| format!("node {id}: start the driver: {e}"))?;
        let task = tokio::spawn(driver_node.run(inbound, ticks(s.tick)));
        Ok(Member {
            id: node,
            handle,
            transport,
            task,
            snapshots,
            times,
            blob: blob_events,
        })
    }

    fn status(&self) -> NodeStatus {
        self.handle.status()
    }

    fn times(&self) -> MutexGuard<'_, StoreTimes> {
        lock(&self.times)
    }

    fn blob(&self) -> MutexGuard<'_, BlobEvents> {
        lock(&self.blob)
    }

    /// Shuts the driver and the transport down; fails if the driver had stopped with an
    /// error.
    async fn stop(self) -> Result<(), String> {
        self.handle.shutdown().await;
        let result = self.task.await;
        self.transport.shutdown().await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("node {} stopped: {e}", self.id)),
            Err(e) => Err(format!("node {}'s task failed: {e}", self.id)),
        }
    }
}

/// Makes `a` and `b` peers. The lower id dials, so the higher one learns of it first (a
/// dial to a node that does not know the dialer yet is refused and retried after a backoff).
fn link(a: &Member, b: &Member) {
    let (low, high) = if a.id < b.id { (a, b) } else { (b, a) };
    high.transport.add_peer(low.id, low.transport.local_addr());
    low.transport.add_peer(high.id, high.transport.local_addr());
}

/// A tick every `every`; late ticks are delayed, not bunched.
fn ticks(every: Duration) -> Fuse<BoxStream<'static, ()>> {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(interval, |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
    .boxed()
    .fuse()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// The state machine: an opaque blob
// ---------------------------------------------------------------------------------------

/// A state machine whose state is `data_bytes` of pseudo-random data drawn from `seed`,
/// plus a count of applied commands. Its snapshot format:
///
/// ```text
/// | "RAFTBLOB" | seed u64 | data bytes u64 | applied u64 | data | crc32c of the data u32 |
/// ```
///
/// (integers little-endian). Restore streams the data through and checks its length and
/// checksum; nothing is held in memory beyond one buffer.
struct Blob {
    data_bytes: u64,
    seed: u64,
    applied: u64,
    events: Arc<Mutex<BlobEvents>>,
}

/// What the benchmark learns from a [`Blob`].
#[derive(Clone, Debug, Default)]
struct BlobEvents {
    /// (data bytes, crc32c) of the last snapshot written.
    written: Option<(u64, u32)>,
    /// (data bytes, crc32c) of the last snapshot restored, and when the restore ran.
    restored: Option<(u64, u32)>,
    restore: Option<(Instant, Instant)>,
}

impl Blob {
    const MAGIC: &'static [u8; 8] = b"RAFTBLOB";
    const HEADER: usize = 32;
    const TRAILER: usize = 4;
    /// Snapshot bytes beyond the data.
    const FRAMING: u64 = (Self::HEADER + Self::TRAILER) as u64;
    /// The buffer data is generated into and restored through.
    const BUFFER: usize = 1 << 20;
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[async_trait]
impl StateMachine for Blob {
    type Response = ();

    async fn apply(&mut self, _index: LogIndex, _command: &Bytes) {
        self.applied += 1;
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> io::Result<()> {
        let mut header = Vec::with_capacity(Self::HEADER);
        header.extend_from_slice(Self::MAGIC);
        for n in [self.seed, self.data_bytes, self.applied] {
            header.extend_from_slice(&n.to_le_bytes());
        }
        sink.write_all(&header).await?;
        let mut rng = SplitMix(self.seed);
        let mut buf = vec![0u8; Self::BUFFER];
        let (mut left, mut crc) = (self.data_bytes, 0u32);
        while left > 0 {
            let piece = &mut buf[..left.min(Self::BUFFER as u64) as usize];
            rng.fill(piece);
            crc = crc32c::crc32c_append(crc, piece);
            sink.write_all(piece).await?;
            left -= piece.len() as u64;
        }
        sink.write_all(&crc.to_le_bytes()).await?;
        sink.flush().await?;
        lock(&self.events).written = Some((self.data_bytes, crc));
        Ok(())
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> io::Result<()> {
        let start = Instant::now();
        let mut header = [0u8; Self::HEADER];
        source.read_exact(&mut header).await?;
        if &header[..8] != Self::MAGIC {
            return Err(invalid("not a blob snapshot".into()));
        }
        let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().expect("8 bytes"));
        let (seed, data_bytes, applied) = (word(8), word(16), word(24));
        let mut buf = vec![0u8; Self::BUFFER];
        let (mut left, mut crc) = (data_bytes, 0u32);
        while left > 0 {
            let piece = &mut buf[..left.min(Self::BUFFER as u64) as usize];
            source.read_exact(piece).await?;
            crc = crc32c::crc32c_append(crc, piece);
            left -= piece.len() as u64;
        }
        let mut trailer = [0u8; Self::TRAILER];
        source.read_exact(&mut trailer).await?;
        if u32::from_le_bytes(trailer) != crc {
            return Err(invalid(format!(
                "blob checksum {crc:#010x}, trailer says {:#010x}",
                u32::from_le_bytes(trailer)
            )));
        }
        if source.read(&mut buf[..1]).await? != 0 {
            return Err(invalid("bytes after the blob's trailer".into()));
        }
        (self.seed, self.data_bytes, self.applied) = (seed, data_bytes, applied);
        let mut events = lock(&self.events);
        events.restored = Some((data_bytes, crc));
        events.restore = Some((start, Instant::now()));
        Ok(())
    }
}

/// SplitMix64: a small, fast pseudo-random generator for incompressible data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The snapshot store, timed
// ---------------------------------------------------------------------------------------

/// A [`FileSnapshotStore`] whose chunk reads, chunk writes and `finish_received` are timed.
#[derive(Clone)]
struct TimedStore {
    inner: FileSnapshotStore,
    times: Arc<Mutex<StoreTimes>>,
}

/// What a [`TimedStore`] timed.
#[derive(Clone, Debug, Default)]
struct StoreTimes {
    /// Chunk reads with data (a leader's), their total time, the start of the first.
    reads: u64,
    read_busy: Duration,
    first_read: Option<Instant>,
    /// Chunk writes (a follower's), their total time, the start of the first, the end of
    /// the last.
    writes: u64,
    write_busy: Duration,
    first_write: Option<Instant>,
    last_write_end: Option<Instant>,
    /// Every chunk read and write: offset, start, end.
    chunk_reads: Vec<(u64, Instant, Instant)>,
    chunk_writes: Vec<(u64, Instant, Instant)>,
    /// The last `finish_received`: start and end.
    finish: Option<(Instant, Instant)>,
}

impl StoreTimes {
    fn clear(&mut self) {
        *self = StoreTimes::default();
    }
}

#[async_trait]
impl SnapshotStore for TimedStore {
    fn latest(&self) -> Option<SnapshotMeta> {
        self.inner.latest()
    }

    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        self.inner.begin().await
    }

    async fn open(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Box<SnapshotSource<'static>>, SnapshotError> {
        self.inner.open(meta).await
    }

    async fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SnapshotError> {
        let t0 = Instant::now();
        let result = self.inner.read_chunk(meta, offset, len).await;
        let t1 = Instant::now();
        if len > 0 {
            let mut t = lock(&self.times);
            t.reads += 1;
            t.read_busy += t1 - t0;
            t.first_read.get_or_insert(t0);
            t.chunk_reads.push((offset, t0, t1));
        }
        result
    }

    async fn write_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError> {
        let t0 = Instant::now();
        let result = self.inner.write_chunk(meta, offset, data).await;
        let t1 = Instant::now();
        let mut t = lock(&self.times);
        t.writes += 1;
        t.write_busy += t1 - t0;
        t.first_write.get_or_insert(t0);
        t.last_write_end = Some(t1);
        t.chunk_writes.push((offset, t0, t1));
        result
    }

    async fn finish_received(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let t0 = Instant::now();
        let result = self.inner.finish_received(meta).await;
        lock(&self.times).finish = Some((t0, Instant::now()));
        result
    }
}

// ---------------------------------------------------------------------------------------
// The plain copy
// ---------------------------------------------------------------------------------------

/// What the plain copy measured.
struct PlainTimes {
    bytes: u64,
    /// First read to last byte written to the file (before the fdatasync).
    copy: Duration,
    /// Of which the receiver spent writing the file (into the page cache).
    write_busy: Duration,
    fdatasync: Duration,
    cpu: CpuUse,
}

impl PlainTimes {
    fn total(&self) -> Duration {
        self.copy + self.fdatasync
    }
}

/// Unless `--cold`: writes a scratch file a quarter larger than the snapshot in `dir` and
/// deletes it (no fsync: its pages are dropped, never written back), so that the
/// measurement that follows writes into page-cache pages the hypervisor still backs.
///
/// Why: this VM's virtio-balloon has free page reporting; memory that stays free for about
/// 2 s is handed back to the host, and the first touch of such a page costs a host fault.
/// Writing 1 GiB into the page cache then takes ~2.3 s instead of ~0.2 s, and whether a
/// measurement meets such pages depends on what the machine freed in the seconds before:
/// without the warm-up either side of the comparison varies tenfold at random.
async fn warm_up(s: &Settings, dir: &Path, deadline: Instant) -> Result<(), String> {
    if !s.warm {
        return Ok(());
    }
    let bytes = s.snapshot_bytes() + s.snapshot_bytes() / 4;
    let path = dir.join("warm-up.dat");
    let work = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let result = (|| {
            let mut file = File::create(&path)?;
            let buf = vec![0x5a_u8; Blob::BUFFER];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                file.write_all(&buf[..n])?;
                left -= n as u64;
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&path);
        result
    });
    within(deadline, "the page-cache warm-up", work)
        .await?
        .map_err(|e| format!("the warm-up's thread failed: {e}"))?
        .map_err(|e| format!("page-cache warm-up in {}: {e}", dir.display()))
}

/// Copies `source` through loopback TCP into a new file in `dir`, fdatasyncs it, removes it.
async fn plain_copy(
    source: &Path,
    dir: &Path,
    piece: usize,
    deadline: Instant,
) -> Result<PlainTimes, String> {
    let (source, target) = (source.to_path_buf(), dir.join("plain-copy.dat"));
    let copy = tokio::task::spawn_blocking(move || {
        let result = plain_copy_blocking(&source, &target, piece);
        let _ = std::fs::remove_file(&target);
        result
    });
    within(deadline, "the plain copy", copy)
        .await?
        .map_err(|e| format!("the plain copy's thread failed: {e}"))?
}

/// The plain copy itself, on two threads of its own (named, for the CPU breakdown).
fn plain_copy_blocking(source: &Path, target: &Path, piece: usize) -> Result<PlainTimes, String> {
    let err = |what: &str, path: &Path| {
        let path = path.display().to_string();
        let what = what.to_string();
        move |e: io::Error| format!("plain copy: {what} {path}: {e}")
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err("bind", Path::new("127.0.0.1")))?;
    let addr = listener
        .local_addr()
        .map_err(err("local address", Path::new("")))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(err("create", target))?;
    let input = File::open(source).map_err(err("open", source))?;
    let cpu_before = CpuSample::now();
    let t0 = Instant::now();

    let receiver = std::thread::Builder::new()
        .name("plain-recv".into())
        .spawn(
            move || -> io::Result<(u64, Instant, Instant, f64, Duration)> {
                let (mut socket, _) = listener.accept()?;
                let mut buf = vec![0u8; piece];
                let mut total = 0u64;
                let mut write_busy = Duration::ZERO;
                loop {
                    // Fill a whole piece (as a chunk arrives whole), then write it.
                    let mut filled = 0;
                    while filled < piece {
                        match socket.read(&mut buf[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if filled == 0 {
                        break;
                    }
                    let t = Instant::now();
                    out.write_all(&buf[..filled])?;
                    write_busy += t.elapsed();
                    total += filled as u64;
                }
                let written = Instant::now();
                out.sync_data()?;
                Ok((total, written, Instant::now(), own_cpu_secs(), write_busy))
            },
        )
        .map_err(|e| format!("plain copy: spawn the receiver: {e}"))?;

    let sender = std::thread::Builder::new()
        .name("plain-send".into())
        .spawn(move || -> io::Result<(u64, f64)> {
            let mut socket = TcpStream::connect(addr)?;
            socket.set_nodelay(true)?;
            let mut buf = vec![0u8; piece];
            let mut offset = 0u64;
            loop {
                let n = read_full_at(&input, &mut buf, offset)?;
                if n == 0 {
                    break;
                }
                socket.write_all(&buf[..n])?;
                offset += n as u64;
            }
            socket.shutdown(Shutdown::Write)?;
            Ok((offset, own_cpu_secs()))
        })
        .map_err(|e| format!("plain copy: spawn the sender: {e}"))?;

    let (sent, send_cpu) = sender
        .join()
        .map_err(|_| "plain copy: the sender panicked".to_string())?
        .map_err(err("send", source))?;
    let (received, written, synced, receive_cpu, write_busy) = receiver
        .join()
        .map_err(|_| "plain copy: the receiver panicked".to_string())?
        .map_err(err("receive into", target))?;
    // The two threads have ended: they measured their own CPU time.
    let mut cpu = CpuSample::now().since(&cpu_before);
    cpu.threads = vec![
        ("plain-send".to_string(), send_cpu),
        ("plain-recv".to_string(), receive_cpu),
    ];
    if sent != received {
        return Err(format!(
            "plain copy: sent {sent} bytes, received {received}"
        ));
    }
    Ok(PlainTimes {
        bytes: received,
        copy: written - t0,
        write_busy,
        fdatasync: synced - written,
        cpu,
    })
}

/// Reads from `offset` until `buf` is full or the file ends; returns how much was read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

// ---------------------------------------------------------------------------------------
// CPU time
// ---------------------------------------------------------------------------------------

/// The calling thread's CPU seconds so far.
fn own_cpu_secs() -> f64 {
    proc_cpu_secs("/proc/thread-self/stat").unwrap_or(0.0)
}

/// The process's CPU time and its live threads' CPU time by thread name (`/proc`, 10 ms
/// resolution).
struct CpuSample {
    process: f64,
    threads: BTreeMap<String, f64>,
}

/// CPU seconds used over an interval: the whole process, and the threads alive at its end
/// by name (the rest, `process` minus their sum, is threads that ended meanwhile, such as
/// raftline-snapshot's short-lived fsync-and-verify threads).
struct CpuUse {
    process: f64,
    threads: Vec<(String, f64)>,
}

impl CpuSample {
    fn now() -> CpuSample {
        let process = proc_cpu_secs("/proc/self/stat").unwrap_or(0.0);
        let mut threads = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let path = task.path();
                let name = std::fs::read_to_string(path.join("comm"))
                    .map_or_else(|_| "?".to_string(), |s| s.trim().to_string());
                if let Some(secs) = proc_cpu_secs(&path.join("stat").to_string_lossy()) {
                    *threads.entry(name).or_insert(0.0) += secs;
                }
            }
        }
        CpuSample { process, threads }
    }

    /// What was used since `before`, busiest threads first.
    fn since(&self, before: &CpuSample) -> CpuUse {
        let mut threads: Vec<(String, f64)> = self
            .threads
            .iter()
            .map(|(name, &secs)| {
                let was = before.threads.get(name).copied().unwrap_or(0.0);
                (name.clone(), (secs - was).max(0.0))
            })
            .filter(|(_, secs)| *secs >= 0.005)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse {
            process: (self.process - before.process).max(0.0),
            threads,
        }
    }
}

impl CpuUse {
    /// `1.23 s (1.4 cores): tokio-runtime-w 0.90, plain-recv 0.20, other 0.13`.
    fn describe(&self, wall: Duration) -> String {
        let named: f64 = self.threads.iter().map(|(_, s)| s).sum();
        let mut parts: Vec<String> = self
            .threads
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.2}"))
            .collect();
        let ended = self.process - named;
        if ended >= 0.005 {
            parts.push(format!("ended threads {ended:.2}"));
        }
        format!(
            "{:.2} s ({:.2} cores): {}",
            self.process,
            self.process / wall.as_secs_f64().max(1e-9),
            parts.join(", ")
        )
    }
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn print_header(s: &Settings, dir: &Path) {
    let profile = if cfg!(debug_assertions) {
        "debug (debug assertions on): figures are not representative"
    } else {
        "release (debug assertions off)"
    };
    println!("# cargo xtask bench snapshot");
    println!("date (UTC):   {}", utc_now());
    println!("cpu:          {}", cpu_model());
    println!(
        "cores:        {} (available parallelism; the 3 members share one tokio runtime of 2 \
         workers, the plain copy runs on 2 threads)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("memory:       {}", mem_total());
    println!(
        "kernel:       {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
    );
    println!("directory:    {}", dir.display());
    println!("file system:  {}", file_system_of(dir));
    println!("build:        {profile}");
    println!(
        "snapshot:     {} of pseudo-random state machine data + {} B of framing = {} B{}",
        fmt_size(s.data_bytes),
        Blob::FRAMING,
        s.snapshot_bytes(),
        if s.quick { " (--quick)" } else { "" }
    );
    println!(
        "raft:         members {{1, 2, 3}} in this process, TCP transport on 127.0.0.1; node 1 \
         snapshots and compacts its log, then node 2 starts empty and receives the snapshot; \
         chunks of {} with {} in flight; tick {} ms",
        fmt_size(s.chunk_bytes as u64),
        s.chunks_inflight,
        s.tick.as_millis()
    );
    println!(
        "storage:      raftline-log and raftline-snapshot's FileSnapshotStore, sync on \
         (Options::default())"
    );
    println!(
        "plain copy:   pread of node 1's snapshot file in pieces of {} -> loopback TCP \
         (TCP_NODELAY) -> file writes of {} -> fdatasync, one thread each side",
        fmt_size(s.chunk_bytes as u64),
        fmt_size(s.chunk_bytes as u64)
    );
    if s.warm {
        println!(
            "page cache:   warmed before each measurement: a scratch file of 1.25x the snapshot \
             is written and deleted just before, so that the measurement writes into pages the \
             hypervisor still backs (free page reporting returns memory left free ~2 s to the \
             host; writing 1 GiB into such pages costs ~2.3 s instead of ~0.2 s here); --cold \
             skips this"
        );
    } else {
        println!(
            "page cache:   not warmed (--cold): measurements may meet memory the hypervisor \
             reclaimed (free page reporting), at ~10x the cost of writing the page cache"
        );
    }
    println!(
        "runs:         {}, a fresh cluster each, plain copy and raft transfer taking turns to \
         go first; timeout {} s",
        s.runs,
        s.timeout.as_secs_f64()
    );
    println!();
}

fn print_run_line(i: usize, runs: usize, run: &Run) {
    println!(
        "run {i}/{runs} ({} first): snapshot taken in {:.2} s; plain copy {:.0} MB/s; raft \
         transfer {:.0} MB/s ({:.1}% of plain); node 2 start to installed {:.0} MB/s",
        if run.plain_first { "plain" } else { "raft" },
        run.snapshot_took.as_secs_f64(),
        rate(run.plain.bytes, run.plain.total()),
        rate(run.raft.bytes, run.raft.transfer()),
        100.0 * rate(run.raft.bytes, run.raft.transfer())
            / rate(run.plain.bytes, run.plain.total()),
        rate(run.raft.bytes, run.raft.to_installed()),
    );
}

fn print_breakdown(runs: &[Run]) {
    println!();
    println!("## Where the time goes (seconds, per run)");
    println!();
    println!(
        "| run | plain total | copy (read, TCP, write) | receiver's file writes | fdatasync | CPU |"
    );
    println!("|--:|--:|--:|--:|--:|---|");
    for (i, run) in runs.iter().enumerate() {
        let p = &run.plain;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            i + 1,
            p.total().as_secs_f64(),
            p.copy.as_secs_f64(),
            p.write_busy.as_secs_f64(),
            p.fdatasync.as_secs_f64(),
            p.cpu.describe(p.total()),
        );
    }
    println!();
    println!(
        "| run | start to 1st chunk | transfer | 1st chunk read to last written | leader \
         read_chunk busy | follower write_chunk busy | finish_received | then restore | \
         start to installed |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (i, run) in runs.iter().enumerate() {
        let r = &run.raft;
        let secs = |d: Duration| format!("{:.3}", d.as_secs_f64());
        println!(
            "| {} | {} | {} | {} ({:.0} MB/s) | {} ({} chunks) | {} ({} chunks) | {} | {} | {} |",
            i + 1,
            secs(r.first_read - r.start),
            secs(r.transfer()),
            secs(r.last_write_end - r.first_read),
            rate(r.bytes, r.last_write_end - r.first_read),
            secs(r.leader_read_busy),
            r.leader_reads,
            secs(r.follower_write_busy),
            r.follower_writes,
            secs(r.finish.1 - r.finish.0),
            secs(r.restore.1 - r.restore.0),
            secs(r.to_installed()),
        );
    }
    println!();
    println!(
        "transfer = node 1's first chunk read to the end of node 2's finish_received \
         (fdatasync of the copy, re-read for its CRC-32C, install), which follows the last \
         chunk write at once; restore = the blob state machine streaming the installed copy \
         once more."
    );
    for (i, run) in runs.iter().enumerate() {
        let r = &run.raft;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p = &r.path;
        println!(
            "run {}: raft CPU from node 2's start to installed: {}; first chunk written {:.1} ms \
             after it was read",
            i + 1,
            r.cpu.describe(r.to_installed()),
            ms(r.first_write - r.first_read),
        );
        println!(
            "run {}: a chunk's path (medians): leader read {:.2} ms, {:.2} ms to the follower's \
             write (checksum, transport, queues), write {:.2} ms, {:.2} ms until the leader reads \
             the chunk {} later (ack after persist, transport, driver): {} chunks per {:.1} ms \
             cycle, at most {:.0} MB/s",
            i + 1,
            ms(p.read),
            ms(p.forward),
            ms(p.write),
            ms(p.back),
            p.window,
            p.window,
            ms(p.cycle()),
            rate(
                (p.window as u64).saturating_mul(r.bytes.div_ceil(r.leader_reads.max(1))),
                p.cycle()
            ),
        );
        if r.transfers_started != 1 || r.transfers_resumed != 0 || r.leader_dropped != 0 {
            println!(
                "run {}: note: node 1 started {} transfer(s), resumed {}, sent {} chunks; its \
                 transport lost {} message(s)",
                i + 1,
                r.transfers_started,
                r.transfers_resumed,
                r.chunks_sent,
                r.leader_dropped
            );
        }
    }
}

fn print_summary(s: &Settings, runs: &[Run]) {
    let plain: Vec<f64> = runs
        .iter()
        .map(|r| rate(r.plain.bytes, r.plain.total()))
        .collect();
    let transfer: Vec<f64> = runs
        .iter()
        .map(|r| rate(r.raft.bytes, r.raft.transfer()))
        .collect();
    let installed: Vec<f64> = runs
        .iter()
        .map(|r| rate(r.raft.bytes, r.raft.to_installed()))
        .collect();
    let plain_p50 = median(&plain);
    println!();
    println!(
        "## {} snapshot, {} run(s): rates in MB/s (10^6 B/s), percentiles of the per-run rates",
        fmt_size(s.data_bytes),
        runs.len()
    );
    println!();
    println!("| measurement | p50 MB/s | min MB/s | max MB/s | p50 % of plain copy |");
    println!("|---|--:|--:|--:|--:|");
    let row = |name: &str, rates: &[f64]| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.1}% |",
            median(rates),
            min(rates),
            max(rates),
            100.0 * median(rates) / plain_p50.max(1e-9)
        );
    };
    row(
        "plain TCP copy (pread, loopback TCP, write, fdatasync)",
        &plain,
    );
    row(
        "raft snapshot transfer (1st chunk read to copy durable and verified)",
        &transfer,
    );
    row(
        "raft, node 2 start to installed (incl. connect and restore)",
        &installed,
    );
    println!();
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let plain_cpu: Vec<f64> = runs
        .iter()
        .map(|r| r.plain.cpu.process / gib(r.plain.bytes))
        .collect();
    let raft_cpu: Vec<f64> = runs
        .iter()
        .map(|r| r.raft.cpu.process / gib(r.raft.bytes))
        .collect();
    let plain_writes: Vec<f64> = runs
        .iter()
        .map(|r| r.plain.write_busy.as_secs_f64() / gib(r.plain.bytes))
        .collect();
    let raft_writes: Vec<f64> = runs
        .iter()
        .map(|r| r.raft.follower_write_busy.as_secs_f64() / gib(r.raft.bytes))
        .collect();
    println!(
        "CPU seconds per GiB, p50 (min - max): plain copy {:.2} ({:.2} - {:.2}); raft, node 2 \
         start to installed {:.2} ({:.2} - {:.2})",
        median(&plain_cpu),
        min(&plain_cpu),
        max(&plain_cpu),
        median(&raft_cpu),
        min(&raft_cpu),
        max(&raft_cpu),
    );
    println!(
        "seconds per GiB writing the received bytes into the page cache, per run: plain {}; \
         raft {} (about 0.2-0.3 when the memory is warm, 2-3 when the hypervisor must back \
         it again)",
        plain_writes
            .iter()
            .map(|w| format!("{w:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
        raft_writes
            .iter()
            .map(|w| format!("{w:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    let ratio = median(&transfer) / plain_p50.max(1e-9);
    println!(
        "target (raft transfer p50 >= {:.0}% of the plain copy p50): {} ({:.1}%)",
        TARGET_OF_PLAIN * 100.0,
        if ratio >= TARGET_OF_PLAIN {
            "met"
        } else {
            "MISSED"
        },
        ratio * 100.0
    );
}

/// Bytes per second in MB/s (10^6 B/s).
fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-9) / 1e6
}

/// The median (the mean of the two middle values for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `1 GiB`, `64 MiB`, `1.5 GiB`, `512 B`.
fn fmt_size(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.2} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} B")
}

/// Parses `--bytes`: a number with an optional binary unit (KiB, MiB, GiB or K, M, G).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}`: expected a number of bytes, optionally with KiB, MiB or GiB");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    number
        .checked_mul(scale)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}`: must be at least 1 byte and fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn median_and_sizes() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(fmt_size(1 << 30), "1 GiB");
        assert_eq!(fmt_size((1 << 30) + 36), "1.00 GiB");
        assert_eq!(fmt_size(36), "36 B");
    }

    fn blob(data_bytes: u64, seed: u64) -> Blob {
        Blob {
            data_bytes,
            seed,
            applied: 0,
            events: Arc::default(),
        }
    }

    #[test]
    fn blob_snapshot_restores_and_detects_damage() {
        futures::executor::block_on(async {
            // Not a multiple of the buffer nor of 8 bytes.
            let data_bytes = 3 * Blob::BUFFER as u64 + 5;
            let mut leader = blob(data_bytes, 7);
            leader.apply(LogIndex(1), &Bytes::new()).await;
            let mut sink = Cursor::new(Vec::new());
            leader.snapshot(&mut sink).await.unwrap();
            let bytes = sink.into_inner();
            assert_eq!(bytes.len() as u64, data_bytes + Blob::FRAMING);
            let written = lock(&leader.events).written;

            let mut follower = blob(0, 0);
            follower
                .restore(&mut Cursor::new(bytes.clone()))
                .await
                .unwrap();
            assert_eq!(lock(&follower.events).restored, written);
            assert_eq!(
                (follower.seed, follower.data_bytes, follower.applied),
                (7, data_bytes, 1)
            );

            let mut damaged = bytes.clone();
            damaged[Blob::HEADER + 100] ^= 1;
            let mut other = blob(0, 0);
            assert!(other.restore(&mut Cursor::new(damaged)).await.is_err());
            let mut short = bytes;
            short.pop();
            assert!(other.restore(&mut Cursor::new(short)).await.is_err());
        });
    }

    #[test]
    fn quick_is_small() {
        let s = Settings::from_args(SnapshotArgs {
            bytes: None,
            mib: None,
            runs: None,
            quick: true,
            cold: false,
            timeout: 300.0,
            dir: None,
            tick_ms: 100,
            chunk_kib: None,
            chunks_inflight: None,
        })
        .unwrap();
        assert_eq!((s.data_bytes, s.runs), (64 << 20, 1));
        assert_eq!(s.chunk_bytes, 1 << 20);
    }
}

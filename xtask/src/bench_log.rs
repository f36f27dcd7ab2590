//! `cargo xtask bench log`: raftline-log's durable appends, random reads and open time,
//! measured beside the physical limit of the same disk and, with the cargo feature
//! `anchor-raft-engine`, beside TiKV's raft-engine.
//!
//! Everything happens in one fresh directory (`--dir`, by default under `target/bench-log`,
//! so on the file system the project builds on), which is removed at the end.
//!
//! 1. **Durable appends.** For every batch size (1, 16, 256 entries) and payload (64 B,
//!    256 B, 4 KiB), one thread calls [`LogFile::append`] once per batch with
//!    [`Options::default()`] (sync on): one call is one batch record and one fdatasync. The
//!    latency of each call goes into an HDR histogram; appends/s and payload MB/s count the
//!    time spent inside the calls.
//! 2. **The physical limit**, in the same row: a plain loop of `write` to a file opened with
//!    `O_APPEND` and `fdatasync` ([`File::sync_data`]), each write as many bytes as the log's
//!    batch record for that row (`entries × (16 + payload padded to 8) + 32`). Its write and
//!    its fdatasync are also timed apart. Ours is printed as a percentage of it (target: at
//!    least 90% at every batch size). With `--overwrite-loop`, a second loop `pwrite`s the
//!    same bytes into a file written with zeros and synced beforehand: overwriting allocated,
//!    written blocks, its fdatasync has no file-system metadata to write, which makes it the
//!    floor of the disk (the appending loop pays for block allocation and the file size).
//! 3. **Random reads**: `entries(i, i + 1, usize::MAX)` at random indexes of a log of
//!    `--read-entries` 64 B entries (written with sync off; the page cache is warm).
//! 4. **Open time**: a log of `--open-entries` 64 B entries, written in batches of 256 with
//!    sync off and closed, then [`LogFile::open`] timed (`--opens` times; warm page cache).
//!
//! The systems of an append row take turns batch by batch (in an order that rotates every
//! round), first for a warm-up, then for about `--secs` each, measured: the virtual disk
//! switches between fast and slow moods (fdatasync ~0.1 ms or ~4 ms) within a fraction of a
//! second, and taking turns so finely gives every system the same moods. Every row is bounded
//! in time and stops by itself.
//!
//! With `--features anchor-raft-engine`, raft-engine (crates.io, default configuration but
//! for LZ4 batch compression, which is turned off because our log does not compress) runs the
//! same append rows (one `Engine::write(batch, sync = true)` per batch of raft-rs `Entry`s
//! in one region) and the same open; the table gives ours ÷ raft-engine (target: 1.5×).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::machine::{cpu_model, file_system_of, mem_total, utc_now};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use raftline_log::{LogFile, Options};
use raftline_proto::{Entry, LogIndex, Term};

/// Options of `cargo xtask bench log`.
#[derive(Args)]
pub struct LogArgs {
    /// Seconds measured per system and append row.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Seconds of warm-up per system and append row (not recorded).
    #[arg(long, default_value_t = 0.3)]
    warmup_secs: f64,
    /// A smoke run for CI: 0.2 s per row, 0.05 s warm-up, 100,000-entry logs for reads and
    /// open, one open. Overrides the other sizes.
    #[arg(long)]
    quick: bool,
    /// The directory to work in (a fresh subdirectory is made and removed). Default:
    /// `bench-log` in the cargo target directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Entries (64 B) of the log read at random.
    #[arg(long, default_value_t = 1_000_000)]
    read_entries: u64,
    /// Entries (64 B) of the log whose open is timed.
    #[arg(long, default_value_t = 1_000_000)]
    open_entries: u64,
    /// How many times each log is opened in the open-time row.
    #[arg(long, default_value_t = 3)]
    opens: usize,
    /// Add a fourth system to the append rows: `pwrite` of the same bytes at growing offsets
    /// (wrapping around) into a file written with zeros and synced beforehand, + fdatasync.
    /// Overwriting allocated, written blocks needs no metadata at sync: the floor of the disk.
    #[arg(long)]
    overwrite_loop: bool,
    /// Run only this part of the benchmark.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Run only the append rows with this many entries per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Run only the append rows with this payload size in bytes.
    #[arg(long)]
    payload: Option<usize>,
}

/// The parts of the benchmark, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Durable appends beside the plain write + fdatasync loop (and raft-engine).
    Appends,
    /// Random single-entry reads.
    Reads,
    /// Open (recovery) time.
    Open,
}

/// Entries per append call in the append rows.
const BATCH_SIZES: [usize; 3] = [1, 16, 256];
/// Payload bytes per entry in the append rows.
const PAYLOADS: [usize; 3] = [64, 256, 4096];
/// raftline-log's batch record header and per-entry header (see the crate's format docs).
const BATCH_HEADER_BYTES: usize = 32;
const ENTRY_HEADER_BYTES: usize = 16;
/// Entries per append when a log is filled with sync off for the read and open rows.
const FILL_BATCH: usize = 256;
/// Payload of the entries of the read and open rows.
const SMALL_PAYLOAD: usize = 64;

/// Targets: ours at least this fraction of the plain loop, and this multiple of raft-engine.
const TARGET_OF_PLAIN: f64 = 0.90;
const TARGET_OVER_ANCHOR: f64 = 1.5;

/// Runs the benchmark and prints its report. Returns false if something failed.
pub fn run(args: LogArgs) -> bool {
    let args = Settings::from(args);
    match run_all(&args) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("bench log failed: {why}");
            false
        }
    }
}

/// The effective settings (after `--quick`).
struct Settings {
    secs: f64,
    warmup_secs: f64,
    quick: bool,
    base: PathBuf,
    read_entries: u64,
    open_entries: u64,
    opens: usize,
    only: Option<Part>,
    overwrite_loop: bool,
    /// The append rows to run: (entries per batch, payload bytes).
    append_rows: Vec<(usize, usize)>,
}

impl Settings {
    fn runs(&self, part: Part) -> bool {
        self.only.is_none_or(|p| p == part)
    }
}

impl From<LogArgs> for Settings {
    fn from(a: LogArgs) -> Settings {
        let base = a.dir.unwrap_or_else(default_base_dir);
        let append_rows = BATCH_SIZES
            .iter()
            .flat_map(|&b| PAYLOADS.iter().map(move |&p| (b, p)))
            .filter(|&(b, p)| a.batch.is_none_or(|x| x == b) && a.payload.is_none_or(|x| x == p))
            .collect();
        if a.quick {
            Settings {
                secs: 0.2,
                warmup_secs: 0.05,
                quick: true,
                base,
                read_entries: 100_000,
                open_entries: 100_000,
                opens: 1,
                only: a.only,
                overwrite_loop: a.overwrite_loop,
                append_rows,
            }
        } else {
            Settings {
                secs: a.secs.max(0.01),
                warmup_secs: a.warmup_secs.max(0.0),
                quick: false,
                base,
                read_entries: a.read_entries.max(1),
                open_entries: a.open_entries.max(1),
                opens: a.opens.max(1),
                only: a.only,
                overwrite_loop: a.overwrite_loop,
                append_rows,
            }
        }
    }
}

/// `bench-log` in the target directory this binary was built in (`target/release/xtask`),
/// or `target/bench-log` beside the workspace when that cannot be told.
fn default_base_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bench-log")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-log"))
}

fn run_all(args: &Settings) -> Result<(), String> {
    std::fs::create_dir_all(&args.base)
        .map_err(|e| format!("create {}: {e}", args.base.display()))?;
    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.base)
        .map_err(|e| format!("temporary directory in {}: {e}", args.base.display()))?;
    let dir = run_dir.path();

    let probe = fdatasync_probe(dir, args.secs.min(1.0))?;
    print_header(args, dir, &probe);

    if args.runs(Part::Appends) {
        appends(dir, args)?;
    }
    if args.runs(Part::Reads) {
        println!();
        let reads = read_row(dir, args)?;
        print_read_row(args, &reads);
    }
    if args.runs(Part::Open) {
        println!();
        open_rows(dir, args)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Append rows
// ---------------------------------------------------------------------------------------

fn appends(dir: &Path, args: &Settings) -> Result<(), String> {
    println!();
    println!("## 1-2. Durable appends: one call = one batch = one fdatasync, one thread");
    println!();
    println!(
        "plain = write(O_APPEND) + fdatasync of the same bytes as our batch record; \
         plain-overwrite (--overwrite-loop) = pwrite of them into a pre-written file + \
         fdatasync; MB/s counts payload bytes (10^6 B/s); latency is of one call; \"vs plain\" \
         is appends/s as a % of plain's; sync p50/p99 is the plain loop's fdatasync alone."
    );
    println!();
    println!(
        "| batch | payload | system          | appends/s |  batches/s |    MB/s |      p50 |      p99 |    p99.9 | vs plain | sync p50 / p99       |"
    );
    println!(
        "|------:|--------:|-----------------|----------:|-----------:|--------:|---------:|---------:|---------:|---------:|----------------------|"
    );
    let mut rows = Vec::new();
    for &(batch, payload) in &args.append_rows {
        let row = append_row(dir, batch, payload, args)?;
        print_append_row(&row);
        rows.push(row);
    }
    print_append_summary(&rows);
    Ok(())
}

/// One system under the append workload.
trait Appender {
    /// Appends the next batch durably.
    fn append_batch(&mut self) -> Result<(), String>;
    /// The fdatasync latencies (ns) of the recorded batches, if this system times them apart.
    fn sync_hist(&self) -> Option<&Histogram<u64>> {
        None
    }
    /// Forgets what the warm-up recorded.
    fn reset(&mut self) {}
}

/// raftline-log, sync on: one [`LogFile::append`] per batch.
struct Ours {
    log: LogFile,
    entries: Vec<Entry>,
    next: u64,
}

impl Ours {
    fn open(dir: &Path, batch: usize, payload: usize) -> Result<Ours, String> {
        let log = LogFile::open(dir, Options::default()).map_err(|e| format!("open: {e}"))?;
        let data = random_bytes(payload, 1);
        let entries = (0..batch)
            .map(|_| Entry::normal(Term(1), LogIndex(0), data.clone()))
            .collect();
        Ok(Ours {
            next: log.last_index().0 + 1,
            log,
            entries,
        })
    }
}

impl Appender for Ours {
    fn append_batch(&mut self) -> Result<(), String> {
        for (i, e) in self.entries.iter_mut().enumerate() {
            e.index = LogIndex(self.next + i as u64);
        }
        self.log
            .append(&self.entries)
            .map_err(|e| format!("raftline-log append: {e}"))?;
        self.next += self.entries.len() as u64;
        Ok(())
    }
}

/// The physical limit: `write` of one record's bytes to an `O_APPEND` file, then fdatasync.
struct Plain {
    file: File,
    buf: Vec<u8>,
    write: Histogram<u64>,
    sync: Histogram<u64>,
}

impl Plain {
    fn create(path: &Path, bytes: usize) -> Result<Plain, String> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Plain {
            file,
            buf: random_bytes(bytes, 2).to_vec(),
            write: new_hist(),
            sync: new_hist(),
        })
    }
}

impl Appender for Plain {
    fn append_batch(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        self.file
            .write_all(&self.buf)
            .map_err(|e| format!("plain write: {e}"))?;
        let t1 = Instant::now();
        self.file
            .sync_data()
            .map_err(|e| format!("plain fdatasync: {e}"))?;
        let t2 = Instant::now();
        self.write.saturating_record(nanos(t1 - t0));
        self.sync.saturating_record(nanos(t2 - t1));
        Ok(())
    }

    fn sync_hist(&self) -> Option<&Histogram<u64>> {
        Some(&self.sync)
    }

    fn reset(&mut self) {
        self.write.reset();
        self.sync.reset();
    }
}

/// The floor of the disk: `pwrite` of one record's bytes at growing offsets into a file that
/// was written with zeros and synced beforehand (wrapping around at its end), then fdatasync.
struct Overwrite {
    file: File,
    buf: Vec<u8>,
    offset: u64,
    len: u64,
}

impl Overwrite {
    /// The file holds at least this many bytes, and at least 16 records.
    const MIN_BYTES: u64 = 64 << 20;

    fn create(path: &Path, bytes: usize) -> Result<Overwrite, String> {
        let err = |e: std::io::Error| format!("prepare {}: {e}", path.display());
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        let records = (Self::MIN_BYTES / bytes as u64).max(16);
        let len = records * bytes as u64;
        let zeros = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while written < len {
            let n = zeros.len().min((len - written) as usize);
            file.write_all(&zeros[..n]).map_err(err)?;
            written += n as u64;
        }
        file.sync_all().map_err(err)?;
        Ok(Overwrite {
            file,
            buf: random_bytes(bytes, 2).to_vec(),
            offset: 0,
            len,
        })
    }
}

impl Appender for Overwrite {
    fn append_batch(&mut self) -> Result<(), String> {
        use std::os::unix::fs::FileExt as _;
        self.file
            .write_all_at(&self.buf, self.offset)
            .map_err(|e| format!("overwrite pwrite: {e}"))?;
        self.file
            .sync_data()
            .map_err(|e| format!("overwrite fdatasync: {e}"))?;
        self.offset = (self.offset + self.buf.len() as u64) % self.len;
        Ok(())
    }
}

/// What one system measured in one append row.
struct Side {
    system: &'static str,
    /// The system, until the row is finished.
    appender: Option<Box<dyn Appender>>,
    /// Latency of each measured call, ns.
    hist: Histogram<u64>,
    batches: u64,
    busy: Duration,
    /// The fdatasync latencies the system timed apart, once the row is finished.
    sync: Option<Histogram<u64>>,
}

impl Side {
    fn new(system: &'static str, appender: Box<dyn Appender>) -> Side {
        Side {
            system,
            appender: Some(appender),
            hist: new_hist(),
            batches: 0,
            busy: Duration::ZERO,
            sync: None,
        }
    }

    /// Keeps what the system timed apart and closes it.
    fn finish(&mut self) {
        if let Some(a) = self.appender.take() {
            self.sync = a.sync_hist().cloned();
        }
    }

    /// Appends one batch, recording its latency if `record`.
    fn one(&mut self, record: bool) -> Result<(), String> {
        let appender = self
            .appender
            .as_mut()
            .ok_or_else(|| format!("{} has finished", self.system))?;
        let t0 = Instant::now();
        appender.append_batch()?;
        let took = t0.elapsed();
        if record {
            self.hist.saturating_record(nanos(took));
            self.batches += 1;
            self.busy += took;
        }
        Ok(())
    }

    fn batches_per_sec(&self) -> f64 {
        self.batches as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// One append row: every system's figures for one batch size and payload.
struct AppendRow {
    batch: usize,
    payload: usize,
    sides: Vec<Side>,
}

impl AppendRow {
    fn side(&self, system: &str) -> Option<&Side> {
        self.sides.iter().find(|s| s.system == system)
    }

    fn appends_per_sec(&self, system: &str) -> Option<f64> {
        self.side(system)
            .map(|s| s.batches_per_sec() * self.batch as f64)
    }
}

const OURS: &str = "raftline-log";
const PLAIN: &str = "plain";
const OVERWRITE: &str = "plain-overwrite";
#[cfg(feature = "anchor-raft-engine")]
const ANCHOR: &str = "raft-engine";

/// The bytes raftline-log writes for one batch of `batch` entries of `payload` bytes.
fn record_bytes(batch: usize, payload: usize) -> usize {
    BATCH_HEADER_BYTES + batch * (ENTRY_HEADER_BYTES + payload.div_ceil(8) * 8)
}

fn append_row(
    dir: &Path,
    batch: usize,
    payload: usize,
    args: &Settings,
) -> Result<AppendRow, String> {
    let row_dir = dir.join(format!("append-{batch}x{payload}"));
    std::fs::create_dir_all(&row_dir).map_err(|e| format!("create {}: {e}", row_dir.display()))?;
    let mut sides = vec![
        Side::new(
            PLAIN,
            Box::new(Plain::create(
                &row_dir.join("plain.dat"),
                record_bytes(batch, payload),
            )?),
        ),
        Side::new(
            OURS,
            Box::new(Ours::open(&row_dir.join("ours"), batch, payload)?),
        ),
    ];
    if args.overwrite_loop {
        sides.push(Side::new(
            OVERWRITE,
            Box::new(Overwrite::create(
                &row_dir.join("overwrite.dat"),
                record_bytes(batch, payload),
            )?),
        ));
    }
    #[cfg(feature = "anchor-raft-engine")]
    sides.push(Side::new(
        ANCHOR,
        Box::new(anchor::RaftEngine::open(
            &row_dir.join("raft-engine"),
            batch,
            payload,
        )?),
    ));

    take_turns(&mut sides, args.warmup_secs, false)?;
    for s in &mut sides {
        if let Some(a) = s.appender.as_mut() {
            a.reset();
        }
    }
    take_turns(&mut sides, args.secs, true)?;
    // Close every file before removing the row's directory.
    for s in &mut sides {
        s.finish();
    }
    std::fs::remove_dir_all(&row_dir).map_err(|e| format!("remove {}: {e}", row_dir.display()))?;
    Ok(AppendRow {
        batch,
        payload,
        sides,
    })
}

/// The systems append one batch each in turn, in an order that rotates every round, until
/// about `secs` per system have passed. The virtual disk switches between fast and slow
/// moods within a fraction of a second; taking turns batch by batch gives every system the
/// same moods.
fn take_turns(sides: &mut [Side], secs: f64, record: bool) -> Result<(), String> {
    let n = sides.len();
    let end = Instant::now() + Duration::from_secs_f64(secs * n as f64);
    let mut round = 0;
    while Instant::now() < end {
        for k in 0..n {
            sides[(round + k) % n].one(record)?;
        }
        round += 1;
    }
    Ok(())
}

fn print_append_row(row: &AppendRow) {
    let plain = row.appends_per_sec(PLAIN).unwrap_or(0.0);
    for s in &row.sides {
        let appends = s.batches_per_sec() * row.batch as f64;
        let mb = appends * row.payload as f64 / 1e6;
        let vs = if s.system == PLAIN {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * appends / plain.max(1e-9))
        };
        let sync = s.sync.as_ref().map_or(String::new(), |h| {
            format!(
                "{} / {}",
                fmt_ns(h.value_at_quantile(0.5)),
                fmt_ns(h.value_at_quantile(0.99))
            )
        });
        println!(
            "| {:>5} | {:>7} | {:<15} | {:>9.0} | {:>10.0} | {:>7.1} | {:>8} | {:>8} | {:>8} | {:>8} | {:<20} |",
            row.batch,
            fmt_bytes(row.payload),
            s.system,
            appends,
            s.batches_per_sec(),
            mb,
            fmt_ns(s.hist.value_at_quantile(0.5)),
            fmt_ns(s.hist.value_at_quantile(0.99)),
            fmt_ns(s.hist.value_at_quantile(0.999)),
            vs,
            sync,
        );
    }
}

impl AppendRow {
    /// Ours as a fraction of the plain loop's appends/s.
    fn of_plain(&self) -> f64 {
        let plain = self.appends_per_sec(PLAIN).unwrap_or(0.0);
        self.appends_per_sec(OURS).unwrap_or(0.0) / plain.max(1e-9)
    }

    /// Ours as a multiple of raft-engine's appends/s.
    #[cfg(feature = "anchor-raft-engine")]
    fn over_anchor(&self) -> f64 {
        let anchor = self.appends_per_sec(ANCHOR).unwrap_or(0.0);
        self.appends_per_sec(OURS).unwrap_or(0.0) / anchor.max(1e-9)
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

fn print_append_summary(rows: &[AppendRow]) {
    let target_pct = TARGET_OF_PLAIN * 100.0;
    println!();
    #[cfg(feature = "anchor-raft-engine")]
    {
        println!(
            "| batch | payload | ours % of plain (target >= {target_pct:.0}%) | ours / raft-engine appends/s (target >= {TARGET_OVER_ANCHOR}x) |"
        );
        println!("|------:|--------:|------------------------------:|-------------------------------------------:|");
    }
    #[cfg(not(feature = "anchor-raft-engine"))]
    {
        println!("| batch | payload | ours % of plain (target >= {target_pct:.0}%) |");
        println!("|------:|--------:|------------------------------:|");
    }
    for row in rows {
        let of_plain = row.of_plain();
        let first = format!(
            "{:.1}% {}",
            100.0 * of_plain,
            mark(of_plain >= TARGET_OF_PLAIN)
        );
        #[cfg(feature = "anchor-raft-engine")]
        {
            let over = row.over_anchor();
            let second = format!("{over:.2}x {}", mark(over >= TARGET_OVER_ANCHOR));
            println!(
                "| {:>5} | {:>7} | {first:>29} | {second:>42} |",
                row.batch,
                fmt_bytes(row.payload),
            );
        }
        #[cfg(not(feature = "anchor-raft-engine"))]
        println!(
            "| {:>5} | {:>7} | {first:>29} |",
            row.batch,
            fmt_bytes(row.payload),
        );
    }
    println!();
    let plain_miss = rows
        .iter()
        .filter(|r| r.of_plain() < TARGET_OF_PLAIN)
        .count();
    println!(
        "rows below {target_pct:.0}% of the plain loop: {plain_miss} of {}",
        rows.len()
    );
    #[cfg(feature = "anchor-raft-engine")]
    {
        let anchor_miss = rows
            .iter()
            .filter(|r| r.over_anchor() < TARGET_OVER_ANCHOR)
            .count();
        println!(
            "rows below {TARGET_OVER_ANCHOR}x raft-engine: {anchor_miss} of {}",
            rows.len()
        );
    }
}

/// The plain loop's fdatasync latency for a 1 x 64 B record, measured before the table.
struct Probe {
    sync: Histogram<u64>,
    write: Histogram<u64>,
    secs: f64,
}

fn fdatasync_probe(dir: &Path, secs: f64) -> Result<Probe, String> {
    let path = dir.join("probe.dat");
    let mut plain = Plain::create(&path, record_bytes(1, 64))?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        plain.append_batch()?;
    }
    drop(plain.file);
    std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
    Ok(Probe {
        sync: plain.sync,
        write: plain.write,
        secs,
    })
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

struct ReadResult {
    hist: Histogram<u64>,
    reads: u64,
    busy: Duration,
    fill_secs: f64,
    timer_ns: u64,
}

/// Random single-entry reads over a log of `read_entries` entries of 64 B.
fn read_row(dir: &Path, args: &Settings) -> Result<ReadResult, String> {
    let log_dir = dir.join("read");
    let n = args.read_entries;
    let started = Instant::now();
    let log = fill_ours(&log_dir, n)?;
    let fill_secs = started.elapsed().as_secs_f64();
    let mut rng = SplitMix(0x5eed);
    let mut hist = new_hist();
    let (mut reads, mut busy) = (0u64, Duration::ZERO);
    let measure = Duration::from_secs_f64(args.secs);
    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup_secs);
    let mut measuring = false;
    let mut end = Instant::now() + measure;
    loop {
        // 256 reads between looks at the clock for the end of a phase.
        for _ in 0..256 {
            let i = 1 + rng.next() % n;
            let t0 = Instant::now();
            let got = log
                .entries(LogIndex(i), LogIndex(i + 1), usize::MAX)
                .map_err(|e| format!("read {i}: {e}"))?;
            let took = t0.elapsed();
            if got.len() != 1 || got[0].index != LogIndex(i) {
                return Err(format!("read {i} returned {} entries", got.len()));
            }
            if measuring {
                hist.saturating_record(nanos(took));
                reads += 1;
                busy += took;
            }
        }
        let now = Instant::now();
        if !measuring && now >= warmup_end {
            measuring = true;
            end = now + measure;
        } else if measuring && now >= end {
            break;
        }
    }
    drop(log);
    std::fs::remove_dir_all(&log_dir).map_err(|e| format!("remove {}: {e}", log_dir.display()))?;
    Ok(ReadResult {
        hist,
        reads,
        busy,
        fill_secs,
        timer_ns: timer_overhead_ns(),
    })
}

fn print_read_row(args: &Settings, r: &ReadResult) {
    println!(
        "## 3. Random reads: entries(i, i+1, usize::MAX), i uniform over a log of {} x 64 B \
         (filled in {:.1} s with sync off; page cache warm; one thread)",
        args.read_entries, r.fill_secs
    );
    println!();
    println!("| reads/s   |      p50 |      p99 |    p99.9 |      max | reads measured |");
    println!("|----------:|---------:|---------:|---------:|---------:|---------------:|");
    println!(
        "| {:>9.0} | {:>8} | {:>8} | {:>8} | {:>8} | {:>14} |",
        r.reads as f64 / r.busy.as_secs_f64().max(1e-9),
        fmt_ns(r.hist.value_at_quantile(0.5)),
        fmt_ns(r.hist.value_at_quantile(0.99)),
        fmt_ns(r.hist.value_at_quantile(0.999)),
        fmt_ns(r.hist.max()),
        r.reads
    );
    println!();
    println!(
        "(each read is timed alone: the figures include about {} of clock overhead per read)",
        fmt_ns(r.timer_ns)
    );
}

// ---------------------------------------------------------------------------------------
// Open time
// ---------------------------------------------------------------------------------------

/// Fills a fresh raftline-log log in `dir` with `n` entries of 64 B, sync off.
fn fill_ours(dir: &Path, n: u64) -> Result<LogFile, String> {
    let options = Options {
        sync: false,
        ..Options::default()
    };
    let log = LogFile::open(dir, options).map_err(|e| format!("open {}: {e}", dir.display()))?;
    let data = random_bytes(SMALL_PAYLOAD, 3);
    let mut batch = Vec::with_capacity(FILL_BATCH);
    let mut next = 1u64;
    while next <= n {
        batch.clear();
        let last = (next + FILL_BATCH as u64 - 1).min(n);
        batch.extend((next..=last).map(|i| Entry::normal(Term(1), LogIndex(i), data.clone())));
        log.append(&batch).map_err(|e| format!("fill: {e}"))?;
        next = last + 1;
    }
    Ok(log)
}

/// Open times of one system: every run, in seconds.
struct OpenTimes {
    system: &'static str,
    runs: Vec<f64>,
}

impl OpenTimes {
    fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.runs.iter().copied().fold(0.0, f64::max)
    }
}

fn open_rows(dir: &Path, args: &Settings) -> Result<(), String> {
    let n = args.open_entries;
    println!(
        "## 4. Open (recovery) of a log of {n} x 64 B entries, written in batches of {FILL_BATCH} \
         with sync off, closed, then opened {} time(s) (page cache warm)",
        args.opens
    );
    println!();
    let mut results = Vec::new();

    let ours_dir = dir.join("open-ours");
    drop(fill_ours(&ours_dir, n)?);
    let mut ours = OpenTimes {
        system: OURS,
        runs: Vec::new(),
    };
    for _ in 0..args.opens {
        let t0 = Instant::now();
        let log = LogFile::open(&ours_dir, Options::default()).map_err(|e| format!("open: {e}"))?;
        ours.runs.push(t0.elapsed().as_secs_f64());
        if log.last_index() != LogIndex(n) {
            return Err(format!(
                "reopened log ends at {}, not {n}",
                log.last_index()
            ));
        }
    }
    std::fs::remove_dir_all(&ours_dir).map_err(|e| format!("remove: {e}"))?;
    results.push(ours);

    #[cfg(feature = "anchor-raft-engine")]
    {
        let re_dir = dir.join("open-raft-engine");
        anchor::fill(&re_dir, n, SMALL_PAYLOAD)?;
        let mut re = OpenTimes {
            system: ANCHOR,
            runs: Vec::new(),
        };
        for _ in 0..args.opens {
            re.runs.push(anchor::timed_open(&re_dir, n)?);
        }
        std::fs::remove_dir_all(&re_dir).map_err(|e| format!("remove: {e}"))?;
        results.push(re);
    }

    println!(
        "| system        |       min |    median |       max | entries/s (median) | ours faster by |"
    );
    println!(
        "|---------------|----------:|----------:|----------:|-------------------:|---------------:|"
    );
    let ours_median = results[0].median();
    for r in &results {
        let faster = if r.system == OURS {
            "-".to_string()
        } else {
            let x = r.median() / ours_median;
            format!("{x:.2}x {}", mark(x >= TARGET_OVER_ANCHOR))
        };
        println!(
            "| {:<13} | {:>9} | {:>9} | {:>9} | {:>18.0} | {:>14} |",
            r.system,
            fmt_secs(r.min()),
            fmt_secs(r.median()),
            fmt_secs(r.max()),
            n as f64 / r.median(),
            faster
        );
    }
    if cfg!(feature = "anchor-raft-engine") {
        println!();
        println!("(\"ours faster by\" is raft-engine's median open time / ours; target >= {TARGET_OVER_ANCHOR}x)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The anchor: raft-engine
// ---------------------------------------------------------------------------------------

/// TiKV's raft-engine, driven like our log: one region, raft-rs `Entry`s, one
/// `Engine::write` per batch.
#[cfg(feature = "anchor-raft-engine")]
mod anchor {
    use std::path::Path;
    use std::time::Instant;

    use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};
    use tikv_raft_proto::eraftpb::Entry;

    use super::{random_bytes, Appender, FILL_BATCH};

    /// The version `xtask/Cargo.toml` asks for (Cargo.lock pins the one built).
    pub(super) const VERSION: &str = "0.4.2";

    /// The one region every entry goes to.
    const REGION: u64 = 1;

    /// Tells raft-engine where the index of an `Entry` is.
    #[derive(Clone)]
    struct EntryExt;

    impl MessageExt for EntryExt {
        type Entry = Entry;

        fn index(e: &Entry) -> u64 {
            e.index
        }
    }

    /// raft-engine's default configuration in `dir`, with batch compression off (ours does
    /// not compress, and the payloads are random).
    fn config(dir: &Path) -> Config {
        Config {
            dir: dir.to_string_lossy().into_owned(),
            batch_compression_threshold: ReadableSize(0),
            ..Config::default()
        }
    }

    fn open(dir: &Path) -> Result<Engine, String> {
        Engine::open(config(dir)).map_err(|e| format!("raft-engine open {}: {e}", dir.display()))
    }

    fn entries(batch: usize, payload: usize, seed: u64) -> Vec<Entry> {
        let data = random_bytes(payload, seed);
        (0..batch)
            .map(|_| Entry {
                term: 1,
                data: data.clone(),
                ..Entry::default()
            })
            .collect()
    }

    /// One `Engine::write(batch, sync = true)` per batch.
    pub(super) struct RaftEngine {
        engine: Engine,
        batch: LogBatch,
        entries: Vec<Entry>,
        next: u64,
    }

    impl RaftEngine {
        pub(super) fn open(dir: &Path, batch: usize, payload: usize) -> Result<RaftEngine, String> {
            let engine = open(dir)?;
            Ok(RaftEngine {
                next: engine.last_index(REGION).unwrap_or(0) + 1,
                engine,
                batch: LogBatch::with_capacity(batch),
                entries: entries(batch, payload, 4),
            })
        }
    }

    impl Appender for RaftEngine {
        fn append_batch(&mut self) -> Result<(), String> {
            for (i, e) in self.entries.iter_mut().enumerate() {
                e.index = self.next + i as u64;
            }
            self.batch
                .add_entries::<EntryExt>(REGION, &self.entries)
                .map_err(|e| format!("raft-engine add_entries: {e}"))?;
            self.engine
                .write(&mut self.batch, true)
                .map_err(|e| format!("raft-engine write: {e}"))?;
            self.next += self.entries.len() as u64;
            Ok(())
        }
    }

    /// Fills a fresh engine in `dir` with `n` entries of `payload` bytes, sync off, and closes
    /// it.
    pub(super) fn fill(dir: &Path, n: u64, payload: usize) -> Result<(), String> {
        let engine = open(dir)?;
        let mut template = entries(1, payload, 5).pop().expect("one entry");
        let mut batch = LogBatch::with_capacity(FILL_BATCH);
        let mut chunk = Vec::with_capacity(FILL_BATCH);
        let mut next = 1u64;
        while next <= n {
            chunk.clear();
            let last = (next + FILL_BATCH as u64 - 1).min(n);
            for i in next..=last {
                template.index = i;
                chunk.push(template.clone());
            }
            batch
                .add_entries::<EntryExt>(REGION, &chunk)
                .map_err(|e| format!("raft-engine add_entries: {e}"))?;
            engine
                .write(&mut batch, false)
                .map_err(|e| format!("raft-engine write: {e}"))?;
            next = last + 1;
        }
        Ok(())
    }

    /// Opens the engine in `dir`, checks it holds `n` entries, and returns the seconds the
    /// open took.
    pub(super) fn timed_open(dir: &Path, n: u64) -> Result<f64, String> {
        let t0 = Instant::now();
        let engine = open(dir)?;
        let secs = t0.elapsed().as_secs_f64();
        let last = engine.last_index(REGION);
        if last != Some(n) {
            return Err(format!("reopened raft-engine ends at {last:?}, not {n}"));
        }
        Ok(secs)
    }
}

// ---------------------------------------------------------------------------------------
// Header, machine facts, helpers
// ---------------------------------------------------------------------------------------

fn print_header(args: &Settings, dir: &Path, probe: &Probe) {
    let profile = if cfg!(debug_assertions) {
        "debug (debug assertions on)"
    } else {
        "release (debug assertions off)"
    };
    println!("# cargo xtask bench log");
    println!("date (UTC):   {}", utc_now());
    println!("cpu:          {}", cpu_model());
    println!(
        "cores:        {} (available parallelism; every row runs on one thread)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("memory:       {}", mem_total());
    println!(
        "kernel:       {}",
        read_trimmed("/proc/sys/kernel/osrelease")
    );
    println!("directory:    {}", dir.display());
    println!("file system:  {}", file_system_of(dir));
    println!("build:        {profile}");
    println!(
        "fsync:        on for the append rows (Options::default(); one fdatasync per append call, \
         so entries per fdatasync = the batch size); off only to fill the logs of rows 3 and 4"
    );
    println!(
        "duration:     {:.2} s warm-up + {:.2} s measured per system and append row, the systems \
         taking turns batch by batch; {:.2} s + {:.2} s for reads{}",
        args.warmup_secs,
        args.secs,
        args.warmup_secs,
        args.secs,
        if args.quick { " (--quick)" } else { "" }
    );
    println!(
        "fdatasync:    plain loop, 1 x 64 B record (112 B) for {:.1} s before the table: \
         p50 {}, p99 {}, p99.9 {}, max {} ({} syncs; write p50 {})",
        probe.secs,
        fmt_ns(probe.sync.value_at_quantile(0.5)),
        fmt_ns(probe.sync.value_at_quantile(0.99)),
        fmt_ns(probe.sync.value_at_quantile(0.999)),
        fmt_ns(probe.sync.max()),
        probe.sync.len(),
        fmt_ns(probe.write.value_at_quantile(0.5)),
    );
    #[cfg(feature = "anchor-raft-engine")]
    println!(
        "anchor:       raft-engine {} (crates.io), default Config but batch_compression_threshold \
         = 0 (no LZ4), one region, raft-rs eraftpb::Entry (raft-proto 0.7, rust-protobuf 2)",
        anchor::VERSION
    );
    #[cfg(not(feature = "anchor-raft-engine"))]
    println!(
        "anchor:       raft-engine not built; run `cargo run -p xtask --release --features \
         anchor-raft-engine -- bench log` for it"
    );
}

fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `len` pseudo-random (incompressible) bytes.
fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut rng = SplitMix(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// SplitMix64: a small, fast pseudo-random generator for payloads and read indexes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The median cost of one `Instant::now()` pair plus `elapsed()`, ns.
fn timer_overhead_ns() -> u64 {
    let mut hist = new_hist();
    for _ in 0..100_000 {
        let t0 = Instant::now();
        let took = t0.elapsed();
        hist.saturating_record(nanos(took));
    }
    hist.value_at_quantile(0.5)
}

fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn fmt_secs(secs: f64) -> String {
    fmt_ns((secs * 1e9) as u64)
}

fn fmt_bytes(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_matches_the_format() {
        // One 64 B entry: 32 B batch header + 16 B entry header + 64 B payload.
        assert_eq!(record_bytes(1, 64), 112);
        assert_eq!(record_bytes(16, 256), 32 + 16 * 272);
        // Payloads are padded to 8 bytes.
        assert_eq!(record_bytes(2, 5), 32 + 2 * 24);
    }

    #[test]
    fn record_bytes_match_what_the_log_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            sync: false,
            ..Options::default()
        };
        let log = LogFile::open(dir.path(), options).expect("open");
        let data = random_bytes(4096, 9);
        let entries: Vec<Entry> = (1..=16)
            .map(|i| Entry::normal(Term(1), LogIndex(i), data.clone()))
            .collect();
        log.append(&entries).expect("append");
        drop(log);
        let segment = std::fs::read(dir.path().join("00000000000000000001.seg")).expect("read");
        // The record follows the 64-byte segment header and ends with a random payload, so
        // its end is the last non-zero byte (give or take a final zero byte or few).
        let end = segment.iter().rposition(|&b| b != 0).expect("data") + 1;
        let expected = 64 + record_bytes(16, 4096);
        assert!(end <= expected && end + 8 > expected, "{end} vs {expected}");
    }

    #[test]
    fn quick_settings_are_small() {
        let s = Settings::from(LogArgs {
            secs: 2.0,
            warmup_secs: 0.3,
            quick: true,
            dir: None,
            read_entries: 1_000_000,
            open_entries: 1_000_000,
            opens: 3,
            overwrite_loop: false,
            only: None,
            batch: Some(16),
            payload: None,
        });
        assert!(s.secs <= 0.2 && s.read_entries <= 100_000 && s.opens == 1);
        assert_eq!(s.append_rows, vec![(16, 64), (16, 256), (16, 4096)]);
    }
}

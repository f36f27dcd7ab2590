//! Crash images: the files a machine crash may leave in a data directory, rebuilt from the
//! file operations a [`Recorder`](crate::Recorder) saw (in the style of ALICE, Pillai et al.,
//! OSDI 2014).
//!
//! The model: a write or length change is durable once its file is synced after it; a
//! creation or removal once the directory is synced after it. Whatever is durable survives a
//! crash. Of the rest, any part may survive, in any combination: a write may reach the disk
//! whole, not at all, or torn, some of its sectors written and others not.

use std::collections::BTreeMap;
use std::path::Path;

use raftline_core::Rng;

use crate::Op;

/// The files of a directory: name to contents.
pub type Files = BTreeMap<String, Vec<u8>>;

/// A disk writes whole sectors: a torn write leaves each sector of it old or new.
pub const SECTOR_BYTES: usize = 512;

/// Which operations of `ops` are durable: a write or length change once its file is synced, a
/// creation or removal once the directory is synced.
pub fn durable(ops: &[Op]) -> Vec<bool> {
    let mut out = vec![false; ops.len()];
    let mut synced_files: BTreeMap<&str, bool> = BTreeMap::new();
    let mut dir_synced = false;
    for (i, op) in ops.iter().enumerate().rev() {
        match op {
            Op::Sync(f) => {
                synced_files.insert(f, true);
                out[i] = true;
            }
            Op::SyncDir => {
                dir_synced = true;
                out[i] = true;
            }
            Op::Write { file, .. } | Op::SetLen(file, _) => {
                out[i] = synced_files.get(file.as_str()).copied().unwrap_or(false);
            }
            Op::Create(_) | Op::Remove(_) => out[i] = dir_synced,
        }
    }
    out
}

/// A family of crash states, for exhaustive crash tests.
#[derive(Clone, Copy, Debug)]
pub enum CrashVariant {
    /// Only what was synced.
    SyncedOnly,
    /// Every operation.
    Everything,
    /// Synced data, plus each unsynced operation with probability 1/2; an unsynced write by
    /// aligned chunks of `granularity` bytes, each with probability 1/2.
    Subset {
        /// The chunk size of torn writes.
        granularity: usize,
        /// The seed of the choices.
        seed: u64,
    },
    /// Synced data; unsynced writes turned to zeros.
    ZeroedTail,
    /// Every operation, then one bit flipped inside an unsynced write.
    FlippedTail {
        /// The seed of the choice.
        seed: u64,
    },
}

/// Writes `data` at `offset` of `file`, if the file exists, growing it as needed.
fn write(files: &mut Files, file: &str, offset: u64, data: &[u8]) {
    if let Some(bytes) = files.get_mut(file) {
        let end = offset as usize + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
    }
}

/// Writes each aligned chunk of `granularity` bytes of a write with probability 1/2. Returns
/// whether the write was torn (some chunks written, others not).
fn write_torn(
    files: &mut Files,
    op: (&str, u64, &[u8]),
    granularity: usize,
    rng: &mut Rng,
) -> bool {
    let (file, offset, data) = op;
    let mut at = offset as usize;
    let end = at + data.len();
    let (mut written, mut skipped) = (false, false);
    while at < end {
        let chunk_end = ((at / granularity + 1) * granularity).min(end);
        if rng.chance(0.5) {
            let chunk = &data[at - offset as usize..chunk_end - offset as usize];
            write(files, file, at as u64, chunk);
            written = true;
        } else {
            skipped = true;
        }
        at = chunk_end;
    }
    written && skipped
}

/// Applies one operation whole.
fn apply(files: &mut Files, op: &Op) {
    match op {
        Op::Create(f) => {
            files.insert(f.clone(), Vec::new());
        }
        Op::Remove(f) => {
            files.remove(f);
        }
        Op::SetLen(f, len) => {
            if let Some(b) = files.get_mut(f) {
                b.resize(*len as usize, 0);
            }
        }
        Op::Write { file, offset, data } => write(files, file, *offset, data),
        Op::Sync(_) | Op::SyncDir => {}
    }
}

/// The files a crash after `ops` may leave, per `variant`, starting from `base` (the durable
/// files the operations were recorded on: empty for a new directory).
pub fn build_image(base: &Files, ops: &[Op], variant: CrashVariant) -> Files {
    let durable = durable(ops);
    let mut rng = Rng::new(match variant {
        CrashVariant::Subset { seed, .. } | CrashVariant::FlippedTail { seed } => seed,
        _ => 0,
    });
    let mut files = base.clone();
    let mut unsynced_regions = Vec::new();
    for (op, &is_durable) in ops.iter().zip(&durable) {
        let applied = match variant {
            CrashVariant::SyncedOnly | CrashVariant::ZeroedTail => is_durable,
            CrashVariant::Everything | CrashVariant::FlippedTail { .. } => true,
            CrashVariant::Subset { .. } => is_durable || rng.chance(0.5),
        };
        let Op::Write { file, offset, data } = op else {
            if applied {
                apply(&mut files, op);
            }
            continue;
        };
        match variant {
            CrashVariant::Subset { granularity, .. } if !is_durable => {
                write_torn(&mut files, (file, *offset, data), granularity, &mut rng);
            }
            CrashVariant::ZeroedTail if !is_durable => {
                write(&mut files, file, *offset, &vec![0u8; data.len()]);
            }
            _ if applied => {
                write(&mut files, file, *offset, data);
                if !is_durable {
                    unsynced_regions.push((file.clone(), *offset, data.len()));
                }
            }
            _ => {}
        }
    }
    if let CrashVariant::FlippedTail { .. } = variant {
        flip_one_bit(&mut files, &unsynced_regions, &mut rng);
    }
    files
}

/// Flips one bit inside one of `regions` (file, offset, length) of a file that exists.
fn flip_one_bit(files: &mut Files, regions: &[(String, u64, usize)], rng: &mut Rng) {
    let candidates: Vec<_> = regions
        .iter()
        .filter(|(f, _, len)| *len > 0 && files.contains_key(f))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let (f, offset, len) = candidates[rng.below(candidates.len() as u64) as usize];
    let at = *offset as usize + rng.below(*len as u64) as usize;
    let bytes = files.get_mut(f).expect("present");
    if at < bytes.len() {
        bytes[at] ^= 1 << rng.below(8);
    }
}

/// One random state a machine crash after `ops` may leave, starting from `base` (the durable
/// files the operations were recorded on). Everything durable survives (see [`durable`]).
/// Each unsynced creation, removal or length change survives with probability 1/2; each
/// unsynced write is lost, written whole, or torn (each of its [`SECTOR_BYTES`] sectors
/// written with probability 1/2), with probability 1/3 each.
pub fn crash_image(base: &Files, ops: &[Op], rng: &mut Rng) -> Files {
    crash_image_counted(base, ops, rng).0
}

/// What [`crash_image_counted`] did with the unsynced operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageCounts {
    /// Unsynced writes.
    pub unsynced_writes: u64,
    /// Unsynced writes lost entirely.
    pub writes_lost: u64,
    /// Unsynced writes torn: some of their sectors written, others not.
    pub writes_torn: u64,
}

/// [`crash_image`], and what it did with the unsynced writes.
pub fn crash_image_counted(base: &Files, ops: &[Op], rng: &mut Rng) -> (Files, ImageCounts) {
    let durable = durable(ops);
    let mut files = base.clone();
    let mut counts = ImageCounts::default();
    for (op, &is_durable) in ops.iter().zip(&durable) {
        match op {
            Op::Write { file, offset, data } if !is_durable => {
                counts.unsynced_writes += 1;
                match rng.below(3) {
                    0 => counts.writes_lost += 1,
                    1 => write(&mut files, file, *offset, data),
                    _ => {
                        let torn = write_torn(&mut files, (file, *offset, data), SECTOR_BYTES, rng);
                        counts.writes_torn += u64::from(torn);
                    }
                }
            }
            _ if is_durable || rng.chance(0.5) => apply(&mut files, op),
            _ => {}
        }
    }
    (files, counts)
}

/// Makes `dir` hold exactly `files` (creating it if needed): every other file in it is
/// removed.
pub fn write_image(dir: &Path, files: &Files) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

/// The files of `dir` (not its sub-directories).
pub fn read_image(dir: &Path) -> std::io::Result<Files> {
    let mut files = Files::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(entry.path())?);
        }
    }
    Ok(files)
}

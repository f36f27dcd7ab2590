//! Small filesystems for the disk nemesis: each slot's home (`OUT/nI`, which holds its data
//! directories) is an ext4 image of [`IMAGE_BYTES`] (`OUT/rkvj-disk-nI.img`, made with
//! `mkfs.ext4 -m 0`: no blocks reserved for root, which the members run as) mounted with
//! `mount -o loop`. [`fill`] takes every free block with a ballast file (`fallocate`, then
//! smaller and smaller pieces down to one block), so that the member's next write that needs
//! a block fails with ENOSPC; [`free`] removes it.
//!
//! Why a loop-mounted ext4 and not a size-limited tmpfs: raftline-log maps its segment files
//! (read-only) and reads them through the map. On ext4 a read of a hole maps the zero page,
//! and a write that needs a block fails with ENOSPC in `pwrite`/`fallocate`, as on the disks
//! raft-kv runs on. On tmpfs a fault on a hole of a shared mapping allocates a page, so a full
//! tmpfs turns a read into SIGBUS, and its fsync is a no-op: it would test another machine.
//! Without loop devices (not root, no `/dev/loop-control`, no `mkfs.ext4`) the run goes
//! without the disk nemesis and says so once.
//!
//! [`Disks`]' `Drop` unmounts every image (the members are dead by then) and removes it;
//! `mount -o loop` sets the loop device's autoclear flag, so the unmount detaches it.
//! [`cleanup`] does the same for what a killed run left: every loop device whose backing
//! file is named `rkvj-disk-...`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The prefix of the image files (how [`cleanup`] knows ours).
pub const IMAGE_PREFIX: &str = "rkvj-disk-";

/// The size of each slot's filesystem image.
pub const IMAGE_BYTES: u64 = 128 << 20;

/// The ballast file's name, in the filesystem's root.
const BALLAST: &str = "rkvj-ballast";

/// The smallest piece of ballast [`fill`] tries to add (one ext4 block).
const BALLAST_PIECE_MIN: u64 = 4096;

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The mounted images of a run; unmounted and removed when dropped.
pub struct Disks {
    /// (image, mount point) of each mounted slot.
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl Disks {
    /// Makes and mounts an image at each of `homes` (images beside them in `dir`). Removes
    /// leftovers of earlier runs first; on a failure, what was made is removed.
    pub fn create(dir: &Path, homes: &[PathBuf]) -> Result<Disks, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("loop mounts need root".into());
        }
        cleanup();
        let mut disks = Disks { mounts: Vec::new() };
        for home in homes {
            let name = home.file_name().map_or("x".into(), |n| n.to_string_lossy());
            let image = dir.join(format!("{IMAGE_PREFIX}{name}.img"));
            make_image(&image)?;
            std::fs::create_dir_all(home).map_err(|e| format!("{}: {e}", home.display()))?;
            let (img, mnt) = (image.to_string_lossy(), home.to_string_lossy());
            if let Err(e) = run("mount", &["-o", "loop", &img, &mnt]) {
                let _ = std::fs::remove_file(&image);
                return Err(e);
            }
            disks.mounts.push((image, home.clone()));
        }
        Ok(disks)
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for (image, home) in self.mounts.drain(..) {
            unmount(&home.to_string_lossy());
            let _ = std::fs::remove_file(image);
        }
    }
}

/// A sparse file of [`IMAGE_BYTES`] with an ext4 filesystem on it.
fn make_image(image: &Path) -> Result<(), String> {
    let file = std::fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
    file.set_len(IMAGE_BYTES)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    drop(file);
    let made = run(
        "mkfs.ext4",
        &["-q", "-F", "-m", "0", &image.to_string_lossy()],
    );
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made
}

/// Unmounts `point` (lazily if it is still busy).
fn unmount(point: &str) {
    if run("umount", &[point]).is_err() {
        let _ = run("umount", &["-l", point]);
    }
}

/// Fills the filesystem mounted at `home` with a ballast file until no block is free;
/// returns the ballast's size.
pub fn fill(home: &Path) -> Result<u64, String> {
    let path = home.join(BALLAST);
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut len = file.metadata().map_or(0, |m| m.len());
    let free = rustix::fs::statvfs(home).map_err(|e| format!("{}: {e}", home.display()))?;
    let mut piece = (free.f_bfree * free.f_frsize).max(BALLAST_PIECE_MIN);
    while piece >= BALLAST_PIECE_MIN {
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), len, piece) {
            Ok(()) => len += piece,
            Err(_) => piece /= 2,
        }
    }
    let _ = rustix::fs::syncfs(&file);
    Ok(len)
}

/// Removes the ballast of the filesystem mounted at `home`.
pub fn free(home: &Path) -> Result<(), String> {
    let path = home.join(BALLAST);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
    }
    if let Ok(dir) = std::fs::File::open(home) {
        let _ = rustix::fs::syncfs(&dir);
    }
    Ok(())
}

/// Bytes free on the filesystem mounted at `home` (for the fault detail).
pub fn free_bytes(home: &Path) -> u64 {
    rustix::fs::statvfs(home).map_or(0, |s| s.f_bfree * s.f_frsize)
}

/// Loop devices and their backing files, from `losetup -l -n --raw -O NAME,BACK-FILE`.
fn parse_losetup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (dev, back) = l.trim().split_once(' ')?;
            let back = back.trim().trim_end_matches(" (deleted)");
            Some((dev.to_string(), unescape(back)))
        })
        .collect()
}

/// The mount points of `device` in `/proc/mounts`' text.
fn mount_points(mounts: &str, device: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let (dev, point) = (fields.next()?, fields.next()?);
            (dev == device).then(|| unescape(point))
        })
        .collect()
}

/// Undoes the octal (`\040`) and hex (`\x20`) escapes of `/proc/mounts` and `losetup --raw`.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let (radix, len) = match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'x')) => (16, 2),
            (b'\\', Some(c)) if c.is_ascii_digit() => (8, 3),
            _ => (0, 0),
        };
        let start = i + if radix == 16 { 2 } else { 1 };
        let code = (radix != 0)
            .then(|| s.get(start..start + len))
            .flatten()
            .and_then(|d| u8::from_str_radix(d, radix).ok());
        match code {
            Some(c) => {
                out.push(c);
                i = start + len;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a backing file is one of our images.
fn is_ours(back: &str) -> bool {
    Path::new(back)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(IMAGE_PREFIX))
}

/// Unmounts and detaches every loop device backed by one of our images, and removes the
/// image. Returns what it removed.
pub fn cleanup() -> Vec<String> {
    let Ok(out) = Command::new("losetup")
        .args(["-l", "-n", "--raw", "-O", "NAME,BACK-FILE"])
        .output()
    else {
        return Vec::new();
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut removed = Vec::new();
    for (dev, back) in parse_losetup(&String::from_utf8_lossy(&out.stdout)) {
        if !is_ours(&back) {
            continue;
        }
        for point in mount_points(&mounts, &dev) {
            unmount(&point);
            removed.push(format!("mount {point}"));
        }
        if run("losetup", &["-d", &dev]).is_ok() {
            removed.push(format!("loop device {dev}"));
        }
        if std::fs::remove_file(&back).is_ok() {
            removed.push(format!("image {back}"));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losetup_and_mounts_are_parsed_and_only_our_images_count() {
        let losetup = "/dev/loop0 /tmp/run/rkvj-disk-n1.img\n\
                       /dev/loop1 /var/lib/other.img\n\
                       /dev/loop2 /tmp/my\\x20run/rkvj-disk-n2.img (deleted)\n";
        let loops = parse_losetup(losetup);
        assert_eq!(loops.len(), 3);
        assert_eq!(loops[2].1, "/tmp/my run/rkvj-disk-n2.img");
        let ours: Vec<_> = loops.iter().filter(|(_, b)| is_ours(b)).collect();
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[0].0, "/dev/loop0");
        let mounts = "/dev/vda / ext4 rw 0 0\n\
                      /dev/loop0 /tmp/run/n1 ext4 rw 0 0\n\
                      /dev/loop2 /tmp/my\\040run/n2 ext4 rw 0 0\n\
                      /dev/loop10 /elsewhere ext4 rw 0 0\n";
        assert_eq!(mount_points(mounts, "/dev/loop0"), vec!["/tmp/run/n1"]);
        assert_eq!(mount_points(mounts, "/dev/loop2"), vec!["/tmp/my run/n2"]);
        assert!(mount_points(mounts, "/dev/loop1").is_empty());
    }

    #[test]
    fn unescape_leaves_plain_text_and_odd_backslashes_alone() {
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("a\\040b\\x41"), "a bA");
        assert_eq!(unescape("end\\"), "end\\");
        assert_eq!(unescape("\\xZZ"), "\\xZZ");
    }
}

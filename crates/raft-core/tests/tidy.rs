//! Tidy checks: raftline-core stays a deterministic state machine with no I/O of its own.
//!
//! The core must not name files, sockets, clocks, threads, global randomness or an async
//! runtime. A new dependency on any of them fails here, not in review.

use std::path::{Path, PathBuf};

/// Names that would give the core I/O, a clock, threads or global randomness.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "std::env",
    "Instant",
    "SystemTime",
    "thread_rng",
    "rand::",
    "tokio",
    "async_std",
    "std::io::stdin",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 5, "found only {files:?}");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable source file");
            (p, text)
        })
        .collect()
}

#[test]
fn core_names_no_io_clock_thread_or_runtime() {
    let mut hits = Vec::new();
    for (path, text) in sources() {
        for (n, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                if line.contains(word) {
                    hits.push(format!(
                        "{}:{}: names `{word}`: {}",
                        path.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "raftline-core must stay free of I/O, clocks and threads:\n{}",
        hits.join("\n")
    );
}

#[test]
fn core_depends_on_no_runtime() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("readable manifest");
    // The `[dependencies]` table only: the guide's doctests may use a runtime
    // (dev-dependencies), the library may not.
    let start = manifest
        .find("\n[dependencies]")
        .expect("a [dependencies] table");
    let table = &manifest[start + 1..];
    let dependencies = match table[1..].find("\n[") {
        Some(end) => &table[..end + 1],
        None => table,
    };
    for word in ["tokio", "async-std", "smol", "rand", "memmap2"] {
        let dependency = format!("\n{word}");
        assert!(
            !dependencies.contains(&dependency),
            "raftline-core must not depend on {word}"
        );
    }
}

#[test]
fn every_module_has_a_doc_comment() {
    for (path, text) in sources() {
        assert!(
            text.trim_start().starts_with("//!"),
            "{} has no //! module documentation at its top",
            path.display()
        );
    }
}

//! `--target`: what the members are. raft-kv (the default), etcd (Debian's `etcd-server`,
//! started with the same flags, the same addresses and the same heartbeat and election
//! timeout, and killed, paused and asked who leads through the same gRPC API), or both, one
//! after the other with the same seed, followed by a side-by-side table of their
//! availability figures (raft-kv's over etcd's).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::availability::Availability;

/// The etcd binary the comparison expects (Debian's `etcd-server`, 3.4.23 here).
pub const DEFAULT_ETCD: &str = "/usr/bin/etcd";

/// Flags etcd gets beside those both systems get (`nodes::Nodes::restart`): structured logs
/// (3.4's default logger is deprecated), and pre-vote, which raft-kv always runs (etcd 3.4
/// defaults it off; a Go boolean flag takes its value after `=`). Both check quorum (etcd always does) and randomize the election timeout
/// in `[timeout, 2 * timeout)`.
const ETCD_FLAGS: [&str; 3] = ["--logger", "zap", "--pre-vote=true"];

/// What the members of a run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// This workspace's raft-kv.
    RaftKv,
    /// etcd (`--etcd`).
    Etcd,
    /// raft-kv, then etcd with the same options, then a side-by-side table.
    Both,
}

impl Target {
    /// Its name (also the subdirectory of `--out` with `--target both`).
    pub fn name(self) -> &'static str {
        match self {
            Target::RaftKv => "raft-kv",
            Target::Etcd => "etcd",
            Target::Both => "both",
        }
    }

    /// The single targets it runs, in order.
    pub fn runs(self) -> Vec<Target> {
        match self {
            Target::Both => vec![Target::RaftKv, Target::Etcd],
            one => vec![one],
        }
    }
}

/// How to start a member of one target.
pub struct Server {
    /// The executable.
    pub binary: PathBuf,
    /// Flags after the common ones.
    pub extra: Vec<String>,
}

/// The server of `target` (a single one): builds raft-kv, or checks that `etcd` exists.
pub fn server(target: Target, etcd: &Path) -> Result<Server, String> {
    match target {
        Target::Etcd => {
            if !etcd.is_file() {
                return Err(format!(
                    "{} not found (apt-get install etcd-server, or --etcd PATH)",
                    etcd.display()
                ));
            }
            Ok(Server {
                binary: etcd.to_path_buf(),
                extra: ETCD_FLAGS.iter().map(|s| s.to_string()).collect(),
            })
        }
        _ => Ok(Server {
            binary: crate::cluster::build_raft_kv()?,
            extra: Vec::new(),
        }),
    }
}

/// The first line of `BINARY --version` (etcd prints `etcd Version: 3.4.23`).
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// One finished run of `--target both`: its target, whether its checks passed, its figures.
pub struct Outcome {
    /// raft-kv or etcd.
    pub target: Target,
    /// Every check passed.
    pub passed: bool,
    /// Its availability figures.
    pub availability: Availability,
}

/// The side-by-side table of `--target both`: one row per metric, a column per run, and the
/// first run's figure over the second's.
pub fn table(runs: &[Outcome]) -> String {
    let mut s = String::from("| metric |");
    for r in runs {
        s.push_str(&format!(" {} |", r.target.name()));
    }
    s.push_str(" ratio |\n|---|");
    s.push_str(&"---:|".repeat(runs.len() + 1));
    s.push('\n');
    let columns: Vec<_> = runs.iter().map(|r| r.availability.rows()).collect();
    let Some(first) = columns.first() else {
        return s;
    };
    for (i, (name, _)) in first.iter().enumerate() {
        s.push_str(&format!("| {name} |"));
        let values: Vec<Option<f64>> = columns.iter().map(|c| c[i].1).collect();
        for v in &values {
            s.push_str(&v.map_or(" - |".to_string(), |v| format!(" {v:.2} |")));
        }
        s.push_str(&format!(" {} |\n", ratio(&values)));
    }
    let verdicts: Vec<&str> = runs
        .iter()
        .map(|r| if r.passed { "PASS" } else { "FAIL" })
        .collect();
    s.push_str(&format!("| checks | {} | |\n", verdicts.join(" | ")));
    s
}

/// The first value over the second, when both exist and the second is not 0.
fn ratio(values: &[Option<f64>]) -> String {
    match values {
        [Some(a), Some(b)] if *b != 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(target: Target, ops: usize, recovery: Option<u64>) -> Outcome {
        Outcome {
            target,
            passed: true,
            availability: Availability {
                load: 2_000_000,
                ok_ops: ops,
                fault_time: 0,
                fault_ok_ops: 0,
                per_kind: Vec::new(),
                longest_gap: 500_000,
                recovery,
            },
        }
    }

    #[test]
    fn the_table_gives_each_metric_per_target_and_their_ratio() {
        let table = table(&[
            outcome(Target::RaftKv, 400, Some(1_000_000)),
            outcome(Target::Etcd, 200, None),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| metric | raft-kv | etcd | ratio |");
        assert_eq!(
            lines[2],
            "| ok ops/s, whole load | 200.00 | 100.00 | 2.00 |"
        );
        assert!(table.contains("| ok ops/s, during faults | 0.00 | 0.00 | - |"));
        assert!(table.contains("| recovery after the final heal, s | 1.00 | - | - |"));
        assert!(table.ends_with("| checks | PASS | PASS | |\n"));
    }
}

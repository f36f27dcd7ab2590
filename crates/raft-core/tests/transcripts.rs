//! Transcript tests of the core, in the spirit of etcd raft's data-driven tests.
//!
//! Each file in `tests/testdata/` is a script: a command line, a `----` line, then the expected
//! output up to the next blank line. Lines starting with `#` are comments; each file starts
//! with the scenario of `test-scenarios.md` it covers. The commands drive a
//! [`support::Harness`] (see `Harness::run_command` for their arguments), which checks Raft's
//! safety properties after every step:
//!
//! - the cluster and its clock: `add-nodes`, `campaign`, `tick`, `tick-heartbeat`,
//!   `tick-election`, `run`;
//! - the application: `propose`, `ready`, `persist`, `process-ready`, `stabilize`, and
//!   `snapshot` (snapshot the state machine, compact the log behind it);
//! - the network and failures: `deliver-msgs`, `drop-msgs`, `dup-msgs`, `hold-msgs`,
//!   `release-msgs`, `msgs`, `partition`, `block`, `heal`, `crash`, `restart`;
//! - configuration changes: `add-node` (a new, empty server), `add-learner`, `add-voter`,
//!   `promote`, `remove`, `replace` (through the joint configuration when two voters change);
//! - reads and leadership: `read-index`, `transfer`;
//! - what a node holds: `status`, `log`, `progress`, `applied`, `membership`.
//!
//! A Ready is printed with every field that is set: soft and hard state, entries, messages,
//! snapshot sends, the snapshot to install, snapshot chunks, persisted messages, committed
//! entries, read states and membership results.
//!
//! The runner compares each command's output with the expected one and fails on the first
//! difference of each file. With `REWRITE=1` in the environment it rewrites the files with
//! the actual output instead, so expected output is generated on purpose and reviewed as a
//! diff: `REWRITE=1 cargo test -p raftline-core --test transcripts`, then read `git diff`.

mod support;

use std::path::{Path, PathBuf};

use support::Harness;

/// One item of a transcript file.
#[derive(Debug)]
enum Item {
    /// A comment or blank line outside a case, kept verbatim.
    Text(String),
    /// A command and its expected output.
    Case {
        line: usize,
        command: String,
        expected: Vec<String>,
    },
}

fn parse(text: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            items.push(Item::Text(line.to_string()));
            continue;
        }
        match lines.next() {
            Some((_, "----")) => {}
            _ => return Err(format!("line {}: `----` must follow a command", n + 1)),
        }
        let mut expected = Vec::new();
        while let Some((_, out)) = lines.peek() {
            if out.trim().is_empty() {
                lines.next(); // the blank line ends the case
                break;
            }
            expected.push(out.to_string());
            lines.next();
        }
        items.push(Item::Case {
            line: n + 1,
            command: line.trim().to_string(),
            expected,
        });
    }
    Ok(items)
}

fn render(items: &[Item], outputs: &[Vec<String>]) -> String {
    let mut out = String::new();
    let mut outputs = outputs.iter();
    for item in items {
        match item {
            Item::Text(t) => {
                out.push_str(t);
                out.push('\n');
            }
            Item::Case { command, .. } => {
                out.push_str(command);
                out.push_str("\n----\n");
                for l in outputs.next().expect("one output per case") {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push('\n');
            }
        }
    }
    format!("{}\n", out.trim_end())
}

/// Runs a transcript; returns the actual outputs, one per case, and the first mismatch.
fn run(name: &str, text: &str) -> (Vec<Item>, Vec<Vec<String>>, Option<String>) {
    let items = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut harness: Option<Harness> = None;
    let mut outputs = Vec::new();
    let mut mismatch = None;
    for item in &items {
        let Item::Case {
            line,
            command,
            expected,
        } = item
        else {
            continue;
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Harness::run_command(&mut harness, command)
        }));
        let actual = match result {
            Ok(Ok(out)) => out,
            Ok(Err(usage)) => panic!("{name}:{line}: `{command}`: {usage}"),
            Err(_) => panic!("{name}:{line}: `{command}` panicked (see above)"),
        };
        let actual: Vec<String> = actual.lines().map(str::to_string).collect();
        assert!(
            actual.iter().all(|l| !l.trim().is_empty()),
            "{name}:{line}: output must not contain blank lines"
        );
        if mismatch.is_none() && &actual != expected {
            mismatch = Some(format!(
                "{name}:{line}: `{command}` printed\n{}\nbut the transcript expects\n{}\n\
                 (rerun with REWRITE=1 to accept the new output, then review the diff)",
                indent(&actual),
                indent(expected)
            ));
        }
        outputs.push(actual);
    }
    (items, outputs, mismatch)
}

fn indent(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

fn check_file(file: &str) {
    let path = testdata().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (items, outputs, mismatch) = run(file, &text);
    if std::env::var_os("REWRITE").is_some() {
        let new = render(&items, &outputs);
        if new != text {
            std::fs::write(&path, new).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        return;
    }
    if let Some(m) = mismatch {
        panic!("{m}");
    }
}

macro_rules! transcripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_file(concat!(stringify!($name), ".txt"));
            }
        )*

        /// Every file in testdata runs: a new transcript must be listed here.
        #[test]
        fn every_transcript_is_listed() {
            let listed = [$(concat!(stringify!($name), ".txt")),*];
            for entry in std::fs::read_dir(testdata()).expect("testdata exists") {
                let name = entry.expect("entry").file_name().to_string_lossy().to_string();
                if name.ends_with(".txt") {
                    assert!(listed.contains(&name.as_str()), "{name} is not listed in transcripts!");
                }
            }
        }
    };
}

transcripts!(
    stale_term,
    vote_persisted,
    vote_up_to_date,
    split_vote,
    no_quorum,
    prevote_rejoin,
    check_quorum_step_down,
    one_way_partition,
    log_conflict,
    figure8_overwrite,
    figure8_commit,
    reordered_duplicated,
    flow_control,
    flow_control_bytes,
    leader_durable_commit,
    single_node,
    unsynced_writes_lost,
    crash_restart,
    crash_partitioned_leader,
    snapshot_transfer,
    membership_learner_promote,
    membership_joint_leader_removal,
    read_index,
    leadership_transfer,
);

#[test]
fn the_runner_reports_a_wrong_expected_output() {
    let good = "add-nodes 1\n----\nok\n\ncampaign 1\n----\nok\n\nstatus\n----\n\
                1: Candidate term=1 vote=1 leader=none commit=0 last=0 persisted=0 applied=0\n";
    let (items, outputs, mismatch) = run("good", good);
    assert!(mismatch.is_none(), "{mismatch:?}");
    assert_eq!(render(&items, &outputs), good, "rendering round-trips");
    let bad = good.replace("Candidate", "Leader");
    let (_, _, mismatch) = run("bad", &bad);
    let m = mismatch.expect("a wrong expected line is reported");
    assert!(m.contains("bad:9: `status`"), "{m}");
}

/// The harness's checks are live: two nodes that committed different entries at one index
/// are a State Machine Safety violation, reported at the first check.
#[test]
fn the_harness_reports_a_safety_violation() {
    use raftline_core::{MemStorage, StorageMut};
    use raftline_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

    let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let committed_at_2 = |term: u64| {
        let mut store = MemStorage::new(membership.clone());
        let log = [
            Entry::normal(Term(1), LogIndex(1), "a"),
            Entry::normal(Term(term), LogIndex(2), "b"),
        ];
        store.append(&log).expect("append");
        let hard_state = HardState {
            term: Term(term),
            vote: None,
            commit: LogIndex(2),
        };
        store.set_hard_state(hard_state).expect("hard state");
        store
    };
    let stores = vec![
        committed_at_2(1),
        committed_at_2(2),
        MemStorage::new(membership.clone()),
    ];
    let mut h = Harness::from_stores(Harness::config(), stores);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.check()))
        .expect_err("the diverging commits are reported");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("State Machine Safety"), "{message}");
}

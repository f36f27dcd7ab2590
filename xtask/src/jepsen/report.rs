//! What a jepsen run found: each key's history checked for linearizability, the members'
//! final reads compared, the `--plant` corruptions, the summary table and the files of the
//! run (`history.txt`, `summary.txt`, `report.html`).

use std::fmt::Write as _;
use std::path::Path;

use raftline_core::testing::linearizability::{check, KvInput, KvModel, KvOutput, Operation};

use super::nemesis::{Fault, Kind};
use super::workload::{Record, Status};

/// Steps the search of one key's history may take before it gives up.
const CHECK_BUDGET: u64 = 20_000_000;

/// A corruption of the recorded history, to show that a run can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// One successful read returns the value of a write that was overwritten before it began.
    StaleRead,
    /// An acknowledged write's effect is dropped: the reads after it that saw its value (or the
    /// first read after it) see the value before it instead.
    LostWrite,
}

/// Everything a run recorded.
pub struct RunLog {
    /// Every operation, final reads included (clients 1000 + member).
    pub records: Vec<Record>,
    /// Every fault.
    pub faults: Vec<Fault>,
    /// When the load ended (µs).
    pub load_end: u64,
    /// When the final heal was done (µs).
    pub heal: u64,
    /// How long after the heal the first write succeeded, if one did (µs).
    pub recovery: Option<u64>,
    /// Each member's final read of each key (`None`: it never answered).
    pub finals: Vec<Vec<Option<Option<u64>>>>,
    /// Members that exited by themselves.
    pub crashes: Vec<String>,
    /// Member names.
    pub names: Vec<String>,
}

/// The value an acknowledged write wrote.
fn written(r: &Record) -> Option<u64> {
    if r.status != Status::Ok {
        return None;
    }
    match (&r.input, &r.output) {
        (KvInput::Put { value, .. }, _) => Some(*value),
        (KvInput::Cas { new, .. }, Some(KvOutput::CasResult(true))) => Some(*new),
        _ => None,
    }
}

/// A triple `(w0, w1, g)` of record indices on one key: acknowledged writes `w0` then `w1`
/// (w0 returned before w1 was called) and a successful read `g` called after `w1` returned.
fn triple(records: &[Record]) -> Option<(usize, usize, usize)> {
    for (g, read) in records.iter().enumerate() {
        if read.status != Status::Ok || !matches!(read.input, KvInput::Get { .. }) {
            continue;
        }
        let key = read.input.key();
        let before = |i: usize, limit: u64| {
            let r = &records[i];
            r.input.key() == key && written(r).is_some() && r.end < limit
        };
        let Some(w1) = (0..records.len())
            .filter(|&i| before(i, read.call))
            .max_by_key(|&i| records[i].call)
        else {
            continue;
        };
        if let Some(w0) = (0..records.len()).find(|&i| before(i, records[w1].call)) {
            return Some((w0, w1, g));
        }
    }
    None
}

/// Corrupts `records` as `plant` says; describes what it changed.
pub fn plant(records: &mut [Record], plant: Plant) -> Result<String, String> {
    let (w0, w1, g) = triple(records).ok_or(
        "no two successive acknowledged writes and a later read on one key: nothing to plant",
    )?;
    let old = written(&records[w0]);
    let lost = written(&records[w1]);
    let key = records[g].input.key();
    let mut changed = vec![g];
    if plant == Plant::LostWrite {
        let w1_end = records[w1].end;
        changed.extend((0..records.len()).filter(|&i| {
            let r = &records[i];
            r.call > w1_end && r.output == Some(KvOutput::Value(lost))
        }));
    }
    for &i in &changed {
        records[i].output = Some(KvOutput::Value(old));
    }
    Ok(format!(
        "planted {plant:?} on key {key}: {} read(s) now see {old:?} (written by op {w0}) \
         instead of what followed op {w1}'s acknowledged write of {lost:?}",
        changed.len()
    ))
}

/// The history the checker takes: reads that failed are left out.
pub fn history(records: &[Record]) -> Vec<Operation<KvInput, KvOutput>> {
    records
        .iter()
        .filter(|r| r.status != Status::Failed)
        .map(|r| Operation {
            client: r.client,
            input: r.input.clone(),
            call: r.call,
            ret: (r.status == Status::Ok).then_some(r.end),
            output: r.output.clone(),
        })
        .collect()
}

/// The verdicts: one line per key and per check; whether all passed.
/// Explanations longer than this are cut on stdout (the whole one goes to a file).
const EXPLANATION_CHARS: usize = 4000;

pub fn verdicts(log: &RunLog, dir: &Path) -> (Vec<String>, bool) {
    let ops = history(&log.records);
    let keys = log.finals.first().map_or(0, |f| f.len() as u64);
    let mut lines = Vec::new();
    let mut ok = true;
    let (mut good, mut biggest) = (0, 0);
    for key in 0..keys {
        let part: Vec<_> = ops
            .iter()
            .filter(|o| o.input.key() == key)
            .cloned()
            .collect();
        let outcome = check(&KvModel, &part, CHECK_BUDGET);
        biggest = biggest.max(part.len());
        ok &= outcome.is_linearizable();
        if outcome.is_linearizable() {
            good += 1;
            continue;
        }
        let mut line = format!("key {key} ({} ops): {outcome}", part.len());
        if line.len() > EXPLANATION_CHARS {
            let file = dir.join(format!("violation-key-{key}.txt"));
            let _ = std::fs::write(&file, &line);
            line = shorten(&line);
            line.push_str(&format!(
                "\n  ... (cut; the whole explanation is in {})",
                file.display()
            ));
        }
        lines.push(line);
    }
    lines.insert(
        0,
        format!("{good} of {keys} keys linearizable (the largest history: {biggest} ops)"),
    );
    let (agree, line) = agreement(log, keys);
    ok &= agree;
    lines.push(line);
    match log.recovery {
        Some(us) => lines.push(format!("recovered {:.2} s after the final heal", secs(us))),
        None => {
            ok = false;
            lines.push("NOT RECOVERED: no write succeeded after the final heal".into());
        }
    }
    for c in &log.crashes {
        ok = false;
        lines.push(format!("CRASH: {c}"));
    }
    (lines, ok)
}

/// The first line of an explanation, the count of the longest linearizable prefix, and
/// its last operations (where the search got stuck).
fn shorten(explanation: &str) -> String {
    let lines: Vec<&str> = explanation.lines().collect();
    let prefix = lines
        .iter()
        .position(|l| l.starts_with("longest linearizable prefix"))
        .unwrap_or(lines.len().saturating_sub(1));
    let tail = &lines[prefix + 1..];
    let mut out = format!("{}\n  {}", lines[0], lines[prefix]);
    for l in &tail[tail.len().saturating_sub(15)..] {
        out.push_str(&format!("\n  {l}"));
    }
    out
}

/// Whether every member read the same final value of every key.
fn agreement(log: &RunLog, keys: u64) -> (bool, String) {
    let mut bad = Vec::new();
    for key in 0..keys as usize {
        let seen: Vec<_> = log.finals.iter().map(|m| m[key]).collect();
        if seen.iter().any(|v| v.is_none() || *v != seen[0]) {
            bad.push(format!("key {key}: {seen:?}"));
        }
    }
    if bad.is_empty() {
        (true, "final reads: every member answered, all agree".into())
    } else {
        (
            false,
            format!(
                "FINAL READS DISAGREE (or a member did not answer): {}",
                bad.join("; ")
            ),
        )
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The summary table (operations, faults, availability).
pub fn summary(log: &RunLog) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>8} {:>8} {:>8}",
        "op", "ok", "unknown", "failed"
    );
    for (name, is) in [("get", 0), ("put", 1), ("cas", 2)] {
        let count = |st: Status| {
            log.records
                .iter()
                .filter(|r| r.client < 1000 && kind_index(&r.input) == is && r.status == st)
                .count()
        };
        let (ok, unknown, failed) = (
            count(Status::Ok),
            count(Status::Unknown),
            count(Status::Failed),
        );
        let _ = writeln!(s, "{name:<10} {ok:>8} {unknown:>8} {failed:>8}");
    }
    let _ = writeln!(s, "\n{:<11} {:>8} {:>12}", "fault", "count", "total s");
    for kind in Kind::ALL {
        let of: Vec<&Fault> = log.faults.iter().filter(|f| f.kind == kind).collect();
        let total: u64 = of.iter().map(|f| f.end - f.start).sum();
        let _ = writeln!(
            s,
            "{:<11} {:>8} {:>12.1}",
            kind.name(),
            of.len(),
            secs(total)
        );
    }
    s.push_str(&super::availability::Availability::of(log).summary());
    s
}

fn kind_index(input: &KvInput) -> usize {
    match input {
        KvInput::Get { .. } => 0,
        KvInput::Put { .. } | KvInput::Delete { .. } => 1,
        KvInput::Cas { .. } => 2,
    }
}

/// Writes `history.txt` (one operation a line) and the faults.
pub fn write_history(dir: &Path, log: &RunLog) -> std::io::Result<()> {
    let mut s = String::from("# client member status call_us end_us input output error\n");
    for r in &log.records {
        let _ = writeln!(
            s,
            "{} n{} {:?} {} {} {:?} {:?} {}",
            r.client,
            r.member + 1,
            r.status,
            r.call,
            r.end,
            r.input,
            r.output,
            r.error.as_deref().unwrap_or("")
        );
    }
    for f in &log.faults {
        let _ = writeln!(
            s,
            "# fault {} {} {} {}",
            f.kind.name(),
            f.start,
            f.end,
            f.detail
        );
    }
    std::fs::write(dir.join("history.txt"), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: KvInput, call: u64, end: u64, output: KvOutput) -> Record {
        Record {
            client,
            member: 0,
            input,
            call,
            end,
            output: Some(output),
            status: Status::Ok,
            error: None,
        }
    }

    /// put 1, put 2, then reads of 2: linearizable until a plant makes it not.
    fn clean() -> Vec<Record> {
        vec![
            op(0, KvInput::Put { key: 0, value: 1 }, 0, 10, KvOutput::Ok),
            op(1, KvInput::Put { key: 0, value: 2 }, 20, 30, KvOutput::Ok),
            op(0, KvInput::Get { key: 0 }, 40, 50, KvOutput::Value(Some(2))),
            op(1, KvInput::Get { key: 0 }, 60, 70, KvOutput::Value(Some(2))),
        ]
    }

    #[test]
    fn plants_make_a_linearizable_history_fail() {
        let records = clean();
        assert!(check(&KvModel, &history(&records), 1000).is_linearizable());
        for (p, changed) in [(Plant::StaleRead, 1), (Plant::LostWrite, 2)] {
            let mut planted = records.clone();
            plant(&mut planted, p).unwrap();
            let stale = planted
                .iter()
                .filter(|r| r.output == Some(KvOutput::Value(Some(1))))
                .count();
            assert_eq!(stale, changed, "{p:?}");
            assert!(!check(&KvModel, &history(&planted), 1000).is_linearizable());
        }
        // Nothing to plant without two successive acknowledged writes before a read.
        assert!(plant(&mut records[2..].to_vec(), Plant::StaleRead).is_err());
    }

    #[test]
    fn failed_reads_are_left_out_and_unknown_writes_never_return() {
        let mut records = clean();
        records[2].status = Status::Failed;
        records[2].output = None;
        records[1].status = Status::Unknown;
        records[1].output = None;
        let ops = history(&records);
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[1].ret, None);
        assert!(check(&KvModel, &ops, 1000).is_linearizable());
    }
}

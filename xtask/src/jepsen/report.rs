//! What a jepsen run found: each key's history checked for linearizability, the members'
//! final reads compared, the watchers' events and the lock sections checked (by [`super::watch`]
//! and [`super::lock`]), the `--plant` corruptions, the summary table (rows per workload) and
//! the files of the run (`history.txt`, `watch-events.txt`, `summary.txt`, `report.html`).

use std::fmt::Write as _;
use std::path::Path;

use raftline_core::testing::linearizability::{check, KvInput, KvModel, KvOutput, Operation};

use super::lock::{self, Section};
use super::nemesis::{Fault, Kind};
use super::shrink;
use super::watch::{self, FinalHistory, WatcherLog};
use super::workload::{Op, Record, Status, What, FINAL_CLIENTS};
use super::Workloads;

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
    /// One event is dropped from the middle of a watcher's received events.
    WatchGap,
    /// One known critical section is stretched into the next one of another client.
    LockOverlap,
}

/// Everything a run recorded.
pub struct RunLog {
    /// The workloads that ran.
    pub workloads: Workloads,
    /// Every register operation, final reads included (clients 1000 + member).
    pub records: Vec<Record>,
    /// The watch and lease workloads' operations.
    pub ops: Vec<Op>,
    /// Operations not kept (over the bound).
    pub dropped: u64,
    /// What each watcher received.
    pub watchers: Vec<WatcherLog>,
    /// Each member's final history of the watched prefix (`None`: it never answered).
    pub final_watch: Vec<Option<FinalHistory>>,
    /// The lock clients' critical sections.
    pub sections: Vec<Section>,
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

/// Corrupts the run's records as `plant` says; describes what it changed.
pub fn plant(log: &mut RunLog, plant: Plant) -> Result<String, String> {
    match plant {
        Plant::StaleRead | Plant::LostWrite => plant_register(&mut log.records, plant),
        Plant::WatchGap => watch::plant_gap(&mut log.watchers),
        Plant::LockOverlap => lock::plant_overlap(&mut log.sections),
    }
}

/// Corrupts register `records` as `plant` says; describes what it changed.
fn plant_register(records: &mut [Record], plant: Plant) -> Result<String, String> {
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

/// The verdicts of every workload that ran, then recovery and crashes; whether all passed.
pub fn verdicts(log: &RunLog, dir: &Path) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut ok = true;
    type Part = fn(&RunLog, &Path) -> (Vec<String>, bool);
    let parts: [(bool, Part); 3] = [
        (log.workloads.register, register_verdicts),
        (log.workloads.watch, watch_verdicts),
        (log.workloads.lease, lease_verdicts),
    ];
    for (ran, part) in parts {
        if ran {
            let (more, passed) = part(log, dir);
            lines.extend(more);
            ok &= passed;
        }
    }
    if log.dropped > 0 {
        lines.push(format!(
            "note: {} operations not kept (over the bound)",
            log.dropped
        ));
    }
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

/// The register workload: each key's history linearizable, the final reads agreeing.
fn register_verdicts(log: &RunLog, dir: &Path) -> (Vec<String>, bool) {
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
        let mut line = format!("register: key {key} ({} ops): {outcome}", part.len());
        line.push_str(&write_minimal(dir, key, &part));
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
        format!(
            "register: {good} of {keys} keys linearizable (the largest history: {biggest} ops)"
        ),
    );
    let (agree, line) = agreement(log, keys);
    ok &= agree;
    lines.push(format!("register: {line}"));
    (lines, ok)
}

/// Shrinks the failing history `part` of register `key` and writes it as text
/// (`violation-key-K-minimal.txt`) and as a picture (`violation-key-K.svg`, also shown in
/// `report.html`); what to add to the verdict line.
fn write_minimal(dir: &Path, key: u64, part: &[Operation<KvInput, KvOutput>]) -> String {
    let small = shrink::shrink(part);
    let text = shrink::text(&small);
    let file = dir.join(format!("violation-key-{key}-minimal.txt"));
    let picture = dir.join(format!("violation-key-{key}.svg"));
    let written =
        std::fs::write(&file, &text).and_then(|()| std::fs::write(&picture, shrink::svg(&small)));
    let mut out = format!(
        "\n  the smallest failing sub-history found ({} of {} ops; it fails only if the whole does):\n",
        small.len(),
        part.len()
    );
    for l in text.lines().take(MINIMAL_LINES_SHOWN) {
        let _ = writeln!(out, "    {l}");
    }
    match written {
        Ok(()) => {
            let _ = write!(out, "  (in {} and {})", file.display(), picture.display());
        }
        Err(e) => {
            let _ = write!(out, "  (cannot write {}: {e})", file.display());
        }
    }
    out
}

/// Lines of the smallest failing sub-history shown in the verdicts (all are in its file).
const MINIMAL_LINES_SHOWN: usize = 20;

/// The watch workload: the members' final histories agree, acknowledged puts are in them,
/// every watcher received a prefix of them.
fn watch_verdicts(log: &RunLog, _dir: &Path) -> (Vec<String>, bool) {
    let history = match watch::check_finals(&log.final_watch) {
        Ok(h) => h,
        Err(e) => return (vec![format!("watch: FINAL HISTORIES: {e}")], false),
    };
    let mut lines = vec![format!(
        "watch: every member's final watch from revision 1 agrees ({} events through revision {})",
        history.events.len(),
        history.through
    )];
    let faults = watch::check_writes(&watch::puts(&log.ops), &history.events);
    let mut ok = faults.is_empty();
    if ok {
        lines.push("watch: every acknowledged put is in the history at its revision".into());
    }
    lines.extend(faults.into_iter().map(|f| format!("watch: {f}")));
    let mut good = 0;
    for w in &log.watchers {
        let who = format!("watch: watcher {} (n{})", w.client, w.member + 1);
        match watch::check_watcher(&w.events, &history.events) {
            Ok(()) => good += 1,
            Err(fault) => lines.push(format!("{who}: {fault}")),
        }
        for why in w.canceled.iter().take(watch::FAULTS_SHOWN_MAX) {
            lines.push(format!(
                "{who}: CANCELED by the server (compaction is off): {why}"
            ));
        }
        ok &= w.canceled.is_empty();
    }
    ok &= good == log.watchers.len();
    let counts: Vec<usize> = log.watchers.iter().map(|w| w.events.len()).collect();
    let breaks: usize = log.watchers.iter().map(|w| w.breaks.len()).sum();
    lines.insert(
        1,
        format!(
            "watch: {good} of {} watchers received exactly the history's first events, in \
             order ({}-{} events each, {breaks} reconnects)",
            log.watchers.len(),
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0)
        ),
    );
    (lines, ok)
}

/// The lease workload: no two known critical sections overlap.
fn lease_verdicts(log: &RunLog, _dir: &Path) -> (Vec<String>, bool) {
    let sections = &log.sections;
    let known = sections.iter().filter(|s| s.unknown.is_none()).count();
    let unknown = sections.len() - known;
    let overlaps = lock::check_sections(sections);
    let mut lines = Vec::new();
    if overlaps.is_empty() {
        lines.push(format!(
            "lease: no two of {known} known critical sections overlap ({unknown} unknown: \
             the lease not proven alive throughout, left out)"
        ));
    }
    for &(a, b) in &overlaps {
        lines.push(format!(
            "lease: OVERLAP: {} and {}",
            sections[a], sections[b]
        ));
    }
    let refused = log
        .ops
        .iter()
        .filter(|o| {
            matches!(
                o.what,
                What::LockCounter {
                    swapped: Some(false),
                    ..
                }
            )
        })
        .count();
    if refused > 0 {
        lines.push(format!(
            "lease: note: {refused} counter compare-and-swap(s) refused (an earlier \
             increment of unknown outcome may have landed late)"
        ));
    }
    (lines, overlaps.is_empty())
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
        "{:<20} {:>8} {:>8} {:>8}",
        "op", "ok", "unknown", "failed"
    );
    for (name, ok, unknown, failed) in rows(log) {
        let _ = writeln!(s, "{name:<20} {ok:>8} {unknown:>8} {failed:>8}");
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

/// The summary's rows: `(workload kind, ok, unknown, failed)`, for the workloads that ran
/// (a lock section is ok when known, unknown otherwise).
fn rows(log: &RunLog) -> Vec<(String, usize, usize, usize)> {
    let tally = |statuses: &mut dyn Iterator<Item = Status>| {
        let mut c = (0, 0, 0);
        for st in statuses {
            match st {
                Status::Ok => c.0 += 1,
                Status::Unknown => c.1 += 1,
                Status::Failed => c.2 += 1,
            }
        }
        c
    };
    let mut rows = Vec::new();
    if log.workloads.register {
        for (name, is) in [("get", 0), ("put", 1), ("cas", 2)] {
            let (ok, unknown, failed) = tally(&mut log.records.iter().filter_map(|r| {
                (r.client < FINAL_CLIENTS && kind_index(&r.input) == is).then_some(r.status)
            }));
            rows.push((format!("register {name}"), ok, unknown, failed));
        }
    }
    let mut kinds: Vec<(&str, &str)> = log.ops.iter().map(|o| o.what.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let (ok, unknown, failed) = tally(
            &mut log
                .ops
                .iter()
                .filter(|o| o.what.kind() == kind)
                .map(|o| o.status),
        );
        rows.push((format!("{} {}", kind.0, kind.1), ok, unknown, failed));
    }
    if log.workloads.lease {
        let unknown = log.sections.iter().filter(|s| s.unknown.is_some()).count();
        rows.push((
            "lease section".into(),
            log.sections.len() - unknown,
            unknown,
            0,
        ));
    }
    rows
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
    for o in &log.ops {
        let _ = writeln!(
            s,
            "{} n{} {:?} {} {} {:?} {}",
            o.client,
            o.member + 1,
            o.status,
            o.call,
            o.end,
            o.what,
            o.error.as_deref().unwrap_or("")
        );
    }
    for c in &log.sections {
        let why = c.unknown.as_deref().unwrap_or("known");
        let _ = writeln!(s, "# section {c}: {why}");
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
    std::fs::write(dir.join("history.txt"), s)?;
    if log.workloads.watch {
        write_watch_events(dir, log)?;
    }
    Ok(())
}

/// Writes `watch-events.txt`: each member's final history, then each watcher's events and
/// the times its stream broke.
fn write_watch_events(dir: &Path, log: &RunLog) -> std::io::Result<()> {
    let mut s = String::new();
    for (m, h) in log.final_watch.iter().enumerate() {
        match h {
            Some(h) => {
                let _ = writeln!(
                    s,
                    "# final history of n{} through revision {}",
                    m + 1,
                    h.through
                );
                for e in &h.events {
                    let _ = writeln!(s, "{e}");
                }
            }
            None => {
                let _ = writeln!(s, "# no final history from n{}", m + 1);
            }
        }
    }
    for w in &log.watchers {
        let _ = writeln!(s, "# watcher {} on n{}", w.client, w.member + 1);
        for (at, why) in &w.breaks {
            let _ = writeln!(s, "# broke at {at} us: {why}");
        }
        for e in &w.events {
            let _ = writeln!(s, "{e}");
        }
    }
    std::fs::write(dir.join("watch-events.txt"), s)
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
            plant_register(&mut planted, p).unwrap();
            let stale = planted
                .iter()
                .filter(|r| r.output == Some(KvOutput::Value(Some(1))))
                .count();
            assert_eq!(stale, changed, "{p:?}");
            assert!(!check(&KvModel, &history(&planted), 1000).is_linearizable());
        }
        // Nothing to plant without two successive acknowledged writes before a read.
        assert!(plant_register(&mut records[2..].to_vec(), Plant::StaleRead).is_err());
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

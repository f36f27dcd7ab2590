//! Availability of a run, computed from its records and fault bands (nothing estimated):
//! successful operations per second over the whole load, during faults (operations whose
//! completion falls inside a fault band, over the bands' total time; overall and per kind)
//! and outside them, the longest time without a successful operation, and the recovery after
//! the final heal (the first write called after it that succeeded).

use std::fmt::Write as _;

use super::nemesis::{Fault, Kind};
use super::report::RunLog;
use super::workload::{Status, What};

/// Clients at or above this id are the final reads, not the load.
pub const FINAL_READ_CLIENTS: u64 = 1000;

/// The fault kinds, in the order the summary lists them.
const KINDS: [Kind; 5] = Kind::ALL;

/// Microseconds in a second.
const US_PER_SEC: f64 = 1e6;

/// A time interval `[start, end]` in µs since the run's start.
pub type Band = (u64, u64);

/// The availability figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Availability {
    /// Length of the load (µs): from the clients' start to their stop after the recovery.
    pub load: u64,
    /// Successful operations of the load that completed within it.
    pub ok_ops: usize,
    /// Total time of the fault bands within the load (µs; overlaps counted once).
    pub fault_time: u64,
    /// Successful operations that completed inside a fault band.
    pub fault_ok_ops: usize,
    /// Per kind: (kind, its bands' total time in µs, successful operations completed inside).
    pub per_kind: Vec<(Kind, u64, usize)>,
    /// The longest time (µs) within the load without a successful operation completing.
    pub longest_gap: u64,
    /// How long after the final heal the first write called after it succeeded (µs).
    pub recovery: Option<u64>,
}

/// Successful operations per second: `ops` over `us` microseconds (0 for an empty span).
pub fn rate(ops: usize, us: u64) -> f64 {
    if us == 0 {
        0.0
    } else {
        ops as f64 * US_PER_SEC / us as f64
    }
}

impl Availability {
    /// The figures of `log` (its records, faults, load end and recovery).
    pub fn of(log: &RunLog) -> Availability {
        let ends = ok_ends(log);
        let bands_of = |kind: Option<Kind>| {
            let bands = log
                .faults
                .iter()
                .filter(|f| kind.is_none_or(|k| f.kind == k))
                .map(|f: &Fault| (f.start.min(log.load_end), f.end.min(log.load_end)));
            merge(bands.collect())
        };
        let all = bands_of(None);
        let per_kind = KINDS
            .iter()
            .map(|&k| {
                let bands = bands_of(Some(k));
                (k, total(&bands), count_inside(&ends, &bands))
            })
            .collect();
        Availability {
            load: log.load_end,
            ok_ops: ends.len(),
            fault_time: total(&all),
            fault_ok_ops: count_inside(&ends, &all),
            per_kind,
            longest_gap: longest_gap(&ends, log.load_end),
            recovery: log.recovery,
        }
    }

    /// Successful operations per second over the whole load.
    pub fn ops_per_sec(&self) -> f64 {
        rate(self.ok_ops, self.load)
    }

    /// Successful operations per second during faults.
    pub fn fault_ops_per_sec(&self) -> f64 {
        rate(self.fault_ok_ops, self.fault_time)
    }

    /// Successful operations per second outside the fault bands.
    pub fn calm_ops_per_sec(&self) -> f64 {
        rate(
            self.ok_ops - self.fault_ok_ops,
            self.load.saturating_sub(self.fault_time),
        )
    }

    /// The metrics as rows `(name, value)` for the side-by-side table (`None`: no value).
    pub fn rows(&self) -> Vec<(String, Option<f64>)> {
        let mut rows = vec![
            ("ok ops/s, whole load".to_string(), Some(self.ops_per_sec())),
            (
                "ok ops/s, outside faults".into(),
                Some(self.calm_ops_per_sec()),
            ),
            (
                "ok ops/s, during faults".into(),
                Some(self.fault_ops_per_sec()),
            ),
        ];
        for &(kind, us, ops) in &self.per_kind {
            let value = (us > 0).then(|| rate(ops, us));
            rows.push((format!("ok ops/s, during {}", kind.name()), value));
        }
        rows.push(("fault time, s".into(), Some(secs(self.fault_time))));
        rows.push((
            "longest gap without an ok op, s".into(),
            Some(secs(self.longest_gap)),
        ));
        rows.push((
            "recovery after the final heal, s".into(),
            self.recovery.map(secs),
        ));
        rows
    }

    /// The summary's availability lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nsuccessful ops/s: {:.1} over the load ({} in {:.1} s), {:.1} outside faults, \
             {:.1} during faults ({} in {:.1} s)",
            self.ops_per_sec(),
            self.ok_ops,
            secs(self.load),
            self.calm_ops_per_sec(),
            self.fault_ops_per_sec(),
            self.fault_ok_ops,
            secs(self.fault_time)
        );
        for &(kind, us, ops) in self.per_kind.iter().filter(|k| k.1 > 0) {
            let _ = writeln!(
                s,
                "  during {:<10} {:>8.1} ops/s ({ops} in {:.1} s)",
                kind.name(),
                rate(ops, us),
                secs(us)
            );
        }
        let _ = writeln!(s, "longest unavailability: {:.2} s", secs(self.longest_gap));
        let recovery = self
            .recovery
            .map_or("none".to_string(), |us| format!("{:.2} s", secs(us)));
        let _ = writeln!(s, "recovery after the final heal: {recovery}");
        s
    }
}

/// Seconds in `us` microseconds.
pub fn secs(us: u64) -> f64 {
    us as f64 / US_PER_SEC
}

/// The completion times of the load's successful requests that ended by its end, sorted:
/// every workload's (a watch stream is not a request: it ends when it breaks), not the final
/// reads.
pub fn ok_ends(log: &RunLog) -> Vec<u64> {
    let registers = log.records.iter().map(|r| (r.status, r.client, r.end));
    let others = log
        .ops
        .iter()
        .filter(|o| !matches!(o.what, What::WatchStream { .. }))
        .map(|o| (o.status, o.client, o.end));
    let mut ends: Vec<u64> = registers
        .chain(others)
        .filter(|&(s, c, end)| s == Status::Ok && c < FINAL_READ_CLIENTS && end <= log.load_end)
        .map(|(_, _, end)| end)
        .collect();
    ends.sort_unstable();
    ends
}

/// `bands` sorted, overlapping or touching ones merged, empty ones dropped.
pub fn merge(mut bands: Vec<Band>) -> Vec<Band> {
    bands.retain(|b| b.1 > b.0);
    bands.sort_unstable();
    let mut out: Vec<Band> = Vec::new();
    for (start, end) in bands {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The total length of merged `bands`.
pub fn total(bands: &[Band]) -> u64 {
    bands.iter().map(|b| b.1 - b.0).sum()
}

/// How many of the sorted times `ends` fall inside one of the merged `bands` (ends included).
pub fn count_inside(ends: &[u64], bands: &[Band]) -> usize {
    bands
        .iter()
        .map(|&(start, end)| {
            let from = ends.partition_point(|&t| t < start);
            let to = ends.partition_point(|&t| t <= end);
            to - from
        })
        .sum()
}

/// The longest time between 0, the sorted completion times `ends`, and `load_end`.
pub fn longest_gap(ends: &[u64], load_end: u64) -> u64 {
    let mut last = 0;
    let mut gap = 0;
    for &t in ends.iter().chain(std::iter::once(&load_end)) {
        gap = gap.max(t.saturating_sub(last));
        last = last.max(t);
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::super::workload::Record;
    use super::*;
    use raftline_core::testing::linearizability::KvInput;
    use raftline_core::testing::linearizability::KvOutput;

    fn record(client: u64, input: KvInput, call: u64, end: u64, status: Status) -> Record {
        Record {
            client,
            member: 0,
            input,
            call,
            end,
            output: (status == Status::Ok).then_some(KvOutput::Ok),
            status,
            error: None,
        }
    }

    fn get(call: u64, end: u64, status: Status) -> Record {
        record(0, KvInput::Get { key: 0 }, call, end, status)
    }

    fn put(call: u64, end: u64, status: Status) -> Record {
        record(1, KvInput::Put { key: 0, value: 1 }, call, end, status)
    }

    fn fault(kind: Kind, start: u64, end: u64) -> Fault {
        Fault {
            kind,
            detail: String::new(),
            start,
            end,
        }
    }

    #[test]
    fn bands_merge_and_count_their_ends() {
        let bands = merge(vec![(50, 60), (10, 20), (15, 30), (30, 40), (70, 70)]);
        assert_eq!(bands, vec![(10, 40), (50, 60)]);
        assert_eq!(total(&bands), 40);
        // Ends on a band's edge count as inside it.
        assert_eq!(count_inside(&[5, 10, 25, 40, 45, 50, 61], &bands), 4);
        assert_eq!(count_inside(&[], &bands), 0);
    }

    #[test]
    fn the_longest_gap_includes_the_start_and_the_end_of_the_load() {
        assert_eq!(longest_gap(&[], 100), 100);
        assert_eq!(longest_gap(&[30, 40, 90], 100), 50);
        assert_eq!(longest_gap(&[10, 20], 100), 80);
        assert_eq!(longest_gap(&[60, 70], 100), 60);
    }

    #[test]
    fn recovery_is_the_first_write_called_after_the_heal_that_succeeded() {
        let records = [
            put(90, 120, Status::Ok),       // called before the heal
            get(100, 105, Status::Ok),      // a read
            put(101, 110, Status::Unknown), // did not succeed
            put(102, 140, Status::Ok),
            put(103, 130, Status::Ok),
        ];
        let shared = super::super::workload::Shared::new();
        shared
            .records
            .borrow_mut()
            .extend(records[..3].iter().cloned());
        assert_eq!(shared.first_write_after(100), None);
        shared
            .records
            .borrow_mut()
            .extend(records[3..].iter().cloned());
        assert_eq!(shared.first_write_after(100), Some(30));
    }

    #[test]
    fn availability_counts_successful_load_operations_inside_and_outside_faults() {
        let records = vec![
            get(0, 1_000_000, Status::Ok),
            put(0, 1_500_000, Status::Ok),
            get(1_000_000, 2_500_000, Status::Failed),
            put(2_000_000, 2_500_000, Status::Ok),
            get(2_500_000, 3_000_000, Status::Ok),
            put(3_000_000, 3_900_000, Status::Ok),
            record(
                1000,
                KvInput::Get { key: 0 },
                3_950_000,
                3_960_000,
                Status::Ok,
            ),
        ];
        let log = RunLog {
            workloads: super::super::Workloads::default(),
            records,
            ops: Vec::new(),
            dropped: 0,
            watchers: Vec::new(),
            final_watch: Vec::new(),
            sections: Vec::new(),
            faults: vec![
                fault(Kind::Kill, 1_000_000, 2_000_000),
                fault(Kind::Pause, 2_400_000, 3_000_000),
                fault(Kind::Partition, 3_800_000, 5_000_000),
            ],
            load_end: 4_000_000,
            heal: 3_800_000,
            recovery: Some(100_000),
            finals: Vec::new(),
            crashes: Vec::new(),
            names: Vec::new(),
        };
        let a = Availability::of(&log);
        // Five ok load operations (the failed one and the final read left out) in 4 s.
        assert_eq!(a.ok_ops, 5);
        assert_eq!(a.ops_per_sec(), 1.25);
        // Faults cut at the load's end: 1 + 0.6 + 0.2 s, holding the ends at 1.0, 1.5, 2.5,
        // 3.0 and 3.9 s.
        assert_eq!(a.fault_time, 1_800_000);
        assert_eq!(a.fault_ok_ops, 5);
        assert_eq!(a.calm_ops_per_sec(), 0.0);
        assert_eq!(
            a.per_kind,
            vec![
                (Kind::Kill, 1_000_000, 2),
                (Kind::Pause, 600_000, 2),
                (Kind::Partition, 200_000, 1),
                (Kind::Membership, 0, 0),
                (Kind::Disk, 0, 0)
            ]
        );
        assert_eq!(a.longest_gap, 1_000_000);
        assert_eq!(a.recovery, Some(100_000));
        let rows = a.rows();
        assert_eq!(rows[0], ("ok ops/s, whole load".to_string(), Some(1.25)));
        assert_eq!(rows.last().unwrap().1, Some(0.1));
    }
}

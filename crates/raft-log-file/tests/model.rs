//! Property test: random sequences of appends (with truncation), compactions, snapshot
//! installations, hard-state writes and reopens, checked against an in-memory model after
//! every step.

use proptest::prelude::*;
use raftline_core::driver::LogStore;
use raftline_log::{LogFile, Options};
use raftline_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

#[derive(Clone, Debug)]
enum Step {
    /// Append `count` entries starting `back` entries before the end (0 = right after it).
    Append {
        back: u64,
        count: u64,
        size: usize,
    },
    /// Compact up to `back` entries before the end.
    Compact {
        back: u64,
    },
    SetHardState {
        vote: Option<u64>,
    },
    /// Install a snapshot at `percent` of the way from two entries before the compaction
    /// point to eight entries past the end; with the log's own term at that index if
    /// `matching` (and it holds it), else a new term. `via_log_store`: through the async
    /// `LogStore` interface.
    InstallSnapshot {
        percent: u64,
        matching: bool,
        voters: u64,
        via_log_store: bool,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u64..4, 1u64..8, 0usize..300).prop_map(|(back, count, size)| Step::Append { back, count, size }),
        1 => (0u64..6).prop_map(|back| Step::Compact { back }),
        1 => prop::option::of(1u64..4).prop_map(|vote| Step::SetHardState { vote }),
        1 => (0u64..=100, any::<bool>(), 1u64..5, any::<bool>()).prop_map(
            |(percent, matching, voters, via_log_store)| Step::InstallSnapshot { percent, matching, voters, via_log_store }
        ),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    /// Entries after the compaction point.
    entries: Vec<Entry>,
    compacted: LogIndex,
    compacted_term: Term,
    hard_state: HardState,
    membership: Membership,
    term: u64,
}

impl Model {
    fn last(&self) -> LogIndex {
        self.compacted.plus(self.entries.len() as u64)
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.compacted {
            return Some(self.compacted_term);
        }
        let at = index.0.checked_sub(self.compacted.0 + 1)?;
        self.entries.get(at as usize).map(|e| e.term)
    }
}

fn check(log: &LogFile, model: &Model) {
    assert_eq!(log.first_index(), model.compacted.next());
    assert_eq!(log.last_index(), model.last());
    assert_eq!(log.term(model.compacted).unwrap(), model.compacted_term);
    let got = log
        .entries(model.compacted.next(), model.last().next(), usize::MAX)
        .unwrap();
    assert_eq!(got, model.entries);
    assert_eq!(log.initial_state().hard_state, model.hard_state);
    assert_eq!(log.initial_state().membership, model.membership);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_the_model(steps in prop::collection::vec(step(), 1..60), segment in 512u64..4096) {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_bytes_initial: segment / 4,
            segment_bytes_max: segment,
            sync: false,
            ..Options::default()
        };
        let mut log = LogFile::open(dir.path(), options.clone()).unwrap();
        let mut model = Model::default();
        for step in steps {
            match step {
                Step::Append { back, count, size } => {
                    let back = back.min(model.entries.len() as u64);
                    let start = model.last().0 + 1 - back;
                    if back > 0 {
                        model.term += 1; // a new leader overwrites the suffix
                    }
                    let term = Term(model.term.max(1));
                    let new: Vec<Entry> = (start..start + count)
                        .map(|i| Entry::normal(term, LogIndex(i), vec![(i % 251) as u8; size]))
                        .collect();
                    log.append(&new).unwrap();
                    model.entries.truncate((start - model.compacted.0 - 1) as usize);
                    model.entries.extend(new);
                }
                Step::Compact { back } => {
                    let to = LogIndex(model.last().0.saturating_sub(back).max(model.compacted.0));
                    log.compact(to).unwrap();
                    if to > model.compacted {
                        let drop = (to.0 - model.compacted.0) as usize;
                        model.compacted_term = model.entries[drop - 1].term;
                        model.entries.drain(..drop);
                        model.compacted = to;
                    }
                }
                Step::SetHardState { vote } => {
                    let hs = HardState {
                        term: Term(model.term),
                        vote: vote.map(NodeId),
                        commit: model.compacted,
                    };
                    log.set_hard_state(hs).unwrap();
                    model.hard_state = hs;
                }
                Step::InstallSnapshot { percent, matching, voters, via_log_store } => {
                    let low = model.compacted.0.saturating_sub(2);
                    let high = model.last().0 + 8;
                    let index = LogIndex(low + (high - low) * percent / 100);
                    let term = match model.term(index) {
                        Some(t) if matching => t,
                        _ => {
                            model.term += 1;
                            Term(model.term)
                        }
                    };
                    let membership = Membership::with_voters((1..=voters).map(NodeId));
                    if via_log_store {
                        futures::executor::block_on(LogStore::install_snapshot(
                            &log,
                            index,
                            term,
                            membership.clone(),
                        ))
                        .unwrap();
                    } else {
                        log.install_snapshot(index, term, &membership).unwrap();
                    }
                    if index > model.compacted && model.term(index) != Some(term) {
                        model.entries.clear();
                        model.compacted = index;
                        model.compacted_term = term;
                        model.membership = membership;
                    }
                }
                Step::Reopen => {
                    drop(log);
                    log = LogFile::open(dir.path(), options.clone()).unwrap();
                }
            }
            check(&log, &model);
        }
    }
}

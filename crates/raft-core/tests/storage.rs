//! The in-memory store passes the storage conformance suite that every store must pass.

use raftline_core::testing::conformance;
use raftline_core::MemStorage;

#[test]
fn mem_storage_conforms() {
    conformance::run_all(MemStorage::new);
}

#[test]
fn clones_share_the_log_and_deep_clones_do_not() {
    use raftline_core::{Storage, StorageMut};
    use raftline_proto::{Entry, LogIndex, Membership, Term};

    let mut a = MemStorage::new(Membership::default());
    let b = a.clone();
    let c = a.deep_clone();
    a.append(&[Entry::normal(Term(1), LogIndex(1), "x")])
        .unwrap();
    assert_eq!(b.last_index().unwrap(), LogIndex(1));
    assert_eq!(c.last_index().unwrap(), LogIndex(0));
}

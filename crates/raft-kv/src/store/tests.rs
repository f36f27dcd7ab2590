//! Tests of the store: etcd's revision rules, ranges, transactions, leases, alarms,
//! compaction, and (in `model`) random commands against a small model.

use super::txn::{CompareResult, CompareTarget, Op};
use super::*;

fn put_req(k: &str, v: &str) -> PutReq {
    PutReq {
        key: k.into(),
        value: v.into(),
        prev_kv: true,
        ..PutReq::default()
    }
}

fn put(s: &mut Store, k: &str, v: &str) -> Outcome {
    s.apply(Command::Put(put_req(k, v)))
}

fn delete(s: &mut Store, k: &[u8], end: &[u8]) -> Outcome {
    s.apply(Command::DeleteRange(DeleteReq {
        key: k.to_vec(),
        range_end: end.to_vec(),
        prev_kv: true,
    }))
}

fn get(s: &Store, k: &str, rev: i64) -> Result<Option<KeyValue>, KvError> {
    let r = s.read(&RangeReq {
        key: k.into(),
        revision: rev,
        ..RangeReq::default()
    })?;
    Ok(r.kvs.into_iter().next())
}

#[test]
fn revisions_follow_etcd() {
    let mut s = Store::default();
    assert_eq!(s.revision(), 1);
    assert_eq!(
        put(&mut s, "a", "1"),
        Outcome::Put {
            revision: 2,
            prev: None
        }
    );
    let Outcome::Put {
        revision: 3,
        prev: Some(prev),
    } = put(&mut s, "a", "2")
    else {
        panic!("second put")
    };
    assert_eq!(
        (
            prev.value.as_slice(),
            prev.version,
            prev.create_revision,
            prev.mod_revision
        ),
        (&b"1"[..], 1, 2, 2)
    );
    put(&mut s, "b", "x");
    let a = get(&s, "a", 0).unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    // A delete of nothing does not raise the revision; a delete of two keys raises it once.
    let Outcome::Deleted {
        revision: 4, prev, ..
    } = delete(&mut s, b"z", b"")
    else {
        panic!("empty delete")
    };
    assert!(prev.is_empty());
    let Outcome::Deleted {
        revision: 5, prev, ..
    } = delete(&mut s, b"a", &[0])
    else {
        panic!("delete all")
    };
    assert_eq!(prev.len(), 2);
    // A key created again starts a new version history.
    put(&mut s, "a", "3");
    let a = get(&s, "a", 0).unwrap().unwrap();
    assert_eq!((a.create_revision, a.version), (6, 1));
    // Old revisions read as they were.
    assert_eq!(get(&s, "a", 2).unwrap().unwrap().value, b"1");
    assert_eq!(get(&s, "a", 3).unwrap().unwrap().value, b"2");
    assert_eq!(get(&s, "a", 5).unwrap(), None);
    assert_eq!(get(&s, "a", 7), Err(KvError::FutureRevision));
    s.kv().check(s.revision());
}

#[test]
fn ranges_follow_etcd() {
    let mut s = Store::default();
    for k in ["a", "ab", "abc", "b", "c"] {
        put(&mut s, k, k);
    }
    let keys = |k: &[u8], e: &[u8]| {
        s.range(k, e)
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(b"ab", b""), ["ab"]);
    assert_eq!(keys(b"a", b"b"), ["a", "ab", "abc"]);
    assert_eq!(keys(b"b", &[0]), ["b", "c"]);
    assert_eq!(keys(&[0], &[0]), ["a", "ab", "abc", "b", "c"]);
    assert!(keys(b"c", b"a").is_empty());
}

#[test]
fn compaction_keeps_what_later_revisions_read() {
    let mut s = Store::default();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    put(&mut s, "b", "1"); // 4
    delete(&mut s, b"b", b""); // 5
    put(&mut s, "c", "1"); // 6
    assert!(matches!(
        s.apply(Command::Compact { revision: 5 }),
        Outcome::Compacted { revision: 6 }
    ));
    s.kv().check(s.revision());
    assert_eq!(get(&s, "a", 4), Err(KvError::Compacted));
    assert_eq!(get(&s, "a", 5).unwrap().unwrap().value, b"2");
    assert_eq!(get(&s, "b", 5).unwrap(), None);
    assert_eq!(get(&s, "c", 6).unwrap().unwrap().value, b"1");
    let failed = |error| Outcome::Failed { revision: 6, error };
    assert_eq!(
        s.apply(Command::Compact { revision: 5 }),
        failed(KvError::Compacted)
    );
    assert_eq!(
        s.apply(Command::Compact { revision: 7 }),
        failed(KvError::FutureRevision)
    );
    // Events from the compaction point on are still there.
    let events = s.kv().events(&[0], &[0], 5, usize::MAX);
    assert_eq!(
        events.iter().map(|e| e.rev.main).collect::<Vec<_>>(),
        [6],
        "the tombstone at 5 is gone with the history below it"
    );
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> txn::Compare {
    txn::Compare {
        result,
        target,
        key: key.into(),
        range_end: Vec::new(),
    }
}

#[test]
fn a_transaction_is_one_revision_and_runs_one_branch() {
    let mut s = Store::default();
    put(&mut s, "a", "1"); // 2
    let t = TxnReq {
        compare: vec![cmp(
            "a",
            CompareResult::Equal,
            CompareTarget::Value("1".into()),
        )],
        success: vec![
            Op::Put(put_req("a", "2")),
            Op::Put(put_req("b", "2")),
            Op::Range(RangeReq {
                key: "a".into(),
                range_end: "c".into(),
                ..RangeReq::default()
            }),
        ],
        failure: vec![Op::Delete(DeleteReq {
            key: "a".into(),
            ..DeleteReq::default()
        })],
    };
    let Outcome::Txn {
        revision: 3,
        response,
    } = s.apply(Command::Txn(t.clone()))
    else {
        panic!("txn")
    };
    assert!(response.succeeded);
    let OpResp::Range(r) = &response.responses[2] else {
        panic!("range")
    };
    assert_eq!(r.count, 2, "the txn's reads see its writes");
    assert!(r.kvs.iter().all(|kv| kv.mod_revision == 3));
    // Now the compare fails: the failure branch deletes a.
    let Outcome::Txn {
        revision: 4,
        response,
    } = s.apply(Command::Txn(t))
    else {
        panic!("txn")
    };
    assert!(!response.succeeded);
    assert_eq!(get(&s, "a", 0).unwrap(), None);
    // Compares on a missing key: version 0, value never equal.
    let missing = TxnReq {
        compare: vec![
            cmp("zz", CompareResult::Equal, CompareTarget::Version(0)),
            cmp("zz", CompareResult::NotEqual, CompareTarget::Value(vec![])),
        ],
        ..TxnReq::default()
    };
    assert!(
        !s.read_txn(&missing).unwrap().succeeded,
        "a value compare on a missing key fails"
    );
}

#[test]
fn a_failing_transaction_changes_nothing() {
    let mut s = Store::default();
    let t = TxnReq {
        success: vec![
            Op::Put(put_req("a", "1")),
            Op::Put(PutReq {
                key: "b".into(),
                lease: 42,
                ..PutReq::default()
            }),
        ],
        ..TxnReq::default()
    };
    let before = s.clone();
    assert_eq!(
        s.apply(Command::Txn(t)),
        Outcome::Failed {
            revision: 1,
            error: KvError::LeaseNotFound
        }
    );
    assert_eq!(s, before);
    let ignore = PutReq {
        key: "x".into(),
        ignore_value: true,
        ..PutReq::default()
    };
    assert!(matches!(
        s.apply(Command::Put(ignore)),
        Outcome::Failed {
            error: KvError::KeyNotFound,
            ..
        }
    ));
}

#[test]
fn validation_refuses_duplicate_keys_and_too_many_ops() {
    let dup = TxnReq {
        success: vec![Op::Put(put_req("a", "1")), Op::Put(put_req("a", "2"))],
        ..TxnReq::default()
    };
    assert_eq!(dup.validate(txn::TXN_OPS_MAX), Err(KvError::DuplicateKey));
    let overlap = TxnReq {
        success: vec![
            Op::Put(put_req("ab", "1")),
            Op::Delete(DeleteReq {
                key: "a".into(),
                range_end: "b".into(),
                prev_kv: false,
            }),
        ],
        ..TxnReq::default()
    };
    assert_eq!(
        overlap.validate(txn::TXN_OPS_MAX),
        Err(KvError::DuplicateKey)
    );
    let many = TxnReq {
        success: (0..=txn::TXN_OPS_MAX)
            .map(|i| Op::Put(put_req(&i.to_string(), "")))
            .collect(),
        ..TxnReq::default()
    };
    assert_eq!(many.validate(txn::TXN_OPS_MAX), Err(KvError::TooManyOps));
    let branches = TxnReq {
        success: vec![Op::Put(put_req("a", "1"))],
        failure: vec![Op::Put(put_req("a", "2"))],
        ..TxnReq::default()
    };
    assert_eq!(
        branches.validate(txn::TXN_OPS_MAX),
        Ok(()),
        "each branch on its own"
    );
}

#[test]
fn leases_attach_keys_and_revoke_deletes_them_in_one_revision() {
    let mut s = Store::default();
    assert_eq!(
        s.apply(Command::LeaseGrant { id: 7, ttl: 10 }),
        Outcome::LeaseGranted { revision: 1 }
    );
    assert!(matches!(
        s.apply(Command::LeaseGrant { id: 7, ttl: 10 }),
        Outcome::Failed {
            error: KvError::LeaseExists,
            ..
        }
    ));
    for k in ["a", "b"] {
        s.apply(Command::Put(PutReq {
            key: k.into(),
            lease: 7,
            ..PutReq::default()
        }));
    }
    put(&mut s, "c", "no lease"); // 4
                                  // Moving b off the lease detaches it.
    put(&mut s, "b", "detached"); // 5
    assert_eq!(s.leases()[&7].keys.len(), 1);
    assert_eq!(
        s.apply(Command::LeaseRevoke { id: 7 }),
        Outcome::LeaseRevoked { revision: 6 }
    );
    assert_eq!(get(&s, "a", 0).unwrap(), None);
    assert!(get(&s, "b", 0).unwrap().is_some());
    assert!(s.leases().is_empty());
    assert!(matches!(
        s.apply(Command::LeaseRevoke { id: 7 }),
        Outcome::Failed {
            error: KvError::LeaseNotFound,
            ..
        }
    ));
}

#[test]
fn nospace_refuses_puts_until_disarmed() {
    let mut s = Store::default();
    s.apply(Command::Alarm {
        action: AlarmAction::Activate,
        member: 3,
        alarm: Some(AlarmType::NoSpace),
    });
    assert!(matches!(
        put(&mut s, "a", "1"),
        Outcome::Failed {
            error: KvError::NoSpace,
            ..
        }
    ));
    assert!(matches!(delete(&mut s, b"a", b""), Outcome::Deleted { .. }));
    let Outcome::Alarms { alarms, .. } = s.apply(Command::Alarm {
        action: AlarmAction::Get,
        member: 0,
        alarm: None,
    }) else {
        panic!("alarms")
    };
    assert_eq!(
        alarms,
        [Alarm {
            member: 3,
            alarm: AlarmType::NoSpace
        }]
    );
    s.apply(Command::Alarm {
        action: AlarmAction::Deactivate,
        member: 3,
        alarm: Some(AlarmType::NoSpace),
    });
    assert!(matches!(put(&mut s, "a", "1"), Outcome::Put { .. }));
}

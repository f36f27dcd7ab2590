//! Applying key, lease and alarm commands to the store.
//!
//! A request that writes runs in a [`Writer`]: every change gets the main revision
//! `revision + 1` and the next sub-revision, and the store's revision moves only if something
//! changed. A transaction first decides, against the state before it, which branch of it and
//! of every nested transaction runs ([`decide`]), then checks that branch's requests (leases
//! exist, `ignore_*` keys exist, read revisions are readable: [`check`]), and only then
//! writes, so a failing transaction changes nothing.

use super::mvcc::Rev;
use super::txn::{Compare, Op};
use super::*;

/// Which branch of a transaction runs, and the same for each nested transaction of it.
struct Decision {
    succeeded: bool,
    /// One per `Op::Txn` of the chosen branch, in order.
    nested: Vec<Decision>,
}

/// Whether a compare holds against the store: for a range, for every key of it (a range with
/// no key compares as one missing key).
fn compare_holds(store: &Store, c: &Compare) -> bool {
    if c.range_end.is_empty() {
        return c.holds(store.kv.get(&c.key));
    }
    let mut keys = store.kv.range(&c.key, &c.range_end).peekable();
    if keys.peek().is_none() {
        return c.holds(None);
    }
    keys.all(|kv| c.holds(Some(kv)))
}

fn decide(store: &Store, t: &TxnReq) -> Decision {
    let succeeded = t.compare.iter().all(|c| compare_holds(store, c));
    let branch = if succeeded { &t.success } else { &t.failure };
    let nested = branch
        .iter()
        .filter_map(|op| match op {
            Op::Txn(inner) => Some(decide(store, inner)),
            _ => None,
        })
        .collect();
    Decision { succeeded, nested }
}

fn branch<'t>(t: &'t TxnReq, d: &Decision) -> &'t [Op] {
    if d.succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// etcd's checks of the requests that will run, against the state before the transaction.
fn check(store: &Store, ops: &[Op], d: &Decision) -> Result<(), KvError> {
    let mut nested = d.nested.iter();
    for op in ops {
        match op {
            Op::Range(r) => {
                store.kv.check_read(r.revision, store.revision)?;
            }
            Op::Put(p) => check_put(store, p)?,
            Op::Delete(_) => {}
            Op::Txn(t) => {
                let inner = nested.next().expect("one decision per nested txn");
                check(store, branch(t, inner), inner)?;
            }
        }
    }
    Ok(())
}

fn check_put(store: &Store, p: &PutReq) -> Result<(), KvError> {
    if (p.ignore_value || p.ignore_lease) && store.kv.get(&p.key).is_none() {
        return Err(KvError::KeyNotFound);
    }
    if p.lease != 0 && !p.ignore_lease && !store.leases.contains_key(&p.lease) {
        return Err(KvError::LeaseNotFound);
    }
    Ok(())
}

/// Whether the transaction has a put in either branch, nested transactions included: etcd
/// refuses such a transaction while NOSPACE is raised, whichever branch would run (its capped
/// applier refuses any transaction whose `costTxn` is not 0, and that counts the puts of both
/// branches; it misses nested puts, which count here).
fn has_put(t: &TxnReq) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        Op::Put(_) => true,
        Op::Txn(inner) => has_put(inner),
        Op::Range(_) | Op::Delete(_) => false,
    })
}

/// A request in progress at main revision `main`.
struct Writer<'a> {
    store: &'a mut Store,
    main: i64,
    sub: i64,
}

impl<'a> Writer<'a> {
    fn new(store: &'a mut Store) -> Self {
        let main = store.revision + 1;
        Writer {
            store,
            main,
            sub: 0,
        }
    }

    /// Ends the request: the store's revision after it.
    fn finish(self) -> i64 {
        if self.sub > 0 {
            self.store.revision = self.main;
        }
        self.store.revision
    }

    fn next_rev(&mut self) -> Rev {
        let rev = Rev {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        rev
    }

    /// A read inside the request sees its earlier writes.
    fn range(&self, r: &RangeReq) -> Result<RangeResp, KvError> {
        let at = match r.revision {
            rev if rev <= 0 => i64::MAX,
            rev => self.store.kv.check_read(rev, self.store.revision)?,
        };
        Ok(r.answer(self.store.kv.range_at(&r.key, &r.range_end, at).collect()))
    }

    fn put(&mut self, p: &PutReq) -> PutResp {
        let rev = self.next_rev();
        let old = self.store.kv.get(&p.key).cloned();
        let (create_revision, version) = old
            .as_ref()
            .map_or((rev.main, 1), |o| (o.create_revision, o.version + 1));
        let value = match (&old, p.ignore_value) {
            (Some(o), true) => o.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&old, p.ignore_lease) {
            (Some(o), true) => o.lease,
            _ => p.lease,
        };
        if let Some(o) = &old {
            self.detach(o.lease, &p.key);
        }
        if let Some(l) = self.store.leases.get_mut(&lease).filter(|_| lease != 0) {
            l.keys.insert(p.key.clone());
        }
        let kv = KeyValue {
            key: p.key.clone(),
            value,
            create_revision,
            mod_revision: rev.main,
            version,
            lease,
        };
        self.store.kv.put(rev, kv);
        PutResp {
            prev: old.filter(|_| p.prev_kv),
        }
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if let Some(l) = self.store.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    fn delete(&mut self, d: &DeleteReq) -> DeleteResp {
        let keys: Vec<Vec<u8>> = self
            .store
            .kv
            .range(&d.key, &d.range_end)
            .map(|kv| kv.key.clone())
            .collect();
        let mut prev = Vec::with_capacity(keys.len());
        for key in keys {
            let rev = self.next_rev();
            if let Some(old) = self.store.kv.delete(rev, &key) {
                self.detach(old.lease, &key);
                prev.push(old);
            }
        }
        DeleteResp {
            deleted: prev.len() as i64,
            prev: if d.prev_kv { prev } else { Vec::new() },
        }
    }

    fn txn(&mut self, t: &TxnReq, d: &Decision) -> Result<TxnResp, KvError> {
        let mut nested = d.nested.iter();
        let mut responses = Vec::new();
        for op in branch(t, d) {
            responses.push(match op {
                Op::Range(r) => OpResp::Range(self.range(r)?),
                Op::Put(p) => OpResp::Put(self.put(p)),
                Op::Delete(del) => OpResp::Delete(self.delete(del)),
                Op::Txn(inner) => {
                    let decision = nested.next().expect("one decision per nested txn");
                    OpResp::Txn(self.txn(inner, decision)?)
                }
            });
        }
        Ok(TxnResp {
            succeeded: d.succeeded,
            responses,
        })
    }
}

/// A transaction that only reads, served from the store as it is.
pub(super) struct ReadOnly<'a>(pub(super) &'a Store);

impl ReadOnly<'_> {
    pub(super) fn txn(&self, t: &TxnReq) -> Result<TxnResp, KvError> {
        let d = decide(self.0, t);
        check(self.0, branch(t, &d), &d)?;
        self.run(t, &d)
    }

    fn run(&self, t: &TxnReq, d: &Decision) -> Result<TxnResp, KvError> {
        let mut nested = d.nested.iter();
        let mut responses = Vec::new();
        for op in branch(t, d) {
            responses.push(match op {
                Op::Range(r) => OpResp::Range(self.0.read(r)?),
                Op::Txn(inner) => {
                    let decision = nested.next().expect("one decision per nested txn");
                    OpResp::Txn(self.run(inner, decision)?)
                }
                Op::Put(_) | Op::Delete(_) => unreachable!("a read-only transaction writes"),
            });
        }
        Ok(TxnResp {
            succeeded: d.succeeded,
            responses,
        })
    }
}

/// Keeps the CRC-32C of what is written to it.
pub(super) struct CrcWriter(pub(super) u32);

impl io::Write for CrcWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = crc32c::crc32c_append(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Store {
    fn failed(&self, error: KvError) -> Outcome {
        Outcome::Failed {
            revision: self.revision,
            error,
        }
    }

    fn no_space(&self) -> bool {
        self.alarms.iter().any(|a| a.alarm == AlarmType::NoSpace)
    }

    pub(super) fn apply_put(&mut self, p: PutReq) -> Outcome {
        if self.no_space() {
            return self.failed(KvError::NoSpace);
        }
        // A put on its own checks its lease before `ignore_*` (etcd's `Put`); in a
        // transaction the order is the other way round (etcd's `checkPut`).
        if p.lease != 0 && !p.ignore_lease && !self.leases.contains_key(&p.lease) {
            return self.failed(KvError::LeaseNotFound);
        }
        if let Err(e) = check_put(self, &p) {
            return self.failed(e);
        }
        let mut w = Writer::new(self);
        let PutResp { prev } = w.put(&p);
        Outcome::Put {
            revision: w.finish(),
            prev,
        }
    }

    pub(super) fn apply_delete(&mut self, d: DeleteReq) -> Outcome {
        let mut w = Writer::new(self);
        let DeleteResp { deleted, prev } = w.delete(&d);
        Outcome::Deleted {
            revision: w.finish(),
            deleted,
            prev,
        }
    }

    pub(super) fn apply_txn(&mut self, t: TxnReq) -> Outcome {
        if self.no_space() && has_put(&t) {
            return self.failed(KvError::NoSpace);
        }
        let d = decide(self, &t);
        let ops = branch(&t, &d);
        if let Err(e) = check(self, ops, &d) {
            return self.failed(e);
        }
        let mut w = Writer::new(self);
        let response = w.txn(&t, &d).expect("checked before writing");
        Outcome::Txn {
            revision: w.finish(),
            response,
        }
    }

    pub(super) fn apply_compact(&mut self, revision: i64) -> Outcome {
        if revision > self.revision {
            return self.failed(KvError::FutureRevision);
        }
        if revision <= self.kv.compacted() {
            return self.failed(KvError::Compacted);
        }
        self.kv.compact(revision);
        Outcome::Compacted {
            revision: self.revision,
        }
    }

    pub(super) fn apply_grant(&mut self, id: i64, ttl: i64) -> Outcome {
        if self.no_space() {
            return self.failed(KvError::NoSpace);
        }
        if self.leases.contains_key(&id) {
            return self.failed(KvError::LeaseExists);
        }
        if id == 0 {
            // 0 means "no lease": the proposer always picks another id.
            return self.failed(KvError::LeaseNotFound);
        }
        let keys = BTreeSet::new();
        self.leases.insert(id, Lease { ttl, keys });
        Outcome::LeaseGranted {
            revision: self.revision,
        }
    }

    pub(super) fn apply_revoke(&mut self, id: i64) -> Outcome {
        let Some(lease) = self.leases.remove(&id) else {
            return self.failed(KvError::LeaseNotFound);
        };
        let mut w = Writer::new(self);
        for key in &lease.keys {
            let rev = w.next_rev();
            w.store.kv.delete(rev, key);
        }
        Outcome::LeaseRevoked {
            revision: w.finish(),
        }
    }

    pub(super) fn apply_alarm(
        &mut self,
        action: AlarmAction,
        member: u64,
        alarm: Option<AlarmType>,
    ) -> Outcome {
        let matches = |a: &Alarm| {
            (member == 0 || a.member == member) && alarm.is_none_or(|kind| a.alarm == kind)
        };
        let alarms: Vec<Alarm> = match (action, alarm) {
            (AlarmAction::Activate, Some(kind)) => {
                let raised = Alarm {
                    member,
                    alarm: kind,
                };
                self.alarms.insert(raised);
                vec![raised]
            }
            (AlarmAction::Activate, None) => Vec::new(),
            (AlarmAction::Deactivate, _) => {
                let cleared: Vec<Alarm> = self.alarms.iter().copied().filter(matches).collect();
                self.alarms.retain(|a| !matches(a));
                cleared
            }
            (AlarmAction::Get, _) => self.alarms.iter().copied().filter(matches).collect(),
        };
        Outcome::Alarms {
            revision: self.revision,
            alarms,
        }
    }
}

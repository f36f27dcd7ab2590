//! The nemesis: a seeded schedule of faults, one at a time, every few seconds, each kind in
//! turn. Kill: SIGKILL one member (the leader 40 % of the time), or now and then two or all
//! of them, and restart them 1-3 s later on the same data; pause: SIGSTOP a member (sometimes
//! the leader) for 1-3 s; partition and the other network faults ([`partition`]); membership
//! changes through etcd's Cluster API ([`membership`]); a full disk ([`disk`]). Each fault is
//! recorded with its start and end.

mod disk;
mod membership;
mod partition;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use raftline_core::Rng;

use super::loopfs::Disks;
use super::net::Net;
use super::nodes::Nodes;
use super::workload::Shared;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL and restart.
    Kill,
    /// SIGSTOP and SIGCONT.
    Pause,
    /// nftables rules between namespaces, links set down, packet loss and latency.
    Partition,
    /// Members removed, added (fresh) and promoted, leadership moved.
    Membership,
    /// A member's filesystem filled up.
    Disk,
}

impl Kind {
    /// Every kind, in the order of the summary.
    pub const ALL: [Kind; 5] = [
        Kind::Kill,
        Kind::Pause,
        Kind::Partition,
        Kind::Membership,
        Kind::Disk,
    ];

    /// Parses `kill`, `pause`, `partition`, `membership`, `disk`.
    pub fn parse(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown nemesis `{s}` (kill, pause, partition, membership, disk, all)")
            })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Membership => "membership",
            Kind::Disk => "disk",
        }
    }
}

/// One injected fault (times in microseconds since the start).
#[derive(Clone, Debug)]
pub struct Fault {
    /// Its kind.
    pub kind: Kind,
    /// What exactly: `kill n2 (leader)`.
    pub detail: String,
    /// When it began.
    pub start: u64,
    /// When it was healed.
    pub end: u64,
}

/// The pause between two faults: at least this...
const GAP_MS_MIN: u64 = 1000;

/// ... plus up to this much more.
const GAP_MS_SPREAD: u64 = 1500;

/// How long a fault holds, on top of its kind's minimum: up to this much more.
const HOLD_MS_SPREAD: u64 = 2000;

/// A kill or a pause holds at least this long.
const KILL_HOLD_MS_MIN: u64 = 1000;

/// What the nemesis works on.
pub struct Nemesis<'a> {
    /// The members.
    pub nodes: &'a RefCell<Nodes>,
    /// The network, if members have namespaces.
    pub net: Option<&'a Net>,
    /// The members' small filesystems, if the disk nemesis runs.
    pub disks: Option<&'a Disks>,
    /// The clock.
    pub shared: &'a Shared,
    /// The fault in progress, for the progress line.
    pub current: RefCell<String>,
    /// Every fault so far.
    pub faults: RefCell<Vec<Fault>>,
    /// Members that died in a way a fault does not excuse (a signal under a full disk, ...).
    pub crashes: RefCell<Vec<String>>,
    /// The end of the load: a fault still on then is cut short by the final heal.
    pub until: Instant,
}

impl Nemesis<'_> {
    /// Injects faults of `kinds` until `self.until`, healing each before the next; the last
    /// one may still be on at `until` and is then healed at once (the final heal).
    pub async fn run(&self, kinds: &[Kind], seed: u64) -> Result<(), String> {
        let until = self.until;
        let mut rng = Rng::new(seed ^ 0x006e_656d_6573_6973);
        if kinds.is_empty() {
            tokio::time::sleep_until(until.into()).await;
            return Ok(());
        }
        let first = rng.below(kinds.len() as u64) as usize;
        for turn in 0.. {
            let wait = Duration::from_millis(GAP_MS_MIN + rng.below(GAP_MS_SPREAD));
            if Instant::now() + wait >= until {
                tokio::time::sleep_until(until.into()).await;
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            // Each kind in turn, from a seeded start: every kind gets its share of a short run.
            let kind = kinds[(first + turn) % kinds.len()];
            let start = self.shared.now();
            let detail = match kind {
                Kind::Kill => Some(self.kill(&mut rng).await?),
                Kind::Pause => Some(self.pause(&mut rng).await),
                Kind::Partition => Some(self.partition(&mut rng).await?),
                Kind::Disk => Some(self.disk(&mut rng).await?),
                // Records its own faults: one per step.
                Kind::Membership => {
                    self.membership(&mut rng).await?;
                    None
                }
            };
            self.current.replace(String::new());
            if let Some(detail) = detail {
                self.record(kind, detail, start);
            }
        }
        Ok(())
    }

    /// Records a fault that began at `start` and ends now.
    fn record(&self, kind: Kind, detail: String, start: u64) {
        let end = self.shared.now();
        self.faults.borrow_mut().push(Fault {
            kind,
            detail,
            start,
            end,
        });
    }

    /// A member: the leader (when one is known) with probability `p`, any member otherwise.
    async fn target(&self, rng: &mut Rng, p: f64) -> (usize, &'static str) {
        let members = self.nodes.borrow().members();
        if rng.chance(p) {
            let live = self.nodes.borrow().live();
            let leader = super::nodes::find_leader(live).await;
            if let Some(l) = leader {
                return (l, " (leader)");
            }
        }
        (members[rng.below(members.len() as u64) as usize], "")
    }

    fn name(&self, i: usize) -> String {
        self.nodes.borrow().addr(i).name.clone()
    }

    /// Says `detail` on the progress line and waits `min_ms` plus up to [`HOLD_MS_SPREAD`]
    /// (never past the end of the load).
    async fn hold(&self, rng: &mut Rng, min_ms: u64, detail: &str) {
        self.current.replace(detail.to_string());
        let end = Instant::now() + Duration::from_millis(min_ms + rng.below(HOLD_MS_SPREAD));
        tokio::time::sleep_until(end.min(self.until).into()).await;
    }

    async fn kill(&self, rng: &mut Rng) -> Result<String, String> {
        let members = self.nodes.borrow().members();
        let n = members.len();
        let (victims, detail) = match rng.below(100) {
            0..=14 => (members.clone(), "kill all members".to_string()),
            15..=29 => {
                let a = rng.below(n as u64) as usize;
                let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
                let (a, b) = (members[a], members[b]);
                let detail = format!("kill {} and {}", self.name(a), self.name(b));
                (vec![a, b], detail)
            }
            _ => {
                let (i, why) = self.target(rng, 0.4).await;
                (vec![i], format!("kill {}{why}", self.name(i)))
            }
        };
        for &i in &victims {
            self.nodes.borrow_mut().kill(i);
        }
        self.hold(rng, KILL_HOLD_MS_MIN, &detail).await;
        for &i in &victims {
            self.nodes.borrow_mut().restart(i)?;
        }
        Ok(detail)
    }

    async fn pause(&self, rng: &mut Rng) -> String {
        let (i, why) = self.target(rng, 0.35).await;
        let detail = format!("pause {}{why}", self.name(i));
        self.nodes.borrow_mut().pause(i);
        self.hold(rng, KILL_HOLD_MS_MIN, &detail).await;
        self.nodes.borrow_mut().resume(i);
        detail
    }
}

/// Shuffles `v` with `rng` (Fisher-Yates).
fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

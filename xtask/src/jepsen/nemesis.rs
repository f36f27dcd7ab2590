//! The nemesis: a seeded schedule of faults, one at a time, every few seconds. Kill: SIGKILL
//! one member (the leader 40 % of the time), or now and then two or all of them, and restart them
//! 1-3 s later on the same data; pause: SIGSTOP a member (sometimes the leader) for 1-3 s;
//! partition: isolate a member, isolate the leader, split the members into a majority and a
//! minority, or a bridge (one member reaches both halves, which do not reach each other), for
//! 2-4 s. Each fault is recorded with its start and end.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use raftline_core::Rng;

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
    /// nftables rules between namespaces.
    Partition,
}

impl Kind {
    /// Parses `kill`, `pause`, `partition`.
    pub fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "kill" => Ok(Kind::Kill),
            "pause" => Ok(Kind::Pause),
            "partition" => Ok(Kind::Partition),
            other => Err(format!(
                "unknown nemesis `{other}` (this slice has kill, pause, partition)"
            )),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
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

/// What the nemesis works on.
pub struct Nemesis<'a> {
    /// The members.
    pub nodes: &'a RefCell<Nodes>,
    /// The network, if members have namespaces.
    pub net: Option<&'a Net>,
    /// The clock.
    pub shared: &'a Shared,
    /// The fault in progress, for the progress line.
    pub current: RefCell<String>,
    /// Every fault so far.
    pub faults: RefCell<Vec<Fault>>,
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
        loop {
            let wait = Duration::from_millis(1000 + rng.below(1500));
            if Instant::now() + wait >= until {
                tokio::time::sleep_until(until.into()).await;
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            // Each kind in turn, from a seeded start: every kind gets its share of a short run.
            let kind = kinds[(first + self.faults.borrow().len()) % kinds.len()];
            let start = self.shared.now();
            let detail = match kind {
                Kind::Kill => self.kill(&mut rng).await?,
                Kind::Pause => self.pause(&mut rng).await,
                Kind::Partition => self.partition(&mut rng).await?,
            };
            self.current.replace(String::new());
            let end = self.shared.now();
            self.faults.borrow_mut().push(Fault {
                kind,
                detail,
                start,
                end,
            });
        }
    }

    /// A member: the leader (when one is known) with probability `p`, any member otherwise.
    async fn target(&self, rng: &mut Rng, p: f64) -> (usize, &'static str) {
        let n = self.nodes.borrow().len() as u64;
        if rng.chance(p) {
            let live = self.nodes.borrow().live();
            let leader = super::nodes::find_leader(live).await;
            if let Some(l) = leader {
                return (l, " (leader)");
            }
        }
        (rng.below(n) as usize, "")
    }

    fn name(&self, i: usize) -> String {
        self.nodes.borrow().addr(i).name.clone()
    }

    async fn hold(&self, rng: &mut Rng, min_ms: u64, detail: &str) {
        self.current.replace(detail.to_string());
        let end = Instant::now() + Duration::from_millis(min_ms + rng.below(2000));
        tokio::time::sleep_until(end.min(self.until).into()).await;
    }

    async fn kill(&self, rng: &mut Rng) -> Result<String, String> {
        let n = self.nodes.borrow().len();
        let (victims, detail) = match rng.below(100) {
            0..=14 => ((0..n).collect::<Vec<_>>(), "kill all members".to_string()),
            15..=29 => {
                let a = rng.below(n as u64) as usize;
                let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
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
        self.hold(rng, 1000, &detail).await;
        for &i in &victims {
            self.nodes.borrow_mut().restart(i)?;
        }
        Ok(detail)
    }

    async fn pause(&self, rng: &mut Rng) -> String {
        let (i, why) = self.target(rng, 0.35).await;
        let detail = format!("pause {}{why}", self.name(i));
        self.nodes.borrow_mut().pause(i);
        self.hold(rng, 1000, &detail).await;
        self.nodes.borrow_mut().resume(i);
        detail
    }

    async fn partition(&self, rng: &mut Rng) -> Result<String, String> {
        let Some(net) = self.net else {
            return Ok("partition skipped (no namespaces)".into());
        };
        let n = self.nodes.borrow().len();
        let (i, why) = self.target(rng, 0.5).await;
        let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        shuffle(&mut order, rng);
        // Sides as member indices from 0; `blocked(a, b)` says a does not hear b.
        let (detail, pairs) = match rng.below(3) {
            0 => {
                let pairs = order.iter().flat_map(|&j| [(i, j), (j, i)]).collect();
                (format!("isolate {}{why}", self.name(i)), pairs)
            }
            1 => {
                let mut minority = vec![i];
                minority.extend(order.iter().take((n - 1) / 2 - 1));
                let majority: Vec<usize> = (0..n).filter(|j| !minority.contains(j)).collect();
                let pairs = cross(&minority, &majority);
                let names = |s: &[usize]| s.iter().map(|&j| self.name(j)).collect::<Vec<_>>();
                let d = format!("split {:?} | {:?}", names(&minority), names(&majority));
                (d, pairs)
            }
            _ => {
                let half = order.len() / 2;
                let (a, b) = order.split_at(half);
                let d = format!("bridge through {}{why}", self.name(i));
                (d, cross(a, b))
            }
        };
        apply(net, n, &pairs).map_err(|e| e.to_string())?;
        self.hold(rng, 2000, &detail).await;
        net.heal();
        Ok(detail)
    }
}

/// Both directions between every member of `a` and every member of `b`.
fn cross(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    a.iter()
        .flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)]))
        .collect()
}

/// Installs the rules: member `a` drops what comes from `b`, for each `(a, b)`.
fn apply(net: &Net, n: usize, pairs: &[(usize, usize)]) -> Result<(), super::net::NetError> {
    for a in 0..n {
        let from: Vec<usize> = pairs
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, y)| y + 1)
            .collect();
        if !from.is_empty() {
            net.block(a + 1, &from)?;
        }
    }
    Ok(())
}

fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

//! The network faults: isolate a member (sometimes the leader), split the members into a
//! majority and a minority, a bridge (one member reaches both halves, which do not reach each
//! other), one-way partitions (a member hears the others but they do not hear it, or the
//! reverse), a member's link set down on the bridge, and packet loss (tc netem, or nftables
//! without netem) or latency (netem only), each for 2-4 s.

use raftline_core::Rng;

use super::super::net::{self, Net};
use super::{shuffle, Nemesis};

/// A network fault holds at least this long.
const HOLD_MS_MIN: u64 = 2000;

/// The chance that the fault's member is the leader.
const LEADER_CHANCE: f64 = 0.5;

/// Packet loss: at least this share, in percent...
const LOSS_PERCENT_MIN: u32 = 20;

/// ... plus up to this much more.
const LOSS_PERCENT_SPREAD: u64 = 30;

/// How many variants [`choose`] picks from.
const VARIANTS: u64 = 8;

/// One network fault, on members given by slot (from 0).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// nftables rules: `(a, b)`: `a` does not hear `b`.
    Rules(Vec<(usize, usize)>),
    /// The member's veth down.
    LinkDown(usize),
    /// The member loses this share of its packets, in percent.
    Loss(usize, u32),
    /// The member's packets are delayed (netem).
    Delay(usize),
}

/// A chosen fault: its description (`{i}`: the member it is about; `{a}` / `{b}`: the two
/// sides of a split), its plan, and the sides.
struct Choice {
    text: &'static str,
    plan: Plan,
    sides: (Vec<usize>, Vec<usize>),
}

/// The variant `choice` (from 0 to [`VARIANTS`]) about member `i`, with the other members in
/// `others` (shuffled) and `loss` percent for a loss; `netem`: latency can be made (else a
/// latency turns into a loss).
fn choose(choice: u64, i: usize, others: &[usize], loss: u32, netem: bool) -> Choice {
    let rules = |text, pairs| Choice {
        text,
        plan: Plan::Rules(pairs),
        sides: (Vec::new(), Vec::new()),
    };
    let alone = |text, plan| Choice {
        text,
        plan,
        sides: (Vec::new(), Vec::new()),
    };
    match choice {
        0 => rules("isolate {i}", cross(&[i], others)),
        1 => {
            let n = others.len() + 1;
            let mut minority = vec![i];
            minority.extend(others.iter().take((n - 1) / 2 - 1));
            let majority: Vec<usize> = others
                .iter()
                .copied()
                .filter(|j| !minority.contains(j))
                .collect();
            Choice {
                text: "split {a} | {b}",
                plan: Plan::Rules(cross(&minority, &majority)),
                sides: (minority, majority),
            }
        }
        2 => {
            let (a, b) = others.split_at(others.len() / 2);
            rules("bridge through {i}", cross(a, b))
        }
        3 => rules(
            "one-way: {i} hears the others, they do not hear it",
            others.iter().map(|&j| (j, i)).collect(),
        ),
        4 => rules(
            "one-way: the others hear {i}, it does not hear them",
            others.iter().map(|&j| (i, j)).collect(),
        ),
        5 => alone("link of {i} down", Plan::LinkDown(i)),
        7 if netem => alone("delay {i}", Plan::Delay(i)),
        _ => alone("loss on {i}", Plan::Loss(i, loss)),
    }
}

impl Nemesis<'_> {
    /// One network fault on the members, held 2-4 s, then healed.
    pub(super) async fn partition(&self, rng: &mut Rng) -> Result<String, String> {
        let Some(net) = self.net else {
            return Ok("partition skipped (no namespaces)".into());
        };
        let (i, why) = self.target(rng, LEADER_CHANCE).await;
        let mut others: Vec<usize> = self
            .nodes
            .borrow()
            .members()
            .into_iter()
            .filter(|&j| j != i)
            .collect();
        shuffle(&mut others, rng);
        let loss = LOSS_PERCENT_MIN + rng.below(LOSS_PERCENT_SPREAD) as u32;
        let choice = choose(rng.below(VARIANTS), i, &others, loss, net.has_netem());
        let how = self.install(net, &choice.plan).map_err(|e| e.to_string())?;
        let names = |s: &[usize]| s.iter().map(|&j| self.name(j)).collect::<Vec<_>>();
        let detail = choice
            .text
            .replace("{i}", &format!("{}{why}", self.name(i)))
            .replace("{a}", &format!("{:?}", names(&choice.sides.0)))
            .replace("{b}", &format!("{:?}", names(&choice.sides.1)))
            + &how;
        self.hold(rng, HOLD_MS_MIN, &detail).await;
        net.heal();
        Ok(detail)
    }

    /// Installs `plan`; returns what the detail adds (how a loss or delay was made).
    fn install(&self, net: &Net, plan: &Plan) -> Result<String, net::NetError> {
        match plan {
            Plan::Rules(pairs) => {
                apply(net, pairs)?;
                Ok(String::new())
            }
            Plan::LinkDown(i) => net
                .set_link(i + 1, false)
                .map(|()| format!(" ({} down)", net::host_link(i + 1))),
            Plan::Loss(i, percent) => {
                let by = net.lose(i + 1, *percent)?;
                Ok(format!(" ({percent} % by {})", by.name()))
            }
            Plan::Delay(i) => net.delay(i + 1).map(|()| {
                format!(
                    " ({} ms ± {} ms by tc netem)",
                    net::DELAY_MS,
                    net::DELAY_JITTER_MS
                )
            }),
        }
    }
}

/// Both directions between every member of `a` and every member of `b`.
fn cross(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    a.iter()
        .flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)]))
        .collect()
}

/// Installs the rules: member `a` drops what comes from `b`, for each `(a, b)` (slots from
/// 0; the namespaces count from 1).
fn apply(net: &Net, pairs: &[(usize, usize)]) -> Result<(), net::NetError> {
    let mut targets: Vec<usize> = pairs.iter().map(|&(a, _)| a).collect();
    targets.sort_unstable();
    targets.dedup();
    for a in targets {
        let from: Vec<usize> = pairs
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, y)| y + 1)
            .collect();
        net.block(a + 1, &from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(plan: &Plan) -> Vec<(usize, usize)> {
        match plan {
            Plan::Rules(p) => p.clone(),
            other => panic!("not rules: {other:?}"),
        }
    }

    #[test]
    fn one_way_partitions_block_one_direction_only() {
        let hears = choose(3, 1, &[0, 2], 30, false).plan;
        assert_eq!(
            rules(&hears),
            vec![(0, 1), (2, 1)],
            "the others drop what 1 sends"
        );
        let deaf = choose(4, 1, &[0, 2], 30, false).plan;
        assert_eq!(
            rules(&deaf),
            vec![(1, 0), (1, 2)],
            "1 drops what the others send"
        );
        let isolate = choose(0, 1, &[0, 2], 30, false).plan;
        assert_eq!(rules(&isolate).len(), 4);
    }

    #[test]
    fn splits_leave_a_majority_and_bridges_connect_both_halves() {
        // 5 members: 3 is in the minority with one other.
        let split = choose(1, 3, &[0, 4, 1, 2], 30, false);
        assert_eq!(split.sides, (vec![3, 0], vec![4, 1, 2]));
        let pairs = rules(&split.plan);
        assert!(pairs.contains(&(3, 1)) && pairs.contains(&(0, 2)) && pairs.contains(&(2, 0)));
        assert!(!pairs.contains(&(3, 0)) && !pairs.contains(&(1, 2)));
        let pairs = rules(&choose(2, 2, &[0, 1, 3, 4], 30, false).plan);
        assert!(pairs.iter().all(|&(a, b)| a != 2 && b != 2));
        assert!(pairs.contains(&(0, 3)) && pairs.contains(&(4, 1)) && !pairs.contains(&(0, 1)));
    }

    #[test]
    fn links_loss_and_latency_depend_on_netem() {
        assert_eq!(choose(5, 2, &[0, 1], 25, false).plan, Plan::LinkDown(2));
        assert_eq!(choose(6, 2, &[0, 1], 25, true).plan, Plan::Loss(2, 25));
        assert_eq!(choose(7, 2, &[0, 1], 25, true).plan, Plan::Delay(2));
        assert_eq!(choose(7, 2, &[0, 1], 25, false).plan, Plan::Loss(2, 25));
        assert!((0..VARIANTS).all(|c| choose(c, 0, &[1, 2], 25, false).plan != Plan::Delay(0)));
    }

    #[test]
    fn rule_text_names_the_sources_and_loss_spares_the_clients() {
        let block = net::block_rules(&["10.77.0.12".into(), "10.77.0.13".into()]);
        assert!(block.contains("ip saddr { 10.77.0.12, 10.77.0.13 } drop"));
        let loss = net::loss_rules(35);
        assert!(loss.contains("numgen random mod 100 < 35 drop"));
        assert_eq!(loss.matches("!= 10.77.0.1 ").count(), 2, "{loss}");
        assert!(loss.contains("hook input") && loss.contains("hook output"));
    }
}

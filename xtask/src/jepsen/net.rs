//! The network of a jepsen run: each member in a network namespace of its own (`rkvj-nI`),
//! joined by a veth pair to a bridge `rkvj-br` in the root namespace, which carries
//! `10.77.0.1/24` (this process's clients); member `nI` is `10.77.0.(10 + I)`. Partitions are
//! nftables tables inside the members' namespaces that drop what arrives from chosen peers
//! (client traffic, from `10.77.0.1`, always passes), or a member's veth set down on the
//! bridge (which cuts its clients too). Packet loss: `tc netem` on the member's `eth0` when the
//! kernel has `sch_netem` (probed once, in [`Net::create`]), else an nftables table dropping
//! a share of the member's peer traffic both ways (`numgen random mod 100 < N`); latency
//! needs netem and is skipped without it. Everything is named `rkvj-...`, and [`Net`]'s
//! `Drop` removes it; [`cleanup`] removes leftovers of a run that could not.

use std::io::Write;
use std::process::{Command, Stdio};

/// The prefix of every namespace and link this module creates.
pub const PREFIX: &str = "rkvj-";

/// The bridge, in the root namespace.
const BRIDGE: &str = "rkvj-br";

/// The bridge's address: where the clients' connections come from.
const BRIDGE_ADDR: &str = "10.77.0.1";

/// The subnet every address of a run lies in.
const SUBNET: &str = "10.77.0.0/24";

/// The nftables table of partitions, inside a member's namespace.
const TABLE: &str = "rkvj";

/// Latency netem adds on a member's link, in ms (with [`DELAY_JITTER_MS`] of jitter).
pub const DELAY_MS: u32 = 50;

/// Jitter of [`DELAY_MS`], in ms.
pub const DELAY_JITTER_MS: u32 = 20;

/// How a member's packets are lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossBy {
    /// `tc qdisc ... netem loss N%` on its `eth0` (its outgoing packets).
    Netem,
    /// An nftables table dropping N % of its peer traffic, in and out.
    Nft,
}

impl LossBy {
    /// Its name in fault details.
    pub fn name(self) -> &'static str {
        match self {
            LossBy::Netem => "tc netem",
            LossBy::Nft => "nftables numgen",
        }
    }
}

/// A failed network command.
#[derive(Debug)]
pub struct NetError(pub String);

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError(format!("cannot run `{what}`: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError(format!("`{what}`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether `nft` (nftables, which makes the partitions) can be run.
pub fn nft_available() -> Result<(), NetError> {
    run("nft", &["--version"], None).map_err(|e| {
        NetError(format!(
            "nftables' `nft` is not usable ({e}; apt-get install nftables)"
        ))
    })
}

/// The namespace of member `i` (from 1).
pub fn namespace(i: usize) -> String {
    format!("{PREFIX}n{i}")
}

/// The address of member `i` (from 1).
pub fn member_ip(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}

/// The host end (in the root namespace, on the bridge) of member `i`'s veth pair.
pub fn host_link(i: usize) -> String {
    format!("{}h", namespace(i))
}

/// The nftables table that makes a member drop what comes from `sources` (IP addresses).
pub fn block_rules(sources: &[String]) -> String {
    format!(
        "table inet {TABLE} {{\n chain input {{\n  type filter hook input priority 0; \
         policy accept;\n  ip saddr {{ {} }} drop\n }}\n}}\n",
        sources.join(", ")
    )
}

/// The nftables table that drops `percent` % of a member's peer traffic (from and to the
/// other members; its clients' traffic, with the bridge's address, passes).
pub fn loss_rules(percent: u32) -> String {
    format!(
        "table inet {TABLE} {{\n chain input {{\n  type filter hook input priority 0; \
         policy accept;\n  ip saddr {SUBNET} ip saddr != {BRIDGE_ADDR} numgen random mod 100 \
         < {percent} drop\n }}\n chain output {{\n  type filter hook output priority 0; \
         policy accept;\n  ip daddr {SUBNET} ip daddr != {BRIDGE_ADDR} numgen random mod 100 \
         < {percent} drop\n }}\n}}\n"
    )
}

/// The namespaces and links of a run; removed when dropped.
pub struct Net {
    nodes: usize,
    /// Whether the kernel has `sch_netem` (`tc qdisc ... netem` works).
    netem: bool,
}

impl Net {
    /// Creates the bridge and one namespace per member. Removes leftovers first; refuses if
    /// the subnet is routed somewhere else already.
    pub fn create(nodes: usize) -> Result<Net, NetError> {
        cleanup();
        if let Some(route) = foreign_route() {
            return Err(NetError(format!(
                "{SUBNET} is already routed on this machine ({route}): not touching it"
            )));
        }
        // From here on, a failure removes what was made.
        let mut net = Net {
            nodes,
            netem: false,
        };
        run("ip", &["link", "add", BRIDGE, "type", "bridge"], None)?;
        run(
            "ip",
            &["addr", "add", &format!("{BRIDGE_ADDR}/24"), "dev", BRIDGE],
            None,
        )?;
        run("ip", &["link", "set", BRIDGE, "up"], None)?;
        for i in 1..=nodes {
            add_member(i)?;
        }
        net.netem = probe_netem(&namespace(1));
        Ok(net)
    }

    /// Whether latency and loss go through `tc netem`.
    pub fn has_netem(&self) -> bool {
        self.netem
    }

    /// Sets member `a`'s veth (its host end, on the bridge) down or up.
    pub fn set_link(&self, a: usize, up: bool) -> Result<(), NetError> {
        let state = if up { "up" } else { "down" };
        run("ip", &["link", "set", &host_link(a), state], None)
    }

    /// Makes member `a` lose `percent` % of its packets: with netem if the kernel has it,
    /// else with nftables. Says which.
    pub fn lose(&self, a: usize, percent: u32) -> Result<LossBy, NetError> {
        if self.netem {
            let loss = format!("{percent}%");
            let ns = namespace(a);
            let args = [
                "-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "netem",
            ];
            run("tc", &[&args[..], &["loss", &loss]].concat(), None)?;
            return Ok(LossBy::Netem);
        }
        let ns = namespace(a);
        let _ = self.unblock(a);
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "/dev/stdin"],
            Some(&loss_rules(percent)),
        )?;
        Ok(LossBy::Nft)
    }

    /// Delays member `a`'s outgoing packets by [`DELAY_MS`] (netem only).
    pub fn delay(&self, a: usize) -> Result<(), NetError> {
        let (ms, jitter) = (format!("{DELAY_MS}ms"), format!("{DELAY_JITTER_MS}ms"));
        let ns = namespace(a);
        let args = [
            "-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "netem",
        ];
        run("tc", &[&args[..], &["delay", &ms, &jitter]].concat(), None)
    }

    /// Drops, in member `a`'s namespace, everything that comes from each member of `from`
    /// (replacing earlier rules of `a`).
    pub fn block(&self, a: usize, from: &[usize]) -> Result<(), NetError> {
        let _ = self.unblock(a);
        if from.is_empty() {
            return Ok(());
        }
        let sources: Vec<String> = from.iter().map(|&b| member_ip(b)).collect();
        let rules = block_rules(&sources);
        let ns = namespace(a);
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "/dev/stdin"],
            Some(&rules),
        )
    }

    /// Removes member `a`'s partition rules.
    pub fn unblock(&self, a: usize) -> Result<(), NetError> {
        let ns = namespace(a);
        run(
            "ip",
            &[
                "netns", "exec", &ns, "nft", "delete", "table", "inet", TABLE,
            ],
            None,
        )
    }

    /// Removes every partition and loss rule and netem qdisc, and sets every link up.
    pub fn heal(&self) {
        for i in 1..=self.nodes {
            let _ = self.unblock(i);
            let _ = self.set_link(i, true);
            if self.netem {
                let ns = namespace(i);
                let _ = run(
                    "tc",
                    &["-n", &ns, "qdisc", "del", "dev", "eth0", "root"],
                    None,
                );
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Makes member `i`'s namespace, its veth pair and addresses.
fn add_member(i: usize) -> Result<(), NetError> {
    let ns = namespace(i);
    let host = format!("{ns}h");
    run("ip", &["netns", "add", &ns], None)?;
    run(
        "ip",
        &[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
        None,
    )?;
    run("ip", &["link", "set", &host, "master", BRIDGE], None)?;
    run("ip", &["link", "set", &host, "up"], None)?;
    let addr = format!("{}/24", member_ip(i));
    run(
        "ip",
        &["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
        None,
    )?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)
}

/// Whether `tc qdisc ... netem` works (the kernel has `sch_netem`): tried on the loopback of
/// namespace `ns`, and removed again.
fn probe_netem(ns: &str) -> bool {
    let add = [
        "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
    ];
    let ok = run("tc", &add, None).is_ok();
    if ok {
        let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", "lo", "root"], None);
    }
    ok
}

/// A route to the subnet through something else than our bridge, if there is one.
fn foreign_route() -> Option<String> {
    let out = Command::new("ip")
        .args(["route", "show", SUBNET])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty() && !text.contains(BRIDGE)).then_some(text)
}

/// Our namespaces that exist now.
fn our_namespaces() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Removes every namespace (killing what still runs in it: raft-kv members of a run that
/// died) and link named `rkvj-...`. Returns what it removed.
pub fn cleanup() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in our_namespaces() {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    removed.push(format!("process {pid:?} in {ns}"));
                }
            }
        }
        // Without the partition rules, connections of the killed members end at once instead
        // of retransmitting for minutes (which keeps the namespace and its veth alive).
        let _ = run(
            "ip",
            &[
                "netns", "exec", &ns, "nft", "delete", "table", "inet", TABLE,
            ],
            None,
        );
        if run("ip", &["netns", "del", &ns], None).is_ok() {
            removed.push(format!("namespace {ns}"));
        }
    }
    // A namespace outlives its name while sockets in it linger (orphaned connections), and
    // its veth with it: each link is deleted by name (a veth pair goes with either end).
    for link in our_links() {
        if run("ip", &["link", "del", &link], None).is_ok() {
            removed.push(format!("link {link}"));
        }
    }
    removed
}

/// Our links in the root namespace: the bridge and the host ends of veth pairs.
fn our_links() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|n| n.starts_with(PREFIX))
        .collect()
}

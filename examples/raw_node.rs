//! The bare `RawNode` loop: three nodes in one process, each with its log in a `MemStorage`,
//! driven by hand. `RawNode` does no I/O and reads no clock: this program moves time forward
//! (`tick`), carries every message from sender to receiver (`step`), proposes commands, and
//! carries out each `Ready` exactly as its contract says (persist, send, apply, acknowledge).
//!
//! `cargo run -p raftline-examples --example raw_node`

use std::collections::VecDeque;
use std::error::Error;

use bytes::Bytes;
use raftline_core::{Config, MemStorage, RawNode, Role, StorageMut};
use raftline_proto::{EntryPayload, Membership, Message, NodeId};

/// The commands to replicate.
const COMMANDS: [&str; 5] = ["set x=1", "set y=2", "incr x", "del y", "set z=3"];

/// The most ticks to run before giving up.
const TICKS_MAX: u32 = 200;

/// One server: the core, the log it reads from, and the state machine.
struct Server {
    node: RawNode<MemStorage>,
    /// The durable log. `MemStorage` clones share the log: the node reads what we write here.
    store: MemStorage,
    /// The state machine: the commands applied, in order.
    applied: Vec<String>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut servers = Vec::new();
    for id in ids {
        // A new store holds the initial membership; the seed randomizes election timeouts.
        let store = MemStorage::new(Membership::with_voters(ids));
        let config = Config {
            seed: id.0,
            ..Config::new(id)
        };
        let node = RawNode::new(config, store.clone())?;
        servers.push(Server {
            node,
            store,
            applied: Vec::new(),
        });
    }
    // The network: messages in flight, delivered in order.
    let mut network = VecDeque::new();
    let mut proposed = 0;
    for tick in 1..=TICKS_MAX {
        for server in &mut servers {
            server.node.tick();
        }
        run_until_quiet(&mut servers, &mut network)?;
        // One command per tick, once there is a leader.
        if proposed < COMMANDS.len() && propose(&mut servers, COMMANDS[proposed], tick)? {
            proposed += 1;
        }
        if servers.iter().all(|s| s.applied.len() == COMMANDS.len()) {
            return check(&servers, tick);
        }
    }
    Err(format!("the commands were not applied everywhere within {TICKS_MAX} ticks").into())
}

/// Proposes `command` on the leader, if there is one. The first time, a follower is asked
/// first: it refuses, naming the leader (the driver can forward; a bare RawNode cannot).
fn propose(
    servers: &mut [Server],
    command: &'static str,
    tick: u32,
) -> Result<bool, Box<dyn Error>> {
    let Some(leader) = servers.iter().position(|s| s.node.role() == Role::Leader) else {
        return Ok(false);
    };
    let bytes = Bytes::from_static(command.as_bytes());
    if command == COMMANDS[0] {
        let follower = &mut servers[(leader + 1) % servers.len()];
        match follower.node.propose(bytes.clone()) {
            Ok(_) => return Err("a follower accepted a proposal".into()),
            Err(e) => println!(
                "tick {tick}: {} refuses a proposal: {e}",
                follower.node.id()
            ),
        }
    }
    let leader = &mut servers[leader];
    let index = leader.node.propose(bytes)?;
    println!(
        "tick {tick}: {} proposes {command:?} at {index}",
        leader.node.id()
    );
    Ok(true)
}

/// Handles every Ready and delivers every message, until no node has anything to do.
fn run_until_quiet(
    servers: &mut [Server],
    network: &mut VecDeque<Message>,
) -> Result<(), Box<dyn Error>> {
    loop {
        for server in servers.iter_mut() {
            while server.node.has_ready() {
                handle_ready(server, network)?;
            }
        }
        let Some(message) = network.pop_front() else {
            return Ok(());
        };
        let to = servers
            .iter_mut()
            .find(|s| s.node.id() == message.to)
            .ok_or("a message to an unknown node")?;
        to.node.step(message);
    }
}

/// Takes one Ready from `server` and carries out its contract (written on
/// `raftline_core::Ready`), step by step.
fn handle_ready(
    server: &mut Server,
    network: &mut VecDeque<Message>,
) -> Result<(), Box<dyn Error>> {
    let id = server.node.id();
    let mut ready = server.node.ready();
    if let Some(soft) = ready.soft_state {
        let leader = soft.leader.map_or("none".to_string(), |l| l.to_string());
        let term = server.node.term();
        println!(
            "{id} is now {:?} in term {term} (leader: {leader})",
            soft.role
        );
    }
    // 1. Send `messages` at once: they need nothing durable (a leader's appends, vote requests).
    network.extend(std::mem::take(&mut ready.messages));
    // 2. and 3. Snapshots to send, install or receive: none here, this program takes no
    // snapshots (see the `snapshots` example, where the driver does this).
    let snapshots = !ready.snapshot_sends.is_empty() || !ready.snapshot_chunks.is_empty();
    if snapshots || ready.snapshot.is_some() {
        return Err("unexpected snapshot".into());
    }
    // 4. Append the entries (a suffix they conflict with goes), then the hard state, whose
    // commit index may name those entries.
    server.store.append(&ready.entries)?;
    if let Some(hard_state) = ready.hard_state {
        server.store.set_hard_state(hard_state)?;
    }
    // 5. All durable now (MemStorage writes at once): votes and acknowledgements, which promise
    // that, may go, and the node learns what is durable.
    network.extend(std::mem::take(&mut ready.persisted_messages));
    server.node.on_persisted(ready.persist_ack());
    // 6. Apply the committed entries in order, then say how far.
    for entry in &ready.committed_entries {
        if let EntryPayload::Normal(command) = &entry.payload {
            let command = String::from_utf8_lossy(command).into_owned();
            println!("  {id} applies {command:?} (entry {})", entry.index);
            server.applied.push(command);
        }
    }
    if let Some(index) = ready.last_committed_index() {
        server.node.on_applied(index);
    }
    // (A synchronous program may call `node.advance(&ready)` instead of the two
    // acknowledgements; it reads `ready.entries` and `ready.committed_entries`, so leave
    // those in the Ready.) `read_states` and `membership_results` answer `read_index` and
    // `propose_membership`, which this program does not call.
    Ok(())
}

/// Every node applied the same commands in the same order.
fn check(servers: &[Server], tick: u32) -> Result<(), Box<dyn Error>> {
    for server in servers {
        if server.applied != COMMANDS {
            return Err(format!("{} applied {:?}", server.node.id(), server.applied).into());
        }
    }
    println!(
        "tick {tick}: all three applied the {} commands in order",
        COMMANDS.len()
    );
    Ok(())
}

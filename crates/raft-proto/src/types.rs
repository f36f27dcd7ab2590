//! Positions, log entries, hard state and membership.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }
    };
}

newtype!(
    /// The identity of a server in the cluster. `NodeId(0)` is never a valid id.
    NodeId,
    "n"
);
newtype!(
    /// A Raft term: a logical clock that increases with every election (§5.1).
    Term,
    "t"
);
newtype!(
    /// The position of an entry in the log. Index 0 is the empty prefix; the first entry is 1.
    LogIndex,
    "i"
);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one; `LogIndex(0).prev()` is `LogIndex(0)`.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// This index plus `n`.
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// An opaque command for the state machine.
    Normal(#[serde(deserialize_with = "crate::wire::shared_bytes")] Bytes),
    /// The empty entry a new leader appends to commit the entries of earlier terms (§5.4.2).
    Noop,
    /// A cluster configuration; it takes effect when appended, not when committed (§6).
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// Bytes an entry is charged for in size limits: its payload plus a fixed overhead for the
/// term, the index and the framing.
pub const ENTRY_OVERHEAD_BYTES: usize = 24;

impl Entry {
    /// A normal entry with the given command.
    pub fn normal(term: Term, index: LogIndex, data: impl Into<Bytes>) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Normal(data.into()),
        }
    }

    /// The size this entry is charged for in `msg_bytes_max` and similar bounds.
    pub fn size_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + match &self.payload {
                EntryPayload::Normal(data) => data.len(),
                EntryPayload::Noop => 0,
                EntryPayload::Membership(m) => 8 * m.len(),
            }
    }
}

/// The state every server persists before answering any RPC (Figure 2 of the paper).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this server has seen.
    pub term: Term,
    /// The candidate this server voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known to be committed. Persisting it is optional for safety but
    /// saves work on restart.
    pub commit: LogIndex,
}

/// A cluster configuration.
///
/// Outside a membership change `voters_outgoing` is empty. During a joint change (§6) it holds
/// the old voters, and decisions need a majority of `voters` and of `voters_outgoing`.
/// Learners receive the log but never vote and never count toward a quorum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members that replicate the log.
    pub learners: BTreeSet<NodeId>,
    /// The voters of the outgoing configuration while a joint change is in progress.
    pub voters_outgoing: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Every member, voter or learner, in ascending order and without repeats.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.learners.iter().copied());
        all.extend(self.voters_outgoing.iter().copied());
        all
    }

    /// How many ids the configuration names, counting repeats.
    pub fn len(&self) -> usize {
        self.voters.len() + self.learners.len() + self.voters_outgoing.len()
    }

    /// Whether the configuration names nobody.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

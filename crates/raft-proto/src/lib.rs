//! Wire and log types of the Raft protocol.
//!
//! Everything that crosses a process boundary lives here: the position newtypes
//! ([`NodeId`], [`Term`], [`LogIndex`]), log [`Entry`]s, the persisted [`HardState`],
//! cluster [`Membership`], and every [`Message`] of the protocol. The types derive serde;
//! [`encode`] and [`decode`] give the canonical wire form: one version byte followed by the
//! postcard encoding of the value.
//!
//! ```
//! use raftline_proto::{decode, encode, Message, MessageBody, NodeId, Term};
//!
//! let msg = Message { from: NodeId(1), to: NodeId(2), term: Term(3), body: MessageBody::TimeoutNow };
//! let bytes = encode(&msg);
//! assert_eq!(decode::<Message>(&bytes).unwrap(), msg);
//! assert!(decode::<Message>(&bytes[..1]).is_err());
//! ```

#![deny(missing_docs)]

mod message;
mod types;
mod wire;

pub use message::*;
pub use types::*;
pub use wire::{decode, decode_shared, encode, encode_into, DecodeError, WIRE_VERSION};

// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

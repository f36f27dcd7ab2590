//! Round trips of every message and entry kind, and malformed input.

use bytes::Bytes;
use proptest::prelude::*;
use raftline_proto::*;

fn node() -> impl Strategy<Value = NodeId> {
    (1u64..8).prop_map(NodeId)
}

fn membership() -> impl Strategy<Value = Membership> {
    (
        prop::collection::btree_set(node(), 0..5),
        prop::collection::btree_set(node(), 0..3),
        prop::collection::btree_set(node(), 0..5),
    )
        .prop_map(|(voters, learners, voters_outgoing)| Membership {
            voters,
            learners,
            voters_outgoing,
        })
}

fn payload() -> impl Strategy<Value = EntryPayload> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|v| EntryPayload::Normal(Bytes::from(v))),
        Just(EntryPayload::Noop),
        membership().prop_map(EntryPayload::Membership),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), any::<u64>(), payload()).prop_map(|(t, i, payload)| Entry {
        term: Term(t),
        index: LogIndex(i),
        payload,
    })
}

fn vote_request() -> impl Strategy<Value = VoteRequest> {
    (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(i, t, transfer)| VoteRequest {
        last_log_index: LogIndex(i),
        last_log_term: Term(t),
        transfer,
    })
}

fn body() -> impl Strategy<Value = MessageBody> {
    let hint = prop::option::of((prop::option::of(any::<u64>()), any::<u64>()).prop_map(
        |(t, i)| ConflictHint {
            conflict_term: t.map(Term),
            conflict_index: LogIndex(i),
        },
    ));
    let meta = (
        any::<u64>(),
        any::<u64>(),
        membership(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(i, t, membership, size_bytes, checksum)| SnapshotMeta {
            last_index: LogIndex(i),
            last_term: Term(t),
            membership,
            size_bytes,
            checksum,
        });
    prop_oneof![
        vote_request().prop_map(MessageBody::PreVote),
        vote_request().prop_map(MessageBody::Vote),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse(VoteResponse { granted })),
        any::<bool>().prop_map(|granted| MessageBody::VoteResponse(VoteResponse { granted })),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(entry(), 0..4),
            any::<u64>()
        )
            .prop_map(|(i, t, entries, c)| MessageBody::Append(AppendRequest {
                prev_log_index: LogIndex(i),
                prev_log_term: Term(t),
                entries,
                leader_commit: LogIndex(c),
            })),
        (any::<bool>(), any::<u64>(), hint).prop_map(|(success, i, hint)| {
            MessageBody::AppendResponse(AppendResponse {
                success,
                index: LogIndex(i),
                hint,
            })
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(c, context)| MessageBody::Heartbeat(
            HeartbeatRequest {
                leader_commit: LogIndex(c),
                context
            }
        )),
        any::<u64>()
            .prop_map(|context| MessageBody::HeartbeatResponse(HeartbeatResponse { context })),
        (
            meta,
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(meta, offset, data, chunk_checksum, done)| {
                MessageBody::InstallSnapshot(InstallSnapshotRequest {
                    meta,
                    offset,
                    data: Bytes::from(data),
                    chunk_checksum,
                    done,
                })
            }),
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(i, next_offset, rejected, installed)| {
                MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                    last_index: LogIndex(i),
                    next_offset,
                    rejected,
                    installed,
                })
            }
        ),
        Just(MessageBody::TimeoutNow),
        any::<u64>().prop_map(|request_id| MessageBody::ReadIndex(ReadIndexRequest { request_id })),
        (any::<u64>(), prop::option::of(any::<u64>())).prop_map(|(request_id, r)| {
            MessageBody::ReadIndexResponse(ReadIndexResponse {
                request_id,
                read_index: r.map(LogIndex),
            })
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (node(), node(), any::<u64>(), body()).prop_map(|(from, to, t, body)| Message {
        from,
        to,
        term: Term(t),
        body,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_round_trips(msg in message()) {
        let bytes = encode(&msg);
        prop_assert_eq!(bytes[0], WIRE_VERSION);
        prop_assert_eq!(decode::<Message>(&bytes).unwrap(), msg);
    }

    #[test]
    fn entry_round_trips(e in entry()) {
        prop_assert_eq!(decode::<Entry>(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn hard_state_round_trips(t in any::<u64>(), v in prop::option::of(node()), c in any::<u64>()) {
        let hs = HardState { term: Term(t), vote: v, commit: LogIndex(c) };
        prop_assert_eq!(decode::<HardState>(&encode(&hs)).unwrap(), hs);
    }

    /// Arbitrary bytes never panic the decoder; they decode or give an error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<Message>(&bytes);
        let _ = decode::<Entry>(&bytes);
        let _ = decode::<HardState>(&bytes);
    }

    /// Arbitrary bytes after a valid version byte exercise the body decoder.
    #[test]
    fn arbitrary_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut framed = vec![WIRE_VERSION];
        framed.extend_from_slice(&bytes);
        let _ = decode::<Message>(&framed);
    }

    /// Every strict prefix of a valid encoding is an error, never a panic or a wrong value.
    #[test]
    fn truncation_is_an_error(msg in message()) {
        let bytes = encode(&msg);
        for cut in 0..bytes.len() {
            prop_assert!(decode::<Message>(&bytes[..cut]).is_err(), "prefix {} of {} decoded", cut, bytes.len());
        }
    }
}

#[test]
fn errors_name_the_problem() {
    assert_eq!(decode::<Message>(&[]), Err(DecodeError::Empty));
    assert_eq!(
        decode::<Message>(&[9, 1, 2]),
        Err(DecodeError::Version { found: 9 })
    );
    let mut bytes = encode(&HardState::default());
    bytes.push(0);
    assert_eq!(decode::<HardState>(&bytes), Err(DecodeError::Trailing(1)));
    assert!(matches!(
        decode::<Message>(&[WIRE_VERSION, 0xff]),
        Err(DecodeError::Body(_))
    ));
}

#[test]
fn shared_decoding_slices_large_payloads_out_of_the_input() {
    use bytes::Bytes;
    use raftline_proto::{
        decode, decode_shared, encode, InstallSnapshotRequest, Message, MessageBody, NodeId,
        SnapshotMeta, Term,
    };
    let data = Bytes::from(vec![9u8; 100_000]);
    let m = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: MessageBody::InstallSnapshot(InstallSnapshotRequest {
            meta: SnapshotMeta::default(),
            offset: 7,
            data: data.clone(),
            chunk_checksum: 1,
            done: false,
        }),
    };
    let wire = Bytes::from(encode(&m));
    let shared: Message = decode_shared(&wire).unwrap();
    assert_eq!(shared, m);
    assert_eq!(shared, decode::<Message>(&wire).unwrap());
    let MessageBody::InstallSnapshot(req) = &shared.body else {
        unreachable!()
    };
    let (start, end) = (wire.as_ptr() as usize, wire.as_ptr() as usize + wire.len());
    let at = req.data.as_ptr() as usize;
    assert!(at >= start && at + req.data.len() <= end, "no copy");
    // Plain decoding copies.
    let copied: Message = decode(&wire).unwrap();
    let MessageBody::InstallSnapshot(req) = &copied.body else {
        unreachable!()
    };
    let at = req.data.as_ptr() as usize;
    assert!(!(at >= start && at < end));
}

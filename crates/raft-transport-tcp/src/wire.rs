//! The bytes on the socket: the handshake and the message frames (drawn in the
//! [crate documentation](crate)).
//!
//! Public so that tools and tests can speak the protocol by hand;
//! [`TcpTransport`](crate::TcpTransport) is the only user inside the crate.

use raftline_proto::{DecodeError, Message, NodeId};

/// The first four bytes of every handshake.
pub const MAGIC: [u8; 4] = *b"RAFT";

/// The version of this framing and handshake (not of the message encoding, which carries its
/// own version byte, [`raftline_proto::WIRE_VERSION`]).
pub const PROTOCOL_VERSION: u8 = 1;

/// The length of a handshake in bytes, checksum included.
pub const HANDSHAKE_LEN: usize = 36;

/// The length of a frame header: body length and checksum.
pub const FRAME_HEADER_LEN: usize = 8;

/// What a handshake says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeKind {
    /// The dialer introduces itself.
    Hello,
    /// The acceptor agrees; frames may follow in both directions.
    Accept,
    /// The acceptor refuses and closes the connection.
    Reject(RejectReason),
}

/// Why an acceptor refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The hello names another cluster.
    #[error("the peer belongs to another cluster")]
    ClusterMismatch,
    /// The hello is addressed to another node id.
    #[error("the peer expected another node id at this address")]
    WrongNode,
    /// The dialer's node id is not a peer of the acceptor.
    #[error("the peer's node id is unknown here")]
    UnknownNode,
    /// The dialer has the higher node id: only the lower id of a pair dials.
    #[error("the peer has the higher node id and must not dial")]
    WrongDirection,
    /// A reason code this build does not know (sent by a newer peer).
    #[error("unknown reason code {0}")]
    Other(u8),
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            RejectReason::ClusterMismatch => 1,
            RejectReason::WrongNode => 2,
            RejectReason::UnknownNode => 3,
            RejectReason::WrongDirection => 4,
            RejectReason::Other(code) => code,
        }
    }

    fn from_code(code: u8) -> RejectReason {
        match code {
            1 => RejectReason::ClusterMismatch,
            2 => RejectReason::WrongNode,
            3 => RejectReason::UnknownNode,
            4 => RejectReason::WrongDirection,
            other => RejectReason::Other(other),
        }
    }
}

/// One handshake message: a hello from the dialer, or the acceptor's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Hello, accept or reject.
    pub kind: HandshakeKind,
    /// The sender's cluster.
    pub cluster_id: u64,
    /// The sender's node id.
    pub from: NodeId,
    /// The node id the sender expects at the other end.
    pub to: NodeId,
}

/// Why handshake bytes could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes do not start with [`MAGIC`].
    #[error("bad magic: not a raftline-tcp handshake")]
    Magic,
    /// The protocol version is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The checksum does not match.
    #[error("handshake checksum mismatch")]
    Checksum,
    /// The kind byte is not a known kind.
    #[error("unknown handshake kind {0}")]
    Kind(u8),
}

impl Handshake {
    /// The fixed-size encoding of the handshake (see the crate documentation).
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = PROTOCOL_VERSION;
        let (kind, reason) = match self.kind {
            HandshakeKind::Hello => (1, 0),
            HandshakeKind::Accept => (2, 0),
            HandshakeKind::Reject(reason) => (3, reason.code()),
        };
        out[5] = kind;
        out[6] = reason;
        out[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.from.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.to.0.to_le_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a handshake. Never panics.
    pub fn decode(bytes: &[u8; HANDSHAKE_LEN]) -> Result<Handshake, HandshakeError> {
        if bytes[0..4] != MAGIC {
            return Err(HandshakeError::Magic);
        }
        if bytes[4] != PROTOCOL_VERSION {
            return Err(HandshakeError::Version(bytes[4]));
        }
        if crc32c::crc32c(&bytes[..32]) != read_u32(&bytes[32..36]) {
            return Err(HandshakeError::Checksum);
        }
        let kind = match bytes[5] {
            1 => HandshakeKind::Hello,
            2 => HandshakeKind::Accept,
            3 => HandshakeKind::Reject(RejectReason::from_code(bytes[6])),
            other => return Err(HandshakeError::Kind(other)),
        };
        Ok(Handshake {
            kind,
            cluster_id: read_u64(&bytes[8..16]),
            from: NodeId(read_u64(&bytes[16..24])),
            to: NodeId(read_u64(&bytes[24..32])),
        })
    }
}

/// Why a frame was rejected. The connection it came on is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the receiver's `frame_bytes_max`.
    #[error("frame of {len} bytes exceeds frame_bytes_max {max}")]
    Oversized {
        /// The length the prefix announced.
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// The checksum does not match the length and body.
    #[error("frame checksum mismatch (expected {expected:#010x}, found {found:#010x})")]
    Checksum {
        /// The checksum computed over the received bytes.
        expected: u32,
        /// The checksum in the header.
        found: u32,
    },
    /// The body is not an encoded [`Message`].
    #[error("undecodable frame body: {0}")]
    Decode(DecodeError),
}

/// Appends one frame holding `message` to `out` and returns the length of its body.
pub fn encode_frame(message: &Message, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    raftline_proto::encode_into(message, out);
    let body_len = out.len() - start - FRAME_HEADER_LEN;
    // A body over 4 GiB cannot be announced; `frame_bytes_max` (at most u32::MAX) rejects
    // such a frame on both ends, so the truncated prefix is never sent.
    let len = u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    let crc = frame_checksum(len, &out[start + FRAME_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    body_len
}

/// The checksum of a frame: crc32c over the length prefix, then the body.
pub fn frame_checksum(len_prefix: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_prefix), body)
}

/// Reads the body length from a frame header and checks it against `frame_bytes_max` before
/// anything is allocated for the body.
pub fn frame_len(
    header: &[u8; FRAME_HEADER_LEN],
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    let len = read_u32(&header[0..4]);
    match usize::try_from(len) {
        Ok(len) if len <= frame_bytes_max => Ok(len),
        _ => Err(FrameError::Oversized {
            len: u64::from(len),
            max: frame_bytes_max,
        }),
    }
}

/// Parses the first frame of `buf`, if complete: returns the message and the number of bytes
/// it took, or `Ok(None)` when more bytes are needed. Checks the length prefix against
/// `frame_bytes_max` as soon as the header is there. Never panics.
pub fn decode_frame(
    buf: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = frame_len(header, frame_bytes_max)?;
    let Some(body) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let expected = frame_checksum([header[0], header[1], header[2], header[3]], body);
    let found = read_u32(&header[4..8]);
    if expected != found {
        return Err(FrameError::Checksum { expected, found });
    }
    let message = raftline_proto::decode::<Message>(body).map_err(FrameError::Decode)?;
    Ok(Some((message, FRAME_HEADER_LEN + len)))
}

/// Frames with a body at least this large are decoded sharing the read buffer: their large
/// byte fields (snapshot chunks, big entries) are not copied. Smaller frames are copied out,
/// so that a small message does not keep a whole read buffer alive.
pub const SHARED_DECODE_BYTES_MIN: usize = 64 << 10;

/// Like [`decode_frame`], but takes the frame off the front of `buf` when it is complete, and
/// decodes a large one without copying its payloads (see [`SHARED_DECODE_BYTES_MIN`]).
pub fn take_frame(
    buf: &mut bytes::BytesMut,
    frame_bytes_max: usize,
) -> Result<Option<Message>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = frame_len(header, frame_bytes_max)?;
    if len < SHARED_DECODE_BYTES_MIN {
        let Some((message, used)) = decode_frame(buf, frame_bytes_max)? else {
            return Ok(None);
        };
        bytes::Buf::advance(buf, used);
        return Ok(Some(message));
    }
    let Some(body) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let expected = frame_checksum([header[0], header[1], header[2], header[3]], body);
    let found = read_u32(&header[4..8]);
    if expected != found {
        return Err(FrameError::Checksum { expected, found });
    }
    let frame = buf.split_to(FRAME_HEADER_LEN + len).freeze();
    let body = frame.slice(FRAME_HEADER_LEN..);
    let message = raftline_proto::decode_shared::<Message>(&body).map_err(FrameError::Decode)?;
    Ok(Some(message))
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_proto::{MessageBody, Term};

    fn msg() -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(7),
            body: MessageBody::TimeoutNow,
        }
    }

    #[test]
    fn handshake_round_trips_and_rejects_corruption() {
        for kind in [
            HandshakeKind::Hello,
            HandshakeKind::Accept,
            HandshakeKind::Reject(RejectReason::UnknownNode),
        ] {
            let hs = Handshake {
                kind,
                cluster_id: 0xdead_beef,
                from: NodeId(3),
                to: NodeId(9),
            };
            let bytes = hs.encode();
            assert_eq!(Handshake::decode(&bytes), Ok(hs));
            for i in 0..HANDSHAKE_LEN {
                let mut bad = bytes;
                bad[i] ^= 0x40;
                assert!(
                    Handshake::decode(&bad).is_err(),
                    "flip at byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn frames_round_trip_and_reject_corruption() {
        let mut buf = Vec::new();
        let body_len = encode_frame(&msg(), &mut buf);
        assert_eq!(buf.len(), FRAME_HEADER_LEN + body_len);
        encode_frame(&msg(), &mut buf);
        let (m, used) = decode_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!(m, msg());
        let (m2, used2) = decode_frame(&buf[used..], 1024).unwrap().unwrap();
        assert_eq!((m2, used + used2), (msg(), buf.len()));
        // Every prefix is incomplete, not an error.
        for cut in 0..used {
            assert_eq!(decode_frame(&buf[..cut], 1024), Ok(None));
        }
        // Every bit flip is an error.
        for i in 0..used {
            let mut bad = buf[..used].to_vec();
            bad[i] ^= 0x01;
            let r = decode_frame(&bad, 1024);
            assert!(!matches!(r, Ok(Some(_))), "flip at byte {i} accepted");
        }
        assert!(matches!(
            decode_frame(&buf, body_len - 1),
            Err(FrameError::Oversized { .. })
        ));
    }
}

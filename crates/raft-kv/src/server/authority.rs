//! Client connections whose HTTP/2 `:authority` is not an authority.
//!
//! etcd's Go client dials one endpoint on its own for some Maintenance calls (`Status`,
//! `HashKV`, `Defragment`: what `etcdctl endpoint status` and `move-leader` use), with the
//! gRPC target `passthrough:///ENDPOINT`; grpc-go then sends the endpoint as the request's
//! `:authority`. An endpoint written as a URL (`--endpoints=http://127.0.0.1:2379`, and every
//! endpoint `--cluster` finds, since those are the members' client URLs) gives
//! `:authority: http://127.0.0.1:2379`. etcd's Go server does not look at it; h2, the Rust
//! HTTP/2 server under tonic, parses it as an authority, fails, and resets the stream with
//! `PROTOCOL_ERROR` before any service sees the request. No setting of h2, hyper or tonic
//! changes that.
//!
//! [`AuthorityFix`] therefore sits between the TCP stream and the HTTP/2 server and rewrites
//! the header blocks the client sends: an `:authority` that is a URL becomes its authority
//! part (`127.0.0.1:2379`); one that is not even that is dropped (HTTP/2 requests may omit
//! it). Everything else passes as received.
//!
//! Only the first header block of a connection is looked at unless it needs the change: a
//! gRPC client sends its channel's `:authority` on every request of a connection, so when
//! the first needs no change the adapter steps aside for the rest of the connection, and the
//! client's bytes reach the server as they come, without a copy.
//!
//! Header blocks are HPACK-compressed against a dynamic table that the client's encoder and
//! the server's decoder keep in step. The adapter decodes every block the client sends (so
//! that it follows the client's table); while no block needs a change, it forwards the bytes
//! as received (the server's table stays the client's). From the first block it changes on,
//! it re-encodes every block as literals without indexing: the server's table is then never
//! added to nor referred to again, and the adapter's own decoder goes on following the
//! client's. Frames other than HEADERS and CONTINUATION stream through as they come.
//!
//! Bounds: a header block is held whole until it is complete, up to
//! [`HEADER_BLOCK_BYTES_MAX`] encoded and [`HEADER_LIST_BYTES_MAX`] decoded; past either, the
//! connection goes on unchanged (or, once blocks have been re-encoded, is closed: the server
//! could no longer decode the client's blocks). At most [`READ_CHUNK_BYTES`] are read from
//! the socket at a time, and only once the server has taken what was processed before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::{Authority, Uri};
use tonic::transport::server::Connected;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a frame header: length (3), type (1), flags (1), stream id (4).
const FRAME_HEAD_BYTES: usize = 9;
/// Frame type HEADERS.
const HEADERS: u8 = 0x1;
/// Frame type CONTINUATION.
const CONTINUATION: u8 = 0x9;
/// HEADERS flag: the last frame of the stream.
const END_STREAM: u8 = 0x1;
/// HEADERS/CONTINUATION flag: the last frame of the header block.
const END_HEADERS: u8 = 0x4;
/// HEADERS flag: a pad length byte and padding surround the fragment.
const PADDED: u8 = 0x8;
/// HEADERS flag: 5 bytes of priority fields precede the fragment.
const PRIORITY: u8 = 0x20;
/// Bytes of the priority fields.
const PRIORITY_BYTES: usize = 5;
/// The largest frame payload every HTTP/2 peer accepts (the least `SETTINGS_MAX_FRAME_SIZE`):
/// re-encoded header blocks are cut into frames of at most this.
const FRAME_PAYLOAD_BYTES_SAFE: usize = 16 << 10;
/// The dynamic table size a client may use: the server advertises none, so HTTP/2's
/// default.
const HPACK_TABLE_BYTES: usize = 4096;
/// The most bytes of one encoded header block held while it arrives (the server's own
/// limit on a header list, hyper's default, is 16 KiB).
pub const HEADER_BLOCK_BYTES_MAX: usize = 64 << 10;
/// The most bytes of one decoded header list (names and values plus 32 per field, as HTTP/2
/// counts them).
pub const HEADER_LIST_BYTES_MAX: usize = 64 << 10;
/// HTTP/2's per-field overhead in a header list's size.
const FIELD_OVERHEAD_BYTES: usize = 32;
/// The most bytes read from the socket at a time.
pub const READ_CHUNK_BYTES: usize = 16 << 10;

/// Where the adapter is in the client's byte stream.
enum State {
    /// Waiting for the connection preface.
    Preface,
    /// Next comes a frame header.
    FrameHead,
    /// This many bytes of the current frame's payload still pass through unchanged.
    Payload(usize),
    /// Within a header block: waiting for a CONTINUATION frame.
    Block(HeaderBlock),
    /// Not followed (not HTTP/2 with prior knowledge, or a block past the bounds, or one
    /// that cannot be decoded: the server will say what is wrong): everything passes.
    Passthrough,
}

/// A header block being collected: a HEADERS frame and its CONTINUATION frames.
struct HeaderBlock {
    /// The frames as received.
    received: Vec<u8>,
    /// The header block fragments, concatenated.
    fragment: Vec<u8>,
    stream_id: u32,
    /// The HEADERS frame's END_STREAM flag.
    end_stream: bool,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Option<[u8; PRIORITY_BYTES]>,
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> FrameHead {
        FrameHead {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut BytesMut) {
        let len = u32::try_from(self.len)
            .ok()
            .filter(|&l| l < 1 << 24)
            .expect("a frame length fits in 24 bits");
        out.put_slice(&len.to_be_bytes()[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream_id);
    }
}

/// A decoded header list: (name, value) pairs in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a header block cannot be followed.
#[derive(Debug, thiserror::Error)]
enum BlockError {
    #[error("a header block over {HEADER_BLOCK_BYTES_MAX} bytes")]
    TooLarge,
    #[error("a header list over {HEADER_LIST_BYTES_MAX} bytes")]
    ListTooLarge,
    #[error("a malformed HEADERS frame")]
    Malformed,
    #[error("a frame other than CONTINUATION within a header block")]
    Interrupted,
    #[error("HPACK decoding failed: {0:?}")]
    Hpack(fluke_hpack::decoder::DecoderError),
}

/// A client connection whose header blocks are rewritten as the [module](self) describes;
/// writes pass through to the inner stream.
pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the client, not processed yet.
    raw: BytesMut,
    /// Processed, for the server to read.
    out: BytesMut,
    state: State,
    decoder: fluke_hpack::Decoder<'static>,
    /// Whether a block has been re-encoded (and so every later one is).
    rewriting: bool,
    /// The client has closed its side.
    eof: bool,
    scratch: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted client connection.
    pub fn new(inner: S) -> AuthorityFix<S> {
        let mut decoder = fluke_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_BYTES);
        AuthorityFix {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            state: State::Preface,
            decoder,
            rewriting: false,
            eof: false,
            scratch: vec![0; READ_CHUNK_BYTES],
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be processed from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            let progressed = match std::mem::replace(&mut self.state, State::Passthrough) {
                State::Preface => self.preface(),
                State::Passthrough => {
                    let all = self.raw.split();
                    self.out.unsplit(all);
                    false
                }
                State::Payload(left) => {
                    let n = left.min(self.raw.len());
                    let part = self.raw.split_to(n);
                    self.out.unsplit(part);
                    self.state = if n == left {
                        State::FrameHead
                    } else {
                        State::Payload(left - n)
                    };
                    n == left
                }
                State::FrameHead => self.frame(None)?,
                State::Block(block) => self.frame(Some(block))?,
            };
            if !progressed || self.raw.is_empty() {
                return Ok(());
            }
        }
    }

    /// The preface: passed on, or the connection is not followed.
    fn preface(&mut self) -> bool {
        let n = self.raw.len().min(PREFACE.len());
        if self.raw[..n] != PREFACE[..n] {
            self.state = State::Passthrough;
            return true;
        }
        if n < PREFACE.len() {
            self.state = State::Preface;
            return false;
        }
        let preface = self.raw.split_to(PREFACE.len());
        self.out.unsplit(preface);
        self.state = State::FrameHead;
        true
    }

    /// The next frame (`block`: within a header block). Returns whether it progressed.
    fn frame(&mut self, block: Option<HeaderBlock>) -> io::Result<bool> {
        if self.raw.len() < FRAME_HEAD_BYTES {
            self.state = block.map_or(State::FrameHead, State::Block);
            return Ok(false);
        }
        let head = FrameHead::parse(&self.raw[..FRAME_HEAD_BYTES]);
        let in_block = head.kind == HEADERS || head.kind == CONTINUATION || block.is_some();
        if !in_block {
            let head_bytes = self.raw.split_to(FRAME_HEAD_BYTES);
            self.out.unsplit(head_bytes);
            self.state = State::Payload(head.len);
            return Ok(true);
        }
        let held = block.as_ref().map_or(0, |b| b.received.len());
        if held + FRAME_HEAD_BYTES + head.len > HEADER_BLOCK_BYTES_MAX {
            return self.give_up(block, BlockError::TooLarge).map(|()| true);
        }
        if self.raw.len() < FRAME_HEAD_BYTES + head.len {
            self.state = block.map_or(State::FrameHead, State::Block);
            return Ok(false);
        }
        let frame = self.raw.split_to(FRAME_HEAD_BYTES + head.len);
        match add_frame(block, head, &frame) {
            Ok(block) if head.flags & END_HEADERS != 0 => self.finish(block)?,
            Ok(block) => self.state = State::Block(block),
            Err((block, why)) => {
                self.give_up(block, why)?;
                self.out.extend_from_slice(&frame);
            }
        }
        Ok(true)
    }

    /// Stops following the connection: what was held goes on as received. Fails (closing
    /// the connection) once blocks have been re-encoded: the server could not decode the
    /// client's blocks any more.
    fn give_up(&mut self, block: Option<HeaderBlock>, why: BlockError) -> io::Result<()> {
        if self.rewriting {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        tracing::debug!("client connection: header blocks no longer followed: {why}");
        if let Some(block) = block {
            self.out.extend_from_slice(&block.received);
        }
        self.state = State::Passthrough;
        Ok(())
    }

    /// A complete header block: decoded, and passed on as received or re-encoded.
    fn finish(&mut self, block: HeaderBlock) -> io::Result<()> {
        let mut fields = match decode(&mut self.decoder, &block.fragment) {
            Ok(fields) => fields,
            Err(why) => return self.give_up(Some(block), why),
        };
        let changed = fix_authority(&mut fields);
        if !changed && !self.rewriting {
            // A gRPC client sends the same `:authority` on every request of a connection
            // (its channel's): one that needs no change now never will, so the adapter steps
            // aside and costs nothing more on this connection.
            self.out.extend_from_slice(&block.received);
            self.state = State::Passthrough;
            return Ok(());
        } else {
            if !self.rewriting {
                tracing::debug!("client connection: rewriting an :authority that is a URL");
            }
            self.rewriting = true;
            write_block(&mut self.out, &block, &encode(&fields));
        }
        self.state = State::FrameHead;
        Ok(())
    }
}

/// Adds a HEADERS or CONTINUATION frame (`frame`, header included) to the block it starts or
/// continues.
fn add_frame(
    block: Option<HeaderBlock>,
    head: FrameHead,
    frame: &[u8],
) -> Result<HeaderBlock, (Option<HeaderBlock>, BlockError)> {
    let payload = &frame[FRAME_HEAD_BYTES..];
    match block {
        Some(mut block) => {
            if head.kind != CONTINUATION || head.stream_id != block.stream_id {
                return Err((Some(block), BlockError::Interrupted));
            }
            block.received.extend_from_slice(frame);
            block.fragment.extend_from_slice(payload);
            Ok(block)
        }
        None if head.kind == HEADERS => {
            let (fragment, priority) =
                headers_fragment(head.flags, payload).ok_or((None, BlockError::Malformed))?;
            Ok(HeaderBlock {
                received: frame.to_vec(),
                fragment: fragment.to_vec(),
                stream_id: head.stream_id,
                end_stream: head.flags & END_STREAM != 0,
                priority,
            })
        }
        None => Err((None, BlockError::Interrupted)),
    }
}

/// The header block fragment of a HEADERS frame's payload, and its priority fields.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(&[u8], Option<[u8; PRIORITY_BYTES]>)> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*rest.first()?);
        rest = &rest[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; PRIORITY_BYTES] = rest.get(..PRIORITY_BYTES)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[PRIORITY_BYTES..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((&rest[..end], priority))
}

/// Decodes a header block, bounded by [`HEADER_LIST_BYTES_MAX`].
fn decode(
    decoder: &mut fluke_hpack::Decoder<'static>,
    fragment: &[u8],
) -> Result<Fields, BlockError> {
    let mut fields = Vec::new();
    let mut size = 0;
    decoder
        .decode_with_cb(fragment, |name, value| {
            size += name.len() + value.len() + FIELD_OVERHEAD_BYTES;
            if size <= HEADER_LIST_BYTES_MAX {
                fields.push((name.into_owned(), value.into_owned()));
            }
        })
        .map_err(BlockError::Hpack)?;
    if size > HEADER_LIST_BYTES_MAX {
        return Err(BlockError::ListTooLarge);
    }
    Ok(fields)
}

/// What an `:authority` value becomes: `None` if it is an authority; else the authority of
/// the URL it is, or `Some(None)` (drop it) if it is not one either.
fn fixed_authority(value: &[u8]) -> Option<Option<Vec<u8>>> {
    if Authority::try_from(value).is_ok() {
        return None;
    }
    let url = Uri::try_from(value).ok();
    let authority = url.and_then(|u| u.authority().cloned());
    Some(
        authority
            .filter(|a| !a.as_str().is_empty())
            .map(|a| a.as_str().as_bytes().to_vec()),
    )
}

/// Rewrites (or drops) an `:authority` that is not an authority. Returns whether it did.
fn fix_authority(fields: &mut Fields) -> bool {
    let mut changed = false;
    fields.retain_mut(|(name, value)| {
        if name.as_slice() != b":authority" {
            return true;
        }
        let Some(fixed) = fixed_authority(value) else {
            return true;
        };
        changed = true;
        tracing::debug!(
            authority = %String::from_utf8_lossy(value),
            "client sent an :authority that is not an authority"
        );
        match fixed {
            Some(authority) => {
                *value = authority;
                true
            }
            None => false,
        }
    });
    changed
}

/// Encodes header fields as literals without indexing, with literal names: the server's
/// dynamic table is left alone.
fn encode(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        encode_string(&mut out, name);
        encode_string(&mut out, value);
    }
    out
}

/// An HPACK string literal without Huffman coding: its length (7-bit prefix), then the bytes.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix in a first byte starting with `flags`.
fn encode_integer(out: &mut Vec<u8>, value: usize, n: u32, flags: u8) {
    let limit = (1usize << n) - 1;
    if value < limit {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | limit as u8);
    let mut rest = value - limit;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Writes a re-encoded header block as a HEADERS frame (with the original END_STREAM and
/// priority fields, no padding) and as many CONTINUATION frames as it needs.
fn write_block(out: &mut BytesMut, block: &HeaderBlock, encoded: &[u8]) {
    let priority_len = block.priority.map_or(0, |_| PRIORITY_BYTES);
    let first = encoded.len().min(FRAME_PAYLOAD_BYTES_SAFE - priority_len);
    let (head_part, mut rest) = encoded.split_at(first);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    FrameHead {
        len: priority_len + head_part.len(),
        kind: HEADERS,
        flags,
        stream_id: block.stream_id,
    }
    .write(out);
    if let Some(p) = block.priority {
        out.put_slice(&p);
    }
    out.put_slice(head_part);
    while !rest.is_empty() {
        let n = rest.len().min(FRAME_PAYLOAD_BYTES_SAFE);
        let (part, after) = rest.split_at(n);
        FrameHead {
            len: n,
            kind: CONTINUATION,
            flags: if after.is_empty() { END_HEADERS } else { 0 },
            stream_id: block.stream_id,
        }
        .write(out);
        out.put_slice(part);
        rest = after;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if matches!(this.state, State::Passthrough)
                && this.out.is_empty()
                && this.raw.is_empty()
            {
                // Not following (any more): the client's bytes go straight to the server.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if chunk.filled().is_empty() {
                // The client closed its side: whatever is held goes on as it came.
                this.eof = true;
                if let State::Block(block) = std::mem::replace(&mut this.state, State::Passthrough)
                {
                    this.out.extend_from_slice(&block.received);
                }
                let rest = this.raw.split();
                this.out.unsplit(rest);
                continue;
            }
            this.raw.extend_from_slice(chunk.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client's request headers with this `:authority`.
    fn request(authority: &str, path: &str) -> Fields {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        FrameHead {
            len: payload.len(),
            kind,
            flags,
            stream_id,
        }
        .write(&mut out);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// What a client sends: the preface, SETTINGS, then for each request a header block
    /// (encoded with a dynamic table, as clients do) and a DATA frame. The second request's
    /// block has padding and priority fields and is split over a CONTINUATION frame.
    fn client_stream(requests: &[Fields]) -> Vec<u8> {
        let mut encoder = fluke_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        for (i, fields) in requests.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
            if i % 2 == 0 {
                out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            } else {
                let (a, b) = block.split_at(block.len() / 2);
                let mut payload = vec![3];
                payload.extend_from_slice(&[0, 0, 0, 0, 16]);
                payload.extend_from_slice(a);
                payload.extend_from_slice(&[0, 0, 0]);
                out.extend(frame(HEADERS, PADDED | PRIORITY, stream, &payload));
                out.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            }
            out.extend(frame(0x0, END_STREAM, stream, b"message"));
        }
        out
    }

    /// Passes `input` through an [`AuthorityFix`] in small pieces and returns what the server
    /// reads.
    async fn through_fix(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    /// The server's view: each header block decoded (with one decoder, as a server has),
    /// and each DATA payload.
    fn server_view(stream: &[u8]) -> (Vec<Fields>, Vec<Vec<u8>>) {
        assert!(stream.starts_with(PREFACE));
        let mut rest = &stream[PREFACE.len()..];
        let mut decoder = fluke_hpack::Decoder::new();
        let (mut blocks, mut data, mut block) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let head = FrameHead::parse(rest);
            let payload = &rest[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + head.len];
            rest = &rest[FRAME_HEAD_BYTES + head.len..];
            match head.kind {
                HEADERS => {
                    let (fragment, _) = headers_fragment(head.flags, payload).unwrap();
                    block = fragment.to_vec();
                }
                CONTINUATION => block.extend_from_slice(payload),
                0x0 => data.push(payload.to_vec()),
                _ => continue,
            }
            if matches!(head.kind, HEADERS | CONTINUATION) && head.flags & END_HEADERS != 0 {
                blocks.push(decoder.decode(&block).expect("a decodable block"));
            }
        }
        (blocks, data)
    }

    #[tokio::test]
    async fn a_url_authority_becomes_its_authority_and_later_blocks_still_decode() {
        // The first block needs the change, so every later one is followed (and mixed
        // authorities, which gRPC clients do not send, still come out right).
        let requests = [
            request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status"),
            request("127.0.0.1:2379", "/etcdserverpb.KV/Range"),
            request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status"),
            request("127.0.0.1:2379", "/etcdserverpb.KV/Put"),
            request("http://127.0.0.1:2379", "/etcdserverpb.KV/Put"),
        ];
        let (blocks, data) = server_view(&through_fix(client_stream(&requests)).await);
        let expected: Vec<Fields> = requests
            .iter()
            .map(|r| request("127.0.0.1:2379", std::str::from_utf8(&r[2].1).unwrap()))
            .collect();
        assert_eq!(blocks, expected);
        assert_eq!(data, vec![b"message".to_vec(); requests.len()]);
    }

    #[tokio::test]
    async fn valid_authorities_and_other_protocols_pass_byte_for_byte() {
        let requests = [
            request("127.0.0.1:2379", "/etcdserverpb.KV/Range"),
            request("127.0.0.1:2379", "/etcdserverpb.KV/Put"),
            request("localhost", "/etcdserverpb.KV/Put"),
        ];
        let stream = client_stream(&requests);
        assert_eq!(through_fix(stream.clone()).await, stream);
        let http1 = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        assert_eq!(through_fix(http1.clone()).await, http1);
    }

    #[tokio::test]
    async fn an_oversized_block_is_passed_on_unfollowed() {
        let mut stream = PREFACE.to_vec();
        let payload = vec![0u8; HEADER_BLOCK_BYTES_MAX];
        stream.extend(frame(HEADERS, END_HEADERS, 1, &payload));
        stream.extend(frame(0x0, END_STREAM, 1, b"message"));
        assert_eq!(through_fix(stream.clone()).await, stream);
    }

    #[test]
    fn authorities_are_fixed_as_etcdctl_needs() {
        let fixed = |v: &str| {
            fixed_authority(v.as_bytes()).map(|f| f.map(|a| String::from_utf8(a).unwrap()))
        };
        assert_eq!(fixed("127.0.0.1:2379"), None);
        assert_eq!(fixed("localhost"), None);
        assert_eq!(
            fixed("http://127.0.0.1:2379"),
            Some(Some("127.0.0.1:2379".into()))
        );
        assert_eq!(
            fixed("https://example.com:2379/"),
            Some(Some("example.com:2379".into()))
        );
        assert_eq!(fixed("http://[::1]:2379"), Some(Some("[::1]:2379".into())));
        // Not even a URL with an authority: dropped.
        assert_eq!(fixed("a b"), Some(None));
        assert_eq!(fixed("unix:///tmp/sock"), Some(None));
    }

    #[test]
    fn integers_encode_as_hpack_says() {
        // RFC 7541, C.1.1 to C.1.3.
        let encode = |v, n| {
            let mut out = Vec::new();
            encode_integer(&mut out, v, n, 0);
            out
        };
        assert_eq!(encode(10, 5), [10]);
        assert_eq!(encode(1337, 5), [31, 154, 10]);
        assert_eq!(encode(42, 8), [42]);
    }
}

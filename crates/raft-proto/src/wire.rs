//! The versioned wire encoding.

use std::cell::RefCell;

use bytes::Bytes;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::Serialize;

/// The version byte every encoded value starts with.
pub const WIRE_VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// There were no bytes at all.
    #[error("empty input: expected a version byte")]
    Empty,
    /// The version byte is not one this build understands.
    #[error("unsupported wire version {found} (this build speaks version {WIRE_VERSION})")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("malformed body: {0}")]
    Body(postcard::Error),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
}

/// Encodes `value` as the version byte followed by its postcard encoding.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.push(WIRE_VERSION);
    let body = postcard::to_extend(value, std::mem::take(out))
        .expect("postcard cannot fail to serialize the protocol types into a Vec");
    *out = body;
}

/// Decodes a value encoded by [`encode`]. Never panics: every malformed input is an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::Version { found: version });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(DecodeError::Body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

thread_local! {
    /// The buffer a [`decode_shared`] call decodes from, on this thread.
    static SHARED: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Decodes like [`decode`], but the large byte fields (entry payloads, snapshot chunk data)
/// share `bytes`'s buffer instead of being copied out of it. Worth it for large messages;
/// a small message's payloads would keep the whole buffer alive.
pub fn decode_shared<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, DecodeError> {
    struct Reset(Option<Bytes>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SHARED.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let previous = SHARED.with(|s| s.borrow_mut().replace(bytes.clone()));
    let _reset = Reset(previous);
    decode(bytes)
}

/// Deserializes a [`Bytes`] field: a slice of the buffer [`decode_shared`] decodes from when
/// the input borrows from it, else a copy.
pub(crate) fn shared_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    struct SharedVisitor;
    impl<'de> Visitor<'de> for SharedVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            let shared = SHARED.with(|s| {
                s.borrow().as_ref().and_then(|buf| {
                    let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
                    let at = v.as_ptr() as usize;
                    (at >= start && at + v.len() <= end).then(|| buf.slice_ref(v))
                })
            });
            Ok(shared.unwrap_or_else(|| Bytes::copy_from_slice(v)))
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(Bytes::from(out))
        }
    }
    d.deserialize_bytes(SharedVisitor)
}

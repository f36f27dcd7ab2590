//! The versioned wire encoding.

use serde::de::DeserializeOwned;
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

//! The compact byte form session data is kept in: every key and value length-prefixed, one
//! allocation per session instead of a map, a string and a vector per key.
//!
//! Layout: for each entry, `varint(key length) key varint(value length) value`, keys in no
//! particular order. Lengths are protobuf's varints, written and read with prost's functions.

use bytes::{BufMut, Bytes};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

use crate::{Result, SessionData, StoreError};

/// Encodes `data` into one buffer.
pub fn encode_data(data: &SessionData) -> Box<[u8]> {
    let mut out = Vec::with_capacity(encoded_len(data));
    encode_into(&mut out, data);
    out.into_boxed_slice()
}

/// The length of `data` encoded.
pub fn encoded_len(data: &SessionData) -> usize {
    data.iter()
        .map(|(k, v)| len_prefixed(k.len()) + len_prefixed(v.len()))
        .sum()
}

/// Appends `data`, encoded, to `out`: [`encoded_len`] bytes.
pub fn encode_into(out: &mut impl BufMut, data: &SessionData) {
    for (key, value) in data {
        encode_varint(key.len() as u64, out);
        out.put_slice(key.as_bytes());
        encode_varint(value.len() as u64, out);
        out.put_slice(value);
    }
}

/// Decodes what [`encode_data`] wrote, copying each value. Malformed input is an error, never a
/// panic.
pub fn decode_data(bytes: &[u8]) -> Result<SessionData> {
    decode_with(bytes, Bytes::copy_from_slice)
}

/// Decodes what [`encode_data`] wrote at `bytes[start..]`, each value a slice of `bytes` (no
/// copy).
pub fn decode_shared(bytes: &Bytes, start: usize) -> Result<SessionData> {
    let Some(encoded) = bytes.get(start..) else {
        return Err(StoreError::Internal("session data is truncated".into()));
    };
    decode_with(encoded, |value| bytes.slice_ref(value))
}

fn decode_with(bytes: &[u8], mut value_of: impl FnMut(&[u8]) -> Bytes) -> Result<SessionData> {
    let mut data = SessionData::new();
    for entry in entries(bytes) {
        let (key, value) = entry?;
        data.insert(key.to_owned(), value_of(value));
    }
    Ok(data)
}

/// The entries [`encode_data`] wrote, each key and value borrowed from `bytes`, in the order
/// they were written. Malformed input is an error item (after which there are no more), never
/// a panic.
pub fn entries(bytes: &[u8]) -> Entries<'_> {
    Entries { bytes }
}

/// The iterator of [`entries`].
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a str, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let entry = (|| {
            let key = take(&mut self.bytes)?;
            let key = std::str::from_utf8(key)
                .map_err(|_| StoreError::Internal("session key is not UTF-8".into()))?;
            Ok((key, take(&mut self.bytes)?))
        })();
        if entry.is_err() {
            self.bytes = &[];
        }
        Some(entry)
    }
}

/// The length of a byte string of `len` bytes with its varint length in front.
pub(crate) fn len_prefixed(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// Reads a varint length from the front of `bytes`.
pub(crate) fn get_len(bytes: &mut &[u8]) -> Result<usize> {
    let len = decode_varint(bytes)
        .map_err(|_| StoreError::Internal("malformed length in session data".into()))?;
    usize::try_from(len).map_err(|_| StoreError::Internal("length out of range".into()))
}

/// Takes a length-prefixed byte string from the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = get_len(bytes)?;
    if len > bytes.len() {
        return Err(StoreError::Internal("session data is truncated".into()));
    }
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_data() {
        let mut data = SessionData::new();
        assert_eq!(decode_data(&encode_data(&data)).unwrap(), data);
        data.insert("user_id".into(), Bytes::from_static(b"42"));
        data.insert(String::new(), Bytes::new());
        data.insert("big".into(), vec![7; 300].into());
        data.insert("ünïcode".into(), vec![0, 255, 128].into());
        let encoded = encode_data(&data);
        assert_eq!(decode_data(&encoded).unwrap(), data);
        let shared = Bytes::from(encoded.to_vec());
        let decoded = decode_shared(&shared, 0).unwrap();
        assert_eq!(decoded, data);
        // Each value is a slice of the encoded buffer, not a copy.
        let big = decoded["big"].as_ptr() as usize;
        assert!((shared.as_ptr() as usize..shared.as_ptr() as usize + shared.len()).contains(&big));
        let expected_len = 1 + 7 + 1 + 2 + 1 + 1 + 1 + 3 + 2 + 300 + 1 + 9 + 1 + 3;
        assert_eq!(encoded.len(), expected_len);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [&[5u8, b'a'][..], &[0x80], &[1, b'k', 9, 1], &[1, 0xff, 0]] {
            assert!(decode_data(bad).is_err(), "{bad:?}");
        }
    }
}

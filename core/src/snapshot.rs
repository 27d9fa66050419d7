//! The snapshot file format of a [`MemorySessionStore`](crate::MemorySessionStore).
//!
//! ```text
//! "GNSESS02"                                   magic and format version, 8 bytes
//! record*                                      every live session:
//!   varint id length, id bytes
//!   varint owner length, owner bytes           (0: no owner; absent in "GNSESS01")
//!   u64 version, u64 created_at, u64 expires_at  (little endian; times in ns since 1970)
//!   varint data length, data                   (the encoding of crate::codec)
//! u64 record count                             little endian
//! u32 CRC-32 of everything before it           little endian
//! ```
//!
//! The count and checksum come last so records can be written while they are read from the
//! store, without a second pass. Snapshots of the first format, "GNSESS01", written before
//! sessions had owners, still load: their sessions have none.

use std::io::{self, Write};

use crate::codec::get_len;
use prost::encoding::encode_varint;

/// The first bytes of every snapshot written now.
pub(crate) const MAGIC: &[u8; 8] = b"GNSESS02";
/// The first bytes of a snapshot of the first format, without owners.
pub(crate) const MAGIC_V1: &[u8; 8] = b"GNSESS01";

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("cannot read snapshot: {0}")]
    Io(#[from] io::Error),
    /// It is not a snapshot of this format.
    #[error("not a gonest-sessiond snapshot (bad magic bytes)")]
    BadMagic,
    /// Its checksum does not match its contents: it was damaged or cut short.
    #[error("snapshot checksum mismatch: the file is damaged or truncated")]
    Checksum,
    /// The checksum matched but a record does not parse.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

/// One record as stored in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRecord {
    pub(crate) id: Box<str>,
    pub(crate) owner: Option<Box<str>>,
    pub(crate) version: u64,
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) data: Box<[u8]>,
}

/// Writes records and keeps the running checksum and count.
pub(crate) struct SnapshotWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    count: u64,
    scratch: Vec<u8>,
}

impl<W: Write> SnapshotWriter<W> {
    pub(crate) fn new(out: W) -> io::Result<Self> {
        let mut writer = Self {
            out,
            crc: crc32fast::Hasher::new(),
            count: 0,
            scratch: Vec::with_capacity(64),
        };
        writer.put(MAGIC)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    pub(crate) fn record(
        &mut self,
        id: &[u8],
        owner: &[u8],
        version: u64,
        created_at: u64,
        expires_at: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let mut head = std::mem::take(&mut self.scratch);
        head.clear();
        encode_varint(id.len() as u64, &mut head);
        head.extend_from_slice(id);
        encode_varint(owner.len() as u64, &mut head);
        head.extend_from_slice(owner);
        head.extend_from_slice(&version.to_le_bytes());
        head.extend_from_slice(&created_at.to_le_bytes());
        head.extend_from_slice(&expires_at.to_le_bytes());
        encode_varint(data.len() as u64, &mut head);
        let written = self.put(&head).and_then(|()| self.put(data));
        self.scratch = head;
        self.count += 1;
        written
    }

    /// Writes the count and checksum; returns the writer and the number of records.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        let count = self.count.to_le_bytes();
        self.put(&count)?;
        let crc = self.crc.clone().finalize().to_le_bytes();
        self.out.write_all(&crc)?;
        Ok((self.out, self.count))
    }
}

/// Checks a whole snapshot's magic and checksum.
fn verify(bytes: &[u8]) -> Result<(), SnapshotError> {
    if !bytes.starts_with(MAGIC) && !bytes.starts_with(MAGIC_V1) {
        return Err(SnapshotError::BadMagic);
    }
    let Some((body, stored)) = bytes.split_last_chunk::<4>() else {
        return Err(SnapshotError::Checksum);
    };
    if u32::from_le_bytes(*stored) != crc32fast::hash(body) {
        return Err(SnapshotError::Checksum);
    }
    Ok(())
}

/// Verifies and parses a whole snapshot. Never panics, whatever the bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<RawRecord>, SnapshotError> {
    verify(bytes)?;
    parse(bytes)
}

/// Parses a snapshot whose checksum was verified.
fn parse(bytes: &[u8]) -> Result<Vec<RawRecord>, SnapshotError> {
    let malformed = |what: &str| SnapshotError::Malformed(what.to_owned());
    let (body, with_owners) = match (
        bytes.strip_prefix(MAGIC.as_slice()),
        bytes.strip_prefix(MAGIC_V1.as_slice()),
    ) {
        (Some(body), _) => (body, true),
        (None, Some(body)) => (body, false),
        (None, None) => return Err(SnapshotError::BadMagic),
    };
    if body.len() < 12 {
        return Err(SnapshotError::Checksum);
    }
    let (mut records, trailer) = body.split_at(body.len() - 12);
    let count = u64::from_le_bytes(trailer[..8].try_into().map_err(|_| malformed("trailer"))?);
    let mut out = Vec::new();
    while !records.is_empty() {
        let id = take(&mut records).ok_or_else(|| malformed("record id"))?;
        let id = std::str::from_utf8(id).map_err(|_| malformed("id is not UTF-8"))?;
        crate::validate_id(id).map_err(|err| SnapshotError::Malformed(err.to_string()))?;
        let owner = if with_owners {
            let owner = take(&mut records).ok_or_else(|| malformed("record owner"))?;
            let owner = std::str::from_utf8(owner).map_err(|_| malformed("owner is not UTF-8"))?;
            if !owner.is_empty() {
                crate::validate_stored_owner(owner)
                    .map_err(|err| SnapshotError::Malformed(err.to_string()))?;
            }
            (!owner.is_empty()).then(|| owner.into())
        } else {
            None
        };
        let mut fixed = [0u64; 3];
        for value in &mut fixed {
            let (word, rest) = records
                .split_first_chunk::<8>()
                .ok_or_else(|| malformed("record fields"))?;
            *value = u64::from_le_bytes(*word);
            records = rest;
        }
        let data = take(&mut records).ok_or_else(|| malformed("record data"))?;
        crate::codec::decode_data(data).map_err(|err| SnapshotError::Malformed(err.to_string()))?;
        out.push(RawRecord {
            id: id.into(),
            owner,
            version: fixed[0],
            created_at: fixed[1],
            expires_at: fixed[2],
            data: data.into(),
        });
    }
    if out.len() as u64 != count {
        return Err(malformed("record count does not match"));
    }
    Ok(out)
}

fn take<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = get_len(bytes).ok()?;
    if len > bytes.len() {
        return None;
    }
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot(records: &[RawRecord]) -> Vec<u8> {
        let mut writer = SnapshotWriter::new(Vec::new()).unwrap();
        for r in records {
            writer
                .record(
                    r.id.as_bytes(),
                    r.owner.as_deref().unwrap_or("").as_bytes(),
                    r.version,
                    r.created_at,
                    r.expires_at,
                    &r.data,
                )
                .unwrap();
        }
        writer.finish().unwrap().0
    }

    fn sample() -> Vec<RawRecord> {
        let mut data = crate::SessionData::new();
        data.insert("user_id".into(), bytes::Bytes::from_static(b"42"));
        (0..3)
            .map(|i| RawRecord {
                id: format!("id-{i}").into(),
                owner: (i != 1).then(|| format!("user {i}").into()),
                version: 7 + i,
                created_at: 1_700_000_000_123_456_789 + i,
                expires_at: 1_800_000_000_987_654_321 + i,
                data: crate::codec::encode_data(&data),
            })
            .collect()
    }

    #[test]
    fn round_trips_every_field() {
        let records = sample();
        assert_eq!(decode(&snapshot(&records)).unwrap(), records);
        assert_eq!(decode(&snapshot(&[])).unwrap(), vec![]);
    }

    /// A snapshot of the first format, as the previous version wrote it.
    fn snapshot_v1(records: &[RawRecord]) -> Vec<u8> {
        let mut bytes = MAGIC_V1.to_vec();
        for r in records {
            encode_varint(r.id.len() as u64, &mut bytes);
            bytes.extend_from_slice(r.id.as_bytes());
            for word in [r.version, r.created_at, r.expires_at] {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            encode_varint(r.data.len() as u64, &mut bytes);
            bytes.extend_from_slice(&r.data);
        }
        bytes.extend_from_slice(&(records.len() as u64).to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn snapshots_of_the_first_format_still_load_without_owners() {
        let mut records = sample();
        for record in &mut records {
            record.owner = None;
        }
        assert_eq!(decode(&snapshot_v1(&records)).unwrap(), records);
    }

    #[test]
    fn damage_and_truncation_are_detected() {
        let bytes = snapshot(&sample());
        for i in [0, 9, bytes.len() / 2, bytes.len() - 5, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(decode(&damaged).is_err(), "flipped byte {i}");
        }
        for len in [0, 4, 8, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::Checksum)
        ));
        assert!(matches!(
            decode(b"not a snapshot"),
            Err(SnapshotError::BadMagic)
        ));
    }

    #[test]
    fn a_valid_checksum_over_bad_records_is_still_refused() {
        // A record whose id is not a valid session id, with a correct checksum.
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, b' ']);
        bytes.extend_from_slice(&[0; 24]);
        bytes.push(0);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(SnapshotError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic);
            // And with a correct checksum, so the parser itself is exercised.
            let crc = crc32fast::hash(&with_magic);
            with_magic.extend_from_slice(&crc.to_le_bytes());
            let _ = decode(&with_magic);
        }
    }
}

//! The sharded hash table behind [`MemorySessionStore`](crate::MemorySessionStore), and the
//! one-allocation form each session is kept in.
//!
//! A store holds millions of sessions, so both are built for size and for a sweeper that must
//! not stall requests:
//! - a session is one heap buffer holding its times, version, id and encoded data
//!   ([`Record`]); the table's slot is the buffer's pointer and length, nothing else;
//! - the table is [`SHARDS`] `hashbrown` tables, each behind its own lock, so an operation locks
//!   one small shard and the sweeper can clean one shard at a time and let requests run in
//!   between (see `sweeper.rs`).

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{BufMut, Bytes};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use parking_lot::{Mutex, RwLock};

/// Shards as a power of two. With a million sessions a shard holds about 250, so sweeping one
/// takes tens of microseconds.
const SHARD_BITS: u32 = 12;
/// Shards in a table.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;

/// A point in time as nanoseconds since the Unix epoch: 8 bytes instead of `SystemTime`'s 16,
/// good until the year 2554.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Nanos(pub(crate) u64);

impl From<std::time::SystemTime> for Nanos {
    fn from(time: std::time::SystemTime) -> Self {
        let since = time
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for std::time::SystemTime {
    fn from(nanos: Nanos) -> Self {
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos.0)
    }
}

/// One session in one buffer. Layout, integers little-endian:
///
/// | bytes     | field                                  |
/// |-----------|----------------------------------------|
/// | 0..8      | `expires_at`, [`Nanos`]                |
/// | 8..16     | `created_at`, [`Nanos`]                |
/// | 16..24    | `version`                              |
/// | 24..26    | id length `n` (ids are ≤ 256 bytes)    |
/// | 26..28    | owner length `m` (≤ 256; 0: none)      |
/// | 28..28+n  | id                                     |
/// | ..+m      | owner                                  |
/// | ..        | data, in the [`crate::codec`] form     |
///
/// The buffer is shared: a read takes a reference to it, not a copy, and its values are handed
/// out as slices of it (see [`Record::shared`]). Changing a record in place copies it first only
/// while a reader still holds it.
///
/// The expiry is kept beside the pointer as well, in the table's slot, so counting the live
/// records of a shard (`Stats`) or finding its expired ones reads the table, not every
/// session's buffer: a million expired records counted in 8–10 ms rather than 28–37 (release
/// build, no other load; 8 bytes more per slot).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    buffer: Arc<[u8]>,
    /// The expiry the buffer starts with.
    expires_at: Nanos,
}

const EXPIRES: Range<usize> = 0..8;
const CREATED: Range<usize> = 8..16;
const VERSION: Range<usize> = 16..24;
const ID_LEN: Range<usize> = 24..26;
const OWNER_LEN: Range<usize> = 26..28;
const HEADER: usize = 28;

/// The little-endian integer at `range` (8 bytes) of a record's buffer.
fn u64_at(buffer: &[u8], range: Range<usize>) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&buffer[range]);
    u64::from_le_bytes(bytes)
}

impl Record {
    /// A record whose data is written by `write_data` into exactly `data_len` bytes.
    pub(crate) fn new(
        id: &str,
        owner: Option<&str>,
        created_at: Nanos,
        expires_at: Nanos,
        version: u64,
        data_len: usize,
        write_data: impl FnOnce(&mut &mut [u8]),
    ) -> Self {
        let owner = owner.unwrap_or("");
        let id_len = u16::try_from(id.len()).expect("session ids are validated to ≤ 256 bytes");
        let owner_len = u16::try_from(owner.len()).expect("owners are validated to ≤ 256 bytes");
        // One allocation of exactly the record's size (collecting a `TrustedLen` iterator into
        // an `Arc<[u8]>` allocates once), written in place.
        let mut buf: Arc<[u8]> =
            std::iter::repeat_n(0, HEADER + id.len() + owner.len() + data_len).collect();
        let mut out: &mut [u8] = Arc::get_mut(&mut buf).expect("a new buffer is not shared");
        out.put_slice(&expires_at.0.to_le_bytes());
        out.put_slice(&created_at.0.to_le_bytes());
        out.put_slice(&version.to_le_bytes());
        out.put_slice(&id_len.to_le_bytes());
        out.put_slice(&owner_len.to_le_bytes());
        out.put_slice(id.as_bytes());
        out.put_slice(owner.as_bytes());
        write_data(&mut out);
        assert!(out.is_empty(), "session data shorter than its length");
        Self {
            buffer: buf,
            expires_at,
        }
    }

    /// The record's whole buffer, as the change log writes it.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buffer
    }

    /// A record from a buffer [`Self::bytes`] gave, checked: `None` unless its header, id,
    /// owner and data are all well formed.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER {
            return None;
        }
        let record = Self {
            buffer: Arc::from(bytes),
            expires_at: Nanos(u64_at(bytes, EXPIRES)),
        };
        if record.owner_end() > bytes.len() {
            return None;
        }
        let id = std::str::from_utf8(record.id()).ok()?;
        crate::validate_id(id).ok()?;
        let owner = std::str::from_utf8(record.owner()).ok()?;
        if !owner.is_empty() {
            crate::validate_stored_owner(owner).ok()?;
        }
        crate::codec::decode_data(record.data()).ok()?;
        Some(record)
    }

    /// The record's buffer as [`Bytes`], shared with the table (no copy): values read from it
    /// are slices of it.
    pub(crate) fn shared(&self) -> Bytes {
        Bytes::from_owner(self.buffer.clone())
    }

    /// Where the encoded data starts in the buffer.
    pub(crate) fn data_start(&self) -> usize {
        self.owner_end()
    }

    fn u64_at(&self, range: Range<usize>) -> u64 {
        u64_at(&self.buffer, range)
    }

    fn u16_at(&self, range: Range<usize>) -> usize {
        let mut bytes = [0; 2];
        bytes.copy_from_slice(&self.buffer[range]);
        usize::from(u16::from_le_bytes(bytes))
    }

    fn id_end(&self) -> usize {
        HEADER + self.u16_at(ID_LEN)
    }

    fn owner_end(&self) -> usize {
        self.id_end() + self.u16_at(OWNER_LEN)
    }

    /// The session id's bytes.
    pub(crate) fn id(&self) -> &[u8] {
        &self.buffer[HEADER..self.id_end()]
    }

    /// The owner's bytes; empty for none.
    pub(crate) fn owner(&self) -> &[u8] {
        &self.buffer[self.id_end()..self.owner_end()]
    }

    /// The encoded data.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buffer[self.owner_end()..]
    }

    pub(crate) fn expires_at(&self) -> Nanos {
        self.expires_at
    }

    pub(crate) fn set_expires_at(&mut self, at: Nanos) {
        Arc::make_mut(&mut self.buffer)[EXPIRES].copy_from_slice(&at.0.to_le_bytes());
        self.expires_at = at;
    }

    pub(crate) fn created_at(&self) -> Nanos {
        Nanos(self.u64_at(CREATED))
    }

    pub(crate) fn version(&self) -> u64 {
        self.u64_at(VERSION)
    }

    /// Whether the record has not expired at `now`.
    pub(crate) fn is_live(&self, now: Nanos) -> bool {
        self.expires_at() > now
    }
}

/// Session id to [`Record`], in [`SHARDS`] independently locked shards.
pub(crate) struct Table {
    shards: Box<[Shard]>,
    /// Whether a snapshot is being taken: writers then check `snapshot` first.
    snapshotting: AtomicBool,
    /// The snapshot being taken, if any (see [`Table::snapshot`]).
    snapshot: Mutex<Option<Snapshot>>,
    /// Held for the whole of a snapshot: one at a time.
    one_snapshot: Mutex<()>,
    /// Seeded at random per table, so ids chosen to collide in one daemon do not collide in
    /// another.
    hasher: foldhash::quality::RandomState,
}

/// A snapshot in progress: which shards it has copied, and the copies writers made for it.
struct Snapshot {
    /// Records live at this time are copied; the others had expired when the snapshot began.
    cutoff: Nanos,
    /// Shards copied so far, by the snapshot or by a writer about to change them.
    copied: Vec<bool>,
    /// Copies writers made, waiting to be handed to the snapshot.
    pending: Vec<Vec<Record>>,
}

impl Snapshot {
    /// Copies `records` (shard `index`, whose lock the caller holds) unless copied already.
    fn copy(&mut self, index: usize, records: &HashTable<Record>) -> Option<Vec<Record>> {
        if std::mem::replace(&mut self.copied[index], true) {
            return None;
        }
        let cutoff = self.cutoff;
        Some(
            records
                .iter()
                .filter(|r| r.is_live(cutoff))
                .cloned()
                .collect(),
        )
    }
}

/// One shard: its records, and the earliest time any of them may expire.
struct Shard {
    records: RwLock<HashTable<Record>>,
    /// No record of the shard expires before this ([`Nanos`]; `u64::MAX` when there is none).
    /// Lowered under the write lock whenever a record is given an expiry, and set exactly by
    /// every sweep of the shard; so a shard whose `earliest` is still ahead holds no expired
    /// record, and finding the expired records of a whole table skips most shards unread.
    earliest: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            records: RwLock::default(),
            earliest: AtomicU64::new(u64::MAX),
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            snapshotting: AtomicBool::new(false),
            snapshot: Mutex::new(None),
            one_snapshot: Mutex::new(()),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The shard of `hash`. hashbrown takes a slot's index from the low bits and its tag from the
    /// top 7, so the shard comes from the bits just below the tag.
    fn shard_index(hash: u64) -> usize {
        ((hash << 7) >> (64 - SHARD_BITS)) as usize
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[Self::shard_index(hash)]
    }

    /// Calls `f` with the record of `id`, if any, under its shard's read lock.
    pub(crate) fn read<R>(&self, id: &str, f: impl FnOnce(Option<&Record>) -> R) -> R {
        let id = id.as_bytes();
        let hash = self.hash(id);
        let shard = self.shard(hash).records.read();
        f(shard.find(hash, |record| record.id() == id))
    }

    /// Calls `f` with the table entry of `id` under its shard's write lock. `f` must not give a
    /// record a new expiry: that is [`write_expiring`](Self::write_expiring)'s job.
    pub(crate) fn write<R>(&self, id: &str, f: impl FnOnce(Entry<'_, Record>) -> R) -> R {
        self.write_expiring(id, None, f)
    }

    /// Like [`write`](Self::write), for an `f` that may store a record expiring at `expires_at`.
    pub(crate) fn write_expiring<R>(
        &self,
        id: &str,
        expires_at: Option<Nanos>,
        f: impl FnOnce(Entry<'_, Record>) -> R,
    ) -> R {
        let id = id.as_bytes();
        let hash = self.hash(id);
        let shard = self.shard(hash);
        let mut records = shard.records.write();
        if self.snapshotting.load(Ordering::Acquire) {
            // A snapshot in progress sees this shard as it was when the snapshot began.
            self.copy_for_snapshot(Self::shard_index(hash), &records);
        }
        if let Some(at) = expires_at {
            // Under the write lock, so a sweep setting `earliest` cannot overwrite it.
            shard.earliest.fetch_min(at.0, Ordering::Relaxed);
        }
        f(records.entry(
            hash,
            |record| record.id() == id,
            |record| self.hash(record.id()),
        ))
    }

    /// Copies shard `index` (whose lock the caller holds) for the snapshot in progress, unless
    /// it has been copied already.
    fn copy_for_snapshot(&self, index: usize, records: &HashTable<Record>) {
        let mut snapshot = self.snapshot.lock();
        if let Some(snapshot) = snapshot.as_mut()
            && let Some(copy) = snapshot.copy(index, records)
        {
            snapshot.pending.push(copy);
        }
    }

    /// Hands `write` every record live at `cutoff`, as the table was when this was called, a
    /// shard's worth at a time, with no lock held, so a slow `write` (a disk) stalls nothing.
    ///
    /// The shards are copied one at a time; a write to a shard not copied yet copies it first.
    /// So the records handed over are one moment's: a session moved to a new id (saved under
    /// the new one, then destroyed under the old) is in it under at least one of them. One
    /// snapshot runs at a time; a second call waits for the first.
    pub(crate) fn snapshot<E>(
        &self,
        cutoff: Nanos,
        mut write: impl FnMut(&[Record]) -> Result<(), E>,
    ) -> Result<(), E> {
        let _one = self.one_snapshot.lock();
        *self.snapshot.lock() = Some(Snapshot {
            cutoff,
            copied: vec![false; SHARDS],
            pending: Vec::new(),
        });
        self.snapshotting.store(true, Ordering::Release);
        let mut written = Ok(());
        for (index, shard) in self.shards.iter().enumerate() {
            let (copy, pending) = {
                let records = shard.records.read();
                let mut snapshot = self.snapshot.lock();
                let snapshot = snapshot.as_mut().expect("set above");
                (
                    snapshot.copy(index, &records),
                    std::mem::take(&mut snapshot.pending),
                )
            };
            written = copy
                .iter()
                .chain(&pending)
                .try_for_each(|records| write(records));
            if written.is_err() {
                break;
            }
        }
        self.snapshotting.store(false, Ordering::Release);
        let rest = self.snapshot.lock().take().map(|s| s.pending);
        written?;
        rest.unwrap_or_default()
            .iter()
            .try_for_each(|records| write(records))
    }

    /// The records of shard `index` live at `now`. A shard that holds no expired record (its
    /// `earliest` is ahead) is counted by its length; any other is read through, under its read
    /// lock, without removing anything.
    pub(crate) fn live_in_shard(&self, index: usize, now: Nanos) -> u64 {
        let records = self.shards[index].records.read();
        if !self.is_due(index, now) {
            return records.len() as u64;
        }
        records.iter().filter(|record| record.is_live(now)).count() as u64
    }

    /// Whether shard `index` may hold a record expired at `now`.
    pub(crate) fn is_due(&self, index: usize, now: Nanos) -> bool {
        self.shards[index].earliest.load(Ordering::Relaxed) <= now.0
    }

    /// Keeps only the records of shard `index` for which `keep` is true; returns how many it
    /// removed. Locks that one shard.
    pub(crate) fn retain_shard(&self, index: usize, mut keep: impl FnMut(&Record) -> bool) -> u64 {
        let Shard { records, earliest } = &self.shards[index];
        let mut shard = records.write();
        let before = shard.len();
        let mut kept_earliest = u64::MAX;
        shard.retain(|record| {
            let kept = keep(record);
            if kept {
                kept_earliest = kept_earliest.min(record.expires_at().0);
            }
            kept
        });
        earliest.store(kept_earliest, Ordering::Relaxed);
        // Give memory back once a sweep has emptied most of a shard.
        if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
            let len = shard.len();
            shard.shrink_to(len * 2, |record| self.hash(record.id()));
        }
        (before - shard.len()) as u64
    }

    /// Calls `f` with every record of shard `index`, under its read lock.
    pub(crate) fn for_each_in_shard(&self, index: usize, mut f: impl FnMut(&Record)) {
        for record in self.shards[index].records.read().iter() {
            f(record);
        }
    }

    /// Calls `f` with every record, one shard at a time under its read lock.
    pub(crate) fn for_each<E>(&self, mut f: impl FnMut(&Record) -> Result<(), E>) -> Result<(), E> {
        for shard in self.shards.iter() {
            for record in shard.records.read().iter() {
                f(record)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, data: &[u8]) -> Record {
        Record::new(id, None, Nanos(1), Nanos(2), 3, data.len(), |buf| {
            buf.put_slice(data)
        })
    }

    #[test]
    fn a_record_keeps_every_field() {
        let id = "x".repeat(crate::MAX_ID_LEN);
        let mut r = record(&id, b"payload");
        assert_eq!(r.id(), id.as_bytes());
        assert_eq!(r.data(), b"payload");
        assert_eq!(
            (r.created_at(), r.expires_at(), r.version()),
            (Nanos(1), Nanos(2), 3)
        );
        r.set_expires_at(Nanos(u64::MAX));
        assert_eq!(r.expires_at(), Nanos(u64::MAX));
        assert_eq!(r.data(), b"payload", "the data is untouched");
        assert!(r.is_live(Nanos(u64::MAX - 1)));
        assert!(!r.is_live(Nanos(u64::MAX)));
        let empty = record("a", b"");
        assert_eq!((empty.id(), empty.data()), (&b"a"[..], &b""[..]));
        assert_eq!(empty.owner(), b"");
        let owned = Record::new("id", Some("user 42"), Nanos(1), Nanos(2), 3, 4, |buf| {
            buf.put_slice(b"data")
        });
        assert_eq!(
            (owned.id(), owned.owner(), owned.data()),
            (&b"id"[..], &b"user 42"[..], &b"data"[..])
        );
    }

    #[test]
    fn a_record_changed_while_read_leaves_the_reader_its_copy() {
        let mut r = record("a", b"payload");
        let read = r.shared();
        let before = read.clone();
        r.set_expires_at(Nanos(99));
        assert_eq!(r.expires_at(), Nanos(99));
        assert_eq!(read, before, "the reader's buffer did not change");
        assert_eq!(&read[r.data_start()..], b"payload");
        drop((read, before));
        // Unshared again: changed in place.
        let at = r.data().as_ptr();
        r.set_expires_at(Nanos(100));
        assert_eq!(r.data().as_ptr(), at);
    }

    fn insert(table: &Table, id: &str) {
        table.write(id, |entry| match entry {
            Entry::Vacant(vacant) => {
                vacant.insert(record(id, b""));
            }
            Entry::Occupied(mut occupied) => *occupied.get_mut() = record(id, b""),
        });
    }

    fn remove(table: &Table, id: &str) {
        table.write(id, |entry| {
            if let Entry::Occupied(occupied) = entry {
                occupied.remove();
            }
        });
    }

    fn ids_of(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.id().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_snapshot_is_the_table_as_it_was_when_it_began() {
        let table = Table::new();
        let ids: Vec<String> = (0..2000).map(|i| format!("old-{i}")).collect();
        for id in &ids {
            insert(&table, id);
        }
        let mut seen = Vec::new();
        let mut first = true;
        table
            .snapshot(Nanos(0), |records| {
                if first {
                    first = false;
                    // Mid-snapshot, every session moves to a new id: saved under the new one,
                    // then destroyed under the old one, in shards copied or not yet copied.
                    for id in &ids {
                        insert(&table, &id.replace("old", "new"));
                        remove(&table, id);
                    }
                }
                seen.extend(ids_of(records));
                Ok::<_, ()>(())
            })
            .unwrap();
        seen.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(
            seen, expected,
            "exactly the sessions as they were at the start"
        );
        // After the snapshot, writes copy nothing.
        assert!(table.snapshot.lock().is_none());
        let mut after = Vec::new();
        table
            .snapshot(Nanos(0), |records| {
                after.extend(ids_of(records));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(after.len(), 2000);
        assert!(after.iter().all(|id| id.starts_with("new-")));
    }

    #[test]
    fn a_snapshot_leaves_out_records_expired_at_its_cutoff() {
        let table = Table::new();
        insert(&table, "live"); // expires at Nanos(2)
        let mut seen = Vec::new();
        table
            .snapshot(Nanos(1), |records| {
                seen.extend(ids_of(records));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(seen, ["live"]);
        seen.clear();
        table
            .snapshot(Nanos(2), |records| {
                seen.extend(ids_of(records));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert!(seen.is_empty());
    }

    #[test]
    fn inserts_finds_and_retains_across_shards() {
        let table = Table::new();
        // About 100 per shard, so that keeping a tenth shrinks the shards' tables.
        let ids: Vec<String> = (0..400_000).map(|i| format!("id-{i}")).collect();
        for id in &ids {
            table.write(id, |entry| match entry {
                Entry::Vacant(vacant) => {
                    vacant.insert(record(id, id.as_bytes()));
                }
                Entry::Occupied(_) => panic!("{id} inserted twice"),
            });
        }
        for id in &ids {
            let data = table.read(id, |r| r.map(|r| r.data().to_vec()));
            assert_eq!(data.as_deref(), Some(id.as_bytes()));
        }
        assert!(table.read("id-missing", |r| r.is_none()));
        let mut removed = 0;
        for shard in 0..SHARDS {
            removed += table.retain_shard(shard, |r| r.data().ends_with(b"7"));
        }
        assert_eq!(removed, 360_000);
        let shrunk = table
            .shards
            .iter()
            .filter(|shard| shard.records.read().capacity() < 64)
            .count();
        assert!(shrunk > SHARDS / 2, "only {shrunk} shards shrank");
        let mut left = Vec::new();
        table
            .for_each(|r| {
                left.push(String::from_utf8(r.id().to_vec()).unwrap());
                Ok::<_, ()>(())
            })
            .unwrap();
        left.sort();
        let mut expected: Vec<String> = ids.into_iter().filter(|id| id.ends_with('7')).collect();
        expected.sort();
        assert_eq!(left, expected);
        for id in &expected {
            assert!(table.read(id, |r| r.is_some()), "{id} survives the shrink");
        }
    }
}

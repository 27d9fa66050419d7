//! The change log of a [`MemorySessionStore`](crate::MemorySessionStore): every change, in the
//! order the store applied it, for a daemon to append to a file and replay after a crash.
//!
//! ```text
//! "GNSLOG01"                         magic and format version, 8 bytes, at the start of a file
//! frame*
//!   u32 length of kind + body        little endian
//!   u32 CRC-32 of kind + body        little endian
//!   u8 kind
//!   body:
//!     1 (put):    the session's whole stored record: u64 expires_at, u64 created_at,
//!                 u64 version (little endian; times in ns since 1970), u16 id length,
//!                 u16 owner length, id, owner, data (the encoding of crate::codec)
//!     2 (remove): the session id
//!     3 (expire): u64 expires_at, the session id
//! ```
//!
//! A change is appended while the store holds the lock of the session's shard, so two changes
//! of one session are in the log in the order they were applied. Every record sets state (a
//! whole session, its absence, its expiry): replaying the log from a point before a snapshot
//! was taken, over that snapshot, gives the store as it was when the log ends. Expiries are
//! absolute, so a replay never brings back a session that has expired.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::memory::Record;

/// The first bytes of every log file.
pub const LOG_MAGIC: &[u8; 8] = b"GNSLOG01";

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const EXPIRE: u8 = 3;

/// Bytes before a frame's kind: its length and checksum.
const FRAME_HEAD: usize = 8;

/// The largest frame a log may hold: a session of the largest size the store takes is far
/// smaller. A longer length read from a file is damage, not a record.
const MAX_FRAME: usize = 64 << 20;

/// Changes appended and not yet taken by the log's writer.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes appended since the journal was made: the position just past the last change.
    appended: u64,
    /// Writers waiting for a change (an append wakes them only if there are).
    waiting: usize,
}

/// Where a store appends its changes; a writer takes them to a file
/// ([`take`](Self::take)). Attached with
/// [`MemorySessionStore::attach_journal`](crate::MemorySessionStore::attach_journal).
#[derive(Debug, Default)]
pub struct Journal {
    pending: Mutex<Pending>,
    /// Wakes a writer waiting in [`take`](Self::take).
    appended: Condvar,
    /// `Pending::appended`, readable without the lock (it is only set under it).
    position: AtomicU64,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position just past the last change appended: a writer that has made everything up
    /// to it durable has made every change applied so far durable.
    pub fn appended(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Waits up to `wait` until some change is appended and not taken; whether one is.
    pub fn wait(&self, wait: Duration) -> bool {
        let pending = self.lock();
        if !pending.bytes.is_empty() {
            return true;
        }
        !self.wait_for_change(pending, wait).bytes.is_empty()
    }

    fn wait_for_change<'a>(
        &'a self,
        mut pending: std::sync::MutexGuard<'a, Pending>,
        wait: Duration,
    ) -> std::sync::MutexGuard<'a, Pending> {
        pending.waiting += 1;
        let mut pending = self
            .appended
            .wait_timeout_while(pending, wait, |pending| pending.bytes.is_empty())
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
        pending.waiting -= 1;
        pending
    }

    /// Takes every change appended and not taken yet, with the position just past them;
    /// waits up to `wait` for one when there is none (then `None`).
    pub fn take(&self, wait: Duration) -> Option<(Vec<u8>, u64)> {
        let mut pending = self.lock();
        if pending.bytes.is_empty() && !wait.is_zero() {
            pending = self.wait_for_change(pending, wait);
        }
        if pending.bytes.is_empty() {
            return None;
        }
        let position = pending.appended;
        Some((std::mem::take(&mut pending.bytes), position))
    }

    pub(crate) fn put(&self, record: &Record) {
        self.append(PUT, &[record.bytes()]);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.append(REMOVE, &[id.as_bytes()]);
    }

    pub(crate) fn expire(&self, id: &str, expires_at: u64) {
        self.append(EXPIRE, &[&expires_at.to_le_bytes(), id.as_bytes()]);
    }

    fn append(&self, kind: u8, body: &[&[u8]]) {
        let mut pending = self.lock();
        let start = pending.bytes.len();
        frame(&mut pending.bytes, kind, body);
        pending.appended += (pending.bytes.len() - start) as u64;
        self.position.store(pending.appended, Ordering::Release);
        let wake = start == 0 && pending.waiting > 0;
        drop(pending);
        if wake {
            self.appended.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Appends one frame of `kind` whose body is `body`'s parts, one after another.
fn frame(out: &mut Vec<u8>, kind: u8, body: &[&[u8]]) {
    let len: usize = 1 + body.iter().map(|part| part.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for part in body {
        crc.update(part);
    }
    out.reserve(FRAME_HEAD + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    for part in body {
        out.extend_from_slice(part);
    }
}

/// One change read back from a log.
#[derive(Debug)]
pub(crate) enum Change {
    Put(Record),
    Remove(String),
    Expire(String, u64),
}

/// Why a log cannot be replayed: damage before its last record.
#[derive(Debug, thiserror::Error)]
#[error("damaged at byte {offset}: {reason}")]
#[non_exhaustive]
pub struct LogError {
    /// Where the damage starts, in bytes from the start of the file.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

/// What reading a log found.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) changes: Vec<Change>,
    /// Where a last record cut short begins (a crash in the middle of a write): everything
    /// before it was read, and it is to be cut off.
    pub(crate) torn_at: Option<u64>,
}

/// The first bytes of a log, whole or not: `Ok(true)` once they are the magic, `Ok(false)`
/// if they may still become it (fewer bytes than the magic, and a prefix of it).
fn magic(bytes: &[u8]) -> Result<bool, LogError> {
    if bytes.len() >= LOG_MAGIC.len() {
        if bytes.starts_with(LOG_MAGIC) {
            return Ok(true);
        }
    } else if LOG_MAGIC.starts_with(bytes) {
        return Ok(false);
    }
    Err(LogError {
        offset: 0,
        reason: "not a change log (bad magic)".to_owned(),
    })
}

/// What the bytes at a record's start hold.
pub(crate) enum Step {
    /// A whole record, and its length with its head.
    Change(Change, usize),
    /// A record not whole yet: more bytes may follow, or this is a torn last record (cut short,
    /// or failing its checksum with nothing after it).
    More,
    /// Damage: a record that can never be read, with bytes after it.
    Damaged(&'static str),
}

/// Reads the record at the start of `rest`. Never panics, whatever the bytes.
pub(crate) fn step(rest: &[u8]) -> Step {
    let Some((head, after)) = rest.split_first_chunk::<FRAME_HEAD>() else {
        return Step::More;
    };
    let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
    if len == 0 || len > MAX_FRAME {
        // A length no writer makes: damage, unless nothing follows where the frame would
        // have ended anyway (a torn head).
        if after.len() < len.max(1) {
            return Step::More;
        }
        return Step::Damaged("a record with an impossible length");
    }
    let Some(body) = after.get(..len) else {
        return Step::More;
    };
    if crc32fast::hash(body) != crc {
        if after.len() == len {
            return Step::More;
        }
        return Step::Damaged("checksum mismatch");
    }
    let change = match (body[0], &body[1..]) {
        (PUT, record) => Record::from_bytes(record).map(Change::Put),
        (REMOVE, id) => std::str::from_utf8(id)
            .ok()
            .filter(|id| crate::validate_id(id).is_ok())
            .map(|id| Change::Remove(id.to_owned())),
        (EXPIRE, body) => body.split_first_chunk::<8>().and_then(|(at, id)| {
            let id = std::str::from_utf8(id).ok()?;
            crate::validate_id(id).ok()?;
            Some(Change::Expire(id.to_owned(), u64::from_le_bytes(*at)))
        }),
        _ => None,
    };
    match change {
        Some(change) => Step::Change(change, FRAME_HEAD + len),
        None => Step::Damaged("a record that does not parse"),
    }
}

/// How much of a log is read at a time.
const CHUNK: u64 = 4 << 20;

/// Reads a log from `reader`, a few MiB at a time, calling `each` with every change in order.
/// A last record cut short, or whose checksum fails with nothing after it, is a torn write:
/// its offset is returned. Anything wrong before it is a [`LogError`] (the changes before it
/// have been passed to `each`). Never panics, whatever the bytes.
pub(crate) fn read_log(
    mut reader: impl std::io::Read,
    mut each: impl FnMut(Change),
) -> Result<Option<u64>, LogError> {
    use std::io::Read;
    let mut buf = Vec::new();
    // `buf[start..]` is unread; `base` is the file offset of `buf[0]`.
    let (mut start, mut base, mut eof) = (0usize, 0u64, false);
    let mut more = |buf: &mut Vec<u8>, eof: &mut bool| -> Result<(), LogError> {
        let offset = buf.len() as u64;
        let read = (&mut reader)
            .take(CHUNK)
            .read_to_end(buf)
            .map_err(|err| LogError {
                offset,
                reason: format!("cannot be read: {err}"),
            })?;
        *eof = read == 0;
        Ok(())
    };
    while buf.len() < LOG_MAGIC.len() && !eof {
        more(&mut buf, &mut eof)?;
    }
    if !magic(&buf)? {
        // Empty, or a file created and cut off before its magic was whole.
        return Ok((!buf.is_empty()).then_some(0));
    }
    start += LOG_MAGIC.len();
    loop {
        match step(&buf[start..]) {
            Step::Change(change, len) => {
                each(change);
                start += len;
            }
            Step::Damaged(reason) => {
                return Err(LogError {
                    offset: base + start as u64,
                    reason: reason.to_owned(),
                });
            }
            Step::More if eof => {
                return Ok((start < buf.len()).then_some(base + start as u64));
            }
            Step::More => {
                buf.drain(..start);
                base += start as u64;
                start = 0;
                more(&mut buf, &mut eof).map_err(|err| LogError {
                    offset: base + err.offset,
                    ..err
                })?;
            }
        }
    }
}

/// Reads a whole log file held in memory (see [`read_log`]).
#[cfg(test)]
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, LogError> {
    let mut changes = Vec::new();
    let torn_at = read_log(bytes, |change| changes.push(change))?;
    Ok(Parsed { changes, torn_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Nanos;

    fn record(id: &str, version: u64) -> Record {
        Record::new(id, Some("u"), Nanos(1), Nanos(2), version, 0, |_| {})
    }

    fn log(journal: &Journal) -> Vec<u8> {
        let mut bytes = LOG_MAGIC.to_vec();
        bytes.extend(journal.take(Duration::ZERO).unwrap().0);
        bytes
    }

    /// A log longer than one read: records that straddle reads come back whole, and offsets
    /// count from the start of the file.
    #[test]
    fn a_log_read_in_chunks_reads_back_whole_with_file_offsets() {
        let journal = Journal::new();
        let count = 300_000;
        for i in 0..count {
            journal.remove(&format!("session-{i:08}"));
        }
        let bytes = log(&journal);
        assert!(bytes.len() as u64 > CHUNK + CHUNK / 2, "{}", bytes.len());
        let record = (bytes.len() - LOG_MAGIC.len()) / count;
        let parsed = parse(&bytes).unwrap();
        assert_eq!((parsed.changes.len(), parsed.torn_at), (count, None));
        match &parsed.changes[count - 1] {
            Change::Remove(id) => assert_eq!(id, &format!("session-{:08}", count - 1)),
            other => panic!("{other:?}"),
        }
        // The record that straddles the first read, and one well past it, damaged.
        for n in [CHUNK as usize / record, count - 100] {
            let at = LOG_MAGIC.len() + n * record;
            let mut damaged = bytes.clone();
            damaged[at + FRAME_HEAD + 2] ^= 1;
            let err = parse(&damaged).unwrap_err();
            assert_eq!(err.offset, at as u64, "record {n}");
        }
        let last = bytes.len() - record;
        for cut in [last + 1, bytes.len() - 1] {
            let parsed = parse(&bytes[..cut]).unwrap();
            assert_eq!(
                (parsed.changes.len(), parsed.torn_at),
                (count - 1, Some(last as u64))
            );
        }
    }

    #[test]
    fn changes_read_back_in_order_with_their_positions() {
        let journal = Journal::new();
        journal.put(&record("a", 1));
        journal.expire("a", 99);
        journal.remove("a");
        let position = journal.appended();
        let bytes = log(&journal);
        assert_eq!(position as usize, bytes.len() - LOG_MAGIC.len());
        assert!(journal.take(Duration::ZERO).is_none(), "taken");
        let parsed = parse(&bytes).unwrap();
        assert!(parsed.torn_at.is_none());
        match parsed.changes.as_slice() {
            [
                Change::Put(put),
                Change::Expire(id, 99),
                Change::Remove(removed),
            ] => {
                assert_eq!(
                    (put.id(), put.version(), put.owner()),
                    (&b"a"[..], 1, &b"u"[..])
                );
                assert_eq!((id.as_str(), removed.as_str()), ("a", "a"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_torn_last_record_is_cut_and_damage_before_it_is_an_error() {
        let journal = Journal::new();
        journal.put(&record("a", 1));
        journal.put(&record("b", 1));
        let bytes = log(&journal);
        let second = LOG_MAGIC.len() + (bytes.len() - LOG_MAGIC.len()) / 2;
        // Cut anywhere inside the last record: everything before it is read.
        for cut in second + 1..bytes.len() {
            let parsed = parse(&bytes[..cut]).unwrap();
            assert_eq!(parsed.torn_at, Some(second as u64), "cut at {cut}");
            assert_eq!(parsed.changes.len(), 1);
        }
        // The last record's bytes changed: torn (a write that did not finish).
        let mut last = bytes.clone();
        *last.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&last).unwrap().torn_at, Some(second as u64));
        // The first record's bytes changed, with a whole record after it: damage.
        let mut first = bytes.clone();
        first[LOG_MAGIC.len() + FRAME_HEAD + 3] ^= 1;
        let err = parse(&first).unwrap_err();
        assert_eq!(err.offset, LOG_MAGIC.len() as u64);
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(parse(&magic).unwrap_err().offset, 0);
        assert!(parse(&bytes[..3]).unwrap().torn_at == Some(0));
        assert!(parse(b"").unwrap().changes.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut with_magic = LOG_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = parse(&bytes);
            let _ = parse(&with_magic);
        }
    }
}

//! Sessions in and out whole: restoring records, snapshots, and a walk over every live one.

use bytes::BufMut;

use super::MemorySessionStore;
use super::table::{Nanos, Record};
use crate::codec::{encode_into, encoded_len};
use crate::snapshot::{SnapshotError, SnapshotWriter};
use crate::{Result, SessionRecord, validate_id};

impl MemorySessionStore {
    /// Puts a record back exactly as it was, keeping its version, `created_at` and `expires_at`
    /// (as when loading a snapshot). An expired record is skipped and `false` returned. Limits
    /// on size and count are not applied: the record was accepted once already.
    pub fn restore(&self, record: SessionRecord) -> Result<bool> {
        validate_id(&record.id)?;
        if record.expires_at <= self.inner.clock.now() {
            return Ok(false);
        }
        if let Some(owner) = record.owner.as_deref().filter(|owner| !owner.is_empty()) {
            crate::validate_stored_owner(owner)?;
        }
        let stored = Record::new(
            &record.id,
            record.owner.as_deref().filter(|owner| !owner.is_empty()),
            record.created_at.into(),
            record.expires_at.into(),
            record.version,
            encoded_len(&record.data),
            |buf| encode_into(buf, &record.data),
        );
        self.inner.put(&record.id, stored);
        Ok(true)
    }

    /// Writes every live session to `out` in the snapshot format and returns how many it wrote.
    ///
    /// The sessions written are those of one moment, when this was called: sessions saved or
    /// destroyed meanwhile are written as they were then (a session moved to a new id by a
    /// regenerate is always in it, under one id or both). Shards are copied one at a time under
    /// their lock and written with no lock held, so a slow disk stalls no request.
    pub fn write_snapshot<W: std::io::Write>(&self, out: W) -> std::io::Result<(W, u64)> {
        let cutoff = Nanos::from(self.inner.clock.now());
        let mut writer = SnapshotWriter::new(out)?;
        self.inner.map.snapshot(cutoff, |records| {
            records.iter().try_for_each(|record| {
                writer.record(
                    record.id(),
                    record.owner(),
                    record.version(),
                    record.created_at().0,
                    record.expires_at().0,
                    record.data(),
                )
            })
        })?;
        writer.finish()
    }

    /// Loads a snapshot written by [`write_snapshot`](Self::write_snapshot), all or nothing:
    /// the whole snapshot is checked (checksum, every record) before any session is stored.
    /// Sessions that expired since are skipped. Returns how many were loaded and skipped.
    pub fn load_snapshot(&self, bytes: &[u8]) -> std::result::Result<(u64, u64), SnapshotError> {
        let records = crate::snapshot::decode(bytes)?;
        let cutoff = Nanos::from(self.inner.clock.now());
        let (mut loaded, mut skipped) = (0, 0);
        for record in records {
            if record.expires_at <= cutoff.0 {
                skipped += 1;
                continue;
            }
            let stored = Record::new(
                &record.id,
                record.owner.as_deref(),
                Nanos(record.created_at),
                Nanos(record.expires_at),
                record.version,
                record.data.len(),
                |buf| buf.put_slice(&record.data),
            );
            self.inner.put(&record.id, stored);
            loaded += 1;
        }
        Ok((loaded, skipped))
    }

    /// Attaches `journal`: from now on every change (save, destroy, touch, destroy by owner,
    /// restore) is appended to it, under its session's shard lock, so the journal holds the
    /// changes of each session in the order they were applied. Expiry appends nothing (the
    /// records carry absolute expiries). Fails if a journal is attached already.
    pub fn attach_journal(
        &self,
        journal: std::sync::Arc<crate::journal::Journal>,
    ) -> std::result::Result<(), crate::StoreError> {
        self.inner
            .journal
            .set(journal)
            .map_err(|_| crate::StoreError::invalid("a journal is attached already"))
    }

    /// Applies a change log written from a [`Journal`](crate::journal::Journal) (a whole
    /// file, magic first) on top of what the store holds, in order (see
    /// [`Self::replay_log_from`]).
    pub fn replay_log(
        &self,
        bytes: &[u8],
    ) -> std::result::Result<Replayed, crate::journal::LogError> {
        self.replay_log_from(bytes)
    }

    /// Applies a change log read from `reader`, a few MiB at a time, on top of what the store
    /// holds, in order. A session put or given an expiry that has passed since is removed, so
    /// nothing expired comes back. A last record cut short (a crash while writing it) is not
    /// applied: [`Replayed::torn_at`] says where it starts. Damage before it is an error naming
    /// the offset; the changes before the damage have been applied by then, so a store that
    /// gets this error must not be served.
    pub fn replay_log_from(
        &self,
        reader: impl std::io::Read,
    ) -> std::result::Result<Replayed, crate::journal::LogError> {
        let now = Nanos::from(self.inner.clock.now());
        let mut applied = 0;
        let torn_at = crate::journal::read_log(reader, |change| {
            applied += 1;
            self.apply_logged(change, now);
        })?;
        Ok(Replayed { applied, torn_at })
    }

    fn apply_logged(&self, change: crate::journal::Change, now: Nanos) {
        match change {
            crate::journal::Change::Put(record) => {
                let id = String::from_utf8_lossy(record.id()).into_owned();
                if record.is_live(now) {
                    self.inner.put(&id, record);
                } else {
                    let _ = self.destroy_now(&id);
                }
            }
            crate::journal::Change::Remove(id) => {
                let _ = self.destroy_now(&id);
            }
            crate::journal::Change::Expire(id, at) => {
                if at > now.0 {
                    self.inner
                        .map
                        .write_expiring(&id, Some(Nanos(at)), |entry| {
                            if let hashbrown::hash_table::Entry::Occupied(mut occupied) = entry {
                                occupied.get_mut().set_expires_at(Nanos(at));
                                self.inner.owners.replace(None, Some(occupied.get()));
                            }
                        });
                } else {
                    let _ = self.destroy_now(&id);
                }
            }
        }
    }

    /// Calls `f` with every live record, one shard at a time (as when writing a snapshot).
    /// Records saved meanwhile may or may not be seen.
    pub fn for_each_live(&self, mut f: impl FnMut(SessionRecord)) {
        let now = Nanos::from(self.inner.clock.now());
        let _ = self.inner.map.for_each(|record| {
            if record.is_live(now)
                && let Ok(record) = record.to_record()
            {
                f(record);
            }
            Ok::<_, ()>(())
        });
    }
}

/// What [`MemorySessionStore::replay_log`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// Changes applied.
    pub applied: u64,
    /// Where a last record cut short starts, in bytes from the start of the file: the file
    /// is to be cut there before anything is appended to it.
    pub torn_at: Option<u64>,
}

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

//! Reading sessions: one by id, or every live session page by page.

use super::stored::StoredSession;
use super::table::{Nanos, Record, SHARDS};
use super::{LIST_SHARDS_PER_PAGE, MemorySessionStore};
use crate::store::SessionPage;
use crate::{Result, SessionData, SessionRecord, StoreError, validate_id};

#[cfg(doc)]
use crate::SessionStore;

impl MemorySessionStore {
    /// Reads a session now. The same as [`SessionStore::get`], without the future.
    pub fn get_now(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.read_now(id, Record::to_record)
    }

    /// Reads a live session as the store holds it, shared with the store: the same as
    /// [`get_now`](Self::get_now) without building the record.
    pub fn get_stored_now(&self, id: &str) -> Result<Option<StoredSession>> {
        self.read_now(id, StoredSession::new)
    }

    /// `read` of the live session `id`; an expired one is removed and absent.
    fn read_now<T>(&self, id: &str, read: impl FnOnce(&Record) -> Result<T>) -> Result<Option<T>> {
        validate_id(id)?;
        let now = Nanos::from(self.inner.clock.now());
        let mut expired = false;
        let found = self.inner.map.read(id, |record| match record {
            Some(record) if record.is_live(now) => read(record).map(Some),
            Some(_) => {
                expired = true;
                Ok(None)
            }
            None => Ok(None),
        })?;
        if expired {
            // Only a read lock was held: take the write lock and check again.
            self.inner.remove_expired(id, now);
        }
        Ok(found)
    }

    /// One page of every live session, without data. The same as
    /// [`SessionStore::list_sessions`], without the future.
    ///
    /// The cursor is the number of the table's next shard. A page visits whole shards, each
    /// under its read lock alone, until it holds `limit` sessions (at least 1, at most
    /// [`MAX_PAGE_SESSIONS`](crate::MAX_PAGE_SESSIONS)) or has visited [`LIST_SHARDS_PER_PAGE`] shards; so it may hold one shard's sessions more
    /// than `limit`, and its cost never depends on how many sessions the store holds in all. A
    /// session stays in its shard for its whole life, so each that lives from the first page to
    /// the last is listed once.
    pub fn list_sessions_now(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        let first = if cursor.is_empty() {
            0
        } else {
            cursor
                .parse::<usize>()
                .ok()
                .filter(|&shard| shard < SHARDS)
                .ok_or_else(|| StoreError::invalid("not a cursor this store handed out"))?
        };
        let limit = limit.clamp(1, crate::MAX_PAGE_SESSIONS);
        let now = Nanos::from(self.inner.clock.now());
        let mut sessions = Vec::new();
        let mut shard = first;
        while shard < SHARDS && sessions.len() < limit && shard - first < LIST_SHARDS_PER_PAGE {
            self.inner.map.for_each_in_shard(shard, |record| {
                if !record.is_live(now) {
                    return;
                }
                let (Ok(id), Ok(owner)) = (
                    std::str::from_utf8(record.id()),
                    std::str::from_utf8(record.owner()),
                ) else {
                    return;
                };
                sessions.push(SessionRecord {
                    id: id.to_owned(),
                    data: SessionData::new(),
                    created_at: record.created_at().into(),
                    expires_at: record.expires_at().into(),
                    version: record.version(),
                    owner: (!owner.is_empty()).then(|| owner.to_owned()),
                });
            });
            shard += 1;
        }
        let next = (shard < SHARDS).then(|| shard.to_string());
        Ok(SessionPage::new(sessions, next))
    }
}

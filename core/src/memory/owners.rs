//! The owner index of a [`MemorySessionStore`](crate::MemorySessionStore): owner to the ids of
//! its sessions, each with its expiry.
//!
//! It is changed only by whoever holds the write lock of the changed session's table shard, in
//! the same critical section as the record (lock order: table shard, then index shard; never
//! the other way), so the index and the table never disagree about a session. An owner whose
//! last session goes takes no memory.

use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::Mutex;

use super::table::{Nanos, Record};

/// Index shards; owners are few next to sessions.
const SHARDS: usize = 64;

/// One owner's sessions: id to expiry.
type Ids = HashMap<Box<str>, Nanos>;

/// One index shard: owner to its sessions.
type Shard = Mutex<HashMap<Box<str>, Ids>>;

pub(crate) struct OwnerIndex {
    shards: Box<[Shard]>,
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for OwnerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerIndex").finish_non_exhaustive()
    }
}

/// The owner and id of a record, if it has an owner (both are validated ASCII when stored).
fn owner_and_id(record: &Record) -> Option<(&str, &str)> {
    let owner = std::str::from_utf8(record.owner()).ok()?;
    let id = std::str::from_utf8(record.id()).ok()?;
    (!owner.is_empty()).then_some((owner, id))
}

impl OwnerIndex {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn shard(&self, owner: &str) -> &Shard {
        let hash = self.hasher.hash_one(owner.as_bytes());
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// Whether `owner` may get session `id`: it has it already, or fewer than `limit` live
    /// sessions at `now` (0: no limit). When it may, `id` is entered at once (to expire at
    /// `expires_at`), under the same lock as the count, so that new sessions of one owner saved
    /// at the same instant cannot pass the limit together; a save that then fails takes it out
    /// again with [`release`](Self::release). Expired entries found on the way are dropped.
    pub(crate) fn reserve(
        &self,
        owner: &str,
        id: &str,
        limit: u64,
        now: Nanos,
        expires_at: Nanos,
    ) -> bool {
        if limit == 0 {
            return true;
        }
        let mut shard = self.shard(owner).lock();
        let ids = shard.entry(owner.into()).or_default();
        if ids.contains_key(id) {
            return true;
        }
        if ids.len() as u64 >= limit {
            // Expired sessions stay in the table (and so here) until swept; they do not count.
            // Dropping them here is safe: an expired record is absent, and a save that brings
            // the id back adds it again.
            ids.retain(|_, expires| *expires > now);
        }
        let room = (ids.len() as u64) < limit;
        if room {
            ids.insert(id.into(), expires_at);
        } else if ids.is_empty() {
            shard.remove(owner);
        }
        room
    }

    /// Takes back a [`reserve`](Self::reserve)d id whose save failed.
    pub(crate) fn release(&self, owner: &str, id: &str) {
        self.remove(owner, id);
    }

    /// Records that `new` replaces `old` (either may be `None`) in the table.
    pub(crate) fn replace(&self, old: Option<&Record>, new: Option<&Record>) {
        let old = old.and_then(owner_and_id);
        let new_entry = new.and_then(|record| owner_and_id(record).map(|o| (o, record)));
        if let Some((owner, id)) = old
            && new_entry.is_none_or(|((new_owner, _), _)| new_owner != owner)
        {
            self.remove(owner, id);
        }
        if let Some(((owner, id), record)) = new_entry {
            self.shard(owner)
                .lock()
                .entry(owner.into())
                .or_default()
                .insert(id.into(), record.expires_at());
        }
    }

    fn remove(&self, owner: &str, id: &str) {
        let mut shard = self.shard(owner).lock();
        if let Some(ids) = shard.get_mut(owner) {
            ids.remove(id);
            if ids.is_empty() {
                shard.remove(owner);
            }
        }
    }

    /// The ids of `owner`'s sessions, live at `now` or not.
    pub(crate) fn ids(&self, owner: &str) -> Vec<String> {
        self.shard(owner)
            .lock()
            .get(owner)
            .map(|ids| ids.keys().map(|id| id.to_string()).collect())
            .unwrap_or_default()
    }

    /// Owners with at least one session in the index.
    #[cfg(test)]
    pub(crate) fn owners(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }
}

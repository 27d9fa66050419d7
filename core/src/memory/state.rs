//! The memory store's shared state: the table, the owner index, the clock, the limits and the
//! counters, used alike by the store's operations and by the sweeper.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use hashbrown::hash_table::Entry;
use tokio::sync::Notify;

use super::builder::Config;
use super::owners::OwnerIndex;
use super::table::{Nanos, Record, Table};
use crate::{Clock, Result, StoreError, StoreExpiry};

/// What every clone of a [`MemorySessionStore`](super::MemorySessionStore) shares.
#[derive(Debug)]
pub(super) struct State {
    /// Session id to record. Expired records stay until the sweeper or an access removes them.
    pub(super) map: Table,
    /// Owner to the ids of its sessions, changed with `map` under the same shard lock.
    pub(super) owners: OwnerIndex,
    /// The clock every expiry is computed and checked against.
    pub(super) clock: Clock,
    /// Limits and defaults.
    pub(super) config: Config,
    /// Records in `map`, kept alongside it so that `--max-sessions` is exact under concurrency
    /// and reading the count does not lock every shard.
    pub(super) stored: AtomicU64,
    /// Records removed because they had expired, by the sweeper or on access.
    pub(super) expired_removed: AtomicU64,
    /// Sweeps run.
    pub(super) sweeps: AtomicU64,
    /// Wakes the sweeper task so it stops, when the store is dropped.
    pub(super) stop_sweeper: Arc<Notify>,
    /// Where every change is appended, under its shard's lock, once attached.
    pub(super) journal: std::sync::OnceLock<Arc<crate::journal::Journal>>,
}

impl Drop for State {
    fn drop(&mut self) {
        self.stop_sweeper.notify_one();
    }
}

impl State {
    /// Computes when a session saved or touched now with `expiry` expires.
    pub(super) fn expires_at(&self, expiry: StoreExpiry, now: SystemTime) -> Result<SystemTime> {
        let ttl = expiry.lifetime(now, self.config.default_ttl, self.config.max_ttl)?;
        // The maximum TTL is capped (`MAX_TTL_CAP`), so this cannot overflow; checked anyway,
        // because no input may panic the store.
        now.checked_add(ttl)
            .ok_or_else(|| StoreError::invalid("ttl is out of range"))
    }

    /// Counts a new record against `max_sessions`, or fails when the store is full.
    pub(super) fn reserve_slot(&self) -> Result<()> {
        let limit = self.config.max_sessions;
        let before = self.stored.fetch_add(1, Ordering::Relaxed);
        if limit != 0 && before >= limit {
            self.stored.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::TooManySessions { limit });
        }
        Ok(())
    }

    /// Removes `id` if it is still expired at `now` (it may have been saved again meanwhile).
    pub(super) fn remove_expired(&self, id: &str, now: Nanos) {
        let removed = self.map.write(id, |entry| match entry {
            Entry::Occupied(occupied) if !occupied.get().is_live(now) => {
                let record = occupied.remove().0;
                self.owners.replace(Some(&record), None);
                Some(record)
            }
            _ => None,
        });
        if removed.is_some() {
            self.count_expired_removal();
        }
    }

    /// Counts one expired record removed on access.
    pub(super) fn count_expired_removal(&self) {
        self.stored.fetch_sub(1, Ordering::Relaxed);
        self.expired_removed.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores `record` under `id`, replacing what was there.
    pub(super) fn put(&self, id: &str, record: Record) {
        let expires_at = Some(record.expires_at());
        let added = self
            .map
            .write_expiring(id, expires_at, |entry| match entry {
                Entry::Occupied(mut occupied) => {
                    let old = std::mem::replace(occupied.get_mut(), record);
                    self.owners.replace(Some(&old), Some(occupied.get()));
                    if let Some(journal) = self.journal() {
                        journal.put(occupied.get());
                    }
                    false
                }
                Entry::Vacant(vacant) => {
                    let inserted = vacant.insert(record);
                    self.owners.replace(None, Some(inserted.get()));
                    if let Some(journal) = self.journal() {
                        journal.put(inserted.get());
                    }
                    true
                }
            });
        if added {
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The journal, if one is attached.
    pub(super) fn journal(&self) -> Option<&crate::journal::Journal> {
        self.journal.get().map(|journal| &**journal)
    }

    /// The store's clock.
    pub(super) fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

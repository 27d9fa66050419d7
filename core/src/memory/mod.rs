//! [`MemorySessionStore`], by concept:
//!
//! - this module: the store's handle, its settings and counters, and the [`SessionStore`]
//!   implementation;
//! - `builder`: its limits and defaults; `state`: what its clones share (the table, the owner
//!   index, the counters);
//! - `read`, `write`, `by_owner`, `persist`: its operations; `stored`: a session as readers
//!   see it;
//! - `table`, `owners`: the sharded table and the owner index; `sweeper`: removing expired
//!   records.

mod builder;
mod by_owner;
mod owners;
mod persist;
mod read;
mod state;
mod stored;
mod sweeper;
mod table;
mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use builder::{MemorySessionStoreBuilder, StoreStats};
pub use persist::Replayed;
pub use stored::StoredSession;
pub(crate) use table::Nanos;
pub(crate) use table::Record;

use crate::store::SessionPage;
use crate::{Clock, Result, Save, Saved, SessionRecord, SessionStore};
use state::State;

/// Shards [`MemorySessionStore::live_stats`] reads between two yields to the runtime.
const SHARDS_PER_YIELD: usize = 256;

/// Shards one page of [`MemorySessionStore::list_sessions_now`] visits at most: a page costs
/// at most that many shards' read locks, one at a time, however few live sessions they hold.
pub const LIST_SHARDS_PER_PAGE: usize = 64;

/// An expiring, versioned, in-memory session store.
///
/// It is what `gonest-sessiond` serves and what single-instance apps and tests use in-process.
/// It follows every rule of the [data model](crate): an expired record is absent for every
/// operation, even before the sweeper removes it.
///
/// Clones share the same sessions. When built inside a tokio runtime, a sweeper task removes
/// expired records every sweep interval (5 minutes unless set) and stops when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct MemorySessionStore {
    inner: Arc<State>,
}

impl MemorySessionStore {
    /// The default lifetime of a session: 24 hours.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
    /// The default longest lifetime a save may ask for: 30 days.
    pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
    /// The longest maximum TTL a store accepts: 400 days, the longest lifetime browsers give a
    /// cookie (RFC 6265bis). It keeps every expiry far inside what the clock can represent.
    pub const MAX_TTL_CAP: Duration = Duration::from_secs(400 * 24 * 60 * 60);
    /// The default largest session: 1 MiB.
    pub const DEFAULT_MAX_SESSION_BYTES: usize = 1024 * 1024;
    /// The default limit on one owner's live sessions: 1,000.
    pub const DEFAULT_MAX_SESSIONS_PER_OWNER: u64 = 1000;
    /// The default sweep interval: 5 minutes.
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(5 * 60);

    /// A store whose sessions live `max_age` unless a save says otherwise, swept every
    /// 5 minutes; like GoNest's `NewMemorySessionStore(maxAge)`. The maximum TTL is 30 days or
    /// `max_age`, whichever is longer.
    ///
    /// # Panics
    /// When `max_age` is zero. Use [`builder`](Self::builder) to handle that as an error.
    pub fn new(max_age: Duration) -> Self {
        Self::builder()
            .default_ttl(max_age)
            .max_ttl(max_age.max(Self::DEFAULT_MAX_TTL).min(Self::MAX_TTL_CAP))
            .build()
            .expect("MemorySessionStore::new: max_age must be positive")
    }

    /// A builder for a store with other limits.
    pub fn builder() -> MemorySessionStoreBuilder {
        MemorySessionStoreBuilder::default()
    }

    /// The largest session it stores, keys plus values, in bytes.
    pub fn max_session_bytes(&self) -> usize {
        self.inner.config.max_session_bytes
    }

    /// The longest TTL a save or touch may ask for.
    pub fn max_ttl(&self) -> Duration {
        self.inner.config.max_ttl
    }

    /// The store's clock; every expiry is computed from it.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// The store's counters, with `live_sessions` counting exactly the sessions a Get would
    /// find: the records stored less those that have expired and not been removed yet. Nothing
    /// is removed here (that is the sweeper's paced work, and `expired_removed_total` counts
    /// only what it and expiring reads removed).
    ///
    /// Shards that hold no expired record are counted by their length; the others are read
    /// through, one shard at a time under its read lock, yielding to the runtime every 256
    /// shards. Right after a million sessions expired at once this reads
    /// every record's expiry, tens of milliseconds; in the steady state almost nothing.
    pub async fn live_stats(&self) -> StoreStats {
        let now = Nanos::from(self.inner.clock.now());
        let mut live = 0;
        for index in 0..table::SHARDS {
            live += self.inner.map.live_in_shard(index, now);
            if (index + 1) % SHARDS_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
        }
        StoreStats {
            live_sessions: live,
            ..self.stats()
        }
    }

    /// The store's counters as they stand: `live_sessions` may still count sessions that have
    /// expired and not been swept yet (see [`live_stats`](Self::live_stats)).
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            live_sessions: self.inner.stored.load(Ordering::Relaxed),
            expired_removed_total: self.inner.expired_removed.load(Ordering::Relaxed),
            sweeps_total: self.inner.sweeps.load(Ordering::Relaxed),
        }
    }

    /// Removes every expired record now and returns how many it removed.
    ///
    /// It locks one shard at a time, so operations on other shards go on meanwhile. It does not
    /// yield to the async runtime; the sweeper task does, between shards.
    pub fn sweep(&self) -> u64 {
        let removed = sweeper::reclaim_due(&self.inner, self.inner.clock.now());
        self.inner.sweeps.fetch_add(1, Ordering::Relaxed);
        removed
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.get_now(id)
    }

    async fn save(&self, save: Save) -> Result<Saved> {
        self.save_now(save)
    }

    async fn destroy(&self, id: &str) -> Result<bool> {
        self.destroy_now(id)
    }

    async fn touch(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        self.touch_now(id, ttl)
    }

    async fn list_by_owner(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        self.list_by_owner_now(owner, with_data)
    }

    async fn list_sessions(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        self.list_sessions_now(cursor, limit)
    }

    async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64> {
        self.destroy_by_owner_now(owner, except)
    }

    fn limits(&self) -> crate::StoreLimits {
        crate::StoreLimits {
            max_session_bytes: Some(self.max_session_bytes()),
            max_ttl: Some(self.max_ttl()),
        }
    }
}

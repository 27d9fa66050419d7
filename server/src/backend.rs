//! Where the daemon keeps sessions: in its own memory, or in Redis / Valkey.

use std::time::{Duration, SystemTime};

use gonest_session_core::{
    MemorySessionStore, Result, Save, Saved, SessionPage, SessionRecord, SessionStore, StoreError,
    StoreStats,
};
use gonest_session_redis::RedisSessionStore;

/// Redis not answering in time is Redis being unavailable, to the daemon's callers: they get
/// `UNAVAILABLE` and may try another daemon or later.
fn unavailable_on_timeout<T>(result: Result<T>) -> Result<T> {
    result.map_err(|err| match err {
        StoreError::Timeout => StoreError::Unavailable("redis did not answer in time".into()),
        err => err,
    })
}

/// The store behind the gRPC service.
///
/// The memory backend answers within the call, without waiting: its operations are `async` only
/// in signature, and complete on their first poll (the service relies on that to apply a
/// memory write under its shutdown gate and to size an answer against its connection's budget
/// before producing the next). A Redis backend waits for Redis.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Sessions in this process's memory, swept and snapshotted by the daemon.
    Memory(MemorySessionStore),
    /// Sessions in Redis or Valkey, which expires them itself; the daemon keeps no state.
    Redis(RedisSessionStore),
}

impl Backend {
    /// The memory store, for the memory backend.
    pub fn memory(&self) -> Option<&MemorySessionStore> {
        match self {
            Self::Memory(store) => Some(store),
            Self::Redis(_) => None,
        }
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        match self {
            Self::Memory(store) => store.get_now(id),
            Self::Redis(store) => unavailable_on_timeout(store.get(id).await),
        }
    }

    pub(crate) async fn save(&self, save: Save) -> Result<Saved> {
        match self {
            Self::Memory(store) => store.save_now(save),
            Self::Redis(store) => unavailable_on_timeout(store.save(save).await),
        }
    }

    pub(crate) async fn destroy(&self, id: &str) -> Result<bool> {
        match self {
            Self::Memory(store) => store.destroy_now(id),
            Self::Redis(store) => unavailable_on_timeout(store.destroy(id).await),
        }
    }

    pub(crate) async fn touch(
        &self,
        id: &str,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>> {
        match self {
            Self::Memory(store) => store.touch_now(id, ttl),
            Self::Redis(store) => unavailable_on_timeout(store.touch(id, ttl).await),
        }
    }

    pub(crate) async fn list_by_owner(
        &self,
        owner: &str,
        with_data: bool,
    ) -> Result<Vec<SessionRecord>> {
        match self {
            Self::Memory(store) => store.list_by_owner_now(owner, with_data),
            Self::Redis(store) => {
                unavailable_on_timeout(store.list_by_owner(owner, with_data).await)
            }
        }
    }

    pub(crate) async fn list_sessions(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        match self {
            Self::Memory(store) => store.list_sessions_now(cursor, limit),
            Self::Redis(store) => unavailable_on_timeout(store.list_sessions(cursor, limit).await),
        }
    }

    pub(crate) async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64> {
        match self {
            Self::Memory(store) => store.destroy_by_owner_now(owner, except),
            Self::Redis(store) => {
                unavailable_on_timeout(store.destroy_by_owner(owner, except).await)
            }
        }
    }

    /// The counters `Stats` reports: exact after removing what has expired, or, `as_stored`, at
    /// once as they stand. `None` on Redis: the daemon counts nothing there, the sessions and
    /// their expiry are Redis's.
    pub(crate) async fn stats(&self, as_stored: bool) -> Option<StoreStats> {
        match self {
            Self::Memory(store) if as_stored => Some(store.stats()),
            Self::Memory(store) => Some(store.live_stats().await),
            Self::Redis(_) => None,
        }
    }

    /// Whether the store can be reached now.
    pub(crate) async fn reachable(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(store) => store.ping().await.is_ok(),
        }
    }
}

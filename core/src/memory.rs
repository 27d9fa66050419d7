use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hashbrown::hash_table::Entry;
use tokio::sync::Notify;

use bytes::{BufMut, Bytes};

use crate::codec::{decode_shared, encode_into, encoded_len};
use crate::owners::OwnerIndex;
use crate::snapshot::{SnapshotError, SnapshotWriter};
use crate::store::SessionPage;
use crate::table::{Nanos, Record, SHARDS, Table};
use crate::{
    Clock, Expiry, Result, Save, Saved, SessionData, SessionRecord, SessionStore, StoreError,
    data_size, validate_id, validate_owner,
};

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
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// Session id to record. Expired records stay until the sweeper or an access removes them.
    map: Table,
    /// Owner to the ids of its sessions, changed with `map` under the same shard lock.
    owners: OwnerIndex,
    /// The clock every expiry is computed and checked against.
    clock: Clock,
    /// Limits and defaults.
    config: Config,
    /// Records in `map`, kept alongside it so that `--max-sessions` is exact under concurrency
    /// and reading the count does not lock every shard.
    stored: AtomicU64,
    /// Records removed because they had expired, by the sweeper or on access.
    expired_removed: AtomicU64,
    /// Sweeps run.
    sweeps: AtomicU64,
    /// Wakes the sweeper task so it stops, when the store is dropped.
    stop_sweeper: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_sweeper.notify_one();
    }
}

/// A live session as the store holds it, shared with the store (no copy): what a Get reads when
/// it only writes the session out again, without building a [`SessionRecord`].
///
/// Its id, owner and keys were checked to be UTF-8 when it was read.
#[derive(Clone)]
pub struct StoredSession(Record);

impl std::fmt::Debug for StoredSession {
    /// Without the id, which is a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("version", &self.version())
            .field("data_bytes", &self.0.data().len())
            .finish_non_exhaustive()
    }
}

impl StoredSession {
    fn new(record: &Record) -> Result<Self> {
        std::str::from_utf8(record.id())
            .map_err(|_| StoreError::Internal("stored session id is not UTF-8".into()))?;
        for entry in crate::codec::entries(record.data()) {
            entry?;
        }
        Ok(Self(record.clone()))
    }

    /// The session id.
    pub fn id(&self) -> &str {
        std::str::from_utf8(self.0.id()).unwrap_or_default()
    }

    /// Who the session belongs to; empty for nobody.
    pub fn owner(&self) -> &str {
        std::str::from_utf8(self.0.owner()).unwrap_or_default()
    }

    /// When the session was first saved.
    pub fn created_at(&self) -> SystemTime {
        self.0.created_at().into()
    }

    /// When the session stops existing.
    pub fn expires_at(&self) -> SystemTime {
        self.0.expires_at().into()
    }

    /// How many times the session's data was saved.
    pub fn version(&self) -> u64 {
        self.0.version()
    }

    /// The session's keys and values, in the order they were saved, borrowed from the store.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        // Checked when read: every entry decodes.
        crate::codec::entries(self.0.data()).map_while(Result::ok)
    }

    /// `value`, one of [`entries`](Self::entries)' values, as [`Bytes`] sharing the store's
    /// buffer (no copy).
    pub fn shared_value(&self, value: &[u8]) -> Bytes {
        self.0.shared().slice_ref(value)
    }

    /// The session as a [`SessionRecord`].
    pub fn to_record(&self) -> Result<SessionRecord> {
        self.0.to_record()
    }
}

impl Record {
    fn to_record(&self) -> Result<SessionRecord> {
        let id = std::str::from_utf8(self.id())
            .map_err(|_| StoreError::Internal("stored session id is not UTF-8".into()))?;
        Ok(SessionRecord {
            id: id.to_owned(),
            data: self.shared_data()?,
            created_at: self.created_at().into(),
            expires_at: self.expires_at().into(),
            version: self.version(),
            owner: self.owner_string(),
        })
    }

    /// The session's values, each a slice of the stored buffer (no copy).
    fn shared_data(&self) -> Result<SessionData> {
        decode_shared(&self.shared(), self.data_start())
    }

    fn owner_string(&self) -> Option<String> {
        let owner = std::str::from_utf8(self.owner()).ok()?;
        (!owner.is_empty()).then(|| owner.to_owned())
    }

    fn saved(&self) -> Saved {
        Saved {
            version: self.version(),
            created_at: self.created_at().into(),
            expires_at: self.expires_at().into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    default_ttl: Duration,
    max_ttl: Duration,
    max_session_bytes: usize,
    max_sessions: u64,
    max_sessions_per_owner: u64,
    sweep_interval: Option<Duration>,
}

/// Counters of a [`MemorySessionStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Records stored now. From [`MemorySessionStore::live_stats`], exactly the live sessions;
    /// from [`MemorySessionStore::stats`], possibly also expired ones not swept yet.
    pub live_sessions: u64,
    /// Records removed because they expired, by the sweeper or on access.
    pub expired_removed_total: u64,
    /// Sweeps run.
    pub sweeps_total: u64,
}

/// Configures a [`MemorySessionStore`]; from [`MemorySessionStore::builder`].
#[derive(Debug, Clone)]
pub struct MemorySessionStoreBuilder {
    config: Config,
}

impl Default for MemorySessionStoreBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                default_ttl: MemorySessionStore::DEFAULT_TTL,
                max_ttl: MemorySessionStore::DEFAULT_MAX_TTL,
                max_session_bytes: MemorySessionStore::DEFAULT_MAX_SESSION_BYTES,
                max_sessions: 0,
                max_sessions_per_owner: MemorySessionStore::DEFAULT_MAX_SESSIONS_PER_OWNER,
                sweep_interval: Some(MemorySessionStore::DEFAULT_SWEEP_INTERVAL),
            },
        }
    }
}

impl MemorySessionStoreBuilder {
    /// The lifetime of a session saved with [`Expiry::Default`] (default 24 hours).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// The longest lifetime a save or touch may ask for (default 30 days).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.config.max_ttl = ttl;
        self
    }

    /// The largest session, keys plus values, in bytes (default 1 MiB).
    pub fn max_session_bytes(mut self, bytes: usize) -> Self {
        self.config.max_session_bytes = bytes;
        self
    }

    /// The most sessions stored at once; 0, the default, means no limit. Saves to existing
    /// sessions still succeed at the limit.
    pub fn max_sessions(mut self, sessions: u64) -> Self {
        self.config.max_sessions = sessions;
        self
    }

    /// The most live sessions one owner may have (default 1,000); 0 means no limit. Beyond it a
    /// new session of that owner is [`StoreError::TooManyOwnerSessions`]; its existing sessions
    /// can still be saved.
    pub fn max_sessions_per_owner(mut self, sessions: u64) -> Self {
        self.config.max_sessions_per_owner = sessions;
        self
    }

    /// How often the sweeper removes expired records; `None` runs no sweeper (expired records
    /// are then removed only when accessed, or by calling [`MemorySessionStore::sweep`]).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.sweep_interval = interval;
        self
    }

    /// Builds the store, and starts its sweeper when called inside a tokio runtime.
    ///
    /// Fails when a duration is zero or the default TTL is longer than the maximum TTL.
    pub fn build(self) -> Result<MemorySessionStore> {
        let config = self.config;
        if config.default_ttl.is_zero() {
            return Err(StoreError::invalid("default ttl must be positive"));
        }
        if config.max_ttl < config.default_ttl {
            return Err(StoreError::invalid(format!(
                "default ttl ({:?}) is longer than the maximum ttl ({:?})",
                config.default_ttl, config.max_ttl
            )));
        }
        if config.max_ttl > MemorySessionStore::MAX_TTL_CAP {
            return Err(StoreError::invalid(format!(
                "maximum ttl ({}) is over the cap of {} days",
                humantime::format_duration(config.max_ttl),
                MemorySessionStore::MAX_TTL_CAP.as_secs() / 86400
            )));
        }
        if config.sweep_interval.is_some_and(|i| i.is_zero()) {
            return Err(StoreError::invalid("sweep interval must be positive"));
        }
        let sweep_interval = config.sweep_interval;
        let store = MemorySessionStore {
            inner: Arc::new(Inner {
                map: Table::new(),
                owners: OwnerIndex::new(),
                clock: Clock::new(),
                config,
                stored: AtomicU64::new(0),
                expired_removed: AtomicU64::new(0),
                sweeps: AtomicU64::new(0),
                stop_sweeper: Arc::new(Notify::new()),
            }),
        };
        if let (Some(interval), Ok(runtime)) =
            (sweep_interval, tokio::runtime::Handle::try_current())
        {
            // The first sweep is due one interval after the store was built, not after the task
            // first runs.
            let first = tokio::time::Instant::now() + interval;
            runtime.spawn(crate::sweeper::run(
                Arc::downgrade(&store.inner),
                store.inner.stop_sweeper.clone(),
                first,
                interval,
            ));
        }
        Ok(store)
    }
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
    /// 5 minutes; like the seed's `NewMemorySessionStore(maxAge)`. The maximum TTL is 30 days or
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

    /// The store's counters, after removing the sessions that have expired, so that
    /// `live_sessions` counts exactly the sessions a Get would find.
    ///
    /// The removal is the sweeper's paced work, limited to the shards that hold an expired
    /// session: nothing to do in the steady state, a few seconds' wait right after a great many
    /// sessions expired at once.
    pub async fn live_stats(&self) -> StoreStats {
        crate::sweeper::sweep_due(&self.inner, self.inner.clock.now()).await;
        self.stats()
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
        let removed = self.inner.reclaim_due(self.inner.clock.now());
        self.inner.count_sweep();
        removed
    }

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

    /// Saves a session now. The same as [`SessionStore::save`], without the future.
    ///
    /// A new session that finds the store at `max_sessions` first has the expired sessions
    /// removed (from the shards that hold any), so only live sessions count against the limit.
    pub fn save_now(&self, save: Save) -> Result<Saved> {
        match self.try_save(&save) {
            Err(StoreError::TooManySessions { .. })
                if self.inner.reclaim_due(self.inner.clock.now()) > 0 =>
            {
                self.try_save(&save)
            }
            result => result,
        }
    }

    fn try_save(&self, save: &Save) -> Result<Saved> {
        let inner = &*self.inner;
        validate_id(&save.id)?;
        let owner = save.owner.as_deref().filter(|owner| !owner.is_empty());
        if let Some(owner) = owner {
            validate_owner(owner)?;
        }
        let size = data_size(&save.data);
        if size > inner.config.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: inner.config.max_session_bytes,
            });
        }
        let clock_now = inner.clock.now();
        let now = Nanos::from(clock_now);
        let expires_at = Nanos::from(inner.expires_at(save.expiry, clock_now)?);
        let data_len = encoded_len(&save.data);
        let record = |created_at, version| {
            Record::new(
                &save.id,
                owner,
                created_at,
                expires_at,
                version,
                data_len,
                |buf| encode_into(buf, &save.data),
            )
        };
        // A session new to its owner takes its place in the owner's index with the check, under
        // the index's lock, so racing new sessions of one owner never pass the limit together.
        let owner_room = |current: Option<&Record>| match owner {
            Some(owner)
                if current.is_none_or(|c| !c.is_live(now) || c.owner() != owner.as_bytes()) =>
            {
                let limit = inner.config.max_sessions_per_owner;
                if inner
                    .owners
                    .reserve(owner, &save.id, limit, now, expires_at)
                {
                    Ok(())
                } else {
                    Err(StoreError::TooManyOwnerSessions { limit })
                }
            }
            _ => Ok(()),
        };
        let check_absent = |expected: Option<u64>| match expected {
            None | Some(0) => Ok(()),
            Some(expected) => Err(StoreError::Conflict {
                expected,
                actual: None,
            }),
        };
        inner
            .map
            .write_expiring(&save.id, Some(expires_at), |entry| match entry {
                Entry::Occupied(mut occupied) => {
                    let current = occupied.get_mut();
                    if current.is_live(now) {
                        if let Some(expected) = save.expected_version
                            && expected != current.version()
                        {
                            return Err(StoreError::Conflict {
                                expected,
                                actual: Some(current.version()),
                            });
                        }
                        // Only a snapshot made up by hand can hold a version this high.
                        let Some(version) = current.version().checked_add(1) else {
                            return Err(StoreError::invalid("session version is at its maximum"));
                        };
                        owner_room(Some(current))?;
                        let old = std::mem::replace(current, record(current.created_at(), version));
                        inner.owners.replace(Some(&old), Some(current));
                    } else {
                        // An expired record is absent: the save creates a new session in its place.
                        check_absent(save.expected_version)?;
                        owner_room(None)?;
                        let old = std::mem::replace(current, record(now, 1));
                        inner.owners.replace(Some(&old), Some(current));
                        inner.expired_removed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(current.saved())
                }
                Entry::Vacant(vacant) => {
                    check_absent(save.expected_version)?;
                    owner_room(None)?;
                    if let Err(err) = inner.reserve_slot() {
                        if let Some(owner) = owner {
                            inner.owners.release(owner, &save.id);
                        }
                        return Err(err);
                    }
                    let inserted = vacant.insert(record(now, 1));
                    inner.owners.replace(None, Some(inserted.get()));
                    Ok(inserted.get().saved())
                }
            })
    }

    /// Destroys a session now. The same as [`SessionStore::destroy`], without the future.
    pub fn destroy_now(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let now = Nanos::from(self.inner.clock.now());
        let removed = self.inner.map.write(id, |entry| match entry {
            Entry::Occupied(occupied) => {
                let record = occupied.remove().0;
                self.inner.owners.replace(Some(&record), None);
                Some(record)
            }
            Entry::Vacant(_) => None,
        });
        // The record is dropped here, after the shard's lock is released.
        match removed {
            Some(record) => {
                self.inner.stored.fetch_sub(1, Ordering::Relaxed);
                let live = record.is_live(now);
                if !live {
                    self.inner.expired_removed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(live)
            }
            None => Ok(false),
        }
    }

    /// The live sessions of `owner`. The same as [`SessionStore::list_by_owner`], without the
    /// future.
    pub fn list_by_owner_now(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        crate::validate_stored_owner(owner)?;
        let now = Nanos::from(self.inner.clock.now());
        let mut sessions = Vec::new();
        for id in self.inner.owners.ids(owner) {
            let found = self.inner.map.read(&id, |record| match record {
                Some(record) if record.is_live(now) && record.owner() == owner.as_bytes() => {
                    let mut found = SessionRecord {
                        id: id.clone(),
                        data: SessionData::new(),
                        created_at: record.created_at().into(),
                        expires_at: record.expires_at().into(),
                        version: record.version(),
                        owner: Some(owner.to_owned()),
                    };
                    if with_data {
                        found.data = record.shared_data()?;
                    }
                    Ok(Some(found))
                }
                _ => Ok(None),
            })?;
            sessions.extend(found);
        }
        sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(sessions)
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

    /// Destroys the sessions of `owner` but those in `except`. The same as
    /// [`SessionStore::destroy_by_owner`], without the future.
    ///
    /// Every session saved with this owner before the call is in the index when it begins
    /// (the index changes under the same lock as the session), so one pass over it reaches them
    /// all; a session given another owner meanwhile is left alone.
    pub fn destroy_by_owner_now(&self, owner: &str, except: &[String]) -> Result<u64> {
        crate::validate_stored_owner(owner)?;
        let now = Nanos::from(self.inner.clock.now());
        let mut destroyed = 0;
        for id in self.inner.owners.ids(owner) {
            if except.contains(&id) {
                continue;
            }
            let removed = self.inner.map.write(&id, |entry| match entry {
                Entry::Occupied(occupied) if occupied.get().owner() == owner.as_bytes() => {
                    let record = occupied.remove().0;
                    self.inner.owners.replace(Some(&record), None);
                    Some(record)
                }
                _ => None,
            });
            if let Some(record) = removed {
                self.inner.stored.fetch_sub(1, Ordering::Relaxed);
                if record.is_live(now) {
                    destroyed += 1;
                } else {
                    self.inner.expired_removed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(destroyed)
    }

    /// Touches a session now. The same as [`SessionStore::touch`], without the future.
    pub fn touch_now(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        validate_id(id)?;
        let clock_now = self.inner.clock.now();
        let now = Nanos::from(clock_now);
        let expires_at = self
            .inner
            .expires_at(ttl.map_or(Expiry::Default, Expiry::Ttl), clock_now)?;
        let at = Some(Nanos::from(expires_at));
        let (touched, expired) = self.inner.map.write_expiring(id, at, |entry| match entry {
            Entry::Occupied(mut occupied) if occupied.get().is_live(now) => {
                occupied.get_mut().set_expires_at(expires_at.into());
                self.inner.owners.replace(None, Some(occupied.get()));
                (Some(expires_at), None)
            }
            // An expired record is absent; remove it while its shard is locked anyway.
            Entry::Occupied(occupied) => {
                let record = occupied.remove().0;
                self.inner.owners.replace(Some(&record), None);
                (None, Some(record))
            }
            Entry::Vacant(_) => (None, None),
        });
        // A removed record is dropped here, after the shard's lock is released.
        if expired.is_some() {
            self.inner.count_expired_removal();
        }
        Ok(touched)
    }

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

impl Inner {
    /// Computes when a session saved or touched now with `expiry` expires.
    fn expires_at(&self, expiry: Expiry, now: SystemTime) -> Result<SystemTime> {
        let ttl = expiry.lifetime(now, self.config.default_ttl, self.config.max_ttl)?;
        // The maximum TTL is capped (`MAX_TTL_CAP`), so this cannot overflow; checked anyway,
        // because no input may panic the store.
        now.checked_add(ttl)
            .ok_or_else(|| StoreError::invalid("ttl is out of range"))
    }

    /// Counts a new record against `max_sessions`, or fails when the store is full.
    fn reserve_slot(&self) -> Result<()> {
        let limit = self.config.max_sessions;
        let before = self.stored.fetch_add(1, Ordering::Relaxed);
        if limit != 0 && before >= limit {
            self.stored.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::TooManySessions { limit });
        }
        Ok(())
    }

    /// Removes `id` if it is still expired at `now` (it may have been saved again meanwhile).
    fn remove_expired(&self, id: &str, now: Nanos) {
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
    fn count_expired_removal(&self) {
        self.stored.fetch_sub(1, Ordering::Relaxed);
        self.expired_removed.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores `record` under `id`, replacing what was there.
    fn put(&self, id: &str, record: Record) {
        let expires_at = Some(record.expires_at());
        let added = self
            .map
            .write_expiring(id, expires_at, |entry| match entry {
                Entry::Occupied(mut occupied) => {
                    let old = std::mem::replace(occupied.get_mut(), record);
                    self.owners.replace(Some(&old), Some(occupied.get()));
                    false
                }
                Entry::Vacant(vacant) => {
                    let inserted = vacant.insert(record);
                    self.owners.replace(None, Some(inserted.get()));
                    true
                }
            });
        if added {
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every expired record now, at full speed, from the shards that may hold one;
    /// returns how many it removed. For when the store is full: the sweeper and
    /// [`MemorySessionStore::live_stats`] do the same work paced.
    fn reclaim_due(&self, now: SystemTime) -> u64 {
        (0..crate::table::SHARDS)
            .filter(|&shard| self.is_due(shard, now))
            .map(|shard| self.sweep_shard(shard, now))
            .sum()
    }

    /// Whether shard `shard` may hold a record expired at `now`.
    pub(crate) fn is_due(&self, shard: usize, now: SystemTime) -> bool {
        self.map.is_due(shard, Nanos::from(now))
    }

    /// Removes the records of one shard that expired by `now`; returns how many.
    pub(crate) fn sweep_shard(&self, shard: usize, now: SystemTime) -> u64 {
        let now = Nanos::from(now);
        let removed = self.map.retain_shard(shard, |record| {
            let live = record.is_live(now);
            if !live {
                self.owners.replace(Some(record), None);
            }
            live
        });
        self.stored.fetch_sub(removed, Ordering::Relaxed);
        self.expired_removed.fetch_add(removed, Ordering::Relaxed);
        removed
    }

    /// Counts a finished sweep.
    pub(crate) fn count_sweep(&self) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }

    /// The store's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionData;

    #[test]
    fn reads_share_the_stored_buffer_and_a_touch_leaves_readers_theirs() {
        let store = MemorySessionStore::builder()
            .sweep_interval(None)
            .build()
            .unwrap();
        let value = "v".repeat(16 << 10);
        store
            .save_now(Save::new("s", data(&[("k", &value), ("n", "1")])))
            .unwrap();
        let first = store.get_now("s").unwrap().unwrap();
        let second = store.get_now("s").unwrap().unwrap();
        // Both reads are slices of one buffer: the value was not copied for either.
        assert_eq!(first.data["k"].as_ptr(), second.data["k"].as_ptr());
        assert_eq!(first.data["k"], value.as_bytes());
        // A touch while they are held changes the store's record, not theirs.
        let until = store.touch_now("s", Some(HOUR * 2)).unwrap().unwrap();
        let touched = store.get_now("s").unwrap().unwrap();
        assert_eq!(touched.expires_at, until);
        assert_ne!(first.expires_at, until);
        assert_eq!(touched.data, first.data);
        // A save replaces the record; what a reader holds stays as it read it.
        store
            .save_now(Save::new("s", data(&[("k", "new")])))
            .unwrap();
        assert_eq!(first.data["k"], value.as_bytes());
        assert_eq!(&store.get_now("s").unwrap().unwrap().data["k"][..], b"new");
    }

    #[test]
    fn racing_new_sessions_of_one_owner_never_pass_its_limit() {
        for round in 0..20 {
            let store = MemorySessionStore::builder()
                .max_sessions_per_owner(10)
                .sweep_interval(None)
                .build()
                .unwrap();
            let start = std::sync::Barrier::new(8);
            let saved = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|scope| {
                for thread in 0..8 {
                    let (store, start, saved) = (&store, &start, &saved);
                    scope.spawn(move || {
                        start.wait();
                        for n in 0..4 {
                            let save =
                                Save::new(format!("s{thread}-{n}"), SessionData::new()).owner("u");
                            match store.save_now(save) {
                                Ok(_) => {
                                    saved.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(StoreError::TooManyOwnerSessions { limit: 10 }) => {}
                                Err(err) => panic!("{err}"),
                            }
                        }
                    });
                }
            });
            assert_eq!(saved.load(Ordering::Relaxed), 10, "round {round}");
            assert_eq!(store.list_by_owner_now("u", false).unwrap().len(), 10);
        }
    }

    #[test]
    fn an_owner_place_taken_by_a_save_refused_for_the_session_limit_is_given_back() {
        let store = MemorySessionStore::builder()
            .max_sessions(1)
            .max_sessions_per_owner(1)
            .sweep_interval(None)
            .build()
            .unwrap();
        let save = |id: &str, owner: &str| Save::new(id, SessionData::new()).owner(owner);
        store.save_now(save("other", "v")).unwrap();
        let err = store.save_now(save("mine", "u")).unwrap_err();
        assert!(matches!(err, StoreError::TooManySessions { .. }), "{err}");
        store.destroy_now("other").unwrap();
        store
            .save_now(save("mine2", "u"))
            .expect("u's place was given back");
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn data(pairs: &[(&str, &str)]) -> SessionData {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec().into()))
            .collect()
    }

    fn store() -> MemorySessionStore {
        MemorySessionStore::builder()
            .default_ttl(HOUR)
            .max_ttl(24 * HOUR)
            .sweep_interval(None)
            .build()
            .unwrap()
    }

    fn ids(sessions: &[SessionRecord]) -> Vec<&str> {
        let mut ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn the_owner_index_follows_saves_destroys_touches_expiry_and_sweeps_without_a_leak() {
        let store = store();
        let owned = |id: &str, owner: &str| Save::new(id, data(&[("k", "v")])).owner(owner);
        store.save(owned("a", "u1")).await.unwrap();
        store.save(owned("b", "u1")).await.unwrap();
        store.save(owned("c", "u2")).await.unwrap();
        store
            .save(Save::new("d", SessionData::new()))
            .await
            .unwrap();
        let listed = store.list_by_owner("u1", false).await.unwrap();
        assert_eq!(ids(&listed), ["a", "b"]);
        assert!(listed.iter().all(|s| s.data.is_empty() && s.version == 1));
        assert_eq!(listed[0].owner.as_deref(), Some("u1"));
        let with_data = store.list_by_owner("u1", true).await.unwrap();
        assert_eq!(with_data[0].data, data(&[("k", "v")]));
        assert_eq!(
            store.get("a").await.unwrap().unwrap().owner.as_deref(),
            Some("u1")
        );
        assert_eq!(store.get("d").await.unwrap().unwrap().owner, None);

        // A save moves a session to another owner, or to none.
        store.save(owned("b", "u2")).await.unwrap();
        store
            .save(Save::new("c", SessionData::new()))
            .await
            .unwrap();
        assert_eq!(ids(&store.list_by_owner("u1", false).await.unwrap()), ["a"]);
        assert_eq!(ids(&store.list_by_owner("u2", false).await.unwrap()), ["b"]);

        // Destroy, expiry on access, and the sweeper all leave the index.
        store.destroy("a").await.unwrap();
        assert!(store.list_by_owner("u1", false).await.unwrap().is_empty());
        store
            .save(owned("e", "u3").ttl(Duration::from_secs(60)))
            .await
            .unwrap();
        store
            .save(owned("f", "u3").ttl(Duration::from_secs(60)))
            .await
            .unwrap();
        store.touch("f", Some(HOUR)).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(ids(&store.list_by_owner("u3", false).await.unwrap()), ["f"]);
        assert_eq!(store.get("e").await.unwrap(), None);
        tokio::time::advance(HOUR).await;
        assert!(store.list_by_owner("u3", false).await.unwrap().is_empty());
        assert_eq!(
            store.sweep(),
            4,
            "f, and b, c and d after their default hour"
        );
        assert_eq!(store.inner.owners.owners(), 0, "no owner is left behind");
        assert!(store.list_by_owner("", false).await.is_err());
        assert!(store.save(owned("g", "tab\t")).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn destroy_by_owner_spares_the_exceptions_and_other_owners_and_blocks_versioned_saves() {
        let store = store();
        for id in ["a", "b", "c"] {
            store
                .save(Save::new(id, SessionData::new()).owner("u1"))
                .await
                .unwrap();
        }
        store
            .save(Save::new("x", SessionData::new()).owner("u2"))
            .await
            .unwrap();
        store
            .save(
                Save::new("old", SessionData::new())
                    .owner("u1")
                    .ttl(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        let destroyed = store
            .destroy_by_owner("u1", &["b".to_owned()])
            .await
            .unwrap();
        assert_eq!(destroyed, 2, "live ones only: a and c");
        assert_eq!(ids(&store.list_by_owner("u1", false).await.unwrap()), ["b"]);
        assert!(store.get("x").await.unwrap().is_some());
        let err = store
            .save(Save::new("a", SessionData::new()).expected_version(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { actual: None, .. }),
            "{err}"
        );
        assert_eq!(store.destroy_by_owner("nobody", &[]).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_has_at_most_its_limit_of_live_sessions() {
        let store = MemorySessionStore::builder()
            .max_sessions_per_owner(3)
            .sweep_interval(None)
            .build()
            .unwrap();
        let save = |id: &str, ttl: u64| {
            Save::new(id, SessionData::new())
                .owner("u")
                .ttl(Duration::from_secs(ttl))
        };
        store.save(save("a", 10)).await.unwrap();
        store.save(save("b", 1000)).await.unwrap();
        store.save(save("c", 1000)).await.unwrap();
        let err = store.save(save("d", 1000)).await.unwrap_err();
        assert_eq!(err, StoreError::TooManyOwnerSessions { limit: 3 });
        store
            .save(save("a", 10))
            .await
            .expect("its own sessions still save");
        store
            .save(Save::new("d", SessionData::new()).owner("other"))
            .await
            .unwrap();
        let err = store.save(save("d", 1000)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::TooManyOwnerSessions { .. }),
            "nor moved to it"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        store
            .save(save("e", 1000))
            .await
            .expect("an expired session does not count");
    }

    #[test]
    fn destroy_by_owner_leaves_no_session_saved_before_it_while_more_are_saved() {
        let store = MemorySessionStore::builder()
            .max_sessions_per_owner(0)
            .sweep_interval(None)
            .build()
            .unwrap();
        // Savers log each session once its save has returned.
        let saved = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let savers: Vec<_> = (0..3)
            .map(|t| {
                let (store, saved) = (store.clone(), saved.clone());
                std::thread::spawn(move || {
                    for i in 0..3000 {
                        let id = format!("t{t}-{i}");
                        store
                            .save_now(Save::new(&id, SessionData::new()).owner("victim"))
                            .unwrap();
                        // Re-save the previous one too: a versioned save racing the destroy.
                        if i > 0 {
                            let _ = store.save_now(
                                Save::new(format!("t{t}-{}", i - 1), SessionData::new())
                                    .owner("victim")
                                    .expected_version(1),
                            );
                        }
                        saved.lock().push(id);
                    }
                })
            })
            .collect();
        let mut rounds = 0;
        loop {
            let done = savers.iter().all(|saver| saver.is_finished());
            let before: Vec<String> = std::mem::take(&mut *saved.lock());
            store.destroy_by_owner_now("victim", &[]).unwrap();
            for id in &before {
                assert_eq!(store.get_now(id).unwrap(), None, "{id} survived");
            }
            rounds += 1;
            if done {
                break;
            }
        }
        for saver in savers {
            saver.join().unwrap();
        }
        assert!(
            rounds > 1,
            "the destroys ran while sessions were being saved"
        );
        assert!(store.list_by_owner_now("victim", false).unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn version_starts_at_one_and_counts_saves() {
        let store = store();
        let first = store
            .save(Save::new("s1", data(&[("a", "1")])))
            .await
            .unwrap();
        assert_eq!(first.version, 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        let second = store
            .save(Save::new("s1", data(&[("a", "2")])))
            .await
            .unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(second.created_at, first.created_at, "created_at is kept");
        assert_eq!(
            second.expires_at,
            first.expires_at + Duration::from_secs(10)
        );
        let record = store.get("s1").await.unwrap().unwrap();
        assert_eq!(record.version, 2);
        assert_eq!(record.data, data(&[("a", "2")]));
        assert_eq!(record.created_at, first.created_at);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_records_are_absent_for_every_operation() {
        let store = store();
        store
            .save(Save::new("s1", data(&[("a", "1")])).ttl(Duration::from_secs(60)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(store.get("s1").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        // expires_at == now: no longer in the future, so gone.
        assert_eq!(store.get("s1").await.unwrap(), None);
        assert_eq!(store.stats().expired_removed_total, 1);

        store
            .save(Save::new("s2", data(&[])).ttl(Duration::from_secs(5)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(store.touch("s2", None).await.unwrap(), None);
        let stats = store.stats();
        assert_eq!(
            (stats.expired_removed_total, stats.live_sessions),
            (2, 0),
            "touch removes the expired record"
        );

        store
            .save(Save::new("s3", data(&[])).ttl(Duration::from_secs(5)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !store.destroy("s3").await.unwrap(),
            "expired is not 'existed'"
        );

        store
            .save(Save::new("s4", data(&[("old", "x")])).ttl(Duration::from_secs(5)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        let err = store
            .save(Save::new("s4", data(&[])).expected_version(1))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: None
            }
        );
        let created = store
            .save(Save::new("s4", data(&[("new", "y")])).expected_version(0))
            .await
            .unwrap();
        assert_eq!(
            created.version, 1,
            "an expired record is replaced, not continued"
        );
        assert_eq!(store.stats().live_sessions, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expected_version_guards_saves_and_a_conflict_changes_nothing() {
        let store = store();
        store
            .save(Save::new("s", data(&[("k", "v1")])).expected_version(0))
            .await
            .unwrap();
        let err = store
            .save(Save::new("s", data(&[("k", "again")])).expected_version(0))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict {
                expected: 0,
                actual: Some(1)
            }
        );
        let err = store
            .save(Save::new("s", data(&[("k", "stale")])).expected_version(7))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("expected version 7"), "{err}");
        let record = store.get("s").await.unwrap().unwrap();
        assert_eq!((record.version, record.data), (1, data(&[("k", "v1")])));

        let saved = store
            .save(Save::new("s", data(&[("k", "v2")])).expected_version(1))
            .await
            .unwrap();
        assert_eq!(saved.version, 2);
        let err = store
            .save(Save::new("absent", data(&[])).expected_version(1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { actual: None, .. }));
        assert_eq!(store.get("absent").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_comes_from_ttl_then_absolute_then_default() {
        let store = store();
        let now = store.clock().now();
        let saved = store.save(Save::new("d", data(&[]))).await.unwrap();
        assert_eq!(saved.expires_at, now + HOUR);
        let saved = store
            .save(Save::new("t", data(&[])).ttl(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(saved.expires_at, now + Duration::from_secs(30));
        let at = now + 2 * HOUR;
        let mut save = Save::new("a", data(&[]));
        save.expiry = Expiry::At(at);
        assert_eq!(store.save(save).await.unwrap().expires_at, at);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_ttls_and_expiries_are_invalid_and_store_nothing() {
        let store = store();
        let now = store.clock().now();
        let cases = [
            Expiry::Ttl(Duration::ZERO),
            Expiry::Ttl(25 * HOUR),
            Expiry::At(now),
            Expiry::At(now - Duration::from_secs(1)),
            Expiry::At(now + 25 * HOUR),
        ];
        for expiry in cases {
            let mut save = Save::new("s", data(&[]));
            save.expiry = expiry;
            let err = store.save(save).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument(_)), "{expiry:?}");
        }
        assert_eq!(store.get("s").await.unwrap(), None);
        assert!(matches!(
            store.touch("s", Some(Duration::ZERO)).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_ttls_are_refused_without_panicking() {
        let store = MemorySessionStore::builder()
            .max_ttl(MemorySessionStore::MAX_TTL_CAP)
            .sweep_interval(None)
            .build()
            .unwrap();
        let now = store.clock().now();
        let saved = store
            .save(Save::new("s", data(&[])).ttl(MemorySessionStore::MAX_TTL_CAP))
            .await
            .unwrap();
        assert_eq!(saved.expires_at, now + MemorySessionStore::MAX_TTL_CAP);
        for ttl in [
            MemorySessionStore::MAX_TTL_CAP + Duration::from_nanos(1),
            Duration::from_secs(i64::MAX as u64),
            Duration::MAX,
        ] {
            let err = store
                .save(Save::new("s", data(&[])).ttl(ttl))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
            let err = store.touch("s", Some(ttl)).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
        }
        let err = MemorySessionStore::builder()
            .max_ttl(Duration::MAX)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("cap"), "{err}");
    }

    #[tokio::test]
    async fn a_ttl_just_over_the_maximum_says_by_how_much() {
        let store = store();
        let err = store
            .save(Save::new("s", data(&[])).ttl(24 * HOUR + Duration::from_nanos(1)))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ttl of 1day 1ns is over the maximum of 1day"
        );
    }

    /// Page after page lists every live session once, without data, each page visiting at
    /// most LIST_SHARDS_PER_PAGE shards; the expired are left out, a strange cursor refused.
    #[tokio::test(start_paused = true)]
    async fn every_session_is_listed_once_page_by_page() {
        let store = store();
        for n in 0..3000 {
            let save = Save::new(format!("s{n}"), data(&[("k", "v")]));
            let save = if n % 3 == 0 { save.owner("u") } else { save };
            store.save(save).await.unwrap();
        }
        store
            .save(Save::new("brief", data(&[])).ttl(Duration::from_secs(1)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut seen = std::collections::HashSet::new();
        let (mut cursor, mut pages) = (String::new(), 0);
        loop {
            let page = store.list_sessions(&cursor, 100).await.unwrap();
            pages += 1;
            for session in page.sessions {
                assert!(session.data.is_empty(), "no data in a listing");
                assert_eq!(
                    session.owner.is_some(),
                    session.id[1..].parse::<u32>().unwrap() % 3 == 0
                );
                assert!(seen.insert(session.id), "listed twice");
            }
            match page.next {
                Some(next) => {
                    let (before, after): (usize, usize) =
                        (cursor.parse().unwrap_or(0), next.parse().unwrap());
                    assert!(after - before <= LIST_SHARDS_PER_PAGE);
                    cursor = next;
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 3000);
        assert!(!seen.contains("brief"));
        assert!(pages >= 30, "{pages} pages of about 100");
        for bad in ["x", "-1", "4096", "99999999999999999999"] {
            let err = store.list_sessions(bad, 100).await.unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidArgument(_)),
                "{bad}: {err:?}"
            );
        }
    }

    /// An absolute expiry too far away is named as what was sent, not as a ttl.
    #[tokio::test]
    async fn an_expires_at_too_far_away_is_named_as_such() {
        let store = store();
        let at = SystemTime::now() + 48 * HOUR;
        let err = store
            .save(Save {
                expiry: Expiry::At(at),
                ..Save::new("s", data(&[]))
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("expires_at is ") && err.ends_with("over the maximum ttl of 1day"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_ids_are_invalid_for_every_operation() {
        let store = store();
        for id in ["", "with space", "\u{7f}"] {
            assert!(matches!(
                store.get(id).await,
                Err(StoreError::InvalidArgument(_))
            ));
            assert!(matches!(
                store.save(Save::new(id, data(&[]))).await,
                Err(StoreError::InvalidArgument(_))
            ));
            assert!(matches!(
                store.destroy(id).await,
                Err(StoreError::InvalidArgument(_))
            ));
            assert!(matches!(
                store.touch(id, None).await,
                Err(StoreError::InvalidArgument(_))
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn touch_extends_without_changing_version_or_data() {
        let store = store();
        let saved = store
            .save(Save::new("s", data(&[("k", "v")])).ttl(Duration::from_secs(60)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(50)).await;
        let expires = store
            .touch("s", Some(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(expires, saved.expires_at + Duration::from_secs(50));
        tokio::time::advance(Duration::from_secs(50)).await;
        let record = store.get("s").await.unwrap().unwrap();
        assert_eq!(record.version, 1);
        assert_eq!(record.expires_at, expires);
        assert_eq!(record.data, data(&[("k", "v")]));
        assert_eq!(store.touch("missing", None).await.unwrap(), None);
    }

    #[tokio::test]
    async fn destroy_is_idempotent() {
        let store = store();
        store.save(Save::new("s", data(&[]))).await.unwrap();
        assert!(store.destroy("s").await.unwrap());
        assert!(!store.destroy("s").await.unwrap());
        assert_eq!(store.get("s").await.unwrap(), None);
        assert_eq!(store.stats().live_sessions, 0);
    }

    #[tokio::test]
    async fn sessions_over_the_size_limit_are_refused_and_the_old_data_kept() {
        let store = MemorySessionStore::builder()
            .max_session_bytes(10)
            .sweep_interval(None)
            .build()
            .unwrap();
        store
            .save(Save::new("s", data(&[("abc", "1234567")])))
            .await
            .unwrap();
        let err = store
            .save(Save::new("s", data(&[("abc", "12345678")])))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::TooLarge {
                size: 11,
                limit: 10
            }
        );
        let record = store.get("s").await.unwrap().unwrap();
        assert_eq!(
            (record.version, record.data),
            (1, data(&[("abc", "1234567")]))
        );
    }

    #[tokio::test]
    async fn the_session_limit_refuses_new_sessions_but_not_updates() {
        let store = MemorySessionStore::builder()
            .max_sessions(2)
            .sweep_interval(None)
            .build()
            .unwrap();
        store.save(Save::new("a", data(&[]))).await.unwrap();
        store.save(Save::new("b", data(&[]))).await.unwrap();
        let err = store.save(Save::new("c", data(&[]))).await.unwrap_err();
        assert_eq!(err, StoreError::TooManySessions { limit: 2 });
        assert_eq!(
            store
                .save(Save::new("a", data(&[("k", "v")])))
                .await
                .unwrap()
                .version,
            2
        );
        store.destroy("b").await.unwrap();
        store.save(Save::new("c", data(&[]))).await.unwrap();
        assert_eq!(store.stats().live_sessions, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn only_live_sessions_count_against_the_limit_and_in_live_stats() {
        let store = MemorySessionStore::builder()
            .max_sessions(10)
            .sweep_interval(None)
            .build()
            .unwrap();
        for i in 0..10 {
            store
                .save(Save::new(format!("short{i}"), data(&[])).ttl(Duration::from_secs(1)))
                .await
                .unwrap();
        }
        let err = store.save(Save::new("early", data(&[]))).await.unwrap_err();
        assert_eq!(err, StoreError::TooManySessions { limit: 10 });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.live_stats().await.live_sessions, 0, "none is live");

        for i in 0..5 {
            store
                .save(Save::new(format!("gone{i}"), data(&[])).ttl(Duration::from_secs(1)))
                .await
                .unwrap();
        }
        for i in 0..5 {
            store
                .save(Save::new(format!("live{i}"), data(&[])))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        // Full with five expired sessions: a new session takes the place of an expired one.
        for i in 0..5 {
            store
                .save(Save::new(format!("new{i}"), data(&[])))
                .await
                .unwrap();
        }
        let err = store
            .save(Save::new("one-more", data(&[])))
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::TooManySessions { limit: 10 });
        assert_eq!(store.live_stats().await.live_sessions, 10);
        for i in 0..5 {
            assert!(store.get(&format!("live{i}")).await.unwrap().is_some());
            assert!(store.get(&format!("new{i}")).await.unwrap().is_some());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn live_stats_agree_with_get_after_touches_and_expiry() {
        let store = store();
        for i in 0..300 {
            store
                .save(Save::new(format!("s{i}"), data(&[])).ttl(Duration::from_secs(10)))
                .await
                .unwrap();
        }
        for i in 0..100 {
            store
                .touch(&format!("s{i}"), Some(Duration::from_secs(60)))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(store.live_stats().await.live_sessions, 100);
        let found = (0..300)
            .filter(|i| store.get_now(&format!("s{i}")).unwrap().is_some())
            .count();
        assert_eq!(found, 100);
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(store.live_stats().await.live_sessions, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_removes_expired_records_every_interval() {
        let store = MemorySessionStore::builder()
            .sweep_interval(Some(Duration::from_secs(300)))
            .build()
            .unwrap();
        for i in 0..100 {
            let ttl = Duration::from_secs(if i % 2 == 0 { 60 } else { 3600 });
            store
                .save(Save::new(format!("s{i}"), data(&[])).ttl(ttl))
                .await
                .unwrap();
        }
        assert_eq!(store.stats().sweeps_total, 0);
        tokio::time::advance(Duration::from_secs(301)).await;
        // The sweep yields between shards; wait for it in paused time, which lets the runtime
        // move on as soon as it is otherwise idle.
        while store.stats().sweeps_total == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let stats = store.stats();
        assert_eq!(stats.sweeps_total, 1);
        assert_eq!(stats.expired_removed_total, 50);
        assert_eq!(stats.live_sessions, 50);
        assert!(store.get("s1").await.unwrap().is_some());
    }

    /// On a one-thread runtime, another task must still run while a large sweep is in progress:
    /// the sweeper hands the thread back after every shard.
    #[tokio::test(start_paused = true)]
    async fn requests_are_served_between_shards_of_a_sweep() {
        const SESSIONS: u64 = 20_000;
        let store = MemorySessionStore::builder()
            .sweep_interval(Some(Duration::from_secs(300)))
            .build()
            .unwrap();
        for i in 0..SESSIONS {
            store
                .save_now(Save::new(format!("s{i}"), data(&[])).ttl(Duration::from_secs(60)))
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(301)).await;
        let mut seen_mid_sweep = 0;
        while store.stats().sweeps_total == 0 {
            let live = store.stats().live_sessions;
            if live > 0 && live < SESSIONS {
                seen_mid_sweep += 1;
            }
            // Sleeping, not only yielding, lets paused time move on to the sweeper's pauses.
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        assert_eq!(store.stats().live_sessions, 0);
        assert!(
            seen_mid_sweep > 100,
            "another task ran only {seen_mid_sweep} times during the sweep"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_stops_when_the_store_is_dropped() {
        let store = MemorySessionStore::builder()
            .sweep_interval(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        let weak = Arc::downgrade(&store.inner);
        drop(store);
        assert!(weak.upgrade().is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compare_and_swap_loses_no_increment() {
        let store = store();
        store
            .save(Save::new("counter", data(&[("n", "0")])).expected_version(0))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut conflicts = 0u32;
                    for _ in 0..50 {
                        loop {
                            let record = store.get("counter").await.unwrap().unwrap();
                            let n: u64 = std::str::from_utf8(&record.data["n"])
                                .unwrap()
                                .parse()
                                .unwrap();
                            let next = data(&[("n", &(n + 1).to_string())]);
                            match store
                                .save(Save::new("counter", next).expected_version(record.version))
                                .await
                            {
                                Ok(_) => break,
                                Err(StoreError::Conflict { .. }) => {
                                    conflicts += 1;
                                    tokio::task::yield_now().await;
                                }
                                Err(err) => panic!("{err}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let record = store.get("counter").await.unwrap().unwrap();
        assert_eq!(&record.data["n"][..], b"800");
        assert_eq!(record.version, 801);
    }

    #[tokio::test(start_paused = true)]
    async fn restore_keeps_every_field_and_skips_expired() {
        let store = store();
        let now = store.clock().now();
        let record = SessionRecord {
            id: "r".into(),
            data: data(&[("k", "v")]),
            created_at: now - HOUR,
            expires_at: now + HOUR,
            version: 9,
            owner: Some("user 9".into()),
        };
        assert!(store.restore(record.clone()).unwrap());
        assert_eq!(store.get("r").await.unwrap(), Some(record.clone()));
        let expired = SessionRecord {
            id: "x".into(),
            expires_at: now,
            ..record
        };
        assert!(!store.restore(expired).unwrap());
        let mut seen = Vec::new();
        store.for_each_live(|r| seen.push(r.id));
        assert_eq!(seen, ["r"]);
    }

    /// An owner a save now refuses (a space at either end) was accepted before that rule: a
    /// stored record holding one is restored whole, and is still reached by its owner.
    #[tokio::test(start_paused = true)]
    async fn a_record_with_an_owner_accepted_before_the_space_rule_is_restored() {
        let store = store();
        let now = store.clock().now();
        let err = store
            .save(Save::new("new", data(&[])).owner(" old"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
        let record = SessionRecord {
            id: "r".into(),
            data: data(&[]),
            created_at: now,
            expires_at: now + HOUR,
            version: 1,
            owner: Some(" old".into()),
        };
        assert!(store.restore(record).unwrap());
        assert_eq!(
            store.get("r").await.unwrap().unwrap().owner.as_deref(),
            Some(" old")
        );
        assert_eq!(store.list_by_owner(" old", false).await.unwrap().len(), 1);
        assert_eq!(store.destroy_by_owner(" old", &[]).await.unwrap(), 1);
    }

    #[test]
    fn a_snapshot_never_misses_a_session_moving_to_a_new_id() {
        let store = store();
        let users = 8;
        for user in 0..users {
            store
                .save_now(Save::new(format!("u{user}-0"), data(&[])))
                .unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let movers: Vec<_> = (0..users)
            .map(|user| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // What the session layer does at login: save under a new id, then
                        // destroy the old one.
                        store
                            .save_now(Save::new(format!("u{user}-{}", n + 1), data(&[])))
                            .unwrap();
                        store.destroy_now(&format!("u{user}-{n}")).unwrap();
                        n += 1;
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            let (bytes, _) = store.write_snapshot(Vec::new()).unwrap();
            let restored = MemorySessionStore::builder()
                .sweep_interval(None)
                .build()
                .unwrap();
            restored.load_snapshot(&bytes).unwrap();
            let mut found = vec![0; users];
            restored.for_each_live(|record| {
                let user: usize = record.id[1..record.id.find('-').unwrap()].parse().unwrap();
                found[user] += 1;
            });
            assert!(found.iter().all(|&n| n >= 1), "a user vanished: {found:?}");
        }
        stop.store(true, Ordering::Relaxed);
        for mover in movers {
            mover.join().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_bring_back_every_field_but_not_expired_sessions() {
        let restored = store();
        let empty = store();
        let store = store();
        store
            .save(Save::new("long", data(&[("k", "v"), ("n", "1")])))
            .await
            .unwrap();
        store
            .save(Save::new("long", data(&[("k", "v2")])))
            .await
            .unwrap();
        store
            .save(Save::new("short", data(&[])).ttl(Duration::from_secs(30)))
            .await
            .unwrap();
        let (bytes, written) = store.write_snapshot(Vec::new()).unwrap();
        assert_eq!(written, 2);

        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(restored.load_snapshot(&bytes).unwrap(), (1, 1));
        let original = store.get("long").await.unwrap().unwrap();
        assert_eq!(restored.get("long").await.unwrap(), Some(original));
        assert_eq!(restored.get("short").await.unwrap(), None);
        assert_eq!(restored.stats().live_sessions, 1);

        let mut damaged = bytes.clone();
        damaged[20] ^= 1;
        assert!(empty.load_snapshot(&damaged).is_err());
        assert_eq!(
            empty.stats().live_sessions,
            0,
            "nothing loaded from a bad snapshot"
        );
    }
}

//! Building a [`MemorySessionStore`]: its limits and defaults, checked once.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::Notify;

use super::MemorySessionStore;
use super::owners::OwnerIndex;
use super::state::State;
use super::table::Table;
use crate::{Clock, Result, StoreError};

#[cfg(doc)]
use crate::StoreExpiry;

/// A store's limits and defaults.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) default_ttl: Duration,
    pub(super) max_ttl: Duration,
    pub(super) max_session_bytes: usize,
    pub(super) max_sessions: u64,
    pub(super) max_sessions_per_owner: u64,
    pub(super) sweep_interval: Option<Duration>,
}

/// Counters of a [`MemorySessionStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The lifetime of a session saved with [`StoreExpiry::Default`] (default 24 hours).
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
            inner: Arc::new(State {
                map: Table::new(),
                owners: OwnerIndex::new(),
                clock: Clock::new(),
                config,
                stored: AtomicU64::new(0),
                expired_removed: AtomicU64::new(0),
                sweeps: AtomicU64::new(0),
                stop_sweeper: Arc::new(Notify::new()),
                journal: std::sync::OnceLock::new(),
            }),
        };
        if let (Some(interval), Ok(runtime)) =
            (sweep_interval, tokio::runtime::Handle::try_current())
        {
            // The first sweep is due one interval after the store was built, not after the task
            // first runs.
            let first = tokio::time::Instant::now() + interval;
            runtime.spawn(super::sweeper::run(
                Arc::downgrade(&store.inner),
                store.inner.stop_sweeper.clone(),
                first,
                interval,
            ));
        }
        Ok(store)
    }
}

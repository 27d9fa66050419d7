//! The near cache: sessions this client read, answered again from its own memory, kept true by
//! the daemon's `Track` stream (see the `.proto`).
//!
//! A hit costs no call. What keeps it true:
//! - every change the daemon applies, by any client, reaches this client as an invalidation
//!   (or a flush) on the `Track` stream, and drops the cached copy;
//! - a Get's answer is cached only if no invalidation for an id of its stripe and no flush
//!   arrived between sending the Get and receiving its answer (the two travel on different
//!   streams, in either order): [`Ticket`];
//! - nothing is served while the stream is not known to be healthy: before its first message,
//!   after it ends, and once nothing has been heard for twice the heartbeat interval (the daemon
//!   stopped, or the network between cut). Each of those drops everything, and so does a new
//!   daemon epoch (a restart);
//! - a session is never served within [`CLOCK_MARGIN`] of its `expires_at`, counted on the
//!   daemon's clock as far as the heartbeats tell it.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use std::sync::Weak;

use gonest_session_core::SessionRecord;
use gonest_session_proto::{duration_from_pb, is_tracking_unavailable, pb, timestamp_from_pb};

use crate::auth::Client;
use std::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

/// How close to its `expires_at` a cached session is no longer served, on top of how far the
/// daemon's clock is seen ahead of this one.
pub(crate) const CLOCK_MARGIN: Duration = Duration::from_millis(100);

/// Stripes of ids whose invalidations are counted apart; a Get is not cached when an id of its
/// stripe was invalidated while it was in flight.
const STRIPES: usize = 1024;

/// The least weight an entry counts for, as a share of the byte bound: so that the byte bound
/// also bounds the number of entries.
struct ByWeight {
    least: u64,
}

impl Clone for ByWeight {
    fn clone(&self) -> Self {
        Self { least: self.least }
    }
}

impl quick_cache::Weighter<String, Arc<Cached>> for ByWeight {
    fn weight(&self, _id: &String, cached: &Arc<Cached>) -> u64 {
        cached.bytes.max(self.least)
    }
}

/// A cached session and what it weighs.
#[derive(Debug)]
struct Cached {
    record: SessionRecord,
    bytes: u64,
}

/// The state of the `Track` stream, as far as serving goes.
#[derive(Debug)]
struct Health {
    /// Whether the stream said it started and has not ended since.
    tracking: bool,
    /// The daemon process the stream is with.
    epoch: Option<String>,
    /// When the stream was last heard from.
    heard: Instant,
    heartbeat: Duration,
    /// How far the daemon's clock was seen ahead of this one.
    daemon_ahead: Duration,
}

/// A client's near cache; see the [module docs](self).
pub(crate) struct NearCache {
    entries: quick_cache::sync::Cache<String, Arc<Cached>, ByWeight>,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// Flushes so far: a Get in flight across one is not cached.
    flushes: AtomicU64,
    health: Mutex<Health>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// What a Get finds in the cache.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The session, served from memory.
    Hit(SessionRecord),
    /// Not cached: ask the daemon, then [`NearCache::fill`] with this ticket.
    Miss(Ticket),
    /// The cache cannot serve now (the stream is not healthy): ask the daemon, cache nothing.
    Off,
}

/// Where the cache stood when a Get was sent; see [`NearCache::fill`].
#[derive(Debug)]
pub(crate) struct Ticket {
    stripe: usize,
    invalidated: u64,
    flushes: u64,
}

/// The near cache's counters, from [`RemoteSessionStore::near_cache_stats`].
///
/// [`RemoteSessionStore::near_cache_stats`]: crate::RemoteSessionStore::near_cache_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Gets answered from memory.
    pub hits: u64,
    /// Gets sent to the daemon while the cache was on.
    pub misses: u64,
    /// Invalidations received.
    pub invalidations: u64,
    /// Times everything was dropped: a flush from the daemon, the stream ending or going
    /// silent, a daemon restart.
    pub flushes: u64,
    /// Sessions held now.
    pub entries: u64,
    /// Whether the cache serves now (its `Track` stream is healthy).
    pub serving: bool,
}

impl NearCache {
    /// A cache of at most `entries` sessions and `bytes` bytes of them.
    pub(crate) fn new(entries: usize, bytes: u64) -> Self {
        let entries = entries.max(1);
        let least = (bytes / entries as u64).max(1);
        Self {
            entries: quick_cache::sync::Cache::with_weighter(entries, bytes, ByWeight { least }),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            flushes: AtomicU64::new(0),
            health: Mutex::new(Health {
                tracking: false,
                epoch: None,
                heard: Instant::now(),
                heartbeat: Duration::from_secs(1),
                daemon_ahead: Duration::ZERO,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stripe(&self, id: &str) -> usize {
        (self.hasher.hash_one(id) as usize) % STRIPES
    }

    /// Whether the cache may serve now; if so, how far the daemon's clock is ahead. A stream
    /// silent for twice its heartbeat drops everything here, whatever its task is doing.
    fn serving(&self) -> Option<Duration> {
        let mut health = self.health();
        if !health.tracking {
            return None;
        }
        if health.heard.elapsed() > health.heartbeat * 2 {
            health.tracking = false;
            drop(health);
            self.flush();
            return None;
        }
        Some(health.daemon_ahead)
    }

    /// Looks `id` up.
    pub(crate) fn get(&self, id: &str) -> Lookup {
        let Some(ahead) = self.serving() else {
            return Lookup::Off;
        };
        let stripe = self.stripe(id);
        let ticket = Ticket {
            stripe,
            invalidated: self.stripes[stripe].load(Ordering::SeqCst),
            flushes: self.flushes.load(Ordering::SeqCst),
        };
        if let Some(cached) = self.entries.get(id) {
            if cached.record.expires_at > SystemTime::now() + ahead + CLOCK_MARGIN {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit(cached.record.clone());
            }
            self.entries.remove(id);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss(ticket)
    }

    /// Caches the daemon's answer to a Get sent with `ticket`, unless an invalidation of its
    /// stripe or a flush arrived since, or the cache stopped serving. Absent sessions are not
    /// cached.
    pub(crate) fn fill(&self, ticket: &Ticket, record: Option<&SessionRecord>) {
        let Some(record) = record else { return };
        let current = |cache: &Self| {
            cache.flushes.load(Ordering::SeqCst) == ticket.flushes
                && cache.stripes[ticket.stripe].load(Ordering::SeqCst) == ticket.invalidated
        };
        if !current(self) || self.serving().is_none() {
            return;
        }
        let bytes = gonest_session_core::data_size(&record.data) + record.id.len() + 128;
        // The values are copied: as received they are slices of the connection's frames, and
        // a cached slice would keep its whole frame (other answers with it) alive.
        let mut own = record.clone();
        for value in own.data.values_mut() {
            *value = gonest_session_core::Bytes::copy_from_slice(value);
        }
        let cached = Arc::new(Cached {
            record: own,
            bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
        });
        self.entries.insert(record.id.clone(), cached);
        // An invalidation or a flush between the check and the insert may have missed the
        // entry: check again, after.
        if !current(self) {
            self.entries.remove(&record.id);
        }
    }

    /// Drops the cached copy of `id`: the daemon says it changed, or this client changed it.
    pub(crate) fn invalidate(&self, id: &str) {
        self.stripes[self.stripe(id)].fetch_add(1, Ordering::SeqCst);
        self.entries.remove(id);
    }

    /// Drops everything.
    pub(crate) fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// The first message of a stream: with `epoch` (a new one drops everything) and its
    /// heartbeat interval. The cache serves from now on.
    pub(crate) fn started(&self, epoch: &str, heartbeat: Duration) {
        let mut health = self.health();
        if health.epoch.as_deref() != Some(epoch) {
            health.epoch = Some(epoch.to_owned());
            self.flush();
        }
        health.heartbeat = heartbeat.max(Duration::from_millis(10));
        health.heard = Instant::now();
        health.tracking = true;
    }

    /// A message of the stream, sent at `daemon_now` by the daemon's clock.
    pub(crate) fn heard(&self, daemon_now: Option<SystemTime>) {
        let mut health = self.health();
        health.heard = Instant::now();
        if let Some(ahead) = daemon_now.and_then(|at| at.duration_since(SystemTime::now()).ok()) {
            health.daemon_ahead = ahead;
        } else if daemon_now.is_some() {
            health.daemon_ahead = Duration::ZERO;
        }
        if !health.tracking && health.epoch.is_some() {
            // Heard again after a silence: everything was dropped then; serve again.
            health.tracking = true;
        }
    }

    /// The stream ended (or never opened): drop everything and serve nothing until a new one
    /// starts.
    pub(crate) fn stopped(&self) {
        self.health().tracking = false;
        self.flush();
    }

    /// Counts `count` invalidations received.
    pub(crate) fn count_invalidations(&self, count: usize) {
        self.invalidations
            .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counters.
    pub(crate) fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: u64::try_from(self.entries.len()).unwrap_or(u64::MAX),
            serving: self.serving().is_some(),
        }
    }
}

/// How long the tracking task waits before opening a new stream after one ended.
const RETRY: Duration = Duration::from_millis(250);

/// Keeps `cache` true for as long as it lives: opens the `Track` stream, applies what it says,
/// and opens a new one when it ends. Stops for good, logging it once, when the daemon refuses
/// to track or has no `Track` (older than v1.5): the cache then never serves.
pub(crate) async fn keep_true(client: Client, cache: Weak<NearCache>) {
    loop {
        let mut calls = client.clone();
        let opened = calls.track(pb::TrackRequest {}).await;
        let Some(near) = cache.upgrade() else { return };
        match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                drop(near);
                follow(&mut stream, &cache).await;
            }
            // A daemon before v1.5 has no Track at all.
            Err(status)
                if is_tracking_unavailable(&status)
                    || status.code() == tonic::Code::Unimplemented =>
            {
                near.stopped();
                tracing::warn!(
                    message = status.message(),
                    "the daemon cannot track changes: the near cache is off"
                );
                return;
            }
            Err(status) => {
                near.stopped();
                tracing::debug!(code = ?status.code(), "cannot open the Track stream; will retry");
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Applies the messages of one `Track` stream to the cache until the stream ends.
async fn follow(stream: &mut tonic::Streaming<pb::TrackResponse>, cache: &Weak<NearCache>) {
    let mut heartbeat = Duration::from_secs(1);
    loop {
        // A stream silent past twice its heartbeat stops serving (checked on every lookup too);
        // the stream itself may come back, and its messages with it.
        let next = tokio::time::timeout(heartbeat * 2, stream.message()).await;
        let Some(near) = cache.upgrade() else { return };
        let message = match next {
            Err(_) => {
                near.serving();
                continue;
            }
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None) | Err(_)) => {
                near.stopped();
                return;
            }
        };
        let daemon_now = message
            .now
            .as_ref()
            .and_then(|now| timestamp_from_pb(now).ok());
        if !message.epoch.is_empty() {
            heartbeat = message
                .heartbeat_interval
                .as_ref()
                .and_then(|interval| duration_from_pb(interval).ok())
                .unwrap_or(heartbeat);
            near.started(&message.epoch, heartbeat);
        }
        near.count_invalidations(message.invalidations.len());
        for invalidation in &message.invalidations {
            near.invalidate(&invalidation.id);
        }
        if message.flush {
            near.flush();
        }
        near.heard(daemon_now);
    }
}

#[cfg(test)]
mod tests {
    use gonest_session_core::SessionData;

    use super::*;

    fn record(id: &str, version: u64) -> SessionRecord {
        let now = SystemTime::now();
        SessionRecord {
            id: id.to_owned(),
            data: SessionData::new(),
            created_at: now,
            expires_at: now + Duration::from_secs(3600),
            version,
            owner: None,
        }
    }

    fn serving_cache() -> NearCache {
        let cache = NearCache::new(100, 1 << 20);
        cache.started("epoch-1", Duration::from_millis(500));
        cache
    }

    fn miss(cache: &NearCache, id: &str) -> Ticket {
        match cache.get(id) {
            Lookup::Miss(ticket) => ticket,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    fn hit(cache: &NearCache, id: &str) -> Option<u64> {
        match cache.get(id) {
            Lookup::Hit(record) => Some(record.version),
            _ => None,
        }
    }

    /// The Get/invalidation race, both orders: an answer that was in flight when an
    /// invalidation of its id arrived is not cached; one that arrives before is cached and
    /// then dropped by it.
    #[test]
    fn an_answer_older_than_an_invalidation_is_never_cached() {
        let cache = serving_cache();
        // Get sent; the session changes; the invalidation arrives before the (old) answer.
        let ticket = miss(&cache, "s");
        cache.invalidate("s");
        cache.fill(&ticket, Some(&record("s", 1)));
        assert_eq!(hit(&cache, "s"), None, "the old answer was not cached");

        // The answer arrives first, then the invalidation: cached, then dropped.
        let ticket = miss(&cache, "s");
        cache.fill(&ticket, Some(&record("s", 2)));
        assert_eq!(hit(&cache, "s"), Some(2));
        cache.invalidate("s");
        assert_eq!(hit(&cache, "s"), None);

        // A flush while a Get is in flight: its answer is not cached either.
        let ticket = miss(&cache, "t");
        cache.flush();
        cache.fill(&ticket, Some(&record("t", 1)));
        assert_eq!(hit(&cache, "t"), None);

        // Invalidations of other stripes do not stop it.
        let ticket = miss(&cache, "u");
        let other = (0..)
            .map(|n| format!("o{n}"))
            .find(|id| cache.stripe(id) != cache.stripe("u"))
            .unwrap();
        cache.invalidate(&other);
        cache.fill(&ticket, Some(&record("u", 1)));
        assert_eq!(hit(&cache, "u"), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_served_without_a_healthy_stream() {
        let cache = NearCache::new(100, 1 << 20);
        assert!(
            matches!(cache.get("s"), Lookup::Off),
            "before the stream starts"
        );
        cache.started("epoch-1", Duration::from_millis(500));
        let ticket = miss(&cache, "s");
        cache.fill(&ticket, Some(&record("s", 1)));
        assert_eq!(hit(&cache, "s"), Some(1));

        // Silent for more than twice the heartbeat: dropped, and off.
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(matches!(cache.get("s"), Lookup::Off));
        cache.heard(None);
        assert_eq!(hit(&cache, "s"), None, "dropped while silent");

        let ticket = miss(&cache, "s");
        cache.fill(&ticket, Some(&record("s", 1)));
        assert_eq!(hit(&cache, "s"), Some(1));
        // A new epoch (the daemon restarted) drops everything.
        cache.started("epoch-2", Duration::from_millis(500));
        assert_eq!(hit(&cache, "s"), None);

        let ticket = miss(&cache, "s");
        cache.fill(&ticket, Some(&record("s", 1)));
        cache.stopped();
        assert!(matches!(cache.get("s"), Lookup::Off), "the stream ended");
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn a_session_near_its_expiry_is_not_served() {
        let cache = serving_cache();
        let mut soon = record("s", 1);
        soon.expires_at = SystemTime::now() + CLOCK_MARGIN / 2;
        let ticket = miss(&cache, "s");
        cache.fill(&ticket, Some(&soon));
        assert_eq!(hit(&cache, "s"), None);

        // The daemon's clock is seen 10 minutes ahead: a session with 5 minutes left by this
        // clock has already expired by the daemon's.
        cache.heard(Some(SystemTime::now() + Duration::from_secs(600)));
        let mut later = record("t", 1);
        later.expires_at = SystemTime::now() + Duration::from_secs(300);
        let ticket = miss(&cache, "t");
        cache.fill(&ticket, Some(&later));
        assert_eq!(hit(&cache, "t"), None);
    }

    #[test]
    fn the_cache_is_bounded_in_entries_and_bytes() {
        let cache = NearCache::new(10, 1 << 20);
        cache.started("e", Duration::from_secs(1));
        for n in 0..100 {
            let id = format!("s{n}");
            let ticket = miss(&cache, &id);
            cache.fill(&ticket, Some(&record(&id, 1)));
        }
        assert!(cache.stats().entries <= 10, "{:?}", cache.stats());

        let cache = NearCache::new(1000, 64 << 10);
        cache.started("e", Duration::from_secs(1));
        for n in 0..100 {
            let id = format!("s{n}");
            let mut big = record(&id, 1);
            big.data.insert("k".to_owned(), vec![0u8; 16 << 10].into());
            let ticket = miss(&cache, &id);
            cache.fill(&ticket, Some(&big));
        }
        assert!(cache.stats().entries <= 4, "{:?}", cache.stats());
    }
}

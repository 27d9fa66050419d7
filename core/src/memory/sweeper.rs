//! Sweeping: removing expired records from a [`MemorySessionStore`](super::MemorySessionStore),
//! shard by shard. [`DueShards`] is the one walk over the shards; the background task paces
//! it, a store that is full runs it at once ([`reclaim_due`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use super::state::State;
use super::table::{Nanos, SHARDS};

/// The most of a worker's time a sweep takes while it runs: when it has used more, it pauses for
/// [`PAUSE`]. A sweep of a million expired sessions then takes 3 to 9 seconds instead of a
/// fraction of one, and requests keep 95 % of the worker meanwhile. Get p99 during a sweep, over
/// the p99 without one: median 1.99 at a 25 % share, 1.20–1.30 at 5 % (bench/README.md).
const SHARE: f64 = 0.05;
/// How long a sweep pauses when it is over its share.
const PAUSE: Duration = Duration::from_millis(1);

/// Sweeps the store at `first` and then every `every` until the store is dropped.
///
/// The task holds only a weak reference between sweeps, so it never keeps a store alive; the
/// store's drop wakes it through `stop`.
///
/// A sweep cleans one shard at a time (a few hundred records with a million stored) and yields
/// to the runtime after each, so requests are served between shards and never wait behind more
/// than one shard's worth of work; and it takes at most [`SHARE`] of the time it runs for. It
/// runs on the runtime's own workers rather than on a separate thread: a separate thread would
/// compete with them for the CPU (and, freeing what they allocated, for the allocator) during the
/// whole sweep.
pub(super) async fn run(store: Weak<State>, stop: Arc<Notify>, first: Instant, every: Duration) {
    let mut ticks = interval_at(first, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.notified() => return,
        }
        let Some(state) = store.upgrade() else { return };
        let started = std::time::Instant::now();
        let (removed, busy) = sweep_due(&state, state.now()).await;
        state.sweeps.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            removed,
            elapsed_ms = started.elapsed().as_millis(),
            busy_ms = busy.as_millis(),
            "swept expired sessions"
        );
    }
}

/// Removes the records expired at `now` from every shard that may hold one, yielding after each
/// shard swept and pausing to stay within [`SHARE`]; returns how many it removed and the time it
/// spent working.
pub(super) async fn sweep_due(state: &State, now: SystemTime) -> (u64, Duration) {
    let started = std::time::Instant::now();
    let (mut removed, mut busy) = (0, Duration::ZERO);
    let mut shards = DueShards::new(state, now);
    loop {
        let step = std::time::Instant::now();
        let Some(swept) = shards.next() else { break };
        removed += swept;
        busy += step.elapsed();
        if busy > started.elapsed().mul_f64(SHARE) {
            tokio::time::sleep(PAUSE).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    (removed, busy)
}

/// Removes every expired record now, at full speed, from the shards that may hold one; returns
/// how many it removed. For when the store is full: the sweeper does the same work paced.
pub(super) fn reclaim_due(state: &State, now: SystemTime) -> u64 {
    DueShards::new(state, now).sum()
}

/// The shards that may hold a record expired at `now`, each swept as the walk reaches it: the
/// number of records removed from each. Shards with nothing expired are skipped unread.
struct DueShards<'a> {
    state: &'a State,
    now: Nanos,
    next: usize,
}

impl<'a> DueShards<'a> {
    fn new(state: &'a State, now: SystemTime) -> Self {
        Self {
            state,
            now: Nanos::from(now),
            next: 0,
        }
    }
}

impl Iterator for DueShards<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.next < SHARDS {
            let shard = self.next;
            self.next += 1;
            if self.state.map.is_due(shard, self.now) {
                return Some(sweep_shard(self.state, shard, self.now));
            }
        }
        None
    }
}

/// Removes the records of one shard that expired by `now`; returns how many.
fn sweep_shard(state: &State, shard: usize, now: Nanos) -> u64 {
    let removed = state.map.retain_shard(shard, |record| {
        let live = record.is_live(now);
        if !live {
            state.owners.replace(Some(record), None);
        }
        live
    });
    state.stored.fetch_sub(removed, Ordering::Relaxed);
    state.expired_removed.fetch_add(removed, Ordering::Relaxed);
    removed
}

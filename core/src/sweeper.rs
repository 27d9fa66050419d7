//! The background task that removes expired records from a [`MemorySessionStore`](crate::MemorySessionStore).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::memory::Inner;
use crate::table::SHARDS;

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
pub(crate) async fn run(store: Weak<Inner>, stop: Arc<Notify>, first: Instant, every: Duration) {
    let mut ticks = interval_at(first, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.notified() => return,
        }
        let Some(inner) = store.upgrade() else { return };
        let started = std::time::Instant::now();
        let (removed, busy) = sweep_due(&inner, inner.now()).await;
        inner.count_sweep();
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
/// spent working. Shards with nothing expired are skipped unread.
pub(crate) async fn sweep_due(inner: &Inner, now: std::time::SystemTime) -> (u64, Duration) {
    let started = std::time::Instant::now();
    let (mut removed, mut busy) = (0, Duration::ZERO);
    for shard in 0..SHARDS {
        if !inner.is_due(shard, now) {
            continue;
        }
        let step = std::time::Instant::now();
        removed += inner.sweep_shard(shard, now);
        busy += step.elapsed();
        if busy > started.elapsed().mul_f64(SHARE) {
            tokio::time::sleep(PAUSE).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    (removed, busy)
}

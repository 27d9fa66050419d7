//! The background task that removes expired records from a [`MemorySessionStore`](crate::MemorySessionStore).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::memory::Inner;
use crate::table::SHARDS;

/// Sweeps the store at `first` and then every `every` until the store is dropped.
///
/// The task holds only a weak reference between sweeps, so it never keeps a store alive; the
/// store's drop wakes it through `stop`.
///
/// A sweep cleans one shard at a time (a few hundred records with a million stored) and yields
/// to the runtime after each, so requests are served between shards and never wait behind more
/// than one shard's worth of work. It runs on the runtime's own workers rather than on a
/// separate thread: a separate thread would compete with them for the CPU (and, freeing what
/// they allocated, for the allocator) during the whole sweep.
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
        let now = inner.now();
        let mut removed = 0;
        for shard in 0..SHARDS {
            removed += inner.sweep_shard(shard, now);
            tokio::task::yield_now().await;
        }
        inner.count_sweep();
        tracing::debug!(
            removed,
            elapsed_ms = started.elapsed().as_millis(),
            "swept expired sessions"
        );
    }
}

//! The background task that removes expired records from a [`MemorySessionStore`](crate::MemorySessionStore).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{MissedTickBehavior, interval_at};

use crate::memory::Inner;

/// Sweeps the store every `every` until the store is dropped.
///
/// The task holds only a weak reference, so it never keeps a store alive; the store's drop
/// wakes it through `stop`. Each sweep runs on a blocking thread, because a sweep of a large store
/// takes milliseconds and must not hold up the async workers that serve requests.
pub(crate) async fn run(store: Weak<Inner>, stop: Arc<Notify>, every: Duration) {
    let mut ticks = interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.notified() => return,
        }
        let Some(inner) = store.upgrade() else { return };
        let started = std::time::Instant::now();
        let swept = tokio::task::spawn_blocking(move || inner.sweep()).await;
        match swept {
            Ok(removed) => tracing::debug!(
                removed,
                elapsed_ms = started.elapsed().as_millis(),
                "swept expired sessions"
            ),
            Err(err) => tracing::error!(%err, "session sweep failed"),
        }
    }
}

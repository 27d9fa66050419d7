//! The relay: on a Redis backend, every daemon's trackers hear every daemon's changes.
//!
//! The store's scripts publish each change on a Redis pub/sub channel in the same script that
//! applies it (see `gonest_session_redis::Changes`); each daemon subscribes and feeds what it
//! receives to its own trackers. Redis pub/sub does not promise delivery, so the relay proves
//! it: every [`HEARTBEAT_INTERVAL`] it publishes a heartbeat through the store's own connection
//! (where the writes go) and waits for it on the subscription. A heartbeat that comes back shows
//! that every change applied before it was sent has been fed, and only then is a heartbeat
//! passed on to the trackers; clients stop serving from their caches when heartbeats stop. A
//! subscription that ends, or a heartbeat not back within twice the interval, is a lost relay:
//! every tracker ends (clients flush and serve uncached), new ones are refused, and the relay
//! subscribes again.

use std::sync::Weak;
use std::time::Duration;

use gonest_session_redis::{RedisSessionStore, StoreChange};
use tokio::time::Instant;

use super::{Change, Feed, HEARTBEAT_INTERVAL};

/// The slowest heartbeat passed on to trackers, sent to received. One slower still proves the
/// relay works but not that it is current; the next one may be on time.
const MAX_ECHO: Duration = Duration::from_millis(100);

/// How long a relay waits before subscribing again, at first and at most.
const RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Relays `store`'s changes to `feed` until the feed is dropped (the daemon stopped).
pub(crate) async fn run(store: RedisSessionStore, feed: Weak<Feed>) {
    let start = Instant::now();
    let mut retry = RETRY;
    let mut failing = false;
    loop {
        let Some(token) = feed.upgrade().map(|feed| feed.epoch().to_owned()) else {
            return;
        };
        match store.subscribe_changes().await {
            Ok(changes) => {
                retry = RETRY;
                if failing {
                    tracing::info!("subscribed to the store's changes again");
                    failing = false;
                }
                let lost = follow(&store, changes, &feed, &token, start).await;
                let Some(feed) = feed.upgrade() else { return };
                feed.relay_lost();
                tracing::warn!(
                    reason = lost,
                    "lost the store's changes: near caches of this daemon's clients are flushed \
                     until they are received again"
                );
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "cannot subscribe to the store's changes; retrying");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Feeds one subscription's changes until it is lost; returns why.
async fn follow(
    store: &RedisSessionStore,
    mut changes: gonest_session_redis::Changes,
    feed: &Weak<Feed>,
    token: &str,
    start: Instant,
) -> &'static str {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the newest heartbeat that came back was sent.
    let mut heard = Instant::now();
    let ours = format!("{token} ");
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if heard.elapsed() > 2 * HEARTBEAT_INTERVAL {
                    return "no heartbeat came back in time";
                }
                let sent = start.elapsed().as_micros();
                let store = store.clone();
                let heartbeat = format!("{ours}{sent}");
                tokio::spawn(async move {
                    // A heartbeat lost is a heartbeat that does not come back.
                    let _ = store.publish_heartbeat(&heartbeat).await;
                });
            }
            change = changes.next() => {
                let Some(feed) = feed.upgrade() else { return "the daemon stopped" };
                match change {
                    None => return "the subscription ended",
                    Some(StoreChange::Session { id, version }) => {
                        if feed.listened() {
                            feed.publish(Change::Session(id.into(), version));
                        }
                    }
                    Some(StoreChange::Heartbeat(heartbeat)) => {
                        let Some(sent) = heartbeat
                            .strip_prefix(&ours)
                            .and_then(|micros| micros.parse::<u64>().ok())
                        else {
                            // Another daemon's.
                            continue;
                        };
                        let sent = start + Duration::from_micros(sent);
                        heard = heard.max(sent);
                        if !feed.live() {
                            feed.relay_live();
                        }
                        if sent.elapsed() <= MAX_ECHO && feed.listened() {
                            feed.publish(Change::Heartbeat);
                        }
                    }
                }
            }
        }
    }
}

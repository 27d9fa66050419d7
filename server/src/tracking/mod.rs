//! `Track`: the invalidations that keep clients' near caches true.
//!
//! Every change the engine applies is published on one [`Feed`] (on Redis, every change any
//! daemon applies, relayed from Redis by [`relay`]); every open `Track` stream receives all of
//! them (broadcast, as Redis's `CLIENT TRACKING … BCAST`): the daemon
//! does not remember which client read which session. A change costs one message in a shared
//! ring of [`FEED_CAPACITY`], whatever the number of trackers, and nothing at all while none is
//! open. A tracker that falls more than the ring behind (a client that does not read its
//! stream) is sent a flush instead of what it missed, so what a slow tracker costs the daemon is
//! bounded by the ring, not by how far behind it is.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use gonest_session_proto::{duration_to_pb, pb, timestamp_to_pb};
use tokio::sync::{broadcast, watch};
use tonic::Status;

pub(crate) mod relay;

/// How often a `Track` stream carries a message when nothing changes. A client that hears
/// nothing for twice this stops serving from its cache, so it also bounds how long a cut-off
/// client can serve a session changed meanwhile.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Changes kept for trackers that have not taken them yet; one behind by more gets a flush.
pub(crate) const FEED_CAPACITY: usize = 16 * 1024;

/// The most invalidations gathered into one message (one DestroyByOwner may add more).
const BATCH: usize = 256;

/// The most sessions one DestroyByOwner invalidates one by one; more is a flush.
const MAX_GONE: usize = 4 * BATCH;

/// One change, as trackers hear of it.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// The session with this id changed; its version after the change (0: gone, or kept).
    Session(Arc<str>, u64),
    /// These sessions are gone (DestroyByOwner).
    Gone(Arc<[String]>),
    /// Every change made before this one has been published (a relayed feed's heartbeat: see
    /// [`relay`]).
    Heartbeat,
}

/// Whether a relayed feed hears every change now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Relay {
    live: bool,
    /// Counts the times the relay was lost: a tracker opened before a loss ends, even if the
    /// relay is live again by the time it looks.
    losses: u64,
}

/// Where the memory engine publishes its changes, and `Track` streams take them from.
#[derive(Debug)]
pub(crate) struct Feed {
    changes: broadcast::Sender<Change>,
    /// This daemon process, as trackers tell restarts apart.
    epoch: String,
    /// Invalidations sent to trackers (one per tracker per change), for the metrics.
    sent: AtomicU64,
    /// `Track` streams open: counted here rather than asked of the channel, whose count takes a
    /// lock, on every write.
    trackers: AtomicUsize,
    /// Whether the changes come from elsewhere ([`relay`]): then heartbeats come with them, and
    /// trackers end when the relay is lost.
    relayed: bool,
    relay: watch::Sender<Relay>,
}

impl Feed {
    /// A feed of this daemon's own changes: it hears all of them, and its trackers send a
    /// heartbeat every [`HEARTBEAT_INTERVAL`].
    pub(crate) fn new() -> Self {
        Self::with(false, true)
    }

    /// A feed of changes [`relay`] brings from a store shared with other daemons: trackers
    /// are refused until [`Self::relay_live`], heartbeats are relayed with the changes (so a
    /// client hears one only while changes reach it), and a lost relay ends every tracker.
    pub(crate) fn relayed() -> Self {
        Self::with(true, false)
    }

    fn with(relayed: bool, live: bool) -> Self {
        let (changes, _) = broadcast::channel(FEED_CAPACITY);
        Self {
            changes,
            epoch: epoch(),
            sent: AtomicU64::new(0),
            trackers: AtomicUsize::new(0),
            relayed,
            relay: watch::Sender::new(Relay { live, losses: 0 }),
        }
    }

    /// The relay hears every change from now on.
    pub(crate) fn relay_live(&self) {
        self.relay.send_modify(|relay| relay.live = true);
    }

    /// The relay may have missed changes: every tracker ends, and new ones are refused until
    /// it is live again.
    pub(crate) fn relay_lost(&self) {
        self.relay.send_modify(|relay| {
            if relay.live {
                relay.live = false;
                relay.losses += 1;
            }
        });
    }

    /// Whether the feed hears every change now.
    pub(crate) fn live(&self) -> bool {
        self.relay.borrow().live
    }

    /// This daemon process's epoch.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Whether any tracker listens: when none does, a change is not published. A writer asks
    /// after its change is applied, and a tracker is counted before its first message: a
    /// tracker counted too late to hear of a change started after it, so its client reads the
    /// change itself.
    pub(crate) fn listened(&self) -> bool {
        self.trackers.load(Ordering::SeqCst) > 0
    }

    /// Tells every tracker of `change`.
    pub(crate) fn publish(&self, change: Change) {
        // No receiver: nobody to tell.
        let _ = self.changes.send(change);
    }

    /// `Track` streams open now.
    pub(crate) fn trackers(&self) -> usize {
        self.trackers.load(Ordering::Relaxed)
    }

    /// Invalidations sent so far, counted once per tracker.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The messages of one `Track` stream, until the daemon stops, the client goes or (on a
    /// relayed feed) the relay is lost. `UNAVAILABLE` while a relayed feed is not live.
    pub(crate) fn stream(
        self: &Arc<Self>,
        stopping: watch::Receiver<bool>,
    ) -> Result<TrackStream, Status> {
        let receiver = self.changes.subscribe();
        self.trackers.fetch_add(1, Ordering::SeqCst);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Read after subscribing: live now, every change from here on reaches `receiver`.
        let relay = self.relay.subscribe();
        let opened = *relay.borrow();
        let state = Tracker {
            feed: self.clone(),
            receiver,
            heartbeat,
            stopping,
            relay,
            opened,
            started: false,
            ended: false,
        };
        if !opened.live {
            return Err(relay_down());
        }
        Ok(Box::pin(futures_util::stream::unfold(state, Tracker::next)))
    }
}

/// The response stream of `Track`.
pub(crate) type TrackStream = Pin<Box<dyn Stream<Item = Result<pb::TrackResponse, Status>> + Send>>;

/// One open `Track` stream.
struct Tracker {
    feed: Arc<Feed>,
    receiver: broadcast::Receiver<Change>,
    heartbeat: tokio::time::Interval,
    stopping: watch::Receiver<bool>,
    relay: watch::Receiver<Relay>,
    /// The relay when the tracker opened; any other means changes may have been missed.
    opened: Relay,
    /// Whether the first message (epoch and interval) went out.
    started: bool,
    /// Whether the stream ended with an error, sent already.
    ended: bool,
}

/// Why a relayed feed's tracker is refused or ended.
fn relay_down() -> Status {
    Status::unavailable(
        "this daemon is not receiving every change from its Redis now; serve uncached and \
         open Track again later",
    )
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.feed.trackers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tracker {
    async fn next(mut self) -> Option<(Result<pb::TrackResponse, Status>, Self)> {
        if self.ended {
            return None;
        }
        let mut message = pb::TrackResponse::default();
        if !self.started {
            // Subscribed already: every change after this message reaches the client.
            self.started = true;
            message.epoch = self.feed.epoch.clone();
            message.heartbeat_interval = Some(duration_to_pb(HEARTBEAT_INTERVAL));
            self.heartbeat.reset();
        } else {
            let opened = self.opened;
            let received = tokio::select! {
                biased;
                _ = self.stopping.wait_for(|stop| *stop) => return None,
                _ = self.relay.wait_for(|relay| *relay != opened) => Err(()),
                received = self.receiver.recv() => Ok(Some(received)),
                _ = self.heartbeat.tick(), if !self.feed.relayed => Ok(None),
            };
            let Ok(received) = received else {
                self.ended = true;
                return Some((Err(relay_down()), self));
            };
            if let Some(received) = received {
                if !self.take(received, &mut message) {
                    return None;
                }
                // Whatever else is waiting goes in the same message.
                while message.invalidations.len() < BATCH && !message.flush {
                    let received = self.receiver.try_recv();
                    if matches!(received, Err(broadcast::error::TryRecvError::Empty)) {
                        break;
                    }
                    if !self.take(received.map_err(try_to_recv), &mut message) {
                        return None;
                    }
                }
            }
        }
        message.now = Some(timestamp_to_pb(SystemTime::now()));
        let count = u64::try_from(message.invalidations.len()).unwrap_or(u64::MAX);
        self.feed.sent.fetch_add(count, Ordering::Relaxed);
        Some((Ok(message), self))
    }

    /// Adds what was received to `message`; `false` when the feed is gone.
    fn take(
        &mut self,
        received: Result<Change, broadcast::error::RecvError>,
        message: &mut pb::TrackResponse,
    ) -> bool {
        match received {
            Ok(Change::Session(id, version)) => message.invalidations.push(pb::Invalidation {
                id: id.to_string(),
                version,
            }),
            // More than a message should carry: a flush says as much in one flag.
            Ok(Change::Gone(ids)) if ids.len() > MAX_GONE => {
                message.invalidations.clear();
                message.flush = true;
            }
            Ok(Change::Gone(ids)) => {
                message
                    .invalidations
                    .extend(ids.iter().map(|id| pb::Invalidation {
                        id: id.clone(),
                        version: 0,
                    }));
            }
            // Missed changes: the client cannot know which of its sessions they touched. What
            // is still queued is covered by the flush; go on from the newest change.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                message.invalidations.clear();
                message.flush = true;
                self.receiver = self.receiver.resubscribe();
            }
            Ok(Change::Heartbeat) => {}
            Err(broadcast::error::RecvError::Closed) => return false,
        }
        true
    }
}

fn try_to_recv(err: broadcast::error::TryRecvError) -> broadcast::error::RecvError {
    match err {
        broadcast::error::TryRecvError::Lagged(missed) => {
            broadcast::error::RecvError::Lagged(missed)
        }
        _ => broadcast::error::RecvError::Closed,
    }
}

/// A string no other start of a daemon gives: the time and the process id.
fn epoch() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}-{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tracker_hears_each_change_once_a_flush_when_it_fell_behind_and_heartbeats() {
        let feed = Arc::new(Feed::new());
        let (stop, stopping) = watch::channel(false);
        assert!(!feed.listened());
        let mut stream = feed.stream(stopping).unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(!first.epoch.is_empty());
        assert!(first.heartbeat_interval.is_some());
        assert!(feed.listened());

        feed.publish(Change::Session("a".into(), 2));
        feed.publish(Change::Session("b".into(), 0));
        let message = stream.next().await.unwrap().unwrap();
        let ids: Vec<_> = message
            .invalidations
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"], "both in one message");
        assert_eq!(message.invalidations[0].version, 2);

        // Nothing changes: a heartbeat after the interval.
        let message = stream.next().await.unwrap().unwrap();
        assert!(message.invalidations.is_empty() && !message.flush);

        for n in 0..FEED_CAPACITY + 10 {
            feed.publish(Change::Session(format!("s{n}").into(), 1));
        }
        let message = stream.next().await.unwrap().unwrap();
        assert!(message.flush, "fell behind: a flush instead");
        assert!(message.invalidations.is_empty());

        feed.publish(Change::Gone(vec!["x".to_owned(), "y".to_owned()].into()));
        let message = stream.next().await.unwrap().unwrap();
        let ids: Vec<_> = message
            .invalidations
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["x", "y"]);
        let many: Vec<String> = (0..=MAX_GONE).map(|n| format!("g{n}")).collect();
        feed.publish(Change::Gone(many.into()));
        assert!(
            stream.next().await.unwrap().unwrap().flush,
            "too many: a flush"
        );

        stop.send(true).unwrap();
        assert!(stream.next().await.is_none(), "ends when the daemon stops");
        drop(stream);
        assert!(!feed.listened());
    }
}

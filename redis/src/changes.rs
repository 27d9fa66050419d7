//! What changed, for the daemons that share one Redis: every write the store's scripts apply
//! is published, in the same script, on one pub/sub channel, so that each daemon can tell its
//! clients' near caches (see [`RedisSessionStoreBuilder::publish_changes`]).
//!
//! A message is `VERSION ID`: the session `ID` changed, and its version is now `VERSION`
//! (0: destroyed, or its expiry moved). A message `h TOKEN` is a heartbeat some subscriber
//! published through the store ([`RedisSessionStore::publish_heartbeat`]).
//!
//! The publish is part of the write's script, so a write and its message cannot part: a
//! subscriber connected when the write is applied receives the message, after every message
//! published before it. Redis pub/sub keeps nothing for a subscriber that is not connected, and
//! drops one whose output buffer overflows: both end the subscription here
//! ([`Changes::next`] returns `None`), and what was published meanwhile is lost to it. A
//! subscription that stays open but stops delivering (a network that drops packets silently)
//! is found by a heartbeat published through the store that does not come back.
//!
//! [`RedisSessionStoreBuilder::publish_changes`]: crate::RedisSessionStoreBuilder::publish_changes

use futures_util::StreamExt;
use gonest_session_core::{Result, StoreError};

use crate::{Connection, RedisSessionStore};

/// Lua, for the scripts that change sessions: `announce(channel, version, id)` publishes
/// `version id` on `channel`, unless `channel` is empty (the store does not publish changes).
pub(crate) const ANNOUNCE: &str = r"
local function announce(channel, version, id)
  if channel ~= '' then
    redis.call('PUBLISH', channel, string.format('%d %s', version, id))
  end
end
";

/// Destroys a session: `KEYS[1]` the key; `ARGV[1]` the channel; `ARGV[2]` the id. Returns
/// how many keys it removed (0 or 1), and announces a removal.
pub(crate) const DESTROY: &str = r"
local removed = redis.call('DEL', KEYS[1])
if removed > 0 then
  announce(ARGV[1], 0, ARGV[2])
end
return removed
";

/// One change, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// The session `id` changed; `version` is its version now, 0 if it is gone or only its
    /// expiry moved.
    Session {
        /// The session's id.
        id: String,
        /// Its version after the change (0: gone, or kept).
        version: u64,
    },
    /// A heartbeat published with [`RedisSessionStore::publish_heartbeat`], with its token.
    Heartbeat(String),
}

impl StoreChange {
    /// Reads a published message; `None` for one that is not a change or a heartbeat (the
    /// channel is Redis's, and anyone allowed to publish on it may).
    pub fn parse(message: &[u8]) -> Option<Self> {
        let message = std::str::from_utf8(message).ok()?;
        let (head, rest) = message.split_once(' ')?;
        if head == "h" {
            return Some(Self::Heartbeat(rest.to_owned()));
        }
        let version = head.parse().ok()?;
        gonest_session_core::validate_id(rest).ok()?;
        Some(Self::Session {
            id: rest.to_owned(),
            version,
        })
    }
}

/// A subscription to a store's changes; from [`RedisSessionStore::subscribe_changes`].
pub struct Changes {
    subscription: redis::aio::PubSub,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Changes {
    /// The next change, in the order Redis applied them; `None` once the subscription is lost
    /// (what is published from then on does not reach it). Messages on the channel that are
    /// not changes are passed over.
    pub async fn next(&mut self) -> Option<StoreChange> {
        loop {
            let message = self.subscription.on_message().next().await?;
            if let Some(change) = StoreChange::parse(message.get_payload_bytes()) {
                return Some(change);
            }
        }
    }
}

impl RedisSessionStore {
    /// Whether the store publishes every change (see
    /// [`publish_changes`](crate::RedisSessionStoreBuilder::publish_changes)); never on a Redis
    /// Cluster.
    pub fn publishes_changes(&self) -> bool {
        !self.inner.changes.is_empty()
    }

    /// The channel changes are published on: the session prefix followed by `changes`.
    pub(crate) fn changes_channel(prefix: &str) -> String {
        format!("{prefix}changes")
    }

    /// Subscribes to the store's changes, on a connection of its own to the Redis the store
    /// writes to (for Sentinel, the master as the sentinels name it now). Every change applied
    /// after this returns is received, until the subscription is lost.
    pub async fn subscribe_changes(&self) -> Result<Changes> {
        if !self.publishes_changes() {
            return Err(StoreError::Unsupported(
                "this store does not publish its changes".into(),
            ));
        }
        let subscribing = async {
            let client = match &self.connection {
                Connection::Sentinel(sentinel) => sentinel.master_client().await?,
                _ => redis::Client::open(self.inner.url.as_str())?,
            };
            let mut subscription = client.get_async_pubsub().await?;
            subscription.subscribe(&self.inner.changes).await?;
            Ok(Changes { subscription })
        };
        self.run(subscribing).await
    }

    /// Publishes a heartbeat `token` on the changes' channel, through the store's connection:
    /// received by a subscriber, it shows that every change applied before it was published has
    /// reached that subscriber.
    pub async fn publish_heartbeat(&self, token: &str) -> Result<()> {
        let mut connection = self.connection.clone();
        self.run(
            redis::cmd("PUBLISH")
                .arg(&self.inner.changes)
                .arg(format!("h {token}"))
                .query_async(&mut connection),
        )
        .await
        .map(|_: u64| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_changes_or_heartbeats_and_anything_else_is_passed_over() {
        assert_eq!(
            StoreChange::parse(b"7 abc"),
            Some(StoreChange::Session {
                id: "abc".into(),
                version: 7
            })
        );
        assert_eq!(
            StoreChange::parse(b"h daemon 12"),
            Some(StoreChange::Heartbeat("daemon 12".into()))
        );
        for junk in [
            &b""[..],
            b"7",
            b"x abc",
            b"-1 abc",
            b"7 has space",
            b"7 ",
            b"\xff abc",
        ] {
            assert_eq!(StoreChange::parse(junk), None, "{junk:?}");
        }
    }
}

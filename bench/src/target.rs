//! The stores under test, behind one interface.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Bytes, Save, SessionData, SessionStore, StoreExpiry};
use gonest_session_redis::RedisSessionStore;
use redis::aio::MultiplexedConnection;

use crate::cli::Mix;

/// How long a saved session lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lifetime {
    /// From the save.
    Ttl(Duration),
    /// Until this moment, whenever it was saved.
    Until(SystemTime),
}

/// A store the load runs against.
#[derive(Clone)]
pub(crate) enum Target {
    /// gonest-sessiond through `RemoteSessionStore`.
    Sessiond(RemoteSessionStore),
    /// Redis through one multiplexed connection shared by every caller.
    Redis(MultiplexedConnection),
    /// Redis through `RedisSessionStore`, as an app uses it without the daemon.
    RedisStore(RedisSessionStore),
}

impl Target {
    pub(crate) async fn sessiond(
        url: &str,
        streams: usize,
        near_cache: usize,
    ) -> anyhow::Result<Self> {
        let store = RemoteSessionStore::builder(url)
            .streams(streams)
            .timeout(Duration::from_secs(10))
            .near_cache(near_cache)
            .connect()
            .await
            .with_context(|| format!("cannot reach gonest-sessiond at {url}"))?;
        Ok(Self::Sessiond(store))
    }

    pub(crate) async fn redis(url: &str) -> anyhow::Result<Self> {
        let hint = || {
            format!(
                "cannot reach Redis at {url}; to start one: apt-get install redis-server && \
                 redis-server --port 6379 --save ''"
            )
        };
        let client = redis::Client::open(url).with_context(hint)?;
        let connection = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(hint)?;
        Ok(Self::Redis(connection))
    }

    pub(crate) async fn redis_store(url: &str) -> anyhow::Result<Self> {
        let store = RedisSessionStore::builder(url)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("cannot reach Redis at {url} for RedisSessionStore"))?;
        Ok(Self::RedisStore(store))
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Sessiond(_) => "sessiond",
            Self::Redis(_) => "redis",
            Self::RedisStore(_) => "redis-store",
        }
    }

    /// The target as a `SessionStore`, unless it is raw Redis.
    fn store(&self) -> Option<&dyn SessionStore> {
        match self {
            Self::Sessiond(store) => Some(store),
            Self::RedisStore(store) => Some(store),
            Self::Redis(_) => None,
        }
    }

    /// Reads one session; `Ok(true)` if it was there.
    pub(crate) async fn get(&mut self, id: &str) -> anyhow::Result<bool> {
        if let Some(store) = self.store() {
            return Ok(store.get(id).await?.is_some());
        }
        match self {
            Self::Sessiond(_) | Self::RedisStore(_) => unreachable!("a SessionStore"),
            Self::Redis(connection) => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(redis_key(id))
                    .query_async(connection)
                    .await?;
                Ok(value.is_some())
            }
        }
    }

    /// Reads session `id`, or writes `value` to it to live `ttl`.
    pub(crate) async fn get_or_save(
        &mut self,
        id: &str,
        is_get: bool,
        value: &Bytes,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        if is_get {
            self.get(id).await.map(drop)
        } else {
            self.save(id, value, ttl).await
        }
    }

    /// Writes one session whose one value is `value`, living `ttl`.
    pub(crate) async fn save(
        &mut self,
        id: &str,
        value: &Bytes,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        self.save_for(id, value, Lifetime::Ttl(ttl)).await
    }

    /// Writes one session whose one value is `value`, living as `lifetime` says.
    pub(crate) async fn save_for(
        &mut self,
        id: &str,
        value: &Bytes,
        lifetime: Lifetime,
    ) -> anyhow::Result<()> {
        if let Some(store) = self.store() {
            let mut data = SessionData::with_capacity(1);
            // A shared value, as an app holding its session's values hands them over.
            data.insert("data".to_owned(), value.clone());
            let mut save = Save::new(id, data);
            save.expiry = match lifetime {
                Lifetime::Ttl(ttl) => StoreExpiry::Ttl(ttl),
                Lifetime::Until(at) => StoreExpiry::At(at),
            };
            store.save(save).await?;
            return Ok(());
        }
        match self {
            Self::Sessiond(_) | Self::RedisStore(_) => unreachable!("a SessionStore"),
            Self::Redis(connection) => {
                let (option, millis) = match lifetime {
                    Lifetime::Ttl(ttl) => ("PX", ttl.as_millis()),
                    Lifetime::Until(at) => (
                        "PXAT",
                        at.duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis(),
                    ),
                };
                let () = redis::cmd("SET")
                    .arg(redis_key(id))
                    .arg(&value[..])
                    .arg(option)
                    .arg(u64::try_from(millis).unwrap_or(u64::MAX))
                    .query_async(connection)
                    .await?;
            }
        }
        Ok(())
    }

    /// The server's resident memory in bytes as it reports it: `Stats.resident_memory_bytes` of
    /// the daemon (read from /proc when asked), or Redis's `used_memory_rss`. Redis samples that
    /// figure in its cron, every 100 ms at its default `hz`, and `INFO` gives the last sample: it
    /// is read after 250 ms, so that a sample taken after the last write is given, not one
    /// taken while the bench was still filling.
    pub(crate) async fn resident_bytes(&mut self) -> anyhow::Result<u64> {
        match self {
            Self::Sessiond(store) => Ok(store.stats().await?.resident_memory_bytes.unwrap_or(0)),
            Self::RedisStore(_) => anyhow::bail!("measure Redis's memory with --redis"),
            Self::Redis(connection) => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(connection)
                    .await?;
                info.lines()
                    .find_map(|line| line.strip_prefix("used_memory_rss:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("Redis INFO has no used_memory_rss")
            }
        }
    }
}

/// The operations one caller makes: keys and gets or saves spread evenly without a random number
/// generator, by multiplicative hashing of a per-caller counter that moves by a per-caller odd
/// stride (so callers do not move in lockstep).
pub(crate) struct Walk {
    n: usize,
    stride: usize,
    keys: usize,
    get_share: usize,
}

impl Walk {
    pub(crate) fn new(client: usize, keys: usize, mix: Mix) -> Self {
        Self {
            n: client,
            stride: client.wrapping_mul(2).wrapping_add(1),
            keys,
            get_share: usize::from(mix.get),
        }
    }

    /// The next operation: its session id, and whether it is a get (otherwise a save). The
    /// operation is drawn from other bits of the counter than the key, so every key is read
    /// and saved in the mix's proportions (drawn from the same residue, a key was always one or
    /// the other, and a near cache never saw its reads invalidated).
    pub(crate) fn next_op(&mut self) -> (String, bool) {
        self.n = self.n.wrapping_add(self.stride);
        let key = session_id(self.n.wrapping_mul(2_654_435_761) % self.keys);
        let draw = (self.n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        let is_get = (draw % 100) < self.get_share as u64;
        (key, is_get)
    }
}

/// Sessions live under `session:` in Redis, as Redis session stores keep them.
fn redis_key(id: &str) -> String {
    format!("session:{id}")
}

/// The id of the bench's session number `n`.
pub(crate) fn session_id(n: usize) -> String {
    format!("bench-{n:09}")
}

/// Connects to the targets named on the command line: the daemon, then `RedisSessionStore`,
/// then raw Redis.
pub(crate) async fn connect(
    sessiond: Option<&str>,
    redis_store: Option<&str>,
    redis: Option<&str>,
    streams: usize,
    near_cache: usize,
) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    if let Some(url) = sessiond {
        targets.push(Target::sessiond(url, streams, near_cache).await?);
    }
    if let Some(url) = redis_store {
        targets.push(Target::redis_store(url).await?);
    }
    if let Some(url) = redis {
        targets.push(Target::redis(url).await?);
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "name a target: --sessiond URL and/or --redis URL"
    );
    Ok(targets)
}

/// The id of the bench's session number `n` that is stored to expire, to be swept (each
/// round of `sweep` stores them again once the sweep has removed them).
pub(crate) fn expiring_id(n: usize) -> String {
    format!("expiring-{n:09}")
}

/// Stores sessions `id(0)..id(count)`, each with `value` and `lifetime`, from `workers` concurrent
/// callers.
pub(crate) async fn fill(
    target: &Target,
    count: usize,
    id: fn(usize) -> String,
    value: &Bytes,
    lifetime: Lifetime,
    workers: usize,
) -> anyhow::Result<()> {
    let workers = workers.max(1);
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let mut target = target.clone();
            let value = value.clone();
            tokio::spawn(async move {
                for n in (worker..count).step_by(workers) {
                    target.save_for(&id(n), &value, lifetime).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_reads_and_saves_every_key_in_the_mix_s_proportions() {
        const KEYS: usize = 1000;
        let mut seen = std::collections::HashMap::<String, (u32, u32)>::new();
        let mut gets = 0;
        for client in 0..50 {
            let mut walk = Walk::new(client, KEYS, crate::cli::Mix { get: 90 });
            for _ in 0..2000 {
                let (key, is_get) = walk.next_op();
                let counts = seen.entry(key).or_default();
                if is_get {
                    counts.0 += 1;
                    gets += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
        let share = f64::from(gets) / 100_000.0;
        assert!((0.88..0.92).contains(&share), "{share}");
        assert_eq!(seen.len(), KEYS);
        let both = seen.values().filter(|(g, s)| *g > 0 && *s > 0).count();
        assert!(both > KEYS * 9 / 10, "keys both read and saved: {both}");
    }
}

//! The two stores under test, behind one interface.

use std::time::Duration;

use anyhow::Context;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore};
use redis::aio::MultiplexedConnection;

/// A store the load runs against.
#[derive(Clone)]
pub(crate) enum Target {
    /// gonest-sessiond through `RemoteSessionStore`.
    Sessiond(RemoteSessionStore),
    /// Redis through one multiplexed connection shared by every caller.
    Redis(MultiplexedConnection),
}

impl Target {
    pub(crate) async fn sessiond(url: &str, streams: usize) -> anyhow::Result<Self> {
        let store = RemoteSessionStore::builder(url)
            .streams(streams)
            .timeout(Duration::from_secs(10))
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

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Sessiond(_) => "sessiond",
            Self::Redis(_) => "redis",
        }
    }

    /// Reads one session; `Ok(true)` if it was there.
    pub(crate) async fn get(&mut self, id: &str) -> anyhow::Result<bool> {
        match self {
            Self::Sessiond(store) => Ok(store.get(id).await?.is_some()),
            Self::Redis(connection) => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(redis_key(id))
                    .query_async(connection)
                    .await?;
                Ok(value.is_some())
            }
        }
    }

    /// Writes one session whose one value is `value`, living `ttl`.
    pub(crate) async fn save(
        &mut self,
        id: &str,
        value: &[u8],
        ttl: Duration,
    ) -> anyhow::Result<()> {
        match self {
            Self::Sessiond(store) => {
                let mut data = SessionData::with_capacity(1);
                data.insert("data".to_owned(), value.to_vec());
                store.save(Save::new(id, data).ttl(ttl)).await?;
            }
            Self::Redis(connection) => {
                let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let () = redis::cmd("SET")
                    .arg(redis_key(id))
                    .arg(value)
                    .arg("PX")
                    .arg(millis)
                    .query_async(connection)
                    .await?;
            }
        }
        Ok(())
    }

    /// The server's resident memory in bytes: `Stats.resident_memory_bytes` of the daemon, or
    /// Redis's `used_memory_rss`.
    pub(crate) async fn resident_bytes(&mut self) -> anyhow::Result<u64> {
        match self {
            Self::Sessiond(store) => Ok(store.stats().await?.resident_memory_bytes),
            Self::Redis(connection) => {
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

/// Sessions live under `session:` in Redis, as Redis session stores keep them.
fn redis_key(id: &str) -> String {
    format!("session:{id}")
}

/// The id of the bench's session number `n`.
pub(crate) fn session_id(n: usize) -> String {
    format!("bench-{n:09}")
}

/// Connects to the targets named on the command line, the daemon first.
pub(crate) async fn connect(
    sessiond: Option<&str>,
    redis: Option<&str>,
    streams: usize,
) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    if let Some(url) = sessiond {
        targets.push(Target::sessiond(url, streams).await?);
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

/// Stores sessions `0..count`, each with `value` and `ttl`, from `workers` concurrent callers.
pub(crate) async fn fill(
    target: &Target,
    count: usize,
    value: &[u8],
    ttl: Duration,
    workers: usize,
) -> anyhow::Result<()> {
    let workers = workers.max(1);
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let mut target = target.clone();
            let value = value.to_vec();
            tokio::spawn(async move {
                for n in (worker..count).step_by(workers) {
                    target.save(&session_id(n), &value, ttl).await?;
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

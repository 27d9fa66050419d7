//! `gonest-sessiond import --from-snapshot`: a memory daemon's snapshot into Redis.

use std::path::Path;

use anyhow::Context;
use gonest_session_core::{MemorySessionStore, SessionRecord};
use gonest_session_redis::RedisSessionStore;

use crate::Config;

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportCounts {
    /// Sessions written to Redis.
    pub imported: u64,
    /// Sessions Redis had already (kept: they are newer than the snapshot).
    pub already_there: u64,
    /// Sessions that had expired, in the snapshot or by now.
    pub expired: u64,
}

/// Copies the live sessions of the snapshot at `path` into the Redis at `url`, each with its
/// version, times and owner. The snapshot is checked whole (checksum, every record) before
/// anything is written.
pub async fn import_snapshot(
    path: &Path,
    url: &str,
    config: &Config,
) -> anyhow::Result<ImportCounts> {
    // A one-off command: reading the file on this thread blocks nothing else.
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read snapshot {}", path.display()))?;
    let staging = MemorySessionStore::builder()
        .max_ttl(MemorySessionStore::MAX_TTL_CAP)
        .sweep_interval(None)
        .max_sessions_per_owner(0)
        .build()?;
    let (_, expired) = staging
        .load_snapshot(&bytes)
        .with_context(|| format!("snapshot {} cannot be imported", path.display()))?;
    let mut records: Vec<SessionRecord> = Vec::new();
    staging.for_each_live(|record| records.push(record));
    let redis = RedisSessionStore::builder(url)
        .default_ttl(config.default_ttl)
        .max_ttl(config.max_ttl)
        .max_session_bytes(config.max_session_bytes)
        // Every session of the snapshot goes in, however many its owner has.
        .max_sessions_per_owner(0)
        .connect()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach redis: {err}"))?;
    let mut counts = ImportCounts {
        expired,
        ..ImportCounts::default()
    };
    for record in &records {
        match redis.restore(record).await {
            Ok(true) => counts.imported += 1,
            Ok(false) if record.expires_at <= std::time::SystemTime::now() => counts.expired += 1,
            Ok(false) => counts.already_there += 1,
            Err(err) => anyhow::bail!(
                "stopped after {} sessions: {err} (importing again is safe: sessions already \
                 in redis are kept)",
                counts.imported + counts.already_there
            ),
        }
    }
    Ok(counts)
}

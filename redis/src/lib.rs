//! [`RedisSessionStore`]: the GoNest [`SessionStore`] on Redis or Valkey, for apps that use
//! it directly.
//!
//! ```no_run
//! use gonest_session_core::{Save, SessionData, SessionStore};
//! use gonest_session_redis::RedisSessionStore;
//!
//! # async fn demo() -> Result<(), gonest_session_core::StoreError> {
//! let store = RedisSessionStore::connect("redis://127.0.0.1:6379").await?;
//! let saved = store.save(Save::new("abc123", SessionData::new()).expected_version(0)).await?;
//! assert_eq!(saved.version, 1);
//! # Ok(())
//! # }
//! ```
//!
//! It keeps the same contract as `MemorySessionStore`: an expired session does not exist,
//! versions count saves, saves are conditional on their expected version, `created_at` is kept,
//! Touch keeps the version, Destroy is idempotent, ids and sizes are checked.
//!
//! # In Redis
//! - One key per session, `PREFIX + id` (prefix `gonest:sess:` unless set), holding one binary
//!   value: the version, `created_at` and `expires_at` (milliseconds since 1970), the owner, then
//!   the data in `gonest_session_core::codec`'s form. The layout, and the Lua functions the
//!   scripts read and write it with, are in one module (`layout.rs`).
//! - A set per owner, `OWNER_PREFIX + owner` (`gonest:owner:` unless set), holding the ids of
//!   its sessions; it expires after the longest-lived of them. A save enters its id before it
//!   writes the session (so that the owner's limit holds) and again after; a clean-up that
//!   removes ids from the set reads each session again after the removal and enters the id once
//!   more if its session is live and the owner's. Whichever of a save and a clean-up comes
//!   last, a live session ends in its owner's set.
//! - Expiry is Redis's own: each key expires at its session's `expires_at` (`PXAT`), so a
//!   session past its expiry is gone for every command.
//! - Each operation touches that one key and is atomic: Get is a `GET`, Destroy a `DEL`, Save
//!   and Touch one Lua script each (compare-and-swap on the version), which also reads Redis's
//!   clock (`TIME`), so every client of one Redis computes expiries from the same clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gonest_session_core::codec::encode_data;
use gonest_session_core::{
    MAX_OWNER_LEN, Result, Save, Saved, SessionPage, SessionRecord, SessionStore, StoreError,
    StoreExpiry, StoreLimits, async_trait, data_size, validate_id, validate_owner,
};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

mod changes;
mod layout;
mod sentinel;
pub use changes::{Changes, StoreChange};
use layout::{HEADER, head_record, record, time};
use sentinel::SentinelConnection;

/// The key prefix sessions are kept under unless set otherwise.
pub const DEFAULT_PREFIX: &str = "gonest:sess:";

/// The key prefix owners' sets are kept under unless set otherwise.
pub const DEFAULT_OWNER_PREFIX: &str = "gonest:owner:";

/// How much longer than its sessions an owner's set lives, so that it never expires first.
const OWNER_SET_MARGIN_MS: u64 = 60_000;

/// Saves a session: `KEYS[1]` the key; `ARGV[1]` the expected version (empty: any);
/// `ARGV[2]` the TTL in milliseconds; `ARGV[3]` the encoded data; `ARGV[4]` the owner (empty:
/// none); `ARGV[5]` the channel changes are announced on (empty: none); `ARGV[6]` the id. Returns `{version, created_at, expires_at, previous owner}`, or
/// `{-1, current version}` (0: absent) on a conflict.
const SAVE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local current = redis.call('GET', KEYS[1])
local version, created, previous = 0, now, ''
if current then
  version, created = read_head(current)
  previous = owner_of(current) or ''
end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= version then
  return {-1, version}
end
version = version + 1
local expires = now + tonumber(ARGV[2])
redis.call('SET', KEYS[1], pack(version, created, expires, ARGV[4], ARGV[3]), 'PXAT', expires)
announce(ARGV[5], version, ARGV[6])
return {version, created, expires, previous}
";

/// Enters a session in its owner's set if the owner has room: `KEYS[1]` the set; `ARGV[1]` the
/// id; `ARGV[2]` the owner's limit (0: none); `ARGV[3]` how long the set must live at least,
/// in milliseconds. Returns 1 if the id is in the set, 0 if the owner is at its limit. One
/// script, so that racing new sessions of one owner cannot pass the limit together.
const INDEX: &str = r"
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0
    and redis.call('SCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[3], 'GT')
return 1
";

/// Destroys a session if it belongs to an owner: `KEYS[1]` the key; `ARGV[1]` the owner;
/// `ARGV[2]` the channel changes are announced on (empty: none); `ARGV[3]` the id.
/// Returns 1 if it destroyed it; 0 if there is no session, it is another owner's, or the key
/// holds no session (another type, or a value too short to be one), which is left as it is.
const DESTROY_IF_OWNED: &str = r"
local current = redis.pcall('GET', KEYS[1])
if type(current) ~= 'string' or owner_of(current) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
announce(ARGV[2], 0, ARGV[3])
return 1
";

/// Touches a session: `KEYS[1]` the key; `ARGV[1]` the TTL in milliseconds; `ARGV[2]` the
/// channel changes are announced on (empty: none); `ARGV[3]` the id. Returns
/// `{expires_at, owner}`, or nothing when there is no session.
const TOUCH: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then
  return false
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expires = now + tonumber(ARGV[1])
set_expires(KEYS[1], expires)
redis.call('PEXPIREAT', KEYS[1], expires)
announce(ARGV[2], 0, ARGV[3])
return {expires, owner_of(current) or ''}
";

/// `body`, a script that reads or writes session values, behind the layout's Lua functions
/// and `announce`.
fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!(
        "{}{}{body}",
        layout::lua_functions(),
        changes::ANNOUNCE
    ))
}

/// A [`SessionStore`] on Redis or Valkey. Cheap to clone; clones share one connection, which
/// reconnects by itself when Redis comes back.
#[derive(Clone)]
pub struct RedisSessionStore {
    connection: Connection,
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL connected to, for the subscription to changes.
    url: String,
    /// The channel every change is announced on; empty: changes are not announced.
    changes: String,
    destroy: redis::Script,
    /// Replicas each write must reach before it is acknowledged, and how long to wait for them.
    wait_replicas: Option<(u32, Duration)>,
    prefix: String,
    owner_prefix: String,
    max_sessions_per_owner: u64,
    destroy_if_owned: redis::Script,
    index: redis::Script,
    default_ttl: Duration,
    max_ttl: Duration,
    max_session_bytes: usize,
    timeout: Duration,
    save: redis::Script,
    touch: redis::Script,
}

/// A standalone Redis, a Redis Cluster whose nodes each command is routed to by its key, or the
/// master Redis Sentinel names.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
            Self::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Sentinel(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Sentinel(connection) => connection.get_db(),
        }
    }
}

/// The node URLs of a `redis+cluster://host:port[,host:port…]` URL (`rediss+cluster://` for
/// TLS), or `None` for a URL of one server.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, nodes) = url.split_once("://")?;
    let scheme = scheme.strip_suffix("+cluster")?;
    Some(
        nodes
            .trim_end_matches('/')
            .split(',')
            .map(|node| format!("{scheme}://{node}"))
            .collect(),
    )
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Options of a [`RedisSessionStore`]; from [`RedisSessionStore::builder`].
#[derive(Debug, Clone)]
pub struct RedisSessionStoreBuilder {
    publish_changes: bool,
    wait_replicas: Option<(u32, Duration)>,
    url: String,
    prefix: String,
    owner_prefix: String,
    max_sessions_per_owner: u64,
    default_ttl: Duration,
    max_ttl: Duration,
    max_session_bytes: usize,
    timeout: Duration,
}

impl RedisSessionStoreBuilder {
    /// The prefix of every session's key (default `gonest:sess:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The prefix of every owner's set of session ids (default `gonest:owner:`). Keep it apart
    /// from [`prefix`](Self::prefix): ids may contain `:`.
    pub fn owner_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.owner_prefix = prefix.into();
        self
    }

    /// Acknowledges a write only once `replicas` replicas have it too (Redis's `WAIT`, within
    /// `timeout`), so that a primary crashing and a replica taking over loses no acknowledged
    /// login. A write fewer replicas confirm in time fails as [`StoreError::Unavailable`]: it is
    /// on the primary, and may or may not survive a failover. Each write then waits for a round
    /// trip to the replicas, and writes of one store (one connection) wait in turn. Standalone
    /// primaries only (Redis Cluster routes no `WAIT` to a key's node); 0, the default, waits
    /// for none.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// The most live sessions one owner may have (default 1,000); 0 means no limit.
    pub fn max_sessions_per_owner(mut self, sessions: u64) -> Self {
        self.max_sessions_per_owner = sessions;
        self
    }

    /// The lifetime of a session saved with [`StoreExpiry::Default`] (default 24 hours).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The longest lifetime a save or touch may ask for (default 30 days).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// The largest session, keys plus values, in bytes (default 1 MiB).
    pub fn max_session_bytes(mut self, bytes: usize) -> Self {
        self.max_session_bytes = bytes;
        self
    }

    /// Publishes every change (save, touch, destroy, destroy by owner), in the script that
    /// applies it, on the pub/sub channel `PREFIX + "changes"` (default off). Daemons sharing
    /// one Redis subscribe to it ([`RedisSessionStore::subscribe_changes`]) to keep their
    /// clients' near caches true. Not on a Redis Cluster, whose pub/sub does not tell a
    /// subscriber what it missed: there [`RedisSessionStore::publishes_changes`] is `false`.
    /// A Redis ACL user needs `PUBLISH` and `SUBSCRIBE` and that channel.
    pub fn publish_changes(mut self, publish: bool) -> Self {
        self.publish_changes = publish;
        self
    }

    /// How long one operation may take before it fails with [`StoreError::Timeout`]
    /// (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, failing with [`StoreError::Unavailable`] if Redis cannot be reached.
    pub async fn connect(self) -> Result<RedisSessionStore> {
        if self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            return Err(StoreError::invalid(
                "the default ttl must be positive and at most the maximum ttl",
            ));
        }
        let unavailable = |err: redis::RedisError| {
            StoreError::Unavailable(format!("cannot connect to redis: {err}"))
        };
        let invalid =
            |err: redis::RedisError| StoreError::invalid(format!("invalid redis url: {err}"));
        let sentinel = match sentinel::parse_url(&self.url).transpose() {
            Ok(sentinel) => sentinel,
            Err(message) => {
                return Err(StoreError::invalid(format!("invalid redis url: {message}")));
            }
        };
        let connecting = async {
            if let Some(url) = sentinel {
                return Ok(Connection::Sentinel(
                    SentinelConnection::connect(url, self.timeout)
                        .await
                        .map_err(unavailable)?,
                ));
            }
            Ok(match cluster_nodes(&self.url) {
                Some(nodes) => Connection::Cluster(
                    redis::cluster::ClusterClientBuilder::new(nodes)
                        .connection_timeout(self.timeout)
                        .response_timeout(self.timeout)
                        .build()
                        .map_err(invalid)?
                        .get_async_connection()
                        .await
                        .map_err(unavailable)?,
                ),
                None => {
                    let client = redis::Client::open(self.url.as_str()).map_err(invalid)?;
                    // A lost connection is retried until Redis is back (every second at
                    // most): giving up after a few tries would leave the store failing for
                    // good once Redis returns. Calls meanwhile fail after `timeout`.
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(self.timeout)
                        .set_response_timeout(self.timeout)
                        .set_number_of_retries(usize::MAX)
                        .set_max_delay(1000);
                    Connection::Standalone(
                        ConnectionManager::new_with_config(client, config)
                            .await
                            .map_err(unavailable)?,
                    )
                }
            })
        };
        let connection = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| StoreError::Unavailable("redis did not answer in time".into()))??;
        if self.wait_replicas.is_some() && cluster_nodes(&self.url).is_some() {
            return Err(StoreError::invalid(
                "waiting for replicas works with a standalone primary, not Redis Cluster",
            ));
        }
        if self.owner_prefix == self.prefix {
            return Err(StoreError::invalid(
                "the owner prefix must differ from the session prefix",
            ));
        }
        let save = script(SAVE);
        let touch = script(TOUCH);
        let destroy_if_owned = script(DESTROY_IF_OWNED);
        let destroy = script(changes::DESTROY);
        let index = redis::Script::new(INDEX);
        let publish_changes = self.publish_changes && !matches!(connection, Connection::Cluster(_));
        // Loaded now rather than on first use: a script Redis does not know is sent again after
        // loading it, behind any command sent meanwhile on the same connection.
        let mut loading = connection.clone();
        for script in [&save, &touch, &destroy_if_owned, &destroy, &index] {
            let loaded = tokio::time::timeout(
                self.timeout,
                script.prepare_invoke().load_async(&mut loading),
            )
            .await;
            if !matches!(loaded, Ok(Ok(_))) {
                return Err(StoreError::Unavailable(
                    "redis did not load the session scripts".into(),
                ));
            }
        }
        Ok(RedisSessionStore {
            connection,
            inner: Arc::new(Inner {
                changes: if publish_changes {
                    RedisSessionStore::changes_channel(&self.prefix)
                } else {
                    String::new()
                },
                url: self.url,
                destroy,
                wait_replicas: self.wait_replicas,
                prefix: self.prefix,
                owner_prefix: self.owner_prefix,
                max_sessions_per_owner: self.max_sessions_per_owner,
                destroy_if_owned,
                index,
                default_ttl: self.default_ttl,
                max_ttl: self.max_ttl,
                max_session_bytes: self.max_session_bytes,
                timeout: self.timeout,
                save,
                touch,
            }),
        })
    }
}

impl RedisSessionStore {
    /// Connects to Redis at `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS,
    /// `unix:///path`), or to a Redis Cluster through any of its nodes
    /// (`redis+cluster://host:port[,host:port…]`), with default options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Options for a store at `url`.
    pub fn builder(url: impl Into<String>) -> RedisSessionStoreBuilder {
        RedisSessionStoreBuilder {
            url: url.into(),
            publish_changes: false,
            wait_replicas: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            owner_prefix: DEFAULT_OWNER_PREFIX.to_owned(),
            max_sessions_per_owner: 1000,
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            max_session_bytes: 1 << 20,
            timeout: Duration::from_secs(2),
        }
    }

    /// Puts a session into Redis exactly as it was, keeping its version, `created_at`,
    /// `expires_at` and owner, as when importing a memory daemon's snapshot. Only if Redis has no
    /// session with this id: one there is newer than any snapshot, and is kept. Returns whether
    /// it was put (`false`: one was there, or it had expired).
    pub async fn restore(&self, record: &SessionRecord) -> Result<bool> {
        validate_id(&record.id)?;
        let owner = record.owner.as_deref().unwrap_or("");
        if !owner.is_empty() {
            gonest_session_core::validate_stored_owner(owner)?;
        }
        let millis = |time: SystemTime| {
            time.duration_since(UNIX_EPOCH).map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
        };
        let expires = millis(record.expires_at);
        let now = millis(SystemTime::now());
        if expires <= now || expires >= layout::EXPIRES_LIMIT {
            return Ok(false);
        }
        let created = millis(record.created_at);
        let value = layout::encode(record.version, created, expires, owner, &record.data);
        if !owner.is_empty() {
            self.index(owner, &record.id, expires - now).await?;
        }
        let mut connection = self.connection.clone();
        let put: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.key(&record.id))
                    .arg(value)
                    .arg("NX")
                    .arg("PXAT")
                    .arg(expires)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(put.is_some())
    }

    /// Asks Redis for a `PONG`, within the timeout.
    pub async fn ping(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let pong: String = self
            .run(redis::cmd("PING").query_async(&mut connection))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Internal(format!(
                "redis answered {pong} to PING"
            )))
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.inner.prefix)
    }

    /// With [`wait_for_replicas`](RedisSessionStoreBuilder::wait_for_replicas), waits until
    /// enough replicas have every write made so far on this connection.
    async fn replicated(&self) -> Result<()> {
        let Some((replicas, timeout)) = self.inner.wait_replicas else {
            return Ok(());
        };
        let mut connection = self.connection.clone();
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let acked: u64 = self
            .run(
                redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(millis)
                    .query_async(&mut connection),
            )
            .await?;
        if acked < u64::from(replicas) {
            return Err(StoreError::Unavailable(format!(
                "the write reached {acked} of {replicas} replicas within {millis} ms; it may be \
                 lost if the primary fails"
            )));
        }
        Ok(())
    }

    /// Saves `save`, running `between` after its id has gone into its owner's set and before
    /// its session is written (a seam for tests of what may happen in that gap).
    async fn save_with(&self, save: Save, between: impl Future<Output = ()>) -> Result<Saved> {
        validate_id(&save.id)?;
        let size = data_size(&save.data);
        if size > self.inner.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.inner.max_session_bytes,
            });
        }
        let ttl = self.ttl_millis(save.expiry)?;
        let owner = save.owner.as_deref().filter(|owner| !owner.is_empty());
        if let Some(owner) = owner {
            validate_owner(owner)?;
            // Indexed before the session is written: once a save has answered, its session is
            // in its owner's set, where DestroyByOwner will find it.
            self.index(owner, &save.id, ttl).await?;
        }
        between.await;
        let expected = save
            .expected_version
            .map_or_else(String::new, |v| v.to_string());
        let mut connection = self.connection.clone();
        let mut invocation = self.inner.save.key(self.key(&save.id));
        invocation
            .arg(expected)
            .arg(ttl)
            .arg(&*encode_data(&save.data))
            .arg(owner.unwrap_or(""))
            .arg(&self.inner.changes)
            .arg(&save.id);
        let answer: Vec<redis::Value> = self.run(invocation.invoke_async(&mut connection)).await?;
        let int = |value: &redis::Value| match value {
            redis::Value::Int(int) => Some(*int),
            _ => None,
        };
        match answer.as_slice() {
            [flag, actual] if int(flag) == Some(-1) => Err(StoreError::Conflict {
                expected: save.expected_version.unwrap_or(0),
                actual: int(actual)
                    .and_then(|v| u64::try_from(v).ok())
                    .filter(|&v| v != 0),
            }),
            [version, created, expires, previous] => {
                let previous: String = redis::from_redis_value(previous)
                    .map_err(|err| StoreError::Internal(format!("redis: {err}")))?;
                if let Some(owner) = owner {
                    // Entered again now that the session is written: the set is another key,
                    // cleaned apart from the sessions, and a cleanup between the two steps may
                    // have removed the id (a listing dropping ids it found no session for, or
                    // DestroyByOwner destroying the session this save then wrote again).
                    let ttl = ttl.saturating_add(OWNER_SET_MARGIN_MS);
                    self.try_index(owner, &save.id, 0, ttl).await?;
                }
                if !previous.is_empty() && Some(previous.as_str()) != owner {
                    // Best effort: a stale id left in the previous owner's set is skipped and
                    // removed when that set is next read.
                    let _: Result<()> = self
                        .forget(&previous, &[save.id.clone().into_bytes()])
                        .await;
                }
                let millis = |value| int(value).and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
                self.replicated().await?;
                Ok(Saved {
                    version: millis(version),
                    created_at: time(millis(created)),
                    expires_at: time(millis(expires)),
                })
            }
            other => Err(StoreError::Internal(format!(
                "unexpected answer from the save script: {other:?}"
            ))),
        }
    }

    fn owner_key(&self, owner: &str) -> String {
        format!("{}{owner}", self.inner.owner_prefix)
    }

    /// Adds `id` to `owner`'s set and keeps the set alive `ttl` ms (and a margin) at least.
    /// Refuses a new session beyond the owner's limit, after dropping the set's stale ids.
    async fn index(&self, owner: &str, id: &str, ttl: u64) -> Result<()> {
        let limit = self.inner.max_sessions_per_owner;
        let ttl = ttl.saturating_add(OWNER_SET_MARGIN_MS);
        if self.try_index(owner, id, limit, ttl).await? {
            return Ok(());
        }
        // At the limit as the set stands: drop its stale ids, then try once more.
        self.live_of(owner).await?;
        if self.try_index(owner, id, limit, ttl).await? {
            Ok(())
        } else {
            Err(StoreError::TooManyOwnerSessions { limit })
        }
    }

    /// One run of the [`INDEX`] script: whether `id` is now in `owner`'s set.
    async fn try_index(&self, owner: &str, id: &str, limit: u64, ttl: u64) -> Result<bool> {
        let mut connection = self.connection.clone();
        let mut invocation = self.inner.index.key(self.owner_key(owner));
        invocation.arg(id).arg(limit).arg(ttl);
        let entered: i64 = self.run(invocation.invoke_async(&mut connection)).await?;
        Ok(entered == 1)
    }

    /// The live sessions of `owner`; ids in its set that no longer are (expired, destroyed or
    /// given to another owner) are removed from the set ([`Self::forget`], which keeps those a
    /// racing save has written meanwhile). An entry whose key holds no readable session is
    /// skipped with a warning, and the rest are listed.
    async fn live_of(&self, owner: &str) -> Result<Vec<SessionRecord>> {
        let mut live = Vec::new();
        let mut stale = Vec::new();
        let mut unreadable = 0;
        for member in self.members(owner).await? {
            let Some(id) = session_id(&member) else {
                stale.push(member);
                continue;
            };
            match self.get(id).await {
                Ok(Some(record)) if record.owner.as_deref() == Some(owner) => live.push(record),
                Ok(_) => stale.push(member),
                Err(err @ (StoreError::Unavailable(_) | StoreError::Timeout)) => return Err(err),
                Err(_) => unreadable += 1,
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "entries of an owner's set hold no readable session; skipped"
            );
        }
        self.forget(owner, &stale).await?;
        Ok(live)
    }

    /// The entries of `owner`'s set, as stored (an entry Redis was given by hand may not be an
    /// id at all).
    async fn members(&self, owner: &str) -> Result<Vec<Vec<u8>>> {
        let mut connection = self.connection.clone();
        self.run(
            redis::cmd("SMEMBERS")
                .arg(self.owner_key(owner))
                .query_async(&mut connection),
        )
        .await
    }

    /// Removes `ids` from `owner`'s set, then reads each of their sessions again and enters the
    /// id once more if its session is now live and `owner`'s.
    ///
    /// The set is another key than the sessions (in Redis Cluster, another slot), so the removal
    /// cannot be atomic with the read that found an id stale. A save racing it enters its id
    /// before and after writing the session, and both may come before the removal; the session
    /// it wrote is then found by the read after the removal, which enters it again. Whichever of
    /// the two comes last, an owned session ends in its owner's set. Should that read fail, the
    /// id is entered again unread: a stale id costs a later clean-up, a missing one a session
    /// that escapes "log out everywhere".
    async fn forget(&self, owner: &str, ids: &[Vec<u8>]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        self.run(
            redis::cmd("SREM")
                .arg(self.owner_key(owner))
                .arg(ids)
                .query_async(&mut connection),
        )
        .await
        .map(|_: i64| ())?;
        let mut failure = None;
        for id in ids.iter().filter_map(|member| session_id(member)) {
            let ttl = match self.get(id).await {
                Ok(Some(record)) if record.owner.as_deref() == Some(owner) => {
                    let left = record
                        .expires_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                }
                Ok(_) => continue,
                Err(err @ (StoreError::Unavailable(_) | StoreError::Timeout)) => {
                    failure = Some(err);
                    self.inner
                        .max_ttl
                        .as_millis()
                        .try_into()
                        .unwrap_or(u64::MAX)
                }
                // Not a session: nothing under this id can be the owner's.
                Err(_) => continue,
            };
            let ttl = ttl.saturating_add(OWNER_SET_MARGIN_MS);
            self.try_index(owner, id, 0, ttl).await?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Runs `command` within the timeout, mapping Redis's failures to store errors.
    async fn run<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.inner.timeout, command).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err))
                if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() =>
            {
                Err(StoreError::Unavailable(format!("redis: {err}")))
            }
            // At `maxmemory` with `noeviction`, Redis refuses every write (scripts included)
            // with OOM; reads go on.
            Ok(Err(err)) if err.code() == Some("OOM") || err.to_string().contains("OOM ") => {
                Err(StoreError::StoreFull(format!("redis: {err}")))
            }
            Ok(Err(err)) => Err(StoreError::Internal(format!("redis: {err}"))),
        }
    }

    /// The lifetime a save or touch asks for, in whole milliseconds (at least one).
    fn ttl_millis(&self, expiry: StoreExpiry) -> Result<u64> {
        let ttl = expiry.lifetime(
            SystemTime::now(),
            self.inner.default_ttl,
            self.inner.max_ttl,
        )?;
        Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
    }
}

/// `text` with the characters `SCAN`'s `MATCH` reads as a pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// An entry of an owner's set as a session id, or `None` if it cannot be one.
fn session_id(member: &[u8]) -> Option<&str> {
    std::str::from_utf8(member)
        .ok()
        .filter(|id| validate_id(id).is_ok())
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        validate_id(id)?;
        let mut connection = self.connection.clone();
        let value: Option<Vec<u8>> = self
            .run(
                redis::cmd("GET")
                    .arg(self.key(id))
                    .query_async(&mut connection),
            )
            .await?;
        value.map(|value| record(id, value)).transpose()
    }

    async fn save(&self, save: Save) -> Result<Saved> {
        self.save_with(save, std::future::ready(())).await
    }

    async fn destroy(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let mut connection = self.connection.clone();
        let removed: u64 = if self.publishes_changes() {
            let mut invocation = self.inner.destroy.key(self.key(id));
            invocation.arg(&self.inner.changes).arg(id);
            self.run(invocation.invoke_async(&mut connection)).await?
        } else {
            self.run(
                redis::cmd("DEL")
                    .arg(self.key(id))
                    .query_async(&mut connection),
            )
            .await?
        };
        self.replicated().await?;
        Ok(removed > 0)
    }

    async fn touch(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        validate_id(id)?;
        let ttl = self.ttl_millis(ttl.map_or(StoreExpiry::Default, StoreExpiry::Ttl))?;
        let mut connection = self.connection.clone();
        let mut invocation = self.inner.touch.key(self.key(id));
        invocation.arg(ttl).arg(&self.inner.changes).arg(id);
        let touched: Option<(i64, String)> =
            self.run(invocation.invoke_async(&mut connection)).await?;
        let Some((expires, owner)) = touched else {
            return Ok(None);
        };
        if !owner.is_empty() {
            // The owner's set must outlive the session it now holds longer.
            let () = self
                .run(
                    redis::cmd("PEXPIRE")
                        .arg(self.owner_key(&owner))
                        .arg(ttl.saturating_add(OWNER_SET_MARGIN_MS))
                        .arg("GT")
                        .query_async(&mut connection),
                )
                .await
                .map(|_: i64| ())?;
        }
        self.replicated().await?;
        Ok(Some(time(u64::try_from(expires).unwrap_or(0))))
    }

    async fn list_by_owner(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        gonest_session_core::validate_stored_owner(owner)?;
        let mut sessions = self.live_of(owner).await?;
        if !with_data {
            for session in &mut sessions {
                session.data.clear();
            }
        }
        sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(sessions)
    }

    /// Every session saved with this owner is in its set before its save answers, so one pass
    /// over the set reaches all those saved before the call. Each is destroyed by a script that
    /// checks, atomically on the session's key, that it still belongs to the owner. The set
    /// itself is another key (in Redis Cluster, another slot): the ids whose sessions this call
    /// destroyed are removed from it afterwards by `forget`, which enters again any that
    /// a racing save has written meanwhile. An id whose session it did not find may be a save
    /// under way (its id goes into the set before its session is written, and again after): it
    /// stays until a listing finds it stale. An entry that is not a session id, or whose
    /// key holds no session, is passed over (the first removed, the second left as it is).
    async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64> {
        gonest_session_core::validate_stored_owner(owner)?;
        let mut connection = self.connection.clone();
        let mut destroyed = 0;
        let mut gone = Vec::new();
        for member in self.members(owner).await? {
            let Some(id) = session_id(&member) else {
                gone.push(member);
                continue;
            };
            if except.iter().any(|kept| kept == id) {
                continue;
            }
            let mut invocation = self.inner.destroy_if_owned.key(self.key(id));
            invocation.arg(owner).arg(&self.inner.changes).arg(id);
            let removed: u64 = self.run(invocation.invoke_async(&mut connection)).await?;
            if removed > 0 {
                destroyed += removed;
                gone.push(member);
            }
        }
        self.forget(owner, &gone).await?;
        self.replicated().await?;
        Ok(destroyed)
    }

    /// A page is one `SCAN` of the session keys (`COUNT limit`, at most `MAX_PAGE_SESSIONS`) and one pipeline
    /// of `GETRANGE`s reading each found session's header and owner, never its data; the cursor
    /// is Redis's. `SCAN`'s guarantee holds: a session that lives from the first page to the last
    /// is listed (a key Redis rehashes meanwhile may be listed twice). Redis Cluster, whose keys
    /// are spread over its masters, is not listed this way: [`StoreError::Unsupported`].
    async fn list_sessions(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        if matches!(self.connection, Connection::Cluster(_)) {
            return Err(StoreError::Unsupported(
                "listing every session of a Redis Cluster (list them by owner)".into(),
            ));
        }
        let cursor: u64 = if cursor.is_empty() {
            0
        } else {
            cursor
                .parse()
                .map_err(|_| StoreError::invalid("not a cursor this store handed out"))?
        };
        let limit = limit.clamp(1, gonest_session_core::MAX_PAGE_SESSIONS);
        let mut connection = self.connection.clone();
        let (next, keys): (u64, Vec<Vec<u8>>) = self
            .run(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", glob_escape(&self.inner.prefix)))
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut connection),
            )
            .await?;
        let mut heads = redis::pipe();
        for key in &keys {
            heads
                .cmd("GETRANGE")
                .arg(key)
                .arg(0)
                .arg(HEADER + MAX_OWNER_LEN - 1);
        }
        let heads: Vec<Vec<u8>> = if keys.is_empty() {
            Vec::new()
        } else {
            self.run(heads.query_async(&mut connection)).await?
        };
        let prefix = self.inner.prefix.as_bytes();
        let sessions = keys
            .iter()
            .zip(heads)
            .filter_map(|(key, head)| {
                let id = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
                validate_id(id).ok()?;
                head_record(id, &head)
            })
            .collect();
        Ok(SessionPage::new(
            sessions,
            (next != 0).then(|| next.to_string()),
        ))
    }

    fn limits(&self) -> StoreLimits {
        StoreLimits::new(Some(self.inner.max_session_bytes), Some(self.inner.max_ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gonest_session_core::SessionData;
    use gonest_session_test_support::RedisServer;

    fn owned(id: &str) -> Save {
        let data: SessionData = [("k".to_owned(), b"v".to_vec().into())].into();
        Save::new(id, data).owner("u")
    }

    async fn listed(store: &RedisSessionStore) -> Vec<String> {
        let sessions = store.list_by_owner("u", false).await.unwrap();
        sessions.into_iter().map(|session| session.id).collect()
    }

    /// A listing drops the ids it finds no session for. Run between a new session's two steps
    /// (entered in the set, then written), it drops that session's id; the save enters it again.
    #[tokio::test]
    async fn a_listing_during_a_save_leaves_the_new_session_in_its_owners_set() {
        let redis = RedisServer::start().await;
        let store = RedisSessionStore::connect(redis.url()).await.unwrap();
        store
            .save_with(owned("new"), async {
                assert_eq!(
                    listed(&store).await,
                    Vec::<String>::new(),
                    "not written yet"
                );
            })
            .await
            .unwrap();
        assert_eq!(listed(&store).await, ["new"]);
        assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
        assert_eq!(store.get("new").await.unwrap(), None);
    }

    /// "Log out everywhere" while an unconditional save of one of the sessions is under way:
    /// the save writes the session again after the destroy; it must then be within reach of
    /// the next DestroyByOwner.
    #[tokio::test]
    async fn a_session_written_again_after_destroy_by_owner_is_reached_by_the_next() {
        let redis = RedisServer::start().await;
        let store = RedisSessionStore::connect(redis.url()).await.unwrap();
        store.save(owned("s")).await.unwrap();
        store
            .save_with(owned("s"), async {
                assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
            })
            .await
            .unwrap();
        assert!(store.get("s").await.unwrap().is_some(), "written again");
        assert_eq!(listed(&store).await, ["s"]);
        assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
        assert_eq!(store.get("s").await.unwrap(), None);
    }

    /// The clean-up's removal comes after a racing save has written its session and entered
    /// its id again (the removal was decided on a read before the write): the id must end in
    /// the set all the same.
    #[tokio::test]
    async fn an_id_removed_after_its_session_was_written_is_entered_again() {
        let redis = RedisServer::start().await;
        let store = RedisSessionStore::connect(redis.url()).await.unwrap();
        store.save(owned("s")).await.unwrap();
        store.forget("u", &[b"s".to_vec()]).await.unwrap();
        assert_eq!(listed(&store).await, ["s"]);
        assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
        assert_eq!(store.get("s").await.unwrap(), None);
    }

    /// Entries of an owner's set that are no session ids, or whose keys hold no session, are
    /// passed over: the owner's real sessions are listed and destroyed all the same.
    #[tokio::test]
    async fn entries_that_hold_no_session_are_passed_over() {
        let redis = RedisServer::start().await;
        let store = RedisSessionStore::connect(redis.url()).await.unwrap();
        store.save(owned("real")).await.unwrap();
        let mut connection = store.connection.clone();
        let set = store.owner_key("u");
        let entries: [&[u8]; 4] = [b"has space", b"\xff\xfe", b"hash", b"short"];
        let () = redis::cmd("SADD")
            .arg(&set)
            .arg(&entries[..])
            .query_async(&mut connection)
            .await
            .unwrap();
        let () = redis::cmd("HSET")
            .arg(store.key("hash"))
            .arg("field")
            .arg("value")
            .query_async(&mut connection)
            .await
            .unwrap();
        let () = redis::cmd("SET")
            .arg(store.key("short"))
            .arg("garbage")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(listed(&store).await, ["real"]);
        assert_eq!(store.destroy_by_owner("u", &[]).await.unwrap(), 1);
        assert_eq!(store.get("real").await.unwrap(), None);
        let kind: String = redis::cmd("TYPE")
            .arg(store.key("hash"))
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(kind, "hash", "what is not a session is left as it is");
    }
}

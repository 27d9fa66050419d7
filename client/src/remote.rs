use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use gonest_session_core::{
    Result, Save, Saved, SessionPage, SessionRecord, SessionStore, StoreError, StoreLimits,
    data_size,
};
use gonest_session_proto::pb::{
    self, pipeline_request::Op, pipeline_response::Result as Answer,
    session_store_client::SessionStoreClient,
};
use gonest_session_proto::{
    duration_from_pb, duration_to_pb, error_from_pb, error_from_status, message_limit,
    record_from_pb, save_to_pb, timestamp_from_pb,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::RemoteSessionStoreBuilder;
use crate::auth::{Client, ClientAuth};
use crate::lanes::Lanes;
use crate::near::{self, Lookup, NearCache, NearCacheStats};

/// A [`SessionStore`] kept by a `gonest-sessiond` daemon. Cheap to clone; clones share the
/// connection and its streams.
#[derive(Debug, Clone)]
pub struct RemoteSessionStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The connection, for unary calls (`Stats`); tonic reconnects it by itself.
    client: Client,
    /// The `Pipeline` streams operations travel on.
    lanes: Lanes,
    /// Budget of one operation, retries included.
    timeout: Duration,
    /// The daemon's limits, once known (from `Stats`).
    limits: tokio::sync::OnceCell<Limits>,
    /// The near cache, when turned on.
    near: Option<Arc<NearCache>>,
    /// The task that keeps the near cache true; it ends with the store.
    tracker: Option<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(tracker) = &self.tracker {
            tracker.abort();
        }
    }
}

/// The daemon's limits, as its `Stats` gave them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The largest session (`None` from a daemon that does not say).
    max_session_bytes: Option<usize>,
    /// The longest TTL (`None` from a daemon that does not say).
    max_ttl: Option<Duration>,
}

/// The daemon's counters, from [`RemoteSessionStore::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Live sessions: exactly those a Get would find. `None` where the daemon does not count
    /// them: on Redis, or from a daemon older than v1.4 on Redis, which says 0.
    pub live_sessions: Option<u64>,
    /// The largest session the daemon stores, keys plus values (`None` from an older daemon).
    pub max_session_bytes: Option<u64>,
    /// The longest TTL the daemon accepts (`None` from an older daemon).
    pub max_ttl: Option<Duration>,
    /// Whether the daemon takes batches of operations on `Pipeline` (false from an older one).
    pub pipeline_batches: bool,
    /// Sessions removed because they expired (`None` on Redis, which expires keys itself).
    pub expired_removed_total: Option<u64>,
    /// Sweeps run (`None` on Redis, where none runs).
    pub sweeps_total: Option<u64>,
    /// The daemon's resident memory in bytes (`None` where the daemon cannot read it).
    pub resident_memory_bytes: Option<u64>,
}

impl RemoteSessionStore {
    /// Connects to the daemon at `url` (such as `http://127.0.0.1:7070`) with default options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Options for a store at `url`: timeouts and the number of streams.
    pub fn builder(url: impl Into<String>) -> RemoteSessionStoreBuilder {
        RemoteSessionStoreBuilder::new(url)
    }

    pub(crate) fn from_parts(
        channel: Channel,
        auth: ClientAuth,
        timeout: Duration,
        streams: usize,
        near_cache: Option<(usize, u64)>,
    ) -> Self {
        // The client checks sizes itself before sending (see `check_size`), and takes any answer
        // its daemon sends: whatever the daemon stored, the app can read back.
        let connection = InterceptedService::new(channel.clone(), auth.clone());
        let client = SessionStoreClient::with_interceptor(channel, auth)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let near = near_cache.map(|(entries, bytes)| Arc::new(NearCache::new(entries, bytes)));
        // Without a runtime to run it on (a store built outside one) the cache never serves.
        let tracker = near.as_ref().and_then(|near| {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let task = runtime.spawn(near::keep_true(client.clone(), Arc::downgrade(near)));
            Some(task.abort_handle())
        });
        Self {
            inner: Arc::new(Inner {
                lanes: Lanes::new(connection, streams),
                client,
                timeout,
                limits: tokio::sync::OnceCell::new(),
                near,
                tracker,
            }),
        }
    }

    /// The near cache's counters; `None` when it is off (see
    /// [`RemoteSessionStoreBuilder::near_cache`]).
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.inner.near.as_ref().map(|near| near.stats())
    }

    /// Drops `id` from the near cache: this client changed it (or tried to).
    fn changed(&self, id: &str) {
        if let Some(near) = &self.inner.near {
            near.invalidate(id);
        }
    }

    /// Asks the daemon for its limits now, as [`connect`](RemoteSessionStoreBuilder::connect)
    /// does; a lazily connected store asks before its first save.
    pub(crate) async fn learn_limits(&self) -> Result<Option<usize>> {
        self.inner
            .limits
            .get_or_try_init(|| async {
                // The limits need no count: the daemon answers at once instead of first removing
                // what has expired, which takes seconds after a great many sessions expired.
                let stats = self.request_stats(true).await?;
                if stats.pipeline_batches {
                    self.inner.lanes.batch();
                }
                Ok(Limits {
                    max_session_bytes: stats
                        .max_session_bytes
                        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)),
                    max_ttl: stats.max_ttl,
                })
            })
            .await
            .map(|limits| limits.max_session_bytes)
    }

    /// Refuses, before it is sent, a save the daemon would refuse for its size: more keys and
    /// values than its `--max-session-bytes`, or a request larger than it reads at all. Sending
    /// it would cost the bandwidth for nothing, and one over the daemon's message limit would
    /// end the stream other callers share.
    async fn check_size(&self, request: &pb::SaveRequest) -> Result<()> {
        let known = self
            .inner
            .limits
            .get()
            .map(|limits| limits.max_session_bytes);
        let limit = match known {
            Some(limit) => Ok(limit),
            None => Box::pin(self.learn_limits()).await,
        };
        let Ok(Some(limit)) = limit else {
            // The daemon cannot say now, or does not say; it checks the size itself.
            return Ok(());
        };
        let size = request
            .session
            .as_ref()
            .map_or(0, |session| data_size(&session.data));
        if size > limit {
            return Err(StoreError::TooLarge { size, limit });
        }
        let encoded = prost::Message::encoded_len(request);
        let wire_limit = message_limit(limit);
        if encoded > wire_limit {
            return Err(StoreError::TooLarge {
                size: encoded,
                limit: wire_limit,
            });
        }
        Ok(())
    }

    /// Runs one unary call within the timeout.
    async fn unary<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        tokio::time::timeout(self.inner.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map(tonic::Response::into_inner)
            .map_err(|status| error_from_status(&status, None))
    }

    /// The daemon's counters, `live_sessions` exactly: the daemon counts the sessions that have
    /// not expired (tens of milliseconds right after a million expired at once; a daemon before
    /// v1.6 first removed them, which took seconds then).
    pub async fn stats(&self) -> Result<RemoteStats> {
        self.request_stats(false).await
    }

    /// The daemon's counters as they stand, without counting: `live_sessions` may still count
    /// sessions that expired since the daemon's last sweep. An older daemon (before v1.3)
    /// answers as [`stats`](Self::stats) does.
    pub async fn stats_as_stored(&self) -> Result<RemoteStats> {
        self.request_stats(true).await
    }

    async fn request_stats(&self, as_stored: bool) -> Result<RemoteStats> {
        let mut client = self.inner.client.clone();
        let call = client.stats(pb::StatsRequest { as_stored });
        let stats = tokio::time::timeout(self.inner.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|status| error_from_status(&status, None))?
            .into_inner();
        Ok(RemoteStats {
            live_sessions: stats.live_sessions,
            expired_removed_total: stats.expired_removed_total,
            sweeps_total: stats.sweeps_total,
            resident_memory_bytes: (stats.resident_memory_bytes != 0)
                .then_some(stats.resident_memory_bytes),
            max_session_bytes: (stats.max_session_bytes != 0).then_some(stats.max_session_bytes),
            pipeline_batches: stats.pipeline_batches,
            max_ttl: stats
                .max_ttl
                .as_ref()
                .and_then(|ttl| duration_from_pb(ttl).ok()),
        })
    }

    /// Runs one operation within the timeout; an operation given `again` (how to make it anew)
    /// is tried once more when the stream it went on broke. Made anew, not copied beforehand: a
    /// second try is rare, and a copy would cost every read an allocation.
    ///
    /// The lane the operation goes on keeps its deadline (see `lanes`): no timer per operation.
    /// Only the rare second try and the first operation's `Stats` have timers of their own.
    async fn call(
        &self,
        op: Op,
        again: Option<&(dyn Fn() -> Op + Sync)>,
        expected_version: Option<u64>,
    ) -> Result<Answer> {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        // Once, before the first operation of a lazily connected store: whether the daemon
        // takes batches. If it cannot say now, operations go one by one. Boxed: the Stats call's
        // future is large, and every operation's future would otherwise carry it.
        if self.inner.limits.get().is_none() {
            let learnt = tokio::time::timeout_at(deadline, Box::pin(self.learn_limits())).await;
            if learnt.is_err() {
                return Err(StoreError::Timeout);
            }
        }
        let answer = match (self.inner.lanes.call(op, deadline).await, again) {
            // The stream broke: a new one, within what is left of the deadline. (This operation
            // joins a queue behind others with later deadlines, so it keeps a timer of its own.)
            (Err(status), Some(again)) if status.code() == Code::Unavailable => {
                tokio::time::timeout_at(deadline, self.inner.lanes.call(again(), deadline))
                    .await
                    .map_err(|_| StoreError::Timeout)?
            }
            (first, _) => first,
        }
        .map_err(|status| error_from_status(&status, expected_version))?;
        match answer {
            Answer::Error(error) => Err(error_from_status(&error_from_pb(error), expected_version)),
            answer => Ok(answer),
        }
    }
}

fn unexpected(answer: &Answer) -> StoreError {
    StoreError::Internal(format!("daemon answered with the wrong kind: {answer:?}"))
}

fn time(timestamp: Option<prost_types::Timestamp>, what: &str) -> Result<SystemTime> {
    let timestamp =
        timestamp.ok_or_else(|| StoreError::Internal(format!("daemon sent no {what}")))?;
    timestamp_from_pb(&timestamp)
}

#[async_trait]
impl SessionStore for RemoteSessionStore {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        let ticket = match self.inner.near.as_deref().map(|near| near.get(id)) {
            Some(Lookup::Hit(record)) => {
                // A hit never waits; this lets the runtime run other tasks (the one that
                // applies invalidations among them) between hits of a caller that loops.
                tokio::task::consume_budget().await;
                return Ok(Some(record));
            }
            Some(Lookup::Miss(ticket)) => Some(ticket),
            Some(Lookup::Off) | None => None,
        };
        let op = || Op::Get(pb::GetRequest { id: id.to_owned() });
        let record = match self.call(op(), Some(&op), None).await? {
            Answer::Get(response) => response.session.map(record_from_pb).transpose()?,
            other => return Err(unexpected(&other)),
        };
        if let (Some(near), Some(ticket)) = (&self.inner.near, &ticket) {
            near.fill(ticket, record.as_ref());
        }
        Ok(record)
    }

    async fn save(&self, save: Save) -> Result<Saved> {
        let expected = save.expected_version;
        let id = save.id.clone();
        let request = save_to_pb(save);
        self.check_size(&request).await?;
        let answer = self.call(Op::Save(Box::new(request)), None, expected).await;
        // Saved, refused (ABORTED) or unknown: the cached copy is stale or may be.
        self.changed(&id);
        match answer? {
            Answer::Save(saved) => Ok(Saved {
                version: saved.version,
                created_at: time(saved.created_at, "created_at")?,
                expires_at: time(saved.expires_at, "expires_at")?,
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn destroy(&self, id: &str) -> Result<bool> {
        let op = || Op::Destroy(pb::DestroyRequest { id: id.to_owned() });
        let answer = self.call(op(), Some(&op), None).await;
        self.changed(id);
        match answer? {
            Answer::Destroy(response) => Ok(response.existed),
            other => Err(unexpected(&other)),
        }
    }

    async fn touch(&self, id: &str, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        let op = || {
            Op::Touch(pb::TouchRequest {
                id: id.to_owned(),
                ttl: ttl.map(duration_to_pb),
            })
        };
        let answer = self.call(op(), Some(&op), None).await;
        self.changed(id);
        match answer? {
            Answer::Touch(response) if response.found => {
                Ok(Some(time(response.expires_at, "expires_at")?))
            }
            Answer::Touch(_) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_by_owner(&self, owner: &str, with_data: bool) -> Result<Vec<SessionRecord>> {
        let mut client = self.inner.client.clone();
        let answer = self
            .unary(client.list_by_owner(pb::ListByOwnerRequest {
                owner: owner.to_owned(),
                with_data,
            }))
            .await?;
        answer.sessions.into_iter().map(record_from_pb).collect()
    }

    async fn list_sessions(&self, cursor: &str, limit: usize) -> Result<SessionPage> {
        let mut client = self.inner.client.clone();
        let answer = self
            .unary(
                client.list_sessions(pb::ListSessionsRequest {
                    cursor: cursor.to_owned(),
                    limit: u32::try_from(limit.clamp(1, gonest_session_core::MAX_PAGE_SESSIONS))
                        .unwrap_or(u32::MAX),
                }),
            )
            .await?;
        let sessions = answer
            .sessions
            .into_iter()
            .map(record_from_pb)
            .collect::<Result<_>>()?;
        let next = (!answer.next_cursor.is_empty()).then_some(answer.next_cursor);
        Ok(SessionPage::new(sessions, next))
    }

    async fn destroy_by_owner(&self, owner: &str, except: &[String]) -> Result<u64> {
        let mut client = self.inner.client.clone();
        let answer = self
            .unary(client.destroy_by_owner(pb::DestroyByOwnerRequest {
                owner: owner.to_owned(),
                except_ids: except.to_vec(),
            }))
            .await;
        // The destroyed ids are not known here.
        if let Some(near) = &self.inner.near {
            near.flush();
        }
        Ok(answer?.destroyed)
    }

    /// What the daemon said at connect (or before the first operation of a lazily connected
    /// store); nothing before that.
    fn limits(&self) -> StoreLimits {
        self.inner
            .limits
            .get()
            .map_or_else(StoreLimits::default, |limits| {
                StoreLimits::new(limits.max_session_bytes, limits.max_ttl)
            })
    }
}

//! The service's calls, each applied the same way by either engine.

use std::future::Future;
use std::sync::Arc;

use gonest_session_core::{MemorySessionStore, SessionRecord, SessionStore, StoreError};
use gonest_session_proto::{duration_from_pb, pb, record_to_pb, save_from_pb, timestamp_to_pb};

use crate::tracking::Change;

type Result<T> = std::result::Result<T, StoreError>;

/// One call of the service: a request as it comes over the wire, applied to a store.
pub(crate) trait Operation: Send + 'static {
    /// What the call answers.
    type Answer: prost::Message + Send + 'static;
    /// The gRPC method, as the metrics name it.
    const METHOD: &'static str;
    /// Whether it changes the store, and so passes the shutdown gate.
    const WRITES: bool;

    /// Applies it to the memory store, within the call.
    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer>;

    /// Applies it to any store.
    fn apply<S: SessionStore>(self, store: &S)
    -> impl Future<Output = Result<Self::Answer>> + Send;

    /// The session it may change, for near caches (taken before it is applied).
    fn session_id(&self) -> Option<&str> {
        None
    }

    /// What it changed, given its answer (and the id from [`session_id`](Self::session_id)):
    /// what `Track` streams are told. `None` when it changed nothing.
    fn change(id: Option<Arc<str>>, answer: &Self::Answer) -> Option<Change> {
        let _ = (id, answer);
        None
    }

    /// Applies it to the memory store, with what it changed for `Track` streams.
    fn apply_tracked(self, store: &MemorySessionStore) -> Result<(Self::Answer, Option<Change>)>
    where
        Self: Sized,
    {
        let id = self.session_id().map(Arc::<str>::from);
        let answer = self.apply_now(store)?;
        let change = Self::change(id, &answer);
        Ok((answer, change))
    }
}

/// The most session data one `ListByOwner` answer carries (with `with_data`): 1,000 sessions
/// of 64 KiB.
pub(crate) const MAX_LIST_DATA_BYTES: usize = 64 << 20;

fn get_answer(record: Option<SessionRecord>) -> pb::GetResponse {
    pb::GetResponse {
        session: record.map(record_to_pb),
    }
}

fn save_answer(saved: gonest_session_core::Saved) -> pb::SaveResponse {
    pb::SaveResponse {
        version: saved.version,
        created_at: Some(timestamp_to_pb(saved.created_at)),
        expires_at: Some(timestamp_to_pb(saved.expires_at)),
    }
}

fn touch_answer(expires_at: Option<std::time::SystemTime>) -> pb::TouchResponse {
    pb::TouchResponse {
        found: expires_at.is_some(),
        expires_at: expires_at.map(timestamp_to_pb),
    }
}

/// A `ListByOwner` answer, unless its data is over [`MAX_LIST_DATA_BYTES`]: then
/// `RESOURCE_EXHAUSTED`, and the caller lists without data and Gets them one by one.
fn list_by_owner_answer(sessions: Vec<SessionRecord>) -> Result<pb::ListByOwnerResponse> {
    let size: usize = sessions
        .iter()
        .map(|session| gonest_session_core::data_size(&session.data))
        .sum();
    if size > MAX_LIST_DATA_BYTES {
        return Err(StoreError::TooLarge {
            size,
            limit: MAX_LIST_DATA_BYTES,
        });
    }
    Ok(pb::ListByOwnerResponse {
        sessions: sessions.into_iter().map(record_to_pb).collect(),
    })
}

/// The page size a `ListSessions` request asks for (0: 100).
fn page_limit(request: &pb::ListSessionsRequest) -> usize {
    match request.limit {
        0 => 100,
        limit => usize::try_from(limit).unwrap_or(usize::MAX),
    }
}

fn page_answer(page: gonest_session_core::SessionPage) -> pb::ListSessionsResponse {
    pb::ListSessionsResponse {
        sessions: page.sessions.into_iter().map(record_to_pb).collect(),
        next_cursor: page.next.unwrap_or_default(),
    }
}

impl Operation for pb::GetRequest {
    type Answer = pb::GetResponse;
    const METHOD: &'static str = "get";
    const WRITES: bool = false;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        store.get_now(&self.id).map(get_answer)
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        store.get(&self.id).await.map(get_answer)
    }
}

impl Operation for pb::SaveRequest {
    type Answer = pb::SaveResponse;
    const METHOD: &'static str = "save";
    const WRITES: bool = true;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        store.save_now(save_from_pb(self)?).map(save_answer)
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        store.save(save_from_pb(self)?).await.map(save_answer)
    }

    fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|session| session.id.as_str())
    }

    fn change(id: Option<Arc<str>>, answer: &Self::Answer) -> Option<Change> {
        Some(Change::Session(id?, answer.version))
    }
}

impl Operation for pb::DestroyRequest {
    type Answer = pb::DestroyResponse;
    const METHOD: &'static str = "destroy";
    const WRITES: bool = true;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        let existed = store.destroy_now(&self.id)?;
        Ok(pb::DestroyResponse { existed })
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        let existed = store.destroy(&self.id).await?;
        Ok(pb::DestroyResponse { existed })
    }

    fn session_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn change(id: Option<Arc<str>>, answer: &Self::Answer) -> Option<Change> {
        id.filter(|_| answer.existed)
            .map(|id| Change::Session(id, 0))
    }
}

impl Operation for pb::TouchRequest {
    type Answer = pb::TouchResponse;
    const METHOD: &'static str = "touch";
    const WRITES: bool = true;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        let ttl = self.ttl.as_ref().map(duration_from_pb).transpose()?;
        store.touch_now(&self.id, ttl).map(touch_answer)
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        let ttl = self.ttl.as_ref().map(duration_from_pb).transpose()?;
        store.touch(&self.id, ttl).await.map(touch_answer)
    }

    fn session_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    /// The version stays; the expiry a cache holds moved.
    fn change(id: Option<Arc<str>>, answer: &Self::Answer) -> Option<Change> {
        id.filter(|_| answer.found).map(|id| Change::Session(id, 0))
    }
}

impl Operation for pb::ListByOwnerRequest {
    type Answer = pb::ListByOwnerResponse;
    const METHOD: &'static str = "list_by_owner";
    const WRITES: bool = false;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        list_by_owner_answer(store.list_by_owner_now(&self.owner, self.with_data)?)
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        list_by_owner_answer(store.list_by_owner(&self.owner, self.with_data).await?)
    }
}

impl Operation for pb::ListSessionsRequest {
    type Answer = pb::ListSessionsResponse;
    const METHOD: &'static str = "list_sessions";
    const WRITES: bool = false;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        let limit = page_limit(&self);
        store
            .list_sessions_now(&self.cursor, limit)
            .map(page_answer)
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        let limit = page_limit(&self);
        store
            .list_sessions(&self.cursor, limit)
            .await
            .map(page_answer)
    }
}

impl Operation for pb::DestroyByOwnerRequest {
    type Answer = pb::DestroyByOwnerResponse;
    const METHOD: &'static str = "destroy_by_owner";
    const WRITES: bool = true;

    fn apply_now(self, store: &MemorySessionStore) -> Result<Self::Answer> {
        let destroyed = store.destroy_by_owner_now(&self.owner, &self.except_ids)?;
        Ok(pb::DestroyByOwnerResponse { destroyed })
    }

    async fn apply<S: SessionStore>(self, store: &S) -> Result<Self::Answer> {
        let destroyed = store
            .destroy_by_owner(&self.owner, &self.except_ids)
            .await?;
        Ok(pb::DestroyByOwnerResponse { destroyed })
    }
    /// Each destroyed session, by id.
    fn apply_tracked(self, store: &MemorySessionStore) -> Result<(Self::Answer, Option<Change>)> {
        let destroyed = store.destroy_by_owner_listed_now(&self.owner, &self.except_ids)?;
        let answer = pb::DestroyByOwnerResponse {
            destroyed: u64::try_from(destroyed.len()).unwrap_or(u64::MAX),
        };
        let change = (!destroyed.is_empty()).then(|| Change::Gone(destroyed.into()));
        Ok((answer, change))
    }
}

//! The engine for any [`SessionStore`] whose operations wait: Redis / Valkey today.

use std::sync::Arc;

use futures_util::StreamExt;
use gonest_session_core::{MemorySessionStore, SessionStore, StoreError, StoreStats};
use gonest_session_proto::pb;
use gonest_session_redis::RedisSessionStore;
use tonic::Streaming;

use super::{Engine, Operation, answer_size, shutting_down};
use crate::budget::AnswerBudget;
use crate::draining::{Call, WriteGate};
use crate::pipeline::{AnswerStream, Stopped, answers_at_once};
use crate::service::SessionService;
use crate::tracking::Feed;

/// A store that can tell whether it is reachable, for the daemon's health.
pub(crate) trait Reachable {
    /// Whether the store answers now.
    fn reachable(&self) -> impl Future<Output = bool> + Send;
}

impl Reachable for RedisSessionStore {
    async fn reachable(&self) -> bool {
        self.ping().await.is_ok()
    }
}

/// Serves a store of someone else's (Redis keeps and expires the sessions; the daemon keeps no
/// state): each operation is a future, and a `Pipeline` stream has many in progress at once.
#[derive(Debug)]
pub(crate) struct StoreEngine<S> {
    store: Arc<S>,
    /// The changes of every daemon on the same store, relayed from it; `None` when the store
    /// does not publish them.
    feed: Option<Arc<Feed>>,
}

impl<S> Clone for StoreEngine<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            feed: self.feed.clone(),
        }
    }
}

impl<S: SessionStore + Reachable> StoreEngine<S> {
    /// Applies `op`; a write only if `writes` is still open. The store keeps no snapshot of the
    /// daemon's, so a write only has to find the gate open, not finish under it.
    pub(crate) async fn apply<O: Operation>(
        &self,
        op: O,
        writes: &WriteGate,
    ) -> Result<O::Answer, StoreError> {
        if O::WRITES && writes.pass(|| ()).is_none() {
            return Err(shutting_down());
        }
        op.apply(&*self.store).await.map_err(unavailable_on_timeout)
    }
}

impl StoreEngine<RedisSessionStore> {
    /// An engine on `store`; if it publishes its changes, with a feed of them relayed from
    /// Redis (see [`crate::tracking::relay`]), whose relay runs until the engine is dropped.
    pub(crate) fn on_redis(store: RedisSessionStore) -> Self {
        let feed = store.publishes_changes().then(|| {
            let feed = Arc::new(Feed::relayed());
            tokio::spawn(crate::tracking::relay::run(
                store.clone(),
                Arc::downgrade(&feed),
            ));
            feed
        });
        Self {
            store: Arc::new(store),
            feed,
        }
    }
}

/// A store not answering in time is a store unavailable, to the daemon's callers: they get
/// `UNAVAILABLE` and may try another daemon or later.
fn unavailable_on_timeout(err: StoreError) -> StoreError {
    match err {
        StoreError::Timeout => StoreError::Unavailable("the backend did not answer in time".into()),
        err => err,
    }
}

impl<S: SessionStore + Reachable> Engine for StoreEngine<S> {
    /// The answer is awaited after the budget is checked, so each call may have one answer
    /// over it.
    async fn unary<O: Operation>(
        &self,
        op: O,
        writes: &WriteGate,
        budget: Option<&AnswerBudget>,
    ) -> Result<O::Answer, StoreError> {
        if let Some(budget) = budget {
            budget.wait().await;
        }
        let answer = self.apply(op, writes).await;
        if let Some(budget) = budget {
            budget.produced(answer_size(&answer));
        }
        answer
    }

    async fn stats(&self, _as_stored: bool) -> Option<StoreStats> {
        None
    }

    async fn reachable(&self) -> Option<bool> {
        Some(self.store.reachable().await)
    }

    fn memory(&self) -> Option<&MemorySessionStore> {
        None
    }

    /// The relayed feed, where the store publishes its changes; otherwise none, as other
    /// daemons change the same sessions unseen.
    fn feed(&self) -> Option<&Arc<Feed>> {
        self.feed.as_ref()
    }

    fn answers(
        service: SessionService<Self>,
        requests: Streaming<pb::PipelineRequest>,
        budget: Option<Arc<AnswerBudget>>,
        stopped: Stopped,
        call: Call,
    ) -> AnswerStream {
        Box::pin(
            answers_at_once(service, requests, budget)
                .take_until(stopped)
                .inspect(move |_| {
                    let _counted = &call;
                }),
        )
    }
}

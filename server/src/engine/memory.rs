//! The memory engine: the daemon's own store, called directly.

use std::sync::Arc;

use gonest_session_core::{MemorySessionStore, StoreError, StoreStats, StoredSession};
use gonest_session_proto::pb;
use tonic::Streaming;

use super::{Engine, Operation, answer_size, shutting_down};
use crate::aof::AppendLog;
use crate::budget::AnswerBudget;
use crate::draining::{Call, WriteGate};
use crate::pipeline::{AnswerStream, MemoryAnswers, Stopped};
use crate::service::SessionService;
use crate::tracking::Feed;

/// Serves a [`MemorySessionStore`]: every operation is applied within the call that asks for it.
#[derive(Clone, Debug)]
pub(crate) struct MemoryEngine {
    store: MemorySessionStore,
    /// Where every change is published for `Track` streams.
    feed: Arc<Feed>,
    /// The append-only log, with `--data-dir` (unless `--appendfsync off`).
    log: Option<Arc<AppendLog>>,
}

impl MemoryEngine {
    pub(crate) fn new(store: MemorySessionStore, log: Option<Arc<AppendLog>>) -> Self {
        Self {
            store,
            feed: Arc::new(Feed::new()),
            log,
        }
    }

    /// Applies `op` now; a write only while `writes` is open, so none lands after shutdown
    /// closes it, and only while the log can be written. A change is published once applied,
    /// when trackers listen.
    pub(crate) fn apply<O: Operation>(
        &self,
        op: O,
        writes: &WriteGate,
    ) -> Result<O::Answer, StoreError> {
        if !O::WRITES {
            return op.apply_now(&self.store);
        }
        if self.log.as_ref().is_some_and(|log| log.failing()) {
            return Err(crate::aof::log_failing());
        }
        let (answer, change) = writes
            .pass(|| op.apply_tracked(&self.store))
            .unwrap_or_else(|| Err(shutting_down()))?;
        // Asked after the change is applied; see `Feed::listened`.
        if let Some(change) = change
            && self.feed.listened()
        {
            self.feed.publish(change);
        }
        Ok(answer)
    }

    /// Reads a session as the store holds it, for a `Pipeline` Get written straight from it.
    pub(crate) fn get_stored(&self, id: &str) -> Result<Option<StoredSession>, StoreError> {
        self.store.get_stored_now(id)
    }
}

impl Engine for MemoryEngine {
    /// The answer is produced while the budget is checked, so only one answer at a time can
    /// go over it.
    async fn unary<O: Operation>(
        &self,
        op: O,
        writes: &WriteGate,
        budget: Option<&AnswerBudget>,
    ) -> Result<O::Answer, StoreError> {
        let answer = match budget {
            None => self.apply(op, writes),
            Some(budget) => {
                budget
                    .produce(|| {
                        let answer = self.apply(op, writes);
                        let bytes = answer_size(&answer);
                        (answer, bytes)
                    })
                    .await
            }
        };
        // A write is answered once the log has it (with `always`, on disk).
        if O::WRITES
            && let Some(log) = self.log.as_ref()
        {
            log.logged(log.position()).await?;
        }
        answer
    }

    async fn stats(&self, as_stored: bool) -> Option<StoreStats> {
        Some(if as_stored {
            self.store.stats()
        } else {
            self.store.live_stats().await
        })
    }

    async fn reachable(&self) -> Option<bool> {
        None
    }

    fn memory(&self) -> Option<&MemorySessionStore> {
        Some(&self.store)
    }

    fn feed(&self) -> Option<&Arc<Feed>> {
        Some(&self.feed)
    }

    fn append_log(&self) -> Option<&Arc<AppendLog>> {
        self.log.as_ref()
    }

    fn answers(
        service: SessionService<Self>,
        requests: Streaming<pb::PipelineRequest>,
        budget: Option<Arc<AnswerBudget>>,
        stopped: Stopped,
        call: Call,
    ) -> AnswerStream {
        Box::pin(MemoryAnswers::new(service, requests, budget, stopped, call))
    }
}

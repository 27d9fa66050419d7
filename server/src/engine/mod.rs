//! The seam between the gRPC service and the sessions: an [`Engine`] applies the service's
//! operations to a store.
//!
//! - [`MemoryEngine`] calls the daemon's own [`MemorySessionStore`] directly. Its operations are
//!   plain functions that return their answer, so a write is applied while the shutdown gate is
//!   held and an answer is produced while its connection's budget is checked, with nothing to
//!   wait for in between.
//! - [`StoreEngine`] drives any other [`SessionStore`] (Redis / Valkey today) through its
//!   futures, with a stream's operations in progress at once.
//!
//! The service is generic over the engine; the daemon picks one when it starts
//! ([`crate::server::run`]), and nothing else names a backend.

mod memory;
mod operation;
mod store;

use std::future::Future;

use gonest_session_core::{MemorySessionStore, StoreError, StoreStats};
use gonest_session_proto::pb;
use tonic::Streaming;

pub(crate) use memory::MemoryEngine;
pub(crate) use operation::Operation;
pub(crate) use store::{Reachable, StoreEngine};

use crate::budget::AnswerBudget;
use crate::draining::{Call, WriteGate};
use crate::pipeline::{AnswerStream, Stopped};
use crate::service::SessionService;

/// How the service applies operations to its store; see the [module docs](self).
pub(crate) trait Engine: Clone + Send + Sync + 'static {
    /// Applies `op`, through `writes` if it changes the store, its answer produced under
    /// `budget` when there is one.
    fn unary<O: Operation>(
        &self,
        op: O,
        writes: &WriteGate,
        budget: Option<&AnswerBudget>,
    ) -> impl Future<Output = Result<O::Answer, StoreError>> + Send;

    /// The counters `Stats` reports: exact after removing what has expired, or, `as_stored`, at
    /// once as they stand. `None` where the daemon counts nothing (the store is someone else's).
    fn stats(&self, as_stored: bool) -> impl Future<Output = Option<StoreStats>> + Send;

    /// Whether the store can be reached now; `None` for a store that cannot be lost.
    fn reachable(&self) -> impl Future<Output = Option<bool>> + Send;

    /// The memory store, when this engine serves one (for snapshots and metrics).
    fn memory(&self) -> Option<&MemorySessionStore>;

    /// Where its changes are published for `Track` streams; `None` where the daemon cannot see
    /// every change (another daemon may change the same store).
    fn feed(&self) -> Option<&std::sync::Arc<crate::tracking::Feed>>;

    /// The append-only log of every change, on the memory backend with `--data-dir`.
    fn append_log(&self) -> Option<&std::sync::Arc<crate::aof::AppendLog>> {
        None
    }

    /// The answers of one `Pipeline` stream, in the order its operations came, each produced
    /// under `budget` (the connection's, when there is one). They end when `stopped` completes,
    /// and `call` counts the stream until they are dropped.
    fn answers(
        service: SessionService<Self>,
        requests: Streaming<pb::PipelineRequest>,
        budget: Option<std::sync::Arc<AnswerBudget>>,
        stopped: Stopped,
        call: Call,
    ) -> AnswerStream;
}

/// The error of a write that comes after shutdown has closed the write gate.
fn shutting_down() -> StoreError {
    StoreError::Unavailable("the daemon is shutting down".to_owned())
}

/// The size of an answer, counted against its connection's budget.
fn answer_size<T: prost::Message>(answer: &Result<T, StoreError>) -> usize {
    answer.as_ref().map_or(0, prost::Message::encoded_len)
}

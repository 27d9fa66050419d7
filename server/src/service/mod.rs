//! The `gonest.session.v1.SessionStore` gRPC service over an [`Engine`].
//!
//! - this module: the service's state, and how each operation is counted and logged;
//! - [`unary`]: the generated server's methods, one call each;
//! - [`crate::pipeline`]: `Pipeline` streams, answered by a body of our own.

mod unary;

use std::sync::Arc;
use std::time::Instant;

use gonest_session_core::StoreError;
use gonest_session_proto::status_from_error;
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::budget::AnswerBudget;
use crate::draining::{InFlight, WriteGate};
use crate::engine::{Engine, Operation};
use crate::incoming::ConnInfo;
use crate::metrics::Metrics;
use crate::pipeline::{AnswerStream, Stopped};

/// Serves an [`Engine`] as `gonest.session.v1.SessionStore`.
///
/// Unary calls and `Pipeline` operations go through the same [`Operation`]s, so they answer
/// alike.
#[derive(Clone, Debug)]
pub(crate) struct SessionService<E> {
    /// The sessions.
    pub(crate) engine: E,
    /// Becomes `true` when the daemon starts shutting down, which ends open `Pipeline` streams.
    pub(crate) stopping: watch::Receiver<bool>,
    /// Where operations are counted, when metrics are on.
    metrics: Option<Arc<Metrics>>,
    /// The calls in progress, which shutdown waits for.
    in_flight: InFlight,
    /// Closed by shutdown before the final snapshot: no write lands after it.
    pub(crate) writes: Arc<WriteGate>,
    /// The limits `Stats` reports.
    limits: Limits,
}

/// The limits a daemon's clients learn from `Stats`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The largest session, keys plus values, in bytes.
    pub(crate) max_session_bytes: usize,
    /// The longest TTL a save or touch may ask for.
    pub(crate) max_ttl: std::time::Duration,
}

impl<E: Engine> SessionService<E> {
    /// Serves `engine`, whose `limits` it reports. Open `Pipeline` streams end when `stopping`
    /// turns `true`.
    pub(crate) fn new(engine: E, limits: Limits, stopping: watch::Receiver<bool>) -> Self {
        Self {
            limits,
            engine,
            stopping,
            metrics: None,
            in_flight: InFlight::new(),
            writes: Arc::default(),
        }
    }

    /// Counts every operation in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The calls in progress.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// When an operation starts, if it is to be timed.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.metrics.as_ref().map(|_| Instant::now())
    }

    /// The outcome of an operation of `method` begun at `started`: a failure becomes its
    /// status and is logged, and either is counted in the metrics.
    pub(crate) fn observed<T>(
        &self,
        method: &'static str,
        started: Option<Instant>,
        result: Result<T, StoreError>,
    ) -> Result<T, Status> {
        let result = result.map_err(|err| {
            let status = status_from_error(&err);
            log_failure(&err, &status);
            status
        });
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            let code = result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok);
            metrics.observe(method, code, started.elapsed());
        }
        result
    }

    /// Applies one unary call's operation, its answer produced under `budget`.
    async fn unary<O: Operation>(
        &self,
        op: O,
        budget: Option<&AnswerBudget>,
    ) -> Result<O::Answer, Status> {
        let started = self.started();
        let answer = self.engine.unary(op, &self.writes, budget).await;
        self.observed(O::METHOD, started, answer)
    }

    /// Answers each operation of a `Pipeline` stream in the order it arrived, as the engine
    /// applies them (see [`Engine::answers`]). The stream ends when the daemon stops, and is
    /// counted as a call in progress until it is dropped: its last answers sent, or the peer
    /// gone.
    pub(crate) fn answers(
        &self,
        request: Request<tonic::Streaming<gonest_session_proto::pb::PipelineRequest>>,
    ) -> AnswerStream {
        let budget = answer_budget(&request);
        let call = self.in_flight.token();
        let mut stopping = self.stopping.clone();
        let stopped: Stopped = Box::pin(async move {
            // An error means the daemon is gone, which is as good as stopping.
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        E::answers(self.clone(), request.into_inner(), budget, stopped, call)
    }
}

/// Logs a failed operation, `err` sent as `status`. Rejections of bad requests are the caller's
/// business and logged at debug; a backend with no room left is the operator's, a warning;
/// anything else is the daemon's and logged as an error. Never with the session id.
fn log_failure(err: &StoreError, status: &Status) {
    match (err, status.code()) {
        (StoreError::StoreFull(_), _) => {
            tracing::warn!(
                message = status.message(),
                "the backend is full: writes are refused"
            );
        }
        (_, tonic::Code::Internal | tonic::Code::Unknown) => {
            tracing::error!(code = ?status.code(), message = status.message(), "operation failed");
        }
        (_, code) => tracing::debug!(?code, message = status.message(), "operation refused"),
    }
}

/// The answer budget of the connection `request` came on (none when called in process).
pub(crate) fn answer_budget<T>(request: &Request<T>) -> Option<Arc<AnswerBudget>> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|info| info.budget.clone())
}

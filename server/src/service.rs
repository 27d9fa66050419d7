//! The `gonest.session.v1.SessionStore` gRPC service over a [`Backend`].

use std::future::Future;
use std::pin::Pin;

use futures_util::FutureExt;
use futures_util::{Stream, StreamExt};
use gonest_session_core::StoreError;
use gonest_session_proto::chunked::{Answer, Outcome, StoredGet};
use gonest_session_proto::{
    duration_from_pb, duration_to_pb, error_to_pb, pb, record_to_pb, save_from_pb,
    status_from_error, timestamp_to_pb,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;
use std::time::Instant;

use crate::backend::Backend;
use crate::budget::AnswerBudget;
use crate::draining::{Call, InFlight, WriteGate};
use crate::incoming::ConnInfo;
use crate::memory_usage;
use crate::metrics::Metrics;
use crate::turns::{SessionOrder, Turn};

/// How many operations of one `Pipeline` stream a Redis backend works on at once (and at most
/// [`crate::budget::OPS_IN_PROGRESS`] of one connection). Operations on one session still apply
/// in the order they came (see [`crate::turns`]), and answers go back in that order.
const REDIS_PIPELINE_DEPTH: usize = 64;

/// Serves a [`Backend`] as `gonest.session.v1.SessionStore`.
///
/// Unary calls and `Pipeline` operations go through the same handlers, so they answer alike.
#[derive(Clone, Debug)]
pub struct SessionService {
    /// The sessions.
    store: Backend,
    /// Becomes `true` when the daemon starts shutting down, which ends open `Pipeline` streams.
    stopping: watch::Receiver<bool>,
    /// Where operations are counted, when metrics are on.
    metrics: Option<Arc<Metrics>>,
    /// The calls in progress, which shutdown waits for.
    in_flight: InFlight,
    /// Closed by shutdown before the final snapshot: no write lands after it.
    writes: Arc<WriteGate>,
    /// The limits `Stats` reports.
    limits: Limits,
}

/// The limits a daemon's clients learn from `Stats`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest session, keys plus values, in bytes.
    pub max_session_bytes: usize,
    /// The longest TTL a save or touch may ask for.
    pub max_ttl: std::time::Duration,
}

impl SessionService {
    /// Serves `store`, whose `limits` it reports. Open `Pipeline` streams end when `stopping`
    /// turns `true`.
    pub fn new(store: Backend, limits: Limits, stopping: watch::Receiver<bool>) -> Self {
        Self {
            limits,
            store,
            stopping,
            metrics: None,
            in_flight: InFlight::new(),
            writes: Arc::default(),
        }
    }

    /// The calls in progress.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// The gate every write passes.
    pub(crate) fn writes(&self) -> Arc<WriteGate> {
        self.writes.clone()
    }

    /// Runs a write through the gate; once shutdown has closed it, `UNAVAILABLE`. A memory write
    /// completes while the gate is held, so none lands after shutdown closes it; Redis keeps no
    /// snapshot of the daemon's, and a write to it only has to find the gate open.
    async fn write<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let shutting_down = || StoreError::Unavailable("the daemon is shutting down".to_owned());
        match &self.store {
            Backend::Memory(_) => self
                .writes
                .pass(|| {
                    write
                        .now_or_never()
                        .expect("memory writes complete at once")
                })
                .unwrap_or_else(|| Err(shutting_down())),
            Backend::Redis(_) => match self.writes.pass(|| ()) {
                Some(()) => write.await,
                None => Err(shutting_down()),
            },
        }
    }

    /// Counts every operation in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs one operation, logging a failure and counting it in the metrics.
    async fn run<T>(
        &self,
        method: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Status> {
        let started = self.metrics.as_ref().map(|_| Instant::now());
        let result = op.await.map_err(|err| {
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

    async fn get(&self, request: pb::GetRequest) -> Result<pb::GetResponse, StoreError> {
        let session = self.store.get(&request.id).await?.map(record_to_pb);
        Ok(pb::GetResponse { session })
    }

    async fn save(&self, request: pb::SaveRequest) -> Result<pb::SaveResponse, StoreError> {
        let save = save_from_pb(request)?;
        let saved = self.write(self.store.save(save)).await?;
        Ok(pb::SaveResponse {
            version: saved.version,
            created_at: Some(timestamp_to_pb(saved.created_at)),
            expires_at: Some(timestamp_to_pb(saved.expires_at)),
        })
    }

    async fn destroy(
        &self,
        request: pb::DestroyRequest,
    ) -> Result<pb::DestroyResponse, StoreError> {
        let existed = self.write(self.store.destroy(&request.id)).await?;
        Ok(pb::DestroyResponse { existed })
    }

    async fn touch(&self, request: pb::TouchRequest) -> Result<pb::TouchResponse, StoreError> {
        let ttl = request.ttl.as_ref().map(duration_from_pb).transpose()?;
        let expires_at = self.write(self.store.touch(&request.id, ttl)).await?;
        Ok(pb::TouchResponse {
            found: expires_at.is_some(),
            expires_at: expires_at.map(timestamp_to_pb),
        })
    }

    async fn list_by_owner(
        &self,
        request: pb::ListByOwnerRequest,
    ) -> Result<pb::ListByOwnerResponse, StoreError> {
        let sessions = self
            .store
            .list_by_owner(&request.owner, request.with_data)
            .await?;
        let size: usize = sessions
            .iter()
            .map(|session| gonest_session_core::data_size(&session.data))
            .sum();
        if size > MAX_LIST_DATA_BYTES {
            // RESOURCE_EXHAUSTED: list them without data and Get them one by one.
            return Err(StoreError::TooLarge {
                size,
                limit: MAX_LIST_DATA_BYTES,
            });
        }
        Ok(pb::ListByOwnerResponse {
            sessions: sessions.into_iter().map(record_to_pb).collect(),
        })
    }

    async fn list_sessions(
        &self,
        request: pb::ListSessionsRequest,
    ) -> Result<pb::ListSessionsResponse, StoreError> {
        let limit = match request.limit {
            0 => 100,
            limit => usize::try_from(limit).unwrap_or(usize::MAX),
        };
        let page = self.store.list_sessions(&request.cursor, limit).await?;
        Ok(pb::ListSessionsResponse {
            sessions: page.sessions.into_iter().map(record_to_pb).collect(),
            next_cursor: page.next.unwrap_or_default(),
        })
    }

    async fn destroy_by_owner(
        &self,
        request: pb::DestroyByOwnerRequest,
    ) -> Result<pb::DestroyByOwnerResponse, StoreError> {
        let destroyed = self
            .write(
                self.store
                    .destroy_by_owner(&request.owner, &request.except_ids),
            )
            .await?;
        Ok(pb::DestroyByOwnerResponse { destroyed })
    }

    /// Answers a stream's messages as [`MemoryAnswers`] does, but with up to
    /// [`REDIS_PIPELINE_DEPTH`] operations in progress at once (within the connection's
    /// [`OPS_IN_PROGRESS`](crate::budget::OPS_IN_PROGRESS)), each waiting only for the stream's
    /// operations before it on the same session: for a backend that waits, so that a stream
    /// is not one round trip per operation. Each operation starts once the connection's answer
    /// budget allows; each message is counted against it once it is put together.
    fn answers_at_once(
        self,
        requests: impl Stream<Item = Result<pb::PipelineRequest, Status>> + Send + 'static,
        budget: Option<Arc<AnswerBudget>>,
    ) -> impl Stream<Item = Result<Answer, Status>> + Send + 'static {
        let mut order = SessionOrder::default();
        // Turns are handed out here, in the order the messages came.
        let units = requests.flat_map(move |item| {
            let units = match item {
                Ok(request) => Unit::split(request, &mut order)
                    .into_iter()
                    .map(Ok)
                    .collect(),
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(units)
        });
        let (service, applying) = (self, budget.clone());
        let pieces = units
            .map(move |unit: Result<Unit, Status>| {
                let (service, budget) = (service.clone(), applying.clone());
                async move {
                    let mut unit = unit?;
                    let permit = match budget.as_deref() {
                        Some(budget) => {
                            let permit = budget.op_permit().await;
                            budget.wait().await;
                            Some(permit)
                        }
                        None => None,
                    };
                    if let Some(turn) = &mut unit.turn {
                        turn.wait().await;
                    }
                    let answer = match unit.op {
                        Ok(op) => service.apply(unit.tag, op).await,
                        Err(()) => service.refuse_nested(unit.tag).await,
                    };
                    // The next operation on this session, and on this connection, may start.
                    drop((unit.turn, permit));
                    Ok(Piece {
                        message: unit.message,
                        own: unit.own,
                        last: unit.last,
                        answer,
                    })
                }
            })
            .buffered(REDIS_PIPELINE_DEPTH);
        let mut assembler = Assembler::default();
        pieces.filter_map(move |piece| {
            let message = match piece {
                Ok(piece) => assembler.add(piece).map(|message| {
                    if let Some(budget) = &budget {
                        budget.produced(message.encoded_len());
                    }
                    Ok(message)
                }),
                Err(status) => Some(Err(status)),
            };
            std::future::ready(message)
        })
    }

    /// The answer to a batch nested in a batch.
    async fn refuse_nested(&self, tag: u64) -> Answer {
        let refused = self
            .run("pipeline", async {
                Err::<(), _>(StoreError::invalid("batches do not nest"))
            })
            .await;
        error_answer(tag, &refused.unwrap_err())
    }

    /// The next answer of `batch`: the message's own operation first, then as many of the
    /// batch's operations as the [`Assembler`] puts in one part (at least one).
    async fn next_part(&self, batch: &mut Batch) -> Answer {
        if let Some(op) = batch.own.take() {
            let answer = self.apply(batch.tag, Some(op)).await;
            let piece = Piece {
                message: batch.tag,
                own: true,
                last: false,
                answer,
            };
            batch.assembler.add(piece);
        }
        while let Some(element) = batch.rest.next() {
            let answer = if element.batch.is_empty() {
                self.apply(element.tag, element.op).await
            } else {
                self.refuse_nested(element.tag).await
            };
            let piece = Piece {
                message: batch.tag,
                own: false,
                last: batch.rest.len() == 0,
                answer,
            };
            if let Some(part) = batch.assembler.add(piece) {
                return part;
            }
        }
        // Not reached: the batch's last operation completes its last part.
        batch.assembler.take(batch.tag)
    }

    /// Applies one pipelined operation; a failure becomes an inline `Error`. A Get on the memory
    /// backend is answered from the stored session as it is (see [`StoredGet`]).
    async fn apply(&self, tag: u64, op: Option<pb::pipeline_request::Op>) -> Answer {
        use pb::pipeline_request::Op;
        use pb::pipeline_response::Result as Done;
        let result = match op {
            Some(Op::Get(op)) => match &self.store {
                Backend::Memory(store) => {
                    self.run("get", async {
                        Ok(match store.get_stored_now(&op.id)? {
                            Some(session) => Outcome::Stored(StoredGet::new(session)),
                            None => Outcome::Message(Done::Get(pb::GetResponse::default())),
                        })
                    })
                    .await
                }
                Backend::Redis(_) => self
                    .run("get", async { self.get(op).await.map(Done::Get) })
                    .await
                    .map(Outcome::Message),
            },
            Some(Op::Save(op)) => self
                .run("save", async { self.save(op).await.map(Done::Save) })
                .await
                .map(Outcome::Message),
            Some(Op::Destroy(op)) => self
                .run("destroy", async {
                    self.destroy(op).await.map(Done::Destroy)
                })
                .await
                .map(Outcome::Message),
            Some(Op::Touch(op)) => self
                .run("touch", async { self.touch(op).await.map(Done::Touch) })
                .await
                .map(Outcome::Message),
            None => {
                self.run("pipeline", async {
                    Err(StoreError::invalid("pipeline request has no operation"))
                })
                .await
            }
        };
        match result {
            Ok(result) => Answer {
                tag,
                result: Some(result),
                batch: Vec::new(),
            },
            Err(status) => error_answer(tag, &status),
        }
    }

    /// Produces an answer under the connection's budget (when there is one). A memory answer is
    /// produced while the budget is checked, so only one answer at a time can go over it; a
    /// Redis answer is awaited after the check, so each stream may have one answer over it.
    async fn budgeted<T>(
        &self,
        budget: Option<&AnswerBudget>,
        answer: impl Future<Output = T>,
        size: impl FnOnce(&T) -> usize,
    ) -> T {
        match (budget, &self.store) {
            (None, _) => answer.await,
            (Some(budget), Backend::Memory(_)) => {
                budget
                    .produce(|| {
                        let answer = answer
                            .now_or_never()
                            .expect("memory answers complete at once");
                        let bytes = size(&answer);
                        (answer, bytes)
                    })
                    .await
            }
            (Some(budget), Backend::Redis(_)) => {
                budget.wait().await;
                let answer = answer.await;
                budget.produced(size(&answer));
                answer
            }
        }
    }
}

/// One operation of a `Pipeline` message, as a Redis backend applies it: on its own, at once
/// with the stream's other operations, once its turn comes.
struct Unit {
    /// The tag of the message it came in.
    message: u64,
    /// Whether it is the message's own operation (else one of its batch).
    own: bool,
    /// Whether it is the message's last.
    last: bool,
    tag: u64,
    /// The operation, or `Err` for a batch nested in a batch (refused).
    op: Result<Option<pb::pipeline_request::Op>, ()>,
    turn: Option<Turn>,
}

impl Unit {
    /// The operations of one message, each with its turn in `order`.
    fn split(request: pb::PipelineRequest, order: &mut SessionOrder) -> Vec<Unit> {
        let message = request.tag;
        let count = request.batch.len();
        let mut units = Vec::with_capacity(1 + count);
        // A message that carries only a batch has no operation of its own to answer.
        if request.op.is_some() || count == 0 {
            units.push(Unit {
                message,
                own: true,
                last: count == 0,
                tag: message,
                turn: order.turn(request.op.as_ref()),
                op: Ok(request.op),
            });
        }
        for (n, element) in request.batch.into_iter().enumerate() {
            let nested = !element.batch.is_empty();
            units.push(Unit {
                message,
                own: false,
                last: n + 1 == count,
                tag: element.tag,
                turn: if nested {
                    None
                } else {
                    order.turn(element.op.as_ref())
                },
                op: if nested { Err(()) } else { Ok(element.op) },
            });
        }
        units
    }
}

/// An applied [`Unit`]: its answer, and where that goes.
struct Piece {
    message: u64,
    own: bool,
    last: bool,
    answer: Answer,
}

/// Puts answers back into messages, for both backends: one per message, a batch's in parts of
/// about [`BATCH_PART_BYTES`].
#[derive(Default)]
struct Assembler {
    /// The message being put together, and the bytes of its batch answers so far.
    part: Option<(Answer, usize)>,
}

impl Assembler {
    /// Adds `piece`; returns a message once one is complete.
    fn add(&mut self, piece: Piece) -> Option<Answer> {
        let (response, bytes) = self.part.get_or_insert_with(|| {
            let header = Answer {
                tag: piece.message,
                ..Default::default()
            };
            (header, 0)
        });
        if piece.own {
            let batch = std::mem::take(&mut response.batch);
            *response = piece.answer;
            response.batch = batch;
        } else {
            *bytes += piece.answer.encoded_len();
            response.batch.push(piece.answer);
        }
        if piece.last || *bytes >= BATCH_PART_BYTES {
            return self.part.take().map(|(response, _)| response);
        }
        None
    }

    /// The message being put together as it stands (a bare answer with `tag` if none).
    fn take(&mut self, tag: u64) -> Answer {
        self.part.take().map_or_else(
            || Answer {
                tag,
                ..Default::default()
            },
            |(part, _)| part,
        )
    }
}

/// What is left to answer of one `Pipeline` message that carries a batch.
struct Batch {
    tag: u64,
    /// The message's own operation, until it is answered.
    own: Option<pb::pipeline_request::Op>,
    /// The operations of its batch not yet applied.
    rest: std::vec::IntoIter<pb::PipelineRequest>,
    /// Its answers so far, put into parts.
    assembler: Assembler,
}

/// A batch's answers go back in messages of about this many bytes; see [`MemoryAnswers`].
pub(crate) const BATCH_PART_BYTES: usize = 1 << 20;

/// The answers of a `Pipeline` stream on the memory backend: each message's operation, then
/// those of its batch, in order, each answer produced under the connection's budget. While the
/// budget is spent no operation is applied and no further request is read. A failure becomes an
/// inline `Error`.
///
/// A batch is answered in parts of about [`BATCH_PART_BYTES`]: however many operations a
/// batch holds, and however large the sessions they read, no answer the daemon holds is
/// larger than that and one session.
///
/// Memory operations complete at once, so each answer is produced in the poll that asks for it,
/// by this one state machine rather than a chain of stream adapters and futures per message.
struct MemoryAnswers<S> {
    requests: S,
    service: SessionService,
    budget: Option<Arc<AnswerBudget>>,
    /// The message read and not yet wholly answered.
    work: Option<Work>,
    /// While the budget is spent: completes once it may not be.
    room: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Completes when the daemon starts shutting down, which ends the answers.
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
    /// Counts the call (for shutdown) until the answers are dropped.
    _call: Call,
}

/// One `Pipeline` message to answer.
enum Work {
    One(u64, Option<pb::pipeline_request::Op>),
    /// Boxed: its answers so far make it twice the size of a single operation.
    Batch(Box<Batch>),
}

impl Work {
    fn of(request: pb::PipelineRequest) -> Self {
        if request.batch.is_empty() {
            return Self::One(request.tag, request.op);
        }
        // With a batch, a message has an answer of its own only if it has an operation.
        Self::Batch(Box::new(Batch {
            tag: request.tag,
            own: request.op,
            rest: request.batch.into_iter(),
            assembler: Assembler::default(),
        }))
    }
}

impl<S> MemoryAnswers<S> {
    fn new(
        service: SessionService,
        requests: S,
        budget: Option<Arc<AnswerBudget>>,
        stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
        call: Call,
    ) -> Self {
        Self {
            requests,
            service,
            budget,
            work: None,
            room: None,
            stopped,
            ended: false,
            _call: call,
        }
    }

    /// The next answer of `work`: a single operation's, or a batch's next part. Leaves in
    /// `work` what is left to answer.
    fn answer(service: &SessionService, work: &mut Option<Work>) -> Answer {
        let answer = match work {
            Some(Work::Batch(batch)) => {
                let part = service.next_part(batch).now_or_never();
                if batch.rest.len() == 0 {
                    *work = None;
                }
                part
            }
            Some(Work::One(..)) => match work.take() {
                Some(Work::One(tag, op)) => service.apply(tag, op).now_or_never(),
                _ => unreachable!("matched above"),
            },
            None => unreachable!("answered only with work to do"),
        };
        answer.expect("memory answers complete at once")
    }
}

impl<S> Stream for MemoryAnswers<S>
where
    S: Stream<Item = Result<pb::PipelineRequest, Status>> + Unpin,
{
    type Item = Result<Answer, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended || this.stopped.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(None);
        }
        loop {
            if this.work.is_none() {
                match this.requests.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(request))) => this.work = Some(Work::of(request)),
                    Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                    Poll::Ready(None) => {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let Some(room) = this.room.as_mut() {
                if room.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.room = None;
            }
            let Self {
                service,
                budget,
                work,
                room,
                ..
            } = &mut *this;
            let Some(budget) = budget else {
                return Poll::Ready(Some(Ok(Self::answer(service, work))));
            };
            let produced = budget.try_produce(|| {
                let answer = Self::answer(service, work);
                let bytes = answer.encoded_len();
                (answer, bytes)
            });
            match produced {
                Ok(answer) => return Poll::Ready(Some(Ok(answer))),
                Err(_) => {
                    let budget = budget.clone();
                    *room = Some(Box::pin(async move { budget.wait().await }));
                }
            }
        }
    }
}

/// The answer of a failed pipelined operation.
fn error_answer(tag: u64, status: &Status) -> Answer {
    Answer {
        tag,
        result: Some(Outcome::Message(pb::pipeline_response::Result::Error(
            error_to_pb(status),
        ))),
        batch: Vec::new(),
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
fn answer_budget<T>(request: &Request<T>) -> Option<Arc<AnswerBudget>> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|info| info.budget.clone())
}

/// The most session data one `ListByOwner` answer carries (with `with_data`): 1,000 sessions
/// of 64 KiB.
const MAX_LIST_DATA_BYTES: usize = 64 << 20;

/// The response stream of `Pipeline`.
pub type PipelineStream = Pin<Box<dyn Stream<Item = Result<pb::PipelineResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::session_store_server::SessionStore for SessionService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let _call = self.in_flight.token();
        let budget = answer_budget(&request);
        let request = request.into_inner();
        let get = self.run("get", SessionService::get(self, request));
        let size = |answer: &Result<pb::GetResponse, Status>| {
            answer.as_ref().map_or(0, prost::Message::encoded_len)
        };
        self.budgeted(budget.as_deref(), get, size)
            .await
            .map(Response::new)
    }

    async fn save(
        &self,
        request: Request<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        let _call = self.in_flight.token();
        let request = request.into_inner();
        self.run("save", SessionService::save(self, request))
            .await
            .map(Response::new)
    }

    async fn destroy(
        &self,
        request: Request<pb::DestroyRequest>,
    ) -> Result<Response<pb::DestroyResponse>, Status> {
        let _call = self.in_flight.token();
        let request = request.into_inner();
        self.run("destroy", SessionService::destroy(self, request))
            .await
            .map(Response::new)
    }

    async fn touch(
        &self,
        request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        let _call = self.in_flight.token();
        let request = request.into_inner();
        self.run("touch", SessionService::touch(self, request))
            .await
            .map(Response::new)
    }

    async fn list_by_owner(
        &self,
        request: Request<pb::ListByOwnerRequest>,
    ) -> Result<Response<pb::ListByOwnerResponse>, Status> {
        let _call = self.in_flight.token();
        let budget = answer_budget(&request);
        let request = request.into_inner();
        let list = self.run(
            "list_by_owner",
            SessionService::list_by_owner(self, request),
        );
        let size = |answer: &Result<pb::ListByOwnerResponse, Status>| {
            answer.as_ref().map_or(0, prost::Message::encoded_len)
        };
        self.budgeted(budget.as_deref(), list, size)
            .await
            .map(Response::new)
    }

    async fn destroy_by_owner(
        &self,
        request: Request<pb::DestroyByOwnerRequest>,
    ) -> Result<Response<pb::DestroyByOwnerResponse>, Status> {
        let _call = self.in_flight.token();
        let request = request.into_inner();
        self.run(
            "destroy_by_owner",
            SessionService::destroy_by_owner(self, request),
        )
        .await
        .map(Response::new)
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let _call = self.in_flight.token();
        let budget = answer_budget(&request);
        let request = request.into_inner();
        let list = self.run(
            "list_sessions",
            SessionService::list_sessions(self, request),
        );
        let size = |answer: &Result<pb::ListSessionsResponse, Status>| {
            answer.as_ref().map_or(0, prost::Message::encoded_len)
        };
        self.budgeted(budget.as_deref(), list, size)
            .await
            .map(Response::new)
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let stats = self.store.stats(request.get_ref().as_stored).await;
        Ok(Response::new(pb::StatsResponse {
            live_sessions: stats.map(|stats| stats.live_sessions),
            expired_removed_total: stats.map(|stats| stats.expired_removed_total),
            sweeps_total: stats.map(|stats| stats.sweeps_total),
            resident_memory_bytes: memory_usage::resident_bytes(),
            max_session_bytes: u64::try_from(self.limits.max_session_bytes).unwrap_or(u64::MAX),
            max_ttl: Some(duration_to_pb(self.limits.max_ttl)),
            pipeline_batches: true,
            max_batch_operations: u32::try_from(gonest_session_proto::MAX_BATCH_OPERATIONS)
                .unwrap_or(u32::MAX),
        }))
    }

    type PipelineStream = PipelineStream;

    /// Answers each operation in the order it arrived: `SessionService::answers`, as prost's
    /// messages.
    async fn pipeline(
        &self,
        request: Request<Streaming<pb::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let answers = self.answers(request);
        Ok(Response::new(Box::pin(
            answers.map(|answer| answer.map(Answer::into_pb)),
        )))
    }
}

/// The answers of a `Pipeline` stream, as the daemon writes them.
pub(crate) type AnswerStream = Pin<Box<dyn Stream<Item = Result<Answer, Status>> + Send>>;

impl SessionService {
    /// Answers each operation of a `Pipeline` stream in the order it arrived. On the memory
    /// backend, operations are applied on the task that polls this stream, one after another
    /// (different streams in parallel: the store locks only the shard an operation touches). On
    /// Redis, up to [`REDIS_PIPELINE_DEPTH`] are in progress at once, operations on one session
    /// in order.
    pub(crate) fn answers(&self, request: Request<Streaming<pb::PipelineRequest>>) -> AnswerStream {
        let service = self.clone();
        let budget = answer_budget(&request);
        // Counted until the response stream is dropped: its last answers sent, or the peer gone.
        let call = self.in_flight.token();
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            // An error means the daemon is gone, which is as good as stopping.
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        // While the connection's answers are not being taken, the next operation waits for the
        // budget before it is applied, and the stream reads no further requests.
        let requests = request.into_inner();
        match self.store {
            Backend::Memory(_) => Box::pin(MemoryAnswers::new(
                service,
                requests,
                budget,
                Box::pin(stopped),
                call,
            )),
            Backend::Redis(_) => Box::pin(
                service
                    .answers_at_once(requests, budget)
                    .take_until(Box::pin(stopped))
                    .inspect(move |_| {
                        let _counted = &call;
                    }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use gonest_session_core::MemorySessionStore;

    use super::*;

    fn memory_service() -> (SessionService, watch::Sender<bool>) {
        let (stop, stopping) = watch::channel(false);
        let store = Backend::Memory(MemorySessionStore::new(Duration::from_secs(60)));
        let limits = Limits {
            max_session_bytes: 1 << 20,
            max_ttl: Duration::from_secs(3600),
        };
        (SessionService::new(store, limits, stopping), stop)
    }

    fn save(tag: u64, id: &str) -> pb::PipelineRequest {
        pb::PipelineRequest {
            tag,
            op: Some(pb::pipeline_request::Op::Save(pb::SaveRequest {
                session: Some(pb::Session {
                    id: id.into(),
                    data: [("k".to_owned(), b"v".to_vec().into())].into(),
                    ..Default::default()
                }),
                expected_version: None,
                ttl: None,
            })),
            batch: Vec::new(),
        }
    }

    /// `requests` as a stream that counts how many have been taken from it.
    fn counted(
        requests: Vec<pb::PipelineRequest>,
    ) -> (
        impl Stream<Item = Result<pb::PipelineRequest, Status>> + Unpin,
        Arc<AtomicUsize>,
    ) {
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let stream = futures_util::stream::iter(requests).map(move |request| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(request)
        });
        (stream, taken)
    }

    fn stopped_on(stop: &watch::Sender<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut stopping = stop.subscribe();
        Box::pin(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
    }

    async fn stored(service: &SessionService, id: &str) -> bool {
        service.store.get(id).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn while_the_budget_is_spent_nothing_is_applied_and_no_further_request_read() {
        let (service, stop) = memory_service();
        let budget = Arc::new(AnswerBudget::new(100));
        budget.produced(100);
        let (requests, taken) = counted(vec![save(1, "a"), save(2, "b")]);
        let call = service.in_flight.token();
        let mut answers = MemoryAnswers::new(
            service.clone(),
            requests,
            Some(budget.clone()),
            stopped_on(&stop),
            call,
        );
        assert!(answers.next().now_or_never().is_none(), "pending");
        assert_eq!(taken.load(Ordering::SeqCst), 1, "one message read, no more");
        assert!(
            !stored(&service, "a").await,
            "not applied while the budget is spent"
        );

        budget.written(1);
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!(answer.tag, 1);
        assert!(stored(&service, "a").await);
        // The first answer took the budget over its limit again: the second waits in turn.
        assert!(answers.next().now_or_never().is_none(), "pending");
        assert!(!stored(&service, "b").await);
        budget.written(1 << 20);
        assert_eq!(answers.next().await.unwrap().unwrap().tag, 2);
        assert!(answers.next().await.is_none());
    }

    #[tokio::test]
    async fn answers_end_when_the_daemon_stops_and_count_the_call_until_dropped() {
        let (service, stop) = memory_service();
        let (requests, taken) = counted(vec![save(1, "a"), save(2, "b")]);
        let call = service.in_flight.token();
        let mut answers =
            MemoryAnswers::new(service.clone(), requests, None, stopped_on(&stop), call);
        assert_eq!(answers.next().await.unwrap().unwrap().tag, 1);
        stop.send(true).unwrap();
        assert!(answers.next().await.is_none());
        assert!(answers.next().await.is_none(), "and stays ended");
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        assert!(!stored(&service, "b").await);
        let idle = || {
            service.in_flight.close();
            service.in_flight.wait().now_or_never().is_some()
        };
        assert!(!idle(), "counted while the answers live");
        drop(answers);
        assert!(idle());
    }
}

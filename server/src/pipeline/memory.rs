//! `Pipeline` answers on the memory engine: one state machine per stream that applies each
//! operation in the poll that asks for its answer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use gonest_session_proto::chunked::{Answer, Outcome, StoredGet};
use gonest_session_proto::pb;
use tonic::Status;

use super::Stopped;
use super::assemble::{Assembler, NESTED, NO_OPERATION, Piece, answer, message};
use crate::budget::AnswerBudget;
use crate::draining::Call;
use crate::engine::{Engine, MemoryEngine, Operation};
use crate::service::SessionService;

impl SessionService<MemoryEngine> {
    /// Applies one pipelined operation now. A Get is answered from the stored session as it is
    /// (see [`StoredGet`]).
    fn apply_now(&self, tag: u64, op: Option<pb::pipeline_request::Op>) -> Answer {
        use pb::pipeline_request::Op;
        use pb::pipeline_response::Result as Done;
        let started = self.started();
        let result = match op {
            Some(Op::Get(op)) => {
                let stored = self.engine.get_stored(&op.id).map(|stored| match stored {
                    Some(session) => Outcome::Stored(StoredGet::new(session)),
                    None => Outcome::Message(Done::Get(Box::default())),
                });
                self.observed(pb::GetRequest::METHOD, started, stored)
            }
            Some(Op::Save(op)) => message(self.now(*op, started), Done::Save),
            Some(Op::Destroy(op)) => message(self.now(op, started), Done::Destroy),
            Some(Op::Touch(op)) => message(self.now(op, started), Done::Touch),
            None => return self.refuse(tag, NO_OPERATION),
        };
        answer(tag, result)
    }

    /// Applies `op` now, counted from `started`.
    fn now<O: Operation>(
        &self,
        op: O,
        started: Option<std::time::Instant>,
    ) -> Result<O::Answer, Status> {
        let answer = self.engine.apply(op, &self.writes);
        self.observed(O::METHOD, started, answer)
    }

    /// The next answer of `batch`: the message's own operation first, then as many of the
    /// batch's operations as the [`Assembler`] puts in one part (at least one).
    fn next_part(&self, batch: &mut Batch) -> Answer {
        if let Some(op) = batch.own.take() {
            let piece = Piece {
                message: batch.tag,
                own: true,
                last: false,
                answer: self.apply_now(batch.tag, Some(op)),
            };
            batch.assembler.add(piece);
        }
        while let Some(element) = batch.rest.next() {
            let answer = if element.batch.is_empty() {
                self.apply_now(element.tag, element.op)
            } else {
                self.refuse(element.tag, NESTED)
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

/// The answers of a `Pipeline` stream on the memory engine: each message's operation, then
/// those of its batch, in order, each answer produced under the connection's budget. While the
/// budget is spent no operation is applied and no further request is read. A failure becomes an
/// inline `Error`.
///
/// A batch is answered in parts of about
/// [`BATCH_PART_BYTES`](super::assemble::BATCH_PART_BYTES).
///
/// The memory engine applies an operation within the call, so each answer is produced in the
/// poll that asks for it, by this one state machine rather than a chain of stream adapters and
/// futures per message.
pub(crate) struct MemoryAnswers<S> {
    requests: S,
    service: SessionService<MemoryEngine>,
    budget: Option<Arc<AnswerBudget>>,
    /// The message read and not yet wholly answered.
    work: Option<Work>,
    /// While the budget is spent: completes once it may not be.
    room: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Completes when the daemon starts shutting down, which ends the answers.
    stopped: Stopped,
    /// Answers produced and not yet given out, each with whether it waits for the log. With
    /// an append-only log, answers to writes wait until the log has them; those produced
    /// together wait together, so one write (or one sync) to the log covers them all.
    queue: VecDeque<(Answer, bool)>,
    /// The log position the queued answers wait for, until the log has it.
    log_through: Option<u64>,
    /// With `always`: the sync the queued answers wait for.
    syncing: Option<Synced>,
    /// What comes after the queued answers: the end (`None`) or an error.
    end: Option<Option<Status>>,
    ended: bool,
    /// Counts the call (for shutdown) until the answers are dropped.
    _call: Call,
}

/// Completes once the log has synced a write (or has failed to).
type Synced = Pin<Box<dyn Future<Output = Result<(), gonest_session_core::StoreError>> + Send>>;

/// Whether `op` changes the store (its answer then waits for the log).
fn writes(op: Option<&pb::pipeline_request::Op>) -> bool {
    use pb::pipeline_request::Op;
    matches!(op, Some(Op::Save(_) | Op::Destroy(_) | Op::Touch(_)))
}

/// One `Pipeline` message to answer.
enum Work {
    One(u64, Option<pb::pipeline_request::Op>),
    /// Boxed: its answers so far make it twice the size of a single operation.
    Batch(Box<Batch>),
}

impl Work {
    /// Whether answering it may change the store: each of its answers then waits for the
    /// log. (A batch counts as a whole: its parts are few.)
    fn writes(&self) -> bool {
        match self {
            Self::One(_, op) => writes(op.as_ref()),
            Self::Batch(batch) => {
                writes(batch.own.as_ref())
                    || batch
                        .rest
                        .as_slice()
                        .iter()
                        .any(|element| writes(element.op.as_ref()))
            }
        }
    }

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
    pub(crate) fn new(
        service: SessionService<MemoryEngine>,
        requests: S,
        budget: Option<Arc<AnswerBudget>>,
        stopped: Stopped,
        call: Call,
    ) -> Self {
        Self {
            requests,
            service,
            budget,
            work: None,
            room: None,
            stopped,
            queue: VecDeque::new(),
            log_through: None,
            syncing: None,
            end: None,
            ended: false,
            _call: call,
        }
    }

    /// The next answer of `work`: a single operation's, or a batch's next part. Leaves in
    /// `work` what is left to answer.
    fn answer(service: &SessionService<MemoryEngine>, work: &mut Option<Work>) -> Answer {
        match work.take() {
            Some(Work::One(tag, op)) => service.apply_now(tag, op),
            Some(Work::Batch(mut batch)) => {
                let part = service.next_part(&mut batch);
                if batch.rest.len() > 0 {
                    *work = Some(Work::Batch(batch));
                }
                part
            }
            None => unreachable!("answered only with work to do"),
        }
    }

    /// Has the log take what the queued answers wait for: written here and now (without
    /// `always`; a failure turns the answers to writes into errors), or a sync to wait for.
    fn settle(&mut self) {
        let Some(position) = self.log_through else {
            return;
        };
        let Some(log) = self.service.engine.append_log() else {
            self.settled(Ok(()));
            return;
        };
        if log.syncs_each_write() {
            let log = log.clone();
            self.syncing = Some(Box::pin(async move { log.synced(position).await }));
        } else {
            let written = log.write_through(position);
            self.settled(written);
        }
    }

    /// The log has taken what the queued answers wait for, or failed to.
    fn settled(&mut self, result: Result<(), gonest_session_core::StoreError>) {
        self.log_through = None;
        if let Err(err) = result {
            for (answer, waits) in &mut self.queue {
                if *waits {
                    *answer = not_logged(std::mem::take(answer), &err);
                }
            }
        }
    }
}

/// Answers produced before the log is written for them, at most: one write covers them.
const QUEUED: usize = 64;

impl<S> Stream for MemoryAnswers<S>
where
    S: Stream<Item = Result<pb::PipelineRequest, Status>> + Unpin,
{
    type Item = Result<Answer, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended || this.stopped.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(None);
        }
        loop {
            if let Some(syncing) = this.syncing.as_mut() {
                let synced = std::task::ready!(syncing.as_mut().poll(cx));
                this.syncing = None;
                this.settled(synced);
            }
            if this.log_through.is_none() {
                if let Some((answer, _)) = this.queue.pop_front() {
                    return Poll::Ready(Some(Ok(answer)));
                }
                if let Some(end) = this.end.take() {
                    this.ended = true;
                    return Poll::Ready(end.map(Err));
                }
            }
            // Here the queue is empty, or waits for the log: produce more answers while
            // requests are there, then have the log take them all at once.
            if this.queue.len() >= QUEUED || this.end.is_some() {
                this.settle();
                continue;
            }
            match this.produce(cx) {
                Poll::Ready(()) => {}
                Poll::Pending if this.log_through.is_some() => this.settle(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S> MemoryAnswers<S>
where
    S: Stream<Item = Result<pb::PipelineRequest, Status>> + Unpin,
{
    /// Reads the next request if need be and queues its next answer (or notes the end of the
    /// requests); `Pending` while no request is there or the budget is spent.
    fn produce(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.work.is_none() {
            match std::task::ready!(self.requests.poll_next_unpin(cx)) {
                Some(Ok(request)) => self.work = Some(Work::of(request)),
                Some(Err(status)) => {
                    self.end = Some(Some(status));
                    return Poll::Ready(());
                }
                None => {
                    self.end = Some(None);
                    return Poll::Ready(());
                }
            }
        }
        loop {
            if let Some(room) = self.room.as_mut() {
                std::task::ready!(room.as_mut().poll(cx));
                self.room = None;
            }
            let Self {
                service,
                budget,
                work,
                room,
                ..
            } = &mut *self;
            let log = service
                .engine
                .append_log()
                .filter(|_| work.as_ref().is_some_and(Work::writes));
            let before = log.map(|log| log.position());
            let produced = match budget {
                None => Ok(Self::answer(service, work)),
                Some(budget) => budget.try_produce(|| {
                    let answer = Self::answer(service, work);
                    let bytes = answer.framed_len();
                    (answer, bytes)
                }),
            };
            match produced {
                Ok(answer) => {
                    // A read is answered at once, as on the unary calls: it may show a write
                    // still on its way to the log, as it may show one whose answer has not
                    // arrived yet.
                    let after = log.map(|log| log.position());
                    let waits = after != before;
                    if let (true, Some(after)) = (waits, after) {
                        self.log_through = Some(self.log_through.map_or(after, |p| p.max(after)));
                    }
                    self.queue.push_back((answer, waits));
                    return Poll::Ready(());
                }
                Err(_) => {
                    let budget = budget.clone().expect("only a budget refuses");
                    *room = Some(Box::pin(async move { budget.wait().await }));
                }
            }
        }
    }
}

/// `answer` once the log failed to take what it answered: each of its results becomes that
/// error (the client then knows its writes may not be durable, as after a timeout).
fn not_logged(mut answer: Answer, err: &gonest_session_core::StoreError) -> Answer {
    let status = gonest_session_proto::status_from_error(err);
    let failed = || {
        Some(Outcome::Message(pb::pipeline_response::Result::Error(
            gonest_session_proto::error_to_pb(&status),
        )))
    };
    if answer.result.is_some() {
        answer.result = failed();
    }
    for element in &mut answer.batch {
        element.result = failed();
    }
    answer
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::FutureExt;
    use gonest_session_core::MemorySessionStore;
    use tokio::sync::watch;

    use super::*;
    use crate::service::Limits;

    fn memory_service() -> (SessionService<MemoryEngine>, watch::Sender<bool>) {
        let (stop, stopping) = watch::channel(false);
        let store = MemoryEngine::new(MemorySessionStore::new(Duration::from_secs(60)), None);
        let limits = Limits {
            max_session_bytes: 1 << 20,
            max_ttl: Duration::from_secs(3600),
        };
        (SessionService::new(store, limits, stopping), stop)
    }

    fn save(tag: u64, id: &str) -> pb::PipelineRequest {
        pb::PipelineRequest {
            tag,
            op: Some(pb::pipeline_request::Op::Save(Box::new(pb::SaveRequest {
                session: Some(pb::Session {
                    id: id.into(),
                    data: [("k".to_owned(), b"v".to_vec().into())].into(),
                    ..Default::default()
                }),
                expected_version: None,
                ttl: None,
            }))),
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

    fn stopped_on(stop: &watch::Sender<bool>) -> Stopped {
        let mut stopping = stop.subscribe();
        Box::pin(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
    }

    fn stored(service: &SessionService<MemoryEngine>, id: &str) -> bool {
        service.engine.get_stored(id).unwrap().is_some()
    }

    #[tokio::test]
    async fn while_the_budget_is_spent_nothing_is_applied_and_no_further_request_read() {
        let (service, stop) = memory_service();
        let budget = Arc::new(AnswerBudget::new(100));
        budget.produced(100);
        let (requests, taken) = counted(vec![save(1, "a"), save(2, "b")]);
        let call = service.in_flight().token();
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
            !stored(&service, "a"),
            "not applied while the budget is spent"
        );

        budget.written(1);
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!(answer.tag, 1);
        assert!(stored(&service, "a"));
        // The first answer took the budget over its limit again: the second waits in turn.
        assert!(answers.next().now_or_never().is_none(), "pending");
        assert!(!stored(&service, "b"));
        budget.written(1 << 20);
        assert_eq!(answers.next().await.unwrap().unwrap().tag, 2);
        assert!(answers.next().await.is_none());
    }

    #[tokio::test]
    async fn answers_end_when_the_daemon_stops_and_count_the_call_until_dropped() {
        let (service, stop) = memory_service();
        let (requests, taken) = counted(vec![save(1, "a"), save(2, "b")]);
        let call = service.in_flight().token();
        let mut answers =
            MemoryAnswers::new(service.clone(), requests, None, stopped_on(&stop), call);
        assert_eq!(answers.next().await.unwrap().unwrap().tag, 1);
        stop.send(true).unwrap();
        assert!(answers.next().await.is_none());
        assert!(answers.next().await.is_none(), "and stays ended");
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        assert!(!stored(&service, "b"));
        let idle = || {
            service.in_flight().close();
            service.in_flight().wait().now_or_never().is_some()
        };
        assert!(!idle(), "counted while the answers live");
        drop(answers);
        assert!(idle());
    }
}

//! `Pipeline` answers on a store that waits: many operations in progress at once.

use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use gonest_session_proto::chunked::{Answer, Outcome};
use gonest_session_proto::pb;
use tonic::Status;

use super::assemble::{Assembler, NESTED, NO_OPERATION, Piece, answer, message};
use super::turns::{SessionOrder, Turn};
use crate::budget::AnswerBudget;
use crate::engine::{Operation, Reachable, StoreEngine};
use crate::service::SessionService;
use gonest_session_core::SessionStore;

/// How many operations of one `Pipeline` stream a waiting store works on at once (and at most
/// [`crate::budget::OPS_IN_PROGRESS`] of one connection). Operations on one session still apply
/// in the order they came (see [`super::turns`]), and answers go back in that order.
const PIPELINE_DEPTH: usize = 64;

/// Answers a stream's messages as [`MemoryAnswers`](super::MemoryAnswers) does, but with up to
/// [`PIPELINE_DEPTH`] operations in progress at once (within the connection's
/// [`OPS_IN_PROGRESS`](crate::budget::OPS_IN_PROGRESS)), each waiting only for the stream's
/// operations before it on the same session: so that a stream is not one round trip per
/// operation. Each operation starts once the connection's answer budget allows; each message is
/// counted against it once it is put together.
pub(crate) fn answers_at_once<S: SessionStore + Reachable>(
    service: SessionService<StoreEngine<S>>,
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
    let applying = budget.clone();
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
                    Ok(op) => service.apply_one(unit.tag, op).await,
                    Err(()) => service.refuse(unit.tag, NESTED),
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
        .buffered(PIPELINE_DEPTH);
    let mut assembler = Assembler::default();
    pieces.filter_map(move |piece| {
        let message = match piece {
            Ok(piece) => assembler.add(piece).map(|message| {
                if let Some(budget) = &budget {
                    budget.produced(message.framed_len());
                }
                Ok(message)
            }),
            Err(status) => Some(Err(status)),
        };
        std::future::ready(message)
    })
}

impl<S: SessionStore + Reachable> SessionService<StoreEngine<S>> {
    /// Applies one pipelined operation; a failure becomes an inline `Error`.
    async fn apply_one(&self, tag: u64, op: Option<pb::pipeline_request::Op>) -> Answer {
        use pb::pipeline_request::Op;
        use pb::pipeline_response::Result as Done;
        let result: Result<Outcome, Status> = match op {
            Some(Op::Get(op)) => message(self.call(op).await, |get| Done::Get(Box::new(get))),
            Some(Op::Save(op)) => message(self.call(*op).await, Done::Save),
            Some(Op::Destroy(op)) => message(self.call(op).await, Done::Destroy),
            Some(Op::Touch(op)) => message(self.call(op).await, Done::Touch),
            None => return self.refuse(tag, NO_OPERATION),
        };
        answer(tag, result)
    }

    /// Applies `op`, counted and logged.
    async fn call<O: Operation>(&self, op: O) -> Result<O::Answer, Status> {
        let started = self.started();
        let answer = self.engine.apply(op, &self.writes).await;
        self.observed(O::METHOD, started, answer)
    }
}

/// One operation of a `Pipeline` message, as a waiting store applies it: on its own, at once
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

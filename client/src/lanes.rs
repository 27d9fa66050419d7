//! The pipelined fast path: operations from many callers multiplexed over a few long-lived
//! `Pipeline` streams ("lanes"), each answer routed back to its caller by tag.
//!
//! Every queue here is bounded, so a daemon that stops answering costs an app a fixed amount of
//! memory and fast failures, not a growing backlog:
//! - each lane queues at most [`QUEUE`] operations not yet sent; a caller that finds every lane's
//!   queue full fails at once with `UNAVAILABLE`;
//! - each lane has at most [`IN_FLIGHT`] operations sent and not yet answered; past that it stops
//!   taking operations from its queue until answers come back;
//! - an operation whose caller has given up (timed out, or its request was dropped) before it
//!   was sent is never sent: a write the app reported as failed cannot land afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gonest_session_proto::pb::{self, pipeline_request::Op, pipeline_response::Result as Answer};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::{Code, Status};

use crate::stream::{self, Connection};

/// Operations a lane queues before they are sent.
pub(crate) const QUEUE: usize = 1024;
/// Operations a lane has sent and not yet had answered.
pub(crate) const IN_FLIGHT: usize = 1024;

/// A few lanes; a broken lane is replaced by a new one on its next use.
#[derive(Debug)]
pub(crate) struct Lanes {
    connection: Connection,
    /// Each slot holds its current lane, or `None` before first use.
    slots: Vec<Mutex<Option<Lane>>>,
    /// Round-robin cursor over `slots`.
    next: AtomicUsize,
    /// Whether the daemon takes batches of operations in one message (it says so in `Stats`).
    batching: Arc<AtomicBool>,
}

/// One `Pipeline` stream. Dropping it closes the request side, which ends the stream.
#[derive(Debug)]
struct Lane {
    /// Operations waiting to be sent on the stream.
    queue: mpsc::UnboundedSender<Queued>,
    /// How many are waiting, at most [`QUEUE`] (an unbounded channel with a count costs less per
    /// operation than a bounded one, whose receiver takes a lock to give each place back).
    queued: Arc<AtomicUsize>,
    /// Set once the stream has ended: the lane is replaced on its next use.
    ended: Arc<AtomicBool>,
}

/// An operation in a lane's queue, with the caller to answer.
#[derive(Debug)]
struct Queued {
    op: Op,
    reply: Reply,
}

type Reply = oneshot::Sender<Result<Answer, Status>>;

#[derive(Debug, Default)]
struct Waiting {
    /// Set once the stream has ended: no caller may wait on it any more.
    closed: bool,
    /// Tag of a sent operation to the caller waiting for its answer, with the operation's place
    /// among the lane's [`IN_FLIGHT`].
    by_tag: HashMap<u64, Reply>,
}

/// A std mutex is right here: it is held for a map insert or remove, never across an await.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn closed() -> Status {
    Status::unavailable("session stream closed")
}

impl Lanes {
    pub(crate) fn new(connection: Connection, count: usize) -> Self {
        Self {
            connection,
            slots: (0..count.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            batching: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends operations in batches from now on (the daemon takes them).
    pub(crate) fn batch(&self) {
        self.batching.store(true, Ordering::Relaxed);
    }

    /// Sends one operation and waits for its answer. A broken stream fails the call with
    /// `UNAVAILABLE` (the next call opens a new stream), and so do full queues on every lane.
    ///
    /// Dropping the returned future before the operation was sent withdraws it.
    pub(crate) async fn call(&self, op: Op) -> Result<Answer, Status> {
        let (reply, answer) = oneshot::channel();
        let mut queued = Queued { op, reply };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Round-robin, moving on past a lane whose queue is full.
        for offset in 0..self.slots.len() {
            match self.send((start + offset) % self.slots.len(), queued) {
                Sent::Queued => return answer.await.unwrap_or_else(|_| Err(closed())),
                Sent::Full(back) => queued = back,
                Sent::Closed => return Err(closed()),
            }
        }
        Err(Status::unavailable(
            "too many session operations queued; the daemon is not keeping up",
        ))
    }

    /// Queues `queued` on the lane in slot `index`, opened anew if it is missing or broken.
    fn send(&self, index: usize, queued: Queued) -> Sent {
        let mut slot = lock(&self.slots[index]);
        let lane = match &*slot {
            Some(lane) if !lane.ended.load(Ordering::Acquire) => lane,
            _ => slot.insert(Lane::open(self.connection.clone(), self.batching.clone())),
        };
        if lane.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            lane.queued.fetch_sub(1, Ordering::AcqRel);
            return Sent::Full(queued);
        }
        match lane.queue.send(queued) {
            Ok(()) => Sent::Queued,
            Err(_) => Sent::Closed,
        }
    }
}

/// What became of an operation offered to a lane.
enum Sent {
    Queued,
    /// The lane's queue is full; the operation is given back.
    Full(Queued),
    /// The lane's stream is gone.
    Closed,
}

impl Lane {
    /// Opens a stream and spawns the task that routes its answers.
    fn open(connection: Connection, batching: Arc<AtomicBool>) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let sender = Sender {
            receiver,
            queued: queued.clone(),
            waiting: waiting.clone(),
            answered: Arc::new(Notify::new()),
            batching,
            next_tag: 0,
            carried: None,
        };
        let ended = Arc::new(AtomicBool::new(false));
        tokio::spawn(route_answers(connection, sender, ended.clone()));
        Self {
            queue,
            queued,
            ended,
        }
    }
}

/// Most operations sent as one batch message. Larger batches cost more than they save here: the
/// answer to a batch is one message, read whole into one buffer (128 Gets of 1 KiB: 128 KiB)
/// before any caller gets its answer.
const BATCH_OPS: usize = 16;
/// Most bytes of operations sent as one batch message (a larger operation goes alone): well
/// under any daemon's message limit.
const BATCH_BYTES: usize = 256 << 10;

/// What the request side of a stream keeps between messages.
struct Sender {
    receiver: mpsc::UnboundedReceiver<Queued>,
    /// The lane's count of operations queued.
    queued: Arc<AtomicUsize>,
    waiting: Arc<Mutex<Waiting>>,
    /// Wakes the sender when an answer frees a place among [`IN_FLIGHT`].
    answered: Arc<Notify>,
    /// Whether the daemon takes batches; read once per message.
    batching: Arc<AtomicBool>,
    next_tag: u64,
    /// An operation taken from the queue that did not fit the last message.
    carried: Option<Queued>,
}

impl Sender {
    /// The next message: every operation already queued whose caller still waits (as one batch
    /// when the daemon takes them, within [`BATCH_OPS`] and [`BATCH_BYTES`]), each tagged and
    /// registered for its answer as it is sent, at most [`IN_FLIGHT`] unanswered at once. `None`
    /// once the queue has closed or the stream has ended.
    async fn next_message(&mut self) -> Option<pb::PipelineRequest> {
        loop {
            let first = match self.carried.take() {
                Some(queued) => queued,
                None => self.recv().await?,
            };
            if first.reply.is_closed() {
                // Its caller gave up before it could be sent.
                continue;
            }
            // Wait for a place among the operations in flight.
            loop {
                let answered = self.answered.notified();
                {
                    let waiting = lock(&self.waiting);
                    if waiting.closed {
                        return None;
                    }
                    if waiting.by_tag.len() < IN_FLIGHT {
                        break;
                    }
                }
                answered.await;
            }
            let batching = self.batching.load(Ordering::Relaxed);
            let mut waiting = lock(&self.waiting);
            // The caller may have given up while this waited for a place.
            let next_tag = &mut self.next_tag;
            let mut single =
                (!first.reply.is_closed()).then(|| register(next_tag, &mut waiting, first));
            if !batching {
                match single {
                    Some(request) => return Some(request),
                    None => continue,
                }
            }
            let mut batch = Vec::new();
            let mut bytes = single.as_ref().map_or(0, prost::Message::encoded_len);
            while batch.len() < BATCH_OPS && waiting.by_tag.len() < IN_FLIGHT {
                let Ok(queued) = self.receiver.try_recv() else {
                    break;
                };
                self.queued.fetch_sub(1, Ordering::AcqRel);
                if queued.reply.is_closed() {
                    continue;
                }
                bytes += queued.op.encoded_len();
                if bytes > BATCH_BYTES && (single.is_some() || !batch.is_empty()) {
                    // Too large to join: it leads the next message.
                    self.carried = Some(queued);
                    break;
                }
                let request = register(&mut self.next_tag, &mut waiting, queued);
                batch.extend(single.take());
                batch.push(request);
            }
            drop(waiting);
            return match (single, batch.is_empty()) {
                (Some(request), _) => Some(request),
                (None, true) => continue,
                // The envelope's tag is 0, which no operation has.
                (None, false) => Some(pb::PipelineRequest {
                    tag: 0,
                    op: None,
                    batch,
                }),
            };
        }
    }

    /// The next operation from the queue; `None` once every lane handle is gone.
    async fn recv(&mut self) -> Option<Queued> {
        let queued = self.receiver.recv().await?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(queued)
    }
}

/// Tags `queued` and registers its caller for the answer.
fn register(next_tag: &mut u64, waiting: &mut Waiting, queued: Queued) -> pb::PipelineRequest {
    *next_tag += 1;
    waiting.by_tag.insert(*next_tag, queued.reply);
    pb::PipelineRequest {
        tag: *next_tag,
        op: Some(queued.op),
        batch: Vec::new(),
    }
}

/// The request side of a stream, message by message.
fn requests(
    sender: Sender,
) -> impl futures_util::Stream<Item = pb::PipelineRequest> + Send + 'static {
    futures_util::stream::unfold(sender, |mut sender| async move {
        let message = sender.next_message().await?;
        Some((message, sender))
    })
}

/// Runs one stream: hands each answer to the caller waiting on its tag; when the stream ends,
/// fails every caller still waiting.
async fn route_answers(mut connection: Connection, sender: Sender, ended: Arc<AtomicBool>) {
    let (waiting, answered) = (sender.waiting.clone(), sender.answered.clone());
    let ended_by = match stream::pipeline(&mut connection, requests(sender)).await {
        Ok(mut answers) => loop {
            match answers.message().await {
                Ok(Some(answer)) => {
                    let mut waiting = lock(&waiting);
                    let was_full = waiting.by_tag.len() >= IN_FLIGHT;
                    for answer in std::iter::once(answer).flat_map(|mut answer| {
                        let batch = std::mem::take(&mut answer.batch);
                        std::iter::once(answer).chain(batch)
                    }) {
                        let entry = waiting.by_tag.remove(&answer.tag);
                        if let (Some(reply), Some(result)) = (entry, answer.result) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    drop(waiting);
                    if was_full {
                        answered.notify_one();
                    }
                }
                Ok(None) => break Status::unavailable("session stream ended"),
                Err(status) => break status,
            }
        },
        Err(status) => status,
    };
    let status = ended_by;
    tracing::debug!(code = ?status.code(), message = status.message(), "session stream closed");
    ended.store(true, Ordering::Release);
    let orphans = {
        let mut waiting = lock(&waiting);
        waiting.closed = true;
        std::mem::take(&mut waiting.by_tag)
    };
    answered.notify_one();
    for (_, reply) in orphans {
        // Whatever ended the stream, the operation's fate is unknown: report it unavailable so
        // reads are retried, and writes are left to the caller.
        let status = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => status.clone(),
            _ => Status::unavailable(format!("session stream closed: {}", status.message())),
        };
        let _ = reply.send(Err(status));
    }
}

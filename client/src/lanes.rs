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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

use crate::auth::Client;

/// Operations a lane queues before they are sent.
pub(crate) const QUEUE: usize = 1024;
/// Operations a lane has sent and not yet had answered.
pub(crate) const IN_FLIGHT: usize = 1024;

/// A few lanes; a broken lane is replaced by a new one on its next use.
#[derive(Debug)]
pub(crate) struct Lanes {
    client: Client,
    /// Each slot holds its current lane, or `None` before first use.
    slots: Vec<Mutex<Option<Lane>>>,
    /// Round-robin cursor over `slots`.
    next: AtomicUsize,
    /// Whether the daemon takes batches of operations in one message (it says so in `Stats`).
    batching: Arc<AtomicBool>,
}

/// One `Pipeline` stream. Dropping the last clone closes the request side, which ends the stream.
#[derive(Debug, Clone)]
struct Lane {
    /// Operations waiting to be sent on the stream.
    queue: mpsc::Sender<Queued>,
    /// Callers waiting for answers, shared with the tasks that send and answer.
    waiting: Arc<Mutex<Waiting>>,
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
    by_tag: HashMap<u64, (Reply, OwnedSemaphorePermit)>,
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
    pub(crate) fn new(client: Client, count: usize) -> Self {
        Self {
            client,
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
            let lane = self.lane((start + offset) % self.slots.len());
            match lane.queue.try_send(queued) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| Err(closed()));
                }
                Err(mpsc::error::TrySendError::Full(back)) => queued = back,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
            }
        }
        Err(Status::unavailable(
            "too many session operations queued; the daemon is not keeping up",
        ))
    }

    /// The lane in slot `index`, opened anew if it is missing or broken.
    fn lane(&self, index: usize) -> Lane {
        let mut slot = lock(&self.slots[index]);
        match &*slot {
            Some(lane) if !lock(&lane.waiting).closed => lane.clone(),
            _ => {
                let lane = Lane::open(self.client.clone(), self.batching.clone());
                *slot = Some(lane.clone());
                lane
            }
        }
    }
}

impl Lane {
    /// Opens a stream and spawns the task that routes its answers.
    fn open(client: Client, batching: Arc<AtomicBool>) -> Self {
        let (queue, queued) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let sender = Sender {
            queued,
            waiting: waiting.clone(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            batching,
            next_tag: 0,
            carried: None,
        };
        tokio::spawn(route_answers(client, sender));
        Self { queue, waiting }
    }
}

/// Most operations sent as one batch message.
const BATCH_OPS: usize = 128;
/// Most bytes of operations sent as one batch message (a larger operation goes alone): well
/// under any daemon's message limit.
const BATCH_BYTES: usize = 256 << 10;

/// What the request side of a stream keeps between messages.
struct Sender {
    queued: mpsc::Receiver<Queued>,
    waiting: Arc<Mutex<Waiting>>,
    in_flight: Arc<Semaphore>,
    /// Whether the daemon takes batches; read once per message.
    batching: Arc<AtomicBool>,
    next_tag: u64,
    /// An operation taken from the queue that did not fit the last message.
    carried: Option<Queued>,
}

/// An operation on its way out: tagged, with its caller and its place among [`IN_FLIGHT`].
struct Outgoing {
    tag: u64,
    op: Op,
    reply: Reply,
    permit: OwnedSemaphorePermit,
}

impl Sender {
    /// The next message: every operation already queued whose caller still waits (as one batch
    /// when the daemon takes them, within [`BATCH_OPS`] and [`BATCH_BYTES`]), each tagged and
    /// registered for its answer as it is sent, at most [`IN_FLIGHT`] unanswered at once. `None`
    /// once the queue has closed.
    async fn next_message(&mut self) -> Option<pb::PipelineRequest> {
        loop {
            let first = match self.carried.take() {
                Some(queued) => queued,
                None => self.queued.recv().await?,
            };
            let batching = self.batching.load(Ordering::Relaxed);
            let mut out = Vec::new();
            let mut bytes = 0;
            if let Some(first) = self.outgoing(first).await {
                bytes += first.op.encoded_len();
                out.push(first);
            }
            while batching && out.len() < BATCH_OPS && bytes < BATCH_BYTES {
                let Ok(queued) = self.queued.try_recv() else {
                    break;
                };
                if !out.is_empty() && bytes + queued.op.encoded_len() > BATCH_BYTES {
                    self.carried = Some(queued);
                    break;
                }
                // Only what can go at once joins the message; the rest waits for the next.
                match self.in_flight.clone().try_acquire_owned() {
                    Ok(permit) if !queued.reply.is_closed() => {
                        bytes += queued.op.encoded_len();
                        out.push(self.tag(queued, permit));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.carried = Some(queued);
                        break;
                    }
                }
            }
            if out.is_empty() {
                continue;
            }
            let mut requests = Vec::with_capacity(out.len());
            {
                let mut waiting = lock(&self.waiting);
                if waiting.closed {
                    return None;
                }
                for Outgoing {
                    tag,
                    op,
                    reply,
                    permit,
                } in out
                {
                    waiting.by_tag.insert(tag, (reply, permit));
                    requests.push(pb::PipelineRequest {
                        tag,
                        op: Some(op),
                        batch: Vec::new(),
                    });
                }
            }
            return Some(if requests.len() == 1 {
                requests.pop().expect("one")
            } else {
                // The envelope's tag is 0, which no operation has.
                pb::PipelineRequest {
                    tag: 0,
                    op: None,
                    batch: requests,
                }
            });
        }
    }

    /// `queued` tagged and given its place among [`IN_FLIGHT`], waiting for one; `None` if its
    /// caller has given up meanwhile.
    async fn outgoing(&mut self, queued: Queued) -> Option<Outgoing> {
        if queued.reply.is_closed() {
            return None;
        }
        let permit = self.in_flight.clone().acquire_owned().await.ok()?;
        // The caller may have given up while this waited for a place.
        if queued.reply.is_closed() {
            return None;
        }
        Some(self.tag(queued, permit))
    }

    fn tag(&mut self, queued: Queued, permit: OwnedSemaphorePermit) -> Outgoing {
        self.next_tag += 1;
        Outgoing {
            tag: self.next_tag,
            op: queued.op,
            reply: queued.reply,
            permit,
        }
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
async fn route_answers(mut client: Client, sender: Sender) {
    let waiting = sender.waiting.clone();
    let ended = match client.pipeline(requests(sender)).await {
        Ok(response) => {
            let mut answers = response.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let mut waiting = lock(&waiting);
                        for answer in std::iter::once(answer).flat_map(|mut answer| {
                            let batch = std::mem::take(&mut answer.batch);
                            std::iter::once(answer).chain(batch)
                        }) {
                            let entry = waiting.by_tag.remove(&answer.tag);
                            if let (Some((reply, _permit)), Some(result)) = (entry, answer.result) {
                                let _ = reply.send(Ok(result));
                            }
                        }
                    }
                    Ok(None) => break Status::unavailable("session stream ended"),
                    Err(status) => break status,
                }
            }
        }
        Err(status) => status,
    };
    tracing::debug!(code = ?ended.code(), message = ended.message(), "session stream closed");
    let orphans = {
        let mut waiting = lock(&waiting);
        waiting.closed = true;
        std::mem::take(&mut waiting.by_tag)
    };
    for (_, (reply, _permit)) in orphans {
        // Whatever ended the stream, the operation's fate is unknown: report it unavailable so
        // reads are retried, and writes are left to the caller.
        let status = match ended.code() {
            Code::Unauthenticated | Code::PermissionDenied => ended.clone(),
            _ => Status::unavailable(format!("session stream closed: {}", ended.message())),
        };
        let _ = reply.send(Err(status));
    }
}

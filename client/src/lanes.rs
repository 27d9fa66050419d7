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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use gonest_session_proto::pb::{self, pipeline_request::Op, pipeline_response::Result as Answer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
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
        }
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
                let lane = Lane::open(self.client.clone());
                *slot = Some(lane.clone());
                lane
            }
        }
    }
}

impl Lane {
    /// Opens a stream and spawns the task that routes its answers.
    fn open(client: Client) -> Self {
        let (queue, queued) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(route_answers(client, queued, waiting.clone()));
        Self { queue, waiting }
    }
}

/// The request side of a stream: the queued operations whose callers still wait, each tagged and
/// registered for its answer as it is sent, at most [`IN_FLIGHT`] unanswered at once.
fn requests(
    queued: mpsc::Receiver<Queued>,
    waiting: Arc<Mutex<Waiting>>,
) -> impl futures_util::Stream<Item = pb::PipelineRequest> + Send + 'static {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next_tag = 0u64;
    ReceiverStream::new(queued)
        .filter(|queued| std::future::ready(!queued.reply.is_closed()))
        .then(move |queued| {
            let in_flight = in_flight.clone();
            async move { (queued, in_flight.acquire_owned().await) }
        })
        .filter_map(move |(queued, permit)| {
            let tag = next_tag;
            next_tag += 1;
            let request = match permit {
                // The caller may have given up while this waited for a place.
                Ok(permit) if !queued.reply.is_closed() => {
                    let mut waiting = lock(&waiting);
                    if waiting.closed {
                        None
                    } else {
                        waiting.by_tag.insert(tag, (queued.reply, permit));
                        Some(pb::PipelineRequest {
                            tag,
                            op: Some(queued.op),
                        })
                    }
                }
                _ => None,
            };
            std::future::ready(request)
        })
}

/// Runs one stream: hands each answer to the caller waiting on its tag; when the stream ends,
/// fails every caller still waiting.
async fn route_answers(
    mut client: Client,
    queued: mpsc::Receiver<Queued>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let ended = match client.pipeline(requests(queued, waiting.clone())).await {
        Ok(response) => {
            let mut answers = response.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let entry = lock(&waiting).by_tag.remove(&answer.tag);
                        if let (Some((reply, _permit)), Some(result)) = (entry, answer.result) {
                            let _ = reply.send(Ok(result));
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

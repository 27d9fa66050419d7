//! The pipelined fast path: operations from many callers multiplexed over a few long-lived
//! `Pipeline` streams ("lanes"), each answer routed back to its caller by tag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gonest_session_proto::pb::{self, pipeline_request::Op, pipeline_response::Result as Answer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status};

use crate::auth::Client;

/// A few lanes, used round-robin; a broken lane is replaced by a new one on its next use.
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
    /// Sends operations on the stream.
    requests: mpsc::UnboundedSender<pb::PipelineRequest>,
    /// Callers waiting for answers, shared with the task that reads the answers.
    waiting: Arc<Mutex<Waiting>>,
    /// The next tag on this stream.
    next_tag: Arc<AtomicU64>,
}

type Reply = oneshot::Sender<Result<Answer, Status>>;

#[derive(Debug, Default)]
struct Waiting {
    /// Set once the stream has ended: no caller may wait on it any more.
    closed: bool,
    /// Tag to the caller waiting for that answer.
    by_tag: HashMap<u64, Reply>,
}

/// A std mutex is right here: it is held for a map insert or remove, never across an await.
fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// `UNAVAILABLE`; the next call opens a new stream.
    pub(crate) async fn call(&self, op: Op) -> Result<Answer, Status> {
        let lane = self.pick();
        let tag = lane.next_tag.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut waiting = lock(&lane.waiting);
            if waiting.closed {
                return Err(Status::unavailable("session stream closed"));
            }
            waiting.by_tag.insert(tag, reply);
        }
        // If this future is dropped (the caller timed out), stop waiting for the answer.
        let mut forget = Forget {
            waiting: &lane.waiting,
            tag,
            armed: true,
        };
        let request = pb::PipelineRequest { tag, op: Some(op) };
        if lane.requests.send(request).is_err() {
            return Err(Status::unavailable("session stream closed"));
        }
        let answer = answer.await;
        // Whoever sent the answer (or dropped the sender) already took the entry out.
        forget.armed = false;
        answer.unwrap_or_else(|_| Err(Status::unavailable("session stream closed")))
    }

    /// The next lane round-robin, opened anew if it is missing or broken.
    fn pick(&self) -> Lane {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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

/// Removes a caller's entry when its call ends without an answer.
struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    tag: u64,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.waiting).by_tag.remove(&self.tag);
        }
    }
}

impl Lane {
    /// Opens a stream and spawns the task that routes its answers.
    fn open(client: Client) -> Self {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(route_answers(
            client,
            UnboundedReceiverStream::new(outgoing),
            waiting.clone(),
        ));
        Self {
            requests,
            waiting,
            next_tag: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Runs one stream: hands each answer to the caller waiting on its tag; when the stream ends,
/// fails every caller still waiting.
async fn route_answers(
    mut client: Client,
    outgoing: UnboundedReceiverStream<pb::PipelineRequest>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let ended = match client.pipeline(outgoing).await {
        Ok(response) => {
            let mut answers = response.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let reply = lock(&waiting).by_tag.remove(&answer.tag);
                        if let (Some(reply), Some(result)) = (reply, answer.result) {
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
    for (_, reply) in orphans {
        // Whatever ended the stream, the operation's fate is unknown: report it unavailable so
        // reads are retried, and writes are left to the caller.
        let status = match ended.code() {
            Code::Unauthenticated | Code::PermissionDenied => ended.clone(),
            _ => Status::unavailable(format!("session stream closed: {}", ended.message())),
        };
        let _ = reply.send(Err(status));
    }
}

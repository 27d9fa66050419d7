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
//!
//! Deadlines are kept per lane, not per operation: every operation of a store has the same
//! timeout, so a lane's operations reach their deadlines in the order they were queued (and,
//! once sent, in the order they were sent). Each lane keeps its queue and its operations in
//! flight in that order, and one task per lane (the reaper) sleeps until the earliest deadline
//! and fails what has reached it: a queued operation is taken out unsent, a sent one is
//! answered with the timeout (its answer, if it comes, is dropped; it keeps its place in flight
//! until then, as it may still be in the stream's send buffer). One timer per lane
//! instead of one per operation; and an operation queued behind a stream that takes nothing
//! (a daemon that stopped reading) still fails on time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gonest_session_proto::pb::{self, pipeline_request::Op, pipeline_response::Result as Answer};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
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
    shared: Arc<Shared>,
    /// Set once the stream has ended: the lane is replaced on its next use.
    ended: Arc<AtomicBool>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake_sender.notify_one();
        self.shared.wake_reaper.notify_one();
    }
}

/// What a lane's callers, its sender, its answer router and its reaper share.
#[derive(Debug, Default)]
struct Shared {
    /// Set while the reaper sleeps with no deadline to wait for: the next operation queued or
    /// sent wakes it. While it sleeps until a deadline, nothing does: the operations queued
    /// after have later deadlines (one timeout for all), so one wake per timeout keeps them all,
    /// not one per operation.
    reaper_idle: AtomicBool,
    /// Operations waiting to be sent, in the order they were queued (so, of their deadlines).
    queue: Mutex<Queue>,
    /// Operations sent and not yet answered.
    waiting: Mutex<Waiting>,
    /// Wakes the sender when an operation is queued or the lane closes.
    wake_sender: Notify,
    /// Wakes the reaper when a deadline comes first that it is not sleeping until.
    wake_reaper: Notify,
    /// Wakes the sender when an answer (or a deadline) frees a place among [`IN_FLIGHT`].
    answered: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    ops: VecDeque<Queued>,
    /// Set when the lane is dropped or its stream has ended: nothing more is queued or sent.
    closed: bool,
}

/// An operation in a lane's queue, with the caller to answer and when it gives up.
#[derive(Debug)]
struct Queued {
    op: Op,
    reply: Reply,
    deadline: Instant,
}

type Reply = oneshot::Sender<Result<Answer, Status>>;

#[derive(Debug, Default)]
struct Waiting {
    /// Set once the stream has ended: no caller may wait on it any more.
    closed: bool,
    /// Tag of a sent operation to the caller waiting for its answer (`None` once told it timed
    /// out), with the operation's place among the lane's [`IN_FLIGHT`]. A place is held until
    /// the answer comes, timed out or not: the operation may still be on its way (in the
    /// stream's send buffer behind flow control), and what comes after it must not overtake it.
    by_tag: HashMap<u64, Option<Reply>, foldhash::fast::FixedState>,
    /// The deadline and tag of each operation sent, in the order sent; an entry whose tag has
    /// left `by_tag` (answered) is dropped when it reaches the front.
    sent: VecDeque<(Instant, u64)>,
}

impl Waiting {
    /// Drops the front entries of `sent` that were answered.
    fn forget_answered(&mut self) {
        while let Some((_, tag)) = self.sent.front() {
            if self.by_tag.contains_key(tag) {
                break;
            }
            self.sent.pop_front();
        }
    }
}

impl Shared {
    /// Wakes the reaper if it sleeps with nothing to wait for; called after an operation is
    /// queued or sent. The reaper sets `reaper_idle` before it looks at the queue and the
    /// operations sent one last time, so either it sees the operation or this sees the flag.
    fn watch(&self) {
        if self.reaper_idle.load(Ordering::SeqCst) && self.reaper_idle.swap(false, Ordering::SeqCst)
        {
            self.wake_reaper.notify_one();
        }
    }

    /// Whether an operation is queued or sent and not yet answered or timed out.
    fn has_deadlines(&self) -> bool {
        // One lock at a time: the sender takes them in the other order.
        let queued = !lock(&self.queue).ops.is_empty();
        queued || !lock(&self.waiting).sent.is_empty()
    }
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

/// What an operation that reached its deadline answers: the client maps it to a timeout.
fn expired() -> Status {
    Status::deadline_exceeded("the session store did not answer in time")
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

    /// Sends one operation and waits for its answer, until `deadline` at the latest (then
    /// `DEADLINE_EXCEEDED`). A broken stream fails the call with `UNAVAILABLE` (the next call
    /// opens a new stream), and so do full queues on every lane.
    ///
    /// Every call of one store must have the same timeout (deadlines in the order of the calls):
    /// a lane fails its operations in queue order. Dropping the returned future before the
    /// operation was sent withdraws it.
    pub(crate) async fn call(&self, op: Op, deadline: Instant) -> Result<Answer, Status> {
        let (reply, answer) = oneshot::channel();
        let mut queued = Queued {
            op,
            reply,
            deadline,
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Round-robin, moving on past a lane whose queue is full.
        for offset in 0..self.slots.len() {
            match self.send((start + offset) % self.slots.len(), queued) {
                Sent::Queued => return answer.await.unwrap_or_else(|_| Err(closed())),
                Sent::Full(back) => queued = *back,
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
        let mut queue = lock(&lane.shared.queue);
        if queue.closed {
            return Sent::Closed;
        }
        if queue.ops.len() >= QUEUE {
            return Sent::Full(Box::new(queued));
        }
        queue.ops.push_back(queued);
        drop(queue);
        lane.shared.wake_sender.notify_one();
        lane.shared.watch();
        Sent::Queued
    }
}

/// What became of an operation offered to a lane.
enum Sent {
    Queued,
    /// The lane's queue is full; the operation is given back (boxed: a rare case, and the
    /// common one stays small).
    Full(Box<Queued>),
    /// The lane's stream is gone.
    Closed,
}

impl Lane {
    /// Opens a stream and spawns the tasks that route its answers and keep its deadlines.
    fn open(connection: Connection, batching: Arc<AtomicBool>) -> Self {
        let shared = Arc::new(Shared::default());
        let sender = Sender {
            shared: shared.clone(),
            batching,
            next_tag: 0,
        };
        let ended = Arc::new(AtomicBool::new(false));
        tokio::spawn(route_answers(connection, sender, ended.clone()));
        tokio::spawn(reap(shared.clone()));
        Self { shared, ended }
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
    shared: Arc<Shared>,
    /// Whether the daemon takes batches; read once per message.
    batching: Arc<AtomicBool>,
    next_tag: u64,
}

impl Sender {
    /// The next message: every operation already queued whose caller still waits (as one batch
    /// when the daemon takes them, within [`BATCH_OPS`] and [`BATCH_BYTES`]), each tagged and
    /// registered for its answer as it is sent, at most [`IN_FLIGHT`] unanswered at once. `None`
    /// once the queue has closed or the stream has ended.
    async fn next_message(&mut self) -> Option<pb::PipelineRequest> {
        loop {
            // Wait for a place among the operations in flight before taking one from the queue:
            // an operation waiting here is still in the queue, where the reaper sees its deadline.
            loop {
                let answered = self.shared.answered.notified();
                {
                    let waiting = lock(&self.shared.waiting);
                    if waiting.closed {
                        return None;
                    }
                    if waiting.by_tag.len() < IN_FLIGHT {
                        break;
                    }
                }
                answered.await;
            }
            let first = self.recv().await?;
            let batching = self.batching.load(Ordering::Relaxed);
            let Self {
                shared, next_tag, ..
            } = self;
            let mut waiting = lock(&shared.waiting);
            // An operation whose caller gave up, or whose deadline passed, is not sent.
            let mut single =
                usable(first, Instant::now()).map(|first| register(next_tag, &mut waiting, first));
            // The first operation was out of the queue until now: a reaper that looked in
            // between found neither and may sleep with nothing to wait for.
            shared.watch();
            if !batching {
                match single {
                    Some(request) => return Some(request),
                    None => continue,
                }
            }
            let mut batch = Vec::new();
            let mut bytes = single.as_ref().map_or(0, prost::Message::encoded_len);
            let now = Instant::now();
            while batch.len() < BATCH_OPS && waiting.by_tag.len() < IN_FLIGHT {
                let Some(queued) = lock(&shared.queue).ops.pop_front() else {
                    break;
                };
                let Some(queued) = usable(queued, now) else {
                    continue;
                };
                bytes += queued.op.encoded_len();
                if bytes > BATCH_BYTES && (single.is_some() || !batch.is_empty()) {
                    // Too large to join: back to the front of the queue, to lead the next
                    // message (in the queue, the reaper sees its deadline).
                    lock(&shared.queue).ops.push_front(queued);
                    break;
                }
                let request = register(next_tag, &mut waiting, queued);
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

    /// The next operation from the queue; `None` once the lane is closed and its queue empty.
    async fn recv(&mut self) -> Option<Queued> {
        loop {
            let queued = self.shared.wake_sender.notified();
            {
                let mut queue = lock(&self.shared.queue);
                if let Some(op) = queue.ops.pop_front() {
                    return Some(op);
                }
                if queue.closed {
                    return None;
                }
            }
            queued.await;
        }
    }
}

/// `queued`, unless its caller has given up or its deadline has passed (the caller is then told
/// so): such an operation is never sent.
fn usable(queued: Queued, now: Instant) -> Option<Queued> {
    if queued.reply.is_closed() {
        return None;
    }
    if queued.deadline <= now {
        let _ = queued.reply.send(Err(expired()));
        return None;
    }
    Some(queued)
}

/// Tags `queued` and registers its caller for the answer.
fn register(next_tag: &mut u64, waiting: &mut Waiting, queued: Queued) -> pb::PipelineRequest {
    *next_tag += 1;
    waiting.by_tag.insert(*next_tag, Some(queued.reply));
    waiting.sent.push_back((queued.deadline, *next_tag));
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
    let shared = sender.shared.clone();
    let (waiting, answered) = (&shared.waiting, &shared.answered);
    let ended_by = match stream::pipeline(&mut connection, requests(sender)).await {
        Ok(mut answers) => loop {
            match answers.message().await {
                Ok(Some(answer)) => {
                    let mut waiting = lock(waiting);
                    let was_full = waiting.by_tag.len() >= IN_FLIGHT;
                    for answer in std::iter::once(answer).flat_map(|mut answer| {
                        let batch = std::mem::take(&mut answer.batch);
                        std::iter::once(answer).chain(batch)
                    }) {
                        let entry = waiting.by_tag.remove(&answer.tag).flatten();
                        if let (Some(reply), Some(result)) = (entry, answer.result) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    waiting.forget_answered();
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
        let mut waiting = lock(waiting);
        waiting.closed = true;
        waiting.sent.clear();
        std::mem::take(&mut waiting.by_tag)
    };
    answered.notify_one();
    // Queued and never sent: tried again on a new stream if they are reads.
    let unsent = {
        let mut queue = lock(&shared.queue);
        queue.closed = true;
        std::mem::take(&mut queue.ops)
    };
    shared.wake_reaper.notify_one();
    for queued in unsent {
        let _ = queued.reply.send(Err(closed()));
    }
    for reply in orphans.into_values().flatten() {
        // Whatever ended the stream, the operation's fate is unknown: report it unavailable so
        // reads are retried, and writes are left to the caller.
        let status = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => status.clone(),
            _ => Status::unavailable(format!("session stream closed: {}", status.message())),
        };
        let _ = reply.send(Err(status));
    }
}

/// Keeps a lane's deadlines: sleeps until the earliest, then fails every queued operation and
/// every operation in flight that has reached its own. Ends with the lane's stream.
///
/// It is woken only when it sleeps with nothing to wait for (see [`Shared::watch`]) or when the
/// lane closes. An operation queued while it sleeps until an earlier deadline is looked at
/// then; its own deadline is later, unless its caller took its time between reading the
/// clock and queueing it, and then it fails that much late.
async fn reap(lane: Arc<Shared>) {
    loop {
        let woken = lane.wake_reaper.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = Instant::now();
        let mut next = None;
        {
            let mut queue = lock(&lane.queue);
            while let Some(front) = queue.ops.front() {
                if front.deadline > now {
                    next = Some(front.deadline);
                    break;
                }
                if let Some(queued) = queue.ops.pop_front() {
                    let _ = queued.reply.send(Err(expired()));
                }
            }
        }
        {
            let mut waiting = lock(&lane.waiting);
            if waiting.closed {
                // The stream has ended and every caller was told.
                return;
            }
            waiting.forget_answered();
            while let Some(&(deadline, tag)) = waiting.sent.front() {
                if deadline > now {
                    next = Some(next.map_or(deadline, |queued: Instant| queued.min(deadline)));
                    break;
                }
                waiting.sent.pop_front();
                if let Some(reply) = waiting.by_tag.get_mut(&tag).and_then(Option::take) {
                    let _ = reply.send(Err(expired()));
                }
                waiting.forget_answered();
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = &mut woken => {}
                }
            }
            None => {
                lane.reaper_idle.store(true, Ordering::SeqCst);
                // An operation queued or sent since the look above was either seen here, or its
                // sender sees the flag and wakes this task.
                if lane.has_deadlines() {
                    lane.reaper_idle.store(false, Ordering::SeqCst);
                    continue;
                }
                woken.await;
            }
        }
    }
}

//! The client's queues are bounded, a caller that gave up withdraws its unsent operation, and a
//! stream the daemon ends tells its waiting callers why. Against a stand-in daemon that holds its
//! answers back until told.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore, StoreError};
use gonest_session_proto::pb::session_store_server::{SessionStore as Service, SessionStoreServer};
use gonest_session_proto::pb::{self, pipeline_request::Op, pipeline_response::Result as Answer};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status, Streaming};

/// Answers every Pipeline operation once `open` is true, and notes the id of each it reads and
/// how many messages they came in.
#[derive(Clone)]
struct Held {
    open: watch::Receiver<bool>,
    seen: Arc<Mutex<Vec<String>>>,
    messages: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether it says it takes batches.
    batches: bool,
    /// Ends each stream with this status after answering one message.
    fail: Option<Code>,
}

impl Held {
    fn answer(&self, request: pb::PipelineRequest) -> Result<pb::PipelineResponse, Status> {
        let result = match request.op {
            Some(Op::Get(get)) => {
                self.seen.lock().unwrap().push(get.id);
                Some(Answer::Get(Box::default()))
            }
            Some(Op::Save(save)) => {
                self.seen
                    .lock()
                    .unwrap()
                    .push(save.session.unwrap_or_default().id);
                Some(Answer::Save(pb::SaveResponse {
                    version: 1,
                    created_at: Some(prost_types::Timestamp::default()),
                    expires_at: Some(prost_types::Timestamp::default()),
                }))
            }
            None if self.batches => None,
            _ => return Err(Status::unimplemented("get and save only")),
        };
        let batch = request
            .batch
            .into_iter()
            .map(|op| self.answer(op))
            .collect::<Result<_, _>>()?;
        Ok(pb::PipelineResponse {
            tag: request.tag,
            result,
            batch,
        })
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<pb::PipelineResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Service for Held {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn save(
        &self,
        _: Request<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn destroy(
        &self,
        _: Request<pb::DestroyRequest>,
    ) -> Result<Response<pb::DestroyResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn touch(
        &self,
        _: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn list_by_owner(
        &self,
        _: Request<pb::ListByOwnerRequest>,
    ) -> Result<Response<pb::ListByOwnerResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn destroy_by_owner(
        &self,
        _: Request<pb::DestroyByOwnerRequest>,
    ) -> Result<Response<pb::DestroyByOwnerResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }
    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        // No limits: the client leaves size checks to the daemon.
        Ok(Response::new(pb::StatsResponse {
            pipeline_batches: self.batches,
            ..Default::default()
        }))
    }

    type PipelineStream = Answers;

    type TrackStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::TrackResponse, Status>> + Send>,
    >;

    async fn track(
        &self,
        _request: Request<pb::TrackRequest>,
    ) -> Result<Response<Self::TrackStream>, Status> {
        Err(Status::unimplemented("pipeline only"))
    }

    async fn pipeline(
        &self,
        request: Request<Streaming<pb::PipelineRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let held = self.clone();
        let answers = request.into_inner().then(move |request| {
            let mut held = held.clone();
            async move {
                let request = request?;
                let _ = held.open.wait_for(|open| *open).await;
                held.messages
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.answer(request)
            }
        });
        if let Some(code) = self.fail {
            let answers = answers
                .take(1)
                .chain(futures_util::stream::iter([Err(Status::new(
                    code, "ended",
                ))]));
            return Ok(Response::new(Box::pin(answers)));
        }
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Serves a [`Held`] on 127.0.0.1:0; returns its URL, the switch that lets answers through, and
/// the ids it has read.
async fn held_daemon() -> (String, watch::Sender<bool>, Arc<Mutex<Vec<String>>>) {
    let (url, open, held) = serve(false).await;
    (url, open, held.seen)
}

/// Serves a [`Held`] that says whether it takes batches.
async fn serve(batches: bool) -> (String, watch::Sender<bool>, Held) {
    serve_ending(batches, None).await
}

/// Serves a [`Held`] that ends each stream with `fail` after its first answer, when given.
async fn serve_ending(batches: bool, fail: Option<Code>) -> (String, watch::Sender<bool>, Held) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (open, opened) = watch::channel(false);
    let held = Held {
        open: opened,
        seen: Arc::default(),
        messages: Arc::default(),
        batches,
        fail,
    };
    let service = held.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SessionStoreServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, open, held)
}

/// Lets the stand-in daemon behind `open` answer, and connects a store to it over one stream.
async fn answering(url: &str, open: &watch::Sender<bool>) -> RemoteSessionStore {
    open.send(true).unwrap();
    RemoteSessionStore::builder(url)
        .streams(1)
        .connect()
        .await
        .unwrap()
}

/// A store on one stream to the stand-in at `url`, with `timeout`.
async fn one_stream(url: &str, timeout: Duration) -> RemoteSessionStore {
    RemoteSessionStore::builder(url)
        .streams(1)
        .timeout(timeout)
        .connect()
        .await
        .unwrap()
}

// One thread: the 200 callers all queue their operation before the stream's sender runs.
#[tokio::test(flavor = "current_thread")]
async fn queued_operations_travel_as_batches_to_a_daemon_that_takes_them() {
    for batches in [true, false] {
        let (url, open, held) = serve(batches).await;
        let store = answering(&url, &open).await;
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.get(&format!("k{i}")).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Ok(None));
        }
        let messages = held.messages.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(held.seen.lock().unwrap().len(), 200);
        if batches {
            // At most 16 operations to a message: 13 messages at the least.
            assert!(messages <= 20, "200 operations came in {messages} messages");
        } else {
            assert_eq!(
                messages, 200,
                "an older daemon gets one operation per message"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_fails_fast_instead_of_growing() {
    let (url, _open, _seen) = held_daemon().await;
    let store = one_stream(&url, Duration::from_secs(60)).await;
    // More than one stream has in flight (1,024) and queues (1,024) together.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..2300 {
        let store = store.clone();
        calls.spawn(async move { store.get(&format!("w{i}")).await });
    }
    // Nothing is ever answered, and the calls may wait a minute: any that ends now was refused.
    let mut refused = 0;
    while refused < 200 {
        let first = tokio::time::timeout(Duration::from_secs(10), calls.join_next())
            .await
            .expect("calls beyond the bound must fail at once, not wait for their timeout")
            .unwrap()
            .unwrap();
        match first {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("too many"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        refused += 1;
    }
    calls.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_timed_out_before_it_was_sent_is_never_sent() {
    let (url, open, seen) = held_daemon().await;
    let store = one_stream(&url, Duration::from_millis(300)).await;
    // Fill the stream's operations in flight; they go unanswered and time out.
    let blockers: Vec<_> = (0..1024)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.get(&format!("b{i}")).await })
        })
        .collect();
    for blocker in blockers {
        assert_eq!(blocker.await.unwrap(), Err(StoreError::Timeout));
    }
    // This one cannot be sent before it times out.
    let late = store.save(Save::new("late", SessionData::new())).await;
    assert_eq!(late, Err(StoreError::Timeout));
    // Answers flow again: what is sent next lands, and the timed-out save never does.
    open.send(true).unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match store.save(Save::new("after", SessionData::new())).await {
                Ok(saved) => return saved,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the stream recovers once answers flow");
    assert_eq!(after.version, 1);
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|id| id == "after"));
    assert!(
        !seen.iter().any(|id| id == "late"),
        "a save reported as timed out was sent anyway"
    );
}

// One thread, one stream, no batches: the first get is answered, the second is not and learns
// how the stream ended from its trailers.
#[tokio::test(flavor = "current_thread")]
async fn a_stream_ended_by_the_daemon_reports_its_status_to_the_callers_waiting() {
    for (code, expected) in [
        (
            Code::PermissionDenied,
            StoreError::Unauthenticated("ended".into()),
        ),
        // Any other ending leaves the operation's fate unknown.
        (
            Code::Internal,
            StoreError::Unavailable("session stream closed: ended".into()),
        ),
    ] {
        let (url, open, _held) = serve_ending(false, Some(code)).await;
        let store = answering(&url, &open).await;
        let first = store.clone();
        let first = tokio::spawn(async move { first.get("a").await });
        let second = store.clone();
        // A save: not retried on a new stream.
        let second =
            tokio::spawn(async move { second.save(Save::new("b", SessionData::new())).await });
        assert_eq!(first.await.unwrap(), Ok(None));
        assert_eq!(second.await.unwrap(), Err(expected), "{code:?}");
    }
}

// One thread, one stream, no batches: the stream ends after its first answer, so the second
// read fails on it, and is made again on a new stream (which answers it); a save in its place
// is not.
#[tokio::test(flavor = "current_thread")]
async fn a_read_on_a_stream_that_ends_is_tried_again_on_a_new_one() {
    let (url, open, held) = serve_ending(false, Some(Code::Unavailable)).await;
    let store = answering(&url, &open).await;
    let (first, second) = (store.clone(), store.clone());
    let first = tokio::spawn(async move { first.get("a").await });
    let second = tokio::spawn(async move { second.get("b").await });
    assert_eq!(first.await.unwrap(), Ok(None));
    assert_eq!(second.await.unwrap(), Ok(None));
    let seen = held.seen.lock().unwrap().clone();
    assert_eq!(seen.first().map(String::as_str), Some("a"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("b"), "{seen:?}");
    // The same with a save: its caller is told, and it is not made again.
    let (first, second) = (store.clone(), store.clone());
    let first = tokio::spawn(async move { first.get("c").await });
    let second = tokio::spawn(async move { second.save(Save::new("d", SessionData::new())).await });
    assert_eq!(first.await.unwrap(), Ok(None));
    assert!(
        matches!(second.await.unwrap(), Err(StoreError::Unavailable(_))),
        "a save is not made twice"
    );
}

/// A Get running as a task: its answer, and when it came.
type Call = tokio::task::JoinHandle<(
    Result<Option<gonest_session_core::SessionRecord>, StoreError>,
    std::time::Instant,
)>;

/// Every call in `calls` fails with a timeout (or is refused at once, the lane's queue full), at
/// least 100 of them time out, and none ends later than `bound` after `started`.
async fn all_time_out(calls: Vec<Call>, started: std::time::Instant, bound: Duration) {
    let mut timed_out = 0;
    for call in calls {
        let (answer, ended) = tokio::time::timeout(bound + Duration::from_secs(5), call)
            .await
            .expect("a call was still waiting long after its deadline")
            .unwrap();
        match answer {
            Err(StoreError::Timeout) => timed_out += 1,
            // Beyond what the lane queues, a call is refused at once.
            Err(StoreError::Unavailable(message)) if message.contains("too many") => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        let took = ended - started;
        assert!(
            took < bound,
            "a call failed {took:?} after it began, over {bound:?}"
        );
    }
    assert!(
        timed_out >= 100,
        "only {timed_out} calls waited for their deadline"
    );
}

fn gets(store: &RemoteSessionStore, n: usize) -> Vec<Call> {
    (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let answer = store.get(&format!("q{i}")).await;
                (answer, std::time::Instant::now())
            })
        })
        .collect()
}

// The stand-in reads one message and then nothing until told: the stream's flow control soon
// stops the client's sender, and what is queued behind it is failed by the lane's deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_queued_behind_a_stream_that_takes_nothing_fail_at_their_deadline() {
    let (url, _open, seen) = held_daemon().await;
    let timeout = Duration::from_millis(300);
    let store = one_stream(&url, timeout).await;
    let started = std::time::Instant::now();

    // In flight and queued together, more than one stream's flow-control window holds.
    let calls = gets(&store, 2000);

    // A deadline is kept by one timer per lane: a call fails within a scheduling delay of it,
    // not at the end of anything else's wait.
    all_time_out(calls, started, timeout + Duration::from_secs(2)).await;
    assert!(
        seen.lock().unwrap().len() < 2000,
        "the stand-in read every operation: the test did not stall the stream"
    );
}

// A daemon whose connection is accepted and never read: no stream ever opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_to_a_daemon_that_never_reads_fail_at_their_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let timeout = Duration::from_millis(300);
    let store = RemoteSessionStore::builder(&url)
        .streams(2)
        .timeout(timeout)
        .connect_lazy()
        .unwrap();
    let started = std::time::Instant::now();

    let calls = gets(&store, 100);

    all_time_out(calls, started, timeout + Duration::from_secs(2)).await;
    drop(listener);
}

// One stream, a stand-in that never answers. A lane's reaper is woken only when it sleeps with
// nothing to wait for; each call must still fail at its own deadline, whether it came while
// the reaper slept so (the calls one after another) or while it slept until the deadline of a
// call before it (the calls that overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_alone_or_overlapping_each_fail_at_their_own_deadline() {
    let (url, _open, _seen) = held_daemon().await;
    let timeout = Duration::from_millis(200);
    let store = one_stream(&url, timeout).await;
    let within = |took: Duration| took >= timeout && took < timeout + Duration::from_secs(1);

    for i in 0..4 {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(timeout * 10, store.get(&format!("alone{i}")))
            .await
            .expect("a call alone on its lane waited ten times its timeout");
        assert_eq!(answer, Err(StoreError::Timeout));
        let took = started.elapsed();
        assert!(within(took), "call {i} alone failed after {took:?}");
    }

    let calls: Vec<_> = (0..4u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(60) * i).await;
                let started = std::time::Instant::now();
                let answer = store.get(&format!("overlapping{i}")).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let (answer, took) = tokio::time::timeout(timeout * 20, call)
            .await
            .expect("an overlapping call waited far past its timeout")
            .unwrap();
        assert_eq!(answer, Err(StoreError::Timeout));
        assert!(within(took), "overlapping call {i} failed after {took:?}");
    }
}

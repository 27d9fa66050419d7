//! Every RPC and every error code of `gonest.session.v1.SessionStore` over a real tonic client:
//! one contract, run against the memory backend and against a daemon on Redis (the `memory` and
//! `redis` modules at the end), then what only the memory backend has.

mod common;

use std::time::{Duration, SystemTime};

use common::{Daemon, get, owned_by, save};
use gonest_session_proto::pb::session_store_client::SessionStoreClient;
use gonest_session_proto::pb::{self, pipeline_request::Op, pipeline_response::Result as Answer};
use gonest_session_proto::{duration_to_pb, timestamp_from_pb, timestamp_to_pb};
use gonest_session_test_support::RedisServer;
use gonest_sessiond::Config;
use tonic::Code;
use tonic::transport::Channel;

/// Where the daemon under test keeps its sessions; a Redis backend brings its own `redis-server`,
/// stopped when this is dropped.
struct Store {
    redis: Option<RedisServer>,
}

impl Store {
    fn memory() -> Self {
        Self { redis: None }
    }

    async fn redis() -> Self {
        Self {
            redis: Some(RedisServer::start().await),
        }
    }

    /// The daemon's default configuration on this backend.
    fn config(&self) -> Config {
        match &self.redis {
            None => Config::default(),
            Some(redis) => Config {
                backend: gonest_sessiond::StoreBackend::Redis(redis.url()),
                ..Config::default()
            },
        }
    }
}

/// Runs each named `async fn(Store)` once per backend, as `memory::name` and `redis::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::redis().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    owners_are_listed_and_destroyed_over_the_wire,
    an_owner_beyond_its_limit_is_resource_exhausted_with_the_limit,
    save_get_touch_destroy_round_trip,
    an_absolute_expires_at_is_used_when_no_ttl_is_given,
    version_conflicts_are_aborted_and_change_nothing,
    bad_input_is_invalid_argument_with_a_clear_message,
    an_oversized_session_is_resource_exhausted_and_the_stored_one_stays_writable,
    pipeline_applies_in_order_and_answers_errors_inline,
    many_pipeline_streams_run_at_once_and_keep_their_own_order,
    a_long_pipeline_with_batches_keeps_its_order,
    a_batch_of_saves_is_applied_in_its_order,
    a_batch_over_the_operations_cap_is_refused_unread,
    every_session_is_listed_page_by_page,
    health_says_serving_and_reflection_lists_the_service,
    shutdown_ends_open_pipeline_streams_and_returns,
    health_turns_not_serving_when_shutdown_starts,
    an_oversized_pipeline_op_is_answered_inline_and_the_stream_goes_on,
    sessions_over_4_mib_save_and_read_back_when_the_limit_allows,
    garbage_protobuf_is_the_callers_fault,
    refusals_carry_their_figures_as_error_details,
    a_batch_is_applied_in_order_and_answered_in_one_message,
    a_batch_with_large_answers_comes_back_in_parts_in_order,
    large_and_small_values_come_back_exactly,
    interleaved_sessions_each_keep_their_order,
);

/// What a Get for `id` finds, failing the test if the call itself fails.
async fn stored(client: &mut SessionStoreClient<Channel>, id: &str) -> Option<pb::Session> {
    client.get(get(id)).await.unwrap().into_inner().session
}

fn owned(id: &str, owner: &str) -> pb::SaveRequest {
    owned_by(save(id, &[("k", "v")], None), owner)
}

fn ids(sessions: &[pb::Session]) -> Vec<&str> {
    let mut ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Sessions saved through `a` are listed and destroyed by owner through `b`.
async fn owners_over_the_wire(
    mut a: SessionStoreClient<Channel>,
    mut b: SessionStoreClient<Channel>,
) {
    for (id, owner) in [
        ("s1", "user 42"),
        ("s2", "user 42"),
        ("s3", "user 42"),
        ("s4", "7"),
    ] {
        a.save(owned(id, owner)).await.unwrap();
    }
    let list = |with_data| pb::ListByOwnerRequest {
        owner: "user 42".into(),
        with_data,
    };
    let listed = b.list_by_owner(list(false)).await.unwrap().into_inner();
    assert_eq!(ids(&listed.sessions), ["s1", "s2", "s3"]);
    for session in &listed.sessions {
        assert!(session.data.is_empty(), "data only if asked");
        assert_eq!((session.owner.as_str(), session.version), ("user 42", 1));
        assert!(session.created_at.is_some() && session.expires_at.is_some());
    }
    let listed = b.list_by_owner(list(true)).await.unwrap().into_inner();
    assert_eq!(listed.sessions[0].data["k"], &b"v"[..]);
    assert_eq!(stored(&mut b, "s1").await.unwrap().owner, "user 42");

    // An older client's save, without an owner, clears it.
    a.save(save("s3", &[("k", "v")], None)).await.unwrap();
    let destroyed = b
        .destroy_by_owner(pb::DestroyByOwnerRequest {
            owner: "user 42".into(),
            except_ids: vec!["s2".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(destroyed.destroyed, 1, "s1 only");
    assert_eq!(stored(&mut a, "s1").await, None);
    assert!(stored(&mut a, "s2").await.is_some());
    assert!(
        stored(&mut a, "s3").await.is_some(),
        "no longer the owner's"
    );
    let status = a
        .save(save("s1", &[("k", "late")], Some(1)))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Aborted,
        "a destroyed session is not revived"
    );

    for bad in ["", "tab\there", &"x".repeat(257)] {
        let status = b
            .list_by_owner(pb::ListByOwnerRequest {
                owner: bad.into(),
                with_data: false,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        let status = b
            .destroy_by_owner(pb::DestroyByOwnerRequest {
                owner: bad.into(),
                except_ids: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let status = a.save(owned("s9", "bad\u{7f}")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn owners_are_listed_and_destroyed_over_the_wire(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    owners_over_the_wire(daemon.client(), daemon.client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_shared_by_two_daemons_on_one_redis() {
    let redis = gonest_session_test_support::RedisServer::start().await;
    let config = || Config {
        backend: gonest_sessiond::StoreBackend::Redis(redis.url()),
        ..Config::default()
    };
    let (a, b) = (Daemon::start(config()).await, Daemon::start(config()).await);
    owners_over_the_wire(a.client(), b.client()).await;
}

async fn an_owner_beyond_its_limit_is_resource_exhausted_with_the_limit(store: Store) {
    let daemon = Daemon::start(Config {
        max_sessions_per_owner: 2,
        ..store.config()
    })
    .await;
    let mut client = daemon.client();
    client.save(owned("a", "u")).await.unwrap();
    client.save(owned("b", "u")).await.unwrap();
    let status = client.save(owned("c", "u")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let error = gonest_session_proto::error_from_status(&status, None);
    assert_eq!(
        error,
        gonest_session_core::StoreError::TooManyOwnerSessions { limit: 2 }
    );
    client
        .save(owned("a", "u"))
        .await
        .expect("its own sessions stay writable");
}

async fn save_get_touch_destroy_round_trip(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();

    let absent = client.get(get("abc")).await.unwrap().into_inner();
    assert_eq!(absent.session, None, "absent is not an error");

    let before = SystemTime::now();
    let saved = client
        .save(save("abc", &[("user_id", "42")], Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.version, 1);
    let expires_at = timestamp_from_pb(&saved.expires_at.unwrap()).unwrap();
    let default_ttl = Duration::from_secs(24 * 3600);
    assert!(expires_at >= before + default_ttl - Duration::from_secs(5));
    assert!(expires_at <= SystemTime::now() + default_ttl);

    let got = stored(&mut client, "abc").await.unwrap();
    assert_eq!(got.id, "abc");
    assert_eq!(got.data["user_id"], &b"42"[..]);
    assert_eq!(got.version, 1);
    assert_eq!(got.created_at, saved.created_at);
    assert_eq!(got.expires_at, saved.expires_at);

    let resaved = client
        .save(pb::SaveRequest {
            ttl: Some(duration_to_pb(Duration::from_secs(60))),
            ..save("abc", &[("user_id", "43")], Some(1))
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resaved.version, 2);
    assert_eq!(resaved.created_at, saved.created_at, "created_at is kept");
    let short = timestamp_from_pb(&resaved.expires_at.unwrap()).unwrap();
    assert!(short < expires_at, "ttl on the request wins");

    let touched = client
        .touch(pb::TouchRequest {
            id: "abc".into(),
            ttl: Some(duration_to_pb(Duration::from_secs(3600))),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(touched.found);
    let touched_at = timestamp_from_pb(&touched.expires_at.unwrap()).unwrap();
    assert!(touched_at > short);
    let got = stored(&mut client, "abc").await.unwrap();
    assert_eq!(got.version, 2, "touch does not change the version");
    assert_eq!(got.expires_at, touched.expires_at);

    let missing = client
        .touch(pb::TouchRequest {
            id: "nope".into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found);
    assert_eq!(missing.expires_at, None);

    let destroyed = client
        .destroy(pb::DestroyRequest { id: "abc".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(destroyed.existed);
    let again = client
        .destroy(pb::DestroyRequest { id: "abc".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.existed, "destroy is idempotent");
    assert_eq!(stored(&mut client, "abc").await, None);
    daemon.stop().await.unwrap();
}

async fn an_absolute_expires_at_is_used_when_no_ttl_is_given(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    let at = SystemTime::now() + Duration::from_secs(7200);
    let mut request = save("abs", &[], None);
    request.session.as_mut().unwrap().expires_at = Some(timestamp_to_pb(at));
    let saved = client.save(request).await.unwrap().into_inner();
    let expires_at = timestamp_from_pb(&saved.expires_at.unwrap()).unwrap();
    // Redis keeps expiry in whole milliseconds on its own clock (the daemon sends what is left).
    let tolerance = match store.redis {
        None => Duration::ZERO,
        Some(_) => Duration::from_millis(50),
    };
    let off = expires_at
        .duration_since(at)
        .unwrap_or_else(|early| early.duration());
    assert!(off <= tolerance, "{expires_at:?} for {at:?}");
}

async fn version_conflicts_are_aborted_and_change_nothing(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    client
        .save(save("s", &[("k", "v1")], Some(0)))
        .await
        .unwrap();

    for expected in [0, 2, 7] {
        let status = client
            .save(save("s", &[("k", "lost")], Some(expected)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "expected {expected}");
        assert!(
            status.message().contains("version conflict"),
            "{}",
            status.message()
        );
    }
    let status = client.save(save("new", &[], Some(3))).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);

    let got = stored(&mut client, "s").await.unwrap();
    assert_eq!((got.version, &got.data["k"][..]), (1, &b"v1"[..]));
    assert_eq!(stored(&mut client, "new").await, None);
}

async fn bad_input_is_invalid_argument_with_a_clear_message(store: Store) {
    let daemon = Daemon::start(Config {
        max_ttl: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(600),
        ..store.config()
    })
    .await;
    let mut client = daemon.client();
    let long_id = "x".repeat(257);
    for (id, needle) in [
        ("", "empty"),
        (long_id.as_str(), "over the limit"),
        ("has space", "printable"),
        ("caf\u{e9}", "printable"),
        ("tab\there", "printable"),
    ] {
        let status = client.get(get(id)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id:?}");
        assert!(status.message().contains(needle), "{}", status.message());
        assert!(!status.message().contains(id) || id.is_empty(), "id echoed");
        let status = client.save(save(id, &[], None)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .destroy(pb::DestroyRequest { id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .touch(pb::TouchRequest {
                id: id.into(),
                ttl: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    for (seconds, nanos, needle) in [
        (0, 0, "positive"),
        (-5, 0, "positive"),
        (7200, 0, "maximum"),
    ] {
        let request = pb::SaveRequest {
            ttl: Some(prost_types::Duration { seconds, nanos }),
            ..save("ok", &[], None)
        };
        let status = client.save(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "ttl {seconds}");
        assert!(status.message().contains(needle), "{}", status.message());
        let status = client
            .touch(pb::TouchRequest {
                id: "ok".into(),
                ttl: Some(prost_types::Duration { seconds, nanos }),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "touch ttl {seconds}");
    }

    let mut past = save("ok", &[], None);
    past.session.as_mut().unwrap().expires_at =
        Some(timestamp_to_pb(SystemTime::now() - Duration::from_secs(1)));
    let status = client.save(past).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not in the future"),
        "{}",
        status.message()
    );

    let status = client
        .save(pb::SaveRequest {
            session: None,
            expected_version: None,
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(stored(&mut client, "ok").await, None);
}

async fn an_oversized_session_is_resource_exhausted_and_the_stored_one_stays_writable(
    store: Store,
) {
    let daemon = Daemon::start(Config {
        max_session_bytes: 100,
        ..store.config()
    })
    .await;
    let mut client = daemon.client();
    let big = "v".repeat(100);
    let status = client
        .save(save("a", &[("k", &big)], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("over the limit of 100"),
        "{}",
        status.message()
    );
    assert_eq!(stored(&mut client, "a").await, None, "nothing stored");

    client.save(save("a", &[("k", "1")], None)).await.unwrap();
    let status = client
        .save(save("a", &[("k", &big)], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let got = stored(&mut client, "a").await.unwrap();
    assert_eq!((got.version, &got.data["k"][..]), (1, &b"1"[..]), "kept");

    let updated = client.save(save("a", &[("k", "2")], None)).await.unwrap();
    assert_eq!(updated.into_inner().version, 2);
    let got = stored(&mut client, "a").await.unwrap();
    assert_eq!(got.data["k"], &b"2"[..]);
}

#[tokio::test]
async fn the_session_limit_is_resource_exhausted_and_existing_sessions_stay_writable() {
    let daemon = Daemon::start(Config {
        max_sessions: 2,
        ..Config::default()
    })
    .await;
    let mut client = daemon.client();
    client.save(save("a", &[("k", "1")], None)).await.unwrap();
    client.save(save("b", &[("k", "1")], None)).await.unwrap();
    let status = client
        .save(save("c", &[("k", "1")], None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("session limit"),
        "{}",
        status.message()
    );
    assert_eq!(stored(&mut client, "c").await, None);

    let updated = client.save(save("a", &[("k", "2")], None)).await.unwrap();
    assert_eq!(updated.into_inner().version, 2);

    let stats = client
        .stats(pb::StatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.live_sessions, Some(2));
    assert!(stats.resident_memory_bytes > 0);
}

/// Sends `messages` on one `Pipeline` stream and returns every answer, failing the test if the
/// stream fails.
async fn pipelined(
    client: &mut SessionStoreClient<Channel>,
    messages: impl IntoIterator<Item = pb::PipelineRequest, IntoIter: Send + 'static>,
) -> Vec<pb::PipelineResponse> {
    use futures_util::StreamExt;
    client
        .pipeline(futures_util::stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap())
        .collect()
        .await
}

fn op(tag: u64, op: Op) -> pb::PipelineRequest {
    pb::PipelineRequest {
        tag,
        op: Some(op),
        batch: Vec::new(),
    }
}

async fn pipeline_applies_in_order_and_answers_errors_inline(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    let requests = vec![
        op(10, Op::Save(Box::new(save("p", &[("n", "1")], Some(0))))),
        op(11, Op::Get(get("p"))),
        op(12, Op::Save(Box::new(save("p", &[("n", "2")], Some(1))))),
        op(13, Op::Save(Box::new(save("p", &[("n", "x")], Some(1))))),
        op(14, Op::Get(get(""))),
        pb::PipelineRequest {
            tag: 15,
            ..Default::default()
        },
        op(
            16,
            Op::Touch(pb::TouchRequest {
                id: "p".into(),
                ttl: None,
            }),
        ),
        op(17, Op::Destroy(pb::DestroyRequest { id: "p".into() })),
        op(18, Op::Get(get("p"))),
    ];
    let count = requests.len();
    let answers = pipelined(&mut client, requests).await;
    assert_eq!(answers.len(), count);
    let tags: Vec<u64> = answers.iter().map(|a| a.tag).collect();
    assert_eq!(tags, (10..19).collect::<Vec<_>>());
    let results: Vec<Answer> = answers.into_iter().map(|a| a.result.unwrap()).collect();
    assert!(matches!(&results[0], Answer::Save(s) if s.version == 1));
    assert!(
        matches!(&results[1], Answer::Get(g) if g.session.as_ref().unwrap().data["n"] == b"1"[..])
    );
    assert!(matches!(&results[2], Answer::Save(s) if s.version == 2));
    assert!(
        matches!(&results[3], Answer::Error(e) if e.code == Code::Aborted as i32 && e.message.contains("version conflict"))
    );
    assert!(matches!(&results[4], Answer::Error(e) if e.code == Code::InvalidArgument as i32));
    assert!(matches!(&results[5], Answer::Error(e) if e.code == Code::InvalidArgument as i32));
    assert!(matches!(&results[6], Answer::Touch(t) if t.found));
    assert!(matches!(&results[7], Answer::Destroy(d) if d.existed));
    assert!(matches!(&results[8], Answer::Get(g) if g.session.is_none()));
}

async fn many_pipeline_streams_run_at_once_and_keep_their_own_order(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let streams = (0..16).map(|s| {
        let mut client = daemon.client();
        tokio::spawn(async move {
            let id = format!("stream-{s}");
            // Each stream writes its own session 200 times, each save conditional on the last,
            // so any reordering inside the stream would surface as a conflict.
            let requests = (0..200u64).map(move |i| {
                let value = i.to_string();
                op(i, Op::Save(Box::new(save(&id, &[("i", &value)], Some(i)))))
            });
            let answers = pipelined(&mut client, requests).await;
            for (i, answer) in answers.iter().enumerate() {
                assert_eq!(answer.tag, i as u64);
                match &answer.result {
                    Some(Answer::Save(saved)) => assert_eq!(saved.version, i as u64 + 1),
                    other => panic!("stream {s} op {i}: {other:?}"),
                }
            }
            answers.len()
        })
    });
    let mut total = 0;
    for task in streams.collect::<Vec<_>>() {
        total += task.await.unwrap();
    }
    assert_eq!(total, 16 * 200);
    let mut client = daemon.client();
    for s in 0..16 {
        let got = stored(&mut client, &format!("stream-{s}")).await.unwrap();
        assert_eq!((got.version, &got.data["i"][..]), (200, &b"199"[..]));
    }
}

async fn health_says_serving_and_reflection_lists_the_service(store: Store) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let daemon = Daemon::start(store.config()).await;
    let mut health = HealthClient::new(daemon.channel.clone());
    for service in ["", "gonest.session.v1.SessionStore"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, 1, "SERVING for {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(daemon.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"gonest.session.v1.SessionStore".to_owned()),
        "{names:?}"
    );

    // The descriptor of the service's file resolves, imports included, as grpcurl needs.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "gonest.session.v1.SessionStore".into(),
        )),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert!(
        matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{answer:?}"
    );
}

async fn shutdown_ends_open_pipeline_streams_and_returns(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .pipeline(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(op(1, Op::Save(Box::new(save("s", &[], None)))))
        .await
        .unwrap();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(first.tag, 1);

    // The stream is still open (tx is alive) when shutdown starts; the daemon must end it
    // rather than wait for the client.
    let stopped = tokio::time::timeout(Duration::from_secs(5), daemon.stop()).await;
    stopped.expect("shutdown waited on an idle stream").unwrap();
    let end = answers.message().await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    drop(tx);
}

/// Each save expects the version the one before it left, so any reordering is a conflict.
async fn a_long_pipeline_with_batches_keeps_its_order(store: Store) {
    use pb::pipeline_request::Op;
    let daemon = Daemon::start(store.config()).await;
    let mut requests = Vec::new();
    for n in 0..200u64 {
        let op = Op::Save(Box::new(save("ordered", &[("k", &n.to_string())], Some(n))));
        let request = pb::PipelineRequest {
            tag: n,
            op: Some(op),
            batch: Vec::new(),
        };
        // Every fifth message carries a batch of three gets, answered together.
        requests.push(if n % 5 == 0 {
            pb::PipelineRequest {
                batch: (0..3)
                    .map(|i| pb::PipelineRequest {
                        tag: 1000 + n * 3 + i,
                        op: Some(Op::Get(get("ordered"))),
                        batch: Vec::new(),
                    })
                    .collect(),
                ..request
            }
        } else {
            request
        });
    }
    let answers = pipelined(&mut daemon.client(), requests).await;
    assert_eq!(answers.len(), 200);
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.tag, n as u64);
        match &answer.result {
            Some(pb::pipeline_response::Result::Save(saved)) => {
                assert_eq!(saved.version, n as u64 + 1)
            }
            other => panic!("save {n}: {other:?}"),
        }
        for get in &answer.batch {
            let Some(pb::pipeline_response::Result::Get(got)) = &get.result else {
                panic!("{get:?}");
            };
            assert_eq!(got.session.as_ref().unwrap().version, n as u64 + 1);
        }
    }
    daemon.stop().await.unwrap();
}

async fn a_batch_of_saves_is_applied_in_its_order(store: Store) {
    use pb::pipeline_request::Op;
    let daemon = Daemon::start(store.config()).await;
    let batch = (0..200u64)
        .map(|n| pb::PipelineRequest {
            tag: n + 1,
            op: Some(Op::Save(Box::new(save(
                "batched",
                &[("k", &n.to_string())],
                Some(n),
            )))),
            batch: Vec::new(),
        })
        .collect();
    let envelope = pb::PipelineRequest {
        tag: 0,
        op: None,
        batch,
    };
    let answers = pipelined(&mut daemon.client(), [envelope]).await;
    let versions: Vec<u64> = answers[0]
        .batch
        .iter()
        .map(|answer| match &answer.result {
            Some(pb::pipeline_response::Result::Save(saved)) => saved.version,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(versions, (1..=200).collect::<Vec<u64>>());
    daemon.stop().await.unwrap();
}

/// A batch of [`gonest_session_proto::MAX_BATCH_OPERATIONS`] is answered whole; one more
/// operation, at the top or nested, ends the stream `RESOURCE_EXHAUSTED` with the limit, and
/// nothing of that message is applied.
async fn a_batch_over_the_operations_cap_is_refused_unread(store: Store) {
    use futures_util::StreamExt;
    use tonic_types::StatusExt;
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    let stats = client
        .stats(pb::StatsRequest { as_stored: true })
        .await
        .unwrap()
        .into_inner();
    let cap = usize::try_from(stats.max_batch_operations).unwrap();
    assert_eq!(cap, gonest_session_proto::MAX_BATCH_OPERATIONS);
    let saves = |count: usize, prefix: &str| -> Vec<pb::PipelineRequest> {
        (0..count as u64)
            .map(|n| {
                op(
                    n + 1,
                    Op::Save(Box::new(save(&format!("{prefix}{n}"), &[], None))),
                )
            })
            .collect()
    };
    let envelope = |batch| pb::PipelineRequest {
        tag: 0,
        op: None,
        batch,
    };
    let answers = pipelined(&mut client, [envelope(saves(cap, "at-cap-"))]).await;
    let answered: usize = answers.iter().map(|part| part.batch.len()).sum();
    assert_eq!(answered, cap);
    assert!(
        stored(&mut client, &format!("at-cap-{}", cap - 1))
            .await
            .is_some()
    );

    let mut nested = saves(cap - 1, "nested-");
    nested.push(pb::PipelineRequest {
        tag: 0,
        op: None,
        batch: saves(1, "nested-inner-"),
    });
    for refused in [envelope(saves(cap + 1, "over-")), envelope(nested)] {
        let mut answers = client
            .pipeline(futures_util::stream::iter([
                refused,
                op(9, Op::Get(get("x"))),
            ]))
            .await
            .unwrap()
            .into_inner();
        let status = answers.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "BATCH_TOO_LARGE");
        assert_eq!(info.metadata["limit"], cap.to_string());
        assert!(answers.next().await.is_none(), "the stream ends");
    }
    for id in ["over-0", "nested-0", "nested-inner-0"] {
        assert!(stored(&mut client, id).await.is_none(), "{id} was applied");
    }
    daemon.stop().await.unwrap();
}

/// `ListSessions` pages through every live session, without data; a cursor the daemon did not
/// hand out is `INVALID_ARGUMENT`.
async fn every_session_is_listed_page_by_page(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    for n in 0..250 {
        let request = save(&format!("s{n}"), &[("k", "v")], None);
        let request = if n % 2 == 0 {
            owned_by(request, "u")
        } else {
            request
        };
        client.save(request).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_sessions(pb::ListSessionsRequest {
                cursor: cursor.clone(),
                limit: 40,
            })
            .await
            .unwrap()
            .into_inner();
        for session in page.sessions {
            assert!(session.data.is_empty(), "no data in a listing");
            let n: u32 = session.id[1..].parse().unwrap();
            assert_eq!(session.owner.is_empty(), n % 2 == 1);
            seen.insert(session.id);
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), 250);
    let status = client
        .list_sessions(pb::ListSessionsRequest {
            cursor: "not a cursor".into(),
            limit: 40,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    daemon.stop().await.unwrap();
}

/// A daemon on Redis counts no sessions of its own: Stats leaves the counts unset, rather than
/// reporting an empty store, and still gives its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_on_redis_leave_the_counts_unset() {
    let store = Store::redis().await;
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    client.save(save("s", &[], None)).await.unwrap();
    for as_stored in [false, true] {
        let stats = client
            .stats(pb::StatsRequest { as_stored })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                stats.live_sessions,
                stats.expired_removed_total,
                stats.sweeps_total
            ),
            (None, None, None)
        );
        assert!(stats.max_session_bytes > 0);
    }
    let remote = gonest_session_client::RemoteSessionStore::connect(daemon.url())
        .await
        .unwrap();
    assert_eq!(remote.stats().await.unwrap().live_sessions, None);
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn stats_count_sessions() {
    let daemon = Daemon::start(Config::default()).await;
    let mut client = daemon.client();
    for i in 0..5 {
        client
            .save(save(&format!("s{i}"), &[], None))
            .await
            .unwrap();
    }
    client
        .destroy(pb::DestroyRequest { id: "s0".into() })
        .await
        .unwrap();
    let stats = client
        .stats(pb::StatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.live_sessions, Some(4));
    assert_eq!(stats.expired_removed_total, Some(0));
    assert_eq!(stats.sweeps_total, Some(0));
}

/// `as_stored` answers from the counters as they stand; the plain request counts exactly. Neither
/// removes what has expired: that is the sweeper's work, and `expired_removed_total` counts only
/// it (and reads that found a session expired).
#[tokio::test(start_paused = true)]
async fn stats_as_stored_answers_without_removing_the_expired() {
    let daemon = Daemon::start(Config::default()).await;
    let mut client = daemon.client();
    for i in 0..5 {
        let mut request = save(&format!("s{i}"), &[], None);
        request.ttl = Some(duration_to_pb(Duration::from_secs(if i < 3 {
            1
        } else {
            3600
        })));
        client.save(request).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let stats = |as_stored| {
        let mut client = client.clone();
        async move {
            client
                .stats(pb::StatsRequest { as_stored })
                .await
                .unwrap()
                .into_inner()
        }
    };

    let stored = stats(true).await;
    assert_eq!(
        (stored.live_sessions, stored.expired_removed_total),
        (Some(5), Some(0)),
        "as they stand: the three expired ones are still stored"
    );
    assert_eq!(
        stored.max_session_bytes,
        Config::default().max_session_bytes as u64,
        "the limits are there"
    );
    let exact = stats(false).await;
    assert_eq!(
        (exact.live_sessions, exact.expired_removed_total),
        (Some(2), Some(0))
    );
    let stored = stats(true).await;
    assert_eq!(
        (stored.live_sessions, stored.expired_removed_total),
        (Some(5), Some(0)),
        "counted, not removed"
    );
}

/// A compressed `Pipeline` request is refused as the generated server refuses one (the daemon
/// offers no compression), not read as protobuf.
#[tokio::test]
async fn a_compressed_pipeline_request_is_unimplemented() {
    let daemon = Daemon::start(Config::default()).await;
    let tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = common::pipeline_request(daemon.addr)
        .header("grpc-encoding", "gzip")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(bytes::Bytes::from_static(&[1, 0, 0, 0, 1, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "12", "{response:?}");
    assert!(
        response.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("gzip")
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed() {
    use tokio::io::AsyncReadExt;
    let daemon = Daemon::start(Config::default()).await;
    let mut silent = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let mut buffer = [0u8; 64];
    // Paused time: the daemon's timeout passes as soon as everything is idle, no real waiting.
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buffer))
        .await
        .expect("the daemon kept a silent connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Clients that speak are served as before.
    let mut client = daemon.client();
    client.get(get("still-serving")).await.unwrap();
}

async fn health_turns_not_serving_when_shutdown_starts(store: Store) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let daemon = Daemon::start(store.config()).await;
    let mut health = HealthClient::new(daemon.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "gonest.session.v1.SessionStore".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, 1, "SERVING while up");

    let stopping = tokio::spawn(daemon.stop());
    // The watch sees NOT_SERVING before the daemon is gone: probes stop sending traffic first.
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status, 2, "NOT_SERVING once shutdown starts");
    // A watcher that lets go lets the drain finish well before the hard deadline.
    drop(watch);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown waited for the deadline")
        .unwrap()
        .unwrap();
}

/// A save of `bytes` bytes of data under one key.
fn big_save(id: &str, bytes: usize) -> pb::SaveRequest {
    pb::SaveRequest {
        session: Some(pb::Session {
            id: id.to_owned(),
            data: [("blob".to_owned(), vec![b'x'; bytes].into())].into(),
            ..Default::default()
        }),
        expected_version: None,
        ttl: None,
    }
}

async fn an_oversized_pipeline_op_is_answered_inline_and_the_stream_goes_on(store: Store) {
    let daemon = Daemon::start(Config {
        max_session_bytes: 64 * 1024,
        ..store.config()
    })
    .await;
    let mut client = daemon.client();
    let requests = vec![
        op(1, Op::Save(Box::new(save("kept", &[("n", "1")], None)))),
        // Over --max-session-bytes, within the message limit: refused, the stream goes on.
        op(2, Op::Save(Box::new(big_save("kept", 100 * 1024)))),
        op(3, Op::Get(get("kept"))),
        op(4, Op::Save(Box::new(big_save("fits", 60 * 1024)))),
    ];
    let answers: Vec<Answer> = pipelined(&mut client, requests)
        .await
        .into_iter()
        .map(|answer| answer.result.unwrap())
        .collect();
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert!(
        matches!(&answers[1], Answer::Error(e) if e.code == Code::ResourceExhausted as i32),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], Answer::Get(g) if g.session.as_ref().unwrap().data["n"] == b"1"[..])
    );
    assert!(matches!(&answers[3], Answer::Save(s) if s.version == 1));
}

async fn sessions_over_4_mib_save_and_read_back_when_the_limit_allows(store: Store) {
    let daemon = Daemon::start(Config {
        max_session_bytes: 16 << 20,
        ..store.config()
    })
    .await;
    // A plain generated client: unary calls, its default 4 MiB limit on what it reads raised.
    let mut client = daemon.client().max_decoding_message_size(usize::MAX);
    let saved = client.save(big_save("big", 10 << 20)).await.unwrap();
    assert_eq!(saved.into_inner().version, 1);
    let got = stored(&mut client, "big").await.unwrap();
    assert_eq!(got.data["blob"].len(), 10 << 20);

    // Over the session limit: refused, not a transport error.
    let status = client.save(big_save("big", 17 << 20)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(stored(&mut client, "big").await.unwrap().version, 1);
}

async fn garbage_protobuf_is_the_callers_fault(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut grpc = tonic::client::Grpc::new(daemon.channel.clone());
    grpc.ready().await.unwrap();
    // Bytes that do not decode as a GetRequest: field 1 says 100 bytes follow, 2 do.
    let status = grpc
        .unary(
            tonic::Request::new(vec![0x0a, 100, b'a', b'b']),
            "/gonest.session.v1.SessionStore/Get".parse().unwrap(),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed"), "{status:?}");
}

async fn refusals_carry_their_figures_as_error_details(store: Store) {
    use tonic_types::StatusExt;
    let daemon = Daemon::start(Config {
        max_session_bytes: 10,
        ..store.config()
    })
    .await;
    let mut client = daemon.client();
    let status = client
        .save(save("big", &[("k", "0123456789")], None))
        .await
        .unwrap_err();
    let info = status
        .get_details_error_info()
        .expect("an ErrorInfo detail");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("SESSION_TOO_LARGE", "gonest.session.v1")
    );
    assert_eq!(
        (&*info.metadata["size"], &*info.metadata["limit"]),
        ("11", "10")
    );

    client.save(save("s", &[], None)).await.unwrap();
    let status = client.save(save("s", &[], Some(7))).await.unwrap_err();
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "VERSION_CONFLICT");
    assert_eq!(
        (&*info.metadata["expected"], &*info.metadata["actual"]),
        ("7", "1")
    );
}

/// Sends and receives raw bytes, for requests no generated client would write.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn a_batch_is_applied_in_order_and_answered_in_one_message(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client();
    let stats = client
        .stats(pb::StatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stats.pipeline_batches);
    let batch = pb::PipelineRequest {
        tag: 0,
        op: None,
        batch: vec![
            op(1, Op::Save(Box::new(save("b", &[("n", "1")], Some(0))))),
            op(2, Op::Save(Box::new(save("b", &[("n", "2")], Some(0))))),
            op(3, Op::Get(get("b"))),
            pb::PipelineRequest {
                tag: 4,
                op: None,
                batch: vec![op(5, Op::Get(get("b")))],
            },
        ],
    };
    let requests = vec![
        batch,
        op(6, Op::Destroy(pb::DestroyRequest { id: "b".into() })),
    ];
    let answers = pipelined(&mut client, requests).await;
    assert_eq!(
        answers.len(),
        2,
        "one answer for the batch, one for the single op"
    );
    let batch = &answers[0];
    assert_eq!((batch.tag, &batch.result), (0, &None));
    let tags: Vec<u64> = batch.batch.iter().map(|a| a.tag).collect();
    assert_eq!(tags, [1, 2, 3, 4]);
    let results: Vec<&Answer> = batch
        .batch
        .iter()
        .map(|a| a.result.as_ref().unwrap())
        .collect();
    assert!(matches!(results[0], Answer::Save(s) if s.version == 1));
    assert!(matches!(results[1], Answer::Error(e) if e.code == Code::Aborted as i32));
    assert!(
        matches!(results[2], Answer::Get(g) if g.session.as_ref().unwrap().data["n"] == b"1"[..])
    );
    assert!(
        matches!(results[3], Answer::Error(e) if e.code == Code::InvalidArgument as i32 && e.message.contains("nest"))
    );
    assert!(matches!(&answers[1].result, Some(Answer::Destroy(d)) if d.existed));
}

async fn a_batch_with_large_answers_comes_back_in_parts_in_order(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client().max_decoding_message_size(usize::MAX);
    client.save(big_save("big", 300 << 10)).await.unwrap();
    // Ten Gets of a 300 KiB session, then a save: 3 MB of answers.
    let mut batch: Vec<_> = (1..=10).map(|tag| op(tag, Op::Get(get("big")))).collect();
    batch.push(op(11, Op::Save(Box::new(save("after", &[], Some(0))))));
    let envelope = pb::PipelineRequest {
        tag: 77,
        op: Some(Op::Get(get("after"))),
        batch,
    };
    let answers = pipelined(&mut client, [envelope]).await;
    assert!(answers.len() >= 3, "{} parts", answers.len());
    assert!(answers.iter().all(|part| part.tag == 77));
    assert!(
        matches!(&answers[0].result, Some(Answer::Get(g)) if g.session.is_none()),
        "the envelope's own op first, before the batch's save"
    );
    assert!(answers[1..].iter().all(|part| part.result.is_none()));
    for part in &answers {
        let bytes: usize = part.batch.iter().map(prost::Message::encoded_len).sum();
        assert!(
            bytes < (1 << 20) + (300 << 10) + 1024,
            "a part of {bytes} bytes"
        );
    }
    let inner: Vec<&pb::PipelineResponse> = answers.iter().flat_map(|part| &part.batch).collect();
    let tags: Vec<u64> = inner.iter().map(|answer| answer.tag).collect();
    assert_eq!(tags, (1..=11).collect::<Vec<u64>>());
    for answer in &inner[..10] {
        assert!(
            matches!(&answer.result, Some(Answer::Get(g)) if g.session.as_ref().unwrap().data["blob"].len() == 300 << 10)
        );
    }
    assert!(matches!(&inner[10].result, Some(Answer::Save(s)) if s.version == 1));
}

/// Values around the size the daemon sends without copying (as frames of their own), several in
/// one session and in one batch, come back byte for byte.
async fn large_and_small_values_come_back_exactly(store: Store) {
    use gonest_session_proto::chunked::LARGE_VALUE;
    let daemon = Daemon::start(store.config()).await;
    let mut client = daemon.client().max_decoding_message_size(usize::MAX);
    let value = |len: usize, seed: u8| -> bytes::Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    };
    let sessions: Vec<pb::Session> = (0..4u8)
        .map(|n| pb::Session {
            id: format!("s{n}"),
            data: [
                ("a".to_owned(), value(LARGE_VALUE - 1, n)),
                ("b".to_owned(), value(LARGE_VALUE, n + 1)),
                ("c".to_owned(), value(3 * LARGE_VALUE + 5, n + 2)),
                ("d".to_owned(), value(10, n + 3)),
                ("e".to_owned(), bytes::Bytes::new()),
            ]
            .into(),
            ..Default::default()
        })
        .collect();
    for session in &sessions {
        client
            .save(pb::SaveRequest {
                session: Some(session.clone()),
                expected_version: None,
                ttl: None,
            })
            .await
            .unwrap();
    }
    let batch = (0..4u64)
        .map(|n| op(n + 1, Op::Get(get(&format!("s{n}")))))
        .collect();
    let single = op(9, Op::Get(get("s3")));
    let answers = pipelined(
        &mut client,
        [
            single,
            pb::PipelineRequest {
                tag: 10,
                op: None,
                batch,
            },
        ],
    )
    .await;
    let got: Vec<&pb::Session> = answers
        .iter()
        .flat_map(|answer| std::iter::once(answer).chain(&answer.batch))
        .filter_map(|answer| match &answer.result {
            Some(Answer::Get(get)) => get.session.as_ref(),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].data, sessions[3].data);
    for (got, sent) in got[1..].iter().zip(&sessions) {
        assert_eq!(got.id, sent.id);
        assert_eq!(got.data, sent.data);
        assert_eq!(got.version, 1);
    }
}

/// Saves of four sessions in turn, each expecting the version its session's last save left, in
/// single messages and in batches: every one lands, whatever runs at once.
async fn interleaved_sessions_each_keep_their_order(store: Store) {
    let daemon = Daemon::start(store.config()).await;
    let ids = ["w", "x", "y", "z"];
    let saves = (0..400u64).map(|n| {
        let (id, round) = (ids[(n % 4) as usize], n / 4);
        op(
            n + 1,
            Op::Save(Box::new(save(
                id,
                &[("n", &round.to_string())],
                Some(round),
            ))),
        )
    });
    let mut messages = Vec::new();
    let mut saves = saves.peekable();
    while saves.peek().is_some() {
        // Five single messages, then a batch of seven, and so on.
        messages.extend(saves.by_ref().take(5));
        let batch: Vec<_> = saves.by_ref().take(7).collect();
        if !batch.is_empty() {
            messages.push(pb::PipelineRequest {
                tag: 0,
                op: None,
                batch,
            });
        }
    }
    let answers = pipelined(&mut daemon.client(), messages).await;
    let flat: Vec<pb::PipelineResponse> = answers
        .into_iter()
        .flat_map(|mut answer| {
            let batch = std::mem::take(&mut answer.batch);
            std::iter::once(answer).chain(batch)
        })
        .filter(|answer| answer.tag != 0)
        .collect();
    let tags: Vec<u64> = flat.iter().map(|answer| answer.tag).collect();
    assert_eq!(tags, (1..=400).collect::<Vec<u64>>(), "answers in order");
    for answer in &flat {
        let round = (answer.tag - 1) / 4;
        assert!(
            matches!(&answer.result, Some(Answer::Save(s)) if s.version == round + 1),
            "{answer:?}"
        );
    }
    let mut client = daemon.client();
    for id in ids {
        assert_eq!(stored(&mut client, id).await.unwrap().version, 100);
    }
}

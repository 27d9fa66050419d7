//! Running the daemon: the gRPC server with health and reflection, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gonest_session_core::MemorySessionStore;
use gonest_session_proto::{
    FILE_DESCRIPTOR_SET, message_limit, pb::session_store_server::SessionStoreServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::Persistence;
use crate::config::{Config, StoreBackend, TlsFiles, default_max_connections};
use crate::engine::{Engine, MemoryEngine, StoreEngine};
use crate::metrics::Metrics;
use crate::service::{Limits, SessionService};

/// How long one unary call may take on the server.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of the HTTP/2 pings that find dead peers, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one connection may have open at once. The Rust client uses two; each open stream
/// may hold one request being received, up to the message limit.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// The HTTP/2 receive windows: how much a peer may send before the daemon reads it, per stream
/// and per connection.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 2 << 20;
/// Serves the session store on `listener` until `shutdown` completes.
///
/// On shutdown, health turns `NOT_SERVING`, the listener stops accepting, open `Pipeline`
/// streams end, and in-flight calls get up to `config.shutdown_timeout` to finish before
/// this returns anyway.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match &config.backend {
        StoreBackend::Memory => {
            anyhow::ensure!(
                config.redis_wait_replicas == 0,
                "--redis-wait-replicas belongs to a Redis backend"
            );
            let store = MemorySessionStore::builder()
                .default_ttl(config.default_ttl)
                .max_ttl(config.max_ttl)
                .max_session_bytes(config.max_session_bytes)
                .max_sessions(config.max_sessions)
                .max_sessions_per_owner(config.max_sessions_per_owner)
                .sweep_interval(Some(config.sweep_interval))
                .build()
                .context("invalid store settings")?;
            let log = match &config.persistence {
                Some(persistence) => persistence.load(&store).await?,
                None => None,
            };
            serve(listener, config, MemoryEngine::new(store, log), shutdown).await
        }
        StoreBackend::Redis(url) => {
            anyhow::ensure!(
                config.persistence.is_none() && config.max_sessions == 0,
                "--data-dir and --max-sessions belong to the memory backend; with Redis, \
                 Redis keeps and bounds the sessions"
            );
            let store = gonest_session_redis::RedisSessionStore::builder(url.as_str())
                .default_ttl(config.default_ttl)
                .max_ttl(config.max_ttl)
                .max_session_bytes(config.max_session_bytes)
                .max_sessions_per_owner(config.max_sessions_per_owner)
                .wait_for_replicas(config.redis_wait_replicas, config.redis_wait_timeout)
                .publish_changes(true)
                .connect()
                .await
                .map_err(|err| anyhow::anyhow!("cannot use the redis backend: {err}"))?;
            serve(listener, config, StoreEngine::on_redis(store), shutdown).await
        }
    }
}

/// Serves `engine` on `listener` until `shutdown` completes; see [`run`].
async fn serve<E: Engine>(
    listener: TcpListener,
    config: Config,
    engine: E,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = Limits {
        max_session_bytes: config.max_session_bytes,
        max_ttl: config.max_ttl,
    };

    let (stopping_tx, stopping) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SessionStoreServer<SessionService<E>>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;

    let addr = listener.local_addr().context("listener has no address")?;
    if !addr.ip().is_loopback() && !config.tokens.required() {
        tracing::warn!(
            %addr,
            "listening beyond loopback without --auth-token-file: anyone who can reach this \
             address can read and change every session"
        );
    }
    let mut service = SessionService::new(engine.clone(), limits, stopping.clone());
    let (in_flight, writes) = (service.in_flight(), service.writes.clone());
    let max_connections = config
        .max_connections
        .unwrap_or_else(default_max_connections);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let settings = crate::metrics::Settings {
                max_sessions: config.max_sessions,
                max_connections,
                snapshot_interval: config.persistence.as_ref().map(|p| p.interval),
                on_redis: engine.memory().is_none(),
            };
            let metrics = Arc::new(Metrics::new(
                engine.memory().cloned(),
                engine.feed().cloned(),
                engine.append_log().cloned(),
                settings,
                slots.clone(),
            ));
            crate::metrics::serve(addr, metrics.clone(), stopping.clone()).await?;
            service = service.with_metrics(metrics.clone());
            Some(metrics)
        }
        None => None,
    };
    let mut stop_rx = stopping.clone();
    let accept = crate::incoming::Accept {
        handshake_timeout: config.handshake_timeout,
        max_connections,
        slots,
        tls: config.tls.as_ref().map(TlsFiles::acceptor).transpose()?,
        answer_budget: config.max_unsent_answer_bytes,
    };
    let server = tonic::transport::Server::builder()
        // Bounds a unary call; Pipeline streams live on, their operations answered one by one.
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            // Requests may carry a session of up to --max-session-bytes and its framing; answers
            // are not limited, so whatever was stored (even under an earlier, larger limit) can
            // be read back.
            // Pipeline calls are answered by a body of our own that sends large values without
            // copying them (pipeline.rs); the same limits apply.
            crate::pipeline::WithPipeline::new(
                SessionStoreServer::new(service.clone())
                    .max_decoding_message_size(message_limit(config.max_session_bytes))
                    .max_encoding_message_size(usize::MAX),
                service,
                message_limit(config.max_session_bytes),
            ),
            config.tokens.clone(),
        ))
        .serve_with_incoming_shutdown(crate::incoming::accept(listener, accept), async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    let mut server = tokio::spawn(server);
    // Persistence belongs to the memory backend (checked above).
    let snapshotted = config.persistence.clone().zip(engine.memory().cloned());
    let log = engine.append_log().cloned();
    let snapshots = snapshotted.clone().map(|(persistence, memory)| {
        tokio::spawn(snapshot_every_interval(
            persistence,
            memory,
            log.clone(),
            metrics.clone(),
            stopping.clone(),
        ))
    });
    if engine.memory().is_none() {
        tokio::spawn(report_backend_health(
            engine.clone(),
            health.clone(),
            metrics.clone(),
            stopping.clone(),
        ));
    }
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        auth = config.tokens.required(),
        max_connections,
        "gonest-sessiond listening"
    );

    tokio::select! {
        served = &mut server => {
            return served.context("server task failed")?.context("server failed");
        }
        () = shutdown => {}
    }

    health
        .set_not_serving::<SessionStoreServer<SessionService<E>>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    if !config.shutdown_drain.is_zero() {
        tracing::info!(
            drain = %humantime::format_duration(config.shutdown_drain),
            "reporting NOT_SERVING before closing the listener"
        );
        tokio::time::sleep(config.shutdown_drain).await;
    }
    // Stop accepting, end open Pipeline streams, and wait for the calls in progress: not for
    // idle connections or health Watch streams, which would hold shutdown as long as their
    // peers like.
    let _ = stopping_tx.send(true);
    let served = tokio::select! {
        served = &mut server => Some(served),
        () = async {
            in_flight.close();
            in_flight.wait().await;
        } => None,
        () = tokio::time::sleep(config.shutdown_timeout) => {
            tracing::warn!(
                timeout = %humantime::format_duration(config.shutdown_timeout),
                "in-flight calls did not finish in time; stopping anyway"
            );
            None
        }
    };
    // From here on no write lands: the final snapshot below holds every acknowledged write.
    writes.close();
    match served {
        Some(served) => served
            .context("server task failed")?
            .context("server failed")?,
        None => server.abort(),
    }
    if let (Some(task), Some((persistence, memory))) = (snapshots, &snapshotted) {
        // The periodic task has seen `stopping` and ends after any snapshot in progress; then
        // the last one, with every write that made it in.
        let _ = task.await;
        let took = persistence
            .write(memory, log.as_ref())
            .await
            .context("final snapshot failed")?;
        if let Some(metrics) = &metrics {
            metrics.snapshot_written(took);
        }
    }
    tracing::info!("gonest-sessiond stopped");
    Ok(())
}

/// How often a Redis backend is checked for health.
const BACKEND_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Reports `NOT_SERVING` on health while the backend cannot be reached and `SERVING` again once
/// it can, until the daemon stops. Checked every second; a check unanswered within a second
/// counts as unreachable (the store's own timeout, 2 s by default, would let health say
/// `SERVING` for 3 s after Redis went away), so health follows within 2 s.
async fn report_backend_health<E: Engine>(
    engine: E,
    health: tonic_health::server::HealthReporter,
    metrics: Option<Arc<Metrics>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut ticks = tokio::time::interval(BACKEND_CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let reachable = tokio::time::timeout(BACKEND_CHECK_INTERVAL, engine.reachable())
            .await
            .unwrap_or(Some(false))
            .unwrap_or(true);
        if let Some(metrics) = &metrics {
            metrics.backend_answers(reachable);
        }
        if reachable == serving || *stopping.borrow() {
            continue;
        }
        serving = reachable;
        let status = if serving {
            tracing::info!("the backend answers again; serving");
            tonic_health::ServingStatus::Serving
        } else {
            tracing::error!("the backend does not answer; reporting NOT_SERVING");
            tonic_health::ServingStatus::NotServing
        };
        health
            .set_service_status("gonest.session.v1.SessionStore", status)
            .await;
        health.set_service_status("", status).await;
    }
}

/// Writes a snapshot every interval until the daemon stops. A failed snapshot is logged and
/// tried again at the next interval; the store keeps serving.
async fn snapshot_every_interval(
    persistence: Persistence,
    store: MemorySessionStore,
    log: Option<Arc<crate::aof::AppendLog>>,
    metrics: Option<Arc<Metrics>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + persistence.interval,
        persistence.interval,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The log's size is looked at every second: past its bound, a snapshot is taken early
    // (which starts a new log file and removes the old ones).
    let mut checks = tokio::time::interval(Duration::from_secs(1));
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut grown = false;
        tokio::select! {
            _ = ticks.tick() => {}
            _ = checks.tick(), if log.is_some() => {
                grown = log.as_ref().is_some_and(|log| log.wants_rewrite());
                if !grown {
                    continue;
                }
                if let Some(log) = &log {
                    tracing::info!(log_bytes = log.size(), "the log passed its bound; taking a snapshot early");
                }
            }
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        match persistence.write(&store, log.as_ref()).await {
            Ok(took) => {
                if grown && let Some(log) = &log {
                    log.rewritten();
                }
                ticks.reset();
                if let Some(metrics) = &metrics {
                    metrics.snapshot_written(took);
                }
            }
            Err(err) => tracing::error!(err = format!("{err:#}"), "snapshot failed; will retry"),
        }
    }
}

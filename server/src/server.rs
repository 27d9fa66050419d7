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

use crate::metrics::Metrics;
use crate::{Persistence, SessionService, Tokens};

/// What the daemon runs with; [`Cli::config`](crate::Cli::config) builds it from flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lifetime of a session saved with neither a ttl nor an expires_at.
    pub default_ttl: Duration,
    /// Longest lifetime a save or touch may ask for.
    pub max_ttl: Duration,
    /// How often expired sessions are swept.
    pub sweep_interval: Duration,
    /// Largest session, keys plus values, in bytes.
    pub max_session_bytes: usize,
    /// Most sessions held at once; 0 for no limit.
    pub max_sessions: u64,
    /// How long in-flight calls may run on once shutdown starts.
    pub shutdown_timeout: Duration,
    /// The tokens `SessionStore` calls must carry; none means no authentication.
    pub tokens: Tokens,
    /// Serve TLS with this certificate chain and key (PEM) instead of plaintext.
    pub tls: Option<TlsFiles>,
    /// Keep snapshots on disk; `None` keeps sessions in memory only.
    pub persistence: Option<Persistence>,
    /// Serve Prometheus metrics on `/metrics` at this address.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A PEM certificate chain and its private key. `Debug` leaves the key out.
#[derive(Clone)]
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

/// How long one unary call may take on the server.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of the HTTP/2 pings that find dead peers, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

impl Default for Config {
    fn default() -> Self {
        Self {
            default_ttl: MemorySessionStore::DEFAULT_TTL,
            max_ttl: MemorySessionStore::DEFAULT_MAX_TTL,
            sweep_interval: MemorySessionStore::DEFAULT_SWEEP_INTERVAL,
            max_session_bytes: MemorySessionStore::DEFAULT_MAX_SESSION_BYTES,
            max_sessions: 0,
            shutdown_timeout: Duration::from_secs(10),
            tokens: Tokens::default(),
            tls: None,
            persistence: None,
            metrics_listen: None,
        }
    }
}

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
    let store = MemorySessionStore::builder()
        .default_ttl(config.default_ttl)
        .max_ttl(config.max_ttl)
        .max_session_bytes(config.max_session_bytes)
        .max_sessions(config.max_sessions)
        .sweep_interval(Some(config.sweep_interval))
        .build()
        .context("invalid store settings")?;
    if let Some(persistence) = &config.persistence {
        persistence.load(&store).await?;
    }

    let (stopping_tx, stopping) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SessionStoreServer<SessionService>>()
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
    let mut service = SessionService::new(store.clone(), stopping.clone());
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let metrics = Arc::new(Metrics::new(store.clone()));
            crate::metrics::serve(addr, metrics.clone(), stopping.clone()).await?;
            service = service.with_metrics(metrics.clone());
            Some(metrics)
        }
        None => None,
    };
    let mut stop_rx = stopping.clone();
    let mut builder = tonic::transport::Server::builder()
        // Bounds a unary call; Pipeline streams live on, their operations answered one by one.
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(TLS_HANDSHAKE_TIMEOUT),
            )
            .context("invalid TLS certificate or key")?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            // Requests may carry a session of up to --max-session-bytes and its framing; answers
            // are not limited, so whatever was stored (even under an earlier, larger limit) can
            // be read back.
            SessionStoreServer::new(service)
                .max_decoding_message_size(message_limit(config.max_session_bytes))
                .max_encoding_message_size(usize::MAX),
            config.tokens.clone(),
        ))
        .serve_with_incoming_shutdown(
            crate::incoming::accept(listener, crate::incoming::FIRST_BYTES_TIMEOUT),
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        );
    let mut server = tokio::spawn(server);
    let snapshots = config.persistence.clone().map(|persistence| {
        tokio::spawn(snapshot_every_interval(
            persistence,
            store.clone(),
            metrics.clone(),
            stopping.clone(),
        ))
    });
    tracing::info!(%addr, tls = config.tls.is_some(), auth = config.tokens.required(), "gonest-sessiond listening");

    tokio::select! {
        served = &mut server => {
            return served.context("server task failed")?.context("server failed");
        }
        () = shutdown => {}
    }

    health
        .set_not_serving::<SessionStoreServer<SessionService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = stopping_tx.send(true);
    match tokio::time::timeout(config.shutdown_timeout, &mut server).await {
        Ok(served) => served
            .context("server task failed")?
            .context("server failed")?,
        Err(_) => {
            server.abort();
            tracing::warn!(
                timeout = %humantime::format_duration(config.shutdown_timeout),
                "in-flight calls did not finish in time; stopping anyway"
            );
        }
    }
    if let (Some(task), Some(persistence)) = (snapshots, &config.persistence) {
        // The periodic task has seen `stopping` and ends after any snapshot in progress; then
        // the last one, with every write that made it in.
        let _ = task.await;
        let took = persistence
            .write(&store)
            .await
            .context("final snapshot failed")?;
        if let Some(metrics) = &metrics {
            metrics.snapshot_written(took);
        }
    }
    tracing::info!("gonest-sessiond stopped");
    Ok(())
}

/// Writes a snapshot every interval until the daemon stops. A failed snapshot is logged and
/// tried again at the next interval; the store keeps serving.
async fn snapshot_every_interval(
    persistence: Persistence,
    store: MemorySessionStore,
    metrics: Option<Arc<Metrics>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + persistence.interval,
        persistence.interval,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        match persistence.write(&store).await {
            Ok(took) => {
                if let Some(metrics) = &metrics {
                    metrics.snapshot_written(took);
                }
            }
            Err(err) => tracing::error!(err = format!("{err:#}"), "snapshot failed; will retry"),
        }
    }
}

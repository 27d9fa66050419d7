//! Running the daemon: the gRPC server with health and reflection, and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use gonest_session_core::MemorySessionStore;
use gonest_session_proto::{FILE_DESCRIPTOR_SET, pb::session_store_server::SessionStoreServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::SessionService;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_ttl: MemorySessionStore::DEFAULT_TTL,
            max_ttl: MemorySessionStore::DEFAULT_MAX_TTL,
            sweep_interval: MemorySessionStore::DEFAULT_SWEEP_INTERVAL,
            max_session_bytes: MemorySessionStore::DEFAULT_MAX_SESSION_BYTES,
            max_sessions: 0,
            shutdown_timeout: Duration::from_secs(10),
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
    let mut stop_rx = stopping.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(SessionStoreServer::new(SessionService::new(
            store, stopping,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    let mut server = tokio::spawn(server);
    tracing::info!(%addr, "gonest-sessiond listening");

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
    tracing::info!("gonest-sessiond stopped");
    Ok(())
}

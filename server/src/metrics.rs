//! Prometheus metrics on `--metrics-listen`: operations, latency, the store's counters and
//! snapshots.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use gonest_session_core::MemorySessionStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::memory_usage;
use crate::tracking::Feed;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

fn latency_histogram() -> Histogram {
    // 10 µs to about 2.6 s.
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// The daemon's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    live_sessions: Gauge,
    resident_memory: Gauge,
    sweeps: Counter,
    expired_removed: Counter,
    snapshot_duration: Gauge<f64, AtomicU64>,
    snapshot_age: Gauge<f64, AtomicU64>,
    /// When the last snapshot was written.
    last_snapshot: Mutex<Option<Instant>>,
    /// The memory backend's store, whose counters are mirrored; none on Redis.
    store: Option<MemorySessionStore>,
    trackers: Gauge,
    invalidations: Counter,
    tracking_live: Gauge,
    log_bytes: Gauge,
    log_rewrites: Counter,
    log_failing: Gauge,
    /// The append-only log, whose size, rewrites and state are mirrored.
    log: Option<Arc<crate::aof::AppendLog>>,
    /// The `Track` feed, whose trackers and invalidations are mirrored; none where the daemon
    /// cannot track (Redis Cluster).
    feed: Option<Arc<Feed>>,
    connections: Gauge,
    /// The connection slots, whose taken ones are the open connections.
    slots: (Arc<tokio::sync::Semaphore>, usize),
    backend_up: Gauge,
}

/// What the daemon was started with, shown as gauges for alert rules to compare against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// `--max-sessions` (0: no limit).
    pub(crate) max_sessions: u64,
    /// `--max-connections`.
    pub(crate) max_connections: usize,
    /// `--snapshot-interval`, with `--data-dir`.
    pub(crate) snapshot_interval: Option<Duration>,
    /// Whether the sessions live in Redis (whose reachability is then shown).
    pub(crate) on_redis: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    pub(crate) fn new(
        store: Option<MemorySessionStore>,
        feed: Option<Arc<Feed>>,
        log: Option<Arc<crate::aof::AppendLog>>,
        settings: Settings,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("gonest_sessiond"),
            operations: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            live_sessions: Gauge::default(),
            resident_memory: Gauge::default(),
            sweeps: Counter::default(),
            expired_removed: Counter::default(),
            snapshot_duration: Gauge::default(),
            snapshot_age: Gauge::default(),
            last_snapshot: Mutex::new(None),
            store,
            trackers: Gauge::default(),
            invalidations: Counter::default(),
            tracking_live: Gauge::default(),
            log_bytes: Gauge::default(),
            log_rewrites: Counter::default(),
            log_failing: Gauge::default(),
            log,
            feed,
            connections: Gauge::default(),
            slots: (slots, settings.max_connections),
            backend_up: Gauge::default(),
        };
        let r = &mut metrics.registry;
        let fixed = |value: u64| {
            let gauge: Gauge = Gauge::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            gauge
        };
        r.register(
            "connections",
            "Client connections open",
            metrics.connections.clone(),
        );
        r.register(
            "max_connections",
            "Connections the daemon holds open at once (--max-connections)",
            fixed(settings.max_connections as u64),
        );
        r.register(
            "max_sessions",
            "Sessions the daemon holds at once (--max-sessions; 0: no limit)",
            fixed(settings.max_sessions),
        );
        r.register(
            "memory_limit_bytes",
            "Memory the daemon may use: its cgroup's limit, else the machine's memory",
            fixed(memory_usage::limit_bytes()),
        );
        if let Some(interval) = settings.snapshot_interval {
            r.register(
                "snapshot_interval_seconds",
                "Time between two snapshots (--snapshot-interval)",
                fixed(interval.as_secs()),
            );
        }
        if settings.on_redis {
            metrics.backend_up.set(1);
            r.register(
                "backend_up",
                "1 while the Redis backend answers its health check (every second), 0 while not",
                metrics.backend_up.clone(),
            );
        }
        r.register(
            "operations",
            "Session operations by method and gRPC status code",
            metrics.operations.clone(),
        );
        r.register(
            "operation_duration_seconds",
            "Time to apply a session operation",
            metrics.latency.clone(),
        );
        r.register(
            "live_sessions",
            "Sessions held in memory, including expired ones not swept yet",
            metrics.live_sessions.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "The process's resident memory",
            metrics.resident_memory.clone(),
        );
        r.register(
            "sweeps",
            "Sweeps of expired sessions run",
            metrics.sweeps.clone(),
        );
        r.register(
            "expired_removed",
            "Sessions removed because they expired",
            metrics.expired_removed.clone(),
        );
        r.register(
            "snapshot_duration_seconds",
            "Time the last snapshot took to write",
            metrics.snapshot_duration.clone(),
        );
        r.register(
            "trackers",
            "Track streams open: near caches kept true by this daemon",
            metrics.trackers.clone(),
        );
        r.register(
            "invalidations_sent",
            "Invalidations sent on Track streams, one per stream per changed session",
            metrics.invalidations.clone(),
        );
        r.register(
            "tracking_live",
            "1 while this daemon hears every change to its sessions and accepts Track streams \
             (on Redis: while its relay of every daemon's changes is proven current)",
            metrics.tracking_live.clone(),
        );
        if metrics.log.is_some() {
            r.register(
                "log_bytes",
                "Bytes in the append-only log files since the last snapshot",
                metrics.log_bytes.clone(),
            );
            r.register(
                "log_rewrites",
                "Snapshots taken early because the append-only log had grown past its bound",
                metrics.log_rewrites.clone(),
            );
            r.register(
                "log_failing",
                "1 while the append-only log cannot be written (writes are refused)",
                metrics.log_failing.clone(),
            );
        }
        r.register(
            "snapshot_age_seconds",
            "Time since the last snapshot was written (-1: none yet)",
            metrics.snapshot_age.clone(),
        );
        metrics
    }

    /// Counts one operation.
    pub(crate) fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.operations
            .get_or_create(&OperationLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a written snapshot.
    pub(crate) fn snapshot_written(&self, took: Duration) {
        self.snapshot_duration.set(took.as_secs_f64());
        *self
            .last_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    /// Records whether the Redis backend answered its last health check.
    pub(crate) fn backend_answers(&self, up: bool) {
        self.backend_up.set(i64::from(up));
    }

    /// The text exposition, with the store's counters read now.
    fn render(&self) -> String {
        let (slots, max) = &self.slots;
        let open = max.saturating_sub(slots.available_permits());
        self.connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        if let Some(store) = &self.store {
            let stats = store.stats();
            self.live_sessions
                .set(i64::try_from(stats.live_sessions).unwrap_or(i64::MAX));
            catch_up(&self.sweeps, stats.sweeps_total);
            catch_up(&self.expired_removed, stats.expired_removed_total);
        }
        if let Some(feed) = &self.feed {
            self.trackers
                .set(i64::try_from(feed.trackers()).unwrap_or(i64::MAX));
            catch_up(&self.invalidations, feed.sent());
            self.tracking_live.set(i64::from(feed.live()));
        }
        if let Some(log) = &self.log {
            self.log_bytes
                .set(i64::try_from(log.size()).unwrap_or(i64::MAX));
            catch_up(&self.log_rewrites, log.rewrites());
            self.log_failing.set(i64::from(log.failing()));
        }
        self.resident_memory
            .set(i64::try_from(memory_usage::resident_bytes()).unwrap_or(i64::MAX));
        let age = self
            .last_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map_or(-1.0, |at| at.elapsed().as_secs_f64());
        self.snapshot_age.set(age);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Raises a counter mirrored from the store to the store's value.
fn catch_up(counter: &Counter, total: u64) {
    let behind = total.saturating_sub(counter.get());
    if behind > 0 {
        counter.inc_by(behind);
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics` on `addr` until `stopping` turns true.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen for metrics on {addr}: {err}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
                    .into_response()
            }
        }),
    );
    tracing::info!(addr = %bound, "metrics listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "metrics server failed");
        }
    });
    Ok(())
}

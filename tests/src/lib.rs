//! Harness for the end-to-end tests: a daemon and app instances on `127.0.0.1:0`.

use std::time::Duration;

use axum::Router;
use gonest_session::{SessionLayer, SessionOptions};
use gonest_session_client::RemoteSessionStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use gonest_session_test_support::Daemon;

/// An app instance served in this process.
pub struct AppInstance {
    /// Its base URL.
    pub url: String,
    /// Its store (for the near cache's counters).
    pub store: RemoteSessionStore,
    task: JoinHandle<()>,
}

/// The store timeout app instances use in these tests.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(1500);

impl AppInstance {
    /// Serves the example app's routes plus `extra`, with sessions in the daemon at `daemon_url`.
    pub async fn start(daemon_url: &str, extra: Router) -> Self {
        Self::start_with_near_cache(daemon_url, extra, 0).await
    }

    /// As [`start`](Self::start), with a near cache of `entries` sessions (0: none).
    pub async fn start_with_near_cache(daemon_url: &str, extra: Router, entries: usize) -> Self {
        let store = RemoteSessionStore::builder(daemon_url)
            .timeout(STORE_TIMEOUT)
            .near_cache(entries)
            .connect_lazy()
            .unwrap();
        let app = example_app::routes()
            .merge(extra)
            .layer(SessionLayer::new(store.clone(), SessionOptions::default()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, store, task }
    }

    /// Waits (5 s at most) until its near cache serves: its `Track` stream is open.
    pub async fn near_cache_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self
            .store
            .near_cache_stats()
            .is_some_and(|stats| stats.serving)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the near cache did not start serving"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for AppInstance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

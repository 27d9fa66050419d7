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
    task: JoinHandle<()>,
}

/// The store timeout app instances use in these tests.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(1500);

impl AppInstance {
    /// Serves the example app's routes plus `extra`, with sessions in the daemon at `daemon_url`.
    pub async fn start(daemon_url: &str, extra: Router) -> Self {
        let store = RemoteSessionStore::builder(daemon_url)
            .timeout(STORE_TIMEOUT)
            .connect_lazy()
            .unwrap();
        let app = example_app::routes()
            .merge(extra)
            .layer(SessionLayer::new(store, SessionOptions::default()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, task }
    }
}

impl Drop for AppInstance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Harness for the end-to-end tests: a daemon and app instances on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use gonest_session::{SessionLayer, SessionOptions};
use gonest_session_client::RemoteSessionStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A `gonest-sessiond` served in this process.
pub struct Daemon {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Starts a daemon on a free port.
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// Starts a daemon on `listener` (to come back on a port used before).
    pub async fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let config = gonest_sessiond::Config::default();
        let task = tokio::spawn(gonest_sessiond::run(listener, config, async {
            stopped.await.ok();
        }));
        Self { addr, stop, task }
    }

    /// Its URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.stop.send(()).ok();
        self.task.await.unwrap().unwrap();
    }
}

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
            .layer(SessionLayer::new(store, SessionOptions::default()));
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

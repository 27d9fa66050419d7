//! The one test harness every crate's tests share: a `gonest-sessiond` served in the test's own
//! process on a port the OS picks, ready when [`Daemon::start`] returns, stopped by
//! [`Daemon::stop`].
//!
//! ```no_run
//! use gonest_session_testing::Daemon;
//!
//! # async fn demo() {
//! let daemon = Daemon::start(gonest_sessiond::Config::default()).await;
//! // ... connect to daemon.url() ...
//! daemon.stop().await.unwrap();
//! # }
//! ```

use std::net::SocketAddr;

use gonest_session_proto::pb::session_store_client::SessionStoreClient;
use gonest_sessiond::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A daemon served in this process. Dropping it without [`stop`](Self::stop) aborts it.
#[derive(Debug)]
pub struct Daemon {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A channel to it (connected on first use; tonic reconnects it as needed).
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    /// Starts a daemon with `config` on a free port of 127.0.0.1.
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0");
        Self::start_on(listener, config).await
    }

    /// Starts a daemon with `config` on `listener` (to come back on a port used before).
    /// Connections made from now on are served: the listener is bound already, so nothing
    /// races the daemon's start.
    pub async fn start_on(listener: TcpListener, config: Config) -> Self {
        let addr = listener.local_addr().expect("listener has an address");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gonest_sessiond::run(listener, config, async {
            stopped.await.ok();
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a valid url")
            .connect_lazy();
        Self {
            addr,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Its URL for clients, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC client of its session store, on [`channel`](Self::channel).
    pub fn client(&self) -> SessionStoreClient<Channel> {
        SessionStoreClient::new(self.channel.clone())
    }

    /// Signals shutdown, waits for it, and returns what the daemon's `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A `redis-server` of its own for a test: on a Unix socket in a fresh directory (no port to
/// race for), without persistence, killed when dropped. Needs `redis-server` on the `PATH`
/// (Debian: `apt-get install redis-server`).
#[derive(Debug)]
pub struct RedisServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub async fn start() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gonest-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        let socket = dir.join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start redis-server: install it (apt-get install redis-server)");
        let server = Self { child, dir, socket };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = tokio::net::UnixStream::connect(&server.socket).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut answer = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut answer).await.is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return server;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Its URL for clients, `unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

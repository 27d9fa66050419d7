//! A daemon on `127.0.0.1:0` for tests, and a client connected to it.

#![allow(dead_code)]

use std::net::SocketAddr;

use gonest_session_proto::pb::session_store_client::SessionStoreClient;
use gonest_sessiond::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct Daemon {
    pub addr: SocketAddr,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gonest_sessiond::run(listener, config, async {
            stopped.await.ok();
        }));
        // The listener is bound already, so connecting cannot race the server's start.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            addr,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client(&self) -> SessionStoreClient<Channel> {
        SessionStoreClient::new(self.channel.clone())
    }

    /// Signals shutdown and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.take().unwrap().send(()).ok();
        self.task.take().unwrap().await.unwrap()
    }
}

use std::time::Duration;

use gonest_session_core::{Result, StoreError};
use tonic::transport::{Channel, Endpoint};

use crate::RemoteSessionStore;

/// Options of a [`RemoteSessionStore`]; from [`RemoteSessionStore::builder`].
#[derive(Debug, Clone)]
pub struct RemoteSessionStoreBuilder {
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
    streams: usize,
}

impl RemoteSessionStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            streams: 2,
        }
    }

    /// How long one operation may take, retries included, before it fails with
    /// [`StoreError::Timeout`] (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long opening the connection may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many `Pipeline` streams concurrent operations are spread over (default 2, at least 1).
    pub fn streams(mut self, streams: usize) -> Self {
        self.streams = streams.max(1);
        self
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let endpoint = Endpoint::from_shared(self.url.clone()).map_err(|err| {
            StoreError::invalid(format!("invalid daemon url `{}`: {err}", self.url))
        })?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Find a dead connection in seconds instead of waiting on TCP.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true))
    }

    /// Connects now, failing with [`StoreError::Unavailable`] if the daemon cannot be reached.
    pub async fn connect(self) -> Result<RemoteSessionStore> {
        let channel = self.endpoint()?.connect().await.map_err(|err| {
            StoreError::Unavailable(format!("cannot connect to {}: {err}", self.url))
        })?;
        Ok(self.with_channel(channel))
    }

    /// Returns at once and connects on first use, so an app can start before its daemon.
    pub fn connect_lazy(self) -> Result<RemoteSessionStore> {
        let channel = self.endpoint()?.connect_lazy();
        Ok(self.with_channel(channel))
    }

    fn with_channel(self, channel: Channel) -> RemoteSessionStore {
        RemoteSessionStore::from_parts(channel, self.timeout, self.streams)
    }
}

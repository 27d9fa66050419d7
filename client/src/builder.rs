use std::time::Duration;

use gonest_session_core::{Result, StoreError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::RemoteSessionStore;
use crate::auth::ClientAuth;

/// Options of a [`RemoteSessionStore`]; from [`RemoteSessionStore::builder`].
#[derive(Clone)]
pub struct RemoteSessionStoreBuilder {
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
    streams: usize,
    token: Option<String>,
    ca_certificate: Option<Vec<u8>>,
}

impl std::fmt::Debug for RemoteSessionStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSessionStoreBuilder")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("streams", &self.streams)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl RemoteSessionStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            streams: 2,
            token: None,
            ca_certificate: None,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call, for a daemon started with
    /// `--auth-token-file`.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sends the first token of the token file at `path`, read as the daemon reads its
    /// `--auth-token-file` (one token per line, blank lines and `#` comments skipped), so one
    /// file can serve both sides, during a rotation too.
    pub fn auth_token_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| {
            StoreError::invalid(format!("cannot read token file {}: {err}", path.display()))
        })?;
        let tokens = gonest_session_proto::parse_token_file(&text)
            .map_err(|err| StoreError::invalid(format!("token file {}: {err}", path.display())))?;
        Ok(self.auth_token(tokens.into_iter().next().unwrap_or_default()))
    }

    /// Trusts this CA certificate (PEM) for an `https://` daemon URL, such as the daemon's own
    /// self-signed certificate. Without it, `https://` trusts the public web PKI roots.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate = Some(pem.into());
        self
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
        let endpoint = if self.url.starts_with("https://") {
            let tls = match &self.ca_certificate {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint
                .tls_config(tls)
                .map_err(|err| StoreError::invalid(format!("invalid TLS settings: {err}")))?
        } else {
            endpoint
        };
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
        self.auth()?;
        let channel = self.endpoint()?.connect().await.map_err(|err| {
            StoreError::Unavailable(format!("cannot connect to {}: {err}", self.url))
        })?;
        let store = self.with_channel(channel)?;
        // Best effort: a store that could not learn the daemon's limits now asks again before
        // its first save, and the daemon checks sizes itself anyway.
        let _ = store.learn_limits().await;
        Ok(store)
    }

    /// Returns at once and connects on first use, so an app can start before its daemon.
    pub fn connect_lazy(self) -> Result<RemoteSessionStore> {
        let channel = self.endpoint()?.connect_lazy();
        self.with_channel(channel)
    }

    fn auth(&self) -> Result<ClientAuth> {
        let Some(token) = &self.token else {
            return Ok(ClientAuth::default());
        };
        let value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| StoreError::invalid("auth token must be printable ASCII"))?;
        Ok(ClientAuth::new(value))
    }

    fn with_channel(self, channel: Channel) -> Result<RemoteSessionStore> {
        Ok(RemoteSessionStore::from_parts(
            channel,
            self.auth()?,
            self.timeout,
            self.streams,
        ))
    }
}

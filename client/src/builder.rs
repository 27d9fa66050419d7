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
    /// The near cache's bound in sessions; 0: no cache.
    near_cache_entries: usize,
    /// Its bound in bytes.
    near_cache_bytes: u64,
}

impl std::fmt::Debug for RemoteSessionStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSessionStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("streams", &self.streams)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("near_cache_entries", &self.near_cache_entries)
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
            near_cache_entries: 0,
            near_cache_bytes: DEFAULT_NEAR_CACHE_BYTES,
        }
    }

    /// Keeps up to `entries` of the sessions this client reads in its own memory and answers
    /// Gets of them without a call, kept true by the daemon's invalidations (the `Track` call).
    /// Off by default; 0 turns it off. Bounded also in bytes, 64 MiB unless
    /// [`near_cache_bytes`](Self::near_cache_bytes) says otherwise.
    ///
    /// How stale a hit can be: a change made through any client is dropped from this cache
    /// when its invalidation arrives (well under a millisecond on a LAN); if the daemon goes
    /// silent (stopped, or the network cut), nothing is served from the cache once twice its
    /// heartbeat interval (1 s) has passed without a word. A daemon that cannot see every
    /// change (one on a Redis backend shared by several daemons) refuses to track, and the
    /// client then runs uncached, saying so once in its log.
    pub fn near_cache(mut self, entries: usize) -> Self {
        self.near_cache_entries = entries;
        self
    }

    /// The most bytes of session data (keys, values and ids) the near cache holds; see
    /// [`near_cache`](Self::near_cache).
    pub fn near_cache_bytes(mut self, bytes: u64) -> Self {
        self.near_cache_bytes = bytes.max(1);
        self
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

    /// The daemon URLs: `url` split at commas.
    fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// The channel to the daemon, or spread over the daemons when several are given: each new
    /// stream and call goes to a ready one (tower's power-of-two-choices balancer), so when one
    /// daemon goes away its streams reopen on the others.
    /// The channel connects on first use.
    fn channel(&self) -> Result<Channel> {
        let urls = self.urls();
        match urls.as_slice() {
            [] => Err(StoreError::invalid("no daemon url given")),
            [url] => Ok(self.endpoint(url)?.connect_lazy()),
            urls => {
                let endpoints = urls
                    .iter()
                    .map(|url| self.endpoint(url))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Channel::balance_list(endpoints.into_iter()))
            }
        }
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("http" | "https")) {
            return Err(StoreError::invalid(format!(
                "invalid daemon url `{}`: it must begin with http:// or https://",
                redact_url(url)
            )));
        }
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|err| {
            StoreError::invalid(format!("invalid daemon url `{}`: {err}", redact_url(url)))
        })?;
        let endpoint = if url.starts_with("https://") {
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
            .max_frame_size(gonest_session_proto::MAX_FRAME_SIZE)
            // Find a dead connection in seconds instead of waiting on TCP.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true))
    }

    /// Connects now, failing with [`StoreError::Unavailable`] if the daemon cannot be reached.
    ///
    /// Several daemons sharing one Redis backend may be given, comma-separated
    /// (`http://10.0.0.1:7070,http://10.0.0.2:7070`): operations are spread over those that are
    /// up, and go on through the others while one is down. Then `connect` succeeds once any of
    /// them answers.
    pub async fn connect(self) -> Result<RemoteSessionStore> {
        self.auth()?;
        if self.urls().len() > 1 {
            let store = self.clone().with_channel(self.channel()?)?;
            store.learn_limits().await.map_err(|err| {
                StoreError::Unavailable(format!(
                    "no daemon of {} answered: {err}",
                    redact_url(&self.url)
                ))
            })?;
            return Ok(store);
        }
        let url = self.urls().first().copied().unwrap_or_default().to_owned();
        let channel = self.endpoint(&url)?.connect().await.map_err(|err| {
            StoreError::Unavailable(format!("cannot connect to {}: {err}", redact_url(&url)))
        })?;
        let store = self.with_channel(channel)?;
        // Best effort: a store that could not learn the daemon's limits now asks again before
        // its first save, and the daemon checks sizes itself anyway.
        let _ = store.learn_limits().await;
        Ok(store)
    }

    /// Returns at once and connects on first use, so an app can start before its daemon.
    pub fn connect_lazy(self) -> Result<RemoteSessionStore> {
        let channel = self.channel()?;
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
            (self.near_cache_entries > 0)
                .then_some((self.near_cache_entries, self.near_cache_bytes)),
        ))
    }
}

/// The near cache's byte bound unless set.
const DEFAULT_NEAR_CACHE_BYTES: u64 = 64 << 20;

/// `url` (or several, comma-separated) with any credentials in it (`user:pass@`) replaced by
/// `***@`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_owned();
            };
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***{}", &rest[at..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("https://user:pa%40ss@host:7070/x"),
            "https://***@host:7070/x"
        );
        assert_eq!(redact_url("http://host:7070"), "http://host:7070");
        assert_eq!(
            redact_url("http://a@h1:1,http://h2:2"),
            "http://***@h1:1,http://h2:2"
        );
        assert_eq!(redact_url("ftp://u:p@h/a@b"), "ftp://***@h/a@b");
    }

    #[tokio::test]
    async fn only_http_and_https_are_taken() {
        for url in ["ftp://127.0.0.1:7070", "127.0.0.1:7070", "unix:///tmp/s"] {
            let err = RemoteSessionStoreBuilder::new(url)
                .connect_lazy()
                .unwrap_err();
            assert!(
                err.to_string().contains("http:// or https://"),
                "{url}: {err}"
            );
        }
        let err = RemoteSessionStoreBuilder::new("ftp://me:secret@host")
            .connect_lazy()
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(
            RemoteSessionStoreBuilder::new("http://127.0.0.1:7070")
                .connect_lazy()
                .is_ok()
        );
    }
}

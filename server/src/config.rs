//! What the daemon runs with: [`Config`], which [`Cli::config`](crate::Cli::config) builds
//! from flags.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gonest_session_core::MemorySessionStore;

use crate::{Persistence, Tokens};

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
    /// Most live sessions of one owner; 0 for no limit.
    pub max_sessions_per_owner: u64,
    /// With a Redis backend: replicas each write must reach before it is acknowledged (0: none).
    pub redis_wait_replicas: u32,
    /// How long a write waits for them.
    pub redis_wait_timeout: Duration,
    /// How long in-flight calls may run on once shutdown starts.
    pub shutdown_timeout: Duration,
    /// How long health reports `NOT_SERVING` before the listener closes, so load balancers and
    /// clients move away first. Zero by default here; the binary's default is 1 s.
    pub shutdown_drain: Duration,
    /// The tokens `SessionStore` calls must carry; none means no authentication.
    pub tokens: Tokens,
    /// Serve TLS with this certificate chain and key (PEM) instead of plaintext.
    pub tls: Option<TlsFiles>,
    /// Keep snapshots on disk; `None` keeps sessions in memory only.
    pub persistence: Option<Persistence>,
    /// Serve Prometheus metrics on `/metrics` at this address.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where sessions are kept.
    pub backend: StoreBackend,
    /// Time a new connection has to finish its TLS handshake (if any), HTTP/2 preface and
    /// first SETTINGS frame before it is closed.
    pub handshake_timeout: Duration,
    /// Connections open at once; `None` sizes it from the open-file limit.
    pub max_connections: Option<usize>,
    /// Answer bytes one connection may have produced and not yet written, beyond one answer.
    pub max_unsent_answer_bytes: usize,
}

/// Where the daemon keeps sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreBackend {
    /// In its own memory (the default), swept, optionally snapshotted.
    #[default]
    Memory,
    /// In Redis or Valkey at this URL (`redis://`, `rediss://`, `redis+cluster://`).
    Redis(String),
}

/// A PEM certificate chain and its private key. `Debug` leaves the key out.
#[derive(Clone)]
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

impl TlsFiles {
    /// A TLS acceptor serving this certificate, offering HTTP/2.
    pub(crate) fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("invalid TLS certificate")?;
        anyhow::ensure!(
            !chain.is_empty(),
            "the TLS certificate file holds no certificate"
        );
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).context("invalid TLS key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version available")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the TLS key does not fit the certificate")?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
    }
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

/// File descriptors kept back from `--max-connections` when it is sized from the open-file limit:
/// the listener, the snapshot files, the metrics endpoint, the log.
const RESERVED_FDS: u64 = 64;

/// The default `--max-connections`: the open-file soft limit less what the daemon needs besides.
pub fn default_max_connections() -> usize {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_ttl: MemorySessionStore::DEFAULT_TTL,
            max_ttl: MemorySessionStore::DEFAULT_MAX_TTL,
            sweep_interval: MemorySessionStore::DEFAULT_SWEEP_INTERVAL,
            max_session_bytes: MemorySessionStore::DEFAULT_MAX_SESSION_BYTES,
            max_sessions: 0,
            max_sessions_per_owner: MemorySessionStore::DEFAULT_MAX_SESSIONS_PER_OWNER,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_drain: Duration::ZERO,
            tokens: Tokens::default(),
            tls: None,
            persistence: None,
            metrics_listen: None,
            handshake_timeout: Duration::from_secs(5),
            max_connections: None,
            max_unsent_answer_bytes: crate::budget::ANSWER_BYTES_IN_FLIGHT,
            backend: StoreBackend::Memory,
        }
    }
}

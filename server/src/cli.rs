//! The daemon's command line; every flag can also be set through a `GONEST_SESSIOND_*`
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use anyhow::Context;

use crate::{AppendFsync, Config, Persistence, StoreBackend, TlsFiles, Tokens};

/// The GoNest session store daemon: holds web sessions in memory and serves them over gRPC
/// (gonest.session.v1.SessionStore) to any number of app instances.
#[derive(Debug, Clone, Parser)]
#[command(name = "gonest-sessiond", version, about)]
pub struct Cli {
    /// Run a helper instead of the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on for gRPC.
    #[arg(long, env = "GONEST_SESSIOND_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Lifetime of a session saved with neither a ttl nor an expires_at.
    #[arg(long, env = "GONEST_SESSIOND_DEFAULT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub default_ttl: Duration,

    /// Longest lifetime a save or touch may ask for; longer is INVALID_ARGUMENT.
    #[arg(long, env = "GONEST_SESSIOND_MAX_TTL", default_value = "30d", value_parser = parse_duration)]
    pub max_ttl: Duration,

    /// How often expired sessions are swept from memory.
    #[arg(long, env = "GONEST_SESSIOND_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// Largest session, keys plus values, in bytes (suffixes KiB, MiB, GiB allowed);
    /// larger is RESOURCE_EXHAUSTED.
    #[arg(long, env = "GONEST_SESSIOND_MAX_SESSION_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_session_bytes: usize,

    /// Most sessions held at once (0: no limit); a new session beyond it is RESOURCE_EXHAUSTED,
    /// while existing sessions stay writable.
    #[arg(long, env = "GONEST_SESSIOND_MAX_SESSIONS", default_value_t = 0)]
    pub max_sessions: u64,

    /// Most live sessions of one owner (0: no limit); a new session of that owner beyond it is
    /// RESOURCE_EXHAUSTED, while its existing sessions stay writable.
    #[arg(
        long,
        env = "GONEST_SESSIOND_MAX_SESSIONS_PER_OWNER",
        default_value_t = 1000
    )]
    pub max_sessions_per_owner: u64,

    /// With a Redis backend (standalone primary): acknowledge a write only once this many
    /// replicas have it (Redis's WAIT), so a failover loses no acknowledged login; a write fewer
    /// replicas confirm within --redis-wait-timeout is UNAVAILABLE. 0: do not wait.
    #[arg(long, env = "GONEST_SESSIOND_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long a write waits for --redis-wait-replicas.
    #[arg(long, env = "GONEST_SESSIOND_REDIS_WAIT_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub redis_wait_timeout: Duration,

    /// How long in-flight calls may run on after SIGTERM or Ctrl-C before the daemon exits anyway.
    #[arg(long, env = "GONEST_SESSIOND_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long health reports NOT_SERVING after SIGTERM / Ctrl-C before the listener closes,
    /// so load balancers and clients move to another daemon first (0s: none).
    #[arg(long, env = "GONEST_SESSIOND_SHUTDOWN_DRAIN", default_value = "1s", value_parser = parse_drain)]
    pub shutdown_drain: Duration,

    /// File holding the bearer token(s) every SessionStore call must carry, one per line
    /// (health stays open). Without it, calls are not authenticated.
    #[arg(long, env = "GONEST_SESSIOND_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "GONEST_SESSIOND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "GONEST_SESSIOND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Keep sessions across restarts: load a snapshot from this directory at start, write one
    /// every --snapshot-interval and at shutdown. Without it, sessions live in memory only.
    #[arg(long, env = "GONEST_SESSIOND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Time between two snapshots (with --data-dir). Between them, every change goes to the
    /// append-only log (see --appendfsync); with `--appendfsync off`, a crash loses up to this.
    #[arg(long, env = "GONEST_SESSIOND_SNAPSHOT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// With --data-dir, how the append-only log of every change is synced to disk, as Redis's
    /// appendfsync: `always` (a write is answered once synced to disk: no crash loses an
    /// acknowledged write), `everysec` (answered once written to the file, synced every second:
    /// a process crash loses no acknowledged write, a power cut up to about a second), `no`
    /// (answered once written, synced when the OS chooses), `off` (no log: a crash loses the
    /// writes since the last snapshot).
    #[arg(long, env = "GONEST_SESSIOND_APPENDFSYNC", value_enum, default_value_t = AppendFsync::Everysec)]
    pub appendfsync: AppendFsync,

    /// With --data-dir and a log, the size the log may reach (and twice the last snapshot's)
    /// before a snapshot is taken early and a new log started, as Redis's
    /// auto-aof-rewrite-min-size (suffixes KiB, MiB, GiB allowed).
    #[arg(long, env = "GONEST_SESSIOND_LOG_REWRITE_MIN_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub log_rewrite_min_size: usize,

    /// Serve Prometheus metrics on http://ADDR/metrics (operations, latency, sessions, sweeps,
    /// snapshots). Off unless set.
    #[arg(long, env = "GONEST_SESSIOND_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Threads serving requests (default: one per CPU). On a machine shared with other busy
    /// processes, fewer threads switch less.
    #[arg(long, env = "GONEST_SESSIOND_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Connections open at once; more are closed as soon as they are accepted (logged at most
    /// every 10 s). Default: the open-file limit (raised to its maximum at start) less 64.
    #[arg(long, env = "GONEST_SESSIOND_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Answer bytes one connection may have produced and not yet written to its socket, beyond
    /// one answer: what a peer that asks and never reads can make the daemon hold. A call that
    /// finds it spent waits; a smaller value bounds memory tighter and slows a connection with
    /// many large answers in flight.
    #[arg(long, env = "GONEST_SESSIOND_MAX_UNSENT_ANSWER_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub max_unsent_answer_bytes: usize,

    /// Time a new connection has to finish its TLS handshake (with TLS), HTTP/2 preface and
    /// first SETTINGS frame; one that has not is closed.
    #[arg(long, env = "GONEST_SESSIOND_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Where sessions are kept: `memory` (this process, swept, snapshotted with --data-dir), or
    /// Redis / Valkey at `redis://[user:pass@]host:port[/db]`, `rediss://...` (TLS),
    /// `redis+cluster://host:port[,host:port...]` or the master Sentinel names,
    /// `redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]`, which any number of
    /// daemons can share.
    #[arg(long, env = "GONEST_SESSIOND_BACKEND", default_value = "memory", value_parser = parse_backend)]
    pub backend: StoreBackend,

    /// Log format; the filter comes from RUST_LOG (default: info).
    #[arg(long, env = "GONEST_SESSIOND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Helpers run instead of the daemon.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Copy the sessions of a memory daemon's snapshot (`--data-dir`'s `sessions.snapshot`) into
    /// the Redis of `--backend`, keeping each session's version, times and owner, so a move from
    /// the memory backend to Redis logs nobody out. A session Redis already has is kept as it
    /// is; expired ones are skipped. Prints the counts; exit 0 when done.
    Import {
        /// The snapshot file.
        #[arg(long)]
        from_snapshot: std::path::PathBuf,
    },
    /// Ask a running daemon's grpc.health.v1 service whether it is serving: exit 0 when it is,
    /// 1 otherwise (for container health checks; needs no shell tools).
    Health {
        /// The daemon to ask.
        #[arg(
            long,
            env = "GONEST_SESSIOND_HEALTH_ADDR",
            default_value = "http://127.0.0.1:7070"
        )]
        addr: String,
        /// How long to wait for an answer.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The server configuration these flags describe; fails when they contradict each other.
    pub fn config(&self) -> anyhow::Result<Config> {
        let cap = gonest_session_core::MemorySessionStore::MAX_TTL_CAP;
        if self.max_ttl > cap {
            anyhow::bail!(
                "--max-ttl ({}) is over the cap of {} days (the longest lifetime browsers give \
                 a cookie)",
                humantime::format_duration(self.max_ttl),
                cap.as_secs() / 86400
            );
        }
        if self.default_ttl > self.max_ttl {
            anyhow::bail!(
                "--default-ttl ({}) is longer than --max-ttl ({})",
                humantime::format_duration(self.default_ttl),
                humantime::format_duration(self.max_ttl)
            );
        }
        Ok(Config {
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            sweep_interval: self.sweep_interval,
            max_session_bytes: self.max_session_bytes,
            max_sessions: self.max_sessions,
            max_sessions_per_owner: self.max_sessions_per_owner,
            redis_wait_replicas: self.redis_wait_replicas,
            redis_wait_timeout: self.redis_wait_timeout,
            shutdown_timeout: self.shutdown_timeout,
            shutdown_drain: self.shutdown_drain,
            metrics_listen: self.metrics_listen,
            handshake_timeout: self.handshake_timeout,
            max_unsent_answer_bytes: self.max_unsent_answer_bytes,
            backend: self.backend.clone(),
            max_connections: self
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            persistence: self.data_dir.as_ref().map(|dir| Persistence {
                dir: dir.clone(),
                interval: self.snapshot_interval,
                appendfsync: self.appendfsync,
                log_rewrite_min_bytes: self.log_rewrite_min_size as u64,
            }),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert_pem: std::fs::read(cert)
                        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?,
                    key_pem: std::fs::read(key)
                        .with_context(|| format!("cannot read --tls-key {}", key.display()))?,
                }),
                _ => None,
            },
            tokens: match &self.auth_token_file {
                Some(path) => Tokens::from_file(path)?,
                None => Tokens::default(),
            },
        })
    }
}

/// Parses a positive duration such as `30s`, `5m`, `24h` or `1h 30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write durations like 30s, 5m, 24h)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

/// Parses `--backend`: `memory`, or a Redis URL.
fn parse_backend(text: &str) -> Result<StoreBackend, String> {
    let scheme = text.split_once("://").map(|(scheme, _)| scheme);
    match (text, scheme) {
        ("memory", _) => Ok(StoreBackend::Memory),
        (
            _,
            Some(
                "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel" | "unix",
            ),
        ) => Ok(StoreBackend::Redis(text.to_owned())),
        _ => Err(
            "write `memory`, or a Redis URL: redis://host:port, rediss://host:port, \
             redis+cluster://host:port,host:port, redis+sentinel://host:port,host:port/service \
             or unix:///path/to/redis.sock"
                .to_owned(),
        ),
    }
}

/// Parses a duration that may be zero, such as `0s` or `2s`.
fn parse_drain(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write durations like 0s, 500ms, 2s)"))
}

/// Parses a byte count: a number, optionally followed by B, KiB, MiB or GiB.
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (write sizes like 65536, 64KiB, 1MiB)"))?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
            ));
        }
    };
    let size = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if size == 0 {
        return Err("must be larger than zero".to_owned());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["gonest-sessiond"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(cli.default_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(cli.sweep_interval, Duration::from_secs(300));
        assert_eq!(cli.max_session_bytes, 1 << 20);
        assert_eq!(cli.max_sessions, 0);
        assert_eq!(cli.log_format, LogFormat::Text);
        assert_eq!(cli.config().unwrap().max_unsent_answer_bytes, 4 << 20);
        // With no room for answers, none could be sent.
        let err = Cli::try_parse_from(["gonest-sessiond", "--max-unsent-answer-bytes", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--max-unsent-answer-bytes"), "{err}");
    }

    #[test]
    fn durations_and_sizes_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("30s, 5m, 24h"));
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("1MB").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn a_max_ttl_over_the_cap_is_refused() {
        let cli = Cli::try_parse_from(["gonest-sessiond", "--max-ttl", "401days"]).unwrap();
        let err = cli.config().unwrap_err().to_string();
        assert!(err.contains("over the cap of 400 days"), "{err}");
        let cli = Cli::try_parse_from(["gonest-sessiond", "--max-ttl", "400days"]).unwrap();
        assert_eq!(
            cli.config().unwrap().max_ttl,
            Duration::from_secs(400 * 86400)
        );
    }

    #[test]
    fn a_default_ttl_over_the_max_is_refused() {
        let cli =
            Cli::try_parse_from(["gonest-sessiond", "--default-ttl", "2h", "--max-ttl", "1h"])
                .unwrap();
        assert!(cli.config().unwrap_err().to_string().contains("--max-ttl"));
    }
}

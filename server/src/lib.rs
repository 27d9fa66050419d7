//! `gonest-sessiond`, the GoNest session store daemon: a [`MemorySessionStore`] served over gRPC
//! (`gonest.session.v1.SessionStore`), with a sweeper, health and reflection.
//!
//! The binary is a thin wrapper over [`run`], which takes an already bound listener; tests bind
//! `127.0.0.1:0` and pass a shutdown future:
//!
//! ```no_run
//! use gonest_sessiond::{Config, run};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(run(listener, Config::default(), async {
//!     stopped.await.ok();
//! }));
//! // ... talk to it ...
//! stop.send(()).ok();
//! server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! [`MemorySessionStore`]: gonest_session_core::MemorySessionStore

mod aof;
mod auth;
mod budget;
mod cli;
mod config;
mod draining;
mod engine;
mod health;
mod import;
mod incoming;
pub mod logging;
mod memory_usage;
mod metrics;
mod persistence;
mod pipeline;
mod server;
mod service;
pub mod shutdown;
mod tracking;

pub use aof::{AppendFsync, REWRITE_MIN_BYTES};
pub use auth::Tokens;
pub use cli::{Cli, Command, LogFormat};
pub use config::{Config, StoreBackend, TlsFiles, default_max_connections};
pub use health::check as check_health;
pub use import::{ImportCounts, import_snapshot};
pub use persistence::Persistence;
pub use server::{MAX_STREAMS_PER_CONNECTION, run};

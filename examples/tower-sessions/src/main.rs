//! `tower-sessions-example`: the sessions controller on tower-sessions, sessions in `--store`.
//!
//! ```sh
//! tower-sessions-example --listen 127.0.0.1:3001 --store http://127.0.0.1:7070
//! ```

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use gonest_session_client::RemoteSessionStore;

/// The GoNest sessions controller on tower-sessions, its sessions in gonest-sessiond.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Where the app listens.
    #[arg(
        long,
        env = "TOWER_SESSIONS_EXAMPLE_LISTEN",
        default_value = "127.0.0.1:3001"
    )]
    listen: SocketAddr,
    /// The daemon's URL.
    #[arg(
        long,
        env = "TOWER_SESSIONS_EXAMPLE_STORE",
        default_value = "http://127.0.0.1:7070"
    )]
    store: String,
    /// Sessions the near cache keeps in this process, kept true by the daemon (0: none).
    #[arg(
        long,
        env = "TOWER_SESSIONS_EXAMPLE_NEAR_CACHE_ENTRIES",
        default_value_t = 10_000
    )]
    near_cache_entries: usize,
    /// Mark the session cookie Secure (serve over HTTPS when set).
    #[arg(long, env = "TOWER_SESSIONS_EXAMPLE_SECURE")]
    secure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Connected lazily, so that the app can start before the daemon.
    let store = RemoteSessionStore::builder(&cli.store)
        .near_cache(cli.near_cache_entries)
        .connect_lazy()
        .with_context(|| format!("invalid --store `{}`", cli.store))?;
    let app = tower_sessions_example::app(store, cli.secure);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    eprintln!(
        "tower-sessions-example listening on {}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

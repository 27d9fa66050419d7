//! `example-app`: the sessions controller on `--listen`, with sessions in `--store`.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use gonest_session::SessionOptions;

/// The GoNest sessions example: POST /login, GET /profile, POST /logout.
#[derive(Debug, Parser)]
#[command(name = "example-app", version, about)]
struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, env = "EXAMPLE_APP_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Where sessions live: `memory`, or a gonest-sessiond URL such as http://127.0.0.1:7070.
    #[arg(long, env = "EXAMPLE_APP_STORE", default_value = "memory")]
    store: String,
    /// Mark the session cookie Secure (serve over HTTPS when set).
    #[arg(long, env = "EXAMPLE_APP_SECURE")]
    secure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let options = SessionOptions {
        secure: cli.secure,
        ..Default::default()
    };
    let store = example_app::store(&cli.store, options.max_age)
        .with_context(|| format!("invalid --store `{}`", cli.store))?;
    let app = example_app::app(store, options);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, store = %cli.store, "example-app listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(example_app::shutdown_signal())
        .await?;
    Ok(())
}

//! `example-app`: the sessions controller on `--listen`, with sessions in `--store`.

use anyhow::Context;
use clap::Parser;
use example_app::Cli;
use gonest_session::SessionOptions;

/// How often the near cache's counters are logged.
const NEAR_CACHE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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
        secret: cli.cookie_secret.clone(),
        ..Default::default()
    };
    let store = example_app::store(
        &cli.store,
        options.max_age,
        cli.store_token_file.as_deref(),
        cli.near_cache_entries,
    )
    .with_context(|| format!("invalid --store `{}`", cli.store))?;
    tokio::spawn(store.clone().log_near_cache(NEAR_CACHE_LOG_EVERY));
    let app = example_app::app(store.shared(), options).context("invalid session options")?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, store = %cli.store, "example-app listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(example_app::shutdown_signal())
        .await?;
    Ok(())
}

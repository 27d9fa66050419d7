//! `gonest-sessiond`: parses flags, binds the listener and hands both to [`gonest_sessiond::run`].

use anyhow::Context;
use clap::Parser;
use gonest_sessiond::{Cli, logging, shutdown};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config = cli.config()?;
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    gonest_sessiond::run(listener, config, shutdown::signal()).await
}

//! `gonest-sessiond`: parses flags, starts the runtime, binds the listener and hands both to
//! [`gonest_sessiond::run`].

use anyhow::Context;
use clap::Parser;
use gonest_sessiond::{Cli, logging, shutdown};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config = cli.config()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = cli.workers {
        runtime.worker_threads(usize::from(workers));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        gonest_sessiond::run(listener, config, shutdown::signal()).await
    })
}

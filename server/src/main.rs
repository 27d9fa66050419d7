//! `gonest-sessiond`: parses flags, starts the runtime, binds the listener and hands both to
//! [`gonest_sessiond::run`]; or runs the `health` helper.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gonest_sessiond::{Cli, Command, logging, shutdown};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { addr, timeout }) = &cli.command {
        return health(addr, *timeout);
    }
    logging::init(cli.log_format);
    if let Some(Command::Import { from_snapshot }) = &cli.command {
        return match import(&cli, from_snapshot) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config()?;
    // Every connection is a file descriptor: allow as many as the system lets this process have,
    // as Redis does for maxclients.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
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

/// Copies the sessions of the snapshot at `path` into the Redis of `--backend`.
fn import(cli: &Cli, path: &std::path::Path) -> anyhow::Result<()> {
    let config = cli.config()?;
    let gonest_sessiond::StoreBackend::Redis(url) = &config.backend else {
        anyhow::bail!("import needs a Redis --backend to copy the snapshot into");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let counts = runtime.block_on(gonest_sessiond::import_snapshot(path, url, &config))?;
    println!(
        "{{\"imported\":{},\"already_in_redis\":{},\"expired\":{}}}",
        counts.imported, counts.already_there, counts.expired
    );
    Ok(())
}

/// Exit 0 when the daemon at `addr` is serving, 1 otherwise.
fn health(addr: &str, timeout: std::time::Duration) -> ExitCode {
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(gonest_sessiond::check_health(addr, timeout)));
    match checked {
        Ok(()) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("unhealthy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

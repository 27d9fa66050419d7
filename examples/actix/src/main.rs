//! `actix-example`: the sessions controller on actix-session, sessions in `--store`.
//!
//! ```sh
//! ACTIX_EXAMPLE_COOKIE_SECRET=... actix-example --listen 127.0.0.1:3002 --store http://127.0.0.1:7070
//! ```

use std::net::SocketAddr;

use actix_web::cookie::Key;
use actix_web::{App, HttpServer};
use anyhow::Context;
use clap::Parser;
use gonest_session_client::RemoteSessionStore;

/// The GoNest sessions controller on actix-session, its sessions in gonest-sessiond.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Where the app listens.
    #[arg(long, env = "ACTIX_EXAMPLE_LISTEN", default_value = "127.0.0.1:3002")]
    listen: SocketAddr,
    /// The daemon's URL.
    #[arg(
        long,
        env = "ACTIX_EXAMPLE_STORE",
        default_value = "http://127.0.0.1:7070"
    )]
    store: String,
    /// Sessions the near cache keeps in this process, kept true by the daemon (0: none).
    #[arg(
        long,
        env = "ACTIX_EXAMPLE_NEAR_CACHE_ENTRIES",
        default_value_t = 10_000
    )]
    near_cache_entries: usize,
    /// The secret the session cookie is signed and encrypted with, at least 32 bytes; every
    /// instance of the app needs the same one. Without it a random key is made, and sessions
    /// last only as long as this process. Prefer the environment variable: a command line is
    /// visible to other users.
    #[arg(long, env = "ACTIX_EXAMPLE_COOKIE_SECRET", hide_env_values = true)]
    cookie_secret: Option<String>,
    /// Mark the session cookie Secure (serve over HTTPS when set).
    #[arg(long, env = "ACTIX_EXAMPLE_SECURE")]
    secure: bool,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let key = match &cli.cookie_secret {
        Some(secret) if secret.len() >= 32 => Key::derive_from(secret.as_bytes()),
        Some(secret) => anyhow::bail!(
            "--cookie-secret is {} bytes; it needs at least 32",
            secret.len()
        ),
        None => {
            eprintln!(
                "actix-example: no --cookie-secret: sessions last only as long as this process"
            );
            Key::generate()
        }
    };
    // Connected lazily, so that the app can start before the daemon.
    let store = RemoteSessionStore::builder(&cli.store)
        .near_cache(cli.near_cache_entries)
        .connect_lazy()
        .with_context(|| format!("invalid --store `{}`", cli.store))?;
    let secure = cli.secure;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_example::sessions(store.clone(), key.clone(), secure))
            .configure(actix_example::routes)
    })
    .bind(cli.listen)
    .with_context(|| format!("cannot listen on {}", cli.listen))?;
    eprintln!("actix-example listening on {}", cli.listen);
    server.run().await?;
    Ok(())
}

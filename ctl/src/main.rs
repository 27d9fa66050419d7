//! `gonest-sessionctl`: an operator's command line for a `gonest-sessiond` daemon. It prints
//! JSON on standard output and exits 0 when done, 1 when what was asked for is not there, 2 on a
//! usage or connection error (with the reason on standard error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use base64::Engine;
use clap::{Parser, Subcommand};
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{SessionRecord, SessionStore, StoreError};
use serde_json::{Map, Value, json};

/// Inspect and revoke the sessions a gonest-sessiond daemon holds.
#[derive(Debug, Parser)]
#[command(name = "gonest-sessionctl", version, about)]
struct Cli {
    /// The daemon's URL (https:// for TLS).
    #[arg(
        long,
        env = "GONEST_SESSIONCTL_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    addr: String,
    /// A token file in the daemon's own format (one token per line, `#` comments); the first
    /// token is sent. The daemon's --auth-token-file itself will do.
    #[arg(long, env = "GONEST_SESSIONCTL_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for an https:// daemon with a private CA.
    #[arg(long, env = "GONEST_SESSIONCTL_CA", global = true)]
    ca: Option<PathBuf>,
    /// How long to wait for the daemon.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints one session: values as UTF-8 text where they are, else as {"base64": "..."}.
    Get {
        /// The session id.
        id: String,
    },
    /// Lists live sessions without their data: an owner's, oldest first; or, without --owner,
    /// one page of every session, {"sessions": [...], "next_cursor": "..."} (null after the
    /// last page), or all pages with --all.
    List {
        /// The owner, such as a user id.
        #[arg(long)]
        owner: Option<String>,
        /// Without --owner: the page to print, as the page before gave it in next_cursor.
        #[arg(long, conflicts_with = "owner", default_value = "")]
        cursor: String,
        /// Without --owner: about how many sessions a page holds (1 to 1000).
        #[arg(long, conflicts_with = "owner", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Without --owner: every page, one after another, as one array.
        #[arg(long, conflicts_with_all = ["owner", "cursor"])]
        all: bool,
    },
    /// Destroys every session of an owner ("log out everywhere").
    Revoke {
        /// The owner, such as a user id.
        #[arg(long)]
        owner: String,
        /// Session ids to keep.
        #[arg(long = "except")]
        except: Vec<String>,
    },
    /// Destroys one session.
    Destroy {
        /// The session id.
        id: String,
    },
    /// Prints the daemon's counters and limits, live_sessions counted exactly (tens of
    /// milliseconds right after a million sessions expired at once).
    Stats {
        /// Print the counters as they stand, at once: live_sessions may then still count
        /// sessions expired since the last sweep.
        #[arg(long)]
        as_stored: bool,
    },
}

/// What a command ends with.
enum Outcome {
    /// Printed; exit 0.
    Done(Value),
    /// Nothing there; exit 1.
    NotFound(Value),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Outcome::Done(value)) => {
            println!("{value:#}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::NotFound(value)) => {
            println!("{value:#}");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("gonest-sessionctl: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    let mut builder = RemoteSessionStore::builder(cli.addr.clone())
        .timeout(cli.timeout)
        .connect_timeout(cli.timeout);
    if let Some(path) = &cli.token_file {
        builder = builder.auth_token_file(path)?;
    }
    if let Some(path) = &cli.ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
        builder = builder.ca_certificate(pem);
    }
    let store = builder.connect().await.with_context(|| {
        format!(
            "cannot reach the daemon at {}",
            gonest_session_client::redact_url(&cli.addr)
        )
    })?;
    Ok(match cli.command {
        Command::Get { id } => match store.get(&id).await? {
            Some(record) => Outcome::Done(session_json(&record, true)),
            None => Outcome::NotFound(json!({ "error": "no such session" })),
        },
        Command::List {
            owner: Some(owner), ..
        } => {
            let sessions = store.list_by_owner(&owner, false).await?;
            Outcome::Done(Value::Array(
                sessions.iter().map(|s| session_json(s, false)).collect(),
            ))
        }
        Command::List {
            owner: None,
            cursor,
            limit,
            all,
        } => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut page = store.list_sessions(&cursor, limit).await?;
            if !all {
                return Ok(Outcome::Done(json!({
                    "sessions": page.sessions.iter().map(|s| session_json(s, false)).collect::<Vec<_>>(),
                    "next_cursor": page.next,
                })));
            }
            // Page after page: each costs the daemon a bounded amount of work.
            let mut sessions: Vec<Value> = Vec::new();
            loop {
                sessions.extend(page.sessions.iter().map(|s| session_json(s, false)));
                let Some(next) = page.next else { break };
                page = store.list_sessions(&next, limit).await?;
            }
            Outcome::Done(Value::Array(sessions))
        }
        Command::Revoke { owner, except } => {
            let destroyed = store.destroy_by_owner(&owner, &except).await?;
            Outcome::Done(json!({ "destroyed": destroyed }))
        }
        Command::Destroy { id } => match store.destroy(&id).await? {
            true => Outcome::Done(json!({ "destroyed": true })),
            false => Outcome::NotFound(json!({ "destroyed": false })),
        },
        Command::Stats { as_stored } => {
            let stats = match as_stored {
                true => store.stats_as_stored().await?,
                false => store.stats().await.map_err(exact_stats_failed)?,
            };
            Outcome::Done(json!({
                "live_sessions": stats.live_sessions,
                "expired_removed_total": stats.expired_removed_total,
                "sweeps_total": stats.sweeps_total,
                "resident_memory_bytes": stats.resident_memory_bytes,
                "max_session_bytes": stats.max_session_bytes,
                "max_ttl_seconds": stats.max_ttl.map(|ttl| ttl.as_secs()),
            }))
        }
    })
}

/// Why an exact `stats` failed; a timeout says what is likely behind it and what answers at once.
fn exact_stats_failed(err: StoreError) -> anyhow::Error {
    match err {
        StoreError::Timeout => anyhow::anyhow!(
            "{err}: a daemon before v1.6 removes the expired sessions before it counts (seconds \
             after a million expired at once); --as-stored answers at once, or give a longer \
             --timeout"
        ),
        err => err.into(),
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A session as JSON, with its data if `with_data`.
fn session_json(record: &SessionRecord, with_data: bool) -> Value {
    let mut session = json!({
        "id": record.id,
        "owner": record.owner,
        "version": record.version,
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
    });
    if with_data {
        let mut keys: Vec<&String> = record.data.keys().collect();
        keys.sort();
        let data: Map<String, Value> = keys
            .into_iter()
            .map(|key| (key.clone(), value_json(&record.data[key])))
            .collect();
        session["data"] = Value::Object(data);
    }
    session
}

/// A value as UTF-8 text where it is, else as `{"base64": "..."}`.
fn value_json(value: &[u8]) -> Value {
    match std::str::from_utf8(value) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(value) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_stats_that_times_out_points_at_as_stored() {
        let message = format!("{:#}", exact_stats_failed(StoreError::Timeout));
        assert!(message.contains("--as-stored"), "{message}");
        let other = format!(
            "{:#}",
            exact_stats_failed(StoreError::Unavailable("down".into()))
        );
        assert!(!other.contains("--as-stored"), "{other}");
    }
}

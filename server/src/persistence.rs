//! Snapshots of the store on disk: loaded at start (then the append-only log replayed over
//! them, see [`crate::aof`]), written every interval, when the log has grown, and at shutdown.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::Context;
use gonest_session_core::MemorySessionStore;

use crate::aof::{AppendFsync, AppendLog};

/// Where and how often the store is saved to disk.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// The directory holding `sessions.snapshot`.
    pub dir: PathBuf,
    /// Time between two snapshots.
    pub interval: Duration,
    /// How the append-only log of every change is synced (`Off`: no log; a crash then loses
    /// the writes since the last snapshot).
    pub appendfsync: AppendFsync,
    /// The log may grow to this (and to twice the last snapshot) before a snapshot is taken
    /// early and a new log started ([`crate::REWRITE_MIN_BYTES`] by default).
    pub log_rewrite_min_bytes: u64,
}

impl Persistence {
    /// The snapshot file.
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("sessions.snapshot")
    }

    /// Loads the snapshot into `store`, all or nothing, then replays the log files written
    /// after it, and starts a new log file (unless `--appendfsync off`). No snapshot yet is an
    /// empty start; a damaged snapshot or log is an error that names the file and says what to
    /// do.
    pub(crate) async fn load(
        &self,
        store: &MemorySessionStore,
    ) -> anyhow::Result<Option<Arc<AppendLog>>> {
        self.load_snapshot(store).await?;
        let (dir, replaying) = (self.dir.clone(), store.clone());
        let last =
            tokio::task::spawn_blocking(move || crate::aof::replay(&dir, &replaying)).await??;
        if self.appendfsync == AppendFsync::Off {
            return Ok(None);
        }
        AppendLog::start(
            store,
            &self.dir,
            last + 1,
            self.appendfsync,
            self.log_rewrite_min_bytes,
        )
        .map(Some)
    }

    async fn load_snapshot(&self, store: &MemorySessionStore) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create --data-dir {}", self.dir.display()))?;
        probe_writable(&self.dir)?;
        let path = self.snapshot_path();
        let started = Instant::now();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no snapshot yet; starting empty");
                return Ok(());
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot read snapshot {}", path.display()));
            }
        };
        let store = store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load_snapshot(&bytes)).await?;
        let (loaded, expired) = loaded.map_err(|err| {
            anyhow::anyhow!(
                "snapshot {path} cannot be loaded: {err}. The daemon will not start with a partial \
                 or empty store. Move the file aside (mv {path} {path}.damaged) to start empty, \
                 or put a backup in its place",
                path = path.display()
            )
        })?;
        tracing::info!(
            loaded,
            expired,
            elapsed_ms = started.elapsed().as_millis(),
            "snapshot loaded"
        );
        Ok(())
    }

    /// Writes a snapshot atomically: a temporary file, fsync, rename over the old one, fsync of
    /// the directory. A crash at any point leaves the previous snapshot or the new one, whole.
    /// With a log, a new log file is started first, and once the snapshot is in place the
    /// files before it are removed; without one, every log file left is (the snapshot holds
    /// what they did).
    pub(crate) async fn write(
        &self,
        store: &MemorySessionStore,
        log: Option<&Arc<AppendLog>>,
    ) -> anyhow::Result<Duration> {
        let this = self.clone();
        let store = store.clone();
        let log = log.cloned();
        tokio::task::spawn_blocking(move || this.write_blocking(&store, log.as_deref())).await?
    }

    fn write_blocking(
        &self,
        store: &MemorySessionStore,
        log: Option<&AppendLog>,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let generation = log.map(AppendLog::rotate).transpose()?;
        let path = self.snapshot_path();
        let temporary = self.dir.join("sessions.snapshot.tmp");
        let file = File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        let (writer, sessions) = store
            .write_snapshot(BufWriter::with_capacity(1 << 20, file))
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        let file = writer
            .into_inner()
            .map_err(|err| err.into_error())
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", temporary.display()))?;
        drop(file);
        fs::rename(&temporary, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync directory {}", self.dir.display()))?;
        let bytes = fs::metadata(&path).map_or(0, |meta| meta.len());
        match (log, generation) {
            (Some(log), Some(generation)) => log.snapshot_written(generation, bytes),
            _ => {
                for (_, old) in crate::aof::log_files(&self.dir)? {
                    fs::remove_file(&old)
                        .with_context(|| format!("cannot remove {}", old.display()))?;
                }
            }
        }
        let took = started.elapsed();
        tracing::info!(sessions, elapsed_ms = took.as_millis(), "snapshot written");
        Ok(took)
    }
}

/// Fails early, with the directory's name, when snapshots could not be written there.
fn probe_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(".write-probe");
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .with_context(|| format!("--data-dir {} is not writable", dir.display()))
}

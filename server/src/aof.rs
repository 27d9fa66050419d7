//! The append-only file: every change the memory store applies, written beside its snapshot,
//! so that a crash loses at most what `--appendfsync` allows rather than everything since the
//! last snapshot.
//!
//! The store appends each change to a [`Journal`] under its session's lock (the format is
//! `gonest_session_core::journal`'s); one thread here takes what has been appended, writes it
//! to `sessions.aof.N` and syncs it as the policy says:
//! - `always`: synced before the writes in it are answered. One sync covers every write
//!   waiting for it (group commit), so writers that come together pay for one.
//! - `everysec`: written before the writes in it are answered (one write covers every write
//!   waiting), synced once a second: a process crash loses no answered write, a power cut up
//!   to about a second of them.
//! - `no`: written before the writes are answered, synced when the OS chooses.
//!
//! Each snapshot starts a new file first (`N + 1`), then writes the snapshot, then removes the
//! older files: at any moment the files on disk, replayed in order over the snapshot on disk,
//! give every change written. A snapshot is also taken early when the files since the last one
//! pass `--log-rewrite-min-size` (64 MiB by default) and twice that snapshot's size, so the log never grows without
//! bound (the snapshot is taken shard by shard, and blocks no request).
//!
//! A write or sync that fails (disk full, read-only, I/O error) turns the log to failing: the
//! daemon refuses writes (`UNAVAILABLE`, reason `LOG_FAILING`) and serves reads, and the
//! thread tries again every second, writing what it holds once the disk takes it; then writes
//! resume.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use gonest_session_core::MemorySessionStore;
use gonest_session_core::journal::{Journal, LOG_MAGIC};
use tokio::sync::watch;

/// How an append-only file is synced (`--appendfsync`); what each loses on a crash is in
/// docs/operating.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AppendFsync {
    /// Sync before answering a write.
    Always,
    /// Write at once, sync once a second.
    #[default]
    Everysec,
    /// Write at once, never sync (the OS does, within about 30 s on Linux).
    No,
    /// No log: snapshots only.
    Off,
}

/// The log files since the last snapshot may grow to this before one is taken early (and to
/// twice the last snapshot's size), unless `--log-rewrite-min-size` says otherwise.
pub const REWRITE_MIN_BYTES: u64 = 64 << 20;

/// How long the writer sleeps when there is nothing to write.
const IDLE: Duration = Duration::from_millis(100);

/// How often a failing log is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How far the log has got, for writes waiting on it (`always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Progress {
    /// Everything the journal held up to here is written (and, with `always`, synced).
    done: u64,
    /// Counts failures: a waiter that sees it move gives up.
    failures: u64,
}

/// The append-only file of a memory daemon's `--data-dir`.
#[derive(Debug)]
pub(crate) struct AppendLog {
    journal: Arc<Journal>,
    dir: PathBuf,
    policy: AppendFsync,
    progress: watch::Sender<Progress>,
    failing: AtomicBool,
    /// Bytes in the log files since the last snapshot.
    size: AtomicU64,
    /// Snapshots taken because the log had grown.
    rewrites: AtomicU64,
    /// The size of the last snapshot written.
    snapshot_size: AtomicU64,
    /// The size past which (and past twice the snapshot) a snapshot is taken early.
    rewrite_min_bytes: u64,
    rotate: Mutex<mpsc::Sender<mpsc::Sender<anyhow::Result<u64>>>>,
}

/// The path of log file number `generation` in `dir`.
fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("sessions.aof.{generation}"))
}

/// The log files in `dir`, by number.
pub(crate) fn log_files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|name| name.strip_prefix("sessions.aof."))
            .and_then(|number| number.parse::<u64>().ok())
        else {
            continue;
        };
        // Only files: what else bears the name (a device put there by hand) holds no log.
        if fs::metadata(entry.path()).is_ok_and(|meta| meta.is_file()) {
            files.push((generation, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Replays every log file in `dir` over `store`, in order (after the snapshot is loaded). A
/// last file whose last record was cut short is cut there, with a warning naming the file and
/// the offset; damage anywhere else is an error naming them. Returns the highest file number
/// found (0: none).
pub(crate) fn replay(dir: &Path, store: &MemorySessionStore) -> anyhow::Result<u64> {
    let files = log_files(dir)?;
    let last = files.last().map_or(0, |(generation, _)| *generation);
    for (generation, path) in &files {
        let started = Instant::now();
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let replayed = store.replay_log(&bytes).map_err(|err| {
            anyhow::anyhow!(
                "log {path} is {err}. The daemon will not start with a partial store. Keep a \
                 copy, then cut the file at that offset (truncate -s {offset} {path}) to load \
                 everything before the damage, or move it aside to start from the snapshot and \
                 the files before it",
                path = path.display(),
                offset = err.offset
            )
        })?;
        if let Some(offset) = replayed.torn_at {
            anyhow::ensure!(
                *generation == last,
                "log {} ends in a record cut short at byte {offset}, and newer logs follow it: \
                 it was damaged after it was written. Keep a copy, then cut it there (truncate \
                 -s {offset} {}) to load it and the rest",
                path.display(),
                path.display()
            );
            tracing::warn!(
                path = %path.display(),
                offset,
                "the log's last record was cut short (a crash while writing it); cut off there"
            );
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(offset))
                .with_context(|| format!("cannot cut {} at {offset}", path.display()))?;
        }
        tracing::info!(
            path = %path.display(),
            changes = replayed.applied,
            bytes = bytes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log replayed"
        );
    }
    Ok(last)
}

impl AppendLog {
    /// Starts logging `store`'s changes to file `generation` in `dir` (a new file), with
    /// `policy`; the writer thread runs until the log is dropped.
    pub(crate) fn start(
        store: &MemorySessionStore,
        dir: &Path,
        generation: u64,
        policy: AppendFsync,
        rewrite_min_bytes: u64,
    ) -> anyhow::Result<Arc<Self>> {
        let file = open_new(dir, generation)?;
        let journal = Arc::new(Journal::new());
        store
            .attach_journal(journal.clone())
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        let (rotate, rotations) = mpsc::channel();
        let log = Arc::new(Self {
            journal,
            dir: dir.to_owned(),
            policy,
            progress: watch::Sender::new(Progress::default()),
            failing: AtomicBool::new(false),
            size: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
            snapshot_size: AtomicU64::new(0),
            rewrite_min_bytes,
            rotate: Mutex::new(rotate),
        });
        let writer = Writer {
            log: Arc::downgrade(&log),
            journal: log.journal.clone(),
            file,
            generation,
            held: Vec::new(),
            held_until: 0,
            synced: Instant::now(),
            dirty: false,
            needs_magic: true,
            rotations,
        };
        std::thread::Builder::new()
            .name("gonest-aof".into())
            .spawn(move || writer.run())
            .context("cannot start the log writer")?;
        Ok(log)
    }

    /// Whether writes must be refused: the log cannot be written now.
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// The position just past every change applied so far.
    pub(crate) fn position(&self) -> u64 {
        self.journal.appended()
    }

    /// Waits until everything up to `position` is written (and with `always`, synced); an
    /// error if the log fails first. Every write waits for this before it is answered, so a
    /// process that crashes has answered no write its log does not hold.
    pub(crate) async fn synced(
        &self,
        position: u64,
    ) -> Result<(), gonest_session_core::StoreError> {
        let mut progress = self.progress.subscribe();
        let start = *progress.borrow();
        let reached = progress
            .wait_for(|now| now.done >= position || now.failures != start.failures)
            .await
            .map(|now| now.done >= position);
        match reached {
            Ok(true) => Ok(()),
            _ => Err(log_failing()),
        }
    }

    /// Bytes in the log files since the last snapshot.
    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Snapshots taken because the log had grown.
    pub(crate) fn rewrites(&self) -> u64 {
        self.rewrites.load(Ordering::Relaxed)
    }

    /// Whether the log has grown enough since the last snapshot that one should be taken now.
    pub(crate) fn wants_rewrite(&self) -> bool {
        let size = self.size();
        size > self.rewrite_min_bytes && size > 2 * self.snapshot_size.load(Ordering::Relaxed)
    }

    /// Counts a snapshot taken because the log had grown.
    pub(crate) fn rewritten(&self) {
        self.rewrites.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a new log file, after everything before is written and synced to the old one;
    /// returns its number. Blocks: call it from a blocking task.
    pub(crate) fn rotate(&self) -> anyhow::Result<u64> {
        let (answer, answered) = mpsc::channel();
        self.rotate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(answer)
            .map_err(|_| anyhow::anyhow!("the log writer has stopped"))?;
        answered
            .recv()
            .map_err(|_| anyhow::anyhow!("the log writer has stopped"))?
    }

    /// After a snapshot written once file `generation` had started (and `snapshot_bytes`
    /// long): removes the files before it, which the snapshot covers.
    pub(crate) fn snapshot_written(&self, generation: u64, snapshot_bytes: u64) {
        self.snapshot_size.store(snapshot_bytes, Ordering::Relaxed);
        let Ok(files) = log_files(&self.dir) else {
            return;
        };
        for (older, path) in files.into_iter().filter(|(n, _)| *n < generation) {
            if let Err(err) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %err, "cannot remove an old log file");
            } else {
                tracing::debug!(generation = older, "old log file removed");
            }
        }
        // What is left is the current file: its size is the log's.
        let current = fs::metadata(log_path(&self.dir, generation)).map_or(0, |m| m.len());
        self.size.store(current, Ordering::Relaxed);
    }
}

/// The error a write gets while the log cannot be written.
pub(crate) fn log_failing() -> gonest_session_core::StoreError {
    gonest_session_core::StoreError::LogFailing(
        "the daemon's append-only log cannot be written (see its log): writes are refused until \
         it can, reads go on"
            .into(),
    )
}

/// A new, empty log file (its magic goes with its first write), the directory synced.
fn open_new(dir: &Path, generation: u64) -> anyhow::Result<File> {
    let path = log_path(dir, generation);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    Ok(file)
}

/// The thread that writes the journal to the current file.
struct Writer {
    log: std::sync::Weak<AppendLog>,
    journal: Arc<Journal>,
    file: File,
    generation: u64,
    /// Taken from the journal and not written yet (the disk refused it).
    held: Vec<u8>,
    /// The journal position just past `held`.
    held_until: u64,
    synced: Instant,
    /// Written since the last sync.
    dirty: bool,
    /// The file is empty: its magic goes first.
    needs_magic: bool,
    rotations: mpsc::Receiver<mpsc::Sender<anyhow::Result<u64>>>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let Some(log) = self.log.upgrade() else {
                // The daemon is done: what is left is written and synced on the way out.
                self.take(Duration::ZERO);
                let _ = self.flush(true);
                return;
            };
            while let Ok(answer) = self.rotations.try_recv() {
                let _ = answer.send(self.next_file(&log));
            }
            drop(log);
            let wait = if self.held.is_empty() { IDLE } else { RETRY };
            self.take(wait);
            let Some(log) = self.log.upgrade() else {
                continue;
            };
            let sync = match log.policy {
                AppendFsync::Always => true,
                AppendFsync::Everysec => self.synced.elapsed() >= Duration::from_secs(1),
                AppendFsync::No | AppendFsync::Off => false,
            };
            match self.flush(sync) {
                Ok(written) => {
                    log.size.fetch_add(written, Ordering::Relaxed);
                    if log.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("the append-only log is written again; writes resume");
                    }
                    let done = self.held_until;
                    log.progress.send_if_modified(|progress| {
                        let moved = progress.done < done;
                        progress.done = progress.done.max(done);
                        moved
                    });
                }
                Err(err) => {
                    if !log.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            err = format!("{err:#}"),
                            "the append-only log cannot be written: writes are refused until it \
                             can (retried every second)"
                        );
                    }
                    log.progress.send_modify(|progress| progress.failures += 1);
                }
            }
        }
    }

    /// Moves what the journal holds to `held`, waiting up to `wait` for something.
    fn take(&mut self, wait: Duration) {
        if let Some((bytes, until)) = self.journal.take(wait) {
            if self.held.is_empty() {
                self.held = bytes;
            } else {
                self.held.extend_from_slice(&bytes);
            }
            self.held_until = until;
        }
    }

    /// Writes `held` (and syncs, if `sync` or the last sync was long ago with something
    /// written since): the bytes written. On a failure the file is cut back to where it was,
    /// so no half-written record is left in the middle of it, and `held` is kept.
    fn flush(&mut self, sync: bool) -> anyhow::Result<u64> {
        let written = self.held.len() as u64;
        if !self.held.is_empty() {
            let before = self.file.metadata().map(|m| m.len());
            let wrote = if self.needs_magic {
                self.file.write_all(LOG_MAGIC)
            } else {
                Ok(())
            }
            .and_then(|()| self.file.write_all(&self.held));
            if let Err(err) = wrote {
                self.recover(before.ok());
                return Err(err).context("cannot write the log");
            }
            self.needs_magic = false;
            self.held.clear();
            self.dirty = true;
        }
        if self.dirty && sync {
            self.file.sync_data().context("cannot sync the log")?;
            self.dirty = false;
            self.synced = Instant::now();
        }
        Ok(written)
    }

    /// After a failed write: cuts the file back to `length`, and opens it again (a file the
    /// operator replaced, or a disk remounted, is then written from the next try).
    fn recover(&mut self, length: Option<u64>) {
        if let Some(length) = length {
            let _ = self.file.set_len(length);
        }
        let path = log_path(
            &self
                .log
                .upgrade()
                .map_or_else(PathBuf::new, |log| log.dir.clone()),
            self.generation,
        );
        if let Ok(file) = OpenOptions::new().create(true).append(true).open(&path) {
            self.needs_magic = file.metadata().is_ok_and(|meta| meta.len() == 0);
            self.file = file;
        }
    }

    /// Writes and syncs everything taken so far to the current file, then starts the next.
    fn next_file(&mut self, log: &AppendLog) -> anyhow::Result<u64> {
        self.take(Duration::ZERO);
        let written = self.flush(true)?;
        log.size.fetch_add(written, Ordering::Relaxed);
        let done = self.held_until;
        log.progress
            .send_modify(|progress| progress.done = progress.done.max(done));
        let file = open_new(&log.dir, self.generation + 1)?;
        self.file = file;
        self.needs_magic = true;
        self.generation += 1;
        Ok(self.generation)
    }
}

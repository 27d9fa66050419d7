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
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// How often the thread looks for changes no write has written yet (left by a caller that
/// went away, or by the sweeper), and for the time to sync (`everysec`).
const IDLE: Duration = Duration::from_millis(100);

/// How often a failing log is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How far the log has got, for writes waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Progress {
    /// Everything the journal held up to here is synced (`always`; written, otherwise).
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
    /// The current file and what is taken from the journal but not written yet.
    output: Mutex<Output>,
    /// Everything the journal held up to here is written to the file.
    written: AtomicU64,
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
}

/// The file being written; taking from the journal and writing happen under one lock, so
/// changes reach the file in the order they were appended.
#[derive(Debug)]
struct Output {
    /// Shared so that a sync runs without the lock, while writes go on.
    file: Arc<File>,
    generation: u64,
    /// The file's length: where a failed write is cut back to.
    len: u64,
    /// Taken from the journal and not written yet (the disk refused it).
    held: Vec<u8>,
    /// The journal position just past `held`.
    held_until: u64,
    /// The file is empty: its magic goes first.
    needs_magic: bool,
    /// Written since the last sync.
    dirty: bool,
    synced_at: Instant,
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
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = file.metadata().map_or(0, |meta| meta.len());
        let replayed = store.replay_log_from(file).map_err(|err| {
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
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log replayed"
        );
    }
    Ok(last)
}

impl AppendLog {
    /// Starts logging `store`'s changes to file `generation` in `dir` (a new file), with
    /// `policy`; the thread that syncs (and writes what no write wrote) runs until the log is
    /// dropped.
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
        let log = Arc::new(Self {
            journal,
            dir: dir.to_owned(),
            policy,
            output: Mutex::new(Output {
                file: Arc::new(file),
                generation,
                len: 0,
                held: Vec::new(),
                held_until: 0,
                needs_magic: true,
                dirty: false,
                synced_at: Instant::now(),
            }),
            written: AtomicU64::new(0),
            progress: watch::Sender::new(Progress::default()),
            failing: AtomicBool::new(false),
            size: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
            snapshot_size: AtomicU64::new(0),
            rewrite_min_bytes,
        });
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("gonest-aof".into())
            .spawn(move || background(&weak, policy))
            .context("cannot start the log thread")?;
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

    /// Whether a write waits for the thread's sync (`always`) rather than writing the log
    /// itself ([`Self::write_through`]).
    pub(crate) fn syncs_each_write(&self) -> bool {
        self.policy == AppendFsync::Always
    }

    /// Returns once everything up to `position` is in the log as the policy asks before a
    /// write is answered (`always`: synced; otherwise written to the file); an error if the log
    /// fails first. Every write waits for this before it is answered, so a process that
    /// crashes has answered no write its log does not hold.
    pub(crate) async fn logged(
        &self,
        position: u64,
    ) -> Result<(), gonest_session_core::StoreError> {
        if self.syncs_each_write() {
            self.synced(position).await
        } else {
            self.write_through(position)
        }
    }

    /// Waits until the thread has synced everything up to `position` (`always`).
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

    /// Writes everything up to `position` to the file now, in the caller (one write covers
    /// every change appended by then, so callers that come together share it), as Redis
    /// writes its append-only buffer before it answers. A write to the page cache takes
    /// microseconds; a hop to another thread and back would cost more than it.
    pub(crate) fn write_through(
        &self,
        position: u64,
    ) -> Result<(), gonest_session_core::StoreError> {
        if self.written.load(Ordering::Acquire) >= position {
            return Ok(());
        }
        if self.failing() {
            return Err(log_failing());
        }
        let mut output = self.lock();
        if self.written.load(Ordering::Acquire) >= position {
            return Ok(());
        }
        self.write_out(&mut output).map_err(|_| log_failing())
    }

    /// Takes what the journal holds and writes it (with what an earlier failure left) to the
    /// file; on a failure, the log turns to failing and the bytes are kept for the next try.
    fn write_out(&self, output: &mut Output) -> anyhow::Result<()> {
        if let Some((bytes, until)) = self.journal.take(Duration::ZERO) {
            if output.held.is_empty() {
                output.held = bytes;
            } else {
                output.held.extend_from_slice(&bytes);
            }
            output.held_until = until;
        }
        if !output.held.is_empty() {
            let mut file = &*output.file;
            let wrote = if output.needs_magic {
                file.write_all(LOG_MAGIC)
            } else {
                Ok(())
            }
            .and_then(|()| file.write_all(&output.held));
            if let Err(err) = wrote {
                self.recover(output);
                let err = anyhow::Error::new(err).context("cannot write the log");
                self.fail(&err);
                return Err(err);
            }
            let written = output.held.len() as u64
                + if output.needs_magic {
                    LOG_MAGIC.len() as u64
                } else {
                    0
                };
            self.size.fetch_add(written, Ordering::Relaxed);
            output.len += written;
            output.needs_magic = false;
            output.held.clear();
            output.dirty = true;
        }
        self.written.fetch_max(output.held_until, Ordering::Release);
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the append-only log is written again; writes resume");
        }
        if !self.syncs_each_write() {
            self.advance(output.held_until);
        }
        Ok(())
    }

    /// Syncs what is written. The lock is not held while the disk works, so writes go on; a
    /// sync covers every write made before it started.
    fn sync(&self) -> anyhow::Result<()> {
        let (file, until) = {
            let mut output = self.lock();
            self.write_out(&mut output)?;
            if !output.dirty {
                return Ok(());
            }
            output.dirty = false;
            output.synced_at = Instant::now();
            (output.file.clone(), output.held_until)
        };
        if let Err(err) = file.sync_data() {
            self.lock().dirty = true;
            let err = anyhow::Error::new(err).context("cannot sync the log");
            self.fail(&err);
            return Err(err);
        }
        self.advance(until);
        Ok(())
    }

    /// Tells the writes waiting on the log that it has got to `done`.
    fn advance(&self, done: u64) {
        self.progress.send_if_modified(|progress| {
            let moved = progress.done < done;
            progress.done = progress.done.max(done);
            moved
        });
    }

    /// The log cannot be written: writes are refused, and those waiting give up.
    fn fail(&self, err: &anyhow::Error) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                err = format!("{err:#}"),
                "the append-only log cannot be written: writes are refused until it can \
                 (retried every second)"
            );
        }
        self.progress.send_modify(|progress| progress.failures += 1);
    }

    /// After a failed write: cuts the file back to where it was, so no half-written record
    /// is left in the middle of it, and opens it again (a file the operator replaced, or a
    /// disk remounted, is then written from the next try).
    fn recover(&self, output: &mut Output) {
        let _ = output.file.set_len(output.len);
        let _ = (&*output.file).seek(std::io::SeekFrom::Start(output.len));
        let path = log_path(&self.dir, output.generation);
        if let Ok(file) = OpenOptions::new().create(true).append(true).open(&path) {
            output.len = file.metadata().map_or(output.len, |meta| meta.len());
            output.needs_magic = output.len == 0;
            output.file = Arc::new(file);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// returns its number. Blocks (for one sync): call it from a blocking task.
    pub(crate) fn rotate(&self) -> anyhow::Result<u64> {
        let mut output = self.lock();
        self.write_out(&mut output)?;
        if output.dirty {
            output.file.sync_data().context("cannot sync the log")?;
            output.dirty = false;
        }
        self.advance(output.held_until);
        let file = open_new(&self.dir, output.generation + 1)?;
        output.file = Arc::new(file);
        output.len = 0;
        output.needs_magic = true;
        output.generation += 1;
        Ok(output.generation)
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

impl Drop for AppendLog {
    /// What is left is written and synced on the way out.
    fn drop(&mut self) {
        let mut output = self.lock();
        if self.write_out(&mut output).is_ok() && output.dirty {
            let _ = output.file.sync_data();
        }
    }
}

/// The log's thread, until the log is dropped (then what is left is written and synced).
/// With `always` it writes and syncs whatever the journal holds, one sync for every write
/// waiting (group commit); otherwise writes write the log themselves, and the thread writes
/// what they left and syncs once a second (`everysec`). A failing log is tried every second.
fn background(log: &std::sync::Weak<AppendLog>, policy: AppendFsync) {
    let journal = match log.upgrade() {
        Some(log) => log.journal.clone(),
        None => return,
    };
    loop {
        let failing = log.upgrade().is_some_and(|log| log.failing());
        if failing {
            std::thread::sleep(RETRY);
        } else if policy == AppendFsync::Always {
            journal.wait(IDLE);
        } else {
            std::thread::sleep(IDLE);
        }
        let Some(log) = log.upgrade() else {
            break;
        };
        let due = match policy {
            AppendFsync::Always => true,
            AppendFsync::Everysec => log.lock().synced_at.elapsed() >= Duration::from_secs(1),
            AppendFsync::No | AppendFsync::Off => false,
        };
        // A failure is logged and counted where it happens; this thread only tries again.
        let _ = if due || failing {
            log.sync()
        } else {
            let mut output = log.lock();
            log.write_out(&mut output)
        };
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

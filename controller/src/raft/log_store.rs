//! [`SledLogStore`]: the Raft log (one sled key per index, big-endian so keys sort by
//! index), the vote, the committed log id and the last purged log id. Appended entries and
//! votes are flushed to disk before they are reported durable: Raft's promises rest on it.
//! openraft 0.9's RaftCore waits for each append's flush before it goes on (it replicates
//! the entries only then), so one append is in flight at a time and concurrent client
//! writes are grouped before Raft, by the proposer (`api/proposer.rs`). A small append
//! (`raft::all_small`) is written and flushed on the calling thread: a hand-off to another
//! thread and back costs two wake-ups per commit on each member. A big one (plans) is
//! written on a blocking thread and flushed by the flusher thread, off the runtime's threads
//! so that heartbeats and election timers never queue behind it; that thread completes what
//! is queued in order, with one flush for all of it.

use super::db::ControllerDb;
use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct SledLogStore {
    db: ControllerDb,
    /// The last committed index this member learnt (0 before any), for `status`.
    committed: Arc<AtomicU64>,
    /// The flusher thread's queue (the thread starts on the first big append).
    flusher: Arc<OnceLock<Sender<LogFlushed<TypeConfig>>>>,
    /// Since when the flush in progress has been running.
    flush_watch: FlushWatch,
    /// Appends handed to the flusher thread and not yet completed.
    handed_off: Arc<AtomicU64>,
    /// Small appends flush inline only from this time on ([`monotonic_ms`]); see
    /// [`INLINE_PAUSE_MS`].
    inline_after: Arc<AtomicU64>,
}

/// A flush that runs on the calling thread holds one of the runtime's threads. While big
/// entries (plans) are being written — for this long after the last big append, or after
/// an inline flush that took over [`INLINE_FLUSH_MAX_MS`] (a busy or slow disk) — small
/// appends hand their flush to the flusher thread instead: with plans in flight a sled
/// flush can take milliseconds, and the API and replication tasks should not wait behind
/// it for a thread. (A precaution: the 1,000,000-allocation runs vary too much from run to
/// run — 39 to 196 s, 0 to 141 retried writes, with and without inline flushes — to show an
/// effect either way; docs/benchmarks.md.)
const INLINE_PAUSE_MS: u64 = 1000;
/// See [`INLINE_PAUSE_MS`].
const INLINE_FLUSH_MAX_MS: u64 = 2;

/// How long the Raft log's flush in progress (on the flusher thread or inline) has been
/// running: the member's storage watchdog reads it. sled 0.34 does not always fail when
/// its storage does: when writing a blob file fails (a full disk, a data dir removed under
/// it) it leaves a log buffer that is never written, and the next flush never returns.
#[derive(Clone, Default)]
pub struct FlushWatch(Arc<AtomicU64>);

/// Milliseconds on a monotonic clock, from the first call in this process.
fn monotonic_ms() -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl FlushWatch {
    fn begin(&self) {
        // + 1: 0 means no flush in progress
        self.0.store(monotonic_ms() + 1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// How long the flush in progress has been running; None when none is.
    pub fn busy_for(&self) -> Option<std::time::Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => Some(std::time::Duration::from_millis(
                (monotonic_ms() + 1).saturating_sub(since),
            )),
        }
    }
}

/// Most appends completed by one flush.
const GROUP_MAX: usize = 4096;

/// The flusher thread: takes every append queued since its last flush, flushes sled once
/// for all of them and completes them in order. A thread of its own rather than a task
/// that hands each flush to the blocking pool: one wake-up per group instead of three. It
/// ends when the store (every clone) is dropped. It holds the whole handle, not just the
/// log tree, so that the database counts as open ([`super::db::DbClosed`]) until this
/// thread has ended.
fn start_flusher(
    db: ControllerDb,
    watch: FlushWatch,
    handed_off: Arc<AtomicU64>,
) -> std::io::Result<Sender<LogFlushed<TypeConfig>>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    std::thread::Builder::new()
        .name("gantry-log-flush".into())
        .spawn(move || {
            let mut group = Vec::new();
            while let Ok(first) = rx.recv() {
                group.push(first);
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                // Everything queued was written before this flush starts: it covers them all.
                watch.begin();
                let flushed = db.log.flush();
                watch.end();
                for done in group.drain(..) {
                    done.log_io_completed(flush_outcome(&flushed));
                    handed_off.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(tx)
}

/// What a log flush tells the appends it covers.
fn flush_outcome(flushed: &sled::Result<usize>) -> std::io::Result<()> {
    match flushed {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// Flush `tree` to disk on a blocking thread. Not sled's `flush_async`: with several
/// databases in one process (a test cluster, two tests at once) its futures can miss their
/// wake-up and never complete (sled issue 1241), which hung CI in the cluster tests.
async fn flush(tree: &sled::Tree) -> sled::Result<usize> {
    let tree = tree.clone();
    match tokio::task::spawn_blocking(move || tree.flush()).await {
        Ok(r) => r,
        Err(e) => Err(sled::Error::Io(std::io::Error::other(format!(
            "the flush task failed: {e}"
        )))),
    }
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Write `entries` in index order, one insert each. Not a `sled::Batch`: sled writes out
/// its log buffer twice around every batch (two more synchronous writes per append), and
/// Raft needs no atomic multi-entry append — sled recovers a prefix of its log, so a crash
/// leaves a prefix of these entries, as if the append had stopped there, and none of them
/// was acknowledged.
fn write_entries(log: &sled::Tree, entries: &[Entry]) -> Result<(), StorageError> {
    for entry in entries {
        let bytes = serde_json::to_vec(entry)
            .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
        log.insert(key(entry.log_id.index), bytes)
            .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
    }
    Ok(())
}

impl SledLogStore {
    pub fn new(db: ControllerDb) -> Self {
        SledLogStore {
            db,
            committed: Arc::default(),
            flusher: Arc::default(),
            flush_watch: FlushWatch::default(),
            handed_off: Arc::default(),
            inline_after: Arc::default(),
        }
    }

    /// Watches the Raft log's flushes (for the member's storage watchdog).
    pub fn flush_watch(&self) -> FlushWatch {
        self.flush_watch.clone()
    }

    /// A live view of the committed index, updated as openraft reports it.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        k: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let v = self
            .db
            .raft_meta
            .get(k)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        v.map(|b| serde_json::from_slice(&b).map_err(|e| io_err(subject, ErrorVerb::Read, e)))
            .transpose()
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        k: &[u8],
        v: &T,
        subject: ErrorSubject<u64>,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(v).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.db
            .raft_meta
            .insert(k, bytes)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        if durable {
            flush(&self.db.raft_meta)
                .await
                .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        }
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Entry, StorageError> {
        serde_json::from_slice(bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.db
            .log
            .range::<[u8; 8], _>((start, end))
            .map(|r| {
                let (_, v) = r.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Self::decode(&v)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED, ErrorSubject::Logs)?;
        let last = self
            .db
            .log
            .last()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
            .map(|(_, v)| Self::decode(&v))
            .transpose()?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote, ErrorSubject::Vote, true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed
            .store(committed.map_or(0, |l| l.index), Ordering::Relaxed);
        // Not flushed: after a crash openraft recomputes the committed index from a quorum.
        self.put_meta(COMMITTED, &committed, ErrorSubject::Store, false)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let log = self.db.log.clone();
        // Small entries are written here (a few microseconds each). Encoding and writing
        // big ones (plans) takes milliseconds: off the runtime's threads, so that heartbeats
        // and election timers are not queued behind it.
        if super::all_small(&entries) {
            write_entries(&log, &entries)?;
            // RaftCore waits for this flush before it does anything else (see the module
            // doc): flush here, unless appends handed off earlier still wait for theirs
            // (their callbacks come first).
            if self.handed_off.load(Ordering::Acquire) == 0
                && monotonic_ms() >= self.inline_after.load(Ordering::Relaxed)
            {
                let started = monotonic_ms();
                self.flush_watch.begin();
                let flushed = log.flush();
                self.flush_watch.end();
                let done = monotonic_ms();
                if done - started > INLINE_FLUSH_MAX_MS {
                    self.inline_after
                        .store(done + INLINE_PAUSE_MS, Ordering::Relaxed);
                }
                callback.log_io_completed(flush_outcome(&flushed));
                return Ok(());
            }
        } else {
            self.inline_after
                .store(monotonic_ms() + INLINE_PAUSE_MS, Ordering::Relaxed);
            tokio::task::spawn_blocking(move || write_entries(&log, &entries))
                .await
                .map_err(|e| {
                    io_err(
                        ErrorSubject::Logs,
                        ErrorVerb::Write,
                        std::io::Error::other(e.to_string()),
                    )
                })??;
        }
        // Durable before acknowledged: the callback fires after the flusher's next flush.
        let queue = match self.flusher.get() {
            Some(q) => q,
            None => {
                let tx = start_flusher(
                    self.db.clone(),
                    self.flush_watch.clone(),
                    self.handed_off.clone(),
                )
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                self.flusher.get_or_init(|| tx)
            }
        };
        self.handed_off.fetch_add(1, Ordering::AcqRel);
        if let Err(back) = queue.send(callback) {
            self.handed_off.fetch_sub(1, Ordering::AcqRel);
            back.0
                .log_io_completed(Err(std::io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for k in self.db.log.range(key(log_id.index)..).keys() {
            batch.remove(k.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?);
        }
        self.db
            .log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        flush(&self.db.log)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a hole.
        self.put_meta(LAST_PURGED, &log_id, ErrorSubject::Logs, true)
            .await?;
        let mut batch = sled::Batch::default();
        for k in self.db.log.range(..=key(log_id.index)).keys() {
            batch.remove(k.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?);
        }
        self.db
            .log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::FlushWatch;
    use std::time::Duration;

    #[test]
    fn the_flush_watch_reports_how_long_the_flush_in_progress_has_run() {
        let w = FlushWatch::default();
        assert_eq!(w.busy_for(), None, "idle");
        w.begin();
        std::thread::sleep(Duration::from_millis(30));
        let busy = w.busy_for().expect("a flush in progress");
        assert!(busy >= Duration::from_millis(30), "{busy:?}");
        w.end();
        assert_eq!(w.busy_for(), None, "idle again");
    }
}

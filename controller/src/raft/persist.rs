//! [`Persister`]: writes the applied state into the sled object trees behind the apply path
//! (write-behind, as etcd's backend commits its batch transaction in the background).
//!
//! Applying a batch queues, per tree, the JSON of every object it changed (one
//! [`sled::Batch`] per tree, so a later change of the same object replaces the earlier one
//! before either is written) and the meta of the state it produced. A flusher thread takes
//! everything queued and writes it, with that meta, in one sled transaction: the trees always
//! hold the state at their recorded last applied log id, never part of a later one. They may
//! lag the in-memory state by what is queued; a member that stops without flushing (a crash)
//! applies those entries again from its log, which keeps everything past the last snapshot.
//! That is why [`Persister::sync_to`] runs before a snapshot is reported built (openraft may
//! then purge the log up to it) and before a received snapshot is written to the trees.
//!
//! Bounded: while [`MAX_QUEUED`] objects wait, the next apply waits for the flusher to take
//! them, so a slow disk slows applying instead of growing memory without limit.

use super::db::ControllerDb;
use super::{LogId, StorageError, StoredMembership};
use crate::state::{AllocId, Change, ClusterNetwork, NodeId};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"membership";
pub(crate) const COUNTERS: &[u8] = b"counters";
pub(crate) const CLUSTER_NETWORK: &[u8] = b"cluster_network";

/// Queued objects at which applying waits for the flusher.
pub const MAX_QUEUED: usize = 65_536;

/// The flusher writes at most once per this long, unless someone waits for the trees (a
/// snapshot, a stop) or a quarter of [`MAX_QUEUED`] is queued. Each sled transaction costs
/// two synchronous writes of sled's log; under a steady stream of small commits, writing
/// each apply alone put those writes in the way of the Raft log's own flushes (all trees
/// share one sled log) and cost more CPU than the commits. The trees lag by this much more
/// at most; a crash replays it from the Raft log.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(20);
/// Queued objects at which the flusher writes without holding back.
const FLUSH_NOW: usize = MAX_QUEUED / 4;

#[derive(Serialize, Deserialize)]
pub(crate) struct Counters {
    pub next_node_id: u64,
    pub next_alloc_id: u64,
}

pub(crate) fn node_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state types serialize to JSON")
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Write,
        AnyError::new(&e),
    )
    .into()
}

/// What is stored besides the changed objects: read from the state under its lock, so that
/// the (slow) writes can run without holding it.
pub(crate) struct AppliedMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub cluster_network: Option<ClusterNetwork>,
    pub counters: (NodeId, AllocId),
}

impl AppliedMeta {
    fn index(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
    /// The `sm_meta` entries of this state.
    pub(crate) fn batch(&self) -> sled::Batch {
        let (next_node_id, next_alloc_id) = self.counters;
        let mut meta = sled::Batch::default();
        meta.insert(LAST_APPLIED, to_json(&self.last_applied));
        meta.insert(CLUSTER_NETWORK, to_json(&self.cluster_network));
        meta.insert(MEMBERSHIP, to_json(&self.membership));
        meta.insert(
            COUNTERS,
            to_json(&Counters {
                next_node_id,
                next_alloc_id,
            }),
        );
        meta
    }
}

/// Changes waiting to be written, one batch per tree, and the meta of the newest state.
#[derive(Default)]
struct Queued {
    nodes: sled::Batch,
    services: sled::Batch,
    allocations: sled::Batch,
    tokens: sled::Batch,
    /// Changes queued (an object changed twice counts twice: a bound, not a count).
    objects: usize,
    meta: Option<AppliedMeta>,
}

impl Queued {
    fn add(&mut self, c: &Change) {
        match c {
            Change::Node(n) => self.nodes.insert(&node_key(n.id), to_json(n)),
            Change::Service(s) => self.services.insert(s.name.as_bytes(), to_json(s)),
            Change::ServiceRemoved { name, .. } => self.services.remove(name.as_bytes()),
            Change::Allocation(a) => self.allocations.insert(&node_key(a.id), to_json(a)),
            Change::AllocationRemoved { id, .. } => self.allocations.remove(&node_key(*id)),
            Change::Token(t) => self.tokens.insert(t.id.as_bytes(), to_json(t)),
        }
        self.objects += 1;
    }

    /// Write everything in one transaction.
    fn write(self, db: &ControllerDb) -> Result<(), String> {
        let meta = self
            .meta
            .as_ref()
            .map(AppliedMeta::batch)
            .unwrap_or_default();
        (
            &db.nodes,
            &db.services,
            &db.allocations,
            &db.tokens,
            &db.sm_meta,
        )
            .transaction(|(n, s, a, t, m)| {
                n.apply_batch(&self.nodes)?;
                s.apply_batch(&self.services)?;
                a.apply_batch(&self.allocations)?;
                t.apply_batch(&self.tokens)?;
                m.apply_batch(&meta)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| match e {
                TransactionError::Storage(e) => e.to_string(),
                TransactionError::Abort(()) => "transaction aborted".to_string(),
            })
    }
}

#[derive(Default)]
struct Inner {
    queued: Queued,
    /// Index of the last state queued, and of the last one written.
    queued_index: u64,
    durable_index: u64,
    /// The first write that failed: every later apply and sync reports it.
    failed: Option<String>,
    stop: bool,
    /// Callers of [`Persister::sync_to`] waiting: the flusher does not hold back for them.
    syncing: usize,
    /// Transactions written so far.
    transactions: u64,
    /// Tests: the flusher takes nothing while set.
    #[cfg(test)]
    hold: bool,
}

impl Inner {
    /// Queueing waits for the flusher (checked before an apply's changes are added).
    fn full(&self) -> bool {
        self.queued.objects >= MAX_QUEUED
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled when something is queued, written, taken, or on stop.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn wait<'a>(&self, g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }
}

/// The write-behind of one state machine's trees (see the module doc). Dropping it writes
/// what is still queued and stops its thread.
pub struct Persister {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Persister {
    /// Start the flusher thread of `db`, whose trees hold the state at `index`.
    pub(crate) fn start(db: ControllerDb, index: u64) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                queued_index: index,
                durable_index: index,
                ..Inner::default()
            }),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gantry-persist".into())
            .spawn(move || flusher(&s, &db))?;
        Ok(Persister {
            shared,
            thread: Some(thread),
        })
    }

    /// Queue the changes of one apply and the meta of the state they produced.
    pub(crate) fn queue(&self, changes: &[Change], meta: AppliedMeta) -> Result<(), StorageError> {
        let mut g = self.shared.lock();
        while g.failed.is_none() && g.full() {
            g = self.shared.wait(g);
        }
        if let Some(e) = &g.failed {
            return Err(write_err(std::io::Error::other(e.clone())));
        }
        let before = g.queued.objects;
        let was_empty = g.queued.meta.is_none();
        for c in changes {
            g.queued.add(c);
        }
        g.queued_index = g.queued_index.max(meta.index());
        g.queued.meta = Some(meta);
        // The flusher sleeps without a deadline only on an empty queue; while it holds back
        // it wakes by itself, unless the queue grows past its threshold.
        let wake = was_empty || (before < FLUSH_NOW && g.queued.objects >= FLUSH_NOW);
        drop(g);
        if wake {
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    /// Can a small apply be queued now without waiting for the flusher? (Only the apply
    /// path queues, one apply at a time, so the answer holds until it does.)
    pub(crate) fn has_room(&self) -> bool {
        !self.shared.lock().full()
    }

    /// Wait until the trees hold the state at `index` or later (it must be applied, or
    /// about to be queued by the apply in progress).
    pub(crate) fn sync_to(&self, index: u64) -> Result<(), StorageError> {
        let mut g = self.shared.lock();
        g.syncing += 1;
        self.shared.changed.notify_all();
        let r = loop {
            if let Some(e) = &g.failed {
                break Err(write_err(std::io::Error::other(e.clone())));
            }
            if g.durable_index >= index {
                break Ok(());
            }
            g = self.shared.wait(g);
        };
        g.syncing -= 1;
        r
    }

    /// Wait until everything queued so far is in the trees.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        let index = self.shared.lock().queued_index;
        self.sync_to(index)
    }

    /// Tests: how many transactions the flusher has written.
    #[cfg(test)]
    pub(crate) fn transactions(&self) -> u64 {
        self.shared.lock().transactions
    }

    /// Tests: stop (or let) the flusher take what is queued.
    #[cfg(test)]
    pub(crate) fn hold(&self, on: bool) {
        self.shared.lock().hold = on;
        self.shared.changed.notify_all();
    }

    /// Drop what is queued (a received snapshot replaces the trees) and consider the trees
    /// to hold the state at `index`. Call after [`Persister::sync`], with applies stopped.
    pub(crate) fn reset(&self, index: u64) {
        let mut g = self.shared.lock();
        g.queued = Queued::default();
        g.queued_index = index;
        g.durable_index = index;
    }
}

fn flusher(shared: &Shared, db: &ControllerDb) {
    let mut g = shared.lock();
    let mut last_write: Option<std::time::Instant> = None;
    loop {
        #[cfg(test)]
        let held = g.hold && !g.stop;
        #[cfg(not(test))]
        let held = false;
        if g.queued.meta.is_none() || held {
            if g.stop {
                return;
            }
            g = shared.wait(g);
            continue;
        }
        let wait = last_write
            .map(|t| COALESCE.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        if !wait.is_zero() && !g.stop && g.syncing == 0 && g.queued.objects < FLUSH_NOW {
            g = shared
                .changed
                .wait_timeout(g, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            continue;
        }
        let batch = std::mem::take(&mut g.queued);
        let index = batch.meta.as_ref().map_or(0, AppliedMeta::index);
        drop(g);
        // A queue waiting for room can go on now.
        shared.changed.notify_all();
        let written = batch.write(db);
        last_write = Some(std::time::Instant::now());
        g = shared.lock();
        match written {
            Ok(()) => {
                g.durable_index = g.durable_index.max(index);
                g.transactions += 1;
            }
            Err(e) => {
                tracing::error!(path = %db.path.display(), "writing the applied state: {e}");
                g.failed.get_or_insert(e);
                shared.changed.notify_all();
                return;
            }
        }
        shared.changed.notify_all();
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

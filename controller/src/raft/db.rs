//! The controller's one sled database and its trees: `log` (Raft entries by index),
//! `raft_meta` (vote, committed, last purged, cluster id), `sm_meta` (last applied,
//! membership, counters, the current snapshot), and one tree per object kind (`nodes`,
//! `services`, `allocations`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("opening the controller database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("controller database {path}: {what} is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("controller database {path}: writing {what}: {source}")]
    Write {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error(
        "data dir {path} belongs to cluster {ours}, not to cluster {theirs}: \
         use an empty data dir to join another cluster"
    )]
    ClusterMismatch {
        path: PathBuf,
        ours: String,
        theirs: String,
    },
}

pub(crate) const CLUSTER_ID: &[u8] = b"cluster_id";

/// sled's page cache per controller database.
const CACHE_BYTES: u64 = 64 << 20;

/// The open database of one controller member.
#[derive(Clone)]
pub struct ControllerDb {
    pub(crate) db: sled::Db,
    pub(crate) path: PathBuf,
    pub(crate) log: sled::Tree,
    pub(crate) raft_meta: sled::Tree,
    pub(crate) sm_meta: sled::Tree,
    pub(crate) nodes: sled::Tree,
    pub(crate) services: sled::Tree,
    pub(crate) allocations: sled::Tree,
    /// Join tokens by id (hashes only).
    pub(crate) tokens: sled::Tree,
    /// One strong count per open handle (every clone): [`DbClosed`] watches it. Declared
    /// last, so dropped last: after the trees and the database, whose drops flush.
    open: Arc<()>,
}

/// Tells when every handle of one [`ControllerDb`] (every clone, wherever a task or thread
/// keeps one) has been dropped, so that sled has flushed what it held. A member
/// waits for this before its stop returns: its data dir may then be reopened, copied or
/// removed. Removing it while a handle lives is not safe with sled 0.34: a write that
/// needs a new blob file then fails after taking its place in the log buffer, that buffer
/// is never written, and the next flush (every handle's last drop flushes) waits forever
/// while holding sled's process-wide lock, which stops every other database in the process.
#[derive(Clone, Debug)]
pub struct DbClosed(Weak<()>);

impl DbClosed {
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// Wait until closed, polling, for at most `within`; true when it closed.
    pub async fn wait(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

impl ControllerDb {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        // sled releases its file lock from background threads after the last handle is
        // dropped: a restart right after a stop may have to wait a moment for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match sled::Config::new()
                .path(path)
                .mode(sled::Mode::HighThroughput)
                // sled caches 1 GiB by default; the state itself lives in memory already.
                .cache_capacity(CACHE_BYTES)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        Ok(ControllerDb {
            path: path.to_path_buf(),
            log: tree("log")?,
            raft_meta: tree("raft_meta")?,
            sm_meta: tree("sm_meta")?,
            nodes: tree("nodes")?,
            services: tree("services")?,
            allocations: tree("allocations")?,
            tokens: tree("tokens")?,
            db,
            open: Arc::new(()),
        })
    }

    /// Watches for the last handle of this database to be dropped.
    pub fn closed(&self) -> DbClosed {
        DbClosed(Arc::downgrade(&self.open))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cluster this data dir belongs to (None: fresh).
    pub fn cluster_id(&self) -> Result<Option<String>, DbError> {
        let v = self
            .raft_meta
            .get(CLUSTER_ID)
            .map_err(|source| DbError::Open {
                path: self.path.clone(),
                source,
            })?;
        v.map(|b| {
            String::from_utf8(b.to_vec()).map_err(|e| DbError::Corrupt {
                path: self.path.clone(),
                what: "cluster_id".into(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Record the cluster id, or check it: a data dir never changes cluster.
    pub fn claim_cluster(&self, id: &str) -> Result<(), DbError> {
        match self.cluster_id()? {
            Some(ours) if ours == id => Ok(()),
            Some(ours) => Err(DbError::ClusterMismatch {
                path: self.path.clone(),
                ours,
                theirs: id.to_string(),
            }),
            None => {
                self.raft_meta
                    .insert(CLUSTER_ID, id.as_bytes())
                    .map_err(|source| DbError::Write {
                        path: self.path.clone(),
                        what: "cluster_id",
                        source,
                    })?;
                self.db.flush().map_err(|source| DbError::Write {
                    path: self.path.clone(),
                    what: "cluster_id",
                    source,
                })?;
                Ok(())
            }
        }
    }

    /// Is there any Raft state here (a vote or a log)?
    pub fn has_raft_state(&self) -> bool {
        self.raft_meta.contains_key(b"vote").unwrap_or(true)
            || !self.log.is_empty()
            || self.sm_meta.contains_key(b"last_applied").unwrap_or(true)
    }
}

/// A fresh random cluster id (128 bits, hex).
pub fn new_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

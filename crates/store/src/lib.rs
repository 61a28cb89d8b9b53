//! sealkv's storage layer: the [`KvStore`] trait the state machine writes through,
//! its RocksDB implementation ([`RocksStore`]) and, behind the `testing` feature,
//! an in-memory one for unit tests (`MemoryStore`), the writer-registry glue ([`RocksWriterRegistry`]) that
//! backs the encryption applier with durable RocksDB rows, and the durable Raft log
//! ([`RaftLog`], a raft-rs [`raft::Storage`]) in the same RocksDB database.
//!
//! One RocksDB database holds everything, in four column families: `data`, `meta`
//! and `registry` are the state machine, and `raft` is the node's log. A Raft
//! snapshot is a dump of the state machine's three column families taken from a
//! RocksDB checkpoint: [`raft::Storage::snapshot`] on [`RaftLog`] creates the
//! checkpoint and returns a small [`SnapshotDescriptor`], the node streams the dump
//! ([`stream_checkpoint`]) to the other node, which installs it from a file with
//! [`RocksStore::install_snapshot_file`] followed by [`RaftLog::apply_snapshot`]
//! (a dump in memory installs with [`RocksStore::install_snapshot`]).
//!
//! ```
//! use sealkv_encryption::WriterRegistryStore;
//! use sealkv_encryption::registry::{WriterKey, WriterRecord};
//! use sealkv_store::mvcc::StoredValue;
//! use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, RocksWriterRegistry, WriteBatch};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = RocksStore::open(dir.path(), RocksStoreOptions::default())?;
//!
//! // Versions of user values and the applied index land together, synced.
//! let mut batch = WriteBatch::new();
//! batch.put(b"greeting", 1, StoredValue::clear(b"hello".to_vec(), 0))?;
//! batch.set_applied_index(1);
//! store.commit(batch)?;
//! let latest = store.get_at(b"greeting", u64::MAX)?.expect("written");
//! assert_eq!(latest.value.body, b"hello");
//! assert_eq!(store.applied_index()?, 1);
//!
//! // The encryption applier's writer registry lives in the same database, in its
//! // own column family; the glue takes the RocksDB store by type.
//! let registry = RocksWriterRegistry::from_store(&store)?;
//! let slot = WriterKey::for_node(1, 7);
//! let row = WriterRecord { full_node_id: 7, first_seen_local_epoch: 1, last_seen_local_epoch: 1 };
//! registry.put_writers(&[(slot, row)])?;
//! assert_eq!(registry.get_writer(slot)?, Some(row));
//! # Ok(()) }
//! ```
//!
//! The Raft log, driven by the Ready protocol:
//!
//! ```
//! use raft::prelude::{ConfState, Entry, HardState};
//! use sealkv_store::{RaftLog, RocksStore, RocksStoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = RocksStore::open(dir.path(), RocksStoreOptions::default())?;
//! let log = RaftLog::open(&store)?;
//! if log.is_fresh() {
//!     let mut peers = ConfState::default();
//!     peers.voters = vec![1, 2, 3];
//!     log.initialize(&peers)?;
//! }
//! // For each Ready: its entries and hard state in one synced write ...
//! let mut entry = Entry::default();
//! (entry.index, entry.term) = (1, 1);
//! let mut hs = HardState::default();
//! hs.term = 1;
//! log.persist(&[entry], Some(&hs))?;
//! // ... and the commit index of the LightReady that `advance` returns.
//! log.set_hard_state_commit(1)?;
//! // Later, once the state machine has applied index 1:
//! log.compact(2)?;
//! assert_eq!(log.first_index(), 2);
//! # Ok(()) }
//! ```

#![deny(clippy::indexing_slicing, clippy::panic)]

/// A fail point (tikv's fail-rs) named `$name`, compiled in only with the test-only
/// `failpoints` feature; in any other build it is nothing. `$on_return` is what the
/// `return` action makes the enclosing function return (an injected I/O error);
/// `panic` models a crash at that point.
macro_rules! fail_point {
    ($name:literal, $on_return:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $on_return);
    };
}

mod batch;
#[cfg(feature = "testing")]
pub mod conformance;
mod dump;
pub mod gc;
#[cfg(any(test, feature = "testing"))]
mod memory;
pub mod mvcc;
mod raftlog;
mod registry;
mod rocks;
pub mod stream;

pub use batch::{BatchOp, WriteBatch};
pub use dump::snapshot_applied_index;
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryStore;
pub use raftlog::{RaftLog, RaftLogError};
pub use registry::{RegistryGlueError, RocksWriterRegistry};
pub use rocks::{INSTALL_BATCH_BYTES, RocksStore, RocksStoreOptions};
pub use stream::{SnapshotDescriptor, StreamSummary, remove_checkpoint, stream_checkpoint};

use mvcc::Version;

/// One row of a decoded snapshot dump: column family name, key, value.
#[doc(hidden)]
pub type DumpRow<'a> = (&'static str, &'a [u8], &'a [u8]);

/// Decodes and validates a snapshot dump exactly as
/// [`RocksStore::install_snapshot`] does before it writes anything, and returns each
/// row (column family name, key, value) in dump order. Public for the fuzz targets
/// (`crates/fuzz-targets`); not part of the API.
///
/// # Errors
/// As [`RocksStore::install_snapshot`] for a malformed dump: [`StoreError::Corrupt`].
#[doc(hidden)]
pub fn decode_snapshot_dump(data: &[u8]) -> Result<Vec<DumpRow<'_>>> {
    Ok(dump::decode(data)?
        .records
        .into_iter()
        .map(|r| (r.cf, r.key, r.value))
        .collect())
}

/// The visitor of [`KvStore::scan_versions`]: a version's physical key, decoded
/// header and body; it returns `false` to stop the scan.
pub type VersionVisitor<'a> = dyn FnMut(&[u8], &mvcc::ValueHeader, &[u8]) -> bool + 'a;

/// Reads a whole snapshot dump of `total` bytes from `reader` with the streaming
/// decoder [`RocksStore::install_snapshot_file`] runs before it writes anything,
/// and returns the applied index it carries and its record count. Public for the
/// fuzz targets (`crates/fuzz-targets`), which hold it to the same verdicts as
/// [`decode_snapshot_dump`]; not part of the API.
///
/// # Errors
/// [`StoreError::Corrupt`], as [`decode_snapshot_dump`].
#[doc(hidden)]
pub fn verify_snapshot_dump(reader: impl std::io::Read, total: u64) -> Result<(u64, u64)> {
    dump::verify(reader, total).map(|v| (v.applied_index, v.records))
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A user write targets the reserved encryption keyspace (`!encryption|...`).
    #[error(
        "key {} is in the reserved keyspace !encryption|",
        String::from_utf8_lossy(key)
    )]
    ReservedKey {
        /// The refused key.
        key: Vec<u8>,
    },
    /// Bytes read from disk do not have the shape they must have.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded ("value header", "applied index").
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The storage engine failed.
    #[error("storage engine failed to {op}")]
    Backend {
        /// What the store was doing, as a verb phrase.
        op: &'static str,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result of a storage operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The engine error a fail point's `return` action injects into `op` (feature
/// `failpoints`): what a failed RocksDB write looks like to the callers.
#[cfg(feature = "failpoints")]
pub(crate) fn injected(op: &'static str, fail_point: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(std::io::Error::other(format!("fail point {fail_point}"))),
    }
}

/// The state machine's storage: versioned user values and the applied index.
///
/// The protocol:
///
/// * [`commit`](Self::commit) applies a [`WriteBatch`] atomically: after a crash
///   either every put and the applied index of the batch are visible, or none are.
///   A store that is durable (RocksDB) syncs the batch before returning; the state
///   machine relies on this to persist its applied index together with the effects
///   of the entries it applied.
/// * [`get_at`](Self::get_at) returns the newest version of a key whose commit
///   version is at most `at` (use `u64::MAX` for the latest), tombstones included.
///   `None` means the key has no such version.
/// * [`applied_index`](Self::applied_index) is `0` on a fresh store.
/// * Glue that needs a particular implementation takes it by type (see
///   [`RocksWriterRegistry::from_store`]), not through this trait.
pub trait KvStore: Send + Sync {
    /// The newest version of `key` with commit version `<= at`.
    fn get_at(&self, key: &[u8], at: u64) -> Result<Option<Version>>;

    /// The last applied Raft index persisted by [`commit`](Self::commit).
    fn applied_index(&self) -> Result<u64>;

    /// The metadata row `key` set by [`WriteBatch::put_meta`], or `None`.
    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `batch` atomically (and durably, for a durable store).
    fn commit(&self, batch: WriteBatch) -> Result<()>;

    /// Replaces the state machine's contents (values, metadata, registry rows and
    /// the applied index) with a snapshot dump, atomically.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a dump that does not decode;
    /// [`StoreError::Backend`] when the store fails or cannot install snapshots.
    fn install_snapshot(&self, dump: &[u8]) -> Result<()>;

    /// Replaces the state machine's contents with the dump in the file at `path`,
    /// as [`install_snapshot`](Self::install_snapshot) does for one in memory.
    /// This default reads the file whole; [`RocksStore`] streams it with bounded
    /// memory ([`RocksStore::install_snapshot_file`]).
    ///
    /// # Errors
    /// As [`install_snapshot`](Self::install_snapshot), and
    /// [`StoreError::Backend`] when the file cannot be read.
    fn install_snapshot_file(&self, path: &std::path::Path) -> Result<()> {
        let dump = std::fs::read(path).map_err(|e| StoreError::Backend {
            op: "read snapshot file",
            source: Box::new(e),
        })?;
        self.install_snapshot(&dump)
    }

    /// Calls `visit` with the newest version of every user key, in key order,
    /// tombstones included, from one consistent view of the store. `visit` returns
    /// `false` to stop early.
    fn scan_latest(&self, visit: &mut dyn FnMut(&[u8], &Version) -> bool) -> Result<()>;

    /// Calls `visit` with every version of every user key (tombstones and expired
    /// values included): its physical key ([`mvcc::decode_physical_key`]), its
    /// decoded header and its body, in physical key order, from one consistent view
    /// of the store, holding one version in memory at a time. `visit` returns
    /// `false` to stop early. Returns the applied index of that same view.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a value whose header does not decode;
    /// [`StoreError::Backend`] when the store fails.
    fn scan_versions(&self, visit: &mut VersionVisitor<'_>) -> Result<u64>;
}

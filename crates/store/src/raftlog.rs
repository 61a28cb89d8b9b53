//! [`RaftLog`]: the durable raft-rs log storage, in the `raft` column family of the
//! node's RocksDB database, with the state-machine snapshot behind
//! `raft::Storage::snapshot`.
//!
//! Rows of the `raft` column family; every value is the protobuf encoding of the
//! raft-rs message named:
//!
//! ```text
//! key                                        value
//! +------+--------------------+
//! | 'e'  | index u64 BE       |              Entry (one per log index)
//! +------+--------------------+
//!  0      1                    9
//!
//! "hard_state"                               HardState (term, vote, commit)
//! "conf_state"                               ConfState (voters, learners, ...)
//! "snapshot_meta"                            SnapshotMetadata: index and term of the
//!                                            last entry compacted away or covered by
//!                                            an installed snapshot (conf_state empty)
//! ```
//!
//! Entry keys sort by index because the index is big-endian, and they all sort
//! between `"e"` and `"f"`; no fixed key starts with `e`, so `delete_range("e",
//! "f")` discards the whole log and nothing else.
//!
//! **Invariant:** the entry rows are exactly the indices
//! `first_index ..= last_index`, with `first_index = snapshot_meta.index + 1`, and
//! `last_index >= snapshot_meta.index`. Every mutation keeps it in one synced
//! RocksDB write batch, and [`RaftLog::open`] checks it, so a crash never leaves a
//! hole or an entry the bounds do not cover.
//!
//! The semantics follow raft-rs `MemStorageCore` (append with conflict truncation,
//! compact, apply_snapshot, and the `Compacted` / `Unavailable` /
//! `SnapshotOutOfDate` errors), with three deliberate differences: where
//! `MemStorageCore` panics (an append below the compacted index or past a gap, a
//! compaction past the log, `entries` past the last index) this returns a typed
//! error; compaction records the term of the last compacted entry, so
//! `term(first_index - 1)` keeps answering as the `Storage` trait requires; and
//! `snapshot` names the state machine's data (a [`SnapshotDescriptor`] of a
//! checkpoint, `crate::stream`), not just metadata.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{ColumnFamily, DB, ReadOptions, WriteOptions};

use crate::rocks::{APPLIED_INDEX_KEY, CF_META, CF_RAFT, backend, cf, decode_applied_index};
use crate::stream::{self, SnapshotDescriptor};
use crate::{RocksStore, StoreError};

/// The first byte of every entry key.
const ENTRY_PREFIX: u8 = b'e';
/// Length of an entry key: the prefix and the index.
const ENTRY_KEY_LEN: usize = 9;
/// The smallest key after every entry key.
const ENTRIES_END: &[u8] = b"f";
/// The key of the persisted `HardState`.
const HARD_STATE_KEY: &[u8] = b"hard_state";
/// The key of the persisted `ConfState`.
const CONF_STATE_KEY: &[u8] = b"conf_state";
/// The key of the compaction point (`SnapshotMetadata` with index and term only).
const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";

/// A Raft log operation that cannot be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftLogError {
    /// [`RaftLog::initialize`] was called on a log that already has state.
    #[error("the raft log is already initialized")]
    AlreadyInitialized,
    /// The entries to append do not have consecutive indices.
    #[error("entries to append are not consecutive: index {found} follows {previous}")]
    NotConsecutive {
        /// The index of the entry before the break.
        previous: u64,
        /// The index found after it.
        found: u64,
    },
    /// An append would overwrite entries that were compacted away.
    #[error(
        "append from index {first_new} would overwrite the compacted log (first index {first_index})"
    )]
    AppendBelowCompacted {
        /// The index of the first entry to append.
        first_new: u64,
        /// The log's first index.
        first_index: u64,
    },
    /// An append would leave a gap after the last entry.
    #[error("append from index {first_new} would leave a gap after last index {last_index}")]
    AppendGap {
        /// The index of the first entry to append.
        first_new: u64,
        /// The log's last index.
        last_index: u64,
    },
    /// A compaction would discard entries the log does not have.
    #[error("compact to index {compact_index} is past last index {last_index} + 1")]
    CompactBeyondLog {
        /// The requested compaction index.
        compact_index: u64,
        /// The log's last index.
        last_index: u64,
    },
    /// A snapshot is not newer than the one the log already covers.
    #[error("snapshot at index {index} is not newer than the log's snapshot at {snapshot_index}")]
    SnapshotOutOfDate {
        /// The snapshot's index.
        index: u64,
        /// The index the log's snapshot metadata already covers.
        snapshot_index: u64,
    },
    /// A range of entries was asked for with its low end above its high end.
    #[error("entry range [{low}, {high}) is inverted")]
    InvertedRange {
        /// The requested low index (inclusive).
        low: u64,
        /// The requested high index (exclusive).
        high: u64,
    },
    /// The state machine's applied index is below the compacted log, so a snapshot
    /// cannot name its term (the log was compacted past what was applied).
    #[error("applied index {applied} is below the compacted log (first index {first_index})")]
    AppliedCompacted {
        /// The state machine's applied index.
        applied: u64,
        /// The log's first index.
        first_index: u64,
    },
    /// A raft-rs message could not be encoded.
    #[error("encode {what}")]
    Encode {
        /// Which message ("entry", "hard state").
        what: &'static str,
        /// The protobuf error.
        #[source]
        source: protobuf::ProtobufError,
    },
    /// The store failed (backend error) or found malformed rows (corruption).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Converts an error for the `raft::Storage` boundary: an out-of-date snapshot is
/// raft's own `SnapshotOutOfDate`; everything else is `StorageError::Other` with the
/// typed error inside, which raft treats as fatal for the node.
impl From<RaftLogError> for raft::Error {
    fn from(e: RaftLogError) -> raft::Error {
        match e {
            RaftLogError::SnapshotOutOfDate { .. } => {
                raft::Error::Store(StorageError::SnapshotOutOfDate)
            }
            other => raft::Error::Store(StorageError::Other(Box::new(other))),
        }
    }
}

/// Result of a Raft log operation.
type LogResult<T> = std::result::Result<T, RaftLogError>;

/// The cached bounds and metadata of the log; entries are read from RocksDB.
#[derive(Debug, Clone, Default)]
struct State {
    /// Index of the last entry, or `snapshot_index` when the log has no entries.
    last_index: u64,
    /// Index of the last entry compacted away or covered by a snapshot.
    snapshot_index: u64,
    /// Term of the entry at `snapshot_index`.
    snapshot_term: u64,
    hard_state: HardState,
    conf_state: ConfState,
}

impl State {
    fn first_index(&self) -> u64 {
        // Saturating: a compaction point of u64::MAX (only a corrupt row or a
        // hostile snapshot could say so) must not panic.
        self.snapshot_index.saturating_add(1)
    }

    fn is_fresh(&self) -> bool {
        self.last_index == 0
            && self.snapshot_index == 0
            && self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
    }
}

struct Inner {
    db: Arc<DB>,
    /// Where outgoing snapshots' checkpoints go.
    snapshot_out: std::path::PathBuf,
    // The cached state. Writers hold the write lock across their RocksDB write and
    // update the cache only after the write succeeded, so the cache never runs
    // ahead of the disk; readers hold the read lock across their entry reads, so a
    // truncation cannot interleave with them.
    state: RwLock<State>,
}

/// The durable Raft log of one node, implementing [`raft::Storage`].
///
/// Cloning is cheap (an `Arc`); every clone is the same log. It lives in the `raft`
/// column family of a [`RocksStore`]'s database, and every write is one synced
/// RocksDB write batch, whatever the store's `sync_writes` option.
///
/// The Ready protocol, as the node drives it:
///
/// 1. On startup, [`open`](Self::open); if [`is_fresh`](Self::is_fresh),
///    [`initialize`](Self::initialize) it with the cluster's `ConfState`.
/// 2. For each `Ready`: when it carries a snapshot, install its data (the dump the
///    transport received, [`RocksStore::install_snapshot_file`]) and then its
///    metadata with
///    [`apply_snapshot`](Self::apply_snapshot); then
///    [`persist`](Self::persist) its entries and hard state (one synced write).
/// 3. When the `LightReady` from `advance` carries a commit index,
///    [`set_hard_state_commit`](Self::set_hard_state_commit).
/// 4. After applying a conf change, [`set_conf_state`](Self::set_conf_state).
/// 5. To bound the log, [`compact`](Self::compact) up to at most the applied index.
#[derive(Clone)]
pub struct RaftLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read();
        f.debug_struct("RaftLog")
            .field("first_index", &state.first_index())
            .field("last_index", &state.last_index)
            .field("snapshot_term", &state.snapshot_term)
            .field("hard_state", &state.hard_state)
            .field("conf_state", &state.conf_state)
            .finish_non_exhaustive()
    }
}

/// The key of the entry at `index`.
fn entry_key(index: u64) -> [u8; ENTRY_KEY_LEN] {
    let mut key = [ENTRY_PREFIX; ENTRY_KEY_LEN];
    if let Some(tail) = key.get_mut(1..) {
        tail.copy_from_slice(&index.to_be_bytes());
    }
    key
}

fn corrupt(what: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { what, reason }
}

/// The index of an entry key.
fn decode_entry_key(key: &[u8]) -> Result<u64, StoreError> {
    match key.split_first() {
        Some((&ENTRY_PREFIX, index)) => {
            let bytes: [u8; 8] = index.try_into().map_err(|_| {
                corrupt(
                    "raft entry key",
                    format!("{} bytes, want {ENTRY_KEY_LEN}", key.len()),
                )
            })?;
            Ok(u64::from_be_bytes(bytes))
        }
        _ => Err(corrupt(
            "raft entry key",
            format!("key {key:02x?} is not an entry key"),
        )),
    }
}

fn encode<M: protobuf::Message>(what: &'static str, message: &M) -> LogResult<Vec<u8>> {
    message
        .write_to_bytes()
        .map_err(|source| RaftLogError::Encode { what, source })
}

fn decode<M: protobuf::Message>(what: &'static str, raw: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(raw).map_err(|e| corrupt(what, e.to_string()))
}

/// Decodes the entry stored under `index`, checking that it says the same index.
fn decode_entry(index: u64, raw: &[u8]) -> Result<Entry, StoreError> {
    let entry: Entry = decode("raft entry", raw)?;
    if entry.index != index {
        return Err(corrupt(
            "raft entry",
            format!(
                "entry stored under index {index} says index {}",
                entry.index
            ),
        ));
    }
    Ok(entry)
}

fn compaction_meta(index: u64, term: u64) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        ..SnapshotMetadata::default()
    }
}

/// Options for reads bounded to the entry keys.
fn entry_read_options(upper: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(entry_key(0).to_vec());
    opts.set_iterate_upper_bound(upper.to_vec());
    opts
}

impl RaftLog {
    /// Opens the log in `store`'s database and loads its state. A log never written
    /// is fresh: first index 1, last index 0, default `HardState` and `ConfState`.
    ///
    /// # Errors
    /// [`RaftLogError::Store`] with [`StoreError::Corrupt`] when a stored message does
    /// not decode or the entry rows break the log's invariant (a hole at the start,
    /// a key of the wrong shape), or with [`StoreError::Backend`] when RocksDB fails.
    pub fn open(store: &RocksStore) -> LogResult<RaftLog> {
        let db = Arc::clone(store.db());
        let raft_cf = cf(&db, CF_RAFT)?;
        let get = |key: &[u8]| {
            db.get_cf(raft_cf, key)
                .map_err(|e| backend("read raft state", e))
        };
        let hard_state: HardState = match get(HARD_STATE_KEY)? {
            Some(raw) => decode("raft hard state", &raw)?,
            None => HardState::default(),
        };
        let conf_state: ConfState = match get(CONF_STATE_KEY)? {
            Some(raw) => decode("raft conf state", &raw)?,
            None => ConfState::default(),
        };
        let snapshot_meta: SnapshotMetadata = match get(SNAPSHOT_META_KEY)? {
            Some(raw) => decode("raft snapshot metadata", &raw)?,
            None => SnapshotMetadata::default(),
        };
        let mut state = State {
            last_index: snapshot_meta.index,
            snapshot_index: snapshot_meta.index,
            snapshot_term: snapshot_meta.term,
            hard_state,
            conf_state,
        };

        {
            let mut iter = db.raw_iterator_cf_opt(raft_cf, entry_read_options(ENTRIES_END));
            iter.seek_to_first();
            if let Some(key) = iter.key() {
                let first = decode_entry_key(key)?;
                if first != state.first_index() {
                    return Err(corrupt(
                        "raft log",
                        format!(
                            "first entry is {first}, but the log is compacted to {}",
                            state.snapshot_index
                        ),
                    )
                    .into());
                }
                iter.seek_to_last();
                if let Some(key) = iter.key() {
                    state.last_index = decode_entry_key(key)?;
                }
            }
            iter.status()
                .map_err(|e| backend("read raft log bounds", e))?;
        }
        Ok(RaftLog {
            inner: Arc::new(Inner {
                db,
                snapshot_out: store.snapshot_out_dir(),
                state: RwLock::new(state),
            }),
        })
    }

    /// The state machine's applied index, read from the live database.
    fn applied_index(&self) -> Result<u64, StoreError> {
        let db = &self.inner.db;
        match db
            .get_pinned_cf(cf(db, CF_META)?, APPLIED_INDEX_KEY)
            .map_err(|e| backend("read applied index for snapshot", e))?
        {
            Some(raw) => decode_applied_index(&raw),
            None => Ok(0),
        }
    }

    /// Where this log's snapshots put their checkpoints
    /// ([`RocksStore::snapshot_out_dir`]).
    pub fn snapshot_out_dir(&self) -> &std::path::Path {
        &self.inner.snapshot_out
    }

    // A panic while a lock is held cannot leave the cache half-updated: the cache
    // changes by plain assignments after the RocksDB write, so a poisoned lock's
    // state is still consistent with the disk, and is used as is.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn raft_cf(&self) -> Result<&ColumnFamily, StoreError> {
        cf(&self.inner.db, CF_RAFT)
    }

    fn write_synced(&self, wb: rocksdb::WriteBatch, op: &'static str) -> LogResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.inner
            .db
            .write_opt(wb, &opts)
            .map_err(|e| backend(op, e).into())
    }

    /// The index of the first entry the log can return (the compaction point + 1).
    pub fn first_index(&self) -> u64 {
        self.read().first_index()
    }

    /// The index of the last entry, or of the compaction point when the log has no
    /// entries.
    pub fn last_index(&self) -> u64 {
        self.read().last_index
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    /// The persisted conf state.
    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }

    /// Whether the log has never been written: no entries, no hard state, no
    /// snapshot and an empty conf state. The node must [`initialize`](Self::initialize)
    /// such a log before starting Raft on it.
    pub fn is_fresh(&self) -> bool {
        self.read().is_fresh()
    }

    /// Sets the initial conf state of a fresh log (a static cluster's voters), synced.
    ///
    /// # Errors
    /// [`RaftLogError::AlreadyInitialized`] unless [`is_fresh`](Self::is_fresh);
    /// [`RaftLogError::Store`] when the write fails.
    pub fn initialize(&self, conf_state: &ConfState) -> LogResult<()> {
        let mut state = self.write();
        if !state.is_fresh() {
            return Err(RaftLogError::AlreadyInitialized);
        }
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(
            self.raft_cf()?,
            CONF_STATE_KEY,
            encode("conf state", conf_state)?,
        );
        self.write_synced(wb, "initialize raft log")?;
        state.conf_state = conf_state.clone();
        Ok(())
    }

    /// The one synced write of a `Ready`: appends `entries` and stores `hard_state`
    /// (when given) in one RocksDB write batch.
    ///
    /// As in `MemStorageCore::append`, entries already in the log from the first new
    /// index on are replaced: the new entries overwrite theirs, and any old entry
    /// past the last new one is deleted (a conflicting suffix from an old leader).
    /// An empty `entries` with `None` writes nothing.
    ///
    /// # Errors
    /// [`RaftLogError::NotConsecutive`] when `entries` skip or repeat an index;
    /// [`RaftLogError::AppendBelowCompacted`] when the first new index is below
    /// [`first_index`](Self::first_index); [`RaftLogError::AppendGap`] when it is
    /// above [`last_index`](Self::last_index) + 1; [`RaftLogError::Store`] when the
    /// write fails. On error nothing is written and the log is unchanged.
    pub fn persist(&self, entries: &[Entry], hard_state: Option<&HardState>) -> LogResult<()> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        for pair in entries.windows(2) {
            if let [previous, next] = pair
                && previous.index.checked_add(1) != Some(next.index)
            {
                return Err(RaftLogError::NotConsecutive {
                    previous: previous.index,
                    found: next.index,
                });
            }
        }
        let mut state = self.write();
        let raft_cf = self.raft_cf()?;
        let mut wb = rocksdb::WriteBatch::default();
        let mut last_index = state.last_index;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index < state.first_index() {
                return Err(RaftLogError::AppendBelowCompacted {
                    first_new: first.index,
                    first_index: state.first_index(),
                });
            }
            if first.index > state.last_index.saturating_add(1) {
                return Err(RaftLogError::AppendGap {
                    first_new: first.index,
                    last_index: state.last_index,
                });
            }
            if last.index < state.last_index {
                // No entry exists past `state.last_index`, so deleting up to the end
                // of the entry keys removes exactly the old suffix.
                wb.delete_range_cf(raft_cf, &entry_key(last.index + 1)[..], ENTRIES_END);
            }
            for entry in entries {
                wb.put_cf(raft_cf, entry_key(entry.index), encode("entry", entry)?);
            }
            last_index = last.index;
        }
        if let Some(hs) = hard_state {
            wb.put_cf(raft_cf, HARD_STATE_KEY, encode("hard state", hs)?);
        }
        // Fail point: a Ready's entries and hard state are about to be written.
        // `return` makes the synced write fail as a RocksDB error would.
        fail_point!("raftlog::persist", |_| Err(RaftLogError::Store(
            crate::injected("persist raft entries", "raftlog::persist")
        )));
        self.write_synced(wb, "persist raft entries")?;
        state.last_index = last_index;
        if let Some(hs) = hard_state {
            state.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Stores a new commit index in the hard state, keeping its term and vote, synced.
    /// This is for the commit index a `LightReady` carries; a full `Ready`'s hard
    /// state goes through [`persist`](Self::persist). Like raft-rs's own examples
    /// (`mut_hard_state().set_commit`), it does not check the index against the log.
    ///
    /// # Errors
    /// [`RaftLogError::Store`] when the write fails; the cached hard state is then
    /// unchanged.
    pub fn set_hard_state_commit(&self, commit: u64) -> LogResult<()> {
        let mut state = self.write();
        let mut hs = state.hard_state.clone();
        hs.commit = commit;
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.raft_cf()?, HARD_STATE_KEY, encode("hard state", &hs)?);
        self.write_synced(wb, "persist raft commit index")?;
        state.hard_state = hs;
        Ok(())
    }

    /// Stores the conf state (after a conf change is applied), synced.
    ///
    /// # Errors
    /// [`RaftLogError::Store`] when the write fails.
    pub fn set_conf_state(&self, conf_state: &ConfState) -> LogResult<()> {
        let mut state = self.write();
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(
            self.raft_cf()?,
            CONF_STATE_KEY,
            encode("conf state", conf_state)?,
        );
        self.write_synced(wb, "persist raft conf state")?;
        state.conf_state = conf_state.clone();
        Ok(())
    }

    /// Records an installed snapshot's metadata: discards the whole log, makes
    /// `meta.index + 1` the first index (and `meta.index` the last), remembers
    /// `(meta.index, meta.term)` for `term`, takes the conf state from `meta`, and
    /// raises the hard state's commit and term to at least the snapshot's. One synced
    /// write batch.
    ///
    /// Install the snapshot's data with [`RocksStore::install_snapshot`] first, so a
    /// crash between the two leaves a store that is ahead of its log (Raft sends the
    /// snapshot again), never a log that claims state the store lacks.
    ///
    /// # Errors
    /// [`RaftLogError::SnapshotOutOfDate`] when `meta.index` is not above the index
    /// the log is already compacted to (as `MemStorageCore`, which refuses an index
    /// below its first index); [`RaftLogError::Store`] when the write fails.
    pub fn apply_snapshot(&self, meta: &SnapshotMetadata) -> LogResult<()> {
        let mut state = self.write();
        if meta.index <= state.snapshot_index {
            return Err(RaftLogError::SnapshotOutOfDate {
                index: meta.index,
                snapshot_index: state.snapshot_index,
            });
        }
        let mut hs = state.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let conf_state = meta.get_conf_state().clone();
        let raft_cf = self.raft_cf()?;
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(raft_cf, &entry_key(0)[..], ENTRIES_END);
        wb.put_cf(
            raft_cf,
            SNAPSHOT_META_KEY,
            encode("snapshot metadata", &compaction_meta(meta.index, meta.term))?,
        );
        wb.put_cf(raft_cf, CONF_STATE_KEY, encode("conf state", &conf_state)?);
        wb.put_cf(raft_cf, HARD_STATE_KEY, encode("hard state", &hs)?);
        self.write_synced(wb, "apply raft snapshot")?;
        state.snapshot_index = meta.index;
        state.snapshot_term = meta.term;
        state.last_index = meta.index;
        state.conf_state = conf_state;
        state.hard_state = hs;
        Ok(())
    }

    /// Discards every entry below `compact_index` (a `delete_range`), remembering the
    /// index and term of entry `compact_index - 1` so `term` still answers for it. A
    /// `compact_index` at or below [`first_index`](Self::first_index) does nothing.
    ///
    /// The caller must not compact past the state machine's applied index: a
    /// snapshot names the applied entry's term, which must still be known.
    ///
    /// # Errors
    /// [`RaftLogError::CompactBeyondLog`] when `compact_index` is above
    /// [`last_index`](Self::last_index) + 1; [`RaftLogError::Store`] when reading
    /// the term or the write fails.
    pub fn compact(&self, compact_index: u64) -> LogResult<()> {
        let mut state = self.write();
        if compact_index <= state.first_index() {
            return Ok(());
        }
        let new_snapshot_index = compact_index - 1;
        if new_snapshot_index > state.last_index {
            return Err(RaftLogError::CompactBeyondLog {
                compact_index,
                last_index: state.last_index,
            });
        }
        let term = self.entry_term(new_snapshot_index)?;
        let raft_cf = self.raft_cf()?;
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            raft_cf,
            &entry_key(state.first_index())[..],
            &entry_key(compact_index)[..],
        );
        wb.put_cf(
            raft_cf,
            SNAPSHOT_META_KEY,
            encode(
                "snapshot metadata",
                &compaction_meta(new_snapshot_index, term),
            )?,
        );
        self.write_synced(wb, "compact raft log")?;
        state.snapshot_index = new_snapshot_index;
        state.snapshot_term = term;
        Ok(())
    }

    /// Reads the entry at `index`, which must be within the log's bounds.
    fn read_entry(&self, index: u64) -> Result<Entry, StoreError> {
        let raw = self
            .inner
            .db
            .get_pinned_cf(self.raft_cf()?, entry_key(index))
            .map_err(|e| backend("read raft entry", e))?
            .ok_or_else(|| {
                corrupt(
                    "raft log",
                    format!("entry {index} is missing inside the log"),
                )
            })?;
        decode_entry(index, &raw)
    }

    fn entry_term(&self, index: u64) -> Result<u64, StoreError> {
        Ok(self.read_entry(index)?.term)
    }

    /// `term` against a locked state, as `raft::Storage::term` specifies.
    fn term_in(&self, state: &State, index: u64) -> raft::Result<u64> {
        if index == state.snapshot_index {
            return Ok(state.snapshot_term);
        }
        if index < state.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > state.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry_term(index)
            .map_err(|e| raft::Error::from(RaftLogError::Store(e)))
    }

    /// Reads entries `[low, high)` from RocksDB, stopping once their size is past
    /// `max_size` (the last one read is then trimmed by `limit_size`).
    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> LogResult<Vec<Entry>> {
        let limit = max_size.filter(|&m| m != raft::NO_LIMIT);
        let upper = entry_key(high);
        let mut iter = self
            .inner
            .db
            .raw_iterator_cf_opt(self.raft_cf()?, entry_read_options(&upper));
        iter.seek(entry_key(low));
        let mut entries = Vec::new();
        let mut size: u64 = 0;
        let mut expected = low;
        while expected < high {
            let Some((key, raw)) = iter.item() else {
                break;
            };
            let index = decode_entry_key(key)?;
            if index != expected {
                break;
            }
            entries.push(decode_entry(index, raw)?);
            size = size.saturating_add(raw.len() as u64);
            expected += 1;
            if limit.is_some_and(|limit| size > limit) {
                break;
            }
            iter.next();
        }
        iter.status().map_err(|e| backend("read raft entries", e))?;
        let stopped_for_size = limit.is_some_and(|limit| size > limit);
        if expected < high && !stopped_for_size {
            return Err(corrupt(
                "raft log",
                format!("entry {expected} is missing inside the log"),
            )
            .into());
        }
        raft::util::limit_size(&mut entries, max_size);
        Ok(entries)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.read();
        Ok(RaftState::new(
            state.hard_state.clone(),
            state.conf_state.clone(),
        ))
    }

    /// Entries `[low, high)`, at least one when any exist, then as many as fit in
    /// `max_size` bytes (`raft::util::limit_size`).
    ///
    /// `Compacted` when `low` is below the first index; `Unavailable` (where
    /// `MemStorage` panics) when `high` is past the last index + 1.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let state = self.read();
        if low < state.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > state.last_index.saturating_add(1) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low > high {
            return Err(RaftLogError::InvertedRange { low, high }.into());
        }
        if low == high {
            return Ok(Vec::new());
        }
        Ok(self.read_entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let state = self.read();
        self.term_in(&state, idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self))
    }

    /// A snapshot of the state machine: its data is a dump of the `data`, `meta` and
    /// `registry` column families taken from one RocksDB snapshot; its index is the
    /// applied index read from that same RocksDB snapshot, its term that entry's term,
    /// its conf state the log's current one.
    ///
    /// `SnapshotTemporarilyUnavailable` when the applied index is below
    /// `request_index`, is 0 (raft-rs refuses an empty snapshot), or is past the
    /// log's last index (a snapshot's data is installed but its metadata not yet
    /// recorded); raft asks again later.
    /// A snapshot whose data is an unsealed [`SnapshotDescriptor`] naming a new
    /// checkpoint of the database (see [`crate::stream`]); the transport streams
    /// the dump from it. The applied index is read from the live database just
    /// before the checkpoint: raft-rs calls this on the driver's thread, the only
    /// one that applies entries, so nothing is applied in between (and the
    /// streaming side checks the checkpoint's applied index against it).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let applied = self.applied_index().map_err(RaftLogError::Store)?;
        if applied == 0 || applied < request_index {
            return Err(unavailable());
        }
        let state = self.read();
        let term = match self.term_in(&state, applied) {
            Ok(term) => term,
            Err(raft::Error::Store(StorageError::Unavailable)) => return Err(unavailable()),
            Err(raft::Error::Store(StorageError::Compacted)) => {
                return Err(RaftLogError::AppliedCompacted {
                    applied,
                    first_index: state.first_index(),
                }
                .into());
            }
            Err(other) => return Err(other),
        };
        drop(state);
        let id = stream::create_checkpoint(&self.inner.db, &self.inner.snapshot_out)
            .map_err(RaftLogError::Store)?;
        let descriptor = SnapshotDescriptor {
            id,
            applied_index: applied,
            total_bytes: 0,
            chunk_count: 0,
            digest: [0; 32],
        };
        let state = self.read();
        let mut snapshot = Snapshot {
            data: descriptor.encode().into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(state.conf_state.clone());
        Ok(snapshot)
    }
}

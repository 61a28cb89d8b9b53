//! [`RocksStore`]: the RocksDB [`KvStore`].
//!
//! One RocksDB database per node, with one column family per keyspace so that no
//! user key can ever reach another keyspace's rows:
//!
//! | column family | holds |
//! |---------------|-------|
//! | `data`        | MVCC user values, keyed by [`mvcc::physical_key`] |
//! | `meta`        | the applied index (`applied_index` → u64 BE) |
//! | `registry`    | writer-registry rows, keyed by the 27-byte registry key |
//! | `raft`        | the Raft log: entries, hard state, conf state, compaction point (see [`RaftLog`](crate::RaftLog)) |
//!
//! `data`, `meta` and `registry` are the state machine: a Raft snapshot carries
//! exactly those three (see [`RocksStore::install_snapshot`]). `raft` is the node's
//! own log and is never part of a snapshot.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteOptions};

use crate::dump;
use crate::mvcc::{self, StoredValue, Version};
use crate::{BatchOp, KvStore, Result, StoreError, WriteBatch};

pub(crate) const CF_DATA: &str = "data";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_REGISTRY: &str = "registry";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const COLUMN_FAMILIES: [&str; 4] = [CF_DATA, CF_META, CF_REGISTRY, CF_RAFT];

pub(crate) const APPLIED_INDEX_KEY: &[u8] = b"applied_index";

/// Decodes the stored applied index (u64 BE).
pub(crate) fn decode_applied_index(raw: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| StoreError::Corrupt {
        what: "applied index",
        reason: format!("{} bytes, want 8", raw.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The smallest key greater than `key` (`key ‖ 0x00`).
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// How a [`RocksStore`] is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksStoreOptions {
    /// Sync every commit to stable storage before it returns (default `true`).
    ///
    /// Turning this off makes commits faster and a crash able to lose acknowledged
    /// writes; the writer-registry glue refuses such a store.
    pub sync_writes: bool,
    /// Create the database when it does not exist (default `true`).
    pub create_if_missing: bool,
}

impl Default for RocksStoreOptions {
    fn default() -> Self {
        RocksStoreOptions {
            sync_writes: true,
            create_if_missing: true,
        }
    }
}

/// A [`KvStore`] on RocksDB.
pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
    options: RocksStoreOptions,
    /// Held by a maintenance step (GC, rewrite) from its read to its write, and by
    /// a snapshot install, which moves the generation it guards (see [`crate::gc`]).
    maintenance: Mutex<u64>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

pub(crate) fn backend(op: &'static str, e: rocksdb::Error) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| StoreError::Corrupt {
        what: "database",
        reason: format!("column family {name} is missing"),
    })
}

impl RocksStore {
    /// Opens (or creates) the database at `path`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when RocksDB cannot open it, for example because another
    /// process holds its lock; [`StoreError::Corrupt`] when a column family is missing.
    pub fn open(path: impl AsRef<Path>, options: RocksStoreOptions) -> Result<RocksStore> {
        let path = path.as_ref().to_path_buf();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(options.create_if_missing);
        db_opts.create_missing_column_families(true);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(|e| backend("open", e))?;
        for name in COLUMN_FAMILIES {
            cf(&db, name)?;
        }
        Ok(RocksStore {
            db: Arc::new(db),
            path,
            options,
            maintenance: Mutex::new(0),
        })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &RocksStoreOptions {
        &self.options
    }

    /// Flushes every column family's memtable to SST files (for tests and tools that
    /// inspect the files on disk).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the flush fails.
    pub fn flush(&self) -> Result<()> {
        for name in COLUMN_FAMILIES {
            self.db
                .flush_cf(cf(&self.db, name)?)
                .map_err(|e| backend("flush", e))?;
        }
        Ok(())
    }

    /// Replaces the whole state machine (the `data`, `meta` and `registry` column
    /// families) with a snapshot dump taken by [`RaftLog`](crate::RaftLog)'s
    /// `raft::Storage::snapshot`; the dump's applied index becomes the store's.
    ///
    /// The dump is decoded and validated in full first, so bad bytes change nothing.
    /// Then every existing row of the three column families is deleted (one
    /// `delete_range` each) and the dump's rows are put, in one synced RocksDB write
    /// batch: after a crash the store holds either its old state or the snapshot's,
    /// never a mix. The Raft log (`raft` column family) is untouched; record the
    /// snapshot there with [`RaftLog::apply_snapshot`](crate::RaftLog::apply_snapshot)
    /// after this returns.
    ///
    /// The caller must not commit to the store while this runs (the apply loop is
    /// the only writer and is the one installing the snapshot).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when `data` is not a well-formed dump (wrong magic or
    /// version, cut short at any offset, trailing bytes, no applied index);
    /// [`StoreError::Backend`] when RocksDB fails.
    pub fn install_snapshot(&self, data: &[u8]) -> Result<()> {
        let decoded = dump::decode(data)?;
        // No maintenance step runs across the install, and every pass restarts.
        let mut generation = self.maintenance_guard();
        *generation = generation.wrapping_add(1);
        let mut wb = rocksdb::WriteBatch::default();
        for (_, name) in dump::DUMPED_CFS {
            let handle = cf(&self.db, name)?;
            let mut iter = self.db.raw_iterator_cf(handle);
            iter.seek_to_last();
            match iter.key() {
                // Every key is >= the empty key and < last ‖ 0x00.
                Some(last) => wb.delete_range_cf(handle, &[][..], &successor(last)[..]),
                None => iter
                    .status()
                    .map_err(|e| backend("read rows to replace", e))?,
            }
        }
        for record in &decoded.records {
            wb.put_cf(cf(&self.db, record.cf)?, record.key, record.value);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(wb, &opts)
            .map_err(|e| backend("install snapshot", e))
    }

    /// The maintenance lock (a poisoned lock still guards: the generation it holds
    /// is a plain counter).
    pub(crate) fn maintenance_guard(&self) -> MutexGuard<'_, u64> {
        self.maintenance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    fn write_options(&self) -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.options.sync_writes);
        opts
    }
}

impl KvStore for RocksStore {
    fn install_snapshot(&self, dump: &[u8]) -> Result<()> {
        RocksStore::install_snapshot(self, dump)
    }

    fn get_at(&self, key: &[u8], at: u64) -> Result<Option<Version>> {
        let data = cf(&self.db, CF_DATA)?;
        let prefix = mvcc::encode_user_key(key);
        let mut iter = self.db.raw_iterator_cf(data);
        // Versions sort newest first (!version), so the first entry at or after
        // key ‖ !at is the newest version <= at, if it still belongs to `key`.
        iter.seek(mvcc::physical_key(key, at));
        let Some((found, value)) = iter.item() else {
            iter.status().map_err(|e| backend("read value", e))?;
            return Ok(None);
        };
        if !found.starts_with(&prefix) {
            return Ok(None);
        }
        let (_, commit_version) = mvcc::decode_physical_key(found)?;
        Ok(Some(Version {
            commit_version,
            value: StoredValue::decode(value)?,
        }))
    }

    fn applied_index(&self) -> Result<u64> {
        let meta = cf(&self.db, CF_META)?;
        let Some(raw) = self
            .db
            .get_pinned_cf(meta, APPLIED_INDEX_KEY)
            .map_err(|e| backend("read applied index", e))?
        else {
            return Ok(0);
        };
        decode_applied_index(&raw)
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let meta = cf(&self.db, CF_META)?;
        self.db
            .get_cf(meta, key)
            .map_err(|e| backend("read metadata", e))
    }

    fn scan_latest(&self, visit: &mut dyn FnMut(&[u8], &Version) -> bool) -> Result<()> {
        let data = cf(&self.db, CF_DATA)?;
        // The iterator reads one implicit snapshot of the database.
        let mut iter = self.db.raw_iterator_cf(data);
        iter.seek_to_first();
        let mut previous: Option<Vec<u8>> = None;
        while let Some((physical, raw)) = iter.item() {
            let (user_key, commit_version) = mvcc::decode_physical_key(physical)?;
            // Versions of one key sort newest first: the first one seen is the newest.
            if previous.as_deref() != Some(user_key.as_slice()) {
                let version = Version {
                    commit_version,
                    value: StoredValue::decode(raw)?,
                };
                if !visit(&user_key, &version) {
                    return Ok(());
                }
                previous = Some(user_key);
            }
            iter.next();
        }
        iter.status().map_err(|e| backend("scan values", e))
    }

    fn scan_versions(&self, visit: &mut crate::VersionVisitor<'_>) -> Result<u64> {
        // One explicit snapshot, so that the applied index and every version come
        // from the same point in the apply order.
        let snapshot = self.db.snapshot();
        let applied = match snapshot
            .get_pinned_cf(cf(&self.db, CF_META)?, APPLIED_INDEX_KEY)
            .map_err(|e| backend("read applied index", e))?
        {
            Some(raw) => decode_applied_index(&raw)?,
            None => 0,
        };
        let mut iter = snapshot.raw_iterator_cf(cf(&self.db, CF_DATA)?);
        iter.seek_to_first();
        while let Some((physical, raw)) = iter.item() {
            let (header, body) = mvcc::ValueHeader::decode(raw)?;
            if !visit(physical, &header, body) {
                return Ok(applied);
            }
            iter.next();
        }
        iter.status().map_err(|e| backend("scan versions", e))?;
        Ok(applied)
    }

    fn commit(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let data = cf(&self.db, CF_DATA)?;
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            let BatchOp::Put {
                key,
                commit_version,
                value,
            } = op;
            wb.put_cf(
                data,
                mvcc::physical_key(key, *commit_version),
                value.encode(),
            );
        }
        for (key, value) in batch.meta() {
            wb.put_cf(cf(&self.db, CF_META)?, key, value);
        }
        if let Some(index) = batch.applied_index() {
            wb.put_cf(
                cf(&self.db, CF_META)?,
                APPLIED_INDEX_KEY,
                index.to_be_bytes(),
            );
        }
        // Fail point: the state machine's batch (user values, metadata rows and the
        // applied index) is about to be written. `return` makes the write fail as
        // a RocksDB error would.
        fail_point!("store::commit", |_| Err(crate::injected(
            "commit batch",
            "store::commit"
        )));
        self.db
            .write_opt(wb, &self.write_options())
            .map_err(|e| backend("commit batch", e))
    }
}

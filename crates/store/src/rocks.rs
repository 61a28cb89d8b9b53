//! [`RocksStore`]: the RocksDB [`KvStore`].
//!
//! One RocksDB database per node, with one column family per keyspace so that no
//! user key can ever reach another keyspace's rows:
//!
//! | column family | holds |
//! |---------------|-------|
//! | `data`        | MVCC user values, keyed by [`mvcc::physical_key`] |
//! | `meta`        | the applied index (`applied_index` → u64 BE), metadata rows, and while a snapshot installs from a file, `snapshot_installing` → index u64 BE |
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
/// The `meta` row that marks an install from a file in progress (index u64 BE).
pub(crate) const SNAPSHOT_INSTALLING_KEY: &[u8] = b"snapshot_installing";
/// The directory, inside the database's, of outgoing snapshots' checkpoints.
const SNAPSHOT_OUT_DIR: &str = "snapshot-out";
/// About how many bytes of rows one write batch of an install from a file holds.
pub const INSTALL_BATCH_BYTES: usize = 4 << 20;

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
        // Checkpoints of snapshots a previous run was sending are of no use now.
        match std::fs::remove_dir_all(path.join(SNAPSHOT_OUT_DIR)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Backend {
                    op: "remove old snapshot checkpoints",
                    source: Box::new(e),
                });
            }
            _ => {}
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
        let mut wb = self.delete_state_batch()?;
        for record in &decoded.records {
            wb.put_cf(cf(&self.db, record.cf)?, record.key, record.value);
        }
        self.write_synced(wb, "install snapshot")
    }

    /// Replaces the whole state machine with the dump in the file at `path` (as
    /// [`install_snapshot`](Self::install_snapshot) does for one in memory), with
    /// memory bounded by [`INSTALL_BATCH_BYTES`] and the largest row, whatever the
    /// dump's size. Returns the applied index installed.
    ///
    /// 1. A verifying pass reads the whole file and checks everything the in-memory
    ///    decoder checks (checksum included): bad bytes change nothing.
    /// 2. One synced batch deletes every row of the three column families and puts
    ///    the dump's `meta` and `registry` rows (a few: key state, writer registry;
    ///    a pass over the file that skips the `data` rows) with an install marker
    ///    (`snapshot_installing` → index), but not the applied index.
    /// 3. The `data` rows follow (a second pass) in batches of about
    ///    [`INSTALL_BATCH_BYTES`].
    /// 4. One synced batch puts the applied index and deletes the marker.
    ///
    /// A crash between 2 and 4 leaves a store with no applied index (0) and the
    /// marker: not a completed install. The caller keeps the file until this
    /// returns and installs it again at the next start (every step is idempotent);
    /// [`snapshot_install_marker`](Self::snapshot_install_marker) tells a store
    /// left so. Unlike the in-memory install, readers of the store can see the
    /// rows of an install in progress; the node reads only at an applied index,
    /// which an install in progress does not have.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the file is not a well-formed dump (nothing is
    /// written then), [`StoreError::Backend`] when RocksDB or reading the file
    /// fails.
    pub fn install_snapshot_file(&self, path: &Path) -> Result<u64> {
        let open = || {
            std::fs::File::open(path).map_err(|e| StoreError::Backend {
                op: "open snapshot file",
                source: Box::new(e),
            })
        };
        let file = open()?;
        let total = file
            .metadata()
            .map_err(|e| StoreError::Backend {
                op: "stat snapshot file",
                source: Box::new(e),
            })?
            .len();
        let verified = dump::verify(std::io::BufReader::new(file), total)?;
        // No maintenance step (GC, rewrite) runs across the install, and every
        // pass under way restarts (`gc::Cursor`).
        let mut generation = self.maintenance_guard();
        *generation = generation.wrapping_add(1);
        let seek = |offset: u64| -> Result<std::io::BufReader<std::fs::File>> {
            use std::io::Seek;
            let mut file = open()?;
            file.seek(std::io::SeekFrom::Start(offset))
                .map_err(|e| StoreError::Backend {
                    op: "seek snapshot file",
                    source: Box::new(e),
                })?;
            Ok(std::io::BufReader::with_capacity(1 << 20, file))
        };
        let (mut key, mut value) = (Vec::new(), Vec::new());

        // 2. Old rows out, the dump's metadata in, with the marker.
        let mut wb = self.delete_state_batch()?;
        let meta = cf(&self.db, CF_META)?;
        wb.put_cf(
            meta,
            SNAPSHOT_INSTALLING_KEY,
            verified.applied_index.to_be_bytes(),
        );
        let rows = || -> Result<_> {
            Ok(dump::StreamDecoder::resume(
                seek(dump::HEADER_LEN)?,
                dump::HEADER_LEN,
                verified.end_offset,
            ))
        };
        let mut meta_rows = rows()?;
        while let Some(name) = meta_rows.next_record(&mut key, &mut value)? {
            if name == CF_DATA || (name == CF_META && key == APPLIED_INDEX_KEY) {
                continue;
            }
            wb.put_cf(cf(&self.db, name)?, &key, &value);
        }
        self.write_synced(wb, "install snapshot metadata")?;
        // Fail point: the old rows are gone, the snapshot's metadata rows and the
        // marker are in, no data row and no applied index yet. Startup installs
        // the file again.
        fail_point!("store::install-snapshot-rows", |_| Err(crate::injected(
            "install snapshot rows",
            "store::install-snapshot-rows"
        )));

        // 3. The data rows, in bounded batches.
        let data = cf(&self.db, CF_DATA)?;
        let mut data_rows = rows()?;
        let mut wb = rocksdb::WriteBatch::default();
        while let Some(name) = data_rows.next_record(&mut key, &mut value)? {
            if name != CF_DATA {
                continue;
            }
            wb.put_cf(data, &key, &value);
            if wb.size_in_bytes() >= INSTALL_BATCH_BYTES {
                self.db
                    .write(std::mem::take(&mut wb))
                    .map_err(|e| backend("install snapshot rows", e))?;
            }
        }

        // 4. The applied index last.
        wb.put_cf(
            meta,
            APPLIED_INDEX_KEY,
            verified.applied_index.to_be_bytes(),
        );
        wb.delete_cf(meta, SNAPSHOT_INSTALLING_KEY);
        self.write_synced(wb, "install snapshot applied index")?;
        Ok(verified.applied_index)
    }

    /// The index of a snapshot whose install from a file
    /// ([`install_snapshot_file`](Self::install_snapshot_file)) began and did not
    /// finish, if any: the store then holds part of that snapshot and must not be
    /// used until the install is run again.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when RocksDB fails, [`StoreError::Corrupt`] on a
    /// malformed marker.
    pub fn snapshot_install_marker(&self) -> Result<Option<u64>> {
        self.db
            .get_pinned_cf(cf(&self.db, CF_META)?, SNAPSHOT_INSTALLING_KEY)
            .map_err(|e| backend("read snapshot install marker", e))?
            .map(|raw| decode_applied_index(&raw))
            .transpose()
    }

    /// A batch deleting every row of the state machine's column families.
    fn delete_state_batch(&self) -> Result<rocksdb::WriteBatch> {
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
        Ok(wb)
    }

    fn write_synced(&self, wb: rocksdb::WriteBatch, op: &'static str) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(|e| backend(op, e))
    }

    /// The state machine's dump, whole, in memory, with the applied index it
    /// reflects: the format [`install_snapshot`](Self::install_snapshot) takes.
    /// For tests and tools; the node streams snapshots
    /// ([`stream_checkpoint`](crate::stream_checkpoint)).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when RocksDB fails, [`StoreError::Corrupt`] on a
    /// malformed applied index or a row too large for the format.
    pub fn dump_snapshot(&self) -> Result<(u64, Vec<u8>)> {
        let dump = dump::dump_state(&self.db)?;
        Ok((dump.applied_index, dump.bytes))
    }

    /// Where [`RaftLog`](crate::RaftLog)'s `snapshot` puts the RocksDB checkpoints
    /// outgoing snapshots are streamed from: `snapshot-out/` inside the database
    /// directory (hard links need the same file system). Emptied when the store
    /// opens.
    pub fn snapshot_out_dir(&self) -> PathBuf {
        self.path.join(SNAPSHOT_OUT_DIR)
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

    fn install_snapshot_file(&self, path: &Path) -> Result<()> {
        RocksStore::install_snapshot_file(self, path).map(|_| ())
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

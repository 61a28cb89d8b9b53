//! The writer-registry glue: a durable RocksDB [`WriterRegistryStore`], built only
//! from a store that can back it.

use std::sync::Arc;

use rocksdb::{DB, IteratorMode, WriteOptions};
use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::{RegistryStoreError, WriterRegistryStore};

use crate::rocks::{CF_REGISTRY, RocksStore, cf};

/// Why the glue refused a store at construction.
///
/// Only a [`RocksStore`] is accepted, by type: anything else does not compile.
///
/// ```compile_fail,E0308
/// use sealkv_store::{MemoryStore, RocksWriterRegistry};
/// // The in-memory test store cannot make registry rows durable.
/// let _ = RocksWriterRegistry::from_store(&MemoryStore::new());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryGlueError {
    /// The RocksDB store was opened with `sync_writes` off, so an acknowledged row
    /// could be lost in a crash.
    #[error("the writer registry needs a store opened with sync_writes on")]
    SyncDisabled,
}

/// Writer-registry rows in the `registry` column family of a [`RocksStore`]: outside
/// the user keyspace, with no MVCC versions and no expiry, every write synced.
#[derive(Clone)]
pub struct RocksWriterRegistry {
    db: Arc<DB>,
}

impl std::fmt::Debug for RocksWriterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksWriterRegistry")
            .finish_non_exhaustive()
    }
}

impl RocksWriterRegistry {
    /// Builds the registry over the database of `store`. The store is taken by
    /// type: no other [`KvStore`](crate::KvStore) can back the registry durably.
    ///
    /// # Errors
    /// [`RegistryGlueError::SyncDisabled`] for a store opened without synced
    /// writes: a wiring mistake stops the node at startup instead of inside the
    /// apply loop.
    pub fn from_store(store: &RocksStore) -> Result<RocksWriterRegistry, RegistryGlueError> {
        if !store.options().sync_writes {
            return Err(RegistryGlueError::SyncDisabled);
        }
        Ok(RocksWriterRegistry {
            db: Arc::clone(store.db()),
        })
    }
}

fn backend(
    op: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> RegistryStoreError {
    RegistryStoreError::Backend {
        op,
        source: Box::new(source),
    }
}

fn corrupt(
    key: &[u8],
    source: sealkv_encryption::registry::RegistryCodecError,
) -> RegistryStoreError {
    RegistryStoreError::Corrupt {
        key: key.to_vec(),
        source,
    }
}

impl WriterRegistryStore for RocksWriterRegistry {
    fn get_writer(&self, key: WriterKey) -> Result<Option<WriterRecord>, RegistryStoreError> {
        let cf = cf(&self.db, CF_REGISTRY).map_err(|e| backend("read row", e))?;
        let raw_key = key.encode();
        let Some(raw) = self
            .db
            .get_pinned_cf(cf, raw_key)
            .map_err(|e| backend("read row", e))?
        else {
            return Ok(None);
        };
        WriterRecord::decode(&raw)
            .map(Some)
            .map_err(|e| corrupt(&raw_key, e))
    }

    fn put_writers(&self, rows: &[(WriterKey, WriterRecord)]) -> Result<(), RegistryStoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let cf = cf(&self.db, CF_REGISTRY).map_err(|e| backend("write rows", e))?;
        let mut wb = rocksdb::WriteBatch::default();
        for (key, record) in rows {
            wb.put_cf(cf, key.encode(), record.encode());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(wb, &opts)
            .map_err(|e| backend("sync rows", e))
    }

    fn list_writers(&self) -> Result<Vec<(WriterKey, WriterRecord)>, RegistryStoreError> {
        let cf = cf(&self.db, CF_REGISTRY).map_err(|e| backend("list rows", e))?;
        let mut rows = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| backend("list rows", e))?;
            let key = WriterKey::decode(&k).map_err(|e| corrupt(&k, e))?;
            let record = WriterRecord::decode(&v).map_err(|e| corrupt(&k, e))?;
            rows.push((key, record));
        }
        Ok(rows)
    }
}

//! [`WriteBatch`]: the engine-neutral set of writes a [`KvStore`](crate::KvStore)
//! commits atomically, with the reserved-keyspace check at the door.

use sealkv_encryption::registry::is_reserved_key;

use crate::mvcc::StoredValue;
use crate::{Result, StoreError};

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Writes one version of a user key.
    Put {
        /// The user key.
        key: Vec<u8>,
        /// The version's commit version.
        commit_version: u64,
        /// The stored value (a tombstone deletes).
        value: StoredValue,
    },
}

/// Writes to commit atomically, optionally with a new applied index.
///
/// Keys under `!encryption|` are refused when they are added, so a batch that exists
/// never touches the reserved keyspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    applied_index: Option<u64>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a version of `key`.
    ///
    /// # Errors
    /// [`StoreError::ReservedKey`] when `key` is under `!encryption|`; the batch is
    /// unchanged.
    pub fn put(&mut self, key: &[u8], commit_version: u64, value: StoredValue) -> Result<()> {
        if is_reserved_key(key) {
            return Err(StoreError::ReservedKey { key: key.to_vec() });
        }
        self.ops.push(BatchOp::Put {
            key: key.to_vec(),
            commit_version,
            value,
        });
        Ok(())
    }

    /// Records `index` as the applied index, in the same atomic write as the puts.
    pub fn set_applied_index(&mut self, index: u64) {
        self.applied_index = Some(index);
    }

    /// Sets the state-machine metadata row `key` (for instance the shared
    /// encryption state) in the same atomic write. Metadata travels with snapshots.
    ///
    /// # Errors
    /// [`StoreError::ReservedKey`] for the key of the applied index, which only
    /// [`set_applied_index`](Self::set_applied_index) writes.
    pub fn put_meta(&mut self, key: &[u8], value: Vec<u8>) -> Result<()> {
        if key == crate::rocks::APPLIED_INDEX_KEY {
            return Err(StoreError::ReservedKey { key: key.to_vec() });
        }
        self.meta.push((key.to_vec(), value));
        Ok(())
    }

    /// The metadata rows this batch sets, in the order they were added.
    pub fn meta(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.meta
    }

    /// The writes, in the order they were added.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// The applied index this batch records, if any.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied_index
    }

    /// Whether the batch writes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.applied_index.is_none() && self.meta.is_empty()
    }
}

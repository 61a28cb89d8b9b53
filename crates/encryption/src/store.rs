//! The storage boundary of the writer registry: the [`WriterRegistryStore`] trait that
//! a higher layer implements (RocksDB in `sealkv-store`).

use crate::registry::{RegistryCodecError, WriterKey, WriterRecord};

/// A failure of a [`WriterRegistryStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryStoreError {
    /// A stored row does not decode: the registry is corrupt. This is never
    /// reported as a missing row.
    #[error("corrupt writer registry row at key {key:02x?}")]
    Corrupt {
        /// The raw key of the row that failed to decode.
        key: Vec<u8>,
        /// What was wrong with it.
        #[source]
        source: RegistryCodecError,
    },
    /// The backing store failed to read or to write durably.
    #[error("writer registry backend failed to {op}")]
    Backend {
        /// What the store was doing, as a verb phrase ("read row", "sync rows").
        op: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Durable storage for writer-registry rows.
///
/// This is a protocol, not just an interface; the applier relies on each point:
///
/// * [`get_writer`](Self::get_writer) returns `Ok(None)` only when no row exists. A
///   row that exists but does not decode is [`RegistryStoreError::Corrupt`]; a read
///   that failed is [`RegistryStoreError::Backend`].
/// * [`put_writers`](Self::put_writers) writes all rows atomically and returns only
///   once they are durable (synced to stable storage). The applier acknowledges an
///   entry only after this returns, so a crash can lose an unacknowledged row but never
///   an acknowledged one. Replaying the entry after such a crash is safe: the
///   registration rules treat an equal epoch as a no-op.
/// * Rows live outside any user keyspace: no MVCC versions, no expiry, and no user
///   write can reach them.
///
/// Implementations must be usable from several threads (`Send + Sync`); the applier
/// calls them from the apply loop only, one entry at a time.
pub trait WriterRegistryStore: Send + Sync {
    /// Reads the row for `key`, or `None` when there is none.
    fn get_writer(&self, key: WriterKey) -> Result<Option<WriterRecord>, RegistryStoreError>;

    /// Writes every row in `rows` atomically and durably before returning.
    fn put_writers(&self, rows: &[(WriterKey, WriterRecord)]) -> Result<(), RegistryStoreError>;

    /// Every row, in key order (dek_id, then node_id16). For status and tests.
    fn list_writers(&self) -> Result<Vec<(WriterKey, WriterRecord)>, RegistryStoreError>;
}

impl<T: WriterRegistryStore + ?Sized> WriterRegistryStore for std::sync::Arc<T> {
    fn get_writer(&self, key: WriterKey) -> Result<Option<WriterRecord>, RegistryStoreError> {
        (**self).get_writer(key)
    }

    fn put_writers(&self, rows: &[(WriterKey, WriterRecord)]) -> Result<(), RegistryStoreError> {
        (**self).put_writers(rows)
    }

    fn list_writers(&self) -> Result<Vec<(WriterKey, WriterRecord)>, RegistryStoreError> {
        (**self).list_writers()
    }
}

//! Test support for [`WriterRegistryStore`] implementations: an in-memory store and
//! the conformance suite every implementation must pass. Enabled by the `testing`
//! feature; never use the in-memory store in production (the RocksDB glue refuses it).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::registry::{WriterKey, WriterRecord};
use crate::store::{RegistryStoreError, WriterRegistryStore};

/// A writer registry held in memory. It is not durable, which is exactly why the
/// storage glue refuses to back a node with it.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    rows: Mutex<BTreeMap<WriterKey, WriterRecord>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<WriterKey, WriterRecord>> {
        // A poisoned lock only means another test thread panicked mid-insert of a
        // BTreeMap entry, which leaves the map consistent.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WriterRegistryStore for MemoryRegistry {
    fn get_writer(&self, key: WriterKey) -> Result<Option<WriterRecord>, RegistryStoreError> {
        Ok(self.rows().get(&key).copied())
    }

    fn put_writers(&self, rows: &[(WriterKey, WriterRecord)]) -> Result<(), RegistryStoreError> {
        let mut map = self.rows();
        for (key, record) in rows {
            map.insert(*key, *record);
        }
        Ok(())
    }

    fn list_writers(&self) -> Result<Vec<(WriterKey, WriterRecord)>, RegistryStoreError> {
        Ok(self.rows().iter().map(|(k, v)| (*k, *v)).collect())
    }
}

/// Runs the [`WriterRegistryStore`] conformance suite against stores made by `fresh`
/// (each call must return an empty store). Panics with the failing rule.
pub fn writer_registry_conformance<S: WriterRegistryStore>(fresh: impl Fn() -> S) {
    let key = |dek_id, node_id16| WriterKey { dek_id, node_id16 };
    let rec = |full_node_id, first, last| WriterRecord {
        full_node_id,
        first_seen_local_epoch: first,
        last_seen_local_epoch: last,
    };

    // A missing row is None, not an error.
    let s = fresh();
    assert_eq!(s.get_writer(key(1, 1)).expect("get on empty store"), None);
    assert!(s.list_writers().expect("list empty store").is_empty());

    // Put then get returns the row; a second put replaces it.
    let s = fresh();
    s.put_writers(&[(key(1, 2), rec(0x1_0002, 1, 1))])
        .expect("put one row");
    assert_eq!(
        s.get_writer(key(1, 2)).expect("get"),
        Some(rec(0x1_0002, 1, 1))
    );
    s.put_writers(&[(key(1, 2), rec(0x1_0002, 1, 5))])
        .expect("replace row");
    assert_eq!(
        s.get_writer(key(1, 2)).expect("get"),
        Some(rec(0x1_0002, 1, 5))
    );

    // Rows are keyed by (dek, node16): neighbours do not see each other.
    assert_eq!(s.get_writer(key(2, 2)).expect("get"), None);
    assert_eq!(s.get_writer(key(1, 3)).expect("get"), None);

    // A batch lands whole, and list is in (dek, node16) order, with ids that
    // contain the separator bytes '|' and '!'.
    let s = fresh();
    let batch = [
        (key(0x7c7c_7c7c, 0x2121), rec(9, 1, 1)),
        (key(2, 0xFFFF), rec(u64::MAX, 0, 0xFFFF)),
        (key(2, 0), rec(0x10000, 3, 2)),
    ];
    s.put_writers(&batch).expect("put batch");
    let listed = s.list_writers().expect("list");
    let mut want = batch.to_vec();
    want.sort_by_key(|(k, _)| *k);
    assert_eq!(listed, want);

    // An empty batch is a no-op success.
    s.put_writers(&[]).expect("empty batch");
    assert_eq!(s.list_writers().expect("list").len(), 3);
}

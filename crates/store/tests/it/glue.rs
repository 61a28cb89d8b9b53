//! The writer-registry glue: it accepts only a durable RocksDB store, conforms to the
//! WriterRegistryStore suite, keeps rows out of the user keyspace, and its rows survive
//! a reopen.

use std::sync::Arc;

use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::testing::writer_registry_conformance;
use sealkv_encryption::{RegistryStoreError, WriterRegistryStore};
use sealkv_store::{
    KvStore, MemoryStore, RegistryGlueError, RocksStore, RocksStoreOptions, RocksWriterRegistry,
};

fn open(dir: &std::path::Path) -> Arc<dyn KvStore> {
    Arc::new(RocksStore::open(dir, RocksStoreOptions::default()).expect("open"))
}

#[test]
fn glue_refuses_the_memory_store() {
    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let err = RocksWriterRegistry::from_store(store.as_ref()).expect_err("memory store");
    assert_eq!(err, RegistryGlueError::NotDurable { kind: "memory" });
    assert!(err.to_string().contains("memory"), "{err}");
}

/// Any other implementation is refused too, not just the one we know of.
#[test]
fn glue_refuses_an_unknown_store() {
    struct Other(MemoryStore);
    impl KvStore for Other {
        fn kind(&self) -> &'static str {
            "other"
        }
        fn get_at(
            &self,
            key: &[u8],
            at: u64,
        ) -> sealkv_store::Result<Option<sealkv_store::mvcc::Version>> {
            self.0.get_at(key, at)
        }
        fn applied_index(&self) -> sealkv_store::Result<u64> {
            self.0.applied_index()
        }
        fn get_meta(&self, key: &[u8]) -> sealkv_store::Result<Option<Vec<u8>>> {
            self.0.get_meta(key)
        }
        fn commit(&self, batch: sealkv_store::WriteBatch) -> sealkv_store::Result<()> {
            self.0.commit(batch)
        }
        fn scan_latest(
            &self,
            visit: &mut dyn FnMut(&[u8], &sealkv_store::mvcc::Version) -> bool,
        ) -> sealkv_store::Result<()> {
            self.0.scan_latest(visit)
        }
    }
    let err = RocksWriterRegistry::from_store(&Other(MemoryStore::new())).expect_err("other store");
    assert_eq!(err, RegistryGlueError::NotDurable { kind: "other" });
}

#[test]
fn glue_refuses_a_store_without_synced_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = RocksStoreOptions {
        sync_writes: false,
        ..RocksStoreOptions::default()
    };
    let store = RocksStore::open(dir.path(), options).expect("open");
    assert_eq!(
        RocksWriterRegistry::from_store(&store).expect_err("unsynced"),
        RegistryGlueError::SyncDisabled
    );
}

#[test]
fn rocks_registry_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    writer_registry_conformance(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = RocksWriterRegistry::from_store(open(dir.path()).as_ref()).expect("glue");
        dirs.borrow_mut().push(dir);
        registry
    });
}

/// Rows survive a reopen and never appear as user keys.
#[test]
fn rows_are_durable_and_outside_the_user_keyspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = WriterKey {
        dek_id: 1,
        node_id16: 2,
    };
    let record = WriterRecord {
        full_node_id: 2,
        first_seen_local_epoch: 1,
        last_seen_local_epoch: 3,
    };
    {
        let store = open(dir.path());
        let registry = RocksWriterRegistry::from_store(store.as_ref()).expect("glue");
        registry.put_writers(&[(key, record)]).expect("put");
        assert_eq!(
            store.get_at(&key.encode(), u64::MAX).expect("user get"),
            None
        );
    }
    let store = open(dir.path());
    let registry = RocksWriterRegistry::from_store(store.as_ref()).expect("glue");
    assert_eq!(registry.get_writer(key).expect("get"), Some(record));
}

/// A stored row of the wrong length is corruption, never "no row".
#[test]
fn corrupt_row_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = WriterKey {
        dek_id: 1,
        node_id16: 2,
    };
    // Create the database with every column family, then write the bad row raw.
    drop(open(dir.path()));
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&options, dir.path(), ["data", "meta", "registry", "raft"])
            .expect("raw open");
        let cf = db.cf_handle("registry").expect("registry cf");
        db.put_cf(cf, key.encode(), [0u8; 11]).expect("raw put");
    }
    let registry = RocksWriterRegistry::from_store(open(dir.path()).as_ref()).expect("glue");
    let err = registry.get_writer(key).expect_err("corrupt");
    assert!(matches!(err, RegistryStoreError::Corrupt { .. }), "{err:?}");
    assert!(matches!(
        registry.list_writers(),
        Err(RegistryStoreError::Corrupt { .. })
    ));
}

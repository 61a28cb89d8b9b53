//! The writer-registry glue: it takes a RocksDB store by type (a `compile_fail` doc
//! test on `RegistryGlueError` shows the in-memory store is not accepted) and
//! refuses one without synced writes, conforms to the
//! WriterRegistryStore suite, keeps rows out of the user keyspace, and its rows survive
//! a reopen.

use std::sync::Arc;

use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::testing::writer_registry_conformance;
use sealkv_encryption::{RegistryStoreError, WriterRegistryStore};
use sealkv_store::{
    KvStore, RegistryGlueError, RocksStore, RocksStoreOptions, RocksWriterRegistry,
};

fn open(dir: &std::path::Path) -> Arc<RocksStore> {
    Arc::new(RocksStore::open(dir, RocksStoreOptions::default()).expect("open"))
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

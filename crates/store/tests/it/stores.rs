//! Both KvStore implementations run the same conformance suite; RocksDB also keeps
//! everything across a reopen.

use sealkv_store::conformance::kv_store_conformance;
use sealkv_store::mvcc::StoredValue;
use sealkv_store::{KvStore, MemoryStore, RocksStore, RocksStoreOptions, StoreError, WriteBatch};

#[test]
fn memory_store_conforms() {
    kv_store_conformance(MemoryStore::new);
}

#[test]
fn rocks_store_conforms() {
    // Each store gets its own directory; they live until the end of the test.
    let dirs = std::cell::RefCell::new(Vec::new());
    kv_store_conformance(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
        dirs.borrow_mut().push(dir);
        store
    });
}

#[test]
fn rocks_store_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
        let mut batch = WriteBatch::new();
        batch
            .put(b"k", 3, StoredValue::clear(b"v".to_vec(), 42))
            .expect("put");
        batch.set_applied_index(3);
        store.commit(batch).expect("commit");
    }
    let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("reopen");
    assert_eq!(store.applied_index().expect("applied"), 3);
    let v = store.get_at(b"k", u64::MAX).expect("get").expect("present");
    assert_eq!(
        (v.commit_version, v.value.body, v.value.header.expire_at_ms),
        (3, b"v".to_vec(), 42)
    );
}

/// A second open of the same directory is refused by RocksDB's lock, with a typed
/// backend error naming the step.
#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
    let err = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect_err("locked");
    assert!(
        matches!(err, StoreError::Backend { op: "open", .. }),
        "{err:?}"
    );
}

/// Opening a path that is a file fails with a typed error, not a panic.
#[test]
fn open_on_a_file_fails() {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    let err = RocksStore::open(file.path(), RocksStoreOptions::default()).expect_err("not a dir");
    assert!(
        matches!(err, StoreError::Backend { op: "open", .. }),
        "{err:?}"
    );
}

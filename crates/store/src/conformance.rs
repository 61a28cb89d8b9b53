//! The [`KvStore`] conformance suite: every implementation runs it (RocksDB and
//! in-memory alike), so the state machine can rely on the trait's protocol. Enabled
//! by the `testing` feature.

use crate::mvcc::{EncryptionState, StoredValue, ValueHeader};
use crate::{KvStore, StoreError, WriteBatch};

fn put(store: &dyn KvStore, key: &[u8], version: u64, value: StoredValue) {
    let mut batch = WriteBatch::new();
    batch.put(key, version, value).expect("put in batch");
    store.commit(batch).expect("commit");
}

fn body_at(store: &dyn KvStore, key: &[u8], at: u64) -> Option<(u64, Vec<u8>)> {
    store
        .get_at(key, at)
        .expect("get_at")
        .map(|v| (v.commit_version, v.value.body))
}

/// Runs every rule against stores made by `fresh` (each call returns an empty
/// store). Panics with the failing rule.
pub fn kv_store_conformance<S: KvStore>(fresh: impl Fn() -> S) {
    // A fresh store is empty with applied index 0.
    let s = fresh();
    assert_eq!(s.applied_index().expect("applied index"), 0);
    assert_eq!(s.get_at(b"k", u64::MAX).expect("get"), None);

    // Versions: get_at returns the newest version <= at.
    let s = fresh();
    put(&s, b"k", 5, StoredValue::clear(b"v5".to_vec(), 0));
    put(&s, b"k", 9, StoredValue::clear(b"v9".to_vec(), 0));
    assert_eq!(body_at(&s, b"k", 4), None, "before the first version");
    assert_eq!(body_at(&s, b"k", 5), Some((5, b"v5".to_vec())));
    assert_eq!(body_at(&s, b"k", 8), Some((5, b"v5".to_vec())));
    assert_eq!(body_at(&s, b"k", u64::MAX), Some((9, b"v9".to_vec())));

    // Keys that extend one another, or contain 0x00 and 0xFF, never see each
    // other's versions, whatever the version numbers.
    let s = fresh();
    let keys: [&[u8]; 6] = [b"a", b"a\x00", b"a\x00\x01", b"a\xff", b"ab", b""];
    for (i, k) in keys.iter().enumerate() {
        put(&s, k, 100 - i as u64, StoredValue::clear(k.to_vec(), 0));
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            body_at(&s, k, u64::MAX),
            Some((100 - i as u64, k.to_vec())),
            "key {k:02x?}"
        );
    }
    assert_eq!(body_at(&s, b"a\x00\x00", u64::MAX), None);

    // Headers round-trip: tombstones, expiry and the encryption state.
    let s = fresh();
    let header = ValueHeader {
        tombstone: false,
        encryption: EncryptionState::Encrypted,
        expire_at_ms: 0x0102_0304_0506_0708,
    };
    put(
        &s,
        b"h",
        1,
        StoredValue {
            header,
            body: vec![1, 2, 3],
        },
    );
    put(&s, b"h", 2, StoredValue::tombstone());
    let old = s.get_at(b"h", 1).expect("get").expect("version 1");
    assert_eq!(old.value.header, header);
    let dead = s.get_at(b"h", 2).expect("get").expect("version 2");
    assert!(dead.value.header.tombstone);

    // The applied index commits with the batch's puts.
    let s = fresh();
    let mut batch = WriteBatch::new();
    batch
        .put(b"x", 7, StoredValue::clear(b"1".to_vec(), 0))
        .expect("put");
    batch
        .put(b"y", 7, StoredValue::clear(b"2".to_vec(), 0))
        .expect("put");
    batch.set_applied_index(7);
    s.commit(batch).expect("commit");
    assert_eq!(s.applied_index().expect("applied"), 7);
    assert_eq!(body_at(&s, b"y", u64::MAX), Some((7, b"2".to_vec())));
    // A batch without an applied index leaves it alone; an empty batch is a no-op.
    put(&s, b"z", 8, StoredValue::clear(b"3".to_vec(), 0));
    s.commit(WriteBatch::new()).expect("empty commit");
    assert_eq!(s.applied_index().expect("applied"), 7);

    // Metadata rows land with the batch, are read back by key, and the applied
    // index's own key is refused.
    assert_eq!(s.get_meta(b"encryption").expect("meta"), None);
    let mut batch = WriteBatch::new();
    batch
        .put_meta(b"encryption", b"doc".to_vec())
        .expect("meta");
    batch.set_applied_index(9);
    assert!(!batch.is_empty());
    s.commit(batch).expect("commit");
    assert_eq!(
        s.get_meta(b"encryption").expect("meta"),
        Some(b"doc".to_vec())
    );
    assert_eq!(s.applied_index().expect("applied"), 9);
    assert!(matches!(
        WriteBatch::new().put_meta(b"applied_index", b"x".to_vec()),
        Err(StoreError::ReservedKey { .. })
    ));

    // The reserved keyspace is refused before anything is written.
    let mut batch = WriteBatch::new();
    let err = batch
        .put(
            b"!encryption|writers|x",
            1,
            StoredValue::clear(b"v".to_vec(), 0),
        )
        .expect_err("reserved key");
    assert!(matches!(err, StoreError::ReservedKey { .. }), "{err:?}");
    assert!(batch.is_empty());
    // A key that only looks similar is an ordinary key.
    batch
        .put(b"!encryption", 1, StoredValue::clear(b"v".to_vec(), 0))
        .expect("near miss");

    // scan_latest visits the newest version of every key once, in key order,
    // tombstones included, and stops when asked.
    let s = fresh();
    put(&s, b"b", 3, StoredValue::clear(b"b3".to_vec(), 0));
    put(&s, b"a", 1, StoredValue::clear(b"a1".to_vec(), 0));
    put(&s, b"a", 4, StoredValue::clear(b"a4".to_vec(), 0));
    put(&s, b"a\x00", 2, StoredValue::clear(b"a0".to_vec(), 0));
    put(&s, b"c", 5, StoredValue::tombstone());
    let mut seen = Vec::new();
    s.scan_latest(&mut |key, version| {
        seen.push((
            key.to_vec(),
            version.commit_version,
            version.value.header.tombstone,
        ));
        true
    })
    .expect("scan");
    let want: Vec<(Vec<u8>, u64, bool)> = vec![
        (b"a".to_vec(), 4, false),
        (b"a\x00".to_vec(), 2, false),
        (b"b".to_vec(), 3, false),
        (b"c".to_vec(), 5, true),
    ];
    assert_eq!(seen, want);
    let mut count = 0;
    s.scan_latest(&mut |_, _| {
        count += 1;
        count < 2
    })
    .expect("scan");
    assert_eq!(count, 2, "scan did not stop when asked");

    // scan_versions visits every version, newest first within a key, with its
    // header and body, and returns the applied index of the same view.
    let mut batch = WriteBatch::new();
    batch.set_applied_index(11);
    s.commit(batch).expect("commit");
    let mut all = Vec::new();
    let applied = s
        .scan_versions(&mut |physical, header, body| {
            let (key, version) = crate::mvcc::decode_physical_key(physical).expect("key");
            all.push((key, version, header.tombstone, body.to_vec()));
            true
        })
        .expect("scan versions");
    assert_eq!(applied, 11);
    let want: Vec<(Vec<u8>, u64, bool, Vec<u8>)> = vec![
        (b"a".to_vec(), 4, false, b"a4".to_vec()),
        (b"a".to_vec(), 1, false, b"a1".to_vec()),
        (b"a\x00".to_vec(), 2, false, b"a0".to_vec()),
        (b"b".to_vec(), 3, false, b"b3".to_vec()),
        (b"c".to_vec(), 5, true, Vec::new()),
    ];
    assert_eq!(all, want);
    let mut count = 0;
    s.scan_versions(&mut |_, _, _| {
        count += 1;
        count < 3
    })
    .expect("scan versions");
    assert_eq!(count, 3, "scan_versions did not stop when asked");
}

//! MVCC garbage collection and rewriting on a real RocksDB store: a property test
//! against a model of what reads may see, and the edges a pass meets (a step that
//! ends inside one key's versions, a snapshot installed between two steps).

use std::collections::BTreeMap;

use proptest::prelude::*;
use sealkv_store::gc::{Cursor, Horizon, LiveStats, Rewrite, dead_at};
use sealkv_store::mvcc::{StoredValue, ValueHeader, physical_key};

use super::raftlog::{push_checksum, push_record};
use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, WriteBatch};

/// One version a test writes: (key, commit version, value); `None` value is a
/// tombstone; the u64 is an expiry (0: none).
type Row = (u8, u64, Option<(Vec<u8>, u64)>);

fn store() -> (tempfile::TempDir, RocksStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
    (dir, store)
}

/// A snapshot dump of `rows` (cf id, key, value) with applied index 2.
fn dump(rows: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"SKVS\x02".to_vec();
    push_record(&mut out, 2, b"applied_index", &2u64.to_be_bytes());
    for (cf, k, v) in rows {
        push_record(&mut out, *cf, k, v);
    }
    out.push(0);
    out.extend_from_slice(&(rows.len() as u64 + 1).to_be_bytes());
    push_checksum(&mut out);
    out
}

fn key(k: u8) -> Vec<u8> {
    // Key 0 is the empty key's neighbour "\0": prefix-free encoding matters.
    match k {
        0 => vec![0],
        1 => vec![0, 0],
        k => vec![b'k', k],
    }
}

fn write(store: &RocksStore, rows: &[Row]) {
    let mut batch = WriteBatch::new();
    for (k, version, value) in rows {
        let stored = match value {
            Some((body, expire)) => StoredValue::clear(body.clone(), *expire),
            None => StoredValue::tombstone(),
        };
        batch.put(&key(*k), *version, stored).expect("put");
    }
    store.commit(batch).expect("commit");
}

/// Every version of every key, newest first per key.
fn versions(store: &RocksStore, keys: &[u8]) -> BTreeMap<Vec<u8>, Vec<(u64, StoredValue)>> {
    let mut out = BTreeMap::new();
    for &k in keys {
        let mut list = Vec::new();
        let mut at = u64::MAX;
        while let Some(v) = store.get_at(&key(k), at).expect("read") {
            list.push((v.commit_version, v.value));
            match v.commit_version.checked_sub(1) {
                Some(next) => at = next,
                None => break,
            }
        }
        out.insert(key(k), list);
    }
    out
}

/// What a read at `at` (index) and `now` (ms) sees of one key's versions: the body
/// of the newest version `<= at` when it is live at `now`.
fn read(list: &[(u64, StoredValue)], at: u64, now: u64) -> Option<Vec<u8>> {
    list.iter()
        .find(|(v, _)| *v <= at)
        .filter(|(_, value)| value.is_live_at(now))
        .map(|(_, value)| value.body.clone())
}

fn collect(store: &RocksStore, horizon: Horizon, budget: usize) -> (u64, LiveStats) {
    let mut cursor = Cursor::new();
    let mut live = LiveStats::default();
    let mut removed = 0;
    let mut steps = 0;
    while !cursor.is_done() {
        let stats = store
            .gc_step(&mut cursor, horizon, budget, horizon.at_ms, Some(&mut live))
            .expect("gc step");
        removed += stats.changed;
        steps += 1;
        assert!(steps < 100_000, "the pass does not end");
    }
    (removed, live)
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    let value = prop_oneof![
        3 => (proptest::collection::vec(any::<u8>(), 0..4), prop_oneof![Just(0u64), 1u64..40]).prop_map(Some),
        1 => Just(None),
    ];
    proptest::collection::vec((0u8..5, 1u64..60, value), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For every key, every read at or after the horizon (index and time) sees
    /// exactly what it saw before; everything older than the version visible at
    /// the horizon is gone, and so is that version when it is dead; no version
    /// newer than the horizon is touched.
    #[test]
    fn collection_keeps_every_read_at_or_after_the_horizon(
        rows in rows(),
        horizon_index in 0u64..65,
        horizon_at in 0u64..45,
        budget in 1usize..7,
    ) {
        let (_dir, store) = store();
        write(&store, &rows);
        let keys: Vec<u8> = (0..5).collect();
        let before = versions(&store, &keys);
        let horizon = Horizon { index: horizon_index, at_ms: horizon_at };
        let (removed, live) = collect(&store, horizon, budget);
        let after = versions(&store, &keys);
        let count = |m: &BTreeMap<Vec<u8>, Vec<(u64, StoredValue)>>| -> usize {
            m.values().map(Vec::len).sum()
        };
        prop_assert_eq!(count(&before) - count(&after), usize::try_from(removed).unwrap());
        prop_assert_eq!(live.versions, count(&after) as u64);
        for (k, old) in &before {
            let new = &after[k];
            for at in horizon_index..70 {
                for now in horizon_at..45 {
                    prop_assert_eq!(read(old, at, now), read(new, at, now),
                        "key {:?} at index {} time {}", k, at, now);
                }
            }
            // Newer than the horizon: untouched.
            let newer = |l: &[(u64, StoredValue)]| -> Vec<(u64, StoredValue)> {
                l.iter().filter(|(v, _)| *v > horizon_index).cloned().collect()
            };
            prop_assert_eq!(newer(old), newer(new));
            // At or below the horizon: at most the visible version, and only when
            // it is live at the horizon's time.
            let below: Vec<_> = new.iter().filter(|(v, _)| *v <= horizon_index).collect();
            prop_assert!(below.len() <= 1);
            if let Some((_, value)) = below.first() {
                prop_assert!(!dead_at(&value.header, horizon));
            }
        }
        // A second pass finds nothing left.
        prop_assert_eq!(collect(&store, horizon, budget).0, 0);
    }
}

#[test]
fn the_newest_version_of_a_live_key_survives_any_horizon() {
    let (_dir, store) = store();
    let rows: Vec<Row> = (1..=100)
        .map(|v| (7, v, Some((format!("v{v}").into_bytes(), 0))))
        .collect();
    write(&store, &rows);
    let (removed, live) = collect(
        &store,
        Horizon {
            index: u64::MAX,
            at_ms: u64::MAX - 1,
        },
        3,
    );
    assert_eq!(removed, 99);
    assert_eq!((live.keys, live.versions), (1, 1));
    let latest = store
        .get_at(&key(7), u64::MAX)
        .expect("read")
        .expect("kept");
    assert_eq!(
        (latest.commit_version, latest.value.body),
        (100, b"v100".to_vec())
    );
}

#[test]
fn a_snapshot_installed_between_two_steps_restarts_the_pass() {
    let (_dir, store) = store();
    // Key 1 holds 10 versions; a step of 4 ends inside them.
    let rows: Vec<Row> = (1..=10).map(|v| (1, v, Some((vec![b'a'; 3], 0)))).collect();
    write(&store, &rows);
    let horizon = Horizon {
        index: 10,
        at_ms: 0,
    };
    let mut cursor = Cursor::new();
    let first = store
        .gc_step(&mut cursor, horizon, 4, 0, None)
        .expect("first step");
    assert_eq!(
        first.changed, 3,
        "the newest version is visible; the next 3 are garbage"
    );
    assert!(!cursor.is_done());

    // Another node's state, holding only version 2 of the key, arrives as a snapshot.
    let dump = dump(&[(
        1,
        physical_key(&key(1), 2),
        StoredValue::clear(b"snapshot".to_vec(), 0).encode(),
    )]);
    store.install_snapshot(&dump).expect("install");

    // Continuing from the old cursor would treat version 2 as older than the
    // visible one; the pass restarts instead, and keeps it.
    let next = store
        .gc_step(&mut cursor, horizon, 4, 0, None)
        .expect("step after install");
    assert!(next.restarted);
    assert_eq!(next.changed, 0);
    let kept = store
        .get_at(&key(1), u64::MAX)
        .expect("read")
        .expect("kept");
    assert_eq!(kept.value.body, b"snapshot");
}

#[test]
fn rewrite_replaces_versions_in_place_and_resumes_after_a_failure() {
    let (_dir, store) = store();
    let rows: Vec<Row> = (1..=6)
        .map(|v| {
            (
                u8::try_from(v % 3).unwrap(),
                v,
                Some((format!("clear{v}").into_bytes(), 0)),
            )
        })
        .collect();
    write(&store, &rows);
    let mut cursor = Cursor::new();
    let mut fail_once = true;
    let mut decide =
        |_: &[u8], version: u64, value: StoredValue| -> Result<Rewrite, sealkv_store::StoreError> {
            if version == 4 && std::mem::take(&mut fail_once) {
                return Err(sealkv_store::StoreError::Corrupt {
                    what: "test",
                    reason: "cannot seal yet".into(),
                });
            }
            let mut body = b"sealed:".to_vec();
            body.extend_from_slice(&value.body);
            Ok(Rewrite::Replace(StoredValue {
                header: ValueHeader {
                    expire_at_ms: 99,
                    ..value.header
                },
                body,
            }))
        };
    let mut changed = 0;
    let mut failures = 0;
    while !cursor.is_done() {
        match store.rewrite_step(&mut cursor, 2, &mut decide) {
            Ok(stats) => changed += stats.changed,
            Err(_) => failures += 1,
        }
    }
    assert_eq!((changed, failures), (6, 1));
    for v in 1..=6u64 {
        let k = key(u8::try_from(v % 3).unwrap());
        let got = store.get_at(&k, v).expect("read").expect("present");
        assert_eq!(got.commit_version, v);
        assert_eq!(got.value.body, format!("sealed:clear{v}").into_bytes());
    }
}

#[test]
fn a_row_that_does_not_decode_stops_the_step_and_removes_nothing() {
    let (_dir, store) = store();
    let value = |body: &[u8]| StoredValue::clear(body.to_vec(), 0).encode();
    store
        .install_snapshot(&dump(&[
            (1, physical_key(&key(1), 2), value(b"b")),
            (1, physical_key(&key(1), 1), value(b"a")),
            (1, b"z: not a physical key".to_vec(), value(b"x")),
        ]))
        .expect("install");
    let mut cursor = Cursor::new();
    let result = store.gc_step(
        &mut cursor,
        Horizon {
            index: 10,
            at_ms: 0,
        },
        100,
        0,
        None,
    );
    assert!(
        matches!(result, Err(sealkv_store::StoreError::Corrupt { .. })),
        "{result:?}"
    );
    assert_eq!(versions(&store, &[1])[&key(1)].len(), 2);
}

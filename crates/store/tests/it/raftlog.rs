//! RaftLog over a real RocksDB: raft-rs's own MemStorage tests ported (term, first
//! and last index, compact, append with conflicts, entries with max_size,
//! apply_snapshot, snapshot creation), typed errors where MemStorage panics,
//! persistence across a reopen, corrupt rows, and the state-machine snapshot dump:
//! round trip into a fresh store, its byte format, and refusal of bad dumps.

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, Storage, StorageError};
use sealkv_encryption::WriterRegistryStore;
use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_store::mvcc::{StoredValue, physical_key};
use sealkv_store::{
    KvStore, RaftLog, RaftLogError, RocksStore, RocksStoreOptions, RocksWriterRegistry,
    SnapshotDescriptor, StoreError, WriteBatch,
};
use tempfile::TempDir;

/// A store and its log in a temporary directory.
struct Node {
    dir: TempDir,
    store: RocksStore,
    log: RaftLog,
}

impl Node {
    fn fresh() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
        let log = RaftLog::open(&store).expect("open log");
        Node { dir, store, log }
    }

    /// Closes the database and opens it again.
    fn reopen(self) -> Node {
        let Node { dir, store, log } = self;
        drop(log);
        drop(store);
        let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("reopen");
        let log = RaftLog::open(&store).expect("reopen log");
        Node { dir, store, log }
    }

    /// A log holding entries `first..=last` (term = index), compacted to `first - 1`
    /// with term `first - 1`: the state MemStorage's tests build by assigning
    /// `entries` directly.
    fn with_entries(first: u64, last: u64) -> Node {
        let node = Node::fresh();
        if first > 1 {
            node.log
                .apply_snapshot(&meta(first - 1, first - 1, &[]))
                .expect("compaction point");
        }
        let entries: Vec<Entry> = (first..=last).map(|i| entry(i, i)).collect();
        node.log.persist(&entries, None).expect("persist");
        node
    }

    fn set_applied(&self, index: u64) {
        let mut batch = WriteBatch::new();
        batch.set_applied_index(index);
        self.store.commit(batch).expect("commit applied index");
    }

    fn all_entries(&self) -> Vec<Entry> {
        let (first, last) = (self.log.first_index(), self.log.last_index());
        self.log
            .entries(first, last + 1, None, ctx())
            .expect("entries")
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Entry::default()
    }
}

fn meta(index: u64, term: u64, voter_ids: &[u64]) -> SnapshotMetadata {
    let mut m = SnapshotMetadata {
        index,
        term,
        ..SnapshotMetadata::default()
    };
    m.set_conf_state(voters(voter_ids));
    m
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..ConfState::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn size_of(e: &Entry) -> u64 {
    u64::from(e.compute_size())
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

/// The typed error inside a `StorageError::Other`.
fn other<T: std::fmt::Debug>(result: raft::Result<T>) -> RaftLogError {
    match result {
        Err(raft::Error::Store(StorageError::Other(boxed))) => *boxed
            .downcast::<RaftLogError>()
            .unwrap_or_else(|e| panic!("not a RaftLogError: {e}")),
        other => panic!("want StorageError::Other, got {other:?}"),
    }
}

// --- ported from raft-rs storage.rs tests ------------------------------------------

#[test]
fn term() {
    let node = Node::with_entries(3, 5);
    // MemStorage answers Compacted for 2 because its test assigns entries without a
    // snapshot; here index 2 is the compaction point, whose term is retained as the
    // Storage trait asks.
    let cases = [
        (1, Err(store_err(StorageError::Compacted))),
        (2, Ok(2)),
        (3, Ok(3)),
        (4, Ok(4)),
        (5, Ok(5)),
        (6, Err(store_err(StorageError::Unavailable))),
    ];
    for (idx, want) in cases {
        assert_eq!(node.log.term(idx), want, "term({idx})");
    }
}

#[test]
fn entries_with_max_size() {
    let node = Node::with_entries(3, 6);
    let (s4, s5, s6) = (
        size_of(&entry(4, 4)),
        size_of(&entry(5, 5)),
        size_of(&entry(6, 6)),
    );
    let max = u64::MAX;
    let cases: Vec<(u64, u64, u64, raft::Result<Vec<Entry>>)> = vec![
        (2, 6, max, Err(store_err(StorageError::Compacted))),
        (3, 4, max, Ok(vec![entry(3, 3)])),
        (4, 5, max, Ok(vec![entry(4, 4)])),
        (4, 6, max, Ok(vec![entry(4, 4), entry(5, 5)])),
        (4, 7, max, Ok(vec![entry(4, 4), entry(5, 5), entry(6, 6)])),
        // Even with max_size 0 the first entry is returned.
        (4, 7, 0, Ok(vec![entry(4, 4)])),
        (4, 7, s4 + s5, Ok(vec![entry(4, 4), entry(5, 5)])),
        (4, 7, s4 + s5 + s6 / 2, Ok(vec![entry(4, 4), entry(5, 5)])),
        (4, 7, s4 + s5 + s6 - 1, Ok(vec![entry(4, 4), entry(5, 5)])),
        (
            4,
            7,
            s4 + s5 + s6,
            Ok(vec![entry(4, 4), entry(5, 5), entry(6, 6)]),
        ),
        // Where MemStorage panics: past the last index.
        (4, 8, max, Err(store_err(StorageError::Unavailable))),
        (5, 5, max, Ok(vec![])),
    ];
    for (lo, hi, max_size, want) in cases {
        assert_eq!(
            node.log.entries(lo, hi, max_size, ctx()),
            want,
            "entries({lo}, {hi}, {max_size})"
        );
    }
    assert!(matches!(
        other(node.log.entries(5, 4, max, ctx())),
        RaftLogError::InvertedRange { low: 5, high: 4 }
    ));
}

/// Sizes that differ per entry: the limit counts encoded bytes, data included, and
/// `None` means no limit.
#[test]
fn entries_limit_counts_data_bytes() {
    let node = Node::fresh();
    let ents: Vec<Entry> = (1..=4)
        .map(|i| {
            let mut e = entry(i, 1);
            e.data = vec![0xAB; 100 * i as usize].into();
            e
        })
        .collect();
    node.log.persist(&ents, None).expect("persist");
    let all: Vec<u64> = ents.iter().map(size_of).collect();
    let got = |max: Option<u64>| -> Vec<u64> {
        node.log
            .entries(1, 5, max, ctx())
            .expect("entries")
            .iter()
            .map(|e| e.index)
            .collect()
    };
    assert_eq!(got(None), vec![1, 2, 3, 4]);
    assert_eq!(got(Some(all[0] + all[1] + all[2])), vec![1, 2, 3]);
    assert_eq!(got(Some(all[0] + all[1] + all[2] - 1)), vec![1, 2]);
    assert_eq!(got(Some(1)), vec![1]);
    assert_eq!(
        node.log.entries(1, 5, None, ctx()).expect("entries"),
        ents,
        "data survives"
    );
}

#[test]
fn last_index() {
    let node = Node::with_entries(3, 5);
    assert_eq!(Storage::last_index(&node.log), Ok(5));
    node.log.persist(&[entry(6, 5)], None).expect("append");
    assert_eq!(Storage::last_index(&node.log), Ok(6));
    assert_eq!(node.log.last_index(), 6);
}

#[test]
fn first_index() {
    let node = Node::with_entries(3, 5);
    assert_eq!(Storage::first_index(&node.log), Ok(3));
    node.log.compact(4).expect("compact");
    assert_eq!(Storage::first_index(&node.log), Ok(4));
    assert_eq!(node.log.first_index(), 4);
}

#[test]
fn compact() {
    // (compact index, want first index, want term of first entry, want entry count)
    let cases = [(2, 3, 3, 3), (3, 3, 3, 3), (4, 4, 4, 2), (5, 5, 5, 1)];
    for (idx, windex, wterm, wlen) in cases {
        let node = Node::with_entries(3, 5);
        node.log.compact(idx).expect("compact");
        let index = Storage::first_index(&node.log).expect("first");
        assert_eq!(index, windex, "compact({idx}) first index");
        let first = node.log.entries(index, index + 1, 1, ctx()).expect("entry");
        assert_eq!(first.first().map(|e| e.term), Some(wterm), "compact({idx})");
        let last = Storage::last_index(&node.log).expect("last");
        let len = node
            .log
            .entries(index, last + 1, 100, ctx())
            .expect("entries")
            .len();
        assert_eq!(len, wlen, "compact({idx}) entries left");
        // The compacted entry's term is kept for matching.
        assert_eq!(node.log.term(windex - 1), Ok(windex - 1), "compact({idx})");
        assert_eq!(
            node.log.term(windex - 2),
            Err(store_err(StorageError::Compacted))
        );
    }
}

#[test]
fn compact_to_the_end_and_beyond() {
    let node = Node::with_entries(3, 5);
    let err = node.log.compact(7).expect_err("past last + 1");
    assert!(
        matches!(
            err,
            RaftLogError::CompactBeyondLog {
                compact_index: 7,
                last_index: 5
            }
        ),
        "{err:?}"
    );
    assert_eq!((node.log.first_index(), node.log.last_index()), (3, 5));

    // Compacting to last + 1 empties the log but keeps its bounds.
    node.log.compact(6).expect("compact to last + 1");
    assert_eq!((node.log.first_index(), node.log.last_index()), (6, 5));
    assert_eq!(node.log.term(5), Ok(5));
    assert_eq!(node.log.entries(6, 6, None, ctx()), Ok(vec![]));
    assert_eq!(
        node.log.entries(5, 6, None, ctx()),
        Err(store_err(StorageError::Compacted))
    );
    // Appending continues right after.
    node.log.persist(&[entry(6, 6)], None).expect("append");
    assert_eq!(node.all_entries(), vec![entry(6, 6)]);
}

#[test]
fn append() {
    let e = entry;
    let cases: Vec<(Vec<Entry>, Option<Vec<Entry>>)> = vec![
        (
            vec![e(3, 3), e(4, 4), e(5, 5)],
            Some(vec![e(3, 3), e(4, 4), e(5, 5)]),
        ),
        (
            vec![e(3, 3), e(4, 6), e(5, 6)],
            Some(vec![e(3, 3), e(4, 6), e(5, 6)]),
        ),
        (
            vec![e(3, 3), e(4, 4), e(5, 5), e(6, 5)],
            Some(vec![e(3, 3), e(4, 4), e(5, 5), e(6, 5)]),
        ),
        // Overwriting compacted entries is refused (MemStorage panics).
        (vec![e(2, 3), e(3, 3), e(4, 5)], None),
        // Truncate the conflicting suffix and append.
        (vec![e(4, 5)], Some(vec![e(3, 3), e(4, 5)])),
        // Direct append.
        (
            vec![e(6, 6)],
            Some(vec![e(3, 3), e(4, 4), e(5, 5), e(6, 6)]),
        ),
    ];
    for (i, (entries, want)) in cases.into_iter().enumerate() {
        let node = Node::with_entries(3, 5);
        let result = node.log.persist(&entries, None);
        match want {
            Some(want) => {
                result.unwrap_or_else(|e| panic!("#{i}: {e}"));
                assert_eq!(node.all_entries(), want, "#{i}");
                // The disk agrees: a truncated suffix does not come back.
                let node = node.reopen();
                assert_eq!(node.all_entries(), want, "#{i} after reopen");
                assert_eq!(
                    node.log.last_index(),
                    want.last().map(|e| e.index).unwrap_or(0)
                );
            }
            None => {
                let err = result.expect_err("refused");
                assert!(
                    matches!(
                        err,
                        RaftLogError::AppendBelowCompacted {
                            first_new: 2,
                            first_index: 3
                        }
                    ),
                    "#{i}: {err:?}"
                );
                assert_eq!(
                    node.all_entries(),
                    vec![e(3, 3), e(4, 4), e(5, 5)],
                    "#{i} unchanged"
                );
            }
        }
    }
}

#[test]
fn append_with_a_gap_or_out_of_order_is_refused() {
    let node = Node::with_entries(3, 5);
    let hs = hard_state(9, 1, 4);
    let err = node
        .log
        .persist(&[entry(7, 6)], Some(&hs))
        .expect_err("gap");
    assert!(
        matches!(
            err,
            RaftLogError::AppendGap {
                first_new: 7,
                last_index: 5
            }
        ),
        "{err:?}"
    );
    let err = node
        .log
        .persist(&[entry(5, 5), entry(7, 5)], Some(&hs))
        .expect_err("hole");
    assert!(
        matches!(
            err,
            RaftLogError::NotConsecutive {
                previous: 5,
                found: 7
            }
        ),
        "{err:?}"
    );
    let err = node
        .log
        .persist(&[entry(5, 5), entry(5, 5)], None)
        .expect_err("repeat");
    assert!(
        matches!(err, RaftLogError::NotConsecutive { .. }),
        "{err:?}"
    );
    // Nothing was written, not even the hard state.
    let node = node.reopen();
    assert_eq!(
        node.all_entries(),
        vec![entry(3, 3), entry(4, 4), entry(5, 5)]
    );
    assert_ne!(node.log.hard_state(), hs);
    // The typed error reaches raft as StorageError::Other.
    let as_raft = raft::Error::from(RaftLogError::AppendGap {
        first_new: 7,
        last_index: 5,
    });
    assert!(matches!(
        other::<()>(Err(as_raft)),
        RaftLogError::AppendGap { .. }
    ));
}

#[test]
fn apply_snapshot() {
    let node = Node::fresh();
    node.log
        .apply_snapshot(&meta(4, 4, &[1, 2, 3]))
        .expect("apply");
    assert_eq!((node.log.first_index(), node.log.last_index()), (5, 4));
    assert_eq!(node.log.term(4), Ok(4));
    assert_eq!(node.log.conf_state(), voters(&[1, 2, 3]));
    assert_eq!(node.log.hard_state(), hard_state(4, 0, 4));

    for stale in [meta(3, 3, &[1, 2, 3]), meta(4, 4, &[1, 2, 3])] {
        let err = node.log.apply_snapshot(&stale).expect_err("out of date");
        assert!(
            matches!(
                err,
                RaftLogError::SnapshotOutOfDate {
                    snapshot_index: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            raft::Error::from(err),
            store_err(StorageError::SnapshotOutOfDate)
        );
    }
}

/// A snapshot discards the whole log, also when it falls inside it, and only raises
/// the hard state.
#[test]
fn apply_snapshot_discards_the_log_and_raises_the_hard_state() {
    for index in [4, 10] {
        let node = Node::with_entries(3, 5);
        node.log
            .persist(&[], Some(&hard_state(7, 2, 3)))
            .expect("hard state");
        node.log
            .apply_snapshot(&meta(index, 4, &[1, 2]))
            .expect("apply");
        let node = node.reopen();
        assert_eq!(
            (node.log.first_index(), node.log.last_index()),
            (index + 1, index)
        );
        assert_eq!(node.all_entries(), vec![]);
        assert_eq!(node.log.term(index), Ok(4));
        assert_eq!(
            node.log.term(index - 1),
            Err(store_err(StorageError::Compacted))
        );
        // Term stays at 7 (above the snapshot's 4), the vote is kept, commit rises.
        assert_eq!(node.log.hard_state(), hard_state(7, 2, index));
        assert_eq!(node.log.conf_state(), voters(&[1, 2]));
        node.log
            .persist(&[entry(index + 1, 7)], None)
            .expect("append after the snapshot");
    }
}

/// Ported from test_storage_create_snapshot: the snapshot's index is the store's
/// applied index; raft is told to wait while it is below the requested index.
#[test]
fn create_snapshot() {
    let unavailable = || Err(store_err(StorageError::SnapshotTemporarilyUnavailable));
    // (applied index, request index, want (index, term) or unavailable)
    let cases = [
        (4, 0, Ok((4, 4))),
        (5, 5, Ok((5, 5))),
        (5, 6, unavailable()),
        // Nothing applied: raft-rs refuses an empty snapshot, so wait.
        (0, 0, unavailable()),
        // Applied past the log (data installed, metadata not yet recorded): wait.
        (6, 0, unavailable()),
        // Applied at the compaction point: its term comes from the metadata.
        (2, 0, Ok((2, 2))),
    ];
    for (applied, request, want) in cases {
        let node = Node::with_entries(3, 5);
        node.log.set_conf_state(&voters(&[1, 2, 3])).expect("conf");
        node.set_applied(applied);
        let got = node
            .log
            .snapshot(request, 2)
            .map(|s| (s.get_metadata().index, s.get_metadata().term));
        assert_eq!(got, want, "applied {applied}, request {request}");
        if let Ok(snap) = node.log.snapshot(request, 2) {
            assert_eq!(snap.get_metadata().get_conf_state(), &voters(&[1, 2, 3]));
            assert!(!snap.data.is_empty());
        }
    }

    // The log compacted past the applied index cannot name its term.
    let node = Node::with_entries(3, 5);
    node.log.compact(5).expect("compact");
    node.set_applied(3);
    assert!(matches!(
        other(node.log.snapshot(0, 2)),
        RaftLogError::AppliedCompacted {
            applied: 3,
            first_index: 5
        }
    ));
}

// --- lifecycle and persistence -----------------------------------------------------

#[test]
fn fresh_log_and_initialize() {
    let node = Node::fresh();
    assert!(node.log.is_fresh());
    assert_eq!((node.log.first_index(), node.log.last_index()), (1, 0));
    assert_eq!(node.log.hard_state(), HardState::default());
    assert_eq!(node.log.conf_state(), ConfState::default());
    assert_eq!(node.log.term(0), Ok(0));
    let state = node.log.initial_state().expect("initial state");
    assert!(!state.initialized());

    node.log
        .initialize(&voters(&[1, 2, 3]))
        .expect("initialize");
    assert!(!node.log.is_fresh());
    let node = node.reopen();
    assert!(!node.log.is_fresh());
    let state = node.log.initial_state().expect("initial state");
    assert!(state.initialized());
    assert_eq!(state.conf_state, voters(&[1, 2, 3]));
    assert!(matches!(
        node.log.initialize(&voters(&[1])),
        Err(RaftLogError::AlreadyInitialized)
    ));
    assert_eq!(node.log.conf_state(), voters(&[1, 2, 3]));
}

/// Any state at all makes a log not fresh, and initialize refuses it.
#[test]
fn a_log_with_any_state_is_not_fresh() {
    let with_hard_state = Node::fresh();
    with_hard_state
        .log
        .persist(&[], Some(&hard_state(1, 0, 0)))
        .expect("hs");
    let with_entry = Node::fresh();
    with_entry.log.persist(&[entry(1, 1)], None).expect("entry");
    let with_snapshot = Node::fresh();
    with_snapshot
        .log
        .apply_snapshot(&meta(3, 1, &[]))
        .expect("snapshot");
    for node in [with_hard_state, with_entry, with_snapshot] {
        let node = node.reopen();
        assert!(!node.log.is_fresh(), "{:?}", node.log);
        assert!(matches!(
            node.log.initialize(&voters(&[1])),
            Err(RaftLogError::AlreadyInitialized)
        ));
    }
}

#[test]
fn everything_survives_a_reopen() {
    let node = Node::fresh();
    node.log.initialize(&voters(&[1, 2])).expect("init");
    let mut ents: Vec<Entry> = (1..=8).map(|i| entry(i, 1 + i / 4)).collect();
    ents[2].data = b"payload".to_vec().into();
    node.log
        .persist(&ents, Some(&hard_state(3, 1, 2)))
        .expect("persist");
    node.log.set_hard_state_commit(6).expect("commit");
    node.log.compact(4).expect("compact");
    node.log.set_conf_state(&voters(&[1, 2, 3])).expect("conf");

    let node = node.reopen();
    assert_eq!((node.log.first_index(), node.log.last_index()), (4, 8));
    assert_eq!(node.all_entries(), ents[3..].to_vec());
    assert_eq!(node.log.term(3), Ok(1), "compaction point's term");
    assert_eq!(node.log.term(2), Err(store_err(StorageError::Compacted)));
    assert_eq!(node.log.hard_state(), hard_state(3, 1, 6));
    assert_eq!(node.log.conf_state(), voters(&[1, 2, 3]));
    let state = node.log.initial_state().expect("state");
    assert_eq!(
        (state.hard_state, state.conf_state),
        (hard_state(3, 1, 6), voters(&[1, 2, 3]))
    );
}

/// set_hard_state_commit changes only the commit index; persist's hard state
/// replaces the whole hard state.
#[test]
fn hard_state_updates() {
    let node = Node::with_entries(1, 5);
    node.log
        .persist(&[], Some(&hard_state(2, 3, 1)))
        .expect("hs");
    node.log.set_hard_state_commit(4).expect("commit");
    assert_eq!(node.log.hard_state(), hard_state(2, 3, 4));
    node.log
        .persist(&[entry(6, 2)], Some(&hard_state(3, 0, 5)))
        .expect("entries and hs");
    let node = node.reopen();
    assert_eq!(node.log.hard_state(), hard_state(3, 0, 5));
    assert_eq!(node.log.last_index(), 6);
}

/// Clones are one log.
#[test]
fn clones_share_the_log() {
    let node = Node::fresh();
    let clone = node.log.clone();
    clone.persist(&[entry(1, 1)], None).expect("persist");
    assert_eq!(node.log.last_index(), 1);
}

// --- corrupt rows -------------------------------------------------------------------

/// Writes raw rows into the `raft` column family of a closed node's database.
fn raw_put(dir: &std::path::Path, rows: &[(&[u8], &[u8])]) {
    let db = rocksdb::DB::open_cf(
        &rocksdb::Options::default(),
        dir,
        ["data", "meta", "registry", "raft"],
    )
    .expect("raw open");
    let cf = db.cf_handle("raft").expect("raft cf");
    for (k, v) in rows {
        db.put_cf(cf, k, v).expect("raw put");
    }
}

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn corrupt_open(rows: &[(&[u8], &[u8])]) -> RaftLogError {
    let Node { dir, store, log } = Node::with_entries(1, 3);
    drop((store, log));
    raw_put(dir.path(), rows);
    let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
    RaftLog::open(&store).expect_err("corrupt")
}

#[test]
fn corrupt_state_rows_fail_open() {
    let garbage: &[u8] = &[0xFF, 0xFF, 0xFF];
    let cases: [(&[u8], &[u8], &str); 4] = [
        (b"hard_state", garbage, "raft hard state"),
        (b"conf_state", garbage, "raft conf state"),
        (b"snapshot_meta", garbage, "raft snapshot metadata"),
        // An entry key of the wrong length.
        (b"e\x00\x01", b"", "raft entry key"),
    ];
    for (key, value, want) in cases {
        let err = corrupt_open(&[(key, value)]);
        assert!(
            matches!(err, RaftLogError::Store(StoreError::Corrupt { what, .. }) if what == want),
            "{}: {err:?}",
            String::from_utf8_lossy(key)
        );
    }
}

/// An entry row before the first index is a hole in the log's invariant.
#[test]
fn entry_below_the_compaction_point_fails_open() {
    let Node { dir, store, log } = Node::with_entries(4, 6);
    drop((store, log));
    let raw = entry(2, 2).write_to_bytes().expect("encode");
    raw_put(dir.path(), &[(&entry_key(2)[..], &raw[..])]);
    let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
    let err = RaftLog::open(&store).expect_err("hole");
    assert!(
        matches!(
            err,
            RaftLogError::Store(StoreError::Corrupt {
                what: "raft log",
                ..
            })
        ),
        "{err:?}"
    );
}

/// A corrupt or misplaced entry is an error from term and entries, never a guess.
#[test]
fn corrupt_entries_are_errors() {
    let Node { dir, store, log } = Node::with_entries(1, 3);
    drop((store, log));
    let misplaced = entry(7, 2).write_to_bytes().expect("encode");
    raw_put(
        dir.path(),
        &[
            (&entry_key(2)[..], &misplaced[..]),
            (&entry_key(3)[..], &[0xFF_u8, 0xFF][..]),
        ],
    );
    let store = RocksStore::open(dir.path(), RocksStoreOptions::default()).expect("open");
    let log = RaftLog::open(&store).expect("bounds are fine");
    for result in [log.term(2).map(|_| ()), log.term(3).map(|_| ())] {
        assert!(matches!(
            other(result),
            RaftLogError::Store(StoreError::Corrupt {
                what: "raft entry",
                ..
            })
        ));
    }
    assert!(matches!(
        other(log.entries(1, 4, None, ctx())),
        RaftLogError::Store(StoreError::Corrupt { .. })
    ));
    assert_eq!(log.entries(1, 2, None, ctx()), Ok(vec![entry(1, 1)]));
}

// --- the state-machine snapshot -----------------------------------------------------

fn put_value(store: &RocksStore, key: &[u8], version: u64, body: &[u8], applied: u64) {
    let mut batch = WriteBatch::new();
    batch
        .put(key, version, StoredValue::clear(body.to_vec(), 0))
        .expect("put");
    batch.set_applied_index(applied);
    store.commit(batch).expect("commit");
}

fn body(store: &RocksStore, key: &[u8]) -> Option<Vec<u8>> {
    store
        .get_at(key, u64::MAX)
        .expect("get")
        .map(|v| v.value.body)
}

fn registry(store: &RocksStore) -> RocksWriterRegistry {
    RocksWriterRegistry::from_store(store).expect("glue")
}

fn row(dek_id: u32, node: u16, epoch: u16) -> (WriterKey, WriterRecord) {
    (
        WriterKey {
            dek_id,
            node_id16: node,
        },
        WriterRecord {
            full_node_id: u64::from(node),
            first_seen_local_epoch: 1,
            last_seen_local_epoch: epoch,
        },
    )
}

/// Store A with values, a registry row and applied index 5, and a log whose entries
/// 1..=5 have term 2; its snapshot.
fn source() -> (Node, Snapshot) {
    let a = Node::fresh();
    a.log.initialize(&voters(&[1, 2, 3])).expect("init");
    let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 2)).collect();
    a.log
        .persist(&ents, Some(&hard_state(2, 1, 5)))
        .expect("persist");
    put_value(&a.store, b"alpha", 3, b"one", 3);
    put_value(&a.store, b"beta\x00", 4, b"two", 4);
    put_value(&a.store, b"alpha", 5, b"three", 5);
    registry(&a.store)
        .put_writers(&[row(7, 1, 2)])
        .expect("registry");
    let snap = a.log.snapshot(5, 2).expect("snapshot");
    (a, snap)
}

/// Store B with state of its own that a snapshot must replace.
fn target() -> Node {
    let b = Node::fresh();
    b.log.initialize(&voters(&[1, 2, 3])).expect("init");
    b.log
        .persist(&[entry(1, 1), entry(2, 1)], Some(&hard_state(1, 0, 2)))
        .expect("persist");
    put_value(&b.store, b"stale", 1, b"old", 2);
    put_value(&b.store, b"alpha", 1, b"older", 2);
    registry(&b.store)
        .put_writers(&[row(1, 9, 1)])
        .expect("registry");
    b
}

#[test]
fn snapshot_round_trip_into_a_fresh_store() {
    let (a, snap) = source();
    let m = snap.get_metadata();
    assert_eq!((m.index, m.term), (5, 2));
    assert_eq!(m.get_conf_state(), &voters(&[1, 2, 3]));

    // The checkpoint's dump is the same in any chunk size.
    let bytewise = dump_in_chunks(&a.log, &snap, 1);
    let dump = dump_of(&a.log, &snap);
    assert_eq!(bytewise, dump);
    assert_eq!(
        sealkv_store::snapshot_applied_index(&dump).expect("check the dump"),
        5
    );
    assert_eq!(dump, a.store.dump_snapshot().expect("dump").1);
    let b = target();
    b.store.install_snapshot(&dump).expect("install");
    // The log is untouched until its metadata is applied.
    assert_eq!(b.log.last_index(), 2);
    b.log.apply_snapshot(m).expect("apply");

    let b = b.reopen();
    assert_eq!(b.store.applied_index().expect("applied"), 5);
    assert_eq!(body(&b.store, b"alpha"), Some(b"three".to_vec()));
    let older = b
        .store
        .get_at(b"alpha", 4)
        .expect("get")
        .expect("version 3");
    assert_eq!(
        (older.commit_version, older.value.body),
        (3, b"one".to_vec())
    );
    assert_eq!(body(&b.store, b"beta\x00"), Some(b"two".to_vec()));
    assert_eq!(body(&b.store, b"stale"), None, "B's own rows are gone");
    assert_eq!(
        registry(&b.store).list_writers().expect("list"),
        registry(&a.store).list_writers().expect("list"),
    );
    assert_eq!((b.log.first_index(), b.log.last_index()), (6, 5));
    assert_eq!(b.log.term(5), Ok(2));
    assert_eq!(b.log.hard_state(), hard_state(2, 0, 5));
    assert_eq!(b.log.conf_state(), voters(&[1, 2, 3]));

    // B's own snapshot now dumps the same state machine.
    let again = b.log.snapshot(5, 1).expect("snapshot of B");
    assert_eq!(dump_of(&b.log, &again), dump);
    assert_eq!(again.get_metadata(), snap.get_metadata());
}

/// The dump of a snapshot `RaftLog::snapshot` took, streamed from its checkpoint in
/// chunks of `chunk` bytes and joined; the checkpoint is left in place.
fn dump_in_chunks(log: &RaftLog, snap: &raft::prelude::Snapshot, chunk: usize) -> Vec<u8> {
    let descriptor = SnapshotDescriptor::decode(&snap.data).expect("a descriptor");
    assert_eq!(descriptor.applied_index, snap.get_metadata().index);
    assert_eq!(
        (descriptor.total_bytes, descriptor.chunk_count),
        (0, 0),
        "unsealed"
    );
    let mut dump = Vec::new();
    let mut chunks = 0u64;
    let summary =
        sealkv_store::stream_checkpoint(log.snapshot_out_dir(), &descriptor, chunk, &mut |c| {
            assert!(c.len() <= chunk && !c.is_empty());
            chunks += 1;
            dump.extend_from_slice(&c);
            Ok(())
        })
        .expect("stream the checkpoint");
    assert_eq!(summary.total_bytes, dump.len() as u64);
    assert_eq!(summary.chunk_count, chunks);
    assert_eq!(
        summary.digest.as_slice(),
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &dump).as_ref()
    );
    dump
}

/// The dump of a snapshot, in chunks of 1 KiB, its checkpoint removed after.
fn dump_of(log: &RaftLog, snap: &raft::prelude::Snapshot) -> Vec<u8> {
    let dump = dump_in_chunks(log, snap, 1024);
    let descriptor = SnapshotDescriptor::decode(&snap.data).expect("a descriptor");
    sealkv_store::remove_checkpoint(log.snapshot_out_dir(), &descriptor);
    assert!(!descriptor.checkpoint_dir(log.snapshot_out_dir()).exists());
    dump
}

/// The dump's bytes: header, records with big-endian lengths, end marker with the
/// record count.
#[test]
fn snapshot_dump_layout() {
    let a = Node::fresh();
    a.log.persist(&[entry(1, 1)], None).expect("persist");
    put_value(&a.store, b"k", 1, b"v", 1);
    let data = dump_of(&a.log, &a.log.snapshot(1, 2).expect("snapshot"));

    let value = StoredValue::clear(b"v".to_vec(), 0).encode();
    let mut want = b"SKVS\x02".to_vec();
    push_record(&mut want, 1, &physical_key(b"k", 1), &value);
    push_record(&mut want, 2, b"applied_index", &1u64.to_be_bytes());
    want.push(0);
    want.extend_from_slice(&2u64.to_be_bytes());
    push_checksum(&mut want);
    assert_eq!(data, want);
}

/// Appends the SHA-256 of everything before it, as every dump ends.
pub(crate) fn push_checksum(out: &mut Vec<u8>) {
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, out);
    out.extend_from_slice(sum.as_ref());
}

pub(crate) fn push_record(out: &mut Vec<u8>, cf: u8, key: &[u8], value: &[u8]) {
    out.push(cf);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// A hand-built dump installs: the format is pinned from the reading side too.
#[test]
fn hand_built_dump_installs() {
    let b = target();
    let (key, record) = row(3, 4, 5);
    let mut dump = b"SKVS\x02".to_vec();
    push_record(&mut dump, 2, b"applied_index", &9u64.to_be_bytes());
    push_record(
        &mut dump,
        1,
        &physical_key(b"x", 8),
        &StoredValue::clear(b"y".to_vec(), 0).encode(),
    );
    push_record(&mut dump, 3, &key.encode(), &record.encode());
    dump.push(0);
    dump.extend_from_slice(&3u64.to_be_bytes());
    push_checksum(&mut dump);
    assert_eq!(
        sealkv_store::snapshot_applied_index(&dump).expect("check the dump"),
        9
    );
    b.store.install_snapshot(&dump).expect("install");
    assert_eq!(b.store.applied_index().expect("applied"), 9);
    assert_eq!(body(&b.store, b"x"), Some(b"y".to_vec()));
    assert_eq!(body(&b.store, b"alpha"), None);
    assert_eq!(
        registry(&b.store).list_writers().expect("list"),
        vec![(key, record)]
    );
}

/// What target() holds, to check that a refused dump changed nothing.
fn assert_target_unchanged(b: &Node) {
    assert_eq!(b.store.applied_index().expect("applied"), 2);
    assert_eq!(body(&b.store, b"stale"), Some(b"old".to_vec()));
    assert_eq!(body(&b.store, b"alpha"), Some(b"older".to_vec()));
    assert_eq!(
        registry(&b.store).list_writers().expect("list"),
        vec![row(1, 9, 1)]
    );
}

/// Refused by the install, and by the check a node runs before Raft takes a
/// snapshot (`snapshot_applied_index`) alike.
fn assert_corrupt_dump(store: &RocksStore, dump: &[u8], case: &str) {
    let checked = sealkv_store::snapshot_applied_index(dump).map(|_| ());
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), dump).expect("write dump file");
    let from_file = store.install_snapshot_file(file.path()).map(|_| ());
    for result in [checked, store.install_snapshot(dump), from_file] {
        assert_corrupt(result, case);
    }
}

/// A dump installed from a file (streamed, bounded batches) leaves the same store
/// as the same dump installed from memory, and the marker is gone.
#[test]
fn install_from_file_equals_install_from_memory() {
    let (a, snap) = source();
    // Enough rows for several install batches.
    let big = vec![0x5au8; 64 * 1024];
    for i in 0..200u64 {
        put_value(&a.store, format!("bulk{i:04}").as_bytes(), 1, &big, 5);
    }
    let (applied, dump) = a.store.dump_snapshot().expect("dump");
    assert_eq!(applied, 5);
    drop(snap);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &dump).expect("write dump file");

    let from_memory = target();
    from_memory
        .store
        .install_snapshot(&dump)
        .expect("install from memory");
    let from_file = target();
    assert_eq!(
        from_file
            .store
            .install_snapshot_file(file.path())
            .expect("install from file"),
        5
    );
    assert_eq!(
        from_file.store.snapshot_install_marker().expect("marker"),
        None
    );
    assert_eq!(
        from_file.store.dump_snapshot().expect("dump").1,
        from_memory.store.dump_snapshot().expect("dump").1
    );
    assert_eq!(from_file.store.dump_snapshot().expect("dump").1, dump);
    // Installing again is harmless (what startup does after a crash).
    from_file
        .store
        .install_snapshot_file(file.path())
        .expect("again");
    assert_eq!(from_file.store.dump_snapshot().expect("dump").1, dump);
}

/// Every prefix and every flipped byte of a dump file is refused before anything
/// is written.
#[test]
fn damaged_dump_files_are_refused() {
    let (a, _snap) = source();
    let (_, dump) = a.store.dump_snapshot().expect("dump");
    let b = target();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    for cut in (0..dump.len()).step_by(7) {
        std::fs::write(file.path(), &dump[..cut]).expect("write");
        assert_corrupt(
            b.store.install_snapshot_file(file.path()).map(|_| ()),
            &format!("cut at {cut}"),
        );
    }
    for at in (0..dump.len()).step_by(5) {
        let mut bad = dump.clone();
        bad[at] ^= 0x10;
        std::fs::write(file.path(), &bad).expect("write");
        assert_corrupt(
            b.store.install_snapshot_file(file.path()).map(|_| ()),
            &format!("flipped at {at}"),
        );
    }
    let mut long = dump.clone();
    long.push(0);
    std::fs::write(file.path(), &long).expect("write");
    assert_corrupt(
        b.store.install_snapshot_file(file.path()).map(|_| ()),
        "a byte after the checksum",
    );
    assert_target_unchanged(&b);
}

fn assert_corrupt(result: sealkv_store::Result<()>, case: &str) {
    match result {
        Err(StoreError::Corrupt {
            what: "snapshot dump" | "applied index",
            ..
        }) => {}
        other => panic!("{case}: want a corrupt dump error, got {other:?}"),
    }
}

/// A dump cut short at any offset, even between two records, is refused and the
/// store keeps its state.
#[test]
fn truncated_dump_is_refused_at_every_offset() {
    let (_a, snap) = source();
    let data = snap.data.to_vec();
    let b = target();
    for cut in 0..data.len() {
        assert_corrupt_dump(
            &b.store,
            &data[..cut],
            &format!("cut at {cut} of {}", data.len()),
        );
    }
    let b = b.reopen();
    assert_target_unchanged(&b);
}

#[test]
fn malformed_dumps_are_refused() {
    // The end marker and a checksum that matches, so each case fails on its own
    // defect and not on the checksum.
    let valid_tail = |out: &mut Vec<u8>, count: u64| {
        out.push(0);
        out.extend_from_slice(&count.to_be_bytes());
        push_checksum(out);
    };
    let applied = |out: &mut Vec<u8>| push_record(out, 2, b"applied_index", &9u64.to_be_bytes());
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    let mut d = b"SKVX\x02".to_vec();
    applied(&mut d);
    valid_tail(&mut d, 1);
    cases.push(("wrong magic", d));

    let mut d = b"SKVS\x01".to_vec();
    applied(&mut d);
    valid_tail(&mut d, 1);
    cases.push(("version 1, without a checksum field", d));

    let mut d = b"SKVS\x02".to_vec();
    applied(&mut d);
    push_record(&mut d, 4, b"k", b"v");
    valid_tail(&mut d, 2);
    cases.push(("unknown cf_id (raft)", d));

    let mut d = b"SKVS\x02".to_vec();
    applied(&mut d);
    d.push(1);
    d.extend_from_slice(&u32::MAX.to_be_bytes());
    d.extend_from_slice(b"short");
    cases.push(("key length overruns", d));

    let mut d = b"SKVS\x02".to_vec();
    applied(&mut d);
    valid_tail(&mut d, 1);
    d.push(0);
    cases.push(("trailing byte", d));

    let mut d = b"SKVS\x02".to_vec();
    applied(&mut d);
    valid_tail(&mut d, 2);
    cases.push(("record count too high", d));

    let mut d = b"SKVS\x02".to_vec();
    push_record(&mut d, 1, &physical_key(b"x", 1), b"");
    valid_tail(&mut d, 1);
    cases.push(("no applied index", d));

    let mut d = b"SKVS\x02".to_vec();
    push_record(&mut d, 2, b"applied_index", &[0, 9]);
    valid_tail(&mut d, 1);
    cases.push(("applied index of 2 bytes", d));

    let mut d = b"SKVS\x02".to_vec();
    applied(&mut d);
    valid_tail(&mut d, 1);
    d[10] ^= 0x01;
    cases.push(("a flipped byte in a record", d));

    let mut d = b"SKVS\x02".to_vec();
    applied(&mut d);
    valid_tail(&mut d, 1);
    let last = d.len() - 1;
    d[last] ^= 0x01;
    cases.push(("a flipped byte in the checksum", d));

    cases.push(("shorter than a checksum", b"SKVS\x02".to_vec()));

    let b = target();
    for (case, dump) in &cases {
        assert_corrupt_dump(&b.store, dump, case);
    }
    assert_target_unchanged(&b);
}

// --- driven by raft-rs itself -------------------------------------------------------

/// A node as the Ready protocol drives it: a RawNode over a RaftLog, applying
/// committed entries into its store (key = entry data, version = index).
struct Peer {
    node: Node,
    raw: raft::RawNode<RaftLog>,
}

fn raft_config(id: u64, applied: u64) -> raft::Config {
    let config = raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        applied,
        ..raft::Config::default()
    };
    config.validate().expect("valid raft config");
    config
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn start_peer(node: Node, id: u64) -> Peer {
    let applied = node.store.applied_index().expect("applied");
    let raw = raft::RawNode::new(&raft_config(id, applied), node.log.clone(), &logger())
        .expect("raw node");
    Peer { node, raw }
}

fn apply(store: &RocksStore, entries: Vec<Entry>) {
    for e in entries {
        let mut batch = WriteBatch::new();
        if !e.data.is_empty() {
            batch
                .put(&e.data, e.index, StoredValue::clear(e.data.to_vec(), 0))
                .expect("put");
        }
        batch.set_applied_index(e.index);
        store.commit(batch).expect("apply");
    }
}

/// Handles one Ready the way the node will, returning the messages to send.
fn on_ready(p: &mut Peer) -> Vec<raft::prelude::Message> {
    if !p.raw.has_ready() {
        return Vec::new();
    }
    let mut ready = p.raw.ready();
    let mut out = ready.take_messages();
    if !ready.snapshot().is_empty() {
        let snap = ready.snapshot().clone();
        p.node.store.install_snapshot(&snap.data).expect("install");
        p.node
            .log
            .apply_snapshot(snap.get_metadata())
            .expect("apply snapshot");
    }
    apply(&p.node.store, ready.take_committed_entries());
    p.node
        .log
        .persist(ready.entries(), ready.hs())
        .expect("persist");
    out.extend(ready.take_persisted_messages());
    let mut light = p.raw.advance(ready);
    if let Some(commit) = light.commit_index() {
        p.node.log.set_hard_state_commit(commit).expect("commit");
    }
    out.extend(light.take_messages());
    apply(&p.node.store, light.take_committed_entries());
    p.raw.advance_apply();
    out
}

/// Runs Ready rounds and delivers messages until nothing moves (bounded).
fn settle(peers: &mut [Peer]) {
    for _ in 0..100 {
        let mut messages = Vec::new();
        for p in peers.iter_mut() {
            messages.extend(on_ready(p));
        }
        if messages.is_empty() {
            return;
        }
        for mut m in messages {
            if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                // What the transport does: stream the dump from the sender's
                // checkpoint; here it replaces the descriptor in the message.
                let from = peers
                    .iter()
                    .find(|p| p.raw.raft.id == m.from)
                    .expect("known sender");
                let dump = dump_of(&from.node.log, m.get_snapshot());
                m.mut_snapshot().set_data(dump.into());
            }
            let to = peers
                .iter_mut()
                .find(|p| p.raw.raft.id == m.to)
                .expect("known peer");
            to.raw.step(m).expect("step");
        }
    }
    panic!("raft did not settle in 100 rounds");
}

/// A leader proposes, commits, applies and compacts its log; a learner that has
/// nothing is then caught up by raft-rs with a snapshot built by RaftLog::snapshot
/// and installed with install_snapshot + apply_snapshot, then by ordinary appends;
/// and both restart from disk where they stopped.
#[test]
fn raft_rs_catches_up_a_learner_with_a_snapshot() {
    let mut cs = voters(&[1]);
    cs.learners = vec![2];
    let leader = Node::fresh();
    leader.log.initialize(&cs).expect("init");
    let learner = Node::fresh();
    learner.log.initialize(&cs).expect("init");
    let mut peers = [start_peer(leader, 1), start_peer(learner, 2)];

    // The leader runs alone first: its messages to the learner are dropped.
    peers[0].raw.campaign().expect("campaign");
    for i in 0..5u8 {
        peers[0]
            .raw
            .propose(vec![], vec![b'k', i])
            .expect("propose");
        while peers[0].raw.has_ready() {
            drop(on_ready(&mut peers[0]));
        }
    }
    let applied = peers[0].node.store.applied_index().expect("applied");
    assert_eq!(applied, 6, "the leader's empty entry and five proposals");
    assert_eq!(peers[0].node.log.hard_state().commit, 6);
    peers[0].node.log.compact(applied + 1).expect("compact");
    assert_eq!(peers[0].node.log.first_index(), 7);

    // A heartbeat makes the leader probe the learner, whose entries are compacted
    // away: only a snapshot can catch it up.
    peers[0].raw.tick();
    settle(&mut peers);
    let learner = &peers[1].node;
    assert_eq!(learner.store.applied_index().expect("applied"), 6);
    assert_eq!(
        (learner.log.first_index(), learner.log.last_index()),
        (7, 6)
    );
    for i in 0..5u8 {
        assert_eq!(body(&learner.store, &[b'k', i]), Some(vec![b'k', i]));
    }

    // Ordinary replication continues after the snapshot.
    peers[0]
        .raw
        .propose(vec![], b"k9".to_vec())
        .expect("propose");
    settle(&mut peers);
    for p in &peers {
        assert_eq!(p.node.store.applied_index().expect("applied"), 7);
        assert_eq!(body(&p.node.store, b"k9"), Some(b"k9".to_vec()));
    }

    // Both restart from disk with their logs and state where they were.
    let [leader, learner] = peers;
    for (id, Peer { node, raw }) in [(1, leader), (2, learner)] {
        // The RawNode holds a clone of the log, and so the database.
        drop(raw);
        let node = node.reopen();
        assert_eq!(node.log.hard_state().commit, 7, "peer {id}");
        assert_eq!(node.log.last_index(), 7, "peer {id}");
        let restarted = start_peer(node, id);
        assert_eq!(restarted.raw.raft.raft_log.committed, 7, "peer {id}");
        assert_eq!(restarted.raw.raft.raft_log.last_index(), 7, "peer {id}");
        assert_eq!(restarted.raw.raft.raft_log.term(7), Ok(1), "peer {id}");
    }
}

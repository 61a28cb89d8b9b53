//! The state machine's apply path on RocksDB with synced commits: batches of `SET`
//! entries, and reads of the latest value.
//!
//! Run with `cargo xtask bench` (or `cargo bench -p sealkv-kv`).

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sealkv_kv::{Command, Entry, KvFsm, KvRequest, PutCondition};
use sealkv_store::{RocksStore, RocksStoreOptions};

const NOW_MS: u64 = 1_700_000_000_000;

fn set_entry(key: usize, value_len: usize) -> Vec<u8> {
    KvRequest {
        issued_at_ms: NOW_MS,
        commands: vec![Command::Put {
            key: format!("key:{key:08}").into_bytes(),
            value: vec![b'v'; value_len],
            expire_at_ms: 0,
            condition: PutCondition::Always,
        }],
    }
    .to_entry()
    .expect("encode")
}

fn apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        RocksStore::open(dir.path().join("db"), RocksStoreOptions::default()).expect("open");
    let mut fsm = KvFsm::new(Arc::new(store)).expect("fsm");
    // The next Raft index; the setup and the routine both read it.
    let next_index = std::cell::Cell::new(1u64);
    let mut group = c.benchmark_group("apply");
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("set_256B_x{batch}_synced"), |b| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|i| set_entry((next_index.get() as usize + i) % 100_000, 256))
                        .collect::<Vec<_>>()
                },
                |datas| {
                    let entries: Vec<Entry<'_>> = datas
                        .iter()
                        .map(|data| {
                            let index = next_index.get();
                            next_index.set(index + 1);
                            Entry { index, data }
                        })
                        .collect();
                    fsm.apply(&entries).expect("apply");
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();

    let reader = fsm.reader();
    let mut key = 0usize;
    c.bench_function("read/get_latest_256B", |b| {
        b.iter(|| {
            key = (key + 7919) % 1000;
            reader
                .get(format!("key:{key:08}").as_bytes(), NOW_MS)
                .expect("get")
        });
    });
}

criterion_group!(benches, apply);
criterion_main!(benches);

//! Builds state machines over RocksDB in a temp dir, and entries to feed them.

use std::path::Path;
use std::sync::Arc;

use sealkv_encryption::applier::Applier;
use sealkv_kv::{Command, Entry, EntryOutcome, Halted, KvFsm, KvRequest, PutCondition};
use sealkv_store::{KvStore, RocksStore, RocksStoreOptions, RocksWriterRegistry};

/// The clock of every request in these tests.
pub const NOW: u64 = 1_700_000_000_000;

/// Opens the store in `dir` and builds the FSM the way the node does: store,
/// registry glue, applier, FSM with encryption.
pub fn open_fsm(dir: &Path) -> KvFsm {
    let store = Arc::new(RocksStore::open(dir, RocksStoreOptions::default()).expect("open store"));
    let registry = RocksWriterRegistry::from_store(&store).expect("registry glue");
    KvFsm::new(store)
        .expect("fsm")
        .with_encryption(Applier::new(Arc::new(registry)))
}

/// The same, without the encryption applier.
pub fn open_plain_fsm(dir: &Path) -> KvFsm {
    let store: Arc<dyn KvStore> =
        Arc::new(RocksStore::open(dir, RocksStoreOptions::default()).expect("open store"));
    KvFsm::new(store).expect("fsm")
}

/// Applies the KV entry `data` as the next index; its replies.
pub fn apply_kv(fsm: &mut KvFsm, data: &[u8]) -> Vec<sealkv_kv::Reply> {
    let index = fsm.applied_index() + 1;
    let out = fsm.apply(&[Entry { index, data }]).expect("apply");
    match &out[..] {
        [o] => match &o.outcome {
            sealkv_kv::Outcome::Kv(r) => r.clone(),
            other => panic!("unexpected outcome {other:?}"),
        },
        other => panic!("unexpected outcomes {other:?}"),
    }
}

pub fn request(commands: Vec<Command>) -> Vec<u8> {
    KvRequest {
        issued_at_ms: NOW,
        commands,
    }
    .to_entry()
    .expect("encode request")
}

pub fn set(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        expire_at_ms: 0,
        condition: PutCondition::Always,
    }
}

pub fn put(key: &str, value: &str, expire_at_ms: u64, condition: PutCondition) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        expire_at_ms,
        condition,
    }
}

pub fn incr(key: &str, delta: i64) -> Command {
    Command::IncrBy {
        key: key.into(),
        delta,
    }
}

/// Applies each data blob as the next entry, one call per entry.
pub fn apply_each(fsm: &mut KvFsm, datas: &[Vec<u8>]) -> Result<Vec<EntryOutcome>, Halted> {
    let mut out = Vec::new();
    for data in datas {
        let index = fsm.applied_index() + 1;
        out.extend(fsm.apply(&[Entry { index, data }])?);
    }
    Ok(out)
}

pub fn get(fsm: &KvFsm, key: &str) -> Option<String> {
    fsm.get(key.as_bytes(), NOW)
        .expect("get")
        .map(|v| String::from_utf8(v).expect("utf8"))
}

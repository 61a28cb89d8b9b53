//! The applier's registration rules (DESIGN.md §5) as a table, plus dispatch of the
//! rest of the encryption band, over the in-memory registry. The RocksDB registry
//! runs the same applier in sealkv-store's and sealkv-kv's tests.

use std::sync::Arc;

use sealkv_encryption::applier::{Applied, Applier, ApplyError, RegistrationOutcome};
use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::testing::{MemoryRegistry, writer_registry_conformance};
use sealkv_encryption::{RegistryStoreError, WriterRegistryStore};
use sealkv_fsmwire::{
    BootstrapPayload, OP_BOOTSTRAP, OP_REGISTRATION, OP_ROTATION, Purpose, RegistrationPayload,
    RotationPayload, RotationSubtag,
};

const NODE_A: u64 = 0x0000_0001_0000_0007;
/// Shares node_id16 0x0007 with NODE_A.
const NODE_B: u64 = 0x0000_0002_0000_0007;

fn reg(dek_id: u32, full_node_id: u64, local_epoch: u16) -> RegistrationPayload {
    RegistrationPayload {
        dek_id,
        full_node_id,
        local_epoch,
    }
}

fn setup() -> (Arc<MemoryRegistry>, Applier) {
    let store = Arc::new(MemoryRegistry::new());
    let applier = Applier::new(store.clone());
    (store, applier)
}

fn row(store: &MemoryRegistry, dek: u32, node: u64) -> Option<WriterRecord> {
    store
        .get_writer(WriterKey::for_node(dek, node))
        .expect("get row")
}

fn record(full_node_id: u64, first: u16, last: u16) -> WriterRecord {
    WriterRecord {
        full_node_id,
        first_seen_local_epoch: first,
        last_seen_local_epoch: last,
    }
}

enum Want {
    Ok(RegistrationOutcome),
    Rollback { epoch: u16, last: u16 },
    Collision { registered: u64, proposed: u64 },
}

/// Applies `history` then `entry`, and checks the outcome and the row afterwards.
fn check(
    name: &str,
    history: &[RegistrationPayload],
    entry: RegistrationPayload,
    want: Want,
    row_after: WriterRecord,
) {
    let (store, applier) = setup();
    for h in history {
        applier
            .apply_registration(h)
            .unwrap_or_else(|e| panic!("{name}: history: {e}"));
    }
    let got = applier.apply(1, OP_REGISTRATION, &entry.encode());
    match (want, got) {
        (Want::Ok(w), Ok(Applied::Registration(g))) => assert_eq!(g, w, "{name}"),
        (
            Want::Rollback { epoch, last },
            Err(ApplyError::EpochRollback {
                epoch: e,
                last_seen_local_epoch: l,
                dek_id,
                full_node_id,
                ..
            }),
        ) => {
            assert_eq!(
                (e, l, dek_id, full_node_id),
                (epoch, last, entry.dek_id, entry.full_node_id),
                "{name}"
            );
        }
        (
            Want::Collision {
                registered,
                proposed,
            },
            Err(ApplyError::NodeIdCollision {
                registered_full_node_id,
                proposed_full_node_id,
                node_id16,
                ..
            }),
        ) => {
            assert_eq!(
                (registered_full_node_id, proposed_full_node_id, node_id16),
                (registered, proposed, 7),
                "{name}"
            );
        }
        (_, got) => panic!("{name}: unexpected {got:?}"),
    }
    assert_eq!(
        row(&store, entry.dek_id, entry.full_node_id),
        Some(row_after),
        "{name}: row after"
    );
}

#[test]
fn registration_rules() {
    check(
        "insert",
        &[],
        reg(1, NODE_A, 4),
        Want::Ok(RegistrationOutcome::Inserted),
        record(NODE_A, 4, 4),
    );
    check(
        "advance keeps first",
        &[reg(1, NODE_A, 4)],
        reg(1, NODE_A, 9),
        Want::Ok(RegistrationOutcome::Advanced { previous_last: 4 }),
        record(NODE_A, 4, 9),
    );
    check(
        "equal epoch is a replay",
        &[reg(1, NODE_A, 4), reg(1, NODE_A, 9)],
        reg(1, NODE_A, 9),
        Want::Ok(RegistrationOutcome::Replayed),
        record(NODE_A, 4, 9),
    );
    check(
        "rollback halts and changes nothing",
        &[reg(1, NODE_A, 4), reg(1, NODE_A, 9)],
        reg(1, NODE_A, 5),
        Want::Rollback { epoch: 5, last: 9 },
        record(NODE_A, 4, 9),
    );
    check(
        "collision halts and changes nothing",
        &[reg(1, NODE_A, 4)],
        reg(1, NODE_B, 4),
        Want::Collision {
            registered: NODE_A,
            proposed: NODE_B,
        },
        record(NODE_A, 4, 4),
    );
    check(
        "collision wins over a higher epoch",
        &[reg(1, NODE_A, 4)],
        reg(1, NODE_B, 100),
        Want::Collision {
            registered: NODE_A,
            proposed: NODE_B,
        },
        record(NODE_A, 4, 4),
    );
}

/// Rows are per DEK: the same node starts fresh under a new DEK, and a node16
/// collision under one DEK says nothing about another.
#[test]
fn rows_are_per_dek() {
    let (store, applier) = setup();
    applier
        .apply_registration(&reg(1, NODE_A, 9))
        .expect("dek 1");
    assert_eq!(
        applier
            .apply_registration(&reg(2, NODE_A, 1))
            .expect("dek 2"),
        RegistrationOutcome::Inserted
    );
    assert_eq!(
        applier
            .apply_registration(&reg(3, NODE_B, 1))
            .expect("dek 3"),
        RegistrationOutcome::Inserted
    );
    assert_eq!(store.list_writers().expect("list").len(), 3);
}

#[test]
fn malformed_payloads_are_decode_errors() {
    let (store, applier) = setup();
    let mut payload = reg(1, NODE_A, 1).encode();
    payload.push(0);
    for (opcode, bytes) in [
        (OP_REGISTRATION, payload.as_slice()),
        (OP_BOOTSTRAP, &[1, 0][..]),
        (OP_ROTATION, &[2][..]),
    ] {
        match applier.apply(1, opcode, bytes) {
            Err(ApplyError::Decode { opcode: o, .. }) => assert_eq!(o, opcode),
            other => panic!("opcode {opcode:#x}: {other:?}"),
        }
    }
    assert!(store.list_writers().expect("list").is_empty());
}

/// Stage 6A: bootstrap and rotation decode, then refuse for want of a KEK; the
/// reserved opcodes are unsupported. Nothing is written.
#[test]
fn stage_6a_refuses_key_installing_entries() {
    let (store, applier) = setup();
    let boot = BootstrapPayload {
        storage_dek_id: 1,
        wrapped_storage: vec![0; 60],
        raft_dek_id: 2,
        wrapped_raft: vec![0; 60],
        batch_registry: vec![reg(1, NODE_A, 1)],
    };
    let rot = RotationPayload {
        subtag: RotationSubtag::RotateDek,
        dek_id: 3,
        purpose: Purpose::Storage,
        wrapped: vec![0; 60],
        proposer_registration: reg(3, NODE_A, 1),
    };
    let boot_err = applier.apply(5, OP_BOOTSTRAP, &boot.encode().expect("encode"));
    assert!(
        matches!(
            boot_err,
            Err(ApplyError::KekNotConfigured {
                opcode: OP_BOOTSTRAP
            })
        ),
        "{boot_err:?}"
    );
    let rot_err = applier.apply(6, OP_ROTATION, &rot.encode().expect("encode"));
    assert!(
        matches!(
            rot_err,
            Err(ApplyError::KekNotConfigured {
                opcode: OP_ROTATION
            })
        ),
        "{rot_err:?}"
    );
    for op in [0x06, 0x07] {
        assert!(
            matches!(applier.apply(7, op, &[]), Err(ApplyError::UnsupportedOpcode(o)) if o == op)
        );
    }
    assert!(store.list_writers().expect("list").is_empty());
}

/// A store whose reads fail: the applier passes the failure up, never treating it as
/// a missing row.
struct FailingStore;

impl WriterRegistryStore for FailingStore {
    fn get_writer(&self, _: WriterKey) -> Result<Option<WriterRecord>, RegistryStoreError> {
        Err(RegistryStoreError::Backend {
            op: "read row",
            source: "disk on fire".into(),
        })
    }
    fn put_writers(&self, _: &[(WriterKey, WriterRecord)]) -> Result<(), RegistryStoreError> {
        Err(RegistryStoreError::Backend {
            op: "sync rows",
            source: "disk on fire".into(),
        })
    }
    fn list_writers(&self) -> Result<Vec<(WriterKey, WriterRecord)>, RegistryStoreError> {
        Ok(Vec::new())
    }
}

#[test]
fn store_errors_propagate() {
    let applier = Applier::new(Arc::new(FailingStore));
    let err = applier
        .apply_registration(&reg(1, NODE_A, 1))
        .expect_err("store failure");
    assert!(
        matches!(
            err,
            ApplyError::Store(RegistryStoreError::Backend { op: "read row", .. })
        ),
        "{err:?}"
    );
}

#[test]
fn memory_registry_conforms() {
    writer_registry_conformance(MemoryRegistry::new);
}

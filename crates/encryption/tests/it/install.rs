//! The key-installing applier: bootstrap and rotation through
//! `Applier::with_keyring` over the in-memory registry, their replays and refusals,
//! and crashes between their durable steps.

use std::sync::Arc;

use sealkv_encryption::applier::{Applied, Applier, ApplyError, EnvelopeSwitch, Rejection};
use sealkv_encryption::durable::{DurableStep, durable_replace_stop_after};
use sealkv_encryption::keyring::{Keyring, KeyringError, VALUE_HEADER_LEN};
use sealkv_encryption::registry::{WriterKey, WriterRecord};
use sealkv_encryption::sidecar::{SIDECAR_MODE, sidecar_path, to_json};
use sealkv_encryption::testing::MemoryRegistry;
use sealkv_encryption::{RegistryStoreError, WriterRegistryStore};
use sealkv_fsmwire::{OP_BOOTSTRAP, OP_ROTATION, Purpose};

use crate::keyfixture::{
    COLLIDER, KEK_BYTES, NODE, Node, OTHER, bootstrap, provider, rotation, row, sidecar_bytes,
    sidecar_on_disk, wrapped,
};

/// A third member (node16 0x000b).
const THIRD: u64 = 0x0000_0004_0000_000b;

const HEADER: [u8; VALUE_HEADER_LEN] = [0x02, 0, 0, 0, 0, 0, 0, 0, 0];

fn record(full_node_id: u64, first: u16, last: u16) -> WriterRecord {
    WriterRecord {
        full_node_id,
        first_seen_local_epoch: first,
        last_seen_local_epoch: last,
    }
}

/// The sidecar on disk with its applied index cleared: a refusal moves only the
/// index (see `Applier::apply`) and must leave the rest alone.
fn keys_of(node: &Node) -> Option<sealkv_encryption::sidecar::Sidecar> {
    sidecar_on_disk(node.path()).map(|mut doc| {
        doc.raft_applied_index = 0;
        doc
    })
}

/// A refusal on a node that never had keys leaves a sidecar without keys at its
/// index.
fn assert_only_index_recorded(node: &Node, index: u64) {
    let doc = sidecar_on_disk(node.path()).expect("sidecar");
    assert_eq!(doc.raft_applied_index, index);
    assert!(doc.keys.as_ref().is_none_or(|k| k.is_empty()), "{doc:?}");
    assert_eq!((doc.active.storage, doc.active.raft), (0, 0));
}

fn rows(registry: &MemoryRegistry) -> Vec<(WriterKey, WriterRecord)> {
    registry.list_writers().expect("list")
}

fn apply_boot(
    node: &Node,
    index: u64,
    storage: u32,
    raft: u32,
    rows: Vec<sealkv_fsmwire::RegistrationPayload>,
) -> Result<Applied, ApplyError> {
    let payload = bootstrap(storage, raft, rows).encode().expect("encode");
    node.applier.apply(index, OP_BOOTSTRAP, &payload)
}

fn apply_rot(
    node: &Node,
    index: u64,
    rot: sealkv_fsmwire::RotationPayload,
) -> Result<Applied, ApplyError> {
    node.applier
        .apply(index, OP_ROTATION, &rot.encode().expect("encode"))
}

/// The standard bootstrap: keys 1 (storage) and 2 (raft), this node at epoch 1 and
/// another member at epoch 3.
fn standard_boot(node: &Node, index: u64) -> Result<Applied, ApplyError> {
    apply_boot(
        node,
        index,
        1,
        2,
        vec![
            row(1, NODE, 1),
            row(2, NODE, 1),
            row(1, OTHER, 3),
            row(2, OTHER, 3),
        ],
    )
}

fn bootstrapped() -> Applied {
    Applied::Bootstrapped {
        storage_key_id: 1,
        raft_key_id: 2,
    }
}

#[test]
fn bootstrap_installs_keys_writes_sidecar_and_rows() {
    let node = Node::fresh();
    assert_eq!(standard_boot(&node, 10).expect("bootstrap"), bootstrapped());

    let k = &node.keyring;
    assert!(k.is_bootstrapped());
    assert_eq!(k.key_ids(), [1, 2]);
    assert_eq!(k.active_key_id(Purpose::Storage), Some(1));
    assert_eq!(k.active_key_id(Purpose::Raft), Some(2));
    assert_eq!(k.sidecar_applied_index(), 10);
    assert_eq!(k.local_epochs(), [(1, 1), (2, 1)]);
    // Bootstrap switches no envelope on.
    assert!(!k.storage_envelope_active());
    assert_eq!(k.raft_envelope_cutover_index(), 0);

    let disk = sidecar_on_disk(node.path()).expect("sidecar written");
    assert_eq!(disk.raft_applied_index, 10);
    assert_eq!((disk.active.storage, disk.active.raft), (1, 2));
    for (id, purpose) in [(1, "storage"), (2, "raft")] {
        let key = disk.key(id).expect("key on disk");
        assert_eq!(key.purpose, purpose);
        assert_eq!(key.local_epoch, 1);
        assert!(
            key.created.ends_with('Z') && key.created.len() == 20,
            "{}",
            key.created
        );
        assert_eq!(key.wrapped.as_ref().map(Vec::len), Some(60));
    }
    assert_eq!(k.sidecar(), Some(disk));

    assert_eq!(
        rows(&node.registry),
        [
            (
                WriterKey {
                    dek_id: 1,
                    node_id16: 7
                },
                record(NODE, 1, 1)
            ),
            (
                WriterKey {
                    dek_id: 1,
                    node_id16: 9
                },
                record(OTHER, 3, 3)
            ),
            (
                WriterKey {
                    dek_id: 2,
                    node_id16: 7
                },
                record(NODE, 1, 1)
            ),
            (
                WriterKey {
                    dek_id: 2,
                    node_id16: 9
                },
                record(OTHER, 3, 3)
            ),
        ]
    );

    // This node's rows were in the batch: it seals at once, and the keys are the
    // payload's DEKs.
    assert!(k.pending_registrations().is_empty());
    let sealed = k.seal_storage(b"value", &HEADER, b"key").expect("seal");
    assert_eq!(
        k.open_storage(&sealed, &HEADER, b"key").expect("open"),
        b"value"
    );
    let mut ks = sealkv_encryption::envelope::Keystore::new();
    ks.insert(
        1,
        sealkv_encryption::envelope::Dek::from_bytes(crate::keyfixture::dek_bytes(1)),
    )
    .expect("insert");
    let context = [&HEADER[..], b"key"].concat();
    let opened = ks
        .open_envelope(
            &sealed,
            sealkv_encryption::envelope::AadMode::Storage { context: &context },
        )
        .expect("the payload's DEK opens it");
    assert_eq!(opened.plaintext, b"value");

    // After a restart the epoch is above the batch's and must be registered again.
    let node = node.restart();
    assert_eq!(node.keyring.local_epochs(), [(1, 2), (2, 2)]);
    assert!(matches!(
        node.keyring.seal_raft(b"p"),
        Err(KeyringError::NotRegistered {
            key_id: 2,
            epoch: 2
        })
    ));
    node.register();
    node.keyring.seal_raft(b"p").expect("registered again");
    assert_eq!(
        node.registry
            .get_writer(WriterKey::for_node(2, NODE))
            .expect("get"),
        Some(record(NODE, 1, 2))
    );
}

#[test]
fn bootstrap_without_this_nodes_row_seals_at_once_and_asks_to_register() {
    let node = Node::fresh();
    apply_boot(&node, 4, 1, 2, vec![row(1, OTHER, 1), row(2, OTHER, 1)]).expect("bootstrap");
    assert_eq!(node.keyring.local_epochs(), [(1, 0), (2, 0)]);
    assert_eq!(
        node.keyring.pending_registrations(),
        [row(1, NODE, 0), row(2, NODE, 0)]
    );
    // The keys are new in this load, so epoch 0 was never used under them with
    // this node16: they seal at once, and the registration records it.
    let sealed = node
        .keyring
        .seal_storage(b"v", &HEADER, b"k")
        .expect("seals");
    assert_eq!(sealed[8..10], 0u16.to_be_bytes(), "epoch 0 in the nonce");
    // Another node's registration does not count for this node; its own does.
    node.applier
        .apply_registration(&row(1, THIRD, 0))
        .expect("other node");
    assert_eq!(
        node.keyring.pending_registrations(),
        [row(1, NODE, 0), row(2, NODE, 0)]
    );
    node.applier
        .apply_registration(&row(1, NODE, 0))
        .expect("own registration");
    assert_eq!(node.keyring.pending_registrations(), [row(2, NODE, 0)]);
}

#[test]
fn bootstrap_replay_at_the_same_index_changes_nothing() {
    let node = Node::fresh();
    standard_boot(&node, 10).expect("bootstrap");
    let (sidecar, registry) = (sidecar_bytes(node.path()), rows(&node.registry));
    for _ in 0..2 {
        assert_eq!(
            standard_boot(&node, 10).expect("replay"),
            Applied::Replayed {
                opcode: OP_BOOTSTRAP
            }
        );
    }
    // The same keys at an index the sidecar is past is a replay too.
    assert_eq!(
        node.applier
            .apply_bootstrap(9, &bootstrap(1, 2, vec![]))
            .expect("replay"),
        Applied::Replayed {
            opcode: OP_BOOTSTRAP
        }
    );
    // Other keys at such an index were refused when first applied.
    assert_eq!(
        node.applier
            .apply_bootstrap(9, &bootstrap(1, 5, vec![]))
            .expect("refusal"),
        Applied::Rejected {
            reason: Rejection::Superseded { sidecar_index: 10 }
        }
    );
    assert_eq!(sidecar_bytes(node.path()), sidecar);
    assert_eq!(rows(&node.registry), registry);
    assert_eq!(node.keyring.local_epochs(), [(1, 1), (2, 1)]);
}

#[test]
fn second_bootstrap_is_rejected_and_changes_nothing() {
    let node = Node::fresh();
    standard_boot(&node, 10).expect("bootstrap");
    let (sidecar, registry) = (keys_of(&node), rows(&node.registry));
    for (index, storage, raft) in [(11, 3, 4), (12, 1, 2), (13, 0, 5)] {
        assert_eq!(
            apply_boot(&node, index, storage, raft, vec![row(storage, OTHER, 9)]).expect("refusal"),
            Applied::Rejected {
                reason: Rejection::AlreadyBootstrapped
            },
            "index {index}"
        );
    }
    assert_eq!(keys_of(&node), sidecar);
    assert_eq!(node.keyring.sidecar_applied_index(), 13);
    assert_eq!(rows(&node.registry), registry);
    assert_eq!(node.keyring.key_ids(), [1, 2]);
}

#[test]
fn malformed_bootstraps_are_rejected_before_anything_is_written() {
    let cases = [
        (
            0,
            2,
            Rejection::ReservedKeyId {
                purpose: Purpose::Storage,
            },
        ),
        (
            1,
            0,
            Rejection::ReservedKeyId {
                purpose: Purpose::Raft,
            },
        ),
        (3, 3, Rejection::SameKeyIds { key_id: 3 }),
    ];
    for (storage, raft, reason) in cases {
        let node = Node::fresh();
        assert_eq!(
            apply_boot(&node, 5, storage, raft, vec![row(storage, NODE, 1)]).expect("refusal"),
            Applied::Rejected { reason },
            "{storage}/{raft}"
        );
        assert_only_index_recorded(&node, 5);
        assert!(rows(&node.registry).is_empty());
        assert!(!node.keyring.is_bootstrapped());
    }
}

#[test]
fn bootstrap_halts_on_a_wrong_kek_or_a_bad_batch_and_writes_nothing() {
    // Keys wrapped under another KEK.
    let node = Node::fresh();
    let mut payload = bootstrap(1, 2, vec![row(1, NODE, 1)]);
    payload.wrapped_raft = sealkv_encryption::kek::wrap_dek(
        &sealkv_encryption::kek::Kek::from_bytes([0x99; 32]),
        &[1; 32],
    )
    .expect("wrap")
    .to_vec();
    match node.applier.apply_bootstrap(5, &payload) {
        Err(ApplyError::Keyring(KeyringError::KekDoesNotUnwrap { key_id: 2, .. })) => {}
        other => panic!("wrong kek: {other:?}"),
    }
    // A wrapped blob of the wrong length is the same halt.
    payload.wrapped_raft = vec![0; 12];
    assert!(matches!(
        node.applier.apply_bootstrap(5, &payload),
        Err(ApplyError::Keyring(KeyringError::KekDoesNotUnwrap {
            key_id: 2,
            ..
        }))
    ));
    assert!(sidecar_bytes(node.path()).is_none());
    assert!(rows(&node.registry).is_empty());
    assert!(node.keyring.key_ids().is_empty());

    // Two nodes sharing node16 in the batch.
    let node = Node::fresh();
    let err = apply_boot(&node, 5, 1, 2, vec![row(1, NODE, 1), row(1, COLLIDER, 1)])
        .expect_err("collision");
    assert!(
        matches!(err, ApplyError::NodeIdCollision { dek_id: 1, .. }),
        "{err:?}"
    );
    // An epoch going backwards inside the batch.
    let err =
        apply_boot(&node, 5, 1, 2, vec![row(2, OTHER, 4), row(2, OTHER, 3)]).expect_err("rollback");
    assert!(
        matches!(
            err,
            ApplyError::EpochRollback {
                dek_id: 2,
                epoch: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(sidecar_bytes(node.path()).is_none());
    assert!(rows(&node.registry).is_empty());
    assert!(!node.keyring.is_bootstrapped());
}

#[test]
fn applier_without_a_keyring_still_refuses_key_installs() {
    let applier = Applier::new(Arc::new(MemoryRegistry::new()));
    assert!(applier.keyring().is_none());
    let boot = bootstrap(1, 2, vec![]);
    assert!(matches!(
        applier.apply_bootstrap(1, &boot),
        Err(ApplyError::KekNotConfigured {
            opcode: OP_BOOTSTRAP
        })
    ));
    assert!(matches!(
        applier.apply_rotation(2, &rotation(3, Purpose::Storage, NODE, 1)),
        Err(ApplyError::KekNotConfigured {
            opcode: OP_ROTATION
        })
    ));
}

#[test]
fn values_sealed_across_two_rotations_all_open() {
    let node = Node::fresh();
    standard_boot(&node, 10).expect("bootstrap");
    let k = node.keyring.clone();
    let mut sealed = vec![(
        k.seal_storage(b"v1", &HEADER, b"a").expect("seal"),
        b"v1".to_vec(),
        1u32,
    )];
    let mut raft = vec![(k.seal_raft(b"r1").expect("seal raft"), b"r1".to_vec())];

    // Rotation proposed by this node: its row is in the entry, so it seals at once.
    assert_eq!(
        apply_rot(&node, 20, rotation(3, Purpose::Storage, NODE, 5)).expect("rotate"),
        Applied::Rotated {
            purpose: Purpose::Storage,
            key_id: 3
        }
    );
    assert_eq!(k.active_key_id(Purpose::Storage), Some(3));
    assert_eq!(k.active_key_id(Purpose::Raft), Some(2));
    assert_eq!(k.local_epochs(), [(1, 1), (2, 1), (3, 5)]);
    sealed.push((
        k.seal_storage(b"v2", &HEADER, b"b").expect("seal"),
        b"v2".to_vec(),
        3,
    ));

    // Rotation proposed by another node: this node must register first.
    assert_eq!(
        apply_rot(&node, 30, rotation(4, Purpose::Storage, OTHER, 2)).expect("rotate"),
        Applied::Rotated {
            purpose: Purpose::Storage,
            key_id: 4
        }
    );
    assert_eq!(k.local_epochs(), [(1, 1), (2, 1), (3, 5), (4, 0)]);
    // Key 4 is new in this load: it seals at once, at epoch 0, and this node
    // still has to register that epoch.
    let before = k
        .seal_storage(b"v2b", &HEADER, b"b2")
        .expect("seal under key 4");
    assert_eq!(before[2..6], 4u32.to_be_bytes());
    assert_eq!(before[8..10], 0u16.to_be_bytes());
    sealed.push((before, b"v2b".to_vec(), 4));
    assert_eq!(k.pending_registrations(), [row(4, NODE, 0)]);
    for reg in k.pending_registrations() {
        node.applier.apply_registration(&reg).expect("register");
    }
    sealed.push((
        k.seal_storage(b"v3", &HEADER, b"c").expect("seal"),
        b"v3".to_vec(),
        4,
    ));

    // And a raft rotation.
    apply_rot(&node, 31, rotation(5, Purpose::Raft, NODE, 1)).expect("rotate raft");
    raft.push((k.seal_raft(b"r2").expect("seal raft"), b"r2".to_vec()));

    let disk = sidecar_on_disk(node.path()).expect("sidecar");
    assert_eq!(disk.raft_applied_index, 31);
    assert_eq!((disk.active.storage, disk.active.raft), (4, 5));
    assert_eq!(k.key_ids(), [1, 2, 3, 4, 5]);
    assert_eq!(
        node.registry
            .get_writer(WriterKey::for_node(4, OTHER))
            .expect("get"),
        Some(record(OTHER, 2, 2))
    );

    // Everything opens, in this load and the next.
    assert_eq!(sealed.len(), 4);
    let node = node.restart();
    for k in [&k, &node.keyring] {
        let storage_keys: [&[u8]; 4] = [b"a", b"b", b"b2", b"c"];
        for ((envelope, plain, key_id), storage_key) in sealed.iter().zip(storage_keys) {
            assert_eq!(envelope.get(2..6), Some(&key_id.to_be_bytes()[..]));
            assert_eq!(
                &k.open_storage(envelope, &HEADER, storage_key)
                    .expect("open"),
                plain
            );
        }
        for (envelope, plain) in &raft {
            assert_eq!(&k.open_raft(envelope).expect("open raft"), plain);
        }
    }
    // Only the active keys' epochs went up.
    assert_eq!(
        node.keyring.local_epochs(),
        [(1, 1), (2, 1), (3, 5), (4, 1), (5, 2)]
    );
}

#[test]
fn rotation_refusals_change_nothing() {
    // Before bootstrap.
    let node = Node::fresh();
    assert_eq!(
        apply_rot(&node, 3, rotation(3, Purpose::Storage, NODE, 1)).expect("refusal"),
        Applied::Rejected {
            reason: Rejection::NotBootstrapped
        }
    );
    assert_only_index_recorded(&node, 3);

    standard_boot(&node, 10).expect("bootstrap");
    let (sidecar, registry) = (keys_of(&node), rows(&node.registry));
    let mut mismatch = rotation(7, Purpose::Raft, NODE, 1);
    mismatch.proposer_registration.dek_id = 8;
    let cases = [
        (
            rotation(0, Purpose::Storage, NODE, 1),
            Rejection::ReservedKeyId {
                purpose: Purpose::Storage,
            },
        ),
        (
            rotation(1, Purpose::Storage, NODE, 9),
            Rejection::KeyIdInUse { key_id: 1 },
        ),
        (
            rotation(2, Purpose::Storage, NODE, 9),
            Rejection::KeyIdInUse { key_id: 2 },
        ),
        (
            mismatch,
            Rejection::ProposerKeyMismatch {
                key_id: 7,
                row_key_id: 8,
            },
        ),
    ];
    for (i, (rot, reason)) in cases.into_iter().enumerate() {
        assert_eq!(
            apply_rot(&node, 11 + i as u64, rot).expect("refusal"),
            Applied::Rejected { reason },
        );
    }
    assert_eq!(keys_of(&node), sidecar);
    assert_eq!(node.keyring.sidecar_applied_index(), 14);
    assert_eq!(rows(&node.registry), registry);
    assert_eq!(node.keyring.key_ids(), [1, 2]);

    // A collision in the proposer row halts, with nothing written.
    apply_rot(&node, 20, rotation(3, Purpose::Storage, NODE, 1)).expect("rotate");
    node.registry
        .put_writers(&[(WriterKey::for_node(4, NODE), record(COLLIDER, 1, 1))])
        .expect("seed a collision");
    let before = sidecar_bytes(node.path());
    let err = apply_rot(&node, 21, rotation(4, Purpose::Storage, NODE, 1)).expect_err("collision");
    assert!(
        matches!(err, ApplyError::NodeIdCollision { dek_id: 4, .. }),
        "{err:?}"
    );
    assert_eq!(sidecar_bytes(node.path()), before);
    assert!(!node.keyring.key_ids().contains(&4));
}

#[test]
fn rotation_replays_and_stays_rejected_once_superseded() {
    let node = Node::fresh();
    // Index 5: a rotation before bootstrap, refused.
    let early = rotation(3, Purpose::Storage, NODE, 1);
    assert_eq!(
        apply_rot(&node, 5, early.clone()).expect("refusal"),
        Applied::Rejected {
            reason: Rejection::NotBootstrapped
        }
    );
    standard_boot(&node, 6).expect("bootstrap");
    let rot = rotation(4, Purpose::Raft, OTHER, 2);
    apply_rot(&node, 7, rot.clone()).expect("rotate");
    let (sidecar, registry) = (sidecar_bytes(node.path()), rows(&node.registry));

    // The state machine's applied index lagged: it replays 5, 6 and 7.
    let node = node.restart();
    assert_ne!(
        sidecar_bytes(node.path()),
        sidecar,
        "the restart raised epochs"
    );
    let sidecar = sidecar_bytes(node.path());
    assert_eq!(
        apply_rot(&node, 5, early).expect("replayed refusal"),
        Applied::Rejected {
            reason: Rejection::Superseded { sidecar_index: 7 }
        },
        "a refused rotation must not install on replay"
    );
    assert_eq!(
        standard_boot(&node, 6).expect("replay"),
        Applied::Replayed {
            opcode: OP_BOOTSTRAP
        }
    );
    assert_eq!(
        apply_rot(&node, 7, rot).expect("replay"),
        Applied::Replayed {
            opcode: OP_ROTATION
        }
    );
    assert_eq!(sidecar_bytes(node.path()), sidecar);
    assert_eq!(rows(&node.registry), registry);
    assert_eq!(node.keyring.key_ids(), [1, 2, 4]);
}

#[test]
fn replay_tolerates_a_registry_already_past_the_entry() {
    let node = Node::fresh();
    standard_boot(&node, 10).expect("bootstrap");
    // Later entries advanced this node's rows before the applied index was flushed.
    node.applier
        .apply_registration(&row(1, OTHER, 8))
        .expect("advance");
    let node = node.restart();
    node.register();
    let registry = rows(&node.registry);
    assert_eq!(
        standard_boot(&node, 10).expect("replay"),
        Applied::Replayed {
            opcode: OP_BOOTSTRAP
        }
    );
    assert_eq!(rows(&node.registry), registry);
}

/// A registry whose writes fail while `failing` is set, as a crash after the sidecar
/// write would leave it.
struct FlakyRegistry {
    inner: MemoryRegistry,
    failing: std::sync::atomic::AtomicBool,
}

impl WriterRegistryStore for FlakyRegistry {
    fn get_writer(&self, key: WriterKey) -> Result<Option<WriterRecord>, RegistryStoreError> {
        self.inner.get_writer(key)
    }
    fn put_writers(&self, rows: &[(WriterKey, WriterRecord)]) -> Result<(), RegistryStoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RegistryStoreError::Backend {
                op: "sync rows",
                source: "crash".into(),
            });
        }
        self.inner.put_writers(rows)
    }
    fn list_writers(&self) -> Result<Vec<(WriterKey, WriterRecord)>, RegistryStoreError> {
        self.inner.list_writers()
    }
}

#[test]
fn crash_between_sidecar_and_registry_is_finished_by_the_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Arc::new(FlakyRegistry {
        inner: MemoryRegistry::new(),
        failing: std::sync::atomic::AtomicBool::new(true),
    });
    let open = || Arc::new(Keyring::open(dir.path(), NODE, provider(KEK_BYTES)).expect("open"));
    let keyring = open();
    let applier = Applier::with_keyring(registry.clone(), keyring.clone());
    let boot = bootstrap(
        1,
        2,
        vec![row(1, NODE, 1), row(2, NODE, 1), row(1, OTHER, 1)],
    );
    let err = applier
        .apply_bootstrap(10, &boot)
        .expect_err("registry write fails");
    assert!(matches!(err, ApplyError::Store(_)), "{err:?}");
    // The sidecar is durable and the rows are not. The keys are new, so sealing
    // under them is nonce-safe already; the halt keeps the state machine from
    // applying anything after the entry.
    assert_eq!(
        sidecar_on_disk(dir.path())
            .expect("sidecar")
            .raft_applied_index,
        10
    );
    assert!(registry.list_writers().expect("list").is_empty());
    assert!(keyring.seal_raft(b"p").is_ok());

    // Restart: epochs rise above the entry's, the replay writes the missing rows.
    drop((applier, keyring));
    registry
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let keyring = open();
    let applier = Applier::with_keyring(registry.clone(), keyring.clone());
    assert_eq!(keyring.local_epochs(), [(1, 2), (2, 2)]);
    let regs = keyring
        .check_registry(registry.as_ref())
        .expect("startup check");
    assert_eq!(regs, [row(1, NODE, 2), row(2, NODE, 2)]);
    assert_eq!(
        applier.apply_bootstrap(10, &boot).expect("replay"),
        Applied::Replayed {
            opcode: OP_BOOTSTRAP
        }
    );
    assert_eq!(
        registry
            .get_writer(WriterKey::for_node(1, OTHER))
            .expect("get"),
        Some(record(OTHER, 1, 1))
    );
    for reg in regs {
        applier
            .apply_registration(&reg)
            .expect("register the new epoch");
    }
    assert_eq!(
        registry
            .get_writer(WriterKey::for_node(1, NODE))
            .expect("get"),
        Some(record(NODE, 1, 2))
    );
    keyring
        .seal_storage(b"v", &HEADER, b"k")
        .expect("seals at epoch 2");
}

/// Whether a crash right after `step` leaves the new sidecar in place.
fn new_file_survives(step: DurableStep) -> bool {
    matches!(
        step,
        DurableStep::Rename | DurableStep::OpenDir | DurableStep::SyncDir
    )
}

#[test]
fn crash_during_bootstrap_sidecar_write_recovers_on_replay() {
    for step in DurableStep::ALL {
        let node = Node::fresh();
        node.keyring.crash_next_sidecar_write_after(step);
        let err = standard_boot(&node, 10).expect_err("simulated crash");
        assert!(
            matches!(err, ApplyError::Keyring(KeyringError::WriteSidecar { .. })),
            "{step}: {err:?}"
        );
        // The crash happened before any key loaded or row was written.
        assert!(!node.keyring.is_bootstrapped(), "{step}");
        assert!(rows(&node.registry).is_empty(), "{step}");

        let node = node.restart();
        let on_disk = sidecar_on_disk(node.path());
        if new_file_survives(step) {
            let doc = on_disk.expect("new sidecar");
            assert_eq!(doc.raft_applied_index, 10, "{step}");
            // The reopened keyring raised the epochs from the entry's.
            assert_eq!(node.keyring.local_epochs(), [(1, 2), (2, 2)], "{step}");
            assert_eq!(
                standard_boot(&node, 10).expect("replay"),
                Applied::Replayed {
                    opcode: OP_BOOTSTRAP
                },
                "{step}"
            );
            node.register();
        } else {
            assert!(on_disk.is_none(), "{step}: old (absent) sidecar expected");
            assert!(!node.keyring.is_bootstrapped(), "{step}");
            assert_eq!(
                standard_boot(&node, 10).expect("apply"),
                bootstrapped(),
                "{step}"
            );
        }
        assert_eq!(node.keyring.key_ids(), [1, 2], "{step}");
        assert_eq!(rows(&node.registry).len(), 4, "{step}");
        let sealed = node.keyring.seal_raft(b"p").expect("seals");
        assert_eq!(
            node.keyring.open_raft(&sealed).expect("opens"),
            b"p",
            "{step}"
        );
        let tmp = sidecar_path(node.path()).with_file_name("keys.json.tmp");
        assert!(!tmp.exists(), "{step}: stale tmp");
    }
}

#[test]
fn crash_during_rotation_sidecar_write_leaves_old_or_new() {
    for step in DurableStep::ALL {
        let node = Node::fresh();
        standard_boot(&node, 10).expect("bootstrap");
        let old = node
            .keyring
            .seal_storage(b"old", &HEADER, b"k")
            .expect("seal");
        node.keyring.crash_next_sidecar_write_after(step);
        let rot = rotation(3, Purpose::Storage, NODE, 4);
        assert!(apply_rot(&node, 11, rot.clone()).is_err(), "{step}");
        assert_eq!(
            node.keyring.active_key_id(Purpose::Storage),
            Some(1),
            "{step}"
        );

        let node = node.restart();
        let doc = sidecar_on_disk(node.path()).expect("sidecar");
        if new_file_survives(step) {
            assert_eq!(
                (doc.raft_applied_index, doc.active.storage),
                (11, 3),
                "{step}"
            );
            assert_eq!(
                node.keyring.local_epochs(),
                [(1, 1), (2, 2), (3, 5)],
                "{step}"
            );
            assert_eq!(
                apply_rot(&node, 11, rot).expect("replay"),
                Applied::Replayed {
                    opcode: OP_ROTATION
                }
            );
        } else {
            assert_eq!(
                (doc.raft_applied_index, doc.active.storage),
                (10, 1),
                "{step}"
            );
            assert_eq!(node.keyring.local_epochs(), [(1, 2), (2, 2)], "{step}");
            assert_eq!(
                apply_rot(&node, 11, rot).expect("apply"),
                Applied::Rotated {
                    purpose: Purpose::Storage,
                    key_id: 3
                }
            );
        }
        node.register();
        assert_eq!(
            node.keyring.active_key_id(Purpose::Storage),
            Some(3),
            "{step}"
        );
        assert_eq!(
            node.keyring
                .open_storage(&old, &HEADER, b"k")
                .expect("old opens"),
            b"old"
        );
        let new = node
            .keyring
            .seal_storage(b"new", &HEADER, b"k")
            .expect("seal new");
        assert_eq!(new.get(2..6), Some(&3u32.to_be_bytes()[..]));
    }
}

#[test]
fn crash_mid_write_of_a_sidecar_opens_old_or_new_consistently() {
    let node = Node::fresh();
    standard_boot(&node, 10).expect("bootstrap");
    let old = sidecar_on_disk(node.path()).expect("sidecar");
    let mut new = old.clone();
    new.raft_applied_index = 11;
    if let Some(keys) = new.keys.as_mut() {
        keys.insert(
            "3".to_string(),
            sealkv_encryption::sidecar::SidecarKey {
                purpose: "storage".to_string(),
                wrapped: Some(wrapped(3)),
                created: "now".to_string(),
                local_epoch: 40,
            },
        );
    }
    new.active.storage = 3;
    let text = to_json(&new).expect("serialize");
    let node_dir = node.dir;
    for step in DurableStep::ALL {
        old.write(&sidecar_path(node_dir.path()))
            .expect("reset to old");
        durable_replace_stop_after(
            &sidecar_path(node_dir.path()),
            text.as_bytes(),
            SIDECAR_MODE,
            step,
        )
        .expect("stop after step");
        let keyring = Keyring::open(node_dir.path(), NODE, provider(KEK_BYTES)).expect("open");
        if new_file_survives(step) {
            assert_eq!(keyring.sidecar_applied_index(), 11, "{step}");
            assert_eq!(keyring.local_epochs(), [(1, 1), (2, 2), (3, 41)], "{step}");
        } else {
            assert_eq!(keyring.sidecar_applied_index(), 10, "{step}");
            assert_eq!(keyring.local_epochs(), [(1, 2), (2, 2)], "{step}");
        }
        // What open wrote is what it holds.
        assert_eq!(
            sidecar_on_disk(node_dir.path()),
            keyring.sidecar(),
            "{step}"
        );
    }
}

#[test]
fn envelope_switches_turn_envelopes_on_once_and_replay_as_no_ops() {
    let node = Node::fresh();
    let storage = EnvelopeSwitch::Storage.encode();
    let raft = EnvelopeSwitch::Raft.encode();

    // Before bootstrap there is nothing to seal with: refused, nothing written.
    assert_eq!(
        node.applier.apply(3, OP_ROTATION, &storage).expect("apply"),
        Applied::Rejected {
            reason: Rejection::NotBootstrapped
        }
    );
    assert_only_index_recorded(&node, 3);

    assert_eq!(standard_boot(&node, 5).expect("bootstrap"), bootstrapped());
    assert!(!node.keyring.storage_envelope_active());
    assert_eq!(
        node.applier.apply(6, OP_ROTATION, &storage).expect("apply"),
        Applied::EnvelopeEnabled {
            switch: EnvelopeSwitch::Storage,
            raft_cutover_index: 0
        }
    );
    assert_eq!(
        node.applier.apply(8, OP_ROTATION, &raft).expect("apply"),
        Applied::EnvelopeEnabled {
            switch: EnvelopeSwitch::Raft,
            raft_cutover_index: 8
        }
    );
    let doc = sidecar_on_disk(node.path()).expect("sidecar");
    assert!(doc.storage_envelope_active);
    assert_eq!(doc.raft_envelope_cutover_index, 8);
    assert_eq!(doc.raft_applied_index, 8);

    // A replay after a restart changes nothing; a second raft switch keeps the
    // first cutover.
    let node = node.restart();
    assert_eq!(
        node.applier.apply(8, OP_ROTATION, &raft).expect("replay"),
        Applied::Replayed {
            opcode: OP_ROTATION
        }
    );
    assert_eq!(
        node.applier.apply(9, OP_ROTATION, &raft).expect("apply"),
        Applied::EnvelopeEnabled {
            switch: EnvelopeSwitch::Raft,
            raft_cutover_index: 8
        }
    );
    assert_eq!(node.keyring.raft_envelope_cutover_index(), 8);
}

#[test]
fn envelope_switch_payloads_decode_strictly() {
    for (payload, switch) in [
        (&[1u8, 2][..], Some(EnvelopeSwitch::Storage)),
        (&[1, 3][..], Some(EnvelopeSwitch::Raft)),
        (&[1, 1][..], None),
        (&[2, 2][..], None),
        (&[][..], None),
    ] {
        assert_eq!(EnvelopeSwitch::decode(payload).expect("decode"), switch);
    }
    let err = EnvelopeSwitch::decode(&[1, 2, 0]).expect_err("trailing byte");
    assert_eq!(err.class(), "malformed");
    // Without a keyring, a switch halts rather than letting this replica diverge.
    let registry = Arc::new(MemoryRegistry::new());
    let bare = Applier::new(registry);
    assert!(matches!(
        bare.apply(4, OP_ROTATION, &EnvelopeSwitch::Storage.encode()),
        Err(ApplyError::KekNotConfigured { .. })
    ));
}

#[test]
fn an_inactive_keys_old_epoch_never_seals_after_a_restart() {
    // Storage key 1 is rotated out by key 3; after a restart only key 3's epoch is
    // raised, so a replayed registration of key 1 at its old epoch must not let key
    // 1 seal again: that epoch belongs to the earlier process load.
    let node = Node::fresh();
    standard_boot(&node, 5).expect("bootstrap");
    apply_rot(&node, 6, rotation(3, Purpose::Storage, NODE, 1)).expect("rotate");
    let node = node.restart();
    assert_eq!(node.keyring.local_epochs(), [(1, 1), (2, 2), (3, 2)]);
    assert!(!node.keyring.mark_registered(1, NODE, 1));
    assert!(matches!(
        node.keyring.seal_storage(b"v", &HEADER, b"k"),
        Err(KeyringError::NotRegistered {
            key_id: 3,
            epoch: 2
        })
    ));
    node.register();
    let sealed = node
        .keyring
        .seal_storage(b"v", &HEADER, b"k")
        .expect("seal");
    assert_eq!(sealed[2..6], 3u32.to_be_bytes());
}

#[test]
fn a_node_adopts_the_shared_key_state_of_another() {
    // Node A bootstraps and rotates its storage key; its shared state reaches a
    // fresh node B the way a Raft snapshot carries it (with B's registry rows).
    let a = Node::fresh();
    standard_boot(&a, 5).expect("bootstrap");
    apply_rot(&a, 9, rotation(3, Purpose::Storage, OTHER, 1)).expect("rotate");
    let sealed = a.keyring.seal_storage(b"v", &HEADER, b"k").expect("seal");
    let shared = a.keyring.shared_json().expect("json").expect("a state");
    let doc: sealkv_encryption::sidecar::Sidecar =
        sealkv_encryption::sidecar::from_json(&shared).expect("shared state loads");
    assert!(doc.keys.iter().flatten().all(|(_, k)| k.local_epoch == 0));

    let b = Node::fresh_as(THIRD);
    // The registry B received says it registered key 1 up to epoch 4 before.
    b.registry
        .put_writers(&[(WriterKey::for_node(1, THIRD), record(THIRD, 1, 4))])
        .expect("seed");
    assert!(
        b.keyring
            .adopt(&shared, b.registry.as_ref())
            .expect("adopt")
    );
    assert_eq!(b.keyring.key_ids(), [1, 2, 3]);
    assert_eq!(b.keyring.local_epochs(), [(1, 5), (2, 0), (3, 0)]);
    assert_eq!(b.keyring.active_key_id(Purpose::Storage), Some(3));
    assert_eq!(b.keyring.sidecar_applied_index(), 9);
    assert_eq!(
        b.keyring
            .open_storage(&sealed, &HEADER, b"k")
            .expect("open"),
        b"v"
    );
    b.keyring
        .seal_storage(b"w", &HEADER, b"k2")
        .expect("B seals");
    // Its sidecar is durable, and adopting the same state again changes nothing.
    let on_disk = sidecar_on_disk(b.path()).expect("sidecar");
    assert_eq!(on_disk.raft_applied_index, 9);
    assert!(
        !b.keyring
            .adopt(&shared, b.registry.as_ref())
            .expect("again")
    );
    // A state under another KEK does not unwrap: nothing changes.
    let c = Node::fresh_with_kek(THIRD, [0x77; 32]);
    assert!(matches!(
        c.keyring.adopt(&shared, c.registry.as_ref()),
        Err(KeyringError::KekDoesNotUnwrap { .. })
    ));
    assert!(!c.keyring.is_bootstrapped());
}

/// A DEK with the bytes of a loaded key (or of the entry's other key) would give two
/// key ids one AES key, so one nonce space twice: the entry is refused, the same
/// way on every replica, and nothing is installed.
#[test]
fn a_dek_equal_to_a_loaded_one_is_refused() {
    // Both keys of a bootstrap with the same bytes.
    let node = Node::fresh();
    let mut twins = bootstrap(1, 2, vec![row(1, NODE, 1), row(2, NODE, 1)]);
    twins.wrapped_raft = wrapped(1);
    let applied = node
        .applier
        .apply(3, OP_BOOTSTRAP, &twins.encode().expect("encode"))
        .expect("refusal");
    assert_eq!(
        applied,
        Applied::Rejected {
            reason: Rejection::DuplicateKey {
                key_id: 2,
                same_as: 1
            }
        }
    );
    assert_only_index_recorded(&node, 3);

    // A rotation to new id 3 whose wrapped DEK is key 1's.
    standard_boot(&node, 10).expect("bootstrap");
    let mut copy = rotation(3, Purpose::Storage, NODE, 1);
    copy.wrapped = wrapped(1);
    assert_eq!(
        apply_rot(&node, 11, copy).expect("refusal"),
        Applied::Rejected {
            reason: Rejection::DuplicateKey {
                key_id: 3,
                same_as: 1
            }
        }
    );
    assert_eq!(node.keyring.key_ids(), [1, 2]);
    assert_eq!(node.keyring.sidecar_applied_index(), 11);
    // A fresh key still rotates.
    apply_rot(&node, 12, rotation(3, Purpose::Storage, NODE, 1)).expect("rotate");
    assert_eq!(node.keyring.key_ids(), [1, 2, 3]);
}

/// A node that does not hold the bootstrap's keys yet and finds itself recorded
/// under them at epoch 1 (a wiped node's first life, or a member that has not
/// applied the bootstrap) installs them at epoch 2: never the epoch the record
/// shows it may have sealed under.
#[test]
fn keys_installed_after_the_cluster_record_take_an_epoch_above_it() {
    let node = Node::fresh();
    node.keyring
        .check_cluster_record(&[(1, 1), (2, 1)])
        .expect("recorded at the bootstrap's epoch");
    standard_boot(&node, 10).expect("bootstrap");
    assert_eq!(node.keyring.local_epochs(), [(1, 2), (2, 2)]);
    let doc = sidecar_on_disk(node.path()).expect("sidecar");
    assert_eq!(doc.key(1).map(|k| k.local_epoch), Some(2));
    // The key is new to this load at an epoch no load used: it seals, and the node
    // registers that epoch.
    node.keyring
        .seal_raft(b"payload")
        .expect("seals at the raised epoch");
    assert_eq!(
        node.keyring.pending_registrations(),
        [row(1, NODE, 2), row(2, NODE, 2)]
    );
}

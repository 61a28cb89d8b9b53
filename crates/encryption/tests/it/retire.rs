//! Key retirement (`0x05`, subtag `0x04`): the applier removes a storage key from
//! the keyring and the sidecar, replays harmlessly, refuses deterministically, and
//! never lets a retired id be issued again.

use sealkv_encryption::WriterRegistryStore;
use sealkv_encryption::applier::{Applied, ApplyError, KeyRetirement, Rejection};
use sealkv_encryption::durable::DurableStep;
use sealkv_encryption::keyring::VALUE_HEADER_LEN;
use sealkv_encryption::registry::WriterKey;
use sealkv_encryption::sidecar::{from_json, sidecar_path};
use sealkv_fsmwire::{OP_BOOTSTRAP, OP_ROTATION, Purpose};

use crate::keyfixture::{NODE, Node, OTHER, bootstrap, rotation, row, sidecar_on_disk};

const HEADER: [u8; VALUE_HEADER_LEN] = [0x02, 0, 0, 0, 0, 0, 0, 0, 0];

fn retire(node: &Node, index: u64, key_id: u32) -> Result<Applied, ApplyError> {
    node.applier
        .apply(index, OP_ROTATION, &KeyRetirement { key_id }.encode())
}

/// Bootstrap at 10 (storage 1, raft 2), rotation of storage to 3 at 20.
fn rotated(node: &Node) {
    let boot = bootstrap(
        1,
        2,
        vec![row(1, NODE, 1), row(2, NODE, 1), row(1, OTHER, 1)],
    );
    node.applier
        .apply(10, OP_BOOTSTRAP, &boot.encode().expect("encode"))
        .expect("bootstrap");
    let rot = rotation(3, Purpose::Storage, NODE, 1);
    node.applier
        .apply(20, OP_ROTATION, &rot.encode().expect("encode"))
        .expect("rotate");
}

#[test]
fn retirement_removes_the_key_from_keyring_and_sidecar() {
    let node = Node::fresh();
    let boot = bootstrap(
        1,
        2,
        vec![row(1, NODE, 1), row(2, NODE, 1), row(1, OTHER, 1)],
    );
    node.applier
        .apply(10, OP_BOOTSTRAP, &boot.encode().expect("encode"))
        .expect("bootstrap");
    let under_1 = node
        .keyring
        .seal_storage(b"v", &HEADER, b"k")
        .expect("seal");
    let rot = rotation(3, Purpose::Storage, NODE, 1);
    node.applier
        .apply(20, OP_ROTATION, &rot.encode().expect("encode"))
        .expect("rotate");
    let under_3 = node
        .keyring
        .seal_storage(b"w", &HEADER, b"k2")
        .expect("seal");

    assert_eq!(
        retire(&node, 30, 1).expect("retire"),
        Applied::Retired { key_id: 1 }
    );
    assert_eq!(node.keyring.key_ids(), [2, 3]);
    assert_eq!(node.keyring.purpose_of(1), None);
    assert!(node.keyring.status().keys.iter().all(|k| k.key_id != 1));

    // The sidecar lost the key, moved to the entry's index and passes the loader.
    let doc = sidecar_on_disk(node.path()).expect("sidecar");
    assert_eq!(doc.raft_applied_index, 30);
    assert!(doc.key(1).is_none());
    assert!(doc.key(3).is_some());
    let bytes = std::fs::read(sidecar_path(node.path())).expect("read");
    from_json(&bytes).expect("loader accepts the sidecar");
    // So does the cluster-wide copy that snapshots carry.
    let shared = node.keyring.shared_json().expect("json").expect("state");
    assert!(from_json(&shared).expect("shared").key(1).is_none());

    // What key 1 sealed no longer opens: a typed integrity error, never bytes.
    let err = node
        .keyring
        .open_storage(&under_1, &HEADER, b"k")
        .expect_err("retired key opens nothing");
    assert_eq!(err.reason(), Some("unknown_key_id"), "{err:?}");
    assert_eq!(
        node.keyring
            .open_storage(&under_3, &HEADER, b"k2")
            .expect("active key opens"),
        b"w"
    );

    // The registry keeps the key's rows: the epochs used under it stay on record.
    assert!(
        node.registry
            .get_writer(WriterKey::for_node(1, OTHER))
            .expect("get")
            .is_some()
    );

    // A restart keeps it gone.
    let node = node.restart();
    assert_eq!(node.keyring.key_ids(), [2, 3]);
    assert!(node.keyring.open_storage(&under_1, &HEADER, b"k").is_err());
}

#[test]
fn a_replay_changes_nothing_even_after_a_crash_before_the_applied_index() {
    let node = Node::fresh();
    rotated(&node);
    retire(&node, 30, 1).expect("retire");
    // The same entry again (Raft hands it over once more): a replay.
    assert_eq!(
        retire(&node, 30, 1).expect("replay"),
        Applied::Replayed {
            opcode: OP_ROTATION
        }
    );
    // A crash after the sidecar write and before the applied index: the restarted
    // node replays the entry, which finds the sidecar at its index.
    let node = node.restart();
    assert_eq!(
        retire(&node, 30, 1).expect("replay after restart"),
        Applied::Replayed {
            opcode: OP_ROTATION
        }
    );
    assert_eq!(node.keyring.key_ids(), [2, 3]);
    assert_eq!(
        sidecar_on_disk(node.path())
            .expect("sidecar")
            .raft_applied_index,
        30
    );
}

#[test]
fn a_crash_inside_the_sidecar_write_leaves_the_key_until_the_replay() {
    for step in [DurableStep::WriteTmp, DurableStep::Rename] {
        let node = Node::fresh();
        rotated(&node);
        node.keyring.crash_next_sidecar_write_after(step);
        assert!(retire(&node, 30, 1).is_err(), "{step:?}");
        // Memory is unchanged by a failed write.
        assert_eq!(node.keyring.key_ids(), [1, 2, 3], "{step:?}");
        let node = node.restart();
        let applied = retire(&node, 30, 1).expect("replay");
        // Whether the new file landed or not, the key ends up gone.
        assert!(
            matches!(
                applied,
                Applied::Retired { key_id: 1 } | Applied::Replayed { .. }
            ),
            "{step:?}: {applied:?}"
        );
        let node = node.restart();
        assert_eq!(node.keyring.key_ids(), [2, 3], "{step:?}");
    }
}

#[test]
fn refusals_are_deterministic_applied_and_change_no_key() {
    let check = |node: &Node, index: u64, key_id: u32, want: Rejection| {
        let before = node.keyring.key_ids();
        assert_eq!(
            retire(node, index, key_id).expect("a refusal is not a halt"),
            Applied::Rejected { reason: want },
            "retire {key_id}"
        );
        assert_eq!(node.keyring.key_ids(), before, "retire {key_id}");
        // The refusal is applied: the sidecar index moves to it.
        assert_eq!(node.keyring.sidecar_applied_index(), index);
    };

    let fresh = Node::fresh();
    check(&fresh, 5, 1, Rejection::NotBootstrapped);

    let node = Node::fresh();
    rotated(&node);
    check(&node, 30, 99, Rejection::UnknownKey { key_id: 99 });
    check(&node, 31, 0, Rejection::UnknownKey { key_id: 0 });
    check(
        &node,
        32,
        3,
        Rejection::ActiveKey {
            key_id: 3,
            purpose: Purpose::Storage,
        },
    );
    check(
        &node,
        33,
        2,
        Rejection::ActiveKey {
            key_id: 2,
            purpose: Purpose::Raft,
        },
    );
    let raft = rotation(4, Purpose::Raft, NODE, 1);
    node.applier
        .apply(40, OP_ROTATION, &raft.encode().expect("encode"))
        .expect("rotate raft");
    check(&node, 41, 2, Rejection::RaftKey { key_id: 2 });
    // Retired once, a second retirement finds nothing to retire.
    assert_eq!(
        retire(&node, 50, 1).expect("retire"),
        Applied::Retired { key_id: 1 }
    );
    check(&node, 51, 1, Rejection::UnknownKey { key_id: 1 });
}

#[test]
fn admission_refuses_what_the_applier_would_refuse_or_halt_on() {
    let node = Node::fresh();
    rotated(&node);
    let precheck = |payload: &[u8]| node.applier.precheck(OP_ROTATION, payload);
    precheck(&KeyRetirement { key_id: 1 }.encode()).expect("retiring key 1 is admitted");
    for (key_id, want) in [
        (7, Rejection::UnknownKey { key_id: 7 }),
        (
            3,
            Rejection::ActiveKey {
                key_id: 3,
                purpose: Purpose::Storage,
            },
        ),
    ] {
        match precheck(&KeyRetirement { key_id }.encode()) {
            Err(ApplyError::WouldReject(reason)) => assert_eq!(reason, want),
            other => panic!("retire {key_id}: {other:?}"),
        }
    }
    for malformed in [&[1u8, 4, 0, 0, 1][..], &[1, 4, 0, 0, 0, 1, 0][..]] {
        assert!(
            matches!(precheck(malformed), Err(ApplyError::Decode { .. })),
            "{malformed:?}"
        );
        // And the applier halts on it rather than skipping it.
        assert!(matches!(
            node.applier.apply(60, OP_ROTATION, malformed),
            Err(ApplyError::Decode { .. })
        ));
    }
}

#[test]
fn a_retired_id_is_never_issued_again() {
    let node = Node::fresh();
    rotated(&node);
    retire(&node, 30, 1).expect("retire");
    // A rotation back to id 1 (not loaded any more) is refused: every rotation
    // takes an id above every loaded one, and the key that replaced 1 is loaded.
    let reuse = rotation(1, Purpose::Storage, NODE, 1);
    assert_eq!(
        node.applier
            .apply(40, OP_ROTATION, &reuse.encode().expect("encode"))
            .expect("a refusal"),
        Applied::Rejected {
            reason: Rejection::KeyIdNotAbove {
                key_id: 1,
                above: 3
            }
        }
    );
    assert_eq!(node.keyring.key_ids(), [2, 3]);
    // The next id above everything still installs.
    let next = rotation(4, Purpose::Storage, NODE, 1);
    assert_eq!(
        node.applier
            .apply(41, OP_ROTATION, &next.encode().expect("encode"))
            .expect("rotate"),
        Applied::Rotated {
            purpose: Purpose::Storage,
            key_id: 4
        }
    );
}

#[test]
fn a_node_adopting_state_after_a_retirement_drops_the_key() {
    let a = Node::fresh();
    rotated(&a);
    let b = Node::fresh_as(OTHER);
    b.keyring
        .adopt(
            &a.keyring.shared_json().expect("json").expect("state"),
            b.registry.as_ref(),
        )
        .expect("adopt before");
    assert_eq!(b.keyring.key_ids(), [1, 2, 3]);

    retire(&a, 30, 1).expect("retire");
    let shared = a.keyring.shared_json().expect("json").expect("state");
    assert!(
        b.keyring
            .adopt(&shared, b.registry.as_ref())
            .expect("adopt")
    );
    assert_eq!(b.keyring.key_ids(), [2, 3]);
    let doc = sidecar_on_disk(b.path()).expect("sidecar");
    assert!(doc.key(1).is_none());
    assert_eq!(doc.raft_applied_index, 30);
    let b = b.restart();
    assert_eq!(b.keyring.key_ids(), [2, 3]);
}

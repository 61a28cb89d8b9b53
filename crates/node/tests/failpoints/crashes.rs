//! A node crashed (`panic`) or failed (`return`) at a fail point between two durable
//! steps: the sidecar's replace, the registry and applied-index writes of a key
//! entry, the Raft log's synced write, a snapshot install and the apply batch.
//! Each ends with the node restarted into the state of the others, or halted with
//! its applied index unchanged until it is restarted.

use redis::{Commands, RedisResult};
use serde_json::Value;

use crate::harness::*;
use crate::support::*;

/// A test build says it has fail points, arms the ones `FAILPOINTS` names at
/// startup, and refuses to start on a malformed `FAILPOINTS` with one line.
#[test]
fn a_test_build_arms_fail_points_from_the_environment() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), 1, &[]);
    node.set_env("FAILPOINTS", "store::commit=off;raftlog::persist=1*off");
    node.start("");
    assert_has_fail_points(&node);
    let armed = node.status().expect("status")["failpoints"].clone();
    assert_eq!(
        armed,
        serde_json::json!(["raftlog::persist=1*off", "store::commit=off"]),
    );
    assert!(node.log_text().contains("test build with fail points"));
    node.terminate();

    for (spec, words) in [
        ("store::commit", "is not name=actions"),
        ("store::commit=explode", "fail point store::commit"),
    ] {
        node.set_env("FAILPOINTS", spec);
        let from = node.log_text().len();
        node.spawn("");
        let log = exited(&mut node, from, &["FAILPOINTS", words]);
        assert!(!log.contains("panicked"), "{log}");
        node.kill();
    }
}

/// Where a follower crashes applying a rotation (its registrations of every
/// member under the new key at epoch 0, then the rotation entry), and what its
/// disk shows then.
struct RotationCrash {
    /// The fail point the node crashes at.
    fail_point: &'static str,
    /// Its fail-rs actions.
    actions: &'static str,
    /// The key rotated.
    purpose: &'static str,
    /// Whether the sidecar names the new key (the rename happened).
    sidecar_has_key: bool,
    /// Whether a whole new sidecar waits in `keys.json.tmp`.
    tmp_left: bool,
}

const ROTATION_CRASHES: [RotationCrash; 4] = [
    // The sidecar of the rotation is written to its `.tmp` and synced; the target
    // still holds the old one.
    RotationCrash {
        fail_point: "durable::before-rename",
        actions: "panic",
        purpose: "storage",
        sidecar_has_key: false,
        tmp_left: true,
    },
    // Renamed; the directory not synced.
    RotationCrash {
        fail_point: "durable::before-dir-fsync",
        actions: "panic",
        purpose: "raft",
        sidecar_has_key: true,
        tmp_left: false,
    },
    // The first registration under the new key wrote its registry row, not its
    // applied index.
    RotationCrash {
        fail_point: "kv::before-applied-index",
        actions: "panic",
        purpose: "storage",
        sidecar_has_key: false,
        tmp_left: false,
    },
    // Past both registrations: the rotation wrote the sidecar and its registry
    // row, not its applied index.
    RotationCrash {
        fail_point: "kv::before-applied-index",
        actions: "2*off->panic",
        purpose: "raft",
        sidecar_has_key: true,
        tmp_left: false,
    },
];

/// `sealkv encryption rotate-dek --purpose PURPOSE` through `node`, which must
/// succeed; returns the new key id.
fn rotate(node: &Node, purpose: &str) -> u64 {
    let (ok, out, err) = run(sealkv().args([
        "encryption",
        "rotate-dek",
        "--purpose",
        purpose,
        "--admin-addr",
        &node.admin,
    ]));
    assert!(ok, "rotate-dek --purpose {purpose}: {out}{err}");
    let json = out.split_once(": ").map_or("", |(_, j)| j);
    let answer: Value = serde_json::from_str(json.trim()).expect("rotate-dek answer");
    assert_eq!(answer["applied"], "rotation", "{out}");
    answer["key_id"].as_u64().expect("key_id")
}

/// A follower crashes applying a key rotation at each step of it: with the new
/// sidecar written to its `.tmp` only, renamed but its directory not synced, and
/// with registry rows (and the sidecar) written but not the applied index. The
/// cluster goes on without it; restarted, it applies (or recognises as its own
/// replay) the entries and ends with the keys, registry and data of the others.
#[test]
fn crashes_while_applying_a_key_rotation_converge() {
    let _serial = serial();
    let mut c = encrypted_cluster(&[]);
    let peers = c.peers.clone();
    let mut acked = Acked::default();
    acked.write(&c, "kv", 0, 20);
    for (round, case) in ROTATION_CRASHES.iter().enumerate() {
        // Quiet: every node registered its epochs, so the next key-family entry
        // the victim applies is the rotation.
        converged(&c, &acked);
        let leader = c.leader();
        let followers: Vec<u64> = c
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != leader)
            .collect();
        let victim = followers[round % followers.len()];
        let from = c.node(victim).log_text().len();
        arm(c.node(victim), case.fail_point, case.actions);

        let key_id = rotate(c.node(leader), case.purpose);
        let index = encryption_status(c.node(leader))["sidecar_applied_index"]
            .as_u64()
            .expect("sidecar index");
        let panic = format!("failpoint {} panic", case.fail_point);
        exited(c.node(victim), from, &[&panic, "raft driver panicked"]);

        // The disk as the crash left it.
        let (doc, tmp) = sidecar(c.node(victim));
        let what = format!("{}={}", case.fail_point, case.actions);
        let holds_key = !doc["keys"][key_id.to_string()].is_null();
        assert_eq!(holds_key, case.sidecar_has_key, "{what}: keys.json {doc}");
        assert_eq!(tmp, case.tmp_left, "{what}: keys.json.tmp");
        let sidecar_index = doc["raft_applied_index"].as_u64().expect("index");
        if case.sidecar_has_key {
            assert_eq!(sidecar_index, index, "{what}");
        } else {
            assert!(sidecar_index < index, "{what}: {doc}");
        }

        // The cluster serves without it, under the new key.
        acked.write(&c, "kv", round + 1, 20);
        let from = restart(c.node(victim), &peers);
        let log = c.node(victim).log_text()[from..].to_string();
        // The store had not recorded the rotation as applied: the restart applies
        // it, or finds the sidecar ahead and replays it.
        let applied = logged_u64(&log, "built state machine", "applied_index");
        assert!(applied < index, "{what}: applied {applied} >= {index}");
        converged(&c, &acked);
        let status = encryption_status(c.node(victim));
        let active = format!("active_{}_key", case.purpose);
        assert_eq!(status[&active].as_u64(), Some(key_id), "{status}");
    }
    no_nonce_repeats(&c);
}

/// The leader crashes persisting a Ready (its appends already sent), then a
/// follower's persistence fails with a write error, which stops its driver: each
/// node exits, the others keep every acknowledged write, and each restarted node
/// catches up.
#[test]
fn a_crash_or_write_error_in_raft_log_persistence_loses_no_acknowledged_write() {
    let _serial = serial();
    let mut c = encrypted_cluster(&[]);
    let peers = c.peers.clone();
    let mut acked = Acked::default();
    acked.write(&c, "log", 0, 20);

    let leader = c.leader();
    let from = c.node(leader).log_text().len();
    arm(c.node(leader), "raftlog::persist", "panic");
    // Not acknowledged (the leader dies first), but it may still commit through
    // the followers: a key of its own, which no check reads.
    if let Some(mut conn) = c.node(leader).try_redis() {
        let _: RedisResult<()> = conn.set("unacknowledged", "maybe");
    }
    exited(
        c.node(leader),
        from,
        &["failpoint raftlog::persist panic", "raft driver panicked"],
    );
    acked.write(&c, "log", 1, 20);
    restart(c.node(leader), &peers);
    converged(&c, &acked);

    let leader = c.leader();
    let follower = c.other_than(leader);
    let from = c.node(follower).log_text().len();
    arm(c.node(follower), "raftlog::persist", "return");
    acked.write(&c, "log", 2, 20);
    exited(
        c.node(follower),
        from,
        &[
            "raft driver stopped",
            "storage engine failed to persist raft entries: fail point raftlog::persist",
        ],
    );
    acked.write(&c, "log", 3, 20);
    restart(c.node(follower), &peers);
    converged(&c, &acked);
    no_nonce_repeats(&c);
}

/// A follower that missed a rotation and the log compacted past it is sent a
/// snapshot, and crashes installing it (armed from `FAILPOINTS` at its start):
/// after the store took the rows, before the state machine and the keyring did.
/// Its restart finishes the install from `snapshot.pending`, adopts the new key,
/// and it ends with the data and keys of the others.
#[test]
fn a_crash_installing_a_snapshot_is_finished_at_restart() {
    crash_installing_a_snapshot("kv::install-snapshot");
}

/// The same, with the crash in the middle of the store's install from the received
/// file (`store::install-snapshot-rows`): the old rows deleted, the snapshot's
/// metadata rows and the install marker written, no data row and no applied index.
#[test]
fn a_crash_midway_through_the_rows_of_a_snapshot_is_finished_at_restart() {
    crash_installing_a_snapshot("store::install-snapshot-rows");
}

fn crash_installing_a_snapshot(fail_point: &str) {
    let _serial = serial();
    let mut c = encrypted_cluster(&[]);
    let peers = c.peers.clone();
    let mut acked = Acked::default();
    acked.write(&c, "snap", 0, 20);
    let leader = c.leader();
    let victim = c.other_than(leader);
    c.node(victim).kill();
    let key_id = rotate(c.node(leader), "storage");
    acked.write(&c, "snap", 1, 30);
    // Every running node compacts, so whichever leads sends a snapshot.
    for node in c.nodes.iter().filter(|n| n.id != victim) {
        let (code, body) = http(&node.admin, "POST", "/v1/raft/compact", None).expect("compact");
        assert_eq!(code, 200, "{body}");
    }

    let node = c.node(victim);
    node.set_env("FAILPOINTS", &format!("{fail_point}=panic"));
    let from = node.log_text().len();
    node.spawn(&peers);
    exited(
        node,
        from,
        &[
            &format!("{fail_point}=panic"),
            "installing snapshot",
            &format!("failpoint {fail_point} panic"),
        ],
    );
    assert!(node.data_dir.join("snapshot.pending").exists());
    assert!(node.data_dir.join("snapshot.pending.dump").exists());

    let from = restart(node, &peers);
    let log = node.log_text()[from..].to_string();
    assert!(
        log.contains("finished installing a snapshot received before a crash"),
        "{log}"
    );
    assert!(!node.data_dir.join("snapshot.pending").exists());
    assert!(!node.data_dir.join("snapshot.pending.dump").exists());
    converged(&c, &acked);
    let status = encryption_status(c.node(victim));
    assert_eq!(
        status["active_storage_key"].as_u64(),
        Some(key_id),
        "{status}"
    );
    no_nonce_repeats(&c);
}

/// The apply batch of a follower fails to write (`store::commit=return`, as a
/// RocksDB error): the follower halts at the first entry of the batch with its
/// applied index unchanged, says why in status, health and metrics, refuses
/// writes and linearizable reads with `-HALTED`, and applies nothing more while the
/// others go on. Restarted without the fault it replays the entry and catches up.
#[test]
fn a_failed_apply_write_halts_instead_of_advancing() {
    let _serial = serial();
    let mut c = encrypted_cluster(&[]);
    let peers = c.peers.clone();
    let mut acked = Acked::default();
    acked.write(&c, "halt", 0, 10);
    converged(&c, &acked);
    let leader = c.leader();
    let victim = c.other_than(leader);
    let before = status_u64(c.node(victim), "applied_index");
    arm(c.node(victim), "store::commit", "return");
    acked.write(&c, "halt", 1, 10);

    let node = c.node(victim);
    let halted = eventually("the follower to halt", LONG, || {
        let s = node.status()?;
        s["halted"].as_str().map(str::to_string)
    });
    assert!(
        halted.starts_with(&format!(
            "state machine halted at index {}: storage",
            before + 1
        )) && halted.contains("fail point store::commit"),
        "{halted}"
    );
    assert_eq!(status_u64(node, "applied_index"), before);
    let (code, body) = http(&node.admin, "GET", "/health", None).expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(node.metrics().contains("sealkv_halted 1"));
    let mut conn = node.redis();
    let write: RedisResult<()> = conn.set("refused", "1");
    let read: RedisResult<Option<String>> = conn.get("halt:0");
    for err in [write.err(), read.err()] {
        let err = err.expect("refused while halted");
        assert_eq!(err.code(), Some("HALTED"), "{err}");
    }

    // The others go on; the halted node does not move.
    acked.write(&c, "halt", 2, 10);
    let node = c.node(victim);
    assert_eq!(status_u64(node, "applied_index"), before);
    assert!(node.exited().is_none(), "a halt keeps the node up");

    restart(node, &peers);
    converged(&c, &acked);
    no_nonce_repeats(&c);
}

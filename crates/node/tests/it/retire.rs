//! Key retirement with real `sealkv` processes: `sealkv encryption retire-dek` is
//! refused while any node holds a version under the key, for the active keys and
//! for unknown ones; a storage key that never sealed a value is retired from every
//! keyring and sidecar, stays gone across restarts, and a node added afterwards by
//! snapshot never gets it. Concurrent calls: one wins, the rest are refused cleanly.

use serde_json::Value;

use crate::encryption::{
    LONG, encrypted_flags, encryption_on, encryption_status, marker_prefix, read_marked, rotate,
    with_kek, write_marked,
};
use crate::support::*;

/// `POST /v1/encryption/retire-dek` of `key_id` on `node`: status and body.
fn retire_at(node: &Node, key_id: u64) -> (u16, String) {
    http(
        &node.admin,
        "POST",
        "/v1/encryption/retire-dek",
        Some(&format!(r#"{{"key_id":{key_id}}}"#)),
    )
    .expect("admin answer")
}

/// The key ids of a node's loaded keys, ascending.
fn loaded_keys(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["key_id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

/// The key ids in a node's `keys.json`, ascending.
fn sidecar_keys(node: &Node) -> Vec<u64> {
    let path = node.data_dir.join("encryption").join("keys.json");
    let text = std::fs::read_to_string(&path).expect("read keys.json");
    let doc: Value = serde_json::from_str(&text).expect("keys.json is JSON");
    let mut ids: Vec<u64> = doc["keys"]
        .as_object()
        .expect("keys")
        .keys()
        .map(|id| id.parse().expect("decimal id"))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn retire_dek_refuses_while_needed_and_removes_an_unused_key_everywhere() {
    let _serial = serial();
    let (dir, kek) = with_kek();
    let mut flags = encrypted_flags(&kek);
    flags.extend(["--compact-threshold", "20", "--compact-keep", "2"]);
    let mut c = Cluster::start_in(dir, 3, &flags);
    for node in &c.nodes {
        encryption_on(node);
    }
    let leader = c.leader();
    let boot = encryption_status(c.node(leader));
    assert_eq!(boot["active_storage_key"], 1, "{boot}");
    assert_eq!(boot["active_raft_key"], 2, "{boot}");

    // Key 1 is replaced before any user value exists, so it never sealed one; key
    // 3 seals the values written next, then is replaced by key 4.
    rotate(c.node(leader), "storage");
    let prefix = marker_prefix();
    write_marked(c.node(leader), &prefix, 0..200);
    rotate(c.node(leader), "storage");
    for node in &c.nodes {
        eventually(&format!("node {} on key 4", node.id), LONG, || {
            (encryption_status(node)["active_storage_key"] == 4).then_some(())
        });
    }

    // Every node counts its versions per key: all 200 under key 3, none under 1.
    for node in &c.nodes {
        let status = encryption_status(node);
        let counts = &status["versions_by_key"];
        assert_eq!(counts["3"], 200, "node {}: {status}", node.id);
        assert!(counts["1"].is_null(), "node {}: {status}", node.id);
        assert_eq!(counts["clear"], 0, "node {}: {status}", node.id);
        assert!(
            status["versions_applied_index"].as_u64() > Some(0),
            "{status}"
        );
        // The status call refreshed the gauges.
        assert_eq!(node.metric(r#"sealkv_versions_by_key{key_id="3"}"#), 200);
    }

    // Refused while values remain under key 3, through a follower and the CLI: the
    // leader names a node and its count.
    let follower = c.other_than(leader);
    let (ok, out, err) = run(sealkv().args([
        "encryption",
        "retire-dek",
        "--key-id",
        "3",
        "--admin-addr",
        &c.node(follower).admin,
    ]));
    assert!(!ok, "retiring a key in use succeeded: {out}");
    assert!(err.contains("409"), "{err}");
    assert!(
        err.contains("still holds 200 versions sealed under key 3"),
        "{err}"
    );
    assert!(err.contains("node "), "{err}");
    // The active keys, and a key that does not exist, are refused too.
    for (key_id, reason) in [
        (4, "is the active storage key"),
        (2, "is the active raft key"),
        (99, "is not a loaded key"),
    ] {
        let (code, body) = retire_at(c.node(follower), key_id);
        assert_eq!(code, 409, "retire {key_id}: {body}");
        assert!(body.contains(reason), "retire {key_id}: {body}");
    }
    for node in &c.nodes {
        assert_eq!(loaded_keys(&encryption_status(node)), [1, 2, 3, 4]);
    }

    // A member that cannot be asked is never taken for zero: 503, retry.
    let down = c.other_than(leader);
    assert!(c.node(down).terminate().success());
    let (code, body) = retire_at(c.node(leader), 1);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("ask node {down}")) && body.contains("retry"),
        "{body}"
    );
    let peers = c.peers.clone();
    c.node(down).start(&peers);
    let leader = c.leader();
    let since = encryption_status(c.node(leader))["sidecar_applied_index"]
        .as_u64()
        .expect("sidecar index");
    eventually(&format!("node {down} to catch up"), LONG, || {
        let applied = encryption_status(c.nodes.get(down as usize - 1)?)["versions_applied_index"]
            .as_u64()?;
        (applied >= since).then_some(())
    });

    // Key 1 sealed nothing anywhere: concurrent calls through every node, one wins
    // and the others are refused cleanly (it is gone) or asked to retry.
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let node = &c.nodes[i % 3];
                s.spawn(move || retire_at(node, 1))
            })
            .collect();
        calls
            .into_iter()
            .map(|h| h.join().expect("retire thread"))
            .collect()
    });
    let won = results.iter().filter(|(code, _)| *code == 200).count();
    assert_eq!(won, 1, "exactly one retirement applies: {results:?}");
    for (code, body) in &results {
        match code {
            200 => assert!(body.contains(r#""applied":"retirement""#), "{body}"),
            409 => assert!(body.contains("key 1 is not a loaded key"), "{body}"),
            503 => assert!(body.contains("retry"), "{body}"),
            _ => panic!("unexpected answer {code}: {body}"),
        }
    }

    // Every node lost key 1, in memory and in its sidecar, and shows it retired;
    // none halted, and the values under key 3 still read.
    for node in &c.nodes {
        let status = eventually(&format!("node {} drops key 1", node.id), LONG, || {
            let s = encryption_status(node);
            (loaded_keys(&s) == [2, 3, 4]).then_some(s)
        });
        assert_eq!(sidecar_keys(node), [2, 3, 4], "node {}", node.id);
        let retired = status["retired_key_ids"].as_array().expect("retired ids");
        assert!(retired.contains(&Value::from(1)), "{status}");
        assert!(node.status().expect("status")["halted"].is_null());
        read_marked(node, &prefix, &[0, 99, 199]);
    }

    // A restart of every node keeps it gone.
    for node in &mut c.nodes {
        assert!(node.terminate().success(), "node {} stops", node.id);
    }
    for node in &mut c.nodes {
        node.start(&peers);
    }
    let leader = c.leader();
    for node in &c.nodes {
        let status = encryption_on(node);
        assert_eq!(
            loaded_keys(&status),
            [2, 3, 4],
            "node {}: {status}",
            node.id
        );
        assert_eq!(sidecar_keys(node), [2, 3, 4], "node {}", node.id);
    }
    // A later rotation takes an id above every id ever issued, not the free 1.
    rotate(c.node(leader), "storage");
    let status = encryption_status(c.node(leader));
    assert_eq!(status["active_storage_key"], 5, "{status}");

    // A node added afterwards catches up by snapshot and never holds key 1.
    let first = c.node(leader).status().expect("status")["first_index"]
        .as_u64()
        .expect("first_index");
    assert!(first > 20, "the leader did not compact its log: {first}");
    let mut learner_flags = vec!["--join"];
    learner_flags.extend(encrypted_flags(&kek));
    let mut learner = Node::new(c.dir.path(), 4, &learner_flags);
    learner.start(&format!("{peers},4={}", learner.raft));
    let (ok, out, err) = add_learner(&c.node(leader).admin, &learner);
    assert!(ok, "add-learner: {out}{err}");
    let status = eventually("the learner to hold the keys", LONG, || {
        let s = encryption_status(&learner);
        (s["active_storage_key"] == 5).then_some(s)
    });
    assert_eq!(
        learner.metric("sealkv_snapshots_installed_total"),
        1,
        "the learner did not catch up by snapshot"
    );
    assert_eq!(loaded_keys(&status), [2, 3, 4, 5], "{status}");
    assert_eq!(sidecar_keys(&learner), [2, 3, 4, 5]);
    assert_eq!(status["versions_by_key"]["3"], 200, "{status}");
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

//! Clusters of real `sealkv` processes on loopback, driven with redis-rs: replication,
//! leader failure, catch-up by log and by snapshot, membership changes, full restart,
//! and a halted state machine.

use std::time::Duration;

use redis::{Commands, RedisResult};
use sealkv_store::{RaftLog, RocksStore, RocksStoreOptions};

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

/// A SET retried until the cluster accepts it (elections answer TRYAGAIN).
fn set_eventually(node: &Node, key: &str, value: &str) {
    eventually(&format!("SET {key} through node {}", node.id), LONG, || {
        let mut c = node.redis();
        let r: RedisResult<String> = c.set(key, value);
        r.ok()
    });
}

/// A stale (local) read, for checking what a node has applied.
fn read_stale(node: &Node, key: &str) -> Option<String> {
    let mut c = node.redis();
    redis::cmd("READONLY").query::<()>(&mut c).ok()?;
    c.get(key).ok()?
}

/// Waits until `node` has applied `key = value`.
fn converges(node: &Node, key: &str, value: &str) {
    eventually(&format!("node {} to apply {key}", node.id), LONG, || {
        (read_stale(node, key).as_deref() == Some(value)).then_some(())
    });
}

/// A single node with no peers is a one-node cluster that serves at once.
#[test]
fn single_node_serves_redis() {
    let _serial = serial();
    let c = Cluster::start(1, &[]);
    let node = &c.nodes[0];
    let mut r = node.redis();
    let _: () = r.set("greeting", "hello").expect("SET");
    let got: String = r.get("greeting").expect("GET");
    assert_eq!(got, "hello");
    let n: i64 = r.incr("counter", 5).expect("INCRBY");
    assert_eq!(n, 5);
    let status = node.status().expect("status");
    assert_eq!(status["role"], "leader");
    assert_eq!(status["voters"], serde_json::json!([1]));
    assert!(status["halted"].is_null());
    assert!(status["applied_index"].as_u64().expect("applied") >= 3);
    let metrics = node.metrics();
    assert!(
        metrics.contains("sealkv_raft_role{role=\"leader\"} 1"),
        "{metrics}"
    );
    // Removing the only voter would leave a cluster that can never commit again.
    let (ok, _, err) = run(sealkv().args([
        "cluster",
        "remove-node",
        "--id",
        "1",
        "--admin-addr",
        &node.admin,
    ]));
    assert!(!ok);
    assert!(err.contains("last voter"), "{err}");
    assert_eq!(
        node.status().expect("status")["voters"],
        serde_json::json!([1])
    );
}

/// Writes through one node are read through another; the leader dies and writes go
/// on; it comes back and catches up.
#[test]
fn three_nodes_replicate_and_survive_the_leader() {
    let _serial = serial();
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader();
    let follower = c.other_than(leader);

    // A write through a follower is forwarded to the leader and acknowledged.
    let mut w = c.node(follower).redis();
    let _: () = w.set("k1", "v1").expect("SET via follower");
    // A linearizable read through the leader sees it at once.
    let got: String = c.node(leader).redis().get("k1").expect("GET via leader");
    assert_eq!(got, "v1");
    // So does a linearizable read through the other follower.
    let third = (1..=3)
        .find(|i| *i != leader && *i != follower)
        .expect("third");
    let got: String = c.node(third).redis().get("k1").expect("GET via follower");
    assert_eq!(got, "v1");
    // A follower tells clients where the leader serves Redis.
    let leader_port = c
        .node(leader)
        .redis
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let info = eventually(
        "follower INFO names the leader",
        Duration::from_secs(10),
        || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut c.node(third).try_redis()?)
                .ok()?;
            info.contains(&format!("master_port:{leader_port}"))
                .then_some(info)
        },
    );
    assert!(info.contains("role:slave"), "{info}");

    c.node(leader).kill();
    let survivor = c.other_than(leader);
    set_eventually(c.node(survivor), "k2", "v2");
    let new_leader = c.leader();
    assert_ne!(new_leader, leader);
    for i in 0..50 {
        let _: () = c
            .node(survivor)
            .redis()
            .set(format!("after{i}"), i)
            .expect("SET after failover");
    }

    // The old leader restarts and catches up through the log.
    let peers = c.peers.clone();
    c.node(leader).start(&peers);
    converges(c.node(leader), "after49", "49");
    converges(c.node(leader), "k2", "v2");
}

/// A follower that was down while the log was compacted past it catches up by
/// snapshot.
#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let _serial = serial();
    let mut c = Cluster::start(3, &["--compact-threshold", "20", "--compact-keep", "2"]);
    let leader = c.leader();
    let lagging = c.other_than(leader);
    set_eventually(c.node(leader), "before", "x");
    converges(c.node(lagging), "before", "x");
    c.node(lagging).kill();

    let mut w = c.node(leader).redis();
    for i in 0..200 {
        let _: () = w.set(format!("key{i}"), i).expect("SET");
    }
    let first = c.node(leader).status().expect("status")["first_index"]
        .as_u64()
        .expect("first_index");
    assert!(
        first > 20,
        "leader did not compact its log: first_index {first}"
    );

    let peers = c.peers.clone();
    c.node(lagging).start(&peers);
    converges(c.node(lagging), "key199", "199");
    converges(c.node(lagging), "key0", "0");
    converges(c.node(lagging), "before", "x");
    let metrics = c.node(lagging).metrics();
    assert!(
        metrics.contains("sealkv_snapshots_installed_total 1")
            || metrics.contains("sealkv_snapshots_installed_total 2"),
        "{metrics}"
    );
}

/// A learner added through the CLI receives the data; a node removed through the CLI
/// leaves the configuration.
#[test]
fn learner_joins_and_node_is_removed() {
    let _serial = serial();
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader();
    set_eventually(c.node(leader), "seed", "1");

    // The new node starts first, with --join: no membership, waiting for the leader.
    let mut learner = Node::new(c.dir.path(), 4, &["--join"]);
    learner.start(&format!("{},4={}", c.peers, learner.raft));

    let admin = c.node(c.other_than(leader)).admin.clone();
    let (ok, out, err) = add_learner(&admin, &learner);
    assert!(ok, "add-learner: {out}{err}");
    assert!(out.contains("learners [4]"), "{out}");
    converges(&learner, "seed", "1");
    set_eventually(c.node(leader), "later", "2");
    converges(&learner, "later", "2");
    let status = learner.status().expect("learner status");
    assert_eq!(status["learners"], serde_json::json!([4]));

    // A node that is not a member is refused before anything is proposed.
    let (ok, _, err) = run(sealkv().args([
        "cluster",
        "remove-node",
        "--id",
        "9",
        "--admin-addr",
        &c.node(leader).admin.clone(),
    ]));
    assert!(!ok);
    assert!(err.contains("node 9 is not a member"), "{err}");

    // Remove a follower that is not the leader.
    let victim = c.other_than(leader);
    let (ok, out, err) = run(sealkv().args([
        "cluster",
        "remove-node",
        "--id",
        &victim.to_string(),
        "--admin-addr",
        &c.node(leader).admin.clone(),
    ]));
    assert!(ok, "remove-node: {out}{err}");
    let status = c.node(leader).status().expect("status");
    let voters: Vec<u64> = serde_json::from_value(status["voters"].clone()).expect("voters");
    assert!(!voters.contains(&victim), "{voters:?}");
    assert_eq!(voters.len(), 2);
    // The two remaining voters still make progress.
    set_eventually(c.node(leader), "after-remove", "3");

    let (ok, out, _) =
        run(sealkv().args(["status", "--admin-addr", &c.node(leader).admin.clone()]));
    assert!(ok);
    assert!(out.contains("role leader"), "{out}");
}

/// Stopping and restarting all three nodes keeps every acknowledged write.
#[test]
fn full_restart_keeps_acknowledged_writes() {
    let _serial = serial();
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader();
    let mut w = c.node(leader).redis();
    for i in 0..100 {
        let _: () = w.set(format!("durable{i}"), i).expect("SET");
    }
    drop(w);
    // One node dies hard, the others stop cleanly.
    c.node(1).kill();
    assert!(c.node(2).terminate().success(), "{}", c.node(2).log_text());
    assert!(c.node(3).terminate().success(), "{}", c.node(3).log_text());
    let peers = c.peers.clone();
    for id in 1..=3 {
        c.node(id).start(&peers);
    }
    let leader = c.leader();
    let mut r = c.node(leader).redis();
    for i in 0..100 {
        let got: String = r.get(format!("durable{i}")).expect("GET");
        assert_eq!(got, i.to_string());
    }
}

/// An entry the state machine cannot apply halts it: `/status` shows the halt, writes
/// are refused, and a restart halts again at the same entry.
#[test]
fn halted_state_machine_shows_and_refuses_writes() {
    let _serial = serial();
    let mut c = Cluster::start(1, &[]);
    let _: () = c.node(1).redis().set("before", "1").expect("SET");
    assert!(c.node(1).terminate().success());

    // Append an entry with the reserved opcode 0x02 to the stopped node's log and
    // commit it, as a corrupt or future entry would arrive.
    let bad_index = {
        let store = RocksStore::open(c.nodes[0].data_dir.join("db"), RocksStoreOptions::default())
            .expect("open store");
        let log = RaftLog::open(&store).expect("open raft log");
        let mut hs = log.hard_state();
        let index = log.last_index() + 1;
        let entry = raft::prelude::Entry {
            index,
            term: hs.term,
            data: vec![0x02, 0xAA].into(),
            ..Default::default()
        };
        hs.commit = index;
        log.persist(&[entry], Some(&hs)).expect("append bad entry");
        index
    };

    c.node(1).start("");
    let status = eventually("the halt in /status", LONG, || {
        let s = c.nodes[0].status()?;
        (!s["halted"].is_null()).then_some(s)
    });
    let halted = status["halted"].as_str().expect("halt cause");
    assert!(halted.contains(&format!("index {bad_index}")), "{halted}");
    assert!(halted.contains("0x02"), "{halted}");
    assert_eq!(status["applied_index"].as_u64(), Some(bad_index - 1));

    let mut r = c.node(1).redis();
    let err = r.set::<_, _, ()>("after", "2").expect_err("write refused");
    assert!(err.to_string().contains("HALTED"), "{err}");
    let (code, body) = http(&c.nodes[0].admin, "GET", "/health", None).expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(c.node(1).metrics().contains("sealkv_halted 1"));

    // A restart replays the same entry and halts again.
    assert!(c.node(1).terminate().success());
    c.node(1).start("");
    let status = eventually("the halt after restart", LONG, || {
        let s = c.nodes[0].status()?;
        (!s["halted"].is_null()).then_some(s)
    });
    assert_eq!(status["applied_index"].as_u64(), Some(bad_index - 1));
}

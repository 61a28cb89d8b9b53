//! Storage lifecycle on real three-node clusters: MVCC garbage collection keeps
//! reads right under load and leaves one version per key; a cluster migrated from
//! cleartext, rewritten, collected and compacted holds no user value in cleartext
//! in any file of any data dir (and the same scan finds them before the rewrite).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{Commands, RedisResult};
use serde_json::Value;

use crate::encryption::{
    Scan, encrypted_flags, encryption_on, encryption_status, marked_key, marked_value,
    marker_prefix, read_marked, rotate, set_eventually, with_kek, write_marked,
};
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

/// `GET /v1/store/status` of a node.
fn store_status(node: &Node) -> Value {
    let (ok, out, err) = run(sealkv().args(["store", "status", "--admin-addr", &node.admin]));
    assert!(ok, "store status of node {}: {out}{err}", node.id);
    serde_json::from_str(&out).expect("store status JSON")
}

fn field(status: &Value, name: &str) -> u64 {
    status[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} missing: {status}"))
}

/// `sealkv store compact` through `node`; returns the index of the request.
fn compact(node: &Node) -> u64 {
    let (ok, out, err) = run(sealkv().args(["store", "compact", "--admin-addr", &node.admin]));
    assert!(ok, "store compact through node {}: {out}{err}", node.id);
    let status: Value = serde_json::from_str(&out).expect("compact JSON");
    let done = field(&status, "compact_done_index");
    assert!(
        done >= field(&status, "compact_requested_index"),
        "{status}"
    );
    done
}

/// `sealkv encryption rewrite --wait` through `node`, which must succeed; its output.
fn rewrite_wait(node: &Node, what: &str) -> String {
    let (ok, out, err) = run(sealkv().args([
        "encryption",
        "rewrite",
        "--wait",
        "--admin-addr",
        &node.admin,
    ]));
    assert!(ok, "{what}: {out}{err}");
    out
}

/// Waits until every node has finished the compaction request `index`.
fn compacted_everywhere(cluster: &Cluster, index: u64) {
    for node in &cluster.nodes {
        eventually(
            &format!("compaction {index} on node {}", node.id),
            LONG,
            || (field(&store_status(node), "compact_done_index") >= index).then_some(()),
        );
    }
}

/// Overwrites, deletes and expiring values under a running writer and readers,
/// with compactions in between: every read returns a value at least as new as the
/// last one acknowledged before it started, and afterwards every node keeps one
/// version per live key.
#[test]
fn gc_under_load_keeps_reads_right_and_leaves_one_version_per_key() {
    let _serial = serial();
    let mut c = Cluster::start(3, &["--mvcc-retention", "0"]);
    const KEYS: u64 = 20;
    // acked[k] is the newest counter value acknowledged for key k.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let leader = c.leader();
    let writer = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        let node = c.node(leader).redis.clone();
        std::thread::spawn(move || {
            let mut conn = redis::Client::open(format!("redis://{node}"))
                .and_then(|c| c.get_connection())
                .expect("writer connection");
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let k = n % KEYS;
                let r: RedisResult<()> = conn.set(format!("gc:{k}"), n);
                if r.is_ok() {
                    acked[k as usize].fetch_max(n, Ordering::AcqRel);
                }
                // Churn that GC must collect: a short-lived key and a deleted one.
                let _: RedisResult<()> = conn.pset_ex(format!("ttl:{n}"), "x", 1);
                let _: RedisResult<()> = conn.set(format!("del:{}", n % 5), "x");
                let _: RedisResult<i64> = conn.del(format!("del:{}", n % 5));
            }
            n
        })
    };
    let readers: Vec<_> = c
        .nodes
        .iter()
        .map(|node| {
            let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), node.redis.clone());
            std::thread::spawn(move || {
                let mut conn = redis::Client::open(format!("redis://{addr}"))
                    .and_then(|c| c.get_connection())
                    .expect("reader connection");
                let mut checked = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let k = i % KEYS;
                    let floor = acked[k as usize].load(Ordering::Acquire);
                    let r: RedisResult<Option<u64>> = conn.get(format!("gc:{k}"));
                    if let Ok(got) = r {
                        let got = got.unwrap_or(0);
                        assert!(
                            got >= floor,
                            "gc:{k} read {got} at {addr} after {floor} was acknowledged"
                        );
                        checked += 1;
                    }
                }
                checked
            })
        })
        .collect();
    // Let the writer get going, then compact three times while it runs.
    eventually("writes", LONG, || {
        (acked.iter().map(|a| a.load(Ordering::Acquire)).max() > Some(300)).then_some(())
    });
    let mut last = 0;
    for round in 0..3u64 {
        let through = c.nodes[usize::try_from(round).expect("index")].id;
        last = compact(c.node(through));
        let seen = acked.iter().map(|a| a.load(Ordering::Acquire)).max();
        eventually("more writes", LONG, || {
            (acked.iter().map(|a| a.load(Ordering::Acquire)).max() > seen).then_some(())
        });
    }
    stop.store(true, Ordering::Release);
    let written = writer.join().expect("writer");
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(
        written > 300 && reads > 300,
        "written {written}, reads {reads}"
    );
    compacted_everywhere(&c, last);

    // Quiet now: one more compaction leaves exactly one version per live key on
    // every node (the gc: keys; ttl: keys expired, del: keys deleted), and every
    // node reads the last acknowledged values.
    // A compaction's safe point may come before the last 1 ms TTLs lapsed: compact
    // again until every node is down to one version per key.
    let statuses = eventually("one version per key on every node", LONG, || {
        let index = compact(&c.nodes[0]);
        compacted_everywhere(&c, index);
        let statuses: Vec<Value> = c.nodes.iter().map(store_status).collect();
        statuses
            .iter()
            .all(|s| field(s, "versions") == KEYS && field(s, "live_keys") == KEYS)
            .then_some(statuses)
    });
    for (node, status) in c.nodes.iter().zip(statuses) {
        assert!(field(&status, "versions_removed") > 0, "{status}");
        let mut conn = node.redis();
        for k in 0..KEYS {
            let got: u64 = conn.get(format!("gc:{k}")).expect("GET");
            assert!(got >= acked[k as usize].load(Ordering::Acquire));
        }
        let size: u64 = redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE");
        assert_eq!(size, KEYS);
    }
    let removed = c.nodes[0].metric("sealkv_gc_versions_removed_total");
    assert!(removed > 0, "metrics show no collection");
    // Without encryption there is no key to rewrite under: refused, nothing proposed.
    let (code, body) = http(
        &c.nodes[0].admin,
        "POST",
        "/v1/encryption/rewrite",
        Some("{}"),
    )
    .expect("answer");
    assert_eq!(code, 412, "{body}");
    assert!(body.contains("encryption is not enabled"), "{body}");
    for node in &c.nodes {
        let rewrite = &store_status(node)["rewrite"];
        assert_eq!(field(rewrite, "requested_index"), 0, "node {}", node.id);
    }
}

/// A populated cleartext cluster moved to encryption: before the rewrite, the
/// marked values sit in cleartext in every data dir; after `encryption rewrite`,
/// a Raft log compaction and `store compact`, no file of any data dir holds one,
/// and every value still reads on every node.
#[test]
fn a_migrated_cluster_holds_no_cleartext_after_rewrite_and_compaction() {
    let _serial = serial();
    let (_kek_dir, kek) = with_kek();
    let mut c = Cluster::start(3, &["--mvcc-retention", "0"]);
    let prefix = marker_prefix();
    let leader = c.leader();
    const VALUES: usize = 2000;
    write_marked(c.node(leader), &prefix, 0..VALUES);
    // Older versions in cleartext too.
    write_marked(c.node(leader), &prefix, 0..VALUES / 2);
    let indexes: Vec<usize> = (0..VALUES).collect();
    for node in &c.nodes {
        eventually(&format!("node {} caught up", node.id), LONG, || {
            let s = node.status()?;
            (s["applied_index"].as_u64() >= s["commit_index"].as_u64()).then_some(())
        });
    }

    // Restart every node with encryption, and bootstrap.
    for id in 1..=3 {
        assert!(c.node(id).terminate().success());
    }
    let mut flags = encrypted_flags(&kek);
    flags.extend(["--mvcc-retention", "0"]);
    let peers = c.peers.clone();
    for id in 1..=3 {
        c.node(id).set_flags(&flags);
        c.node(id).start(&peers);
    }
    let leader = c.leader();
    let (ok, out, err) = run(sealkv().args([
        "encryption",
        "bootstrap",
        "--admin-addr",
        &c.node(leader).admin,
    ]));
    assert!(ok, "bootstrap: {out}{err}");
    for node in &c.nodes {
        encryption_on(node);
    }
    // A restart raises node 2's epochs under the bootstrap keys: once key 1 is
    // retired, its record of node 2 is above what a new node would hold.
    assert!(c.node(2).terminate().success());
    c.node(2).start(&peers);
    encryption_on(&c.nodes[1]);
    // Node 2 proposes once this load's epochs are registered.
    set_eventually(&c.nodes[1], "probe", "after the restart");

    // Positive control: the scan finds the cleartext values on every node.
    for node in &c.nodes {
        let scan = Scan::of(&[&node.data_dir], prefix.as_bytes());
        assert!(
            !scan.hits.is_empty(),
            "node {}: the scan found no cleartext before the rewrite",
            node.id
        );
    }

    // Readers on every node check marked values while the rewrite runs.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = c
        .nodes
        .iter()
        .map(|node| {
            let (stop, addr, prefix) = (Arc::clone(&stop), node.redis.clone(), prefix.clone());
            std::thread::spawn(move || {
                let mut conn = redis::Client::open(format!("redis://{addr}"))
                    .and_then(|c| c.get_connection())
                    .expect("reader connection");
                let (mut checked, mut attempts) = (0usize, 0usize);
                while !stop.load(Ordering::Acquire) || checked == 0 {
                    attempts += 1;
                    let i = attempts * 7 % VALUES;
                    // An election (TRYAGAIN) is an answer to retry; a value is checked.
                    let got: RedisResult<Option<String>> = conn.get(marked_key(i));
                    if let Ok(got) = got {
                        assert_eq!(got, Some(marked_value(&prefix, i)), "{addr}");
                        checked += 1;
                    }
                }
                checked
            })
        })
        .collect();

    // Rewrite on every node, waiting for the node asked; then for the others.
    let out = rewrite_wait(c.node(2), "rewrite");
    assert!(out.contains("rewrite done"), "{out}");
    let requested = field(&store_status(&c.nodes[1])["rewrite"], "requested_index");
    for node in &c.nodes {
        let status = eventually(&format!("rewrite on node {}", node.id), LONG, || {
            let s = store_status(node);
            (field(&s["rewrite"], "done_index") >= requested).then_some(s)
        });
        assert_eq!(field(&status["rewrite"], "unreadable"), 0, "{status}");
        assert!(
            field(&status["rewrite"], "rewritten") >= VALUES as u64,
            "node {}: {status}",
            node.id
        );
    }
    stop.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().expect("reader") > 0);
    }
    // Every value still reads on every node, and a second rewrite finds nothing.
    for node in &c.nodes {
        read_marked(node, &prefix, &indexes);
    }
    let out = rewrite_wait(c.node(1), "second rewrite");
    assert!(out.contains(" 0 resealed"), "{out}");
    for node in &c.nodes {
        let usage = &encryption_status(node)["versions_by_key"];
        assert_eq!(
            usage["clear"].as_u64().unwrap_or(0),
            0,
            "node {}: {usage}",
            node.id
        );
    }

    // Rotate the storage key: the bootstrap key still seals every value, so its
    // retirement is refused; after a rewrite nothing needs it, and it goes.
    let old_key = encryption_status(&c.nodes[0])["active_storage_key"]
        .as_u64()
        .expect("storage key");
    rotate(&c.nodes[0], "storage");
    let retire = |node: &Node| {
        http(
            &node.admin,
            "POST",
            "/v1/encryption/retire-dek",
            Some(&format!(r#"{{"key_id":{old_key}}}"#)),
        )
        .expect("retire-dek answer")
    };
    let (code, body) = retire(&c.nodes[2]);
    assert_eq!(code, 409, "retire while values remain: {body}");
    rewrite_wait(c.node(1), "rewrite after the rotation");
    let requested = field(&store_status(&c.nodes[0])["rewrite"], "requested_index");
    for node in &c.nodes {
        eventually(
            &format!("rewrite {requested} on node {}", node.id),
            LONG,
            || (field(&store_status(node)["rewrite"], "done_index") >= requested).then_some(()),
        );
    }
    // A compaction between the rewrite and the retirement changes nothing the check
    // counts (the rewrite resealed old versions too); it exercises both together.
    let index = compact(c.node(1));
    compacted_everywhere(&c, index);
    let (code, body) = retire(&c.nodes[2]);
    assert_eq!(code, 200, "retire after the rewrite: {body}");
    for node in &c.nodes {
        let status = eventually(
            &format!("key {old_key} gone from node {}", node.id),
            LONG,
            || {
                let s = encryption_status(node);
                let loaded = s["keys"]
                    .as_array()
                    .expect("keys")
                    .iter()
                    .any(|k| k["key_id"].as_u64() == Some(old_key));
                (!loaded).then_some(s)
            },
        );
        assert_eq!(
            status["versions_by_key"][old_key.to_string()]
                .as_u64()
                .unwrap_or(0),
            0
        );
        read_marked(node, &prefix, &indexes);
    }

    // The Raft log forgets the cleartext entries; GC and compaction the old files.
    for node in &c.nodes {
        let (code, body) = http(&node.admin, "POST", "/v1/raft/compact", None).expect("compact");
        assert_eq!(code, 200, "raft compact on node {}: {body}", node.id);
    }
    let index = compact(c.node(3));
    compacted_everywhere(&c, index);
    // Scan stopped nodes, so that every byte they keep is in a file.
    for id in 1..=3 {
        assert!(c.node(id).terminate().success());
    }
    for node in &c.nodes {
        let scan = Scan::of(&[&node.data_dir], prefix.as_bytes());
        assert!(
            scan.hits.is_empty(),
            "node {}: cleartext left after rewrite and compaction: {:?}",
            node.id,
            scan.hits
        );
    }
    for id in 1..=3 {
        c.node(id).start(&peers);
    }
    c.leader();
    for node in &c.nodes {
        eventually(&format!("node {} serves", node.id), LONG, || {
            let r: RedisResult<Option<String>> = node.try_redis()?.get(marked_key(0));
            r.ok().flatten()
        });
        read_marked(node, &prefix, &indexes);
    }
    assert!(assert_no_nonce_repeats(c.dir.path()) > 0);
}

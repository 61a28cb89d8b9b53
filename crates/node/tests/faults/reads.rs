//! Stale reads: a leader cut off by a partition, while the majority elects another
//! and takes a write, never answers a linearizable read with the value it holds;
//! its `READONLY` reads may (and here do) return that stale value.

use std::time::Duration;

use crate::cluster::{FaultCluster, RECOVERY};
use crate::support::{Node, eventually, serial};

fn connect(node: &Node, readonly: bool) -> redis::Connection {
    let mut conn = node.redis();
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    if readonly {
        redis::cmd("READONLY")
            .query::<()>(&mut conn)
            .expect("READONLY");
    }
    conn
}

fn get(conn: &mut redis::Connection, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query(conn)
}

#[test]
fn an_old_leader_cut_off_never_serves_a_stale_linearizable_read() {
    let _serial = serial();
    let mut c = FaultCluster::start(3, false, &[]);
    let old = c.leader();
    let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != old).collect();
    {
        let mut conn = connect(&c.nodes[(old - 1) as usize], false);
        redis::cmd("SET")
            .arg("stale:k")
            .arg("before")
            .query::<()>(&mut conn)
            .expect("SET before");
    }
    c.caught_up();
    // Connections to the old leader made before the partition: the client does not
    // know anything happened.
    let mut linearizable = connect(&c.nodes[(old - 1) as usize], false);
    let mut local = connect(&c.nodes[(old - 1) as usize], true);

    c.net.isolate(old);
    let new = c.leader_among(&rest);
    assert_ne!(new, old);
    eventually("SET after through the new leader", RECOVERY, || {
        let mut conn = c.nodes[(new - 1) as usize].try_redis()?;
        redis::cmd("SET")
            .arg("stale:k")
            .arg("after")
            .query::<()>(&mut conn)
            .ok()
    });

    // The old leader may still believe it leads for a while. A linearizable read
    // there never returns "before" now that "after" is acknowledged: it fails
    // (timeout, NOTLEADER, TRYAGAIN) until the partition heals.
    let mut refusals = Vec::new();
    eventually("the old leader to step down", RECOVERY, || {
        match get(&mut linearizable, "stale:k") {
            Ok(v) => panic!("old leader {old} served a linearizable read while cut off: {v:?}"),
            Err(e) => refusals.push(e.code().unwrap_or("io").to_string()),
        }
        if refusals.last().is_some_and(|r| r == "io") {
            linearizable = connect(&c.nodes[(old - 1) as usize], false);
        }
        let status = c.nodes[(old - 1) as usize].status()?;
        (status["role"] != "leader").then_some(())
    });
    // Once it knows it is not leader, it says so at once.
    let e = get(&mut linearizable, "stale:k").expect_err("a follower cut off refuses");
    assert!(
        matches!(e.code(), Some("NOTLEADER" | "TRYAGAIN")),
        "old leader {old} after stepping down: {e}"
    );
    // READONLY serves what the node applied: the stale value.
    assert_eq!(
        get(&mut local, "stale:k").expect("READONLY GET").as_deref(),
        Some("before"),
        "the old leader's local read is stale while it is cut off"
    );

    c.net.heal();
    c.leader();
    eventually("the old leader to catch up", RECOVERY, || {
        (get(&mut local, "stale:k").ok()?.as_deref() == Some("after")).then_some(())
    });
    eprintln!("old leader {old} refused linearizable reads while cut off: {refusals:?}");
}

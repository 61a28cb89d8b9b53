//! TTL under clock skew: node 2's wall clock runs two minutes ahead and node 3's two
//! minutes behind (libfaketime; Raft's timers use the monotonic clock, which stays
//! true). Whether a key has expired when a write depends on it (SET NX, INCR) is
//! decided with the proposer's clock, carried in the entry, so every replica reaches
//! the same result, whatever its own clock says.

use std::time::{SystemTime, UNIX_EPOCH};

use sealkv_faults::process::skewed_clock_env;

use crate::cluster::{FaultCluster, RECOVERY};
use crate::kills::read_local;
use crate::support::{Node, eventually, serial};

/// How far nodes 2 and 3 are off, in ms.
const SKEW_MS: i64 = 120_000;
/// The TTL of the keys, well inside the skew.
const TTL_MS: u64 = 60_000;

fn offset(id: u64) -> i64 {
    match id {
        2 => SKEW_MS,
        3 => -SKEW_MS,
        _ => 0,
    }
}

/// A command through node `node` (the proposer when it is a write), retried while
/// the cluster answers `TRYAGAIN`.
fn through<T: redis::FromRedisValue>(node: &Node, cmd: &redis::Cmd) -> T {
    eventually(
        &format!("{cmd:?} through node {}", node.id),
        RECOVERY,
        || {
            let mut conn = node.try_redis()?;
            match cmd.query::<T>(&mut conn) {
                Ok(v) => Some(v),
                Err(e) if e.code() == Some("TRYAGAIN") => None,
                Err(e) => panic!("{cmd:?} through node {}: {e}", node.id),
            }
        },
    )
}

/// The node's wall clock, from `INFO server`, in ms.
fn node_clock_ms(node: &Node) -> i64 {
    let info: String = through(node, redis::cmd("INFO").arg("server"));
    let usec: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("server_time_usec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("server_time_usec in INFO");
    usec / 1000
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

#[test]
fn expiry_is_decided_by_the_proposers_clock_on_every_replica() {
    let _serial = serial();
    let c = FaultCluster::start_with(3, false, &[], |id| {
        skewed_clock_env(offset(id)).unwrap_or_else(|e| panic!("{e}"))
    });
    // The skew is real: each node's clock is off by what it was given.
    for id in c.ids() {
        let skew = node_clock_ms(&c.nodes[(id - 1) as usize]) - now_ms();
        assert!(
            (skew - offset(id)).abs() < 10_000,
            "node {id}'s clock is {skew} ms off, not {} ms",
            offset(id)
        );
    }
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let px = TTL_MS.to_string();
    // Written through node 1 (true clock): expire one minute from now. Node 2's
    // clock says they have expired already; node 3's says they have long to live.
    for key in ["skew:nx-ahead", "skew:nx-behind", "skew:incr"] {
        let value = if key == "skew:incr" { "41" } else { "first" };
        let _: () = through(n1, redis::cmd("SET").arg(key).arg(value).arg("PX").arg(&px));
    }

    // Node 2 proposes: by its clock the key is gone, so SET NX sets it, on every
    // replica, node 3 included, whose own clock would say the key is still live.
    let set: Option<String> = through(
        n2,
        redis::cmd("SET")
            .arg("skew:nx-ahead")
            .arg("second")
            .arg("NX"),
    );
    assert_eq!(set.as_deref(), Some("OK"), "node 2 sees the key expired");
    // INCR through node 2 starts again from zero.
    let n: i64 = through(n2, redis::cmd("INCR").arg("skew:incr"));
    assert_eq!(n, 1, "node 2 sees the counter expired");

    // Node 3 proposes: by its clock the key lives, so SET NX does nothing anywhere,
    // node 2 included, whose own clock would say the key is gone.
    let set: Option<String> = through(
        n3,
        redis::cmd("SET")
            .arg("skew:nx-behind")
            .arg("second")
            .arg("NX"),
    );
    assert_eq!(set, None, "node 3 sees the key live");

    c.caught_up();
    for node in &c.nodes {
        // Written without a TTL by the entries node 2 proposed: the same on every
        // replica, whatever its clock.
        assert_eq!(
            read_local(node, "skew:nx-ahead").as_deref(),
            Some("second"),
            "node {}",
            node.id
        );
        assert_eq!(
            read_local(node, "skew:incr").as_deref(),
            Some("1"),
            "node {}",
            node.id
        );
        // Still "first" with its TTL everywhere: nodes 1 and 3 read it live, node 2
        // reads it expired by its own clock, and none holds the refused "second".
        let behind = read_local(node, "skew:nx-behind");
        let expected = if node.id == 2 { None } else { Some("first") };
        assert_eq!(behind.as_deref(), expected, "node {}", node.id);
    }
    c.assert_healthy();
}

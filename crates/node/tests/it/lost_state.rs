//! A node whose data dir lost what it acknowledged (wiped, or restored from an
//! older copy) and is started again under the same id is refused with one line
//! naming the fix, and the cluster keeps serving. raft-rs used to panic on the
//! leader's first heartbeat ("commit ... is out of range"). The same heartbeat from
//! a node this one does not follow is a crafted message: `trust.rs` sends it.

use std::time::Duration;

use redis::{Commands, RedisResult};

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

fn write_keys(node: &Node, range: std::ops::Range<usize>) {
    eventually("writes through the leader", LONG, || {
        let mut c = node.try_redis()?;
        range
            .clone()
            .try_for_each(|i| {
                let r: RedisResult<()> = c.set(format!("k{i}"), i);
                r
            })
            .ok()
    });
}

/// Waits until `node` has applied `k{i} = i` (a stale, local read).
fn applied(node: &Node, i: usize) {
    eventually(&format!("node {} to apply k{i}", node.id), LONG, || {
        let mut c = node.try_redis()?;
        redis::cmd("READONLY").query::<()>(&mut c).ok()?;
        let v: Option<usize> = c.get(format!("k{i}")).ok()?;
        (v == Some(i)).then_some(())
    });
}

/// [`refused`], and the line is the Raft one: the log this node acknowledged is gone.
fn refused_lost_state(node: &mut Node, peers: &str) {
    let log = refused(node, peers);
    assert!(
        log.contains("was wiped or restored from an older copy")
            && log.contains(&format!("sealkv cluster remove-node --id {}", node.id)),
        "node {}:\n{log}",
        node.id
    );
}

#[test]
fn a_wiped_or_restored_node_is_refused_and_the_cluster_keeps_serving() {
    let _serial = serial();
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader();
    let victim = c.other_than(leader);
    let peers = c.peers.clone();
    write_keys(c.node(leader), 0..50);
    applied(c.node(victim), 49);

    // An older copy of the victim's data dir, then more writes it acknowledges.
    assert!(c.node(victim).terminate().success());
    let data = c.node(victim).data_dir.clone();
    let copy = c.dir.path().join("copy");
    copy_dir(&data, &copy);
    c.node(victim).start(&peers);
    write_keys(c.node(leader), 50..100);
    applied(c.node(victim), 99);

    // Restored from the copy: refused.
    assert!(c.node(victim).terminate().success());
    std::fs::remove_dir_all(&data).expect("remove data dir");
    copy_dir(&copy, &data);
    refused_lost_state(c.node(victim), &peers);

    // Wiped: refused the same way.
    std::fs::remove_dir_all(&data).expect("remove data dir");
    refused_lost_state(c.node(victim), &peers);

    // The other two go on.
    write_keys(c.node(leader), 100..120);
    let other = c
        .nodes
        .iter()
        .find(|n| n.id != leader && n.id != victim)
        .expect("third node");
    applied(other, 119);
}

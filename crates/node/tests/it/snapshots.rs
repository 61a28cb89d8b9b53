//! Streamed snapshots between real processes: a follower far behind a compacted log
//! catches up by a snapshot of many chunks, and a transfer cut off midway (its
//! sender killed) completes on the retry from the next leader.

use std::path::Path;
use std::time::Duration;

use redis::Commands;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);
/// Small chunks, so a few MiB of store is hundreds of them.
const CHUNK: &str = "4096";
/// Values written while the follower is down: 320 of 8 KiB, about 2.6 MiB.
const VALUES: usize = 320;
const VALUE_BYTES: usize = 8 * 1024;

fn value(i: usize) -> String {
    format!("{i:06}").repeat(VALUE_BYTES / 6)
}

/// Starts three nodes with small chunks and an eager log compaction, and returns
/// the cluster with a follower that is down while the leader writes a few MiB and
/// compacts its log past it.
fn cluster_with_a_lagging_follower() -> (Cluster, u64) {
    let mut c = Cluster::start(
        3,
        &[
            "--compact-threshold",
            "20",
            "--compact-keep",
            "2",
            "--snapshot-chunk-bytes",
            CHUNK,
        ],
    );
    let leader = c.leader();
    let lagging = c.other_than(leader);
    c.node(lagging).kill();
    let mut w = c.node(leader).redis();
    for i in 0..VALUES {
        let _: () = w.set(format!("big{i}"), value(i)).expect("SET");
    }
    let first = c.node(leader).status().expect("status")["first_index"]
        .as_u64()
        .expect("first_index");
    assert!(
        first > 20,
        "the leader did not compact: first_index {first}"
    );
    (c, lagging)
}

/// Waits until `node` serves `key` = `want` locally.
fn converges(node: &Node, key: &str, want: &str) {
    eventually(&format!("node {} to apply {key}", node.id), LONG, || {
        let mut c = node.try_redis()?;
        redis::cmd("READONLY").query::<()>(&mut c).ok()?;
        let got: Option<String> = c.get(key).ok()?;
        (got.as_deref() == Some(want)).then_some(())
    });
}

/// The snapshot files left in a data directory.
fn snapshot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with("snapshot."))
                .collect()
        })
        .unwrap_or_default()
}

/// The checkpoints left in a node's outgoing-snapshot directory.
fn checkpoints(node: &Node) -> usize {
    std::fs::read_dir(node.data_dir.join("db").join("snapshot-out"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

fn all_values_on(node: &Node) {
    for i in [0, VALUES / 2, VALUES - 1] {
        converges(node, &format!("big{i}"), &value(i));
    }
}

#[test]
fn follower_catches_up_by_a_snapshot_of_many_chunks() {
    let _serial = serial();
    let (mut c, lagging) = cluster_with_a_lagging_follower();
    let leader = c.leader();
    let peers = c.peers.clone();
    c.node(lagging).start(&peers);
    all_values_on(c.node(lagging));

    let follower = c.node(lagging);
    let received = follower.metric("sealkv_snapshot_received_bytes_total");
    assert!(
        received > (VALUES * VALUE_BYTES) as u64,
        "received {received} bytes of snapshot"
    );
    // The rows are readable (stale reads) before the install has ended.
    eventually("the install to end", LONG, || {
        (follower.metric("sealkv_snapshots_installed_total") >= 1).then_some(())
    });
    assert_eq!(follower.metric("sealkv_snapshot_chunks_refused_total"), 0);
    assert!(follower.metric("sealkv_snapshot_transfer_seconds_count{direction=\"received\"}") >= 1);
    // Nothing is left behind once the install is done.
    let dir = follower.data_dir.clone();
    eventually("the receiver's snapshot files to go", LONG, || {
        snapshot_files(&dir).is_empty().then_some(())
    });
    let sender = c.node(leader);
    assert!(sender.metric("sealkv_snapshot_sent_bytes_total") >= received);
    eventually("the sender's checkpoint to go", LONG, || {
        (checkpoints(c.node(leader)) == 0).then_some(())
    });

    // The caught-up follower goes on with ordinary appends.
    let _: () = c.node(leader).redis().set("after", "1").expect("SET");
    converges(c.node(lagging), "after", "1");
}

#[test]
fn a_transfer_cut_off_midway_completes_on_retry() {
    let _serial = serial();
    let (mut c, lagging) = cluster_with_a_lagging_follower();
    let leader = c.leader();
    // The leader streams slowly: 20 ms a chunk, some seconds for the whole dump.
    let (code, body) = http(
        &c.node(leader).admin,
        "PUT",
        "/v1/failpoints/transport::snapshot-chunk",
        Some("sleep(20)"),
    )
    .expect("arm the fail point");
    assert_eq!(code, 200, "{body}");
    let peers = c.peers.clone();
    c.node(lagging).start(&peers);
    eventually("part of the snapshot to arrive", LONG, || {
        let follower = c.node(lagging);
        (follower.metric("sealkv_snapshot_received_bytes_total") > 0).then_some(())
    });
    assert_eq!(
        c.node(lagging).metric("sealkv_snapshots_installed_total"),
        0,
        "the transfer finished before it could be cut"
    );
    let partial = snapshot_files(&c.node(lagging).data_dir);
    assert!(
        partial.iter().any(|n| n.ends_with(".partial")),
        "a transfer under way writes a partial file: {partial:?}"
    );

    // The sender dies midway; the next leader sends the snapshot again.
    c.node(leader).kill();
    all_values_on(c.node(lagging));
    let follower = c.node(lagging);
    eventually("the install to end", LONG, || {
        (follower.metric("sealkv_snapshots_installed_total") >= 1).then_some(())
    });
    let dir = follower.data_dir.clone();
    eventually("the cut transfer's partial file to go", LONG, || {
        snapshot_files(&dir).is_empty().then_some(())
    });
}

//! Size limits through real processes: a value or command too large for the
//! cluster is an error reply, never an entry in the log, and the cluster keeps
//! serving.

use std::time::Duration;

use redis::{Commands, RedisResult};

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

fn set_bytes(node: &Node, key: &str, value: &[u8]) -> RedisResult<String> {
    node.redis().set(key, value)
}

fn read_stale_len(node: &Node, key: &str) -> Option<usize> {
    let mut c = node.redis();
    redis::cmd("READONLY").query::<()>(&mut c).ok()?;
    let v: Option<Vec<u8>> = c.get(key).ok()?;
    v.map(|v| v.len())
}

/// `SET big <17 MiB>` once halted every replica for good. Now it is refused by the
/// node the client talks to, follower or leader, and nothing reaches the log.
#[test]
fn an_oversized_set_is_refused_and_the_cluster_keeps_serving() {
    let _serial = serial();
    let c = Cluster::start(3, &[]);
    let leader = c.leader();
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("follower");
    let leader = &c.nodes[(leader - 1) as usize];
    // Everything before the refusals is applied everywhere first.
    eventually("a first write", LONG, || {
        set_bytes(follower, "before", b"x").ok()
    });
    let last_before = leader.status().expect("status")["last_index"]
        .as_u64()
        .expect("last index");

    let big = vec![b'v'; 17 << 20];
    for node in [follower, leader] {
        let err = set_bytes(node, "big", &big).expect_err("a 17 MiB value is refused");
        let text = err.to_string();
        assert!(
            text.contains("value too large") && text.contains("--max-value-bytes"),
            "node {}: {text}",
            node.id
        );
    }
    // A batch of values each under the value limit, together over the entry limit.
    let six = vec![b'm'; 6 << 20];
    let mset: RedisResult<()> = redis::cmd("MSET")
        .arg("m1")
        .arg(&six)
        .arg("m2")
        .arg(&six)
        .arg("m3")
        .arg(&six)
        .query(&mut follower.redis());
    let text = mset.expect_err("an 18 MiB MSET is refused").to_string();
    assert!(
        text.contains("command too large") && text.contains("--max-entry-bytes"),
        "{text}"
    );
    let status = leader.status().expect("status");
    assert_eq!(
        status["last_index"].as_u64(),
        Some(last_before),
        "a refused write must not reach the log: {status}"
    );

    // A value at the limit is taken, replicated and read back on every node.
    // On two busy cores an 8 MiB entry can hold up heartbeats long enough for an
    // election: a TIMEOUT or TRYAGAIN answer is retried (the SET is idempotent),
    // any other refusal fails the test.
    let at_limit = vec![b'e'; 8 << 20];
    let answer = eventually("a value at the limit taken", LONG, || {
        match set_bytes(follower, "edge", &at_limit) {
            Ok(answer) => Some(answer),
            Err(e) if matches!(e.code(), Some("TIMEOUT" | "TRYAGAIN")) => None,
            Err(e) => panic!("a value at the limit: {e}"),
        }
    });
    assert_eq!(answer, "OK");
    let _: () = leader.redis().set("after", "y").expect("SET after");
    for node in &c.nodes {
        eventually(&format!("node {} to apply both", node.id), LONG, || {
            (read_stale_len(node, "edge") == Some(8 << 20)
                && read_stale_len(node, "after") == Some(1))
            .then_some(())
        });
        let s = node.status().expect("status");
        assert!(s["halted"].is_null(), "node {} halted: {s}", node.id);
    }
}

/// The limits are the operator's: a node started with smaller ones refuses what they
/// exclude, and one started with limits it cannot honour does not start.
#[test]
fn the_limits_are_configurable_and_checked_at_startup() {
    let _serial = serial();
    let c = Cluster::start(
        1,
        &["--max-value-bytes", "1024", "--max-entry-bytes", "70000"],
    );
    let node = &c.nodes[0];
    let err = set_bytes(node, "k", &[0; 1025]).expect_err("over 1024 bytes");
    assert!(
        err.to_string().contains("1025 bytes, the limit is 1024"),
        "{err}"
    );
    assert_eq!(
        set_bytes(node, "k", &[0; 1024]).expect("at the limit"),
        "OK"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    for (flags, says) in [
        (
            ["--max-value-bytes", "0"],
            "--max-value-bytes must be at least 1",
        ),
        (
            ["--max-entry-bytes", "1000"],
            "--max-entry-bytes 1000 must be at least",
        ),
        (
            ["--max-entry-bytes", "300000000"],
            "above the most any replica decodes",
        ),
    ] {
        let (ok, _, stderr) = run(sealkv()
            .args(["start", "--data-dir"])
            .arg(dir.path().join("d"))
            .args(flags));
        assert!(!ok, "{flags:?} started");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

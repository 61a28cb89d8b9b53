//! What every fail-point test does: arm a fail point, wait for the crash or the
//! halt it causes, restart without it, and check that the cluster agrees on every
//! acknowledged write and on its keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::{Commands, RedisResult};
use serde_json::Value;

use crate::support::*;

/// How long a cluster gets to elect, catch up or converge.
pub const LONG: Duration = Duration::from_secs(30);

/// A temp dir holding a freshly generated KEK file, and that file's path.
pub fn with_kek() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    let (ok, out, err) = run(sealkv().args(["kek", "generate"]).arg(&kek));
    assert!(ok, "kek generate: {out}{err}");
    (dir, kek)
}

/// The flags of an encrypted node whose KEK is the file `kek`, then `extra`.
pub fn encrypted_flags<'a>(kek: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--encryption-enabled",
        "--kek-file",
        kek.to_str().expect("utf-8 path"),
    ];
    flags.extend(extra);
    flags
}

/// Starts a three-node encrypted cluster and waits until every node has its keys
/// and both envelopes on.
pub fn encrypted_cluster(extra: &[&str]) -> Cluster {
    let (dir, kek) = with_kek();
    let cluster = Cluster::start_in(dir, 3, &encrypted_flags(&kek, extra));
    for node in &cluster.nodes {
        assert_has_fail_points(node);
        encryption_on(node);
    }
    converged(&cluster, &Acked::default());
    cluster
}

/// `GET /v1/encryption/status` of a node, when it answers.
pub fn try_encryption_status(node: &Node) -> Option<Value> {
    let (code, body) = http(&node.admin, "GET", "/v1/encryption/status", None)?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// `GET /v1/encryption/status` of a node.
pub fn encryption_status(node: &Node) -> Value {
    try_encryption_status(node).unwrap_or_else(|| panic!("encryption status of node {}", node.id))
}

/// Waits until the node shows its keys bootstrapped and both envelopes on.
pub fn encryption_on(node: &Node) -> Value {
    eventually(&format!("encryption on at node {}", node.id), LONG, || {
        let s = try_encryption_status(node)?;
        let on = s["bootstrapped"] == true
            && s["storage_envelope"] == true
            && s["raft_envelope_cutover_index"].as_u64() > Some(0);
        on.then_some(s)
    })
}

/// The node runs a binary with fail points: its status lists the armed ones (a
/// release build has no such field), so no test here passes against a binary that
/// could not have crashed.
pub fn assert_has_fail_points(node: &Node) {
    let status = node.status().expect("status");
    assert!(
        status["failpoints"].is_array(),
        "node {} was built without fail points: {status}",
        node.id
    );
}

/// Arms fail point `name` with fail-rs `actions` on a running node.
pub fn arm(node: &Node, name: &str, actions: &str) {
    let path = format!("/v1/failpoints/{name}");
    let (code, body) = http(&node.admin, "PUT", &path, Some(actions)).expect("arm fail point");
    assert_eq!(
        code, 200,
        "arm {name}={actions} on node {}: {body}",
        node.id
    );
    let armed = node.status().expect("status")["failpoints"].clone();
    assert!(
        armed
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == &format!("{name}={actions}"))),
        "node {} does not list {name}={actions}: {armed}",
        node.id
    );
}

/// Waits until the node's process exits, which must be a failure, and returns what
/// this load logged (from byte `from` of its log). Every `words` must be in it.
pub fn exited(node: &mut Node, from: usize, words: &[&str]) -> String {
    let status = eventually(&format!("node {} to exit", node.id), LONG, || node.exited());
    let log = node.log_text().get(from..).unwrap_or_default().to_string();
    assert!(!status.success(), "node {} exited cleanly:\n{log}", node.id);
    for word in words {
        assert!(
            log.contains(word),
            "node {} did not log {word:?}:\n{log}",
            node.id
        );
    }
    log
}

/// Restarts the node (its process must have ended or be killed) without any fail
/// point armed; returns the byte of its log where this load starts.
pub fn restart(node: &mut Node, peers: &str) -> usize {
    node.kill();
    node.set_env("FAILPOINTS", "");
    let from = node.log_text().len();
    node.start(peers);
    from
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value a `field=N` of the line of `log` that contains `line` carries.
pub fn logged_u64(log: &str, line: &str, field: &str) -> u64 {
    let log = plain(log);
    let found = log
        .lines()
        .find(|l| l.contains(line))
        .unwrap_or_else(|| panic!("no line {line:?} in:\n{log}"));
    let key = format!("{field}=");
    let at = found
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {found:?}"));
    found[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{field} in {found:?}"))
}

/// A status field as a number.
pub fn status_u64(node: &Node, field: &str) -> u64 {
    let status = node.status().expect("status");
    status[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// The key sidecar of the node's data dir, as JSON, and whether its `.tmp` exists.
pub fn sidecar(node: &Node) -> (Value, bool) {
    let path = node.data_dir.join("encryption").join("keys.json");
    let doc = std::fs::read(&path).expect("read keys.json");
    let tmp = path.with_file_name("keys.json.tmp").exists();
    (
        serde_json::from_slice(&doc).expect("keys.json is JSON"),
        tmp,
    )
}

/// The writes the cluster acknowledged: each key's last acknowledged value.
#[derive(Debug, Default)]
pub struct Acked {
    values: BTreeMap<String, String>,
}

impl Acked {
    /// Sets `key` to `value` through `node`, retried until acknowledged (a retry of
    /// the same value is harmless if an earlier try applied after all).
    pub fn set(&mut self, node: &Node, key: &str, value: &str) {
        eventually(&format!("SET {key} through node {}", node.id), LONG, || {
            let r: RedisResult<()> = node.try_redis()?.set(key, value);
            r.ok()
        });
        self.values.insert(key.to_string(), value.to_string());
    }

    /// `n` writes through the cluster's leader: keys `tag:i`, values naming
    /// `round`, so a later round overwrites an earlier one's keys.
    pub fn write(&mut self, c: &Cluster, tag: &str, round: usize, n: usize) {
        let leader = c.leader();
        let node = c.nodes.iter().find(|x| x.id == leader).expect("leader");
        for i in 0..n {
            self.set(node, &format!("{tag}:{i}"), &format!("{tag}-{round}-{i}"));
        }
    }

    /// Whether `node` has applied every acknowledged write with its last value
    /// (a stale read: what this node itself applied).
    fn all_read_from(&self, node: &Node) -> Option<()> {
        let mut conn = node.try_redis()?;
        redis::cmd("READONLY").query::<()>(&mut conn).ok()?;
        let keys: Vec<&String> = self.values.keys().collect();
        for chunk in keys.chunks(200) {
            let got: Vec<Option<String>> = conn.mget(chunk).ok()?;
            for (key, value) in chunk.iter().zip(got) {
                if value.as_ref() != self.values.get(*key) {
                    return None;
                }
            }
        }
        Some(())
    }
}

/// Waits until every node is running, none is halted, all have applied the same
/// index, and each reads every acknowledged write with its last value and holds as
/// many keys as the others; on an encrypted cluster, until they also agree on the
/// keys, the sidecar's index and the writer registry.
pub fn converged(c: &Cluster, acked: &Acked) {
    eventually("the nodes to apply the same index", LONG, || {
        let statuses: Vec<Value> = c.nodes.iter().map(Node::status).collect::<Option<_>>()?;
        for s in &statuses {
            assert!(s["halted"].is_null(), "node halted: {s}");
        }
        let applied: Vec<u64> = statuses
            .iter()
            .map(|s| s["applied_index"].as_u64())
            .collect::<Option<_>>()?;
        let commit = statuses
            .iter()
            .filter_map(|s| s["commit_index"].as_u64())
            .max()?;
        applied.iter().all(|&a| a == commit).then_some(())
    });
    for node in &c.nodes {
        eventually(
            &format!("node {} to read every acknowledged write", node.id),
            LONG,
            || acked.all_read_from(node),
        );
    }
    let sizes: Vec<u64> = c
        .nodes
        .iter()
        .map(|node| {
            let mut conn = node.redis();
            redis::cmd("READONLY")
                .query::<()>(&mut conn)
                .expect("READONLY");
            redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE")
        })
        .collect();
    assert!(
        sizes.iter().all(|&s| s == sizes[0]),
        "the nodes hold different numbers of keys: {sizes:?}"
    );
    if try_encryption_status(&c.nodes[0]).is_some_and(|s| s["enabled"] == true) {
        eventually("the nodes to agree on their keys", LONG, || {
            let statuses: Vec<Value> = c
                .nodes
                .iter()
                .map(try_encryption_status)
                .collect::<Option<_>>()?;
            let views: Vec<Value> = statuses.iter().map(key_view).collect();
            let registered = c
                .nodes
                .iter()
                .zip(&statuses)
                .all(|(node, s)| epochs_registered(s, node.id));
            (registered && views.iter().all(|v| v == &views[0])).then_some(())
        });
    }
}

/// What every node of an encrypted cluster must agree on: active keys, loaded key
/// ids, envelopes, the sidecar's index and the writer registry.
fn key_view(status: &Value) -> Value {
    let mut ids: Vec<u64> = status["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["key_id"].as_u64())
        .collect();
    ids.sort_unstable();
    serde_json::json!({
        "active_storage_key": status["active_storage_key"],
        "active_raft_key": status["active_raft_key"],
        "keys": ids,
        "storage_envelope": status["storage_envelope"],
        "raft_envelope_cutover_index": status["raft_envelope_cutover_index"],
        "sidecar_applied_index": status["sidecar_applied_index"],
        "registry": status["registry"],
    })
}

/// Ends an encrypted run: no (key, nonce) pair was sealed twice across the nodes
/// and their process loads, and something was sealed.
pub fn no_nonce_repeats(c: &Cluster) {
    let sealed = assert_no_nonce_repeats(c.dir.path());
    assert!(sealed > 0, "the nonce ledgers recorded no seal");
}

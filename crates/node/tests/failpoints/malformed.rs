//! Entries no replica can apply, put into the log past admission with the test
//! build's raw proposal (`POST /v1/test/propose-raw` on the leader): the whole
//! cluster halts at that index with its applied index unchanged, says why in
//! `/status`, refuses writes, and halts the same way after every node restarts
//! (on an encrypted cluster, only the nodes that can apply; see
//! `halted_or_gated`).

use redis::{Commands, RedisResult};
use sealkv_fsmwire::RegistrationPayload;
use serde_json::Value;

use crate::harness::*;
use crate::support::*;

/// One malformed entry: what is applied first, the entry, and the words its halt
/// cause must hold.
struct Case {
    name: &'static str,
    /// Whether the cluster runs encrypted.
    encrypted: bool,
    /// Well-formed entries applied before it (they must apply).
    setup: Vec<Vec<u8>>,
    entry: Vec<u8>,
    cause: &'static str,
}

fn registration(dek_id: u32, full_node_id: u64, local_epoch: u16) -> Vec<u8> {
    RegistrationPayload {
        dek_id,
        full_node_id,
        local_epoch,
    }
    .to_entry()
}

fn cases() -> Vec<Case> {
    let mut truncated = registration(7, 1, 5);
    truncated.truncate(9);
    vec![
        Case {
            name: "unknown opcode",
            encrypted: false,
            setup: vec![],
            entry: vec![0x09, 0xde, 0xad],
            cause: "unknown opcode 0x09",
        },
        Case {
            name: "truncated fsmwire payload",
            encrypted: false,
            setup: vec![],
            entry: truncated,
            cause: "apply encryption entry: decode payload of opcode 0x03",
        },
        Case {
            name: "registry rollback",
            encrypted: false,
            setup: vec![registration(7, 1, 5)],
            entry: registration(7, 1, 4),
            cause: "epoch rollback for dek 7 node 0x1",
        },
        Case {
            name: "registry collision",
            encrypted: false,
            setup: vec![registration(7, 1, 5)],
            entry: registration(7, 0x1_0001, 1),
            cause: "node id collision under dek 7",
        },
        // Node 1 registered under the bootstrap's storage key (id 1) at epoch 1 or
        // above; epoch 0 goes back.
        Case {
            name: "registry rollback, encrypted",
            encrypted: true,
            setup: vec![],
            entry: registration(1, 1, 0),
            cause: "epoch rollback for dek 1 node 0x1",
        },
    ]
}

/// `POST /v1/test/propose-raw` of `entry` on `node`: the status code and body.
fn propose_raw(node: &Node, entry: &[u8]) -> (u16, String) {
    let hex: String = entry.iter().map(|b| format!("{b:02x}")).collect();
    let body = serde_json::json!({ "hex": hex }).to_string();
    http(&node.admin, "POST", "/v1/test/propose-raw", Some(&body)).expect("propose-raw")
}

/// `node` refuses a write with one of `codes`.
fn write_refused(node: &Node, codes: &[&str]) {
    let mut conn = node.redis();
    let write: RedisResult<()> = conn.set("after", "halt");
    let err = write.expect_err("a write to a halted cluster");
    assert!(
        err.code().is_some_and(|code| codes.contains(&code)),
        "node {}: {err}",
        node.id
    );
}

/// Waits until every node reports a halt, and checks that they all halted at
/// `index` for `cause`, with `index - 1` applied; returns the halt line.
fn all_halted(c: &Cluster, index: u64, cause: &str) -> String {
    let statuses: Vec<Value> = eventually("every node to halt", LONG, || {
        let statuses: Vec<Value> = c.nodes.iter().map(Node::status).collect::<Option<_>>()?;
        statuses
            .iter()
            .all(|s| s["halted"].is_string())
            .then_some(statuses)
    });
    let line = statuses[0]["halted"].as_str().expect("halt").to_string();
    assert!(
        line.starts_with(&format!("state machine halted at index {index}: "))
            && line.contains(cause),
        "{line}"
    );
    for s in &statuses {
        assert_eq!(s["halted"].as_str(), Some(line.as_str()), "{s}");
        assert_eq!(s["applied_index"].as_u64(), Some(index - 1), "{s}");
    }
    for node in &c.nodes {
        write_refused(node, &["HALTED"]);
        let (code, body) = http(&node.admin, "GET", "/health", None).expect("health");
        assert_eq!(code, 503, "node {}: {body}", node.id);
    }
    line
}

/// After all nodes of an encrypted cluster restart onto the entry: a follower
/// applies nothing until the leader has confirmed its key epochs (DESIGN.md §8),
/// which a halted leader cannot, so only the nodes elected leader reach the entry
/// and halt again. Every node that reports a halt reports `line` and refuses
/// writes with `-HALTED` (not the `-TRYAGAIN` of its pending registration), the
/// others refuse them too, and none applies past `index - 1`.
fn halted_or_gated(c: &Cluster, index: u64, line: &str) {
    let statuses: Vec<Value> = eventually("a restarted node to halt again", LONG, || {
        let statuses: Vec<Value> = c.nodes.iter().map(Node::status).collect::<Option<_>>()?;
        statuses
            .iter()
            .any(|s| s["halted"].is_string())
            .then_some(statuses)
    });
    for (node, s) in c.nodes.iter().zip(&statuses) {
        assert_eq!(s["applied_index"].as_u64(), Some(index - 1), "{s}");
        if s["halted"].is_null() {
            // It may be elected and halt in the meantime.
            write_refused(node, &["TRYAGAIN", "HALTED"]);
        } else {
            assert_eq!(s["halted"].as_str(), Some(line), "{s}");
            write_refused(node, &["HALTED"]);
        }
    }
}

/// Each malformed entry halts all three nodes at its index, applied index one
/// below, the same line in every `/status`, writes answered `-HALTED`; restarted,
/// every node halts there again.
#[test]
fn a_malformed_entry_halts_the_whole_cluster_at_its_index() {
    let _serial = serial();
    for case in cases() {
        let mut c = if case.encrypted {
            encrypted_cluster(&[])
        } else {
            Cluster::start(3, &[])
        };
        for node in &c.nodes {
            assert_has_fail_points(node);
        }
        let mut acked = Acked::default();
        acked.write(&c, "before", 0, 5);
        let leader = c.leader();
        for entry in &case.setup {
            let (code, body) = propose_raw(c.node(leader), entry);
            assert_eq!(code, 200, "{}: setup entry: {body}", case.name);
        }
        converged(&c, &acked);
        let index = status_u64(c.node(leader), "last_index") + 1;

        let (code, body) = propose_raw(c.node(leader), &case.entry);
        assert_eq!(code, 503, "{}: {body}", case.name);
        assert!(body.contains("halted"), "{}: {body}", case.name);
        let line = all_halted(&c, index, case.cause);

        for node in &mut c.nodes {
            node.kill();
        }
        let peers = c.peers.clone();
        for node in &mut c.nodes {
            restart(node, &peers);
        }
        if case.encrypted {
            halted_or_gated(&c, index, &line);
            no_nonce_repeats(&c);
            continue;
        }
        let again = all_halted(&c, index, case.cause);
        assert_eq!(again, line, "{}", case.name);
        for node in &c.nodes {
            let log = node.log_text();
            assert!(
                log.matches(&format!("state machine halted at index {index}"))
                    .count()
                    >= 2,
                "{}: node {} logged the halt once:\n{log}",
                case.name,
                node.id
            );
        }
    }
}

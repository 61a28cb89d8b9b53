//! A cluster of real `sealkv` processes whose Raft links run through the proxies of
//! a [`Network`], so a test can cut, delay and heal each directed link, and kill,
//! pause and restart each node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sealkv_faults::process;
use sealkv_faults::proxy::Network;
use sealkv_faults::workload::{Client, ClientIds, Tally};
use sealkv_linearizability::Recorder;
use serde_json::Value;

use crate::support::{Node, eventually, run, sealkv};

/// How long a cluster may take to elect a leader or catch up after a fault heals.
pub const RECOVERY: Duration = Duration::from_secs(60);

/// Nodes 1..=n, all voters, linked through proxies.
pub struct FaultCluster {
    /// The temp dir (data dirs, logs, nonce ledgers, the KEK).
    pub dir: tempfile::TempDir,
    /// Node `i` at index `i - 1`.
    pub nodes: Vec<Node>,
    /// The proxies of every directed link.
    pub net: Network,
    targets: Vec<(u64, SocketAddr)>,
    paused: Vec<u64>,
}

impl FaultCluster {
    /// Starts `n` nodes with `flags` and waits for a leader. With `encrypted`, every
    /// node has a KEK file and encryption on, and this returns once writes are
    /// accepted (both envelopes on).
    pub fn start(n: u64, encrypted: bool, flags: &[&str]) -> FaultCluster {
        FaultCluster::start_with(n, encrypted, flags, |_| Vec::new())
    }

    /// As [`start`](Self::start), with extra environment for node `id` from `env`.
    pub fn start_with(
        n: u64,
        encrypted: bool,
        flags: &[&str],
        env: impl Fn(u64) -> Vec<(String, String)>,
    ) -> FaultCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = dir.path().join("kek");
        let mut all: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        if encrypted {
            let (ok, out, err) = run(sealkv().args(["kek", "generate"]).arg(&kek));
            assert!(ok, "kek generate: {out}{err}");
            all.extend(["--encryption-enabled".to_string(), "--kek-file".to_string()]);
            all.push(path_str(&kek).to_string());
        }
        let flags: Vec<&str> = all.iter().map(String::as_str).collect();
        let nodes: Vec<Node> = (1..=n)
            .map(|id| {
                let mut node = Node::new(dir.path(), id, &flags);
                for (k, v) in env(id) {
                    node.set_env(&k, &v);
                }
                node
            })
            .collect();
        let targets: Vec<(u64, SocketAddr)> = nodes
            .iter()
            .map(|n| (n.id, n.raft.parse().expect("raft address")))
            .collect();
        let net = Network::new(&targets);
        let mut cluster = FaultCluster {
            dir,
            nodes,
            net,
            targets,
            paused: Vec::new(),
        };
        for id in 1..=n {
            let peers = cluster.peers(id);
            cluster.node(id).start(&peers);
        }
        cluster.leader();
        cluster.writable();
        cluster
    }

    /// Node `id`.
    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The ids of every node.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Node `id`'s `--peers`: the proxies of its outgoing links.
    pub fn peers(&self, id: u64) -> String {
        self.net.peers_for(id, &self.targets)
    }

    /// The Redis addresses of the nodes, node 1 first.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.redis.clone()).collect()
    }

    /// A recorded client of every node.
    pub fn client(
        &self,
        ids: &ClientIds,
        recorder: &Recorder,
        tally: &std::sync::Arc<Tally>,
    ) -> Client {
        Client::new(
            self.endpoints(),
            ids.clone(),
            recorder.clone(),
            tally.clone(),
        )
    }

    /// SIGKILL of node `id`.
    pub fn kill(&mut self, id: u64) {
        self.paused.retain(|&p| p != id);
        self.node(id).kill();
    }

    /// Starts node `id` again on its data dir and waits until its admin endpoint
    /// answers.
    pub fn restart(&mut self, id: u64) {
        let peers = self.peers(id);
        self.node(id).start(&peers);
    }

    /// SIGSTOP of node `id`.
    pub fn pause(&mut self, id: u64) {
        let pid = self.node(id).pid().expect("node running");
        process::pause(pid);
        self.paused.push(id);
    }

    /// SIGCONT of node `id`.
    pub fn resume(&mut self, id: u64) {
        let pid = self.node(id).pid().expect("node running");
        process::resume(pid);
        self.paused.retain(|&p| p != id);
    }

    /// The statuses of the nodes that answer, by id.
    pub fn statuses(&self) -> Vec<(u64, Value)> {
        self.nodes
            .iter()
            .filter(|n| !self.paused.contains(&n.id))
            .filter_map(|n| n.status().map(|s| (n.id, s)))
            .collect()
    }

    /// Waits until a node leads that every node of `among` follows, and returns it.
    pub fn leader_among(&self, among: &[u64]) -> u64 {
        eventually(&format!("a leader of {among:?}"), RECOVERY, || {
            let statuses: Vec<(u64, Value)> = self
                .statuses()
                .into_iter()
                .filter(|(id, _)| among.contains(id))
                .collect();
            if statuses.len() != among.len() {
                return None;
            }
            let leader = statuses
                .iter()
                .find(|(_, s)| s["role"] == "leader")
                .map(|(id, _)| *id)?;
            statuses
                .iter()
                .all(|(_, s)| s["leader_id"].as_u64() == Some(leader))
                .then_some(leader)
        })
    }

    /// Waits until every node follows one leader, and returns it.
    pub fn leader(&self) -> u64 {
        self.leader_among(&self.ids())
    }

    /// Waits until a write through the leader is accepted (a new encrypted cluster
    /// answers `TRYAGAIN` until both envelopes are on).
    pub fn writable(&self) {
        eventually("the cluster to accept writes", RECOVERY, || {
            let leader = self.leader();
            let mut c = self.nodes[(leader - 1) as usize].try_redis()?;
            redis::cmd("SET")
                .arg("fault:probe")
                .arg("1")
                .query::<()>(&mut c)
                .ok()
        });
    }

    /// Waits until every node has applied everything the leader had committed when
    /// this was called.
    pub fn caught_up(&self) {
        let leader = self.leader();
        let commit = self.nodes[(leader - 1) as usize]
            .status()
            .and_then(|s| s["commit_index"].as_u64())
            .expect("leader commit index");
        eventually(
            &format!("every node to apply index {commit}"),
            RECOVERY,
            || {
                let statuses = self.statuses();
                (statuses.len() == self.nodes.len()
                    && statuses
                        .iter()
                        .all(|(_, s)| s["applied_index"].as_u64() >= Some(commit)))
                .then_some(())
            },
        );
    }

    /// Waits until `n` more writes than `from` were acknowledged; on timeout the
    /// failure shows every node's Raft state.
    pub fn progress(&self, tally: &Tally, from: u64, n: u64, what: &str) {
        let deadline = std::time::Instant::now() + RECOVERY;
        while Tally::get(&tally.acked_writes) < from + n {
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {n} acknowledged writes {what} ({} so far)\n{}\nlatest client failures:\n{}",
                    Tally::get(&tally.acked_writes) - from,
                    self.describe(),
                    tally.recent()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One line per node: role, leader, term, commit and applied index, halt.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                if self.paused.contains(&n.id) {
                    return format!("node {}: paused", n.id);
                }
                match n.status() {
                    Some(s) => format!(
                        "node {}: {} leader {} term {} commit {} applied {} halted {} fatal {}",
                        n.id,
                        s["role"],
                        s["leader_id"],
                        s["term"],
                        s["commit_index"],
                        s["applied_index"],
                        s["halted"],
                        s["fatal"]
                    ),
                    None => format!("node {}: no status", n.id),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asserts that no node halted or hit a fatal error.
    pub fn assert_healthy(&self) {
        for (id, s) in self.statuses() {
            assert!(s["halted"].is_null(), "node {id} halted: {s}");
            assert!(s["fatal"].is_null(), "node {id} fatal: {s}");
        }
    }

    /// The directory the nodes' nonce ledgers are in.
    pub fn ledger_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        // A failing test keeps the nodes' logs and data dirs for a post-mortem. The
        // processes themselves die with each `Node` (SIGKILL ends a stopped process
        // too).
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "fault cluster kept in {} (node logs: nodeN.log); link faults: {:?}",
                self.dir.path().display(),
                self.net.faults()
            );
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

//! `cargo xtask bench`: the micro-benchmarks (criterion, `cargo bench --workspace`)
//! and an end-to-end run of `redis-benchmark` against the leader of a local
//! three-node release cluster.
//!
//! ```text
//! cargo xtask bench             all three
//! cargo xtask bench --micro     only the criterion benches
//! cargo xtask bench --cluster   only the cluster run
//! cargo xtask bench --snapshot  only the snapshot-memory run (`bench_snapshot`:
//!                               a learner catches up by a snapshot of 1 GiB;
//!                               peak RSS and transfer time)
//! ```
//!
//! The cluster run uses ports 16379-16381 (redis), 17379-17381 (raft) and
//! 18379-18381 (admin), data and node logs in `target/sealkv-bench` (emptied first),
//! and needs `redis-benchmark` on the PATH (Debian: `apt-get install redis-tools`).
//! It runs `SET` and `GET` with 50 clients, once one command at a time and once 16
//! commands pipelined per client, and prints redis-benchmark's summary.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{self, Logs, NODES, Ports};
use crate::{cargo, run, workspace_root};

const PORTS: Ports = Ports {
    redis: 16379,
    admin: 18379,
    raft: 17379,
};
const REQUESTS: &str = "20000";

/// Runs the benchmarks the flags select.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let (mut micro, mut cluster, mut snapshot) = (false, false, false);
    for arg in args {
        match arg.as_str() {
            "--micro" => micro = true,
            "--cluster" => cluster = true,
            "--snapshot" => snapshot = true,
            other => bail!("unknown bench flag {other:?} (--micro, --cluster, --snapshot)"),
        }
    }
    if !micro && !cluster && !snapshot {
        (micro, cluster, snapshot) = (true, true, true);
    }
    if micro {
        run(
            "cargo bench --workspace",
            cargo().args(["bench", "--workspace"]),
        )?;
    }
    if cluster {
        cluster_run()?;
    }
    if snapshot {
        crate::bench_snapshot::run()?;
    }
    Ok(())
}

/// Stops the nodes with SIGTERM (a clean shutdown) when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn cluster_run() -> anyhow::Result<()> {
    if Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("redis-benchmark is not installed (Debian: apt-get install redis-tools)");
    }
    let binary = cluster::build_release()?;
    let base = workspace_root().join("target").join("sealkv-bench");
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
    }
    let _nodes = Nodes(cluster::spawn(&binary, &base, PORTS, Logs::Files, &[])?);
    let leader = wait_for_leader(&binary, Duration::from_secs(30))?;
    let redis_port = (u64::from(PORTS.redis) + leader - 1).to_string();
    eprintln!(
        "==> leader is node {leader} (redis port {redis_port}); node logs in {}",
        base.display()
    );
    for pipeline in ["1", "16"] {
        run(
            &format!("redis-benchmark -t set,get -n {REQUESTS} -c 50 -P {pipeline}"),
            Command::new("redis-benchmark").args([
                "-h",
                "127.0.0.1",
                "-p",
                &redis_port,
                "-t",
                "set,get",
                "-n",
                REQUESTS,
                "-c",
                "50",
                "-P",
                pipeline,
                "-q",
            ]),
        )?;
    }
    Ok(())
}

/// Polls every node's `sealkv status` until one reports itself leader.
fn wait_for_leader(binary: &std::path::Path, timeout: Duration) -> anyhow::Result<u64> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        for i in 1..=NODES {
            let out = Command::new(binary)
                .args(["status", "--json", "--admin-addr"])
                .arg(Ports::addr(PORTS.admin, i))
                .output();
            if let Ok(out) = out
                && String::from_utf8_lossy(&out.stdout).contains("\"role\": \"leader\"")
            {
                return Ok(i);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("no leader within {timeout:?}; see the node logs")
}

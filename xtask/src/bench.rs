//! `cargo xtask bench`: the micro-benchmarks (criterion, `cargo bench --workspace`)
//! and an end-to-end run of `redis-benchmark` against the leader of a local
//! three-node release cluster.
//!
//! ```text
//! cargo xtask bench             all three
//! cargo xtask bench --micro     only the criterion benches
//! cargo xtask bench --cluster   only the cluster run
//! cargo xtask bench --disk      only the bounded-disk run
//! ```
//!
//! The bounded-disk run starts a three-node release cluster with
//! `--mvcc-retention 0`, overwrites 20,000 keys of 1 KiB 20 times over
//! (`redis-benchmark -r 20000 -d 1024`, 400,000 SETs), runs `sealkv store compact`,
//! and prints each data dir's size against the live bytes the node reports: the
//! ratio is what GC and compaction keep disk use to (the Raft log the driver keeps,
//! `--compact-keep` and up to `--compact-threshold` entries, is part of it).
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
    let (mut micro, mut cluster, mut disk) = (false, false, false);
    for arg in args {
        match arg.as_str() {
            "--micro" => micro = true,
            "--cluster" => cluster = true,
            "--disk" => disk = true,
            other => bail!("unknown bench flag {other:?} (--micro, --cluster, --disk)"),
        }
    }
    if !micro && !cluster && !disk {
        (micro, cluster, disk) = (true, true, true);
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
    if disk {
        disk_run()?;
    }
    Ok(())
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// `sealkv store status|compact` of node `i`, as JSON.
fn store_json(binary: &std::path::Path, verb: &str, i: u64) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(binary)
        .args(["store", verb, "--admin-addr"])
        .arg(Ports::addr(PORTS.admin, i))
        .output()
        .with_context(|| format!("sealkv store {verb}"))?;
    if !out.status.success() {
        bail!(
            "sealkv store {verb} on node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn disk_run() -> anyhow::Result<()> {
    const KEYS: &str = "20000";
    const WRITES: &str = "400000";
    if Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("redis-benchmark is not installed (Debian: apt-get install redis-tools)");
    }
    let binary = cluster::build_release()?;
    let base = workspace_root().join("target").join("sealkv-bench-disk");
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
    }
    let _nodes = Nodes(cluster::spawn(
        &binary,
        &base,
        PORTS,
        Logs::Files,
        &["--mvcc-retention", "0"],
    )?);
    let leader = wait_for_leader(&binary, Duration::from_secs(30))?;
    let redis_port = (u64::from(PORTS.redis) + leader - 1).to_string();
    let started = Instant::now();
    run(
        &format!("redis-benchmark -t set -n {WRITES} -r {KEYS} -d 1024 -c 50 -P 16"),
        Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis_port,
            "-t",
            "set",
            "-n",
            WRITES,
            "-r",
            KEYS,
            "-d",
            "1024",
            "-c",
            "50",
            "-P",
            "16",
            "-q",
        ]),
    )?;
    let written = started.elapsed();
    let before: Vec<u64> = (1..=NODES)
        .map(|i| dir_bytes(&base.join(format!("node{i}"))))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let asked = store_json(&binary, "compact", leader)?;
    let index = asked["compact_done_index"].as_u64().unwrap_or(0);
    let mut statuses = Vec::new();
    for i in 1..=NODES {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let status = store_json(&binary, "status", i)?;
            if status["compact_done_index"].as_u64() >= Some(index) {
                statuses.push(status);
                break;
            }
            if Instant::now() > deadline {
                bail!("node {i} did not finish compaction {index}: {status}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let compacted = started.elapsed();
    eprintln!();
    eprintln!(
        "{WRITES} SETs of 1 KiB over {KEYS} keys in {:.1}s; GC and compaction on every node in {:.1}s",
        written.as_secs_f64(),
        compacted.as_secs_f64()
    );
    eprintln!(
        "{:<6} {:>14} {:>14} {:>12} {:>10} {:>10} {:>8}",
        "node", "dir before", "dir after", "live bytes", "live keys", "versions", "ratio"
    );
    for (i, status) in (1..=NODES).zip(&statuses) {
        let after = dir_bytes(&base.join(format!("node{i}")))?;
        let live = status["live_bytes"].as_u64().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let ratio = after as f64 / live.max(1) as f64;
        eprintln!(
            "{:<6} {:>14} {:>14} {:>12} {:>10} {:>10} {:>7.2}x",
            i,
            before[usize::try_from(i - 1)?],
            after,
            live,
            status["live_keys"],
            status["versions"],
            ratio
        );
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

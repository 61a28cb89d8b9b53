//! `cargo xtask bench`: the micro-benchmarks (criterion, `cargo bench --workspace`)
//! and an end-to-end run of `redis-benchmark` against the leader of a local
//! three-node release cluster.
//!
//! ```text
//! cargo xtask bench             all of them
//! cargo xtask bench --micro     only the criterion benches
//! cargo xtask bench --cluster   only the cluster run
//! cargo xtask bench --disk      only the bounded-disk run
//! cargo xtask bench --rewrite   only the rewrite run
//! cargo xtask bench --snapshot  only the snapshot-memory run (`bench_snapshot`:
//!                               a learner catches up by a snapshot of 1 GiB;
//!                               peak RSS and transfer time)
//! ```
//!
//! The rewrite run starts an encrypted three-node release cluster, writes 20,000
//! keys of 1 KiB, rotates the storage key and times `sealkv encryption rewrite`
//! until every node has resealed every version under the new key.
//!
//! The bounded-disk run starts a three-node release cluster with
//! `--mvcc-retention 0`, overwrites 20,000 keys with 1 KiB of random bytes 20 times
//! over (400,000 SETs from 8 pipelining clients), runs `sealkv store compact`,
//! and prints each data dir's size against the live bytes the node reports: the
//! ratio is what GC and compaction keep disk use to (the Raft log the driver keeps,
//! `--compact-keep` and up to `--compact-threshold` entries, is part of it).
//!
//! The cluster run uses ports 16379-16381 (redis), 17379-17381 (raft) and
//! 18379-18381 (admin), data and node logs in `target/sealkv-bench` (emptied first),
//! and needs `redis-benchmark` on the PATH (Debian: `apt-get install redis-tools`).
//! It runs `SET` and `GET` with 50 clients, once one command at a time and once 16
//! commands pipelined per client, and prints redis-benchmark's summary.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{self, Logs, NODES, Nodes, Ports, read_ok, write_set};
use crate::{cargo, run, workspace_root};

const PORTS: Ports = Ports {
    redis: 16379,
    admin: 18379,
    raft: 17379,
};
const REQUESTS: &str = "20000";

/// Runs the benchmarks the flags select.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let (mut micro, mut cluster, mut disk, mut rewrite, mut snapshot) =
        (false, false, false, false, false);
    for arg in args {
        match arg.as_str() {
            "--micro" => micro = true,
            "--cluster" => cluster = true,
            "--disk" => disk = true,
            "--rewrite" => rewrite = true,
            "--snapshot" => snapshot = true,
            other => {
                bail!(
                    "unknown bench flag {other:?} (--micro, --cluster, --disk, --rewrite, --snapshot)"
                )
            }
        }
    }
    if !micro && !cluster && !disk && !rewrite && !snapshot {
        (micro, cluster, disk, rewrite, snapshot) = (true, true, true, true, true);
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
    if rewrite {
        rewrite_run()?;
    }
    if snapshot {
        crate::bench_snapshot::run()?;
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

/// Keys of the bounded-disk run, each overwritten `ROUNDS` times.
const KEYS: u64 = 20_000;
const ROUNDS: u64 = 20;
const CLIENTS: u64 = 8;
const PIPELINE: u64 = 64;

/// Whether one `SET` through `addr` answers `+OK`.
fn set_ok(addr: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.write_all(b"*3\r\n$3\r\nSET\r\n$5\r\nprobe\r\n$1\r\n1\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line == "+OK\r\n")
}

/// `CLIENTS` writers of [`overwrite`], `rounds` rounds each, to `addr`.
fn overwrite_rounds(addr: &str, rounds: u64) -> anyhow::Result<()> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || overwrite(&addr, c, rounds))
        })
        .collect();
    for client in clients {
        client
            .join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    Ok(())
}

/// One writer of the bounded-disk run: `SET disk:K <1 KiB of random bytes>` for its
/// share of the keys (K ≡ `client` mod `CLIENTS`), `ROUNDS` times, pipelined, in
/// RESP written by hand (random values, unlike redis-benchmark's repeated `x`, do
/// not compress, so the disk figures are not flattered by RocksDB's compression).
fn overwrite(addr: &str, client: u64, rounds: u64) -> anyhow::Result<()> {
    use std::io::{BufReader, Write};
    let stream = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = std::io::BufWriter::new(stream);
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (client + 1);
    let mut random = move || {
        // xorshift64*: fast, and plenty for bytes that must not compress.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let keys: Vec<u64> = (client..KEYS).step_by(usize::try_from(CLIENTS)?).collect();
    let mut value = vec![0u8; 1024];
    for _ in 0..rounds {
        for chunk in keys.chunks(usize::try_from(PIPELINE)?) {
            for k in chunk {
                for word in value.chunks_mut(8) {
                    let bytes = random().to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
                write_set(&mut writer, &format!("disk:{k}"), &value)?;
            }
            writer.flush()?;
            read_ok(&mut reader, chunk.len())?;
        }
    }
    Ok(())
}

/// Runs `sealkv ARGS`, which must succeed; returns its stdout.
fn sealkv_ok(binary: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("sealkv {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "sealkv {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rewrite_run() -> anyhow::Result<()> {
    let binary = cluster::build_release()?;
    let base = workspace_root().join("target").join("sealkv-bench-rewrite");
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
    }
    std::fs::create_dir_all(&base)?;
    let kek = base.join("kek");
    sealkv_ok(&binary, &["kek", "generate", &kek.to_string_lossy()])?;
    let kek_arg = kek.to_string_lossy().into_owned();
    let _nodes = Nodes(cluster::spawn(
        &binary,
        &base,
        PORTS,
        Logs::Files,
        &["--encryption-enabled", "--kek-file", &kek_arg],
    )?);
    let leader = wait_for_leader(&binary, Duration::from_secs(30))?;
    let admin = Ports::addr(PORTS.admin, leader);
    // Writes answer TRYAGAIN until the keys are bootstrapped and both envelopes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = sealkv_ok(
            &binary,
            &["encryption", "status", "--json", "--admin-addr", &admin],
        )?;
        let status: serde_json::Value = serde_json::from_str(&status)?;
        if status["storage_envelope"] == true
            && status["raft_envelope_cutover_index"].as_u64() > Some(0)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("encryption did not come on: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = Ports::addr(PORTS.redis, leader);
    // ... and until this load's epochs are registered.
    while !set_ok(&addr)? {
        if Instant::now() > deadline {
            bail!("the leader does not take writes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("==> {KEYS} SETs of 1 KiB of random bytes, sealed under the bootstrap key");
    overwrite_rounds(&addr, 1)?;
    sealkv_ok(
        &binary,
        &[
            "encryption",
            "rotate-dek",
            "--purpose",
            "storage",
            "--admin-addr",
            &admin,
        ],
    )?;
    let started = Instant::now();
    let asked = sealkv_ok(&binary, &["encryption", "rewrite", "--admin-addr", &admin])?;
    eprintln!("{}", asked.trim());
    let mut rows = Vec::new();
    for i in 1..=NODES {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let status = store_json(&binary, "status", i)?;
            let rewrite = &status["rewrite"];
            if rewrite["requested_index"].as_u64() > Some(0)
                && rewrite["done_index"].as_u64() >= rewrite["requested_index"].as_u64()
            {
                rows.push((i, started.elapsed(), rewrite.clone()));
                break;
            }
            if Instant::now() > deadline {
                bail!("node {i} did not finish the rewrite: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!();
    eprintln!(
        "{:<6} {:>10} {:>10} {:>12} {:>14}",
        "node", "scanned", "resealed", "done after", "versions/s"
    );
    for (i, elapsed, rewrite) in rows {
        let resealed = rewrite["rewritten"].as_u64().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let rate = resealed as f64 / elapsed.as_secs_f64();
        eprintln!(
            "{:<6} {:>10} {:>10} {:>11.2}s {:>14.0}",
            i,
            rewrite["scanned"],
            resealed,
            elapsed.as_secs_f64(),
            rate
        );
    }
    Ok(())
}

fn disk_run() -> anyhow::Result<()> {
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
    let started = Instant::now();
    eprintln!(
        "==> {ROUNDS} rounds of SET over {KEYS} keys, 1 KiB of random bytes each, {CLIENTS} clients pipelining {PIPELINE}"
    );
    overwrite_rounds(&Ports::addr(PORTS.redis, leader), ROUNDS)?;
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
        "{} SETs of 1 KiB over {KEYS} keys in {:.1}s ({:.0}/s); GC and compaction on every node in {:.1}s",
        KEYS * ROUNDS,
        written.as_secs_f64(),
        (KEYS * ROUNDS) as f64 / written.as_secs_f64(),
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

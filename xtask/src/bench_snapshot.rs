//! `cargo xtask bench --snapshot`: snapshot memory. A release node is loaded with
//! [`TOTAL_BYTES`] of values (256 KiB each, pipelined RESP `SET`s) and its Raft log
//! compacted; a learner then joins (`sealkv cluster add-learner`) and can only
//! catch up by a streamed snapshot of the whole store. Prints the transfer time
//! (add-learner to the learner's first installed snapshot) and both processes'
//! peak RSS (`VmHWM` in `/proc/<pid>/status`), and fails when either peak is above
//! [`RSS_LIMIT_MIB`].
//!
//! Ports 26379-26380 (redis), 27379-27380 (raft), 28379-28380 (admin); data in
//! `<target dir>/sealkv-bench-snapshot` (emptied first, removed after): about
//! three times [`TOTAL_BYTES`] of disk while it runs.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{self, Nodes, read_ok, write_set};

/// Bytes of values the leader holds before the learner joins.
const TOTAL_BYTES: usize = 1 << 30;
/// Bytes per value.
const VALUE_BYTES: usize = 256 << 10;
/// Commands in flight per round trip while loading.
const PIPELINE: usize = 16;
/// The most either process may reach.
const RSS_LIMIT_MIB: u64 = 512;

const REDIS: u16 = 26379;
const RAFT: u16 = 27379;
const ADMIN: u16 = 28379;

fn addr(port: u16, id: u64) -> String {
    cluster::Ports::addr(port, id)
}

fn start(binary: &Path, base: &Path, id: u64, extra: &[&str]) -> anyhow::Result<Child> {
    let log = base.join(format!("node{id}.log"));
    let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    Command::new(binary)
        .args(["start", "--id", &id.to_string()])
        .arg("--data-dir")
        .arg(base.join(format!("node{id}")))
        .args(["--raft-addr", &addr(RAFT, id)])
        .args(["--redis-addr", &addr(REDIS, id)])
        .args(["--admin-addr", &addr(ADMIN, id)])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("start node {id}"))
}

/// `GET path` on an admin endpoint: the body, or `None` while it does not answer.
fn admin_get(id: u64, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr(ADMIN, id)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The value of a metric series on node `id`.
fn metric(id: u64, series: &str) -> u64 {
    admin_get(id, "/metrics")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Peak resident set of `pid` in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kib / 1024)
}

/// Writes [`TOTAL_BYTES`] of values through node 1's Redis port.
fn load() -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr(REDIS, 1)).context("connect to node 1")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, stream);
    let value = vec![b'v'; VALUE_BYTES];
    let count = TOTAL_BYTES / VALUE_BYTES;
    for batch in (0..count).collect::<Vec<_>>().chunks(PIPELINE) {
        for i in batch {
            write_set(&mut writer, &format!("snapbench:{i:08}"), &value)?;
        }
        writer.flush()?;
        read_ok(&mut reader, batch.len())?;
    }
    Ok(())
}

/// Runs the benchmark.
pub fn run() -> anyhow::Result<()> {
    let binary = cluster::build_release()?;
    let base = cluster::target_dir().join("sealkv-bench-snapshot");
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
    }
    std::fs::create_dir_all(&base)?;
    let result = measure(&binary, &base);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn measure(binary: &Path, base: &Path) -> anyhow::Result<()> {
    let peers = format!("1={},2={}", addr(RAFT, 1), addr(RAFT, 2));
    let mut nodes = Nodes(vec![start(
        binary,
        base,
        1,
        &[
            "--peers",
            &format!("1={}", addr(RAFT, 1)),
            "--compact-threshold",
            "100",
            "--compact-keep",
            "10",
        ],
    )?]);
    wait("node 1 to lead", Duration::from_secs(30), || {
        admin_get(1, "/status").is_some_and(|s| s.contains("\"role\":\"leader\""))
    })?;
    let started = Instant::now();
    load()?;
    eprintln!(
        "==> loaded {} MiB into node 1 in {:.1} s",
        TOTAL_BYTES >> 20,
        started.elapsed().as_secs_f64()
    );
    nodes
        .0
        .push(start(binary, base, 2, &["--join", "--peers", &peers])?);
    wait("node 2 to answer", Duration::from_secs(30), || {
        admin_get(2, "/status").is_some()
    })?;
    let started = Instant::now();
    let added = Command::new(binary)
        .args(["cluster", "add-learner", "--id", "2"])
        .args(["--raft-addr", &addr(RAFT, 2)])
        .args(["--admin-addr", &addr(ADMIN, 1)])
        .output()
        .context("sealkv cluster add-learner")?;
    if !added.status.success() {
        bail!(
            "add-learner failed: {}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    wait(
        "the learner to install a snapshot",
        Duration::from_secs(1800),
        || metric(2, "sealkv_snapshots_installed_total") >= 1,
    )?;
    let transfer = started.elapsed();
    for id in [1, 2] {
        let log = std::fs::read_to_string(base.join(format!("node{id}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| {
            l.contains("sent snapshot")
                || l.contains("received snapshot")
                || l.contains("send snapshot")
                || l.contains("refused a snapshot")
        }) {
            eprintln!("[node{id}] {line}");
        }
    }
    let [leader, learner] = [&nodes.0[0], &nodes.0[1]].map(|c| c.id());
    let (leader_rss, learner_rss) = (peak_rss_mib(leader)?, peak_rss_mib(learner)?);
    let sent = metric(1, "sealkv_snapshot_sent_bytes_total");
    eprintln!(
        "==> snapshot of {} MiB: add-learner to installed in {:.1} s; peak RSS leader {leader_rss} MiB, learner {learner_rss} MiB (limit {RSS_LIMIT_MIB} MiB)",
        sent >> 20,
        transfer.as_secs_f64()
    );
    if sent < TOTAL_BYTES as u64 {
        bail!("the leader streamed {sent} bytes, less than the {TOTAL_BYTES} it holds");
    }
    if leader_rss > RSS_LIMIT_MIB || learner_rss > RSS_LIMIT_MIB {
        bail!("peak RSS above {RSS_LIMIT_MIB} MiB");
    }
    Ok(())
}

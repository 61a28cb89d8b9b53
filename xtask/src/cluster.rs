//! `cargo xtask cluster`: builds `sealkv` and runs a local three-node cluster in the
//! foreground, each node's log lines prefixed with its name, until Ctrl-C.
//!
//! | node | redis            | admin            | raft             |
//! |------|------------------|------------------|------------------|
//! | 1    | 127.0.0.1:6379   | 127.0.0.1:8379   | 127.0.0.1:7379   |
//! | 2    | 127.0.0.1:6380   | 127.0.0.1:8380   | 127.0.0.1:7380   |
//! | 3    | 127.0.0.1:6381   | 127.0.0.1:8381   | 127.0.0.1:7381   |
//!
//! Data lives in `target/sealkv-cluster/nodeN` and survives between runs;
//! `cargo xtask cluster --fresh` starts from empty data dirs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::{cargo, run, workspace_root};

/// How many nodes a local cluster has.
pub const NODES: u64 = 3;

/// The first node's ports; node `i` (from 1) adds `i - 1` to each.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Redis protocol port of node 1.
    pub redis: u16,
    /// Admin HTTP port of node 1.
    pub admin: u16,
    /// Raft port of node 1.
    pub raft: u16,
}

impl Ports {
    /// Node `i`'s address on `port`.
    pub fn addr(port: u16, i: u64) -> String {
        format!("127.0.0.1:{}", u64::from(port) + i - 1)
    }
}

/// Where a node's log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// To this process's stderr, each line prefixed with `[nodeN]`.
    Prefixed,
    /// To `nodeN.log` beside the node's data dir.
    Files,
}

/// The cargo target directory (`CARGO_TARGET_DIR`, or `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the release `sealkv` binary and returns its path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    run(
        "cargo build --release --bin sealkv",
        cargo().args(["build", "--release", "--bin", "sealkv"]),
    )?;
    Ok(target_dir().join("release").join("sealkv"))
}

/// Starts [`NODES`] nodes of `binary` with data under `base` (`base/nodeN`) and any
/// `extra` flags. Prefixed log printers are detached threads that end with the nodes.
pub fn spawn(
    binary: &Path,
    base: &Path,
    ports: Ports,
    logs: Logs,
    extra: &[&str],
) -> anyhow::Result<Vec<Child>> {
    std::fs::create_dir_all(base).with_context(|| format!("create {}", base.display()))?;
    let peers = (1..=NODES)
        .map(|i| format!("{i}={}", Ports::addr(ports.raft, i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for i in 1..=NODES {
        let mut cmd = Command::new(binary);
        cmd.args(["start", "--id", &i.to_string()])
            .arg("--data-dir")
            .arg(base.join(format!("node{i}")))
            .args(["--raft-addr", &Ports::addr(ports.raft, i)])
            .args(["--redis-addr", &Ports::addr(ports.redis, i)])
            .args(["--admin-addr", &Ports::addr(ports.admin, i)])
            .args(["--peers", &peers])
            .args(extra);
        match logs {
            Logs::Prefixed => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Logs::Files => {
                let path = base.join(format!("node{i}.log"));
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("create {}", path.display()))?;
                cmd.stdout(Stdio::null()).stderr(file);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let streams = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[node{i}] {line}");
                }
            });
        }
        children.push(child);
    }
    Ok(children)
}

/// Runs the cluster until every node has exited.
pub fn cluster(args: &[String]) -> anyhow::Result<()> {
    let fresh = args.iter().any(|a| a == "--fresh");
    if let Some(other) = args.iter().find(|a| *a != "--fresh") {
        bail!("unknown cluster flag {other:?} (only --fresh)");
    }
    let binary = build_release()?;
    let base = workspace_root().join("target").join("sealkv-cluster");
    if fresh && base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
    }
    let ports = Ports {
        redis: 6379,
        admin: 8379,
        raft: 7379,
    };
    let children = spawn(&binary, &base, ports, Logs::Prefixed, &[])?;
    eprintln!();
    eprintln!("three sealkv nodes are starting; connect with:");
    eprintln!("  redis-cli -p 6379        (nodes 2 and 3: -p 6380, -p 6381)");
    eprintln!("  cargo run --bin sealkv -- status --admin-addr 127.0.0.1:8379");
    eprintln!("data in {}; Ctrl-C stops all three", base.display());
    eprintln!();
    let mut failed = false;
    for mut child in children {
        let status = child.wait().context("wait for node")?;
        failed |= !status.success();
    }
    if failed {
        bail!("a node exited with an error");
    }
    Ok(())
}

/// Stops the nodes with SIGTERM (a clean shutdown) when dropped.
pub struct Nodes(pub Vec<Child>);

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

/// Writes `SET key value` in RESP to `writer` (pipelined: read the answers with
/// [`read_ok`] after a flush).
pub fn write_set(writer: &mut impl std::io::Write, key: &str, value: &[u8]) -> std::io::Result<()> {
    write!(
        writer,
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
        key.len(),
        value.len()
    )?;
    writer.write_all(value)?;
    writer.write_all(b"\r\n")
}

/// Reads `n` answers from `reader`, each of which must be `+OK`.
pub fn read_ok(reader: &mut impl std::io::BufRead, n: usize) -> anyhow::Result<()> {
    let mut line = String::new();
    for _ in 0..n {
        line.clear();
        reader.read_line(&mut line)?;
        if line != "+OK\r\n" {
            anyhow::bail!("SET answered {line:?}");
        }
    }
    Ok(())
}

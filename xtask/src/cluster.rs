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
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::{cargo, run, workspace_root};

const NODES: u64 = 3;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs the cluster until every node has exited.
pub fn cluster(args: &[String]) -> anyhow::Result<()> {
    let fresh = args.iter().any(|a| a == "--fresh");
    if let Some(other) = args.iter().find(|a| *a != "--fresh") {
        bail!("unknown cluster flag {other:?} (only --fresh)");
    }
    run(
        "cargo build --release --bin sealkv",
        cargo().args(["build", "--release", "--bin", "sealkv"]),
    )?;
    let binary = target_dir().join("release").join("sealkv");
    let base = workspace_root().join("target").join("sealkv-cluster");
    if fresh && base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("remove {}", base.display()))?;
    }
    let peers = (1..=NODES)
        .map(|i| format!("{i}=127.0.0.1:{}", 7378 + i))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    let mut printers = Vec::new();
    for i in 1..=NODES {
        let mut child = Command::new(&binary)
            .args(["start", "--id", &i.to_string()])
            .arg("--data-dir")
            .arg(base.join(format!("node{i}")))
            .args(["--raft-addr", &format!("127.0.0.1:{}", 7378 + i)])
            .args(["--redis-addr", &format!("127.0.0.1:{}", 6378 + i)])
            .args(["--admin-addr", &format!("127.0.0.1:{}", 8378 + i)])
            .args(["--peers", &peers])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            printers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[node{i}] {line}");
                }
            }));
        }
        children.push(child);
    }
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
    for p in printers {
        let _ = p.join();
    }
    if failed {
        bail!("a node exited with an error");
    }
    Ok(())
}

//! `cargo xtask faults`: the long run of the fault tests (`crates/node/tests/faults`)
//! and one summary of what they did and found.
//!
//! ```text
//! cargo xtask faults [--kill-cycles N] [--cluster-kills N] [--partitions N]
//!                    [--min-ops N] [--seed S]
//! ```
//!
//! The defaults are the long run: 20 kill cycles, 3 whole-cluster kills, 10
//! partitions (among nemesis rounds of every kind), and at least 10,000 operations in
//! each of the two workload tests. The tests
//! append one JSON line each to a report file; this prints their sum.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{cargo, run, target_dir};

/// The flags and the variables they set.
const FLAGS: &[(&str, &str, &str)] = &[
    ("--kill-cycles", "SEALKV_FAULTS_KILL_CYCLES", "20"),
    ("--cluster-kills", "SEALKV_FAULTS_CLUSTER_KILLS", "3"),
    ("--partitions", "SEALKV_FAULTS_PARTITIONS", "10"),
    ("--min-ops", "SEALKV_FAULTS_MIN_OPS", "10000"),
    ("--seed", "SEALKV_FAULTS_SEED", ""),
];

pub fn faults(args: &[String]) -> anyhow::Result<()> {
    crate::prereqs()?;
    let mut env: Vec<(&str, String)> = FLAGS
        .iter()
        .filter(|(_, _, default)| !default.is_empty())
        .map(|(_, var, default)| (*var, default.to_string()))
        .collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some((_, var, _)) = FLAGS.iter().find(|(f, _, _)| f == flag) else {
            bail!(
                "unknown flag {flag:?}; flags: {}",
                FLAGS.iter().map(|f| f.0).collect::<Vec<_>>().join(" ")
            );
        };
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a number"))?;
        value
            .parse::<u64>()
            .with_context(|| format!("{flag} {value:?} is not a number"))?;
        env.retain(|(v, _)| v != var);
        env.push((var, value.clone()));
    }
    let report = target_dir().join("faults-report.jsonl");
    match std::fs::remove_file(&report) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", report.display())),
    }
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--test", "faults"])
        .env("SEALKV_FAULTS_REPORT", &report);
    for (var, value) in &env {
        cmd.env(var, value);
    }
    let result = run("cargo test --test faults (long)", &mut cmd);
    summarize(&report)?;
    result
}

// The summary is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
fn summarize(report: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(report)
        .with_context(|| format!("read {} (no test reported)", report.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parse the fault report")?;
    let sum = |field: &str| -> u64 { lines.iter().filter_map(|l| l[field].as_u64()).sum() };
    let histories: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["histories"].as_array())
        .flatten()
        .collect();
    let linearizable = histories
        .iter()
        .filter(|h| h["linearizable"] == Value::Bool(true))
        .count();
    println!("fault run summary");
    println!(
        "  kill cycles          {} ({} of them the leader)",
        sum("kill_cycles"),
        sum("leaders_killed")
    );
    println!("  whole-cluster kills  {}", sum("cluster_kills"));
    println!(
        "  partitions           {} (nemesis rounds {}, link cuts {})",
        sum("partitions"),
        sum("rounds"),
        sum("link_cuts")
    );
    println!(
        "  operations           {} (ok {}, fail {}, unknown {})",
        sum("ops"),
        sum("ok"),
        sum("fail"),
        sum("unknown")
    );
    println!("  acknowledged writes  {}", sum("acked_writes"));
    println!("  lost writes          {}", sum("lost_writes"));
    println!(
        "  histories checked    {} ({linearizable} linearizable)",
        histories.len()
    );
    for h in &histories {
        println!(
            "    {:<12} {:>6} ops on {} keys, linearizable: {}, checked in {} ms",
            h["name"].as_str().unwrap_or("?"),
            h["ops"],
            h["keys"],
            h["linearizable"],
            h["check_ms"]
        );
    }
    println!(
        "  nonce pairs checked  {}, repeats {}",
        sum("nonce_pairs"),
        sum("nonce_repeats")
    );
    if linearizable != histories.len() || sum("lost_writes") > 0 {
        bail!("the fault run found a violation");
    }
    Ok(())
}

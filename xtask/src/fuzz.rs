//! `cargo xtask fuzz --seconds N [TARGET ...]`: builds the cargo-fuzz targets in
//! `fuzz/` on the stable toolchain and runs each for N seconds, one at a time, then
//! prints a summary table (target, executions, corpus size, crashes).
//!
//! Every target runs with `-s none` (no sanitizer: the stable toolchain cannot build
//! one; Rust's own checks and the targets' assertions are what fail) and `-a` (debug
//! assertions, so integer overflow panics). Its corpus is two directories: the
//! scratch `fuzz/corpus-work/<target>/` first, where libFuzzer writes what it
//! finds, and the committed seeds in `fuzz/corpus/<target>/`, which a run only
//! reads. A crash fails the command and names the artifact file libFuzzer wrote
//! (`fuzz/artifacts/<target>/crash-...`); minimize it with `cargo fuzz tmin -s none
//! <target> <file>` and commit it as a regression seed.
//!
//! The build goes to `fuzz/target`, or `SEALKV_FUZZ_TARGET_DIR`: never the
//! workspace's target directory, whose uninstrumented builds the instrumented ones
//! would otherwise keep invalidating.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::{cargo, run, workspace_root};

/// What one target's run reported.
#[derive(Debug, Default)]
struct RunStats {
    executions: Option<u64>,
    corpus: Option<String>,
    artifacts: Vec<String>,
    exit_ok: bool,
}

/// `cargo xtask fuzz --seconds N [TARGET ...]`.
pub fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let (seconds, wanted) = parse_args(args)?;
    let fuzz_dir = workspace_root().join("fuzz");
    let all = targets(&fuzz_dir)?;
    let selected: Vec<String> = if wanted.is_empty() {
        all.clone()
    } else {
        for name in &wanted {
            if !all.contains(name) {
                bail!(
                    "unknown fuzz target {name:?}; the targets are: {}",
                    all.join(", ")
                );
            }
        }
        wanted
    };
    let ok = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("cargo-fuzz is not installed; install it with: cargo install cargo-fuzz");
    }
    let target_dir = std::env::var_os("SEALKV_FUZZ_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fuzz_dir.join("target"));
    run(
        "cargo fuzz build -s none -a",
        fuzz_cargo()
            .args(["fuzz", "build", "-s", "none", "-a", "--target-dir"])
            .arg(&target_dir),
    )?;
    let mut rows = Vec::new();
    for name in &selected {
        let stats = run_target(&fuzz_dir, &target_dir, name, seconds)?;
        rows.push((name.clone(), stats));
    }
    eprintln!();
    eprintln!(
        "{:<22} {:>12} {:>16} {:>8}",
        "target", "executions", "corpus", "crashes"
    );
    let mut failures = Vec::new();
    for (name, stats) in &rows {
        let crashes = stats.artifacts.len();
        eprintln!(
            "{:<22} {:>12} {:>16} {:>8}",
            name,
            stats
                .executions
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            stats.corpus.as_deref().unwrap_or("?"),
            if stats.exit_ok {
                crashes
            } else {
                crashes.max(1)
            }
        );
        if !stats.exit_ok || crashes > 0 {
            let files = if stats.artifacts.is_empty() {
                "no artifact written".to_string()
            } else {
                stats.artifacts.join(", ")
            };
            failures.push(format!("{name}: {files}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "fuzzing found crashes (minimize with `cargo fuzz tmin -s none -a TARGET FILE`):\n  {}",
            failures.join("\n  ")
        );
    }
    eprintln!("==> fuzz passed: {} targets, {seconds} s each", rows.len());
    Ok(())
}

fn parse_args(args: &[String]) -> anyhow::Result<(u64, Vec<String>)> {
    let mut seconds = None;
    let mut targets = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--seconds" {
            iter.next().context("--seconds needs a value")?.as_str()
        } else if let Some(value) = arg.strip_prefix("--seconds=") {
            value
        } else if arg.starts_with('-') {
            bail!("unknown option {arg}; usage: cargo xtask fuzz --seconds N [TARGET ...]");
        } else {
            targets.push(arg.clone());
            continue;
        };
        let n: u64 = value
            .parse()
            .with_context(|| format!("--seconds {value:?} is not a whole number"))?;
        if n == 0 {
            bail!("--seconds must be at least 1");
        }
        seconds = Some(n);
    }
    let seconds = seconds.context("usage: cargo xtask fuzz --seconds N [TARGET ...]")?;
    Ok((seconds, targets))
}

/// The targets: the files of `fuzz/fuzz_targets/`, sorted.
fn targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let name = entry
            .with_context(|| format!("list {}", dir.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(target) = name.strip_suffix(".rs") {
            names.push(target.to_string());
        }
    }
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    names.sort();
    Ok(names)
}

/// `cargo` for cargo-fuzz, without the workspace's `CARGO_TARGET_DIR` (cargo-fuzz
/// gets `--target-dir` instead).
fn fuzz_cargo() -> Command {
    let mut cmd = cargo();
    cmd.env_remove("CARGO_TARGET_DIR");
    cmd
}

fn run_target(
    fuzz_dir: &Path,
    target_dir: &Path,
    name: &str,
    seconds: u64,
) -> anyhow::Result<RunStats> {
    let work = fuzz_dir.join("corpus-work").join(name);
    let seeds = fuzz_dir.join("corpus").join(name);
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    if !seeds.is_dir() {
        bail!("no seed corpus at {}", seeds.display());
    }
    eprintln!("==> fuzz {name} for {seconds} s");
    let mut child = fuzz_cargo()
        .args(["fuzz", "run", "-s", "none", "-a", "--target-dir"])
        .arg(target_dir)
        .arg(name)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn cargo fuzz run {name}"))?;
    let mut stats = RunStats::default();
    let stderr = child.stderr.take().context("capture cargo fuzz's stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("read cargo fuzz's output")?;
        eprintln!("{line}");
        parse_line(&line, &mut stats);
    }
    stats.exit_ok = child
        .wait()
        .with_context(|| format!("wait for cargo fuzz run {name}"))?
        .success();
    Ok(stats)
}

/// Picks what the summary needs out of one line of libFuzzer's output.
fn parse_line(line: &str, stats: &mut RunStats) {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        stats.executions = n.trim().parse().ok();
    }
    // Status lines: "#1234\tNEW    cov: 10 ft: 20 corp: 5/120b ...".
    if let Some(rest) = line.split("corp: ").nth(1)
        && let Some(corpus) = rest.split_whitespace().next()
    {
        stats.corpus = Some(corpus.to_string());
    }
    if let Some(rest) = line.split("Test unit written to ").nth(1) {
        let path = rest.trim().to_string();
        if !stats.artifacts.contains(&path) {
            stats.artifacts.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_output() {
        let mut stats = RunStats::default();
        for line in [
            "#2\tINITED cov: 10 ft: 11 corp: 3/40b exec/s: 0 rss: 30Mb",
            "#4096\tpulse  cov: 12 ft: 19 corp: 7/96b lim: 4 exec/s: 2048 rss: 31Mb",
            "==1== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='fuzz/artifacts/x/'; Test unit written to fuzz/artifacts/x/crash-ab12",
            "stat::number_of_executed_units: 4099",
        ] {
            parse_line(line, &mut stats);
        }
        assert_eq!(stats.executions, Some(4099));
        assert_eq!(stats.corpus.as_deref(), Some("7/96b"));
        assert_eq!(
            stats.artifacts,
            vec!["fuzz/artifacts/x/crash-ab12".to_string()]
        );
    }

    #[test]
    fn parses_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_args(&args(&["--seconds", "5", "resp"])).unwrap(),
            (5, vec!["resp".to_string()])
        );
        assert_eq!(parse_args(&args(&["--seconds=7"])).unwrap(), (7, vec![]));
        assert!(parse_args(&args(&["resp"])).is_err());
        assert!(parse_args(&args(&["--seconds", "x"])).is_err());
        assert!(parse_args(&args(&["--seconds", "0"])).is_err());
        assert!(parse_args(&args(&["--jobs", "2"])).is_err());
    }
}

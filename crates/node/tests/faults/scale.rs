//! How long the fault tests run, and what they report.
//!
//! The defaults are the bounded versions `cargo xtask ci` runs. `cargo xtask faults`
//! sets the variables below for the long run and reads the reports back:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SEALKV_FAULTS_KILL_CYCLES` | single-node kill cycles | 4 |
//! | `SEALKV_FAULTS_CLUSTER_KILLS` | whole-cluster kills | 1 |
//! | `SEALKV_FAULTS_PARTITIONS` | partitions (leader or follower cut off, one-way cuts) at least; every kind of nemesis round runs once whatever this says | 3 |
//! | `SEALKV_FAULTS_MIN_OPS` | operations a run performs at least | 0 |
//! | `SEALKV_FAULTS_SEED` | seed of the fault schedule and the client mix | random |
//! | `SEALKV_FAULTS_REPORT` | file each test appends its JSON summary line to | none |

use std::io::Write;
use std::time::Duration;

use sealkv_linearizability::Recorder;
use serde_json::Value;

/// How long the checker may take on one history before the test fails.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// The run's size.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Single-node kill cycles.
    pub kill_cycles: usize,
    /// Whole-cluster kills.
    pub cluster_kills: usize,
    /// Partitions to inject at least.
    pub partitions: usize,
    /// Operations to perform at least.
    pub min_ops: u64,
    /// The seed.
    pub seed: u64,
}

fn var(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Scale {
    /// The scale from the environment, with the bounded defaults.
    pub fn from_env() -> Scale {
        let scale = Scale {
            kill_cycles: var("SEALKV_FAULTS_KILL_CYCLES", 4) as usize,
            cluster_kills: var("SEALKV_FAULTS_CLUSTER_KILLS", 1) as usize,
            partitions: var("SEALKV_FAULTS_PARTITIONS", 3) as usize,
            min_ops: var("SEALKV_FAULTS_MIN_OPS", 0),
            seed: var("SEALKV_FAULTS_SEED", fastrand::u64(..)),
        };
        eprintln!(
            "fault scale: {scale:?} (replay with SEALKV_FAULTS_SEED={})",
            scale.seed
        );
        scale
    }
}

/// Checks the history `recorder` holds for linearizability and returns the number
/// of operations in it. A history that is not linearizable, or that the checker
/// cannot decide in time, fails the test; the history is left in a file named in
/// the failure.
pub fn assert_linearizable(recorder: &Recorder, test: &str) -> Value {
    let history = recorder
        .history()
        .unwrap_or_else(|e| panic!("{test}: the recorded history is malformed: {e}"));
    let summary = history.summary();
    let started = std::time::Instant::now();
    let result = sealkv_linearizability::check(&history, CHECK_TIMEOUT);
    let took = started.elapsed();
    if !result.is_linearizable() {
        let path =
            std::env::temp_dir().join(format!("sealkv-history-{test}-{}.json", std::process::id()));
        let saved = history
            .write_file(&path)
            .map(|()| path.display().to_string())
            .unwrap_or_else(|e| format!("<not saved: {e}>"));
        panic!("{test}: history is not linearizable ({result}); history in {saved}");
    }
    serde_json::json!({
        "name": test,
        "ops": summary.total.ops,
        "ok": summary.total.ok,
        "fail": summary.total.fail,
        "unknown": summary.total.unknown + summary.total.pending,
        "keys": summary.per_key.len(),
        "linearizable": true,
        "check_ms": took.as_millis() as u64,
    })
}

/// Prints a test's figures and appends them to `SEALKV_FAULTS_REPORT`.
pub fn report(test: &str, mut figures: Value) {
    figures["test"] = Value::String(test.to_string());
    let line = figures.to_string();
    eprintln!("fault report: {line}");
    if let Some(path) = std::env::var_os("SEALKV_FAULTS_REPORT") {
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open the fault report");
        writeln!(f, "{line}").expect("write the fault report");
    }
}

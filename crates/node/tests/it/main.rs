//! Integration tests of the `sealkv` binary, run as a real process.

use std::process::Command;

fn sealkv() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sealkv"));
    cmd.env_remove("SEALKV_DATA_DIR")
        .env_remove("SEALKV_ID")
        .env("SEALKV_LOG", "info");
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run sealkv");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("utf8 stdout"),
        String::from_utf8(out.stderr).expect("utf8 stderr"),
    )
}

/// Startup runs its steps in the documented order and reports the state.
#[test]
fn start_runs_the_steps_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node1");
    let (ok, stdout, stderr) = run(sealkv()
        .args(["start", "--id", "7", "--data-dir"])
        .arg(&data));
    assert!(ok, "stderr: {stderr}");
    let steps = [
        "opened store",
        "built writer-registry glue",
        "built encryption applier",
        "built state machine with encryption",
    ];
    let positions: Vec<usize> = steps
        .iter()
        .map(|s| {
            stderr
                .find(s)
                .unwrap_or_else(|| panic!("missing step {s:?} in {stderr}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "steps out of order: {stderr}"
    );
    assert!(stdout.contains("node 7 "), "{stdout}");
    assert!(stdout.contains("applied_index=0"), "{stdout}");
    assert!(
        data.join("db").join("CURRENT").exists(),
        "RocksDB was not created"
    );
    // A second start over the same directory works and finds the same state.
    let (ok, _, stderr) = run(sealkv().args(["start", "--data-dir"]).arg(&data));
    assert!(ok, "restart: {stderr}");
}

/// A data dir that cannot be created fails on the first step, in one line.
#[test]
fn unusable_data_dir_names_the_step() {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    let (ok, _, stderr) = run(sealkv().args(["start", "--data-dir"]).arg(file.path()));
    assert!(!ok);
    let last = stderr.lines().last().expect("an error line");
    assert!(last.starts_with("sealkv: create data dir"), "{stderr}");
}

/// A store another process holds is refused at the "open store" step.
#[test]
fn locked_store_names_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _held = sealkv_store::RocksStore::open(dir.path().join("db"), Default::default())
        .expect("hold store");
    let (ok, _, stderr) = run(sealkv().args(["start", "--data-dir"]).arg(dir.path()));
    assert!(!ok);
    let last = stderr.lines().last().expect("an error line");
    assert!(last.starts_with("sealkv: open store at"), "{stderr}");
    assert!(last.to_lowercase().contains("lock"), "{stderr}");
    assert!(
        !stderr.contains("built writer-registry glue"),
        "later steps ran: {stderr}"
    );
}

/// The help text tells the truth about what this build does.
#[test]
fn help_is_honest() {
    let (ok, stdout, _) = run(sealkv().arg("--help"));
    assert!(ok);
    assert!(stdout.contains("not part of this build yet"), "{stdout}");
    let (ok, stdout, _) = run(sealkv().args(["start", "--help"]));
    assert!(ok);
    assert!(stdout.contains("--data-dir"), "{stdout}");
    assert!(
        stdout.contains("No Raft driver or listener is started yet"),
        "{stdout}"
    );
}

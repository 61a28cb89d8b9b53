//! The `sealkv` binary as an operator runs it: the startup sequence and its order,
//! refusals that name what to fix, and honest help.

use std::time::Duration;

use crate::support::*;

/// Startup runs its steps in the documented order, serves, and stops cleanly on
/// SIGTERM.
#[test]
fn start_runs_the_steps_in_order() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), 7, &[]);
    node.start("");
    eventually("the listening line", Duration::from_secs(10), || {
        node.log_text().contains("listening").then_some(())
    });
    let status = node.terminate();
    assert!(status.success(), "exit {status:?}: {}", node.log_text());
    let log = node.log_text();
    let steps = [
        "opened store",
        "built writer-registry glue",
        "built encryption applier",
        "built state machine with encryption",
        "opened raft log and started raft driver",
        "listening",
        "shutting down",
    ];
    let positions: Vec<usize> = steps
        .iter()
        .map(|s| {
            log.find(s)
                .unwrap_or_else(|| panic!("missing step {s:?} in {log}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "steps out of order: {log}"
    );
    assert!(
        node.data_dir.join("db").join("CURRENT").exists(),
        "RocksDB was not created"
    );
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

/// A second process on the same data dir is refused at the lock, before it opens
/// anything, and the first keeps running.
#[test]
fn second_process_on_a_data_dir_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = Node::new(dir.path(), 1, &[]);
    first.start("");
    let second = Node::new(dir.path(), 1, &[]);
    let (ok, _, stderr) = run(sealkv()
        .args(["start", "--data-dir"])
        .arg(&first.data_dir)
        .args(["--raft-addr", &second.raft, "--redis-addr", &second.redis])
        .args(["--admin-addr", &second.admin]));
    assert!(!ok);
    let last = stderr.lines().last().expect("an error line");
    assert!(last.starts_with("sealkv: lock data dir"), "{stderr}");
    assert!(last.contains("another sealkv process"), "{stderr}");
    assert!(
        !stderr.contains("opened store"),
        "later steps ran: {stderr}"
    );
    assert!(first.exited().is_none(), "the first node died");
    assert!(first.status().is_some());
}

/// A listen address in use is refused naming the flag.
#[test]
fn busy_listen_address_names_the_flag() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let node = Node::new(dir.path(), 1, &[]);
    let (ok, _, stderr) = run(sealkv()
        .args(["start", "--data-dir"])
        .arg(&node.data_dir)
        .args(["--raft-addr", &node.raft, "--redis-addr", &taken])
        .args(["--admin-addr", &node.admin]));
    assert!(!ok);
    let last = stderr.lines().last().expect("an error line");
    assert!(last.contains("--redis-addr"), "{stderr}");
}

/// A password file that is missing, empty, more than one line or readable by
/// others is refused at startup in one line that names the flag and the file, and
/// never shows the file's content.
#[test]
fn bad_password_files_name_the_flag() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &[u8], u32, &str)] = &[
        ("empty", b"\n", 0o600, "is empty"),
        ("lines", b"hunter2\nhunter3\n", 0o600, "more than one line"),
        (
            "shared",
            b"hunter2\n",
            0o644,
            "has mode 0644, want owner-only",
        ),
    ];
    let mut files: Vec<(std::path::PathBuf, &str)> = cases
        .iter()
        .map(|(name, content, mode, want)| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
            (path, *want)
        })
        .collect();
    files.push((dir.path().join("missing"), "read password file"));
    for (path, want) in files {
        let node = Node::new(dir.path(), 1, &[]);
        let (ok, _, stderr) = run(sealkv()
            .args(["start", "--data-dir"])
            .arg(&node.data_dir)
            .arg("--redis-password-file")
            .arg(&path));
        assert!(!ok, "{} accepted", path.display());
        let last = stderr.lines().last().expect("an error line");
        assert!(
            last.starts_with("sealkv: load --redis-password-file"),
            "{stderr}"
        );
        assert!(last.contains(&path.display().to_string()), "{stderr}");
        assert!(last.contains(want), "{stderr}");
        assert!(!stderr.contains("hunter"), "the password leaked: {stderr}");
        assert!(
            !node.data_dir.exists(),
            "started before checking the password"
        );
    }
}

/// `sealkv status` against nothing says which flag to fix.
#[test]
fn status_without_a_node_names_the_flag() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (ok, _, stderr) = run(sealkv().args(["status", "--admin-addr", &addr]));
    assert!(!ok);
    let last = stderr.lines().last().expect("an error line");
    assert!(last.contains("--admin-addr"), "{stderr}");
}

/// The help text tells the truth about what this build does.
#[test]
fn help_is_honest() {
    let (ok, stdout, _) = run(sealkv().arg("--help"));
    assert!(ok);
    assert!(stdout.contains("--encryption-enabled"), "{stdout}");
    for sub in ["start", "status", "cluster", "kek", "encryption"] {
        assert!(stdout.contains(sub), "{sub} missing: {stdout}");
    }
    let (ok, stdout, _) = run(sealkv().args(["start", "--help"]));
    assert!(ok);
    for flag in [
        "--data-dir",
        "--raft-addr",
        "--redis-addr",
        "--admin-addr",
        "--peers",
        "--join",
        "--encryption-enabled",
        "--kek-file",
        "SEALKV_KEK_BASE64",
        "--redis-password-file",
        "SEALKV_REDIS_PASSWORD_FILE",
        "--insecure",
    ] {
        assert!(stdout.contains(flag), "{flag} missing: {stdout}");
    }
    let (ok, stdout, _) = run(sealkv().args(["cluster", "--help"]));
    assert!(ok);
    for verb in ["add-node", "add-learner", "remove-node"] {
        assert!(stdout.contains(verb), "{verb} missing: {stdout}");
    }
    let (ok, stdout, _) = run(sealkv().args(["encryption", "--help"]));
    assert!(ok);
    for verb in [
        "status",
        "bootstrap",
        "rotate-dek",
        "register-writer",
        "enable-envelope",
    ] {
        assert!(stdout.contains(verb), "{verb} missing: {stdout}");
    }
}

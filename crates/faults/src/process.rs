//! Process faults: pause and resume a node (SIGSTOP, SIGCONT), and run a node with
//! its wall clock skewed (Debian's `libfaketime`).

use std::path::PathBuf;
use std::process::Command;

/// Sends `signal` (a name such as `STOP`) to `pid` with `kill(1)`.
///
/// # Panics
/// When `kill` fails: the process is gone, or the test lost track of it.
pub fn signal(pid: u32, signal: &str) {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .expect("run kill");
    assert!(
        out.status.success(),
        "kill -{signal} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Freezes the process: it keeps its sockets but answers nothing, as a node stuck in
/// a long GC pause or a VM migration would.
pub fn pause(pid: u32) {
    signal(pid, "STOP");
}

/// Lets a paused process run again.
pub fn resume(pid: u32) {
    signal(pid, "CONT");
}

/// Where Debian's `libfaketime` package puts the library.
const FAKETIME_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The `libfaketime` library, or an error naming the package to install.
///
/// # Errors
/// When no known path holds the library.
pub fn faketime_lib() -> Result<PathBuf, String> {
    FAKETIME_LIBS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "libfaketime not found (looked in {}); install it with: apt-get install libfaketime",
                FAKETIME_LIBS.join(", ")
            )
        })
}

/// The environment that runs a process with its wall clock `offset_ms` away from the
/// machine's (positive: ahead). Only the wall clock moves: the monotonic clock,
/// which Raft's timers use, stays true, as on a machine whose NTP is off.
///
/// # Errors
/// When `libfaketime` is not installed.
pub fn skewed_clock_env(offset_ms: i64) -> Result<Vec<(String, String)>, String> {
    let lib = faketime_lib()?;
    let secs = offset_ms as f64 / 1000.0;
    Ok(vec![
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("FAKETIME".to_string(), format!("{secs:+.3}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ])
}

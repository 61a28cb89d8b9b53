//! sealkv's build automation: `cargo xtask <task>`.
//!
//! * `ci` — what CI runs: system prerequisites, format, clippy, tests, docs, layering.
//! * `prereqs` — check (and on Debian as root, install) the system packages the
//!   RocksDB build needs, and make the Python environment the node's tests run
//!   redis-py from (`<target>/py`, the latest redis-py release from PyPI).
//! * `layering` — fail if a low-level crate depends on a heavy one.
//! * `run` — check the prerequisites, then build and run the release `sealkv`
//!   binary with the given arguments (`start` when none).
//! * `cluster` — build `sealkv` and run a local three-node cluster.
//! * `bench` — criterion micro-benchmarks and redis-benchmark against a local cluster.
//! * `faults` — the long run of the fault tests (kills, partitions, pauses, clock
//!   skew, linearizability) and one summary of it.
//! * `fuzz` — build the cargo-fuzz targets and run each for N seconds
//!   (`--seconds N [TARGET ...]`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod bench;
mod bench_snapshot;
mod cluster;
mod faults;
mod fuzz;

/// Crates that must stay free of storage, async runtime and consensus dependencies,
/// and what they must not pull in anywhere in their dependency tree (DESIGN.md §2).
///
/// `sealkv-store` holds the Raft log storage (DESIGN.md §2), so it may depend on raft
/// and raft-proto, but never on tokio.
///
/// No crate's normal build pulls in `fail` (fail-rs): fail points exist only in
/// test builds, through the test-only `failpoints` features, so a release `sealkv`
/// has none and no way to arm one.
const LAYERING: &[(&str, &[&str])] = &[
    (
        "sealkv-fsmwire",
        &[
            "rocksdb",
            "librocksdb-sys",
            "tokio",
            "raft",
            "raft-proto",
            "fail",
        ],
    ),
    (
        "sealkv-encryption",
        &[
            "rocksdb",
            "librocksdb-sys",
            "tokio",
            "raft",
            "raft-proto",
            "fail",
        ],
    ),
    ("sealkv-store", &["tokio", "fail"]),
    ("sealkv-kv", &["tokio", "fail"]),
    ("sealkv-node", &["fail"]),
];

/// Crates that must not name these as *direct* dependencies, though a crate below
/// them may bring them in.
///
/// `sealkv-kv` reaches raft only through `sealkv-store`'s log storage; the state
/// machine itself takes `sealkv_kv::Entry`, never a raft-rs type.
const LAYERING_DIRECT: &[(&str, &[&str])] = &[("sealkv-kv", &["raft", "raft-proto", "protobuf"])];

/// Workspace crates and the workspace crates each may depend on: dependencies point
/// one way, fsmwire ← encryption ← store ← kv ← node.
const ALLOWED_INTERNAL: &[(&str, &[&str])] = &[
    ("sealkv-fsmwire", &[]),
    ("sealkv-encryption", &["sealkv-fsmwire"]),
    ("sealkv-store", &["sealkv-fsmwire", "sealkv-encryption"]),
    (
        "sealkv-kv",
        &["sealkv-fsmwire", "sealkv-encryption", "sealkv-store"],
    ),
    (
        "sealkv-node",
        &[
            "sealkv-fsmwire",
            "sealkv-encryption",
            "sealkv-store",
            "sealkv-kv",
        ],
    ),
];

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => ci(),
        "prereqs" => prereqs(),
        "layering" => layering(),
        "run" => run_sealkv(&std::env::args().skip(2).collect::<Vec<_>>()),
        "cluster" => cluster::cluster(&std::env::args().skip(2).collect::<Vec<_>>()),
        "bench" => bench::bench(&std::env::args().skip(2).collect::<Vec<_>>()),
        "faults" => faults::faults(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fuzz" => fuzz::fuzz(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!("usage: cargo xtask <ci|prereqs|layering|run|cluster|bench|faults|fuzz>");
            eprintln!(
                "  ci        prerequisites, fmt, clippy, tests, docs, layering (what CI runs)"
            );
            eprintln!(
                "  prereqs   check or install libclang and a C++ compiler for RocksDB, and redis-py for the tests"
            );
            eprintln!("  layering  check that low-level crates do not depend on heavy ones");
            eprintln!(
                "  run       check prerequisites, then run the release sealkv (default: start)"
            );
            eprintln!("  cluster   run a local three-node cluster (--fresh: empty data dirs)");
            eprintln!(
                "  bench     criterion benches and redis-benchmark on a local cluster (--micro, --cluster)"
            );
            eprintln!(
                "  faults    long fault run: kill cycles, partitions, linearizability (--kill-cycles N ...)"
            );
            eprintln!(
                "  fuzz      run every cargo-fuzz target for N seconds (--seconds N [TARGET ...])"
            );
            bail!("unknown task {task:?}")
        }
    }
}

/// The workspace root, from the `CARGO_MANIFEST_DIR` that `cargo xtask` sets when it
/// runs this binary. It is read at run time, not baked in with `env!`: cargo reuses a
/// binary built from another checkout that shares the target dir, and a baked-in path
/// would then point at that other checkout.
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The library examples CI runs (each built by `cargo test --workspace`).
const EXAMPLES: &[&str] = &["key_service"];

/// Where cargo builds: `CARGO_TARGET_DIR`, or `target` in the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_relative() {
                workspace_root().join(d)
            } else {
                d
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {what}");
    let status = cmd.status().with_context(|| format!("spawn {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `cargo xtask run [ARGS]`: the prerequisites first (RocksDB's build needs
/// libclang and a C++ compiler), then `cargo run --release --bin sealkv -- ARGS`.
fn run_sealkv(args: &[String]) -> anyhow::Result<()> {
    build_prereqs()?;
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    let args: Vec<String> = if args.is_empty() {
        vec!["start".to_string()]
    } else {
        args.to_vec()
    };
    run(
        "cargo run --release --bin sealkv",
        cargo()
            .args(["run", "--release", "--bin", "sealkv", "--"])
            .args(&args),
    )
}

fn ci() -> anyhow::Result<()> {
    prereqs()?;
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    layering()?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run("cargo test", cargo().args(["test", "--workspace"]))?;
    // Each criterion bench once, as a test: a bench that no longer builds or runs
    // fails CI instead of waiting for the next `cargo xtask bench`.
    run(
        "cargo test --benches",
        cargo().args(["test", "--workspace", "--benches"]),
    )?;
    // The examples `cargo test` built: a service using the libraries alone.
    for example in EXAMPLES {
        let path = target_dir().join("debug").join("examples").join(example);
        run(&format!("example {example}"), &mut Command::new(path))?;
    }
    // Each library crate packages on its own, as for crates.io. The crates without
    // RocksDB are also built from their packages; building the RocksDB ones again
    // from theirs would take as long as the whole CI run.
    run(
        "cargo package (fsmwire, encryption)",
        cargo().args([
            "package",
            "--allow-dirty",
            "-p",
            "sealkv-fsmwire",
            "-p",
            "sealkv-encryption",
        ]),
    )?;
    run(
        "cargo package (store, kv; not built)",
        cargo().args([
            "package",
            "--allow-dirty",
            "--no-verify",
            "-p",
            "sealkv-fsmwire",
            "-p",
            "sealkv-encryption",
            "-p",
            "sealkv-store",
            "-p",
            "sealkv-kv",
        ]),
    )?;
    run(
        "cargo doc",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--no-deps",
                "--document-private-items",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("==> ci passed");
    Ok(())
}

/// Where a libclang shared object may live on Debian-like systems.
fn find_libclang() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LIBCLANG_PATH") {
        return Some(PathBuf::from(dir));
    }
    let roots = [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ];
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_libclang(&name) {
                return Some(path);
            }
            if name.starts_with("llvm-") {
                let lib = path.join("lib");
                if let Ok(libs) = std::fs::read_dir(&lib) {
                    for l in libs.flatten() {
                        let n = l.file_name().to_string_lossy().into_owned();
                        if is_libclang(&n) {
                            return Some(l.path());
                        }
                    }
                }
            }
        }
    }
    None
}

/// Whether a file name is a libclang shared object bindgen can load: `libclang.so*`
/// or a versioned `libclang-14.so*`, but not `libclang-cpp.so*` (the C++ interface
/// library, which Debian installs without libclang and bindgen cannot use).
fn is_libclang(name: &str) -> bool {
    if name.starts_with("libclang.so") {
        return true;
    }
    name.strip_prefix("libclang-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()) && rest.contains(".so"))
}

/// Whether Debian's `libfaketime` is installed: the fault tests skew node clocks
/// with it (the paths `sealkv-faults` looks in).
fn have_faketime() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .any(|d| Path::new(d).join("faketime/libfaketime.so.1").exists())
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Everything the build and the tests need: [`build_prereqs`], then
/// [`redis_py_prereqs`].
fn prereqs() -> anyhow::Result<()> {
    build_prereqs()?;
    redis_py_prereqs()
}

/// Where the node's process tests find redis-py: a virtual environment in the
/// target dir, which `cargo clean` removes with everything else built. The tests
/// look for `py/bin/python3` in the directories above their own executable and
/// fail, naming `cargo xtask prereqs`, when it is missing.
fn python_env() -> PathBuf {
    target_dir().join("py")
}

/// Makes the virtual environment (with `python3 -m venv`; on Debian as root,
/// installing `python3-venv` first when the interpreter lacks it) and installs or
/// upgrades redis-py in it from PyPI, so the tests always run the latest release
/// with its default settings. When PyPI cannot be reached and an earlier run left a
/// redis-py behind, that one is kept, with a warning.
fn redis_py_prereqs() -> anyhow::Result<()> {
    let venv = python_env();
    let python = venv.join("bin").join("python3");
    if !python.exists() {
        venv_support()?;
        run(
            "python3 -m venv",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )?;
    }
    let upgraded = run(
        "pip install --upgrade redis",
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "redis",
        ]),
    );
    let version = redis_py_version(&python);
    match (upgraded, version) {
        (Ok(()), Some(version)) => {
            eprintln!("==> redis-py {version} in {}", venv.display());
            Ok(())
        }
        (Err(e), Some(version)) => {
            eprintln!(
                "warning: {e:#}; the tests use the redis-py {version} already in {}",
                venv.display()
            );
            Ok(())
        }
        (_, None) => bail!(
            "redis-py is not importable from {}; remove that directory and run cargo xtask prereqs again",
            python.display()
        ),
    }
}

/// The version of redis-py `python` imports, if it imports one.
fn redis_py_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import redis; print(redis.__version__)"])
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !version.trim().is_empty()).then(|| version.trim().to_string())
}

/// Checks that `python3` can make a virtual environment with pip in it; on Debian as
/// root installs `python3-venv` (Debian ships `venv` without `ensurepip`)
/// otherwise, else says what to install.
fn venv_support() -> anyhow::Result<()> {
    let can = || {
        Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if can() {
        return Ok(());
    }
    const PACKAGES: &[&str] = &["python3", "python3-venv"];
    if is_root() && have("apt-get") {
        eprintln!("==> installing {}", PACKAGES.join(" "));
        apt_install(PACKAGES)?;
        if can() {
            return Ok(());
        }
        bail!("python3 still cannot make a virtual environment after installing python3-venv");
    }
    bail!(
        "the tests run redis-py from a Python virtual environment; install python3 with venv and ensurepip (on Debian: sudo apt-get install {})",
        PACKAGES.join(" ")
    )
}

/// `apt-get update`, then a non-interactive install of `packages` (Debian, as root).
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    run("apt-get update", Command::new("apt-get").arg("update"))?;
    run(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Checks for libclang (bindgen) and a C++ compiler (RocksDB), and libfaketime (the
/// fault tests' clock skew); installs them with apt on Debian when running as root,
/// otherwise prints the command to run.
fn build_prereqs() -> anyhow::Result<()> {
    const PACKAGES: &[&str] = &["libclang-dev", "clang", "g++", "make", "libfaketime"];
    let missing_clang = find_libclang().is_none();
    let missing_cxx = !have("c++") && !have("g++");
    let missing_faketime = !have_faketime();
    if !missing_clang && !missing_cxx && !missing_faketime {
        eprintln!("==> prerequisites present (libclang, C++ compiler, libfaketime)");
        return Ok(());
    }
    let install = format!(
        "apt-get update && apt-get install -y {}",
        PACKAGES.join(" ")
    );
    if is_root() && have("apt-get") {
        eprintln!("==> installing prerequisites: {install}");
        apt_install(PACKAGES)?;
        if find_libclang().is_none() {
            bail!("libclang still not found after install; set LIBCLANG_PATH");
        }
        if !have_faketime() {
            bail!("libfaketime still not found after install");
        }
        return Ok(());
    }
    bail!(
        "RocksDB's build needs libclang and a C++ compiler, and the fault tests libfaketime; install them with: sudo {install}"
    )
}

/// Fails if a crate pulls in a forbidden dependency, or a workspace crate depends on a
/// crate above it.
fn layering() -> anyhow::Result<()> {
    eprintln!("==> layering");
    let mut problems = Vec::new();
    for (krate, forbidden) in LAYERING {
        for dep in tree(krate, "normal,build")? {
            if forbidden.contains(&dep.as_str()) {
                problems.push(format!("{krate} depends on {dep}"));
            }
        }
    }
    for (krate, forbidden) in LAYERING_DIRECT {
        for dep in direct_deps(krate)? {
            if forbidden.contains(&dep.as_str()) {
                problems.push(format!("{krate} depends directly on {dep}"));
            }
        }
    }
    for (krate, allowed) in ALLOWED_INTERNAL {
        for dep in tree(krate, "normal,build")? {
            if dep.starts_with("sealkv-") && dep != *krate && !allowed.contains(&dep.as_str()) {
                problems.push(format!("{krate} depends on {dep}, which is not below it"));
            }
        }
    }
    if !problems.is_empty() {
        bail!("layering violated:\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "    {} crates checked",
        LAYERING.len() + LAYERING_DIRECT.len() + ALLOWED_INTERNAL.len()
    );
    Ok(())
}

/// The names of every package in `krate`'s dependency tree of the given kinds.
fn tree(krate: &str, edges: &str) -> anyhow::Result<Vec<String>> {
    tree_to_depth(krate, edges, None)
}

/// The names of `krate`'s own normal and build dependencies (the crate itself is the
/// first name).
fn direct_deps(krate: &str) -> anyhow::Result<Vec<String>> {
    tree_to_depth(krate, "normal,build", Some(1))
}

fn tree_to_depth(krate: &str, edges: &str, depth: Option<u32>) -> anyhow::Result<Vec<String>> {
    let mut cmd = cargo();
    cmd.args([
        "tree",
        "--quiet",
        "--package",
        krate,
        "--edges",
        edges,
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    if let Some(depth) = depth {
        cmd.args(["--depth", &depth.to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("run cargo tree for {krate}"))?;
    if !out.status.success() {
        bail!(
            "cargo tree for {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("cargo tree output is not UTF-8")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::is_libclang;

    #[test]
    fn libclang_names() {
        for name in [
            "libclang.so",
            "libclang.so.1",
            "libclang-14.so.1",
            "libclang-14.so",
        ] {
            assert!(is_libclang(name), "{name}");
        }
        for name in [
            "libclang-cpp.so.14",
            "libclang-cpp.so",
            "libclangBasic.a",
            "libc.so",
        ] {
            assert!(!is_libclang(name), "{name}");
        }
    }
}

//! Real clients against real `sealkv` processes: redis-py (the latest release from
//! PyPI, default settings, so RESP3) and redis-rs in RESP2 and RESP3 on one node,
//! and `--redis-password-file` on every node of a three-node cluster.
//!
//! redis-py runs from the virtual environment `cargo xtask prereqs` makes in the
//! target dir (`<target>/py`); without it these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use redis::{Commands, RedisResult};
use serde_json::{Value, json};

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);
const PASSWORD: &str = "c0rrect-h0rse-battery";

/// The Python of `<target>/py`, found in the directories above this test's
/// executable (`<target>/debug/deps/it-...`).
pub(crate) fn python() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .map(|dir| dir.join("py").join("bin").join("python3"))
        .find(|python| python.exists())
        .unwrap_or_else(|| {
            panic!(
                "no redis-py environment (py/bin/python3) above {}: run `cargo xtask prereqs` with the same CARGO_TARGET_DIR; it installs the latest redis-py from PyPI into <target>/py",
                exe.display()
            )
        })
}

/// Runs `redis_py.py` against `addr` and returns what it printed.
fn redis_py(addr: &str, password: Option<&str>) -> Value {
    let python = python();
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/redis_py.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args([host, port]).args(password);
    let (ok, stdout, stderr) = run(&mut cmd);
    assert!(
        ok,
        "{} {}:\n{stdout}\n{stderr}",
        python.display(),
        script.display()
    );
    let out: Value = serde_json::from_str(stdout.trim()).expect("redis_py.py prints JSON");
    eprintln!(
        "redis-py {} ({})",
        out["redis_py"].as_str().unwrap_or("?"),
        python.display()
    );
    out
}

/// What redis-py sees doing the same things on any node, with or without a
/// password.
fn check_redis_py(out: &Value) {
    let version = &out["redis_py"];
    let context = format!("redis-py {version}: {out:#}");
    let want = json!({
        "ping": true,
        "set": true,
        "get": "v",
        "get_missing": null,
        "set_nx": null,
        "incr": [1, 6, 5],
        "mget": ["v", null],
        "expire": true,
        "ttl": 100,
        "pipeline": [true, "1", 2, "2", 1, 0],
        "client": {"resp": "3", "lib-name": "redis-py", "lib-ver": version},
        "role": "master",
    });
    for (key, value) in want.as_object().expect("an object") {
        assert_eq!(&out[key], value, "{key}: {context}");
    }
}

/// A SET retried until the cluster takes it (an election answers TRYAGAIN).
fn set_eventually(con: &mut redis::Connection, key: &str, value: &str) {
    eventually(&format!("SET {key}"), LONG, || {
        let r: RedisResult<()> = con.set(key, value);
        r.ok()
    });
}

/// redis-rs SET, GET and a pipeline on `con`.
fn redis_rs_round_trip(con: &mut redis::Connection, tag: &str) {
    set_eventually(con, &format!("rs:{tag}"), tag);
    let got: Option<String> = con.get(format!("rs:{tag}")).expect("GET");
    assert_eq!(got.as_deref(), Some(tag));
    let missing: Option<String> = con.get("rs:missing").expect("GET missing");
    assert_eq!(missing, None);
    let (value, n, all): (String, i64, Vec<Option<String>>) = redis::pipe()
        .set(format!("rs:{tag}:p"), "x")
        .ignore()
        .get(format!("rs:{tag}:p"))
        .incr(format!("rs:{tag}:n"), 7)
        .mget(&[format!("rs:{tag}:p"), "rs:missing".to_string()])
        .query(con)
        .expect("pipeline");
    assert_eq!((value.as_str(), n), ("x", 7));
    assert_eq!(all, vec![Some("x".to_string()), None]);
}

/// A redis-rs connection to `node` with `credentials` and `query` in its URL.
fn connect(node: &Node, credentials: &str, query: &str) -> RedisResult<redis::Connection> {
    let url = format!("redis://{credentials}{}/{query}", node.redis);
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(con)
}

/// The error line (`CODE detail`) of a command that must fail.
fn refusal(con: &mut redis::Connection, cmd: &mut redis::Cmd) -> String {
    match cmd.query::<redis::Value>(con) {
        Err(e) => format!(
            "{} {}",
            e.code().unwrap_or("<no code>"),
            e.detail().unwrap_or("<no detail>")
        ),
        Ok(v) => panic!("{cmd:?} succeeded with {v:?}"),
    }
}

/// redis-py with its default settings, and redis-rs in both protocols, on a node
/// without a password.
#[test]
fn redis_py_and_redis_rs_on_one_node() {
    let _serial = serial();
    let c = Cluster::start(1, &[]);
    let node = &c.nodes[0];
    check_redis_py(&redis_py(&node.redis, None));
    for (query, tag) in [("", "resp2"), ("?protocol=resp3", "resp3")] {
        let mut con = connect(node, "", query).expect("connect");
        redis_rs_round_trip(&mut con, tag);
    }
}

/// With `--redis-password-file` every node refuses a client without the password
/// (`NOAUTH`) or with a wrong one (`WRONGPASS`, counted), takes the right one, and
/// then serves it; redis-rs and redis-py pass the password as users do; the
/// password appears in no log.
#[test]
fn every_node_requires_the_password() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write password file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let file = file.to_str().expect("utf-8 path").to_string();
    let c = Cluster::start_in(dir, 3, &["--redis-password-file", &file]);
    let leader = c.leader();
    for node in &c.nodes {
        let mut con = connect(node, "", "").expect("connect without a password");
        assert_eq!(
            refusal(&mut con, &mut redis::cmd("PING")),
            "NOAUTH Authentication required.",
            "node {}",
            node.id
        );
        assert_eq!(
            refusal(&mut con, redis::cmd("GET").arg("k")),
            "NOAUTH Authentication required.",
            "node {}",
            node.id
        );
        assert_eq!(
            refusal(&mut con, redis::cmd("AUTH").arg("wrong")),
            "WRONGPASS invalid username-password pair or user is disabled.",
            "node {}",
            node.id
        );
        let ok: String = redis::cmd("AUTH")
            .arg(PASSWORD)
            .query(&mut con)
            .expect("AUTH with the password");
        assert_eq!(ok, "OK");
        // A follower forwards the write to the leader; its own reads are stale.
        let key = format!("node{}", node.id);
        set_eventually(&mut con, &key, "v");
        let _: () = redis::cmd("READONLY").query(&mut con).expect("READONLY");
        eventually(&format!("node {} applies {key}", node.id), LONG, || {
            let got: Option<String> = con.get(&key).ok()?;
            (got.as_deref() == Some("v")).then_some(())
        });
    }

    let leader = &c.nodes[usize::try_from(leader - 1).expect("index")];
    let credentials = [format!(":{PASSWORD}@"), format!("default:{PASSWORD}@")];
    for (query, credentials, tag) in [
        ("", &credentials[0], "resp2"),
        ("?protocol=resp3", &credentials[0], "resp3"),
        ("?protocol=resp3", &credentials[1], "resp3-default"),
    ] {
        let mut con = connect(leader, credentials, query).expect("connect with the password");
        redis_rs_round_trip(&mut con, tag);
    }
    let err = connect(leader, ":wrong@", "?protocol=resp3")
        .err()
        .expect("a wrong password does not connect");
    assert_eq!(
        err.code(),
        Some("WRONGPASS"),
        "redis-rs with a wrong password: {err}"
    );

    // One wrong AUTH per node, and redis-rs's on the leader.
    let failures = |node: &Node| -> u64 {
        let metrics = node.metrics();
        let line = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sealkv_auth_failures_total "))
            .unwrap_or_else(|| {
                panic!(
                    "node {}: no sealkv_auth_failures_total in {metrics}",
                    node.id
                )
            });
        line.parse().expect("a count")
    };
    for node in &c.nodes {
        let want = if node.id == leader.id { 2 } else { 1 };
        assert_eq!(failures(node), want, "node {}", node.id);
    }

    let out = redis_py(&leader.redis, Some(PASSWORD));
    check_redis_py(&out);
    assert_eq!(
        out["no_password"],
        "AuthenticationError: HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        "{out:#}"
    );
    assert_eq!(
        out["wrong_password"],
        "AuthenticationError: invalid username-password pair or user is disabled.",
        "{out:#}"
    );

    // redis-py retries a refused connection on its own; each try is counted.
    assert!(
        failures(leader) > 2,
        "redis-py's wrong password was not counted"
    );
    for node in &c.nodes {
        let log = node.log_text();
        assert!(
            log.contains("failed authentication"),
            "node {}: {log}",
            node.id
        );
        assert!(
            !log.contains(PASSWORD),
            "node {} logged the password",
            node.id
        );
    }
}

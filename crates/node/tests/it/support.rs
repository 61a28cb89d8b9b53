//! A harness for clusters of real `sealkv` processes on loopback: free ports, data
//! dirs in a temp dir, logs in files, start/kill/terminate/restart, and clients
//! (redis-rs for data, the admin endpoint for status).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Cluster tests run one at a time: each starts several processes, and two clusters
/// electing leaders at once on two cores make elections slow and tests flaky.
pub static CLUSTER: Mutex<()> = Mutex::new(());

/// Takes the cluster lock, even if an earlier test panicked while holding it.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `sealkv` command with a clean environment.
pub fn sealkv() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sealkv"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SEALKV_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SEALKV_LOG", "info,raft=warn");
    cmd
}

/// Runs a command to completion: (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run sealkv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free loopback port for a node to take: checked by binding it, then released.
///
/// Ports come from 20000..32000, below Linux's ephemeral range (32768 and up), so
/// the source port of an outgoing connection (a client, a Raft dialer) can never
/// take a port between its choice here and the node binding it. Each test process
/// starts at its own offset and never hands out a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (offset + n) % COUNT).expect("port fits");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// Waits until `f` returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One node's addresses and process.
pub struct Node {
    /// Raft id.
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Raft address.
    pub raft: String,
    /// Redis address.
    pub redis: String,
    /// Admin address.
    pub admin: String,
    log: PathBuf,
    ledger: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// A node with fresh ports under `dir`.
    pub fn new(dir: &Path, id: u64, extra: &[&str]) -> Node {
        Node {
            id,
            data_dir: dir.join(format!("node{id}")),
            raft: format!("127.0.0.1:{}", free_port()),
            redis: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            log: dir.join(format!("node{id}.log")),
            ledger: dir.join(format!("node{id}.{LEDGER_EXT}")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
        }
    }

    /// Sets an environment variable for the next starts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Replaces the extra flags the next [`start`](Self::start) passes.
    pub fn set_flags(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the process with `--peers peers` (empty for none) and any extra flags,
    /// and waits until its admin endpoint answers.
    pub fn start(&mut self, peers: &str) {
        self.spawn(peers);
        let admin = self.admin.clone();
        eventually(
            &format!("node {} admin endpoint", self.id),
            Duration::from_secs(30),
            || {
                if let Some(code) = self.exited() {
                    panic!(
                        "node {} exited with {code:?}:\n{}",
                        self.id,
                        self.log_text()
                    );
                }
                status(&admin)
            },
        );
    }

    /// Starts the process as [`start`](Self::start) does, without waiting for it.
    pub fn spawn(&mut self, peers: &str) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = sealkv();
        cmd.args(["start", "--id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--raft-addr", &self.raft])
            .args(["--redis-addr", &self.redis])
            .args(["--admin-addr", &self.admin])
            .args(["--tick-ms", "50"]);
        if !peers.is_empty() {
            cmd.args(["--peers", peers]);
        }
        cmd.args(&self.extra)
            .env(sealkv_encryption::ledger::LEDGER_ENV, &self.ledger)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn sealkv"));
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        let (ok, _, err) = run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
        assert!(ok, "kill -TERM: {err}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} ignored SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A Redis connection to the node, or `None` when it does not answer in time.
    pub fn try_redis(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://{}/", self.redis)).ok()?;
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        Some(conn)
    }

    /// A Redis connection to the node.
    pub fn redis(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://{}/", self.redis)).expect("redis url");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect redis");
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        conn
    }

    /// `GET /status`, when the node answers.
    pub fn status(&self) -> Option<Value> {
        status(&self.admin)
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        http(&self.admin, "GET", "/metrics", None)
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of one metric series, `name{labels}` as the exposition writes it;
    /// 0 when it is absent (a counter nothing incremented yet).
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 request over TCP: (status code, body).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// `GET /status` as JSON.
pub fn status(admin: &str) -> Option<Value> {
    let (code, body) = http(admin, "GET", "/status", None)?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// A cluster of nodes 1..=n, all voters, sharing one temp dir.
pub struct Cluster {
    /// The temp dir (data dirs and logs).
    pub dir: tempfile::TempDir,
    /// The nodes, node `i` at index `i - 1`.
    pub nodes: Vec<Node>,
    /// The `--peers` value.
    pub peers: String,
}

impl Cluster {
    /// Starts `n` nodes with `extra` flags and waits for a leader.
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        Cluster::start_in(tempfile::tempdir().expect("tempdir"), n, extra)
    }

    /// Starts `n` nodes in `dir` (which may already hold files the flags name, such
    /// as a KEK) with `extra` flags, and waits for a leader.
    pub fn start_in(dir: tempfile::TempDir, n: u64, extra: &[&str]) -> Cluster {
        let mut nodes: Vec<Node> = (1..=n).map(|id| Node::new(dir.path(), id, extra)).collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.raft))
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut nodes {
            node.start(&peers);
        }
        let cluster = Cluster { dir, nodes, peers };
        cluster.leader();
        cluster
    }

    /// The node `id`.
    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Waits until the running nodes agree on a leader, and returns its id.
    pub fn leader(&self) -> u64 {
        eventually("a leader", Duration::from_secs(30), || {
            let mut leader = None;
            for node in &self.nodes {
                let Some(s) = node.status() else { continue };
                if s["role"] == "leader" {
                    leader = s["id"].as_u64();
                }
            }
            let leader = leader?;
            // Every running node follows it.
            self.nodes
                .iter()
                .filter_map(|n| n.status())
                .all(|s| s["leader_id"].as_u64() == Some(leader))
                .then_some(leader)
        })
    }

    /// A running node other than `id`.
    pub fn other_than(&self, id: u64) -> u64 {
        self.nodes
            .iter()
            .find(|n| n.id != id && n.status().is_some())
            .map(|n| n.id)
            .expect("another running node")
    }
}

impl Drop for Cluster {
    /// A failing test keeps the nodes' data dirs and logs (`nodeN.log`) for a
    /// post-mortem, and says where they are.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "cluster kept in {} (node logs: nodeN.log)",
                self.dir.path().display()
            );
        }
    }
}

/// `sealkv cluster add-learner` of `node` through the admin endpoint `admin`:
/// whether it succeeded, its stdout and its stderr.
pub fn add_learner(admin: &str, node: &Node) -> (bool, String, String) {
    run(sealkv().args([
        "cluster",
        "add-learner",
        "--id",
        &node.id.to_string(),
        "--raft-addr",
        &node.raft,
        "--admin-addr",
        admin,
    ]))
}

/// The extension of a node's nonce ledger in its cluster's directory. It lives
/// outside the data dir, so a wiped or restored data dir keeps its record.
const LEDGER_EXT: &str = "nonces";

/// Reads the nonce ledgers of every node that ran in `dir` (every process load
/// appends to its node's), checks that no (key, nonce) pair was sealed twice, and
/// returns how many seals they record.
pub fn assert_no_nonce_repeats(dir: &Path) -> usize {
    let mut seen = std::collections::HashMap::new();
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read cluster dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some(LEDGER_EXT) {
            continue;
        }
        for pair in sealkv_encryption::ledger::read(&path).expect("read ledger") {
            total += 1;
            if let Some(first) = seen.insert(pair, path.clone()) {
                panic!(
                    "key {} nonce {:02x?} sealed twice: in {} and {}",
                    pair.0,
                    pair.1,
                    first.display(),
                    path.display()
                );
            }
        }
    }
    total
}

/// `cp -a from to`, which must succeed.
pub fn copy_dir(from: &Path, to: &Path) {
    let (ok, _, err) = run(std::process::Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(ok, "cp -a: {err}");
}

/// Starts `node` on a data dir that lost what it acknowledged and waits for it to
/// exit non-zero with a line that names the fix; returns what it logged.
pub fn refused(node: &mut Node, peers: &str) -> String {
    let before = node.log_text().len();
    node.spawn(peers);
    let status = eventually(
        &format!("node {} to refuse", node.id),
        Duration::from_secs(30),
        || node.exited(),
    );
    node.kill();
    let log = node.log_text()[before..].to_string();
    assert!(!status.success(), "node {} exited cleanly:\n{log}", node.id);
    assert!(
        log.contains("wiped") && log.contains(&format!("remove-node --id {}", node.id)),
        "node {}:\n{log}",
        node.id
    );
    assert!(!log.contains("panicked"), "node {}:\n{log}", node.id);
    log
}

/// Whether the writer registry in `status` (of node `node_id`) records, for each
/// active key, the node's current local epoch: its registration went through Raft
/// and it proposes no more.
pub fn epochs_registered(status: &Value, node_id: u64) -> bool {
    let rows: Vec<&Value> = status["registry"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let keys = status["keys"].as_array().into_iter().flatten();
    keys.filter(|k| k["active"] == true).all(|k| {
        rows.iter().any(|r| {
            r["dek_id"] == k["key_id"]
                && r["full_node_id"].as_u64() == Some(node_id)
                && r["last_seen_local_epoch"] == k["local_epoch"]
        })
    })
}
